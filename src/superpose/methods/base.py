"""The method base class: the training loop calls these hooks and nothing else.

    begin_task(task)            before the first step of a task segment
    loss(x, y, task, step)      the training objective of one batch (graph attached)
    after_step(task, step)      after the optimiser step (e.g. SI's path integral)
    end_task(task)              after the last step of a task segment
    prepare_eval(task)          before evaluating ``task``; ``predict`` then gives logits
    predict_tasks(x, tasks)     optional: logits of a batch mixing tasks (default: loops)

Each method owns its settings as a dataclass ``Options``; the run's common settings (learning
rate, optimiser, ...) come in a ``MethodContext``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch import Tensor

from ..streams.base import Stream


@dataclass
class MethodContext:
    """What a method needs to know about the run (not about the CLI)."""

    stream: Stream
    build_model: Callable[[], nn.Module]  # a fresh base network for one task (random init)
    lr: float
    optimizer: str = "adam"
    batch_size: int = 128
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    steps_per_task: int = 1000
    # The rate's schedule within a task (``lr_scale``); the loop applies it to ``optimizer``,
    # a method training on its own (CLNP's grid and fine-tuning) applies it to its steps.
    lr_schedule: str = "constant"
    # Progress of long work a method does outside the training steps (CLNP's grid): one line a
    # call. The trainer passes its own log; the default says nothing.
    log: Callable[[str], None] = field(default=lambda _: None)


def make_optimizer(name: str, params: Iterator[nn.Parameter] | list, lr: float
                   ) -> torch.optim.Optimizer:
    """The optimisers the papers use; RMSprop as in the PSP authors' code, Adam as in CLNP."""
    params = list(params)
    if name == "adam":
        # The fused kernel is 20-25 % faster per step on CPU (benchmarks/speed.py) and is
        # deterministic; fall back where it is not available (e.g. mixed devices).
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=lr, fused=fused or None)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}: choose adam, rmsprop or sgd")


OPTIMIZERS = ("adam", "rmsprop", "sgd")
LR_SCHEDULES = ("constant", "cosine", "warmup-cosine")
#: warmup-cosine: the share of each task's steps spent warming up
WARMUP_SHARE = 0.1


