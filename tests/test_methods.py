"""Mixing methods: registry-wide properties and the defining equations of each method."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from embedlab.errors import EmbedlabError
from embedlab.methods import METHODS, create_method, method_metadata, soft_cross_entropy
from embedlab.methods.base import pair_mix
from embedlab.methods.multimix import DenseMultiMix, attention_cam, attention_gap, dense_weights, multimix_terms
from embedlab.models import create_model
from embedlab.sampling import dirichlet

ALWAYS = {"multimix": {"p": 1.0, "n": 64}, "dense_multimix": {"p": 1.0, "n": 64, "chunk": 24}, "confmix": {"warmup": 0}}


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("cnn-gap", 10, (1, 8, 8), width=8)


def _batch(b: int = 16):
    g = torch.Generator().manual_seed(123)
    return torch.rand(b, 1, 8, 8, generator=g), torch.randint(0, 10, (b,), generator=g)


@pytest.mark.parametrize("name", METHODS.names())
def test_loss_finite_and_every_parameter_gets_a_gradient(name):
    model = _model()
    x, y = _batch()
    method = create_method(name, ALWAYS.get(name, {}))
    method.check_model(model)
    loss = method.loss(model.train(), x, y, torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", METHODS.names())
def test_seeded_generator_makes_loss_deterministic(name):
    x, y = _batch()
    opts = {**ALWAYS.get(name, {}), **({"p": 0.5} if "multimix" in name else {})}
    losses = []
    for seed in (5, 5, 6):
        model = _model()
        losses.append(float(create_method(name, opts).loss(model.train(), x, y, torch.Generator().manual_seed(seed)).detach()))
    assert losses[0] == losses[1]
    if name != "erm":
        assert losses[0] != losses[2]


@pytest.mark.parametrize("name", METHODS.names())
def test_metadata_and_defaults(name):
    meta = method_metadata(name)
    assert meta["space"] and meta["examples_per_mix"] and meta["generated_per_batch"]
    create_method(name, {})  # defaults are valid


def test_unknown_option_and_bad_values_are_errors():
    with pytest.raises(EmbedlabError, match=r"unknown option\(s\) q; known: alpha, alpha_schedule, half_life, n, m, p"):
        create_method("multimix", {"q": 1})
    with pytest.raises(EmbedlabError, match="option n: expected int"):
        create_method("multimix", {"n": "many"})
    with pytest.raises(EmbedlabError, match=r"option p: must be in \[0, 1\]"):
        create_method("multimix", {"p": "1.5"})
    with pytest.raises(EmbedlabError, match="option attention"):
        create_method("dense_multimix", {"attention": "foo"})
    with pytest.raises(EmbedlabError, match="unknown method 'mixpu'"):
        create_method("mixpu")


def test_erm_is_cross_entropy():
    model = _model()
    x, y = _batch()
    loss = create_method("erm").loss(model, x, y, torch.Generator())
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y))


def test_pair_mix_targets_are_probability_vectors():
    y = F.one_hot(torch.randint(0, 5, (32,), generator=torch.Generator().manual_seed(0)), 5).float()
    lam = torch.rand(32, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(2))
    t = pair_mix(y, lam, perm)
    assert (t >= 0).all()
    torch.testing.assert_close(t.sum(-1), torch.ones(32))
    torch.testing.assert_close(t, lam[:, None] * y + (1 - lam[:, None]) * y[perm])


def test_mixup_equals_soft_ce_on_mixed_inputs():
    """Reproduce input mixup from its definition with the same generator draws."""
    model = _model()
    x, y = _batch()
    loss = create_method("mixup", {"alpha": 0.4}).loss(model, x, y, torch.Generator().manual_seed(3))
    from embedlab.sampling import beta

    g = torch.Generator().manual_seed(3)
    lam = float(beta(0.4, (1,), g))
    perm = torch.randperm(len(y), generator=g)
    yy = F.one_hot(y, 10).float()
    ref = soft_cross_entropy(model(lam * x + (1 - lam) * x[perm]), lam * yy + (1 - lam) * yy[perm])
    torch.testing.assert_close(loss, ref)


def test_manifold_mixup_depth_zero_is_input_mixup():
    model = _model()
    x, y = _batch()
    a = create_method("manifold_mixup", {"layers": "0", "alpha": 0.7}).loss(model, x, y, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    torch.randint(1, (1,), generator=g)  # manifold mixup draws its depth first
    from embedlab.sampling import beta

    lam = float(beta(0.7, (1,), g))
    perm = torch.randperm(len(y), generator=g)
    yy = F.one_hot(y, 10).float()
    ref = soft_cross_entropy(model(lam * x + (1 - lam) * x[perm]), lam * yy + (1 - lam) * yy[perm])
    torch.testing.assert_close(a, ref)


def test_manifold_mixup_rejects_too_deep_layers():
    with pytest.raises(EmbedlabError, match="only 3 stages"):
        create_method("manifold_mixup", {"layers": "0,5"}).check_model(_model())


def test_multimix_has_n_loss_terms_and_matches_embedding_interpolation():
    torch.manual_seed(0)
    head = torch.nn.Linear(7, 4)
    z = torch.randn(6, 7)
    y = F.one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4).float()
    lam = dirichlet(1.0, (50, 6), torch.Generator().manual_seed(0))
    terms = multimix_terms(head(z), y, lam)
    assert terms.shape == (50,)
    # definition: z̃ = Λ Z, ỹ = Λ Y, CE(g(z̃), ỹ) per generated example
    ref = -((lam @ y) * F.log_softmax(head(lam @ z), -1)).sum(-1)
    torch.testing.assert_close(terms, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((lam @ y).sum(-1), torch.ones(50))


def test_multimix_one_hot_row_reproduces_the_unmixed_example():
    torch.manual_seed(1)
    head = torch.nn.Linear(5, 3)
    z = torch.randn(4, 5)
    y = F.one_hot(torch.tensor([2, 0, 1, 2]), 3).float()
    lam = torch.eye(4)[[2, 0]]  # generated example k copies real example 2, then 0
    terms = multimix_terms(head(z), y, lam)
    ref = F.cross_entropy(head(z[[2, 0]]), torch.tensor([1, 2]), reduction="none")
    torch.testing.assert_close(terms, ref)


@pytest.mark.parametrize("name,opts", [("multimix", {}), ("dense_multimix", {}),
                                       ("dense_multimix", {"per_position": False, "global_weight": 0.3}),
                                       ("dense_multimix", {"attention": "cam", "global_weight": 1.0})])
def test_logit_mixing_equals_embedding_mixing_loss_and_gradient(name, opts):
    x, y = _batch()
    grads = []
    for exact in (False, True):
        model = _model()
        loss = create_method(name, {"p": 1.0, "n": 40, "exact_embedding_mix": exact, **opts}).loss(
            model, x, y, torch.Generator().manual_seed(7))
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_multimix_subset_m():
    x, y = _batch(16)
    loss = create_method("multimix", {"p": 1.0, "n": 10, "m": 4}).loss(_model(), x, y, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_multimix_p_zero_is_the_fallback():
    x, y = _batch()
    model = _model()
    mm = create_method("multimix", {"p": 0.0, "fallback": "erm"}).loss(model, x, y, torch.Generator().manual_seed(0))
    torch.testing.assert_close(mm, F.cross_entropy(model(x), y))


def test_dense_weights_convex_at_every_position_and_invariant_to_attention_scale():
    g = torch.Generator().manual_seed(0)
    n, r, m = 30, 16, 8
    lam = dirichlet(1.0, (n, r, m), g)
    att = torch.rand(m, r, generator=g) + 0.01
    w = dense_weights(lam, att)
    assert w.shape == (n, r, m) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(n, r))
    gam = -torch.rand(n, r, m, generator=g).log()  # Gamma(1) variates: normalising them first changes nothing
    torch.testing.assert_close(dense_weights(gam, att), dense_weights(gam / gam.sum(-1, keepdim=True), att))
    scale = torch.rand(1, r, generator=g) * 10 + 0.1  # rescale attention per position j
    torch.testing.assert_close(dense_weights(lam, att * scale), w)
    # definition: w_{k,i}^j = a_i^j λ_{k,i}^j / Σ_i a_i^j λ_{k,i}^j
    k, j = 3, 5
    num = att[:, j] * lam[k, j]
    torch.testing.assert_close(w[k, j], num / num.sum())


def test_dense_multimix_global_weight_one_is_multimix_on_the_pooled_embedding():
    """β = 1 leaves only the MultiMix term on GAP embeddings (the path inference takes): MultiMix's loss exactly."""
    x, y = _batch()
    model = _model()
    dense = create_method("dense_multimix", {"p": 1.0, "n": 50, "global_weight": 1.0}).loss(
        model, x, y, torch.Generator().manual_seed(3))
    mm = create_method("multimix", {"p": 1.0, "n": 50}).loss(model, x, y, torch.Generator().manual_seed(3))
    torch.testing.assert_close(dense, mm, atol=1e-5, rtol=1e-5)


