"""Pairwise methods: ERM, input mixup and manifold mixup."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from embedlab.errors import EmbedlabError
from embedlab.methods.base import (
    hard_cross_entropy,
    AlphaOptions,
    MixMethod,
    draw_lambda,
    one_hot,
    pair_mix,
    permutation,
    register_method,
    soft_cross_entropy,
)
from embedlab.models import EmbedNet


@register_method("erm", description="empirical risk minimisation: plain cross-entropy, no mixing")
class ERM(MixMethod):
    """``L = CE(h(X), Y)``."""

    factor_distribution = "–"

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        return hard_cross_entropy(model(x), y)


@dataclass
class MixupOptions(AlphaOptions):
    alpha: float = 1.0
    per_sample: bool = False


@register_method("mixup", description="input mixup (Zhang et al. 2018): pairs from a permutation, λ ~ Beta(α, α)")
class Mixup(MixMethod):
    """Zhang et al. 2018, eq. (1): ``x̃ = λ x_i + (1 − λ) x_π(i)``, ``ỹ = λ y_i + (1 − λ) y_π(i)``, λ ~ Beta(α, α),
    α = 1; one λ per mini-batch as in the paper (``per_sample=True``: one per pair, as in seed 002)."""

    Options = MixupOptions
    space, examples_per_mix, generated_per_batch, factor_distribution = "input", "2", "b", "Beta(α, α)"
    reference = "Zhang et al. 2018, eq. 1"

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        b = x.shape[0]
        lam = draw_lambda(self.alpha, b, self.opts.per_sample, gen).to(x.device)  # (b,)
        perm = permutation(b, gen, x.device)
        target = pair_mix(one_hot(y, model.num_classes), lam, perm)  # (b, c)
        return soft_cross_entropy(model(pair_mix(x, lam, perm)), target)


@dataclass
class ManifoldMixupOptions(AlphaOptions):
    alpha: float = 2.0
    layers: tuple[str, ...] = ("0", "1", "2")
    per_sample: bool = False

    def validate(self, where: str) -> None:
        super().validate(where)
        if not self.layers:
            raise EmbedlabError(f"{where} option layers: need at least one mixing point")


def check_mix_points(model: EmbedNet, points: tuple[str, ...], method: str) -> None:
    """Every mixing point must be a stage depth or a module name the model knows."""
    known = set(model.mix_points())
    for p in points:
        if str(p) in known:
            continue
        if str(p).isdigit():
            raise EmbedlabError(f"{method} layers {points}: the model has only {model.num_stages} stages "
                                f"(valid depths 0..{model.num_stages}, or a module name)")
        top = [n for n in model.mix_points() if not n.isdigit() and n.count(".") <= 1][:30]
        raise EmbedlabError(f"{method}: no module named {p!r} to mix at; modules include: {', '.join(top)}")


@register_method("manifold_mixup", description="manifold mixup (Verma et al. 2019): mix hidden states at a random eligible layer")
class ManifoldMixup(MixMethod):
    """Verma et al. 2019, §2: ``h = F_k(G_k(x))``; mix ``G_k`` of a pair and continue through ``F_k``, k drawn
    uniformly per batch from ``layers`` (stage depths: 0 = input, k = after k stages; or module names),
    λ ~ Beta(α, α), α = 2."""

    Options = ManifoldMixupOptions
    space, examples_per_mix, generated_per_batch, factor_distribution = "layer k", "2", "b", "Beta(α, α)"
    reference = "Verma et al. 2019, §2"

    def check_model(self, model: EmbedNet) -> None:
        check_mix_points(model, self.opts.layers, "manifold_mixup")

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        b = x.shape[0]
        layers = self.opts.layers
        point = layers[int(torch.randint(len(layers), (1,), generator=gen, device=gen.device))]
        lam = draw_lambda(self.alpha, b, self.opts.per_sample, gen).to(x.device)
        perm = permutation(b, gen, x.device)
        target = pair_mix(one_hot(y, model.num_classes), lam, perm)
        return soft_cross_entropy(model.forward_mixed(x, point, lambda h: pair_mix(h, lam, perm)), target)
