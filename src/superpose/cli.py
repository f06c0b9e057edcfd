"""Command line: ``superpose run | list | plot | report``. Thin: parse, configure, call."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, NoReturn

from . import config as config_mod
from .checkpoint import CHECKPOINT_NAME
from .errors import UsageError, UserError
from .methods import METHODS

DEFAULT_EXPERIMENT = {
    "benchmark": "permuted-digits",
    "method": "standard,psp-binary",
    "threads": 1,  # tiny networks: one thread is fastest, and robust on a busy machine
}

HELP = {
    "benchmark": "the task stream (see `superpose list`)",
    "method": "continual-learning method, or a comma list to compare several",
    "tasks": "number of tasks (with --resume: continue a run, finished or not, up to this many "
             "tasks; permuting and rotating benchmarks)",
    "steps_per_task": "optimiser steps per task",
    "batch_size": "training batch size",
    "model": "network architecture (see `superpose list`)",
    "width": "hidden units per layer (channels for conv nets)",
    "depth": "number of hidden layers (mlp)",
    "init": "weight initialisation: torch (PyTorch's default) or glorot (TensorFlow's)",
    "no_bias": "mlp layers without biases (PSP's contexts do not reach a bias, so every task "
               "moves the biases of all others)",
    "normalize": "permuted-* benchmarks: standardise pixels with the training set's mean and "
                 "standard deviation, (x - 0.1307) / 0.3081 on MNIST, as the PSP authors' code did",
    "lr": "learning rate",
    "lr_schedule": "learning rate within each task: constant (the papers'), cosine (from "
                   "--lr down to 0 over the task's steps, restarting at every task), or "
                   "warmup-cosine (a linear rise over the first tenth of each task, then the "
                   "cosine)",
    "optimizer": "adam, rmsprop or sgd",
    "reset_optimizer": "clear the optimiser's state (Adam's or RMSprop's running moments, SGD's "
                       "momentum) before every task after the first, as Zenke et al.'s code "
                       "offers (reset_optimizer; off there and here by default)",
    "seed": "random seed (data order, init, permutations, contexts)",
    "device": "cpu, cuda, cuda:N",
    "data_dir": "folder holding the datasets (else $SUPERPOSE_DATA, ~/.cache/superpose, system)",
    "no_verify": "load data files that fail verification (user-made subsets), with a warning",
    "download": "download missing datasets from the official mirrors",
    "out": "run folder (default runs/<benchmark>-<method>-<time>)",
    "eval_every": "evaluate task 0 every N steps (first-task curve)",
    "eval_batch_size": "evaluation batch size",
    "boundary_eval": "what each task boundary evaluates: all (every task seen: the full "
                     "accuracy matrix) or sparse (task 0 and the task just trained, and every "
                     "task at the end: about a third faster for long runs)",
    "validation": "fraction of training data held out for validation",
    "checkpoint_every": "also checkpoint every N steps (0: only at task boundaries)",
    "threads": "CPU threads for PyTorch (0: its default; 1 is fastest for small nets on a busy "
               "machine)",
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML file with options (flags win)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for f in fields(config_mod.RunConfig):
        if f.name == "options":
            continue
        if f.type in ("bool", bool):
            p.add_argument(flag(f.name), action="store_const", const=True, default=None,
                           help=HELP.get(f.name))
        else:
            p.add_argument(flag(f.name), default=None, metavar="X", help=HELP.get(f.name))
    group = p.add_argument_group("method options (see `superpose list`)")
    for name, f in config_mod.method_option_specs().items():
        doc = f.metadata.get("help", "") if f.metadata else ""
        default = f.default if f.default is not MISSING else None
        help_text = f"{doc} (default {default})" if doc else f"default {default}"
        help_text = help_text.replace("%", "%%")  # argparse formats help strings
        if config_mod.base_type(f.type) is bool:
            group.add_argument(flag(name), action="store_const", const=True, default=None,
                               help=help_text)
        else:
            group.add_argument(flag(name), default=None, metavar="X", help=help_text)


class Parser(argparse.ArgumentParser):
    """argparse, but a malformed command line raises ``UsageError`` (one line, exit code 2)
    instead of printing the usage block and exiting from deep inside the parser."""

    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def version_line() -> str:
    """``superpose 0.1.0 (torch 2.13.0, python 3.12.3)``, without importing torch."""
    from importlib import metadata

    from . import __version__

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    python = ".".join(map(str, sys.version_info[:3]))
    return f"superpose {__version__} (torch {torch_version}, python {python})"


def parser() -> Parser:
    p = Parser(
        prog="superpose",
        description="Continual learning by storing many models in one set of parameters "
                    "(parameter superposition, neural pruning, and their baselines).")
    p.add_argument("--version", action="version", version=version_line())
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a method on a task stream and write a run folder")
    add_run_arguments(run)
    lst = sub.add_parser("list", help="name the benchmarks, methods, models and contexts")
    plot = sub.add_parser("plot", help="draw figures from run folders")
    plot.add_argument("runs", nargs="+", metavar="RUN")
    plot.add_argument("--out", help="folder for the figures (default: the first run's folder)")
    rep = sub.add_parser("report", help="Markdown table comparing run folders")
    rep.add_argument("runs", nargs="+", metavar="RUN")
    status = sub.add_parser("status", help="how far run folders are, finished or not (reads "
                                           "progress.json while a run trains)")
    status.add_argument("runs", nargs="+", metavar="RUN")
    p.commands = {"run": run, "list": lst, "plot": plot, "report": rep, "status": status}
    return p


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; unknown flags are an error that suggests the close flag."""
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra:
        sub = p.commands[args.command]
        known = [o for a in sub._actions for o in a.option_strings]
        word = extra[0]
        hint = ""
        if word.startswith("-"):
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
        raise UsageError(f"unrecognized argument {word!r}.{hint} (see `{sub.prog} --help`)")
    return args


