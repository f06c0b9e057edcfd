"""CLNP (methods/clnp.py): the partition, bit-exact freezing under any optimiser, single and
multi head, conv nets, growing, fine-tuning, the grid, checkpoints and an end-to-end run."""

import csv
import logging

import pytest
import torch
import torch.nn as nn

from superpose import models, plots_clnp, pruning
from superpose.config import resolve
from superpose.errors import ConfigError
from superpose.methods.base import MethodContext
from superpose.methods.clnp import Clnp, task_line
from superpose.streams.base import Split, Stream
from superpose.training import run


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one thread is faster, and immune to a busy machine's oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ToyStream(Stream):
    """Permuted 4x4 inputs labelled by a fixed random linear map (4 classes): fast and
    learnable."""

    name = "toy"

    def __init__(self, tasks: int = 3, validation: bool = True, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.num_tasks = tasks
        self.input_shape = (1, 4, 4)
        self.num_classes = 4
        w = torch.randn(16, 4, generator=g)

        def make(n: int) -> Split:
            x = torch.randn(n, 1, 4, 4, generator=g)
            return Split(x, (x.flatten(1) @ w).argmax(1))

        self.splits = {"train": make(256), "test": make(64)}
        if validation:
            self.splits["val"] = make(96)
        self.perms = [torch.arange(16)] + [torch.randperm(16, generator=g)
                                           for _ in range(tasks - 1)]

    def task_data(self, task: int, split: str) -> Split:
        self.check_task(task)
        return self.splits[split]

    def transform(self, x, task, step):
        return x.flatten(1)[:, self.perms[task]].reshape(x.shape)


def mlp():
    return models.create("mlp", in_features=16, hidden=[24, 24], classes=4)


def convnet():
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 12), nn.ReLU(),
                         nn.Linear(12, 4))


def make(head="single", build=mlp, stream=None, log=lambda _: None, **opts):
    opts.setdefault("l1", [1e-3])
    opts.setdefault("margin", 0.03)
    ctx = MethodContext(stream=stream or ToyStream(), build_model=build, lr=0.01, batch_size=32,
                        steps_per_task=30, log=log)
    return Clnp(ctx, Clnp.Options(head=head, **opts))


def train(m, task, steps=30, optimizer=None, seed=0):
    m.begin_task(task)
    if optimizer is not None:
        m.optimizer = optimizer(m.trainable_parameters())
    g = torch.Generator().manual_seed(seed + task)
    for s in range(steps):
        x, y = m.ctx.stream.train_batch(task, s, 32, g)
        m.train_step(x, y, task, s)
    m.end_task(task)


def logits(m, x, task):
    m.model.eval()
    out = m.predict(x, task).clone()
    m.model.train()
    return out


OPTIMISERS = {
    "adamw-decay": lambda p: torch.optim.AdamW(p, lr=0.02, weight_decay=0.5),
    "adam-l2": lambda p: torch.optim.Adam(p, lr=0.02, weight_decay=0.1),
    "sgd-momentum-decay": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1),
}


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("head", ["single", "multi"])
@pytest.mark.parametrize("opt", sorted(OPTIMISERS))
def test_earlier_tasks_are_bit_identical_under_any_optimiser(head, opt, path):
    torch.manual_seed(0)
    m = make(head, train_path=path)
    probe = torch.randn(40, 1, 4, 4)
    train(m, 0)
    assert (~m.used[-1]).any(), "pruning must leave free units for the next task"
    before = logits(m, probe, 0)
    weights = [m.net.weight_layer(l).weight.detach().clone() for l in range(2)]
    used = [u.clone() for u in m.used]
    train(m, 1, optimizer=OPTIMISERS[opt])
    train(m, 2, optimizer=OPTIMISERS[opt])
    assert torch.equal(logits(m, probe, 0), before)
    for l in range(2):
        w = m.net.weight_layer(l).weight
        assert torch.equal(w[used[l]], weights[l][used[l]])  # active rows never moved
        assert not torch.equal(w, weights[l])  # ... while the free rows did train


