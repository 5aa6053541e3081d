"""Mask-based mixing methods (CutMix, SaliencyMix, FMix, ResizeMix): the defining equations, pixel by pixel."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import embedlab.methods.masks as masks
from embedlab.errors import EmbedlabError
from embedlab.methods.base import create_method, method_metadata, soft_cross_entropy
from embedlab.models import create_model
from embedlab.sampling import beta

NAMES = ["cutmix", "saliencymix", "fmix", "resizemix"]
BOX_METHODS = ["cutmix", "saliencymix", "resizemix"]
VARIANTS = ([(n, {}) for n in NAMES] + [(n, {"per_sample": True}) for n in NAMES]
            + [("saliencymix", {"shared_box": True})])


def _ids(v):
    name, opts = v
    return name + "".join(f"-{k}" for k in opts)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("cnn-gap", 10, (3, 16, 16), width=8)


def _batch(b: int = 12, size: int = 16):
    g = torch.Generator().manual_seed(123)
    return torch.rand(b, 3, size, size, generator=g), torch.randint(0, 10, (b,), generator=g)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ every method
@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_loss_finite_and_every_parameter_gets_a_gradient(variant):
    name, opts = variant
    model = _model().train()
    x, y = _batch()
    loss = create_method(name, opts).loss(model, x, y, _gen(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_seeded_generator_makes_loss_deterministic(variant):
    name, opts = variant
    x, y = _batch()
    model = _model().eval()
    losses = [float(create_method(name, opts).loss(model, x, y, _gen(s)).detach()) for s in (5, 5, 6)]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_loss_is_soft_ce_against_probability_targets_weighted_by_kept_fraction(variant):
    name, opts = variant
    model = _model().eval()
    x, y = _batch()
    method = create_method(name, opts)
    loss = method.loss(model, x, y, _gen(7))
    mixed = method.mix(x, _gen(7))  # the same draws as the loss
    yy = F.one_hot(y, 10).float()
    lam = mixed.lam[:, None]
    target = lam * yy + (1 - lam) * yy[mixed.perm]
    assert (target >= 0).all()
    torch.testing.assert_close(target.sum(-1), torch.ones(len(y)))
    torch.testing.assert_close(masks.mixed_targets(y, 10, mixed), target)
    torch.testing.assert_close(loss, soft_cross_entropy(model(mixed.x), target))
    assert sorted(mixed.perm.tolist()) == list(range(len(y)))


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_lambda_is_the_kept_pixel_fraction_and_each_pixel_is_target_or_source(variant):
    name, opts = variant
    x, _ = _batch()
    b, _, H, W = x.shape
    for seed in range(4):
        m = create_method(name, opts).mix(x, _gen(seed))
        src = m.source_mask.expand(b, 3, H, W)
        counts = m.source_mask.sum(dim=(1, 2, 3))  # (b,)
        assert torch.equal(m.lam, 1 - counts.float() / (H * W))
        if name != "resizemix":  # ResizeMix pastes a resized source (test_resizemix_pastes_the_resized_source)
            assert torch.equal(m.x[src], x[m.perm][src])
        assert torch.equal(m.x[~src], x[~src])
        assert ((0 < counts) & (counts < H * W)).any(), "α = 1 should mix something in 4 draws"


@pytest.mark.parametrize("name", BOX_METHODS)
@pytest.mark.parametrize("per_sample", [False, True])
def test_box_methods_paste_exactly_the_reported_rectangle(name, per_sample):
    x, _ = _batch()
    b, _, H, W = x.shape
    m = create_method(name, {"per_sample": per_sample}).mix(x, _gen(11))
    y0, y1, x0, x1 = (t.tolist() for t in m.box)
    expected = torch.zeros(b, 1, H, W, dtype=torch.bool)
    for i in range(b):
        assert 0 <= y0[i] <= y1[i] <= H and 0 <= x0[i] <= x1[i] <= W
        expected[i, :, y0[i]:y1[i], x0[i]:x1[i]] = True
        if name != "resizemix":  # a cut box holds the source's own pixels at the same place (ResizeMix: see below)
            assert torch.equal(m.x[i, :, y0[i]:y1[i], x0[i]:x1[i]], x[m.perm[i], :, y0[i]:y1[i], x0[i]:x1[i]])
        assert float(m.lam[i]) == pytest.approx(1 - (y1[i] - y0[i]) * (x1[i] - x0[i]) / (H * W), abs=1e-7)
    assert torch.equal(m.source_mask, expected)
    assert torch.equal(masks.box_mask(*m.box, H, W), expected)
    one_box_per_batch = not per_sample and name != "saliencymix"  # SaliencyMix: each box at its source's peak
    assert (len(set(zip(y0, y1, x0, x1))) == 1) == one_box_per_batch


def test_image_shape_is_checked():
    for name in NAMES:
        with pytest.raises(EmbedlabError, match=r"images of shape \(b, C, H, W\)"):
            create_method(name).loss(_model(), torch.rand(4, 3), torch.zeros(4, dtype=torch.long), _gen(0))


@pytest.mark.parametrize("name", NAMES)
def test_metadata(name):
    meta = method_metadata(name)
    table = (meta["space"], meta["loss_terms"], meta["examples_per_mix"], meta["generated_per_batch"])
    assert table == ("input", "b", "2", "b")
    assert re.fullmatch(r"[A-Z][a-z]+ et al\. 20\d\d, .+", meta["reference"])
    assert meta["factor_distribution"] not in ("", "–")
    assert meta["options"]["per_sample"] is False
    if name != "resizemix":
        assert meta["options"]["alpha"] == 1.0 and meta["options"]["alpha_schedule"] == "constant"


def test_option_validation():
    with pytest.raises(EmbedlabError, match="option alpha: must be > 0"):
        create_method("cutmix", {"alpha": 0})
    with pytest.raises(EmbedlabError, match="option alpha_schedule"):
        create_method("fmix", {"alpha_schedule": "up"})
    with pytest.raises(EmbedlabError, match="option decay_power: must be > 0"):
        create_method("fmix", {"decay_power": -1})
    with pytest.raises(EmbedlabError, match="shared_box .* excludes per_sample"):
        create_method("saliencymix", {"shared_box": True, "per_sample": True})
    with pytest.raises(EmbedlabError, match="option saliency_size"):
        create_method("saliencymix", {"saliency_size": 4})
    with pytest.raises(EmbedlabError, match="scale_min <= scale_max"):
        create_method("resizemix", {"scale_min": 0.9, "scale_max": 0.5})
    with pytest.raises(EmbedlabError, match="scale_min <= scale_max <= 1"):
        create_method("resizemix", {"scale_max": 1.5})
    with pytest.raises(EmbedlabError, match=r"unknown option\(s\) alpha"):
        create_method("resizemix", {"alpha": 1.0})


# ------------------------------------------------------------------------------------------------------ α → 0
@pytest.mark.parametrize("name", ["cutmix", "saliencymix", "fmix"])
def test_alpha_zero_from_schedule_is_erm(name):
    model = _model().eval()
    x, y = _batch()
    method = create_method(name, {"alpha_schedule": "0->1"})
    method.on_epoch_start(1, 10)
    assert method.alpha == 0.0
    erm = F.cross_entropy(model(x), y)
    kept = set()
    for seed in range(8):
        torch.testing.assert_close(method.loss(model, x, y, _gen(seed)), erm, atol=1e-5, rtol=1e-5)
        kept |= set(method.mix(x, _gen(seed)).lam.tolist())
    assert kept == {1.0}  # no box / an all-ones mask
    method.on_epoch_start(26, 100)  # α = 1 − 2^(−25/25) = ½: mixing again
    assert method.alpha == pytest.approx(0.5)
    lam = method.mix(x, _gen(0)).lam
    assert ((0 < lam) & (lam < 1)).all()


def test_fmix_tiny_alpha_is_erm():
    """Beta(α, α) → a fair coin on {0, 1}: the batch is wholly the targets or wholly the sources, with their labels."""
    model = _model().eval()
    x, y = _batch()
    erm = F.cross_entropy(model(x), y)
    method = create_method("fmix", {"alpha": 1e-6})
    kept = set()
    for seed in range(8):
        torch.testing.assert_close(method.loss(model, x, y, _gen(seed)), erm, atol=1e-5, rtol=1e-5)
        kept |= set(method.mix(x, _gen(seed)).lam.tolist())
    assert kept == {0.0, 1.0}


def test_fmix_per_sample_tiny_alpha_gives_whole_real_examples_with_their_labels():
    x, y = _batch()
    m = create_method("fmix", {"alpha": 1e-6, "per_sample": True}).mix(x, _gen(3))
    assert set(m.lam.tolist()) == {0.0, 1.0}
    t = masks.mixed_targets(y, 10, m)
    for i in range(len(y)):
        j = i if m.lam[i] == 1 else int(m.perm[i])
        assert torch.equal(m.x[i], x[j]) and torch.equal(t[i], F.one_hot(y[j], 10).float())


# ------------------------------------------------------------------------------------------------------ cutmix
def test_cutmix_box_area_and_lambda_statistics():
    g = _gen(0)
    H = W = 64
    lam = beta(1.0, (20000,), g)
    h, w = masks.box_size(lam, H, W)
    # before clipping the box has area (1 − λ)HW up to rounding each side to the nearest pixel
    exact_h, exact_w = H * torch.sqrt(1 - lam.double()), W * torch.sqrt(1 - lam.double())
    assert ((h - exact_h).abs() <= 0.5 + 1e-9).all() and ((w - exact_w).abs() <= 0.5 + 1e-9).all()
    unclipped = (h * w).double() / (H * W)
    assert abs(float(unclipped.mean()) - 0.5) < 0.01  # E[1 − λ] = ½ for Beta(1, 1)
    *box, lam_eff = masks.rand_box(lam, H, W, g)
    assert (lam_eff >= 1 - unclipped.float() - 1e-6).all()  # clipping only removes area
    # With a uniform centre a side of relative length ρ = √(1−λ) keeps on average ρ − ρ²/4 after clipping, so
    # E[λ_eff] = 1 − E[(ρ − ρ²/4)²] = 1 − (½ − ⅕ + 1/48) ≈ 0.679 for λ ~ U(0, 1): CutMix's recomputed λ is not ½.
    assert abs(float(lam_eff.mean()) - (1 - (0.5 - 0.2 + 1 / 48))) < 0.01
    assert abs(float(lam.mean()) - 0.5) < 0.01


def test_cutmix_box_extremes():
    g = _gen(1)
    y0, y1, x0, x1, lam_eff = masks.rand_box(torch.ones(50), 16, 16, g)
    assert ((y1 - y0) * (x1 - x0) == 0).all() and (lam_eff == 1).all()
    h, w = masks.box_size(torch.zeros(1), 16, 12)
    assert (int(h), int(w)) == (16, 12)
    y0, y1, x0, x1 = masks.centred_box(torch.tensor([8]), torch.tensor([6]), h, w, 16, 12)
    assert (int(y0), int(y1), int(x0), int(x1)) == (0, 16, 0, 12)  # centred: the whole image
    y0, y1, x0, x1 = masks.centred_box(torch.tensor([0]), torch.tensor([11]), h, w, 16, 12)
    assert (int(y0), int(y1), int(x0), int(x1)) == (0, 8, 5, 12)  # clipped at the corner


# ------------------------------------------------------------------------------------------------- saliencymix
def _sr_reference(img: np.ndarray) -> np.ndarray:
    """Slow spectral residual on one (3, H, W) image at native size: np.fft and explicit loops."""
    grey = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    H, W = grey.shape
    spec = np.fft.fft2(grey)
    amp = np.abs(spec)
    log_amp = np.log(np.maximum(amp, amp.max() * 1e-6))
    local = np.zeros_like(log_amp)
    for i in range(H):
        for j in range(W):
            local[i, j] = np.mean([log_amp[(i + di) % H, (j + dj) % W] for di in (-1, 0, 1) for dj in (-1, 0, 1)])
    energy = np.abs(np.fft.ifft2(np.exp(log_amp - local) * np.exp(1j * np.angle(spec)))) ** 2
    t = np.arange(5) - 2.0
    k1 = np.exp(-t * t / (2 * 8.0 ** 2))
    k = np.outer(k1, k1) / k1.sum() ** 2

    def reflect(i: int, n: int) -> int:
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    out = np.zeros_like(energy)
    for i in range(H):
        for j in range(W):
            out[i, j] = sum(k[a, c] * energy[reflect(i + a - 2, H), reflect(j + c - 2, W)]
                            for a in range(5) for c in range(5))
    return out / out.max()


def test_spectral_residual_matches_numpy_reference():
    x = torch.rand(2, 3, 12, 10, generator=_gen(5))
    x[1, :, 3:6, 2:4] += 1.0
    sal = masks.spectral_residual_saliency(x, size=None)
    assert sal.shape == (2, 12, 10)
    for i in range(2):
        ref = _sr_reference(x[i].double().numpy())
        np.testing.assert_allclose(sal[i].numpy(), ref, rtol=1e-4, atol=1e-5)


def test_spectral_residual_is_scale_invariant_and_resizes_back():
    x = torch.rand(3, 3, 20, 28, generator=_gen(6))
    sal = masks.spectral_residual_saliency(x)
    assert sal.shape == (3, 20, 28) and float(sal.min()) >= 0 and float(sal.max()) <= 1 + 1e-6
    torch.testing.assert_close(masks.spectral_residual_saliency(3.0 * x), sal, atol=1e-5, rtol=1e-4)
    flat = masks.spectral_residual_saliency(torch.full((1, 1, 16, 16), 0.5))
    assert torch.isfinite(flat).all()


def _blob_batch(b: int = 8, size: int = 32):
    """Grey noisy background with one bright 3×3 blob per image, at distinct places; returns images, blob corners."""
    g = _gen(9)
    x = 0.3 + 0.05 * torch.rand(b, 3, size, size, generator=g)
    corners = [(int(r), int(c)) for r, c in torch.randint(2, size - 5, (b, 2), generator=g)]
    for i, (r, c) in enumerate(corners):
        x[i, :, r:r + 3, c:c + 3] = 1.0
    return x, corners


def test_saliency_peak_is_on_the_blob():
    x, corners = _blob_batch()
    cy, cx = masks.saliency_peak(masks.spectral_residual_saliency(x))
    for i, (r, c) in enumerate(corners):
        assert r <= cy[i] < r + 3 and c <= cx[i] < c + 3


@pytest.mark.parametrize("opts", [{}, {"per_sample": True}, {"shared_box": True}],
                         ids=["batch", "per_sample", "shared_box"])
def test_saliencymix_box_is_centred_on_the_source_blob(opts):
    x, corners = _blob_batch()
    b, _, H, W = x.shape
    cy, cx = masks.saliency_peak(masks.spectral_residual_saliency(x))
    for seed in range(3):
        m = create_method("saliencymix", opts).mix(x, _gen(seed))
        y0, y1, x0, x1 = m.box
        lam = m.lam
        for i in range(b):
            s = int(m.perm[0]) if opts.get("shared_box") else int(m.perm[i])
            if y1[i] > y0[i] and x1[i] > x0[i]:  # the source's blob centre lies in the pasted box
                r, c = corners[s]
                assert y0[i] <= r + 1 < y1[i] and x0[i] <= c + 1 < x1[i]
            # unclipped sides are placed exactly around the source's saliency peak
            if 0 < y0[i] and y1[i] < H:
                assert y0[i] == cy[s] - (y1[i] - y0[i]) // 2
            if 0 < x0[i] and x1[i] < W:
                assert x0[i] == cx[s] - (x1[i] - x0[i]) // 2
        assert ((lam > 0) & (lam < 1)).any()
        if opts.get("shared_box"):
            assert all(len(set(t.tolist())) == 1 for t in m.box)


# -------------------------------------------------------------------------------------------------------- fmix
@pytest.mark.parametrize("shape", [(16, 16), (12, 9)])
def test_fourier_mask_is_binary_with_ceil_lambda_pixels(shape):
    H, W = shape
    lam = torch.tensor([0.0, 1e-6, 0.1, 0.37, 0.5, 0.999, 1.0])
    mask = masks.fourier_mask(lam, shape, 3.0, _gen(2))
    assert mask.shape == (7, H, W) and mask.dtype == torch.float32
    assert torch.equal(mask, (mask > 0.5).float())
    for i, l in enumerate(lam.tolist()):
        assert int(mask[i].sum()) == math.ceil(l * H * W)


def _total_variation(m: torch.Tensor) -> torch.Tensor:
    """Number of 4-neighbour pairs with different values, per mask: (n, H, W) → (n,)."""
    return (m[:, 1:] != m[:, :-1]).sum((1, 2)) + (m[:, :, 1:] != m[:, :, :-1]).sum((1, 2))


def test_fourier_mask_is_low_frequency():
    n, H, W = 64, 32, 32
    lam = torch.full((n,), 0.5)
    mask = masks.fourier_mask(lam, (H, W), 3.0, _gen(4))
    shuffled = mask.flatten(1)[:, torch.randperm(H * W, generator=_gen(5))].view(n, H, W)  # same mean, no structure
    tv, tv_random = _total_variation(mask).float().mean(), _total_variation(shuffled).float().mean()
    assert tv < 0.2 * tv_random
    rough = masks.fourier_mask(lam, (H, W), 1.0, _gen(4))
    assert _total_variation(rough).float().mean() > 1.5 * tv  # a smaller decay power keeps more high frequencies


def test_fourier_noise_spectrum_decays_as_inverse_power_of_frequency():
    n, H, W, decay = 4000, 8, 10, 3.0
    grey = masks.fourier_noise(n, (H, W), decay, _gen(8), torch.device("cpu"))
    power = torch.fft.rfft2(grey).abs().square().mean(0)  # (H, W//2+1)
    fy = torch.fft.fftfreq(H)[:, None]
    fx = torch.fft.rfftfreq(W)[None, :]
    scale = torch.sqrt(fy ** 2 + fx ** 2).clamp_min(1 / max(H, W)) ** -decay
    ratio = (power / scale ** 2)[:, 1:-1]  # columns 1..W/2−1 are free of the Hermitian constraint
    torch.testing.assert_close(ratio, torch.full_like(ratio, 2.0), rtol=0.15, atol=0)  # E|Z|² = 2


@pytest.mark.parametrize("per_sample", [False, True])
def test_fmix_mixes_with_the_mask_and_labels_by_its_mean(per_sample):
    x, _ = _batch()
    b, _, H, W = x.shape
    m = create_method("fmix", {"per_sample": per_sample}).mix(x, _gen(12))
    keep = (~m.source_mask).float()
    torch.testing.assert_close(m.x, keep * x + (1 - keep) * x[m.perm], rtol=0, atol=0)
    torch.testing.assert_close(m.lam, keep.mean((1, 2, 3)), rtol=0, atol=0)
    same = all(torch.equal(m.source_mask[0], m.source_mask[i]) for i in range(b))
    assert same != per_sample


# --------------------------------------------------------------------------------------------------- resizemix
@pytest.mark.parametrize("per_sample", [False, True])
def test_resizemix_pastes_the_resized_source(per_sample):
    x, _ = _batch(b=16, size=20)
    b, _, H, W = x.shape
    for seed in range(3):
        m = create_method("resizemix", {"per_sample": per_sample}).mix(x, _gen(seed))
        y0, y1, x0, x1 = (t.tolist() for t in m.box)
        for i in range(b):
            h, w = y1[i] - y0[i], x1[i] - x0[i]
            assert round(0.1 * H) <= h <= round(0.8 * H) and h == w  # square images: one τ for both sides
            assert 0 <= y0[i] and y1[i] <= H and 0 <= x0[i] and x1[i] <= W  # wholly inside
            patch = F.interpolate(x[m.perm[i]][None], size=(h, w), mode="bilinear", align_corners=False)[0]
            torch.testing.assert_close(m.x[i, :, y0[i]:y1[i], x0[i]:x1[i]], patch, rtol=0, atol=1e-6)
            assert float(m.lam[i]) == pytest.approx(1 - h * w / (H * W), abs=1e-7)
        assert (len(set(zip(y0, x0, y1))) > 1) == per_sample


def test_resizemix_scale_and_position_ranges():
    x, _ = _batch(b=4, size=8)
    method = create_method("resizemix", {"scale_min": 0.5, "scale_max": 0.5})
    tops, lefts = set(), set()
    for seed in range(200):
        y0, y1, x0, x1 = method.mix(x, _gen(seed)).box
        assert ((y1 - y0) == 4).all() and ((x1 - x0) == 4).all()
        tops.add(int(y0[0]))
        lefts.add(int(x0[0]))
    assert tops == lefts == {0, 1, 2, 3, 4}


def test_place_patches_puts_each_patch_at_its_corner():
    patch = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3) + 1
    canvas, mask = masks.place_patches(patch, torch.tensor([0, 3]), torch.tensor([1, 2]), 5, 6)
    expected = torch.zeros(2, 1, 5, 6)
    expected[0, :, 0:2, 1:4] = patch[0]
    expected[1, :, 3:5, 2:5] = patch[1]
    assert torch.equal(canvas, expected) and torch.equal(mask, expected > 0)


# --------------------------------------------------------------------------------------------------------- gpu
@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_cuda_inputs_with_cpu_or_cuda_generator(variant):
    name, opts = variant
    model = _model().eval()
    x, y = _batch()
    method = create_method(name, opts)
    cpu = method.loss(model, x, y, _gen(3))
    gpu_model = _model().eval().cuda()
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        same_draws = method.loss(gpu_model, x.cuda(), y.cuda(), _gen(3))
        torch.testing.assert_close(same_draws.cpu(), cpu, atol=1e-4, rtol=1e-4)
        cuda_gen = torch.Generator(device="cuda").manual_seed(3)
        assert torch.isfinite(method.loss(gpu_model, x.cuda(), y.cuda(), cuda_gen))
