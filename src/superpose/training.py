"""The training loop: stream -> method -> evaluation, writing the run folder as it goes.

Nothing here is method-specific: a method is driven only through its hooks (methods/base.py).
The loop state (position in the schedule, metrics so far, RNG states) is checkpointed at every
task boundary and every ``checkpoint_every`` steps, so an interrupted run resumes exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import yaml

from . import checkpoint, evaluation, extend, models, streams
from .config import RESUME_OVERRIDES, RunConfig, build_options
from .errors import CheckpointError, ConfigError
from .methods import METHODS, Method, MethodContext
from .methods.base import lr_scale, set_lr_scale
from .progress import Bar, clear_of_bars, make_progress
from .runs import PROGRESS_NAME
from .streams.base import Stream

Log = Callable[[str], None]


class TrainingDiverged(Exception):
    """The loss became NaN or infinite (CLI exit code 1)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: a checkpoint was written; the message says how to resume. The CLI
    exits with 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def build_model_factory(cfg: RunConfig, stream: Stream) -> Callable[[], nn.Module]:
    """A function returning a freshly initialised base network for ``stream``."""
    shape = tuple(stream.input_shape)
    if cfg.model == "mlp":
        kwargs: dict[str, Any] = dict(in_features=int(np.prod(shape)),
                                      hidden=[cfg.width] * cfg.depth, classes=stream.num_classes,
                                      bias=not cfg.no_bias)
    else:
        kwargs = dict(input_shape=shape, classes=stream.num_classes, width=cfg.width)
    models.create(cfg.model, **kwargs)  # fail early on bad sizes
    return lambda: models.initialise(models.create(cfg.model, **kwargs), cfg.init)


def build_stream(cfg: RunConfig) -> Stream:
    return streams.create(cfg.benchmark, tasks=cfg.tasks, seed=cfg.seed,
                          steps_per_task=cfg.steps_per_task, validation=cfg.validation,
                          data_dir=cfg.data_dir, download=cfg.download,
                          verify=not cfg.no_verify, device=cfg.device,
                          normalize=cfg.normalize)


def build_method(cfg: RunConfig, stream: Stream, log: Log = lambda _: None) -> Method:
    cls = METHODS.get(cfg.method)
    ctx = MethodContext(stream=stream, build_model=build_model_factory(cfg, stream), lr=cfg.lr,
                        optimizer=cfg.optimizer, batch_size=cfg.batch_size, seed=cfg.seed,
                        device=torch.device(cfg.device), steps_per_task=cfg.steps_per_task,
                        lr_schedule=cfg.lr_schedule, log=log)
    return cls(ctx, build_options(cls, cfg.options))


@dataclass
class LoopState:
    """Everything about the loop's progress that a checkpoint must restore."""

    segment: int = 0  # index of the segment being (or next to be) trained
    step_in_segment: int = 0
    global_step: int = 0
    begun: bool = False  # begin_task already called for ``segment``
    matrix: list[list[float | None]] = field(default_factory=list)
    curve: list[list[float]] = field(default_factory=list)
    train_seconds: float = 0.0
    wall_seconds: float = 0.0


class RunFolder:
    """The run folder contract (DESIGN.md): config, metrics, matrix, summary, checkpoint."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoint(self) -> Path:
        return self.path / checkpoint.CHECKPOINT_NAME

    def write_config(self, cfg: RunConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def append_metrics(self, records: list[dict[str, Any]]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()

    def truncate_metrics(self, last_step: int) -> None:
        """Keep the records up to ``last_step`` (resume); drop a partial line left by a crash."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return
        keep = []
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("step", 0) <= last_step:
                keep.append(line)
        atomic_write(p, "".join(line + "\n" for line in keep))

    def write_matrix(self, matrix: list[list[float | None]], num_tasks: int) -> None:
        lines = [["after_task"] + [f"task_{j}" for j in range(num_tasks)]]
        for i, row in enumerate(matrix):
            lines.append([str(i)] + ["" if v is None else f"{v:.6f}" for v in row])
        tmp = self.path / "accuracy_matrix.csv.tmp"
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(lines)
        os.replace(tmp, self.path / "accuracy_matrix.csv")

    def write_summary(self, summary: dict[str, Any]) -> None:
        """The finished run's summary; the progress file it supersedes is removed."""
        atomic_write(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")
        (self.path / PROGRESS_NAME).unlink(missing_ok=True)

    def write_progress(self, progress: dict[str, Any]) -> None:
        """The summary so far, at every task boundary of an unfinished run (superpose status)."""
        atomic_write(self.path / PROGRESS_NAME, json.dumps(progress, indent=2) + "\n")


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"torch": torch.get_rng_state(), "batches": generator.get_state()}


