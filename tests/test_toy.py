"""Seed 002's toy problem: exact densities and Bayes classifier, the MMLB, and the vectorised depth-study trainer."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from embedlab.data import GMMSpec
from embedlab.toy import bayes_predict, bayes_risk, gmm_log_density, mmlb
from embedlab.trainers.studies.toy_depth import (
    METHOD_DEPTHS,
    BatchedMLP,
    ToyTrainConfig,
    _adam_update_fused,
    _Mixer,
    draw_schedule,
    init_params,
    resolve_precision,
    run_toy_depth,
    train_reference,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _grid(lim: float = 2.0, n: int = 61) -> np.ndarray:
    g = np.linspace(-lim, lim, n)
    return np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)  # (n², 2)


def _scipy_densities(spec: GMMSpec, x: np.ndarray) -> np.ndarray:
    """Brute force: g_k(x) = mean_i N(x; μ_i, σ²I) with scipy, shape (n, K)."""
    cov = spec.sigma ** 2 * np.eye(2)
    return np.stack([np.mean([multivariate_normal(m, cov).pdf(x) for m in mu], axis=0) for mu in spec.means], 1)


SPECS = [GMMSpec.random(k, np.random.default_rng(10 + k)) for k in (2, 3, 4, 5)] + [
    GMMSpec((np.array([[-0.5, 0.0], [0.6, 0.6]]), np.array([[0.0, 0.1]]),
             np.array([[0.3, -0.7], [-0.8, 0.8], [0.9, 0.0]])), 0.3, (0.5, 0.2, 0.3)),  # unequal priors
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"K{s.num_classes}-s{s.sigma:.2f}")
def test_log_density_matches_scipy(spec):
    x = _grid(2.0, 41)
    dens = _scipy_densities(spec, x)
    ok = dens > 1e-250
    got = gmm_log_density(spec, x)
    assert got.shape == (len(x), spec.num_classes)
    np.testing.assert_allclose(got[ok], np.log(dens[ok]), rtol=1e-9, atol=1e-9)
    assert np.all(np.isfinite(got))  # finite even where scipy's density underflows to 0


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"K{s.num_classes}-s{s.sigma:.2f}")
def test_bayes_classifier_matches_bruteforce_posterior(spec):
    x = _grid(2.0, 61)
    post = _scipy_densities(spec, x) * np.asarray(spec.priors)  # unnormalised posterior (n, K)
    top2 = np.sort(post, 1)[:, -2:]
    clear = top2[:, 1] > top2[:, 0] * (1 + 1e-9)  # skip exact ties and points where every density underflows
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(bayes_predict(spec, x)[clear], post.argmax(1)[clear])


def test_bayes_risk_counts_misclassified_points():
    spec = GMMSpec((np.array([[-1.0, 0.0]]), np.array([[1.0, 0.0]])), 0.1, (0.5, 0.5))
    x = np.array([[-0.9, 0.0], [0.8, 0.3], [0.5, 0.0], [-2.0, 1.0]])
    assert bayes_risk(spec, x, np.array([0, 1, 0, 0])) == 0.25


def test_mmlb_far_apart_single_gaussians_is_zero():
    """Each class one tight Gaussian, far from the other: every same-class mix stays in its own class."""
    spec = GMMSpec((np.array([[-1.0, 0.0]]), np.array([[1.0, 0.0]])), 0.05, (0.5, 0.5))
    r_low, norm = mmlb(spec, n_pairs=20_000, rng=np.random.default_rng(0))
    assert r_low == 0.0 and norm == 0.0


def test_mmlb_class_split_by_another_class():
    """Class 0 = ½N((−a,0), σ²I) + ½N((a,0), σ²I), class 1 = N(0, σ²I), equal priors, α = 1 (λ ~ U[0, 1]).

    h* picks class 1 iff |x₁| < c with c = a/2 + σ² ln2 / a (compare φ(x; 0) with ½φ(x; (±a, 0)); the far
    component is negligible). Class 1 mixes stay near 0 (std ≤ σ ≪ c): p₁ ≈ 0. A class-0 pair from the same
    component stays near it: never misclassified. A pair from different components (probability ½) gives
    x̃₁ = a(1 − 2λ) + O(σ), uniform on (−a, a) up to the noise, so P(|x̃₁| < c) = c/a = ½ + O(σ²/a²).
    Hence p₀ = ¼ + O(σ²/a²), and normalised MMLB = (π₀²p₀ + π₁²p₁)/(π₀² + π₁²) = (p₀ + p₁)/2 = 1/8 + O(σ²/a²),
    with R_low = normalised · Σπ² = normalised / 2. Monte-Carlo standard error: √(p₀(1−p₀)/n)/2.
    """
    a, sigma, n = 1.0, 0.02, 200_000
    spec = GMMSpec((np.array([[-a, 0.0], [a, 0.0]]), np.array([[0.0, 0.0]])), sigma, (0.5, 0.5))
    r_low, norm = mmlb(spec, alpha=1.0, n_pairs=n, rng=np.random.default_rng(1))
    se = math.sqrt(0.25 * 0.75 / n) / 2
    assert abs(norm - 0.125) < 4 * se + sigma ** 2 / a ** 2
    assert r_low == pytest.approx(norm / 2, rel=1e-12)


def test_mmlb_is_seeded():
    spec = SPECS[1]
    first = mmlb(spec, n_pairs=3000, rng=np.random.default_rng(5))
    assert first == mmlb(spec, n_pairs=3000, rng=np.random.default_rng(5))


# ------------------------------------------------------------------------------------------------ trainer
def _small_problem(D: int, n: int, K: int, cfg: ToyTrainConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(D, n, 2, generator=g)
    y = torch.randint(0, K, (D, n), generator=g)
    inits = [init_params(cfg.sizes(K), g) for _ in range(D)]
    scheds = [draw_schedule(n, cfg, g) for _ in range(D)]
    return x, y, inits, scheds


@pytest.mark.parametrize("depths,D", [((None, 2), 3), (tuple(METHOD_DEPTHS.values()), 2)], ids=["baseline+k2", "all5"])
def test_batched_trainer_equals_one_model_at_a_time(depths, D):
    cfg = ToyTrainConfig(hidden=(16, 16, 16), epochs=2, batch_size=10, lr=1e-2, depths=depths, precision="fp32")
    _assert_batched_equals_reference(cfg, depths, D)


def _assert_batched_equals_reference(cfg: ToyTrainConfig, depths: tuple, D: int):
    """Train every (method, dataset) model stacked and one at a time (``train_reference``); same losses and
    parameters, and every model moved away from its shared initialisation. Returns the problem and the stack."""
    n, K = 40, 3
    x, y, inits, scheds = _small_problem(D, n, K, cfg)
    bm = BatchedMLP(inits, cfg)
    losses = bm.fit(x, y, scheds)  # (M, E)
    assert losses.shape == (len(depths) * D, cfg.epochs)
    for j, k in enumerate(depths):
        for d in range(D):
            ref, ref_losses = train_reference(x[d], y[d], inits[d], scheds[d], k, cfg, K)
            torch.testing.assert_close(losses[j * D + d], ref_losses, rtol=1e-5, atol=1e-6)
            for i, (w, b) in enumerate(bm.model_params(j * D + d)):
                torch.testing.assert_close(w, ref[2 * i].weight.detach().T, rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(b, ref[2 * i].bias.detach(), rtol=1e-4, atol=1e-6)
            # the trained models moved away from the shared initialisation
            assert not torch.allclose(bm.model_params(j * D + d)[1][0], inits[d][1][0])
    return (x, y, inits, scheds), bm


def test_mixup_methods_differ_from_baseline_and_share_init():
    cfg = ToyTrainConfig(hidden=(16, 16, 16), epochs=1, batch_size=10, precision="fp32")
    x, y, inits, scheds = _small_problem(2, 20, 2, cfg)
    bm = BatchedMLP(inits, cfg)
    w0 = bm.params[2].detach().clone()
    D = 2
    for j in range(1, bm.J):  # every method starts from its dataset's initialisation
        torch.testing.assert_close(w0[j * D:(j + 1) * D], w0[:D], rtol=0, atol=0)
    bm.fit(x, y, scheds)
    w = bm.params[2].detach()
    for j in range(1, bm.J):
        assert not torch.allclose(w[j * D:(j + 1) * D], w[:D])


def test_fused_adam_update_matches_torch_adam():
    """The update that torch.compile fuses, run eagerly for 5 steps, against torch.optim.Adam."""
    g = torch.Generator().manual_seed(4)
    p0 = torch.randn(50, generator=g)
    grads = [torch.randn(50, generator=g) for _ in range(5)]
    ref = p0.clone().requires_grad_()
    opt = torch.optim.Adam([ref], lr=1e-2)
    p, m, v, low = p0.clone(), torch.zeros(50), torch.zeros(50), torch.empty(50, dtype=torch.bfloat16)
    for t, gr in enumerate(grads, 1):
        ref.grad = gr.clone()
        opt.step()
        step_size, bc2_sqrt = torch.tensor(1e-2 / (1 - 0.9 ** t)), torch.tensor(math.sqrt(1 - 0.999 ** t))
        _adam_update_fused(p, gr, m, v, low, step_size, bc2_sqrt, 0.9, 0.999, 1e-8)
    torch.testing.assert_close(p, ref.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(low, p.bfloat16(), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_compiled_adam_trains_like_eager(request, optimizer):
    """torch.compile of the Adam (or SGD) update (cold compile: up to a minute): same parameters as the eager one."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("runs torch.compile (up to a minute when inductor's cache is cold); select with -m slow")
    cfg = ToyTrainConfig(hidden=(16, 16, 16), epochs=1, batch_size=10, precision="fp32", optimizer=optimizer,
                         lr=1e-3 if optimizer == "adam" else 0.05)
    x, y, inits, scheds = _small_problem(2, 40, 3, cfg)
    eager, comp = BatchedMLP(inits, cfg), BatchedMLP(inits, cfg, compile=True)
    eager.fit(x, y, scheds)
    comp.fit(x, y, scheds)
    for a, b in zip(eager.params, comp.params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mixer_backward_is_the_adjoint():
    g = torch.Generator().manual_seed(3)
    lam = torch.rand(4, 6, 1, generator=g, dtype=torch.float64)
    perm = torch.rand(4, 6, generator=g).argsort(1)
    mix = _Mixer(lam, perm)
    h = torch.randn(4, 6, 5, dtype=torch.float64, generator=g)
    u = torch.randn(4, 6, 5, dtype=torch.float64, generator=g)
    torch.testing.assert_close((mix.forward(h) * u).sum(), (h * mix.backward(u)).sum())


def test_bf16_training_tracks_fp32():
    cfg32 = ToyTrainConfig(hidden=(128, 128, 128), epochs=2, batch_size=25, precision="fp32")
    cfg16 = ToyTrainConfig(hidden=(128, 128, 128), epochs=2, batch_size=25, precision="bf16")
    x, y, inits, scheds = _small_problem(2, 100, 3, cfg32)
    l32 = BatchedMLP(inits, cfg32).fit(x, y, scheds)
    l16 = BatchedMLP(inits, cfg16).fit(x, y, scheds)
    torch.testing.assert_close(l16, l32, rtol=2e-2, atol=2e-2)


def test_schedule_shapes_and_ranges():
    cfg = ToyTrainConfig(epochs=3, batch_size=7)
    s = draw_schedule(30, cfg, torch.Generator().manual_seed(0))
    assert s.order.shape == s.lam.shape == s.perm.shape == (3, 4, 7)
    for e in range(3):
        assert len(set(s.order[e].flatten().tolist())) == 28  # no example twice in an epoch
    assert torch.equal(s.perm.sort(-1).values, torch.arange(7).expand(3, 4, 7))
    assert bool(((s.lam >= 0) & (s.lam <= 1)).all())


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="precision"):
        ToyTrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="depth 4"):
        ToyTrainConfig(depths=(None, 4))


