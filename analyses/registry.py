"""The analysis registry and the inputs every analysis reads.

An analysis is a function ``fn(inp: Inputs, **settings) -> Output`` registered with the inputs it needs; the runner
computes each input once (extraction of a split, OOD sets, …), calls every analysis whose needs are met, and records
why the others were skipped. Metric maths lives in pure functions; analyses only wire inputs to them.

Needs (strings): ``"train"``, ``"val"``, ``"test"`` (extracted splits: embeddings, labels, and logits when the model
has a classifier), ``"logits"`` (the splits carry logits), ``"model"`` (the nn.Module, for gradients/attacks),
``"test_data"`` (the raw test inputs in [0, 1]), ``"ood"`` (extracted OOD sets), ``"ood_data"`` (their raw inputs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from embedlab.registry import Registry
from embedlab.store import Extracted

NEEDS = ("train", "val", "test", "logits", "model", "test_data", "ood", "ood_data")


@dataclass
class Output:
    """What an analysis returns: named metrics (see :func:`metric`), JSON-able plot data, raw arrays for plots."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    plots: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


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

    def t(self, split: str, name: str) -> torch.Tensor:
        """A split's array as a tensor: ``inp.t("test", "embeddings")`` → ``(N, d)``."""
        a = np.asarray(getattr(self.splits[split], name))
        return torch.from_numpy(a if a.flags.writeable else np.array(a))  # memory-mapped cache → in-memory copy


Analysis = Callable[..., Output]
ANALYSES: Registry[Analysis] = Registry("analysis")


def register_analysis(name: str, *, description: str, needs: tuple[str, ...]) -> Callable[[Analysis], Analysis]:
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"analysis {name!r}: unknown needs {sorted(unknown)}; known: {NEEDS}")
    return ANALYSES.register(name, description=description, needs=tuple(needs))


def metric(value: float, higher_is_better: bool | None, analysis: str, **settings: Any) -> dict[str, Any]:
    """One metric entry of results.json: value, direction (None: no better/worse), producing analysis, settings."""
    return {"value": float(value), "higher_is_better": higher_is_better, "analysis": analysis, "settings": settings}
