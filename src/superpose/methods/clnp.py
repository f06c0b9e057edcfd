"""CLNP: continual learning via neural pruning (Golkar, Kagan & Cho 2019, section 2, Algorithm 1).

After each task the network is sparsified (L1 during training, then activity-based neuron pruning,
section 2.2); the units that survive are frozen with their incoming weights ("active" weights),
the weights from inactive to active units ("interference" weights) are set to zero, and the next
task re-initialises and trains only the "free" weights, those into inactive units (section 2.1).
Earlier tasks' outputs therefore never change, bit for bit: gradients of frozen entries are
zeroed before the optimiser step and every frozen entry is restored from a stored copy after it,
so no optimiser effect (Adam moments, weight decay, momentum, the L1 gradient) can move one.

Output architecture (Fig. 2): ``head="multi"`` gives every task its own output layer;
``head="single"`` shares one output layer, and task t reads only the final-hidden-layer units it
trained itself (a per-task mask after the final hidden layer), so the final hidden layer is never
reused and fills up linearly (Fig. 3). The shared output bias feeds every task's logits, so it
trains with task 0 only and is frozen from then on.

Graceful forgetting (section 2.2): the threshold theta of each layer is the highest one whose
pruned network keeps the validation accuracy within ``margin`` of the unpruned one; optionally a
grid over the learning rate and the L1 strength on the first task(s), keeping the sparsest model
within the margin. Everything works on "units": Linear out-features or Conv2d out-channels.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .. import pruning
from ..errors import ConfigError
from . import METHODS
from .base import Method, MethodContext, lr_scale, make_optimizer, set_lr_scale

LOG = logging.getLogger(__name__)

WEIGHT_TYPES = (nn.Linear, nn.Conv2d)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
PHASES = ("frozen", "train", "finetune")
#: A hidden layer with free units but fewer than this fraction of its width gets a warning
#: before the next task (one seed of the 10-task run kept 1 of 2000 second-layer units free
#: and its last task, trained in that unit alone, tested at 19 %).
LOW_FREE_FRACTION = 0.01
#: A margin above this (10 points of accuracy) is warned about: likely a percentage given
#: where a fraction is meant (``--margin 0.5`` for the paper's 0.5 %).
MARGIN_WARN = 0.1
#: cache the validation activations of one layer during a threshold scan up to this size
SCAN_CACHE_BYTES = 1 << 30
#: ``train_path="auto"`` computes a hidden layer row-sparse while a task trains once at most this
#: fraction of its units trains (the gather costs more than it saves when nearly all do;
#: ``benchmarks/speed.py --sections clnp``)
SPARSE_MAX_FREE = 0.7
TRAIN_PATHS = ("auto", "dense", "sparse")


def flatten_modules(module: nn.Module) -> list[nn.Module]:
    """The leaf modules of a (nested) ``nn.Sequential`` in execution order."""
    if isinstance(module, nn.Sequential):
        return [m for child in module for m in flatten_modules(child)]
    return [module]


@dataclass(frozen=True)
class TrainRows:
    """How a plain Linear hidden layer is computed while a task trains (row-sparse path).

    Only the units in ``train`` (F,) can change: their pre-activations are computed from the
    gathered rows W[train] with autograd, so the backward pass costs F/U of the dense one and
    frozen rows get an exact zero gradient. The frozen units in ``const`` (C,) are computed
    without autograd (their outputs are read, but nothing below them trains: their inputs from
    free units are cut interference weights). Every other unit outputs 0: the single head's
    frozen final-layer units (the task reads only its own) and, while fine-tuning, the units no
    task kept (their weights into kept units are cut).
    """

    train: Tensor  # (F,) int64
    const: Tensor | None  # (C,) int64, or None: no frozen unit is read

    def linear(self, m: nn.Linear, h: Tensor) -> Tensor:
        """Pre-activations (B, U) of ``m`` on h (B, in)."""
        def rows(idx: Tensor) -> Tensor:  # (B, len(idx)): the units idx only
            b = None if m.bias is None else m.bias.index_select(0, idx)
            return nn.functional.linear(h, m.weight.index_select(0, idx), b)

        base = h.new_zeros(h.shape[0], m.weight.shape[0])  # (B, U)
        if self.const is not None and self.const.numel():
            with torch.no_grad():
                base.index_copy_(1, self.const, rows(self.const))
        return base.index_copy(1, self.train, rows(self.train))


def mask_like(mask: Tensor, h: Tensor) -> Tensor:
    """A (U,) unit mask shaped to multiply activations h: (B, U) or (B, U, *spatial)."""
    return mask.to(h.dtype).view(1, -1, *([1] * (h.dim() - 2)))


class ClnpNet(nn.Module):
    """A feed-forward ReLU network split into hidden layers and one or more output heads.

    Hidden layer l is a weight layer (Linear or Conv2d) with its BatchNorm and ReLU; the modules
    between two weight layers that follow the ReLU (pooling, dropout, flatten) belong to the next
    stage. ``forward`` multiplies hidden layer l's post-ReLU output by ``masks[l]`` (a (U_l,)
    float mask) when one is given: that is both the single-head task mask (on the last hidden
    layer) and the way a threshold scan tries a pruning without touching the weights.
    """

    def __init__(self, network: nn.Module, num_heads: int):
        super().__init__()
        mods = flatten_modules(network)
        weights = [i for i, m in enumerate(mods) if isinstance(m, WEIGHT_TYPES)]
        if len(weights) < 2:
            raise ConfigError("clnp needs a network with at least one hidden Linear/Conv2d layer "
                              "before the output layer")
        for m in mods:
            if not isinstance(m, (*WEIGHT_TYPES, *NORM_TYPES)) and any(True for _ in
                                                                         m.parameters()):
                raise ConfigError(f"clnp supports feed-forward nn.Sequential networks of Linear/"
                                  f"Conv2d, BatchNorm and ReLU layers; got {type(m).__name__} "
                                  "with parameters")
        out = weights[-1]
        if any(isinstance(m, (*WEIGHT_TYPES, *NORM_TYPES)) for m in mods[out + 1:]):
            raise ConfigError("clnp: the output layer must be the last layer with parameters")
        self.relu_at: list[int] = []  # index (in body) of each hidden layer's ReLU
        self.norm_at: list[list[int]] = []  # indices of each hidden layer's BatchNorm layers
        for a, b in zip(weights[:-1], weights[1:], strict=True):
            relus = [i for i in range(a + 1, b) if isinstance(mods[i], nn.ReLU)]
            if not relus:
                raise ConfigError(f"clnp needs a ReLU after every hidden layer (section 2.2); "
                                  f"none after {type(mods[a]).__name__} at position {a}")
            norms = [i for i in range(a + 1, b) if isinstance(mods[i], NORM_TYPES)]
            if any(i > relus[0] for i in norms):
                raise ConfigError("clnp expects Linear/Conv2d -> [BatchNorm] -> ReLU; found a "
                                  "BatchNorm after the ReLU")
            self.relu_at.append(relus[0])
            self.norm_at.append(norms)
        self.weight_at = weights[:-1]
        #: only Linear, ReLU and Flatten layers: training can take the row-sparse path
        self.plain = all(isinstance(m, (nn.Linear, nn.ReLU, nn.Flatten, nn.Identity))
                         for m in mods)
        self.body = nn.Sequential(*mods[:out])
        template = nn.Sequential(*mods[out:])
        heads = [template]
        for _ in range(num_heads - 1):
            head = copy.deepcopy(template)
            for m in head.modules():
                if hasattr(m, "reset_parameters") and m is not head:
                    m.reset_parameters()
            heads.append(head)
        self.heads = nn.ModuleList(heads)
        # features per unit of the layer below for every hidden layer l >= 1 and the output
        self.in_repeat = [1] + [self.in_features(k) // self.units(k - 1)
                                for k in range(1, self.num_hidden + 1)]
        for k in range(1, self.num_hidden + 1):
            if self.in_features(k) % self.units(k - 1):
                raise ConfigError(f"clnp: layer {k} reads {self.in_features(k)} features, not a "
                                  f"multiple of the {self.units(k - 1)} units below it")

    # ---- structure ----------------------------------------------------------------------
    @property
    def num_hidden(self) -> int:
        return len(self.weight_at)

    def weight_layer(self, k: int, head: int = 0) -> nn.Module:
        """Weight layer k: hidden layers 0..L-1, then the output layer (k = L) of ``head``."""
        return self.body[self.weight_at[k]] if k < self.num_hidden else self.heads[head][0]

    def norms(self, l: int) -> list[nn.Module]:
        return [self.body[i] for i in self.norm_at[l]]

    def units(self, l: int) -> int:
        w = self.weight_layer(l).weight
        return int(w.shape[0])

    def in_features(self, k: int) -> int:
        return int(self.weight_layer(k).weight.shape[1])

    def layer_names(self) -> list[str]:
        out = []
        for l in range(self.num_hidden):
            m = self.weight_layer(l)
            kind = "conv" if isinstance(m, nn.Conv2d) else "dense"
            out.append(f"{kind} {l + 1}")
        return out

    # ---- forward ------------------------------------------------------------------------
    def _stage(self, h: Tensor, l: int, rows: TrainRows | None = None) -> Tensor:
        """Run hidden layer l's stage (modules after the previous ReLU up to its own ReLU); with
        ``rows`` its Linear layer takes the row-sparse path (plain networks only)."""
        start = 0 if l == 0 else self.relu_at[l - 1] + 1
        for i in range(start, self.relu_at[l] + 1):
            m = self.body[i]
            h = rows.linear(m, h) if rows is not None and i == self.weight_at[l] else m(h)
        return h

    def _tail(self, h: Tensor, head: int) -> Tensor:
        for m in self.body[self.relu_at[-1] + 1:]:
            h = m(h)
        return self.heads[head](h)

    def forward(self, x: Tensor, head: int = 0, masks: Sequence[Tensor | None] | None = None,
                record: list[Tensor] | None = None,
                rows: Sequence[TrainRows | None] | None = None) -> Tensor:
        """Logits (B, classes). masks[l]: (U_l,) multiplies hidden layer l's output; ``record``
        receives each hidden layer's output before its mask (B, U_l, ...); rows[l] computes
        hidden layer l row-sparse (:class:`TrainRows`)."""
        return self.resume(x, 0, head, masks, record, rows=rows)

    def resume(self, h: Tensor, start: int, head: int = 0,
               masks: Sequence[Tensor | None] | None = None, record: list[Tensor] | None = None,
               cached: bool = False, rows: Sequence[TrainRows | None] | None = None) -> Tensor:
        """Continue the forward pass at hidden layer ``start``: h is its input, or its output
        before the mask when ``cached`` (a threshold scan reuses the layers below)."""
        for l in range(start, self.num_hidden):
            if not (cached and l == start):
                h = self._stage(h, l, None if rows is None else rows[l])
            if record is not None:
                record.append(h)
            if masks is not None and masks[l] is not None:
                h = h * mask_like(masks[l], h)
        return self._tail(h, head)

    def hidden_output(self, x: Tensor, layer: int, masks: Sequence[Tensor | None] | None
                      ) -> Tensor:
        """Hidden layer ``layer``'s output before its mask, layers below masked."""
        h = x
        for l in range(layer + 1):
            h = self._stage(h, l)
            if l < layer and masks is not None and masks[l] is not None:
                h = h * mask_like(masks[l], h)
        return h

    # ---- growing (paper's conclusion) ----------------------------------------------------
    @torch.no_grad()
    def grow(self, l: int, n: int) -> None:
        """Widen hidden layer l by n units. New units' incoming weights are freshly initialised;
        their outgoing weights are zero (so no existing unit or output changes)."""
        if n <= 0:
            return
        old = self.weight_layer(l)
        self.body[self.weight_at[l]] = _widen_out(old, n)
        for i in self.norm_at[l]:
            self.body[i] = _widen_norm(self.body[i], n)
        rep = self.in_repeat[l + 1]
        if l + 1 < self.num_hidden:
            self.body[self.weight_at[l + 1]] = _widen_in(self.weight_layer(l + 1), n * rep)
        else:
            for head in self.heads:
                head[0] = _widen_in(head[0], n * rep)


