"""Does Adam let a stiff EWC penalty hold its weights? Displacement against stiffness.

EWC's penalty λ/2 Σ F (θ − θ*)² pulls weight i back with the stiffness K_i = λ F_i. Under plain
gradient descent a stiffer weight moves less, about g_i / K_i for a steady task gradient g_i.
Adam divides each coordinate's step by the root of its own squared gradients, and the
penalty's gradient K_i (θ_i − θ*_i) is part of them. The hypothesis of the EWC sections of
docs/results/psp-notes.md is that Adam therefore moves every stiff weight by about its step
size, whatever K. That would explain why a stronger or fuller penalty forgot more there.

This script measures it. It loads a finished EWC run (``--run``: its network, its accumulated
Fisher F, its anchor θ* and its Adam state; the stream is rebuilt from its ``config.yaml`` with
one task more) and trains that unseen task for ``--steps`` steps with the run's penalty. It
does this once for each optimiser (``--optimizers``, each at its ``--lrs`` rate) and each
strength (``--lambdas``). It prints, per setting:

- the RMS displacement √mean (θ − θ*)² of the weights (not the biases), binned by their Fisher
  F (``--edges``; the same weights in every row, so a column compares strengths, and within
  a row the stiffness K = λ F grows to the right); the first bin, below the smallest positive
  edge, holds the weights the penalty barely protects;
- the accuracy of the earlier tasks (test, mean over them) before and after, and of the new
  task after.

Usage::

    python benchmarks/ewc_adam_stiffness.py --run runs/tune10f-ewc/ewc-10000 \
        --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from superpose import checkpoint
from superpose.config import load_yaml, resolve
from superpose.methods.base import add_quadratic_penalty_grad, make_optimizer
from superpose.streams.base import Stream
from superpose.training import build_model_factory, build_stream


def displacement_by_stiffness(delta: dict[str, Tensor], stiffness: dict[str, Tensor],
                              edges: Sequence[float]) -> list[tuple[float, float, int]]:
    """RMS of ``delta`` over the weights (``*.weight`` tensors) whose ``stiffness`` (any
    per-weight score: λ F or F) lies in each bin [edges[j], edges[j+1]) (the last bin is open
    above): (low edge, RMS, count) per bin; RMS is nan for an empty bin. Weights below the
    first edge are left out."""
    d = torch.cat([delta[k].reshape(-1) for k in delta if k.endswith("weight")])
    s = torch.cat([stiffness[k].reshape(-1) for k in delta if k.endswith("weight")])
    out = []
    for j, low in enumerate(edges):
        high = edges[j + 1] if j + 1 < len(edges) else math.inf
        m = (s >= low) & (s < high)
        n = int(m.sum())
        out.append((low, d[m].pow(2).mean().sqrt().item() if n else math.nan, n))
    return out


@torch.no_grad()
def accuracy(net: nn.Module, stream: Stream, task: int) -> float:
    """Test accuracy of ``net`` on ``task``."""
    net.eval()
    right = total = 0
    for x, y in stream.eval_batches(task, "test"):
        right += int((net(x).argmax(1) == y).sum())
        total += len(y)
    net.train()
    return right / total


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a finished EWC run folder (config, checkpoint)")
    p.add_argument("--steps", type=int, default=500, help="steps on the new task")
    p.add_argument("--lambdas", default="1e3,1e4,1e5", help="comma list of EWC strengths")
    p.add_argument("--optimizers", default="adam", help="comma list of optimisers")
    p.add_argument("--lrs", default="0.001", help="their rates, in the same order")
    p.add_argument("--edges", default="0,1e-9,1e-7,1e-5,1e-3",
                   help="low edges of the bins of the weights' Fisher F")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    saved = load_yaml(run / "config.yaml")
    if saved.get("method") != "ewc":
        raise SystemExit(f"{run} is not an EWC run (method {saved.get('method')!r})")
    over = {"tasks": int(saved["tasks"]) + 1}  # the same permutations, and one unseen
    if args.data_dir:
        over["data_dir"] = args.data_dir
    cfg = resolve(saved, over)
    stream = build_stream(cfg)
    groups, header = checkpoint.load(run / checkpoint.CHECKPOINT_NAME)
    extra = groups["extra"]
    fisher = {k.partition(".")[2]: v for k, v in extra.items() if k.startswith("fisher.")}
    anchor = {k.partition(".")[2]: v for k, v in extra.items() if k.startswith("anchor.")}
    new, old = stream.num_tasks - 1, range(stream.num_tasks - 1)
    optimizers = args.optimizers.split(",")
    lrs = [float(v) for v in args.lrs.split(",")]
    if len(lrs) != len(optimizers):
        raise SystemExit("--lrs needs one rate per optimiser")
    edges = [float(v) for v in args.edges.split(",")]
    factory = build_model_factory(cfg, stream)

    net = factory()
    net.load_state_dict(groups["model"])
    before = sum(accuracy(net, stream, t) for t in old) / len(old)
    print(f"run {run}: {len(old)} tasks learned, their mean test accuracy {100 * before:.2f} %; "
          f"{args.steps} steps on task {new}\n")
    labels = [f"F ≥ {e:g}" if j + 1 == len(edges) else f"{e:g} ≤ F < {edges[j + 1]:g}"
              for j, e in enumerate(edges)]
    print("| optimiser | lr | λ | " + " | ".join(labels)
          + " | earlier tasks after (%) | new task (%) | seconds |")
    print("|---|---|---|" + "---|" * len(edges) + "---|---|---|")
    counts: list[int] = []
    for name, lr in zip(optimizers, lrs, strict=True):
        for lam in (float(v) for v in args.lambdas.split(",")):
            t0 = time.perf_counter()
            net = factory()
            net.load_state_dict(groups["model"])
            opt = make_optimizer(name, net.parameters(), lr)
            if name == cfg.optimizer:  # continue the run's own optimiser state, a fresh copy:
                # load_state_dict keeps the given moment tensors, and the steps change them
                checkpoint.restore_optimizer(
                    opt, {k: v.clone() for k, v in groups["optim"].items()}, header)
                for group in opt.param_groups:
                    group["lr"] = lr
            g = torch.Generator().manual_seed(0)
            loss_fn = nn.CrossEntropyLoss()
            for step in range(args.steps):
                x, y = stream.train_batch(new, step, cfg.batch_size, g)
                opt.zero_grad(set_to_none=True)
                loss_fn(net(x), y).backward()
                with torch.no_grad():
                    for n, p in net.named_parameters():
                        if n in fisher and p.grad is not None:  # the run's penalty, λ/2 Σ F Δ²
                            add_quadratic_penalty_grad(p, fisher[n], anchor[n], 0.5 * lam)
                opt.step()
            params = dict(net.named_parameters())
            delta = {n: (params[n] - anchor[n]).detach() for n in fisher}
            bins = displacement_by_stiffness(delta, fisher, edges)
            after = sum(accuracy(net, stream, t) for t in old) / len(old)
            cells = " | ".join(f"{rms:.1e}" if n else "–" for _, rms, n in bins)
            print(f"| {name} | {lr:g} | {lam:g} | {cells} | {100 * after:.2f} | "
                  f"{100 * accuracy(net, stream, new):.2f} | {time.perf_counter() - t0:.0f} |")
            counts = [n for _, _, n in bins]
    print("\nweights in each bin (the cells above are the RMS of θ − θ* over them): "
          + ", ".join(f"{lab}: {c}" for lab, c in zip(labels, counts, strict=True)))


if __name__ == "__main__":
    main()
