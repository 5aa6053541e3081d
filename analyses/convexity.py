"""Embedding-space MMLB (METHODS.md §2): the maths is :func:`embedlab.metrics.convexity.embedding_mmlb`."""
from __future__ import annotations

import torch

from typing import Annotated

from embedlab.analyses.registry import OVERVIEW, OVERVIEW_TITLE, Inputs, Output, metric, register_analysis
from embedlab.config import AT_LEAST_1, POSITIVE
from embedlab.metrics.convexity import embedding_mmlb


@register_analysis("embedding_mmlb", description="embedding-space MMLB: misclassification of same-class interpolants by the model's own classifier (lower = classes more convex)",
                   needs=("test", "logits"), section=OVERVIEW, title=OVERVIEW_TITLE, min_classes=2)
def embedding_mmlb_analysis(inp: Inputs, alpha: Annotated[float, POSITIVE] = 1.0,
                            pairs_per_class: Annotated[int, AT_LEAST_1] = 2000) -> Output:
    _, norm, per_class = embedding_mmlb(inp.t("test", "logits"), inp.t("test", "labels"), alpha=alpha,
                                        pairs_per_class=pairs_per_class,
                                        generator=torch.Generator().manual_seed(inp.seed))
    names = inp.class_names
    return Output({"embedding_mmlb": metric(norm, False, "embedding_mmlb", alpha=alpha,
                                            pairs_per_class=pairs_per_class, normalised=True)},
                  plots={"kind": "bars", "x_label": "class",
                         "y_label": "misclassification rate of same-class interpolants",
                         "bars": {(names[k] if k < len(names) else str(k)): v for k, v in per_class.items()}})
