"""Fig. 3's context types: the crosstalk of one update under fixed binary and Haar contexts.

A gradient step of task ``k`` on a superposed layer changes its weights by
``ΔW = -η δ (C_k b)ᵀ`` (``b`` the layer's input on task ``k``'s example, before the context).
Task 0 reads the layer through ``C_0``, so its pre-activation on input ``a`` moves by
``ΔW C_0 a = -η δ s`` with the scalar crosstalk ``s = bᵀ C_kᵀ C_0 a`` (eq. 3 of the PSP paper,
``y = W (C x)``; without contexts ``s = bᵀa``). Its expected square over the random draw of
the contexts has a closed form:

- binary (``C = diag(±1)``, so ``C_kᵀC_0`` is a random sign diagonal): ``E s² = Σ_i a_i² b_i²``;
- rotation (Haar ``C_k``, ``C_kᵀC_0`` Haar too; ``E[Q_ij Q_kl] = δ_ik δ_jl / M``):
  ``E s² = ‖a‖² ‖b‖² / M``.

So a fixed rotation lowers the crosstalk below binary's only by the factor
``R = M Σ a_i² b_i² / (‖a‖² ‖b‖²)``, which is 1 when the energy of one task's input is spread
over the coordinates independently of the other's. A new pixel permutation makes exactly that
true at the input layer, in expectation; this script measures ``R`` in every layer of a
2×256 psp-binary network trained on task 0 (the Fig. 3 setting: RMSprop 1e-4, batch 128,
1000 steps), for task 0's test images against tasks 1..K's, and checks both closed forms
against the contexts the library draws.

    python benchmarks/psp_crosstalk.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import superpose as sp
from superpose.contexts import create_context
from superpose.layers import SuperposedLinear
from superpose.streams.permuting import image_splits, task_permutation

BATCH = 128


def layer_inputs(model: torch.nn.Module, x: torch.Tensor, task: int) -> list[torch.Tensor]:
    """The input (before its context) of every superposed layer, input to output: (N, M_l)."""
    seen: list[torch.Tensor] = []
    layers = [m for m in model.modules() if isinstance(m, SuperposedLinear)]
    hooks = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
             for m in layers]
    try:
        with torch.no_grad():
            model.set_task(task)
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def expected_crosstalk(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per pair of rows of ``a`` and ``b`` (N, M): E s² for no context, binary and rotation."""
    m = a.shape[1]
    return {"none": (a * b).sum(1) ** 2,
            "binary": (a.square() * b.square()).sum(1),
            "rotation": a.square().sum(1) * b.square().sum(1) / m}


def sampled_crosstalk(a: torch.Tensor, b: torch.Tensor, context: str, draws: int,
                      seed: int) -> torch.Tensor:
    """Mean over ``draws`` context pairs (tasks 0 and 1 of fresh seeds) of s² per row pair."""
    m = a.shape[1]
    total = torch.zeros(a.shape[0], dtype=torch.float64)
    for d in range(draws):
        ctx = create_context(context, dim=m, num_tasks=2, seed=seed + d)
        c0, ck = (ctx.as_matrix(t).double() for t in (0, 1))
        s = ((b.double() @ ck.T) * (a.double() @ c0.T)).sum(1)  # (C_k b)ᵀ (C_0 a)
        total += s.square()
    return total / draws


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1000, help="training steps on task 0")
    ap.add_argument("--tasks", type=int, default=10, help="later tasks whose inputs are compared")
    ap.add_argument("--pairs", type=int, default=2000, help="test images per comparison")
    ap.add_argument("--draws", type=int, default=20, help="context draws for the sampled check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    train_split, test_split = image_splits("mnist", data_dir=args.data_dir)
    xtr, ytr = train_split.x.flatten(1), train_split.y  # (60000, 784)
    xte = test_split.x.flatten(1)[: args.pairs]  # (pairs, 784)
    pixels = xtr.shape[1]
    net = sp.models.create("mlp", in_features=pixels, hidden=[args.width] * 2, classes=10)
    model = sp.superpose(net, context="binary", num_tasks=args.tasks + 1, seed=args.seed)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    model.set_task(0)
    for _ in range(args.steps):
        idx = torch.randint(0, xtr.shape[0], (BATCH,), generator=gen)
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ins0 = layer_inputs(model, xte, 0)
    # task k's inputs on other images: roll the test set so no pair shares an image
    per_layer: list[dict[str, list[torch.Tensor]]] = [{} for _ in ins0]
    for k in range(1, args.tasks + 1):
        xk = xte.roll(1 + k, dims=0)[:, task_permutation(pixels, k, args.seed)]
        for layer, (a, b) in enumerate(zip(ins0, layer_inputs(model, xk, k), strict=True)):
            closed = expected_crosstalk(a, b)
            for name, v in closed.items():
                per_layer[layer].setdefault(name, []).append(v)
            if k == 1:  # the closed forms against the library's own context draws
                for ctx in ("binary", "rotation"):
                    got = sampled_crosstalk(a, b, ctx, args.draws, 1000 * args.seed + layer)
                    per_layer[layer].setdefault(f"{ctx} sampled", []).append(got)
                    per_layer[layer].setdefault(f"{ctx} closed", []).append(closed[ctx])

    print(f"psp-binary 2x{args.width} after {args.steps} RMSprop steps on task 0; task 0's "
          f"inputs against tasks 1..{args.tasks}, {args.pairs} test images each\n")
    print("| layer (inputs M) | E s², no context | binary | rotation | R = binary / rotation "
          "| binary: sampled / closed form | rotation: sampled / closed form |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for layer, (a, stats) in enumerate(zip(ins0, per_layer, strict=True)):
        mean = {name: torch.cat(v).double().mean().item() for name, v in stats.items()}
        print(f"| {layer + 1} ({a.shape[1]}) | {mean['none']:.4g} | {mean['binary']:.4g} | "
              f"{mean['rotation']:.4g} | {mean['binary'] / mean['rotation']:.3f} | "
              f"{mean['binary sampled'] / mean['binary closed']:.3f} | "
              f"{mean['rotation sampled'] / mean['rotation closed']:.3f} |")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
