"""Rotating streams (PSP section 4.1.3): a continuous domain shift.

At every training step the batch is rotated a little further counter-clockwise, completing 360°
every ``period`` steps (1000 in the paper); cycles repeat. The stream is cut into segments of
``steps_per_task`` steps (100 in the paper); segment s uses task id ``s mod (period /
steps_per_task)``, so the 10 task ids (contexts) of the first cycle are reused in every later
cycle. Evaluating task j shows the test set at the angle where task j's segments start, so task 0
is the unrotated (0°) test set of the paper's Fig. 4b / 5. ``--tasks`` counts segments.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import STREAMS
from .base import Segment, Split, Stream, holdout
from .permuting import image_splits


def rotate(x: Tensor, degrees: Tensor | float) -> Tensor:
    """Rotate images (B, C, H, W) counter-clockwise (as displayed, row 0 on top) by ``degrees``
    (a scalar or one angle per image (B,)), bilinear, zero padding."""
    b = x.shape[0]
    angle = torch.as_tensor(degrees, dtype=x.dtype, device=x.device).expand(b) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    # affine_grid maps output (x right, y down) coordinates to input coordinates; sampling at
    # R(θ)·p with y pointing down turns the content counter-clockwise on screen.
    theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                         torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class RotatingStream(Stream):
    """Images rotated by ``360° · step / period`` at training step ``step``."""

    open_ended = True  # more tasks: more segments of the same cycle

    def __init__(self, dataset: str, name: str, tasks: int = 50, seed: int = 0,
                 steps_per_task: int = 100, period: int = 1000, validation: float = 0.0,
                 data_dir: str | None = None, download: bool = False, verify: bool = True,
                 device: str | torch.device = "cpu", **_: object):
        if tasks <= 0 or steps_per_task <= 0:
            raise ValueError("tasks and steps_per_task must be positive")
        if period % steps_per_task:
            raise ValueError(f"the rotation period ({period} steps) must be a multiple of "
                             f"steps-per-task ({steps_per_task})")
        self.name = name
        self.segments = tasks
        self.period = period
        self.steps_per_task = steps_per_task
        self.num_tasks = period // steps_per_task  # distinct contexts per cycle
        train, test = image_splits(dataset, data_dir=data_dir, download=download,
                                   verify=verify, device=device)
        train, val = holdout(train, validation, seed)
        self.splits = {"train": train, "test": test}
        if val is not None:
            self.splits["val"] = val
        self.input_shape = tuple(train.x.shape[1:])
        self.num_classes = int(train.y.max().item()) + 1

    def schedule(self, steps_per_task: int) -> list[Segment]:
        return [Segment(s % self.num_tasks, self.steps_per_task) for s in range(self.segments)]

    def task_data(self, task: int, split: str) -> Split:
        self.check_task(task)
        return self.splits[split]

    def angle(self, step: int) -> float:
        """Rotation (degrees) of the training batch at global ``step``."""
        return 360.0 * (step % self.period) / self.period

    def transform(self, x: Tensor, task: int, step: int | None) -> Tensor:
        deg = self.angle(task * self.steps_per_task if step is None else step)
        return x if deg == 0 else rotate(x, deg)


def _register(name: str, dataset: str) -> None:
    @STREAMS.register(name)
    def build(**kwargs: object) -> RotatingStream:
        return RotatingStream(dataset, name, **kwargs)  # type: ignore[arg-type]

    build.__doc__ = f"Rotating {dataset}: 360° per 1000 steps, a context every 100 steps."


_register("rotating-digits", "digits")
_register("rotating-mnist", "mnist")
_register("rotating-fashion-mnist", "fashion-mnist")
