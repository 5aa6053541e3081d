"""The analysis registry and the inputs every analysis reads.

An analysis is a function ``fn(inp: Inputs, **settings) -> Output`` registered with the inputs it needs; the runner
computes each input once (extraction of a split, OOD sets, …), calls every analysis whose needs are met, and records
why the others were skipped. Metric maths lives in pure functions; analyses only wire inputs to them.

Needs (strings): ``"train"``, ``"val"``, ``"test"`` (extracted splits: embeddings, labels, and logits when the model
has a classifier), ``"logits"`` (the test split carries logits; an analysis reading another split's logits checks
that they are there: a precomputed array may give test logits only), ``"model"`` (the nn.Module, for
gradients/attacks), ``"test_data"`` (the raw test inputs in [0, 1]), ``"ood"`` (extracted OOD sets), ``"ood_data"``
(their raw inputs).

Discovery: importing ``embedlab.analyses`` imports no analysis. On the first lookup or listing of :data:`ANALYSES`,
every module of the ``embedlab.analyses`` package is imported (except this one and the runner) and then every Python
entry point of group ``embedlab.analyses`` (users' plug-ins: a module whose import registers analyses). Adding an
analysis is adding one module.

Results describe themselves (docs/RESULTS_FORMAT.md): each analysis registers the report section it writes to (id,
title, note) and each :func:`metric` says its table, column and coordinates (``key``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch

from embedlab.registry import Registry

if TYPE_CHECKING:  # annotations only: importing the package stays cheap (embedlab.store pulls in the data layer)
    from torch.utils.data import Dataset

    from embedlab.store import Extracted

NEEDS = ("train", "val", "test", "logits", "model", "test_data", "ood", "ood_data")
ENTRY_POINT_GROUP = "embedlab.analyses"
NOT_ANALYSES = frozenset({"registry", "runner"})  # modules of the package that register nothing
OVERVIEW, OVERVIEW_TITLE = "overview", "Overview"  # the section of headline numbers


@dataclass
class Output:
    """What an analysis returns: named metrics (see :func:`metric`), JSON-able plot data, raw arrays for plots, and
    the parts it left out with why (``{"vim": "needs ..."}``; results.json lists them under ``skipped`` as
    ``"<analysis>.<part>"``)."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    plots: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        complete_metrics(self.metrics)


@dataclass
class Inputs:
    """Everything an analysis may read. Fields an analysis did not declare in ``needs`` may be absent (None/empty)."""

    splits: dict[str, Extracted]
    num_classes: int
    class_names: tuple[str, ...] = ()
    model: torch.nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    test_data: Dataset | None = None
    ood: dict[str, Extracted] = field(default_factory=dict)
    ood_data: dict[str, Dataset] = field(default_factory=dict)
    seed: int = 0
    progress: bool = False  # show progress bars in slow analyses (robustness, ODIN)

    def t(self, split: str, name: str) -> torch.Tensor:
        """A split's array as a tensor: ``inp.t("test", "embeddings")`` → ``(N, d)``."""
        a = np.asarray(getattr(self.splits[split], name))
        return torch.from_numpy(a if a.flags.writeable else np.array(a))  # memory-mapped cache → in-memory copy


Analysis = Callable[..., Output]