def test_auto_precision_follows_the_cpu(monkeypatch):
    import embedlab.trainers.studies.toy_depth as td

    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(td, "cpu_has_native_bf16", lambda native=native: native)
        assert resolve_precision("auto") == expected
        assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16")


# ------------------------------------------------------------------------------------------------ study
def test_study_end_to_end_and_resume(tmp_path):
    kw = dict(realisations_per_k=2, ks=(2, 3), epochs=1, n_train=100, n_test=500, mmlb_pairs=500, progress=False,
              hidden=(32, 32, 32), chunk_datasets=2, compile=False)
    res = run_toy_depth(out_dir=tmp_path, **kw)
    on_disk = json.loads((tmp_path / "toy_depth.json").read_text())
    assert on_disk["summary"] == json.loads(json.dumps(res["summary"]))
    methods = list(METHOD_DEPTHS)
    recs = on_disk["records"]
    assert [(r["K"], r["realisation"]) for r in recs] == [(2, 0), (2, 1), (3, 0), (3, 1)]
    for r in recs:
        assert len(r["N_per_class"]) == r["K"] and all(1 <= n <= 8 for n in r["N_per_class"])
        assert 0.05 <= r["sigma"] <= 0.5 and 0 <= r["bayes_risk"] <= 1 and 0 <= r["mmlb"] <= 1
        assert set(r["excess_risk"]) == set(methods)
        for m in methods:
            assert r["excess_risk"][m] == pytest.approx(r["test_risk"][m] - r["bayes_risk"])
    s = on_disk["summary"]
    assert s["n_datasets"] == 4
    assert set(s["all"]["excess_risk_pct"]) == set(methods)
    lo, hi = s["all"]["excess_risk_pct"]["baseline"]["ci95"]
    assert lo <= s["all"]["excess_risk_pct"]["baseline"]["mean"] <= hi
    assert [q["quartile"] for q in s["by_mmlb_quartile"]] == [1, 2, 3, 4]
    assert sum(q["n"] for q in s["by_mmlb_quartile"]) == 4
    assert set(s["corr_mmlb_bayes_risk"]) >= {"pearson", "spearman"}
    # studies return data; the report layer draws their figures (the boundaries from the grid predictions saved)
    assert "figures" not in on_disk and not list(tmp_path.glob("*.png"))
    from embedlab.reports.load import load_study
    from embedlab.reports.study_figures import png_bytes, study_figures

    figs = study_figures(load_study(tmp_path / "toy_depth.json"))
    assert set(figs) == {"excess_vs_mmlb_quartile", "mmlb_vs_bayes_risk", "decision_boundaries"}
    assert all(png_bytes(f).startswith(b"\x89PNG\r\n\x1a\n") for f in figs.values())
    from embedlab.reports.studies import study_section

    shown = study_section(load_study(tmp_path / "toy_depth.json"))["figures"]
    assert [f["name"] for f in shown] == ["excess vs mmlb quartile", "mmlb vs bayes risk", "decision boundaries"]
    assert all(f["uri"].startswith("data:image/png;base64,") for f in shown)
    assert not (tmp_path / "toy_depth.partial.json").exists()
    assert on_disk["config"]["train"]["precision"] == on_disk["timing"]["precision"] == resolve_precision("auto")

    # resume: a partial file with the first K done is picked up, the rest recomputed identically
    from embedlab.io import atomic_write_json

    atomic_write_json(tmp_path / "toy_depth.partial.json", {"config": on_disk["config"], "records": recs[:2]})
    again = run_toy_depth(out_dir=tmp_path, **kw)
    assert again["timing"]["resumed_datasets"] == 2
    assert json.loads(json.dumps(again["records"])) == recs


