"""Continuing a run with more tasks (``superpose run --resume DIR --tasks N``)."""

import json
import os
import signal

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from superpose import extend
from superpose.cli import main

ARGS = ["--benchmark", "permuted-digits", "--steps-per-task", "30", "--eval-every", "10",
        "--width", "32", "--threads", "1", "--no-progress"]


def run(*args):
    return main(["run", *ARGS, *args])


def model_tensors(folder):
    return {k: v for k, v in load_file(folder / "checkpoint.safetensors").items()
            if k.startswith("model.")}


def summary(folder):
    return json.loads((folder / "summary.json").read_text())


# ---- the pure state transforms ---------------------------------------------------------

def test_grow_model_state_keeps_saved_rows_and_takes_new_tasks_from_fresh():
    saved = {"w": torch.ones(4, 3), "ctx": torch.full((2, 5), 7.0), "heads.0.w": torch.ones(1)}
    fresh = {"w": torch.zeros(4, 3), "ctx": torch.arange(20.0).reshape(4, 5),
             "heads.0.w": torch.zeros(1), "heads.3.w": torch.full((1,), 3.0)}
    out = extend.grow_model_state(saved, fresh, 2, 4)
    assert torch.equal(out["w"], saved["w"])
    assert torch.equal(out["ctx"][:2], saved["ctx"]) and torch.equal(out["ctx"][2:],
                                                                      fresh["ctx"][2:])
    assert torch.equal(out["heads.0.w"], saved["heads.0.w"])
    assert torch.equal(out["heads.3.w"], fresh["heads.3.w"])  # a new task's module


def test_grow_model_state_refuses_other_changes():
    with pytest.raises(ValueError, match="w has shape"):
        extend.grow_model_state({"w": torch.ones(2, 3)}, {"w": torch.ones(4, 4)}, 2, 4)
    with pytest.raises(ValueError, match="w has shape"):  # leading axis is not old -> new
        extend.grow_model_state({"w": torch.ones(3, 3)}, {"w": torch.ones(4, 3)}, 2, 4)
    with pytest.raises(ValueError, match="lacks"):
        extend.grow_model_state({"gone": torch.ones(1)}, {}, 2, 4)


def test_grow_extra_state_appends_zero_rows_with_the_saved_trailing_axes():
    saved = {"task_units": torch.ones(2, 6, dtype=torch.uint8),  # a grown layer: 6 units
             "trained": torch.ones(2, dtype=torch.uint8), "lr": torch.tensor([0.5, 0.25]),
             "fisher.w": torch.ones(2, 3)}
    fresh = {"task_units": torch.zeros(5, 4, dtype=torch.uint8),
             "trained": torch.zeros(5, dtype=torch.uint8), "lr": torch.tensor([1.0, 1.0])}
    out = extend.grow_extra_state(saved, fresh, 2, 5)
    assert out["task_units"].shape == (5, 6) and out["task_units"].dtype == torch.uint8
    assert out["task_units"][:2].all() and not out["task_units"][2:].any()
    assert out["trained"].tolist() == [1, 1, 0, 0, 0]
    assert torch.equal(out["lr"], saved["lr"])  # two values, not two tasks' rows
    assert torch.equal(out["fisher.w"], saved["fisher.w"])  # not in the fresh state: as saved


class Heads(nn.Module):
    def __init__(self, tasks):
        super().__init__()
        self.trunk = nn.Linear(3, 4)
        self.ctx = nn.Parameter(torch.ones(tasks, 4))
        self.heads = nn.ModuleList(nn.Linear(4, 2) for _ in range(tasks))

    def forward(self, x, t):
        return self.heads[t](self.trunk(x) * self.ctx[t])


def test_grow_optimizer_state_remaps_by_name_and_pads_moments():
    torch.manual_seed(0)
    small = Heads(2)
    opt = torch.optim.Adam(small.parameters(), lr=0.1)
    for t in (0, 1):
        opt.zero_grad()
        small(torch.randn(5, 3), t).sum().backward()
        opt.step()
    big = Heads(3)
    fresh = big.state_dict()
    big.load_state_dict(extend.grow_model_state(small.state_dict(), fresh, 2, 3))
    opt2 = torch.optim.Adam(big.parameters(), lr=0.1)
    state = extend.grow_optimizer_state(opt.state_dict(), opt2, big,
                                        set(small.state_dict()), 2, 3)
    opt2.load_state_dict(state)
    names = dict(big.named_parameters())
    old = {n: opt.state[p] for n, p in small.named_parameters()}
    for n, p in names.items():
        if n.startswith("heads.2."):
            assert p not in opt2.state  # a new task's head: no moments yet
        elif n == "ctx":
            m = opt2.state[p]["exp_avg"]
            assert m.shape == (3, 4) and torch.equal(m[:2], old[n]["exp_avg"])
            assert not m[2].any()
        else:
            assert torch.equal(opt2.state[p]["exp_avg"], old[n]["exp_avg"])
    # Training task 2 from here works (the moments fit the parameters).
    opt2.zero_grad()
    big(torch.randn(5, 3), 2).sum().backward()
    opt2.step()


