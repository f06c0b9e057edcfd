"""Reading run folders back (for plot and report): only files the run wrote."""

from __future__ import annotations

import contextlib
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

#: An unfinished run's summary so far (summary.json's keys, plus where the loop stands),
#: written by training.RunFolder at every task boundary and removed with summary.json.
PROGRESS_NAME = "progress.json"


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    matrix: list[list[float | None]]

    @property
    def label(self) -> str:
        opts = self.config
        method = str(self.summary.get("method", "?"))
        extra = []
        if opts.get("context") and not method.startswith(f"psp-{opts['context']}"):
            extra.append(str(opts["context"]))
        if opts.get("context_schedule") not in (None, "task"):
            extra.append(str(opts["context_schedule"]))  # pspFast / pspFastLocalMix
        if opts.get("learn_context"):
            extra.append("learned")
        return f"{method} ({', '.join(extra)})" if extra else method


def load_run(path: str | Path) -> Run:
    """A finished run folder; a clear ``UserError`` if ``path`` is not one."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} is not a folder: it does not exist (expected a run folder "
                        "written by superpose run)")
    if not p.is_dir():
        raise UserError(f"{p} is not a folder (expected a run folder written by superpose run)")
    need = ["config.yaml", "summary.json", "accuracy_matrix.csv"]
    missing = [n for n in need if not (p / n).is_file()]
    if missing:
        hint = ""
        if (p / "config.yaml").is_file():
            hint = f"; if it was interrupted, resume it with: superpose run --resume {p}"
        raise UserError(f"{p} is not a finished run folder: missing {', '.join(missing)}{hint}")
    name = "config.yaml"
    try:
        config = yaml.safe_load((p / name).read_text()) or {}
        name = "summary.json"
        summary = json.loads((p / name).read_text())
        name = "accuracy_matrix.csv"
        matrix = read_matrix(p / name)
    except (OSError, ValueError, yaml.YAMLError, IndexError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot read run folder {p}: {name}: {reason}") from None
    if not isinstance(config, dict):
        raise UserError(f"cannot read run folder {p}: config.yaml is not a mapping")
    problem = _summary_problem(summary)
    if problem:
        raise UserError(f"cannot read run folder {p}: summary.json {problem}")
    return Run(p, config, summary, matrix)


def read_matrix(path: Path) -> list[list[float | None]]:
    """accuracy_matrix.csv as rows of fractions, None where blank (OSError, ValueError or
    IndexError if it cannot be read)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [[None if v == "" else float(v) for v in row[1:]] for row in rows[1:]]


def _summary_problem(summary: Any) -> str | None:
    """What is wrong with a summary.json's content for plot/report (None: nothing)."""
    if not isinstance(summary, dict):
        return "is not a JSON object"
    for key in ("method", "final_accuracy"):
        if key not in summary:
            return f"has no {key!r}"
    final = summary["final_accuracy"]
    if not isinstance(final, list) or not all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in final):
        return "has a final_accuracy that is not a list of numbers"
    return None


