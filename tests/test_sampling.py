"""Gamma/Beta/Dirichlet samplers with an explicit generator, against scipy's distributions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import special, stats

from embedlab.sampling import beta, dirichlet, log_gamma


@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0, 2.0, 7.5])
def test_gamma_matches_scipy(alpha):
    g = torch.Generator().manual_seed(1)
    x = log_gamma(alpha, (20000,), g).exp().double().numpy()
    assert stats.kstest(x, stats.gamma(alpha).cdf).pvalue > 1e-3


def _logit_beta_cdf(t: np.ndarray, a: float) -> np.ndarray:
    b = stats.beta(a, a)  # symmetric: evaluate the tail that keeps precision
    return np.where(t <= 0, b.cdf(special.expit(t)), 1 - b.cdf(special.expit(-t)))


@pytest.mark.parametrize("alpha", [0.02, 0.3, 1.0, 2.0])
def test_beta_matches_scipy_in_logit_space(alpha):
    g = torch.Generator().manual_seed(2)
    t = (log_gamma(alpha, (20000,), g) - log_gamma(alpha, (20000,), g)).double().numpy()
    assert stats.kstest(t, lambda v: _logit_beta_cdf(v, alpha)).pvalue > 1e-3
    lam = beta(alpha, (5000,), g)
    assert lam.min() >= 0 and lam.max() <= 1


def test_beta_rejects_wrong_mean():
    # the test above can fail: Beta(2, 2) draws are not Beta(2.6, 2.6)
    g = torch.Generator().manual_seed(3)
    t = (log_gamma(2.0, (20000,), g) - log_gamma(2.0, (20000,), g)).double().numpy()
    assert stats.kstest(t, lambda v: _logit_beta_cdf(v, 2.6)).pvalue < 1e-3


@pytest.mark.parametrize("alpha", [0.1, 1.0, 3.0])
def test_dirichlet_rows_on_simplex_with_right_moments(alpha):
    g = torch.Generator().manual_seed(4)
    m = 5
    lam = dirichlet(alpha, (40000, m), g).double()
    assert (lam >= 0).all()
    torch.testing.assert_close(lam.sum(-1), torch.ones(40000, dtype=torch.float64), atol=1e-6, rtol=0)
    # Dir(α·1_m): E = 1/m, Var = (m−1) / (m² (mα + 1))
    var = (m - 1) / (m * m * (m * alpha + 1))
    assert abs(float(lam.mean()) - 1 / m) < 1e-3
    assert abs(float(lam.var(0).mean()) - var) < 0.05 * var


def test_tensor_alpha_per_element():
    g = torch.Generator().manual_seed(5)
    alpha = torch.tensor([0.5, 4.0]).repeat(20000)
    x = log_gamma(alpha, (40000,), g).exp()
    assert abs(float(x[0::2].mean()) - 0.5) < 0.03
    assert abs(float(x[1::2].mean()) - 4.0) < 0.1


def test_seeded_generator_is_deterministic():
    a = dirichlet(0.7, (10, 6), torch.Generator().manual_seed(9))
    b = dirichlet(0.7, (10, 6), torch.Generator().manual_seed(9))
    c = dirichlet(0.7, (10, 6), torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_global_rng_untouched():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    beta(0.5, (100,), torch.Generator().manual_seed(1))
    dirichlet(1.0, (10, 4), torch.Generator().manual_seed(1))
    assert torch.equal(torch.rand(3), before)


def test_invalid_alpha():
    with pytest.raises(ValueError):
        log_gamma(torch.tensor([1.0, -1.0]), (2,), torch.Generator())


def test_alpha_zero_limits():
    g = torch.Generator().manual_seed(0)
    assert torch.equal(beta(0.0, (5,), g), torch.ones(5))
    assert torch.equal(beta(torch.tensor([0.0, 0.0]), (2,), g), torch.ones(2))
    rows = dirichlet(0.0, (100, 4), g)
    assert set(rows.sum(-1).tolist()) == {1.0} and set(rows.flatten().tolist()) == {0.0, 1.0}
