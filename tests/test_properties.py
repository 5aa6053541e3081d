"""Property tests (hypothesis) for the metric functions and the mixing methods (issue #8).

Metrics: ranges (accuracy, ECE, AUROC … in [0, 1]; uniformity ≤ 0; alignment in [0, 4] for α = 2), symmetries
(AUROC(in, out) = 1 − AUROC(out, in), NMI/ARI symmetric) and invariances (sample order, class relabelling, positive
rescaling of embeddings, strictly increasing transforms of OOD scores). Mixing: mixed inputs lie between the mixed
examples, mixed targets are probability vectors, and the mask methods' label weight is the pixel fraction.

Shapes, seeds and parameters are drawn by hypothesis; the arrays themselves come from a seeded torch.Generator so
that continuous data has no accidental ties. ``derandomize=True``: the same examples on every run.
"""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from embedlab.metrics import calibration as cal
from embedlab.metrics import classification, geometry
from embedlab.metrics import clustering as clu
from embedlab.metrics import ood
from embedlab.methods import create_method
from embedlab.methods import multimix as mm
from embedlab.methods.base import one_hot, pair_mix
from embedlab.methods.masks import mixed_targets
from embedlab.sampling import beta, dirichlet, gamma

FAST = settings(max_examples=20, deadline=None, derandomize=True)
DTYPES = (torch.float32, torch.float64, torch.bfloat16)
seeds = st.integers(0, 2**31 - 1)


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_probability_rows(t: torch.Tensor, atol: float = 1e-5) -> None:
    assert bool((t >= -atol).all()), t.min()
    torch.testing.assert_close(t.sum(-1).double(), torch.ones(t.shape[:-1], dtype=torch.float64), atol=atol, rtol=0)


# ============================================================================================ metrics
@FAST
@given(n=st.integers(1, 60), c=st.integers(1, 8), scale=st.floats(0.01, 60.0), n_bins=st.integers(1, 30), seed=seeds)
def test_classification_metrics_ranges_and_sample_order(n, c, scale, n_bins, seed):
    g = _gen(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, c, (n,), generator=g)
    values = {"accuracy": classification.accuracy(logits, labels),
              **cal.calibration_metrics(logits, labels, n_bins=n_bins)}
    for key in ("accuracy", "ece", "adaptive_ece", "mce"):
        assert 0.0 <= values[key] <= 1.0, (key, values[key])
    assert 0.0 <= values["brier"] <= 2.0 + 1e-12 and values["nll"] >= 0.0
    perm = torch.randperm(n, generator=g)
    shuffled = {"accuracy": classification.accuracy(logits[perm], labels[perm]),
                **cal.calibration_metrics(logits[perm], labels[perm], n_bins=n_bins)}
    assert shuffled == pytest.approx(values, rel=1e-9, abs=1e-12)
    t = cal.fit_temperature(logits, labels)
    assert cal.T_MIN <= t <= cal.T_MAX


@FAST
@given(n=st.integers(2, 40), d=st.integers(1, 6), k=st.integers(1, 5), t=st.floats(0.1, 5.0), chunk=st.integers(1, 50),
       seed=seeds)