def comparison_methods(path: str | Path) -> list[str] | None:
    """The methods of a comparison folder (``superpose run --method a,b`` writes one sub-folder
    per method beside a config.yaml naming them all), else None."""
    p = Path(path)
    if not (p / "config.yaml").is_file() or (p / "summary.json").exists():
        return None
    try:
        config = yaml.safe_load((p / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    method = config.get("method") if isinstance(config, dict) else None
    methods = [m.strip() for m in str(method or "").split(",") if m.strip()]
    return methods if len(methods) > 1 else None


def load_runs(paths: list[str] | list[Path]) -> list[Run]:
    """Run folders for plot/report; a comparison folder stands for its methods' runs."""
    runs: list[Run] = []
    for path in paths:
        p = Path(path)
        methods = comparison_methods(p)
        if methods is None:
            runs.append(load_run(p))
            continue
        unfinished = [m for m in methods if not (p / m / "summary.json").is_file()]
        if unfinished:
            raise UserError(f"{p} is an unfinished comparison ({', '.join(unfinished)} not "
                            f"finished); resume it with: superpose run --resume {p}")
        runs.extend(load_run(p / m) for m in methods)
    return runs


#: Config keys that say where or how a run was executed, not what was trained.
_EXECUTION_KEYS = frozenset({"out", "data_dir", "device", "threads", "no_verify", "download",
                             "checkpoint_every", "eval_batch_size", "method"})


def distinct_labels(runs: list[Run]) -> list[str]:
    """One legend label per run: ``Run.label``, and where several runs share it, the settings
    that tell them apart (``psp-binary lr=2.5e-05``), else the folder name."""
    labels = [r.label for r in runs]
    out = list(labels)
    for label in set(labels):
        group = [i for i, lab in enumerate(labels) if lab == label]
        if len(group) < 2:
            continue
        keys = sorted({k for i in group for k in runs[i].config} - _EXECUTION_KEYS)
        differ = [k for k in keys
                  if len({repr(runs[i].config.get(k)) for i in group}) > 1]
        for i in group:
            extra = " ".join(f"{k}={runs[i].config.get(k)}" for k in differ[:3])
            out[i] = f"{label} {extra}" if extra else f"{label} ({runs[i].path.name})"
    return out


def fmt_pct(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


@dataclass
class RunStatus:
    """Where a run folder stands, finished or not (``superpose status``)."""

    path: Path
    method: str
    state: str  # "finished", "unfinished" or "no checkpoint yet"
    step: int | None  # optimiser steps taken (the latest checkpoint's, if unfinished)
    steps_total: int | None
    wall_seconds: float | None
    summary: dict[str, Any]  # summary.json, or progress.json (the summary so far), or {}
    matrix: list[list[float | None]]  # rows written so far


def run_status(path: str | Path) -> RunStatus:
    """Read ``summary.json`` (finished), else ``progress.json`` and the checkpoint's header
    (unfinished); only the header is read from the checkpoint, never its tensors."""
    p = Path(path)
    if not (p / "config.yaml").is_file():
        raise UserError(f"{p} is not a run folder (no config.yaml; expected a folder written "
                        "by superpose run)")
    try:
        config = yaml.safe_load((p / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read run folder {p}: config.yaml: {e}") from None
    method = str(config.get("method", "?")) if isinstance(config, dict) else "?"
    matrix: list[list[float | None]] = []
    with contextlib.suppress(OSError, ValueError, IndexError):  # none yet, or being replaced
        matrix = read_matrix(p / "accuracy_matrix.csv")
    if (p / "summary.json").is_file():
        summary = _read_json(p / "summary.json")
        return RunStatus(p, method, "finished", summary.get("steps"), summary.get("steps"),
                         summary.get("wall_seconds"), summary, matrix)
    progress = _read_json(p / PROGRESS_NAME) if (p / PROGRESS_NAME).is_file() else {}
    step, wall = progress.get("steps"), progress.get("wall_seconds")
    loop = _checkpoint_loop(p / "checkpoint.safetensors")
    if loop:
        step, wall = loop.get("global_step", step), loop.get("wall_seconds", wall)
    state = "unfinished" if step else "no checkpoint yet"
    return RunStatus(p, method, state, step, progress.get("steps_total"), wall, progress,
                     matrix)


def run_statuses(paths: list[str] | list[Path]) -> tuple[list[RunStatus], list[str]]:
    """``run_status`` of each path, a comparison folder standing for its methods' runs; paths
    that are not run folders give a note each instead (a glob over runs/ catches logs)."""
    statuses: list[RunStatus] = []
    notes: list[str] = []
    for path in paths:
        methods = comparison_methods(path)
        try:
            if methods:
                statuses.extend(run_status(Path(path) / m) for m in methods)
            else:
                statuses.append(run_status(path))
        except UserError as e:
            notes.append(str(e))
    return statuses, notes


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(obj, dict):
        raise UserError(f"cannot read {path}: not a JSON object")
    return obj


def _checkpoint_loop(path: Path) -> dict[str, Any]:
    """The loop state in a checkpoint's JSON header ({} if there is no readable one)."""
    if not path.is_file():
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("superpose", "{}"))
    except (SafetensorError, OSError, ValueError):
        return {}
    loop = header.get("loop") if isinstance(header, dict) else None
    return loop if isinstance(loop, dict) else {}
