"""Calibration of a classifier's confidence: ECE, AdaECE, MCE, reliability-diagram data, NLL, Brier, temperature
scaling (METHODS.md §3).

Functions take ``logits`` (N, C) and integer ``labels`` (N,) and return Python floats (or JSON-able dicts); they
compute in float64 on the device of the inputs.

Conventions:

- confidence ``conf_i = max_c softmax(z_i)_c``, prediction ``pred_i = argmax_c z_i`` (ties to the lowest class);
- equal-width bins are ``(k/B, (k+1)/B]``;
- Brier is summed over classes and averaged over examples (Brier 1950), so it lies in ``[0, 2]``;
- NLL uses the natural logarithm.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from embedlab.metrics._common import check_bins, check_class_logits, check_label_range

__all__ = [
    "adaptive_calibration_error",
    "brier_score",
    "calibration_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "reliability_diagram",
]

DEFAULT_BINS = 15
T_MIN, T_MAX = 1e-2, 1e2  # search bracket of the fitted temperature [choice]


# ----------------------------------------------------------------------------- binned calibration errors


def _calibration_bins(logits: Tensor, labels: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin ``(count, sum of confidence, number correct)`` for top-label calibration.

    Confidence is ``max_c softmax(logits)_c`` in float64; bin ``k`` (0-based) is
    ``(k/B, (k+1)/B]``. Returned tensors have shape (B,) and live on CPU.
    """
    check_class_logits(logits, labels)
    check_bins(n_bins)
    probs = torch.softmax(logits.detach().to(torch.float64), dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).to(torch.float64)
    # Inner edges 1/B .. (B-1)/B; bucketize(right=False) gives i with edges[i-1] < x <= edges[i],
    # i.e. the half-open-on-the-left bins (k/B, (k+1)/B]. Confidence is always > 0.
    inner = torch.tensor(
        [k / n_bins for k in range(1, n_bins)], dtype=torch.float64, device=conf.device
    )
    bin_idx = torch.bucketize(conf, inner, right=False)
    count = torch.zeros(n_bins, dtype=torch.int64, device=conf.device).scatter_add_(
        0, bin_idx, torch.ones_like(bin_idx)
    )
    conf_sum = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).scatter_add_(
        0, bin_idx, conf
    )
    correct_sum = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).scatter_add_(
        0, bin_idx, correct
    )
    return count.cpu(), conf_sum.cpu(), correct_sum.cpu()


