"""Out-of-distribution detection (METHODS.md §3): the ``ood`` and ``ood_logits`` analyses and their score plug-ins.

The scores and their evaluation are pure functions of :mod:`embedlab.metrics.ood` (conventions in its module doc:
every score is higher = more in-distribution). Here they are plug-ins of :data:`OOD_SCORES` (one registry per
plug-in kind), each with typed metadata ``needs_head`` (the classifier g's weight and bias) and ``needs_grad``
(back-propagation through the model, raw inputs); the analyses read the metadata, never the names.

Both analyses write to section ``ood``: one table per OOD set and metric (``OOD set <set> · AUROC``, …, and ``mean
over OOD sets · …``), one column per score.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from embedlab.analyses.registry import Inputs, Output, metric, register_analysis
from embedlab.config import AT_LEAST_1, NON_NEGATIVE, PERCENTILE, POSITIVE
from embedlab.data import collate_batched
from embedlab.errors import EmbedlabError
from embedlab.oodsets import set_group
from embedlab.metrics.ood import (
    CONVENTIONS,
    FPR_AT_TPR,
    energy_score,
    fit_mahalanobis,
    fit_vim,
    histogram,
    knn_score,
    mahalanobis_score,
    maxlogit_score,
    msp_score,
    odin_score,
    ood_metrics,
    react_score,
    react_threshold,
    roc_points,
    subsample_curve,
    vim_score,
)
from embedlab.registry import Registry

__all__ = ["OOD_SCORES", "FitInputs", "ScoredSet", "odin_dataset_scores", "register_score"]

SECTION, TITLE = "ood", "OOD detection"
NOTE = ("Scores are oriented so that a higher score means in-distribution (ID). AUROC and AUPR: higher is better; "
        "FPR@95TPR (false-positive rate on OOD data at 95 % true-positive rate on ID data): lower is better. The ID "
        "set is the model's test split.")
METRIC_LABELS = {"auroc": "AUROC", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out", "fpr95": "FPR@95TPR"}


def odin_dataset_scores(model: nn.Module, dataset: Dataset, *, temperature: float = 1000.0, epsilon: float = 0.0014,
                        device: torch.device | str = "cpu", batch_size: int = 256, progress: bool = False,
                        desc: str = "ODIN") -> Tensor:
    """:func:`odin_score` over a dataset of ``(x, y)`` in order, in batches on ``device``. Returns (N,) float64 (CPU)."""
    from tqdm.auto import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_batched)
    out = [odin_score(model, x.to(device), temperature, epsilon).cpu()
           for x, _ in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


# ============================================================================================== score plug-ins
@dataclass
class FitInputs:
    """What a score may be fitted on: the ID training split, the classifier g and the model, plus options."""

    z_train: Tensor
    y_train: Tensor
    num_classes: int
    weight: Tensor | None = None
    bias: Tensor | None = None
    model: nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class ScoredSet:
    """One set to score: extracted embeddings (N, d) and logits (N, C), and its raw inputs (gradient scores)."""

    z: Tensor
    logits: Tensor
    data: Dataset | None = None


Scorer = Callable[[ScoredSet], Tensor]
ScoreFactory = Callable[[FitInputs], tuple[Scorer, dict[str, Any]]]
OOD_SCORES: Registry[ScoreFactory] = Registry("OOD score")


def register_score(name: str, *, description: str, needs_head: bool = False,
                   needs_grad: bool = False) -> Callable[[ScoreFactory], ScoreFactory]:
    """Register ``factory(fit) -> (scorer, settings)``; ``settings`` (JSON-able) are recorded with each metric."""
    return OOD_SCORES.register(name, description=description, needs_head=needs_head, needs_grad=needs_grad)


@register_score("msp", description="maximum softmax probability (Hendrycks & Gimpel 2017)")
def _msp(fit: FitInputs) -> tuple[Scorer, dict[str, Any]]:
    return (lambda s: msp_score(s.logits)), {}


@register_score("maxlogit", description="maximum logit (Hendrycks et al. 2022)")
def _maxlogit(fit: FitInputs) -> tuple[Scorer, dict[str, Any]]:
    return (lambda s: maxlogit_score(s.logits)), {}


@register_score("energy", description="negative energy T·logsumexp(l/T), T=1 (Liu et al. 2020)")
def _energy(fit: FitInputs) -> tuple[Scorer, dict[str, Any]]:
    return (lambda s: energy_score(s.logits, 1.0)), {"temperature": 1.0}


@register_score("mahalanobis", description="−min_c Mahalanobis distance; class means and tied covariance of train "
                "embeddings (Lee et al. 2018)")
def _mahalanobis(fit: FitInputs) -> tuple[Scorer, dict[str, Any]]:
    m = fit_mahalanobis(fit.z_train, fit.y_train, fit.num_classes)
    return (lambda s: mahalanobis_score(s.z, m)), {"covariance": "tied, 1/N", "inverse": "pinv"}


@register_score("knn", description="−distance to the k-th nearest ℓ2-normalised train embedding, k=50 (Sun et al. 2022)")
def _knn(fit: FitInputs) -> tuple[Scorer, dict[str, Any]]:
    k = int(fit.options.get("knn_k", 50))
    if k > len(fit.z_train):
        raise EmbedlabError(f"knn_k={k} exceeds the {len(fit.z_train)} training embeddings; lower knn_k")
    return (lambda s: knn_score(fit.z_train, s.z, k)), {"k": k}


@register_score("vim", description="virtual-logit matching: logsumexp(l) − α‖x^{P⊥}‖ (Wang et al. 2022)", needs_head=True)
def _vim(fit: FitInputs) -> tuple[Scorer, dict[str, Any]]:
    v = fit_vim(fit.z_train, fit.weight, fit.bias, fit.options.get("vim_dim"))  # type: ignore[arg-type]
    return (lambda s: vim_score(s.z, v)), {"dim": v.dim, "alpha": v.alpha}


@register_score("react", description="energy of g(min(z, c)), c = 90th percentile of train activations (Sun et al. 2021)",
                needs_head=True)
def _react(fit: FitInputs) -> tuple[Scorer, dict[str, Any]]:
    p = float(fit.options.get("react_percentile", 90.0))
    c = react_threshold(fit.z_train, p)
    return (lambda s: react_score(s.z, fit.weight, fit.bias, c)), {"percentile": p, "threshold": c}  # type: ignore[arg-type]


ODIN_MAX_EXAMPLES = 2000  # ODIN's input gradients dominate the OOD analysis's cost: a seeded subsample per set


@register_score("odin", description="MSP at T=1000 after an ε=0.0014 input step towards higher confidence (Liang et al. 2018)",
                needs_head=False, needs_grad=True)
def _odin(fit: FitInputs) -> tuple[Scorer, dict[str, Any]]:
    t = float(fit.options.get("odin_temperature", 1000.0))
    eps = float(fit.options.get("odin_epsilon", 0.0014))
    cap = fit.options.get("max_examples")
    batch = int(fit.options.get("batch_size", 256))
    model = fit.model

    def score(s: ScoredSet) -> Tensor:
        if s.data is None or model is None:
            raise EmbedlabError("ODIN needs the model and the raw inputs of every set")
        data = s.data
        if cap is not None and len(data) > int(cap):  # type: ignore[arg-type]
            rng = np.random.default_rng(fit.seed)
            data = Subset(data, np.sort(rng.choice(len(data), int(cap), replace=False)).tolist())  # type: ignore[arg-type]
        return odin_dataset_scores(model, data, temperature=t, epsilon=eps, device=fit.device, batch_size=batch,
                                   progress=bool(fit.options.get("progress")),
                                   desc=f"ODIN ({len(data)} inputs, one gradient each)")

    return score, {"temperature": t, "epsilon": eps, "max_examples": cap, "space": "input"}


# ============================================================================================== analyses
def _select(spec: str | list[str] | tuple[str, ...] | None, allow_grad: bool, analysis: str) -> list[str]:
    names = [e.name for e in OOD_SCORES if allow_grad or not e.meta["needs_grad"]] if spec is None else (
        [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec))
    for n in names:
        entry = OOD_SCORES.get(n)
        if entry.meta["needs_grad"] and not allow_grad:
            raise EmbedlabError(f"OOD score {n!r} back-propagates through the model; run analysis 'ood' instead of "
                                f"{analysis!r}")
    if not names:
        raise EmbedlabError(f"{analysis}: 'scores' selects no OOD score; known: {', '.join(OOD_SCORES.names())}")
    return names


def _place(set_name: str, score: str, name: str) -> dict[str, Any]:
    """Section, table, column and key of ``ood/<set>/<score>/<name>`` (``set`` "mean": the mean over OOD sets)."""
    where = {"mean": "mean over OOD sets", "near": "mean over near-OOD sets", "far": "mean over far-OOD sets"}.get(
        set_name, f"OOD set {set_name}")
    return {"section": SECTION, "table": f"{where} \u00b7 {METRIC_LABELS.get(name, name)}", "column": score,
            "key": {"set": set_name, "score": score, "metric": name}}


def _tensor(a: np.ndarray) -> Tensor:
    """A writable copy: extracted arrays may be read-only memory maps of the embedding cache."""
    return torch.from_numpy(np.array(a, copy=True))


def _embedding_head(model: nn.Module | None) -> nn.Module | None:
    """The classifier g as ViM and ReAct use it: a linear layer mapping the model's embedding z to its logits, or None.
    ``model.embedding_head`` where the model has one (an external network read at another embedding keeps its last
    linear layer as ``head`` for training, but it is not the classifier of that z), else ``model.head``."""
    if model is None:
        return None
    return getattr(model, "embedding_head", getattr(model, "head", None))


def _evaluate(inp: Inputs, analysis: str, scores: Any, allow_grad: bool, options: dict[str, Any]) -> Output:
    """Shared body of ``ood`` and ``ood_logits``: fit each score on train, score test and every OOD set, metrics."""
    names = _select(scores, allow_grad, analysis)
    if not inp.ood:
        return Output(plots={"kind": "score_histograms", "conventions": CONVENTIONS, "skipped_scores": {}, "sets": {}})
    head = _embedding_head(inp.model)
    train = inp.splits["train"]
    fit = FitInputs(_tensor(train.embeddings), _tensor(train.labels), inp.num_classes,
                    weight=None if head is None else head.weight.detach().cpu(),
                    bias=None if head is None or head.bias is None else head.bias.detach().cpu(),
                    model=inp.model, device=inp.device, options=options, seed=inp.seed)
    skipped: dict[str, str] = {}
    scorers: dict[str, tuple[Scorer, dict[str, Any]]] = {}
    for n in names:
        meta = OOD_SCORES.get(n).meta
        if meta["needs_head"] and head is None:
            skipped[n] = ("needs the classifier g's weight and bias: " + (
                "no model was given (precomputed arrays)" if inp.model is None else
                getattr(inp.model, "no_head_reason", None) or
                f"the model ({type(inp.model).__name__}) exposes no linear classifier (a TorchScript program hides "
                f"it; give the architecture and weights as a torchvision/timm/factory spec instead)"))
            continue
        if meta["needs_grad"] and (inp.model is None or inp.test_data is None or not inp.ood_data):
            skipped[n] = "needs the model and the raw test and OOD inputs"
            continue
        scorers[n] = OOD_SCORES.get(n).obj(fit)

    def scored(ex: Any, data: Dataset | None) -> ScoredSet:
        return ScoredSet(_tensor(ex.embeddings), _tensor(ex.logits), data)

    id_set = scored(inp.splits["test"], inp.test_data)
    id_scores = {n: sc(id_set) for n, (sc, _) in scorers.items()}
    metrics: dict[str, dict[str, Any]] = {}
    plots: dict[str, Any] = {"kind": "score_histograms", "conventions": CONVENTIONS, "skipped_scores": skipped,
                             "sets": {}}
    arrays = {f"scores/id/{n}": s.numpy().astype(np.float32) for n, s in id_scores.items()}
    per_score: dict[str, dict[str, list[float]]] = {n: {"auroc": [], "fpr95": []} for n in scorers}
    for set_name, ex in inp.ood.items():
        ood_set = scored(ex, inp.ood_data.get(set_name))
        plots["sets"][set_name] = {}
        for n, (sc, settings) in scorers.items():
            s_in, s_out = id_scores[n], sc(ood_set)
            arrays[f"scores/{set_name}/{n}"] = s_out.numpy().astype(np.float32)
            res = ood_metrics(s_in, s_out)
            common = {"set": set_name, "group": set_group(set_name, inp.ood_data.get(set_name)), "score": n,
                      "n_id": len(s_in), "n_ood": len(s_out), **settings}
            for key, hib in (("auroc", True), ("aupr_in", True), ("aupr_out", True), ("fpr95", False)):
                extra = {"tpr": FPR_AT_TPR} if key == "fpr95" else {}
                metrics[f"ood/{set_name}/{n}/{key}"] = metric(res[key], hib, analysis, **_place(set_name, n, key),
                                                              **common, **extra)
            for key in ("auroc", "fpr95"):
                per_score[n][key].append(res[key])
            plots["sets"][set_name][n] = {"hist": histogram(s_in, s_out),
                                          "roc": subsample_curve(*roc_points(s_in, s_out))}
    # Mean over sets per score (the "average" column of OOD papers). No mean over scores: when both ood analyses
    # run, their score lists differ and equal metric names would hold different means.
    if len(inp.ood) > 1:
        for n in scorers:
            for key, hib in (("auroc", True), ("fpr95", False)):
                metrics[f"ood/mean/{n}/{key}"] = metric(float(np.mean(per_score[n][key])), hib, analysis,
                                                        **_place("mean", n, key), score=n, over_sets=list(inp.ood))
    # Means over the near-OOD sets (held-out classes: semantic shift) and the far-OOD sets (noise), reported apart:
    # far-OOD noise says little about a model's OOD detection; near-OOD is what the OOD literature reports.
    groups: dict[str, list[int]] = {}
    for i, set_name in enumerate(inp.ood):
        g = set_group(set_name, inp.ood_data.get(set_name))
        if g is not None:
            groups.setdefault(g, []).append(i)
    for g, idx in groups.items():
        for n in scorers:
            for key, hib in (("auroc", True), ("fpr95", False)):
                metrics[f"ood/{g}/{n}/{key}"] = metric(float(np.mean([per_score[n][key][i] for i in idx])), hib,
                                                       analysis, **_place(g, n, key), score=n, group=g,
                                                       over_sets=[list(inp.ood)[i] for i in idx])
    return Output(metrics, plots, arrays, skipped=dict(skipped))


def _odin_passes(inp: Inputs, scores: Any = None, max_examples: int | None = ODIN_MAX_EXAMPLES, **_: Any) -> int:
    """Per-example gradient passes of ODIN in :func:`ood`: one per scored input of the ID set and each OOD set."""
    if "odin" not in _select(scores, True, "ood") or inp.test_data is None:
        return 0
    cap = int(max_examples) if max_examples is not None else None
    sets = [inp.test_data, *inp.ood_data.values()]
    return sum(min(len(d), cap) if cap is not None else len(d) for d in sets)


@register_analysis("ood", description="OOD detection on every OOD set: MSP, MaxLogit, Energy, ODIN, Mahalanobis, KNN, "
                   "ViM, ReAct; AUROC, AUPR-In/Out, FPR@95TPR (higher score = ID)",
                   needs=("train", "test", "logits", "model", "test_data", "ood", "ood_data"),
                   section=SECTION, title=TITLE, note=NOTE, gradient_passes=_odin_passes, min_classes=2)
def ood(inp: Inputs, scores: str | list[str] | None = None, knn_k: Annotated[int, AT_LEAST_1] = 50,
        odin_temperature: Annotated[float, POSITIVE] = 1000.0, odin_epsilon: Annotated[float, NON_NEGATIVE] = 0.0014,
        react_percentile: Annotated[float, PERCENTILE] = 90.0, vim_dim: Annotated[int | None, AT_LEAST_1] = None,
        max_examples: Annotated[int | None, AT_LEAST_1] = ODIN_MAX_EXAMPLES,
        batch_size: Annotated[int, AT_LEAST_1] = 256) -> Output:
    """All registered OOD scores. ``max_examples`` caps (seeded subsample) the ID and each OOD set for ODIN only,
    the one score that back-propagates to the input (default :data:`ODIN_MAX_EXAMPLES`; raise it to score more)."""
    return _evaluate(inp, "ood", scores, True, {
        "knn_k": knn_k, "odin_temperature": odin_temperature, "odin_epsilon": odin_epsilon,
        "react_percentile": react_percentile, "vim_dim": vim_dim, "max_examples": max_examples,
        "batch_size": batch_size, "progress": inp.progress})


@register_analysis("ood_logits", description="OOD detection from extracted embeddings/logits only (no gradients): MSP, "
                   "MaxLogit, Energy, Mahalanobis, KNN, and ViM/ReAct when the classifier g is available",
                   needs=("train", "test", "logits", "ood"), section=SECTION, title=TITLE, note=NOTE,
                   covered_by="ood", min_classes=2)
def ood_logits(inp: Inputs, scores: str | list[str] | None = None, knn_k: Annotated[int, AT_LEAST_1] = 50,
               react_percentile: Annotated[float, PERCENTILE] = 90.0,
               vim_dim: Annotated[int | None, AT_LEAST_1] = None) -> Output:
    """The gradient-free scores; ViM and ReAct are skipped (reason in ``plots['skipped_scores']``) without a model."""
    return _evaluate(inp, "ood_logits", scores, False,
                     {"knn_k": knn_k, "react_percentile": react_percentile, "vim_dim": vim_dim})
