"""The PSP reproduction's run plan: which runs exist, and which two experiments share."""
import math
from pathlib import Path

import pytest
import torch
import yaml

from benchmark_scripts import load_script as _load_script


@pytest.fixture(scope="module")
def rp():
    return _load_script("reproduce_psp")


def test_fig3_has_one_run_per_method_and_seed(rp):
    runs = rp.specs(["fig3"], seeds=3, quick=False)
    names = [r["name"] for r in runs]
    assert len(names) == len(set(names)) == 3 * len(rp.FIG3_METHODS)
    # seed 0 keeps the folder name it had before Fig. 3 had seeds
    assert "fig3-psp-rotation" in names and "fig3-psp-rotation-s2" in names
    for r in runs:
        seed = r["overrides"]["seed"]
        assert r["name"] == rp.fig3_name(r["overrides"]["method"], seed)


def test_the_256_unit_table_trains_nothing_fig3_already_trains(rp):
    fig3 = {r["name"]: r for r in rp.specs(["fig3"], seeds=2, quick=False)}
    table = rp.specs(["table"], seeds=2, quick=False)
    shared = [r for r in table if r["name"] in fig3]
    # standard, binary, complex and onepower with fixed contexts, for each seed
    assert len(shared) == 2 * 4
    for r in shared:
        assert r["overrides"] == fig3[r["name"]]["overrides"]
        assert r["config"] == fig3[r["name"]]["config"]
    own = {r["name"] for r in table} - set(fig3)
    assert "table-ewc-s1" in own and "table-psp-binary-learned-s1" in own
    assert not any(n.startswith("table-psp-binary-s") for n in own)


def test_fig3_learned_adds_only_the_learned_rotations_to_the_tables_runs(rp):
    learned = rp.specs(["fig3-learned"], seeds=2, quick=False)
    table = {r["name"]: r for r in rp.specs(["table"], seeds=2, quick=False)}
    assert len(learned) == 2 * 4  # binary, complex, onepower, rotation per seed
    for r in learned:
        assert r["overrides"]["learn_context"] is True
        if r["overrides"]["method"] == "psp-rotation":
            assert r["name"] not in table
        else:  # the same run as the table's learned one: trained once
            assert {k: v for k, v in table[r["name"]].items() if k != "experiment"} == \
                {k: v for k, v in r.items() if k != "experiment"}
    assert "fig3-psp-rotation-learned-s1" in {r["name"] for r in learned}


def test_fig2_has_one_run_per_width_method_and_seed_and_reuses_fig3_at_256(rp):
    runs = rp.specs(["fig2"], seeds=3, quick=False)
    names = [r["name"] for r in runs]
    assert len(names) == len(set(names)) == 3 * len(rp.WIDTHS) * 2
    # seed 0 keeps the folder name it had before Fig. 2 had seeds
    assert "fig2-psp-binary-w1024" in names and "fig2-psp-binary-w1024-s2" in names
    fig3 = {r["name"]: r for r in rp.specs(["fig3"], seeds=3, quick=False)}
    for r in runs:
        o = r["overrides"]
        if o["width"] == 256:  # Fig. 3's protocol at 256 units: the same run, not a new one
            assert r["name"] == rp.fig3_name(o["method"], o["seed"]) and r["name"] in fig3
            cfg = yaml.safe_load((rp.CONFIGS / r["config"]).read_text())
            assert cfg["width"] == 256 and r["config"] == fig3[r["name"]]["config"]
        else:
            assert r["name"] == rp.fig2_name(o["method"], o["width"], o["seed"])


def test_the_wide_table_shares_no_run(rp):
    fig3 = {r["name"] for r in rp.specs(["fig3"], seeds=2, quick=False)}
    wide = {r["name"] for r in rp.specs(["table-wide"], seeds=2, quick=False)}
    assert not fig3 & wide


def test_the_best_table_protocol_is_the_one_the_readme_ran(rp):
    """table-best: 2x2048, Glorot, RMSprop with a cosine from 4e-4 per task, 50 tasks; its run
    names are its own, and every psp method of the table gets fixed and learned contexts."""
    from superpose.config import resolve

    runs = rp.specs(["table-best"], seeds=2, quick=False)
    names = {r["name"] for r in runs}
    assert "tableb-psp-binary-s0" in names and "tableb-psp-complex-learned-s1" in names
    others = {r["name"] for r in rp.specs(["fig3", "table", "table-wide"], seeds=2, quick=False)}
    assert not names & others
    for r in runs:
        cfg = resolve(yaml.safe_load((rp.CONFIGS / r["config"]).read_text()), r["overrides"])
        assert (cfg.width, cfg.depth, cfg.init, cfg.optimizer, cfg.lr, cfg.lr_schedule,
                cfg.tasks, cfg.steps_per_task, cfg.batch_size) == (
            2048, 2, "glorot", "rmsprop", 4e-4, "cosine", 50, 1000, 128)


