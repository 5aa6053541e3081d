"""Pure evaluation metrics for embeddings and classifiers.

Every function takes tensors and returns Python numbers (or plain containers of them); nothing here
does I/O or picks a device: computation happens on the device of the inputs, except the faiss
nearest-neighbour search, which runs on CPU copies.

Pairwise metrics (:func:`alignment`, :func:`uniformity`) are exact but streamed over row chunks of
the strict upper triangle ``i < j``, so at most a ``chunk x N`` block is held at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "accuracy",
    "alignment",
    "expected_calibration_error",
    "knn_accuracy",
    "knn_search",
    "reliability_diagram",
    "uniformity",
]


# ----------------------------------------------------------------------------- validation helpers


def _check_matrix(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(x.shape)}")


def _check_labels(name: str, labels: Tensor, n: int) -> None:
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")


def _check_chunk(chunk: int) -> None:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")


def _check_class_logits(logits: Tensor, labels: Tensor) -> None:
    _check_matrix("logits", logits)
    n, c = logits.shape
    if n == 0:
        raise ValueError("logits is empty (N = 0); need at least one example")
    if c == 0:
        raise ValueError("logits has no classes (C = 0)")
    _check_labels("labels", labels, n)
    if labels.device != logits.device:
        raise ValueError(f"labels is on {labels.device} but logits is on {logits.device}")


# ----------------------------------------------------------------------------- classification


@torch.no_grad()
def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy.

    Shapes: ``logits`` (N, C), ``labels`` (N,) integer class indices.

    ``acc = (1/N) * sum_i [argmax_c logits[i, c] == labels[i]]`` (ties in the argmax go to the
    lowest class index).
    """
    _check_class_logits(logits, labels)
    return (logits.argmax(dim=1) == labels).double().mean().item()


# ----------------------------------------------------------------------------- alignment / uniformity


def _upper_triangle_blocks(z: Tensor, chunk: int) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """Yield ``(start, end, sq_dist, mask)`` covering every pair ``i < j`` exactly once.

    ``z`` is (N, d) float64. For rows ``start:end`` and columns ``start:N`` the block ``sq_dist``
    (end-start, N-start) holds ``||z_i - z_j||^2`` and the boolean ``mask`` is true where ``j > i``.
    """
    n = z.shape[0]
    sq_norm = (z * z).sum(dim=1)
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        rows, cols = z[start:end], z[start:]
        sq_dist = sq_norm[start:end, None] + sq_norm[None, start:] - 2.0 * (rows @ cols.T)
        sq_dist.clamp_(min=0.0)
        row_idx = torch.arange(start, end, device=z.device)
        col_idx = torch.arange(start, n, device=z.device)
        mask = col_idx[None, :] > row_idx[:, None]
        yield start, end, sq_dist, mask


@torch.no_grad()
def alignment(z: Tensor, labels: Tensor, alpha: float = 2.0, chunk: int = 512) -> float:
    """Alignment of same-class embeddings (Wang & Isola, 2020). Lower is better.

    Shapes: ``z`` (N, d), ``labels`` (N,) integer.

    With ``u_i = z_i / ||z_i||_2`` and ``P = {(i, j) : i < j, labels_i == labels_j}``:

    ``align = (1/|P|) * sum_{(i,j) in P} ||u_i - u_j||_2 ** alpha``

    Exact, streamed over ``chunk`` rows at a time (memory O(chunk * N)), accumulated in float64.
    Raises ``ValueError`` if no class has at least two examples.
    """
    _check_matrix("z", z)
    _check_labels("labels", labels, z.shape[0])
    _check_chunk(chunk)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    u = F.normalize(z.detach().to(torch.float64), p=2, dim=1)
    y = labels.to(u.device)
    total = torch.zeros((), dtype=torch.float64, device=u.device)
    count = torch.zeros((), dtype=torch.int64, device=u.device)
    for start, end, sq_dist, mask in _upper_triangle_blocks(u, chunk):
        same = mask & (y[start:end, None] == y[None, start:])
        dist_alpha = sq_dist if alpha == 2.0 else sq_dist.pow(alpha / 2.0)
        total += dist_alpha[same].sum()
        count += same.sum()
    n_pairs = int(count.item())
    if n_pairs == 0:
        raise ValueError(
            "alignment needs at least one same-class pair, but no class in labels has >= 2 examples"
        )
    return total.item() / n_pairs


