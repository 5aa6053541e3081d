"""AlignMixup (Venkataramanan, Kijak, Amsaleg & Avrithis, "AlignMixup: Improving Representations By Interpolating
Aligned Features", CVPR 2022, §3; authors' code github.com/shashankvkt/AlignMixup_CVPR22).

Two feature tensors ``A, A' ∈ R^{d×r}`` (columns = the ``r = H·W`` spatial positions of a pair's feature maps) are
put in correspondence by entropic optimal transport before they are interpolated:

* cost ``M_ij = ‖a_i − a'_j‖²`` (squared Euclidean between the feature vectors at positions i of A and j of A'),
* ``P* = argmin_{P ∈ U_r} ⟨P, M⟩ − ε H(P)`` with ``U_r = {P ≥ 0 : P 1 = Pᵀ 1 = 1/r}``, solved by Sinkhorn-Knopp,
* assignment ``R = r P*`` (rows and columns sum to 1),
* ``Ã = A' Rᵀ`` (A' re-arranged onto the geometry of A: position i gets ``Σ_j R_ij a'_j``, a barycentre of A')
  and ``mix_λ(A, Ã) = λ A + (1 − λ) Ã``; symmetrically ``Ã' = A R`` and ``mix_λ(Ã', A') = λ Ã' + (1 − λ) A'``,
* targets ``λ y + (1 − λ) y'`` in both directions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from embedlab.errors import EmbedlabError
from embedlab.methods.base import (
    AlphaOptions,
    MixMethod,
    check_positive,
    draw_lambda,
    one_hot,
    pair_mix,
    permutation,
    register_method,
    soft_cross_entropy,
)
from embedlab.models import EmbedNet

DIRECTIONS = ("random", "first", "second")
COST_NORMS = ("none", "mean", "max")
LAST = "last"


def squared_distances(a: Tensor, a2: Tensor) -> Tensor:
    """``M[k, i, j] = ‖a[k, :, i] − a2[k, :, j]‖²`` for feature tensors ``(b, d, r)``; returns ``(b, r, r)`` in float32.

    Uses ``‖a‖² + ‖a'‖² − 2 aᵀa'`` (memory O(b r²), not O(b r² d)) and clamps the rounding negatives to 0.
    """
    a, a2 = a.float(), a2.float()
    sq = (a * a).sum(1)[:, :, None] + (a2 * a2).sum(1)[:, None, :]  # (b, r, r)
    return (sq - 2.0 * a.transpose(1, 2) @ a2).clamp_min_(0.0)


def _logsumexp(x: Tensor) -> Tensor:
    """``log Σ_j exp(x_j)`` over the last dim. Terms below ``e^−80`` times the largest are flushed to ``e^−80``
    (a relative change < r·e^−80 ≈ 1e−33): at small ε almost every term would otherwise be a subnormal float,
    whose arithmetic is several times slower on CPUs."""
    m = x.amax(-1, keepdim=True)
    return (x - m).clamp_min_(-80.0).exp_().sum(-1).log_() + m[..., 0]


def sinkhorn_plan(cost: Tensor, eps: float, iters: int, anneal: bool = True) -> Tensor:
    """Entropic OT plan with uniform marginals, batched, in the log domain.

    ``cost``: ``(b, r, s)``. Returns ``P`` ``(b, r, s)`` approximating ``argmin_P ⟨P, M⟩ − ε H(P)`` subject to
    ``P 1 = 1/r``, ``Pᵀ 1 = 1/s``. Each iteration updates both dual potentials,
    ``f_i = ε (log μ_i − LSE_j((g_j − M_ij)/ε))`` then ``g_j = ε (log ν_j − LSE_i((f_i − M_ij)/ε))`` — the
    authors' update (their ``SinkhornDistance``, after Cuturi 2013), finite for any ``M/ε``. The last update makes
    the column sums exact; the row sums converge.

    ``anneal`` (ε-scaling, e.g. Schmitzer 2019, "Stabilized sparse scaling algorithms for entropy regularized
    transport problems"): during the first half of the iterations ε decreases geometrically from the pair's
    largest cost to ``ε``, each step warm-started from the previous potentials; the second half runs at ``ε``.
    With raw feature distances ``M/ε`` reaches the hundreds, where a fixed ε converges very slowly: on the
    last 4×4 maps of an untrained cnn-gap at 32 px, 100 fixed-ε iterations leave row sums off by up to 6e-2
    (and some positions matched to other partner positions than in the converged plan), annealed ones by ~2e-3.
    ``anneal=False`` is the authors' fixed-ε iteration.
    """
    b, r, s = cost.shape
    cost = cost.float()
    cost_t = cost.transpose(1, 2).contiguous()  # (b, s, r): both reductions run over the last, contiguous dim
    log_mu, log_nu = -math.log(r), -math.log(s)
    f = torch.zeros(b, r, dtype=cost.dtype, device=cost.device)  # dual potentials, in cost units
    g = torch.zeros(b, s, dtype=cost.dtype, device=cost.device)
    n_anneal = iters // 2 if anneal else 0
    if n_anneal:
        eps0 = cost.amax(dim=(1, 2)).clamp_min(eps)[:, None, None]  # (b, 1, 1)
        ratio = (eps / eps0) ** (1.0 / n_anneal)  # (b, 1, 1) ≤ 1
        for t in range(n_anneal):
            e = (eps0 * ratio ** (t + 1)).clamp_min(eps)  # (b, 1, 1)
            f = e[:, :, 0] * (log_mu - _logsumexp((g[:, None, :] - cost) / e))  # (b, r)
            g = e[:, :, 0] * (log_nu - _logsumexp((f[:, None, :] - cost_t) / e))  # (b, s)
    # fixed ε: potentials in units of ε and the kernels precomputed
    k, k_t = cost / -eps, cost_t / -eps  # (b, r, s), (b, s, r)
    f, g = f / eps, g / eps
    for _ in range(iters - n_anneal):
        f = log_mu - _logsumexp(k + g[:, None, :])  # (b, r)
        g = log_nu - _logsumexp(k_t + f[:, None, :])  # (b, s)
    return torch.exp(k + f[:, :, None] + g[:, None, :])  # (b, r, s)


def normalise_cost(cost: Tensor, how: str) -> Tensor:
    """``none``: the raw squared distances (the authors' code); ``mean`` / ``max``: divided by the per-pair mean /
    maximum, which makes ε independent of the feature scale."""
    if how == "none":
        return cost
    scale = cost.mean(dim=(1, 2), keepdim=True) if how == "mean" else cost.amax(dim=(1, 2), keepdim=True)
    return cost / scale.clamp_min(torch.finfo(cost.dtype).tiny)


def align_mix(a: Tensor, a2: Tensor, lam: Tensor, plan: Tensor, keep_first: bool) -> Tensor:
    """Aligned interpolation of feature maps ``a, a2`` of shape ``(b, d, H, W)`` under the plan ``(b, r, r)``.

    ``keep_first``: ``λ A + (1 − λ) Ã`` with ``Ã = A' Rᵀ`` (positions of A); otherwise ``λ Ã' + (1 − λ) A'`` with
    ``Ã' = A R`` (positions of A'). ``R`` is the plan normalised along the side being averaged (rows of P for
    ``Ã``, columns for ``Ã'``): the barycentric projection ``Ã_i = Σ_j P_ij a'_j / Σ_j P_ij``, which equals the
    paper's ``R = rP*`` when the marginals are exact and keeps every aligned vector a convex combination when
    they are not. ``lam``: ``(b,)``.
    """
    b, d, h, w = a.shape
    r = h * w
    fa, fa2 = a.reshape(b, d, r), a2.reshape(b, d, r)
    lam_ = lam.to(a.dtype).reshape(b, 1, 1)
    tiny = torch.finfo(plan.dtype).tiny
    if keep_first:
        assign = (plan / plan.sum(2, keepdim=True).clamp_min(tiny)).to(a.dtype)  # (b, r, r) rows sum to 1
        mixed = lam_ * fa + (1 - lam_) * (fa2 @ assign.transpose(1, 2))  # (b, d, r)
    else:
        assign = (plan / plan.sum(1, keepdim=True).clamp_min(tiny)).to(a.dtype)  # (b, r, r) columns sum to 1
        mixed = lam_ * (fa @ assign) + (1 - lam_) * fa2  # (b, d, r)
    return mixed.reshape(b, d, h, w)


@dataclass
class AlignMixOptions(AlphaOptions):
    """``layers``: mixing points drawn uniformly per batch — ``"0"`` (the input: plain mixup, no alignment, as the
    authors do), a stage depth ``"k"``, ``"last"`` (= after the last stage, before pooling; the authors' feature
    layer) or a submodule name whose output is a ``(b, d, H, W)`` map. ``direction``: ``random`` picks ``Ã`` or
    ``Ã'`` with probability ½ per batch (authors); ``first`` always keeps the geometry of the first example,
    ``second`` that of its partner."""

    alpha: float = 2.0
    layers: tuple[str, ...] = ("0", LAST)
    sinkhorn_eps: float = 0.1
    sinkhorn_iters: int = 100
    sinkhorn_anneal: bool = True
    cost_norm: str = "none"
    direction: str = "random"
    per_sample: bool = False

    def validate(self, where: str) -> None:
        super().validate(where)
        check_positive(where, sinkhorn_eps=self.sinkhorn_eps, sinkhorn_iters=self.sinkhorn_iters)
        if not self.layers:
            raise EmbedlabError(f"{where} option layers: need at least one mixing point")
        if self.direction not in DIRECTIONS:
            raise EmbedlabError(f"{where} option direction: one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        if self.cost_norm not in COST_NORMS:
            raise EmbedlabError(f"{where} option cost_norm: one of {', '.join(COST_NORMS)}, got {self.cost_norm!r}")


@register_method("alignmix", description="AlignMixup (Venkataramanan et al. 2022): interpolate OT-aligned feature maps")
class AlignMix(MixMethod):
    """AlignMixup, CVPR 2022 §3 ("alignment" and "interpolation": cost ``M``, Sinkhorn-Knopp plan ``P*``,
    ``R = rP*``, ``Ã = A'Rᵀ`` / ``Ã' = AR``, ``mix_λ``), the vanilla variant (without the paper's autoencoder,
    AlignMixup/AE, which the authors' public code does not include either).

    Per mini-batch, as in the authors' code (``mixup_aligned`` and ``Resnet_classifier.forward`` in
    ``cifar10_100/models/resnet18_classifier.py``; ``--alpha 2.0`` in every command of their README):

    1. λ ~ Beta(α, α), α = 2, one value for the batch (``per_sample=True``: one per pair); partners from a
       random permutation.
    2. The mixing point is drawn uniformly from ``layers``; the default ``("0", "last")`` is the authors'
       ``layer_mix ∈ {0, 1}``: the input, or the output of the last stage before global pooling. At the input:
       plain mixup ``λx + (1−λ)x'`` (the authors do not align images).
    3. At a feature map ``A = F(x)`` ``(b, d, H, W)``: ``M_ij = ‖a_i − a'_j‖²`` between each example and its
       partner (raw, unnormalised distances as the authors), Sinkhorn with ε = 0.1 and 100 iterations, uniform
       marginals, no gradient through the plan (the authors ``.detach()`` it); then with probability ½ each
       (``direction="random"``, the authors' ``align_mix ∈ {0, 1}``) ``λA + (1−λ)A'Rᵀ`` (geometry of A) or
       ``λAR + (1−λ)A'`` (geometry of A'), continued through pooling and the classifier.
    4. Loss: soft-target cross-entropy against ``λy + (1−λ)y'`` in both directions (the authors'
       ``λ CE(·, y) + (1−λ) CE(·, y')``, the same function).

    Deviations, all deliberate:

    * Sinkhorn runs a fixed number of iterations (no host sync); the authors stop early once the mean ℓ1 change
      of the row potential drops below 0.1.
    * ε-scaling (``sinkhorn_anneal=True``, see :func:`sinkhorn_plan`): at ε = 0.1 on raw distances 100 plain
      iterations are far from the plan the paper defines; annealing gets much closer in the same budget.
    * ``R`` is normalised along the side being averaged (:func:`align_mix`): each aligned vector is an exact
      barycentre (weights summing to 1) of the partner's vectors even when the row sums have not converged;
      with exact marginals this is the paper's ``R = rP*``.
    * ``cost_norm`` (``mean``/``max``, default ``none`` = authors) and module-name mixing points are additions.

    Cost: one forward/backward, plus at a feature layer O(b·r²·d) for the cost and O(iters·b·r²) for Sinkhorn
    (≈ 1,500 small kernels, no extra network pass). Measured on CPU (1 thread, b = 64, cnn-gap width 32 at
    32 px, r = 16, median of 5 paired steps, two runs on a busy machine): ≈ 1.2–1.3× a plain forward/backward
    when mixing at the last map, ≈ 1.0× at the input, ≈ 1.1–1.2× with the default random choice between them.
    """

    Options = AlignMixOptions
    space = "input or last feature map (OT-aligned)"
    loss_terms = "b"
    examples_per_mix = "2"
    generated_per_batch = "b"
    factor_distribution = "Beta(α, α), α=2"
    reference = "Venkataramanan et al., AlignMixup, CVPR 2022, §3"

    def check_model(self, model: EmbedNet) -> None:
        if not model.supports_dense:
            raise EmbedlabError("alignmix needs a model whose last stage is a spatial map (B, d, H, W) that global "
                                "average pooling feeds to the classifier (e.g. cnn-gap, preact-resnet18); "
                                "this one has none")
        names = dict(model.named_modules())
        for p in self.opts.layers:
            if p == LAST or (p.isdigit() and int(p) <= model.num_stages):
                continue
            if p.isdigit():
                raise EmbedlabError(f"alignmix layers {self.opts.layers}: the model has only {model.num_stages} "
                                    f"stages (valid depths 0..{model.num_stages}, 'last', or a module name)")
            if p not in names:
                raise EmbedlabError(f"alignmix: no module named {p!r} to mix at (see `model.named_modules()`)")

    def mixer(self, lam: Tensor, perm: Tensor, keep_first: bool) -> Callable[[Tensor], Tensor]:
        """The function applied to the activations ``h`` at a feature mixing point."""
        o = self.opts
        eps, iters, anneal, norm = o.sinkhorn_eps, o.sinkhorn_iters, o.sinkhorn_anneal, o.cost_norm

        def mix(h: Tensor) -> Tensor:
            if h.dim() != 4:
                raise EmbedlabError(f"alignmix mixes spatial feature maps (B, d, H, W); the mixing point gave shape "
                                    f"{tuple(h.shape)}: choose another entry in option layers")
            b, d = h.shape[:2]
            h2 = h[perm]  # (b, d, H, W) partners
            with torch.no_grad():
                cost = normalise_cost(squared_distances(h.reshape(b, d, -1), h2.reshape(b, d, -1)), norm)  # (b, r, r)
                plan = sinkhorn_plan(cost, eps, iters, anneal)  # (b, r, r)
            return align_mix(h, h2, lam, plan, keep_first)

        return mix

    def forward_mix(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Logits of the mixed batch ``(b, c)`` and its soft targets ``(b, c)``."""
        b = x.shape[0]
        layers = self.opts.layers
        point = layers[int(torch.randint(len(layers), (1,), generator=gen, device=gen.device))]
        if self.opts.direction == "random":
            keep_first = bool(torch.rand((), generator=gen, device=gen.device) < 0.5)
        else:
            keep_first = self.opts.direction == "first"
        lam = draw_lambda(self.alpha, b, self.opts.per_sample, gen).to(x.device)  # (b,)
        perm = permutation(b, gen, x.device)
        target = pair_mix(one_hot(y, model.num_classes), lam, perm)  # (b, c)
        if point == "0":
            logits = model.forward_mixed(x, 0, lambda h: pair_mix(h, lam, perm))
        else:
            depth: int | str = model.num_stages if point == LAST else point
            logits = model.forward_mixed(x, depth, self.mixer(lam, perm, keep_first))
        return logits, target

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        return soft_cross_entropy(*self.forward_mix(model, x, y, gen))
