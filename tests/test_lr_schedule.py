"""The per-task learning-rate schedule (--lr-schedule): its formula, the loop applying it at
every step of every task, and resume restoring it mid-task."""

import json
import math

import pytest

from superpose import training
from superpose.checkpoint import load
from superpose.config import resolve
from superpose.errors import ConfigError
from superpose.methods.base import Method, lr_scale
from test_resume import ctrl_c_at_step

BASE = {"benchmark": "permuted-digits", "method": "standard", "tasks": 2, "steps_per_task": 12,
        "eval_every": 4, "threads": 1, "optimizer": "sgd", "lr": 0.05}


def test_cosine_scale_by_hand():
    steps = 8
    assert lr_scale("cosine", 0, steps) == 1.0
    assert lr_scale("cosine", 4, steps) == pytest.approx(0.5, abs=1e-15)
    assert lr_scale("cosine", 2, steps) == pytest.approx(0.5 + 0.25 * math.sqrt(2))
    assert lr_scale("cosine", 6, steps) == pytest.approx(0.5 - 0.25 * math.sqrt(2))
    scales = [lr_scale("cosine", s, steps) for s in range(steps)]
    # strictly falling within a task
    assert all(a > b for a, b in zip(scales[:-1], scales[1:], strict=True))
    assert 0 < scales[-1] < 0.05  # the last step still moves (the rate reaches 0 after it)
    assert [lr_scale("constant", s, steps) for s in range(steps)] == [1.0] * steps
    with pytest.raises(ValueError, match="cosine"):
        lr_scale("linear", 0, steps)


def test_warmup_cosine_scale_by_hand():
    """A linear rise over the first tenth of the task, (step + 1) / w, then the cosine over
    the rest: 20 steps warm up for 2, and the cosine runs over the other 18."""
    steps = 20
    assert [lr_scale("warmup-cosine", s, steps) for s in (0, 1)] == [0.5, 1.0]
    assert lr_scale("warmup-cosine", 2, steps) == 1.0  # the cosine's first step
    assert lr_scale("warmup-cosine", 11, steps) == pytest.approx(0.5, abs=1e-15)  # 9 of 18
    assert lr_scale("warmup-cosine", 5, steps) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 3 / 18)))
    tail = [lr_scale("warmup-cosine", s, steps) for s in range(2, steps)]
    assert all(a > b for a, b in zip(tail[:-1], tail[1:], strict=True)) and 0 < tail[-1] < 0.05
    # short tasks: at least one warm-up step; a one-step task trains at the full rate
    assert lr_scale("warmup-cosine", 0, 4) == 1.0 and lr_scale("warmup-cosine", 1, 4) == 1.0
    assert lr_scale("warmup-cosine", 0, 1) == 1.0
    assert lr_scale("warmup-cosine", 0, 1000) == pytest.approx(0.01)


def record_rates(monkeypatch):
    """Record the rate of the optimiser's first group at every training step."""
    real_step = Method.train_step
    rates = []

    def recording(self, x, y, task, step):
        out = real_step(self, x, y, task, step)
        rates.append(self.optimizer.param_groups[0]["lr"])
        return out

    monkeypatch.setattr(Method, "train_step", recording)
    return rates


@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup-cosine"])
def test_loop_sets_the_rate_at_every_step_and_restarts_it_per_task(tmp_path, monkeypatch,
                                                                   schedule):
    rates = record_rates(monkeypatch)
    training.run(resolve({**BASE, "lr_schedule": schedule}), tmp_path / "r", progress=False)
    n = BASE["steps_per_task"]
    want = [BASE["lr"] * lr_scale(schedule, s, n) for s in range(n)] * BASE["tasks"]
    assert rates == pytest.approx(want, rel=1e-12)
    cfg = (tmp_path / "r" / "config.yaml").read_text()
    assert f"lr_schedule: {schedule}" in cfg


def test_cosine_changes_training_and_survives_resume(tmp_path, monkeypatch):
    """A cosine run differs from a constant one, and one stopped mid-task and resumed ends
    bit for bit like one that never stopped (the schedule follows the restored step)."""
    cos = {**BASE, "lr_schedule": "cosine", "checkpoint_every": 5}
    training.run(resolve(cos), tmp_path / "ref", progress=False)
    training.run(resolve({**BASE, "checkpoint_every": 5}), tmp_path / "const", progress=False)
    ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    const = json.loads((tmp_path / "const" / "summary.json").read_text())
    assert ref["first_task_curve"] != const["first_task_curve"]

    # Ctrl-C during global step 17 (task 1, step 5 of 12): the run checkpoints there.
    cut = tmp_path / "cut"
    real_step = ctrl_c_at_step(monkeypatch, 17)
    with pytest.raises(training.Interrupted):
        training.run(resolve(cos), cut, progress=False)
    monkeypatch.setattr(Method, "train_step", real_step)
    assert load(cut / "checkpoint.safetensors")[1]["loop"]["step_in_segment"] == 5
    training.run(resolve(cos), cut, resume=True, progress=False)
    again = json.loads((cut / "summary.json").read_text())
    assert again["final_accuracy"] == ref["final_accuracy"]
    assert again["first_task_curve"] == ref["first_task_curve"]


def test_unknown_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match="constant"):
        resolve({**BASE, "lr_schedule": "step"})


def runs_of(rates):
    """Split a list of rates into the runs the schedule restarts (a rate above the last)."""
    runs = [[rates[0]]]
    for r in rates[1:]:
        if r > runs[-1][-1]:
            runs.append([r])
        else:
            runs[-1].append(r)
    return runs


def test_clnp_grid_and_fine_tuning_follow_the_schedule(monkeypatch):
    """CLNP trains outside the loop (grid candidates, fine-tuning): each of those trainings
    follows the cosine over its own steps, at its own rate."""
    import dataclasses

    import torch

    from test_clnp import make

    rates = record_rates(monkeypatch)
    torch.manual_seed(0)
    m = make(grid_lr=[0.01, 0.002], finetune_epochs=0.5, finetune_lr=0.003)
    m.ctx = dataclasses.replace(m.ctx, lr_schedule="cosine")
    m.begin_task(0)  # the grid: two candidates of 30 steps
    m.end_task(0)  # pruning, then fine-tuning
    runs = runs_of(rates)
    assert [len(r) for r in runs[:2]] == [30, 30]
    assert [r[0] for r in runs] == pytest.approx([0.01, 0.002, 0.003])
    for run in runs:
        n = len(run)
        assert run == pytest.approx([run[0] * lr_scale("cosine", s, n) for s in range(n)])
