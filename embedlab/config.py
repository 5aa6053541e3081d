"""Typed configuration: dataclasses built from dicts or ``key=value`` strings, where unknown keys and values of
the wrong type are errors (one clear line naming the key)."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from embedlab.errors import EmbedlabError


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a CLI string (or JSON value) to the dataclass field's type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in args:
                return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except EmbedlabError:
                continue
        raise EmbedlabError(f"{where}: cannot read {value!r} as {tp}")
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_coerce(v, args[0], where) for v in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise EmbedlabError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise EmbedlabError(f"{where}: expected an integer, got {value!r}")
        try:
            return tp(value) if tp is not int else int(str(value), 10) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise EmbedlabError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    return value


def parse_options(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build the options dataclass ``cls`` from a dict, with type conversion; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        known = ", ".join(fields) or "none"
        raise EmbedlabError(f"{where}: unknown option(s) {', '.join(sorted(unknown))}; known: {known}")
    kw = {k: _coerce(v, _field_type(cls, k), f"{where} option {k}") for k, v in values.items()}
    opts = cls(**kw)
    check = getattr(opts, "validate", None)
    if check is not None:
        check(where)
    return opts


def parse_assignments(items: list[str] | None, where: str) -> dict[str, str]:
    """``["n=500", "alpha=0.5"]`` → ``{"n": "500", "alpha": "0.5"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EmbedlabError(f"{where}: expected key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a training run; saved resolved in every checkpoint's metadata."""

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

    def validate(self, where: str = "config") -> None:
        if self.epochs < 1:
            raise EmbedlabError(f"{where}: epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise EmbedlabError(f"{where}: batch_size must be >= 2, got {self.batch_size}")
        if not self.lr > 0:
            raise EmbedlabError(f"{where}: lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.momentum < 0:
            raise EmbedlabError(f"{where}: weight_decay and momentum must be >= 0")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise EmbedlabError(f"{where}: optimizer must be sgd, adam or adamw, got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise EmbedlabError(f"{where}: schedule must be cosine, step or constant, got {self.schedule!r}")
        if self.num_workers < 0:
            raise EmbedlabError(f"{where}: num_workers must be >= 0, got {self.num_workers}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise EmbedlabError(f"{where}: device must be auto, cpu or cuda[:N], got {self.device!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> "TrainConfig":
        return parse_options(cls, values, where)
