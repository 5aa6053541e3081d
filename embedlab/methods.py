"""Mixing methods (a registry). Each method is a strategy object: the trainer calls ``method.loss(model, x, y, gen)``
and never looks at the method's name.

Notation (METHODS.md): mini-batch of ``b`` examples, ``c`` classes, embedding ``Z = f(X) ∈ R^{b×d}``, linear
classifier ``g(z) = W z + β``. All losses are soft-target cross-entropy ``−Σ ỹ log softmax(logits)``, averaged.

Embedding-space methods mix *logits* instead of embeddings: because each interpolation vector sums to 1,
``g(Σ_i λ_i z_i) = Σ_i λ_i g(z_i)`` exactly, so ``g(ΛZ) = Λ g(Z)`` costs O(n·b·c) instead of O(n·b·d + n·d·c).
``exact_embedding_mix=True`` computes ``g(ΛZ)`` literally (same loss and gradient up to rounding; for tests).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from embedlab.config import parse_options
from embedlab.errors import EmbedlabError
from embedlab.models import EmbedNet
from embedlab.registry import Registry
from embedlab.sampling import beta, dirichlet

METHODS: Registry[type["MixMethod"]] = Registry("method")


def register_method(name: str, *, description: str = "") -> Any:
    def deco(cls: type[MixMethod]) -> type[MixMethod]:
        cls.name = name
        return METHODS.register(name, description=description)(cls)

    return deco


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """``mean_k −Σ_c target[k, c] log softmax(logits[k])_c`` for logits/targets of shape ``(..., c)``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(target * logp).sum(-1).mean()


@dataclass
class NoOptions:
    pass


class MixMethod:
    """Base class. Subclasses set the class metadata (MultiMix paper's Table 1) and implement :meth:`loss`."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    space: ClassVar[str] = "–"
    examples_per_mix: ClassVar[str] = "1"
    generated_per_batch: ClassVar[str] = "b"
    factor_distribution: ClassVar[str] = "–"

    def __init__(self, options: Any) -> None:
        self.opts = options

    def check_model(self, model: EmbedNet) -> None:
        """Raise :class:`EmbedlabError` if the model cannot be trained with this method."""

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Hook for methods whose behaviour depends on the epoch (warm-up, α schedules)."""

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.opts)


def create_method(name: str, options: dict[str, Any] | None = None) -> MixMethod:
    """The one way to build a method: ``create_method("multimix", {"n": 500})``."""
    cls = METHODS.get(name).obj
    return cls(parse_options(cls.Options, dict(options or {}), f"method {name!r}"))


def method_metadata(name: str) -> dict[str, Any]:
    """Table-1 metadata and option defaults of a registered method (for ``embedlab list methods``)."""
    entry = METHODS.get(name)
    cls = entry.obj
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
                for f in dataclasses.fields(cls.Options)}
    return {"name": name, "description": entry.description, "space": cls.space,
            "examples_per_mix": cls.examples_per_mix, "generated_per_batch": cls.generated_per_batch,
            "factor_distribution": cls.factor_distribution, "options": defaults}


def _positive(where: str, **vals: float) -> None:
    for k, v in vals.items():
        if not v > 0:
            raise EmbedlabError(f"{where} option {k}: must be > 0, got {v}")


def _probability(where: str, **vals: float) -> None:
    for k, v in vals.items():
        if not 0.0 <= v <= 1.0:
            raise EmbedlabError(f"{where} option {k}: must be in [0, 1], got {v}")


