"""``boundary_eval: sparse``: the same training, fewer evaluations at the task boundaries."""

import json

import pytest

from superpose import training
from superpose.config import resolve
from superpose.errors import ConfigError
from superpose.evaluation import average_last_k, learning_accuracies

BASE = {"benchmark": "permuted-digits", "method": "psp-binary", "tasks": 4, "steps_per_task": 8,
        "eval_every": 4, "threads": 1, "optimizer": "sgd", "lr": 0.05}


def matrix_of(folder):
    """The rows of metrics.jsonl's matrix records, in order."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [r["accuracies"] for r in map(json.loads, lines) if r["kind"] == "matrix"]


def test_sparse_rows_hold_task_0_the_new_task_and_the_full_last_row(tmp_path):
    training.run(resolve(BASE), tmp_path / "all", progress=False)
    training.run(resolve({**BASE, "boundary_eval": "sparse"}), tmp_path / "sparse",
                 progress=False)
    full, sparse = matrix_of(tmp_path / "all"), matrix_of(tmp_path / "sparse")
    assert len(sparse) == 4
    for i, row in enumerate(sparse[:-1]):
        kept = {0, i}
        assert [j for j, v in enumerate(row) if v is not None] == sorted(kept)
        for j in kept:  # evaluation changes nothing in training: the same numbers
            assert row[j] == full[i][j]
    assert sparse[-1] == full[-1] and None not in sparse[-1]
    assert learning_accuracies(sparse) == learning_accuracies(full)
    assert average_last_k(sparse, 2) == average_last_k(full, 2)
    curve = json.loads((tmp_path / "sparse" / "summary.json").read_text())["first_task_curve"]
    assert curve == json.loads((tmp_path / "all" / "summary.json").read_text())[
        "first_task_curve"]


def test_unknown_boundary_eval_is_a_config_error():
    with pytest.raises(ConfigError, match="sparse"):
        resolve({**BASE, "boundary_eval": "some"})