def test_the_restore_is_what_stops_weight_decay():
    """Control: with gradient masking alone, decoupled weight decay moves frozen weights."""
    torch.manual_seed(0)
    m = make()
    probe = torch.randn(40, 1, 4, 4)
    train(m, 0)
    before = logits(m, probe, 0)
    m.after_step = lambda task, step: None  # no restore
    train(m, 1, optimizer=OPTIMISERS["adamw-decay"])
    assert not torch.equal(logits(m, probe, 0), before)


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_frozen_entries_get_no_gradient_and_no_adam_moment(path):
    torch.manual_seed(0)
    m = make(l1=[1e-2], train_path=path)
    train(m, 0)
    m.begin_task(1)
    x, y = m.ctx.stream.train_batch(1, 0, 32, torch.Generator().manual_seed(0))
    m.optimizer.zero_grad()
    m.loss(x, y, 1, 0).backward()
    m.before_optimizer_step(1, 0)
    for l in range(2):
        grad = m.net.weight_layer(l).weight.grad
        assert bool((grad[m.used[l]] == 0).all())  # also no L1 gradient on frozen rows
        assert bool((grad[~m.used[l]] != 0).any())
    out = m.net.heads[0][0]
    assert bool((out.weight.grad[:, m.used[-1]] == 0).all())
    assert bool((out.bias.grad == 0).all())  # the shared output bias belongs to task 0
    m.optimizer.step()
    m.after_step(1, 0)
    state = m.optimizer.state[m.net.weight_layer(1).weight]
    assert bool((state["exp_avg"][m.used[1]] == 0).all())


@pytest.mark.parametrize("phase", ["train", "finetune"])
@pytest.mark.parametrize("head", ["single", "multi"])
def test_sparse_training_pass_matches_the_dense_one(head, phase):
    """The row-sparse pass computes the same loss and, once frozen entries are masked, the same
    gradients as the dense pass; its frozen rows get an exact zero gradient before any mask.
    "train": task 1 in task 0's free units; "finetune": task 0's kept units after pruning."""
    torch.manual_seed(0)
    m = make(head, l1=[3e-3])
    train(m, 0)
    assert all(bool(u.any()) and not bool(u.all()) for u in m.used)
    if phase == "train":
        task = 1
        m.begin_task(1)
        trains = [~u for u in m.used]
    else:
        task = m.current = 0
        trains = m.new
    x, y = m.ctx.stream.train_batch(task, 0, 32, torch.Generator().manual_seed(0))
    params = list(m.model.parameters())
    out = {}
    for path in ("sparse", "dense"):
        m.options.train_path = path
        m._set_phase(phase, task)
        assert (m._rows is not None) == (path == "sparse")
        m.model.zero_grad(set_to_none=True)
        loss = m.loss(x, y, task, 0)
        loss.backward()
        if path == "sparse":
            for l in range(2):
                g = m.net.weight_layer(l).weight.grad
                assert bool((g[~trains[l]] == 0).all()), "frozen rows were not skipped"
                assert bool((g[trains[l]] != 0).any())
        m.before_optimizer_step(task, 0)
        out[path] = (loss.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                                     for p in params])
    torch.testing.assert_close(out["sparse"][0], out["dense"][0], rtol=1e-6, atol=1e-6)
    for gs, gd in zip(out["sparse"][1], out["dense"][1], strict=True):
        torch.testing.assert_close(gs, gd, rtol=1e-5, atol=1e-6)


