"""Embedding-space MMLB against an exhaustive computation and known cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embedlab.metrics.convexity import embedding_mmlb


def _linear_logits(z: np.ndarray, w: np.ndarray, b: np.ndarray) -> torch.Tensor:
    return torch.tensor(z @ w.T + b, dtype=torch.float32)


def test_convex_classes_give_zero():
    # two classes separated by the line x = 0; each class lies on one side → every interpolant stays there
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.uniform(-3, -1, (50, 2)), rng.uniform(1, 3, (50, 2))])
    y = np.repeat([0, 1], 50)
    logits = _linear_logits(z, np.array([[-1.0, 0.0], [1.0, 0.0]]), np.zeros(2))
    r, norm, per = embedding_mmlb(logits, torch.tensor(y), pairs_per_class=500)
    assert r == 0.0 and norm == 0.0 and per == {0: 0.0, 1: 0.0}


def test_known_value_with_a_partly_misclassified_class():
    """1-D, g(x) = [x, −x] (class 0 iff x > 0). Class 0: ten points at +1 and ten at −1; class 1: ten at −1.

    Class 0 pairs: (+1, +1) never wrong; (−1, −1) always wrong; mixed pairs give 2λ − 1 < 0 for λ < ½, wrong half
    the time. Uniform pairs → rate ¼·0 + ¼·1 + ½·½ = ½. Class 1 is always right. π = (⅔, ⅓):
    R_low = (4/9)·½ = 2/9, normalised = (2/9) / (4/9 + 1/9) = 0.4.
    """
    xs = np.array([1.0] * 10 + [-1.0] * 10 + [-1.0] * 10)
    y = torch.tensor([0] * 20 + [1] * 10)
    logits = _linear_logits(xs[:, None], np.array([[1.0], [-1.0]]), np.zeros(2))
    r, norm, per = embedding_mmlb(logits, y, pairs_per_class=40000, generator=torch.Generator().manual_seed(0))
    assert per[1] == 0.0
    assert per[0] == pytest.approx(0.5, abs=0.01)
    assert r == pytest.approx(2 / 9, abs=0.005) and norm == pytest.approx(0.4, abs=0.01)


def test_monte_carlo_matches_exhaustive_on_random_affine_classifier():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(40, 3))
    y = rng.integers(0, 3, 40)
    logits = _linear_logits(z, rng.normal(size=(3, 3)), rng.normal(size=3))
    lam_grid = np.linspace(0, 1, 401)
    counts = np.bincount(y, minlength=3)
    pri = counts / counts.sum()
    exact = 0.0
    for k in range(3):
        idx = np.flatnonzero(y == k)
        lk = logits[idx].numpy()
        m = lam_grid[None, None, :, None] * lk[:, None, None, :] + (1 - lam_grid[None, None, :, None]) * lk[None, :, None, :]
        exact += pri[k] ** 2 * float((m.argmax(-1) != k).mean())
    r, norm, _ = embedding_mmlb(logits, torch.tensor(y), pairs_per_class=40000,
                                generator=torch.Generator().manual_seed(3))
    assert r == pytest.approx(exact, abs=0.01)
    assert norm == pytest.approx(exact / float((pri**2).sum()), abs=0.02)
    assert 0.0 <= norm <= 1.0