def flags_dict(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"command", "config", "resume", "no_progress"}
    return {k: v for k, v in vars(args).items() if k not in skip and v is not None}


def cmd_run(args: argparse.Namespace) -> int:
    from .runtime import keep_freed_memory

    progress = not args.no_progress
    keep_freed_memory()  # the step reuses its buffers (see superpose.runtime)
    if args.resume:
        flags = flags_dict(args)
        may = (*config_mod.RESUME_OVERRIDES, "tasks")  # --tasks: continue with more tasks
        given = ([args.config] if args.config else []) + [flag(k) for k in flags if k not in may]
        if given:
            allowed = ", ".join(flag(k) for k in may)
            raise UserError(f"--resume takes the configuration from the run folder's "
                            f"config.yaml; drop {', '.join(given)} (a resume may change only "
                            f"{allowed})")
        overrides = {k: v for k, v in flags.items() if k in may}
        return resume(Path(args.resume), progress, overrides)

    layers = [] if args.config else [DEFAULT_EXPERIMENT]
    if args.config:
        layers.append(config_mod.load_yaml(args.config))
    layers.append(flags_dict(args))
    cfg = config_mod.resolve(*layers)
    methods = config_mod.split_methods(cfg.method)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{cfg.benchmark}-{'-'.join(methods)}-{stamp}"
    base = Path(cfg.out) if cfg.out else Path("runs") / name
    check_out(base)
    return run_methods(cfg, base, methods, progress, resume=False)


def check_out(base: Path) -> None:
    """``--out`` must be a new or empty folder that can be created; nothing is written here."""
    if base.exists() and not base.is_dir():
        raise UserError(f"--out {base} is a file, not a folder")
    if base.is_dir() and any(base.iterdir()):
        raise UserError(f"--out {base} exists and is not empty; choose another folder "
                        f"(or --resume {base} to continue an interrupted run)")
    parent = base.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {base}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {base}: cannot create folders in {parent} (permission denied)")


