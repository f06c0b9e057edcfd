"""Reproduce section 4.1 of the superposition paper: Fig. 2, Fig. 3 and its table, Fig. 4b, 5.

Each experiment is a config under configs/ plus a sweep (widths, methods, seeds). Every run gets
its own run folder under --out; a folder that already holds summary.json is reused and one with
only a checkpoint is resumed, so an interrupted reproduction continues where it stopped. The
script prints Markdown (ours beside the paper's numbers) and writes it, with the figures, to
--out/results.md.

    python benchmarks/reproduce_psp.py --quick                    # minutes: checks the pipeline
    python benchmarks/reproduce_psp.py --only table --seeds 3     # the Fig. 3 table
    python benchmarks/reproduce_psp.py --jobs 2                   # everything (hours on 2 CPUs)
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
WIDTHS = [128, 256, 512, 1024, 2048]
FIG3_METHODS = ("standard", "psp-binary", "psp-complex", "psp-onepower", "psp-rotation")
#: The table's protocols: the authors' settings (2x256), a wider net (2x1024, Glorot init),
#: the best found here (2x2048, Glorot, RMSprop with a cosine from 4e-4 within every task) and
#: that one on standardised pixels (the authors' loaders' (x - 0.1307) / 0.3081) with the
#: cosine from 1.5e-4.
#: experiment -> (config, run-name prefix).
TABLE_CONFIGS = {"table": ("psp_table.yaml", "table"),
                 "table-wide": ("psp_table_wide.yaml", "tablew"),
                 "table-best": ("psp_table_best.yaml", "tableb"),
                 "table-norm": ("psp_table_norm.yaml", "tablen")}
#: Fig. 3's experiments: experiment -> (contexts, protocol when not the authors' raw settings:
#: the long form for the table header, the short one for the plot title). The norm protocol is
#: the table-norm one at 256 units (configs/psp_fig3_norm.yaml).
NORM = ("Glorot init, standardised pixels, RMSprop cosine from 1.5e-4", "table-norm protocol")
FIG3_LABELS = {"fig3": ("fixed contexts", None), "fig3-learned": ("learned contexts", None),
               "fig3-norm": ("fixed contexts", NORM),
               "fig3-norm-learned": ("learned contexts", NORM)}
PAPER_TABLE = {"ewc": 97.0, "si": 97.2, "standard": 61.8, "psp-binary": 97.6,
               "psp-complex": 97.4, "psp-onepower": 97.2}
#: The table's EWC and SI numbers are Zenke et al.'s (their Fig. 4: 10 tasks, 2x2000, Adam,
#: batch 256, 20 epochs): the "zenke" experiment runs the baselines on that protocol, and
#: psp-binary beside them, so that PSP and the baselines it is compared with share one protocol.
ZENKE_METHODS = ("si", "ewc", "psp-binary", "standard")
#: "zenke-code": the same comparison as the authors' released code runs it (the whole training
#: set, Glorot init, SI's importance clipped at zero; configs/zenke_pmnist_code.yaml).
ZENKE_CODE_METHODS = ("si", "ewc")
#: "zenke-cosine": the zenke protocol with the rate decaying along a cosine within every task
#: (from Adam's 1e-3 to 0, restarting at each task), the schedule under which PSP reaches the
#: table's 97.6; the same strengths (they were chosen at the constant rate).
ZENKE_COSINE_METHODS = ("si", "ewc")
#: The zenke protocol under another rate schedule: experiment -> (run-name tag, lr_schedule).
#: "zenke-warmup" rises linearly over the first tenth of every task before the cosine: the
#: first steps of a new task at the full rate took task 0 from 98.5 to 87-88 % (README).
ZENKE_SCHEDULES = {"zenke-cosine": ("cos", "cosine"), "zenke-warmup": ("wcos", "warmup-cosine")}
#: SI's strength under a schedule, where it differs from the constant rate's 0.1: SI's
#: importance grows with the rate integrated over a task (measured: Ω after task 0 is 0.487 of
#: the constant rate's under the warm-up cosine, whose mean rate is 0.500), so c = 0.1 / 0.5
#: keeps the penalty's scale. Run names carry it: zenke-wcos-si-c0.2-s<seed>.
ZENKE_SCHEDULE_SI_C = {"zenke-warmup": 0.2}
ZENKE_PAPER = {"ewc": 97.0, "si": 97.2}


def fig3_name(method: str, seed: int) -> str:
    """Fig. 3's run folder (seed 0 keeps the name it had before Fig. 3 had seeds)."""
    return f"fig3-{method}" if seed == 0 else f"fig3-{method}-s{seed}"


