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
``fisher_labels="classes"`` is the variant of Zenke et al.'s released code (ganguli-lab/pathint,
``keras_utils.compute_fishers`` for its ``FISHER_PROTOCOL``; their Fig. 4 is the source of the
PSP table's EWC 97.0, though the released notebook does not say which protocol made it): the
squared scores of every class summed without the weights p_θ(y|x),
Σ_y (∂ log p_θ(y|x) / ∂θ_i)², averaged over the task's whole training set. It does not vanish on
confidently classified inputs, so it is larger and denser than the true Fisher and needs its own λ.

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

#: How ``diagonal_fisher`` treats the label (its docstring).
FISHER_LABELS = ("exact", "sample", "classes")

#: Floats of per-sample gradients held at once while computing the Fisher (64 MB).
CHUNK_FLOATS = 1 << 24


#: Module types through which a batch's rows stay independent and whose only parameters are
#: nn.Linear's: for such a model the Fisher has a closed form per layer (``_linear_fisher``).
ROWWISE_MODULES = (nn.Sequential, nn.Flatten, nn.Linear, nn.Identity, nn.Dropout, nn.ReLU,
                   nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus)


def diagonal_fisher(model: nn.Module, x: Tensor, labels: str = "exact",
                    generator: torch.Generator | None = None,
                    backend: str = "auto") -> dict[str, Tensor]:
    """Diagonal Fisher of ``model`` at inputs x (N, ...): name -> tensor shaped like the parameter.

    ``labels="exact"``: F = 1/N Σ_n Σ_c p(c|x_n) g_nc²; ``"sample"``: F = 1/N Σ_n g_{n,y_n}² with
    y_n ~ p(·|x_n); ``"classes"``: F = 1/N Σ_n Σ_c g_nc² (unweighted, the authors' code of SI);
    g_nc = ∂ log p(c|x_n) / ∂θ is a per-sample gradient.
    ``backend``: ``"vmap"`` forms every g_nc (torch.func.vmap; any model); ``"linear"`` uses the
    closed form of a Linear layer, g_nc = δ_nc ⊗ h_n, so Σ_n w_n g_nc² = (w δ_c²)ᵀ h² is one
    matmul per layer and class (models built only of ``ROWWISE_MODULES``; tens of times faster);
    ``"auto"`` picks ``"linear"`` where it applies. The model is evaluated in eval mode; its
    train/eval mode is restored afterwards.
    """
    if labels not in FISHER_LABELS:
        raise ValueError(f"fisher labels must be one of {', '.join(FISHER_LABELS)}, "
                         f"got {labels!r}")
    rowwise = all(isinstance(m, ROWWISE_MODULES) for m in model.modules())
    if backend == "auto":
        backend = "linear" if rowwise else "vmap"
    if backend not in ("vmap", "linear"):
        raise ValueError(f"fisher backend must be auto, vmap or linear, got {backend!r}")
    if backend == "linear" and not rowwise:
        raise ValueError("the linear Fisher backend needs a model of Linear layers and "
                         "elementwise activations only")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)  # (N, C)
        n, num_classes = probs.shape
        if labels in ("exact", "classes"):  # every (input, class) pair
            rows = torch.arange(n, device=x.device).repeat_interleave(num_classes)  # (N*C,)
            cls = torch.arange(num_classes, device=x.device).repeat(n)  # (N*C,)
            # weighted by p(class | input), or all alike
            weight = probs.reshape(-1) if labels == "exact" else torch.ones(n * num_classes,
                                                                            device=x.device)
        else:  # one label per input drawn from the model's predictive distribution
            cls = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(x.device)
            rows = torch.arange(n, device=x.device)
            weight = torch.ones(n, device=x.device)
        fisher = (_linear_fisher if backend == "linear" else _vmap_fisher)(
            model, x, rows, cls, weight, num_classes)
        return {k: f / n for k, f in fisher.items()}
    finally:
        model.train(was_training)


