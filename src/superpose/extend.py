"""Continuing a run with more tasks than it was started with (``--resume DIR --tasks N``).

A run saved with ``old`` tasks is restored into a method built for ``new > old`` tasks. Only
streams whose task ``t`` does not depend on the number of tasks (``Stream.open_ended``: a
permutation drawn from ``seed + t``, the rotation cycles) can be extended; their new schedule
begins with the old one, so the loop simply goes on at the segment it had reached.

What a method keeps per task grows in one of two ways, and nothing else may change:

- a tensor whose first axis is the task axis (learned contexts ``(T, dim)``, CLNP's
  ``task_units (T, n)``, ``joint``'s ``seen (T,)``) keeps its ``old`` saved rows; the rows of the
  new tasks come from the freshly built method (model state: their initialisation) or are zero
  (method bookkeeping: "not trained yet");
- a module per task (``multihead``'s heads, ``single-task``'s networks) that did not exist
  before keeps its fresh initialisation.

These functions are pure: they take state dicts and return new ones.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


def _task_axis(saved: Tensor, fresh: Tensor, old: int, new: int) -> bool:
    """Whether ``saved`` and ``fresh`` differ only by a leading task axis of ``old`` -> ``new``."""
    return (saved.dim() == fresh.dim() >= 1 and saved.shape[0] == old
            and fresh.shape[0] == new and saved.shape[1:] == fresh.shape[1:])


def grow_model_state(saved: dict[str, Tensor], fresh: dict[str, Tensor], old: int, new: int
                     ) -> dict[str, Tensor]:
    """The model state dict for ``new`` tasks: ``saved`` where it exists, task-axis tensors
    extended with ``fresh``'s rows ``old:new``, modules of new tasks from ``fresh``.

    Raises ``ValueError`` naming the tensor if one changed shape in any other way, or if
    ``saved`` holds a tensor the new model does not have.
    """
    extra = sorted(set(saved) - set(fresh))
    if extra:
        raise ValueError(f"the saved model has tensors the extended one lacks: {extra[:5]}")
    out: dict[str, Tensor] = {}
    for key, f in fresh.items():
        s = saved.get(key)
        if s is None:
            out[key] = f  # a module of a new task: its fresh initialisation
        elif s.shape == f.shape:
            out[key] = s
        elif _task_axis(s, f, old, new):
            out[key] = torch.cat([s.to(f.device, f.dtype), f[old:]])  # (new, ...)
        else:
            raise ValueError(f"{key} has shape {tuple(s.shape)} in the checkpoint and "
                             f"{tuple(f.shape)} with {new} tasks; it cannot be extended")
    return out


def grow_extra_state(saved: dict[str, Tensor], fresh: dict[str, Tensor], old: int, new: int
                     ) -> dict[str, Tensor]:
    """A method's extra state for ``new`` tasks: each saved tensor whose fresh counterpart has
    ``new`` rows where it has ``old`` gets zero rows appended (a task not trained yet); the rest
    is kept as saved (the method itself checks it on load)."""
    out = dict(saved)
    for key, s in saved.items():
        f = fresh.get(key)
        if (f is not None and s.dim() == f.dim() >= 1 and s.shape[0] == old
                and f.shape[0] == new):
            pad = torch.zeros((new - old, *s.shape[1:]), dtype=s.dtype, device=s.device)
            out[key] = torch.cat([s, pad])  # (new, ...): trailing axes as saved (CLNP --grow)
    return out


def grow_optimizer_state(state: dict[str, Any], optimizer: torch.optim.Optimizer,
                         model: nn.Module, saved_keys: set[str], old: int, new: int
                         ) -> dict[str, Any]:
    """The optimiser state dict ``state`` (saved with ``old`` tasks) remapped onto
    ``optimizer``, whose parameters belong to ``model`` built for ``new`` tasks.

    A parameter whose name is in ``saved_keys`` (the saved model's state) existed before and
    takes its saved slot in order; a new task's module has no state yet (as an optimiser that
    never stepped it); per-parameter tensors on a task axis get zero rows for the new tasks.
    Raises ``ValueError`` if the old parameters do not line up with the saved groups.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    groups = optimizer.state_dict()["param_groups"]  # the new ids: 0.. over every group
    if len(groups) != len(state["param_groups"]):
        raise ValueError(f"the optimiser has {len(groups)} parameter groups, the checkpoint "
                         f"{len(state['param_groups'])}")
    out_state: dict[int, dict[str, Any]] = {}
    out_groups = []
    for group, new_group, saved_group in zip(optimizer.param_groups, groups,
                                             state["param_groups"], strict=True):
        kept = [(i, p) for i, p in zip(new_group["params"], group["params"], strict=True)
                if names.get(id(p)) in saved_keys]
        if len(kept) != len(saved_group["params"]):
            raise ValueError(f"a parameter group held {len(saved_group['params'])} parameters, "
                             f"and {len(kept)} of the extended model's existed before")
        for old_id, (new_id, p) in zip(saved_group["params"], kept, strict=True):
            if old_id not in state["state"]:
                continue
            per = {}
            for k, v in state["state"][old_id].items():
                if (isinstance(v, Tensor) and v.shape != p.shape and v.dim() == p.dim() >= 1
                        and v.shape[0] == old and p.shape[0] == new):
                    v = torch.cat([v, v.new_zeros((new - old, *v.shape[1:]))])
                per[k] = v
            out_state[new_id] = per
        out_groups.append({**copy.deepcopy(saved_group), "params": list(new_group["params"])})
    return {"state": out_state, "param_groups": out_groups}
