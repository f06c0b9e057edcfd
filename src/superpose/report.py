"""Markdown tables comparing run folders."""

from __future__ import annotations

from collections.abc import Sequence

from .evaluation import learned_last_k
from .progress import format_seconds
from .runs import Run, RunStatus, fmt_pct


def markdown_table(runs: Sequence[Run]) -> str:
    """One row per run: method, tasks, accuracies (%), parameters, speed.

    Task 0 appears twice: right after its own training (A[0, 0]) and at the end, so that a
    row shows how much the first task lost to all the later ones (PSP Fig. 2 / 3); so do the
    last 10 tasks (the Fig. 3 table's average, and the same tasks right after their training:
    how well they were learned against what the tasks after them took away)."""
    head = ("| run | method | tasks | avg acc % | last-10 acc % | last-10 after training % "
            "| task 0 after training % | task 0 final % | BWT % | params (shared / per task) "
            "| steps/s | wall s |")
    sep = "|" + "---|" * 12
    lines = [head, sep]
    for r in runs:
        s = r.summary
        p = s.get("parameters", {})
        final = s.get("final_accuracy") or [None]
        first = r.matrix[0][0] if r.matrix and r.matrix[0] else None  # A[0, 0]
        learned = learned_last_k(r.matrix) if r.matrix else None
        lines.append(
            f"| {r.path.name} | {r.label} | {s.get('tasks')} | {fmt_pct(s.get('average_accuracy'))}"
            f" | {fmt_pct(s.get('average_last10'))} | {fmt_pct(learned)} | {fmt_pct(first)}"
            f" | {fmt_pct(final[0])}"
            f" | {fmt_pct(s.get('backward_transfer'))}"
            f" | {p.get('shared', '')} / {p.get('per_task', '')}"
            f" | {s.get('train_steps_per_second', '')} | {s.get('wall_seconds', '')} |")
    return "\n".join(lines)


def status_table(statuses: Sequence[RunStatus]) -> str:
    """One row per run folder, finished or not: how far it is, the accuracy matrix so far
    (mean of its last row; mean of its diagonal, each task right after its own training; the
    newest task) and, for CLNP, how many units of each hidden layer are used."""
    head = ("| run | method | state | step | tasks trained | avg acc so far % "
            "| right after training % | newest task % | wall s | left (est.) | layers used |")
    lines = [head, "|" + "---|" * 11]
    for st in statuses:
        total = f" / {st.steps_total}" if st.steps_total else ""
        step = f"{st.step}{total}" if st.step is not None else ""
        diag = [row[i] for i, row in enumerate(st.matrix) if i < len(row) and row[i] is not None]
        last = [v for v in st.matrix[-1] if v is not None] if st.matrix else []
        wall = f"{st.wall_seconds:.0f}" if st.wall_seconds is not None else ""
        lines.append(
            f"| {st.path.name} | {st.method} | {st.state} | {step} | {len(st.matrix)}"
            f" | {fmt_pct(_mean(last))} | {fmt_pct(_mean(diag))}"
            f" | {fmt_pct(diag[-1] if diag else None)} | {wall}"
            f" | {time_left(st.step, st.steps_total, st.wall_seconds, st.state)}"
            f" | {_layers_used(st.summary)} |")
    return "\n".join(lines)


def time_left(step: int | None, total: int | None, wall: float | None, state: str) -> str:
    """The time an unfinished run still needs at the pace it has kept so far (wall time per
    step, evaluations and CLNP's pruning included), e.g. ``1:02:05``; blank where unknown."""
    if state == "finished" or not step or not total or not wall or step >= total:
        return ""
    return format_seconds(wall * (total - step) / step)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _layers_used(summary: dict) -> str:
    """CLNP's capacity after the last finished task: ``dense 1 525/2000, dense 2 95/2000``."""
    cap = summary.get("capacity")
    if not isinstance(cap, dict) or not cap.get("tasks"):
        return ""
    return ", ".join(f"{name} {used[-1]}/{units[-1]}" for name, used, units in
                     zip(cap["layers"], cap["used_units"], cap["units"], strict=True))