def test_the_normalised_table_protocol_differs_from_the_best_in_pixels_rate_and_si_c_only(rp):
    """table-norm is table-best on standardised pixels at 3/8 of the peak rate, with SI's c
    chosen again on its own validation split (10 there, 1 in table-best) and with sparse
    boundary evaluations (which leave the table's numbers as they are): otherwise the same
    settings, its own run names (so no run of table-best is reused for it)."""
    from superpose.config import resolve

    best = rp.specs(["table-best"], seeds=1, quick=False)
    norm = rp.specs(["table-norm"], seeds=1, quick=False)
    assert {r["name"].replace("tablen-", "tableb-") for r in norm} == {r["name"] for r in best}
    for a, b in zip(best, norm, strict=True):
        ca = resolve(yaml.safe_load((rp.CONFIGS / a["config"]).read_text()), a["overrides"])
        cb = resolve(yaml.safe_load((rp.CONFIGS / b["config"]).read_text()), b["overrides"])
        assert (ca.normalize, cb.normalize) == (False, True)
        assert (ca.lr, cb.lr) == (4e-4, 1.5e-4)
        assert (ca.boundary_eval, cb.boundary_eval) == ("all", "sparse")
        if a["overrides"]["method"] == "si":
            assert (ca.options["si_c"], cb.options["si_c"]) == (1.0, 10.0)
            cb.options["si_c"] = ca.options["si_c"]
        cb.normalize, cb.lr, cb.boundary_eval = False, ca.lr, ca.boundary_eval
        assert ca.to_dict() == cb.to_dict()


def test_fig3_norm_is_fig3_on_the_table_norm_protocol(rp):
    """fig3-norm runs Fig. 3's methods at Fig. 3's size (2x256, eval every 100 steps) with the
    table-norm protocol's init, pixels and rate schedule, under run names of its own."""
    from superpose.config import resolve

    fig3 = rp.specs(["fig3"], seeds=2, quick=False)
    norm = rp.specs(["fig3-norm"], seeds=2, quick=False)
    table = resolve(yaml.safe_load((rp.CONFIGS / "psp_table_norm.yaml").read_text()), {})
    assert not {r["name"] for r in norm} & {r["name"] for r in fig3}
    assert "fig3n-psp-rotation-s1" in {r["name"] for r in norm}
    for a, b in zip(fig3, norm, strict=True):
        assert a["overrides"] == b["overrides"]
        ca = resolve(yaml.safe_load((rp.CONFIGS / a["config"]).read_text()), a["overrides"])
        cb = resolve(yaml.safe_load((rp.CONFIGS / b["config"]).read_text()), b["overrides"])
        for key in ("init", "normalize", "lr", "lr_schedule", "optimizer"):
            assert getattr(cb, key) == getattr(table, key), key
            setattr(cb, key, getattr(ca, key))
        assert ca.to_dict() == cb.to_dict()
    learned = rp.specs(["fig3-norm-learned"], seeds=2, quick=False)
    fixed = {r["name"]: r for r in norm}
    assert len(learned) == 2 * 4  # every PSP type, not standard
    for r in learned:
        twin = fixed[r["name"].replace("-learned", "")]
        assert r["overrides"] == {**twin["overrides"], "learn_context": True}
        assert r["config"] == twin["config"]


def test_mean_std_formats_percent_with_sample_std(rp):
    assert rp.mean_std([0.9, 0.92, 0.94]) == "92.00 ± 2.00 (n=3)"
    assert rp.mean_std([0.9]) == "90.00 (n=1)"
    assert rp.mean_std([]) == "–"
    assert rp.mean_std([0.5, 0.5]) == "50.00 ± 0.00 (n=2)"


def test_clnp_reuse_variant_grows_no_first_layer_units(tmp_path):
    """benchmarks/clnp_reuse.py's second variant: after task 1 the first hidden layer keeps
    exactly task 1's units (its free units are silent), while the second layer may grow."""
    from superpose.config import resolve
    from superpose.training import run

    module = _load_script("clnp_reuse")
    used = {}
    for method in ("clnp", module.NO_GROWTH):
        cfg = resolve({"benchmark": "permuted-digits", "method": method, "tasks": 3,
                       "steps_per_task": 80, "width": 48, "eval_every": 80, "validation": 0.1,
                       "lr": 0.01, "l1": [1e-3], "margin": 0.02, "threads": 1})
        used[method] = run(cfg, tmp_path / method, progress=False)["capacity"]["used_units"]
    first, second = used[module.NO_GROWTH]
    assert first[0] > 0 and first == [first[0]] * 3
    assert second[-1] > second[0]
    assert used["clnp"][0][-1] > used["clnp"][0][0]  # the unrestricted run does grow it


