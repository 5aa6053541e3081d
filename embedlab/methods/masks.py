"""Mask-based input-space methods: CutMix, SaliencyMix, FMix and ResizeMix.

Every method here builds, for each example ``i`` of the mini-batch (the *target*) and its partner ``π(i)`` from a
random permutation (the *source*), a binary mask ``S_i ∈ {0,1}^{H×W}`` of pixels taken from the source:

    x̃_i = (1 − S_i) ⊙ x_i + S_i ⊙ x_π(i),        ỹ_i = λ_i y_i + (1 − λ_i) y_π(i),        λ_i = 1 − mean(S_i),

so the label weight of each example is the fraction of its pixels actually present in x̃_i (after clipping and
rounding), never the nominal λ that was drawn. The loss is the soft-target cross-entropy of ``h(x̃)`` against ``ỹ``.
The methods differ only in how ``S`` is drawn. All randomness comes from the generator passed to ``loss``; draws
are made on the generator's device and moved to the inputs' device, the only device move anywhere in this file.

α schedules: ``self.alpha`` (moved along its schedule by the base class) is read at every call; α = 0 gives λ = 1,
no mixing, for every method here. (As α → 0, Beta(α, α) tends to a fair coin on {0, 1}; for FMix, λ = 0 is a whole
source image with its own label, also no mixing, but a λ = 0 CutMix/SaliencyMix box is a full-size box clipped to
a random part of the image, so only λ = 1 makes α = 0 mean "no mixing" for all of them.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from embedlab.errors import EmbedlabError
from embedlab.methods.base import (
    AlphaOptions,
    MixMethod,
    check_positive,
    one_hot,
    pair_mix,
    permutation,
    register_method,
    soft_cross_entropy,
)
from embedlab.models import EmbedNet
from embedlab.sampling import beta

Box = tuple[Tensor, Tensor, Tensor, Tensor]

# Spectral residual saliency (Hou & Zhang 2007, as in OpenCV's StaticSaliencySpectralResidual): work on a 64×64
# grey image, 3×3 mean of the log-amplitude spectrum, 5×5 Gaussian with σ = 8 on the saliency map.
SR_SIZE = 64
SR_SPECTRUM_MEAN = 3
SR_BLUR_SIZE = 5
SR_BLUR_SIGMA = 8.0
SR_LOG_FLOOR = 1e-6  # amplitudes below this fraction of the largest one count as this fraction (no log 0)
GREY_WEIGHTS_RGB = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as OpenCV's colour-to-grey conversion


# ---------------------------------------------------------------------------------------------------- helpers
@dataclass
class MixedBatch:
    """A mini-batch mixed with a binary mask.

    Attributes:
        x: ``(b, C, H, W)`` mixed inputs ``where(source_mask, x[perm], x)``.
        lam: ``(b,)`` λ_eff, the fraction of each mixed image that comes from its target ``x[i]``.
        perm: ``(b,)`` index of each example's source.
        source_mask: ``(b, 1, H, W)`` bool, True where the pixel comes from the source.
        box: ``(y0, y1, x0, x1)``, each ``(b,)`` long, for methods that paste a rectangle (``None`` for FMix).
    """

    x: Tensor
    lam: Tensor
    perm: Tensor
    source_mask: Tensor
    box: Box | None = None


def mixed_targets(y: Tensor, num_classes: int, mixed: MixedBatch) -> Tensor:
    """Soft targets ``λ_i y_i + (1 − λ_i) y_π(i)``: ``(b,)`` labels → ``(b, c)`` rows on the simplex."""
    return pair_mix(one_hot(y, num_classes), mixed.lam, mixed.perm)


def box_size(lam: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
    """CutMix's box of area ratio ``1 − λ`` (Yun et al. 2019, eq. 2): ``r_h = H√(1−λ)``, ``r_w = W√(1−λ)``,
    rounded to the nearest pixel. ``lam (n,)`` → ``(h, w)``, each ``(n,)`` long."""
    side = torch.sqrt((1.0 - lam.double()).clamp(0.0, 1.0))  # (n,)
    return torch.round(side * H).long(), torch.round(side * W).long()


def centred_box(cy: Tensor, cx: Tensor, h: Tensor, w: Tensor, H: int, W: int) -> Box:
    """Box of ``h × w`` pixels centred on pixel ``(cy, cx)``, clipped to the image.

    Rows ``[cy − ⌊h/2⌋, cy − ⌊h/2⌋ + h) ∩ [0, H)``, columns likewise. Inputs broadcast; returns ``(y0, y1, x0, x1)``
    as long tensors (half-open ranges, possibly empty).
    """
    top, left = cy - h // 2, cx - w // 2
    return top.clamp(0, H), (top + h).clamp(0, H), left.clamp(0, W), (left + w).clamp(0, W)


def kept_fraction(box: Box, H: int, W: int) -> Tensor:
    """``λ_eff = 1 − (clipped box area) / (H·W)``: boxes ``(y0, y1, x0, x1)``, each ``(n,)`` → ``(n,)`` float32."""
    y0, y1, x0, x1 = box
    area = (y1 - y0) * (x1 - x0)  # (n,)
    return 1.0 - area.float() / float(H * W)


def rand_box(lam: Tensor, H: int, W: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """CutMix's box sampling (Yun et al. 2019, §3.1, eq. 2): size from :func:`box_size`, centre uniform over the
    ``H × W`` pixels, clipped to the image.

    ``lam (n,)`` → ``(y0, y1, x0, x1, lam_eff)``, each ``(n,)`` on ``lam``'s device; ``lam_eff`` is recomputed
    from the clipped area (so ``lam_eff ≥ lam`` up to rounding).
    """
    n = lam.shape[0]
    cy = torch.randint(H, (n,), generator=gen, device=gen.device).to(lam.device)  # (n,)
    cx = torch.randint(W, (n,), generator=gen, device=gen.device).to(lam.device)  # (n,)
    h, w = box_size(lam, H, W)
    box = centred_box(cy, cx, h, w, H, W)
    return (*box, kept_fraction(box, H, W))


def box_mask(y0: Tensor, y1: Tensor, x0: Tensor, x1: Tensor, H: int, W: int) -> Tensor:
    """Indicator of the boxes ``[y0, y1) × [x0, x1)``: each ``(n,)`` → ``(n, 1, H, W)`` bool."""
    rows = torch.arange(H, device=y0.device)  # (H,)
    cols = torch.arange(W, device=x0.device)  # (W,)
    in_rows = (rows >= y0[:, None]) & (rows < y1[:, None])  # (n, H)
    in_cols = (cols >= x0[:, None]) & (cols < x1[:, None])  # (n, W)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (n, 1, H, W)


def to_grey(x: Tensor) -> Tensor:
    """``(b, C, H, W)`` → ``(b, H, W)``: BT.601 luma for RGB (C = 3), the channel mean otherwise."""
    if x.shape[1] == 3:
        weights = torch.tensor(GREY_WEIGHTS_RGB, dtype=x.dtype, device=x.device)  # (3,)
        return torch.einsum("bchw,c->bhw", x, weights)
    return x.mean(dim=1)


def gaussian_kernel(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalised 2-D Gaussian ``(size, size)`` (product of two 1-D ones, centred between taps for even sizes)."""
    t = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2  # (size,)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    return k[:, None] * k[None, :]


