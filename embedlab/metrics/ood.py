"""Out-of-distribution detection (METHODS.md §3): scores, metrics and the their evaluation.

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

The analyses ``ood`` and ``ood_logits`` (:mod:`embedlab.analyses.ood`) register these scores as plug-ins and wire
their inputs to the functions here. faiss (``knn_score``) is imported when called.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from embedlab.metrics.classification import knn_search
from embedlab.metrics.geometry import l2_normalize

__all__ = [
    "CONVENTIONS", "MahalanobisFit", "ViMFit", "energy_score", "fit_mahalanobis", "fit_vim", "histogram",
    "knn_score", "mahalanobis_score", "maxlogit_score", "msp_score", "odin_score", "ood_metrics", "react_score",
    "react_threshold", "roc_points", "subsample_curve", "vim_default_dim", "vim_score",
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

    >>> maxlogit_score(torch.tensor([[1.0, 3.0], [-2.0, -1.0]]))
    tensor([ 3., -1.], dtype=torch.float64)
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

    >>> model = nn.Linear(2, 3)
    >>> s = odin_score(model, torch.rand(4, 2), temperature=1000.0, epsilon=0.0014)
    >>> s.shape, bool(((s > 0) & (s <= 1)).all())
    (torch.Size([4]), True)
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

    >>> fit = fit_mahalanobis(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]]),
    ...                       torch.tensor([0, 0, 1, 1]), num_classes=2)
    >>> fit.means
    tensor([[1., 0.],
            [1., 4.]], dtype=torch.float64)
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

    >>> fit = MahalanobisFit(torch.zeros(1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    >>> mahalanobis_score(torch.tensor([[3.0, 4.0]]), fit)
    tensor([-25.], dtype=torch.float64)
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
    embedding. Neighbours are found with faiss (exact inner product, :func:`embedlab.metrics.classification.knn_search`); the
    distance to the k-th one is then recomputed in float64. Shapes: ``z_train`` (M, d), ``z`` (N, d) → (N,) float64.

    >>> bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> knn_score(bank, torch.tensor([[2.0, 0.0]]), k=1)
    tensor([-0.], dtype=torch.float64)
    """
    if not 1 <= k <= len(z_train):
        raise ValueError(f"k must be in [1, {len(z_train)}] (the number of training embeddings), got {k}")
    if len(z) == 0:
        return torch.zeros(0, dtype=torch.float64)
    _, idx = knn_search(z_train, z, k, normalize=True)  # (N, k)
    bank = l2_normalize(z_train.double())
    q = l2_normalize(z.double())
    return -(q - bank.to(q.device)[idx[:, k - 1].to(q.device)]).norm(dim=1)


# ============================================================================================== ViM
def vim_default_dim(d: int) -> int:
    """The ViM paper's rule for the principal-space dimension D from the feature dimension d.

    ``D = 1000 if d ≥ 2048; 512 if d ≥ 768; d // 2 otherwise``. The first two cases are the official code's rule
    (``benchmark.py`` of github.com/haoqiwang/vim: ``1000 if d >= 2048 else 512``; every model there has d ≥ 768);
    for the smaller embeddings of CIFAR-size models it would leave no residual space, so below 768 D = d/2
    **[choice]** (e.g. 256 for a 512-d ResNet-18). Override with the ``vim_dim`` setting.

    >>> vim_default_dim(2048), vim_default_dim(768), vim_default_dim(512)
    (1000, 512, 256)
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

    >>> g = torch.Generator().manual_seed(0)
    >>> fit = fit_vim(torch.randn(100, 4, generator=g), torch.randn(3, 4, generator=g), None, dim=2)
    >>> fit.residual_basis.shape, fit.alpha > 0
    (torch.Size([4, 2]), True)
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

    >>> g = torch.Generator().manual_seed(0)
    >>> fit = fit_vim(torch.randn(100, 4, generator=g), torch.randn(3, 4, generator=g), None, dim=2)
    >>> vim_score(torch.randn(5, 4, generator=g), fit).shape
    torch.Size([5])
    """
    z = z.double()
    logits = z @ fit.weight.to(z.device).T + fit.bias.to(z.device)  # (N, C)
    residual = ((z - fit.origin.to(z.device)) @ fit.residual_basis.to(z.device)).norm(dim=1)  # (N,)
    return torch.logsumexp(logits, dim=1) - fit.alpha * residual


