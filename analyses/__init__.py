"""Analysis layer: registered analyses that wire the runner's inputs to the pure metric functions of
:mod:`embedlab.metrics`, and the runner that turns a checkpoint, an external model or precomputed arrays into
``results.json``.

Importing the package imports no analysis module: :data:`ANALYSES` discovers them (every module of this package, plus
entry points of group ``embedlab.analyses``) on its first lookup or listing. Adding an analysis is adding one module.
"""

from embedlab.analyses.registry import ANALYSES, Inputs, Output, metric, register_analysis

__all__ = ["ANALYSES", "Inputs", "Output", "metric", "register_analysis"]
