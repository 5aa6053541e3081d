"""Embedding-space MMLB: how convex each class is in embedding space (METHODS.md §2, "ours, beyond the seed").

Seed 002's Mixup misclassification lower bound with the trained model's own classifier g in place of the Bayes
classifier and pairs drawn from same-class test embeddings:

    R_low = Σ_k π_k² · E_{z,z' ~ Z_k, λ ~ Beta(α, α)} [ 1{ argmax g(λz + (1−λ)z') ≠ k } ],   normalised = R_low / Σ_k π_k².

Because g is affine, ``g(λz + (1−λ)z') = λ g(z) + (1−λ) g(z')``, so the estimate needs only the logits of the real
examples (exact, no access to the network). π_k are the test split's class frequencies.
"""
from __future__ import annotations

import torch
from torch import Tensor

from embedlab.sampling import beta

__all__ = ["embedding_mmlb"]


def embedding_mmlb(logits: Tensor, labels: Tensor, *, alpha: float = 1.0, pairs_per_class: int = 2000,
                   generator: torch.Generator | None = None) -> tuple[float, float, dict[int, float]]:
    """Monte Carlo embedding-space MMLB.

    Args:
        logits: ``(N, C)`` logits ``g(z_i)`` of the real examples.
        labels: ``(N,)`` their classes.
        pairs_per_class: pairs (z, z') drawn uniformly with replacement within each class, one λ per pair.
    Returns:
        ``(R_low, normalised, {class: misclassification rate of its interpolants})``.

    >>> z = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])  # 1-D, g(z) = [-z, z]: both classes convex
    >>> embedding_mmlb(torch.cat([-z, z], dim=1), torch.tensor([0, 0, 1, 1]), pairs_per_class=100)
    (0.0, 0.0, {0: 0.0, 1: 0.0})
    """
    gen = generator or torch.Generator().manual_seed(0)
    logits = logits.float().cpu()
    labels = labels.long().cpu()
    classes, counts = labels.unique(return_counts=True)
    priors = counts.double() / counts.sum()
    per_class: dict[int, float] = {}
    r_low = 0.0
    for k, pi in zip(classes.tolist(), priors.tolist()):
        idx = (labels == k).nonzero().squeeze(1)  # (n_k,)
        i = idx[torch.randint(len(idx), (pairs_per_class,), generator=gen)]
        j = idx[torch.randint(len(idx), (pairs_per_class,), generator=gen)]
        lam = beta(alpha, (pairs_per_class, 1), gen)  # (P, 1)
        mixed = lam * logits[i] + (1 - lam) * logits[j]  # (P, C) = g(λ z_i + (1−λ) z_j)
        rate = float((mixed.argmax(1) != k).double().mean())
        per_class[int(k)] = rate
        r_low += pi * pi * rate
    return r_low, r_low / float((priors**2).sum()), per_class
