"""Geometry of embeddings on the unit sphere: ℓ2 normalisation, alignment and uniformity (Wang & Isola, 2020).

Pairwise metrics are exact but streamed over row chunks of the strict upper triangle ``i < j``, so at most a
``chunk x N`` block is held at a time; they compute in float64 on the device of the inputs.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from embedlab.metrics._common import EPS, check_chunk, check_labels, check_matrix, upper_triangle_blocks

__all__ = ["alignment", "l2_normalize", "uniformity"]


def l2_normalize(z: Tensor, dim: int = -1, eps: float = EPS) -> Tensor:
    """ℓ2 normalisation: ``u = z / ||z||_2`` along ``dim``; a zero vector stays zero (no NaN).

    Shapes: ``z`` (..., d) -> same shape and dtype. Each vector is first divided by its largest absolute entry, so
    the norm neither underflows nor is floored for tiny vectors: ``u`` is exactly invariant (up to rounding) to a
    positive rescaling of ``z``, even below ``||z|| = 1e-12`` where ``F.normalize``'s floor ``eps`` would leave the
    vector short of unit length. ``eps`` only floors the norm of the rescaled vector, which is at least 1 unless the
    vector is zero.

    >>> l2_normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0], [3e-30, 4e-30]]))
    tensor([[0.6000, 0.8000],
            [0.0000, 0.0000],
            [0.6000, 0.8000]])
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    m = z.abs().amax(dim=dim, keepdim=True)
    zs = z / torch.where(m > 0, m, torch.ones_like(m))  # max |entry| = 1: no underflow in the sum of squares
    return zs / zs.norm(p=2, dim=dim, keepdim=True).clamp_min(eps)


@torch.no_grad()
def alignment(z: Tensor, labels: Tensor, alpha: float = 2.0, chunk: int = 512) -> float:
    """Alignment of same-class embeddings (Wang & Isola, 2020). Lower is better.

    Shapes: ``z`` (N, d), ``labels`` (N,) integer.

    With ``u_i = z_i / ||z_i||_2`` and ``P = {(i, j) : i < j, labels_i == labels_j}``:

    ``align = (1/|P|) * sum_{(i,j) in P} ||u_i - u_j||_2 ** alpha``

    Exact, streamed over ``chunk`` rows at a time (memory O(chunk * N)), accumulated in float64.
    Raises ``ValueError`` if no class has at least two examples.

    >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 0.0]])
    >>> round(alignment(z, torch.tensor([0, 0, 1])), 6)  # ||e1 - e2||^2 = 2
    2.0
    """
    check_matrix("z", z)
    check_labels("labels", labels, z.shape[0])
    check_chunk(chunk)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    u = l2_normalize(z.detach().to(torch.float64))
    y = labels.to(u.device)
    total = torch.zeros((), dtype=torch.float64, device=u.device)
    count = torch.zeros((), dtype=torch.int64, device=u.device)
    for start, end, sq_dist, mask in upper_triangle_blocks(u, chunk):
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

    >>> round(uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])), 6)  # antipodal: -t * 4
    -8.0
    """
    check_matrix("z", z)
    check_chunk(chunk)
    n = z.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings, got N = {n}")
    u = l2_normalize(z.detach().to(torch.float64))
    log_sum = torch.tensor(-math.inf, dtype=torch.float64, device=u.device)
    for _start, _end, sq_dist, mask in upper_triangle_blocks(u, chunk):
        exponents = -t * sq_dist[mask]
        if exponents.numel():
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(exponents, dim=0))
    n_pairs = n * (n - 1) // 2
    return log_sum.item() - math.log(n_pairs)
