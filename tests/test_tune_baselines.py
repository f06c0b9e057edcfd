"""benchmarks/tune_baselines.py: the strength is chosen on validation accuracy, and the protocol
can come from an experiment file whose other methods' options are ignored."""
import json
from pathlib import Path

import pytest
import yaml

from benchmark_scripts import load_script


@pytest.fixture(scope="module")
def tb():
    return load_script("tune_baselines")


def test_the_chosen_strength_has_the_best_validation_average(tb, tmp_path: Path):
    cfg = tmp_path / "protocol.yaml"
    # a comparison file like configs/zenke_pmnist.yaml: several methods, each with options
    cfg.write_text(yaml.safe_dump({
        "benchmark": "permuted-digits", "method": "si,ewc,psp-binary", "tasks": 2,
        "steps_per_task": 30, "width": 16, "depth": 1, "batch_size": 32, "lr": 0.01,
        "validation": 0.2, "si_c": 0.1, "si_xi": 0.1, "ewc_lambda": 5.0}))
    result = tb.main(["--config", str(cfg), "--methods", "ewc", "--ewc-grid", "0,1e6",
                      "--out", str(tmp_path / "runs")])
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["standard", "ewc", "ewc"]
    assert [r["value"] for r in rows[1:]] == [0.0, 1e6]
    for r in rows:  # the file's protocol, not the script's defaults (4 tasks, no width)
        saved = yaml.safe_load((tmp_path / "runs" / (
            f"ewc-{r['value']:g}" if r["value"] is not None else "standard")
            / "config.yaml").read_text())
        assert saved["tasks"] == 2 and saved["width"] == 16 and saved["validation"] == 0.2
        assert len(r["val"]) == 2 and r["val_average"] == pytest.approx(sum(r["val"]) / 2)
    best = max(rows[1:], key=lambda r: r["val_average"])
    assert result["chosen"]["ewc"]["ewc_lambda"] == best["value"]
    # a two-value grid: whichever wins is at an edge, and the result says which
    assert result["chosen"]["ewc"]["grid_edge"] == ("lowest" if best["value"] == 0 else "highest")
    # λ = 0 is standard training with the same seed: the same validation accuracies
    assert rows[1]["val"] == pytest.approx(rows[0]["val"], abs=1e-6)
    saved = json.loads((tmp_path / "runs" / "tune_baselines.json").read_text())
    assert saved["chosen"] == result["chosen"]


def test_a_protocol_without_a_validation_split_is_refused(tb, tmp_path: Path):
    with pytest.raises(SystemExit, match="validation"):
        tb.main(["--validation", "0", "--methods", "si", "--out", str(tmp_path)])


def test_grid_edge_names_the_end_the_choice_sits_at(tb):
    assert tb.grid_edge([10, 100, 1000], 1000) == "highest"
    assert tb.grid_edge([1000, 10, 100], 10) == "lowest"  # not the order given
    assert tb.grid_edge([10, 100, 1000], 100) is None
    assert tb.grid_edge([5.0], 5.0) is None  # one value: nothing to extend against
