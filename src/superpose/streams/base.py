"""The stream interface that the training loop consumes.

A stream owns preloaded tensors (on the run's device) and knows, for every task id, how to draw a
training batch and how to present its test (or validation) set. Nothing goes through a DataLoader:
task transforms (pixel permutations, rotations) run on whole batches of preloaded tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Segment:
    """A stretch of training on one task id: ``steps`` optimiser steps."""

    task: int
    steps: int


@dataclass
class Split:
    """Images (N, C, H, W) float32 and labels (N,) int64 on the stream's device."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return self.y.shape[0]


def holdout(split: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """Split off ``fraction`` of a training set for validation (fixed by ``seed``)."""
    if fraction <= 0:
        return split, None
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=g).to(split.x.device)
    n_val = max(1, int(round(fraction * len(split))))
    val, train = order[:n_val], order[n_val:]
    return Split(split.x[train], split.y[train]), Split(split.x[val], split.y[val])


class Stream:
    """Base class: subclasses set the attributes and implement ``transform``/``task_data``.

    Attributes:
        name: registry name of the benchmark.
        num_tasks: number of distinct task ids (columns of the accuracy matrix).
        input_shape: (C, H, W) of one image.
        num_classes: outputs per head.
        open_ended: task t (and the schedule so far) does not depend on the number of tasks,
            so a run can be continued with more (``--resume DIR --tasks N``).
    """

    name: str = "stream"
    open_ended: bool = False
    num_tasks: int
    input_shape: tuple[int, ...]
    num_classes: int

    # ---- to implement -------------------------------------------------------------------
    def task_data(self, task: int, split: str) -> Split:
        """The untransformed data a task draws from: split in {"train", "val", "test"}."""
        raise NotImplementedError

    def transform(self, x: Tensor, task: int, step: int | None) -> Tensor:
        """Turn raw images of ``task`` into the task's inputs; ``step`` is the global training
        step for training batches and None for evaluation."""
        return x

    # ---- shared behaviour ---------------------------------------------------------------
    def schedule(self, steps_per_task: int) -> list[Segment]:
        """The training schedule: by default each task once, in order."""
        return [Segment(t, steps_per_task) for t in range(self.num_tasks)]

    def check_task(self, task: int) -> None:
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"task {task} out of range for {self.name} "
                             f"with {self.num_tasks} tasks")

    def train_batch(self, task: int, step: int, batch_size: int,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A training batch (B, C, H, W), (B,) for ``task`` at global ``step``."""
        data = self.task_data(task, "train")
        idx = torch.randint(len(data), (batch_size,), generator=generator)
        idx = idx.to(data.x.device)
        return self.transform(data.x[idx], task, step), data.y[idx]

    def eval_batches(self, task: int, split: str = "test",
                     batch_size: int = 1000) -> Iterator[tuple[Tensor, Tensor]]:
        """The evaluation set of ``task`` in batches, transformed as the task sees it."""
        data = self.task_data(task, split)
        for i in range(0, len(data), batch_size):
            yield self.transform(data.x[i:i + batch_size], task, None), data.y[i:i + batch_size]

    def has_split(self, split: str) -> bool:
        try:
            self.task_data(0, split)
        except KeyError:
            return False
        return True