def _one_hot(y: Tensor, c: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return F.one_hot(y, c).to(dtype)


def _pair_mix(a: Tensor, lam: Tensor, perm: Tensor) -> Tensor:
    """``λ a + (1 − λ) a[perm]`` with λ of shape ``(b,)`` broadcast over the trailing dims of ``a``."""
    lam = lam.to(a.dtype).reshape(-1, *([1] * (a.dim() - 1)))
    return lam * a + (1 - lam) * a[perm]


def _draw_lambda(alpha: float, b: int, per_sample: bool, gen: torch.Generator) -> Tensor:
    """λ ~ Beta(α, α): one value per batch (expanded to ``(b,)``) or one per example."""
    if per_sample:
        return beta(alpha, (b,), gen)
    return beta(alpha, (1,), gen).expand(b)


# ------------------------------------------------------------------------------------------------------ erm
@register_method("erm", description="empirical risk minimisation: plain cross-entropy, no mixing")
class ERM(MixMethod):
    """``L = CE(h(X), Y)``."""

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        return F.cross_entropy(model(x).float(), y)


# ---------------------------------------------------------------------------------------------------- mixup
@dataclass
class MixupOptions:
    alpha: float = 1.0
    per_sample: bool = False

    def validate(self, where: str) -> None:
        _positive(where, alpha=self.alpha)


@register_method("mixup", description="input mixup (Zhang et al. 2018): pairs from a permutation, λ ~ Beta(α, α)")
class Mixup(MixMethod):
    """Zhang et al. 2018, eq. (1): ``x̃ = λ x_i + (1 − λ) x_π(i)``, ``ỹ = λ y_i + (1 − λ) y_π(i)``, λ ~ Beta(α, α);
    one λ per mini-batch as in the paper (``per_sample=True``: one per pair, as in seed 002)."""

    Options = MixupOptions
    space, examples_per_mix, generated_per_batch, factor_distribution = "input", "2", "b", "Beta(α, α)"

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        b = x.shape[0]
        lam = _draw_lambda(self.opts.alpha, b, self.opts.per_sample, gen).to(x.device)
        perm = torch.randperm(b, generator=gen, device=gen.device).to(x.device)
        target = _pair_mix(_one_hot(y, model.num_classes), lam, perm)
        return soft_cross_entropy(model(_pair_mix(x, lam, perm)), target)


# ------------------------------------------------------------------------------------------- manifold mixup
@dataclass
class ManifoldMixupOptions:
    alpha: float = 2.0
    layers: tuple[int, ...] = (0, 1, 2)
    per_sample: bool = False

    def validate(self, where: str) -> None:
        _positive(where, alpha=self.alpha)
        if not self.layers or min(self.layers) < 0:
            raise EmbedlabError(f"{where} option layers: need a non-empty set of depths >= 0, got {self.layers}")


@register_method("manifold_mixup", description="manifold mixup (Verma et al. 2019): mix hidden states at a random eligible depth k")
class ManifoldMixup(MixMethod):
    """Verma et al. 2019, eq. (2)–(3): ``h = F_k(G_k(x))``; mix ``G_k`` of a pair and continue through ``F_k``,
    k drawn uniformly per batch from ``layers`` (0 = input, k = after k stages), λ ~ Beta(α, α), α = 2."""

    Options = ManifoldMixupOptions
    space, examples_per_mix, generated_per_batch, factor_distribution = "layer k", "2", "b", "Beta(α, α)"

    def check_model(self, model: EmbedNet) -> None:
        if max(self.opts.layers) > model.num_stages:
            raise EmbedlabError(f"manifold_mixup layers {self.opts.layers}: the model has only "
                                f"{model.num_stages} stages (valid depths 0..{model.num_stages})")

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        b = x.shape[0]
        layers = self.opts.layers
        k = layers[int(torch.randint(len(layers), (1,), generator=gen, device=gen.device))]
        lam = _draw_lambda(self.opts.alpha, b, self.opts.per_sample, gen).to(x.device)
        perm = torch.randperm(b, generator=gen, device=gen.device).to(x.device)
        h = model.features_at(x, k)
        target = _pair_mix(_one_hot(y, model.num_classes), lam, perm)
        return soft_cross_entropy(model.forward_from(_pair_mix(h, lam, perm), k), target)


# -------------------------------------------------------------------------------------------------- multimix
@dataclass
class MultiMixOptions:
    n: int = 1000
    alpha: float = 1.0
    m: int | None = None
    p: float = 0.5
    fallback: str = "mixup"
    fallback_alpha: float = 1.0
    exact_embedding_mix: bool = False

    def validate(self, where: str) -> None:
        _positive(where, alpha=self.alpha, n=self.n, fallback_alpha=self.fallback_alpha)
        _probability(where, p=self.p)
        if self.m is not None and self.m < 1:
            raise EmbedlabError(f"{where} option m: must be >= 1 (or none for m = b), got {self.m}")
        if self.fallback not in ("mixup", "erm"):
            raise EmbedlabError(f"{where} option fallback: 'mixup' or 'erm', got {self.fallback!r}")


def _subset(b: int, m: int | None, gen: torch.Generator, device: torch.device) -> Tensor | None:
    """Indices of a random subset of ``m`` examples, or None when all ``b`` are used."""
    if m is None or m >= b:
        return None
    return torch.randperm(b, generator=gen, device=gen.device)[:m].to(device)


class _WithFallback(MixMethod):
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
class MultiMix(_WithFallback):
    """Venkataramanan et al. (seeds 000/001) §3.2, eqs. (6)–(8): ``Λ ∈ R^{n×m}``, rows ``λ_k ~ Dir(α·1_m)``;
    ``Z̃ = Λ Z``, ``Ỹ = Λ Y``; loss ``= (1/n) Σ_k CE(g(z̃_k), ỹ_k)``. The encoder runs once on the b real
    examples. With probability 1 − p the batch uses the fallback (input mixup) instead."""

    Options = MultiMixOptions
    space, examples_per_mix, generated_per_batch, factor_distribution = "embedding", "m = b", "n", "Dirichlet(α·1_m)"

    def mixed_loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        z = model.forward_features(x)  # (b, d)
        yy = _one_hot(y, model.num_classes)  # (b, c)
        sel = _subset(len(y), self.opts.m, gen, x.device)
        if sel is not None:
            z, yy = z[sel], yy[sel]
        lam = dirichlet(self.opts.alpha, (self.opts.n, len(yy)), gen).to(x.device)  # (n, m)
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
    chunk: int = 250

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.attention not in ATTENTION:
            raise EmbedlabError(f"{where} option attention: one of {', '.join(ATTENTION)}, got {self.attention!r}")
        _positive(where, chunk=self.chunk)


def attention_gap(fmap: Tensor, y: Tensor, weight: Tensor) -> Tensor:
    """``a_i = softmax_r(Z_i q_i)``, ``q_i = mean_r Z_i``; fmap ``(b, d, r)`` → ``(b, r)``."""
    q = fmap.mean(-1)  # (b, d)
    return torch.softmax(torch.einsum("bdr,bd->br", fmap, q), dim=-1)


def attention_cam(fmap: Tensor, y: Tensor, weight: Tensor) -> Tensor:
    """``a_i = relu(Z_i w_{y_i})`` ℓ1-normalised over r (uniform where all are zero); ``(b, d, r)`` → ``(b, r)``."""
    a = torch.relu(torch.einsum("bdr,bd->br", fmap, weight[y]))
    s = a.sum(-1, keepdim=True)
    uniform = torch.full_like(a, 1.0 / a.shape[-1])
    return torch.where(s > 0, a / s.clamp_min(torch.finfo(a.dtype).tiny), uniform)


def attention_none(fmap: Tensor, y: Tensor, weight: Tensor) -> Tensor:
    """Uniform attention ``(b, r)``."""
    return torch.full(fmap.shape[::2], 1.0 / fmap.shape[-1], dtype=fmap.dtype, device=fmap.device)


ATTENTION = {"gap": attention_gap, "cam": attention_cam, "none": attention_none}


def dense_weights(lam: Tensor, att: Tensor) -> Tensor:
    """Attention-weighted interpolation weights ``w_{k,i}^j = a_i^j λ_{k,i}^j / Σ_i a_i^j λ_{k,i}^j``.

    lam ``(n, r, m)`` Dirichlet rows over m, att ``(m, r)`` → ``(n, r, m)``, convex over m at every (k, j).
    """
    w = lam * att.t().unsqueeze(0)  # (n, r, m)
    return w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)


