"""Atomic, unpickle-free checkpoints: one safetensors file whose metadata holds the JSON state.

Tensors (model, method state, optimiser moments, RNG states) go into the safetensors body; every
other value (loop position, metrics so far, optimiser hyper-parameters, the config) is JSON in the
file's metadata, with a SHA-256 digest of that JSON and of every tensor's bytes, so that a
corrupted body (which safetensors alone would load without complaint) is detected. The file is
written to a temporary name, flushed to disk and renamed, so a crash mid-write leaves the
previous checkpoint intact. Nothing is ever unpickled on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import CheckpointError

FORMAT_VERSION = 2  # 2: adds "digest" (SHA-256 of the tensors) to the JSON header
CHECKPOINT_NAME = "checkpoint.safetensors"
GROUPS = ("model", "optim", "extra", "rng")


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def digest(tensors: dict[str, Tensor], header: dict[str, Any]) -> str:
    """SHA-256 (hex) of the JSON header (less its digest) and every tensor's name, dtype, shape
    and bytes, in name order."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in header.items() if k != "digest"}, sort_keys=True
                        ).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         extra: dict[str, Tensor], rng: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write model, optimiser, method state, RNG states and JSON ``meta`` atomically."""
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors.update({f"extra.{k}": v for k, v in extra.items()})
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    # safetensors wants contiguous tensors with no shared storage.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {"version": FORMAT_VERSION, "optimizer": opt_meta, **meta}
    header["digest"] = digest(tensors, header)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={"superpose": json.dumps(header)})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, Ctrl-C twice: leave the previous checkpoint, no debris
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def load(path: str | Path) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """Read a checkpoint: (tensor groups by prefix, JSON header).

    Raises ``CheckpointError`` (a ``UserError``) naming the file if it is missing, truncated,
    corrupted, not a superpose checkpoint (a pickle, say: it is never unpickled), or of another
    format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get("superpose")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({reason}); "
                              "nothing was loaded") from None
    if raw_meta is None:
        raise CheckpointError(f"{path} is not a superpose checkpoint (no superpose metadata)")
    try:
        header = json.loads(raw_meta)
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path} is corrupt: its metadata is not a JSON object")
    if header.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {header.get('version')}, "
                              f"this superpose reads version {FORMAT_VERSION}")
    if header.get("digest") != digest(tensors, header):
        raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match the "
                              "digest written with it")
    groups: dict[str, dict[str, Tensor]] = {g: {} for g in GROUPS}
    for name, value in tensors.items():
        prefix, _, rest = name.partition(".")
        if prefix not in groups:
            raise CheckpointError(f"checkpoint {path} holds an unexpected tensor {name!r}")
        groups[prefix][rest if prefix != "optim" else name] = value
    return groups, header


def optimizer_state(tensors: dict[str, Tensor], header: dict[str, Any]) -> dict[str, Any]:
    """The optimiser's ``state_dict`` as saved (the ``optim`` group and the header)."""
    return _unflatten_optimizer(tensors, header["optimizer"])


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor],
                      header: dict[str, Any]) -> None:
    optimizer.load_state_dict(optimizer_state(tensors, header))
