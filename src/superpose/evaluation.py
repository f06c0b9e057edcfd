"""Metrics as pure functions of the accuracy matrix, and the no-grad evaluation functions.

The accuracy matrix ``A`` is (T, T): ``A[i, j]`` is the test accuracy on task j after training
task i, NaN where not yet defined (j > i for task-incremental streams).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

if TYPE_CHECKING:
    from .methods.base import Method
    from .streams.base import Stream

Matrix = Sequence[Sequence[float | None]]


def as_array(matrix: Matrix) -> np.ndarray:
    """Matrix with None as NaN, float64."""
    return np.array([[math.nan if v is None else float(v) for v in row] for row in matrix],
                    dtype=np.float64).reshape(len(matrix), -1)


def final_accuracies(matrix: Matrix) -> list[float]:
    """Accuracy on each task after the last task was trained (last row)."""
    return [float(v) for v in as_array(matrix)[-1]]


def average_accuracy(matrix: Matrix) -> float:
    """Mean over tasks of the final accuracy (tasks never evaluated are ignored)."""
    return float(np.nanmean(as_array(matrix)[-1]))


def average_last_k(matrix: Matrix, k: int = 10) -> float:
    """Mean final accuracy of the last ``k`` tasks evaluated so far (PSP Fig. 3 table: the
    last 10 of 50); columns of tasks not reached yet (a run in progress) are skipped."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    last = as_array(matrix)[-1]
    seen = last[~np.isnan(last)]
    return float(np.mean(seen[-k:])) if seen.size else math.nan


def learning_accuracies(matrix: Matrix) -> list[float]:
    """Accuracy on each task right after training it (the diagonal)."""
    a = as_array(matrix)
    return [float(a[i, i]) for i in range(min(a.shape))]


def learned_last_k(matrix: Matrix, k: int = 10) -> float:
    """Mean accuracy of the last ``k`` trained tasks right after their own training (the last
    ``k`` entries of the diagonal): ``average_last_k`` minus this is what the tasks after them
    took away (PSP Fig. 3 table: learning vs forgetting of the last 10 of 50)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    diag = np.array(learning_accuracies(matrix))
    seen = diag[~np.isnan(diag)]
    return float(np.mean(seen[-k:])) if seen.size else math.nan


def backward_transfer(matrix: Matrix) -> float:
    """BWT (Lopez-Paz & Ranzato 2017): mean over j < T-1 of A[T-1, j] - A[j, j].

    Negative means forgetting."""
    a = as_array(matrix)
    t = min(a.shape)
    if t < 2:
        return 0.0
    return float(np.mean([a[-1, j] - a[j, j] for j in range(t - 1)]))


def forgetting(matrix: Matrix) -> list[float]:
    """Per task j < T-1: the best accuracy it ever had before the end minus its final accuracy."""
    a = as_array(matrix)
    t = min(a.shape)
    out = []
    for j in range(t - 1):
        best = np.nanmax(a[j:t - 1, j])
        out.append(float(best - a[t - 1, j]))
    return out


def average_forgetting(matrix: Matrix) -> float:
    f = forgetting(matrix)
    return float(np.mean(f)) if f else 0.0


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block; every module's train/eval mode restored after it."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@torch.no_grad()
def evaluate(method: Method, stream: Stream, task: int, split: str = "test",
             batch_size: int = 1000) -> float:
    """Accuracy (fraction) of ``method`` on ``task``; restores every module's train/eval mode."""
    with _eval_mode(method.model):
        method.prepare_eval(task)
        correct = 0
        total = 0
        for x, y in stream.eval_batches(task, split, batch_size):
            pred = method.predict(x, task).argmax(dim=1)  # (B,)
            correct += int((pred == y).sum())
            total += y.numel()
    return correct / max(total, 1)