def test_clnp_reuse_keep_adam_variant_keeps_one_optimiser(tmp_path, monkeypatch):
    """benchmarks/clnp_reuse.py's kept-Adam variant: one optimiser (and its step count) runs
    through every task, and the earlier tasks still do not move (constant matrix columns)."""
    from superpose.config import resolve
    from superpose.runs import load_run
    from superpose.training import run

    module = _load_script("clnp_reuse")
    seen = []

    def end_task(self, task):
        state = next(iter(self.optimizer.state.values()))
        seen.append((id(self.optimizer), int(state["step"])))
        return module.Clnp.end_task(self, task)

    monkeypatch.setattr(module.ClnpKeepAdam, "end_task", end_task)
    cfg = resolve({"benchmark": "permuted-digits", "method": module.KEEP_ADAM, "tasks": 3,
                   "steps_per_task": 40, "width": 32, "eval_every": 40, "validation": 0.1,
                   "lr": 0.01, "l1": [1e-3], "margin": 0.02, "threads": 1})
    run(cfg, tmp_path / "keep", progress=False)
    assert len({i for i, _ in seen}) == 1
    assert [n for _, n in seen] == [40, 80, 120]
    matrix = load_run(tmp_path / "keep").matrix  # (after task i, task j)
    for j in range(3):
        assert len({row[j] for row in matrix[j:]}) == 1


def test_clnp_reuse_no_reinit_variant_starts_free_weights_where_they_were(monkeypatch):
    """benchmarks/clnp_reuse.py's no-reinit variant skips Algorithm 1's re-initialisation of
    the free weights after the first task (single head); the base method re-draws them."""
    module = _load_script("clnp_reuse")
    calls = []
    monkeypatch.setattr(module.Clnp, "_reinit_free", lambda self, task: calls.append(task))
    probe = module.ClnpNoReinit.__new__(module.ClnpNoReinit)
    probe.options = module.Clnp.Options(head="single")
    for task in range(3):
        probe._reinit_free(task)
    assert calls == [0]
    probe.options = module.Clnp.Options(head="multi")
    probe._reinit_free(2)
    assert calls == [0, 2]


def test_fig2_row_from_a_hand_made_summary(rp):
    # 20 tasks of 100 steps; task 0's curve: 0.9 after task 0 (step 100), 0.8 after 10 tasks
    # (step 1000, also the end of the first half), final 0.6 at step 2000
    summary = {"steps": 2000, "tasks": 20, "average_last10": 0.95,
               "first_task_curve": [[50, 0.5], [100, 0.9], [500, 0.85], [1000, 0.8],
                                    [1500, 0.7], [2000, 0.6]],
               "final_accuracy": [0.6] + [0.9] * 19}
    a0, a10, fin, drop, rate, last10 = rp.fig2_row(summary)
    assert (a0, a10, fin, last10) == (0.9, 0.8, 0.6, 0.95)
    assert drop == pytest.approx(0.3)
    assert rate == pytest.approx((0.8 - 0.6) / 10)  # half = task 10 ends at step 1000
    sparse = dict(summary, first_task_curve=[[500, 0.85], [2000, 0.6]])
    assert rp.fig2_row(sparse) is None  # no point by the end of task 0
    short = dict(summary, steps=500, tasks=5, first_task_curve=[[100, 0.9], [500, 0.8]])
    assert rp.fig2_row(short)[1] == 0.8  # 5 tasks: "after 10 tasks" is the end


def test_layer_attribution_mixes_the_two_snapshots_exactly():
    """benchmarks/psp_forgetting_layers.py: with no layer moved, task 0 scores exactly what it
    scored right after its training; with every layer moved, what the final model scores; a
    zero output rate leaves the output layer bit for bit while the others move."""
    fl = _load_script("psp_forgetting_layers")
    t = fl.train(width=16, tasks=3, lr=1e-3, seed=0, dataset="digits", steps_per_task=30)
    layers = fl.layer_names(t.model)
    assert layers == ["net.1", "net.3", "net.5"]
    assert fl.task0_accuracy(t, set()) == t.acc_after0
    t.model.load_state_dict(t.final)
    assert fl.task0_accuracy(t, set(layers)) == 100 * fl.accuracy(t.model, *t.test)
    assert all(not torch.equal(t.after0[f"{n}.weight"], t.final[f"{n}.weight"]) for n in layers)

    frozen = fl.train(width=16, tasks=3, lr=1e-3, seed=0, dataset="digits", steps_per_task=30,
                      output_lr_scale=0.0)
    for k in ("net.5.weight", "net.5.bias"):
        assert torch.equal(frozen.after0[k], frozen.final[k])
    assert not torch.equal(frozen.after0["net.3.weight"], frozen.final["net.3.weight"])