def _vmap_fisher(model: nn.Module, x: Tensor, rows: Tensor, cls: Tensor, weight: Tensor,
                 num_classes: int) -> dict[str, Tensor]:
    """Σ_r weight_r g_r² over the (input rows_r, class cls_r) pairs, g_r formed one by one."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def log_prob(p: dict[str, Tensor], xi: Tensor, onehot: Tensor) -> Tensor:
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))  # (1, C)
        return (torch.log_softmax(logits, dim=1)[0] * onehot).sum()  # scalar log p(c | x_i)

    score = vmap(grad(log_prob), in_dims=(None, 0, 0))  # per-(input, class) gradients
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    chunk = max(1, CHUNK_FLOATS // max(1, sum(v.numel() for v in params.values())))
    for s in range(0, rows.numel(), chunk):
        onehot = nn.functional.one_hot(cls[s:s + chunk], num_classes).to(x.dtype)  # (k, C)
        g = score(params, x[rows[s:s + chunk]], onehot)  # name -> (k, *shape)
        w = weight[s:s + chunk]  # (k,)
        for k, gk in g.items():
            fisher[k] += torch.tensordot(w, gk.pow(2), dims=1)
    return fisher


def _linear_fisher(model: nn.Module, x: Tensor, rows: Tensor, cls: Tensor, weight: Tensor,
                   num_classes: int) -> dict[str, Tensor]:
    """``_vmap_fisher`` for a model whose rows are independent and whose parameters are all
    nn.Linear's: ∂ log p(c|x_n) / ∂W = δ_nc h_nᵀ (δ: the gradient at the layer's output, h: its
    input), so Σ_r w_r g_r² = (w δ²)ᵀ h² for W and Σ_r w_r δ_r² for b, one matmul per layer and
    class. One forward pass per chunk of inputs; one backward pass per class present."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    # (input, class) weights as a dense (N, C) table: zero where a pair is not in the sum
    table = torch.zeros(len(x), num_classes, dtype=weight.dtype, device=x.device)
    table.index_put_((rows, cls), weight, accumulate=True)
    ins: dict[str, Tensor] = {}
    outs: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            if name in ins or args[0].dim() != 2:  # a layer called twice, or on (k, T, in)
                raise ValueError(f"the linear Fisher backend needs each Linear called once on "
                                 f"(batch, features); {name or 'the model'} is not: use vmap")
            ins[name], outs[name] = args[0].detach(), out
        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in linears]
    per_chunk = max(1, CHUNK_FLOATS // max(1, max(m.in_features + m.out_features
                                                  for _, m in linears)))
    try:
        for s in range(0, len(x), per_chunk):
            xs, ws = x[s:s + per_chunk], table[s:s + per_chunk]  # (k, ...), (k, C)
            with torch.enable_grad():
                logp = torch.log_softmax(model(xs), dim=1)  # (k, C)
                names = [k for k, out in outs.items() if out.requires_grad]  # frozen: no F
                h2 = {name: ins[name].pow(2) for name in names}  # (k, in)
                for c in range(num_classes):
                    w = ws[:, c]  # (k,)
                    if not bool((w != 0).any()):
                        continue
                    deltas = torch.autograd.grad(logp[:, c].sum(), [outs[k] for k in names],
                                                 retain_graph=True)  # each (k, out)
                    for name, delta in zip(names, deltas, strict=True):
                        wd2 = delta.pow(2) * w[:, None]  # (k, out)
                        prefix = f"{name}." if name else ""
                        if prefix + "weight" in fisher:
                            fisher[prefix + "weight"] += wd2.T @ h2[name]  # (out, in)
                        if prefix + "bias" in fisher:
                            fisher[prefix + "bias"] += wd2.sum(0)  # (out,)
            ins.clear()
            outs.clear()
    finally:
        for h in handles:
            h.remove()
    return fisher


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
            "help": "training inputs of a task used to estimate its diagonal Fisher (all of "
                    "them when it exceeds the task's training set; λ is "
                    "chosen together with it: on permuted MNIST λ = 1e4 with 200 inputs averages "
                    "96.83 %, with 10,000 inputs 90.52 %; docs/results/psp-notes.md)"})
        fisher_labels: str = field(default="exact", metadata={
            "help": "exact: expectation over all classes of p(y|x) (classes times the cost); "
                    "sample: one label y ~ p(y|x) per input; classes: the squared scores of all "
                    "classes unweighted, as Zenke et al.'s code (use it with a fisher-samples of "
                    "the whole training set and its own λ)"})

    @classmethod
    def check_options(cls, opts: Any) -> None:
        if opts.fisher_samples <= 0:
            raise ConfigError(f"fisher-samples must be positive, got {opts.fisher_samples}")
        if opts.fisher_labels not in FISHER_LABELS:
            raise ConfigError(f"fisher-labels must be one of {', '.join(FISHER_LABELS)}, "
                              f"got {opts.fisher_labels!r}")
        if opts.ewc_lambda < 0:
            raise ConfigError(f"ewc-lambda must be >= 0, got {opts.ewc_lambda}")

    def __init__(self, ctx: MethodContext, options: Any = None):
        super().__init__(ctx, options)
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
