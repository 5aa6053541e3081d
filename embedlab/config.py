"""Typed configuration: dataclasses built from dicts or ``key=value`` strings, where unknown keys and values of
the wrong type are errors (one clear line naming the key)."""
from __future__ import annotations

import dataclasses
import json
import os
import math
import typing
from typing import Any

from embedlab.errors import EmbedlabError


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _type_name(tp: Any) -> str:
    """``int``, ``str or null``, ``tuple[int, ...]``: how error messages name a field's type."""
    if tp is type(None):
        return "null"
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union or str(typing.get_origin(tp)) == "<class 'types.UnionType'>":
        return " or ".join(_type_name(a) for a in args)
    return str(tp).replace("typing.", "") if args else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, strict: bool = False) -> Any:
    """Convert a CLI string (or JSON value) to the dataclass field's type.

    ``strict`` (values read from files: recipes, ``--config``): a value must already have the field's JSON type;
    ``"2000"`` for an int or ``1`` for a string is an error. Without ``strict``, strings are parsed (CLI values).
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None or (not strict and isinstance(value, str) and value.lower() == "none"):
            if type(None) in args:
                return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where, strict)
            except EmbedlabError:
                continue
        raise EmbedlabError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (tuple, list):
        if strict and not isinstance(value, (list, tuple)):
            raise EmbedlabError(f"{where}: expected a list of {_type_name(args[0])}, got {value!r}")
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_coerce(v, args[0], where, strict) for v in items)
    if tp is dict or origin is dict:
        if strict and not isinstance(value, dict):
            raise EmbedlabError(f"{where}: expected an object of key: value pairs, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if not strict and isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise EmbedlabError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        if tp is not str and isinstance(value, bool):  # true/false is not a number (1.0 would be taken silently)
            raise EmbedlabError(f"{where}: expected {tp.__name__}, got {value!r}")
        if strict:
            ok = (isinstance(value, str) if tp is str else
                  isinstance(value, int) and not isinstance(value, bool) if tp is int else
                  isinstance(value, (int, float)) and not isinstance(value, bool))
            if not ok:
                raise EmbedlabError(f"{where}: expected {tp.__name__}, got {value!r}")
            return tp(value)
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise EmbedlabError(f"{where}: expected an integer, got {value!r}")
        try:
            out = tp(value) if tp is not int else int(str(value), 10) if isinstance(value, str) else int(value)
        except (TypeError, ValueError, OverflowError):
            raise EmbedlabError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is float and not math.isfinite(out):  # inf, nan, or a literal past the float range (1e400)
            raise EmbedlabError(f"{where}: expected a finite number, got {value!r}")
        return out
    return value


def parse_options(cls: type, values: dict[str, Any], where: str, strict: bool = False) -> Any:
    """Build the options dataclass ``cls`` from a dict, with type conversion; unknown keys are errors.

    ``strict``: values must already have their field's type (see :func:`_coerce`), as for values read from files.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        known = ", ".join(fields) or "none"
        raise EmbedlabError(f"{where}: unknown option(s) {', '.join(sorted(unknown))}; known: {known}")
    kw = {k: _coerce(v, _field_type(cls, k), f"{where} option {k}", strict) for k, v in values.items()}
    opts = cls(**kw)
    check = getattr(opts, "validate", None)
    if check is not None:
        check(where)
    return opts


@dataclasses.dataclass(frozen=True)
class Bound:
    """A range for a numeric plug-in option, declared in its annotation and checked before any work starts:
    ``k: Annotated[int, Bound(lo=1)] = 20``, ``eps: Annotated[float, Bound(lo=0, lo_open=True)]``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def violation(self, value: Any) -> str | None:
        """Why ``value`` is out of range (None when inside, or not a number)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if value != value:
            return "must be a number, got nan"
        low_ok = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        high_ok = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        if low_ok and high_ok:
            return None
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        return f"must be {' and '.join(parts)}, got {value!r}"


POSITIVE = Bound(lo=0, lo_open=True)
AT_LEAST_1 = Bound(lo=1)
NON_NEGATIVE = Bound(lo=0)
PERCENTILE = Bound(lo=0, hi=100, lo_open=True)