def spectral_residual_saliency(x: Tensor, size: int | None = SR_SIZE) -> Tensor:
    """Spectral-residual saliency (Hou & Zhang 2007, eqs. 5–9), the detector of OpenCV's
    ``StaticSaliencySpectralResidual``.

    Per image: grey (:func:`to_grey`), bilinearly resized to ``size × size`` (OpenCV uses 64×64 whatever the input;
    ``size=None`` keeps the native resolution), then with ``F`` its 2-D DFT,
    ``L = log|F|``, ``R = L − m₃ ∗ L`` (m₃ the 3×3 mean, taken circularly because the spectrum is periodic),
    ``S = g ∗ |F⁻¹[exp(R + i·arg F)]|²`` with g the 5×5 Gaussian of σ = 8 (reflect border), divided by its maximum,
    and resized back to ``(H, W)``. ``|F|`` is floored at ``1e-6·max|F|`` so flat images stay finite; the map is
    invariant to the image's scale.

    ``x (b, C, H, W)`` → ``(b, H, W)`` float32 in [0, 1], no gradient.
    """
    with torch.no_grad():
        b, _, H, W = x.shape
        grey = to_grey(x.float())[:, None]  # (b, 1, H, W)
        resized = size is not None and (H, W) != (size, size)
        if resized:
            grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        spectrum = torch.fft.fft2(grey[:, 0])  # (b, S, S) complex
        amplitude = spectrum.abs()  # (b, S, S)
        floor = amplitude.amax(dim=(-2, -1), keepdim=True) * SR_LOG_FLOOR + torch.finfo(amplitude.dtype).tiny
        log_amp = amplitude.maximum(floor).log()[:, None]  # (b, 1, S, S)
        pad = SR_SPECTRUM_MEAN // 2
        local_mean = F.avg_pool2d(F.pad(log_amp, (pad, pad, pad, pad), mode="circular"), SR_SPECTRUM_MEAN, stride=1)
        residual = (log_amp - local_mean)[:, 0]  # (b, S, S)
        recon = torch.fft.ifft2(torch.polar(residual.exp(), spectrum.angle()))  # (b, S, S) complex
        energy = recon.abs().square()[:, None]  # (b, 1, S, S)
        kernel = gaussian_kernel(SR_BLUR_SIZE, SR_BLUR_SIGMA, energy.device, energy.dtype)[None, None]
        pad = SR_BLUR_SIZE // 2
        sal = F.conv2d(F.pad(energy, (pad, pad, pad, pad), mode="reflect"), kernel)  # (b, 1, S, S)
        sal = sal / sal.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(sal.dtype).tiny)
        if resized:
            sal = F.interpolate(sal, size=(H, W), mode="bilinear", align_corners=False, antialias=False)
        return sal[:, 0]


