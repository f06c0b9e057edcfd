"""CLNP capacity figures (Golkar et al. 2019, Fig. 3 / 4b / 5b), drawn from run folders only.

A CLNP run's ``summary.json`` holds ``capacity`` (written by ``methods/clnp.py``): per hidden
layer and per finished task the used fraction of the layer, the units each task added and the
earlier units it reused. Several runs of the same protocol are averaged, as in the paper.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .errors import UserError  # noqa: E402


def load_capacity(run: str | Path) -> dict[str, Any]:
    """The ``capacity`` entry of a run folder's summary.json (clear error if there is none)."""
    path = Path(run) / "summary.json"
    if not path.is_file():
        raise UserError(f"{run} is not a finished run folder (no summary.json)")
    summary = json.loads(path.read_text())
    if "capacity" not in summary:
        raise UserError(f"{path} has no capacity entry: it is not a clnp run "
                        f"(method {summary.get('method')!r})")
    return summary["capacity"]


def mean_capacity(capacities: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    """(layers, tasks) mean of ``key`` over runs, over the tasks all runs finished."""
    arrays = [np.asarray(c[key], dtype=float) for c in capacities]
    tasks = min(a.shape[1] for a in arrays)
    layers = arrays[0].shape[0]
    if any(a.shape[0] != layers for a in arrays):
        raise UserError("the runs' networks have different numbers of hidden layers")
    return np.mean([a[:, :tasks] for a in arrays], axis=0)


def depletion_note(capacities: Sequence[dict[str, Any]]) -> str:
    """"depleted: <layer> before task <t>, ..." for the first task (1-based) that found each
    layer without free units, in that order ("" when none did)."""
    first: dict[str, int] = {}
    for task, layer in sorted({(e["task"], e["layer"]) for c in capacities
                               for e in c.get("depleted", [])}):
        first.setdefault(layer, task)
    if not first:
        return ""
    return "depleted: " + ", ".join(f"{layer} before task {task + 1}"
                                    for layer, task in first.items())


def capacity_figure(runs: Sequence[str | Path] | str | Path, path: str | Path,
                    title: str | None = None) -> Path:
    """Left: used capacity of each hidden layer after each task (Fig. 3). Right: units each
    task added to each layer (solid) and earlier units it reused (dashed)."""
    run_list = [runs] if isinstance(runs, str | Path) else list(runs)
    if not run_list:
        raise UserError("capacity_figure needs at least one run folder")
    caps = [load_capacity(r) for r in run_list]
    used = 100 * mean_capacity(caps, "used_fraction")  # (L, T) percent
    new = mean_capacity(caps, "new_units")  # (L, T)
    reused = mean_capacity(caps, "reused_units")  # (L, T)
    layers = [str(n) for n in caps[0]["layers"]]
    n_layers, n_tasks = used.shape
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / max(n_tasks, 1)
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.95, max(n_tasks, 1)))
    for t in range(n_tasks):
        xs = np.arange(n_layers) - 0.4 + (t + 0.5) * width
        ax.bar(xs, used[:, t], width=width, color=colors[t], label=str(t + 1))
    ax.set_xticks(np.arange(n_layers), layers)
    ax.set_ylabel("used layer capacity (%)")
    ax.set_ylim(0, max(100.0, float(used.max()) * 1.05) if used.size else 100.0)
    ax.legend(title="after task", fontsize=7, ncol=2 if n_tasks > 10 else 1,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    depleted = depletion_note(caps)
    if depleted:
        ax.set_title(depleted, fontsize=9)
    tasks = np.arange(1, n_tasks + 1)
    for l in range(n_layers):
        line = ax2.plot(tasks, new[l], marker="o", ms=3, label=f"{layers[l]} new")[0]
        ax2.plot(tasks, reused[l], ls="--", color=line.get_color(), label=f"{layers[l]} reused")
    ax2.set_xticks(tasks[::max(1, math.ceil(n_tasks / 15))])  # at most 15 labels
    ax2.set_xlabel("task")
    ax2.set_ylabel("units")
    ax2.set_yscale("symlog", linthresh=10)
    ax2.set_ylim(bottom=0)  # unit counts: no negative half of the symlog axis
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    label = f" (mean of {len(caps)} runs)" if len(caps) > 1 else ""
    fig.suptitle((title or "CLNP network capacity") + label)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
