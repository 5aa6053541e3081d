"""AlignMix and Puzzle Mix: the defining operations checked against slow references and exact special cases."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import embedlab.methods.base as base
from embedlab.errors import EmbedlabError
from embedlab.models import create_model

try:  # the package __init__ is being rewritten concurrently; the submodules register themselves either way
    import embedlab.methods  # noqa: F401
except Exception:  # pragma: no cover
    pass
from embedlab.methods import alignmix as am  # noqa: E402
from embedlab.methods import puzzlemix as pm  # noqa: E402

NAMES = ("alignmix", "puzzlemix")


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int = 0, name: str = "cnn-gap"):
    torch.manual_seed(seed)
    return create_model(name, 10, (3, 16, 16), width=8)


def _batch(b: int = 12, seed: int = 123):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 16, 16, generator=g), torch.randint(0, 10, (b,), generator=g)


def _blocks(x: torch.Tensor, n: int) -> torch.Tensor:
    """(b, C, H, W) -> (b, n², C·bh·bw), blocks in row-major order."""
    b, c, h, w = x.shape
    return x.reshape(b, c, n, h // n, n, w // n).permute(0, 2, 4, 1, 3, 5).reshape(b, n * n, -1)


# ---------------------------------------------------------------------------------------------------- both methods


@pytest.mark.parametrize("name", NAMES)
def test_loss_finite_and_every_parameter_gets_a_gradient(name):
    model = _model().train()
    x, y = _batch()
    method = base.create_method(name)
    method.check_model(model)
    for seed in range(2):  # different mixing points / grids
        model.zero_grad()
        loss = method.loss(model, x, y, torch.Generator().manual_seed(seed))
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_seeded_generator_makes_loss_deterministic(name):
    # Smooth images: on pixel noise every block boundary is expensive, Puzzle Mix's masks come out constant (all
    # x_0 or all x_1) and its loss equals the ERM loss for every seed up to float rounding.
    g = torch.Generator().manual_seed(123)
    x = F.interpolate(torch.rand(12, 3, 4, 4, generator=g), size=16, mode="bilinear", align_corners=False)
    y = torch.randint(0, 10, (12,), generator=g)
    losses = []
    for seed in (5, 5, 0, 1, 3):
        method = base.create_method(name)
        losses.append(float(method.loss(_model().train(), x, y, torch.Generator().manual_seed(seed)).detach()))
    assert losses[0] == losses[1]
    assert max(losses) - min(losses) > 1e-3  # the seed changes the mix, far beyond rounding


def test_targets_are_probability_vectors():
    x, y = _batch()
    model = _model().train()
    for seed in range(2):
        _, t = base.create_method("alignmix").forward_mix(model, x, y, torch.Generator().manual_seed(seed))
        _, _, t2 = base.create_method("puzzlemix").mix(model, x, y, torch.Generator().manual_seed(seed))
        for target in (t, t2):
            assert target.shape == (12, 10) and (target >= 0).all()
            torch.testing.assert_close(target.sum(1), torch.ones(12))


@pytest.mark.parametrize("name", NAMES)
def test_metadata_and_option_validation(name):
    meta = base.method_metadata(name)
    assert meta["loss_terms"] == "b" and meta["examples_per_mix"] == "2" and meta["generated_per_batch"] == "b"
    assert meta["reference"] and meta["options"]["alpha"] == (2.0 if name == "alignmix" else 1.0)
    with pytest.raises(EmbedlabError, match="alpha"):
        base.create_method(name, {"alpha": 0})
    bad = {"alignmix": {"direction": "sideways"}, "puzzlemix": {"n_labels": 1}}[name]
    with pytest.raises(EmbedlabError, match=next(iter(bad))):
        base.create_method(name, bad)


# ---------------------------------------------------------------------------------------------------- AlignMix


def test_sinkhorn_plan_has_uniform_marginals():
    g = torch.Generator().manual_seed(0)
    a, a2 = torch.randn(6, 8, 16, generator=g) * 0.5, torch.randn(6, 8, 16, generator=g) * 0.5
    cost = am.squared_distances(a, a2)  # (6, 16, 16)
    torch.testing.assert_close(cost[2, 3, 5], ((a[2, :, 3] - a2[2, :, 5]) ** 2).sum(), rtol=1e-5, atol=1e-5)
    for anneal in (True, False):
        plan = am.sinkhorn_plan(cost, eps=1.0, iters=200, anneal=anneal)
        assert (plan >= 0).all()
        assert (plan.sum(2) - 1 / 16).abs().max() < 1e-4
        assert (plan.sum(1) - 1 / 16).abs().max() < 1e-4
    # entropic optimality: P = diag(u) K diag(v), i.e. log P + M/ε has rank-one additive structure
    lp = plan.log() + cost / 1.0
    resid = lp - lp.mean(2, keepdim=True) - lp.mean(1, keepdim=True) + lp.mean((1, 2), keepdim=True)
    assert resid.abs().max() < 1e-3


def test_sinkhorn_aligns_a_spatially_permuted_copy():
    g = torch.Generator().manual_seed(1)
    b, d, h, w = 4, 16, 4, 4
    a = torch.randn(b, d, h, w, generator=g)
    sigma = torch.stack([torch.randperm(h * w, generator=g) for _ in range(b)])  # (b, r)
    a2 = a.flatten(2).gather(2, sigma[:, None, :].expand(b, d, h * w)).reshape(b, d, h, w)  # a2_j = a_σ(j)
    plan = am.sinkhorn_plan(am.squared_distances(a.flatten(2), a2.flatten(2)), eps=0.1, iters=100)
    expected = torch.zeros(b, h * w, h * w).scatter_(2, sigma.argsort(1)[..., None], 1.0)  # i ↔ j with σ(j) = i
    assert (plan * h * w - expected).abs().max() < 1e-3
    zeros, ones = torch.zeros(b), torch.ones(b)
    torch.testing.assert_close(am.align_mix(a, a2, zeros, plan, keep_first=True), a, atol=1e-3, rtol=0)
    torch.testing.assert_close(am.align_mix(a, a2, ones, plan, keep_first=False), a2, atol=1e-3, rtol=0)


def test_align_mix_keeps_first_map_at_lambda_one_and_interpolates_barycentres():
    g = torch.Generator().manual_seed(2)
    a, a2 = torch.rand(3, 5, 2, 3, generator=g), torch.rand(3, 5, 2, 3, generator=g)
    plan = torch.rand(3, 6, 6, generator=g)
    assert torch.equal(am.align_mix(a, a2, torch.ones(3), plan, keep_first=True), a)
    lam = torch.tensor([0.2, 0.5, 0.9])
    out = am.align_mix(a, a2, lam, plan, keep_first=True)
    for k in range(3):  # slow reference: position i gets λ a_i + (1 − λ) Σ_j P_ij a'_j / Σ_j P_ij
        fa, fa2 = a[k].reshape(5, 6), a2[k].reshape(5, 6)
        for i in range(6):
            bary = sum(plan[k, i, j] * fa2[:, j] for j in range(6)) / plan[k, i].sum()
            torch.testing.assert_close(out[k].reshape(5, 6)[:, i], lam[k] * fa[:, i] + (1 - lam[k]) * bary)
    out2 = am.align_mix(a, a2, lam, plan, keep_first=False)
    for k in range(3):  # position j of A' gets λ Σ_i P_ij a_i / Σ_i P_ij + (1 − λ) a'_j
        fa, fa2 = a[k].reshape(5, 6), a2[k].reshape(5, 6)
        for j in range(6):
            bary = sum(plan[k, i, j] * fa[:, i] for i in range(6)) / plan[k, :, j].sum()
            torch.testing.assert_close(out2[k].reshape(5, 6)[:, j], lam[k] * bary + (1 - lam[k]) * fa2[:, j])


def test_alignmix_at_the_input_is_plain_mixup():
    x, y = _batch()
    model = _model().eval()
    method = base.create_method("alignmix", {"layers": "0"})
    logits, target = method.forward_mix(model, x, y, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # replay the draws: point, direction, λ, permutation
    torch.randint(1, (1,), generator=g)
    torch.rand((), generator=g)
    lam = base.draw_lambda(2.0, 12, False, g)
    perm = base.permutation(12, g, x.device)
    torch.testing.assert_close(logits, model(base.pair_mix(x, lam, perm)))
    torch.testing.assert_close(target, base.pair_mix(base.one_hot(y, 10), lam, perm))


def test_alignmix_at_the_last_map_mixes_aligned_features():
    x, y = _batch()
    model = _model().eval()
    method = base.create_method("alignmix", {"layers": "last", "direction": "first"})
    logits, _ = method.forward_mix(model, x, y, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    torch.randint(1, (1,), generator=g)
    lam = base.draw_lambda(2.0, 12, False, g)
    perm = base.permutation(12, g, x.device)
    h = model.features_at(x, model.num_stages)  # (b, d, H, W)
    plan = am.sinkhorn_plan(am.squared_distances(h.flatten(2), h[perm].flatten(2)), 0.1, 100)
    torch.testing.assert_close(logits, model.forward_from(am.align_mix(h, h[perm], lam, plan, True), model.num_stages))


def test_alignmix_rejects_models_without_a_spatial_map_and_bad_layers():
    with pytest.raises(EmbedlabError, match="spatial map"):
        base.create_method("alignmix").check_model(create_model("small-cnn", 10, (3, 16, 16)))
    with pytest.raises(EmbedlabError, match="only 3 stages"):
        base.create_method("alignmix", {"layers": "0,7"}).check_model(_model())
    x, y = _batch()
    model = create_model("mlp", 10, (3, 16, 16), hidden=(16,))
    with pytest.raises(EmbedlabError, match="spatial feature maps"):
        base.create_method("alignmix", {"layers": "1"}).loss(model, x, y, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------- Puzzle Mix


def test_saliency_equals_per_example_autograd_reference():
    model = _model().train()
    x, y = _batch(6)
    grad = pm.input_gradient(model, x, y)
    sal = pm.saliency_map(grad)  # (6, 16, 16)
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    for i in range(6):
        xi = x[i:i + 1].clone().requires_grad_(True)
        F.cross_entropy(model(xi), y[i:i + 1]).backward()
        torch.testing.assert_close(sal[i], xi.grad[0].norm(dim=0), rtol=1e-4, atol=1e-7)


def test_saliency_pass_leaves_batchnorm_statistics_alone():
    x, y = _batch(8)
    for eval_mode in (True, False):
        model = _model().train()
        before = [b.clone() for b in model.buffers()]
        pm.input_gradient(model, x, y, eval_mode)
        assert model.training and all(torch.equal(b, a) for b, a in zip(model.buffers(), before))
    # without eval mode the loss does not depend on the running statistics: a reused model gives the same loss
    model = _model().train()
    method = base.create_method("puzzlemix", {"saliency_eval": False})
    losses = [float(method.loss(model, x, y, torch.Generator().manual_seed(1)).detach()) for _ in range(2)]
    assert losses[0] == losses[1]


def test_pooled_saliency_and_boundary_differences_match_loops():
    g = torch.Generator().manual_seed(0)
    sal = torch.rand(2, 8, 8, generator=g)
    s = pm.pool_saliency(sal, 4)
    torch.testing.assert_close(s[1, 2, 3], sal[1, 4:6, 6:8].mean() / sal[1].mean() / 16)
    x0, x1 = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    n, neigh = 2, 4  # blocks of 8 px, cells of 4 px
    tv, th = pm.boundary_differences(x0, x1, n, neigh)
    assert tv.shape == (2, 2, 2, 1, 2) and th.shape == (2, 2, 2, 2, 1)
    cells = [F.avg_pool2d(x, neigh) for x in (x0, x1)]  # (2, 3, 4, 4)
    for a, c, col in itertools.product((0, 1), (0, 1), (0, 1)):  # block (0, col) above (1, col)
        ref = sum((cells[a][:, :, 1, 2 * col + t] - cells[c][:, :, 2, 2 * col + t]).abs().mean(1) for t in (0, 1)) / 2
        torch.testing.assert_close(tv[:, a, c, 0, col], ref)
        ref = sum((cells[a][:, :, 2 * col + t, 1] - cells[c][:, :, 2 * col + t, 2]).abs().mean(1) for t in (0, 1)) / 2
        torch.testing.assert_close(th[:, a, c, col, 0], ref)


def test_prior_is_the_binomial_of_the_authors():
    lam = torch.tensor([0.3, 0.8])
    p = pm.log_prior(lam, 3).exp() - 1e-8  # labels z = 0, ½, 1 (weight of x_0)
    torch.testing.assert_close(p, torch.stack([(1 - lam) ** 2, 2 * lam * (1 - lam), lam ** 2], 1))


def _random_energy(b: int, n: int, k: int, seed: int, beta: float = 1.2, gamma: float = 0.5) -> pm.MaskEnergy:
    g = torch.Generator().manual_seed(seed)
    s0, s1 = torch.rand(b, n, n, generator=g) ** 3, torch.rand(b, n, n, generator=g) ** 3
    s0, s1 = s0 / s0.sum((1, 2), keepdim=True), s1 / s1.sum((1, 2), keepdim=True)
    x0, x1 = torch.rand(b, 1, 4 * n, 4 * n, generator=g), torch.rand(b, 1, 4 * n, 4 * n, generator=g)
    tv, th = pm.boundary_differences(x0, x1, n, 4)
    return pm.mask_energy(s0, s1, tv, th, torch.rand(b, generator=g), k, beta, gamma, 0.2)


def test_mask_energy_decomposition_matches_direct_evaluation():
    """For binary masks the reparametrised energy equals the paper's terms summed directly (up to a constant)."""
    b, n = 5, 3
    g = torch.Generator().manual_seed(4)
    s0, s1 = torch.rand(b, n, n, generator=g), torch.rand(b, n, n, generator=g)
    x0, x1 = torch.rand(b, 2, 12, 12, generator=g), torch.rand(b, 2, 12, 12, generator=g)
    lam = torch.rand(b, generator=g)
    tv, th = pm.boundary_differences(x0, x1, n, 4)
    energy = pm.mask_energy(s0, s1, tv, th, lam, 2, 1.2, 0.5, 0.2)
    bp = 1.2 / n / 16
    prior = -(0.2 / n ** 2) * pm.log_prior(lam, 2)  # (b, 2)

    def direct(lab: torch.Tensor) -> torch.Tensor:  # lab (b, n, n) in {0, 1} = z
        src = 1 - lab  # 0: x_0, 1: x_1
        e = (lab * s1 + (1 - lab) * s0).sum((1, 2)) + prior.gather(1, lab.flatten(1)).sum(1)
        for r, c in itertools.product(range(n), range(n)):
            if r + 1 < n:
                e = e + bp * (lab[:, r, c] != lab[:, r + 1, c]) \
                    + 0.5 * bp * tv[torch.arange(b), src[:, r, c], src[:, r + 1, c], r, c]
            if c + 1 < n:
                e = e + bp * (lab[:, r, c] != lab[:, r, c + 1]) \
                    + 0.5 * bp * th[torch.arange(b), src[:, r, c], src[:, r, c + 1], r, c]
        return e

    labs = [torch.randint(0, 2, (b, n, n), generator=g) for _ in range(6)]
    diffs = torch.stack([energy(lab) - direct(lab) for lab in labs])  # (6, b): constant per example
    torch.testing.assert_close(diffs, diffs[:1].expand_as(diffs), rtol=0, atol=2e-5)