# ------------------------------------------------------------------------- protocol options (issue #14 item 6)
def test_sgd_batched_trainer_equals_one_model_at_a_time():
    """SGD with momentum 0.9, stacked over models, against torch.optim.SGD one model at a time (float32)."""
    depths, D = tuple(METHOD_DEPTHS.values()), 2
    cfg = ToyTrainConfig(hidden=(16, 16, 16), epochs=2, batch_size=10, lr=0.05, depths=depths, precision="fp32",
                         optimizer="sgd")
    (x, y, inits, scheds), bm = _assert_batched_equals_reference(cfg, depths, D)
    # and SGD is not Adam: the same problem under Adam ends elsewhere
    adam = BatchedMLP(inits, dataclasses.replace(cfg, optimizer="adam"))
    adam.fit(x, y, scheds)
    assert not torch.allclose(adam.params[2], bm.params[2])


def test_sgd_update_matches_torch_sgd():
    """The SGD update that torch.compile fuses, run eagerly for 5 steps (buffer from zero), against torch.optim.SGD."""
    from embedlab.trainers.studies.toy_depth import _sgd_update_fused

    g = torch.Generator().manual_seed(5)
    p0 = torch.randn(50, generator=g)
    grads = [torch.randn(50, generator=g) for _ in range(5)]
    ref = p0.clone().requires_grad_()
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9)
    p, buf, low = p0.clone(), torch.zeros(50), torch.empty(50, dtype=torch.bfloat16)
    for gr in grads:
        ref.grad = gr.clone()
        opt.step()
        _sgd_update_fused(p, gr, buf, low, torch.tensor(0.1), 0.9)
    torch.testing.assert_close(p, ref.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(low, p.bfloat16(), rtol=0, atol=0)


def test_optimizer_config_rejects_bad_values():
    with pytest.raises(ValueError, match="optimizer"):
        ToyTrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="momentum"):
        ToyTrainConfig(optimizer="sgd", momentum=1.0)
    with pytest.raises(ValueError, match="mean_range"):
        run_toy_depth(out_dir="unused", mean_range=0.0, progress=False)