@torch.no_grad()
def uniformity(z: Tensor, t: float = 2.0, chunk: int = 512) -> float:
    """Uniformity of embeddings on the unit sphere (Wang & Isola, 2020). Lower is better.

    Shape: ``z`` (N, d), N >= 2.

    With ``u_i = z_i / ||z_i||_2`` and ``P = N (N - 1) / 2`` pairs ``i < j``:

    ``unif = log( (1/P) * sum_{i<j} exp(-t * ||u_i - u_j||_2^2) )``

    Exact, streamed over ``chunk`` rows at a time (memory O(chunk * N)); the sum is kept as a
    running float64 log-sum-exp, so it neither overflows nor underflows for large ``t``.
    """
    _check_matrix("z", z)
    _check_chunk(chunk)
    n = z.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings, got N = {n}")
    u = F.normalize(z.detach().to(torch.float64), p=2, dim=1)
    log_sum = torch.tensor(-math.inf, dtype=torch.float64, device=u.device)
    for _start, _end, sq_dist, mask in _upper_triangle_blocks(u, chunk):
        exponents = -t * sq_dist[mask]
        if exponents.numel():
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(exponents, dim=0))
    n_pairs = n * (n - 1) // 2
    return log_sum.item() - math.log(n_pairs)


# ----------------------------------------------------------------------------- calibration


def _calibration_bins(logits: Tensor, labels: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin ``(count, sum of confidence, number correct)`` for top-label calibration.

    Confidence is ``max_c softmax(logits)_c`` in float64; bin ``k`` (0-based) is
    ``(k/B, (k+1)/B]``. Returned tensors have shape (B,) and live on CPU.
    """
    _check_class_logits(logits, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
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


# ----------------------------------------------------------------------------- nearest neighbours


def _to_faiss(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(device="cpu", dtype=torch.float32).numpy())


@torch.no_grad()
def knn_search(bank: Tensor, query: Tensor, k: int, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """Exact k-nearest-neighbour search by inner product with ``faiss.IndexFlatIP``.

    Shapes: ``bank`` (M, d), ``query`` (N, d) -> ``sims`` (N, k') float32 and ``idx`` (N, k') int64,
    with ``k' = min(k, M)``, each row sorted by decreasing similarity.

    ``sims[n, r] = <q_n, b_{idx[n, r]}>`` with ``q = query / ||query||_2`` and
    ``b = bank / ||bank||_2`` when ``normalize`` (cosine similarity), raw vectors otherwise.
    The search runs on CPU float32 copies; results are returned on ``query``'s device.
    """
    _check_matrix("bank", bank)
    _check_matrix("query", query)
    if bank.shape[1] != query.shape[1]:
        raise ValueError(f"bank has dim {bank.shape[1]} but query has dim {query.shape[1]}")
    if bank.shape[0] == 0:
        raise ValueError("bank is empty (M = 0); need at least one bank vector")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, bank.shape[0])
    if normalize:
        bank = F.normalize(bank.detach().float(), p=2, dim=1)
        query = F.normalize(query.detach().float(), p=2, dim=1)
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(_to_faiss(bank))
    sims, idx = index.search(_to_faiss(query), k)
    return torch.from_numpy(sims).to(query.device), torch.from_numpy(idx).to(query.device)


@torch.no_grad()
def knn_accuracy(
    bank_z: Tensor,
    bank_y: Tensor,
    query_z: Tensor,
    query_y: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Accuracy of a temperature-weighted kNN classifier (InstDisc / DINO evaluation).

    Shapes: ``bank_z`` (M, d), ``bank_y`` (M,), ``query_z`` (N, d), ``query_y`` (N,); labels are
    integers in ``[0, num_classes)``.

    Both sets are l2-normalised; for query ``n`` let ``N_k(n)`` be its ``k' = min(k, M)`` nearest
    bank items by cosine similarity ``s_{nm}``. Then

    ``score_{nc} = sum_{m in N_k(n)} exp(s_{nm} / T) * [bank_y_m == c]``,
    ``pred_n = argmax_c score_{nc}`` (ties to the lowest class), and the result is
    ``(1/N) * sum_n [pred_n == query_y_n]``.
    """
    _check_matrix("bank_z", bank_z)
    _check_matrix("query_z", query_z)
    _check_labels("bank_y", bank_y, bank_z.shape[0])
    _check_labels("query_y", query_y, query_z.shape[0])
    if query_z.shape[0] == 0:
        raise ValueError("query_z is empty (N = 0); need at least one query")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if bank_y.numel() and (int(bank_y.min()) < 0 or int(bank_y.max()) >= num_classes):
        raise ValueError(f"bank_y has labels outside [0, {num_classes})")

    sims, idx = knn_search(bank_z, query_z, k, normalize=True)
    sims = sims.to(torch.float64)
    # Subtracting the row max only rescales each row's weights by a positive constant, so the
    # argmax is unchanged while exp() can no longer overflow for tiny temperatures.
    weights = torch.exp((sims - sims.max(dim=1, keepdim=True).values) / temperature)
    neighbour_y = bank_y.to(idx.device)[idx]
    scores = torch.zeros(idx.shape[0], num_classes, dtype=torch.float64, device=idx.device)
    scores.scatter_add_(1, neighbour_y, weights)
    pred = scores.argmax(dim=1)
    return (pred == query_y.to(pred.device)).double().mean().item()
