"""Speed of parameter superposition against the same network in plain PyTorch (issue 7).

Everything runs in one process on one thread (``torch.set_num_threads(1)``); variants that are
compared are interleaved (a random order in every round) and timed by the CPU time of this
process (``time.process_time``), so other load on the machine slows them alike; a table shows
medians over the rounds and, for ratios, the median of the per-round ratios with its
interquartile range.

Sections (``--sections``, default all):

``matmul``  the machine's single-thread matrix-product rate (GFLOP/s, float32 GEMM);
``steps``   one training step (forward + backward + Adam) of psp-binary, psp-complex,
            psp-onepower, psp-rotation (our ``Method.train_step``, as the training loop calls
            it) against the plain MLP trained by a hand-written PyTorch loop, at 2×256 and
            2×2048 with batch 128, and a superposed ResNet-18 against the plain one at a small
            batch; with each step's matmul-FLOP floor and its fraction of the matmul rate;
``baselines`` one EWC and one SI training step (2×2000, batch 256, Adam: Zenke et al.'s
            network) against ``standard``, with the penalty's gradient in closed form (the
            methods' path) and through autograd (the path it replaced); and EWC's Fisher
            in closed form against per-example gradients (vmap);
``clnp``    one CLNP training step (2×2000, batch 256, Adam; section 3.1's network) while
            earlier tasks own a given fraction of each hidden layer: the dense pass (whole
            layers, frozen gradients zeroed) against the row-sparse one (``--train-path
            sparse``: only the free units' rows are gathered, computed and differentiated) and
            ``auto`` (the default);
``eval``    evaluating K tasks of permuted MNIST (10,000 test images each): one pass with a
            per-sample task tensor (``evaluation.evaluate_tasks``) against a loop over tasks
            (``evaluation.evaluate``), at several evaluation batch sizes;
``run``     a whole permuted-MNIST run (psp-binary, 2×256, default evaluation: task 0 every
            100 steps and every seen task at each boundary, on the full test set) against the
            bare training compute of the same steps, with what the rest consists of.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/speed.py --quick              # a few minutes
    OMP_NUM_THREADS=1 python benchmarks/speed.py                      # full (long on a CPU)
    OMP_NUM_THREADS=1 python benchmarks/speed.py --sections run --run-tasks 50 \\
        --run-steps 1000                                              # the whole 50×1000 run

MNIST is found as by ``superpose run`` (``--data-dir``, ``SUPERPOSE_DATA``, the user cache, system
folders); without it the ``eval`` and ``run`` sections use random images of MNIST's shape.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from superpose import evaluation, models, superpose, training
from superpose.config import resolve
from superpose.errors import UserError
from superpose.methods import METHODS, Method, MethodContext
from superpose.methods.clnp import Clnp
from superpose.methods.ewc import EWC, diagonal_fisher
from superpose.methods.si import SI
from superpose.runtime import keep_freed_memory
from superpose.streams.base import Split, Stream

Step = Callable[[], None]
PSP_METHODS = ("psp-binary", "psp-complex", "psp-onepower", "psp-rotation")
HAND = "psp-binary · model, hand loop"
UNFOLDED = "psp-binary · not folded"
MULS = "plain + the same multiplies by hand"


# ---------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Per-call CPU seconds of one variant over the rounds, and its per-round ratios."""

    seconds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def ratio(self) -> tuple[float, float, float]:
        """Median per-round ratio to the baseline, and its 25th and 75th percentiles."""
        r = sorted(self.ratios)
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0], r[0], r[0]]
        return statistics.median(r), q[0], q[2]


def compare(variants: dict[str, Step], baseline: str, *, budget: float, min_rounds: int = 5,
            max_rounds: int = 400, sample: float = 0.02, warmup: int = 2,
            seed: int = 0) -> dict[str, Timing]:
    """Time ``variants`` interleaved: every round runs each one (random order) ``n_v`` times.

    ``n_v`` is chosen so that one sample takes about ``sample`` CPU seconds; rounds go on until
    ``budget`` CPU seconds are spent (at least ``min_rounds``). Each variant's per-call time of
    a round is divided by the baseline's of the same round (paired ratios).
    """
    calls: dict[str, int] = {}
    for name, f in variants.items():
        for _ in range(warmup):
            f()
        t0 = time.process_time()
        f()
        calls[name] = max(1, round(sample / max(time.process_time() - t0, 1e-6)))
    out = {name: Timing() for name in variants}
    rng = random.Random(seed)
    spent, rounds = 0.0, 0
    while rounds < min_rounds or (spent < budget and rounds < max_rounds):
        order = list(variants)
        rng.shuffle(order)
        this: dict[str, float] = {}
        for name in order:
            f, n = variants[name], calls[name]
            t0 = time.process_time()
            for _ in range(n):
                f()
            dt = time.process_time() - t0
            spent += dt
            this[name] = dt / n
        for name, t in this.items():
            out[name].seconds.append(t)
            out[name].ratios.append(t / this[baseline])
        rounds += 1
    return out