def test_reproduce_psp_passes_the_device_to_every_run(rp, tmp_path):
    """--device reaches the run's config: a CPU run records it, and a CUDA device on this
    CPU-only build is refused by the library's own check before anything trains."""
    from superpose.errors import ConfigError

    job = {"name": "tiny", "config": "default_digits.yaml", "out": str(tmp_path), "threads": 1,
           "overrides": {"method": "standard", "tasks": 2, "steps_per_task": 5,
                         "eval_every": 5}}
    rp.run_one({**job, "device": "cpu"})
    saved = yaml.safe_load((tmp_path / "tiny" / "config.yaml").read_text())
    assert saved["device"] == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            rp.run_one({**job, "name": "tiny-cuda", "device": "cuda"})


def test_reproduce_psp_selects_runs_by_method(rp):
    """--methods keeps exactly the runs of the named methods (fixed and learned contexts, every
    seed) and refuses a name no run of the experiments has."""
    runs = rp.specs(["table-best"], seeds=3, quick=False)
    chosen = rp.select_methods(runs, "psp-binary, psp-complex")
    assert len(chosen) == 12  # 2 methods x {fixed, learned} x 3 seeds
    assert {r["overrides"]["method"] for r in chosen} == {"psp-binary", "psp-complex"}
    assert sum(bool(r["overrides"].get("learn_context")) for r in chosen) == 6
    assert all(r["name"].startswith("tableb-") for r in chosen)
    with pytest.raises(SystemExit, match="psp-bianry"):
        rp.select_methods(runs, "psp-binary,psp-bianry")


def test_device_check_compares_two_devices_and_catches_a_changed_digest():
    """device_check on CPU against CPU: every run agrees exactly (same seed, same kernels) and
    CLNP's digests hold; a digest that changes after a later task fails the guarantee."""
    dc = _load_script("device_check")
    assert set(dc.CHECKS) >= {"psp-binary", "psp-complex-learned", "clnp", "ewc", "si"}
    rows, ok = dc.check(["psp-binary", "clnp"], "cpu", steps=20, tolerance=0.0)
    assert ok, rows
    assert len(rows) == 4 and all(row.endswith("| ok |") for row in rows[2:])
    assert all("| +0.00 |" in row for row in rows[2:])
    kept = [{"0": "a"}, {"0": "a", "1": "b"}, {"0": "a", "1": "b", "2": "c"}]
    assert dc.clnp_exact({"clnp_logit_digests": kept})
    moved = [{"0": "a"}, {"0": "a", "1": "b"}, {"0": "a", "1": "x", "2": "c"}]
    assert not dc.clnp_exact({"clnp_logit_digests": moved})
    with pytest.raises(KeyError):
        dc.check(["no-such-method"], "cpu", steps=1, tolerance=0.0)


def test_table_probe_polar_gain_scales_the_complex_init_only_for_its_run(tmp_path):
    """A probe's ``polar_gain`` multiplies every complex layer's initial weights (seen after a
    step too small to move them) and leaves ``polar_init_`` as it was afterwards."""
    from safetensors import safe_open

    import superpose.complex as cx

    tp = _load_script("psp_table_probe")
    plain = cx.polar_init_
    tiny = {"benchmark": "permuted-digits", "method": "psp-complex", "width": 16, "tasks": 2,
            "steps_per_task": 1, "eval_every": 1, "lr": 1e-12}
    weights = {}
    for gain in (1.0, 3.0):
        r = tp.probe(f"g{gain}", {**tiny, "polar_gain": gain}, tmp_path, None)
        assert r["polar_gain"] == gain and len(r["task0"]) == 2
        with safe_open(str(tmp_path / f"g{gain}" / "checkpoint.safetensors"), "pt") as f:
            weights[gain] = {k: f.get_tensor(k) for k in f.keys() if k.endswith("net.1.weight")}
        assert cx.polar_init_ is plain
    (key,) = weights[1.0]
    assert torch.allclose(weights[3.0][key], 3 * weights[1.0][key], rtol=1e-4, atol=1e-7)


def test_reproduce_clnp_settings_and_its_protocol_line():
    """reproduce_clnp.py --set KEY=VALUE, and the protocol line naming CLNP + fine-tuning only
    when the run fine-tunes."""
    from superpose.config import resolve

    rc = _load_script("reproduce_clnp")
    assert rc.parse_sets(["margin=0.005", "finetune-epochs = 5"]) == {
        "margin": "0.005", "finetune_epochs": "5"}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        rc.parse_sets(["margin"])
    assert rc.finetune_text(resolve(rc.PROTOCOL)) == ""
    ft = resolve({**rc.PROTOCOL, "finetune_epochs": "5", "finetune_lr": "2e-4"})
    assert rc.finetune_text(ft) == ", then 5 epochs of fine-tuning at lr 0.0002"
    assert rc.method_options(ft)["l1"] == [1e-7, 1e-5, 1e-6]
    assert rc.seeds_text([0]) == "seed 0"
    assert rc.seeds_text([3, 4]) == "seeds 3–4"


