"""Calibration of the classifier's confidence."""
from __future__ import annotations

from analyses import metrics as M
from analyses.registry import Inputs, Output, metric, register_analysis


@register_analysis("calibration", description="top-label ECE (15 equal-width bins) and reliability-diagram data on the test split",
                   needs=("test", "logits"))
def calibration(inp: Inputs, n_bins: int = 15) -> Output:
    logits, labels = inp.t("test", "logits"), inp.t("test", "labels")
    ece = M.expected_calibration_error(logits, labels, n_bins=n_bins)
    return Output({"ece": metric(ece, False, "calibration", n_bins=n_bins)},
                  plots={"reliability": M.reliability_diagram(logits, labels, n_bins=n_bins)})
