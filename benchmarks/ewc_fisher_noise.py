"""How many inputs does EWC's diagonal Fisher need? Its sampling error at a trained network.

Loads the network of a run (``--run``: a run folder with a checkpoint, e.g. an EWC run of
``configs/zenke_pmnist.yaml``; the stream and network are rebuilt from its ``config.yaml``),
computes the true diagonal Fisher (exact expectation over the classes;
``superpose.methods.ewc.diagonal_fisher``) of one task's training images from a reference
sample of ``--reference`` inputs, and compares it with estimates from ``--samples`` disjoint
inputs, ``--repeats`` draws each. Per weight layer it prints

- ``L1 error``: Σ |F_est − F_ref| / Σ F_ref (0: the reference itself; the reference is an
  estimate too, so this is a lower bound on the true error for large samples);
- ``F > 0 estimated 0``: the share of the weights with F_ref > 0 whose estimate is exactly 0 (a
  weight no sampled input moved, left without any protection);
- ``mass ratio``: Σ F_est / Σ F_ref, min–max over the draws (the penalty's overall strength,
  λ Σ F, scales by this from task to task).

Usage::

    python benchmarks/ewc_fisher_noise.py --run runs/psp/zenkec-ewc-s0 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from superpose import checkpoint
from superpose.config import load_yaml, resolve
from superpose.methods.ewc import diagonal_fisher
from superpose.training import build_model_factory, build_stream


def sampling_error(ref: dict[str, Tensor], est: dict[str, Tensor]
                   ) -> dict[str, tuple[float, float, float]]:
    """Per weight matrix of ``ref``: (Σ|est − ref| / Σ ref, share of the entries with ref > 0
    where est == 0, Σ est / Σ ref)."""
    out = {}
    for k, r in ref.items():
        if not k.endswith("weight"):
            continue
        e = est[k]
        out[k] = (((e - r).abs().sum() / r.sum()).item(), (e[r > 0] == 0).float().mean().item(),
                  (e.sum() / r.sum()).item())
    return out


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run folder with config.yaml and a checkpoint")
    p.add_argument("--task", type=int, default=-1, help="task whose Fisher (default: the last)")
    p.add_argument("--samples", default="200,1000,2000,5000", help="comma list of sample sizes")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--reference", type=int, default=10000, help="inputs of the reference")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    # the run's own settings, as `superpose run --resume` rebuilds them
    cfg = resolve(load_yaml(run / "config.yaml"),
                  {"data_dir": args.data_dir} if args.data_dir else {})
    stream = build_stream(cfg)
    net = build_model_factory(cfg, stream)()
    groups, _ = checkpoint.load(run / checkpoint.CHECKPOINT_NAME)
    net.load_state_dict(groups["model"])
    task = args.task % stream.num_tasks
    data = stream.task_data(task, "train")
    sizes = [int(s) for s in args.samples.split(",")]
    need = args.reference + args.repeats * max(sizes)
    if need > len(data):
        raise SystemExit(f"needs {need} training images, the task has {len(data)}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x = stream.transform(data.x[order[:need]], task, None)  # (need, 1, 28, 28)
    t0 = time.perf_counter()
    ref = diagonal_fisher(net, x[:args.reference])
    print(f"run {run}, task {task}; reference: {args.reference} inputs "
          f"({time.perf_counter() - t0:.1f} s)\n")
    print("| inputs | layer | L1 error | F > 0 estimated 0 | mass ratio (min–max) |")
    print("|---|---|---|---|---|")
    for n in sizes:
        draws = [sampling_error(ref, diagonal_fisher(
            net, x[args.reference + r * n: args.reference + (r + 1) * n]))
            for r in range(args.repeats)]
        for k in draws[0]:
            err, zero, mass = zip(*(d[k] for d in draws), strict=True)
            print(f"| {n} | {k} | {sum(err) / len(err):.2f} | {sum(zero) / len(zero):.3f} | "
                  f"{min(mass):.2f}–{max(mass):.2f} |")


if __name__ == "__main__":
    main()