def test_icm_is_exact_without_pairwise_terms_and_near_exact_with_them():
    energy = _random_energy(64, 3, 3, seed=0, beta=0.0, gamma=0.0)
    assert torch.equal(pm.icm_labels(energy, 4), energy.unary.argmin(-1))
    for n, k in ((2, 3), (3, 2)):
        energy = _random_energy(64, n, k, seed=n, beta=12.0)  # strong smoothness: a hard case for ICM
        labels = pm.icm_labels(energy, 8)
        every = torch.tensor(list(itertools.product(range(k), repeat=n * n))).reshape(-1, n, n)
        best = torch.stack([energy(lab.expand(64, n, n)) for lab in every], 1).min(1).values
        e = energy(labels)
        assert (e <= energy(energy.unary.argmin(-1)) + 1e-7).all()
        assert (e >= best - 1e-7).all() and ((e - best) < 1e-7).float().mean() >= 0.9


def test_swap_transport_is_a_permutation_that_improves_on_identity():
    from scipy.optimize import linear_sum_assignment

    g = torch.Generator().manual_seed(0)
    b, n = 32, 4
    sal = torch.rand(b, n, n, generator=g) ** 4
    sal = sal / sal.sum((1, 2), keepdim=True)
    visible = torch.rand(b, n, n, generator=g) < 0.5
    cost = 0.8 * pm.block_distance(n, sal.device) - sal.reshape(b, -1, 1) * visible.reshape(b, 1, -1).float()
    dest = pm.swap_assignment(cost, sal.reshape(b, -1), n)
    assert torch.equal(dest.sort(1).values, torch.arange(n * n).expand(b, -1))
    total = cost.gather(2, dest[..., None]).sum((1, 2))
    assert (total <= cost.diagonal(dim1=1, dim2=2).sum(1) + 1e-6).all()
    optimum = torch.tensor([float(cost[k][linear_sum_assignment(cost[k].numpy())].sum()) for k in range(b)])
    assert ((total - optimum) < 1e-5).float().mean() >= 0.9