def option_bounds(fn: Any) -> dict[str, Bound]:
    """``{option: Bound}`` from ``fn``'s ``Annotated[..., Bound(...)]`` annotations ({} when it has none)."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no bounds to check
        return {}
    out = {}
    for name, hint in hints.items():
        if typing.get_origin(hint) is typing.Annotated:
            bound = next((m for m in hint.__metadata__ if isinstance(m, Bound)), None)
            if bound is not None:
                out[name] = bound
    return out


def check_option_types(fn: Any, options: dict[str, Any], where: str) -> None:
    """Keyword options for a plug-in ``fn`` (a dataset class, model factory, analysis): a value whose parameter
    defaults to an int, float or bool must have that type, so ``K=x`` is one clear line here rather than a
    ``TypeError`` deep inside ``fn``; a value outside the :class:`Bound` in its annotation is one line too. Other
    parameters and unknown names are left to ``fn`` itself."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    for key, value in options.items():
        default = params[key].default if key in params else None
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            continue
        if not ok:
            kind = next(t for t in (bool, int, float) if isinstance(default, t))  # int for an int subclass default
            raise EmbedlabError(f"{where} option {key}: expected {kind.__name__}, got {value!r}")
    bounds = option_bounds(fn)
    for key, value in options.items():
        why = bounds[key].violation(value) if key in bounds else None
        if why:
            raise EmbedlabError(f"{where} option {key}: {why}")