def method_config(cfg: config_mod.RunConfig, method: str, folder: Path
                  ) -> config_mod.RunConfig:
    """The config of one method of a (possibly multi-method) run: its own options only."""
    own = METHODS.get(method).option_fields()
    common = {k: v for k, v in cfg.to_dict().items() if k in config_mod.COMMON_KEYS}
    one = config_mod.resolve(common, {"method": method},
                             {k: v for k, v in cfg.options.items() if k in own})
    one.out = str(folder)
    return one


def resume(folder: Path, progress: bool, overrides: dict[str, Any] | None = None) -> int:
    """``--resume DIR``: continue a run (or every unfinished method of a comparison), with
    ``overrides`` (``config.RESUME_OVERRIDES`` only) replacing the saved settings."""
    overrides = overrides or {}
    if not folder.exists():
        raise UserError(f"--resume {folder}: no such folder")
    if not folder.is_dir():
        raise UserError(f"--resume {folder}: not a folder")
    if not (folder / "config.yaml").is_file():
        raise UserError(f"--resume {folder}: not a run folder (no config.yaml)")
    saved = config_mod.load_yaml(folder / "config.yaml")
    cfg = config_mod.resolve(saved, overrides)
    before = int(saved.get("tasks", cfg.tasks))
    if cfg.tasks < before:
        raise UserError(f"--tasks {cfg.tasks}: the run in {folder} has {before} tasks; a resume "
                        "can only add tasks")
    more = (f"; --resume {folder} --tasks N (N > {before}) continues it with more tasks")
    methods = config_mod.split_methods(cfg.method)
    if len(methods) > 1:
        if cfg.tasks == before and (folder / "report.md").is_file() and all(
                (folder / m / "summary.json").is_file() for m in methods):
            raise UserError(f"--resume {folder}: the comparison already finished "
                            f"(report.md exists){more}")
        return run_methods(cfg, folder, methods, progress, resume=True, overrides=overrides)
    if cfg.tasks == before and (folder / "summary.json").is_file():
        raise UserError(f"--resume {folder}: the run already finished (summary.json "
                        f"exists){more}")
    if not (folder / CHECKPOINT_NAME).is_file():
        raise UserError(f"--resume {folder}: no checkpoint in it (the run stopped before "
                        f"its first checkpoint; start it again with a new --out)")
    return run_methods(cfg, folder, methods, progress, resume=True)


def run_methods(cfg: config_mod.RunConfig, base: Path, methods: list[str], progress: bool,
                *, resume: bool, overrides: dict[str, Any] | None = None) -> int:
    """Train each method into its folder (``base``, or ``base/<method>`` when several), keeping
    finished ones and resuming checkpointed ones when ``resume``; then plot and report."""
    from .runs import load_run

    several = len(methods) > 1
    results = []
    for method in methods:
        folder = base / method if several else base
        if resume and (folder / "summary.json").is_file() and not adds_tasks(folder, cfg):
            print(f"== {method}: finished before, kept ({folder})", file=sys.stderr)
            summary = load_run(folder).summary
        else:
            summary = run_one(cfg, method, base, folder, progress, resume=resume,
                              overrides=overrides)
        results.append((method, folder, summary))
    if several:
        from . import plots, report

        runs = [load_run(f) for _, f, _ in results]
        plots.plot_runs(runs, base)
        (base / "report.md").write_text(report.markdown_table(runs) + "\n")
    print_results(results)
    print(f"run folder: {base}")
    return 0


def adds_tasks(folder: Path, cfg: config_mod.RunConfig) -> bool:
    """Whether ``cfg`` continues the run in ``folder`` with more tasks than it was run with."""
    return cfg.tasks > int(config_mod.load_yaml(folder / "config.yaml").get("tasks", cfg.tasks))