def set_rng_state(generator: torch.Generator, tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch"])
    generator.set_state(tensors["batches"])


@contextmanager
def deferred_stop_signals() -> Iterator[dict[str, Any]]:
    """While active, Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption) only sets
    ``flag["stop"]`` and ``flag["signum"]``: the loop finishes the current step, checkpoints
    and exits cleanly. A second signal aborts at once, and so does the first while
    ``flag["now"]`` is set (work that a checkpoint would not keep anyway)."""
    flag: dict[str, Any] = {"stop": False, "now": False, "signum": signal.SIGINT}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: object) -> None:
        first = not flag["stop"]
        flag["stop"] = True
        if first:
            flag["signum"] = signum
        if not first or flag["now"]:
            raise KeyboardInterrupt

    caught = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, handler) for sig in caught}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
        log: Log = print, on_start: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train ``cfg.method`` on ``cfg.benchmark``; write the run folder ``out``; return summary.

    Nothing is written before the data, the method and the model are built (so a bad input
    leaves no files); ``on_start`` is called then, before the folder is written to (on a
    resume: once the checkpoint has been restored).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    trainer = Trainer(cfg, RunFolder(out), progress=progress, log=log)
    if resume:
        trainer.restore()  # checks the checkpoint before anything else is written
        if on_start is not None:
            on_start()
    else:
        if on_start is not None:
            on_start()
        trainer.folder.write_config(cfg)
        (trainer.folder.path / "metrics.jsonl").write_text("")
    return trainer.train()