@register_method("dense_multimix", description="Dense MultiMix: per-position Dirichlet mixing of unpooled features, attention-weighted, dense loss")
class DenseMultiMix(_WithFallback):
    """Seeds 000/001, Dense MultiMix: unpooled features ``Z_i ∈ R^{r×d}``; per position j and generated example k,
    ``λ_k^j ~ Dir(α·1_m)``, ``w_{k,i}^j ∝ a_i^j λ_{k,i}^j``; ``z̃_k^j = Σ_i w_{k,i}^j Z_i^j``, ``ỹ_k^j = Σ_i w_{k,i}^j y_i``;
    loss = mean over n·r of ``CE(g(z̃_k^j), ỹ_k^j)``. Attention (gap/cam/none) is computed without gradient.
    Generated examples are processed in chunks of ``chunk`` so memory is O(chunk·r·c)."""

    Options = DenseMultiMixOptions
    space, examples_per_mix, generated_per_batch, factor_distribution = (
        "embedding (per position)", "m = b", "n·r", "Dirichlet(α·1_m), attention-weighted")

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self.attention = ATTENTION[options.attention]

    def check_model(self, model: EmbedNet) -> None:
        if not model.supports_dense:
            raise EmbedlabError("dense_multimix needs a model whose classifier follows global average pooling of a "
                                "spatial map (e.g. cnn-gap, preact-resnet18, resnet*); this model has none")

    def mixed_loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        fmap = model.feature_map(x)  # (b, d, r)
        yy = _one_hot(y, model.num_classes)  # (b, c)
        sel = _subset(len(y), self.opts.m, gen, x.device)
        if sel is not None:
            fmap, yy, y = fmap[sel], yy[sel], y[sel]
        m, d, r = fmap.shape
        with torch.no_grad():
            att = self.attention(fmap.detach().float(), y, model.head.weight.detach().float())  # (m, r)
        if not self.opts.exact_embedding_mix:
            dense_logits = model.forward_head(fmap.transpose(1, 2)).float()  # g per position: (m, r, c)
        total = fmap.new_zeros((), dtype=torch.float32)
        n = self.opts.n
        for start in range(0, n, self.opts.chunk):
            nk = min(self.opts.chunk, n - start)
            w = dense_weights(dirichlet(self.opts.alpha, (nk, r, m), gen).to(x.device), att)  # (nk, r, m)
            if self.opts.exact_embedding_mix:
                z_mix = torch.einsum("krm,mdr->krd", w.to(fmap.dtype), fmap)  # (nk, r, d)
                logits = model.forward_head(z_mix).float()  # (nk, r, c)
            else:
                logits = torch.einsum("krm,mrc->krc", w, dense_logits)  # (nk, r, c)
            target = torch.einsum("krm,mc->krc", w, yy)  # (nk, r, c)
            total = total + soft_cross_entropy(logits, target) * (nk * r)
        return total / (n * r)