#: Rows per forward pass of :func:`evaluate_tasks` when it mixes tasks: the test images of a
#: pass are ``MIX_ROWS // len(tasks)`` per task. Mixing pays only where that is more than the
#: evaluation batch size (the per-task loop is then dominated by per-call overhead); on a CPU
#: larger passes only add memory traffic.
MIX_ROWS = 4096


@torch.no_grad()
def evaluate_tasks(method: Method, stream: Stream, tasks: Sequence[int], split: str = "test",
                   batch_size: int = 1000, mix: bool | None = None) -> list[float]:
    """Accuracies (fractions) of ``method`` on each of ``tasks``, in that order.

    Equals ``[evaluate(method, stream, t, split, batch_size) for t in tasks]`` (up to float
    rounding). When the method evaluates a batch mixing tasks in one pass
    (``method.mixes_tasks``, e.g. PSP's per-sample contexts) and ``batch_size`` is below
    ``MIX_ROWS // len(tasks)``, every forward pass holds the same ``MIX_ROWS // len(tasks)``
    test images as seen by each task, task by task, with a per-sample task tensor: fewer,
    larger passes where batches of ``batch_size`` are dominated by per-call overhead.
    Otherwise (or with ``mix=False``) a loop of :func:`evaluate`.
    """
    tasks = [int(t) for t in tasks]
    images = max(1, MIX_ROWS // max(len(tasks), 1))  # test images per task and pass
    if mix is None:
        mix = images > batch_size
    if not mix or len(tasks) < 2 or not getattr(method, "mixes_tasks", False):
        return [evaluate(method, stream, t, split, batch_size) for t in tasks]
    data = {t: stream.task_data(t, split) for t in tasks}
    sizes = {len(d) for d in data.values()}
    if len(sizes) != 1 or any(d is not data[tasks[0]] for d in data.values()):
        # Tasks with their own test sets: mix them batch by batch.
        return _evaluate_mixed_sets(method, stream, tasks, split, max(images, batch_size))
    n = sizes.pop()
    images = max(images, batch_size)
    device = data[tasks[0]].y.device
    ids = torch.tensor(tasks, device=device)
    correct = torch.zeros(len(tasks), dtype=torch.long, device=device)
    with _eval_mode(method.model):
        for i in range(0, n, images):
            batches = [stream.transform(data[t].x[i:i + images], t, None) for t in tasks]
            y = data[tasks[0]].y[i:i + images]
            b = y.shape[0]
            task_ids = ids.repeat_interleave(b)  # (T·b,) task of each row
            pred = method.predict_tasks(torch.cat(batches), task_ids).argmax(dim=1)
            correct += (pred.view(len(tasks), b) == y).sum(1)
    return [c / max(n, 1) for c in correct.tolist()]


def _evaluate_mixed_sets(method: Method, stream: Stream, tasks: list[int], split: str,
                         batch_size: int) -> list[float]:
    """:func:`evaluate_tasks` for tasks with their own test sets: one pass per batch index."""
    correct = [0] * len(tasks)
    total = [0] * len(tasks)
    with _eval_mode(method.model):
        iters = list(enumerate(stream.eval_batches(t, split, batch_size) for t in tasks))
        while iters:
            xs, ys, ts, live = [], [], [], []
            for j, it in iters:
                batch = next(it, None)
                if batch is None:
                    continue
                xs.append(batch[0])
                ys.append(batch[1])
                ts.append(torch.full((batch[1].shape[0],), tasks[j], dtype=torch.long,
                                     device=batch[1].device))
                live.append((j, it))
            if not xs:
                break
            pred = method.predict_tasks(torch.cat(xs), torch.cat(ts)).argmax(dim=1)
            for (j, _), y, p in zip(live, ys, pred.split([y.shape[0] for y in ys]),
                                    strict=True):
                correct[j] += int((p == y).sum())
                total[j] += y.numel()
            iters = live
    return [c / max(t, 1) for c, t in zip(correct, total, strict=True)]