def test_dense_multimix_global_weight_mixes_the_two_losses():
    x, y = _batch()
    model = _model()
    part = {b: float(create_method("dense_multimix", {"p": 1.0, "n": 30, "global_weight": b}).loss(
        model, x, y, torch.Generator().manual_seed(4))) for b in (0.0, 1.0)}
    # the β = 0.25 loss draws the dense λ first and the MultiMix Λ after; recompute both terms with that order
    g = torch.Generator().manual_seed(4)
    method = create_method("dense_multimix", {"p": 1.0, "n": 30, "global_weight": 0.25})
    got = float(method.loss(model, x, y, g))
    g = torch.Generator().manual_seed(4)
    dense = float(create_method("dense_multimix", {"p": 1.0, "n": 30, "global_weight": 0.0}).loss(model, x, y, g))
    mm = float(create_method("multimix", {"p": 1.0, "n": 30}).loss(model, x, y, g))  # continues the same stream
    assert dense == pytest.approx(part[0.0])
    assert got == pytest.approx(0.75 * dense + 0.25 * mm, rel=1e-5)


def test_dense_multimix_shared_lambda_is_the_same_at_every_position():
    """per_position=False: one λ_k for all r positions; with uniform attention the mixed map is Λ applied to every
    position, so its pooled embedding is MultiMix's mixed embedding."""
    g = torch.Generator().manual_seed(0)
    method = create_method("dense_multimix", {"per_position": False, "attention": "none"})
    gam = method._gamma(5, 1, 4, g).expand(5, 3, 4)
    w = dense_weights(gam, torch.full((4, 3), 1 / 3))
    torch.testing.assert_close(w[:, 0], w[:, 2])
    torch.testing.assert_close(w[:, 0], gam[:, 0] / gam[:, 0].sum(-1, keepdim=True))


