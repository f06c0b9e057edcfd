"""Run configuration: one dataclass of common settings plus the chosen method's own options.

Values come from (lowest to highest priority) the benchmark's defaults, a YAML file, and command
line flags. Method options live flat beside the common keys (``margin: 0.0005``) in YAML and as
flags (``--margin``); each method declares them in its ``Options`` dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import ConfigError
from .methods import METHODS
from .methods.base import LR_SCHEDULES, OPTIMIZERS
from .models import INITS, MODELS
from .registry import unknown_name_message
from .streams import STREAMS


@dataclass
class RunConfig:
    """Common settings of one run. ``None`` means: take the benchmark's default."""

    benchmark: str = "permuted-digits"
    method: str = "standard"
    tasks: int | None = None
    steps_per_task: int | None = None
    batch_size: int | None = None
    model: str | None = None  # None: the benchmark's default model (mlp for most)
    width: int | None = None
    depth: int | None = None
    init: str = "torch"  # weight initialisation: torch (PyTorch's default) or glorot (TF's)
    no_bias: bool = False  # mlp without biases (a PSP bias is shared by every task, unprotected)
    normalize: bool = False  # permuting streams: standardise pixels by the training set's mean/std
    lr: float | None = None
    lr_schedule: str = "constant"  # within each task: constant, cosine (lr to 0), warmup-cosine
    optimizer: str | None = None
    reset_optimizer: bool = False  # clear the optimiser's state (Adam's moments) at each new task
    seed: int = 0
    device: str = "cpu"
    data_dir: str | None = None
    no_verify: bool = False
    download: bool = False
    out: str | None = None
    eval_every: int = 100
    eval_batch_size: int = 1000
    boundary_eval: str = "all"  # at a task boundary: every task seen, or sparse (0 and the new)
    validation: float = 0.0
    checkpoint_every: int = 0
    threads: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        opts = d.pop("options")
        d.update(opts)
        return d


#: Per-benchmark defaults, filled in for settings the user leaves unset.
BENCHMARK_DEFAULTS: dict[str, dict[str, Any]] = {
    # The offline default: 8x8 digits (1500 train images), small and fast.
    "permuted-digits": dict(tasks=10, steps_per_task=300, batch_size=64, width=128, depth=2,
                            lr=1e-3, optimizer="adam", eval_every=50),
    # The PSP protocol's shape (a task every 1000 steps of batch 128, 50 tasks) with a generic
    # optimiser; the papers' exact settings are in configs/*.yaml.
    "permuted-mnist": dict(tasks=50, steps_per_task=1000, batch_size=128, width=256, depth=2,
                           lr=1e-3, optimizer="adam"),
    "permuted-fashion-mnist": dict(tasks=50, steps_per_task=1000, batch_size=128, width=256,
                                   depth=2, lr=1e-3, optimizer="adam"),
    # Class-incremental streams (streams/incremental.py). width is the conv models' base channel
    # count: resnet18 64 (PSP Fig. 6), clnp-narrow 32 (CLNP Table 2), convnet 16.
    "icifar": dict(model="resnet18", tasks=5, steps_per_task=20000, batch_size=128, width=64,
                   depth=2, lr=1e-3, optimizer="adam", eval_every=500),
    "split-cifar": dict(model="clnp-narrow", tasks=11, steps_per_task=5000, batch_size=256,
                        width=32, depth=2, lr=1e-3, optimizer="adam", eval_every=500),
    "split-fashion-mnist": dict(model="convnet", tasks=5, steps_per_task=300, batch_size=64,
                                width=16, depth=2, lr=1e-3, optimizer="adam", eval_every=50),
}
# Rotating streams: --tasks counts 100-step segments (10 per 360° cycle of 1000 steps).
for _name in ("rotating-mnist", "rotating-fashion-mnist"):
    BENCHMARK_DEFAULTS[_name] = dict(tasks=50, steps_per_task=100, batch_size=128, width=256,
                                     depth=2, lr=1e-3, optimizer="adam")
BENCHMARK_DEFAULTS["rotating-digits"] = dict(tasks=20, steps_per_task=100, batch_size=64,
                                             width=128, depth=2, lr=1e-3, optimizer="adam",
                                             eval_every=20)
FALLBACK_DEFAULTS: dict[str, Any] = dict(model="mlp", tasks=10, steps_per_task=1000,
                                         batch_size=128, width=256, depth=2, lr=1e-3,
                                         optimizer="adam")

