"""Probe protocols for the PSP Fig. 3 table (average accuracy over the last 10 of 50 tasks).

A full table run is 50 tasks x 1000 steps per method; a probe is 11 tasks of the same stream
(psp-binary unless a protocol names another method, fixed contexts), which measures the two
things the table's average is made of:

    learn  the mean accuracy of tasks 1..10 right after each one's 1000 steps (the ceiling)
    final  the mean accuracy of tasks 1..10 after all 11 tasks (each has 0..9 later tasks
           on top, as tasks 40..49 have in the table): a proxy for the table's number

Task 0 (unpermuted MNIST) is left out of both. A protocol of more tasks (``-t25``) averages
tasks 1..24 the same way, and the table adds, for every probe, the mean of the last 10 tasks
after all of them (the table's own metric) and task 0 right after its training and at the end.
Results are appended to --out/results.jsonl and reused, so the script can be stopped and
started again.

    python benchmarks/psp_table_probe.py                        # every protocol below
    python benchmarks/psp_table_probe.py --only w256,w1024-glorot
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import torch

#: name -> overrides of the base protocol (2x256, RMSprop 1e-4: the authors' released settings).
#: ``tf_rmsprop``: rho 0.9 and eps 1e-5 added outside the root (TensorFlow's RMSprop has rho 0.9
#: and eps 1e-10 inside it; its mean square starts at ones in TF 1, at zeros here).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "w256": {},
    "w256-glorot": {"init": "glorot"},
    "w256-tf": {"tf_rmsprop": True},
    "w256-glorot-tf": {"init": "glorot", "tf_rmsprop": True},
    "w256-learned": {"learn_context": True},
    "w256-nobias": {"no_bias": True},
    "w256-glorot-nobias": {"init": "glorot", "no_bias": True},
    "w256-d3": {"depth": 3},
    "w256-adam1e-3": {"optimizer": "adam", "lr": 1e-3},
    "w256-rms3e-4-glorot": {"init": "glorot", "lr": 3e-4},
    "w256-sgd0.1-glorot": {"init": "glorot", "optimizer": "sgd", "lr": 0.1},
    "w256-sgd0.3-glorot": {"init": "glorot", "optimizer": "sgd", "lr": 0.3},
    # 1e-4 x 256/width: the step of w256 per unit of fan-in
    "w1024-rms2.5e-5": {"width": 1024, "lr": 2.5e-5},
    "w1024-glorot": {"init": "glorot", "width": 1024},
    "w1024-rms2e-4-glorot": {"init": "glorot", "width": 1024, "lr": 2e-4},
    "w1024-sgd0.1-glorot": {"init": "glorot", "width": 1024, "optimizer": "sgd", "lr": 0.1},
    "w2048-rms1.25e-5": {"width": 2048, "lr": 1.25e-5},
    "w2048-glorot": {"init": "glorot", "width": 2048},
    "w2048-rms2e-4-glorot": {"init": "glorot", "width": 2048, "lr": 2e-4},
    "w2048-rms2e-4-glorot-nobias": {"init": "glorot", "width": 2048, "lr": 2e-4,
                                    "no_bias": True},
    # Adam at RMSprop's rate: the same step size, plus momentum
    "w1024-adam1e-4-glorot": {"init": "glorot", "width": 1024, "optimizer": "adam", "lr": 1e-4},
    "w2048-adam1e-4-glorot": {"init": "glorot", "width": 2048, "optimizer": "adam", "lr": 1e-4},
    # a cosine decay within every task (--lr-schedule cosine): large early steps to learn, small
    # late ones, so less of the steps after a task is learned lands on the other tasks
    **{f"w{width}-rms{lr}-glorot-cos": {"init": "glorot", "width": width, "lr": float(lr),
                                        "lr_schedule": "cosine"}
       for width, lr in [(1024, "2e-4"), (1024, "4e-4"), (1024, "8e-4"),
                         (2048, "2e-4"), (2048, "4e-4"), (2048, "6e-4"),
                         (4096, "4e-4")]},
    # psp-complex under the cosine: its weights have two real parts, each moved by the rate
    **{f"w1024-complex-rms{lr}-glorot-cos": {"method": "psp-complex", "init": "glorot",
                                             "width": 1024, "lr": float(lr),
                                             "lr_schedule": "cosine"}
       for lr in ["2e-4", "4e-4"]},
    # 25 tasks at 1024 units: where complex falls behind binary (after ~10 tasks at 2048), and
    # whether a complex weight's initial size matters: ``polar_gain`` multiplies the polar
    # init's magnitude (sqrt 2: each real component starts with Glorot's variance, as binary's)
    **{f"w1024-{name}rms4e-4-glorot-cos-t25": {
        "method": method, "init": "glorot", "width": 1024, "lr": 4e-4, "lr_schedule": "cosine",
        "tasks": 25, **extra}
       for name, method, extra in [("", "psp-binary", {}), ("complex-", "psp-complex", {}),
                                   ("complex-polar1.41-", "psp-complex",
                                    {"polar_gain": 2 ** 0.5}),
                                   ("onepower-", "psp-onepower", {})]},
}
BASE: dict[str, Any] = dict(benchmark="permuted-mnist", method="psp-binary", tasks=11,
                            steps_per_task=1000, batch_size=128, depth=2, width=256,
                            optimizer="rmsprop", lr=1e-4, eval_every=1000, threads=1)


class TFStyleRMSprop(torch.optim.RMSprop):
    """RMSprop with TensorFlow's decay (0.9) and an epsilon of its size outside the root."""

    def __init__(self, params: Any, lr: float = 1e-2, **kwargs: Any) -> None:
        kwargs.update(alpha=0.9, eps=1e-5)
        super().__init__(params, lr=lr, **kwargs)


