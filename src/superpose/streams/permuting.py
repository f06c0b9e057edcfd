"""Permuting streams (PSP section 4.1.1; CLNP section 3.1): task 0 is the unpermuted dataset and
task t > 0 permutes the pixels with a permutation drawn once from ``seed + t``, shared by train and
test. Pixels are permuted on the fly, batch by batch, on preloaded tensors."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data import load_dataset
from . import STREAMS
from .base import Split, Stream, holdout


def task_permutation(num_pixels: int, task: int, seed: int) -> Tensor:
    """The fixed pixel permutation of ``task`` (identity for task 0), drawn from ``seed + task``."""
    if task == 0:
        return torch.arange(num_pixels)
    return torch.randperm(num_pixels, generator=torch.Generator().manual_seed(seed + task))


def image_splits(dataset: str, *, data_dir: str | None = None, download: bool = False,
                 verify: bool = True, device: str | torch.device = "cpu"
                 ) -> tuple[Split, Split]:
    """Train and test splits of an image dataset as float tensors in [0, 1], (N, C, H, W)."""
    raw = load_dataset(dataset, data_dir=data_dir, download=download, verify=verify)

    def convert(x: np.ndarray, y: np.ndarray) -> Split:
        xt = torch.as_tensor(np.asarray(x))
        if xt.dtype == torch.uint8:
            xt = xt.float().div_(255.0)
        xt = xt.float()
        if xt.dim() == 3:  # (N, H, W) -> (N, 1, H, W)
            xt = xt.unsqueeze(1)
        return Split(xt.to(device), torch.as_tensor(np.asarray(y), dtype=torch.long).to(device))

    return convert(raw["train_x"], raw["train_y"]), convert(raw["test_x"], raw["test_y"])


class PermutingStream(Stream):
    """Every task sees the same images with its own fixed pixel permutation."""

    open_ended = True  # task t's permutation comes from seed + t alone

    def __init__(self, dataset: str, name: str, tasks: int = 10, seed: int = 0,
                 validation: float = 0.0, data_dir: str | None = None, download: bool = False,
                 verify: bool = True, device: str | torch.device = "cpu",
                 normalize: bool = False, **_: object):
        if tasks <= 0:
            raise ValueError(f"tasks must be positive, got {tasks}")
        self.name = name
        self.num_tasks = tasks
        self.seed = seed
        train, test = image_splits(dataset, data_dir=data_dir, download=download,
                                   verify=verify, device=device)
        #: (mean, std) the pixels were standardised with; None when they are in [0, 1].
        self.pixel_mean_std: tuple[float, float] | None = None
        if normalize:
            # The PSP authors' loaders standardised MNIST as (x - 0.1307) / 0.3081: the mean and
            # standard deviation of every pixel of the whole training set. A pixel permutation
            # leaves both unchanged, so one pair serves every task.
            mean, std = train.x.mean(), train.x.std()
            train = Split((train.x - mean) / std, train.y)
            test = Split((test.x - mean) / std, test.y)
            self.pixel_mean_std = (float(mean), float(std))
        train, val = holdout(train, validation, seed)
        self.splits = {"train": train, "test": test}
        if val is not None:
            self.splits["val"] = val
        self.input_shape = tuple(train.x.shape[1:])
        self.num_classes = int(train.y.max().item()) + 1
        pixels = int(np.prod(self.input_shape))
        # (T, P): row t is task t's permutation, built once.
        self.permutations = torch.stack(
            [task_permutation(pixels, t, seed) for t in range(tasks)]).to(device)

    def task_data(self, task: int, split: str) -> Split:
        self.check_task(task)
        return self.splits[split]

    def transform(self, x: Tensor, task: int, step: int | None) -> Tensor:
        if task == 0:
            return x
        flat = x.reshape(x.shape[0], -1)  # (B, P)
        # index_select is ~4-6x faster than advanced indexing here (benchmarks/speed.py).
        return torch.index_select(flat, 1, self.permutations[task]).reshape(x.shape)


def _register(name: str, dataset: str) -> None:
    @STREAMS.register(name)
    def build(**kwargs: object) -> PermutingStream:
        return PermutingStream(dataset, name, **kwargs)  # type: ignore[arg-type]

    build.__doc__ = f"Permuted {dataset}: task 0 unpermuted, task t permuted from seed + t."


_register("permuted-digits", "digits")
_register("permuted-mnist", "mnist")
_register("permuted-fashion-mnist", "fashion-mnist")
