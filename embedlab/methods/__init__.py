"""Mixing methods (a registry). Each method is a strategy object: the trainer calls
``method.loss(model, x, y, gen)`` and never looks at the method's name. Importing this package registers every
method; ``create_method(name, options)`` builds one, ``method_metadata(name)`` describes it."""

from embedlab.methods import alignmix, confmix, masks, multimix, pairwise, puzzlemix  # noqa: F401  (registration)
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

__all__ = ["ALPHA_SCHEDULES", "METHODS", "AlphaOptions", "MixMethod", "create_method", "method_metadata",
           "register_method", "scheduled_alpha", "soft_cross_entropy"]
