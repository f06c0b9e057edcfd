"""--reset-optimizer: the optimiser's state is cleared before every task after the first (Zenke
et al.'s ``reset_optimizer``), nowhere else, and a run stopped inside a task resumes bit for
bit."""

import json

import pytest
import torch

from superpose import training
from superpose.checkpoint import load
from superpose.config import resolve
from superpose.methods.base import Method
from test_resume import ctrl_c_at_step

BASE = {"benchmark": "permuted-digits", "method": "standard", "tasks": 3, "steps_per_task": 6,
        "eval_every": 3, "threads": 1, "optimizer": "adam", "lr": 0.01}


def record_adam_steps(monkeypatch):
    """Adam's step count of the first parameter after every training step."""
    real_step = Method.train_step
    counts = []

    def recording(self, x, y, task, step):
        out = real_step(self, x, y, task, step)
        first = self.optimizer.param_groups[0]["params"][0]
        counts.append(int(self.optimizer.state[first]["step"]))
        return out

    monkeypatch.setattr(Method, "train_step", recording)
    return counts


def matrix_rows(folder):
    return (folder / "accuracy_matrix.csv").read_text().splitlines()


@pytest.mark.parametrize("reset", [False, True])
def test_adam_restarts_at_each_task_only_when_asked(tmp_path, monkeypatch, reset):
    counts = record_adam_steps(monkeypatch)
    training.run(resolve({**BASE, "reset_optimizer": reset}), tmp_path / "r", progress=False)
    n, t = BASE["steps_per_task"], BASE["tasks"]
    want = list(range(1, n + 1)) * t if reset else list(range(1, n * t + 1))
    assert counts == want
    assert f"reset_optimizer: {str(reset).lower()}" in (tmp_path / "r" / "config.yaml").read_text()


def test_the_first_step_after_a_reset_is_a_fresh_adams(tmp_path, monkeypatch):
    """After the reset, task 1's first update is the one a new Adam makes from the same
    gradient: lr · g / (|g| + eps) in every coordinate (bias correction of step 1)."""
    cfg = resolve({**BASE, "reset_optimizer": True, "tasks": 2})
    real_step = Method.train_step
    seen = {}

    def spying(self, x, y, task, step):
        if step == BASE["steps_per_task"]:  # the first step of task 1
            before = [p.detach().clone() for p in self.model.parameters()]
            out = real_step(self, x, y, task, step)
            grads = [p.grad.detach().clone() for p in self.model.parameters()]
            seen["moves"] = [(p.detach() - b) for p, b in zip(self.model.parameters(), before,
                                                                strict=True)]
            seen["grads"] = grads
            return out
        return real_step(self, x, y, task, step)

    monkeypatch.setattr(Method, "train_step", spying)
    training.run(cfg, tmp_path / "r", progress=False)
    for move, g in zip(seen["moves"], seen["grads"], strict=True):
        fresh = -BASE["lr"] * g / (g.abs() + 1e-8)
        torch.testing.assert_close(move, fresh, rtol=1e-4, atol=1e-7)


def test_reset_changes_training_and_survives_resume(tmp_path, monkeypatch):
    """Task 0 trains the same with and without the reset; later tasks differ. Stopped in the
    middle of task 1 and resumed, a reset run ends bit for bit like one that never stopped."""
    run = {**BASE, "reset_optimizer": True, "checkpoint_every": 4}
    training.run(resolve(run), tmp_path / "ref", progress=False)
    training.run(resolve({**run, "reset_optimizer": False}), tmp_path / "keep", progress=False)
    ref, keep = (matrix_rows(tmp_path / name) for name in ("ref", "keep"))
    assert ref[1] == keep[1]  # the row after task 0
    assert ref[-1] != keep[-1]

    cut = tmp_path / "cut"
    real_step = ctrl_c_at_step(monkeypatch, 9)  # global step 9: task 1, step 3 of 6
    with pytest.raises(training.Interrupted):
        training.run(resolve(run), cut, progress=False)
    monkeypatch.setattr(Method, "train_step", real_step)
    assert load(cut / "checkpoint.safetensors")[1]["loop"]["step_in_segment"] == 3
    training.run(resolve(run), cut, resume=True, progress=False)
    assert matrix_rows(cut) == ref
    curve = json.loads((tmp_path / "ref" / "summary.json").read_text())["first_task_curve"]
    assert json.loads((cut / "summary.json").read_text())["first_task_curve"] == curve