@torch.no_grad()
def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width confidence bins.

    Shapes: ``logits`` (N, C), ``labels`` (N,) integer.

    ``conf_i = max_c softmax(logits_i)_c`` (float64), ``pred_i = argmax_c``; bin ``b`` (k = 0..B-1)
    holds the examples with ``conf_i in (k/B, (k+1)/B]``. Then

    ``ECE = sum_b (|B_b| / N) * | acc(B_b) - conf(B_b) |``

    where ``acc`` and ``conf`` are the bin means of ``[pred_i == labels_i]`` and ``conf_i``.

    >>> z = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    >>> round(expected_calibration_error(z, torch.tensor([0, 0, 0, 1]), n_bins=10), 4)
    0.3249
    """
    count, conf_sum, correct_sum = _calibration_bins(logits, labels, n_bins)
    n = int(count.sum().item())
    # |B_b|/N * |acc_b - conf_b| == |correct_sum_b - conf_sum_b| / N ; empty bins contribute 0.
    return ((correct_sum - conf_sum).abs().sum() / n).item()


@torch.no_grad()
def reliability_diagram(logits: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, list]:
    """Per-bin statistics behind :func:`expected_calibration_error` (same bins and softmax).

    Shapes: ``logits`` (N, C), ``labels`` (N,) integer.

    Returns a dict of length-``n_bins`` lists: ``lower`` and ``upper`` (bin ``k`` is
    ``(lower_k, upper_k] = (k/B, (k+1)/B]``), ``count`` (ints, summing to N), ``confidence``
    (mean ``max softmax`` in the bin) and ``accuracy`` (mean ``[pred == label]`` in the bin); for
    an empty bin ``confidence`` and ``accuracy`` are ``None``.

    >>> d = reliability_diagram(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]), n_bins=2)
    >>> d["count"], d["accuracy"]
    ([0, 2], [None, 0.5])
    """
    count, conf_sum, correct_sum = _calibration_bins(logits, labels, n_bins)
    counts = [int(c) for c in count.tolist()]
    confidence: list[float | None] = []
    acc: list[float | None] = []
    for c, s_conf, s_correct in zip(counts, conf_sum.tolist(), correct_sum.tolist(), strict=True):
        confidence.append(s_conf / c if c else None)
        acc.append(s_correct / c if c else None)
    return {
        "lower": [k / n_bins for k in range(n_bins)],
        "upper": [(k + 1) / n_bins for k in range(n_bins)],
        "count": counts,
        "confidence": confidence,
        "accuracy": acc,
    }


@torch.no_grad()
def adaptive_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = DEFAULT_BINS) -> float:
    """Top-label adaptive ECE with equal-mass bins (AdaECE; Nguyen & O'Connor 2015, Mukhoti et al. 2020).
    Lower is better.

    Shapes: ``logits`` (N, C), ``labels`` (N,) integer.

    Examples are sorted by confidence and split into ``B`` consecutive bins whose sizes differ by at most one
    (the first ``N mod B`` bins hold ``ceil(N/B)``, as ``numpy.array_split``; with ``N < B`` some bins are empty
    and contribute nothing). Then, as for ECE,

    ``AdaECE = sum_b (|B_b| / N) * | acc(B_b) - conf(B_b) |``.

    Examples with equal confidence are ordered by correctness, so the value does not depend on sample order.

    >>> z = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    >>> round(adaptive_calibration_error(z, torch.tensor([0, 0, 0, 1]), n_bins=2), 4)
    0.3249
    """
    check_class_logits(logits, labels)
    check_bins(n_bins)
    probs = torch.softmax(logits.detach().to(torch.float64), dim=1)
    conf, pred = probs.max(dim=1)  # (N,), (N,)
    correct = (pred == labels).to(torch.float64)  # (N,)
    # Lexicographic (conf, correct) order by two stable sorts: tied examples are then interchangeable.
    by_correct = torch.sort(correct, stable=True).indices
    order = by_correct[torch.sort(conf[by_correct], stable=True).indices]
    total = torch.zeros((), dtype=torch.float64, device=conf.device)
    for members in torch.tensor_split(order, n_bins):
        if members.numel():
            total += (correct[members].sum() - conf[members].sum()).abs()
    return (total / conf.shape[0]).item()


@torch.no_grad()
def maximum_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = DEFAULT_BINS) -> float:
    """Maximum calibration error over the non-empty equal-width bins of ECE (Naeini et al. 2015). Lower is better.

    Shapes: ``logits`` (N, C), ``labels`` (N,) integer.

    With the bins ``(k/B, (k+1)/B]`` of :func:`expected_calibration_error`:

    ``MCE = max_{b : |B_b| > 0} | acc(B_b) - conf(B_b) |``.

    >>> z = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    >>> round(maximum_calibration_error(z, torch.tensor([0, 0, 0, 1]), n_bins=10), 4)  # bin (0.8, 0.9]: |1/2 - 0.8808|
    0.3808
    """
    diagram = reliability_diagram(logits, labels, n_bins=n_bins)
    return max(abs(acc - conf) for count, conf, acc in zip(diagram["count"], diagram["confidence"],
                                                            diagram["accuracy"], strict=True) if count)


# ----------------------------------------------------------------------------- proper scoring rules


@torch.no_grad()
def negative_log_likelihood(logits: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the labels (natural log). Lower is better.

    Shapes: ``logits`` (N, C), ``labels`` (N,) integers in ``[0, C)``.

    ``NLL = -(1/N) * sum_i log softmax(z_i)_{y_i}``, computed with a float64 log-softmax (no overflow).

    >>> round(negative_log_likelihood(torch.zeros(3, 4), torch.tensor([0, 1, 3])), 6) == round(math.log(4), 6)
    True
    """
    check_class_logits(logits, labels)
    check_label_range(labels, logits.shape[1])
    log_p = torch.log_softmax(logits.detach().to(torch.float64), dim=1)  # (N, C)
    return -log_p.gather(1, labels[:, None]).mean().item()


@torch.no_grad()
def brier_score(logits: Tensor, labels: Tensor) -> float:
    """Multi-class Brier score (Brier 1950): squared error summed over classes, averaged over examples. Lower is better.

    Shapes: ``logits`` (N, C), ``labels`` (N,) integers in ``[0, C)``.

    ``BS = (1/N) * sum_i sum_c (p_ic - y_ic)^2`` with ``p = softmax(z)`` and ``y`` one-hot; range ``[0, 2]``.
    This is scikit-learn's ``brier_score_loss`` for multi-class inputs (``scale_by_half=False``, its default there);
    some libraries halve it or average over classes instead.

    >>> brier_score(torch.tensor([[0.0, 0.0]]), torch.tensor([0]))
    0.5
    """
    check_class_logits(logits, labels)
    check_label_range(labels, logits.shape[1])
    probs = torch.softmax(logits.detach().to(torch.float64), dim=1)  # (N, C)
    target = torch.nn.functional.one_hot(labels, probs.shape[1]).to(torch.float64)  # (N, C)
    return (probs - target).square().sum(dim=1).mean().item()


# ----------------------------------------------------------------------------- temperature scaling


def _nll_slope(z: Tensor, z_y: Tensor, log_t: float) -> float:
    """``d NLL(z / T) / d log T`` at ``T = exp(log_t)``; ``z`` (N, C) row-max-shifted float64, ``z_y`` (N,)."""
    beta = math.exp(-log_t)
    probs = torch.softmax(beta * z, dim=1)  # (N, C)
    # NLL(s) = mean_i [logsumexp_c(beta z_ic) - beta z_iy], beta = e^-s  =>  dNLL/ds = -beta * mean_i[E_p z_i - z_iy]
    return -beta * ((probs * z).sum(dim=1) - z_y).mean().item()


@torch.no_grad()
def fit_temperature(logits: Tensor, labels: Tensor, t_min: float = T_MIN, t_max: float = T_MAX,
                    tol: float = 1e-12, max_iter: int = 200) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017). Fit it on held-out data.

    Shapes: ``logits`` (N, C), ``labels`` (N,) integers in ``[0, C)``.

    ``T* = argmin_{T in [t_min, t_max]} NLL(logits / T, labels)``, searched over ``s = log T``. With
    ``beta = 1/T``, ``NLL`` is convex in ``beta`` (a log-sum-exp of linear functions minus a linear one), so
    ``dNLL/ds = -beta * mean_i(E_{softmax(beta z_i)}[z_i] - z_{i,y_i})`` changes sign at most once. The search is a
    deterministic bisection on the sign of that exact derivative, stopped when the bracket of ``s`` is narrower
    than ``tol``: the result is a stationary point of the NLL to machine precision, or the bracket end ``t_min``
    / ``t_max`` when the NLL keeps decreasing past it (e.g. separable logits, where ``T -> 0`` is optimal).
    If every row of ``logits`` is constant the NLL does not depend on ``T`` and ``1.0`` is returned.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(4000, 5, generator=g)
    >>> y = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g)[:, 0]
    >>> 0.9 < fit_temperature(3.0 * z, y) / 3.0 < 1.1  # over-confident logits -> T close to 3
    True
    """
    check_class_logits(logits, labels)
    check_label_range(labels, logits.shape[1])
    if not 0.0 < t_min < t_max or not math.isfinite(t_max):
        raise ValueError(f"need 0 < t_min < t_max < inf, got t_min={t_min}, t_max={t_max}")
    if tol <= 0 or max_iter < 1:
        raise ValueError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
    z = logits.detach().to(torch.float64)
    if not torch.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    z = z - z.max(dim=1, keepdim=True).values  # (N, C); softmax and the slope are shift-invariant per row
    if bool((z.min(dim=1).values == 0).all()):
        return 1.0
    z_y = z.gather(1, labels[:, None])[:, 0]  # (N,)
    lo, hi = math.log(t_min), math.log(t_max)
    if _nll_slope(z, z_y, lo) >= 0:
        return t_min
    if _nll_slope(z, z_y, hi) <= 0:
        return t_max
    for _ in range(max_iter):
        if hi - lo <= tol:
            break
        mid = 0.5 * (lo + hi)
        slope = _nll_slope(z, z_y, mid)
        if slope == 0:
            return math.exp(mid)
        if slope > 0:
            hi = mid
        else:
            lo = mid
    return math.exp(0.5 * (lo + hi))


# ----------------------------------------------------------------------------- all at once


@torch.no_grad()
def calibration_metrics(logits: Tensor, labels: Tensor, n_bins: int = DEFAULT_BINS) -> dict[str, float]:
    """Every calibration metric of this module on one set of logits (all lower-is-better).

    Shapes: ``logits`` (N, C), ``labels`` (N,) integers in ``[0, C)``.

    Returns ``{"ece", "adaptive_ece", "mce", "nll", "brier"}``: top-label ECE (``n_bins`` equal-width bins),
    AdaECE (``n_bins`` equal-mass bins), MCE (equal-width bins), NLL and the Brier score, as defined above.

    >>> m = calibration_metrics(torch.zeros(2, 2), torch.tensor([0, 1]))
    >>> sorted(m), m["brier"]
    (['adaptive_ece', 'brier', 'ece', 'mce', 'nll'], 0.5)
    """
    return {
        "ece": expected_calibration_error(logits, labels, n_bins=n_bins),
        "adaptive_ece": adaptive_calibration_error(logits, labels, n_bins=n_bins),
        "mce": maximum_calibration_error(logits, labels, n_bins=n_bins),
        "nll": negative_log_likelihood(logits, labels),
        "brier": brier_score(logits, labels),
    }