def test_attention_gap_l1_is_relu_similarity_to_the_pooled_embedding():
    g = torch.Generator().manual_seed(1)
    fmap = torch.randn(3, 5, 7, generator=g)
    a = attention_gap(fmap, torch.zeros(3, dtype=torch.long), torch.zeros(2, 5), "l1")
    s = torch.relu(fmap[1].t() @ fmap[1].mean(-1))
    torch.testing.assert_close(a[1], s / s.sum())
    relu_map = torch.relu(fmap)  # post-ReLU features: every score ≥ 0, no position is zeroed out
    assert (attention_gap(relu_map, None, None, "l1") > 0).all()
    with pytest.raises(EmbedlabError, match="attention_norm: one of auto, softmax, l1"):
        create_method("dense_multimix", {"attention_norm": "sigmoid"})
    with pytest.raises(EmbedlabError, match=r"global_weight: must be in \[0, 1\]"):
        create_method("dense_multimix", {"global_weight": 1.5})


def test_attention_maps_are_distributions():
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(4, 6, 9, generator=g)
    y = torch.tensor([0, 1, 2, 1])
    weight = torch.randn(3, 6, generator=g)
    for fn in (attention_gap, attention_cam):
        a = fn(fmap, y, weight)
        assert a.shape == (4, 9) and (a >= 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones(4))
    q = fmap.mean(-1)
    torch.testing.assert_close(attention_gap(fmap, y, weight)[1], torch.softmax(fmap[1].t() @ q[1], 0))
    cam = torch.relu(fmap[2].t() @ weight[2])
    torch.testing.assert_close(attention_cam(fmap, y, weight)[2], cam / cam.sum())