def test_crosstalk_closed_forms_match_the_context_draws():
    """benchmarks/psp_crosstalk.py: E s² over random contexts, s = (C_k b)ᵀ (C_0 a), is
    Σ a_i² b_i² for sign contexts and ‖a‖² ‖b‖² / M for Haar rotations (checked by Monte
    Carlo over the library's own draws); they differ for inputs whose energy shares coordinates."""
    ct = _load_script("psp_crosstalk")
    a = torch.tensor([[3.0, 0.0, 1.0, 0.5, 0.0, 0.2], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])  # (2, 6)
    b = torch.tensor([[2.0, 0.0, 1.0, 0.0, 0.3, 0.0], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    closed = ct.expected_crosstalk(a, b)
    assert torch.allclose(closed["none"], (a * b).sum(1) ** 2)
    for ctx in ("binary", "rotation"):
        sampled = ct.sampled_crosstalk(a, b, ctx, draws=3000, seed=0)
        assert torch.allclose(sampled.float(), closed[ctx], rtol=0.1), ctx
    # concentrated on shared coordinates (row 0), a rotation spreads the crosstalk: R > 2
    assert closed["binary"][0] > 2 * closed["rotation"][0]


def test_crosstalk_layer_inputs_are_what_each_layer_reads():
    """The hooks return each superposed layer's input before its context: the pixels, then
    the ReLU outputs of the layer before."""
    import superpose as sp

    ct = _load_script("psp_crosstalk")
    net = sp.models.create("mlp", in_features=6, hidden=[5, 4], classes=3)
    model = sp.superpose(net, context="binary", num_tasks=2, seed=0)
    x = torch.rand(7, 6)
    ins = ct.layer_inputs(model, x, 1)
    assert [t.shape for t in ins] == [(7, 6), (7, 5), (7, 4)]
    assert torch.equal(ins[0], x)
    assert (ins[1] >= 0).all() and (ins[2] >= 0).all()


def test_fig2_norm_runs_the_fig2_config_per_seed_and_tabulates_the_1_point_claim(rp):
    from superpose.config import resolve

    runs = rp.specs(["fig2-norm"], seeds=2, quick=False)
    assert [r["name"] for r in runs] == ["fig2n-psp-binary-s0", "fig2n-psp-binary-s1"]
    cfg = resolve(yaml.safe_load((rp.CONFIGS / runs[1]["config"]).read_text()),
                  runs[1]["overrides"])
    assert (cfg.width, cfg.depth, cfg.method, cfg.options["learn_context"], cfg.normalize, cfg.seed,
            cfg.tasks) == (2048, 2, "psp-binary", True, True, 1, 50)

    def summary(final0):  # 20 tasks of 100 steps; task 0 at 0.97 after its training
        return {"steps": 2000, "tasks": 20, "average_last10": 0.96,
                "first_task_curve": [[100, 0.97], [1000, 0.965], [2000, final0]],
                "final_accuracy": [final0] + [0.96] * 19}

    results = {"fig2n-psp-binary-s0": summary(0.965), "fig2n-psp-binary-s1": summary(0.955)}
    lines = rp.fig2_norm_table(results, runs)
    assert lines[4] == "| 0 | 97.00 | 96.50 | 96.50 | 0.50 | yes | 96.00 |"
    assert lines[5] == "| 1 | 97.00 | 96.50 | 95.50 | 1.50 | no | 96.00 |"
    assert lines[6].startswith("| all | 97.00 ± 0.00 (n=2) |") and "| 1 of 2 |" in lines[6]


def test_width_reruns_the_table_protocol_at_another_width_under_its_own_names(rp):
    """--width N: the same table runs with only the width changed, every name tagged -wN (so no
    run at the config's width is reused), and the 256-unit table no longer borrows Fig. 3's
    runs (their width is fixed)."""
    from superpose.config import resolve

    plain = rp.specs(["table-norm"], seeds=2, quick=False)
    wide = rp.specs(["table-norm"], seeds=2, quick=False, width=1024)
    assert "tablen-psp-complex-w1024-s0" in {r["name"] for r in wide}
    assert "tablen-psp-onepower-w1024-learned-s1" in {r["name"] for r in wide}
    assert not {r["name"] for r in plain} & {r["name"] for r in wide}
    for a, b in zip(plain, wide, strict=True):
        assert b["name"].replace("-w1024", "") == a["name"]
        ca = resolve(yaml.safe_load((rp.CONFIGS / a["config"]).read_text()), a["overrides"])
        cb = resolve(yaml.safe_load((rp.CONFIGS / b["config"]).read_text()), b["overrides"])
        assert (ca.width, cb.width) == (2048, 1024)
        cb.width = ca.width
        assert ca.to_dict() == cb.to_dict()
    fig3 = {r["name"] for r in rp.specs(["fig3"], seeds=1, quick=False)}
    assert not fig3 & {r["name"] for r in rp.specs(["table"], seeds=1, quick=False, width=512)}
    # the table's heading states the width the runs had
    results = {r["name"]: {"average_last10": 0.97} for r in wide}
    text = rp.report(results, wide, Path("/nonexistent"))
    assert "(2×1024, rmsprop 0.00015" in text


def test_the_table_report_states_each_baselines_strength_as_run(rp, tmp_path):
    """EWC's and SI's rows name the strength they ran with: the run's own config.yaml when the
    folder has one (a --si-c given on the command line), else the experiment's config."""
    runs = [r for r in rp.specs(["table-norm"], seeds=1, quick=False)
            if r["overrides"]["method"] in ("ewc", "si")]
    assert {r["overrides"]["method"] for r in runs} == {"ewc", "si"}
    results = {r["name"]: {"average_last10": 0.95} for r in runs}
    text = rp.report(results, runs, tmp_path)  # no run folders: the config's 100 and 10
    assert "| ewc | λ = 100 | 95.00 (n=1) | 97.0 |" in text
    assert "| si | c = 10 | 95.00 (n=1) | 97.2 |" in text
    si = next(r for r in runs if r["overrides"]["method"] == "si")
    (tmp_path / si["name"]).mkdir()
    (tmp_path / si["name"] / "config.yaml").write_text("method: si\nsi_c: 3.0\n")
    assert "| si | c = 3 | 95.00 (n=1) | 97.2 |" in rp.report(results, runs, tmp_path)


def test_zenke_code_differs_from_zenke_in_data_init_and_si_clip_only(rp, tmp_path):
    """zenke-code is the zenke protocol as the authors' code ran it: the whole training set
    (20 epochs of 60,000 images at batch 256 = 4688 steps), Glorot init and SI's clipped Ω;
    its report says so and tabulates average and backward transfer from the runs' files."""
    from superpose.config import resolve

    zenke = {r["overrides"]["method"]: r for r in rp.specs(["zenke"], seeds=1, quick=False)}
    code = rp.specs(["zenke-code"], seeds=2, quick=False)
    assert [r["name"] for r in code] == ["zenkec-si-s0", "zenkec-ewc-s0", "zenkec-si-s1",
                                         "zenkec-ewc-s1"]
    for r in code[:2]:
        a, b = zenke[r["overrides"]["method"]], r
        ca = resolve(yaml.safe_load((rp.CONFIGS / a["config"]).read_text()), a["overrides"])
        cb = resolve(yaml.safe_load((rp.CONFIGS / b["config"]).read_text()), b["overrides"])
        assert (ca.validation, cb.validation) == (0.1, 0.0)
        assert cb.steps_per_task == -(-20 * 60000 // cb.batch_size) == 4688
        assert (ca.init, cb.init) == ("torch", "glorot")
        if cb.method == "si":
            assert (ca.options.get("si_clip", False), cb.options["si_clip"]) == (False, True)
            del cb.options["si_clip"]
        cb.validation, cb.steps_per_task, cb.init = ca.validation, ca.steps_per_task, ca.init
        cb.eval_every = ca.eval_every
        assert ca.to_dict() == cb.to_dict()
    results = {}
    for r, avg, bwt in zip(code, (0.971, 0.969, 0.973, 0.967), (-0.01, -0.012, -0.008, -0.014),
                           strict=True):
        (tmp_path / r["name"]).mkdir()
        cfg = yaml.safe_load((rp.CONFIGS / r["config"]).read_text())
        cfg.update(r["overrides"])
        (tmp_path / r["name"] / "config.yaml").write_text(yaml.safe_dump(cfg))
        results[r["name"]] = {"tasks": 10, "steps": 46880, "average_accuracy": avg,
                              "backward_transfer": bwt}
    text = rp.report(results, code, tmp_path)
    assert "the whole training set, init glorot, SI's importance clipped at zero" in text
    assert "10 tasks × 4688 steps, 2×2000, adam 0.001, batch 256" in text
    assert "| si | c = 0.1, ξ = 0.1, Ω clipped at 0 | 97.20 ± 0.14 (n=2) |" in text
    assert "| ewc | λ = 10000 | 96.80 ± 0.14 (n=2) |" in text


def test_fisher_sampling_error_against_hand_computed_values():
    fn = _load_script("ewc_fisher_noise")
    ref = {"1.weight": torch.tensor([[1.0, 3.0], [0.0, 4.0]]), "1.bias": torch.ones(2)}
    est = {"1.weight": torch.tensor([[2.0, 0.0], [1.0, 4.0]]), "1.bias": torch.zeros(2)}
    # |2-1| + |0-3| + |1-0| + 0 = 5 over Σ ref = 8; of the 3 entries with ref > 0 one is 0;
    # Σ est / Σ ref = 7 / 8; biases are left out
    errors = fn.sampling_error(ref, est)
    assert list(errors) == ["1.weight"]
    assert errors["1.weight"] == pytest.approx((5 / 8, 1 / 3, 7 / 8))


def tiny_ewc_run(tmp_path: Path, capsys) -> Path:
    """A finished 2-task EWC run on the bundled digits (folder), its output swallowed."""
    from superpose.cli import main
    run = tmp_path / "ewc"
    assert main(["run", "--benchmark", "permuted-digits", "--method", "ewc", "--tasks", "2",
                 "--steps-per-task", "20", "--width", "16", "--depth", "2", "--no-progress",
                 "--out", str(run)]) in (0, None)
    capsys.readouterr()
    return run


def test_fisher_noise_script_reads_a_finished_ewc_run(tmp_path, capsys):
    run = tiny_ewc_run(tmp_path, capsys)
    _load_script("ewc_fisher_noise").main(["--run", str(run), "--samples", "50,100",
                                           "--repeats", "2", "--reference", "400"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 2 * 3  # the header, then 2 sizes x 3 weight matrices
    assert rows[1].startswith("| 50 | 0.weight |") or rows[1].startswith("| 50 | 1.weight |")


def test_displacement_by_stiffness_bins_weights_by_decade():
    fn = _load_script("ewc_adam_stiffness").displacement_by_stiffness
    delta = {"0.weight": torch.tensor([3.0, 4.0, 1.0, 2.0]), "0.bias": torch.tensor([9.0])}
    stiff = {"0.weight": torch.tensor([0.5, 2.0, 20.0, 0.01]), "0.bias": torch.tensor([5.0])}
    # 0.01 is below the first edge: left out; [0.1, 1): 3; [1, 10): 4; [10, inf): 1; no bias
    bins = fn(delta, stiff, [0.1, 1.0, 10.0])
    assert bins == [(0.1, pytest.approx(3.0), 1), (1.0, pytest.approx(4.0), 1),
                    (10.0, pytest.approx(1.0), 1)]
    empty = fn(delta, stiff, [100.0])
    assert empty[0][2] == 0 and math.isnan(empty[0][1])


def test_adam_stiffness_script_continues_a_finished_ewc_run(tmp_path, capsys):
    run = tiny_ewc_run(tmp_path, capsys)
    _load_script("ewc_adam_stiffness").main([
        "--run", str(run), "--steps", "5", "--lambdas", "0,1e4", "--optimizers", "adam,sgd",
        "--lrs", "0.001,0.01", "--edges", "0,1e-12,1e12"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 2 * 2  # the header, then 2 optimisers x 2 strengths
    cells = {(r.split("|")[1].strip(), r.split("|")[3].strip()): r.split("|") for r in rows[1:]}
    # no weight has F ≥ 1e12: that bin is empty; every trained weight moved with λ = 0
    assert all(c[6].strip() == "–" for c in cells.values())
    assert float(cells[("adam", "0")][5]) > 0
    assert "1e-12 ≤ F < 1e+12: " in out
    # every setting starts from the run's own state: the same setting twice gives the same row
    _load_script("ewc_adam_stiffness").main(["--run", str(run), "--steps", "5",
                                             "--lambdas", "1e4,1e4"])
    twice = [r.rsplit("|", 2)[0] for r in capsys.readouterr().out.splitlines()
             if r.startswith("| adam")]
    assert len(twice) == 2 and twice[0] == twice[1]


def zenke_results_as_run(rp, runs, folder):
    """Write each spec's resolved config.yaml into its run folder under ``folder`` (the report
    reads the strengths as run) and return a 10-task result of 97 % for each."""
    from superpose.config import resolve

    results = {}
    for r in runs:
        (folder / r["name"]).mkdir()
        cfg = resolve(yaml.safe_load((rp.CONFIGS / r["config"]).read_text()), r["overrides"])
        (folder / r["name"] / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        results[r["name"]] = {"average_accuracy": 0.97, "backward_transfer": -0.01,
                              "tasks": 10, "steps": 42190}
    return results


def test_zenke_cosine_differs_from_zenke_in_the_rate_schedule_only(rp, tmp_path):
    """zenke-cosine is the zenke protocol with a cosine within every task, for SI and EWC at
    the zenke strengths; its report heading says so."""
    from superpose.config import resolve

    zenke = {r["overrides"]["method"]: r for r in rp.specs(["zenke"], seeds=1, quick=False)}
    cos = rp.specs(["zenke-cosine"], seeds=2, quick=False)
    assert [r["name"] for r in cos] == ["zenke-cos-si-s0", "zenke-cos-ewc-s0", "zenke-cos-si-s1",
                                        "zenke-cos-ewc-s1"]
    for r in cos:
        a = zenke[r["overrides"]["method"]]
        ca = resolve(yaml.safe_load((rp.CONFIGS / a["config"]).read_text()), a["overrides"])
        cb = resolve(yaml.safe_load((rp.CONFIGS / r["config"]).read_text()), r["overrides"])
        assert (ca.lr_schedule, cb.lr_schedule) == ("constant", "cosine")
        cb.lr_schedule, cb.seed = ca.lr_schedule, ca.seed
        assert ca.to_dict() == cb.to_dict()
    text = rp.report(zenke_results_as_run(rp, cos[:2], tmp_path), cos[:2], tmp_path)
    assert "the baselines on Zenke et al.'s protocol (the rate decaying along a cosine" in text
    assert "| si | c = 0.1, ξ = 0.1 | 97.00 (n=1) |" in text


def test_zenke_warmup_is_zenke_cosine_with_a_warmup(rp, tmp_path):
    """zenke-warmup runs the zenke-cosine runs with the warm-up schedule, under run names of
    its own (zenke-wcos-<method>-s<seed>), SI at twice the strength (its importance halves
    with the halved mean rate; zenke-wcos-si-c0.2-s<seed>), and its report heading names the
    warm-up and SI's c as run."""
    from superpose.config import resolve

    cos = rp.specs(["zenke-cosine"], seeds=2, quick=False)
    warm = rp.specs(["zenke-warmup"], seeds=2, quick=False)
    assert [r["name"] for r in warm] == ["zenke-wcos-si-c0.2-s0", "zenke-wcos-ewc-s0",
                                         "zenke-wcos-si-c0.2-s1", "zenke-wcos-ewc-s1"]
    for a, b in zip(cos, warm, strict=True):
        ca = resolve(yaml.safe_load((rp.CONFIGS / a["config"]).read_text()), a["overrides"])
        cb = resolve(yaml.safe_load((rp.CONFIGS / b["config"]).read_text()), b["overrides"])
        assert (ca.lr_schedule, cb.lr_schedule) == ("cosine", "warmup-cosine")
        cb.lr_schedule = ca.lr_schedule
        if ca.method == "si":
            assert (ca.options["si_c"], cb.options["si_c"]) == (0.1, 0.2)
            cb.options["si_c"] = ca.options["si_c"]
        assert ca.to_dict() == cb.to_dict()
    text = rp.report(zenke_results_as_run(rp, warm[:2], tmp_path), warm[:2], tmp_path)
    assert "(the rate rising linearly over the first tenth of every task, then decaying" in text
    assert "| si | c = 0.2, ξ = 0.1 | 97.00 (n=1) |" in text
    assert "| ewc | λ = 10000.0 | 97.00 (n=1) |" in text


def test_fig2_norm_widths_sweeps_both_methods_and_shares_the_2048_binary_run(rp, tmp_path):
    """Fig. 2 on psp_fig2_norm.yaml's protocol by width: standard and psp-binary at every width,
    only the width changed; psp-binary at 2048 units is fig2-norm's own run, trained once."""
    from superpose.config import resolve

    runs = rp.specs(["fig2-norm-widths"], seeds=2, quick=False)
    assert len(runs) == 2 * len(rp.WIDTHS) * 2
    names = {r["name"] for r in runs}
    assert len(names) == len(runs)
    assert {"fig2n-standard-w128-s0", "fig2n-psp-binary-w1024-s1",
            "fig2n-standard-w2048-s1"} <= names
    assert {r["name"] for r in rp.specs(["fig2-norm"], seeds=2, quick=False)} <= names
    base = yaml.safe_load((rp.CONFIGS / "psp_fig2_norm.yaml").read_text())
    for r in runs:
        cfg = resolve(base, r["overrides"])
        o = r["overrides"]
        assert (cfg.width, cfg.method, cfg.seed, cfg.lr) == (o["width"], o["method"], o["seed"],
                                                             base["lr"])
    summary = {"steps": 2000, "tasks": 20, "average_last10": 0.96,
               "first_task_curve": [[100, 0.97], [1000, 0.96], [2000, 0.90]],
               "final_accuracy": [0.90] + [0.96] * 19}
    results = {r["name"]: summary for r in runs}
    text = rp.report(results, runs, tmp_path)  # no run folders there: no figures
    assert "### Fig. 2 (rmsprop, cosine from 4e-05 within each task, init glorot" in text
    # task 0: 97 after its 100 steps, 96 after 10 tasks, 90 at the end: 7 points lost, 0.6 a
    # task over the second half (96 at task 10 of 20)
    assert ("| 2048 | standard | 97.00 ± 0.00 (n=2) | 96.00 ± 0.00 (n=2) | 90.00 ± 0.00 (n=2) | "
            "7.00 ± 0.00 (n=2) | 0.60 ± 0.00 (n=2) | 96.00 ± 0.00 (n=2) |") in text
    assert text.count("| psp-binary |") == len(rp.WIDTHS)