def lr_scale(schedule: str, step: int, steps: int) -> float:
    """The factor on the learning rate at ``step`` (0-based) of a task of ``steps`` steps.

    ``constant``: 1 (both papers). ``cosine``: 0.5 (1 + cos(pi step / steps)), from 1 at a
    task's first step down towards 0 at its last, restarting at every task (a per-task
    version of Loshchilov & Hutter's SGDR; not in either paper). ``warmup-cosine``: a linear
    rise (step + 1) / w over the first w = max(1, round(0.1 steps)) steps, then the cosine
    over the remaining steps. Adam kept across tasks ends a task with second moments of the
    small gradients of a learned task; the new task's gradients then take steps of several
    times the rate for a few hundred steps (with β = 0.9 / 0.999 and the old v negligible,
    m / sqrt(v) = (1 − 0.9ⁿ) / sqrt(1 − 0.999ⁿ) after n steps: 6.6 at n = 12, 3.2 at 100,
    2.0 at 300), which the warm-up keeps small.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / steps))
    if schedule == "warmup-cosine":
        w = min(steps, max(1, round(WARMUP_SHARE * steps)))
        return (step + 1) / w if step < w else lr_scale("cosine", step - w, max(1, steps - w))
    raise ValueError(f"unknown lr schedule {schedule!r}: choose {', '.join(LR_SCHEDULES)}")


@torch.no_grad()
def add_quadratic_penalty_grad(p: nn.Parameter, weight: Tensor, anchor: Tensor,
                               scale: float) -> Tensor:
    """For the penalty scale · Σ w (θ − θ*)² (EWC, SI): add its gradient 2 · scale · w (θ − θ*)
    to ``p.grad`` in place and return Σ w (θ − θ*)² of this tensor (a scalar; unscaled)."""
    d = p - anchor  # θ − θ*
    weighted = weight * d  # w (θ − θ*)
    p.grad.add_(weighted, alpha=2 * scale)
    return torch.dot(weighted.view(-1), d.view(-1))


def set_lr_scale(optimizer: torch.optim.Optimizer, scale: float) -> None:
    """Set every parameter group's rate to ``scale`` times its rate when first seen here.

    The base rate is kept in the group as ``initial_lr`` (PyTorch's own schedulers' key), so
    groups with their own rates (CLNP's fine-tuning) keep their ratios, and a checkpoint of
    the optimiser carries the base rate with it.
    """
    for group in optimizer.param_groups:
        base = group.setdefault("initial_lr", group["lr"])
        group["lr"] = base * scale


class Method:
    """Base: one network trained by cross-entropy on every task (fine-tuning)."""

    name: ClassVar[str] = "method"
    #: True if ``predict_tasks`` evaluates a batch mixing tasks in one pass (else it loops).
    mixes_tasks: ClassVar[bool] = False

    @dataclass
    class Options:
        """Method-specific settings (none for the base)."""

    @classmethod
    def check_options(cls, options: Any) -> None:
        """Raise ``ConfigError`` for option values this method cannot run with. Called when a
        configuration is loaded (before any method of a comma list trains) and again when the
        method is built."""

    def __init__(self, ctx: MethodContext, options: Any = None):
        self.ctx = ctx
        self.options = options if options is not None else self.Options()
        self.check_options(self.options)
        self.model = self.build().to(ctx.device)
        self.optimizer = self.make_optimizer()

    # ---- construction -------------------------------------------------------------------
    def build(self) -> nn.Module:
        """The network(s) this method trains."""
        return self.ctx.build_model()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def make_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.ctx.optimizer, self.trainable_parameters(), self.ctx.lr)

    def reset_optimizer(self) -> None:
        """Forget the optimiser's running state (moments, step counts): the next step starts
        it afresh, bias correction included. The rate and the parameter groups stay."""
        self.optimizer.state.clear()

    # ---- hooks --------------------------------------------------------------------------
    def begin_task(self, task: int) -> None:
        """Called before the first step of each task segment."""

    def loss(self, x: Tensor, y: Tensor, task: int, step: int) -> Tensor:
        """Training loss of one batch. x: (B, C, H, W), y: (B,)."""
        return nn.functional.cross_entropy(self.forward(x, task, step), y)

    def after_step(self, task: int, step: int) -> None:
        """Called after each optimiser step."""

    def end_task(self, task: int) -> None:
        """Called after the last step of each task segment."""

    def prepare_eval(self, task: int) -> None:
        """Called before evaluating ``task`` (e.g. select a context or a head)."""

    def before_checkpoint(self) -> None:
        """Called before the model and optimiser are saved: put them in their canonical form
        (e.g. PSP unfolds its weights)."""

    # ---- model access -------------------------------------------------------------------
    def forward(self, x: Tensor, task: int, step: int | None) -> Tensor:
        """Logits (B, classes) for training batch x of ``task`` at ``step`` (None: evaluation)."""
        return self.model(x)

    @torch.no_grad()
    def predict(self, x: Tensor, task: int) -> Tensor:
        """Evaluation logits (B, classes) for task ``task``."""
        return self.forward(x, task, None)

    @torch.no_grad()
    def predict_tasks(self, x: Tensor, tasks: Tensor) -> Tensor:
        """Evaluation logits (B, classes) for a batch mixing tasks: sample b is of ``tasks[b]``.

        Optional hook for evaluating several tasks in one pass
        (:func:`superpose.evaluation.evaluate_tasks`). The default groups the batch by task and
        calls ``prepare_eval`` and ``predict`` per group; a method whose model takes per-sample
        task ids (PSP) overrides it with one forward pass and sets ``mixes_tasks``.
        """
        out: Tensor | None = None
        for t in torch.unique(tasks).tolist():
            idx = (tasks == t).nonzero().squeeze(1)
            self.prepare_eval(t)
            y = self.predict(x.index_select(0, idx), t)
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out[idx] = y
        if out is None:
            raise ValueError("predict_tasks needs a non-empty batch")
        return out

    def train_step(self, x: Tensor, y: Tensor, task: int, step: int) -> float:
        """One optimiser step; returns the loss. The loop calls nothing else while training."""
        if not self.model.training:  # a no-op call costs ~50 us per step on small nets
            self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, y, task, step)
        loss.backward()
        self.before_optimizer_step(task, step)
        self.optimizer.step()
        self.after_step(task, step)
        return loss.detach()

    def before_optimizer_step(self, task: int, step: int) -> None:
        """Called between backward and the optimiser step (e.g. gradient masks)."""

    # ---- accounting and state -----------------------------------------------------------
    def count_parameters(self) -> dict[str, int]:
        """The paper's accounting: shared parameters, extra per task, total for all tasks."""
        n = sum(p.numel() for p in self.model.parameters())
        return {"shared": n, "per_task": n, "total": n}

    def extra_state(self) -> dict[str, Tensor]:
        """Method tensors beyond the model and optimiser (Fisher, importances, masks)."""
        return {}

    def load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        if tensors:
            raise ValueError(f"{self.name} has no extra state, got {sorted(tensors)}")

    def summary(self) -> dict[str, Any]:
        """Extra entries for summary.json (e.g. CLNP's capacity)."""
        return {}

    @classmethod
    def option_fields(cls) -> list[str]:
        return [f.name for f in fields(cls.Options)]