def test_transport_moves_a_salient_block_into_the_visible_region():
    n = 4
    sal = torch.zeros(1, n, n)
    sal[0, 0, 0] = 1.0
    visible = torch.zeros(1, n, n, dtype=torch.bool)
    visible[0, 2:, 2:] = True
    src = pm.transport_plan(sal, visible, t_eps=0.1, rounds=n)
    where = int((src[0] == 0).nonzero())  # destination of block 0
    assert visible.flatten()[where]
    src = pm.transport_plan(sal, visible, t_eps=10.0, rounds=n)  # moving is too expensive: stay
    assert torch.equal(src[0], torch.arange(n * n))


def test_puzzle_mix_mask_blend_label_weight_and_block_permutation():
    g = torch.Generator().manual_seed(0)
    b = 16
    x0, x1 = torch.rand(b, 3, 16, 16, generator=g), torch.rand(b, 3, 16, 16, generator=g)
    sal0, sal1 = torch.rand(b, 16, 16, generator=g) ** 4, torch.rand(b, 16, 16, generator=g) ** 4
    lam = torch.rand(b, generator=g)
    for n, transport in ((2, True), (4, True), (8, True), (4, False)):
        res = pm.puzzle_mix(x0, x1, sal0, sal1, lam, n, transport=transport)
        assert res.mask.shape == (b, 1, 16, 16)
        assert ((res.mask >= 0) & (res.mask <= 1)).all()
        assert torch.isin(res.block_mask, torch.tensor([0.0, 0.5, 1.0])).all()
        torch.testing.assert_close(res.ratio, res.mask.mean((1, 2, 3)))
        torch.testing.assert_close(res.mixed, res.mask * res.x0t + (1 - res.mask) * res.x1t, rtol=0, atol=0)
        for xin, xout in ((x0, res.x0t), (x1, res.x1t)):  # every output block is a distinct input block
            bi, bo = _blocks(xin, n), _blocks(xout, n)  # (b, n², ·)
            match = (bo[:, :, None] == bi[:, None, :]).all(-1)  # (b, out, in)
            assert (match.sum(2) == 1).all() and (match.sum(1) == 1).all()
            if not transport:
                assert torch.equal(xout, xin)
    assert not torch.equal(res.mixed, x0) and 0 < float(res.ratio.mean()) < 1


