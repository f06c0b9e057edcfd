"""Configuration: merging YAML and flags, benchmark defaults, validation errors."""

from pathlib import Path

import pytest

from superpose.config import load_yaml, options_of, resolve, split_methods
from superpose.errors import ConfigError


def test_defaults_come_from_the_benchmark():
    cfg = resolve({"benchmark": "permuted-mnist"})
    assert (cfg.tasks, cfg.steps_per_task, cfg.batch_size, cfg.optimizer, cfg.lr) == (
        50, 1000, 128, "adam", 1e-3)


def test_later_layers_win_and_strings_are_coerced():
    cfg = resolve({"benchmark": "permuted-mnist", "tasks": 5}, {"tasks": "3", "lr": "0.01"})
    assert cfg.tasks == 3 and cfg.lr == 0.01


@pytest.mark.parametrize("bad, message", [
    ({"benchmark": "permuted-mnst"}, "permuted-mnist"),       # suggests the close name
    ({"method": "nope"}, "Valid methods"),
    ({"tasks": 0}, "tasks must be a positive integer"),
    ({"steps_per_task": -3}, "steps-per-task must be a positive integer"),
    ({"batch_size": 0}, "batch-size must be a positive integer"),
    ({"width": 0}, "width must be a positive integer"),
    ({"lr": "nan"}, "lr must be a finite number"),
    ({"lr": "inf"}, "lr must be a finite number"),
    ({"lr": -1}, "lr must be a positive"),
    ({"tasks": "three"}, "tasks must be of type int"),
    ({"stepz_per_task": 3}, "Did you mean 'steps_per_task'"),
    ({"optimizer": "adamw"}, "Valid optimizers"),
    ({"init": "xavier"}, "Valid inits: torch, glorot"),
    ({"benchmark": "icifar", "no_bias": True}, "no-bias is an option of the mlp model"),
    ({"benchmark": "rotating-digits", "normalize": True}, "normalize is an option of the perm"),
])
def test_bad_values_are_clear_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        resolve(bad)


@pytest.mark.parametrize("bad, message", [
    ({"method": "standard,psp-binary", "context": "haar"}, "unknown context 'haar'"),
    ({"method": "standard,psp-complex", "context_schedule": "slow"}, "unknown context schedule"),
    ({"method": "standard,si", "si_c": -1.0}, "si needs si-c >= 0"),
    ({"method": "standard,ewc", "ewc_lambda": -1.0}, "ewc-lambda must be >= 0"),
    ({"method": "standard,clnp", "margin": 2.0}, "margin must be a fraction"),
])
def test_a_later_methods_bad_option_fails_before_the_first_method_trains(bad, message):
    # the comma list trains its methods in turn: resolving the configuration must already
    # reject what only the second method reads (it used to fail after the first had trained)
    with pytest.raises(ConfigError, match=message):
        resolve({"benchmark": "permuted-digits"}, bad)


def test_yaml_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("benchmark: permuted-mnist\ntasks: [1, 2\nlr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+"):
        load_yaml(p)
    q = tmp_path / "list.yaml"
    q.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(q)
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(tmp_path / "missing.yaml")


def test_yaml_keys_with_dashes(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("benchmark: permuted-mnist\nsteps-per-task: 7\n")
    assert resolve(load_yaml(p)).steps_per_task == 7


def test_method_flag_over_a_multi_method_file_drops_the_other_methods_options():
    file_layer = {"method": "ewc,si", "ewc_lambda": 5.0, "si_c": 0.5}
    cfg = resolve(file_layer, {"method": "ewc"})
    assert cfg.method == "ewc" and cfg.options == {"ewc_lambda": 5.0}
    # an option the user names for the chosen method itself is still an error
    with pytest.raises(ConfigError, match="'si_c' does not apply to method 'ewc'"):
        resolve(file_layer, {"method": "ewc", "si_c": 2.0})
    with pytest.raises(ConfigError, match="does not apply"):
        resolve({"method": "psp-binary", "si_c": 1.0})


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_resolves_as_is_and_for_each_of_its_methods(path):
    raw = load_yaml(path)
    cfg = resolve(raw)  # `superpose run configs/<file>` must not fail on its own file
    for method in split_methods(cfg.method):
        one = resolve(raw, {"method": method})  # what `--method <m>` runs
        # the file's options for this method reach it; none of the others' do
        mine = options_of(method)
        assert set(one.options) <= mine
        assert {k: v for k, v in cfg.options.items() if k in mine} == one.options


def test_zenke_protocol_carries_each_baselines_validated_strength():
    raw = load_yaml(CONFIG_DIR / "zenke_pmnist.yaml")
    assert resolve(raw, {"method": "ewc"}).options == {"ewc_lambda": 1e4}
    assert resolve(raw, {"method": "si"}).options == {"si_c": 0.1, "si_xi": 0.1}
    assert resolve(raw, {"method": "psp-binary"}).options == {}
