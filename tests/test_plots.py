"""Figures: the PSP Fig. 2 width panels drawn from run folders."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from superpose import plots, training
from superpose.config import resolve
from superpose.runs import Run, load_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig2")
    out = {}
    for width in (16, 8):  # given out of order: panels must come out ascending
        for method in ("standard", "psp-binary"):
            folder = root / f"{method}-w{width}"
            training.run(resolve({"method": method, "tasks": 3, "steps_per_task": 6,
                                  "eval_every": 3, "batch_size": 16, "width": width,
                                  "threads": 1}), folder, progress=False, log=lambda _: None)
            out.setdefault(width, []).append(load_run(folder))
    return out


def test_width_panels_one_ascending_panel_per_width(runs, tmp_path, monkeypatch):
    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figs.append(fig), real_close(fig)))
    path = plots.width_panels(runs, tmp_path / "fig2.png", mark_task=2)
    assert path.is_file() and path.stat().st_size > 0
    axes = figs[-1].axes
    assert [ax.get_title() for ax in axes] == ["8 units", "16 units"]
    for ax, width in zip(axes, (8, 16), strict=True):
        curves = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
        assert [ln.get_label() for ln in curves] == [r.label for r in runs[width]]
        expected = np.array(runs[width][0].summary["first_task_curve"], dtype=float)
        np.testing.assert_allclose(curves[0].get_ydata(), 100 * expected[:, 1])
        marks = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert len(marks) == 1 and marks[0].get_xdata()[0] == 2 * 6  # end of task 2


def test_width_panels_needs_a_width(tmp_path):
    with pytest.raises(ValueError, match="at least one width"):
        plots.width_panels({}, tmp_path / "x.png")


def test_plot_command_draws_width_panels_for_a_sweep(runs, tmp_path):
    from superpose.cli import main

    folders = [str(r.path) for w in (8, 16) for r in runs[w]]
    assert main(["plot", *folders, "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "width_panels.png").is_file()
    assert main(["plot", *folders[:2], "--out", str(tmp_path / "b")]) == 0  # one width
    assert not (tmp_path / "b" / "width_panels.png").exists()


def test_runs_sharing_a_label_are_told_apart_by_what_differs(runs, tmp_path, monkeypatch):
    from superpose.runs import distinct_labels

    binary = [runs[8][1], runs[16][1]]  # psp-binary at 8 and 16 units
    assert binary[0].label == binary[1].label == "psp-binary"
    assert distinct_labels(binary) == ["psp-binary width=8", "psp-binary width=16"]
    # a unique label stays as it is; where no setting differs, the folder names tell them apart
    assert distinct_labels([runs[8][0], *binary])[0] == "standard"
    same = distinct_labels([binary[0], binary[0]])
    assert same == [f"psp-binary ({binary[0].path.name})"] * 2
    # the first-task plot's legend uses them
    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figs.append(fig), real_close(fig)))
    plots.first_task_curve(binary, tmp_path / "curve.png")
    labels = [ln.get_label() for ln in figs[-1].axes[0].get_lines()
              if not ln.get_label().startswith("_")]  # task boundaries carry no label
    assert labels == ["psp-binary width=8", "psp-binary width=16"]


def test_width_panels_keep_a_method_colour_where_a_panel_lacks_a_method(runs, tmp_path,
                                                                        monkeypatch):
    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figs.append(fig), real_close(fig)))
    # 16 units: psp-binary only (its standard run not made), as Fig. 2 at 2048 units here
    plots.width_panels({8: runs[8], 16: [runs[16][1]]}, tmp_path / "fig2.png")
    left, right = figs[-1].axes

    def colour(ax, label):
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
        return line.get_color()

    assert colour(right, "psp-binary") == colour(left, "psp-binary")
    assert colour(left, "standard") != colour(left, "psp-binary")
    legend = [t.get_text() for t in left.get_legend().get_texts()]
    assert legend == ["standard", "psp-binary"]


@pytest.mark.parametrize("method, config, label", [
    ("psp-binary", {"context": "binary"}, "psp-binary"),  # the method already names it
    ("psp", {"context": "rotation"}, "psp (rotation)"),
    ("psp-binary", {"context": "binary", "context_schedule": "local-mix"},
     "psp-binary (local-mix)"),  # pspFastLocalMix
    ("psp-complex", {"context": "complex", "context_schedule": "task", "learn_context": True},
     "psp-complex (learned)"),
])
def test_a_runs_label_names_what_its_method_does_not(method, config, label):
    run = Run(path=Path("run"), config=config, summary={"method": method}, matrix=[])
    assert run.label == label