def test_dense_multimix_loss_is_mean_over_n_and_r_of_dense_terms():
    """Recompute Dense MultiMix from its definition (embeddings mixed per position, g per position)."""
    model = _model()
    x, y = _batch(8)
    n = 20
    method = create_method("dense_multimix", {"p": 1.0, "n": n, "chunk": 7, "attention": "cam", "attention_norm": "l1",
                                              "global_weight": 0.0})
    assert isinstance(method, DenseMultiMix)
    loss = method.loss(model, x, y, torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    fmap = model.feature_map(x)  # (b, d, r)
    b, d, r = fmap.shape
    att = attention_cam(fmap.detach(), y, model.head.weight.detach())
    yy = F.one_hot(y, 10).float()
    total, count = 0.0, 0
    for start in range(0, n, 7):
        nk = min(7, n - start)
        w = dense_weights(dirichlet(1.0, (nk, r, b), g), att)
        for k in range(nk):
            for j in range(r):
                z = (w[k, j][:, None] * fmap[:, :, j]).sum(0)
                t = (w[k, j][:, None] * yy).sum(0)
                total = total - (t * F.log_softmax(model.head(z), -1)).sum()
                count += 1
    torch.testing.assert_close(loss, total / count, atol=1e-5, rtol=1e-5)


def test_dense_multimix_needs_a_pooled_spatial_map():
    mlp = create_model("mlp", 10, (1, 8, 8), hidden=(16,))
    with pytest.raises(EmbedlabError, match="global average pooling"):
        create_method("dense_multimix").check_model(mlp)


# ------------------------------------------------------------------------------------- schedules and limits
def test_alpha_schedules_follow_seed_002():
    from embedlab.methods import scheduled_alpha

    assert scheduled_alpha(1.0, "constant", 40, 25) == 1.0
    assert scheduled_alpha(1.0, "0->1", 0, 25) == 0.0
    assert scheduled_alpha(1.0, "0->1", 25, 25) == pytest.approx(0.5)
    assert scheduled_alpha(2.0, "1->0", 50, 25) == pytest.approx(0.5)
    m = create_method("mixup", {"alpha": 0.8, "alpha_schedule": "1->0", "half_life": 10})
    m.on_epoch_start(11, 50)
    assert m.alpha == pytest.approx(0.4)
    with pytest.raises(EmbedlabError, match="alpha_schedule: one of constant, 0->1, 1->0"):
        create_method("mixup", {"alpha_schedule": "up"})


@pytest.mark.parametrize("name,opts", [("mixup", {}), ("manifold_mixup", {}), ("mixup", {"per_sample": True}),
                                       ("multimix", {"p": 1.0, "fallback": "erm"}),
                                       ("dense_multimix", {"p": 1.0, "fallback": "erm"})])
def test_alpha_zero_reduces_to_erm(name, opts):
    """The "0->1" schedule starts at α = 0: λ is a vertex (no interpolation), so the loss is ERM's."""
    model = _model().eval()  # eval: BN statistics do not depend on the (permuted) batch
    x, y = _batch()
    method = create_method(name, {**opts, "alpha_schedule": "0->1"})
    method.on_epoch_start(1, 10)
    assert method.alpha == 0.0
    loss = method.loss(model, x, y, torch.Generator().manual_seed(0))
    erm = F.cross_entropy(model(x), y)
    if "multimix" in name:
        # every generated example copies one real example: the loss is a (random) average of per-example CEs
        per_example = F.cross_entropy(model(x), y, reduction="none")
        assert per_example.min() - 1e-5 <= loss <= per_example.max() + 1e-5
    else:
        torch.testing.assert_close(loss, erm, atol=1e-5, rtol=1e-5)


def test_confmix_alpha_formula_and_range():
    from embedlab.methods.confmix import confmix_alpha

    probs = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.3, 0.2]])
    a = confmix_alpha(probs, 1e-3)
    torch.testing.assert_close(a, torch.tensor([1.0, 1e-3, 1.5 * (0.5 - 1 / 3)]))
    rnd = torch.softmax(torch.randn(100, 10, generator=torch.Generator().manual_seed(0)) * 3, -1)
    a = confmix_alpha(rnd, 1e-3)
    assert (a >= 1e-3).all() and (a <= 1).all()


def test_confmix_warmup_is_erm_then_mixes():
    model = _model()
    x, y = _batch()
    m = create_method("confmix", {"warmup": 2})
    m.on_epoch_start(2, 10)
    torch.testing.assert_close(m.loss(model, x, y, torch.Generator().manual_seed(0)), F.cross_entropy(model(x), y))
    m.on_epoch_start(3, 10)
    assert not torch.allclose(m.loss(model, x, y, torch.Generator().manual_seed(0)), F.cross_entropy(model(x), y))


