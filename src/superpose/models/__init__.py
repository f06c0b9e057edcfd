"""Model registry.

    superpose.models.create("mlp", in_features=784, hidden=[256, 256], classes=10)
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..registry import Registry

MODELS = Registry("model")


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name."""
    return MODELS.create(name, **kwargs)


def names() -> list[str]:
    return MODELS.names()


#: Weight initialisations a run can ask for (``--init``).
INITS = ("torch", "glorot")


def initialise(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise ``model``'s Linear and Conv weights in place; returns it.

    ``torch`` keeps PyTorch's defaults (Kaiming-uniform with a = sqrt(5), i.e. U(±1/sqrt(fan_in)),
    biases likewise). ``glorot`` is TensorFlow's default for dense and conv layers: weights
    U(±sqrt(6 / (fan_in + fan_out))), biases zero. The PSP authors' released (PyTorch) code drew
    its dense weights from Glorot's normal distribution, N(0, 2 / (fan_in + fan_out)): the same
    variance."""
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; choose one of {', '.join(INITS)}")
    if scheme == "glorot":
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model


def _import_all() -> None:
    """Import every module of this package once, so each registers itself."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base",):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()