def run_one(cfg: config_mod.RunConfig, method: str, base: Path, folder: Path, progress: bool,
            *, resume: bool, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume, if ``folder`` holds a checkpoint) one method of ``cfg``; draw its
    figures; return its summary. ``folder`` is ``base`` unless the run compares methods."""
    from . import training
    from .runs import load_run

    several = folder != base
    own = resume and (folder / CHECKPOINT_NAME).is_file()
    if not several:
        one = cfg
    elif own:  # the sub-run's own resolved config, which its checkpoint was written with
        one = config_mod.resolve(config_mod.load_yaml(folder / "config.yaml"), overrides or {})
    else:
        one = method_config(cfg, method, folder)
    print(f"== {'resuming' if own else 'training'} {method} on {one.benchmark}: {one.tasks} "
          f"tasks x {one.steps_per_task} steps -> {folder}", file=sys.stderr)

    def started() -> None:
        """Once the first method has started, the comparison's own config.yaml (naming every
        method) lets ``--resume base`` finish them all."""
        if several and (not (base / "config.yaml").is_file() or adds_tasks(base, cfg)):
            cfg.out = str(base)
            training.RunFolder(base).write_config(cfg)

    try:
        summary = training.run(one, folder, resume=own, progress=progress, on_start=started)
    except training.Interrupted as e:
        if not several:
            raise
        raise training.Interrupted(str(e).replace(f"--resume {folder}", f"--resume {base}"),
                                   e.signum) from None
    from . import plots  # matplotlib only now: a bad input writes no font cache

    plots.plot_runs([load_run(folder)], folder)
    return summary


def print_results(results: Sequence[tuple[str, Path, dict[str, Any]]]) -> None:
    print()
    print(f"{'method':<16} {'avg acc %':>9} {'task 0 final %':>14} {'params/task':>11} "
          f"{'wall s':>7}")
    for method, _, s in results:
        print(f"{method:<16} {100 * s['average_accuracy']:>9.2f} "
              f"{100 * s['final_accuracy'][0]:>14.2f} {s['parameters']['per_task']:>11} "
              f"{s['wall_seconds']:>7.1f}")


def cmd_list(_: argparse.Namespace) -> int:
    from . import contexts, models, streams
    from .methods import METHODS

    def section(title: str, names: Sequence[str]) -> None:
        print(f"{title}:")
        for n in names:
            print(f"  {n}")

    section("benchmarks", streams.names())
    section("methods", METHODS.names())
    section("models", models.names())
    section("contexts", contexts.CONTEXTS.names())
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .runs import load_runs

    runs = load_runs(args.runs)
    from . import plots  # matplotlib only after the folders were read (it writes a font cache)

    out = Path(args.out) if args.out else runs[0].path
    for p in plots.plot_runs(runs, out):
        print(p)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from . import report
    from .runs import load_runs

    print(report.markdown_table(load_runs(args.runs)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from . import report
    from .runs import run_statuses

    statuses, notes = run_statuses(args.runs)
    for note in notes:
        print(f"superpose: skipped: {note}", file=sys.stderr)
    if not statuses:
        raise UserError("none of the paths is a run folder")
    print(report.status_table(statuses))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "list": cmd_list, "plot": cmd_plot, "report": cmd_report,
    "status": cmd_status}


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. Exit codes: 0 done, 1 training diverged or the system failed (disk
    full, ...), 2 bad input (one ``superpose: error:`` line, no traceback), 130 interrupted by
    Ctrl-C, 143 by SIGTERM (a checkpoint is written either way)."""
    from .training import Interrupted, TrainingDiverged

    try:
        args = parse(argv)
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"superpose: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"superpose: training diverged: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"\nsuperpose: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # outside the training loop (loading data, plotting)
        print("\nsuperpose: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the system, not the input: disk full, a folder gone mid-run
        where = f": {e.filename}" if e.filename else ""
        print(f"superpose: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


def entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
