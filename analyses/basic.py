"""Core embedding-space analyses: accuracy, weighted kNN accuracy, alignment and uniformity (section "overview")."""
from __future__ import annotations

from typing import Annotated

from embedlab.analyses.registry import OVERVIEW, OVERVIEW_TITLE, Inputs, Output, metric, register_analysis
from embedlab.config import AT_LEAST_1, POSITIVE
from embedlab.metrics.classification import accuracy as top1_accuracy
from embedlab.metrics.classification import knn_accuracy
from embedlab.metrics.geometry import alignment, uniformity

class _Default(int):
    """An int default told apart from the same value given explicitly (``k is DEFAULT_K``)."""


DEFAULT_K = _Default(20)
ALIGN_UNIFORM_CAPTION = ("Wang & Isola (2020) on \u2113\u2082-normalised test embeddings: alignment is the mean "
                         "squared distance between same-class pairs, uniformity the log mean Gaussian potential; "
                         "lower-left is better on both.")


@register_analysis("accuracy", description="top-1 test accuracy of the model's classifier", needs=("test", "logits"),
                   section=OVERVIEW, title=OVERVIEW_TITLE, min_classes=2)
def accuracy(inp: Inputs) -> Output:
    return Output({"accuracy": metric(top1_accuracy(inp.t("test", "logits"), inp.t("test", "labels")), True,
                                      "accuracy")})


@register_analysis("knn", description="weighted kNN accuracy (cosine, k=20, T=0.07 as in DINO; train embeddings as the bank; faiss)",
                   needs=("train", "test"), section=OVERVIEW, title=OVERVIEW_TITLE, min_classes=2)
def knn(inp: Inputs, k: Annotated[int, AT_LEAST_1] = DEFAULT_K, temperature: Annotated[float, POSITIVE] = 0.07) -> Output:
    bank = inp.t("train", "embeddings")
    requested = int(k)
    if k > len(bank):
        if k is not DEFAULT_K:  # given with --opt knn.k: a k the bank cannot supply is the user's mistake
            raise ValueError(f"k={requested} exceeds the {len(bank)} train embeddings of the bank; use k <= {len(bank)}")
        k = len(bank)  # the default on a small training split: every bank vector, recorded below
    acc = knn_accuracy(bank, inp.t("train", "labels"), inp.t("test", "embeddings"), inp.t("test", "labels"),
                       inp.num_classes, k=int(k), temperature=temperature)
    extra = {"k_requested": requested} if int(k) != requested else {}
    return Output({"knn_accuracy": metric(acc, True, "knn", k=int(k), **extra, temperature=temperature,
                                          bank="train")})


@register_analysis("align_uniform", description="alignment (α=2) and uniformity (t=2) of ℓ2-normalised test embeddings, exact and streamed",
                   needs=("test",), section=OVERVIEW, title=OVERVIEW_TITLE)
def align_uniform(inp: Inputs, alpha: Annotated[float, POSITIVE] = 2.0, t: Annotated[float, POSITIVE] = 2.0) -> Output:
    z, y = inp.t("test", "embeddings"), inp.t("test", "labels")
    return Output({"alignment": metric(alignment(z, y, alpha=alpha), False, "align_uniform", alpha=alpha),
                   "uniformity": metric(uniformity(z, t=t), False, "align_uniform", t=t)},
                  plots={"kind": "metric_scatter", "title": "Alignment and uniformity", "x": "uniformity",
                         "y": "alignment",
                         "x_label": "uniformity (lower = more uniform)", "y_label": "alignment (lower = more aligned)",
                         "caption": ALIGN_UNIFORM_CAPTION})