class Trainer:
    """Drives one method over one stream; owns the loop state and the run folder."""

    def __init__(self, cfg: RunConfig, folder: RunFolder, *, progress: bool, log: Log):
        self.cfg, self.folder, self.progress, self.log = cfg, folder, progress, log
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)  # batch sampling
        self.stream = build_stream(cfg)
        try:
            self.method = build_method(cfg, self.stream, clear_of_bars(log))
        except ConfigError:
            raise
        except ValueError as e:  # sizes that do not fit (a model too small for the images)
            raise ConfigError(f"cannot build method {cfg.method!r} with model {cfg.model!r} "
                              f"for benchmark {cfg.benchmark!r}: {e}") from None
        self.segments = self.stream.schedule(cfg.steps_per_task)
        self.steps_total = sum(s.steps for s in self.segments)
        self.state = LoopState()
        # Fail now, with a clear message, if the network does not take the stream's inputs:
        # one eval-mode forward pass of a zero batch (1, *input_shape); no RNG is drawn.
        model, shape = self.method.model, tuple(self.stream.input_shape)
        was_training = model.training
        model.eval()
        try:
            self.method.predict(torch.zeros(1, *shape, device=torch.device(cfg.device)), 0)
        except (RuntimeError, ValueError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"model {cfg.model!r} does not fit benchmark {cfg.benchmark!r}: "
                              f"its inputs have shape {shape}, and the model fails on them "
                              f"({reason})") from None
        finally:
            model.train(was_training)

    def restore(self) -> None:
        """Load the folder's checkpoint into the method, optimiser, RNGs and loop state.

        Raises ``CheckpointError`` (a ``UserError``) if the checkpoint is missing, corrupt, or
        was written by another configuration than the folder's ``config.yaml``.
        """
        ckpt = self.folder.checkpoint
        groups, header = checkpoint.load(ckpt)
        saved, current = header.get("config"), self.cfg.to_dict()
        changed: dict[str, list[Any]] = {}
        grown: tuple[int, int] | None = None  # (old, new) task columns when extending
        if isinstance(saved, dict):
            changed = {k: [saved.get(k), current.get(k)] for k in RESUME_OVERRIDES
                       if k in saved and saved.get(k) != current.get(k)}
            saved = {**saved, **{k: current.get(k) for k in RESUME_OVERRIDES}}
            if isinstance(saved.get("tasks"), int) and saved["tasks"] < self.cfg.tasks:
                grown = self._extension(saved["tasks"])  # --resume DIR --tasks N
                changed["tasks"] = [saved["tasks"], self.cfg.tasks]
                saved["tasks"] = self.cfg.tasks
            # Settings added to RunConfig after the checkpoint was written: absent there, so
            # the run used what is now their default.
            defaults = RunConfig().to_dict()
            saved = {**{k: v for k, v in defaults.items()
                        if k not in saved and current.get(k) == v}, **saved}
        if saved != current:
            saved = saved if isinstance(saved, dict) else {}
            diff = ", ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} in "
                             "config.yaml" for k in sorted(set(saved) | set(current))
                             if saved.get(k) != current.get(k))
            raise CheckpointError(f"checkpoint {ckpt} was written by another configuration than "
                                  f"the run folder's config.yaml ({diff or 'no config saved'})")
        method = self.method
        try:
            extra, model_state = groups["extra"], groups["model"]
            optim = checkpoint.optimizer_state(groups["optim"], header)
            if grown:
                extra = extend.grow_extra_state(extra, method.extra_state(), *grown)
            method.load_extra_state(extra)  # may reshape the model (CLNP --grow)
            if grown:
                model_state = extend.grow_model_state(model_state, method.model.state_dict(),
                                                      *grown)
            method.model.load_state_dict(model_state)
            method.optimizer = method.make_optimizer()  # the param set may depend on the task
            if grown:
                optim = extend.grow_optimizer_state(optim, method.optimizer, method.model,
                                                    set(groups["model"]), *grown)
            method.optimizer.load_state_dict(optim)
            set_rng_state(self.generator, groups["rng"])
            device = torch.device(self.cfg.device)
            if device.type == "cuda" and "cuda" in groups["rng"]:
                torch.cuda.set_rng_state(groups["rng"]["cuda"], device)
            self.state = LoopState(**header["loop"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            what = (f"cannot be extended from {grown[0]} to {grown[1]} task columns with "
                    f"method {self.cfg.method}" if grown else "does not fit this configuration")
            raise CheckpointError(f"checkpoint {ckpt} {what}: {reason}") from None
        if grown:  # the accuracy matrix gains the new tasks' columns
            old, new = grown
            self.state.matrix = [row + [None] * (new - old) for row in self.state.matrix]
            self.folder.write_config(self.cfg)  # a plain --resume now goes on to cfg.tasks
            for name in ("summary.json", PROGRESS_NAME):
                (self.folder.path / name).unlink(missing_ok=True)
            self.folder.write_matrix(self.state.matrix, new)
            self._write_progress()
        self.folder.truncate_metrics(self.state.global_step)
        self.log(f"resuming {self.folder.path} at step {self.state.global_step} "
                 f"(task segment {self.state.segment + 1}/{len(self.segments)})")
        if changed:  # --resume with --threads and the like: say so, and keep it in the folder
            self.log("  with " + ", ".join(f"{k} {old!r} -> {new!r}"
                                           for k, (old, new) in changed.items()))
            self.folder.append_metrics([{"kind": "resume", "step": self.state.global_step,
                                         "changed": changed}])

    def _extension(self, old_tasks: int) -> tuple[int, int]:
        """Check that a run saved with ``old_tasks`` tasks can go on to ``cfg.tasks``; return
        (old, new) numbers of task columns (``Stream.num_tasks``)."""
        if not self.stream.open_ended:
            raise CheckpointError(
                f"--tasks {self.cfg.tasks}: benchmark {self.cfg.benchmark!r} defines its tasks "
                f"from their number (the run has {old_tasks}), so its run cannot be extended; "
                "start a new run")
        old_stream = build_stream(dataclasses.replace(self.cfg, tasks=old_tasks))
        old_schedule = old_stream.schedule(self.cfg.steps_per_task)
        if self.segments[:len(old_schedule)] != old_schedule:  # the stream's own promise
            raise CheckpointError(f"--tasks {self.cfg.tasks}: the schedule of "
                                  f"{self.cfg.benchmark!r} does not begin with the run's")
        return old_stream.num_tasks, self.stream.num_tasks

    def save_checkpoint(self) -> None:
        meta = {"config": self.cfg.to_dict(), "loop": self.state.__dict__}
        rng = rng_state(self.generator)
        device = torch.device(self.cfg.device)
        if device.type == "cuda":  # CUDA's own generator (dropout, random ops on the GPU)
            rng["cuda"] = torch.cuda.get_rng_state(device)
        self.method.before_checkpoint()
        checkpoint.save(self.folder.checkpoint, model=self.method.model,
                        optimizer=self.method.optimizer, extra=self.method.extra_state(),
                        rng=rng, meta=meta)

    def train(self) -> dict[str, Any]:
        cfg, state = self.cfg, self.state
        start = time.perf_counter() - state.wall_seconds
        bar = make_progress(self.steps_total, state.global_step, cfg.method,
                            enabled=self.progress)
        with deferred_stop_signals() as stop:
            try:
                self._loop(bar, start, stop)
            except KeyboardInterrupt:  # a second signal: stop at once, keep the last checkpoint
                raise Interrupted(f"aborted at step {state.global_step}; the last checkpoint is "
                                  f"kept. {self._resume_hint()}", stop["signum"]) from None
            finally:
                bar.close()
        state.wall_seconds = time.perf_counter() - start
        summary = make_summary(cfg, self.method, self.stream, state)
        self.folder.write_summary(summary)
        return summary

    def _loop(self, bar: Bar, start: float, stop: dict[str, Any]) -> None:
        cfg, state, method, stream = self.cfg, self.state, self.method, self.stream
        loss_sum, loss_n = 0.0, 0
        while state.segment < len(self.segments):
            seg = self.segments[state.segment]
            if not state.begun:
                self._begin_task(seg.task, stop)
                state.begun = True
            while state.step_in_segment < seg.steps:
                t0 = time.perf_counter()
                x, y = stream.train_batch(seg.task, state.global_step, cfg.batch_size,
                                          self.generator)
                if cfg.lr_schedule != "constant":
                    set_lr_scale(method.optimizer,
                                 lr_scale(cfg.lr_schedule, state.step_in_segment, seg.steps))
                loss = float(method.train_step(x, y, seg.task, state.global_step))
                state.train_seconds += time.perf_counter() - t0
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss became {loss} at step {state.global_step + 1} (task {seg.task}) "
                        f"with method {cfg.method}; the last good checkpoint is kept in "
                        f"{self.folder.checkpoint}. Try a smaller --lr.")
                loss_sum, loss_n = loss_sum + loss, loss_n + 1
                state.step_in_segment += 1
                state.global_step += 1
                bar.update(1)
                if state.global_step % cfg.eval_every == 0:
                    acc = evaluation.evaluate(method, stream, 0, "test", cfg.eval_batch_size)
                    state.curve.append([state.global_step, acc])
                    mean_loss = loss_sum / max(loss_n, 1)
                    self.folder.append_metrics([
                        {"kind": "train", "step": state.global_step, "task": seg.task,
                         "loss": mean_loss},
                        {"kind": "curve", "step": state.global_step, "task": 0,
                         "accuracy": acc}])
                    bar.set_postfix(task=seg.task, loss=f"{mean_loss:.3f}", acc0=f"{acc:.3f}")
                    loss_sum, loss_n = 0.0, 0
                if stop["stop"] or (cfg.checkpoint_every
                                      and state.global_step % cfg.checkpoint_every == 0):
                    state.wall_seconds = time.perf_counter() - start
                    self.save_checkpoint()
                if stop["stop"]:
                    raise self._checkpointed(stop["signum"])
            method.end_task(seg.task)
            self._evaluate_boundary(bar)
            state.segment += 1
            state.step_in_segment = 0
            state.begun = False
            state.wall_seconds = time.perf_counter() - start
            self.save_checkpoint()
            if state.segment < len(self.segments):
                self._write_progress()

    def _write_progress(self) -> None:
        """progress.json: summary.json's content for the boundaries passed so far, and the
        position in the schedule, so that a long run can be read while it trains."""
        progress = make_summary(self.cfg, self.method, self.stream, self.state)
        progress.update(finished=False, segments_done=self.state.segment,
                        segments=len(self.segments),
                        steps_total=self.steps_total)
        self.folder.write_progress(progress)

    def _begin_task(self, task: int, stop: dict[str, Any]) -> None:
        """``method.begin_task``, which may be long (CLNP's grid trains several candidates).
        Nothing it does is checkpointed, and the last checkpoint (the previous boundary) is
        where a resume starts it again: so a signal stops it at once."""
        if stop["stop"]:  # the signal came while the last task ended: its boundary is saved
            raise self._checkpointed(stop["signum"])
        stop["now"] = True
        try:
            segment = self.state.segment
            if (self.cfg.reset_optimizer and segment > 0
                    and self.segments[segment - 1].task != task):
                self.method.reset_optimizer()
            self.method.begin_task(task)
        except KeyboardInterrupt:
            if self.folder.checkpoint.is_file():
                where = (f"the checkpoint at step {self.state.global_step} starts it again. "
                         f"{self._resume_hint()}")
            else:
                where = "nothing was trained and there is no checkpoint yet: start the run again"
            raise Interrupted(f"interrupted while task {task} was being prepared; {where}",
                              stop["signum"]) from None
        finally:
            stop["now"] = False

    def _resume_hint(self) -> str:
        return f"Resume with: superpose run --resume {self.folder.path}"

    def _checkpointed(self, signum: int) -> Interrupted:
        """The stop after a signal once the current state is in the checkpoint."""
        return Interrupted(f"interrupted at step {self.state.global_step}; checkpoint written. "
                           f"{self._resume_hint()}", signum)

    def _evaluate_boundary(self, bar: Bar) -> None:
        """A row of the accuracy matrix: every task seen so far, on its test set (with
        ``boundary_eval: sparse``, before the last boundary only task 0 and the task just
        trained; the others stay None)."""
        cfg, state = self.cfg, self.state
        seen = max(s.task for s in self.segments[: state.segment + 1])
        tasks = list(range(seen + 1))
        if cfg.boundary_eval == "sparse" and state.segment + 1 < len(self.segments):
            tasks = sorted({0, self.segments[state.segment].task})
        accs = evaluation.evaluate_tasks(self.method, self.stream, tasks, "test",
                                         cfg.eval_batch_size)  # one pass where the method can
        by_task = dict(zip(tasks, accs, strict=True))
        row: list[float | None] = [by_task.get(j) for j in range(self.stream.num_tasks)]
        state.matrix.append(row)
        self.folder.append_metrics([{"kind": "matrix", "step": state.global_step,
                                     "after_task": state.segment, "accuracies": row}])
        self.folder.write_matrix(state.matrix, self.stream.num_tasks)
        if self.progress:
            accs = " ".join(f"{v:.3f}" for v in row if v is not None)
            bar.write(f"[{cfg.method}] after task {state.segment}: {accs}")


def make_summary(cfg: RunConfig, method: Method, stream: Stream, state: LoopState
                 ) -> dict[str, Any]:
    """summary.json (DESIGN.md contract)."""
    m = state.matrix
    summary: dict[str, Any] = {
        "benchmark": cfg.benchmark,
        "method": cfg.method,
        "tasks": stream.num_tasks,
        "final_accuracy": evaluation.final_accuracies(m),
        "average_accuracy": evaluation.average_accuracy(m),
        "average_last10": evaluation.average_last_k(m, 10),
        "backward_transfer": evaluation.backward_transfer(m),
        "first_task_curve": state.curve,
        "parameters": method.count_parameters(),
        "wall_seconds": round(state.wall_seconds, 3),
        "train_steps_per_second": round(state.global_step / max(state.train_seconds, 1e-9), 2),
        "steps": state.global_step,
        "seed": cfg.seed,
    }
    summary.update(method.summary())
    return summary