#: What a task boundary evaluates: "all" tasks seen so far (the full accuracy matrix), or
#: "sparse": task 0 and the task just trained (the matrix's first column and its diagonal),
#: and every task at the last boundary. Evaluating every task costs a 50-task run at 2x2048
#: about a third of its time on a CPU; the sparse rows still give Fig. 2's task-0 line, the
#: learning accuracies and the final row (the Fig. 3 table, forgetting).
BOUNDARY_EVALS = ("all", "sparse")
COMMON_KEYS = [f.name for f in fields(RunConfig) if f.name != "options"]
#: Settings that say how a run executes, not what it trains: ``--resume`` may change them (more
#: threads once a machine frees up, the data moved, more frequent checkpoints). Another thread
#: count changes the rounding of PyTorch's reductions, so the resumed run is no longer
#: bit-identical to one that never stopped; the run folder records every change.
RESUME_OVERRIDES = ("threads", "data_dir", "checkpoint_every")
POSITIVE_INTS = ("tasks", "steps_per_task", "batch_size", "width", "depth", "eval_every",
                 "eval_batch_size")


def method_option_specs() -> dict[str, dataclasses.Field]:
    """Every option field of every registered method (same name => same meaning)."""
    specs: dict[str, dataclasses.Field] = {}
    for name in METHODS.names():
        for f in fields(METHODS.get(name).Options):
            specs.setdefault(f.name, f)
    return specs