def test_auto_train_path_picks_layers_by_their_free_fraction():
    torch.manual_seed(0)
    m = make()  # hidden layers of 24 units
    m.used[0][:20] = True  # 4 / 24 free: sparse
    m.used[1][:4] = True  # 20 / 24 free: dense
    rows = m._train_rows("train")
    assert rows is not None and rows[1] is None
    assert rows[0].train.tolist() == list(range(20, 24))
    assert rows[0].const.tolist() == list(range(20))
    m.used[0][:] = False
    assert m._train_rows("train") is None  # nothing to gain: the dense pass
    m.options.train_path = "sparse"
    rows = m._train_rows("train")
    assert rows[1].const is None  # single head: the task reads only its own final units
    assert make(build=convnet, train_path="sparse")._train_rows("train") is None  # conv net


@pytest.mark.parametrize("head", ["single", "multi"])
def test_partition_after_pruning(head):
    torch.manual_seed(1)
    m = make(head)
    train(m, 0)
    train(m, 1)
    used0, used1 = m.used
    w2 = m.net.weight_layer(1).weight
    assert bool((w2[used1][:, ~used0] == 0).all())  # interference weights are zero
    assert bool((w2[used1][:, used0] != 0).any())
    if head == "multi":
        for t in (0, 1):
            assert bool((m.net.heads[t][0].weight[:, ~used1] == 0).all())
    else:
        own = m.task_units
        assert not bool((own[0] & own[1]).any())  # the final hidden layer is never shared
        assert bool(((own[0] | own[1]) == used1).all())
        assert m.summary()["capacity"]["reused_units"][1] == [0, 0]
    # begin_task re-initialises every free row, and nothing else
    rows_before = w2.detach().clone()
    m.begin_task(2)
    assert torch.equal(w2[used1], rows_before[used1])
    assert not torch.equal(w2[~used1], rows_before[~used1])


def test_single_head_masks_and_multi_head_heads():
    torch.manual_seed(0)
    single, multi = make("single"), make("multi")
    assert single.count_parameters()["per_task"] == 0
    p = multi.count_parameters()
    assert p["per_task"] == 24 * 4 + 4 and p["total"] == p["shared"] + 3 * p["per_task"]
    train(single, 0)
    out = single.net.heads[0][0]
    bias = out.bias.detach().clone()
    train(single, 1)
    assert torch.equal(out.bias, bias)  # shared output bias frozen after task 0
    x = torch.randn(8, 1, 4, 4)
    single.model.eval()
    h = single.net.hidden_output(x, 1, None) * single.task_units[1].float()  # (B, 24)
    expected = h @ out.weight.T + out.bias
    assert torch.allclose(single.predict(x, 1), expected, atol=1e-5)  # Fig. 2, right


@pytest.mark.parametrize("head", ["single", "multi"])
def test_conv_net_with_batchnorm_is_bit_identical(head):
    torch.manual_seed(0)
    m = make(head, build=convnet, l1=[1e-3], margin=0.05)
    assert m.net.in_repeat == [1, 4, 1]  # 6 channels x 2 x 2 positions flattened
    probe = torch.randn(16, 1, 4, 4)
    train(m, 0)
    before = logits(m, probe, 0)
    bn = m.net.norms(0)[0]
    stats, used = bn.running_mean.clone(), m.used[0].clone()
    train(m, 1, optimizer=OPTIMISERS["adamw-decay"])
    assert torch.equal(logits(m, probe, 0), before)
    assert torch.equal(bn.running_mean[used], stats[used])  # frozen channels' statistics
    assert not torch.equal(bn.running_mean, stats)
    assert m.summary()["capacity"]["layers"] == ["conv 1", "dense 2"]


