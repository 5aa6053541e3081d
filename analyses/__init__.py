"""Analysis layer: pure metric functions (``analyses.metrics`` and one module per area) and the runner that turns a
checkpoint, an external model or precomputed arrays into ``results.json``. Importing the package registers every
analysis."""

from embedlab.analyses import basic, calibration, clustering, convexity, ood, robustness  # noqa: F401  (registration)
from embedlab.analyses.registry import ANALYSES, Inputs, Output, metric, register_analysis

__all__ = ["ANALYSES", "Inputs", "Output", "metric", "register_analysis"]