def fig2_name(method: str, width: int, seed: int) -> str:
    """Fig. 2's run folder at one width (seed 0 keeps the name it had before Fig. 2 had seeds)."""
    return f"fig2-{method}-w{width}" + (f"-s{seed}" if seed else "")


def fig2_norm_name(method: str, width: int, seed: int) -> str:
    """A run folder of Fig. 2 on psp_fig2_norm.yaml's protocol at one width; psp-binary at the
    config's 2048 units is the fig2-norm experiment's run (the same settings), named as there."""
    if method == "psp-binary" and width == 2048:
        return f"fig2n-psp-binary-s{seed}"
    return f"fig2n-{method}-w{width}-s{seed}"


def specs(which: list[str], seeds: int, quick: bool, tasks: int | None = None,
          width: int | None = None) -> list[dict[str, Any]]:
    """Every run of the selected experiments: {"experiment", "name", "config", "overrides"}.
    ``width`` runs the table experiments at that many units instead of their config's (the
    table's width is not stated); their run names then carry ``-w{width}``."""
    out: list[dict[str, Any]] = []
    short_pm = {"tasks": 6, "steps_per_task": 200, "eval_every": 50} if quick else {}
    if tasks:  # a shorter permuting stream than the paper's 50 tasks (clearly a partial run)
        short_pm["tasks"] = tasks
    short_rot = {"tasks": 30, "eval_every": 50} if quick else {}

    def add(exp: str, config: str, name: str, **over: Any) -> None:
        out.append({"experiment": exp, "name": name, "config": config, "overrides": over})

    if "fig2" in which:
        for s in range(seeds):
            for w in ([128, 512] if quick else WIDTHS):
                for m in ("standard", "psp-binary"):
                    if w == 256:  # psp_fig2_width.yaml at 256 units is Fig. 3's protocol
                        add("fig2", "psp_fig3_types.yaml", fig3_name(m, s), method=m, width=w,
                            seed=s, **short_pm)
                    else:
                        add("fig2", "psp_fig2_width.yaml", fig2_name(m, w, s), method=m,
                            width=w, seed=s, **short_pm)
    if "fig2-norm" in which:  # Fig. 2 at 2048 units on the table-norm protocol, small steps
        for s in range(seeds):
            add("fig2-norm", "psp_fig2_norm.yaml", fig2_norm_name("psp-binary", 2048, s),
                method="psp-binary", seed=s, **short_pm)
    if "fig2-norm-widths" in which:  # the same small steps at every width, standard beside
        for s in range(seeds):
            for w in ([128, 512] if quick else WIDTHS):
                for m in ("standard", "psp-binary"):
                    add("fig2-norm-widths", "psp_fig2_norm.yaml", fig2_norm_name(m, w, s),
                        method=m, width=w, seed=s, **short_pm)
    if "fig3" in which:
        for s in range(seeds):
            for m in FIG3_METHODS:
                add("fig3", "psp_fig3_types.yaml", fig3_name(m, s), method=m, seed=s, **short_pm)
    # Fig. 3 on the table-norm protocol (Glorot, standardised, cosine), fixed and learned contexts
    for exp, learned in (("fig3-norm", False), ("fig3-norm-learned", True)):
        if exp not in which:
            continue
        for s in range(seeds):
            for m in FIG3_METHODS[1:] if learned else FIG3_METHODS:
                add(exp, "psp_fig3_norm.yaml", f"fig3n-{m}{'-learned' * learned}-s{s}",
                    method=m, seed=s, **({"learn_context": True} if learned else {}), **short_pm)
    if "fig3-learned" in which:
        for s in range(seeds):
            for m in FIG3_METHODS[1:]:
                if m == "psp-rotation":
                    add("fig3-learned", "psp_fig3_types.yaml", f"fig3-{m}-learned-s{s}",
                        method=m, seed=s, learn_context=True, **short_pm)
                else:  # the table's learned run: psp_table.yaml is this protocol
                    add("fig3-learned", "psp_table.yaml", f"table-{m}-learned-s{s}",
                        method=m, seed=s, learn_context=True, **short_pm)
    wide = {"width": width} if width else {}
    w_tag = f"-w{width}" if width else ""
    for exp, (config, prefix) in TABLE_CONFIGS.items():
        if exp not in which:
            continue
        for s in range(seeds):
            for m in ("standard", "psp-binary", "psp-complex", "psp-onepower", "ewc", "si"):
                if exp == "table" and m in FIG3_METHODS and not width:
                    # psp_table.yaml is psp_fig3_types.yaml's protocol: the run is Fig. 3's
                    add(exp, "psp_fig3_types.yaml", fig3_name(m, s), method=m, seed=s,
                        **short_pm)
                else:
                    add(exp, config, f"{prefix}-{m}{w_tag}-s{s}", method=m, seed=s, **wide,
                        **short_pm)
            for m in ("psp-binary", "psp-complex", "psp-onepower"):
                add(exp, config, f"{prefix}-{m}{w_tag}-learned-s{s}", method=m, seed=s,
                    learn_context=True, **wide, **short_pm)
    if "zenke" in which:
        short_z = {"tasks": 3, "steps_per_task": 300, "eval_every": 100} if quick else {}
        for s in range(seeds):
            for m in ZENKE_METHODS:
                add("zenke", "zenke_pmnist.yaml", f"zenke-{m}-s{s}", method=m, seed=s, **short_z)
    if "zenke-code" in which:
        short_z = {"tasks": 3, "steps_per_task": 300, "eval_every": 300} if quick else {}
        for s in range(seeds):
            for m in ZENKE_CODE_METHODS:
                add("zenke-code", "zenke_pmnist_code.yaml", f"zenkec-{m}-s{s}", method=m, seed=s,
                    **short_z)
    for exp, (tag, schedule) in ZENKE_SCHEDULES.items():
        if exp not in which:
            continue
        short_z = {"tasks": 3, "steps_per_task": 300, "eval_every": 100} if quick else {}
        si_c = ZENKE_SCHEDULE_SI_C.get(exp)
        for s in range(seeds):
            for m in ZENKE_COSINE_METHODS:
                own_c = {"si_c": si_c} if m == "si" and si_c is not None else {}
                c_tag = f"-c{si_c:g}" if own_c else ""
                add(exp, "zenke_pmnist.yaml", f"zenke-{tag}-{m}{c_tag}-s{s}", method=m,
                    seed=s, lr_schedule=schedule, **own_c, **short_z)
    if "fig4" in which:
        for m in ("standard", "psp-binary", "psp-complex", "psp-onepower", "psp-rotation"):
            add("fig4", "psp_fig4_rotating_fmnist.yaml", f"fig4-{m}", method=m, **short_rot)
    if "fig5" in which:
        for sched in ("fast", "local-mix"):
            add("fig5", "psp_fig5_schedules.yaml", f"fig5-psp-complex-{sched}",
                context_schedule=sched, **short_rot)
    return out


