"""Group results that differ only by their training seed, and summarise a metric over a group's seeds.

Two results belong to one :class:`Group` when everything that defines the experiment is equal: the training config
without ``seed`` and without the keys that only say *how* it ran (:data:`EXECUTION_KEYS`), the method with its
options, the model, the dataset, the evaluated split and the analysis settings. Results without a known seed, or
whose seeds repeat within such a set, stay on their own.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from embedlab.reports.load import ModelResult

# config keys that do not change the experiment: where and how fast it ran, logging (seed is handled separately)
EXECUTION_KEYS = frozenset({
    "seed", "device", "num_workers", "workers", "log_every", "data_root", "download", "compile", "channels_last",
    "amp", "deterministic", "out", "resume",
})
_SEED_TOKEN = re.compile(r"(?i)[\s_\-./]*\(?\bseed[\s_\-=]*\d+\)?")


@dataclass(frozen=True, eq=False)
class Group:
    """Results of one experiment over one or more seeds, ordered by seed."""

    name: str
    members: tuple[ModelResult, ...]

    @property
    def first(self) -> ModelResult:
        """The member whose per-example figures (UMAP, histograms) are shown: the lowest seed."""
        return self.members[0]

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def seeds(self) -> list[int | None]:
        return [m.seed for m in self.members]


@dataclass(frozen=True)
class Stat:
    """A metric over a group's seeds: mean, sample standard deviation (ddof = 1; None for one value), count."""

    mean: float
    std: float | None
    n: int


def metric_value(entry: Any) -> float | None:
    """The numeric ``value`` of a results.json metric entry (or a bare number); None when absent or not a number."""
    raw = entry.get("value") if isinstance(entry, Mapping) else entry
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    return float(raw)


def summarise(values: Sequence[float]) -> Stat | None:
    """Mean and sample standard deviation (``numpy.std(ddof=1)``) of the values; None when there are none.

    >>> s = summarise([0.9, 0.92, 0.94])
    >>> round(s.mean, 12), round(s.std, 12), s.n
    (0.92, 0.02, 3)
    """
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if len(a) > 1 else None
    return Stat(mean, std, len(a))


def metric_stat(group: Group, key: str) -> Stat | None:
    """The metric ``key`` over the group's members that report a number for it."""
    return summarise([v for m in group.members if (v := metric_value(m.metrics.get(key))) is not None])


def experiment_key(r: ModelResult) -> str:
    """Canonical JSON of everything that defines ``r``'s experiment except the seed (see the module doc)."""
    meta = r.meta
    config = {k: v for k, v in r.config.items() if k not in EXECUTION_KEYS}
    model = meta.get("model") if isinstance(meta.get("model"), Mapping) else {"name": meta.get("model")}
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), Mapping) else {"name": meta.get("dataset")}
    key = {
        "config": config,
        "method": meta.get("method"),
        "model": {"name": model.get("name"), "options": model.get("options")},
        "dataset": {"name": dataset.get("name"), "options": dataset.get("options")},
        "external": meta.get("external"),
        "evaluated": {k: r.dataset.get(k) for k in ("name", "split", "num_examples")},
        "settings": r.results.get("settings"),
    }
    return json.dumps(key, sort_keys=True, default=str, ensure_ascii=True)


def group_results(results: Sequence[ModelResult]) -> list[Group]:
    """Group ``results`` by :func:`experiment_key` (in order of first appearance); members sorted by seed."""
    buckets: dict[str, list[ModelResult]] = {}
    for i, r in enumerate(results):
        key = experiment_key(r) if r.seed is not None else f"#{i}"
        buckets.setdefault(key, []).append(r)
    raw: list[list[ModelResult]] = []
    for members in buckets.values():
        seeds = [m.seed for m in members]
        if len(set(seeds)) == len(seeds):
            raw.append(sorted(members, key=lambda m: m.seed))  # type: ignore[arg-type, return-value]
        else:  # the same seed twice: not a seed study, keep them apart
            raw.extend([m] for m in members)
    names = _group_names(raw)
    return [Group(name, tuple(members)) for name, members in zip(names, raw)]


def _group_names(groups: list[list[ModelResult]]) -> list[str]:
    """A single result keeps its name; a seed group takes its members' name without the seed token (``"mm-seed1"``
    -> ``"mm"``), else the method name (with its options when that is ambiguous). Names are unique."""
    names: list[str] = []
    for members in groups:
        if len(members) == 1:
            names.append(members[0].name)
            continue
        stripped = {_SEED_TOKEN.sub("", m.name).strip(" -_/.") for m in members}
        if len(stripped) == 1 and (only := stripped.pop()):
            names.append(only)
        else:
            names.append(_method_label(members[0], with_options=False))
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    out: list[str] = []
    for n, members in zip(names, groups):
        if counts[n] > 1 and len(members) > 1:
            n = _method_label(members[0], with_options=True)
        out.append(n)
    out = [_with_variant(n, members[0]) for n, members in zip(out, groups)]
    taken: set[str] = set()
    unique: list[str] = []
    for n in out:
        candidate, i = n, 2
        while candidate in taken:
            candidate, i = f"{n} #{i}", i + 1
        taken.add(candidate)
        unique.append(candidate)
    return unique


def _variant(r: ModelResult) -> str | None:
    method = r.meta.get("method")
    v = method.get("variant") if isinstance(method, Mapping) else None
    return str(v) if v else None


def _with_variant(name: str, r: ModelResult) -> str:
    """A name that carries the **embedlab variant** label of its method's options, where they select one."""
    v = _variant(r)
    return name if not v or v in name else f"{name} [{v}]"


def _method_label(r: ModelResult, *, with_options: bool) -> str:
    method = r.meta.get("method")
    name = method.get("name") if isinstance(method, Mapping) else method
    label = str(name) if name else r.name
    model = r.meta.get("model")
    model_name = model.get("name") if isinstance(model, Mapping) else model
    if with_options and isinstance(method, Mapping) and method.get("options"):
        opts = ", ".join(f"{k}={v}" for k, v in method["options"].items())
        label = f"{label} ({opts})"
    if with_options and model_name:
        label = f"{label} · {model_name}"
    return label


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