def test_confmix_epoch_stats_are_the_mean_confidence_alpha_of_the_epoch():
    model = _model()
    x, y = _batch()
    m = create_method("confmix", {"warmup": 1, "half": True})
    m.on_epoch_start(1, 10)
    m.loss(model, x, y, torch.Generator().manual_seed(0))
    assert m.epoch_stats() == {}  # ERM warm-up: nothing mixed, nothing logged
    m.on_epoch_start(2, 10)
    per_batch = []
    for xb, yb in [(x, y), (x[:5] * 3, y[:5])]:
        model.eval()  # by hand: α_i = K/(K−1)(max p − 1/K) of the model in eval mode, before ½ halves it
        with torch.no_grad():
            p = torch.softmax(model(xb), -1).max(-1).values
        k = model.num_classes
        per_batch.append(float((k / (k - 1) * (p - 1 / k)).clamp(1e-3, 1).mean()))
        model.train()  # the training forward inside loss() moves BatchNorm's running statistics
        m.loss(model, xb, yb, torch.Generator().manual_seed(0))
    assert m.epoch_stats()["confmix_alpha"] == pytest.approx(sum(per_batch) / 2, rel=1e-5)
    m.on_epoch_start(3, 10)
    assert m.epoch_stats() == {}


def test_scheduled_alpha_is_logged_and_constant_alpha_is_not():
    m = create_method("mixup", {"alpha": 1.0, "alpha_schedule": "0->1", "half_life": 2.0})
    m.on_epoch_start(3, 10)  # t = 2 epochs done: α = 1 − 2^(−2/2)
    assert m.epoch_stats() == {"alpha": pytest.approx(0.5)}
    assert create_method("mixup", {"alpha": 0.4}).epoch_stats() == {}
    assert create_method("erm", {}).epoch_stats() == {}


def test_confmix_manifold_variant_mixes_before_last_stage():
    model = _model()
    m = create_method("confmix", {"variant": "manifold", "warmup": 0})
    m.check_model(model)
    assert m._point(model) == str(model.num_stages - 1)
    x, y = _batch()
    assert torch.isfinite(m.loss(model, x, y, torch.Generator().manual_seed(0)))


def test_zeta_weights():
    from embedlab.methods.multimix import zeta_weights

    t = zeta_weights(6, 2.8, torch.Generator().manual_seed(0))
    series = torch.arange(1, 7).float().pow(-2.8)
    series = series / series.sum()
    torch.testing.assert_close(t.sum(1), torch.ones(6))
    torch.testing.assert_close(t.diagonal(), torch.full((6,), float(series[0])))
    for row in t:
        torch.testing.assert_close(row.sort(descending=True).values, series)


def test_dirichlet_input_targets_follow_inputs():
    """With one-hot Λ rows (α = 0) every generated input is a real input with its own label."""
    model = _model().eval()
    x, y = _batch(8)
    m = create_method("dirichlet_input", {"alpha_schedule": "0->1"})
    m.on_epoch_start(1, 10)
    loss = m.loss(model, x, y, torch.Generator().manual_seed(0))
    per_example = F.cross_entropy(model(x), y, reduction="none")
    assert per_example.min() - 1e-5 <= loss <= per_example.max() + 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_runs_on_cuda_without_leaving_the_device(name):
    device = torch.device("cuda")
    x = torch.rand(16, 3, 16, 16, device=device)
    y = torch.randint(0, 10, (16,), device=device)
    method = create_method(name, ALWAYS.get(name, {}))
    losses = []
    for _ in range(2):
        torch.manual_seed(0)  # a fresh model each time: training forwards update BatchNorm statistics
        model = create_model("cnn-gap", 10, (3, 16, 16), width=8).to(device)
        method.check_model(model)
        loss = method.loss(model, x, y, torch.Generator(device=device).manual_seed(0))
        assert loss.device.type == "cuda" and torch.isfinite(loss)
        losses.append(float(loss.detach()))
    loss.backward()
    assert losses[0] == losses[1]
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in model.parameters())


def test_dense_multimix_default_is_the_papers_dense_loss_and_the_pooled_term_is_a_labelled_variant():
    from embedlab.methods import method_metadata

    assert method_metadata("dense_multimix")["options"]["global_weight"] == 0.0
    assert create_method("dense_multimix").variant() is None
    variant = create_method("dense_multimix", {"global_weight": 0.5}).variant()
    assert variant == "Dense MultiMix + pooled MultiMix (embedlab variant)"
    assert create_method("multimix").variant() is None
