"""Baselines: a smoke run of every registered method, exact resume, and hand-checked maths of
multi-head, EWC, SI, single-task and joint training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from superpose import checkpoint
from superpose.config import resolve
from superpose.errors import ConfigError
from superpose.methods import METHODS, MethodContext
from superpose.methods.ewc import EWC, diagonal_fisher
from superpose.methods.joint import Joint
from superpose.methods.multihead import MultiHead
from superpose.methods.si import SI
from superpose.methods.single_task import SingleTask
from superpose.streams.base import Split, Stream
from superpose.training import build_method, build_stream, run

#: Options a method needs to run at all in a 2 x 20-step smoke run (add new methods here).
SMOKE_OPTIONS: dict[str, dict] = {"ewc": {"fisher_samples": 50}}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread, above all on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ToyStream(Stream):
    """``tasks`` tasks of 2x2 one-channel inputs; every pixel of task t's inputs is t + noise,
    so a drawn batch tells which task it came from."""

    name = "toy"

    def __init__(self, tasks: int = 3, n: int = 64, classes: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.num_tasks, self.input_shape, self.num_classes = tasks, (1, 2, 2), classes
        self.data = [Split(t + 0.1 * torch.randn(n, 1, 2, 2, generator=g),
                           torch.randint(classes, (n,), generator=g)) for t in range(tasks)]

    def task_data(self, task: int, split: str) -> Split:
        return self.data[task]


def toy_method(cls: type, stream: Stream, build=None, optimizer: str = "adam", lr: float = 0.05,
               **options):
    """An instance of method ``cls`` on ``stream`` with a small MLP (or ``build``)."""
    torch.manual_seed(0)
    if build is None:
        def build():
            return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    ctx = MethodContext(stream=stream, build_model=build, lr=lr, optimizer=optimizer,
                        batch_size=16)
    return cls(ctx, cls.Options(**options))


def train(method, task: int, steps: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    method.begin_task(task)
    for s in range(steps):
        x, y = method.ctx.stream.train_batch(task, s, 16, g)
        method.train_step(x, y, task, s)
    method.end_task(task)


# ---- every registered method ------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_runs_end_to_end(name: str, tmp_path: Path):
    cfg = resolve({"benchmark": "permuted-digits", "method": name, "tasks": 2,
                   "steps_per_task": 20, "eval_every": 10, **SMOKE_OPTIONS.get(name, {})})
    run(cfg, tmp_path, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["method"] == name and len(summary["final_accuracy"]) == 2
    assert all(0.0 <= a <= 1.0 for a in summary["final_accuracy"])


@pytest.mark.parametrize("name", METHODS.names())
def test_checkpoint_mid_task_resumes_exactly(name: str, tmp_path: Path):
    """What training.run does on --resume: extra state, model, a new optimiser, its state."""
    cfg = resolve({"method": name, "tasks": 2, "steps_per_task": 6, **SMOKE_OPTIONS.get(name, {})})
    stream = build_stream(cfg)
    torch.manual_seed(0)
    a = build_method(cfg, stream)
    g = torch.Generator().manual_seed(1)

    def steps(method, task: int, first: int, n: int, gen: torch.Generator) -> None:
        for s in range(first, first + n):
            x, y = stream.train_batch(task, s, 8, gen)
            method.train_step(x, y, task, s)

    a.begin_task(0)
    steps(a, 0, 0, 6, g)
    a.end_task(0)
    a.begin_task(1)
    steps(a, 1, 6, 3, g)
    path = tmp_path / "ckpt.safetensors"
    a.before_checkpoint()  # as the trainer does (PSP unfolds)
    checkpoint.save(path, model=a.model, optimizer=a.optimizer, extra=a.extra_state(),
                    rng={"batches": g.get_state()}, meta={})
    groups, header = checkpoint.load(path)
    torch.manual_seed(123)  # a differently initialised method, overwritten by the checkpoint
    b = build_method(cfg, stream)
    b.load_extra_state(groups["extra"])
    b.model.load_state_dict(groups["model"])
    b.optimizer = b.make_optimizer()
    checkpoint.restore_optimizer(b.optimizer, groups["optim"], header)
    g_b = torch.Generator()
    g_b.set_state(groups["rng"]["batches"])
    steps(a, 1, 9, 3, g)
    steps(b, 1, 9, 3, g_b)
    a.end_task(1)
    b.end_task(1)
    for task in (0, 1):
        x, _ = next(stream.eval_batches(task, "test", 50))
        a.prepare_eval(task)
        pa = a.predict(x, task)
        b.prepare_eval(task)
        torch.testing.assert_close(b.predict(x, task), pa, rtol=0, atol=1e-6)


# ---- multi-head -------------------------------------------------------------------------------
def test_multihead_training_task_1_leaves_head_0_alone():
    m = toy_method(MultiHead, ToyStream())
    assert len(m.heads.heads) == 3
    train(m, 0, 10)
    head0 = [p.detach().clone() for p in m.heads.heads[0].parameters()]
    head1 = [p.detach().clone() for p in m.heads.heads[1].parameters()]
    trunk = m.model[1].weight.detach().clone()
    train(m, 1, 10)
    assert all(torch.equal(a, b) for a, b in zip(head0, m.heads.heads[0].parameters(), strict=True))
    assert not torch.equal(head1[0], m.heads.heads[1].weight)
    assert not torch.equal(trunk, m.model[1].weight)
    x = torch.randn(5, 1, 2, 2)
    assert not torch.equal(m.predict(x, 0), m.predict(x, 1))
    counts = m.count_parameters()
    assert counts["per_task"] == 8 * 3 + 3 and counts["shared"] == 4 * 8 + 8
    assert counts["total"] == counts["shared"] + 3 * counts["per_task"]


# ---- EWC --------------------------------------------------------------------------------------
def test_ewc_penalty_is_half_lambda_fisher_weighted_squares():
    m = toy_method(EWC, ToyStream(), build=lambda: nn.Linear(2, 2), ewc_lambda=3.0)
    w, b = m.model.weight, m.model.bias
    with torch.no_grad():
        w.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        b.copy_(torch.tensor([0.5, -0.5]))
    m.fisher = {"weight": torch.tensor([[1.0, 0.0], [2.0, 0.5]]), "bias": torch.tensor([4.0, 1.0])}
    m.anchor = {"weight": torch.tensor([[0.0, 2.0], [1.0, 2.0]]), "bias": torch.tensor([0.0, 0.0])}
    # ½·3·(1·1² + 0 + 2·2² + 0.5·2² + 4·0.5² + 1·0.5²) = 1.5·(1 + 8 + 2 + 1 + 0.25) = 18.375
    assert m.penalty().item() == pytest.approx(18.375)


@pytest.mark.parametrize("cls", [EWC, SI])
def test_closed_form_penalty_gradient_is_autograd_of_the_penalised_loss(cls):
    """EWC and SI add their penalty's gradient in closed form after the task loss's backward:
    one SGD step must equal −lr ∇(CE + penalty) by autograd, and the step returns CE + penalty."""
    lr = 0.1
    opts = {"ewc_lambda": 3.0} if cls is EWC else {"si_c": 2.0}
    m = toy_method(cls, ToyStream(), build=lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 3)),
                   optimizer="sgd", lr=lr, **opts)
    g = torch.Generator().manual_seed(1)
    weights = {n: torch.rand(p.shape, generator=g) for n, p in m.model.named_parameters()}
    anchors = {n: p.detach() + torch.randn(p.shape, generator=g)
               for n, p in m.model.named_parameters()}
    if cls is EWC:
        m.fisher, m.anchor = weights, anchors
    else:
        m.importance, m.anchor = weights, anchors
    data = m.ctx.stream.task_data(1, "train")
    x, y = data.x[:16], data.y[:16]
    before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    full = nn.functional.cross_entropy(m.model(x), y) + m.penalty()
    grads = dict(zip(before, torch.autograd.grad(full, list(m.model.parameters())), strict=True))
    m.begin_task(1)
    returned = m.train_step(x, y, 1, 0)
    assert float(returned) == pytest.approx(full.item(), rel=1e-6)
    for n, p in m.model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] - lr * grads[n], rtol=1e-5, atol=1e-6)


def test_fisher_of_softmax_regression_matches_the_analytic_expectation():
    """For logits Wx + b: E_{c~p} (∂ log p_c / ∂W_kj)² = p_k (1 − p_k) x_j² (bias: without x)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    x = torch.randn(20, 3)
    fisher = diagonal_fisher(model, x, "exact")
    p = torch.softmax(model(x), dim=1).detach()  # (N, K)
    v = p * (1 - p)  # (N, K)
    torch.testing.assert_close(fisher["weight"], (v.T @ x.pow(2)) / 20, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fisher["bias"], v.mean(0), rtol=1e-5, atol=1e-7)
    # Labels drawn from the model converge on the same expectation.
    many = x.repeat(400, 1)  # (8000, 3)
    sampled = diagonal_fisher(model, many, "sample", torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampled["bias"], v.mean(0), rtol=0.1, atol=0.0)
    # The released code of SI sums the classes unweighted: Σ_c (δ_ck − p_k)² = 1 − 2 p_k + K p_k².
    classes = diagonal_fisher(model, x, "classes")
    u = 1 - 2 * p + 4 * p.pow(2)  # (N, K), K = 4
    torch.testing.assert_close(classes["weight"], (u.T @ x.pow(2)) / 20, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(classes["bias"], u.mean(0), rtol=1e-5, atol=1e-7)


def test_fisher_of_an_mlp_matches_a_per_example_autograd_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4))
    x = torch.randn(6, 3)
    fisher = diagonal_fisher(model, x, "exact")
    expect = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for xi in x:
        logp = torch.log_softmax(model(xi[None]), dim=1)[0]  # (K,)
        for c in range(4):
            grads = torch.autograd.grad(logp[c], list(model.parameters()), retain_graph=True)
            for (n, _), gr in zip(model.named_parameters(), grads, strict=True):
                expect[n] += logp[c].exp().detach() * gr.pow(2) / len(x)
    for n in expect:
        torch.testing.assert_close(fisher[n], expect[n], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("labels", ["exact", "sample", "classes"])
def test_closed_form_linear_fisher_equals_per_example_gradients(labels):
    """(w δ²)ᵀ h² per Linear layer is Σ w g² of the per-example gradients (vmap), also with
    Flatten, eval-mode Dropout, a layer without bias and a frozen layer (which gets no entry)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(7, 6, bias=False), nn.Tanh(), nn.Linear(6, 5))
    model[1].bias.requires_grad_(False)
    x = torch.randn(9, 3, 4)
    fast = diagonal_fisher(model, x, labels, torch.Generator().manual_seed(3), backend="linear")
    slow = diagonal_fisher(model, x, labels, torch.Generator().manual_seed(3), backend="vmap")
    assert fast.keys() == slow.keys() and "1.bias" not in fast
    for n in slow:
        assert slow[n].abs().sum() > 0
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-5, atol=1e-8)
    assert model.training  # the train/eval mode is restored


def test_fisher_backend_auto_falls_back_to_vmap_where_the_closed_form_does_not_hold():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    x = torch.randn(4, 1, 4, 4)
    with pytest.raises(ValueError, match="linear Fisher backend"):
        diagonal_fisher(conv, x, backend="linear")
    torch.testing.assert_close(diagonal_fisher(conv, x), diagonal_fisher(conv, x, backend="vmap"))
    shared = nn.Linear(3, 3)  # one layer called twice: its gradient is a sum of two outer products
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(ValueError, match="called once"):
        diagonal_fisher(twice, torch.randn(4, 3))
    with pytest.raises(ValueError, match="backend"):
        diagonal_fisher(twice, torch.randn(4, 3), backend="exact")


def test_ewc_accumulates_fishers_and_anchors_at_the_last_task():
    m = toy_method(EWC, ToyStream(), fisher_samples=32)
    train(m, 0, 5)
    f0 = {n: f.clone() for n, f in m.fisher.items()}
    train(m, 1, 5)
    x1 = m.fisher_inputs(1, torch.Generator().manual_seed(m.ctx.seed + 1))
    f1 = diagonal_fisher(m.model, x1, "exact")
    for n, p in m.model.named_parameters():
        torch.testing.assert_close(m.fisher[n], f0[n] + f1[n])
        assert torch.equal(m.anchor[n], p.detach())


def test_ewc_fisher_over_more_inputs_than_the_task_has_uses_them_all_and_checks_labels():
    m = toy_method(EWC, ToyStream(), fisher_samples=10**9, fisher_labels="classes")
    x = m.fisher_inputs(0, torch.Generator().manual_seed(0))
    assert len(x) == len(m.ctx.stream.task_data(0, "train"))
    train(m, 0, 3)
    expect = diagonal_fisher(m.model, x, "classes")  # the order of the inputs does not matter
    for n, f in m.fisher.items():
        torch.testing.assert_close(f, expect[n], rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="fisher-labels"):
        toy_method(EWC, ToyStream(), fisher_labels="empirical")


# ---- SI ---------------------------------------------------------------------------------------
def test_si_path_integral_on_two_sgd_steps():
    """With SGD, Δθ = −lr·g, so ω = −Σ g·Δθ = lr Σ g²; then Ω = ω / (Δ² + ξ) (eqs. 3, 5)."""
    stream = ToyStream(tasks=2)
    lr, c, xi = 0.5, 2.0, 0.1
    m = toy_method(SI, stream, build=lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 3)),
                   optimizer="sgd", lr=lr, si_c=c, si_xi=xi)
    start = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    data = stream.task_data(0, "train")
    batches = [(data.x[:8], data.y[:8]), (data.x[8:16], data.y[8:16])]
    g_sq = {n: torch.zeros_like(p) for n, p in start.items()}
    m.begin_task(0)
    for s, (x, y) in enumerate(batches):
        loss = nn.functional.cross_entropy(m.model(x), y)
        grads = torch.autograd.grad(loss, list(m.model.parameters()))
        for (n, _), gr in zip(m.model.named_parameters(), grads, strict=True):
            g_sq[n] += gr.pow(2)
        m.train_step(x, y, 0, s)
    for n in start:
        torch.testing.assert_close(m.omega[n], lr * g_sq[n], rtol=1e-4, atol=1e-7)
    omega = {n: w.clone() for n, w in m.omega.items()}
    m.end_task(0)
    for n, p in m.model.named_parameters():
        delta = p.detach() - start[n]
        torch.testing.assert_close(m.importance[n], omega[n] / (delta.pow(2) + xi))
        assert torch.equal(m.anchor[n], p.detach()) and not m.omega[n].any()
    # Task 1: the penalty moves the parameters, but ω integrates the task-loss gradient only.
    m.begin_task(1)
    data = stream.task_data(1, "train")
    expect = {n: torch.zeros_like(p) for n, p in start.items()}
    for s in range(2):
        x, y = data.x[8 * s:8 * s + 8], data.y[8 * s:8 * s + 8]
        before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
        loss = nn.functional.cross_entropy(m.model(x), y)
        grad_list = torch.autograd.grad(loss, list(m.model.parameters()))
        grads = dict(zip(before, grad_list, strict=True))
        pen = sum((m.importance[n] * (p - m.anchor[n]).pow(2)).sum()
                  for n, p in m.model.named_parameters())
        assert m.penalty().item() == pytest.approx(c * pen.item())
        m.train_step(x, y, 1, s)
        for n, p in m.model.named_parameters():
            step = p.detach() - before[n]
            pen_grad = 2 * c * m.importance[n] * (before[n] - m.anchor[n])
            torch.testing.assert_close(step, -lr * (grads[n] + pen_grad), rtol=1e-4, atol=1e-7)
            expect[n] -= grads[n] * step
    for n in expect:
        torch.testing.assert_close(m.omega[n], expect[n], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("clip", [False, True])
def test_si_clip_applies_relu_to_the_summed_importance(clip: bool):
    """si_clip: Ω ← max(0, Ω + ω/(Δ²+ξ)) (the authors' code), on the sum and not on each task's
    increment; without it negative importances survive (eq. 5 as printed)."""
    xi = 0.1
    m = toy_method(SI, ToyStream(), si_xi=xi, si_clip=clip)
    g = torch.Generator().manual_seed(3)
    m.begin_task(0)
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    deltas = {n: p.detach() - m.anchor[n] for n, p in m.model.named_parameters()}
    for n in m.omega:
        m.importance[n].fill_(0.5)
        # ω/(Δ²+ξ) is −0.3 on the first half of the entries and −0.8 on the rest
        ratio = torch.full_like(m.omega[n], -0.3)
        ratio.view(-1)[ratio.numel() // 2:] = -0.8
        m.omega[n] = ratio * (deltas[n].pow(2) + xi)
    m.end_task(0)
    for imp in m.importance.values():
        flat = imp.view(-1)
        half = flat.numel() // 2
        torch.testing.assert_close(flat[:half], torch.full_like(flat[:half], 0.2))
        rest = torch.full_like(flat[half:], 0.0 if clip else -0.3)
        torch.testing.assert_close(flat[half:], rest)


# ---- single-task and joint --------------------------------------------------------------------
def test_single_task_keeps_task_0_network_bit_identical():
    m = toy_method(SingleTask, ToyStream())
    train(m, 0, 10)
    net0 = {k: v.clone() for k, v in m.model[0].state_dict().items()}
    net1 = {k: v.clone() for k, v in m.model[1].state_dict().items()}
    train(m, 1, 10)
    assert all(torch.equal(v, m.model[0].state_dict()[k]) for k, v in net0.items())
    assert not torch.equal(net1["1.weight"], m.model[1].state_dict()["1.weight"])
    x = torch.randn(5, 1, 2, 2)
    torch.testing.assert_close(m.predict(x, 0), m.model[0](x))


def test_joint_draws_from_every_task_seen_so_far():
    m = toy_method(Joint, ToyStream(tasks=3))
    m.begin_task(0)
    m.begin_task(1)
    x, y, tasks = m.draw_batch(1, 0, 400)
    from_pixels = x[:, 0, 0, 0].round().long()  # the toy stream writes the task id into x
    assert torch.equal(from_pixels, tasks) and y.shape == (400,)
    assert set(tasks.tolist()) == {0, 1}
    assert 150 < int((tasks == 0).sum()) < 250  # uniform over the two seen tasks
    m.begin_task(2)
    _, _, tasks = m.draw_batch(2, 1, 300)
    assert set(tasks.tolist()) == {0, 1, 2}


# ---- forgetting -------------------------------------------------------------------------------
def forgetting(name: str, tmp_path: Path, **options) -> float:
    """A[0,0] − A[1,0] on 2 permuted-digits tasks (fixed seed)."""
    cfg = resolve({"method": name, "tasks": 2, "steps_per_task": 150, "eval_every": 1000,
                   **options})
    run(cfg, tmp_path / name, progress=False)
    rows = list(csv.reader((tmp_path / name / "accuracy_matrix.csv").open()))
    return float(rows[1][1]) - float(rows[2][1])


def test_ewc_and_si_forget_less_than_standard(tmp_path: Path):
    standard = forgetting("standard", tmp_path)
    ewc = forgetting("ewc", tmp_path, ewc_lambda=1000.0, fisher_samples=200)
    si = forgetting("si", tmp_path, si_c=100.0)
    assert standard > 0.25  # the stream does make a fine-tuned net forget
    assert ewc < standard - 0.1, (ewc, standard)
    assert si < standard - 0.1, (si, standard)
