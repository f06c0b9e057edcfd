"""Resilience (issue 8): bad input, divergence, safe and checked checkpoints, kill and resume.

Every bad input goes through ``superpose.cli.main`` and must give exit code 2, one
``superpose: error:`` line, no traceback, and write no file (the working folder, $HOME and
$TMPDIR are fresh folders checked to stay empty). A run killed with SIGKILL at several points, or
interrupted with a real SIGINT under every registered method, must resume to the bit-identical
result of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Importing torch._dynamo (as every torch.optim optimiser does) creates /tmp/torchinductor_$USER:
# PyTorch's doing, not superpose's, so it happens here, before the tests watch $TMPDIR.
import torch._dynamo  # noqa: F401
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import superpose as sp
from superpose import checkpoint as checkpoint_mod
from superpose import plots, training
from superpose.checkpoint import CHECKPOINT_NAME, load
from superpose.cli import main
from superpose.config import resolve
from superpose.methods import METHODS
from superpose.methods.base import Method
from superpose.models import MODELS

TINY = ["--tasks", "2", "--steps-per-task", "10", "--eval-every", "5", "--batch-size", "16",
        "--width", "16", "--no-progress", "--threads", "1"]
#: The kill-and-resume runs: 3 tasks, a checkpoint every 7 steps (so kills fall between them).
KILL = {"benchmark": "permuted-digits", "method": "standard", "tasks": 3, "steps_per_task": 20,
        "eval_every": 5, "checkpoint_every": 7, "batch_size": 32, "width": 32, "lr": 5e-3,
        "threads": 1}


def flags(cfg: dict) -> list[str]:
    return [x for k, v in cfg.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def outcome(folder: Path) -> tuple:
    """What must be identical after a resume: summary accuracies, curve, matrix, final model."""
    s = json.loads((folder / "summary.json").read_text())
    groups, _ = load(folder / CHECKPOINT_NAME)
    tensors = {f"{g}.{k}": v for g in ("model", "extra") for k, v in groups[g].items()}
    return (s["final_accuracy"], s["first_task_curve"],
            (folder / "accuracy_matrix.csv").read_text(), tensors)


def assert_same(a: tuple, b: tuple) -> None:
    assert a[:3] == b[:3]
    assert a[3].keys() == b[3].keys()
    for k in a[3]:
        assert torch.equal(a[3][k], b[3][k]), k


def assert_clean_metrics(folder: Path) -> None:
    """Every line is JSON, and no evaluation is recorded twice (the resume truncated them)."""
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "curve"]
    assert steps == sorted(set(steps))


@pytest.fixture(autouse=True)
def figures(monkeypatch: pytest.MonkeyPatch) -> list[list[Path]]:
    """No matplotlib here (most of a tiny run's time): record which runs would be drawn."""
    drawn: list[list[Path]] = []
    monkeypatch.setattr(plots, "plot_runs", lambda runs, out: drawn.append(
        [r.path for r in runs]) or [])
    return drawn


# ---------------------------------------------------------------------------- bad input

class Sandbox:
    """A fresh working folder, $HOME and $TMPDIR, and a folder for the test's input files."""

    def __init__(self, root: Path):
        self.root = root
        self.cwd, self.home, self.tmp, self.inputs = (root / n for n in ("cwd", "home", "tmp",
                                                                          "inputs"))
        for d in (self.cwd, self.home, self.tmp, self.inputs):
            d.mkdir()
        self.out = root / "out"

    def write(self, name: str, content: str | bytes) -> str:
        p = self.inputs / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
        return str(p)

    def written(self) -> list[str]:
        """Files created outside the inputs folder (all must be empty after a bad input)."""
        found = [str(p) for d in (self.cwd, self.home, self.tmp) for p in d.rglob("*")]
        return found + ([str(self.out)] if self.out.exists() else [])


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    box = Sandbox(tmp_path)
    monkeypatch.chdir(box.cwd)
    monkeypatch.setenv("HOME", str(box.home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(box.home / ".cache"))
    monkeypatch.setenv("TMPDIR", str(box.tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(box.tmp))
    monkeypatch.setenv("SUPERPOSE_DATA", str(tmp_path / "no-data"))
    return box


def assert_user_error(code: int, err: str, message: str) -> None:
    """Exit 2; one ``superpose: error:`` line (after at most the method's banner); no traceback.
    A data error may go on over several lines (the folders searched)."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("superpose: error:"))
    assert all(line.startswith("== ") for line in lines[:first]), err
    assert sum(line.startswith("superpose: error:") for line in lines) == 1, err
    assert message in err, err


RUN_CASES: list[tuple[str, list[str], str]] = [
    # unknown names (with the close name suggested)
    ("benchmark", ["--benchmark", "permuted-mnst"], "Did you mean 'permuted-mnist'?"),
    ("method", ["--method", "ewk"], "unknown method 'ewk'"),
    ("method-in-list", ["--method", "standard,psb-binary"], "Did you mean 'psp-binary'?"),
    ("model", ["--model", "mlpp"], "unknown model 'mlpp'. Did you mean 'mlp'?"),
    ("optimizer", ["--optimizer", "adamw"], "unknown optimizer 'adamw'"),
    ("context", ["--method", "psp", "--context", "binray"], "Did you mean 'binary'?"),
    ("device", ["--device", "gpu"], "device must be cpu, cuda, cuda:N or mps"),
    ("flag", ["--stepz-per-task", "3"], "Did you mean --steps-per-task?"),
    ("foreign-option", ["--method", "standard", "--ewc-lambda", "1"], "does not apply"),
    # non-positive numbers
    ("tasks-0", ["--tasks", "0"], "tasks must be a positive integer, got 0"),
    ("steps-neg", ["--steps-per-task", "-1"], "steps-per-task must be a positive integer"),
    ("batch-0", ["--batch-size", "0"], "batch-size must be a positive integer"),
    ("width-0", ["--width", "0"], "width must be a positive integer"),
    ("depth-0", ["--depth", "0"], "depth must be a positive integer"),
    ("eval-every-0", ["--eval-every", "0"], "eval-every must be a positive integer"),
    ("eval-batch-0", ["--eval-batch-size", "0"], "eval-batch-size must be a positive integer"),
    ("lr-0", ["--lr", "0"], "lr must be a positive finite number"),
    ("lr-neg", ["--lr", "-0.1"], "lr must be a positive finite number"),
    ("checkpoint-every", ["--checkpoint-every", "-5"], "checkpoint-every must be >= 0"),
    ("seed", ["--seed", "-1"], "seed must be >= 0"),
    ("threads", ["--threads", "-2"], "threads must be >= 0"),
    ("validation", ["--validation", "1"], "validation must be a fraction in [0, 1)"),
    ("fisher-samples", ["--method", "ewc", "--fisher-samples", "0"], "fisher-samples"),
    ("si-xi", ["--method", "si", "--si-xi", "0"], "si-xi"),
    ("cycle", ["--method", "psp", "--cycle", "0"], "cycle"),
    ("theta-steps", ["--method", "clnp", "--theta-steps", "0"], "theta-steps"),
    # NaN / inf / not a number
    ("lr-nan", ["--lr", "nan"], "lr must be a finite number, got 'nan'"),
    ("lr-inf", ["--lr", "inf"], "lr must be a finite number, got 'inf'"),
    ("lr-minus-inf", ["--lr=-inf"], "lr must be a finite number, got '-inf'"),
    ("validation-nan", ["--validation", "nan"], "validation must be a finite number"),
    ("ewc-lambda-nan", ["--method", "ewc", "--ewc-lambda", "nan"], "ewc_lambda must be a finite"),
    ("l1-inf", ["--method", "clnp", "--l1", "1e-5,inf"], "l1 must hold finite numbers"),
    ("tasks-inf", ["--tasks", "inf"], "tasks must be of type int, got 'inf'"),
    ("tasks-fraction", ["--tasks", "2.5"], "tasks must be of type int, got '2.5'"),
    ("lr-word", ["--lr", "fast"], "lr must be of type float, got 'fast'"),
    # folders
    ("data-dir-missing", ["--data-dir", "/nonexistent/superpose-data"], "does not exist"),
    ("mnist-missing", ["--benchmark", "permuted-mnist"], "--download"),
]


@pytest.mark.parametrize("args, message", [c[1:] for c in RUN_CASES],
                         ids=[c[0] for c in RUN_CASES])
def test_bad_run_options(sandbox: Sandbox, capsys: pytest.CaptureFixture, args: list[str],
                         message: str) -> None:
    code = main(["run", "--out", str(sandbox.out), *TINY, *args])
    assert_user_error(code, capsys.readouterr().err, message)
    assert sandbox.written() == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu(sandbox: Sandbox, capsys: pytest.CaptureFixture) -> None:
    code = main(["run", "--out", str(sandbox.out), *TINY, "--device", "cuda"])
    assert_user_error(code, capsys.readouterr().err, "CUDA is not available")
    assert sandbox.written() == []


FILE_CASES: list[tuple[str, Callable[[Sandbox], list[str]], str]] = [
    ("yaml-missing", lambda b: ["run", str(b.inputs / "nope.yaml")], "cannot read config file"),
    ("yaml-folder", lambda b: ["run", str(b.inputs)], "cannot read config file"),
    ("yaml-binary", lambda b: ["run", b.write("c.yaml", b"\xff\xfe\x00tasks")], "not UTF-8"),
    ("yaml-syntax", lambda b: ["run", b.write("c.yaml", "tasks: 3\nlr: [0.1\n")],
     "c.yaml:3:1"),
    ("yaml-list", lambda b: ["run", b.write("c.yaml", "- tasks\n- 3\n")], "mapping"),
    ("yaml-unknown-key", lambda b: ["run", b.write("c.yaml", "tasks: 2\nstepz-per-task: 3\n")],
     "unknown option 'stepz-per-task' in"),
    ("yaml-unknown-key-hint", lambda b: ["run", b.write("c.yaml", "stepz-per-task: 3\n")],
     "Did you mean 'steps-per-task'?"),
    ("yaml-wrong-type", lambda b: ["run", b.write("c.yaml", "seed: [1, 2]\n")],
     "seed must be of type int, got [1, 2]"),
    ("yaml-nan", lambda b: ["run", b.write("c.yaml", "lr: .nan\n")], "lr must be a finite"),
    ("yaml-inf", lambda b: ["run", b.write("c.yaml", "lr: -.inf\n")], "lr must be a finite"),
    ("yaml-python-tag", lambda b: ["run", b.write("c.yaml", "lr: !!python/name:os.system\n")],
     "invalid YAML"),
    ("data-dir-file", lambda b: ["run", "--data-dir", b.write("f", "x")], "is a file"),
    ("out-is-file", lambda b: ["run", "--out", b.write("f", "x")], "is a file, not a folder"),
    ("out-under-file", lambda b: ["run", "--out", b.write("f", "x") + "/run"], "is a file"),
    ("command", lambda b: ["rnu"], "invalid choice: 'rnu'"),
    ("resume-missing", lambda b: ["run", "--resume", str(b.inputs / "gone")], "no such folder"),
    ("resume-file", lambda b: ["run", "--resume", b.write("f", "x")], "not a folder"),
    ("resume-empty", lambda b: ["run", "--resume", str(b.inputs)], "not a run folder"),
    ("resume-no-checkpoint", lambda b: ["run", "--resume", str(Path(b.write(
        "config.yaml", "method: standard\n")).parent)], "no checkpoint in it"),
    ("resume-bad-config", lambda b: ["run", "--resume", str(Path(b.write(
        "config.yaml", "method: [standard\n")).parent)], "config.yaml:2"),
    ("plot-missing", lambda b: ["plot", str(b.inputs / "gone")], "does not exist"),
    ("plot-file", lambda b: ["plot", b.write("f", "x")], "is not a folder"),
    ("report-empty", lambda b: ["report", str(b.inputs)], "not a finished run folder"),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in FILE_CASES],
                         ids=[c[0] for c in FILE_CASES])
def test_bad_files_and_folders(sandbox: Sandbox, capsys: pytest.CaptureFixture,
                               make: Callable[[Sandbox], list[str]], message: str) -> None:
    argv = make(sandbox)
    if argv[0] == "run" and "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(sandbox.out), *TINY]
    code = main(argv)
    assert_user_error(code, capsys.readouterr().err, message)
    assert sandbox.written() == []


# ---------------------------------------------------------------- run folders: resume, plot

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    training.run(resolve({"method": "standard", "tasks": 2, "steps_per_task": 10,
                          "eval_every": 5, "batch_size": 16, "width": 16, "threads": 1}),
                 out, progress=False, log=lambda _: None)
    return out


def copy_run(src: Path, box: Sandbox, unfinished: bool = True) -> Path:
    dst = box.inputs / "run"
    shutil.copytree(src, dst)
    if unfinished:
        (dst / "summary.json").unlink()
    return dst


class Boom:
    """Unpickling this creates a marker file: it must never happen to a checkpoint."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.marker),))


def corrupt_truncate(run: Path) -> None:
    ckpt = run / CHECKPOINT_NAME
    ckpt.write_bytes(ckpt.read_bytes()[:-100])


def corrupt_flip(run: Path) -> None:
    ckpt = run / CHECKPOINT_NAME
    data = bytearray(ckpt.read_bytes())
    data[-20] ^= 0x40  # a bit of the last tensor: safetensors alone loads this silently
    ckpt.write_bytes(bytes(data))


def corrupt_pickle(run: Path) -> None:
    (run / CHECKPOINT_NAME).write_bytes(pickle.dumps(Boom(str(run / "UNPICKLED"))))


def corrupt_torch_save(run: Path) -> None:
    torch.save({"model": nn.Linear(2, 2).state_dict()}, run / CHECKPOINT_NAME)


def foreign_safetensors(run: Path) -> None:
    """A valid safetensors file that another program wrote: no superpose header."""
    save_file({"weight": torch.zeros(2, 2)}, str(run / CHECKPOINT_NAME))


def older_format(run: Path) -> None:
    """Our own checkpoint, its header relabelled as written by format version 1."""
    ckpt = str(run / CHECKPOINT_NAME)
    with safe_open(ckpt, framework="pt") as f:
        header = json.loads(f.metadata()["superpose"])
    tensors = load_file(ckpt)
    save_file(tensors, ckpt, metadata={"superpose": json.dumps({**header, "version": 1})})


def other_config(run: Path) -> None:
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("seed: 0", "seed: 5"))


def other_checkpoint(run: Path) -> None:
    """A checkpoint copied in from a run of another configuration (and its config.yaml)."""
    other = run.parent / "other"
    training.run(resolve({"method": "standard", "tasks": 2, "steps_per_task": 4, "width": 8,
                          "threads": 1}), other, progress=False, log=lambda _: None)
    shutil.copy(other / CHECKPOINT_NAME, run / CHECKPOINT_NAME)
    shutil.rmtree(other)


def with_flags(run: Path) -> list[str]:
    return ["--seed", "5"]


def fewer_tasks(run: Path) -> list[str]:
    return ["--tasks", "1"]


RESUME_CASES: list[tuple[str, Callable[[Path], object], str]] = [
    ("truncated", corrupt_truncate, "corrupt or unreadable"),
    ("bit-flip", corrupt_flip, "does not match the digest"),
    ("pickle", corrupt_pickle, "corrupt or unreadable"),
    ("torch-save", corrupt_torch_save, "corrupt or unreadable"),
    ("foreign-safetensors", foreign_safetensors, "is not a superpose checkpoint"),
    ("older-format", older_format,
     f"has format version 1, this superpose reads version {checkpoint_mod.FORMAT_VERSION}"),
    ("edited-config", other_config, "seed: 0 in the checkpoint, 5 in config.yaml"),
    ("foreign-checkpoint", other_checkpoint, "written by another configuration"),
    ("flags", with_flags, "--resume takes the configuration from the run folder's config.yaml; "
                          "drop --seed (a resume may change only --threads, --data-dir, "
                          "--checkpoint-every, --tasks)"),
    ("fewer-tasks", fewer_tasks, "a resume can only add tasks"),
    ("finished", lambda run: (run / "summary.json").write_text("{}"), "already finished"),
]


@pytest.mark.parametrize("spoil, message", [c[1:] for c in RESUME_CASES],
                         ids=[c[0] for c in RESUME_CASES])
def test_resume_refuses_bad_folders(finished_run: Path, sandbox: Sandbox,
                                    capsys: pytest.CaptureFixture,
                                    spoil: Callable[[Path], object], message: str) -> None:
    run = copy_run(finished_run, sandbox)
    extra = spoil(run)
    before = sorted(p.name for p in run.iterdir())
    code = main(["run", "--resume", str(run), *(extra if isinstance(extra, list) else [])])
    assert_user_error(code, capsys.readouterr().err, message)
    assert sandbox.written() == []
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written, never unpickled


def test_resume_may_change_how_the_run_executes(finished_run: Path, sandbox: Sandbox,
                                                capsys: pytest.CaptureFixture) -> None:
    """``--resume DIR --threads 2 --checkpoint-every 3``: accepted, said in the log, kept in
    metrics.jsonl as a ``resume`` record; config.yaml keeps the settings the run started with."""
    run = copy_run(finished_run, sandbox)
    config_before = (run / "config.yaml").read_text()
    assert main(["run", "--resume", str(run), "--no-progress", "--threads", "2",
                 "--checkpoint-every", "3"]) == 0
    assert "with threads 1 -> 2, checkpoint_every 0 -> 3" in capsys.readouterr().out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in records if r["kind"] == "resume"]
    assert resumed == [{"kind": "resume", "step": 20,
                        "changed": {"threads": [1, 2], "checkpoint_every": [0, 3]}}]
    assert (run / "config.yaml").read_text() == config_before
    summary = json.loads((run / "summary.json").read_text())
    original = json.loads((finished_run / "summary.json").read_text())
    assert summary["final_accuracy"] == original["final_accuracy"]


def test_resume_of_a_comparison_passes_the_overrides_on(sandbox: Sandbox, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """An unfinished comparison resumes its checkpointed sub-run with the new thread count."""
    base = tmp_path / "cmp"
    assert main(["run", "--method", "standard,psp-binary", *TINY, "--out", str(base)]) == 0
    (base / "psp-binary" / "summary.json").unlink()
    (base / "report.md").unlink()
    capsys.readouterr()
    assert main(["run", "--resume", str(base), "--no-progress", "--threads", "2"]) == 0
    assert "with threads 1 -> 2" in capsys.readouterr().out
    kinds = [json.loads(line)["kind"]
             for line in (base / "psp-binary" / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("resume") == 1
    assert (base / "report.md").is_file()


PLOT_CASES: list[tuple[str, Callable[[Path], object], str]] = [
    ("interrupted", lambda run: (run / "summary.json").unlink(),
     "resume it with: superpose run --resume"),
    ("summary-not-json", lambda run: (run / "summary.json").write_text("{"), "cannot read"),
    ("summary-a-list", lambda run: (run / "summary.json").write_text("[]"), "not a JSON object"),
    ("summary-no-accuracy", lambda run: (run / "summary.json").write_text('{"method": "x"}'),
     "has no 'final_accuracy'"),
    ("matrix-garbage", lambda run: (run / "accuracy_matrix.csv").write_text(
        "after_task,task_0\n0,abc\n"), "could not convert string to float"),
]


@pytest.mark.parametrize("command", ["plot", "report"])
@pytest.mark.parametrize("spoil, message", [c[1:] for c in PLOT_CASES],
                         ids=[c[0] for c in PLOT_CASES])
def test_plot_and_report_refuse_non_runs(finished_run: Path, sandbox: Sandbox,
                                         capsys: pytest.CaptureFixture, command: str,
                                         spoil: Callable[[Path], object], message: str) -> None:
    run = copy_run(finished_run, sandbox, unfinished=False)
    spoil(run)
    code = main([command, str(run)])
    assert_user_error(code, capsys.readouterr().err, message)
    assert sandbox.written() == []
    assert not list(run.glob("*.png"))


# ------------------------------------------------------------------ the API and input shapes

def test_api_task_index_out_of_range() -> None:
    net = sp.models.create("mlp", in_features=64, hidden=[8], classes=10)
    model = sp.superpose(net, context="binary", num_tasks=50, seed=0)
    with pytest.raises(ValueError, match="task 99 is out of range: this model holds 50 tasks"):
        model.set_task(99)
    with pytest.raises(ValueError, match="out of range"), sp.task(model, -1):
        pass
    with pytest.raises(ValueError, match="out of range"):
        model(torch.zeros(2, 64), task=torch.tensor([0, 50]))
    with pytest.raises(TypeError, match="not a bool"):
        model.set_task(True)
    with pytest.raises(ValueError, match="num_tasks must be positive"):
        sp.superpose(sp.models.create("mlp", in_features=4, hidden=[4]), num_tasks=0)
    with pytest.raises(ValueError, match="sizes must be positive"):
        sp.models.create("mlp", in_features=0)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        resolve({"lr": math.nan})


def test_api_wrong_input_shape_is_a_value_error() -> None:
    net = sp.models.create("mlp", in_features=784, hidden=[8], classes=10)
    model = sp.superpose(net, context="binary", num_tasks=3, seed=0)
    with pytest.raises(ValueError, match=r"784.*\(2, 1, 8, 8\)|\(2, 1, 8, 8\).*784"):
        model(torch.zeros(2, 1, 8, 8))


def test_cli_model_that_does_not_fit_the_benchmark(sandbox: Sandbox, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def mnist_only(input_shape: tuple, classes: int, width: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(),
                             nn.Linear(width, classes))

    monkeypatch.setitem(MODELS._entries, "mnist-only", mnist_only)
    for method in ("standard", "psp-binary"):
        code = main(["run", "--out", str(sandbox.out), *TINY, "--model", "mnist-only",
                     "--method", method])
        err = capsys.readouterr().err
        assert_user_error(code, err, "model 'mnist-only' does not fit benchmark "
                                     "'permuted-digits': its inputs have shape (1, 8, 8)")
        assert sandbox.written() == []
    if "clnp-wide" in MODELS:  # a real model whose factory refuses 8x8 images
        code = main(["run", "--out", str(sandbox.out), *TINY, "--model", "clnp-wide"])
        assert_user_error(code, capsys.readouterr().err, "with model 'clnp-wide' for benchmark "
                                                         "'permuted-digits'")
        assert sandbox.written() == []


# -------------------------------------------------------------------- NaN / inf loss: exit 1

@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_loss_stops_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch, bad: float) -> None:
    real = Method.loss

    def loss(self: Method, x: torch.Tensor, y: torch.Tensor, task: int, step: int
             ) -> torch.Tensor:
        value = real(self, x, y, task, step)
        return value * bad if step == 13 else value  # the 14th step: task 1, after a boundary

    monkeypatch.setattr(Method, "loss", loss)
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), *TINY, "--method", "ewc"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    word = "nan" if math.isnan(bad) else "inf"
    assert f"loss became {word} at step 14 (task 1) with method ewc" in err
    assert f"last good checkpoint is kept in {out / CHECKPOINT_NAME}" in err
    groups, header = load(out / CHECKPOINT_NAME)  # the task-0 boundary checkpoint, intact
    assert header["loop"]["global_step"] == 10
    assert all(torch.isfinite(t).all() for t in groups["model"].values())
    assert not (out / "summary.json").exists()
    # The kept checkpoint resumes (here the loss stays finite) to the uninterrupted result.
    monkeypatch.setattr(Method, "loss", real)
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    ref = tmp_path / "ref"
    assert main(["run", "--out", str(ref), *TINY, "--method", "ewc"]) == 0
    assert_same(outcome(out), outcome(ref))


def test_huge_learning_rate_diverges_with_exit_1(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), *TINY, "--method", "standard", "--lr", "1e30",
                 "--checkpoint-every", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "superpose: training diverged: loss became" in err
    assert "(task 0) with method standard" in err and "Try a smaller --lr" in err
    step = int(err.split(" at step ")[1].split()[0])
    _, header = load(out / CHECKPOINT_NAME)
    assert header["loop"]["global_step"] == step - 1  # the last step with a finite loss


# ------------------------------------------------------------------- SIGKILL, then resume

def kill_points() -> dict[str, Callable[[], None]]:
    """Ways to die (in a forked child): each patches the code to SIGKILL itself at one point."""

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def after_first_checkpoint() -> None:
        real = training.Trainer.save_checkpoint

        def save(self: training.Trainer) -> None:
            real(self)
            die()

        training.Trainer.save_checkpoint = save  # type: ignore[method-assign]

    def mid_task() -> None:  # in step 25 of 60: the steps since the checkpoint at 21 are lost
        real = Method.train_step

        def step(self: Method, x: torch.Tensor, y: torch.Tensor, task: int, s: int) -> float:
            if s == 24:
                die()
            return real(self, x, y, task, s)

        Method.train_step = step  # type: ignore[method-assign]

    def end_of_task() -> None:  # after task 0's last step, before its boundary checkpoint
        Method.end_task = lambda self, task: die()  # type: ignore[method-assign]

    def after_boundary() -> None:  # right after task 1's boundary checkpoint
        real = Method.begin_task

        def begin_task(self: Method, task: int) -> None:
            if task == 2:
                die()
            real(self, task)

        Method.begin_task = begin_task  # type: ignore[method-assign]

    def mid_write() -> None:  # while writing the 4th checkpoint (step 21): half a file
        real = checkpoint_mod.save_file
        calls: list[str] = []

        def save_file(tensors: dict, path: str, metadata: dict) -> None:
            calls.append(path)
            real(tensors, path, metadata=metadata)
            if len(calls) == 4:
                with open(path, "rb+") as f:
                    f.truncate(os.path.getsize(path) // 2)
                die()

        checkpoint_mod.save_file = save_file

    return {"after-first-checkpoint": after_first_checkpoint, "mid-task": mid_task,
            "end-of-task": end_of_task, "after-boundary": after_boundary,
            "mid-write": mid_write}


def run_and_sigkill(point: str, argv: list[str]) -> None:
    """Run ``superpose`` in a forked child that kills itself with SIGKILL at ``point``."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest teardown, whatever happens
        code = 3
        try:
            kill_points()[point]()
            code = main(argv)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    out = tmp_path_factory.mktemp("kill") / "ref"
    training.run(resolve(KILL), out, progress=False, log=lambda _: None)
    return outcome(out)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
@pytest.mark.parametrize("point, step", [("after-first-checkpoint", 7), ("mid-task", 21),
                                         ("end-of-task", 14), ("after-boundary", 40),
                                         ("mid-write", 20)])
def test_sigkill_then_resume_is_bit_identical(tmp_path: Path, kill_reference: tuple,
                                              capsys: pytest.CaptureFixture, point: str,
                                              step: int) -> None:
    out = tmp_path / "run"
    run_and_sigkill(point, ["run", "--out", str(out), "--no-progress", *flags(KILL)])
    assert not (out / "summary.json").exists()
    # The last complete checkpoint is intact (a half-written one never replaced it).
    _, header = load(out / CHECKPOINT_NAME)
    assert header["loop"]["global_step"] == step
    if point == "mid-write":
        assert (out / (CHECKPOINT_NAME + ".tmp")).exists()
    with open(out / "metrics.jsonl", "a") as f:  # a crash can leave half a line: tolerated
        f.write('{"kind": "curve", "st')
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert f"resuming {out} at step {step}" in capsys.readouterr().out
    assert_same(outcome(out), kill_reference)
    assert_clean_metrics(out)


# -------------------------------------------- Ctrl-C under every method, then resume equal

def signal_in_step(monkeypatch: pytest.MonkeyPatch, cls: type, at: int,
                   signum: int = signal.SIGINT) -> Callable:
    """Make ``cls.train_step`` send this process ``signum`` at the start of step ``at`` (0-based),
    as a user or a scheduler would mid-step. Returns the real ``train_step``."""
    real = cls.train_step

    def step(self: Method, x: torch.Tensor, y: torch.Tensor, task: int, s: int) -> float:
        if s == at:
            os.kill(os.getpid(), signum)
        return real(self, x, y, task, s)

    monkeypatch.setattr(cls, "train_step", step)
    return real


def method_args(name: str) -> list[str]:
    args = ["--method", name, "--tasks", "2", "--steps-per-task", "20", "--eval-every", "10",
            "--batch-size", "32", "--width", "32", "--lr", "5e-3", "--validation", "0.1",
            "--no-progress", "--threads", "1"]
    return args + (["--theta-steps", "5"] if name == "clnp" else [])


@pytest.mark.parametrize("name", METHODS.names())
def test_ctrl_c_and_resume_under_every_method(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch, figures: list,
                                              name: str) -> None:
    """A real SIGINT in step 12 (task 0: the resume crosses a boundary), then again in step 27
    of the resumed run (task 1: the method's end-of-task state is restored)."""
    ref = tmp_path / "ref"
    assert main(["run", "--out", str(ref), *method_args(name)]) == 0
    cls = METHODS.get(name)
    real = cls.train_step

    def step(self: Method, x: torch.Tensor, y: torch.Tensor, task: int, s: int) -> float:
        if s in (11, 26):  # a real Ctrl-C, in the middle of the step
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, x, y, task, s)

    monkeypatch.setattr(cls, "train_step", step)
    out = tmp_path / "cut"
    capsys.readouterr()
    assert main(["run", "--out", str(out), *method_args(name)]) == 130
    assert (f"interrupted at step 12; checkpoint written. Resume with: superpose run --resume "
            f"{out}") in capsys.readouterr().err
    assert main(["run", "--resume", str(out), "--no-progress"]) == 130
    assert "interrupted at step 27" in capsys.readouterr().err
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert_same(outcome(out), outcome(ref))
    assert_clean_metrics(out)
    assert figures[-1] == [out]  # a resumed run gets its figures too


def test_second_ctrl_c_aborts_and_keeps_the_last_checkpoint(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    real = Method.train_step

    def step(self: Method, x: torch.Tensor, y: torch.Tensor, task: int, s: int) -> float:
        if s == 15:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # impatient: the second one aborts at once
        return real(self, x, y, task, s)

    monkeypatch.setattr(Method, "train_step", step)
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY, "--method", "standard"]) == 130
    assert "the last checkpoint is kept" in capsys.readouterr().err
    assert load(out / CHECKPOINT_NAME)[1]["loop"]["global_step"] == 10
    monkeypatch.setattr(Method, "train_step", real)
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    ref = tmp_path / "ref"
    assert main(["run", "--out", str(ref), *TINY, "--method", "standard"]) == 0
    assert_same(outcome(out), outcome(ref))


def test_comparison_resumes_as_a_whole(tmp_path: Path, capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``--method a,b`` interrupted in b: ``--resume BASE`` keeps a, finishes b, reports both."""
    args = [*TINY, "--method", "standard,psp-binary"]
    ref = tmp_path / "ref"
    assert main(["run", "--out", str(ref), *args]) == 0
    psp = METHODS.get("psp-binary")
    real = signal_in_step(monkeypatch, psp, 12)
    base = tmp_path / "cmp"
    assert main(["run", "--out", str(base), *args]) == 130
    assert f"Resume with: superpose run --resume {base}\n" in capsys.readouterr().err
    monkeypatch.setattr(psp, "train_step", real)
    assert main(["run", "--resume", str(base), "--no-progress"]) == 0
    for method in ("standard", "psp-binary"):
        assert_same(outcome(base / method), outcome(ref / method))
    assert (base / "report.md").is_file()
    assert main(["report", str(base)]) == 0  # a comparison folder reports its runs
    assert "psp-binary" in capsys.readouterr().out
    assert main(["run", "--resume", str(base)]) == 2
    assert "already finished" in capsys.readouterr().err


# ------------------------------------------------------------------------------ determinism

def test_same_seed_is_bit_identical_on_cpu(tmp_path: Path) -> None:
    cfg = {"method": "psp-complex", "tasks": 2, "steps_per_task": 15, "eval_every": 5,
           "batch_size": 16, "width": 16, "threads": 1}
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        training.run(resolve({**cfg, "seed": seed}), tmp_path / name, progress=False,
                     log=lambda _: None)
        outs.append(outcome(tmp_path / name))
    assert_same(outs[0], outs[1])
    assert not torch.equal(outs[0][3]["model.net.1.weight"], outs[2][3]["model.net.1.weight"])


def test_sigterm_checkpoints_like_ctrl_c_and_exits_143(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduler's SIGTERM (preemption) mid-step: the step finishes, a checkpoint is written,
    exit 128 + 15; the resumed run ends bit-identical to an uninterrupted one."""
    real = signal_in_step(monkeypatch, Method, 14, signal.SIGTERM)
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY, "--method", "standard"]) == 143
    assert f"interrupted at step 15; checkpoint written. Resume with: superpose run --resume " \
           f"{out}" in capsys.readouterr().err
    assert load(out / CHECKPOINT_NAME)[1]["loop"]["global_step"] == 15
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    monkeypatch.setattr(Method, "train_step", real)
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    ref = tmp_path / "ref"
    assert main(["run", "--out", str(ref), *TINY, "--method", "standard"]) == 0
    assert_same(outcome(out), outcome(ref))


def test_ctrl_c_stops_clnps_grid_at_once_and_resumes_equal(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """CLNP's graceful-forgetting grid runs in ``begin_task`` and can train for hours: a
    Ctrl-C there stops it at once (not after the grid), since the boundary checkpoint is where
    a resume starts it again. Here the grid runs on tasks 0 and 1 and is cut in task 1."""
    args = [*method_args("clnp"), "--grid-lr", "0.005,0.002", "--grid-tasks", "2"]
    ref = tmp_path / "ref"
    assert main(["run", "--out", str(ref), *args]) == 0
    clnp = METHODS.get("clnp")
    real = clnp._train_for
    calls: list[int] = []

    def train_for(self: Method, task: int, *rest: object) -> None:
        calls.append(task)
        if calls.count(1) == 1 and task == 1:  # the first grid candidate of task 1
            os.kill(os.getpid(), signal.SIGINT)
        real(self, task, *rest)

    monkeypatch.setattr(clnp, "_train_for", train_for)
    out = tmp_path / "cut"
    capsys.readouterr()
    assert main(["run", "--out", str(out), *args]) == 130
    assert calls == [0, 0, 1]  # the second candidate of task 1 never started
    assert (f"interrupted while task 1 was being prepared; the checkpoint at step 20 starts it "
            f"again. Resume with: superpose run --resume {out}") in capsys.readouterr().err
    assert load(out / CHECKPOINT_NAME)[1]["loop"]["global_step"] == 20
    monkeypatch.setattr(clnp, "_train_for", real)
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert_same(outcome(out), outcome(ref))


def test_ctrl_c_before_the_first_checkpoint_says_to_start_again(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    clnp = METHODS.get("clnp")

    def train_for(self: Method, *rest: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the grid went on after Ctrl-C")

    monkeypatch.setattr(clnp, "_train_for", train_for)
    out = tmp_path / "cut"
    assert main(["run", "--out", str(out), *method_args("clnp"), "--grid-lr", "0.005,0.002"]) \
        == 130
    err = capsys.readouterr().err
    assert ("interrupted while task 0 was being prepared; nothing was trained and there is no "
            "checkpoint yet: start the run again") in err
    assert not (out / CHECKPOINT_NAME).exists()