def select_methods(runs: list[dict[str, Any]], methods: str) -> list[dict[str, Any]]:
    """The runs of the methods in a comma list (a run that names no method is Fig. 5's
    psp-complex); an unknown name is an error rather than an empty selection."""
    keep = {m.strip() for m in methods.split(",") if m.strip()}
    method = {r["name"]: r["overrides"].get("method", "psp-complex") for r in runs}
    unknown = keep - set(method.values())
    if unknown:
        raise SystemExit(f"--methods: no run of {', '.join(sorted(unknown))} in these "
                         f"experiments (they have {', '.join(sorted(set(method.values())))})")
    return [r for r in runs if method[r["name"]] in keep]


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one run (or reuse / resume its folder); returns its summary."""
    import torch

    from superpose import training
    from superpose.config import load_yaml, resolve

    torch.set_num_threads(job["threads"])
    folder = Path(job["out"]) / job["name"]
    if (folder / "summary.json").is_file():
        return json.loads((folder / "summary.json").read_text())
    over = dict(job["overrides"])
    if job.get("data_dir"):
        over["data_dir"] = job["data_dir"]
    if job.get("device"):
        over["device"] = job["device"]
    cfg = resolve(load_yaml(CONFIGS / job["config"]), over, {"threads": job["threads"]})
    resume = (folder / "checkpoint.safetensors").is_file()
    if not resume and folder.exists():
        for p in folder.iterdir():
            p.unlink()
    t0 = time.time()
    summary = training.run(cfg, folder, resume=resume, progress=False, log=lambda m: None)
    print(f"  done {job['name']}: avg {100 * summary['average_accuracy']:.2f} "
          f"({time.time() - t0:.0f} s)", flush=True)
    return summary


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    v = 100 * np.array(values)
    std = float(v.std(ddof=1)) if len(v) > 1 else math.nan
    return f"{v.mean():.2f} ± {std:.2f} (n={len(v)})" if len(v) > 1 else f"{v[0]:.2f} (n=1)"


def curve_at(summary: dict[str, Any], step: int) -> float | None:
    """First-task accuracy at the last evaluation at or before ``step``."""
    pts = [a for s, a in summary["first_task_curve"] if s <= step]
    return pts[-1] if pts else None


def fig2_row(summary: dict[str, Any]) -> list[float] | None:
    """One Fig. 2 run's table row (fractions): task 0 right after its training, after the first
    10 tasks (the curve at step 10 x steps per task), after all tasks, the drop (first minus
    final), the drop per task over the second half of the stream (curve at the end of task T/2
    minus final, over T - T/2), and the average over the last 10 tasks after all of them (the
    Fig. 3 table's metric). In a run of 10 tasks or fewer (--quick) "after 10 tasks" is the
    final value. None if the curve has no point by the end of task 0."""
    steps = summary["steps"] // summary["tasks"]
    half = summary["tasks"] // 2
    a0 = curve_at(summary, steps)
    if a0 is None:
        return None
    a10, a_half = curve_at(summary, 10 * steps), curve_at(summary, half * steps)
    fin = summary["final_accuracy"][0]
    return [a0, a10, fin, a0 - fin, (a_half - fin) / (summary["tasks"] - half),
            summary["average_last10"]]


def fig2_norm_table(results: dict[str, dict[str, Any]], runs: list[dict[str, Any]]
                    ) -> list[str]:
    """Fig. 2's claim seed by seed: task 0 right after its training, after 10 tasks and after
    all of them, the points lost, whether that is within 1 point ("virtually unchanged"), and
    the last-10 average; then the mean ± std row."""
    from superpose.config import load_yaml

    cfg = load_yaml(CONFIGS / "psp_fig2_norm.yaml")
    lines = [f"### Fig. 2 at {cfg['depth']}×{cfg['width']} ({fig2_norm_protocol()}): "
             "task-0 accuracy (%)", "",
             "| seed | after task 0 | after 10 tasks | final | lost | within 1 point | "
             "last 10 tasks |", "|---|---|---|---|---|---|---|"]
    rows = []
    for r in runs:
        row = fig2_row(results[r["name"]])
        if row is None:
            continue
        rows.append(row)
        a0, a10, fin, drop, _, last10 = (100 * v for v in row)
        lines.append(f"| {r['overrides']['seed']} | {a0:.2f} | {a10:.2f} | {fin:.2f} | "
                     f"{drop:.2f} | {'yes' if row[3] <= 0.01 else 'no'} | {last10:.2f} |")
    if len(rows) > 1:
        cols = [mean_std([row[i] for row in rows]) for i in (0, 1, 2, 3)]
        within = sum(row[3] <= 0.01 for row in rows)  # the same test as each seed's column
        lines.append(f"| all | {' | '.join(cols)} | {within} of {len(rows)} | "
                     f"{mean_std([row[5] for row in rows])} |")
    return lines + [""]


def fig2_norm_protocol() -> str:
    """psp_fig2_norm.yaml's protocol in words, for the headings of its tables."""
    from superpose.config import load_yaml

    cfg = load_yaml(CONFIGS / "psp_fig2_norm.yaml")
    return (f"{cfg['optimizer']}, {cfg['lr_schedule']} from {cfg['lr']:g} within each task, "
            f"init {cfg['init']}, standardised pixels, learned binary contexts")


def fig2_widths_report(results: dict[str, dict[str, Any]], runs: list[dict[str, Any]],
                       out: Path, stem: str, protocol: str) -> list[str]:
    """Fig. 2 by width: one table row per (width, method), mean ± std over seeds of
    ``fig2_row``; draws seed 0's task-0 curves per width (<stem>_w<width>.png) and the panels
    side by side (<stem>.png) from the run folders under ``out``."""
    from superpose import plots
    from superpose.runs import load_run

    on = f" ({protocol})" if protocol else ""
    lines = [f"### Fig. 2{on}: task-0 accuracy (%) by width: right after task 0, after 10 and "
             "after all tasks; points lost per task over the second half of the tasks; "
             "and the table's average over the last 10 tasks (mean ± std over seeds)", "",
             "| width | method | after task 0 | after 10 tasks | final | drop | lost per "
             "task, 2nd half | last 10 tasks |", "|---|---|---|---|---|---|---|---|"]
    cells: dict[tuple[int, str], list[list[float]]] = {}
    for r in runs:
        row = fig2_row(results[r["name"]])
        if row is None:
            continue
        cells.setdefault((r["overrides"]["width"], r["overrides"]["method"]), []).append(row)
    for (w, m), rows in sorted(cells.items()):
        cols = [mean_std([row[i] for row in rows]) for i in range(6)]
        lines.append(f"| {w} | {m} | " + " | ".join(cols) + " |")
    lines.append("")
    by_width: dict[int, list] = {}
    for w in sorted({r["overrides"]["width"] for r in runs}):
        seed0 = [out / r["name"] for r in runs
                 if r["overrides"]["width"] == w and r["overrides"].get("seed", 0) == 0]
        rs = [load_run(d) for d in seed0 if (d / "summary.json").is_file()]
        if rs:
            plots.first_task_curve(rs, out / f"{stem}_w{w}.png", f"Fig. 2: width {w} (seed 0)")
            by_width[w] = rs
    if by_width:
        plots.width_panels(by_width, out / f"{stem}.png")
    return lines


def report(results: dict[str, dict[str, Any]], runs: list[dict[str, Any]], out: Path) -> str:
    from superpose import plots
    from superpose.config import load_yaml
    from superpose.runs import load_run

    lines: list[str] = []
    by_exp: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_exp.setdefault(r["experiment"], []).append(r)

    for exp, (config, _) in TABLE_CONFIGS.items():
        if exp not in by_exp:
            continue
        cfg = {**load_yaml(CONFIGS / config), **by_exp[exp][0]["overrides"]}  # --width
        schedule = (f" ({cfg['lr_schedule']} within each task)"
                    if cfg.get("lr_schedule", "constant") != "constant" else "")
        proto = (f"{cfg['depth']}×{cfg['width']}, {cfg['optimizer']} {cfg['lr']:g}{schedule}, "
                 f"init {cfg.get('init', 'torch')}"
                 + (", standardised pixels" if cfg.get("normalize") else ""))
        lines += [f"### Fig. 3 table: average accuracy over the last 10 of the tasks ({proto}) (%)",
                  "", "| method | contexts or strength | ours (mean ± std over seeds) | paper |",
                  "|---|---|---|---|"]
        groups: dict[tuple[str, str], list[float]] = {}
        for r in by_exp[exp]:
            m = r["overrides"]["method"]
            if m in ("ewc", "si"):  # the strength the run had (its config.yaml), else the spec's
                as_run = out / r["name"] / "config.yaml"
                run_cfg = (load_yaml(as_run) if as_run.is_file()
                           else {**load_yaml(CONFIGS / config), **r["overrides"]})
                kind = (f"λ = {float(run_cfg['ewc_lambda']):g}" if m == "ewc"
                        else f"c = {float(run_cfg['si_c']):g}")
            elif m.startswith("psp"):
                kind = "learned" if r["overrides"].get("learn_context") else "fixed"
            else:
                kind = "–"
            groups.setdefault((m, kind), []).append(results[r["name"]]["average_last10"])
        for (m, kind), vals in groups.items():
            lines.append(f"| {m} | {kind} | {mean_std(vals)} | {PAPER_TABLE.get(m, '–')} |")
        lines.append("")
    for exp in ("zenke", "zenke-code", *ZENKE_SCHEDULES):
        if exp not in by_exp:
            continue
        configs = {r["name"]: load_yaml(out / r["name"] / "config.yaml")  # as run
                   for r in by_exp[exp]}
        cfg = configs[by_exp[exp][0]["name"]]
        first = results[by_exp[exp][0]["name"]]
        how = {"zenke-code": "as the authors' released code runs it: the whole training set, "
                             f"init {cfg.get('init', 'torch')}, SI's importance clipped at zero; ",
               "zenke-cosine": "the rate decaying along a cosine within every task; ",
               "zenke-warmup": "the rate rising linearly over the first tenth of every task, "
                               "then decaying along a cosine; "}.get(exp, "")
        who = "psp-binary and the baselines" if exp == "zenke" else "the baselines"
        lines += [f"### {who} on Zenke et al.'s protocol ({how}"
                  f"{first['tasks']} tasks × {first['steps'] // first['tasks']} steps, "
                  f"{cfg['depth']}×{cfg['width']}, {cfg['optimizer']} {cfg['lr']:g}, batch "
                  f"{cfg['batch_size']}): average test accuracy over all tasks after the last, "
                  "and backward transfer (the mean change of tasks 1…T−1 from right after their "
                  "training to the end), in %", "",
                  "| method | strength | average (mean ± std over seeds) | backward transfer "
                  "| Zenke et al. |",
                  "|---|---|---|---|---|"]
        groups_z: dict[str, list[float]] = {}
        bwt: dict[str, list[float]] = {}
        strength: dict[str, str] = {}
        for r in by_exp[exp]:
            m = r["overrides"]["method"]
            summary = results[r["name"]]
            groups_z.setdefault(m, []).append(summary["average_accuracy"])
            bwt.setdefault(m, []).append(summary["backward_transfer"])
            opts = configs[r["name"]]
            clip = ", Ω clipped at 0" if opts.get("si_clip") else ""
            strength[m] = {"si": f"c = {opts.get('si_c')}, ξ = {opts.get('si_xi')}{clip}",
                           "ewc": f"λ = {opts.get('ewc_lambda')}",
                           "psp-binary": "fixed binary contexts"}.get(m, "–")
        for m, vals in groups_z.items():
            lines.append(f"| {m} | {strength[m]} | {mean_std(vals)} | {mean_std(bwt[m])} | "
                         f"{ZENKE_PAPER.get(m, '–')} |")
        lines.append("")
    if "fig2" in by_exp:
        lines += fig2_widths_report(results, by_exp["fig2"], out, "fig2", "")
    if "fig2-norm" in by_exp:
        lines += fig2_norm_table(results, by_exp["fig2-norm"])
        plots.first_task_curve([load_run(out / r["name"]) for r in by_exp["fig2-norm"]],
                               out / "fig2_norm.png",
                               "Fig. 2 at 2048 units, standardised pixels: task 0 (every seed)")
    if "fig2-norm-widths" in by_exp:
        lines += fig2_widths_report(results, by_exp["fig2-norm-widths"], out, "fig2_norm_widths",
                                    fig2_norm_protocol())
    for exp in FIG3_LABELS:
        if exp not in by_exp:
            continue
        fig3 = by_exp[exp]
        contexts, protocol = FIG3_LABELS[exp]
        kind = f"{contexts}, {protocol[0]}" if protocol else contexts
        lines += [f"### Fig. 3 left: task-0 accuracy (%) after all tasks, 256 units, {kind} "
                  f"({results[fig3[0]['name']]['tasks']} tasks; mean ± std over "
                  "seeds)", "", "| method | after task 0 | final |", "|---|---|---|"]
        after: dict[str, list[float]] = {}
        final: dict[str, list[float]] = {}
        for r in fig3:
            s = results[r["name"]]
            m = r["overrides"]["method"]
            after.setdefault(m, []).append(curve_at(s, s["steps"] // s["tasks"]))
            final.setdefault(m, []).append(s["final_accuracy"][0])
        for m in final:
            lines.append(f"| {m} | {mean_std(after[m])} | {mean_std(final[m])} |")
        lines.append("")
        plots.first_task_curve([load_run(out / r["name"]) for r in fig3
                                if r["overrides"].get("seed", 0) == 0],
                               out / f"{exp.replace('-', '_')}_types.png",
                               f"Fig. 3: context types (256 units, {contexts}"
                               + (f", {protocol[1]})" if protocol else ")"))
    rot = by_exp.get("fig4", []) + by_exp.get("fig5", [])
    if rot:
        lines += ["### Fig. 4b / 5: rotating Fashion-MNIST, accuracy (%) at 0° over the last "
                  "1000-step cycle", "",
                  "| method | schedule | mean | min | max | spread |", "|---|---|---|---|---|---|"]
        for r in rot:
            s = results[r["name"]]
            last = [a for st, a in s["first_task_curve"] if st > s["steps"] - 1000]
            sched = r["overrides"].get("context_schedule", "task")
            m = r["overrides"].get("method", "psp-complex")
            lines.append(f"| {m} | {sched if m != 'standard' else '–'} | "
                         f"{100 * np.mean(last):.2f} | {100 * min(last):.2f} | "
                         f"{100 * max(last):.2f} | {100 * (max(last) - min(last)):.2f} |")
        lines.append("")
        plots.first_task_curve([load_run(out / r["name"]) for r in rot],
                               out / "fig4_5_rotating.png",
                               "Fig. 4b / 5: rotating Fashion-MNIST, accuracy at 0°")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="fig2,fig3,fig3-learned,table,table-wide,zenke,fig4,fig5",
                    help="comma list of fig2, fig2-norm, fig2-norm-widths, fig3, fig3-learned, "
                         "fig3-norm, fig3-norm-learned, table, table-wide, table-best, "
                         "table-norm, zenke, zenke-code, zenke-cosine, zenke-warmup, fig4, fig5 "
                         "(not in the default list: fig3-norm and fig3-norm-learned, newer; "
                         "fig2-norm, fig2-norm-widths, table-best, table-norm (2×2048), "
                         "zenke-code, zenke-cosine and zenke-warmup, 1-3 h per run on one CPU "
                         "thread)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="short runs to check the pipeline")
    ap.add_argument("--out", default="runs/reproduce-psp")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    ap.add_argument("--tasks", type=int, default=None,
                    help="permuting-MNIST experiments: this many tasks instead of 50 (partial)")
    ap.add_argument("--width", type=int, default=None,
                    help="table experiments: this many units per layer instead of the config's "
                         "(run names get -wN)")
    ap.add_argument("--methods", default=None,
                    help="comma list: only the runs of these methods (e.g. psp-binary,psp-complex)")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: tabulate the runs already finished under --out")
    args = ap.parse_args()
    which = [w.strip() for w in args.only.split(",") if w.strip()]
    out = Path(args.out + ("-quick" if args.quick else "")
               + (f"-{args.tasks}tasks" if args.tasks else ""))
    out.mkdir(parents=True, exist_ok=True)
    runs = specs(which, 1 if args.quick else args.seeds, args.quick, args.tasks, args.width)
    if args.methods:
        runs = select_methods(runs, args.methods)
    unique = {r["name"]: r for r in runs}  # a run two experiments share is trained once
    jobs = [{**r, "out": str(out), "threads": args.threads, "data_dir": args.data_dir,
             "device": args.device} for r in unique.values()]
    t0 = time.time()
    if not args.report_only:
        print(f"{len(jobs)} runs into {out} ({args.jobs} at a time)", flush=True)
    if args.report_only:
        finished = [j for j in jobs if (out / j["name"] / "summary.json").is_file()]
        missing = sorted(set(unique) - {j["name"] for j in finished})
        if missing:
            print(f"not run (left out of the tables): {', '.join(missing)}")
        jobs, runs = finished, [r for r in runs if r["name"] not in missing]
        summaries = [json.loads((out / j["name"] / "summary.json").read_text()) for j in jobs]
    elif args.jobs > 1:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            summaries = pool.map(run_one, jobs, chunksize=1)
            pool.close()  # let the workers exit on their own: leaving `with` terminate()s them,
            pool.join()  # and a killed worker's tqdm lock is reported as a leaked semaphore
    else:
        summaries = [run_one(j) for j in jobs]
    results = {j["name"]: s for j, s in zip(jobs, summaries, strict=True)}
    text = report(results, runs, out)
    wall = {name: s["wall_seconds"] for name, s in results.items()}
    text += (f"\nWall time of the runs (s, as recorded in each summary): "
             f"{sum(wall.values()):.0f} in total; this invocation took {time.time() - t0:.0f} s.\n")
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    from superpose.training import Interrupted

    try:
        main()
    except Interrupted as e:  # Ctrl-C or SIGTERM inside a run: its checkpoint is written
        raise SystemExit(f"\n{e}\nRun the same command again to go on from there.") from None