# ============================================================================================== ReAct
@torch.no_grad()
def react_threshold(z_train: Tensor, percentile: float = 90.0) -> float:
    """ReAct's clipping value c: the ``percentile``-th percentile of all training embedding activations (flattened;
    linear interpolation as ``numpy.percentile``, which the paper's code uses). Shapes: ``z_train`` (N, d).

    >>> react_threshold(torch.arange(11.0).reshape(1, 11), percentile=90.0)
    9.0
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return float(np.percentile(z_train.detach().cpu().double().numpy().ravel(), percentile))


@torch.no_grad()
def react_score(z: Tensor, weight: Tensor, bias: Tensor | None, threshold: float) -> Tensor:
    """ReAct + energy (Sun et al., NeurIPS 2021): ``s(x) = logsumexp(W · min(z, c) + b)`` (energy, T = 1).

    Shapes: ``z`` (N, d), ``weight`` (C, d), ``bias`` (C,) or None → (N,) float64.

    >>> react_score(torch.tensor([[5.0, 0.0]]), torch.eye(2), None, threshold=1.0)  # log(e^1 + e^0)
    tensor([1.3133], dtype=torch.float64)
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
    """ROC curve with ID as positive: ``(fpr, tpr)`` at every distinct threshold, starting at (0, 0).

    Shapes: ``scores_in`` (N_in,), ``scores_out`` (N_out,) → ``fpr``, ``tpr`` (T + 1,) for T distinct scores, with
    ``tpr(t) = |{s_in ≥ t}| / N_in`` and ``fpr(t) = |{s_out ≥ t}| / N_out`` for thresholds t descending.

    >>> fpr, tpr = roc_points(torch.tensor([3.0, 2.0]), torch.tensor([1.0]))
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 1.0, 1.0])
    """
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
    """Counts of ID and OOD scores in ``bins`` equal-width bins over their joint range (JSON-able lists).

    Shapes: ``scores_in`` (N_in,), ``scores_out`` (N_out,) → ``{"edges": (bins + 1,), "id": (bins,), "ood": (bins,)}``
    with ``edges = linspace(min s, max s, bins + 1)`` over both sets (± 0.5 when every score is equal).

    >>> histogram(torch.tensor([0.0, 1.0]), torch.tensor([0.0]), bins=2)
    {'edges': [0.0, 0.5, 1.0], 'id': [1, 1], 'ood': [1, 0]}
    """
    pos, neg = _as_numpy("scores_in", scores_in), _as_numpy("scores_out", scores_out)
    lo, hi = float(min(pos.min(), neg.min())), float(max(pos.max(), neg.max()))
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    return {"edges": edges.tolist(), "id": np.histogram(pos, edges)[0].tolist(),
            "ood": np.histogram(neg, edges)[0].tolist()}


def subsample_curve(fpr: np.ndarray, tpr: np.ndarray, max_points: int = ROC_MAX_POINTS) -> dict[str, list]:
    """At most ``max_points`` points of a curve, evenly spaced in index, first and last kept (JSON-able lists).

    Shapes: ``fpr``, ``tpr`` (T,) → lists of length ``min(max_points, T)`` (fewer if indices coincide), at indices
    ``round(linspace(0, T - 1, min(max_points, T)))``.

    >>> subsample_curve(np.linspace(0, 1, 5), np.linspace(0, 1, 5), max_points=3)
    {'fpr': [0.0, 0.5, 1.0], 'tpr': [0.0, 0.5, 1.0]}
    """
    keep = np.unique(np.round(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr)))).astype(int))
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}


CONVENTIONS = {
    "orientation": "every score: higher = more in-distribution",
    "auroc": "ID positive; ties count 1/2",
    "aupr_in": "average precision, ID positive, scores as given",
    "aupr_out": "average precision, OOD positive, scores negated",
    "fpr95": "tau = ceil(0.95 n_ID)-th largest ID score; accept as ID when score >= tau; "
             "fpr95 = fraction of OOD with score >= tau (ties at tau count as false positives)",
}
