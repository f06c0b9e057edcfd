"""Parameter superposition (Cheung et al. 2019) as a continual-learning method.

One network, every Linear/Conv2d read through a per-task context (``superpose()``, eq. 4 / 8);
training task k only moves the shared weights as seen through c_k. Context schedules
(section 4.1.3):

- ``task``: context k for task k (sections 4.1.1-4.1.2);
- ``fast`` (pspFast): a new context every step for one cycle of ``cycle`` steps, reused in the
  next cycle; only the coarse period of the stream is known, not the task;
- ``local-mix`` (pspFastLocalMix): as ``fast``, but each step's context phases are the mean of
  the phases of the adjacent time points (t - w ... t + w, circular), so neighbouring steps get
  correlated contexts: knowledge that the distribution drifts slowly, built into the contexts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ..contexts import CONTEXTS
from ..convert import BATCHNORM_OPTIONS, SuperposedModel, count_parameters, superpose
from ..errors import ConfigError
from ..registry import unknown_name_message
from . import METHODS
from .base import Method, MethodContext

SCHEDULES = ("task", "fast", "local-mix")


@METHODS.register("psp")
class PSP(Method):
    """Parameter superposition with any context family (``--context``)."""

    name = "psp"
    #: Train fixed binary contexts folded into the weights (``SuperposedModel.fold``): a step
    #: then costs exactly a plain network's, with the same results bit for bit. Only the task
    #: schedule folds (the fast ones change context every step, where folding costs more).
    fold_weights: ClassVar[bool] = True

    @dataclass
    class Options:
        context: str = field(default="binary", metadata={
            "help": "context family: binary, complex, onepower, rotation, permutation, "
                    "block-rotation"})
        context_schedule: str = field(default="task", metadata={
            "help": "task, fast (pspFast) or local-mix (pspFastLocalMix)"})
        learn_context: bool = field(default=False, metadata={
            "help": "train the contexts (the authors' released configs did; the paper's "
                    "text describes fixed random draws)"})
        cycle: int = field(default=1000, metadata={
            "help": "steps per cycle of the fast schedules (one context per step)"})
        mix_window: int = field(default=1, metadata={
            "help": "local-mix: average the phases of t-w..t+w"})
        batchnorm: str = field(default="none-stats", metadata={
            "help": "BatchNorm under superposition: shared, per-task or none-stats"})

    @classmethod
    def check_options(cls, opts: Options) -> None:
        if opts.context not in CONTEXTS:
            raise ConfigError(unknown_name_message("context", opts.context, CONTEXTS.names()))
        if opts.context_schedule not in SCHEDULES:
            raise ConfigError(unknown_name_message("context schedule", opts.context_schedule,
                                                   list(SCHEDULES)))
        if opts.batchnorm not in BATCHNORM_OPTIONS:
            raise ConfigError(unknown_name_message("batchnorm option", opts.batchnorm,
                                                   list(BATCHNORM_OPTIONS)))
        if opts.cycle <= 0 or opts.mix_window < 0:
            raise ConfigError("cycle must be positive and mix-window non-negative")

    def __init__(self, ctx: MethodContext, options: Options | None = None):
        opts = options if options is not None else self.Options()
        self.fast = opts.context_schedule != "task"
        self.num_contexts = opts.cycle if self.fast else ctx.stream.num_tasks
        super().__init__(ctx, opts)

    def build(self) -> SuperposedModel:
        o = self.options
        model = superpose(self.ctx.build_model(), context=o.context,
                          num_tasks=self.num_contexts, seed=self.ctx.seed + 7919,
                          learn_context=o.learn_context, batchnorm=o.batchnorm)
        if o.context_schedule == "local-mix":
            mix_phases(model, o.mix_window)
        self.folds = self.fold_weights and not self.fast and model.can_fold
        return model

    def context_index(self, task: int, step: int | None) -> int:
        """The context a batch of ``task`` reads at global ``step`` (None: evaluation)."""
        if not self.fast:
            return task
        if step is None:  # evaluate a task with the context of its first step in the cycle
            step = task * self.ctx.steps_per_task
        return step % self.num_contexts

    def context_indices(self, tasks: Tensor) -> Tensor:
        """:meth:`context_index` of evaluation for a per-sample task tensor ``(B,)``."""
        if not self.fast:
            return tasks
        return (tasks * self.ctx.steps_per_task) % self.num_contexts

    def forward(self, x: Tensor, task: int, step: int | None) -> Tensor:
        # Select the context as the model's current task: while it does not change (a task's
        # steps), a step pays no task switch.
        k = self.context_index(task, step)
        if self.model.task != k:
            self.model.set_task(k)
        if self.folds and step is not None and self.model.frame != k:
            self.model.fold(k, self.optimizer)  # once per task: train a plain network
        return self.model(x)

    def before_checkpoint(self) -> None:
        """Checkpoints hold the unfolded weights and optimiser state."""
        if self.folds:
            self.model.fold(None, self.optimizer)

    @property
    def mixes_tasks(self) -> bool:  # type: ignore[override]
        """One pass over a batch mixing tasks gives each sample its own task's logits, unless a
        normalisation layer computes statistics over the batch at test time."""
        return not any(isinstance(m, _BatchNorm) and not m.track_running_stats
                       for m in self.model.modules())

    @torch.no_grad()
    def predict_tasks(self, x: Tensor, tasks: Tensor) -> Tensor:
        """Logits of a batch mixing tasks in one pass: per-sample contexts (eq. 4 per row)."""
        if not self.mixes_tasks:
            return super().predict_tasks(x, tasks)
        return self.model(x, task=self.context_indices(tasks.to(x.device)))

    def count_parameters(self) -> dict[str, int]:
        return count_parameters(self.model)


def mix_phases(model: SuperposedModel, window: int) -> None:
    """pspFastLocalMix: replace every context's per-step phases by their circular moving
    average over the steps t - window .. t + window (the angle of the mean unit vector, so that
    phases near ±π average correctly)."""
    found = False
    for c in model.contexts():
        phases = getattr(c, "phases", None)
        if phases is None or phases.dim() != 2:  # (K, M) per-step phases
            continue
        with torch.no_grad():
            unit = torch.polar(torch.ones_like(phases), phases)  # (K, M) e^{iφ}
            mixed = torch.stack([torch.roll(unit, s, dims=0)
                                 for s in range(-window, window + 1)]).mean(0)
            phases.copy_(torch.angle(mixed))
        c.clear_cache()
        found = True
    if not found:
        raise ConfigError("the local-mix schedule mixes context phases: use --context complex")


def _variant(name: str, family: str) -> None:
    @dataclass
    class Options(PSP.Options):
        context: str = field(default=family, metadata={"help": PSP.Options.__dataclass_fields__[
            "context"].metadata["help"]})

    cls = type(f"PSP_{family.replace('-', '_')}", (PSP,), {
        "name": name, "Options": Options,
        "__doc__": f"Parameter superposition with {family} contexts."})
    METHODS.register(name)(cls)


for _family in ("binary", "complex", "onepower", "rotation"):
    _variant(f"psp-{_family}", _family)
