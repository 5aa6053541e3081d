"""The ``calibration`` analysis: a temperature fitted by NLL on the *validation* split, every calibration metric of
:mod:`embedlab.metrics.calibration` on the *test* split before and after scaling, and reliability-diagram data.

Metric names: ``ece``, ``adaptive_ece``, ``mce``, ``nll``, ``brier`` (table "before temperature scaling") and the same
with a ``_ts`` suffix plus ``temperature`` (table "after temperature scaling", columns without the suffix).
"""
from __future__ import annotations

import torch

from typing import Annotated

from embedlab.analyses.registry import Inputs, Output, metric, register_analysis
from embedlab.config import POSITIVE, Bound
from embedlab.metrics.calibration import (
    DEFAULT_BINS,
    T_MAX,
    T_MIN,
    calibration_metrics,
    fit_temperature,
    reliability_diagram,
)

BEFORE, AFTER = "before temperature scaling", "after temperature scaling"
NOTE = "Temperature T fitted by NLL on the validation split; every metric on the test split."

_SETTINGS = {
    "ece": lambda b: {"n_bins": b, "bins": "equal-width"},
    "adaptive_ece": lambda b: {"n_bins": b, "bins": "equal-mass"},
    "mce": lambda b: {"n_bins": b, "bins": "equal-width"},
    "nll": lambda b: {"log": "natural"},
    "brier": lambda b: {"convention": "sum over classes, mean over examples; range [0, 2]"},
}


@register_analysis("calibration",
                   description="ECE (15 equal-width bins), adaptive ECE (15 equal-mass bins), MCE, NLL, Brier and "
                               "reliability data on test, before and after temperature scaling fitted by NLL on val",
                   needs=("test", "logits"), optional=("val",), title="Calibration", note=NOTE,
                   min_classes=2)
def calibration(inp: Inputs, n_bins: Annotated[int, Bound(lo=1, hi=100_000)] = DEFAULT_BINS,
                t_min: Annotated[float, POSITIVE] = T_MIN, t_max: Annotated[float, POSITIVE] = T_MAX) -> Output:
    logits, labels = inp.t("test", "logits"), inp.t("test", "labels")
    metrics = {}
    for name, value in calibration_metrics(logits, labels, n_bins=n_bins).items():
        metrics[name] = metric(value, False, "calibration", table=BEFORE, column=name,
                               key={"metric": name, "scaled": False}, **_SETTINGS[name](n_bins))
    diagrams = {BEFORE: reliability_diagram(logits, labels, n_bins=n_bins)}
    val = inp.splits.get("val")
    if val is None or val.logits is None:  # the metrics of the raw logits still stand; T needs held-out logits
        why = ("needs a val split (T is fitted by NLL on val, not on test)" if val is None else
               "needs the val split's logits (T is fitted by NLL on val, not on test); the val split has none")
        return Output(metrics, plots={"kind": "reliability", "title": "Reliability diagrams", "diagrams": diagrams},
                      skipped={"temperature_scaling": why})
    temperature = fit_temperature(inp.t("val", "logits"), inp.t("val", "labels"), t_min=t_min, t_max=t_max)
    scaled = logits.to(torch.float64) / temperature
    for name, value in calibration_metrics(scaled, labels, n_bins=n_bins).items():
        metrics[f"{name}_ts"] = metric(value, False, "calibration", table=AFTER, column=name,
                                       key={"metric": name, "scaled": True}, **_SETTINGS[name](n_bins),
                                       temperature=temperature, fitted_on="val")
    metrics["temperature"] = metric(temperature, None, "calibration", table=AFTER, column="temperature",
                                    key={"metric": "temperature", "scaled": True}, fitted_on="val", objective="nll",
                                    t_min=t_min, t_max=t_max)
    diagrams[AFTER] = reliability_diagram(scaled, labels, n_bins=n_bins)
    return Output(metrics, plots={"kind": "reliability", "title": "Reliability diagrams", "diagrams": diagrams})
