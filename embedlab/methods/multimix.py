"""Multi-example methods: MultiMix and Dense MultiMix (embedding space, seeds 000/001), and the input-space
baselines that interpolate more than two examples: Dirichlet input mixing and ζ-mixup.

Embedding-space methods mix *logits* instead of embeddings: because each interpolation vector sums to 1,
``g(Σ_i λ_i z_i) = Σ_i λ_i g(z_i)`` exactly, so ``g(ΛZ) = Λ g(Z)`` costs O(n·b·c) instead of O(n·b·d + n·d·c).
``exact_embedding_mix=True`` computes ``g(ΛZ)`` literally (same loss and gradient up to rounding; for tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from embedlab.errors import EmbedlabError
from embedlab.methods.base import (
    AlphaOptions,
    MixMethod,
    NoOptions,
    check_positive,
    check_probability,
    one_hot,
    register_method,
    soft_cross_entropy,
)
from embedlab.methods.pairwise import ERM, Mixup, MixupOptions
from embedlab.models import EmbedNet
from embedlab.sampling import dirichlet, gamma


# -------------------------------------------------------------------------------------------------- multimix
MAX_MIXED = 100_000  # MultiMix n: each batch holds n × b interpolation weights and n mixed embeddings


@dataclass
class MultiMixOptions(AlphaOptions):
    alpha: float = 1.0
    n: int = 1000
    m: int | None = None
    p: float = 0.5
    fallback: str = "mixup"
    fallback_alpha: float = 1.0
    exact_embedding_mix: bool = False

    def validate(self, where: str) -> None:
        super().validate(where)
        check_positive(where, n=self.n, fallback_alpha=self.fallback_alpha)
        if self.n > MAX_MIXED:  # Λ alone is n × m floats per batch
            raise EmbedlabError(f"{where} option n: at most {MAX_MIXED:,} mixed examples per batch (the paper uses "
                                f"1000), got {self.n:,}")
        check_probability(where, p=self.p)
        if self.m is not None and self.m < 1:
            raise EmbedlabError(f"{where} option m: must be >= 1 (or none for m = b), got {self.m}")
        if self.fallback not in ("mixup", "erm"):
            raise EmbedlabError(f"{where} option fallback: 'mixup' or 'erm', got {self.fallback!r}")


def random_subset(b: int, m: int | None, gen: torch.Generator, device: torch.device) -> Tensor | None:
    """Indices of a random subset of ``m`` examples, or None when all ``b`` are used."""
    if m is None or m >= b:
        return None
    return torch.randperm(b, generator=gen, device=gen.device)[:m].to(device)


class WithFallback(MixMethod):
    """MultiMix-family methods apply with probability p per mini-batch, else the fallback (seed 001, A.1)."""

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self.fallback = (Mixup(MixupOptions(alpha=options.fallback_alpha)) if options.fallback == "mixup"
                         else ERM(NoOptions()))

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        if self.opts.p < 1.0 and float(torch.rand((), generator=gen, device=gen.device)) >= self.opts.p:
            return self.fallback.loss(model, x, y, gen)
        return self.mixed_loss(model, x, y, gen)

    def mixed_loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        raise NotImplementedError


@register_method("multimix", description="MultiMix: n ≫ b examples, each a Dirichlet mix of the whole batch's embeddings")
class MultiMix(WithFallback):
    """Venkataramanan et al. (seeds 000/001) §3.2, eqs. (6)–(8): ``Λ ∈ R^{n×m}``, rows ``λ_k ~ Dir(α·1_m)``;
    ``Z̃ = Λ Z``, ``Ỹ = Λ Y``; loss ``= (1/n) Σ_k CE(g(z̃_k), ỹ_k)``. The encoder runs once on the b real
    examples. With probability 1 − p the batch uses the fallback (input mixup) instead."""

    Options = MultiMixOptions
    space, examples_per_mix, generated_per_batch, factor_distribution = "embedding", "m = b", "n", "Dirichlet(α·1_m)"
    loss_terms = "n"
    reference = "Venkataramanan et al., MultiMix §3.2, eqs. 6–8"

    def mixed_loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        z = model.forward_features(x)  # (b, d)
        yy = one_hot(y, model.num_classes)  # (b, c)
        sel = random_subset(len(y), self.opts.m, gen, x.device)
        if sel is not None:
            z, yy = z[sel], yy[sel]
        lam = dirichlet(self.alpha, (self.opts.n, len(yy)), gen).to(x.device)  # (n, m)
        if self.opts.exact_embedding_mix:
            logits = model.forward_head(lam.to(z.dtype) @ z)  # g(ΛZ): (n, c)
            return soft_cross_entropy(logits, lam @ yy)
        return multimix_terms(model.forward_head(z), yy, lam).mean()


def multimix_terms(logits: Tensor, targets: Tensor, lam: Tensor) -> Tensor:
    """The n MultiMix loss terms ``CE(g(z̃_k), ỹ_k)`` computed as ``CE(λ_k g(Z), λ_k Y)``.

    logits ``(m, c)`` = g(Z), targets ``(m, c)``, lam ``(n, m)`` with rows on the simplex → ``(n,)``.
    """
    mixed = lam @ logits.float()  # (n, c) = g(ΛZ) since every row of Λ sums to 1
    return -((lam @ targets) * F.log_softmax(mixed, dim=-1)).sum(-1)


# -------------------------------------------------------------------------------------------- dense multimix
@dataclass
class DenseMultiMixOptions(MultiMixOptions):
    attention: str = "gap"
    attention_norm: str = "auto"
    per_position: bool = True
    global_weight: float = 0.0
    chunk: int = 250

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.attention not in ATTENTION:
            raise EmbedlabError(f"{where} option attention: one of {', '.join(ATTENTION)}, got {self.attention!r}")
        if self.attention_norm not in ATTENTION_NORMS:
            raise EmbedlabError(f"{where} option attention_norm: one of {', '.join(ATTENTION_NORMS)}, "
                                f"got {self.attention_norm!r}")
        check_probability(where, global_weight=self.global_weight)
        check_positive(where, chunk=self.chunk)


def _normalise(scores: Tensor, norm: str) -> Tensor:
    """``h`` of the attention map over r: ``softmax`` or ``l1`` (ReLU, then ℓ1-normalised; uniform where every
    score is ≤ 0); ``(b, r)`` → ``(b, r)`` on the simplex."""
    if norm == "softmax":
        return torch.softmax(scores, dim=-1)
    a = torch.relu(scores)
    s = a.sum(-1, keepdim=True)
    uniform = torch.full_like(a, 1.0 / a.shape[-1])
    return torch.where(s > 0, a / s.clamp_min(torch.finfo(a.dtype).tiny), uniform)


def attention_gap(fmap: Tensor, y: Tensor, weight: Tensor, norm: str = "softmax") -> Tensor:
    """``a_i = h(Z_i q_i)``, ``q_i = mean_r Z_i`` (the GAP embedding); fmap ``(b, d, r)`` → ``(b, r)``."""
    q = fmap.mean(-1)  # (b, d)
    return _normalise(torch.einsum("bdr,bd->br", fmap, q), norm)


def attention_cam(fmap: Tensor, y: Tensor, weight: Tensor, norm: str = "l1") -> Tensor:
    """``a_i = h(Z_i w_{y_i})``, w_y the classifier row of the true class (class activation map); the default
    ``h`` is ReLU + ℓ1 (uniform where all are ≤ 0); ``(b, d, r)`` → ``(b, r)``."""
    return _normalise(torch.einsum("bdr,bd->br", fmap, weight[y]), norm)


def attention_none(fmap: Tensor, y: Tensor, weight: Tensor, norm: str = "") -> Tensor:
    """Uniform attention ``(b, r)``."""
    return torch.full(fmap.shape[::2], 1.0 / fmap.shape[-1], dtype=fmap.dtype, device=fmap.device)


VARIANT_POOLED = "Dense MultiMix + pooled MultiMix (embedlab variant)"
ATTENTION = {"gap": attention_gap, "cam": attention_cam, "none": attention_none}
ATTENTION_NORMS = ("auto", "softmax", "l1")
DEFAULT_NORM = {"gap": "softmax", "cam": "l1", "none": "l1"}  # METHODS.md §1.2's definitions


def dense_weights(lam: Tensor, att: Tensor) -> Tensor:
    """Attention-weighted interpolation weights ``w_{k,i}^j = a_i^j λ_{k,i}^j / Σ_i a_i^j λ_{k,i}^j``.

    lam ``(n, r, m)`` Dirichlet rows over m (or unnormalised Gamma variates: the result is the same), att ``(m, r)``
    → ``(n, r, m)``, convex over m at every (k, j). Where no example attends to position j (``a_i^j = 0`` for every
    i, which CAM attention produces when the whole batch's class maps are negative there), the weights are ``λ_k^j``
    normalised, as with uniform attention, so that every mixed target stays a probability vector.
    """
    w = lam * att.t().unsqueeze(0)  # (n, r, m)
    total = w.sum(-1, keepdim=True)  # (n, r, 1)
    tiny = torch.finfo(w.dtype).tiny
    return torch.where(total > 0, w / total.clamp_min(tiny), lam / lam.sum(-1, keepdim=True).clamp_min(tiny))


@register_method("dense_multimix", description="Dense MultiMix: per-position Dirichlet mixing of unpooled features, attention-weighted, dense loss")
class DenseMultiMix(WithFallback):
    """Seeds 000/001, Dense MultiMix (paper eqs. 9–13 as far as the seeds show them): unpooled features
    ``Z_i ∈ R^{r×d}``; attention ``a_i = h(·) ∈ Δ^r`` without gradient; per generated example k and position j,
    ``w_{k,i}^j = a_i^j λ_{k,i}^j / Σ_i a_i^j λ_{k,i}^j``; ``z̃_k^j = Σ_i w_{k,i}^j Z_i^j``, ``ỹ_k^j = Σ_i w_{k,i}^j y_i``;
    dense loss ``L_dense`` = mean over n·r of ``CE(g(z̃_k^j), ỹ_k^j)``.

    The paper's loss is ``L_dense`` alone, the default (``global_weight`` β = 0). **embedlab variant**
    (β > 0, labelled "Dense MultiMix + pooled MultiMix (embedlab variant)" wherever it appears): inference pools all
    r positions equally, ``g(mean_j Z^j)``, but ``L_dense`` gives a position of example i gradient only in
    proportion to its attention relative to the other examples' at that position, so with dense mixing on every
    batch (p = 1) positions with little attention are never trained towards their label (measured on digits at
    p = 1: 55 % test accuracy with softmax GAP attention, 26 % with CAM, against 86 % for MultiMix). The variant's loss
    is ``(1 − β) L_dense + β L_MultiMix``, where ``L_MultiMix`` is MultiMix (eqs. 6–8, its own Λ) on the pooled
    embeddings ``mean_j Z_i^j``, the path inference takes (β = 1 is MultiMix); recommended for p = 1. At the paper's
    p = 0.5 the input-mixup half of the batches already trains the pooled classifier. Further **[choices]**:
    ``attention`` gap (``h(Z_i^T z̄_i)``, z̄_i the GAP embedding), cam (``h(Z_i^T w_{y_i})``) or none;
    ``attention_norm`` h = ``softmax`` or ``l1`` (ReLU then ℓ1; the seeds do not show which; ``auto``: METHODS.md's
    softmax for gap, ℓ1 for cam); ``per_position``:
    an independent λ_k^j per position (METHODS.md) or one λ_k for all positions. docs/RESULTS.md has the ablation.
    Generated examples are processed in chunks of ``chunk`` so memory is O(chunk·r·c)."""

    Options = DenseMultiMixOptions
    space, examples_per_mix, generated_per_batch, factor_distribution = (
        "embedding (per position)", "m = b", "n·r", "Dirichlet(α·1_m), attention-weighted")
    loss_terms = "n·r + n"
    reference = "Venkataramanan et al., Dense MultiMix §3.3"

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self.attention = ATTENTION[options.attention]

    def variant(self) -> str | None:
        return VARIANT_POOLED if self.opts.global_weight > 0 else None

    def check_model(self, model: EmbedNet) -> None:
        if not model.supports_dense:
            raise EmbedlabError("dense_multimix needs a model whose classifier follows global average pooling of a "
                                "spatial map (e.g. cnn-gap, preact-resnet18, resnet*); this model has none")

    def _gamma(self, n: int, r: int, m: int, gen: torch.Generator) -> Tensor:
        if self.alpha is not None and self.alpha <= 0:  # α = 0: Dirichlet limit, one-hot rows
            return dirichlet(0.0, (n, r, m), gen)
        return gamma(self.alpha, (n, r, m), gen)

    def mixed_loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        fmap = model.feature_map(x)  # (b, d, r)
        yy = one_hot(y, model.num_classes)  # (b, c)
        sel = random_subset(len(y), self.opts.m, gen, x.device)
        if sel is not None:
            fmap, yy, y = fmap[sel], yy[sel], y[sel]
        m, d, r = fmap.shape
        with torch.no_grad():
            norm = self.opts.attention_norm if self.opts.attention_norm != "auto" else DEFAULT_NORM[self.opts.attention]
            att = self.attention(fmap.detach().float(), y, model.head.weight.detach().float(), norm)  # (m, r)
        if not self.opts.exact_embedding_mix:
            dense_logits = model.forward_head(fmap.transpose(1, 2)).float()  # g per position: (m, r, c)
        beta = self.opts.global_weight
        total = fmap.new_zeros((), dtype=torch.float32)
        n = self.opts.n
        if beta < 1:
            for start in range(0, n, self.opts.chunk):
                nk = min(self.opts.chunk, n - start)
                # λ ~ Dir(α) is G / ΣG with G_i ~ Gamma(α); the attention renormalisation over i cancels ΣG,
                # so the Gamma variates are used directly (same weights, one normalisation instead of two)
                g = self._gamma(nk, r if self.opts.per_position else 1, m, gen).to(x.device)
                w = dense_weights(g.expand(nk, r, m), att)  # (nk, r, m)
                if self.opts.exact_embedding_mix:
                    z_mix = torch.einsum("krm,mdr->krd", w.to(fmap.dtype), fmap)  # (nk, r, d)
                    logits = model.forward_head(z_mix).float()  # (nk, r, c)
                else:
                    logits = torch.einsum("krm,mrc->krc", w, dense_logits)  # (nk, r, c)
                target = torch.einsum("krm,mc->krc", w, yy)  # (nk, r, c)
                total = total + soft_cross_entropy(logits, target) * (nk * r)
            total = (1 - beta) * total / (n * r)
        if beta > 0:  # MultiMix on the pooled embeddings: the path inference takes, g(mean_r Z) = mean_r g(Z)
            lam = dirichlet(self.alpha, (n, m), gen).to(x.device)  # (n, m)
            if self.opts.exact_embedding_mix:
                pooled = model.forward_head(lam.to(fmap.dtype) @ fmap.mean(-1)).float()
                total = total + beta * soft_cross_entropy(pooled, lam @ yy)
            else:
                total = total + beta * multimix_terms(dense_logits.mean(1), yy, lam).mean()
        return total


# ------------------------------------------------------------------------------------ input-space multi-mix
@dataclass
class DirichletInputOptions(AlphaOptions):
    alpha: float = 1.0
    m: int | None = None


@register_method("dirichlet_input", description="MultiMix's Dirichlet sampling in input space: b examples, each a mix of m = b inputs")
class DirichletInput(MixMethod):
    """The ablation of the MultiMix paper that interpolates in input space: ``X̃ = Λ X``, ``Ỹ = Λ Y`` with
    ``Λ ∈ R^{b×m}``, rows ``λ_k ~ Dir(α·1_m)``; b generated examples (input mixing costs a forward per example)."""

    Options = DirichletInputOptions
    space, examples_per_mix, generated_per_batch, factor_distribution = "input", "m = b", "b", "Dirichlet(α·1_m)"
    reference = "Venkataramanan et al., MultiMix ablation (input-space interpolation)"

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        b = x.shape[0]
        yy = one_hot(y, model.num_classes)  # (b, c)
        sel = random_subset(b, self.opts.m, gen, x.device)
        xs, ys = (x, yy) if sel is None else (x[sel], yy[sel])
        lam = dirichlet(self.alpha, (b, len(ys)), gen).to(x.device)  # (b, m)
        x_mix = torch.einsum("km,m...->k...", lam.to(x.dtype), xs)  # (b, C, H, W)
        return soft_cross_entropy(model(x_mix), lam @ ys)


@dataclass
class ZetaMixupOptions:
    gamma: float = 2.8
    m: int | None = None

    def validate(self, where: str) -> None:
        if not self.gamma > 1:
            raise EmbedlabError(f"{where} option gamma: must be > 1 (a convergent p-series), got {self.gamma}")
        if self.m is not None and self.m < 2:
            raise EmbedlabError(f"{where} option m: must be >= 2 (or none for m = b), got {self.m}")


def zeta_weights(b: int, gamma: float, gen: torch.Generator) -> Tensor:
    """ζ-mixup's mixing matrix ``T ∈ R^{b×b}``: row i holds ``s^(−γ) / C`` where s is a random ranking of the b
    examples with example i ranked first (so each output is dominated by its own input), ``C = Σ_s s^(−γ)``."""
    keys = torch.rand(b, b, generator=gen, device=gen.device)
    keys.diagonal().fill_(-1.0)  # own example gets rank 1
    ranks = keys.argsort(dim=1).argsort(dim=1).float() + 1  # (b, b), each row a permutation of 1..b
    w = ranks.pow(-gamma)
    return w / w.sum(dim=1, keepdim=True)


@register_method("zeta_mixup", description="ζ-mixup (Abhishek et al. 2022): each example mixed with m others by p-series weights")
class ZetaMixup(MixMethod):
    """Abhishek et al. 2022, "Multi-sample ζ-mixup", eq. (3): ``X̃ = T X``, ``Ỹ = T Y`` with ``T_{ij} = s_{ij}^{−γ}/C``
    for a random ranking s of the m examples per row, the example itself first; γ = 2.8."""

    Options = ZetaMixupOptions
    space, examples_per_mix, generated_per_batch, factor_distribution = "input", "m ≤ b", "b", "RandPerm (p-series, γ)"
    reference = "Abhishek et al. 2022, eq. 3"

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        b = x.shape[0]
        m = b if self.opts.m is None else min(self.opts.m, b)
        yy = one_hot(y, model.num_classes)
        # mix each example with m − 1 random others: rank within a random group containing it
        t = zeta_weights(b, self.opts.gamma, gen).to(x.device)  # (b, b)
        if m < b:
            keep = t >= torch.topk(t, m, dim=1).values[:, -1:]  # the m largest weights of each row
            t = torch.where(keep, t, torch.zeros_like(t))
            t = t / t.sum(dim=1, keepdim=True)
        x_mix = torch.einsum("kb,b...->k...", t.to(x.dtype), x)
        return soft_cross_entropy(model(x_mix), t @ yy)
