"""Gamma, Beta and Dirichlet sampling driven by an explicit ``torch.Generator``.

Why hand-written: ``torch.distributions.{Gamma,Beta,Dirichlet}`` draw from the global RNG and take no generator,
which breaks embedlab's rule that all randomness comes from an explicit, seedable, device-aware generator.

Gamma(a, 1) uses Marsaglia & Tsang (2000), vectorised rejection (acceptance > 95 % per round for a ≥ 1), and the
boost ``G(a) = G(a + 1) · U^{1/a}`` for a < 1. Samples are returned in log space so that Beta and Dirichlet with
tiny concentrations stay finite: ``Dir(α) = softmax(log G_1..m)``, ``Beta(a, b) = sigmoid(log G_a − log G_b)``.
For a = 1 (MultiMix's default) Gamma(1) is Exp(1), drawn directly, which is several times faster.
"""
from __future__ import annotations

import torch
from torch import Tensor


def log_gamma(
    alpha: float | Tensor,
    shape: tuple[int, ...],
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``log G`` with ``G ~ Gamma(alpha, 1)`` elementwise; ``alpha`` a positive scalar or a tensor broadcastable to ``shape``."""
    device = generator.device
    if not isinstance(alpha, Tensor) and float(alpha) == 1.0:
        e = torch.empty(shape, device=device, dtype=dtype).exponential_(generator=generator)
        return e.clamp_min(torch.finfo(dtype).tiny).log()
    a = torch.as_tensor(alpha, dtype=dtype, device=device).expand(shape).reshape(-1)
    if bool((a <= 0).any()) or not bool(torch.isfinite(a).all()):
        raise ValueError("Gamma concentration must be positive and finite")
    boost = a < 1
    a1 = torch.where(boost, a + 1, a)
    d = a1 - 1.0 / 3.0
    c = torch.rsqrt(9.0 * d)
    out = torch.empty_like(a1)
    pending = torch.arange(a1.numel(), device=device)
    while pending.numel():
        dd, cc = d[pending], c[pending]
        x = torch.randn(pending.shape, generator=generator, device=device, dtype=dtype)
        u = torch.rand(pending.shape, generator=generator, device=device, dtype=dtype)
        v = (1 + cc * x) ** 3
        logv = v.clamp_min(torch.finfo(dtype).tiny).log()
        ok = (v > 0) & (u.clamp_min(torch.finfo(dtype).tiny).log() < 0.5 * x * x + dd - dd * v + dd * logv)
        out[pending[ok]] = dd[ok].log() + logv[ok]
        pending = pending[~ok]
    if bool(boost.any()):
        u = torch.rand(a1.shape, generator=generator, device=device, dtype=dtype)
        out = out + torch.where(boost, u.clamp_min(torch.finfo(dtype).tiny).log() / a, torch.zeros_like(a))
    return out.reshape(shape)


def gamma(alpha: float, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """``Gamma(alpha, 1)`` variates (not in log space); α = 1 draws Exp(1) directly."""
    if float(alpha) == 1.0:
        return torch.empty(shape, device=generator.device).exponential_(generator=generator)
    return log_gamma(alpha, shape, generator).exp()


def dirichlet(alpha: float, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Rows on the simplex: ``shape[:-1]`` independent draws of ``Dir(alpha · 1_m)``, ``m = shape[-1]``.

    ``alpha = 0`` gives the limit distribution: a vertex of the simplex (one-hot row) chosen uniformly.
    """
    if float(alpha) <= 0.0:
        idx = torch.randint(shape[-1], shape[:-1], generator=generator, device=generator.device)
        return torch.nn.functional.one_hot(idx, shape[-1]).float()
    return torch.softmax(log_gamma(alpha, shape, generator), dim=-1)


def beta(alpha: float | Tensor, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """``Beta(alpha, alpha)`` draws of the given shape (alpha scalar or broadcastable tensor).

    ``alpha = 0`` returns λ = 1 (no interpolation): mixup "collapses to standard ERM" at α = 0 (seed 002, §4).
    """
    if isinstance(alpha, Tensor):
        a = alpha.to(device=generator.device, dtype=torch.float32).expand(shape)
        safe = a.clamp_min(1e-12)
        lam = torch.sigmoid(log_gamma(safe, shape, generator) - log_gamma(safe, shape, generator))
        return torch.where(a > 0, lam, torch.ones_like(lam))
    if float(alpha) <= 0.0:
        return torch.ones(shape, device=generator.device)
    g1 = log_gamma(alpha, shape, generator)
    g2 = log_gamma(alpha, shape, generator)
    return torch.sigmoid(g1 - g2)