def matmul_rate(size: int = 1024, seconds: float = 3.0) -> float:
    """Single-thread float32 GEMM rate, GFLOP/s (median over repeats of ``size``³ products)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    rates = []
    t_end = time.process_time() + seconds
    while time.process_time() < t_end or len(rates) < 5:
        t0 = time.process_time()
        a @ b
        rates.append(2 * size**3 / max(time.process_time() - t0, 1e-9) / 1e9)
    return statistics.median(rates)


# ---------------------------------------------------------------------- FLOP floors


def mlp_step_flops(dims: Sequence[int], batch: int, kind: str, products: int = 3) -> float:
    """Matmul FLOPs of one training step of an MLP with layer sizes ``dims`` (784, h, h, 10).

    ``kind``: ``plain`` / ``binary`` (contexts are element-wise: no extra products),
    ``rotation`` (plus the context's ``M×M`` product on the cheaper side, forward and
    backward), ``complex`` (complex weights: a real input meets them in 2 real products, a
    complex × complex product costs ``products`` real ones (3 with Gauss's trick, 4 without),
    the logits read only the real part of the last layer: 2 products). Forward, input gradient
    (not for the first layer: the data needs none) and weight gradient; 2 FLOPs per
    multiply-add.
    """
    macs = 0.0
    layers = list(zip(dims[:-1], dims[1:], strict=True))
    for i, (m, n) in enumerate(layers):
        first, last = i == 0, i == len(layers) - 1
        passes = 2 if first else 3  # forward, weight gradient (, input gradient)
        unit = batch * m * n
        if kind in ("plain", "binary"):
            macs += passes * unit
        elif kind == "rotation":
            macs += passes * unit
            if batch <= n:  # input side: C x forward, its transpose backward (not for data)
                macs += (1 if first else 2) * batch * m * m
            else:  # weight side: W C forward, (∂Ŵ) Cᵀ backward
                macs += 2 * n * m * m
        elif kind == "complex":
            per = 2 if (first or last) else products
            macs += passes * per * unit
        else:
            raise ValueError(kind)
    return 2 * macs


def mlp_forward_flops(dims: Sequence[int], images: int) -> float:
    """Matmul FLOPs of evaluating a real MLP on ``images`` inputs."""
    return 2.0 * images * sum(m * n for m, n in zip(dims[:-1], dims[1:], strict=True))


def counted_step_flops(net: nn.Module, x: Tensor, y: Tensor) -> float:
    """Matmul/convolution FLOPs of one forward + backward of ``net``, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


# ------------------------------------------------------------------- the variants


class ShapeStream(Stream):
    """A stream that only tells methods its shape (the step benchmark feeds its own batches)."""

    def __init__(self, num_tasks: int, input_shape: tuple[int, ...], num_classes: int):
        self.name = "shape-only"
        self.num_tasks = num_tasks
        self.input_shape = input_shape
        self.num_classes = num_classes


def batches(shape: tuple[int, ...], batch: int, classes: int, count: int = 8,
            seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """``count`` random batches (images in [0, 1], labels uniform), cycled by the steps."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, *shape, generator=g), torch.randint(0, classes, (batch,),
                                                                    generator=g))
            for _ in range(count)]


class HandContext(nn.Module):
    """``nn.Linear`` reading its input through fixed ±1 signs, written by hand: ``W (c ⊙ x)``
    (or ``(W ⊙ c) x`` when that is cheaper, as the superposed layer chooses): the element-wise
    work of binary superposition with nothing else."""

    def __init__(self, linear: nn.Linear, seed: int):
        super().__init__()
        self.linear = linear
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("c", torch.randint(0, 2, (linear.in_features,), generator=g) * 2.0 - 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() // self.linear.in_features <= self.linear.out_features:
            return F.linear(x * self.c, self.linear.weight, self.linear.bias)
        return F.linear(x, self.linear.weight * self.c, self.linear.bias)


def with_hand_contexts(net: nn.Module) -> nn.Module:
    """``net`` with every top-level ``nn.Linear`` wrapped in :class:`HandContext`."""
    for i, (name, m) in enumerate(list(net.named_children())):
        if isinstance(m, nn.Linear):
            setattr(net, name, HandContext(m, i))
    return net


def plain_step(build: Callable[[], nn.Module], data: list[tuple[Tensor, Tensor]],
               lr: float = 1e-3, fused: bool = True) -> tuple[Step, nn.Module]:
    """The plain PyTorch training step a user writes: zero_grad, forward, loss, backward, step.

    ``build`` may return a superposed model (``superpose(...)``): the library's layers in the
    same hand-written loop. ``fused``: Adam's single-kernel implementation, which our methods
    use (``make_optimizer``), so the baseline uses it too.
    """
    torch.manual_seed(0)
    net = build()
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, fused=fused or None)
    i = [0]

    def step() -> None:
        x, y = data[i[0] % len(data)]
        i[0] += 1
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step, net


def method_step(name: str, build: Callable[[], nn.Module], data: list[tuple[Tensor, Tensor]],
                shape: tuple[int, ...], classes: int, tasks: int = 50, task: int = 3,
                lr: float = 1e-3, fused: bool | None = None, fold: bool = True, **options: Any
                ) -> tuple[Step, Method]:
    """Our training step: ``Method.train_step`` exactly as the training loop calls it.
    ``fold=False``: psp-binary without folding its contexts into the weights (a reference)."""
    torch.manual_seed(0)
    cls = METHODS.get(name)
    ctx = MethodContext(stream=ShapeStream(tasks, shape, classes), build_model=build, lr=lr,
                        optimizer="adam", batch_size=data[0][0].shape[0])
    opts = cls.Options(**options)
    method = cls(ctx, opts)
    if not fold:
        method.folds = False
    if fused is not None:  # override make_optimizer's choice (fused Adam) for a reference row
        method.optimizer = torch.optim.Adam(method.trainable_parameters(), lr=lr,
                                            fused=fused or None)
    method.begin_task(task)
    i = [0]

    def step() -> None:
        x, y = data[i[0] % len(data)]
        method.train_step(x, y, task, i[0])
        i[0] += 1

    return step, method


# ---------------------------------------------------------------------- reporting


def load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average n/a"
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    return (f"{cpu}, {os.cpu_count()} CPUs; Python {platform.python_version()}, torch "
            f"{torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
            f"{torch.get_num_threads()} thread")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}" if seconds < 1 else f"{seconds * 1e3:.0f}"


def fmt_ratio(t: Timing) -> str:
    med, lo, hi = t.ratio()
    return f"{med:.3f} [{lo:.2f}–{hi:.2f}]"


# -------------------------------------------------------------------- sections


def section_matmul(args: argparse.Namespace) -> float:
    rate = matmul_rate(512 if args.quick else 1024, 2.0 if args.quick else 5.0)
    print(f"\n## Matrix-product rate\n\nfloat32 GEMM, {512 if args.quick else 1024}³, one "
          f"thread: **{rate:.1f} GFLOP/s** ({load()})\n")
    return rate


def section_steps(args: argparse.Namespace, rate: float) -> None:
    print("\n## Training step: superposition vs the same network in plain PyTorch\n")
    print("CPU time per step (median over interleaved rounds); `× plain`: median of per-round "
          "ratios [interquartile range]; floor: matmul FLOPs of the step relative to plain "
          "(complex: 3 real products per complex one); `÷ floor`: (× plain) / floor; "
          "GFLOP/s and % of the matmul rate: the step's floor FLOPs over its time. "
          "`plain`: the network in a hand-written PyTorch loop (Adam); `standard` and `psp-*`: "
          "our `Method.train_step`, as `superpose run` calls it (psp-binary trains its "
          "contexts folded into the weights; `not folded`: without); `model, hand loop`: a "
          "`superpose()`d model in the plain loop; `multiplies by hand`: the plain loop with "
          "binary superposition's element-wise multiplies written into the network by hand (its "
          "floor in eager PyTorch); every row uses fused Adam "
          "(`torch.optim.Adam(..., fused=True)`, as `make_optimizer` does) "
          "except `unfused Adam`.\n")
    batch = 128
    rows: list[list[str]] = []
    checks: list[str] = []
    for hidden in (args.widths if "steps" in args.sections else []):
        dims = (784, hidden, hidden, 10)
        data = batches((1, 28, 28), batch, 10)

        def build(h: int = hidden) -> nn.Module:
            return models.create("mlp", in_features=784, hidden=[h, h], classes=10)

        def superposed(h: int = hidden) -> nn.Module:
            model = superpose(build(h), context="binary", num_tasks=50, seed=7919)
            model.set_task(3)
            return model

        variants: dict[str, Step] = {"plain": plain_step(build, data)[0]}
        variants["standard"] = method_step("standard", build, data, (1, 28, 28), 10)[0]
        for name in PSP_METHODS:
            variants[name] = method_step(name, build, data, (1, 28, 28), 10)[0]
        variants[UNFOLDED] = method_step("psp-binary", build, data, (1, 28, 28), 10,
                                         fold=False)[0]
        variants[HAND] = plain_step(superposed, data)[0]
        variants[MULS] = plain_step(lambda h=hidden: with_hand_contexts(build(h)), data)[0]
        variants["plain · unfused Adam"] = plain_step(build, data, fused=False)[0]
        variants["psp-binary · unfused Adam"] = method_step("psp-binary", build, data,
                                                            (1, 28, 28), 10, fused=False)[0]
        budget = args.step_budget * (1 if hidden <= 512 else 3)
        res = compare(variants, "plain", budget=budget, min_rounds=5 if hidden <= 512 else 3)
        plain_flops = mlp_step_flops(dims, batch, "plain")
        for name, t in res.items():
            kind = ("complex" if name in ("psp-complex", "psp-onepower") else
                    "rotation" if name == "psp-rotation" else "plain")
            flops = mlp_step_flops(dims, batch, kind)
            floor = flops / plain_flops
            med = t.ratio()[0]
            extra = ""
            if kind == "complex":
                extra = f" ({mlp_step_flops(dims, batch, kind, products=4) / plain_flops:.2f} "
                extra += "with 4)"
            rows.append([f"MLP 2×{hidden}", name, fmt_ms(t.median), fmt_ratio(t),
                         f"{floor:.2f}{extra}", f"{med / floor:.2f}",
                         f"{flops / t.median / 1e9:.1f}",
                         f"{100 * flops / t.median / 1e9 / rate:.0f} %"])
            if name in ("psp-binary", UNFOLDED, HAND):
                checks.append(f"{name} 2×{hidden}: {med:.3f} × plain (target ≤ 1.05): "
                              f"{'holds' if med <= 1.05 else 'MISSED'}")
            if name == "psp-complex":
                checks.append(f"psp-complex 2×{hidden}: {med:.3f} × plain (target ≤ 3.2): "
                              f"{'holds' if med <= 3.2 else 'MISSED'}")
            if name == "psp-rotation":
                checks.append(f"psp-rotation 2×{hidden}: {med / floor:.3f} × its FLOP floor "
                              f"relative to plain (target ≤ 1.1): "
                              f"{'holds' if med / floor <= 1.1 else 'MISSED'}")
        print(f"- MLP 2×{hidden} timed ({load()})", flush=True)
    if "resnet" in args.sections:
        resnet_row(args, rate, rows)
    print()
    print(table(["network", "step", "ms", "× plain", "floor × plain", "÷ floor", "GFLOP/s",
                 "of matmul rate"], rows))
    print()
    for c in checks:
        print(f"- {c}")


def task_1_steps(m: Method, data: list[tuple[Tensor, Tensor]]) -> Step:
    """A step function: ``m.train_step`` on task 1, cycling through ``data``."""
    m.begin_task(1)
    i = [0]

    def step() -> None:
        x, y = data[i[0] % len(data)]
        m.train_step(x, y, 1, i[0])
        i[0] += 1

    return step


def clnp_step(data: list[tuple[Tensor, Tensor]], width: int, used: Sequence[float], path: str
              ) -> Step:
    """CLNP's ``train_step`` on task 1 when finished tasks own the fraction ``used[l]`` of hidden
    layer l (random units; interference weights cut as after pruning)."""
    torch.manual_seed(0)
    ctx = MethodContext(stream=ShapeStream(10, (1, 28, 28), 10), lr=0.002, optimizer="adam",
                        batch_size=data[0][0].shape[0],
                        build_model=lambda: models.create("mlp", in_features=784,
                                                          hidden=[width, width], classes=10))
    m = Clnp(ctx, Clnp.Options(l1=[1e-7, 1e-5, 1e-6], train_path=path))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for l, f in enumerate(used):
            m.used[l][torch.randperm(width, generator=g)[:round(f * width)]] = True
            if l > 0:
                w = m.net.weight_layer(l).weight  # (U_l, U_{l-1})
                w[m.used[l].nonzero(), (~m.used[l - 1]).nonzero().T] = 0.0
    m.trained[0] = True
    m.task_units[0] = m.used[-1]
    return task_1_steps(m, data)


class EwcByAutograd(EWC):
    """EWC with its penalty differentiated by autograd (the reference the closed form beat)."""

    def loss(self, x: Tensor, y: Tensor, task: int, step: int) -> Tensor:
        return Method.loss(self, x, y, task, step) + self.penalty()

    def before_optimizer_step(self, task: int, step: int) -> None:
        pass

    def train_step(self, x: Tensor, y: Tensor, task: int, step: int) -> Tensor:
        return Method.train_step(self, x, y, task, step)


class SiByAutograd(SI):
    """SI with its penalty differentiated by autograd and the task-loss gradient ω needs taken
    back out of the total (the path the closed form replaced)."""

    def loss(self, x: Tensor, y: Tensor, task: int, step: int) -> Tensor:
        return Method.loss(self, x, y, task, step) + self.penalty()

    @torch.no_grad()
    def before_optimizer_step(self, task: int, step: int) -> None:
        self._grad, self._before = {}, {}
        for n, p in self.tracked().items():
            pen_grad = 2 * self.options.si_c * self.importance[n] * (p - self.anchor[n])
            self._grad[n] = p.grad - pen_grad
            self._before[n] = p.detach().clone()

    def train_step(self, x: Tensor, y: Tensor, task: int, step: int) -> Tensor:
        return Method.train_step(self, x, y, task, step)


def baseline_step(cls: type[Method], data: list[tuple[Tensor, Tensor]], width: int,
                  **options: Any) -> Step:
    """``cls.train_step`` on task 1 of a 2×``width`` MLP after one finished task: EWC's Fisher
    and SI's importance random and positive, the anchor a random point near the weights."""
    torch.manual_seed(0)
    ctx = MethodContext(stream=ShapeStream(10, (1, 28, 28), 10), lr=1e-3, optimizer="adam",
                        batch_size=data[0][0].shape[0],
                        build_model=lambda: models.create("mlp", in_features=784,
                                                          hidden=[width, width], classes=10))
    m = cls(ctx, cls.Options(**options))
    g = torch.Generator().manual_seed(1)
    state = {n: (torch.rand(p.shape, generator=g), p.detach() + 0.01 * torch.randn(
        p.shape, generator=g)) for n, p in m.model.named_parameters()}
    if isinstance(m, EWC):
        m.fisher = {n: f for n, (f, _) in state.items()}
        m.anchor = {n: a for n, (_, a) in state.items()}
    elif isinstance(m, SI):
        m.importance = {n: f for n, (f, _) in state.items()}
        m.anchor = {n: a for n, (_, a) in state.items()}
    return task_1_steps(m, data)


def section_baselines(args: argparse.Namespace) -> None:
    print("\n## EWC and SI training steps: the penalty's gradient in closed form\n")
    width = 500 if args.quick else 2000
    print(f"CPU time per `train_step` (forward, backward, penalty, Adam; SI's path integral) on "
          f"a 2×{width} MLP, batch 256, on the second task (Zenke et al.'s network). "
          "`closed form`: the methods as shipped, which add λF(θ − θ*) (EWC) or 2cΩ(θ − θ*) "
          "(SI) to the task loss's gradient; `autograd`: the penalty in the loss graph. "
          "`× standard`: median of per-round ratios [interquartile range].\n")
    data = batches((1, 28, 28), 256, 10)
    variants = {"standard": baseline_step(METHODS.get("standard"), data, width),
                "ewc · closed form": baseline_step(EWC, data, width, ewc_lambda=1e4),
                "ewc · autograd": baseline_step(EwcByAutograd, data, width, ewc_lambda=1e4),
                "si · closed form": baseline_step(SI, data, width),
                "si · autograd": baseline_step(SiByAutograd, data, width)}
    res = compare(variants, "standard", budget=args.step_budget * 2, min_rounds=3)
    rows = [[name, fmt_ms(t.median), fmt_ratio(t)] for name, t in res.items()]
    for m in ("ewc", "si"):
        a, b = res[f"{m} · autograd"], res[f"{m} · closed form"]
        extra_a, extra_b = a.median - res["standard"].median, b.median - res["standard"].median
        rows.append([f"{m}: closed form ÷ autograd", "", f"{b.median / a.median:.3f} "
                     f"(time beyond standard: {fmt_ms(extra_b)} against {fmt_ms(extra_a)} ms)"])
    print(table([f"step (2×{width})", "ms", "× standard"], rows))
    n = 20
    print(f"\nEWC's diagonal Fisher at the end of a task (true Fisher, the exact expectation over "
          f"the 10 classes) of the same network on {n} inputs: `vmap` forms all {10 * n} "
          "per-(input, class) gradients; `closed form` (the default for MLPs) sums "
          "(w δ²)ᵀ h² per Linear layer, one backward pass per class.\n")
    net = models.create("mlp", in_features=784, hidden=[width, width], classes=10)
    x = data[0][0][:n]
    fisher = {"vmap": lambda: diagonal_fisher(net, x, backend="vmap"),
              "closed form": lambda: diagonal_fisher(net, x, backend="linear")}
    res = compare(fisher, "vmap", budget=args.step_budget, min_rounds=3, warmup=1)
    print(table([f"Fisher, {n} inputs (2×{width})", "ms", "× vmap"],
                [[name, fmt_ms(t.median), fmt_ratio(t)] for name, t in res.items()]))
    print(f"\n({load()})")


CLNP_STATES = ((0.0, 0.0), (0.3, 0.1), (0.5, 0.3), (0.63, 0.43), (0.8, 0.52), (1.0, 0.63),
               (1.0, 0.9))


def section_clnp(args: argparse.Namespace) -> None:
    print("\n## CLNP training step: dense vs row-sparse pass\n")
    width = 500 if args.quick else 2000
    print("CPU time per `Clnp.train_step` (forward, backward, L1 gradient, masking, Adam, "
          f"restore) on a 2×{width} MLP, batch 256, while finished tasks own the given share of "
          "each hidden layer (the states of section 3.1's runs: task 1 trains in an empty "
          "network, after 10 tasks our runs use 63 / 43 % (CLNP + FT) or 100 / 63 %). "
          "`× dense`: median of per-round ratios [interquartile range].\n")
    data = batches((1, 28, 28), 256, 10)
    logging.getLogger("superpose.methods.clnp").setLevel(logging.ERROR)  # "dense 1 is depleted"
    states = CLNP_STATES[::2] if args.quick else CLNP_STATES
    rows = []
    for used in states:
        variants = {path: clnp_step(data, width, used, path) for path in ("dense", "sparse",
                                                                           "auto")}
        res = compare(variants, "dense", budget=args.step_budget / 2, min_rounds=3)
        rows.append([" / ".join(f"{100 * f:.0f} %" for f in used), fmt_ms(res["dense"].median),
                     fmt_ms(res["sparse"].median), fmt_ratio(res["sparse"]),
                     fmt_ratio(res["auto"])])
        print(f"- used {used} timed ({load()})", flush=True)
    print()
    print(table([f"used, dense 1 / dense 2 (2×{width})", "dense ms", "sparse ms",
                 "sparse × dense", "auto × dense"], rows))


def resnet_row(args: argparse.Namespace, rate: float, rows: list[list[str]]) -> None:
    if "resnet18" not in models.names():
        rows.append(["ResNet-18", "skipped: model `resnet18` is not registered", *[""] * 6])
        return
    batch = 8 if args.quick else 16
    shape = (3, 32, 32)
    data = batches(shape, batch, 10, count=2)

    def build() -> nn.Module:
        return models.create("resnet18", input_shape=shape, classes=10, width=64)

    plain, net = plain_step(build, data)
    flops = counted_step_flops(net, *data[0])
    variants = {
        "plain": plain,
        # the same network: BatchNorm shared by the tasks, affine, with running statistics
        "psp-binary": method_step("psp-binary", build, data, shape, 10, batchnorm="shared")[0],
        # psp's default for convolutional nets (the authors'): batch statistics, no affine
        "psp-binary · BatchNorm none-stats": method_step("psp-binary", build, data, shape, 10,
                                                          batchnorm="none-stats")[0],
    }
    res = compare(variants, "plain", budget=args.step_budget * 2, min_rounds=3, sample=0.0,
                  warmup=1)
    for name, t in res.items():
        rows.append([f"ResNet-18 (64), batch {batch}", name, fmt_ms(t.median), fmt_ratio(t),
                     "1.00", f"{t.ratio()[0]:.2f}", f"{flops / t.median / 1e9:.1f}",
                     f"{100 * flops / t.median / 1e9 / rate:.0f} %"])
    print(f"- ResNet-18 timed ({load()})", flush=True)


def mnist_stream(args: argparse.Namespace, tasks: int, test_images: int) -> tuple[Stream, str]:
    """Permuted MNIST with ``tasks`` tasks, or random images of its shape if MNIST is missing."""
    try:
        stream = training.build_stream(resolve({"benchmark": "permuted-mnist", "tasks": tasks,
                                                "data_dir": args.data_dir}))
        source = "MNIST"
    except UserError as e:
        print(f"(MNIST not found, using random images of its shape: {str(e).splitlines()[0]})")
        stream = training.build_stream(resolve({"benchmark": "permuted-digits", "tasks": tasks}))
        g = torch.Generator().manual_seed(0)
        for split, n in (("train", 60000), ("test", 10000)):
            stream.splits[split] = Split(torch.rand(n, 1, 28, 28, generator=g),
                                         torch.randint(0, 10, (n,), generator=g))
        stream.input_shape = (1, 28, 28)
        stream.num_classes = 10
        stream.permutations = torch.stack([torch.randperm(784, generator=g)
                                           for _ in range(tasks)])
        source = "random images"
    test = stream.splits["test"]
    stream.splits["test"] = Split(test.x[:test_images], test.y[:test_images])
    return stream, source


def section_eval(args: argparse.Namespace) -> None:
    k = 10 if args.quick else 50
    n = 2000 if args.quick else 10000
    stream, source = mnist_stream(args, k, n)
    print(f"\n## Evaluating {k} tasks on {n} test images each ({source}, psp-binary, 2×256)\n")
    images = max(1, evaluation.MIX_ROWS // k)
    print("Loop: `evaluate(task)` for every task, batches of B images. One pass: "
          "`evaluate_tasks(..., mix=True)`: every forward pass holds the same "
          f"max(B, {images}) images as seen by each of the {k} tasks, task by task, with a "
          "per-sample task tensor. CPU seconds, median over interleaved rounds. By default "
          f"(`mix=None`) `evaluate_tasks` makes one pass where B < {images} "
          f"(`MIX_ROWS // K` = {evaluation.MIX_ROWS} // {k}) and loops otherwise.\n")
    cfg = resolve({"benchmark": "permuted-mnist", "method": "psp-binary", "tasks": k})
    method = training.build_method(cfg, stream)
    rows = []
    for b in args.eval_batches:
        variants = {
            "loop": lambda b=b: [evaluation.evaluate(method, stream, t, "test", b)
                                 for t in range(k)],
            "one pass": lambda b=b: evaluation.evaluate_tasks(method, stream, range(k), "test",
                                                              b, mix=True),
        }
        accs = (variants["loop"](), variants["one pass"]())
        assert max(abs(a - c) for a, c in zip(*accs, strict=True)) <= 2 / n, accs
        res = compare(variants, "loop", budget=args.eval_budget, min_rounds=3, sample=0.0,
                      warmup=0)
        loop, one = res["loop"], res["one pass"]
        calls = k * math.ceil(n / b)
        rows.append([str(b), str(calls), f"{loop.median:.2f}", f"{one.median:.2f}",
                     f"{1 / one.ratio()[0]:.2f}",
                     f"{loop.median / calls * 1e3:.2f}",
                     "one pass" if images > b else "loop"])
        print(f"- B = {b} timed ({load()})", flush=True)
    print()
    print(table(["B", "forward calls (loop)", "loop s", "one pass s", "speed-up",
                 "loop ms per call", "default"], rows))
    flops = mlp_forward_flops((784, 256, 256, 10), k * n)
    print(f"\nMatmul work of either: {flops / 1e9:.1f} GFLOP. The loop is launch-bound where "
          "its time per call stops shrinking with B (per-call overhead dominates).")


@dataclass
class Costs:
    """CPU and wall seconds of the parts of a run, and how often each ran."""

    cpu: dict[str, float] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    depth: int = 0

    def add(self, part: str, cpu: float, wall: float) -> None:
        self.cpu[part] = self.cpu.get(part, 0.0) + cpu
        self.wall[part] = self.wall.get(part, 0.0) + wall
        self.calls[part] = self.calls.get(part, 0) + 1


@contextlib.contextmanager
def instrumented(costs: Costs) -> Iterator[None]:
    """Time the parts of ``training.run`` by wrapping the functions it calls (restored after)."""
    from superpose.streams.base import Stream as BaseStream

    patches = [
        (Method, "train_step", "step"),
        (BaseStream, "train_batch", "data"),
        (evaluation, "evaluate", "curve evaluation"),
        (evaluation, "evaluate_tasks", "boundary evaluation"),
        (training.Trainer, "save_checkpoint", "checkpoint"),
        (training.RunFolder, "append_metrics", "logging"),
        (training.RunFolder, "write_matrix", "logging"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]

    def wrap(fn: Callable[..., Any], part: str) -> Callable[..., Any]:
        def timed(*a: Any, **kw: Any) -> Any:
            if costs.depth:  # nested (evaluate inside evaluate_tasks): counted by the outer
                return fn(*a, **kw)
            costs.depth += 1
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                costs.depth -= 1
                costs.add(part, time.process_time() - c0, time.perf_counter() - w0)
        return timed

    for owner, name, part in patches:
        setattr(owner, name, wrap(getattr(owner, name), part))
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def bare_compute(cfg: Any, stream: Stream, pool: int = 4) -> float:
    """CPU seconds of the run's optimiser steps alone: same method, tasks and step count, on
    batches drawn before the clock starts (``pool`` per task, cycled); no evaluation."""
    torch.manual_seed(cfg.seed)
    method = training.build_method(cfg, stream)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    total, step = 0.0, 0
    for seg in stream.schedule(cfg.steps_per_task):
        data = [stream.train_batch(seg.task, step, cfg.batch_size, g) for _ in range(pool)]
        method.begin_task(seg.task)
        t0 = time.process_time()
        for i in range(seg.steps):
            x, y = data[i % pool]
            method.train_step(x, y, seg.task, step)
            step += 1
        method.end_task(seg.task)
        total += time.process_time() - t0
    return total


def section_run(args: argparse.Namespace) -> None:
    tasks, steps = args.run_tasks, args.run_steps
    stream, source = mnist_stream(args, tasks, 10000)
    cfg = resolve({"benchmark": "permuted-mnist", "method": "psp-binary", "tasks": tasks,
                   "steps_per_task": steps, "data_dir": args.data_dir, "threads": 1})
    print(f"\n## A whole run: permuted MNIST ({source}), psp-binary, 2×256, {tasks} tasks × "
          f"{steps} steps, default evaluation\n")
    print(f"Evaluation: task 0 every {cfg.eval_every} steps and every seen task at each "
          f"boundary, on all {len(stream.splits['test'])} test images (batches of "
          f"{cfg.eval_batch_size}); a checkpoint at every boundary.\n")
    costs = Costs()
    original = training.build_stream
    training.build_stream = lambda _cfg: stream  # the same data for the run and the bare loop
    try:
        with tempfile.TemporaryDirectory() as out, instrumented(costs):
            c0, w0 = time.process_time(), time.perf_counter()
            training.run(cfg, out, progress=False, log=lambda *_: None)
            run_cpu, run_wall = time.process_time() - c0, time.perf_counter() - w0
            ckpt_bytes = os.path.getsize(os.path.join(out, "checkpoint.safetensors"))
    finally:
        training.build_stream = original
    print(f"- whole run timed ({load()})", flush=True)
    bare = bare_compute(cfg, stream)
    print(f"- bare steps timed ({load()})", flush=True)
    in_run = costs.cpu.get("step", 0.0)
    parts = ["data", "curve evaluation", "boundary evaluation", "checkpoint", "logging"]
    rows = [["whole run", f"{run_cpu:.1f}", f"{run_wall:.1f}", "", f"{run_cpu / bare:.2f}"],
            ["bare steps (separate loop)", f"{bare:.1f}", "", str(tasks * steps), "1.00"],
            ["steps inside the run", f"{in_run:.1f}", f"{costs.wall.get('step', 0):.1f}",
             str(costs.calls.get("step", 0)), f"{in_run / bare:.2f}"]]
    accounted = in_run
    for p in parts:
        cpu = costs.cpu.get(p, 0.0)
        accounted += cpu
        rows.append([p, f"{cpu:.1f}", f"{costs.wall.get(p, 0.0):.1f}", str(costs.calls.get(p, 0)),
                     f"{cpu / bare:.3f}"])
    rows.append(["other (loop, set-up, summary)", f"{run_cpu - accounted:.1f}", "", "",
                 f"{(run_cpu - accounted) / bare:.3f}"])
    print()
    print(table(["part", "CPU s", "wall s", "calls", "÷ bare steps"], rows))
    overhead = (run_cpu - bare) / bare
    print(f"\nOverhead (everything that is not the step) = {100 * overhead:.0f} % of the bare "
          f"step compute (target ≤ 30 %); checkpoint file {ckpt_bytes / 2**20:.1f} MiB, "
          f"{1e3 * costs.cpu.get('checkpoint', 0) / max(costs.calls.get('checkpoint', 1), 1):.0f}"
          " ms CPU each.")
    # The same arithmetic for the default 50 × 1000 run, from the measured unit costs.
    dims = (784, 256, 256, 10)
    n_test = len(stream.splits["test"])
    full_tasks, full_steps = 50, 1000
    curve = full_tasks * full_steps // cfg.eval_every
    boundary = full_tasks * (full_tasks + 1) // 2
    step_flops = mlp_step_flops(dims, cfg.batch_size, "binary")
    eval_flops = mlp_forward_flops(dims, n_test)
    train = full_tasks * full_steps * step_flops
    print(f"\nArithmetic of the default run ({full_tasks} × {full_steps} steps): training "
          f"{train / 1e12:.2f} TFLOP ({step_flops / 1e6:.0f} MFLOP a step); evaluation "
          f"{curve} curve points + {boundary} task evaluations at boundaries = "
          f"{(curve + boundary) * eval_flops / 1e12:.2f} TFLOP "
          f"({eval_flops / 1e9:.2f} GFLOP per task evaluation), i.e. "
          f"{100 * (curve + boundary) * eval_flops / train:.0f} % of the training FLOPs.")
    per_step = bare / (tasks * steps)
    per_eval = costs.cpu.get("curve evaluation", 0) / max(costs.calls.get("curve evaluation", 1),
                                                           1)
    task_evals = sum(i + 1 for i in range(tasks))
    per_task_eval = costs.cpu.get("boundary evaluation", 0) / max(task_evals, 1)
    per_ckpt = costs.cpu.get("checkpoint", 0) / max(costs.calls.get("checkpoint", 1), 1)
    per_data = costs.cpu.get("data", 0) / max(costs.calls.get("data", 1), 1)
    predicted = (curve * per_eval + boundary * per_task_eval + full_tasks * per_ckpt
                 + full_tasks * full_steps * per_data) / (full_tasks * full_steps * per_step)
    print(f"Measured unit costs: step {per_step * 1e3:.2f} ms, batch {per_data * 1e3:.3f} ms, "
          f"task-0 evaluation {per_eval * 1e3:.0f} ms, one task at a boundary "
          f"{per_task_eval * 1e3:.0f} ms, checkpoint {per_ckpt * 1e3:.0f} ms → predicted "
          f"overhead of the default run: {100 * predicted:.0f} % of its bare step compute.")


# ---------------------------------------------------------------------------- main


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller and shorter everything")
    p.add_argument("--sections", default="matmul,steps,resnet,baselines,clnp,eval,run",
                   help="comma-separated: matmul, steps, resnet (a row of the steps table), "
                        "baselines, clnp, eval, run")
    p.add_argument("--malloc", choices=("default", "heap"), default="heap",
                   help="heap (what `superpose run` does, superpose.runtime): keep freed "
                        "memory in the process (glibc mallopt: no mmap, no trim), so large "
                        "tensors are not page-faulted in again every step; default: glibc's "
                        "own settings")
    p.add_argument("--widths", default=None, help="MLP hidden widths (default 256,2048)")
    p.add_argument("--step-budget", type=float, default=None,
                   help="CPU seconds per step table group (default 12 quick, 60 full)")
    p.add_argument("--eval-batches", default="10,100,1000")
    p.add_argument("--eval-budget", type=float, default=None)
    p.add_argument("--run-tasks", type=int, default=None, help="default 10 quick, 50 full")
    p.add_argument("--run-steps", type=int, default=None, help="default 300 quick, 1000 full")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.widths = [int(w) for w in (args.widths or "256,2048").split(",")]
    args.eval_batches = [int(b) for b in args.eval_batches.split(",")]
    args.step_budget = args.step_budget or (12.0 if args.quick else 60.0)
    args.eval_budget = args.eval_budget or (5.0 if args.quick else 30.0)
    args.run_tasks = args.run_tasks or (10 if args.quick else 50)
    args.run_steps = args.run_steps or (300 if args.quick else 1000)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    sections = args.sections = args.sections.split(",")
    if args.malloc == "heap" and not keep_freed_memory():
        raise SystemExit("--malloc heap needs glibc (and SUPERPOSE_MALLOC unset)")
    print(f"# superpose speed benchmark\n\n`{' '.join(['python', *sys.argv])}`\n\n"
          f"Machine: {machine()}; {load()} at start; allocator: {args.malloc}.")
    timed_steps = "steps" in sections or "resnet" in sections
    rate = section_matmul(args) if "matmul" in sections or timed_steps else math.nan
    if timed_steps:
        section_steps(args, rate)
    if "baselines" in sections:
        section_baselines(args)
    if "clnp" in sections:
        section_clnp(args)
    if "eval" in sections:
        section_eval(args)
    if "run" in sections:
        section_run(args)
    print(f"\nDone ({load()}).")


if __name__ == "__main__":
    main()