def saliency_peak(saliency: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column of each map's maximum: ``(b, H, W)`` → ``(cy, cx)``, each ``(b,)`` long."""
    W = saliency.shape[-1]
    flat = saliency.flatten(1).argmax(dim=1)  # (b,)
    return flat // W, flat % W


def fourier_noise(n: int, shape: tuple[int, int], decay: float, gen: torch.Generator, device: torch.device) -> Tensor:
    """FMix's low-frequency grey image (Harris et al. 2020, §3): complex Gaussian noise in the frequency domain scaled
    by ``1 / max(f, 1/max(H, W))^δ`` (f the radial frequency in cycles per pixel), inverse real FFT.

    Returns ``(n, H, W)`` float32 on ``device``; the noise is drawn on ``gen``'s device and moved.
    """
    H, W = shape
    fy = torch.fft.fftfreq(H, device=device)[:, None]  # (H, 1)
    fx = torch.fft.rfftfreq(W, device=device)[None, :]  # (1, W//2+1)
    freq = torch.sqrt(fy * fy + fx * fx).clamp_min(1.0 / max(H, W))  # (H, W//2+1)
    scale = freq.pow(-decay)  # (H, W//2+1)
    noise = torch.randn((n, H, W // 2 + 1, 2), generator=gen, device=gen.device).to(device)  # (n, H, W//2+1, 2)
    spectrum = torch.view_as_complex(noise) * scale  # (n, H, W//2+1) complex
    return torch.fft.irfft2(spectrum, s=(H, W))  # (n, H, W)


def binarise_top(values: Tensor, k: Tensor) -> Tensor:
    """1 on the ``k[i]`` largest entries of row i, 0 elsewhere: ``values (n, m)``, ``k (n,)`` → ``(n, m)`` float32."""
    n, m = values.shape
    order = values.argsort(dim=1, descending=True)  # (n, m)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(m, device=values.device).expand(n, m))
    return (ranks < k[:, None]).float()


def fourier_mask(lam: Tensor, shape: tuple[int, int], decay: float, gen: torch.Generator) -> Tensor:
    """FMix's binary mask (Harris et al. 2020, §3, ``max_soft = 0``): the top ``⌈λ·H·W⌉`` pixels of
    :func:`fourier_noise` are 1 (kept from the target), the rest 0.

    ``lam (n,)`` → ``(n, H, W)`` float32 in {0, 1} on ``lam``'s device, with mean exactly ``⌈λ·H·W⌉ / (H·W)``.
    """
    H, W = shape
    grey = fourier_noise(lam.shape[0], shape, decay, gen, lam.device)  # (n, H, W)
    k = torch.ceil(lam.double() * (H * W)).long()  # (n,)
    return binarise_top(grey.flatten(1), k).view(-1, H, W)


def place_patches(patch: Tensor, y0: Tensor, x0: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
    """Put each patch on an empty ``H × W`` canvas with its top-left corner at ``(y0[i], x0[i])``.

    ``patch (n, C, h, w)``, ``y0, x0 (n,)`` long → ``canvas (n, C, H, W)`` (zero outside the patch) and
    ``mask (n, 1, H, W)`` bool. Differentiable in ``patch``; one gather per axis, no loop over examples.
    """
    n, C, h, w = patch.shape
    r = torch.arange(H, device=patch.device) - y0[:, None]  # (n, H): patch row under each canvas row
    c = torch.arange(W, device=patch.device) - x0[:, None]  # (n, W)
    mask = (((r >= 0) & (r < h))[:, :, None] & ((c >= 0) & (c < w))[:, None, :])[:, None]  # (n, 1, H, W)
    rows = r.clamp(0, h - 1)[:, None, :, None].expand(n, C, H, w)
    cols = c.clamp(0, w - 1)[:, None, None, :].expand(n, C, H, W)
    canvas = patch.gather(2, rows).gather(3, cols)  # (n, C, H, W)
    return canvas * mask, mask


def cut_and_paste(x: Tensor, perm: Tensor, box: Box) -> MixedBatch:
    """Paste each source's box ``x[perm[i]][:, y0:y1, x0:x1]`` at the same place in its target ``x[i]``.

    ``x (b, C, H, W)``; box coordinates of shape ``(b,)`` or ``(1,)`` (one box for the batch); λ_eff from the area.
    """
    b, _, H, W = x.shape
    y0, y1, x0, x1 = (t.expand(b) for t in box)  # (b,) each
    source = box_mask(y0, y1, x0, x1, H, W)  # (b, 1, H, W)
    lam = kept_fraction((y0, y1, x0, x1), H, W)  # (b,)
    return MixedBatch(torch.where(source, x[perm], x), lam, perm, source, (y0, y1, x0, x1))


def _check_images(x: Tensor, method: str) -> None:
    if x.dim() != 4:
        raise EmbedlabError(f"{method} mixes images of shape (b, C, H, W); got inputs of shape {tuple(x.shape)}")


def _draw_lambda(alpha: float, n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """λ ~ Beta(α, α) of shape ``(n,)`` on ``device``; α = 0 gives λ = 1 (no mixing)."""
    if alpha <= 0.0:
        return torch.ones(n, device=device)
    return beta(alpha, (n,), gen).to(device)


class _MaskMix(MixMethod):
    """Shared loss of the mask methods: soft CE of ``h(x̃)`` against ``λ_eff y + (1 − λ_eff) y[perm]``."""

    space: ClassVar[str] = "input"
    loss_terms: ClassVar[str] = "b"
    examples_per_mix: ClassVar[str] = "2"
    generated_per_batch: ClassVar[str] = "b"

    def mix(self, x: Tensor, gen: torch.Generator) -> MixedBatch:
        raise NotImplementedError

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        mixed = self.mix(x, gen)
        return soft_cross_entropy(model(mixed.x), mixed_targets(y, model.num_classes, mixed))


# ------------------------------------------------------------------------------------------------------ cutmix
@dataclass
class CutMixOptions(AlphaOptions):
    alpha: float = 1.0
    per_sample: bool = False


@register_method("cutmix", description="CutMix (Yun et al. 2019): paste a random box of area 1−λ from the partner; λ from the clipped box")
class CutMix(_MaskMix):
    """Yun et al. 2019 (ICCV), eqs. 1–2 and §3.1.

    ``x̃ = M ⊙ x_A + (1 − M) ⊙ x_B``, ``ỹ = λ y_A + (1 − λ) y_B`` (eq. 1), B = π(A) from a random permutation.
    λ ~ Beta(α, α), α = 1; the box (eq. 2) has ``r_h = H√(1−λ)``, ``r_w = W√(1−λ)`` (rounded to pixels), its centre
    uniform over the image, and is clipped to the image; λ is then recomputed as ``1 − area/(H·W)``.
    Defaults as in the paper: one λ and one box per mini-batch; ``per_sample=True``: one per example.
    α = 0 (e.g. the start of a "0->1" schedule) means no mixing.
    """

    Options = CutMixOptions
    factor_distribution = "box of area 1−λ, λ ~ Beta(α, α), re-computed from the clipped box"
    reference = "Yun et al. 2019, eqs. 1–2"

    def mix(self, x: Tensor, gen: torch.Generator) -> MixedBatch:
        _check_images(x, "cutmix")
        b, _, H, W = x.shape
        n = b if self.opts.per_sample else 1
        lam = _draw_lambda(float(self.alpha), n, gen, x.device)  # (n,)
        perm = permutation(b, gen, x.device)
        y0, y1, x0, x1, _ = rand_box(lam, H, W, gen)  # (n,) each
        return cut_and_paste(x, perm, (y0, y1, x0, x1))


# ------------------------------------------------------------------------------------------------- saliencymix
@dataclass
class SaliencyMixOptions(AlphaOptions):
    alpha: float = 1.0
    per_sample: bool = False
    shared_box: bool = False
    saliency_size: int = SR_SIZE

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.saliency_size < 8:
            raise EmbedlabError(f"{where} option saliency_size: must be >= 8 pixels, got {self.saliency_size}")
        if self.shared_box and self.per_sample:
            raise EmbedlabError(f"{where}: shared_box (one box for the batch) excludes per_sample (one λ per example)")


@register_method("saliencymix", description="SaliencyMix (Uddin et al. 2021): CutMix box centred on the peak of the source's saliency map")
class SaliencyMix(_MaskMix):
    """Uddin et al. 2021 (ICLR), §3: ``I_vs = f(I_s)``, ``(i, j) = argmax I_vs``; a box of area ratio ``1 − λ``
    (λ ~ Beta(α, α), α = 1, sides as CutMix's) centred on ``(i, j)`` and clipped to the image is cut from the source
    and pasted at the same location in the target: ``I_a = M ⊙ I_s + M′ ⊙ I_t``, ``y_a = λ y_t + (1 − λ) y_s``
    with λ re-computed from the clipped box.

    Saliency ``f``: spectral residual (Hou & Zhang 2007) in torch, at ``saliency_size`` = 64 px as OpenCV does
    (:func:`spectral_residual_saliency`). The authors' released code calls OpenCV's fine-grained detector
    (Montabone & Soto 2010) instead.

    Defaults: one λ per mini-batch, one box per example (each centred on its own source's peak);
    ``per_sample=True``: one λ per example; ``shared_box=True``: one box for the whole batch, centred on the peak
    of the first source only, as the released code does. α = 0 means no mixing.
    """

    Options = SaliencyMixOptions
    factor_distribution = ("box of area 1−λ at the source's saliency peak, λ ~ Beta(α, α), "
                           "re-computed from the clipped box")
    reference = "Uddin et al. 2021, §3"

    def mix(self, x: Tensor, gen: torch.Generator) -> MixedBatch:
        _check_images(x, "saliencymix")
        b, _, H, W = x.shape
        n = b if self.opts.per_sample else 1
        lam = _draw_lambda(float(self.alpha), n, gen, x.device)  # (n,)
        perm = permutation(b, gen, x.device)
        h, w = box_size(lam, H, W)  # (n,)
        if self.opts.shared_box:
            cy, cx = saliency_peak(spectral_residual_saliency(x[perm[:1]], self.opts.saliency_size))  # (1,)
        else:
            cy, cx = saliency_peak(spectral_residual_saliency(x, self.opts.saliency_size))  # (b,)
            cy, cx = cy[perm], cx[perm]  # peak of each example's source
        return cut_and_paste(x, perm, centred_box(cy, cx, h, w, H, W))  # box: (b,) or (1,) each


# -------------------------------------------------------------------------------------------------------- fmix
@dataclass
class FMixOptions(AlphaOptions):
    alpha: float = 1.0
    decay_power: float = 3.0
    per_sample: bool = False

    def validate(self, where: str) -> None:
        super().validate(where)
        check_positive(where, decay_power=self.decay_power)


@register_method("fmix", description="FMix (Harris et al. 2020): binary mask from thresholded low-frequency Fourier noise")
class FMix(_MaskMix):
    """Harris et al. 2020, "FMix: Enhancing Mixed Sample Data Augmentation", §3.

    Grey image ``g = Re F⁻¹[Z ⊙ 1/f^δ]`` with Z complex Gaussian noise, f the frequency magnitude (floored at
    ``1/max(H, W)``), decay power δ = 3; λ ~ Beta(α, α), α = 1; the mask is 1 on the top ``⌈λ·H·W⌉`` pixels of g and 0
    elsewhere (binary, the paper's default ``max_soft = 0``); ``x̃ = mask ⊙ x + (1 − mask) ⊙ x[perm]`` and the label
    weight is the mask mean ``⌈λ·H·W⌉/(H·W)`` (the released code weights by the drawn λ and rounds λ·H·W up or down
    at random). One mask per mini-batch as in the paper; ``per_sample=True``: one λ and mask per example.
    α = 0 means no mixing; a tiny α > 0 draws λ ∈ {0, 1}: each mixed image is one whole real image with its label.
    """

    Options = FMixOptions
    factor_distribution = "top ⌈λHW⌉ pixels of 1/f^δ Fourier noise, λ ~ Beta(α, α)"
    reference = "Harris et al. 2020, §3"

    def mix(self, x: Tensor, gen: torch.Generator) -> MixedBatch:
        _check_images(x, "fmix")
        b, _, H, W = x.shape
        n = b if self.opts.per_sample else 1
        lam = _draw_lambda(float(self.alpha), n, gen, x.device)  # (n,)
        perm = permutation(b, gen, x.device)
        keep = fourier_mask(lam, (H, W), self.opts.decay_power, gen)  # (n, H, W), 1 = target pixel
        source = (keep == 0)[:, None].expand(b, 1, H, W)  # (b, 1, H, W)
        lam_eff = keep.mean(dim=(1, 2)).expand(b)  # (b,)
        return MixedBatch(torch.where(source, x[perm], x), lam_eff, perm, source)


# --------------------------------------------------------------------------------------------------- resizemix
@dataclass
class ResizeMixOptions:
    scale_min: float = 0.1
    scale_max: float = 0.8
    per_sample: bool = False

    def validate(self, where: str) -> None:
        if not 0.0 < self.scale_min <= self.scale_max <= 1.0:
            raise EmbedlabError(f"{where} options scale_min, scale_max: need 0 < scale_min <= scale_max <= 1, "
                                f"got {self.scale_min}, {self.scale_max}")


@register_method("resizemix", description="ResizeMix (Qin et al. 2020): paste the whole partner, resized by τ ~ U(0.1, 0.8)")
class ResizeMix(_MaskMix):
    """Qin et al. 2020, "ResizeMix: Mixing Data with Preserved Object Information and True Labels", §3.

    The source ``x_s = x[perm]`` is resized by the scale rate τ ~ U(scale_min, scale_max) = U(0.1, 0.8) to
    ``round(τH) × round(τW)`` pixels (bilinear, no antialiasing), and pasted at a uniformly random position lying
    wholly inside the target; ``ỹ = λ y_t + (1 − λ) y_s`` with ``1 − λ`` the pasted area fraction computed from the
    integer patch size (τ² up to rounding). One τ and position per mini-batch as in the paper; ``per_sample=True``:
    one per example (the resize then runs once per distinct patch size). No α, hence no α schedule.
    """

    Options = ResizeMixOptions
    factor_distribution = "source resized by τ ~ U(scale_min, scale_max); λ = 1 − pasted area"
    reference = "Qin et al. 2020, §3"

    def mix(self, x: Tensor, gen: torch.Generator) -> MixedBatch:
        _check_images(x, "resizemix")
        b, C, H, W = x.shape
        n = b if self.opts.per_sample else 1
        lo, hi = self.opts.scale_min, self.opts.scale_max
        tau = lo + (hi - lo) * torch.rand(n, generator=gen, device=gen.device).to(x.device)  # (n,)
        perm = permutation(b, gen, x.device)
        h = torch.round(tau * H).long().clamp(1, H).expand(b)  # (b,)
        w = torch.round(tau * W).long().clamp(1, W).expand(b)  # (b,)
        u = torch.rand((2, n), generator=gen, device=gen.device).to(x.device)  # (2, n)
        y0 = torch.minimum((u[0] * (H - h + 1)).long(), H - h)  # (b,) uniform on {0, …, H − h}
        x0 = torch.minimum((u[1] * (W - w + 1)).long(), W - w)  # (b,)
        source_img = x[perm]  # (b, C, H, W)
        canvas = torch.zeros_like(x)
        source = torch.zeros((b, 1, H, W), dtype=torch.bool, device=x.device)
        size_key = h * (W + 1) + w  # (b,) one group per distinct patch size
        for key in torch.unique(size_key).tolist():
            idx = torch.nonzero(size_key == key).squeeze(1)  # (g,)
            ph, pw = divmod(int(key), W + 1)
            patch = F.interpolate(source_img[idx], size=(ph, pw), mode="bilinear", align_corners=False,
                                  antialias=False)  # (g, C, ph, pw)
            placed, mask = place_patches(patch, y0[idx], x0[idx], H, W)
            canvas = canvas.index_copy(0, idx, placed)
            source = source.index_copy(0, idx, mask)
        lam_eff = 1.0 - (h * w).float() / float(H * W)  # (b,)
        return MixedBatch(torch.where(source, canvas, x), lam_eff, perm, source, (y0, y0 + h, x0, x0 + w))
