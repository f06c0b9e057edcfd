"""Elastic weight consolidation (Kirkpatrick et al. 2017, PNAS, eq. 3).

Variant: the accumulated ("online", Huszár 2018 PNAS note; Schwarz et al. 2018 with gamma = 1)
form. After each task the diagonal Fisher of that task is added to a running sum, and the single
quadratic penalty is anchored at the parameters reached at the end of the last task:

    L(θ) = L_t(θ) + λ/2 Σ_i F_i (θ_i − θ*_i)²,    F = Σ_{s<t} F_s,    θ* = θ after task t−1.

Kirkpatrick et al. instead keep one penalty per old task, each anchored at that task's optimum;
the accumulated form is the Laplace-approximation recursion Huszár shows to be the consistent one,
and it stores two tensors per parameter however many tasks are seen.

The Fisher is the true (not the empirical) Fisher: the expected squared score under the model's
own predictive distribution, F_i = E_x E_{y ~ p_θ(y|x)} [(∂ log p_θ(y|x) / ∂θ_i)²], averaged over
``fisher_samples`` training inputs of the task; the expectation over y is exact (a sum over all
classes weighted by p_θ(y|x)) or a single label drawn from p_θ(y|x) per input.

The penalty's gradient λ F (θ − θ*) is added in closed form after the backward pass of the task
loss, so the penalty builds no graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call, grad, vmap

from ..errors import ConfigError
from . import METHODS
from .base import Method, MethodContext, add_quadratic_penalty_grad

#: Floats of per-sample gradients held at once while computing the Fisher (64 MB).
CHUNK_FLOATS = 1 << 24


def diagonal_fisher(model: nn.Module, x: Tensor, labels: str = "exact",
                    generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Diagonal Fisher of ``model`` at inputs x (N, ...): name -> tensor shaped like the parameter.

    ``labels="exact"``: F = 1/N Σ_n Σ_c p(c|x_n) g_nc²; ``"sample"``: F = 1/N Σ_n g_{n,y_n}² with
    y_n ~ p(·|x_n); g_nc = ∂ log p(c|x_n) / ∂θ is a per-sample gradient (torch.func.vmap).
    The model is evaluated in eval mode; its train/eval mode is restored afterwards.
    """
    if labels not in ("exact", "sample"):
        raise ValueError(f"fisher labels must be 'exact' or 'sample', got {labels!r}")
    was_training = model.training
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def log_prob(p: dict[str, Tensor], xi: Tensor, onehot: Tensor) -> Tensor:
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))  # (1, C)
        return (torch.log_softmax(logits, dim=1)[0] * onehot).sum()  # scalar log p(c | x_i)

    score = vmap(grad(log_prob), in_dims=(None, 0, 0))  # per-(input, class) gradients
    try:
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)  # (N, C)
        n, num_classes = probs.shape
        if labels == "exact":  # every (input, class) pair, weighted by p(class | input)
            rows = torch.arange(n, device=x.device).repeat_interleave(num_classes)  # (N*C,)
            cls = torch.arange(num_classes, device=x.device).repeat(n)  # (N*C,)
            weight = probs.reshape(-1)  # (N*C,)
        else:  # one label per input drawn from the model's predictive distribution
            cls = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(x.device)
            rows = torch.arange(n, device=x.device)
            weight = torch.ones(n, device=x.device)
        fisher = {k: torch.zeros_like(v) for k, v in params.items()}
        chunk = max(1, CHUNK_FLOATS // max(1, sum(v.numel() for v in params.values())))
        for s in range(0, rows.numel(), chunk):
            onehot = nn.functional.one_hot(cls[s:s + chunk], num_classes).to(x.dtype)  # (k, C)
            g = score(params, x[rows[s:s + chunk]], onehot)  # name -> (k, *shape)
            w = weight[s:s + chunk]  # (k,)
            for k, gk in g.items():
                fisher[k] += torch.tensordot(w, gk.pow(2), dims=1)
        return {k: f / n for k, f in fisher.items()}
    finally:
        model.train(was_training)


@METHODS.register("ewc")
class EWC(Method):
    """Fine-tuning plus the accumulated-Fisher quadratic penalty (module docstring)."""

    name = "ewc"

    @dataclass
    class Options:
        ewc_lambda: float = field(default=100.0, metadata={
            "help": "EWC strength λ in λ/2 Σ F (θ − θ*)² (choose it on validation data: "
                    "benchmarks/tune_baselines.py)"})
        fisher_samples: int = field(default=200, metadata={
            "help": "training inputs of a task used to estimate its diagonal Fisher"})
        fisher_labels: str = field(default="exact", metadata={
            "help": "exact: expectation over all classes of p(y|x) (classes times the cost); "
                    "sample: one label y ~ p(y|x) per input"})

    def __init__(self, ctx: MethodContext, options: Any = None):
        super().__init__(ctx, options)
        opts = self.options
        if opts.fisher_samples <= 0:
            raise ConfigError(f"fisher-samples must be positive, got {opts.fisher_samples}")
        if opts.fisher_labels not in ("exact", "sample"):
            raise ConfigError(f"fisher-labels must be exact or sample, got {opts.fisher_labels!r}")
        if opts.ewc_lambda < 0:
            raise ConfigError(f"ewc-lambda must be >= 0, got {opts.ewc_lambda}")
        self.fisher: dict[str, Tensor] = {}  # name -> Σ_s F_s (empty before the first task ends)
        self.anchor: dict[str, Tensor] = {}  # name -> θ* at the end of the last task
        self._penalty = torch.zeros((), device=ctx.device)  # λ/2 Σ F (θ − θ*)², last step

    def penalty(self) -> Tensor:
        """λ/2 Σ_i F_i (θ_i − θ*_i)² (Kirkpatrick et al. eq. 3), a scalar."""
        total = torch.zeros((), device=self.ctx.device)
        for n, p in self.model.named_parameters():
            if n in self.fisher:
                total = total + (self.fisher[n] * (p - self.anchor[n]).pow(2)).sum()
        return 0.5 * self.options.ewc_lambda * total

    def train_step(self, x: Tensor, y: Tensor, task: int, step: int) -> Tensor:
        """One step of L_t + penalty; returns that sum (the penalty at the step's start)."""
        return super().train_step(x, y, task, step) + self._penalty

    @torch.no_grad()
    def before_optimizer_step(self, task: int, step: int) -> None:
        penalty = torch.zeros((), device=self.ctx.device)
        half_lambda = 0.5 * self.options.ewc_lambda  # λ/2 Σ F (θ − θ*)²
        for n, p in self.model.named_parameters():
            if n not in self.fisher or p.grad is None:
                continue
            penalty += add_quadratic_penalty_grad(p, self.fisher[n], self.anchor[n], half_lambda)
        self._penalty = half_lambda * penalty

    def fisher_inputs(self, task: int, g: torch.Generator) -> Tensor:
        """``fisher_samples`` training inputs of ``task`` (without replacement), (N, C, H, W)."""
        data = self.ctx.stream.task_data(task, "train")
        idx = torch.randperm(len(data), generator=g)[: self.options.fisher_samples]
        return self.ctx.stream.transform(data.x[idx.to(data.x.device)], task, None)

    def end_task(self, task: int) -> None:
        g = torch.Generator().manual_seed(self.ctx.seed + task)  # same draw on every resume
        f = diagonal_fisher(self.model, self.fisher_inputs(task, g), self.options.fisher_labels, g)
        for n, fn in f.items():
            self.fisher[n] = self.fisher[n] + fn if n in self.fisher else fn
        self.anchor = {n: p.detach().clone() for n, p in self.model.named_parameters()
                       if n in self.fisher}

    def extra_state(self) -> dict[str, Tensor]:
        state = {f"fisher.{n}": f for n, f in self.fisher.items()}
        state.update({f"anchor.{n}": a for n, a in self.anchor.items()})
        return state

    def load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        device = self.ctx.device
        self.fisher, self.anchor = {}, {}
        for key, value in tensors.items():
            kind, _, n = key.partition(".")
            if kind not in ("fisher", "anchor"):
                raise ValueError(f"ewc: unexpected extra state {key!r}")
            getattr(self, kind)[n] = value.to(device)
        if self.fisher.keys() != self.anchor.keys():
            raise ValueError("ewc: Fisher and anchor tensors name different parameters")
