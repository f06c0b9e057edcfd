"""Metric functions against matrices computed by hand."""

import math

import pytest

from superpose import evaluation as ev

NAN = None
# A[i][j]: accuracy on task j after training task i (3 tasks).
A = [
    [0.90, NAN, NAN],
    [0.70, 0.80, NAN],
    [0.60, 0.75, 0.95],
]


def test_final_and_average():
    assert ev.final_accuracies(A) == [0.60, 0.75, 0.95]
    assert ev.average_accuracy(A) == pytest.approx((0.60 + 0.75 + 0.95) / 3)


def test_average_last_k():
    assert ev.average_last_k(A, 2) == pytest.approx((0.75 + 0.95) / 2)
    assert ev.average_last_k(A, 10) == pytest.approx((0.60 + 0.75 + 0.95) / 3)
    with pytest.raises(ValueError):
        ev.average_last_k(A, 0)
    # A run in progress (or just extended): the last k of the tasks evaluated so far, not the
    # last k columns, which are not reached yet.
    partial = [A[0] + [NAN] * 3, A[1] + [NAN] * 3]
    assert ev.average_last_k(partial, 2) == pytest.approx((0.70 + 0.80) / 2)
    assert ev.average_last_k(partial, 1) == pytest.approx(0.80)
    assert math.isnan(ev.average_last_k([[NAN, NAN]], 2))


def test_learning_accuracies_are_the_diagonal():
    assert ev.learning_accuracies(A) == [0.90, 0.80, 0.95]


def test_learned_last_k_is_the_end_of_the_diagonal():
    assert ev.learned_last_k(A, 2) == pytest.approx((0.80 + 0.95) / 2)
    assert ev.learned_last_k(A, 10) == pytest.approx((0.90 + 0.80 + 0.95) / 3)
    # what the later tasks took from the last 2: (0.75 + 0.95) / 2 - (0.80 + 0.95) / 2
    assert ev.average_last_k(A, 2) - ev.learned_last_k(A, 2) == pytest.approx(-0.025)
    with pytest.raises(ValueError):
        ev.learned_last_k(A, 0)
    partial = [A[0] + [NAN] * 3, A[1] + [NAN] * 3]  # two tasks trained of five
    assert ev.learned_last_k(partial, 10) == pytest.approx((0.90 + 0.80) / 2)
    assert math.isnan(ev.learned_last_k([[NAN]], 1))


def test_backward_transfer_by_hand():
    # ((0.60 - 0.90) + (0.75 - 0.80)) / 2 = -0.175
    assert ev.backward_transfer(A) == pytest.approx(-0.175)
    assert ev.backward_transfer([[0.5]]) == 0.0


def test_forgetting_uses_the_best_earlier_accuracy():
    # Task 0 peaked at 0.90 then ended at 0.60; task 1 peaked at 0.80, ended at 0.75.
    B = [[0.50, NAN, NAN], [0.90, 0.80, NAN], [0.60, 0.75, 0.95]]
    assert ev.forgetting(B) == pytest.approx([0.30, 0.05])
    assert ev.average_forgetting(B) == pytest.approx(0.175)


def test_missing_entries_are_nan():
    a = ev.as_array(A)
    assert math.isnan(a[0, 1]) and a[2, 1] == 0.75


# ------------------------------------------------------------- evaluating many tasks


def _method(name: str, **over):
    from superpose import training
    from superpose.config import resolve

    cfg = resolve({"benchmark": "permuted-digits", "tasks": 4, "steps_per_task": 20,
                   "method": name, "threads": 1, **over})
    stream = training.build_stream(cfg)
    return training.build_method(cfg, stream), stream


@pytest.mark.parametrize("name", ["psp-binary", "psp-complex", "psp-rotation", "standard",
                                  "multihead"])
@pytest.mark.parametrize("batch_size", [7, 1000])
def test_evaluate_tasks_equals_the_per_task_loop(name, batch_size, monkeypatch):
    import torch

    method, stream = _method(name)
    with torch.no_grad():  # move the weights off their initialisation
        for p in method.model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    method.model.train()
    monkeypatch.setattr(ev, "MIX_ROWS", 64)  # several passes over the 297 test images
    tasks = [3, 0, 2]
    loop = [ev.evaluate(method, stream, t, "test", batch_size) for t in tasks]
    for mix in (None, True, False):
        got = ev.evaluate_tasks(method, stream, tasks, "test", batch_size, mix=mix)
        assert got == pytest.approx(loop)
    assert method.model.training  # modes restored
    assert method.mixes_tasks == name.startswith("psp")


def test_predict_tasks_default_loops_over_tasks():
    import torch

    from superpose.methods.base import Method

    method, stream = _method("multihead")
    x, _ = next(stream.eval_batches(0, "test", 12))
    tasks = torch.tensor([0, 1, 2, 3] * 3)
    method.model.eval()
    got = Method.predict_tasks(method, x, tasks)
    for t in range(4):
        method.prepare_eval(t)
        torch.testing.assert_close(got[tasks == t], method.predict(x[tasks == t], t))


def test_evaluate_tasks_with_a_test_set_per_task(monkeypatch):
    from superpose.streams.base import Split

    method, stream = _method("psp-binary")
    test = stream.splits["test"]
    own = {t: Split(test.x[t * 50:t * 50 + 40 + t], test.y[t * 50:t * 50 + 40 + t])
           for t in range(4)}  # different images and sizes per task
    monkeypatch.setattr(stream, "task_data", lambda task, split: own[task])
    tasks = [1, 3, 2]
    loop = [ev.evaluate(method, stream, t, "test", 16) for t in tasks]
    assert ev.evaluate_tasks(method, stream, tasks, "test", 16, mix=True) == pytest.approx(loop)
