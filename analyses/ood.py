"""Out-of-distribution detection (METHODS.md §3): scores, metrics and the ``ood`` / ``ood_logits`` analyses.

Conventions, fixed here for every score and metric:

* **Orientation.** Every score is *higher = more in-distribution (ID)*. Papers or libraries that report an outlier
  score (pytorch-ood negates MSP, energy, Mahalanobis…) differ from these by a sign (and sometimes a positive scale).
* **Metrics** (:func:`ood_metrics`), ID = the model's test split, OOD = one OOD set:
  AUROC (ID as positive; ties count ½, the Mann–Whitney statistic); AUPR-In (average precision, ID positive, scores
  as given); AUPR-Out (average precision, OOD positive, scores negated); FPR@95TPR: the threshold ``τ`` is the
  ``⌈0.95·n_ID⌉``-th largest ID score, an example is accepted as ID when ``score ≥ τ`` (so at least 95 % of ID is
  accepted, more when ID scores tie at ``τ``), and FPR95 is the fraction of OOD examples with ``score ≥ τ`` (OOD ties
  at ``τ`` count as false positives). Average precision is the step-wise sum ``Σ_n (R_n − R_{n−1}) P_n`` over
  distinct thresholds, as ``sklearn.metrics.average_precision_score``.
* Scores are computed in float64 from the stored float32 embeddings/logits.

Scores are plug-ins of :data:`OOD_SCORES` (one registry per plug-in kind), each with typed metadata ``needs_head``
(the classifier g's weight and bias) and ``needs_grad`` (back-propagation through the model, raw inputs); the
analyses read the metadata, never the names. The maths are the pure functions below (``*_score``, ``fit_*``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from embedlab.analyses import metrics as M
from embedlab.analyses.registry import Inputs, Output, metric, register_analysis
from embedlab.data import collate_batched
from embedlab.errors import EmbedlabError
from embedlab.registry import Registry

__all__ = [
    "OOD_SCORES", "MahalanobisFit", "ViMFit", "energy_score", "fit_mahalanobis", "fit_vim", "histogram",
    "knn_score", "mahalanobis_score", "maxlogit_score", "msp_score", "odin_dataset_scores", "odin_score",
    "ood_metrics", "react_score", "react_threshold", "roc_points", "vim_default_dim", "vim_score",
]

FPR_AT_TPR = 0.95
HIST_BINS = 40
ROC_MAX_POINTS = 200


# ============================================================================================== logit-based scores
@torch.no_grad()
def msp_score(logits: Tensor) -> Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017).

    ``s(x) = max_c softmax(l(x))_c``. Shapes: ``logits`` (N, C) → (N,) float64.

    >>> msp_score(torch.tensor([[0.0, 0.0], [10.0, 0.0]])).round(decimals=4)
    tensor([0.5000, 1.0000], dtype=torch.float64)
    """
    return torch.softmax(logits.double(), dim=1).max(dim=1).values


@torch.no_grad()
def maxlogit_score(logits: Tensor) -> Tensor:
    """Maximum logit (Hendrycks et al., ICML 2022, "Scaling OOD detection for real-world settings").

    ``s(x) = max_c l_c(x)``. Shapes: ``logits`` (N, C) → (N,) float64.
    """
    return logits.double().max(dim=1).values


@torch.no_grad()
def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Negative free energy (Liu et al., NeurIPS 2020).

    ``s(x) = −E(x; T) = T · log Σ_c exp(l_c(x) / T)``, T = 1 by default (METHODS.md).
    Shapes: ``logits`` (N, C) → (N,) float64.

    >>> energy_score(torch.zeros(1, 4)).item() == math.log(4)
    True
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return temperature * torch.logsumexp(logits.double() / temperature, dim=1)