def test_alignment_and_uniformity_ranges_and_invariances(n, d, k, t, chunk, seed):
    g = _gen(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % min(k, n - 1)  # at least one class with two examples
    align, unif = geometry.alignment(z, labels, alpha=2.0, chunk=chunk), geometry.uniformity(z, t=t, chunk=chunk)
    assert 0.0 <= align <= 4.0 + 1e-12
    assert -4.0 * t - 1e-9 <= unif <= 1e-12
    # normalised embeddings: positive rescaling of each row, and the order of the rows, change nothing
    scaled = z * (torch.rand(n, 1, generator=g, dtype=torch.float64) * 10 + 0.1)
    perm = torch.randperm(n, generator=g)
    for zz, yy in ((scaled, labels), (z[perm], labels[perm])):
        assert geometry.alignment(zz, yy, chunk=chunk) == pytest.approx(align, rel=1e-9, abs=1e-12)
        assert geometry.uniformity(zz, t=t, chunk=chunk) == pytest.approx(unif, rel=1e-9, abs=1e-12)


@FAST
@given(m=st.integers(1, 40), n=st.integers(1, 30), d=st.integers(1, 6), c=st.integers(1, 5), k=st.integers(1, 50),
       temperature=st.floats(0.01, 2.0), seed=seeds)
def test_knn_accuracy_is_in_unit_interval_and_invariant_to_order_and_relabelling(m, n, d, c, k, temperature, seed):
    g = _gen(seed)
    bank, query = torch.randn(m, d, generator=g), torch.randn(n, d, generator=g)
    bank_y, query_y = torch.randint(0, c, (m,), generator=g), torch.randint(0, c, (n,), generator=g)
    acc = classification.knn_accuracy(bank, bank_y, query, query_y, c, k=k, temperature=temperature)
    assert 0.0 <= acc <= 1.0
    pb, pq = torch.randperm(m, generator=g), torch.randperm(n, generator=g)
    assert classification.knn_accuracy(bank[pb], bank_y[pb], query[pq], query_y[pq], c, k=k, temperature=temperature) == acc
    relabel = torch.randperm(c, generator=g)
    assert classification.knn_accuracy(bank, relabel[bank_y], query, relabel[query_y], c, k=k, temperature=temperature) == acc


@FAST
@given(n_in=st.integers(1, 40), n_out=st.integers(1, 40), levels=st.integers(0, 30), seed=seeds)
def test_ood_metrics_symmetry_ranges_and_invariance_to_increasing_transforms(n_in, n_out, levels, seed):
    g = _gen(seed)
    # integer-valued scores: few levels → many ties, which the metrics must handle consistently
    s_in = torch.randint(-levels, levels + 1, (n_in,), generator=g).double()
    s_out = torch.randint(-levels, levels + 1, (n_out,), generator=g).double()
    ref = ood.ood_metrics(s_in, s_out)
    assert all(0.0 <= v <= 1.0 for v in ref.values()), ref
    assert ood.ood_metrics(s_out, s_in)["auroc"] == pytest.approx(1.0 - ref["auroc"], abs=1e-12)
    for f in (lambda s: 2.0 * s + 5.0, lambda s: s ** 3, lambda s: torch.exp(s / 7.0), torch.atan):
        assert ood.ood_metrics(f(s_in), f(s_out)) == pytest.approx(ref, abs=1e-12)
    fpr, tpr = ood.roc_points(s_in, s_out)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()


@FAST
@given(n=st.integers(3, 40), d=st.integers(2, 5), k=st.integers(2, 5), seed=seeds)  # d = 1: unit "vectors" ±1 tie
def test_clustering_indices_ranges_and_invariances(n, d, k, seed):
    g = _gen(seed)
    k = min(k, n - 1)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % k
    sil, ratio = clu.silhouette_cosine(z, labels), clu.intra_inter_distance_ratio(z, labels)
    db, ch = clu.davies_bouldin(z, labels), clu.calinski_harabasz(z, labels)
    assert -1.0 - 1e-12 <= sil <= 1.0 + 1e-12 and ratio >= 0.0 and db >= 0.0 and ch >= 0.0
    # cosine geometry: positive row scaling; Euclidean indices: translation and uniform scaling; any row order
    rows = z * (torch.rand(n, 1, generator=g, dtype=torch.float64) * 10 + 0.1)
    assert clu.silhouette_cosine(rows, labels) == pytest.approx(sil, rel=1e-9, abs=1e-12)
    assert clu.intra_inter_distance_ratio(rows, labels) == pytest.approx(ratio, rel=1e-9)
    moved = 3.5 * z + torch.randn(1, d, generator=g, dtype=torch.float64)
    assert clu.davies_bouldin(moved, labels) == pytest.approx(db, rel=1e-6)
    assert clu.calinski_harabasz(moved, labels) == pytest.approx(ch, rel=1e-6)
    perm = torch.randperm(n, generator=g)
    assert clu.silhouette_cosine(z[perm], labels[perm]) == pytest.approx(sil, rel=1e-9, abs=1e-12)
    assert clu.calinski_harabasz(z[perm], labels[perm]) == pytest.approx(ch, rel=1e-9)


@FAST
@given(n=st.integers(1, 50), ka=st.integers(1, 6), kb=st.integers(1, 6), seed=seeds)
def test_nmi_and_ari_ranges_symmetry_and_relabelling(n, ka, kb, seed):
    g = _gen(seed)
    a, b = torch.randint(0, ka, (n,), generator=g), torch.randint(0, kb, (n,), generator=g)
    nmi, ari = clu.normalized_mutual_info(a, b), clu.adjusted_rand_index(a, b)
    assert -1e-12 <= nmi <= 1.0 + 1e-12 and ari <= 1.0 + 1e-12
    assert clu.normalized_mutual_info(b, a) == pytest.approx(nmi, abs=1e-12)
    assert clu.adjusted_rand_index(b, a) == pytest.approx(ari, abs=1e-12)
    relabel = torch.randperm(ka, generator=g) + 10
    assert clu.normalized_mutual_info(relabel[a], b) == pytest.approx(nmi, abs=1e-12)
    assert clu.adjusted_rand_index(relabel[a], b) == pytest.approx(ari, abs=1e-12)
    assert clu.normalized_mutual_info(a, a) == pytest.approx(1.0) and clu.adjusted_rand_index(a, a) == 1.0


# ============================================================================================ mixing
images = dict(b=st.integers(2, 6), c=st.sampled_from([1, 3]), h=st.integers(2, 9), w=st.integers(2, 9),
              dtype=st.sampled_from(DTYPES), seed=seeds)


def _images(b, c, h, w, dtype, seed):
    g = _gen(seed)
    x = (torch.rand(b, c, h, w, generator=g, dtype=torch.float64) * 4 - 1).to(dtype)  # values in [-1, 3]
    return x, g


def _tol(x: torch.Tensor) -> float:
    """A few units in the last place of the largest magnitude: convex combinations are exact up to rounding."""
    return 4 * torch.finfo(x.dtype).eps * float(x.abs().max().float())


@FAST
@given(**images)
def test_pair_mix_is_convex_per_pixel_and_its_targets_are_probability_vectors(b, c, h, w, dtype, seed):
    x, g = _images(b, c, h, w, dtype, seed)
    lam, perm = torch.rand(b, generator=g), torch.randperm(b, generator=g)
    mixed = pair_mix(x, lam, perm)
    assert mixed.dtype == dtype and mixed.shape == x.shape
    lo, hi = torch.minimum(x, x[perm]).float(), torch.maximum(x, x[perm]).float()
    assert bool((mixed.float() >= lo - _tol(x)).all() & (mixed.float() <= hi + _tol(x)).all())
    y = torch.randint(0, 5, (b,), generator=g)
    target = pair_mix(one_hot(y, 5), lam, perm)
    _assert_probability_rows(target)
    same = y == y[perm]
    torch.testing.assert_close(target[torch.arange(b), y][~same], lam[~same])


class _Recorder(nn.Module):
    """Stands in for the network: records what the method feeds it; returns zero logits."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes, self.inputs = num_classes, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach())
        return torch.zeros(x.shape[0], self.num_classes, requires_grad=True)


def _mixed_by(name: str, options: dict, x: torch.Tensor, y: torch.Tensor, num_classes: int, g: torch.Generator):
    """(inputs given to the network, soft targets given to the loss) of one ``method.loss`` call."""
    method, model, targets = create_method(name, options), _Recorder(num_classes), []
    module = type(method).__module__

    def record(logits, target):
        targets.append(target.detach())
        return logits.float().sum() * 0

    with mock.patch(f"{module}.soft_cross_entropy", record):
        method.loss(model, x, y, g)
    return model.inputs[-1], targets[-1]


@FAST
@given(**images, method=st.sampled_from(["mixup", "dirichlet_input", "zeta_mixup"]), alpha=st.floats(0.05, 4.0),
       m=st.one_of(st.none(), st.integers(2, 6)))
def test_input_mixing_stays_in_the_convex_hull_and_targets_are_probability_vectors(b, c, h, w, dtype, seed, method,
                                                                                    alpha, m):
    x, g = _images(b, c, h, w, dtype, seed)
    y = torch.randint(0, 4, (b,), generator=g)
    options = {"mixup": {"alpha": alpha, "per_sample": m is None}, "dirichlet_input": {"alpha": alpha, "m": m},
               "zeta_mixup": {"gamma": 1.0 + alpha, "m": m}}[method]
    mixed, target = _mixed_by(method, options, x, y, 4, g)
    assert mixed.shape == x.shape and mixed.dtype == dtype
    # every mixed pixel lies between the smallest and largest value of that pixel over the mixed examples
    lo, hi = x.float().amin(0), x.float().amax(0)
    assert bool((mixed.float() >= lo - _tol(x)).all() & (mixed.float() <= hi + _tol(x)).all())
    assert target.shape == (b, 4)
    _assert_probability_rows(target)


@FAST
@given(b=st.integers(2, 7), gamma_=st.floats(1.01, 6.0), seed=seeds)
def test_zeta_weights_rows_are_distributions_led_by_the_own_example(b, gamma_, seed):
    t = mm.zeta_weights(b, gamma_, _gen(seed))
    _assert_probability_rows(t)
    assert bool((t.diagonal() == t.amax(1)).all())


@FAST
@given(n=st.integers(1, 12), m=st.integers(1, 6), r=st.integers(1, 9), d=st.integers(1, 5), c=st.integers(1, 5),
       alpha=st.floats(0.2, 4.0), attention=st.sampled_from(sorted(mm.ATTENTION)), seed=seeds)
def test_dense_multimix_weights_and_targets_are_convex_at_every_position(n, m, r, d, c, alpha, attention, seed):
    g = _gen(seed)
    fmap, weight = torch.randn(m, d, r, generator=g), torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (m,), generator=g)
    att = mm.ATTENTION[attention](fmap, y, weight)  # (m, r)
    _assert_probability_rows(att)
    w = mm.dense_weights(gamma(alpha, (n, r, m), g), att)  # unnormalised Gamma variates, as the method draws them
    assert w.shape == (n, r, m)
    _assert_probability_rows(w)
    _assert_probability_rows(torch.einsum("krm,mc->krc", w, one_hot(y, c)))


@FAST
@given(n=st.integers(1, 20), m=st.integers(1, 8), c=st.integers(1, 6), alpha=st.floats(0.05, 4.0), seed=seeds)
def test_multimix_targets_are_probability_vectors_and_terms_are_cross_entropies(n, m, c, alpha, seed):
    g = _gen(seed)
    lam = dirichlet(alpha, (n, m), g)
    _assert_probability_rows(lam)
    y = torch.randint(0, c, (m,), generator=g)
    _assert_probability_rows(lam @ one_hot(y, c))
    logits = torch.randn(m, c, generator=g)
    terms = mm.multimix_terms(logits, one_hot(y, c), lam)  # (n,)
    assert terms.shape == (n,) and bool((terms >= -1e-6).all())


MASKS = ("cutmix", "fmix", "saliencymix", "resizemix")


@FAST
@given(**images, method=st.sampled_from(MASKS), per_sample=st.booleans(), alpha=st.sampled_from([0.0, 0.3, 1.0, 3.0]))
def test_mask_methods_label_weight_is_the_pixel_fraction(b, c, h, w, dtype, seed, method, per_sample, alpha):
    x, g = _images(b, c, h, w, dtype, seed)
    mixer = create_method(method, {"per_sample": per_sample})
    if method != "resizemix":
        mixer.alpha = alpha  # as an α schedule sets it: α = 0 means no mixing
    mixed = mixer.mix(x, g)
    assert mixed.x.shape == x.shape and mixed.x.dtype == dtype
    source = mixed.source_mask.expand_as(x)  # True where the pixel comes from the partner
    # λ_i, the label weight of the example itself, is exactly the fraction of its pixels kept
    kept = 1.0 - mixed.source_mask.float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(mixed.lam.float(), kept, atol=1e-6, rtol=0)
    assert bool(((mixed.lam >= 0) & (mixed.lam <= 1)).all())
    assert torch.equal(mixed.x[~source], x[~source])  # kept pixels are untouched
    partner = x[mixed.perm]
    if method == "resizemix":  # the partner, bilinearly resized: within its own range of values
        for i in range(b):
            inside = mixed.x[i][source[i]].float()
            assert bool((inside >= partner[i].float().min() - _tol(x)).all()
                        & (inside <= partner[i].float().max() + _tol(x)).all())
    else:
        assert torch.equal(mixed.x[source], partner[source])  # pasted pixels are the partner's, unchanged
    y = torch.randint(0, 5, (b,), generator=g)
    target = mixed_targets(y, 5, mixed)
    _assert_probability_rows(target)
    differ = y != y[mixed.perm]
    torch.testing.assert_close(target[torch.arange(b), y][differ], mixed.lam.float()[differ])


@FAST
@given(alpha=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0, 2.0, 10.0]), rows=st.integers(1, 30), m=st.integers(1, 9),
       seed=seeds)
def test_sampling_draws_lie_on_the_simplex_and_the_unit_interval(alpha, rows, m, seed):
    g = _gen(seed)
    d = dirichlet(alpha, (rows, m), g)
    assert bool(torch.isfinite(d).all())
    _assert_probability_rows(d)
    lam = beta(alpha, (rows,), g)
    assert bool(((lam >= 0) & (lam <= 1)).all())
    if alpha > 0:
        assert bool((gamma(alpha, (rows, m), g) >= 0).all())
    per_example = beta(torch.full((rows,), alpha), (rows,), g)  # per-example concentrations (ConfMix)
    assert bool(((per_example >= 0) & (per_example <= 1)).all())