def test_depleted_layer_is_reported_or_grown(caplog):
    torch.manual_seed(0)
    keep_all = dict(theta_grid=[-1.0])  # keep every unit: task 0 fills both layers
    m = make(**keep_all)
    train(m, 0)
    with caplog.at_level(logging.WARNING, logger="superpose.methods.clnp"):
        train(m, 1)
    assert "network is fixed" in caplog.text
    events = m.summary()["capacity"]["depleted"]
    assert {e["layer"] for e in events} == {"dense 1", "dense 2"}

    torch.manual_seed(0)
    g = make(grow=8, **keep_all)
    probe = torch.randn(20, 1, 4, 4)
    train(g, 0)
    before = logits(g, probe, 0)
    train(g, 1)
    assert [g.net.units(0), g.net.units(1)] == [32, 32]
    assert g.net.heads[0][0].weight.shape == (4, 32)
    assert torch.allclose(logits(g, probe, 0), before, atol=1e-6)
    assert g.summary()["capacity"]["units"] == [[24, 32], [24, 32]]
    assert all(e["action"] == "grown by 8 units" for e in g.summary()["capacity"]["depleted"])


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_finetuning_keeps_the_partition(path):
    torch.manual_seed(0)
    m = make(finetune_epochs=1.0, finetune_lr=1e-3, train_path=path)
    probe = torch.randn(20, 1, 4, 4)
    train(m, 0)
    assert m.records[0]["finetune_steps"] == 8  # 256 images / batch 32
    before = logits(m, probe, 0)
    train(m, 1)
    assert torch.equal(logits(m, probe, 0), before)
    used0, used1 = m.used
    assert bool((m.net.weight_layer(1).weight[used1][:, ~used0] == 0).all())


def test_grid_search_keeps_the_sparsest_within_margin():
    torch.manual_seed(0)
    lines: list[str] = []
    m = make(grid_lr=[0.01, 0.002], grid_l1_scale=[1.0, 3.0], margin=0.05, log=lines.append)
    train(m, 0)
    grid = m.summary()["clnp_grid"]
    # progress: a header, then one line per candidate as it finishes, with its accuracy
    assert lines[0] == ("clnp: grid on task 0: 4 candidates (lr [0.01, 0.002] x L1 scale "
                        "[1.0, 3.0]), 30 steps each")
    assert len(lines) == 6 and lines[-1].startswith("clnp: task 0 kept dense 1 +")  # then pruning
    for i, (line, g) in enumerate(zip(lines[1:5], grid, strict=True)):
        assert line.startswith(f"clnp: grid candidate {i + 1}/4 (lr {g['lr']:g}, L1 scale "
                               f"{g['l1_scale']:g}): validation "
                               f"{100 * g['val_unpruned']:.2f} % before pruning (")
    assert len(grid) == 4 and sum(g["chosen"] for g in grid) == 1
    chosen = next(g for g in grid if g["chosen"])
    assert (m.lr, m.l1_scale) == (chosen["lr"], chosen["l1_scale"])
    ok = [g for g in grid if g["sparsity"] is not None]
    assert chosen["sparsity"] == max(g["sparsity"] for g in ok)
    train(m, 1)  # the grid runs on the first task only
    assert len(m.summary()["clnp_grid"]) == 4
    assert len([x for x in lines if x.startswith("clnp: grid")]) == 5
    assert lines[-1].startswith("clnp: task 1 kept ")


def test_growing_a_conv_layer_widens_its_batchnorm_and_keeps_task_0():
    """--grow on a conv layer followed by BatchNorm: the BatchNorm widens with it, the old
    channels keep their affine parameters and running statistics bit for bit while the new
    ones train task 1, and task 0's logits survive the growth and task 1's training."""
    torch.manual_seed(0)
    g = make(build=convnet, grow=3, theta_grid=[-1.0])  # keep every unit: task 0 fills both
    probe = torch.randn(20, 1, 4, 4)
    train(g, 0)
    before = logits(g, probe, 0)
    (bn,) = g.net.norms(0)
    old = {k: getattr(bn, k).detach().clone()
           for k in ("weight", "bias", "running_mean", "running_var")}
    assert not torch.equal(old["running_mean"], torch.zeros(6))  # task 0 moved the statistics
    train(g, 1)
    (bn,) = g.net.norms(0)
    assert [g.net.units(0), g.net.units(1)] == [9, 15]
    assert bn.num_features == 9 and g.net.weight_layer(0).weight.shape == (9, 1, 3, 3)
    for k, v in old.items():
        assert torch.equal(getattr(bn, k)[:6], v), k  # frozen channels: bit for bit
    # the grown channels trained task 1 from a fresh BatchNorm's start
    assert not torch.equal(bn.running_mean[6:], torch.zeros(3))
    assert torch.allclose(logits(g, probe, 0), before, atol=1e-6)