# ============================================================================================== ODIN
def odin_score(model: nn.Module, x: Tensor, temperature: float = 1000.0, epsilon: float = 0.0014) -> Tensor:
    """ODIN (Liang et al., ICLR 2018): temperature scaling plus input preprocessing, then MSP at ``T``.

    With ``S_c(x; T) = softmax(l(x) / T)_c`` and ``ŷ = argmax_c l_c(x)``:

    ``x̃ = x − ε · sign(−∇_x log S_ŷ(x; T))``  (a step that *raises* the top-class probability), then
    ``s(x) = max_c S_c(x̃; T)``.

    The step is taken in the model's *input* space (inputs in [0, 1]; the normalisation is inside the model), so ε
    is in input units: the paper's code divides the sign by the normalisation std, i.e. steps ε in normalised units.
    ``x̃`` is not clipped to [0, 1] (the paper does not clip); ``sign(0) = 0``.

    Shapes: ``x`` (B, …) on the model's device → (B,) float64. The model runs in eval mode (restored afterwards);
    the batch is back-propagated at once, which equals the per-example gradients because eval-mode models treat
    examples independently. Only the input gradient is computed: parameter ``.grad`` are left untouched.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            log_p = torch.log_softmax(model(x).double() / temperature, dim=1)  # (B, C)
            # max_c log S_c = log S_ŷ: the argmax does not depend on T; its gradient flows to the ŷ entry only.
            (grad,) = torch.autograd.grad(log_p.max(dim=1).values.sum(), x)
        x_tilde = x.detach() + epsilon * grad.sign()
        with torch.no_grad():
            return torch.softmax(model(x_tilde).double() / temperature, dim=1).max(dim=1).values
    finally:
        model.train(was_training)


def odin_dataset_scores(model: nn.Module, dataset: Dataset, *, temperature: float = 1000.0, epsilon: float = 0.0014,
                        device: torch.device | str = "cpu", batch_size: int = 256) -> Tensor:
    """:func:`odin_score` over a dataset of ``(x, y)`` in order, in batches on ``device``. Returns (N,) float64 (CPU)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_batched)
    out = [odin_score(model, x.to(device), temperature, epsilon).cpu() for x, _ in loader]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


# ============================================================================================== Mahalanobis
@dataclass(frozen=True)
class MahalanobisFit:
    """Class means ``(C, d)`` and the pseudo-inverse of the tied covariance ``(d, d)``, float64."""

    means: Tensor
    precision: Tensor


@torch.no_grad()
def fit_mahalanobis(z_train: Tensor, y_train: Tensor, num_classes: int) -> MahalanobisFit:
    """Class-conditional Gaussians with a shared (tied) covariance (Lee et al., NeurIPS 2018, Eq. 1).

    ``μ_c = mean{z_i : y_i = c}``, ``Σ = (1/N) Σ_c Σ_{i: y_i = c} (z_i − μ_c)(z_i − μ_c)ᵀ`` (the maximum-likelihood
    estimate, as the paper's code via ``sklearn.covariance.EmpiricalCovariance``), precision ``Σ⁺`` by a Hermitian
    pseudo-inverse (sklearn's ``precision_`` is ``pinvh`` too), so a rank-deficient Σ (dead units) is handled.
    Shapes: ``z_train`` (N, d), ``y_train`` (N,) in ``[0, num_classes)``; every class must occur.
    """
    z = z_train.double()
    y = y_train.long().to(z.device)
    counts = torch.bincount(y, minlength=num_classes)
    if len(counts) > num_classes or (y < 0).any():
        raise ValueError(f"y_train has labels outside [0, {num_classes})")
    missing = torch.nonzero(counts == 0).flatten().tolist()
    if missing:
        raise ValueError(f"Mahalanobis: classes {missing} have no training embeddings")
    means = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, device=z.device).index_add_(0, y, z)
    means /= counts[:, None]
    centred = z - means[y]  # (N, d)
    cov = centred.T @ centred / len(z)  # (d, d)
    return MahalanobisFit(means, torch.linalg.pinv(cov, hermitian=True))


