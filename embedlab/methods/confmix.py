"""ConfMix (seed 002, §4): α set per pair from the model's own confidence."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from embedlab.errors import EmbedlabError
from embedlab.methods.base import (
    hard_cross_entropy,
    MixMethod,
    check_positive,
    draw_lambda,
    one_hot,
    pair_mix,
    permutation,
    register_method,
    soft_cross_entropy,
)
from embedlab.methods.pairwise import check_mix_points
from embedlab.models import EmbedNet


@dataclass
class ConfMixOptions:
    variant: str = "input"
    layer: str | None = None
    warmup: int = 5
    half: bool = False
    epsilon: float = 1e-3

    def validate(self, where: str) -> None:
        if self.variant not in ("input", "manifold"):
            raise EmbedlabError(f"{where} option variant: 'input' or 'manifold', got {self.variant!r}")
        if self.warmup < 0:
            raise EmbedlabError(f"{where} option warmup: must be >= 0, got {self.warmup}")
        check_positive(where, epsilon=self.epsilon)
        if self.epsilon > 1:
            raise EmbedlabError(f"{where} option epsilon: must be <= 1, got {self.epsilon}")


def confmix_alpha(probs: Tensor, epsilon: float) -> Tensor:
    """``α_i = K/(K−1) · (max_k p_ik − 1/K)`` clamped to ``[ε, 1]``; probs ``(b, K)`` → ``(b,)``."""
    k = probs.shape[-1]
    return (k / (k - 1) * (probs.max(dim=-1).values - 1.0 / k)).clamp(epsilon, 1.0)


@register_method("confmix", description="ConfMix (seed 002): per-pair α from the model's confidence, after M warm-up epochs of ERM")
class ConfMix(MixMethod):
    """Seed 002 §4.1, Algorithm 1: for a pair (x_i, x_j), ``α_i = K/(K−1)(max h(x_i) − 1/K)`` ∈ [ε, 1] from the
    current model (eval mode, no gradient), λ ~ Beta(α_i, α_i) (½-ConfMix: Beta(α_i/2, α_i/2)); mix inputs
    (``variant=input``) or the activations at ``layer`` (``variant=manifold``; default: before the last stage, i.e.
    "immediately before the first fully connected layer" of seed 002's small CNN). ERM for the first ``warmup``
    epochs (M = 5)."""

    Options = ConfMixOptions
    space, examples_per_mix, generated_per_batch, factor_distribution = (
        "input or layer k", "2", "b", "Beta(α_i, α_i), α_i from confidence")
    reference = "seed 002, §4.1, Algorithm 1"

    def __init__(self, options: ConfMixOptions) -> None:
        super().__init__(options)
        self.active = options.warmup == 0
        self._alpha_sum: Tensor | None = None  # Σ of the batch means of α_i this epoch (stays on the device)
        self._alpha_steps = 0

    def check_model(self, model: EmbedNet) -> None:
        if self.opts.variant == "manifold":
            check_mix_points(model, (self._point(model),), "confmix")

    def _point(self, model: EmbedNet) -> str:
        if self.opts.variant == "input":
            return "0"
        return self.opts.layer if self.opts.layer is not None else str(max(model.num_stages - 1, 0))

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.active = epoch > self.opts.warmup
        self._alpha_sum, self._alpha_steps = None, 0

    def epoch_stats(self) -> dict[str, float]:
        """``confmix_alpha``: mean over the epoch's steps of the mean confidence α_i (before ½-ConfMix halves it);
        seed 002 §4.3 reports α ~ 0.2 early in training and ~1 later. Absent during the ERM warm-up."""
        if self._alpha_sum is None or self._alpha_steps == 0:
            return {}
        return {"confmix_alpha": float(self._alpha_sum) / self._alpha_steps}

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        if not self.active:
            return hard_cross_entropy(model(x), y)
        was_training = model.training
        with torch.no_grad():
            model.eval()
            alpha = confmix_alpha(torch.softmax(model(x).float(), dim=-1), self.opts.epsilon)  # (b,)
            model.train(was_training)
        batch_alpha = alpha.mean()
        self._alpha_sum = batch_alpha if self._alpha_sum is None else self._alpha_sum + batch_alpha
        self._alpha_steps += 1
        if self.opts.half:
            alpha = alpha / 2
        b = x.shape[0]
        lam = draw_lambda(alpha.to(gen.device), b, True, gen).to(x.device)  # (b,)
        perm = permutation(b, gen, x.device)
        target = pair_mix(one_hot(y, model.num_classes), lam, perm)
        logits = model.forward_mixed(x, self._point(model), lambda h: pair_mix(h, lam, perm))
        return soft_cross_entropy(logits, target)