def test_mean_range_scales_the_means():
    from embedlab.trainers.studies.toy_depth import make_dataset

    base = make_dataset(0, 3, 1, 100, 200)
    wide = make_dataset(0, 3, 1, 100, 200, mean_range=3.0)
    assert wide.spec.sigma == base.spec.sigma and wide.spec.priors == base.spec.priors
    for mu0, mu3 in zip(base.spec.means, wide.spec.means):
        np.testing.assert_allclose(mu3, 3.0 * np.asarray(mu0), rtol=1e-15)
        assert np.abs(mu3).max() <= 3.0
    assert max(np.abs(mu).max() for mu in wide.spec.means) > 1.0
    np.testing.assert_array_equal(wide.y_train, base.y_train)  # same random stream: only the geometry changes
    assert np.abs(wide.x_train).max() > np.abs(base.x_train).max()
    same = make_dataset(0, 3, 1, 100, 200, mean_range=1.0)
    np.testing.assert_array_equal(same.x_train, base.x_train)


def test_protocol_options_recorded_and_resume_checks_them(tmp_path):
    kw = dict(realisations_per_k=1, ks=(2,), epochs=1, n_test=300, mmlb_pairs=200, progress=False,
              hidden=(8, 8, 8), compile=False)
    res = run_toy_depth(out_dir=tmp_path / "a", optimizer="sgd", lr=0.05, n_train=150, mean_range=2.5, **kw)
    c = json.loads((tmp_path / "a" / "toy_depth.json").read_text())["config"]
    assert c["train"]["optimizer"] == "sgd" and c["train"]["lr"] == 0.05 and c["train"]["momentum"] == 0.9
    assert c["n_train"] == 150 and c["mean_range"] == 2.5 and c["optimizer"].startswith("SGD")
    assert res["config"]["epochs"] == 1
    default = run_toy_depth(out_dir=tmp_path / "b", n_train=100, **kw)["config"]
    assert default["train"]["optimizer"] == "adam" and default["train"]["lr"] == 1e-3
    assert default["mean_range"] == 1.0 and default["optimizer"].startswith("Adam")
    # n_train sets the training-set size: the schedule covers floor(n / 50) batches per epoch
    from embedlab.trainers.studies.toy_depth import make_dataset

    assert make_dataset(0, 2, 0, 150, 10).x_train.shape == (150, 2)
    # a partial file from other options is not resumed; one from the same options is
    from embedlab.io import atomic_write_json

    recs = json.loads((tmp_path / "b" / "toy_depth.json").read_text())["records"]
    for other in (dict(optimizer="sgd"), dict(lr=1e-2), dict(n_train=200), dict(mean_range=3.0)):
        atomic_write_json(tmp_path / "b" / "toy_depth.partial.json", {"config": default, "records": recs})
        again = run_toy_depth(out_dir=tmp_path / "b", **{"n_train": 100, **kw, **other})
        assert again["timing"]["resumed_datasets"] == 0, other
    atomic_write_json(tmp_path / "b" / "toy_depth.partial.json", {"config": default, "records": recs})
    assert run_toy_depth(out_dir=tmp_path / "b", n_train=100, **kw)["timing"]["resumed_datasets"] == 1


