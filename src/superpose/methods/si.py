"""Synaptic intelligence (Zenke, Poole & Ganguli 2017, ICML, eqs. 3-5).

During task μ each parameter accumulates its share of the drop in the task loss along the
training trajectory (eq. 3, discretised over optimiser steps):

    ω_k = − Σ_steps g_k Δθ_k,   g = ∂L_μ/∂θ (the task loss only, not the penalty).

At the end of the task (eq. 5), with Δ_k = θ_k(end of μ) − θ_k(end of μ−1):

    Ω_k += ω_k / (Δ_k² + ξ),   ω_k = 0,   θ*_k = θ_k,

and the next tasks minimise (eq. 4)  L̃ = L + c Σ_k Ω_k (θ_k − θ*_k)².

The backward pass differentiates the task loss only, which gives ω its gradient g directly; the
penalty's gradient 2cΩ(θ − θ*) is then added in closed form, so the penalty builds no graph.
ξ defaults to 0.1, the value Zenke et al. used for permuted MNIST (their section 5.2; ξ = 1e-3
was their split-MNIST value), where they also found c = 0.1 by a grid search on held-out data.
The paper does not clip Ω, so by default Ω may be negative for parameters that an optimiser moved
uphill. The authors' released code (ganguli-lab/pathint, ``protocols.py``) does clip it after
every task, Ω ← max(0, Ω + ω/(Δ²+ξ)); ``si_clip`` turns that on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from . import METHODS
from .base import Method, MethodContext, add_quadratic_penalty_grad


@METHODS.register("si")
class SI(Method):
    """Fine-tuning plus the path-integral importance penalty (module docstring)."""

    name = "si"

    @dataclass
    class Options:
        si_c: float = field(default=0.1, metadata={
            "help": "SI strength c in c Σ Ω (θ − θ*)² (choose it on validation data: "
                    "benchmarks/tune_baselines.py)"})
        si_xi: float = field(default=0.1, metadata={
            "help": "SI damping ξ in Ω += ω / (Δ² + ξ) (0.1 for permuted MNIST, Zenke et al.)"})
        si_clip: bool = field(default=False, metadata={
            "help": "clip Ω at zero after each task, as the authors' released code does "
                    "(the paper's eq. 5 has no clip)"})

    @classmethod
    def check_options(cls, opts: Any) -> None:
        if opts.si_c < 0 or opts.si_xi <= 0:
            raise ConfigError(f"si needs si-c >= 0 and si-xi > 0, got si-c={opts.si_c} "
                              f"si-xi={opts.si_xi}")

    def __init__(self, ctx: MethodContext, options: Any = None):
        super().__init__(ctx, options)
        params = self.tracked()
        self.omega = {n: torch.zeros_like(p) for n, p in params.items()}  # ω, this task
        self.importance = {n: torch.zeros_like(p) for n, p in params.items()}  # Ω, summed
        self.anchor = {n: p.detach().clone() for n, p in params.items()}  # θ*, last task's end
        self._grad: dict[str, Tensor] = {}  # task-loss gradient of the step under way
        self._before: dict[str, Tensor] = {}  # parameters before that step
        self._penalty = torch.zeros((), device=ctx.device)  # c Σ Ω (θ − θ*)² at that step

    def tracked(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def penalty(self) -> Tensor:
        """c Σ_k Ω_k (θ_k − θ*_k)² (eq. 4), a scalar."""
        total = torch.zeros((), device=self.ctx.device)
        for n, p in self.tracked().items():
            total = total + (self.importance[n] * (p - self.anchor[n]).pow(2)).sum()
        return self.options.si_c * total

    def train_step(self, x: Tensor, y: Tensor, task: int, step: int) -> Tensor:
        """One step of L̃ = L + penalty; returns L̃ (the penalty at the step's start)."""
        return super().train_step(x, y, task, step) + self._penalty

    @torch.no_grad()
    def before_optimizer_step(self, task: int, step: int) -> None:
        self._grad, self._before = {}, {}
        penalty = torch.zeros((), device=self.ctx.device)
        for n, p in self.tracked().items():
            if p.grad is None:
                continue
            self._grad[n] = p.grad.clone()  # ∂L_μ/∂θ: backward saw the task loss only
            penalty += add_quadratic_penalty_grad(p, self.importance[n], self.anchor[n],
                                                  self.options.si_c)  # c Σ Ω (θ − θ*)²
            self._before[n] = p.detach().clone()
        self._penalty = self.options.si_c * penalty

    @torch.no_grad()
    def after_step(self, task: int, step: int) -> None:
        params = self.tracked()
        for n, g in self._grad.items():
            before = self._before[n].sub_(params[n])  # −Δθ of this step
            self.omega[n].addcmul_(g, before)  # eq. 3: ω −= g Δθ
        self._grad, self._before = {}, {}

    @torch.no_grad()
    def end_task(self, task: int) -> None:
        for n, p in self.tracked().items():
            delta = p - self.anchor[n]  # Δ_k over the whole task
            self.importance[n] += self.omega[n] / (delta.pow(2) + self.options.si_xi)  # eq. 5
            if self.options.si_clip:
                self.importance[n].clamp_(min=0.0)  # pathint's relu, not in the paper
            self.omega[n].zero_()
            self.anchor[n] = p.detach().clone()

    def extra_state(self) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        for kind in ("omega", "importance", "anchor"):
            state.update({f"{kind}.{n}": t for n, t in getattr(self, kind).items()})
        return state

    def load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        expected = {f"{kind}.{n}" for kind in ("omega", "importance", "anchor")
                    for n in self.tracked()}
        if set(tensors) != expected:
            raise ValueError(f"si: extra state names {sorted(set(tensors) ^ expected)} "
                             "do not fit this model")
        for key, value in tensors.items():
            kind, _, n = key.partition(".")
            getattr(self, kind)[n] = value.to(self.ctx.device).clone()