def test_checkpoint_state_round_trip_with_a_grown_layer():
    torch.manual_seed(0)
    m = make(grow=4, theta_grid=[-1.0])
    train(m, 0)
    m.begin_task(1)  # depleted -> grown by 4 units, mid-task
    state, extra = m.model.state_dict(), m.extra_state()
    fresh = make(grow=4, theta_grid=[-1.0])
    fresh.load_extra_state(extra)
    fresh.model.load_state_dict(state)
    probe = torch.randn(10, 1, 4, 4)
    assert torch.equal(logits(fresh, probe, 0), logits(m, probe, 0))
    assert fresh.phase == "train" and fresh.current == 1
    assert [u.tolist() for u in fresh.used] == [u.tolist() for u in m.used]
    assert fresh.summary() == m.summary()


@pytest.mark.parametrize("order, layer", [("first", 0), ("last", 1)])
def test_theta_order_picks_the_layer_scanned_first(monkeypatch, order, layer):
    scans = []

    def spy(*args, **kwargs):
        scans.append(real(*args, **kwargs))
        return scans[-1]

    real = pruning.scan_thresholds
    monkeypatch.setattr(pruning, "scan_thresholds", spy)
    torch.manual_seed(0)
    train(make(theta_order=order), 0)
    (scan,) = scans
    start = scan.evaluations[0][0]
    changed = next(trial for trial, _ in scan.evaluations if trial != start)
    assert [i for i, (a, b) in enumerate(zip(start, changed, strict=True)) if a != b] == [layer]


def test_options_are_checked():
    with pytest.raises(ConfigError, match="head"):
        make("both")
    with pytest.raises(ConfigError, match="1 or 3 values"):
        make(l1=[1e-5, 1e-5])
    with pytest.raises(ConfigError, match="margin"):
        make(margin=-0.1)
    with pytest.raises(ConfigError, match="prunes every unit"):
        make(margin=2.0)


def test_a_margin_that_looks_like_a_percentage_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="superpose.methods.clnp"):
        make(margin=0.05)
    assert "percentage" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="superpose.methods.clnp"):
        make(margin=0.5)
    assert "up to 50 points" in caplog.text and "percentage" in caplog.text
    with pytest.raises(ConfigError, match="theta-order"):
        make(theta_order="middle")
    with pytest.raises(ConfigError, match="train-path"):
        make(train_path="fast")
    with pytest.raises(ConfigError, match="ReLU"):
        make(build=lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(),
                                         nn.Linear(8, 4)))


def test_depletion_note_names_each_layer_once_at_its_first_depletion():
    cap = {"depleted": [{"task": 26, "layer": "dense 2"}, {"task": 19, "layer": "dense 1"},
                        {"task": 20, "layer": "dense 1"}, {"task": 27, "layer": "dense 2"}]}
    assert plots_clnp.depletion_note([cap]) == ("depleted: dense 1 before task 20, dense 2 "
                                                "before task 27")
    assert plots_clnp.depletion_note([{"depleted": []}]) == ""