@torch.no_grad()
def mahalanobis_score(z: Tensor, fit: MahalanobisFit, chunk: int = 4096) -> Tensor:
    """Mahalanobis confidence score (Lee et al., NeurIPS 2018, Eq. 2), without input preprocessing.

    ``s(x) = −min_c (z − μ_c)ᵀ Σ⁺ (z − μ_c)``. Shapes: ``z`` (N, d) → (N,) float64; memory O(chunk · C).
    """
    mu, prec = fit.means.to(z.device), fit.precision.to(z.device)
    mu_p = mu @ prec  # (C, d)
    mu_term = (mu_p * mu).sum(dim=1)  # (C,)  μ_cᵀ Σ⁺ μ_c
    out = []
    for zc in z.double().split(chunk):
        d2 = ((zc @ prec) * zc).sum(dim=1, keepdim=True) - 2.0 * zc @ mu_p.T + mu_term  # (b, C)
        out.append(-d2.clamp_(min=0.0).min(dim=1).values)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


# ============================================================================================== KNN
@torch.no_grad()
def knn_score(z_train: Tensor, z: Tensor, k: int = 50) -> Tensor:
    """Deep nearest neighbours (Sun et al., ICML 2022).

    With ``ẑ = z / ‖z‖₂``: ``s(x) = −‖ẑ(x) − ẑ_(k)‖₂``, the distance to the k-th nearest ℓ2-normalised training
    embedding. Neighbours are found with faiss (exact inner product, :func:`embedlab.analyses.metrics.knn_search`); the
    distance to the k-th one is then recomputed in float64. Shapes: ``z_train`` (M, d), ``z`` (N, d) → (N,) float64.
    """
    if not 1 <= k <= len(z_train):
        raise ValueError(f"k must be in [1, {len(z_train)}] (the number of training embeddings), got {k}")
    if len(z) == 0:
        return torch.zeros(0, dtype=torch.float64)
    _, idx = M.knn_search(z_train, z, k, normalize=True)  # (N, k)
    bank = torch.nn.functional.normalize(z_train.double(), dim=1)
    q = torch.nn.functional.normalize(z.double(), dim=1)
    return -(q - bank.to(q.device)[idx[:, k - 1].to(q.device)]).norm(dim=1)


# ============================================================================================== ViM
def vim_default_dim(d: int) -> int:
    """The ViM paper's rule for the principal-space dimension D from the feature dimension d.

    ``D = 1000 if d ≥ 2048; 512 if d ≥ 768; d // 2 otherwise``. The first two cases are the official code's rule
    (``benchmark.py`` of github.com/haoqiwang/vim: ``1000 if d >= 2048 else 512``; every model there has d ≥ 768);
    for the smaller embeddings of CIFAR-size models it would leave no residual space, so below 768 D = d/2
    **[choice]** (e.g. 256 for a 512-d ResNet-18). Override with the ``vim_dim`` setting.
    """
    return 1000 if d >= 2048 else 512 if d >= 768 else d // 2


@dataclass(frozen=True)
class ViMFit:
    """ViM's fitted quantities: origin ``o`` (d,), residual basis ``R`` (d, d−D), matching constant α, and g."""

    origin: Tensor
    residual_basis: Tensor
    alpha: float
    weight: Tensor
    bias: Tensor
    dim: int


