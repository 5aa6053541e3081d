"""Core embedding-space analyses: accuracy, weighted kNN accuracy, alignment and uniformity."""
from __future__ import annotations

from embedlab.analyses import metrics as M
from embedlab.analyses.registry import Inputs, Output, metric, register_analysis


@register_analysis("accuracy", description="top-1 test accuracy of the model's classifier", needs=("test", "logits"))
def accuracy(inp: Inputs) -> Output:
    return Output({"accuracy": metric(M.accuracy(inp.t("test", "logits"), inp.t("test", "labels")), True, "accuracy")})


@register_analysis("knn", description="weighted kNN accuracy (cosine, k=20, T=0.07 as in DINO; train embeddings as the bank; faiss)",
                   needs=("train", "test"))
def knn(inp: Inputs, k: int = 20, temperature: float = 0.07) -> Output:
    acc = M.knn_accuracy(inp.t("train", "embeddings"), inp.t("train", "labels"), inp.t("test", "embeddings"),
                         inp.t("test", "labels"), inp.num_classes, k=k, temperature=temperature)
    return Output({"knn_accuracy": metric(acc, True, "knn", k=k, temperature=temperature, bank="train")})


@register_analysis("align_uniform", description="alignment (α=2) and uniformity (t=2) of ℓ2-normalised test embeddings, exact and streamed",
                   needs=("test",))
def align_uniform(inp: Inputs, alpha: float = 2.0, t: float = 2.0) -> Output:
    z, y = inp.t("test", "embeddings"), inp.t("test", "labels")
    return Output({"alignment": metric(M.alignment(z, y, alpha=alpha), False, "align_uniform", alpha=alpha),
                   "uniformity": metric(M.uniformity(z, t=t), False, "align_uniform", t=t)})
