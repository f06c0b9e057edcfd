"""Reproduce CLNP on permuted MNIST (Golkar et al. 2019, section 3.1: Table 1 and Fig. 3).

Protocol (section 3.1, following Zenke et al.'s SI setup): 10 permuted-MNIST tasks, an MLP with
two hidden layers of 2000 ReLU units, single head, Adam, batch 256, learning rate 0.002 and L1
coefficients 1e-7, 1e-5, 1e-6 for the three weight layers (chosen by a grid search on task 1),
10 % of the training images held out for the threshold scan, margin m = 0.05 %. The paper does
not state the training length; we train --epochs epochs per task (default 20, Zenke et al.'s).

Runs, each in its own folder under --out (a finished folder is reused, an interrupted one is
resumed, so the script can be stopped and started again):

    clnp-s{seed}     CLNP, the protocol above, one per seed          (Table 1, Fig. 3)
    single-s{seed}   a fresh network per task, same optimiser, no L1 (Table 1, "single task")
    single-ft-s{seed}  with --set finetune_epochs=N instead: task 1 with no L1, a zero margin
                     and the same fine-tuning
    grid             --grid: the graceful-forgetting grid on task 1 (lr x L1 scale)
    fit              --fit-tasks N: the first seed's run continued to N tasks, to see where the last
                     hidden layer depletes (a fresh run if --fit-epochs differs)

It checks zero forgetting exactly (every accuracy-matrix column constant below the diagonal, and
every earlier task's logits on a fixed batch bit-identical after each later task, by SHA-256),
draws the capacity figure (Fig. 3) and prints the Markdown results table.

    python benchmarks/reproduce_clnp.py --quick               # minutes: checks the pipeline
    python benchmarks/reproduce_clnp.py --seeds 5             # the full protocol (hours)
    python benchmarks/reproduce_clnp.py --seeds 3 --jobs 3 --device cuda \
        --set l1=1e-5,1e-5,1e-6 --set margin=0.005 --set finetune_epochs=5 --out runs/clnp-ft
                                                              # a variant: CLNP + fine-tuning
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_baselines import parse_sets  # noqa: E402  (a sibling script: --set KEY=VALUE)

PAPER = {"clnp": "98.42 ± 0.04", "single": "98.48 ± 0.05", "used": "18 / 40", "fit": "≈ 25"}
TRAIN_IMAGES = 60000
PROTOCOL: dict[str, Any] = dict(
    benchmark="permuted-mnist", method="clnp", tasks=10, batch_size=256, width=2000, depth=2,
    lr=0.002, optimizer="adam", validation=0.1, head="single", l1=[1e-7, 1e-5, 1e-6],
    margin=0.0005)


def steps_for(epochs: float, batch: int = 256, validation: float = 0.1) -> int:
    """Optimiser steps of ``epochs`` passes over the training images left after the hold-out."""
    return max(1, round(epochs * TRAIN_IMAGES * (1 - validation) / batch))


def run_one(name: str, overrides: dict[str, Any], out: Path, threads: int,
            data_dir: str | None) -> dict[str, Any]:
    """Train one run (or reuse / resume its folder); returns its summary."""
    from superpose import training
    from superpose.config import resolve

    folder = out / name
    if (folder / "summary.json").is_file():
        return json.loads((folder / "summary.json").read_text())
    layers = [overrides, {"threads": threads}]
    if data_dir:
        layers.append({"data_dir": data_dir})
    cfg = resolve(*layers)
    resume = (folder / "checkpoint.safetensors").is_file()
    t0 = time.time()
    print(f"  {'resuming' if resume else 'running'} {name} "
          f"({cfg.tasks} tasks x {cfg.steps_per_task} steps)", flush=True)
    summary = training.run(cfg, folder, resume=resume, progress=False,
                           log=lambda m: print(f"    {m}", flush=True))
    print(f"  done {name}: average {100 * summary['average_accuracy']:.2f} % "
          f"({time.time() - t0:.0f} s, {summary['train_steps_per_second']} steps/s)", flush=True)
    return summary


def read_matrix(folder: Path) -> np.ndarray:
    """accuracy_matrix.csv as a (T, T) array, NaN where blank."""
    with open(folder / "accuracy_matrix.csv") as f:
        rows = list(csv.reader(f))[1:]
    return np.array([[math.nan if v == "" else float(v) for v in r[1:]] for r in rows])


def digests_unchanged(summary: dict[str, Any]) -> bool:
    """Whether the run recorded CLNP's logit digests and every earlier task's stayed identical
    after every later task (the zero-forgetting guarantee, bit for bit)."""
    digests = summary.get("clnp_logit_digests", [])
    first: dict[str, str] = {}
    same = bool(digests)
    for row in digests:
        for task, d in row.items():
            same &= first.setdefault(task, d) == d
    return same


def forgetting_check(folder: Path, summary: dict[str, Any]) -> tuple[float, bool]:
    """(largest change of an earlier task's test accuracy after it was pruned, whether every
    earlier task's logit digest stayed identical)."""
    a = read_matrix(folder)
    change = 0.0
    for j in range(min(a.shape)):
        col = a[j:, j]
        change = max(change, float(np.nanmax(col) - np.nanmin(col)))
    return change, digests_unchanged(summary)


def finetune_text(cfg: Any) -> str:
    """``, then 5 epochs of fine-tuning at lr 0.0001`` when the protocol fine-tunes (CLNP + FT,
    section 3.2), else nothing."""
    opts = method_options(cfg)
    if opts["finetune_epochs"] <= 0:
        return ""
    return (f", then {opts['finetune_epochs']:g} epochs of fine-tuning at lr "
            f"{opts['finetune_lr']:g}")


def method_options(cfg: Any) -> dict[str, Any]:
    """CLNP's options of a resolved config, defaults filled in."""
    from dataclasses import asdict

    from superpose.methods import METHODS

    return {**asdict(METHODS.get("clnp").Options()), **cfg.options}


def seeds_text(seed_ids: list[int]) -> str:
    """``seed 3`` or ``seeds 3–4`` (consecutive seeds)."""
    if len(seed_ids) == 1:
        return f"seed {seed_ids[0]}"
    return f"seeds {seed_ids[0]}–{seed_ids[-1]}"


def mean_std(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "–"
    v = scale * np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.2f} (n=1)"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f} (n={len(v)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 short tasks, 1 seed: the pipeline")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds are FIRST..FIRST+SEEDS-1 (more seeds for runs made before)")
    ap.add_argument("--epochs", type=float, default=20.0, help="epochs per task")
    ap.add_argument("--single-tasks", type=int, default=1,
                    help="tasks of the single-task reference per seed (default 1: every "
                         "permutation is the same problem for an MLP; 10 costs as much as CLNP)")
    ap.add_argument("--grid", action="store_true",
                    help="also run the graceful-forgetting grid on task 1 (lr x L1 scale)")
    ap.add_argument("--use-grid", action="store_true",
                    help="train CLNP with the grid's choice instead of the paper's lr and L1")
    ap.add_argument("--fit-tasks", type=int, default=0,
                    help="also run CLNP on this many tasks to measure when the last hidden layer "
                         "depletes (0: extrapolate from the 10-task runs)")
    ap.add_argument("--fit-epochs", type=float, default=None,
                    help="epochs per task of the --fit-tasks run (default: --epochs)")
    ap.add_argument("--out", default="runs/reproduce-clnp")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs of the seeds in parallel, each in its own process")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change a setting of the CLNP protocol, e.g. --set margin=0.005 --set "
                         "finetune_epochs=5 (the single-task runs keep the shared ones)")
    args = ap.parse_args()

    out = Path(args.out + ("-quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    seeds = 1 if args.quick else args.seeds
    if args.first_seed < 0 or seeds < 1:
        ap.error("--first-seed must be >= 0 and --seeds >= 1")
    seed_ids = [args.first_seed + i for i in range(seeds)]
    proto = dict(PROTOCOL)
    if args.quick:
        proto.update(tasks=2, theta_steps=20)
        steps = 150
    else:
        steps = steps_for(args.epochs)
    proto.update(steps_per_task=steps, eval_every=steps)
    sets = parse_sets(args.set)
    proto.update(sets)
    if args.device:
        proto["device"] = args.device
    from superpose.config import resolve

    proto_cfg = resolve(proto)  # a bad --set stops here, before anything trains
    for key in sets:  # the typed values (lists, floats) in place of strings
        proto[key] = proto_cfg.options[key] if key in proto_cfg.options else getattr(proto_cfg,
                                                                                     key)
    t0 = time.time()
    summaries: dict[str, dict[str, Any]] = {}

    def go(name: str, over: dict[str, Any]) -> dict[str, Any]:
        summaries[name] = run_one(name, over, out, args.threads, args.data_dir)
        return summaries[name]

    lines: list[str] = []
    if args.grid:
        grid = go("grid", {**proto, "tasks": 1, "grid_lr": [0.001, 0.002],
                           "grid_l1_scale": [0.3, 1.0, 3.0, 10.0]})
        lines += ["#### Graceful-forgetting grid on task 1 (section 2.2)", "",
                  "| lr | L1 scale | val. unpruned (%) | val. pruned (%) | units pruned (%) | "
                  "chosen |", "|---|---|---|---|---|---|"]
        for g in grid.get("clnp_grid", []):
            pruned = "–" if g["val_pruned"] is None else f"{100 * g['val_pruned']:.2f}"
            sparse = "–" if g["sparsity"] is None else f"{100 * g['sparsity']:.1f}"
            lines.append(f"| {g['lr']:g} | {g['l1_scale']:g} | {100 * g['val_unpruned']:.2f} | "
                         f"{pruned} | {sparse} | {'✔' if g['chosen'] else ''} |")
        lines.append("")
        if args.use_grid:
            cap = grid["capacity"]
            proto.update(lr=cap["lr"], l1=cap["l1"])
            proto_cfg = resolve(proto)
    print(f"CLNP protocol: {proto}", flush=True)

    from superpose.config import options_of

    single_tasks = args.single_tasks
    clnp_only = options_of("clnp") - options_of("single-task")
    single_over = {k: v for k, v in proto.items() if k not in clnp_only}
    todo = [(f"clnp-s{s}", {**proto, "seed": s}) for s in seed_ids]
    finetuned = float(proto_cfg.options.get("finetune_epochs", 0.0)) > 0
    if finetuned:
        # CLNP + FT: the reference gets the same fine-tuning. One network (CLNP on task 1)
        # with no L1 and a zero margin: the scan removes only units that cost no validation
        # accuracy, then the same epochs at the fine-tuning rate.
        single_tasks = 1
        todo += [(f"single-ft-s{s}", {**proto, "seed": s, "tasks": 1,
                                      "l1": [0.0] * len(proto["l1"]), "margin": 0.0})
                 for s in seed_ids]
    else:
        todo += [(f"single-s{s}", {**single_over, "method": "single-task", "seed": s,
                                   "tasks": single_tasks}) for s in seed_ids]
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            done = pool.starmap(run_one, [(n, o, out, args.threads, args.data_dir)
                                          for n, o in todo], chunksize=1)
            pool.close()  # let the workers exit on their own: leaving `with` terminate()s them,
            pool.join()  # and a killed worker's tqdm lock is reported as a leaked semaphore
        summaries.update(zip([n for n, _ in todo], done, strict=True))
    else:
        for name, over in todo:
            go(name, over)
    clnp = [summaries[f"clnp-s{s}"] for s in seed_ids]
    single = [summaries[f"single{'-ft' if finetuned else ''}-s{s}"] for s in seed_ids]
    fit = None
    if args.fit_tasks:
        fit_epochs = args.fit_epochs or args.epochs
        fit_steps = 150 if args.quick else steps_for(fit_epochs)
        continued = fit_steps == steps and args.fit_tasks > proto["tasks"]
        if continued and not (out / "fit").exists():
            # The first seed's run goes on to --fit-tasks (superpose run --resume DIR --tasks N)
            # on a copy of its folder: its first tasks are not trained twice.
            shutil.copytree(out / f"clnp-s{seed_ids[0]}", out / "fit",
                            ignore=shutil.ignore_patterns("summary.json", "progress.json",
                                                          "*.png"))
        fit = go("fit", {**proto, "seed": seed_ids[0], "tasks": args.fit_tasks,
                         "steps_per_task": fit_steps,
                         "eval_every": fit_steps})

    # ---- checks and numbers ------------------------------------------------------------------
    from superpose import plots_clnp

    checks = [forgetting_check(out / f"clnp-s{s}", summary)
              for s, summary in zip(seed_ids, clnp, strict=True)]
    max_change = max(c for c, _ in checks)
    identical = all(same for _, same in checks)
    used = np.array([[f[-1] for f in s["capacity"]["used_fraction"]] for s in clnp])  # (S, L)
    per_layer = " / ".join(f"{100 * u:.1f}" for u in used.mean(axis=0))
    if seeds > 1:
        per_layer += " (± " + " / ".join(f"{100 * u:.1f}" for u in used.std(axis=0, ddof=1)) + ")"
    extrapolated = [s["capacity"]["tasks_until_depleted"][-1] for s in clnp]
    finite = [v for v in extrapolated if v is not None]
    fit_text = (f"{np.mean(finite):.1f} (extrapolated linearly from the {proto['tasks']}-task "
                "runs' last-layer growth)") if finite else "never (last layer stopped growing)"
    if fit is not None:
        last = fit["capacity"]["layers"][-1]
        events = [e for e in fit["capacity"]["depleted"] if e["layer"] == last]
        trained_ok = [a for a in fit["final_accuracy"] if a is not None]
        measured = (f"{events[0]['task']} tasks fit" if events else
                    f"not depleted after {args.fit_tasks} tasks")
        fit_text += (f"; measured{f' (seed {seed_ids[0]} continued)' if continued else ''}: "
                     f"{measured}, "
                     f"average accuracy over the "
                     f"{len(trained_ok)} tasks {100 * np.mean(trained_ok):.2f} % "
                     f"({fit_steps} steps per task)")
    plot = plots_clnp.capacity_figure([out / f"clnp-s{s}" for s in seed_ids],
                                      out / "clnp_capacity.png",
                                      "CLNP capacity, permuted MNIST (Fig. 3)")
    avg = [s["average_accuracy"] for s in clnp]
    single_avg = [s["average_accuracy"] for s in single]
    opts = method_options(proto_cfg)
    epochs = steps * proto["batch_size"] / (TRAIN_IMAGES * (1 - proto["validation"]))
    table = [
        f"### CLNP, permuted MNIST, {proto['tasks']} tasks, 2×2000 MLP, single head "
        "(section 3.1)", "",
        "| quantity | ours | paper |", "|---|---|---|",
        f"| CLNP: average test accuracy over the tasks (%) | {mean_std(avg)} | {PAPER['clnp']} |",
        f"| single-task training, same optimiser{', same fine-tuning' if finetuned else ''}, "
        f"no L1 (%) | {mean_std(single_avg)} ({single_tasks} tasks per seed) | "
        f"{PAPER['single']} |",
        f"| forgetting: largest change of an earlier task's accuracy | {100 * max_change:.4f} "
        "points | 0 |",
        f"| earlier tasks' logits on a fixed batch after later tasks | "
        f"{'bit-identical' if identical else 'CHANGED'} (all seeds) | unchanged |",
        f"| hidden layers used after {proto['tasks']} tasks, layer 1 / layer 2 (%) | "
        f"{per_layer} | {PAPER['used']} |",
        f"| tasks that fit before the last hidden layer is depleted | {fit_text} | "
        f"{PAPER['fit']} |", "",
        f"Protocol: Adam, batch {proto['batch_size']}, lr {proto_cfg.lr:g}, L1 "
        f"{', '.join(f'{a:g}' for a in opts['l1'])}, margin {100 * opts['margin']:g} %, "
        f"{proto['steps_per_task']} steps (≈ {epochs:.1f} epochs) per task"
        f"{finetune_text(proto_cfg)}, 10 % of the training "
        f"images held out for the threshold scan, {seeds_text(seed_ids)}; "
        f"{np.mean([c['train_steps_per_second'] for c in clnp]):.2f} training steps/s. "
        f"Capacity figure: `{plot.name}`. The rows below are means over the seeds.", ""]
    per_task = np.array([s["capacity"]["used_fraction"] for s in clnp]).mean(axis=0)  # (L, T)
    table += ["| after task | " + " | ".join(str(t + 1) for t in range(per_task.shape[1])) + " |",
              "|---|" + "---|" * per_task.shape[1]]
    for name, row in zip(clnp[0]["capacity"]["layers"], per_task, strict=True):
        table.append(f"| {name} used (%) | " + " | ".join(f"{100 * v:.1f}" for v in row) + " |")
    final = np.array([s["final_accuracy"] for s in clnp], dtype=float)  # (S, T), after pruning
    table.append("| test % after pruning | " + " | ".join(f"{100 * v:.2f}"
                                                       for v in final.mean(axis=0)) + " |")
    text = "\n".join(table + [""] + lines)
    (out / "results.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\n{len(summaries)} runs in {time.time() - t0:.0f} s; results in {out / 'results.md'}")


if __name__ == "__main__":
    from superpose.training import Interrupted

    try:
        main()
    except Interrupted as e:  # Ctrl-C or SIGTERM inside a run: its checkpoint is written
        raise SystemExit(f"\n{e}\nRun the same command again to go on from there.") from None
