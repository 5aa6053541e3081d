"""Exact maths of seed 002's toy problem (METHODS.md §2): class densities, the Bayes classifier and the MMLB.

Class k of a :class:`~embedlab.data.GMMSpec` is an equal-weight mixture of ``N_k`` Gaussians ``N(μ, σ²I)`` in R²:
``g_k(x) = (1/N_k) Σ_i φ(x; μ_{k,i}, σ²I)``. Everything here is pure numpy on arrays of points ``x`` of shape
``(n, 2)``; randomness comes from an explicit ``np.random.Generator`` (the one :meth:`GMMSpec.sample` takes).

>>> import numpy as np
>>> from embedlab.data import GMMSpec
>>> spec = GMMSpec((np.array([[-1.0, 0.0]]), np.array([[1.0, 0.0]])), 0.1, (0.5, 0.5))
>>> bayes_predict(spec, np.array([[-0.5, 0.3], [0.2, -1.0]])).tolist()
[0, 1]
"""
from __future__ import annotations

import math

import numpy as np

from embedlab.data import GMMSpec

_CHUNK = 1 << 15  # points per block: bounds the (n, components) temporaries to a few MB


def _priors(spec: GMMSpec) -> np.ndarray:
    k = spec.num_classes
    p = np.asarray(spec.priors, dtype=np.float64) if spec.priors else np.full(k, 1.0 / k)
    if p.shape != (k,) or np.any(p < 0) or not math.isclose(float(p.sum()), 1.0, rel_tol=1e-9):
        raise ValueError(f"priors must be {k} non-negative numbers summing to 1, got {spec.priors}")
    return p


def gmm_log_density(spec: GMMSpec, x: np.ndarray) -> np.ndarray:
    """``log g_k(x)`` for every point and class: shape ``(n, K)``, float64.

    ``log g_k(x) = logsumexp_i(−‖x − μ_{k,i}‖² / 2σ²) − log N_k − log(2πσ²)`` (exact, stable far from every mean).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1, 2)  # (n, 2)
    s2 = float(spec.sigma) ** 2
    out = np.empty((len(x), spec.num_classes))
    for k, mu in enumerate(spec.means):
        mu = np.asarray(mu, dtype=np.float64).reshape(-1, 2)  # (N_k, 2)
        const = -math.log(len(mu)) - math.log(2 * math.pi * s2)
        for a in range(0, len(x), _CHUNK):
            xs = x[a:a + _CHUNK]
            q = -((xs[:, None, :] - mu[None]) ** 2).sum(-1) / (2 * s2)  # (c, N_k)
            m = q.max(1)
            out[a:a + _CHUNK, k] = m + np.log(np.exp(q - m[:, None]).sum(1)) + const
    return out


def bayes_predict(spec: GMMSpec, x: np.ndarray) -> np.ndarray:
    """The Bayes classifier ``h*(x) = argmax_k log π_k + log g_k(x)``: shape ``(n,)``, int64 (ties → lowest k)."""
    with np.errstate(divide="ignore"):  # a zero prior gives −inf: that class is never predicted
        logp = np.log(_priors(spec))
    return np.argmax(gmm_log_density(spec, x) + logp, axis=1).astype(np.int64)


def bayes_risk(spec: GMMSpec, x: np.ndarray, y: np.ndarray) -> float:
    """Empirical 0-1 risk of ``h*`` on the sample ``(x, y)``: the fraction of points it misclassifies."""
    y = np.asarray(y).reshape(-1)
    if len(y) == 0:
        raise ValueError("bayes_risk needs a non-empty sample")
    return float(np.mean(bayes_predict(spec, x) != y))


def sample_class(spec: GMMSpec, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws from ``X_k`` (component uniform within the class, then ``N(μ, σ²I)``): shape ``(n, 2)``."""
    mu = np.asarray(spec.means[k], dtype=np.float64).reshape(-1, 2)
    comp = rng.integers(0, len(mu), size=n)
    return mu[comp] + spec.sigma * rng.standard_normal((n, 2))


def mmlb(spec: GMMSpec, *, alpha: float = 1.0, n_pairs: int = 50_000,
         rng: np.random.Generator) -> tuple[float, float]:
    """Mixup misclassification lower bound (seed 002 eq. 2, METHODS.md §2) by Monte Carlo.

    ``R_low = Σ_k π_k² · P(h*(λx + (1−λ)x') ≠ k)`` with ``x, x' ~ X_k`` independent and ``λ ~ Beta(α, α)``;
    each probability is estimated from ``n_pairs`` pairs of class k. Returns ``(R_low, R_low / Σ_k π_k²)``;
    the second, the *normalised* MMLB, is the π²-weighted mean misclassification rate of same-class mixes and lies
    in [0, 1] (with equal priors, the plain mean over classes). Its Monte-Carlo standard error is at most
    ``0.5 / sqrt(n_pairs)``.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be positive, got {n_pairs}")
    pri = _priors(spec)
    miss = np.empty(spec.num_classes)
    for k in range(spec.num_classes):
        wrong = 0
        for a in range(0, n_pairs, _CHUNK):
            c = min(_CHUNK, n_pairs - a)
            x1, x2 = sample_class(spec, k, c, rng), sample_class(spec, k, c, rng)  # (c, 2) each
            lam = rng.beta(alpha, alpha, size=(c, 1))
            wrong += int(np.count_nonzero(bayes_predict(spec, lam * x1 + (1 - lam) * x2) != k))
        miss[k] = wrong / n_pairs
    w = pri ** 2
    r_low = float(np.dot(w, miss))
    return r_low, r_low / float(w.sum())
