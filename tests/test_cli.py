"""The command line end to end on small real data (scikit-learn's digits) and its user errors."""

import csv
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from superpose.cli import main

SMALL = ["--tasks", "3", "--steps-per-task", "40", "--eval-every", "20", "--no-progress",
         "--threads", "1"]
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_run_writes_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(["run", "--method", "standard", "--out", str(out), *SMALL], capsys)
    assert code == 0
    for name in ["config.yaml", "metrics.jsonl", "accuracy_matrix.csv", "summary.json",
                 "checkpoint.safetensors", "first_task_curve.png"]:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in ["benchmark", "method", "tasks", "final_accuracy", "average_accuracy",
                "average_last10", "first_task_curve", "parameters", "wall_seconds",
                "train_steps_per_second"]:
        assert key in summary, key
    assert summary["tasks"] == 3 and len(summary["final_accuracy"]) == 3
    assert summary["first_task_curve"][0] == [20, pytest.approx(summary["first_task_curve"][0][1])]
    assert len(summary["first_task_curve"]) == 6  # every 20 steps of 120
    assert set(summary["parameters"]) == {"shared", "per_task", "total"}
    rows = list(csv.reader(open(out / "accuracy_matrix.csv")))
    assert rows[0] == ["after_task", "task_0", "task_1", "task_2"]
    assert rows[1][2:] == ["", ""] and rows[3][3] != ""  # blank where not yet defined
    # The last row equals the summary's final accuracies.
    assert [float(v) for v in rows[3][1:]] == pytest.approx(summary["final_accuracy"], abs=1e-6)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["tasks"] == 3 and cfg["benchmark"] == "permuted-digits"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "matrix" for r in records) == 3
    assert "standard" in stdout and "run folder" in stdout

    # report and plot read the folder back.
    code, stdout, _ = run_cli(["report", str(out)], capsys)
    assert code == 0 and "| run |" in stdout and "standard" in stdout
    head, _, row = [line.split("|")[1:-1] for line in stdout.strip().splitlines()[:3]]
    cell = dict(zip([h.strip() for h in head], [c.strip() for c in row], strict=True))
    # task 0 right after its own training is A[0, 0]; at the end, the summary's final value
    assert float(cell["task 0 after training %"]) == pytest.approx(100 * float(rows[1][1]),
                                                                   abs=0.006)
    assert float(cell["task 0 final %"]) == pytest.approx(100 * summary["final_accuracy"][0],
                                                          abs=0.006)
    # the last (here: all 3) tasks right after their own training: the matrix's diagonal
    diagonal = [float(rows[1 + i][1 + i]) for i in range(3)]
    assert float(cell["last-10 after training %"]) == pytest.approx(100 * sum(diagonal) / 3,
                                                                    abs=0.006)
    code, stdout, _ = run_cli(["plot", str(out), "--out", str(tmp_path / "figs")], capsys)
    assert code == 0 and (tmp_path / "figs" / "final_accuracy.png").is_file()


def test_yaml_config_with_flags_winning(tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text("benchmark: permuted-digits\nmethod: standard\ntasks: 5\n"
                    "steps-per-task: 10\nseed: 4\n")
    out = tmp_path / "run"
    code, _, _ = run_cli(["run", str(conf), "--tasks", "2", "--out", str(out), "--no-progress"],
                         capsys)
    assert code == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["tasks"], cfg["steps_per_task"], cfg["seed"]) == (2, 10, 4)


def test_same_seed_same_result(tmp_path, capsys):
    finals = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert run_cli(["run", "--method", "standard", "--out", str(out), *SMALL], capsys)[0] == 0
        finals.append(json.loads((out / "summary.json").read_text())["final_accuracy"])
    assert finals[0] == finals[1]


def test_list_names_everything(capsys):
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0
    for name in ["permuted-mnist", "permuted-digits", "rotating-fashion-mnist", "standard",
                 "mlp", "binary"]:
        assert name in out


def test_version_names_the_package_and_torch(capsys):
    import torch

    import superpose

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"superpose {superpose.__version__} (torch ")
    assert torch.__version__ in line


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "permuted-mnst"], "unknown benchmark 'permuted-mnst'"),
    (["--method", "ewk"], "unknown method 'ewk'"),
    (["--steps-per-task", "0"], "steps-per-task must be a positive integer"),
    (["--tasks", "-1"], "tasks must be a positive integer"),
    (["--batch-size", "0"], "batch-size must be a positive integer"),
    (["--width", "0"], "width must be a positive integer"),
    (["--lr", "nan"], "lr must be a finite number"),
])
def test_user_errors_exit_2_with_one_message(tmp_path, capsys, args, message):
    code, _, err = run_cli(["run", "--out", str(tmp_path / "x"), *args], capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_invalid_yaml_names_file_and_line(tmp_path, capsys):
    conf = tmp_path / "bad.yaml"
    conf.write_text("tasks: 3\nlr: [0.1\n")
    code, _, err = run_cli(["run", str(conf)], capsys)
    assert code == 2 and "bad.yaml:" in err


def test_missing_data_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SUPERPOSE_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, _, err = run_cli(["run", "--benchmark", "permuted-mnist", "--out",
                            str(tmp_path / "r"), *SMALL], capsys)
    assert code == 2
    assert "train-images-idx3-ubyte" in err or "mnist" in err
    assert "--download" in err
    assert "Traceback" not in err


@pytest.mark.skipif(not MNIST.is_dir(), reason="the shared MNIST copy is not present")
def test_corrupt_mnist_file_stops_with_its_name(tmp_path):
    data = tmp_path / "data" / "mnist"
    shutil.copytree(MNIST, data)
    # Flip one byte of the labels' content (re-gzip so the file still decompresses).
    path = data / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[100] ^= 0x01
    path.write_bytes(gzip.compress(bytes(raw)))
    proc = subprocess.run(
        [sys.executable, "-m", "superpose.cli", "run", "--benchmark", "permuted-mnist",
         "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r"), *SMALL],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "t10k-labels-idx1-ubyte" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plot_and_report_refuse_non_runs(tmp_path, capsys):
    code, _, err = run_cli(["report", str(tmp_path)], capsys)
    assert code == 2 and "not a finished run folder" in err
    code, _, err = run_cli(["plot", str(tmp_path / "missing")], capsys)
    assert code == 2 and "not a folder" in err


def test_out_folder_must_be_new(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    code, _, err = run_cli(["run", "--out", str(tmp_path), *SMALL], capsys)
    assert code == 2 and "not empty" in err


def test_help_lists_method_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ["--context-schedule", "--learn-context", "--steps-per-task", "--resume"]:
        assert opt in out