def base_type(tp: Any) -> Any:
    """int | None -> int; list[float] -> list."""
    if isinstance(tp, str):
        tp = eval(tp, vars(typing))  # annotations are strings under `from __future__`
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return list
    if args and origin is not None and origin not in (list, tuple):
        return base_type(args[0])
    return tp


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert a YAML or flag value to the declared type, with a clear error."""
    tp = base_type(tp)
    if value is None:
        return None
    try:
        if tp is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if tp is float:
            v = float(value)
            if not math.isfinite(v):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return v
        if tp is list:
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple):
                value = [value]
            out = []
            for v in value:
                fv = float(v)
                if not math.isfinite(fv):
                    raise ConfigError(f"{key} must hold finite numbers, got {value!r}")
                out.append(fv)
            return out
        if tp is str:
            if key == "method" and isinstance(value, list | tuple):
                value = ",".join(str(v) for v in value)  # YAML: method: [standard, psp]
            if isinstance(value, list | tuple | dict):
                raise ValueError
            return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"{key} must be of type {name}, got {value!r}") from None
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; errors name the file and line (unknown keys: the close name)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read config file {p}: it is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"invalid YAML in {where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of option: value, "
                          f"got {type(data).__name__}")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in getattr(node, "value", [])
             if isinstance(k, yaml.ScalarNode)}
    known = set(COMMON_KEYS) | set(method_option_specs())
    out: dict[str, Any] = {}
    for raw, value in data.items():
        key = str(raw).replace("-", "_")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            if close and "-" in str(raw):  # suggest in the user's spelling
                close = [close[0].replace("_", "-")]
            hint = f" Did you mean {close[0]!r}?" if close else ""
            where = f"{p}:{lines[str(raw)]}" if str(raw) in lines else str(p)
            raise ConfigError(f"unknown option {str(raw)!r} in {where}.{hint}")
        out[key] = value
    return out


def options_of(methods: str) -> set[str]:
    """The option names of the registered methods in a comma list (unknown names: none)."""
    out: set[str] = set()
    for m in split_methods(str(methods)):
        if m in METHODS:
            out |= set(METHODS.get(m).option_fields())
    return out


def resolve(*layers: dict[str, Any]) -> RunConfig:
    """Merge option dicts (later wins), fill benchmark defaults, validate, return the config."""
    specs = method_option_specs()
    final_method = next((layer["method"] for layer in reversed(layers)
                         if layer.get("method") is not None), None)
    merged: dict[str, Any] = {}
    for layer in layers:
        layer = {k: v for k, v in layer.items() if v is not None}
        if final_method is not None and layer.get("method", final_method) != final_method:
            # A file naming several methods, overridden by a later layer (--method ewc): its
            # options for the methods no longer run are dropped, not errors.
            keep = options_of(final_method)
            layer = {k: v for k, v in layer.items() if k not in specs or k in keep}
        merged.update(layer)
    common_types = {f.name: f.type for f in fields(RunConfig)}
    known = set(COMMON_KEYS) | set(specs)
    for key in merged:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown option {key!r}.{hint}")
    cfg = RunConfig()
    for key in COMMON_KEYS:
        if key in merged:
            setattr(cfg, key, coerce(key, merged[key], common_types[key]))
    # Names: benchmark, method (a comma list runs several), model.
    if cfg.benchmark not in STREAMS:
        raise ConfigError(unknown_name_message("benchmark", cfg.benchmark, STREAMS.names()))
    for m in split_methods(cfg.method):
        if m not in METHODS:
            raise ConfigError(unknown_name_message("method", m, METHODS.names()))
    defaults = {**FALLBACK_DEFAULTS, **BENCHMARK_DEFAULTS.get(cfg.benchmark, {})}
    if cfg.model is None:
        cfg.model = defaults["model"]
    if cfg.model not in MODELS:
        raise ConfigError(unknown_name_message("model", cfg.model, MODELS.names()))
    if cfg.width is None and cfg.model != defaults["model"]:
        # A model other than the benchmark's own: its own base width (a conv net's channel
        # count), not the benchmark's MLP width.
        cfg.width = getattr(MODELS.get(cfg.model), "default_width", None)
    for key, value in defaults.items():
        if key in ("eval_every",):
            if key not in merged:
                setattr(cfg, key, value)
        elif getattr(cfg, key) is None:
            setattr(cfg, key, value)
    # Method options: only those of the chosen method(s).
    allowed = options_of(cfg.method)
    for key in specs:
        if key in merged:
            if key not in allowed:
                raise ConfigError(f"option {key!r} does not apply to method {cfg.method!r}")
            cfg.options[key] = coerce(key, merged[key], specs[key].type)
    validate(cfg)
    for m in split_methods(cfg.method):  # every method's checks, before the first one trains
        try:
            opts = build_options(METHODS.get(m), cfg.options)
        except TypeError as e:
            raise ConfigError(f"method {m}: {e}") from None
        METHODS.get(m).check_options(opts)
    return cfg


def split_methods(method: str) -> list[str]:
    return [m.strip() for m in str(method).split(",") if m.strip()]


def validate(cfg: RunConfig) -> None:
    for key in POSITIVE_INTS:
        v = getattr(cfg, key)
        if v is None or v <= 0:
            raise ConfigError(f"{key.replace('_', '-')} must be a positive integer, got {v}")
    if cfg.lr is None or not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise ConfigError(f"lr must be a positive finite number, got {cfg.lr}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(unknown_name_message("lr-schedule", str(cfg.lr_schedule),
                                               list(LR_SCHEDULES)))
    if cfg.boundary_eval not in BOUNDARY_EVALS:
        raise ConfigError(unknown_name_message("boundary-eval", str(cfg.boundary_eval),
                                               list(BOUNDARY_EVALS)))
    if cfg.init not in INITS:
        raise ConfigError(unknown_name_message("init", str(cfg.init), list(INITS)))
    if cfg.no_bias and cfg.model != "mlp":
        raise ConfigError(f"no-bias is an option of the mlp model, not of {cfg.model!r}")
    if cfg.normalize and not cfg.benchmark.startswith("permuted-"):
        raise ConfigError("normalize is an option of the permuted-* benchmarks, not of "
                          f"{cfg.benchmark!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(unknown_name_message("optimizer", str(cfg.optimizer), list(OPTIMIZERS)))
    if not 0 <= cfg.validation < 1:
        raise ConfigError(f"validation must be a fraction in [0, 1), got {cfg.validation}")
    if cfg.checkpoint_every < 0:
        raise ConfigError(f"checkpoint-every must be >= 0, got {cfg.checkpoint_every}")
    if cfg.threads < 0:
        raise ConfigError(f"threads must be >= 0 (0: PyTorch's default), got {cfg.threads}")
    if cfg.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {cfg.seed}")
    validate_device(cfg.device)
    if cfg.data_dir is not None:
        folder = Path(cfg.data_dir).expanduser()
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"data-dir {cfg.data_dir} is a file, not a folder")
        if not folder.exists() and not cfg.download:
            raise ConfigError(f"data-dir {cfg.data_dir} does not exist (pass --download to "
                              "fetch the datasets into it)")


def validate_device(device: str) -> None:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and available in this PyTorch on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be cpu, cuda, cuda:N or mps, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available (this PyTorch "
                              f"{torch.__version__} has no CUDA support, or no GPU is visible); "
                              "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: there are only {torch.cuda.device_count()} "
                              "CUDA devices (cuda:0 ...)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: Apple's MPS is not available in this PyTorch on "
                          "this machine; use --device cpu")


def build_options(method_cls: Any, options: dict[str, Any]) -> Any:
    """The method's Options dataclass from the flat option dict (only its own fields)."""
    own = {k: v for k, v in options.items() if k in method_cls.option_fields()}
    return method_cls.Options(**own)