def fast_optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """``make_optimizer``, with PyTorch's fused Adam kernel where it exists: the same update
    in one pass over the parameters (on CPU about 5x faster than the default per-tensor loop,
    which takes a third of a 2x2000 MLP's training step)."""
    params = list(params)
    if name == "adam":
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return make_optimizer(name, params, lr)


def task_line(record: dict[str, Any]) -> str:
    """One line on what pruning kept of a task (a record of ``CLNP.records``), e.g.
    ``clnp: task 3 kept dense 1 +125 (511/2000 used, θ 0.061), dense 2 +70 (333/2000 used,
    θ 0.708); validation 97.80 % -> 97.38 % (pruned); fine-tuned 1055 steps``."""
    layers = ", ".join(f"{x['name']} +{x['new']} ({x['used']}/{x['units']} used, "
                       f"θ {x['theta']:.3g})" for x in record["layers"])
    line = (f"clnp: task {record['task']} kept {layers}; validation "
            f"{100 * record['val_unpruned']:.2f} % -> {100 * record['val_pruned']:.2f} % "
            "(pruned)")
    if record.get("finetune_steps"):
        line += f"; fine-tuned {record['finetune_steps']} steps"
    return line


def _uniform_like(t: Tensor, fan_in: int) -> Tensor:
    """PyTorch's default Linear/Conv2d initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty_like(t).uniform_(-bound, bound)


def _widen_out(m: nn.Module, n: int) -> nn.Module:
    w = m.weight
    if isinstance(m, nn.Linear):
        new: nn.Module = nn.Linear(m.in_features, m.out_features + n, bias=m.bias is not None)
    else:
        new = nn.Conv2d(m.in_channels, m.out_channels + n, m.kernel_size, m.stride, m.padding,
                        m.dilation, m.groups, bias=m.bias is not None, padding_mode=m.padding_mode)
    new = new.to(device=w.device, dtype=w.dtype)
    new.weight[: w.shape[0]] = w
    if m.bias is not None:
        new.bias[: w.shape[0]] = m.bias
    return new


def _widen_in(m: nn.Module, n: int) -> nn.Module:
    w = m.weight
    if isinstance(m, nn.Linear):
        new: nn.Module = nn.Linear(m.in_features + n, m.out_features, bias=m.bias is not None)
    else:
        new = nn.Conv2d(m.in_channels + n, m.out_channels, m.kernel_size, m.stride, m.padding,
                        m.dilation, m.groups, bias=m.bias is not None, padding_mode=m.padding_mode)
    new = new.to(device=w.device, dtype=w.dtype)
    new.weight.zero_()
    new.weight[:, : w.shape[1]] = w
    if m.bias is not None:
        new.bias.copy_(m.bias)
    return new


def _widen_norm(m: nn.Module, n: int) -> nn.Module:
    new = type(m)(m.num_features + n, eps=m.eps, momentum=m.momentum, affine=m.affine,
                  track_running_stats=m.track_running_stats)
    ref = m.weight if m.affine else m.running_mean
    new = new.to(device=ref.device, dtype=ref.dtype)
    k = m.num_features
    for name in ("weight", "bias", "running_mean", "running_var"):
        src = getattr(m, name)
        if src is not None:
            getattr(new, name)[:k] = src
    if m.track_running_stats:
        new.num_batches_tracked.copy_(m.num_batches_tracked)
    return new


@dataclass
class _Frozen:
    """One parameter or buffer with entries that must not change, and how to keep them.

    ``free`` is a bool mask broadcastable to the tensor (True: may change). Masks that select
    whole rows (out units) are kept as row indices, so the copy and the restore only touch the
    frozen rows; other masks restore with ``torch.where``.
    """

    tensor: Tensor
    free: Tensor
    rows: Tensor | None  # (R,) indices of frozen rows when the mask selects whole rows
    all_free: bool
    all_frozen: bool
    saved: Tensor | None = None

    @staticmethod
    def make(t: Tensor, out_sel: Tensor, in_sel: Tensor | None = None) -> _Frozen:
        """out_sel: (O,) bool over dim 0; in_sel: (I_units,) bool over dim 1 (None: all)."""
        if in_sel is None or bool(in_sel.all()):
            free = out_sel.reshape(-1, *([1] * (t.dim() - 1)))  # (O, 1, ...)
            rows = (~out_sel).nonzero().flatten()
        else:
            free = pruning.outer_mask(out_sel, in_sel, t.shape)
            rows = None
        return _Frozen(t, free, rows, bool(free.all()), not bool(free.any()))

    def save(self) -> None:
        t = self.tensor.detach()
        self.saved = t.index_select(0, self.rows) if self.rows is not None else t.clone()

    def mask_grad(self) -> None:
        g = self.tensor.grad
        if g is None:
            return
        if self.rows is not None:
            g.index_fill_(0, self.rows, 0.0)
        else:
            g.masked_fill_(~self.free, 0.0)

    def restore(self) -> None:
        assert self.saved is not None, "snapshot missing: train_step takes it"
        t = self.tensor.data
        if self.rows is not None:
            t.index_copy_(0, self.rows, self.saved)
        else:
            t.copy_(torch.where(self.free, t, self.saved))


@METHODS.register("clnp")
class Clnp(Method):
    """Continual learning via neural pruning (section 2, Algorithm 1), single- or multi-head."""

    name = "clnp"

    @dataclass
    class Options:
        """CLNP settings (section 2.2 and 3)."""

        head: str = field(default="single", metadata={
            "help": "output architecture (Fig. 2): single (one output layer, a per-task mask on "
                    "the final hidden layer) or multi (a new head per task)"})
        l1: list[float] = field(default_factory=lambda: [1e-5], metadata={
            "help": "L1 coefficient alpha per weight layer, comma separated (one value: every "
                    "layer); the loss is mean cross-entropy + sum_k alpha_k * sum |W_k| over the "
                    "trainable weights (paper, permuted MNIST: 1e-7,1e-5,1e-6)"})
        margin: float = field(default=0.0005, metadata={
            "help": "graceful-forgetting margin m as a fraction (0.0005 = 0.05 %): pruning may "
                    "cost at most this much validation accuracy"})
        theta_grid: list[float] = field(default_factory=list, metadata={
            "help": "activity thresholds theta to scan, ascending (empty: automatic, from each "
                    "layer's activities; see theta-steps)"})
        theta_steps: int = field(default=40, metadata={
            "help": "resolution of the automatic theta scan: candidates prune 1/N, 2/N, ... of "
                    "the task's firing units of a layer"})
        theta_patience: int = field(default=3, metadata={
            "help": "a threshold scan ends after this many thresholds in a row fall outside the "
                    "margin (1: at the first); the highest acceptable one before is kept"})
        theta_shared: bool = field(default=False, metadata={
            "help": "scan one threshold index for all layers at once instead of layer by layer "
                    "(in theta-order)"})
        theta_order: str = field(default="last", metadata={
            "help": "layer-by-layer scan order: last (the last hidden layer first, so it takes the "
                    "margin first; it is the one a single head fills) or first (the first hidden "
                    "layer first)"})
        finetune_epochs: float = field(default=0.0, metadata={
            "help": "CLNP + fine-tuning (section 3.2): epochs of retraining the surviving "
                    "weights after pruning (0: off)"})
        finetune_lr: float = field(default=1e-4, metadata={
            "help": "learning rate of the fine-tuning epochs"})
        grow: int = field(default=0, metadata={
            "help": "widen a depleted hidden layer by this many units before the next task "
                    "(paper's conclusion; 0: never)"})
        min_free: int = field(default=1, metadata={
            "help": "a hidden layer with fewer free units than this counts as depleted"})
        grid_lr: list[float] = field(default_factory=list, metadata={
            "help": "graceful-forgetting grid (section 2.2): learning rates tried on the first "
                    "grid-tasks tasks (empty: only --lr)"})
        grid_l1_scale: list[float] = field(default_factory=list, metadata={
            "help": "grid factors multiplying every L1 coefficient (empty: only 1)"})
        grid_tasks: int = field(default=1, metadata={
            "help": "number of leading tasks on which the grid is searched (its choice is kept "
                    "for later tasks)"})
        train_path: str = field(default="auto", metadata={
            "help": "how a task's training pass runs on a plain Linear/ReLU network: sparse "
                    "(gather the weight rows of the units that train, so forward and backward "
                    "cost scale with them), dense (whole layers, frozen gradients zeroed), or "
                    "auto (sparse for a layer once at most 70 % of its units train). Same "
                    "update up to float rounding; frozen weights exact either way"})

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def check_options(cls, opts: Any) -> None:
        _check_options(opts)

    def __init__(self, ctx: MethodContext, options: Any = None):
        opts = options if options is not None else self.Options()
        self.lr = float(ctx.lr)
        self.l1_scale = 1.0
        super().__init__(ctx, opts)  # checks the options (check_options)
        if opts.margin > MARGIN_WARN:  # once per run, when the method is built
            LOG.warning("clnp: margin %g lets pruning cost up to %g points of validation "
                        "accuracy (the paper's margins are 0.0005-0.04, i.e. 0.05-4 %%); was a "
                        "percentage meant?", opts.margin, 100 * opts.margin)
        net = self.net
        n_weights = net.num_hidden + 1
        if len(opts.l1) not in (1, n_weights):
            raise ConfigError(f"l1 needs 1 or {n_weights} values (one per weight layer of this "
                              f"network), got {len(opts.l1)}: {opts.l1}")
        self.l1 = [float(a) for a in (opts.l1 * n_weights if len(opts.l1) == 1 else opts.l1)]
        dev = ctx.device
        # used[l]: (U_l,) bool, units owned by finished tasks (frozen); N_act_l of Algorithm 1
        self.used = [torch.zeros(net.units(l), dtype=torch.bool, device=dev)
                     for l in range(net.num_hidden)]
        # task_units[t]: (U_L,) bool, the final-hidden units task t reads (single head, Fig. 2)
        self.task_units = torch.zeros(self.num_tasks, net.units(net.num_hidden - 1),
                                      dtype=torch.bool, device=dev)
        self.trained = torch.zeros(self.num_tasks, dtype=torch.bool, device=dev)
        self.phase = "frozen"
        self.current = -1
        self.new: list[Tensor] | None = None  # units the current task keeps (after pruning)
        self.records: list[dict[str, Any]] = []  # capacity per finished task
        self.events: list[dict[str, Any]] = []  # depleted / grown layers
        self.grid_log: list[dict[str, Any]] = []
        self._frozen: list[_Frozen] = []  # tensors with entries the optimiser must not move
        self._masked: list[_Frozen] = []  # ... whose gradients need masking
        self._snapshot_taken = False
        self._sign_buffers: dict[int, Tensor] = {}
        self._rows: list[TrainRows | None] | None = None  # row-sparse training pass, per layer
        self._warned_split = False
        self._set_phase("frozen", 0)

    @property
    def num_tasks(self) -> int:
        return int(self.ctx.stream.num_tasks)

    @property
    def multi(self) -> bool:
        return self.options.head == "multi"

    @property
    def net(self) -> ClnpNet:
        assert isinstance(self.model, ClnpNet)
        return self.model

    def build(self) -> nn.Module:
        heads = self.ctx.stream.num_tasks if self.options.head == "multi" else 1
        return ClnpNet(self.ctx.build_model(), heads)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return fast_optimizer(self.ctx.optimizer, self.trainable_parameters(), self.lr)

    # ---- masks: which entries the optimiser may change -----------------------------------
    def _set_phase(self, phase: str, task: int) -> None:
        """Set what may change: "train" (the free weights, section 2.1), "finetune" (the weights
        the current task kept after pruning, section 3.2) or "frozen" (nothing)."""
        net = self.net
        dev = self.ctx.device
        n_hidden = net.num_hidden
        entries: list[_Frozen] = []
        for l in range(n_hidden):
            m = net.weight_layer(l)
            in_sel: Tensor | None = None  # None: every input
            if phase == "train":
                out_sel = ~self.used[l]
            elif phase == "finetune":
                assert self.new is not None
                out_sel = self.new[l]
                in_sel = self.used[l - 1] if l > 0 else None
            else:
                out_sel = torch.zeros_like(self.used[l])
            entries.append(_Frozen.make(m.weight, out_sel, in_sel))
            if m.bias is not None:
                entries.append(_Frozen.make(m.bias, out_sel))
            for bn in net.norms(l):
                for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    if t is not None:
                        entries.append(_Frozen.make(t, out_sel))
        last = self.used[-1]
        first = not bool(self.trained.any())  # the shared output bias belongs to task 0 only
        for h, head in enumerate(net.heads):
            m = head[0]
            classes = torch.ones(m.weight.shape[0], dtype=torch.bool, device=dev)
            mine = (not self.multi) or h == task
            bias = mine and (self.multi or first)
            if phase == "train" and mine:
                in_sel = None if self.multi else ~last
            elif phase == "finetune" and mine:
                assert self.new is not None
                in_sel = last if self.multi else self.new[-1]
            else:
                in_sel = torch.zeros_like(last)
                bias = False
            entries.append(_Frozen.make(m.weight, classes, in_sel))
            if m.bias is not None:
                entries.append(_Frozen.make(m.bias, torch.full_like(classes, bias)))
        self._frozen = [e for e in entries if not e.all_free]
        self.phase = phase
        self._rows = self._train_rows(phase)
        # rows (F,) that train in the layers the sparse pass computes: their other rows get an
        # exact zero gradient from the pass itself, so they need no mask and no L1 term
        sparse: dict[int, Tensor] = {}
        for l, r in enumerate(self._rows or []):
            if r is not None:
                m = net.weight_layer(l)
                sparse.update({id(t): r.train for t in (m.weight, m.bias) if t is not None})
        self._masked = [e for e in self._frozen if e.rows is None or id(e.tensor) not in sparse]
        # the L1 term (section 2.2): (weight, alpha_k, rows or None) of every weight layer with
        # free entries
        alphas = {id(net.weight_layer(l).weight): self.l1[l] for l in range(n_hidden)}
        alphas.update({id(head[0].weight): self.l1[-1] for head in net.heads})
        self._l1_terms = [(e.tensor, alphas[id(e.tensor)], sparse.get(id(e.tensor)))
                          for e in entries if id(e.tensor) in alphas and not e.all_frozen]
        self._sign_buffers = {}
        self._take_snapshot()  # the frozen values now; retaken after a checkpoint is loaded

    def _train_rows(self, phase: str) -> list[TrainRows | None] | None:
        """The row-sparse plan (``train_path``) of a training phase, None for a dense pass.

        "train": the free units train, every used unit is read (all but the single head's final
        layer); "finetune": the task's new units train and the used units are read, other units
        are skipped (their weights into used units are cut interference weights)."""
        net, path = self.net, self.options.train_path
        if path == "dense" or not net.plain or phase not in ("train", "finetune"):
            return None
        rows: list[TrainRows | None] = []
        for l, used in enumerate(self.used):
            if phase == "train":
                trains = ~used  # (U_l,)
            else:
                assert self.new is not None
                trains = self.new[l]
            if path == "auto" and float(trains.float().mean()) > SPARSE_MAX_FREE:
                rows.append(None)
                continue
            last = l == net.num_hidden - 1
            const = None if last and not self.multi else (used & ~trains).nonzero().flatten()
            rows.append(TrainRows(trains.nonzero().flatten(), const))
        return rows if any(r is not None for r in rows) else None

    def _take_snapshot(self) -> None:
        for e in self._frozen:
            e.save()
        self._snapshot_taken = True

    # ---- training hooks -----------------------------------------------------------------
    def train_step(self, x: Tensor, y: Tensor, task: int, step: int) -> float:
        if not self._snapshot_taken:  # before the forward pass: BatchNorm updates running stats
            self._take_snapshot()
        return super().train_step(x, y, task, step)

    def loss(self, x: Tensor, y: Tensor, task: int, step: int) -> Tensor:
        """Mean cross-entropy of the batch (the logged loss). The L1 term of the objective,
        sum_k alpha_k ||W_k||_1 (section 2.2), enters as its gradient in
        ``before_optimizer_step``: the same update, without an autograd pass over every
        weight."""
        return nn.functional.cross_entropy(self.forward(x, task, step), y)

    @torch.no_grad()
    def before_optimizer_step(self, task: int, step: int) -> None:
        """Add the L1 gradient alpha_k * sign(W_k), then zero the gradient of every frozen
        entry (so neither the L1 term nor Adam's moments ever see one). In a layer the sparse
        pass computes, only the rows that train get the L1 term (the others hold exact zeros)."""
        for w, alpha, rows in self._l1_terms:
            a = alpha * self.l1_scale
            if a and w.grad is not None and rows is not None:
                w.grad.index_add_(0, rows, torch.sign(w.index_select(0, rows)), alpha=a)
            elif a and w.grad is not None:
                buf = self._sign_buffers.get(id(w))
                if buf is None or buf.shape != w.shape:
                    buf = self._sign_buffers[id(w)] = torch.empty_like(w)
                torch.sign(w, out=buf)
                w.grad.add_(buf, alpha=a)
        for e in self._masked:
            e.mask_grad()

    @torch.no_grad()
    def after_step(self, task: int, step: int) -> None:
        """Put back every frozen entry bit for bit, whatever the optimiser did to it (weight
        decay, momentum and Adam's moments move an entry even when its gradient is zero)."""
        for e in self._frozen:
            e.restore()

    def forward(self, x: Tensor, task: int, step: int | None) -> Tensor:
        masks: list[Tensor | None] = [None] * self.net.num_hidden
        masks[-1] = self._head_mask(task)
        rows = self._rows if task == self.current and torch.is_grad_enabled() else None
        return self.net(x, head=task if self.multi else 0, masks=masks, rows=rows)

    def _head_mask(self, task: int) -> Tensor | None:
        """Single head: the final-hidden units task ``task`` reads (Fig. 2, right): its own once
        trained, else the currently free ones (the task being trained)."""
        if self.multi:
            return None
        if self.trained[task]:
            return self.task_units[task]
        if self.phase == "finetune" and task == self.current and self.new is not None:
            return self.new[-1]
        return ~self.used[-1]

    # ---- task boundaries ----------------------------------------------------------------
    def begin_task(self, task: int) -> None:
        """Algorithm 1, loop body start: grow depleted layers (option), re-initialise the free
        weights, place a new head (multi), optionally run the graceful-forgetting grid, and
        train only the free weights."""
        if self.trained[task]:
            raise ConfigError(f"clnp trains each task once; the stream revisits task {task}")
        self.current = task
        self.new = None
        self._check_capacity(task)
        self._reinit_free(task)
        self._set_phase("train", task)
        if task < self.options.grid_tasks and (self.options.grid_lr or
                                               self.options.grid_l1_scale):
            self._grid_search(task)
        self.optimizer = self.make_optimizer()

    def end_task(self, task: int) -> None:
        """Algorithm 1, loop body end: activities on the task's training data, the threshold
        scan on validation data, pruning, interference weights to zero, optional fine-tuning."""
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            activity = self._activities(task)
            scan = self._scan(task, activity, self._scan_batches(task))
            self._apply(task, activity, scan)
        finally:
            for m, mode in modes:
                m.training = mode
        if self.options.finetune_epochs > 0:
            self._finetune(task)
        self.trained[task] = True
        self._set_phase("frozen", task)
        self.current = -1
        self.records[-1]["digests"] = self._digests()
        self.ctx.log(task_line(self.records[-1]))

    @torch.no_grad()
    def _digests(self) -> dict[str, str]:
        """SHA-256 of every finished task's logits on its first 256 test images: an audit of
        zero forgetting (a task's digest never changes once written)."""
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        out = {}
        try:
            for t in self.trained.nonzero().flatten().tolist():
                x, _ = next(iter(self.ctx.stream.eval_batches(t, "test", 256)))
                logits = self.predict(x, t).detach().to("cpu").contiguous()  # (256, classes)
                out[str(t)] = hashlib.sha256(logits.numpy().tobytes()).hexdigest()[:16]
        finally:
            for m, mode in modes:
                m.training = mode
        return out

    def _check_capacity(self, task: int) -> None:
        """Say when a hidden layer has no free units left (widen it with ``grow``), and warn
        when it has almost none: fewer than :data:`LOW_FREE_FRACTION` of its units."""
        net = self.net
        for l in range(net.num_hidden):
            free = int((~self.used[l]).sum())
            if free >= self.options.min_free:
                if free < LOW_FREE_FRACTION * net.units(l):
                    LOG.warning("clnp: %s has only %d free units of %d before task %d; the task "
                                "can add little there (--grow N widens a layer with fewer than "
                                "--min-free N free units)", net.layer_names()[l], free,
                                net.units(l), task)
                continue
            name = net.layer_names()[l]
            event: dict[str, Any] = {"task": task, "layer": name, "free": free}
            if self.options.grow > 0:
                self._grow(l, self.options.grow)
                event["action"] = f"grown by {self.options.grow} units"
                LOG.warning("clnp: %s has %d free units before task %d; widened by %d units to "
                            "%d (--grow)", name, free, task, self.options.grow, net.units(l))
            else:
                last = l == net.num_hidden - 1
                if last and not self.multi:
                    what = ("single head: the network is fixed, task %d cannot train "
                            "(pass --grow N to widen the layer)")
                elif last:
                    what = "multi-head: only the new head of task %d trains (final-layer transfer)"
                else:
                    what = "task %d can only reuse the features of this layer"
                event["action"] = "none"
                LOG.warning("clnp: %s is depleted (%d free units); " + what, name, free, task)
            self.events.append(event)

    def _grow(self, l: int, n: int) -> None:
        dev = self.ctx.device
        self.net.grow(l, n)
        self.used[l] = torch.cat([self.used[l], torch.zeros(n, dtype=torch.bool, device=dev)])
        if l == self.net.num_hidden - 1:
            pad = torch.zeros(self.num_tasks, n, dtype=torch.bool, device=dev)
            self.task_units = torch.cat([self.task_units, pad], dim=1)
        self._set_phase(self.phase, self.current)

    @torch.no_grad()
    def _reinit_free(self, task: int) -> None:
        """Re-initialise W_free (Algorithm 1): rows of free units, the single head's columns from
        free final-hidden units, the multi-head's new head. Frozen weights are not touched."""
        net = self.net
        for l in range(net.num_hidden):
            m = net.weight_layer(l)
            rows = ~self.used[l]  # (U_l,)
            fan_in = m.weight[0].numel()
            m.weight[rows] = _uniform_like(m.weight, fan_in)[rows]
            if m.bias is not None:
                m.bias[rows] = _uniform_like(m.bias, fan_in)[rows]
            for bn in net.norms(l):
                if bn.affine:
                    bn.weight[rows] = 1.0
                    bn.bias[rows] = 0.0
                if bn.track_running_stats:
                    bn.running_mean[rows] = 0.0
                    bn.running_var[rows] = 1.0
        if self.multi:
            for m in net.heads[task].modules():
                if isinstance(m, WEIGHT_TYPES):
                    m.reset_parameters()
        else:
            m = net.heads[0][0]
            cols = pruning.expand_inputs(~self.used[-1], m.weight.shape[1])  # (in,)
            fresh = _uniform_like(m.weight, m.weight[0].numel())
            m.weight[:, cols] = fresh[:, cols]

    # ---- pruning (section 2.2) ----------------------------------------------------------
    @torch.no_grad()
    def _activities(self, task: int) -> list[Tensor]:
        """E_S[N_l]: each hidden unit's average post-ReLU activation on the task's training
        data. Returns per hidden layer (U_l,) float64."""
        net = self.net
        sums: list[Tensor] = [torch.zeros(net.units(l), dtype=torch.float64,
                                          device=self.ctx.device) for l in range(net.num_hidden)]
        counts = [0] * net.num_hidden
        for x, _ in self.ctx.stream.eval_batches(task, "train", 1000):
            record: list[Tensor] = []
            net(x, head=task if self.multi else 0, record=record)
            for l, h in enumerate(record):
                s, n = pruning.unit_sums(h)
                sums[l] += s
                counts[l] += n
        return [s / max(c, 1) for s, c in zip(sums, counts, strict=True)]

    def _scan_batches(self, task: int) -> list[tuple[Tensor, Tensor]]:
        """The validation data of the threshold scan (section 2.2): the stream's "val" split, or
        the training data with a warning when the run holds out none."""
        split = "val"
        if not self.ctx.stream.has_split("val"):
            split = "train"
            if not self._warned_split:
                LOG.warning("clnp: no validation split; the threshold scan uses the training "
                            "data. Pass --validation 0.1 to hold out 10 % as in the paper.")
                self._warned_split = True
        return list(self.ctx.stream.eval_batches(task, split, 1000))

    def _keep_masks(self, activity: list[Tensor], thetas: Sequence[float]) -> list[Tensor]:
        """Per hidden layer (U_l,) bool: units the task would keep with these thresholds. Lower
        layers keep every used unit; the single head's last layer keeps only the task's own."""
        keep = []
        for l, (act, used) in enumerate(zip(activity, self.used, strict=True)):
            new = pruning.active_units(act, thetas[l], ~used)
            last = l == len(activity) - 1
            keep.append(new if (last and not self.multi) else used | new)
        return keep

    @torch.no_grad()
    def _accuracy(self, task: int, batches: list[tuple[Tensor, Tensor]],
                  masks: Sequence[Tensor], layer: int = -1, cache: dict[str, Any] | None = None,
                  key: Any = None) -> float:
        """Validation accuracy with hidden units outside ``masks`` silenced (a pruning tried
        without changing a weight). With ``layer`` >= 0, hidden layer ``layer``'s output before
        its mask is kept in ``cache`` under ``key`` (which must identify the masks below it)."""
        net = self.net
        head = task if self.multi else 0
        fmasks = [m.to(torch.float32) for m in masks]
        correct = 0
        total = 0
        if layer < 0 or cache is None:
            key = None
        elif cache.get("key") != key:
            cache.clear()
        for b, (x, y) in enumerate(batches):
            if key is not None and cache is not None:
                if b < len(cache.get("h", [])):
                    h = cache["h"][b]
                else:
                    h = net.hidden_output(x, layer, fmasks)
                    if cache.get("bytes", 0) + h.numel() * h.element_size() <= SCAN_CACHE_BYTES:
                        cache.setdefault("h", []).append(h)
                        cache["bytes"] = cache.get("bytes", 0) + h.numel() * h.element_size()
                        cache["key"] = key
                logits = net.resume(h, layer, head, fmasks, cached=True)
            else:
                logits = net(x, head=head, masks=fmasks)
            correct += int((logits.argmax(dim=1) == y).sum())
            total += y.numel()
        return correct / max(total, 1)

    def _scan(self, task: int, activity: list[Tensor], batches: list[tuple[Tensor, Tensor]],
              reference: float | None = None) -> pruning.Scan:
        """The highest thresholds within the margin of ``reference`` (default: the unpruned
        network's validation accuracy) — graceful forgetting, section 2.2."""
        n = len(activity)
        cache: dict[str, Any] = {}
        if reference is None:
            reference = self._accuracy(task, batches,
                                       self._keep_masks(activity, [-math.inf] * n))
        if self.options.theta_grid:
            grids = [sorted(self.options.theta_grid)] * n
        else:
            grids = [pruning.quantile_grid(act, ~used, self.options.theta_steps)
                     for act, used in zip(activity, self.used, strict=True)]

        def evaluate(thetas: list[float], layer: int) -> float:
            masks = self._keep_masks(activity, thetas)
            key = (layer, tuple(thetas[:layer])) if layer >= 0 else None
            return self._accuracy(task, batches, masks, layer, cache, key)

        order = range(n) if self.options.theta_order == "first" else None  # None: last first
        return pruning.scan_thresholds(evaluate, grids, reference, self.options.margin,
                                       shared=self.options.theta_shared, order=order,
                                       patience=self.options.theta_patience)

    @torch.no_grad()
    def _apply(self, task: int, activity: list[Tensor], scan: pruning.Scan) -> None:
        """Keep the task's active units, set the interference weights to zero (section 2.1)
        and record the capacity diagnostics (Fig. 3)."""
        net = self.net
        thetas = scan.thetas
        before = [u.clone() for u in self.used]
        new = [pruning.active_units(act, thetas[l], ~used)
               for l, (act, used) in enumerate(zip(activity, before, strict=True))]
        self.used = [u | a for u, a in zip(before, new, strict=True)]
        self.new = new
        if not self.multi:
            self.task_units[task] = new[-1]
        # W_int = W[N_inact_l -> N_act_l+1] <- 0 for hidden layers 1..L-1 and the task's head
        for l in range(1, net.num_hidden):
            m = net.weight_layer(l)
            interference = pruning.partition(self.used[l - 1], self.used[l],
                                             m.weight.shape).interference
            m.weight[interference] = 0.0
        if self.multi:
            m = net.heads[task][0]
            classes = torch.ones(m.weight.shape[0], dtype=torch.bool, device=m.weight.device)
            m.weight[pruning.partition(self.used[-1], classes, m.weight.shape).interference] = 0
        names = net.layer_names()
        layers = []
        for l in range(net.num_hidden):
            reused = activity[l] > thetas[l]
            if l == net.num_hidden - 1 and not self.multi:
                reused = torch.zeros_like(reused)  # masked out: never reused (Fig. 2)
            u = pruning.layer_usage(before[l], new[l], reused)
            alive = int(((activity[l] > 0) & ~before[l]).sum())  # free units that fire at all
            layers.append({"name": names[l], "units": u.units, "used": u.used, "new": u.new,
                           "reused": u.reused, "alive": alive, "theta": thetas[l]})
        self.records.append({"task": task, "val_unpruned": scan.reference,
                             "val_pruned": scan.accuracy, "layers": layers,
                             "lr": self.lr, "l1_scale": self.l1_scale})

    # ---- extra training: fine-tuning (section 3.2) and the grid (section 2.2) ----------------
    def _train_for(self, task: int, steps: int, lr: float, seed: int) -> None:
        """``steps`` optimiser steps on the task's training data with the current masks, the rate
        following the run's schedule over these steps."""
        gen = torch.Generator().manual_seed(seed)
        saved = self.optimizer
        self.optimizer = fast_optimizer(self.ctx.optimizer, self.trainable_parameters(), lr)
        try:
            for s in range(steps):
                x, y = self.ctx.stream.train_batch(task, s, self.ctx.batch_size, gen)
                if self.ctx.lr_schedule != "constant":
                    set_lr_scale(self.optimizer, lr_scale(self.ctx.lr_schedule, s, steps))
                loss = float(self.train_step(x, y, task, s))
                if not math.isfinite(loss):
                    raise FloatingPointError(f"clnp: loss became {loss} while training task "
                                             f"{task} at lr {lr}")
        finally:
            self.optimizer = saved

    def _finetune(self, task: int) -> None:
        """Retrain the weights that survived pruning (into the task's new units, from active
        units) for ``finetune_epochs`` at ``finetune_lr`` (section 3.2). Interference weights
        stay zero and earlier tasks' weights stay frozen."""
        n = len(self.ctx.stream.task_data(task, "train"))
        steps = math.ceil(self.options.finetune_epochs * n / self.ctx.batch_size)
        self._set_phase("finetune", task)
        self._train_for(task, steps, self.options.finetune_lr, self.ctx.seed * 7919 + task)
        rec = self.records[-1]
        rec["finetune_steps"] = steps

    def _grid_search(self, task: int) -> None:
        """Graceful forgetting over a grid of learning rate x L1 scale (section 2.2): train each
        candidate from the same initialisation, keep those within the margin of the best
        validation accuracy, scan each one's thresholds against that best accuracy, choose the
        sparsest. Only its hyper-parameters are kept: the task is then trained as usual."""
        lrs = self.options.grid_lr or [self.lr]
        scales = self.options.grid_l1_scale or [self.l1_scale]
        start = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        trained = []
        batches = self._scan_batches(task)
        grid = [(a, b) for a in lrs for b in scales]
        self.ctx.log(f"clnp: grid on task {task}: {len(grid)} candidates (lr {lrs} x L1 scale "
                     f"{scales}), {self.ctx.steps_per_task} steps each")
        for i, (lr, scale) in enumerate(grid):
            t0 = time.perf_counter()
            self.model.load_state_dict(start)
            self.l1_scale = scale
            self._snapshot_taken = False
            self._train_for(task, self.ctx.steps_per_task, lr, self.ctx.seed * 7919 + 31 * i + 1)
            self.model.eval()
            activity = self._activities(task)
            acc = self._accuracy(task, batches,
                                 self._keep_masks(activity, [-math.inf] * len(activity)))
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            trained.append(((lr, scale), acc, activity, state))
            self.ctx.log(f"clnp: grid candidate {i + 1}/{len(grid)} (lr {lr:g}, L1 scale "
                         f"{scale:g}): validation {100 * acc:.2f} % before pruning "
                         f"({time.perf_counter() - t0:.0f} s)")
        best = max(acc for _, acc, _, _ in trained)
        candidates = []
        free = sum(int((~u).sum()) for u in self.used)
        for (lr, scale), acc, activity, state in trained:
            curve: list[tuple[float, float]] = []
            if pruning.within_margin(acc, best, self.options.margin):
                self.model.load_state_dict(state)
                scan = self._scan(task, activity, batches, reference=best)
                # the states the scan accepted, in order (each sparser than the one before),
                # then the final pruned state: its highest acceptable thresholds
                for thetas, a in [*scan.evaluations, (scan.thetas, scan.accuracy)]:
                    if pruning.within_margin(a, best, self.options.margin):
                        kept = sum(int(k.sum()) for k in self._new_units(activity, thetas))
                        curve.append((1.0 - kept / max(free, 1), a))
            candidates.append(pruning.Candidate({"lr": lr, "l1_scale": scale}, acc, curve))
        i, k, _ = pruning.select_sparsest(candidates, self.options.margin)  # curves: all pass
        chosen = candidates[i]
        self.lr = float(chosen.params["lr"])
        self.l1_scale = float(chosen.params["l1_scale"])
        for j, c in enumerate(candidates):
            kk = pruning.highest_within_margin([a for _, a in c.curve], best, self.options.margin)
            self.grid_log.append({"task": task, **c.params, "val_unpruned": c.val_accuracy,
                                  "sparsity": c.curve[kk][0] if kk is not None else None,
                                  "val_pruned": c.curve[kk][1] if kk is not None else None,
                                  "chosen": j == i})
        LOG.warning("clnp: grid on task %d chose lr %g, L1 scale %g (sparsity %s)", task,
                    self.lr, self.l1_scale, chosen.curve[k][0] if k is not None else "n/a")
        self.model.load_state_dict(start)
        self.model.train()
        self._set_phase("train", task)

    def _new_units(self, activity: list[Tensor], thetas: Sequence[float]) -> list[Tensor]:
        return [pruning.active_units(a, thetas[l], ~u)
                for l, (a, u) in enumerate(zip(activity, self.used, strict=True))]

    # ---- accounting and state -----------------------------------------------------------
    def count_parameters(self) -> dict[str, int]:
        net = self.net
        body = sum(p.numel() for p in net.body.parameters())
        head = sum(p.numel() for p in net.heads[0].parameters())
        if self.multi:
            return {"shared": body, "per_task": head, "total": body + head * len(net.heads)}
        return {"shared": body + head, "per_task": 0, "total": body + head}

    def extra_state(self) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {
            "widths": torch.tensor([self.net.units(l) for l in range(self.net.num_hidden)]),
            "task_units": self.task_units.to(torch.uint8),
            "trained": self.trained.to(torch.uint8),
            "hparams": torch.tensor([self.lr, self.l1_scale], dtype=torch.float64),
            "phase": torch.tensor([PHASES.index(self.phase), self.current]),
            "record": _json_tensor({"records": self.records, "events": self.events,
                                    "grid": self.grid_log, "warned": self._warned_split}),
        }
        for l, u in enumerate(self.used):
            state[f"used.{l}"] = u.to(torch.uint8)
        return state

    def load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        """Restore the partition (and widen grown layers so the model's state dict fits)."""
        dev = self.ctx.device
        net = self.net
        widths = [int(w) for w in tensors["widths"].tolist()]
        if len(widths) != net.num_hidden:
            raise ValueError(f"clnp state has {len(widths)} hidden layers, the model "
                             f"{net.num_hidden}")
        for l, w in enumerate(widths):
            if w < net.units(l):
                raise ValueError(f"clnp state: hidden layer {l} has {w} units, fewer than the "
                                 f"model's {net.units(l)}")
            net.grow(l, w - net.units(l))
        self.used = [tensors[f"used.{l}"].to(dev).bool() for l in range(net.num_hidden)]
        self.task_units = tensors["task_units"].to(dev).bool()
        self.trained = tensors["trained"].to(dev).bool()
        self.lr, self.l1_scale = (float(v) for v in tensors["hparams"].tolist())
        phase, current = (int(v) for v in tensors["phase"].tolist())
        rec = _from_json_tensor(tensors["record"])
        self.records, self.events, self.grid_log = rec["records"], rec["events"], rec["grid"]
        self._warned_split = bool(rec.get("warned", False))
        self.current = current
        self.new = None
        self._set_phase(PHASES[phase], max(current, 0))
        self._snapshot_taken = False  # the model's weights are loaded after this call

    def summary(self) -> dict[str, Any]:
        """``capacity`` for summary.json: per hidden layer, per finished task (Fig. 3)."""
        names = self.net.layer_names()
        recs = self.records

        def per_layer(key: str) -> list[list[Any]]:
            return [[r["layers"][l][key] for r in recs] for l in range(len(names))]

        units = per_layer("units")
        used = per_layer("used")
        fraction = [[u / n if n else 0.0 for u, n in zip(us, ns, strict=True)]
                    for us, ns in zip(used, units, strict=True)]
        capacity: dict[str, Any] = {
            "head": self.options.head,
            "layers": names,
            "tasks": [r["task"] for r in recs],
            "units": units,
            "used_units": used,
            "used_fraction": fraction,
            "new_units": per_layer("new"),
            "reused_units": per_layer("reused"),
            "alive_units": per_layer("alive"),
            "theta": per_layer("theta"),
            "val_accuracy_unpruned": [r["val_unpruned"] for r in recs],
            "val_accuracy_pruned": [r["val_pruned"] for r in recs],
            "free_units": [ns[-1] - us[-1] if us else None
                           for us, ns in zip(used, units, strict=True)],
            "depleted": self.events,
            "tasks_until_depleted": [
                pruning.tasks_until_depleted(f) if f else None for f in fraction],
            "lr": self.lr,
            "l1": [a * self.l1_scale for a in self.l1],
        }
        capacity["tasks_until_depleted"] = [None if v is None or math.isinf(v) else round(v, 2)
                                            for v in capacity["tasks_until_depleted"]]
        out: dict[str, Any] = {"capacity": capacity,
                               "clnp_logit_digests": [r.get("digests", {}) for r in recs]}
        if self.grid_log:
            out["clnp_grid"] = self.grid_log
        return out


def _json_tensor(obj: Any) -> Tensor:
    """JSON-serialisable method state as a uint8 tensor (checkpoints hold tensors only)."""
    return torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)


def _from_json_tensor(t: Tensor) -> Any:
    return json.loads(bytes(t.to("cpu").tolist()).decode())


def _check_options(o: Any) -> None:
    if o.head not in ("single", "multi"):
        raise ConfigError(f"head must be single or multi, got {o.head!r}")
    if not o.l1 or any(a < 0 for a in o.l1):
        raise ConfigError(f"l1 needs non-negative coefficients, got {o.l1}")
    if not 0 <= o.margin < 1:
        raise ConfigError(f"margin must be a fraction in [0, 1) (0.0005 = 0.05 %; a margin of 1 "
                          f"accepts any accuracy and prunes every unit), got {o.margin}")
    if o.train_path not in TRAIN_PATHS:
        raise ConfigError(f"train-path must be one of {', '.join(TRAIN_PATHS)}, got "
                          f"{o.train_path!r}")
    if o.theta_order not in ("last", "first"):
        raise ConfigError(f"theta-order must be last or first, got {o.theta_order!r}")
    if o.theta_steps < 1 or o.theta_patience < 1:
        raise ConfigError("theta-steps and theta-patience must be >= 1")
    if o.finetune_epochs < 0 or o.finetune_lr <= 0:
        raise ConfigError("finetune-epochs must be >= 0 and finetune-lr > 0")
    if o.grow < 0 or o.min_free < 1 or o.grid_tasks < 0:
        raise ConfigError("grow must be >= 0, min-free >= 1 and grid-tasks >= 0")
    if any(v <= 0 for v in [*o.grid_lr, *o.grid_l1_scale]):
        raise ConfigError("grid-lr and grid-l1-scale values must be positive")