def test_constant_saliency_without_transport_gives_a_block_constant_mask():
    g = torch.Generator().manual_seed(1)
    b = 8
    x0, x1 = torch.rand(b, 3, 16, 16, generator=g), torch.rand(b, 3, 16, 16, generator=g)
    flat = torch.ones(b, 16, 16)
    for n in (2, 4, 8):
        res = pm.puzzle_mix(x0, x1, flat, flat, torch.full((b,), 0.4), n, transport=False)
        blocks = _blocks(res.mask, n)  # (b, n², block pixels)
        assert torch.equal(blocks, blocks[..., :1].expand_as(blocks))
        torch.testing.assert_close(blocks[..., 0].reshape(b, n, n), res.block_mask)
        assert torch.equal(res.x0t, x0) and torch.equal(res.x1t, x1)


def test_puzzlemix_targets_use_the_mask_mean_and_the_mixed_batch_is_what_the_model_sees():
    x, y = _batch(10)
    model = _model().train()
    method = base.create_method("puzzlemix")
    res, perm, target = method.mix(model, x, y, torch.Generator().manual_seed(2))
    yy = base.one_hot(y, 10)
    torch.testing.assert_close(target, res.ratio[:, None] * yy + (1 - res.ratio[:, None]) * yy[perm])
    torch.testing.assert_close(res.ratio, res.mask.mean((1, 2, 3)))
    loss = method.loss(model, x, y, torch.Generator().manual_seed(2))
    torch.testing.assert_close(loss, base.soft_cross_entropy(model(res.mixed), target))


def test_puzzlemix_adversarial_option_and_grid_checks():
    x, y = _batch(6)
    model = _model().train()
    method = base.create_method("puzzlemix", {"adv_p": 1.0, "transport": False})
    res, perm, _ = method.mix(model, x, y, torch.Generator().manual_seed(0))
    assert ((res.mixed >= 0) & (res.mixed <= 1)).all()
    for clean, seen in ((x, res.x0t), (x[perm], res.x1t)):  # perturbed inside the ε-ball, and not left clean
        assert (seen - clean).abs().max() <= 10 / 255 + 1e-6 and not torch.equal(seen, clean)
    with pytest.raises(EmbedlabError, match="grid size"):
        base.create_method("puzzlemix", {"grid_sizes": "3"}).loss(model, x, y, torch.Generator().manual_seed(0))
    with pytest.raises(EmbedlabError, match="images"):
        base.create_method("puzzlemix").loss(model, x.flatten(1), y, torch.Generator().manual_seed(0))