def discover() -> None:
    """Import every analysis module of this package, then every entry point of group ``embedlab.analyses``.

    A plug-in that fails to load is reported with a warning and left out; a failing built-in module raises."""
    import importlib
    import pkgutil
    from importlib.metadata import entry_points

    import embedlab.analyses as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name not in NOT_ANALYSES:
            importlib.import_module(f"{package.__name__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001  (a broken plug-in must not take the built-in analyses down)
            warnings.warn(f"analysis plug-in {ep.name!r} ({ep.value}) failed to load and is left out: "
                          f"{type(e).__name__}: {e}", stacklevel=2)


ANALYSES: Registry[Analysis] = Registry("analysis", loader=discover)
_SECTION_OF: dict[str, str] = {}  # analysis -> section id
_SECTIONS: dict[str, dict[str, str]] = {}  # section id -> {"title", "note"} as registered (first non-empty wins)


def register_analysis(name: str, *, description: str, needs: tuple[str, ...], section: str | None = None,
                      title: str = "", note: str = "", optional: tuple[str, ...] = (),
                      covered_by: str | None = None,
                      gradient_passes: Callable[..., int] | None = None,
                      min_classes: int = 1) -> Callable[[Analysis], Analysis]:
    """Register ``fn(inp, **settings) -> Output`` under ``name``.

    ``needs``: the inputs it reads (:data:`NEEDS`); ``optional``: inputs it uses when the source has them (e.g. a
    train split for a probe) and otherwise does without, listing the parts it left out in ``Output.skipped``. ``section``: the id of the report section its metrics go to by
    default (``name`` when not given; several analyses may share one, e.g. ``"overview"``); ``title`` and ``note``:
    that section's heading (default: the id) and explanatory note. Analyses sharing a section may each give its
    title and note, but not different ones. ``min_classes``: the fewest classes its metrics mean anything with
    (2 for a classifier's accuracy, kNN, calibration, clustering, OOD scores, attacks); a dataset with fewer is one
    line naming the analysis, before anything is extracted."""
    unknown = (set(needs) | set(optional)) - set(NEEDS)
    if unknown:
        raise ValueError(f"analysis {name!r}: unknown needs {sorted(unknown)}; known: {NEEDS}")
    section = section or name
    known = _SECTIONS.get(section, {"title": "", "note": ""})
    for what, value in (("title", title), ("note", note)):
        if value and known[what] and known[what] != value:
            raise ValueError(f"analysis {name!r}: section {section!r} already has {what} {known[what]!r}, "
                             f"not {value!r}")
    register = ANALYSES.register(name, description=description, needs=tuple(needs), optional=tuple(optional),
                                 section=section, covered_by=covered_by, gradient_passes=gradient_passes,
                                 min_classes=int(min_classes))

    def deco(fn: Analysis) -> Analysis:
        register(fn)  # raises if the name is taken: then no section is recorded either
        _SECTION_OF[name] = section
        _SECTIONS[section] = {"title": known["title"] or title, "note": known["note"] or note}
        return fn

    return deco


def section_info(section: str) -> dict[str, str]:
    """``{"title", "note"}`` of a section as registered (title: the id when no analysis gave one)."""
    known = _SECTIONS.get(section, {})
    return {"title": known.get("title") or section, "note": known.get("note", "")}


def metric(value: float, higher_is_better: bool | None, analysis: str, *, section: str | None = None,
           table: str = "", column: str | None = None, key: Mapping[str, Any] | None = None,
           **settings: Any) -> dict[str, Any]:
    """One metric entry of results.json (docs/RESULTS_FORMAT.md).

    ``value``; ``higher_is_better`` (None: no better direction); the producing ``analysis``; where the report puts it:
    ``section`` (default: the analysis's registered section), ``table`` (title inside the section, "" = the main
    table), ``column`` (default: the last ``/``-part of the metric's name, filled in by :class:`Output`); ``key``: its
    coordinates as a flat ``{str: str | number | bool}`` dict (default ``{"metric": <name>}``); ``settings``: how it
    was computed."""
    if key is not None:
        bad = {k: v for k, v in key.items() if not isinstance(k, str) or not isinstance(v, (str, int, float, bool))}
        if bad:
            raise TypeError(f"metric key must be a flat {{str: str | number | bool}} dict; bad items: {bad}")
    return {"value": float(value), "higher_is_better": higher_is_better, "analysis": analysis, "settings": settings,
            "section": section or _SECTION_OF.get(analysis, analysis), "table": str(table), "column": column,
            "key": None if key is None else dict(key)}


def complete_metrics(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Fill each entry's defaults that depend on its name (in place): ``column`` = the name's last ``/``-part,
    ``key`` = ``{"metric": name}``, ``section`` = the analysis's section, ``table`` = ""."""
    for name, entry in metrics.items():
        if not isinstance(entry, dict):
            continue
        analysis = entry.get("analysis", "")
        entry.setdefault("section", None)
        entry["section"] = entry["section"] or _SECTION_OF.get(analysis, analysis)
        entry.setdefault("table", "")
        if entry.get("column") is None:
            entry["column"] = name.split("/")[-1]
        if entry.get("key") is None:
            entry["key"] = {"metric": name}
    return metrics