def test_study_cli_protocol_flags(monkeypatch, tmp_path, capsys):
    """The toy-depth flags reach run_toy_depth; bad values are one-line errors (exit 2)."""
    import subprocess
    import sys

    import embedlab.trainers.studies.toy_depth as td
    from embedlab.cli import build_parser, main

    a = build_parser().parse_args(["study", "toy-depth", "--out", "x"])
    assert (a.optimizer, a.lr, a.n_train, a.mean_range) == ("adam", 1e-3, 1000, 1.0)
    seen = {}
    import dataclasses

    from embedlab.trainers.studies import STUDIES

    entry = STUDIES.get("toy-depth")
    assert entry.obj is td.run_toy_depth  # the registered study is the module's function
    monkeypatch.setitem(STUDIES._entries, "toy-depth",
                        dataclasses.replace(entry, obj=lambda **kw: seen.update(kw) or {"summary": {}}))
    assert main(["study", "toy-depth", "--out", str(tmp_path), "--optimizer", "sgd", "--lr", "0.1", "--n-train",
                 "200", "--mean-range", "3", "--epochs", "7"]) == 0
    got = (seen["optimizer"], seen["lr"], seen["n_train"], seen["mean_range"], seen["epochs"])
    assert got == ("sgd", 0.1, 200, 3.0, 7)
    capsys.readouterr()
    for flag, value, pattern in (("--optimizer", "rmsprop", "invalid choice"), ("--lr", "0", "positive number"),
                                 ("--n-train", "49", "integer >= 50"), ("--mean-range", "-1", "positive number")):
        proc = subprocess.run([sys.executable, "-m", "embedlab", "study", "toy-depth", "--out", str(tmp_path / "e"),
                               flag, value], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr and flag in lines[0] and pattern in lines[0], lines