def test_task_line_reports_what_pruning_kept():
    record = {"task": 3, "val_unpruned": 0.978, "val_pruned": 0.97375, "finetune_steps": 1055,
              "layers": [{"name": "dense 1", "units": 2000, "used": 511, "new": 125,
                          "theta": 0.06049},
                         {"name": "dense 2", "units": 2000, "used": 333, "new": 70,
                          "theta": 0.7081}]}
    assert task_line(record) == (
        "clnp: task 3 kept dense 1 +125 (511/2000 used, θ 0.0605), dense 2 +70 (333/2000 "
        "used, θ 0.708); validation 97.80 % -> 97.38 % (pruned); fine-tuned 1055 steps")
    record["finetune_steps"] = 0
    assert task_line(record).endswith("(pruned)")


def test_end_to_end_on_permuted_digits(tmp_path, caplog):
    cfg = resolve({"benchmark": "permuted-digits", "method": "clnp", "tasks": 3,
                   "steps_per_task": 100, "width": 48, "eval_every": 100, "validation": 0.1,
                   "lr": 0.01, "l1": [1e-3], "margin": 0.02})
    lines = []
    summary = run(cfg, tmp_path, progress=False, log=lines.append)
    kept = [x for x in lines if x.startswith("clnp: task ")]  # one line per task, in order
    assert [x.split()[2] for x in kept] == ["0", "1", "2"]
    with open(tmp_path / "accuracy_matrix.csv") as f:
        rows = list(csv.reader(f))[1:]
    for j in range(3):  # the row is written after pruning: columns constant below the diagonal
        column = {r[1 + j] for r in rows[j:]}
        assert len(column) == 1
    digests = summary["clnp_logit_digests"]  # each task's logits, hashed after every task
    assert [sorted(d) for d in digests] == [["0"], ["0", "1"], ["0", "1", "2"]]
    assert digests[0]["0"] == digests[1]["0"] == digests[2]["0"]
    assert digests[1]["1"] == digests[2]["1"]
    cap = summary["capacity"]
    assert cap["tasks"] == [0, 1, 2] and len(cap["used_fraction"]) == 2
    assert cap["free_units"] == [48 - u[-1] for u in cap["used_units"]]
    assert all(0 < f <= 1 for f in cap["used_fraction"][1])
    assert summary["average_accuracy"] > 0.6
    png = plots_clnp.capacity_figure([tmp_path, tmp_path], tmp_path / "capacity.png")
    assert png.stat().st_size > 1000
    # `superpose plot` draws the capacity figure for CLNP runs too
    from superpose.plots import plot_runs
    from superpose.runs import load_run

    drawn = plot_runs([load_run(tmp_path)], tmp_path / "figs")
    assert (tmp_path / "figs" / f"capacity_{tmp_path.name}.png") in drawn
    # without a validation split the scan falls back to the training data, and says so
    cfg = resolve({"benchmark": "permuted-digits", "method": "clnp", "tasks": 1,
                   "steps_per_task": 10, "width": 16})
    with caplog.at_level(logging.WARNING, logger="superpose.methods.clnp"):
        run(cfg, tmp_path / "noval", progress=False)
    assert "--validation 0.1" in caplog.text


def test_a_nearly_depleted_layer_is_warned_about(caplog):
    """A layer with free units, but fewer than 1 % of its width, gets a warning before the next
    task; one with enough free units, or none (the depleted event instead), does not."""
    torch.manual_seed(0)
    m = make()
    train(m, 0)
    m.used[0][:] = False
    m.used[1][:] = True
    m.used[1][0] = False  # dense 2: 1 free unit of 24 (4 %): not yet low
    with caplog.at_level(logging.WARNING, logger="superpose.methods.clnp"):
        m._check_capacity(1)
    assert caplog.text == ""
    wide = m.net.units(1)
    m.net.units = lambda l: 200 if l == 1 else wide  # the same 1 free unit of 200 (0.5 %)
    with caplog.at_level(logging.WARNING, logger="superpose.methods.clnp"):
        m._check_capacity(1)
    assert "dense 2 has only 1 free units of 200 before task 1" in caplog.text
    assert "dense 1" not in caplog.text
    assert m.summary()["capacity"]["depleted"] == []
