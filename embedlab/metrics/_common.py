"""Input checks and helpers shared by the metric modules (private; no public API)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

EPS = 1e-12  # the norm floor of l2 normalisation: a zero vector stays zero instead of becoming NaN


def check_matrix(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(x.shape)}")


def check_labels(name: str, labels: Tensor, n: int) -> None:
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")


def check_chunk(chunk: int) -> None:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")


def check_class_logits(logits: Tensor, labels: Tensor) -> None:
    check_matrix("logits", logits)
    n, c = logits.shape
    if n == 0:
        raise ValueError("logits is empty (N = 0); need at least one example")
    if c == 0:
        raise ValueError("logits has no classes (C = 0)")
    check_labels("labels", labels, n)
    if labels.device != logits.device:
        raise ValueError(f"labels is on {labels.device} but logits is on {logits.device}")


def check_label_range(labels: Tensor, num_classes: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) to index the logits' classes")


def check_bins(n_bins: int) -> None:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")


def to_faiss(x: Tensor) -> Any:
    """A C-contiguous float32 numpy copy on CPU, as faiss wants it."""
    import numpy as np

    return np.ascontiguousarray(x.detach().to(device="cpu", dtype=torch.float32).numpy())


def upper_triangle_blocks(z: Tensor, chunk: int) -> Iterator[tuple[int, int, Tensor, Tensor]]:
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