@torch.no_grad()
def fit_vim(z_train: Tensor, weight: Tensor, bias: Tensor | None, dim: int | None = None) -> ViMFit:
    """Fit ViM (Wang et al., CVPR 2022, §4): principal space and matching constant on training features.

    1. Origin ``o = −W⁺ b`` (W the (C, d) classifier weight, ``⁺`` the pseudo-inverse), so that logits are linear
       in ``x − o``.
    2. Principal space P: the top-D eigenvectors of ``(1/N) Σ_i (z_i − o)(z_i − o)ᵀ`` (Eq. 4; D from
       :func:`vim_default_dim` unless given); the residual ``x^{P⊥}`` is the projection of ``x − o`` onto the
       remaining d − D eigenvectors.
    3. ``α = Σ_i max_c l_c(z_i) / Σ_i ‖z_i^{P⊥}‖`` over the training set (Eq. 6), with ``l = W z + b``.

    Shapes: ``z_train`` (N, d), ``weight`` (C, d), ``bias`` (C,) or None (zero).
    """
    z = z_train.double()
    w = weight.detach().double().to(z.device)
    b = (torch.zeros(w.shape[0], dtype=torch.float64, device=z.device) if bias is None
         else bias.detach().double().to(z.device))
    d = z.shape[1]
    dim = vim_default_dim(d) if dim is None else int(dim)
    if not 0 < dim < d:
        raise ValueError(f"ViM principal dimension must be in [1, {d - 1}] for {d}-dim features, got {dim}")
    origin = -(torch.linalg.pinv(w) @ b)  # (d,)
    x = z - origin  # (N, d)
    _, vecs = torch.linalg.eigh(x.T @ x / len(x))  # ascending eigenvalues
    residual_basis = vecs[:, : d - dim].contiguous()  # (d, d−D): the smallest d − D
    max_logit = (z @ w.T + b).max(dim=1).values  # (N,)
    alpha = float(max_logit.sum() / (x @ residual_basis).norm(dim=1).sum())
    return ViMFit(origin, residual_basis, alpha, w, b, dim)


@torch.no_grad()
def vim_score(z: Tensor, fit: ViMFit) -> Tensor:
    """ViM score (Wang et al., CVPR 2022, Eq. 7–8), oriented higher = ID.

    The paper's OOD score is the softmax probability of the virtual logit ``α‖x^{P⊥}‖``; its code ranks by the
    monotone equivalent ``α‖x^{P⊥}‖ − log Σ_c exp(l_c)``. Here ``s(x) = −(α‖x^{P⊥}‖ − log Σ_c exp(l_c(x)))`` with
    ``l = W z + b``. Shapes: ``z`` (N, d) → (N,) float64.
    """
    z = z.double()
    logits = z @ fit.weight.to(z.device).T + fit.bias.to(z.device)  # (N, C)
    residual = ((z - fit.origin.to(z.device)) @ fit.residual_basis.to(z.device)).norm(dim=1)  # (N,)
    return torch.logsumexp(logits, dim=1) - fit.alpha * residual


# ============================================================================================== ReAct
@torch.no_grad()
def react_threshold(z_train: Tensor, percentile: float = 90.0) -> float:
    """ReAct's clipping value c: the ``percentile``-th percentile of all training embedding activations (flattened;
    linear interpolation as ``numpy.percentile``, which the paper's code uses). Shapes: ``z_train`` (N, d)."""
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return float(np.percentile(z_train.detach().cpu().double().numpy().ravel(), percentile))


@torch.no_grad()
def react_score(z: Tensor, weight: Tensor, bias: Tensor | None, threshold: float) -> Tensor:
    """ReAct + energy (Sun et al., NeurIPS 2021): ``s(x) = logsumexp(W · min(z, c) + b)`` (energy, T = 1).

    Shapes: ``z`` (N, d), ``weight`` (C, d), ``bias`` (C,) or None → (N,) float64.
    """
    z = z.double().clamp(max=threshold)
    logits = z @ weight.detach().double().to(z.device).T
    if bias is not None:
        logits = logits + bias.detach().double().to(z.device)
    return energy_score(logits)


# ============================================================================================== metrics
def _as_numpy(name: str, s: Tensor | np.ndarray) -> np.ndarray:
    a = (s.detach().cpu().double().numpy() if isinstance(s, Tensor) else np.asarray(s, dtype=np.float64)).ravel()
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has {int((~np.isfinite(a)).sum())} non-finite values")
    return a


