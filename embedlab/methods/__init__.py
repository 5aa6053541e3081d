"""Mixing methods (a registry). Each method is a strategy object: the trainer calls
``method.loss(model, x, y, gen)`` and never looks at the method's name. Importing this package registers every
method; ``create_method(name, options)`` builds one, ``method_metadata(name)`` describes it."""

from embedlab.methods import confmix, multimix, pairwise  # noqa: F401  (registration)
from embedlab.methods.base import (
    ALPHA_SCHEDULES,
    METHODS,
    AlphaOptions,
    MixMethod,
    create_method,
    method_metadata,
    register_method,
    scheduled_alpha,
    soft_cross_entropy,
)

for _optional in ("masks", "puzzlemix", "alignmix"):
    try:
        __import__(f"embedlab.methods.{_optional}")
    except ModuleNotFoundError as _e:  # pragma: no cover - written by other modules in progress
        if _e.name != f"embedlab.methods.{_optional}":
            raise

__all__ = ["ALPHA_SCHEDULES", "METHODS", "AlphaOptions", "MixMethod", "create_method", "method_metadata",
           "register_method", "scheduled_alpha", "soft_cross_entropy"]