def probe(name: str, over: dict[str, Any], out: Path, data_dir: str | None) -> dict[str, Any]:
    import superpose.complex as cx
    from superpose import training
    from superpose.config import resolve

    over = dict(over)
    tf_rmsprop = over.pop("tf_rmsprop", False)
    polar_gain = over.pop("polar_gain", 1.0)
    layers = [BASE, over] + ([{"data_dir": data_dir}] if data_dir else [])
    cfg = resolve(*layers)
    folder = out / name
    plain, plain_polar = torch.optim.RMSprop, cx.polar_init_
    if tf_rmsprop:
        torch.optim.RMSprop = TFStyleRMSprop  # methods/base.py builds torch.optim.RMSprop
    if polar_gain != 1.0:
        def scaled_polar(weight: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            with torch.no_grad():
                return plain_polar(weight, *args, **kwargs).mul_(polar_gain)
        cx.polar_init_ = scaled_polar  # the complex layers' reset_parameters call it
    t0 = time.time()
    try:
        resume = (folder / "checkpoint.safetensors").is_file()
        training.run(cfg, folder, resume=resume, progress=False, log=lambda m: None)
    finally:
        torch.optim.RMSprop, cx.polar_init_ = plain, plain_polar
    with open(folder / "accuracy_matrix.csv") as f:
        rows = [[float(v) if v else None for v in r[1:]] for r in list(csv.reader(f))[1:]]
    n = len(rows)
    learn = [rows[i][i] for i in range(1, n)]
    final = [rows[-1][i] for i in range(1, n)]
    last10 = [rows[-1][i] for i in range(max(1, n - 10), n)]
    return dict(name=name, over=over, tf_rmsprop=tf_rmsprop, polar_gain=polar_gain,
                learn=100 * sum(learn) / len(learn), final=100 * sum(final) / len(final),
                last10=100 * sum(last10) / len(last10), task0=[100 * rows[0][0],
                                                               100 * rows[-1][0]],
                secs=round(time.time() - t0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(PROTOCOLS))
    ap.add_argument("--out", default="runs/psp-table-probe")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "results.jsonl"
    done = {}
    if log.is_file():
        done = {r["name"]: r for r in map(json.loads, log.read_text().splitlines()) if r}
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in PROTOCOLS:
            raise SystemExit(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
        if name not in done:
            done[name] = probe(name, PROTOCOLS[name], out, args.data_dir)
            with open(log, "a") as f:
                f.write(json.dumps(done[name]) + "\n")
        r = done[name]
        print(f"  {name}: learn {r['learn']:.2f}, final {r['final']:.2f} ({r['secs']} s)",
              flush=True)
    print("\n| protocol (psp-binary, 11 tasks, unless named) | learn % | final % | last 10 % "
          "| task 0: learned → final % |\n|---|---|---|---|---|")
    for name in PROTOCOLS:
        if name in done:
            r = done[name]
            extra = (f"{r['last10']:.2f} | {r['task0'][0]:.2f} → {r['task0'][1]:.2f}"
                     if "last10" in r else "– | –")  # results.jsonl lines before session 14
            print(f"| {name} | {r['learn']:.2f} | {r['final']:.2f} | {extra} |")


if __name__ == "__main__":
    from superpose.training import Interrupted

    try:
        main()
    except Interrupted as e:  # Ctrl-C or SIGTERM inside a run: its checkpoint is written
        raise SystemExit(f"\n{e}\nRun the same command again to go on from there.") from None