def _curve(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (TP, FP) at each distinct score, thresholds descending (``score ≥ t`` → positive)."""
    s = np.concatenate([pos, neg])
    lab = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.argsort(-s, kind="mergesort")
    s, lab = s[order], lab[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each group of tied scores
    tp = np.cumsum(lab)[last]
    return tp, (last + 1) - tp, s[last]


def _average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    tp, fp, _ = _curve(pos, neg)
    recall = tp / len(pos)
    return float(np.sum(np.diff(recall, prepend=0.0) * tp / (tp + fp)))


def roc_points(scores_in: Tensor | np.ndarray, scores_out: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve with ID as positive: ``(fpr, tpr)`` at every distinct threshold, starting at (0, 0)."""
    pos, neg = _as_numpy("scores_in", scores_in), _as_numpy("scores_out", scores_out)
    tp, fp, _ = _curve(pos, neg)
    return np.r_[0.0, fp / len(neg)], np.r_[0.0, tp / len(pos)]


def ood_metrics(scores_in: Tensor | np.ndarray, scores_out: Tensor | np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out and FPR@95TPR of scores oriented higher = ID (see the module doc for conventions).

    Shapes: ``scores_in`` (N_in,), ``scores_out`` (N_out,). Returns ``{"auroc", "aupr_in", "aupr_out", "fpr95"}``.

    >>> ood_metrics(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]))["auroc"]
    0.5
    """
    pos, neg = _as_numpy("scores_in", scores_in), _as_numpy("scores_out", scores_out)
    tp, fp, _ = _curve(pos, neg)
    # trapezoidal area on integer counts, divided once: exact 0, 1/2 and 1 in the degenerate cases
    area = np.sum(np.diff(fp, prepend=0.0) * (tp + np.r_[0.0, tp[:-1]])) / 2.0
    k = max(1, math.ceil(FPR_AT_TPR * len(pos) - 1e-9))  # accept at least 95 % of ID
    tau = np.sort(pos)[::-1][k - 1]
    return {
        "auroc": float(area / (len(pos) * len(neg))),
        "aupr_in": _average_precision(pos, neg),
        "aupr_out": _average_precision(-neg, -pos),
        "fpr95": float(np.mean(neg >= tau)),
    }


def histogram(scores_in: Tensor | np.ndarray, scores_out: Tensor | np.ndarray, bins: int = HIST_BINS) -> dict[str, list]:
    """Counts of ID and OOD scores in ``bins`` equal-width bins over their joint range (JSON-able lists)."""
    pos, neg = _as_numpy("scores_in", scores_in), _as_numpy("scores_out", scores_out)
    lo, hi = float(min(pos.min(), neg.min())), float(max(pos.max(), neg.max()))
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    return {"edges": edges.tolist(), "id": np.histogram(pos, edges)[0].tolist(),
            "ood": np.histogram(neg, edges)[0].tolist()}


def _subsample_curve(fpr: np.ndarray, tpr: np.ndarray, max_points: int = ROC_MAX_POINTS) -> dict[str, list]:
    keep = np.unique(np.round(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr)))).astype(int))
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}


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
        return odin_dataset_scores(model, data, temperature=t, epsilon=eps, device=fit.device, batch_size=batch)

    return score, {"temperature": t, "epsilon": eps, "max_examples": cap, "space": "input"}


# ============================================================================================== analyses
CONVENTIONS = {
    "orientation": "every score: higher = more in-distribution",
    "auroc": "ID positive; ties count 1/2",
    "aupr_in": "average precision, ID positive, scores as given",
    "aupr_out": "average precision, OOD positive, scores negated",
    "fpr95": "tau = ceil(0.95 n_ID)-th largest ID score; accept as ID when score >= tau; "
             "fpr95 = fraction of OOD with score >= tau (ties at tau count as false positives)",
}


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


def _tensor(a: np.ndarray) -> Tensor:
    """A writable copy: extracted arrays may be read-only memory maps of the embedding cache."""
    return torch.from_numpy(np.array(a, copy=True))


def _evaluate(inp: Inputs, analysis: str, scores: Any, allow_grad: bool, options: dict[str, Any]) -> Output:
    """Shared body of ``ood`` and ``ood_logits``: fit each score on train, score test and every OOD set, metrics."""
    names = _select(scores, allow_grad, analysis)
    if not inp.ood:
        return Output(plots={"conventions": CONVENTIONS, "skipped_scores": {}, "sets": {}})
    head = getattr(inp.model, "head", None) if inp.model is not None else None
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
            skipped[n] = "needs the classifier g's weight and bias, and no model was given (precomputed arrays)"
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
    plots: dict[str, Any] = {"conventions": CONVENTIONS, "skipped_scores": skipped, "sets": {}}
    arrays = {f"scores/id/{n}": s.numpy().astype(np.float32) for n, s in id_scores.items()}
    per_score: dict[str, dict[str, list[float]]] = {n: {"auroc": [], "fpr95": []} for n in scorers}
    for set_name, ex in inp.ood.items():
        ood_set = scored(ex, inp.ood_data.get(set_name))
        plots["sets"][set_name] = {}
        for n, (sc, settings) in scorers.items():
            s_in, s_out = id_scores[n], sc(ood_set)
            arrays[f"scores/{set_name}/{n}"] = s_out.numpy().astype(np.float32)
            res = ood_metrics(s_in, s_out)
            common = {"set": set_name, "score": n, "n_id": len(s_in), "n_ood": len(s_out), **settings}
            for key, hib in (("auroc", True), ("aupr_in", True), ("aupr_out", True), ("fpr95", False)):
                extra = {"tpr": FPR_AT_TPR} if key == "fpr95" else {}
                metrics[f"ood/{set_name}/{n}/{key}"] = metric(res[key], hib, analysis, **common, **extra)
            for key in ("auroc", "fpr95"):
                per_score[n][key].append(res[key])
            plots["sets"][set_name][n] = {"hist": histogram(s_in, s_out),
                                          "roc": _subsample_curve(*roc_points(s_in, s_out))}
    # Mean over sets per score (the "average" column of OOD papers). No mean over scores: when both ood analyses
    # run, their score lists differ and equal metric names would hold different means.
    if len(inp.ood) > 1:
        for n in scorers:
            for key, hib in (("auroc", True), ("fpr95", False)):
                metrics[f"ood/mean/{n}/{key}"] = metric(float(np.mean(per_score[n][key])), hib, analysis, score=n,
                                                        over_sets=list(inp.ood))
    return Output(metrics, plots, arrays)


@register_analysis("ood", description="OOD detection on every OOD set: MSP, MaxLogit, Energy, ODIN, Mahalanobis, KNN, "
                   "ViM, ReAct; AUROC, AUPR-In/Out, FPR@95TPR (higher score = ID)",
                   needs=("train", "test", "logits", "model", "test_data", "ood", "ood_data"))
def ood(inp: Inputs, scores: str | list[str] | None = None, knn_k: int = 50, odin_temperature: float = 1000.0,
        odin_epsilon: float = 0.0014, react_percentile: float = 90.0, vim_dim: int | None = None,
        max_examples: int | None = None, batch_size: int = 256) -> Output:
    """All registered OOD scores. ``max_examples`` caps (seeded subsample) the ID and each OOD set for ODIN only."""
    return _evaluate(inp, "ood", scores, True, {
        "knn_k": knn_k, "odin_temperature": odin_temperature, "odin_epsilon": odin_epsilon,
        "react_percentile": react_percentile, "vim_dim": vim_dim, "max_examples": max_examples,
        "batch_size": batch_size})


@register_analysis("ood_logits", description="OOD detection from extracted embeddings/logits only (no gradients): MSP, "
                   "MaxLogit, Energy, Mahalanobis, KNN, and ViM/ReAct when the classifier g is available",
                   needs=("train", "test", "logits", "ood"))
def ood_logits(inp: Inputs, scores: str | list[str] | None = None, knn_k: int = 50, react_percentile: float = 90.0,
               vim_dim: int | None = None) -> Output:
    """The gradient-free scores; ViM and ReAct are skipped (reason in ``plots['skipped_scores']``) without a model."""
    return _evaluate(inp, "ood_logits", scores, False,
                     {"knn_k": knn_k, "react_percentile": react_percentile, "vim_dim": vim_dim})