def parse_assignments(items: list[str] | None, where: str) -> dict[str, str]:
    """``["n=500", "alpha=0.5"]`` → ``{"n": "500", "alpha": "0.5"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EmbedlabError(f"{where}: expected key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


# What each TrainConfig key means: the text of `embedlab train --help` for --set and of docs/TRAINING.md.
TRAIN_KEYS: dict[str, str] = {
    "dataset": "registered dataset name (`embedlab list datasets`)",
    "data_root": "folder holding the dataset files (null for shipped/generated datasets)",
    "download": "allow torchvision to download the dataset into data_root",
    "dataset_options": "dataset keyword arguments, e.g. {\"image_size\": 64, \"val_fraction\": 0.1}",
    "model": "registered model, tv:NAME or timm:NAME (null: the dataset's default)",
    "model_options": "model keyword arguments, e.g. {\"width\": 64}",
    "method": "mixing method (`embedlab list methods`)",
    "method_options": "method options, e.g. {\"n\": 1000, \"alpha\": 1}",
    "epochs": "training epochs",
    "batch_size": "mini-batch size b per process (the global batch under torchrun is N × batch_size)",
    "optimizer": "sgd, adam or adamw",
    "lr": "initial learning rate (not rescaled with the number of processes)",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay (L2 for sgd/adam, decoupled for adamw)",
    "schedule": "cosine (per step, to 0), step (×lr_gamma at each milestone epoch) or constant",
    "milestones": "epochs after which the step schedule multiplies the lr by lr_gamma",
    "lr_gamma": "step-schedule factor",
    "seed": "seed of initialisation, shuffling and mixing (rank r of a torchrun job mixes with seed + r)",
    "device": "auto (CUDA if available), cpu or cuda[:N] (torchrun: each process uses cuda:LOCAL_RANK)",
    "num_workers": "DataLoader worker processes per training process",
    "amp": "mixed precision: auto (bf16 autocast on CUDA, off on CPU), bf16 or off",
    "channels_last": "channels-last memory format for 4-D inputs and weights (null: on for CUDA, off on CPU)",
    "compile": "torch.compile each stage of the model (first epoch slower; needs a C++ compiler on CPU)",
    "deterministic": "torch.use_deterministic_algorithms(True), cuDNN benchmark off: bit-exact --resume",
    "log_every": "steps between loss checks (non-finite loss stops the run) and progress updates",
}

AMP_MODES = ("auto", "bf16", "off")

# The most classes embedlab accepts from a file (labels, logits, class names, a checkpoint's head): above
# ImageNet-21k's 21,841, and small enough that per-class arrays (class names, kNN scores, a confusion matrix's
# rows) stay in memory. A file asking for more is refused before anything per class is allocated.
MAX_CLASSES = 100_000
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer


def max_workers() -> int:
    """The most DataLoader worker processes a run may ask for: 4 per CPU core, at least 64 (a recipe written for a
    GPU server stays valid on a laptop)."""
    return max(64, 4 * (os.cpu_count() or 1))


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a training run; saved resolved in every checkpoint's metadata.

    The meaning of each key is in :data:`TRAIN_KEYS`. Defaults are the digits recipe (``embedlab/recipes/digits.json``).
    """

    dataset: str = "digits"
    data_root: typing.Optional[str] = None
    download: bool = False
    dataset_options: dict = dataclasses.field(default_factory=dict)
    model: typing.Optional[str] = None
    model_options: dict = dataclasses.field(default_factory=dict)
    method: str = "erm"
    method_options: dict = dataclasses.field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    amp: str = "auto"
    channels_last: typing.Optional[bool] = None
    compile: bool = False
    deterministic: bool = False
    log_every: int = 50

    def validate(self, where: str = "config") -> None:
        if self.epochs < 1:
            raise EmbedlabError(f"{where}: epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise EmbedlabError(f"{where}: batch_size must be >= 2, got {self.batch_size}")
        if not 0 < self.lr < math.inf:
            raise EmbedlabError(f"{where}: lr must be > 0 and finite, got {self.lr}")
        for key in ("momentum", "weight_decay"):
            if not 0 <= getattr(self, key) < math.inf:
                raise EmbedlabError(f"{where}: {key} must be >= 0 and finite, got {getattr(self, key)}")
        if not 0 < self.lr_gamma < math.inf:
            raise EmbedlabError(f"{where}: lr_gamma must be > 0 and finite, got {self.lr_gamma}")
        if self.seed < 0:
            raise EmbedlabError(f"{where}: seed must be >= 0, got {self.seed}")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise EmbedlabError(f"{where}: optimizer must be sgd, adam or adamw, got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise EmbedlabError(f"{where}: schedule must be cosine, step or constant, got {self.schedule!r}")
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            raise EmbedlabError(f"{where}: milestones must be increasing epochs >= 1, got {list(self.milestones)}")
        if not 0 <= self.num_workers <= max_workers():
            raise EmbedlabError(f"{where}: num_workers (--workers) must be 0 .. {max_workers()} (4 × the "
                                f"{os.cpu_count() or 1} CPU cores, at least 64), got {self.num_workers}")
        if self.seed > MAX_SEED:
            raise EmbedlabError(f"{where}: seed must be <= 2**63 - 1, got {self.seed}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise EmbedlabError(f"{where}: device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.amp not in AMP_MODES:
            raise EmbedlabError(f"{where}: amp must be {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.log_every < 1:
            raise EmbedlabError(f"{where}: log_every must be >= 1, got {self.log_every}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config", strict: bool = False) -> "TrainConfig":
        """Build from a dict; unknown keys are errors. ``strict`` (values from files): types must match exactly."""
        return parse_options(cls, values, where, strict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists), as saved in ``meta.json``."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def auto_type(v: Any) -> Any:
    """An option value given as a string on the command line: read ints, floats, booleans and comma lists."""
    if not isinstance(v, str):
        return v
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    if "," in v:
        return tuple(auto_type(p) for p in v.split(","))
    return v


def apply_assignments(base: dict[str, Any], items: list[str] | None, where: str = "--set") -> dict[str, Any]:
    """Overlay ``KEY=VALUE`` strings on a TrainConfig dict; returns a new dict with typed values.

    ``KEY`` is a TrainConfig key (its value is parsed to the key's type: ``epochs=5``, ``milestones=100,150``,
    ``model=null``) or ``OPTIONS.SUB`` for the dict keys (``method_options.n=500``, ``dataset_options.image_size=64``),
    which sets one entry and keeps the others. A whole dict may be given as JSON: ``method_options={"n": 500}``.
    """
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    out = dict(base)
    for key, value in parse_assignments(items, where).items():
        top, dot, sub = key.partition(".")
        if top not in fields:
            raise EmbedlabError(f"{where}: unknown option(s) {top}; known: {', '.join(fields)}")
        tp = _field_type(TrainConfig, top)
        if dot:
            if tp is not dict or not sub:
                raise EmbedlabError(f"{where} {key}: only dataset_options, model_options and method_options take "
                                    f"KEY.NAME=VALUE")
            out[top] = {**out.get(top, {}), sub: auto_type(value)}
        elif tp is dict:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise EmbedlabError(f"{where} {top}: expected a JSON object such as {{\"n\": 500}} or "
                                    f"{top}.NAME=VALUE, got {value!r}")
            out[top] = parsed
        else:
            if value.lower() in ("null", "none") and type(None) in typing.get_args(tp):
                out[top] = None
            else:
                out[top] = _coerce(value, tp, f"{where} option {top}")
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two TrainConfig dicts (tuples and lists compare equal)."""
    norm = lambda d: json.loads(json.dumps(d))  # noqa: E731
    a, b = norm(a), norm(b)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