# ---- end to end ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["standard", "psp-binary", "clnp"])
def test_extending_a_finished_run_equals_running_the_longer_stream(tmp_path, method, capsys):
    """Task t of a permuting stream does not depend on the number of tasks, and these methods
    keep nothing per task that draws random numbers: 2 tasks, then 1 more, is bit for bit the
    3-task run."""
    extra = ["--head", "single", "--margin", "0.02"] if method == "clnp" else []
    a, b = tmp_path / "a", tmp_path / "b"
    assert run("--method", method, "--tasks", "2", "--out", str(a), *extra) == 0
    assert len(summary(a)["final_accuracy"]) == 2
    assert main(["run", "--resume", str(a), "--tasks", "3", "--no-progress"]) == 0
    assert "tasks 2 -> 3" in capsys.readouterr().out
    assert run("--method", method, "--tasks", "3", "--out", str(b), *extra) == 0
    sa, sb = summary(a), summary(b)
    assert sa["tasks"] == 3 and sa["final_accuracy"] == sb["final_accuracy"]
    assert sa["first_task_curve"] == sb["first_task_curve"]
    ma, mb = model_tensors(a), model_tensors(b)
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    rows = (a / "accuracy_matrix.csv").read_text().splitlines()
    assert rows == (b / "accuracy_matrix.csv").read_text().splitlines()
    assert yaml.safe_load((a / "config.yaml").read_text())["tasks"] == 3
    kinds = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert {"kind": "resume", "step": 60, "changed": {"tasks": [2, 3]}} in kinds


@pytest.mark.parametrize("method", [["multihead"], ["clnp", "--head", "multi"]])
def test_a_new_head_per_task_extension_keeps_the_rows_written_before(tmp_path, method):
    """A head per task: the longer run would draw other initial weights, so the extension is
    not the 4-task run; it is the 2-task run going on (and CLNP still forgets nothing)."""
    a = tmp_path / "a"
    assert run("--method", *method, "--tasks", "2", "--out", str(a)) == 0

    def rows():
        return [line.split(",") for line in (a / "accuracy_matrix.csv").read_text().splitlines()]

    before, old = rows(), model_tensors(a)
    assert main(["run", "--resume", str(a), "--tasks", "4", "--no-progress"]) == 0
    after = summary(a)
    assert after["tasks"] == 4 and after["steps"] == 120
    # The rows written before the extension are unchanged; they gain empty columns.
    now = rows()
    assert len(now) == 5 and now[0][-1] == "task_3"
    for b, n in zip(before[1:], now[1:3], strict=True):
        assert n[:len(b)] == b and n[len(b):] == ["", ""]
    new = model_tensors(a)
    assert new.keys() > old.keys()  # the new tasks' heads
    assert all(torch.equal(new[k], old[k]) for k in old if "heads.0." in k)
    if method[0] == "clnp":  # exactly zero forgetting across the extension too
        for col in range(1, 5):
            values = {r[col] for r in now[col:]}
            assert len(values) == 1, (col, values)


def test_an_interrupted_extension_resumes_to_the_new_length(tmp_path, monkeypatch):
    from superpose.methods.base import Method

    a, b = tmp_path / "a", tmp_path / "b"
    assert run("--method", "standard", "--tasks", "2", "--out", str(a)) == 0
    real_step, calls = Method.train_step, {"n": 0}

    def flaky(self, x, y, task, step):
        calls["n"] += 1
        if calls["n"] == 5:  # Ctrl-C in task 2 (the added one)
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, x, y, task, step)

    monkeypatch.setattr(Method, "train_step", flaky)
    assert main(["run", "--resume", str(a), "--tasks", "3", "--no-progress"]) == 130
    monkeypatch.setattr(Method, "train_step", real_step)
    assert not (a / "summary.json").exists()
    assert main(["run", "--resume", str(a), "--no-progress"]) == 0  # no --tasks needed now
    assert run("--method", "standard", "--tasks", "3", "--out", str(b)) == 0
    assert summary(a)["final_accuracy"] == summary(b)["final_accuracy"]


def test_extending_a_comparison_extends_every_method(tmp_path, capsys):
    a = tmp_path / "a"
    assert run("--method", "standard,psp-binary", "--tasks", "2", "--out", str(a)) == 0
    assert main(["run", "--resume", str(a), "--tasks", "3", "--no-progress"]) == 0
    for m in ("standard", "psp-binary"):
        assert summary(a / m)["tasks"] == 3 and summary(a / m)["steps"] == 90
    assert yaml.safe_load((a / "config.yaml").read_text())["tasks"] == 3
    capsys.readouterr()
    assert main(["run", "--resume", str(a), "--no-progress"]) == 2
    assert "already finished" in capsys.readouterr().err


def test_extension_errors_leave_the_run_as_it_was(tmp_path, monkeypatch, capsys):
    from superpose.streams.permuting import PermutingStream

    a = tmp_path / "a"
    assert run("--method", "standard", "--tasks", "2", "--out", str(a)) == 0
    before = (a / "summary.json").read_text()
    capsys.readouterr()
    assert main(["run", "--resume", str(a), "--no-progress"]) == 2
    assert "--tasks N (N > 2) continues it" in capsys.readouterr().err
    assert main(["run", "--resume", str(a), "--tasks", "1", "--no-progress"]) == 2
    assert "can only add tasks" in capsys.readouterr().err
    monkeypatch.setattr(PermutingStream, "open_ended", False)  # as a class-incremental split
    assert main(["run", "--resume", str(a), "--tasks", "3", "--no-progress"]) == 2
    assert "cannot be extended" in capsys.readouterr().err
    assert (a / "summary.json").read_text() == before
    assert yaml.safe_load((a / "config.yaml").read_text())["tasks"] == 2
