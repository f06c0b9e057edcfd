"""Choose the EWC and SI strengths on validation data, as Kirkpatrick et al. (2017) and Zenke et
al. (2017) did; FACTS.md ("Baselines") warns that it takes orders of magnitude of search.

For every value of a log-spaced grid of ``ewc_lambda`` (EWC) or ``si_c`` (SI), train on a short
protocol of a stream whose training data has a held-out validation split (``validation=0.1``),
then evaluate every task on its validation split after the last task. The value with the best
average validation accuracy is chosen. Test accuracy is printed beside it for information only
and never used to choose. ``standard`` (no penalty) is run as a reference row.

    python benchmarks/tune_baselines.py --benchmark permuted-mnist --data-dir /work/shared/data \\
        --tasks 4 --steps-per-task 1000 --threads 1

``--config FILE`` takes the protocol from an experiment file instead (its method list and the
other methods' options are ignored; flags given beside it win), e.g. the full-length search
``--config configs/zenke_pmnist.yaml --methods ewc --ewc-grid 1e4,3e4 --no-reference``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from superpose import checkpoint, evaluation
from superpose.config import load_yaml, method_option_specs, options_of, resolve
from superpose.streams.base import Stream
from superpose.training import build_method, build_stream, run

#: The option each method is tuned on and its default grid (decades).
TUNED = {"ewc": "ewc_lambda", "si": "si_c"}
GRIDS = {"ewc": "1e1,1e2,1e3,1e4,1e5", "si": "1e-2,1e-1,1,1e1,1e2"}


def validation_accuracies(cfg: Any, stream: Stream, folder: Path) -> list[float]:
    """Per-task validation accuracy of the trained run in ``folder`` (rebuilt from its checkpoint,
    exactly as ``training.run`` resumes)."""
    method = build_method(cfg, stream)
    groups, _ = checkpoint.load(folder / checkpoint.CHECKPOINT_NAME)
    method.load_extra_state(groups["extra"])
    method.model.load_state_dict(groups["model"])
    return [evaluation.evaluate(method, stream, t, "val", cfg.eval_batch_size)
            for t in range(stream.num_tasks)]


def grid_edge(values: list[float], best: float) -> str | None:
    """``"lowest"`` or ``"highest"`` when ``best`` is an end of a grid of two or more values (the
    optimum may lie beyond it: extend the grid), else None."""
    if len(set(values)) < 2:
        return None
    if best == min(values):
        return "lowest"
    return "highest" if best == max(values) else None


def parse_sets(items: list[str]) -> dict[str, str]:
    """``["lr=0.001", "width=512"]`` -> ``{"lr": "0.001", "width": "512"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None,
                    help="experiment YAML giving the protocol (flags beside it override it)")
    ap.add_argument("--benchmark", default=None, help="default: permuted-digits")
    ap.add_argument("--methods", default="ewc,si", help="comma list of: ewc, si")
    ap.add_argument("--tasks", type=int, default=None, help="default: 4")
    ap.add_argument("--steps-per-task", type=int, default=None)
    ap.add_argument("--validation", type=float, default=None, help="default: 0.1")
    ap.add_argument("--seed", type=int, default=None, help="default: 0")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--ewc-grid", default=GRIDS["ewc"], help="comma list of ewc_lambda values")
    ap.add_argument("--si-grid", default=GRIDS["si"], help="comma list of si_c values")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other run setting, e.g. --set lr=0.001 --set fisher_samples=100")
    ap.add_argument("--no-reference", action="store_true", help="skip the standard run")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temp folder)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_yaml(args.config) if args.config else {}
    base.pop("method", None)  # the methods tuned are --methods
    defaults = {"benchmark": "permuted-digits", "tasks": 4, "validation": 0.1, "seed": 0}
    flags = {"benchmark": args.benchmark, "tasks": args.tasks, "validation": args.validation,
             "steps_per_task": args.steps_per_task, "seed": args.seed, "data_dir": args.data_dir}
    common = {**defaults, **base, **{k: v for k, v in flags.items() if v is not None},
              "eval_every": 10**9, **parse_sets(args.set)}
    if not float(common["validation"]) > 0:
        raise SystemExit("tuning chooses on a validation split: give --validation > 0 "
                         f"(the protocol has validation={common['validation']})")
    specs = method_option_specs()
    grids = {"ewc": args.ewc_grid, "si": args.si_grid}
    jobs: list[tuple[str, float | None]] = [] if args.no_reference else [("standard", None)]
    for m in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if m not in TUNED:
            raise SystemExit(f"--methods: choose from {sorted(TUNED)}, got {m!r}")
        jobs += [(m, float(v)) for v in grids[m].split(",") if v.strip()]
    root = Path(args.out or tempfile.mkdtemp(prefix="tune-baselines-"))
    stream: Stream | None = None
    rows: list[dict[str, Any]] = []
    print(f"{'method':9s} {'option':11s} {'value':>8s} {'val avg':>8s} {'val task0':>9s} "
          f"{'test avg':>8s} {'seconds':>7s}", flush=True)
    for method, value in jobs:
        option = TUNED.get(method)
        own = options_of(method)  # the file's options for other methods are dropped
        layer = {k: v for k, v in common.items() if k not in specs or k in own}
        layer = {**layer, "method": method, **({option: value} if option else {})}
        cfg = resolve({k: v for k, v in layer.items() if v is not None})
        folder = root / (f"{method}-{value:g}" if option else method)
        t0 = time.perf_counter()
        summary = run(cfg, folder, progress=False)
        stream = stream or build_stream(cfg)  # every run shares the stream's settings
        val = validation_accuracies(cfg, stream, folder)
        row = {"method": method, "option": option, "value": value, "val": val,
               "val_average": sum(val) / len(val), "test_average": summary["average_accuracy"],
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"{method:9s} {option or '-':11s} {'-' if value is None else f'{value:g}':>8s} "
              f"{row['val_average']:8.4f} {val[0]:9.4f} {row['test_average']:8.4f} "
              f"{row['seconds']:7.1f}", flush=True)
    chosen = {}
    for method, option in TUNED.items():
        mine = [r for r in rows if r["method"] == method]
        if mine:
            best = max(mine, key=lambda r: r["val_average"])
            edge = grid_edge([r["value"] for r in mine], best["value"])
            chosen[method] = {option: best["value"], "val_average": best["val_average"],
                              "grid_edge": edge}
            print(f"chosen {method}: {option} = {best['value']:g} "
                  f"(validation average {best['val_average']:.4f})")
            if edge:
                print(f"note: {best['value']:g} is the {edge} value of the {method} grid; the best "
                      f"may lie beyond it: extend --{method}-grid")
    result = {"settings": common, "rows": rows, "chosen": chosen}
    (root / "tune_baselines.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"runs and tune_baselines.json in {root}")
    return result


if __name__ == "__main__":
    main()
