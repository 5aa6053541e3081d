"""OOD detection: every score against its paper's formula written naively, the metrics against scikit-learn and a
brute-force loop, orientation, OOD sets, the two analyses end to end, and (where installed) pytorch-ood."""
from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from embedlab.analyses import ood as A
from embedlab.metrics import ood as O
from embedlab.analyses.registry import ANALYSES, Inputs
from embedlab.data import TensorData, create_dataset
from embedlab.errors import EmbedlabError
from embedlab.models import create_model
from embedlab.oodsets import build_ood_sets, default_ood_specs, noise_images
from embedlab.store import Extracted

C, D = 4, 6


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ synthetic data
def _head(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(C, D, generator=g), torch.randn(C, generator=g)


def _embeddings(n: int, seed: int, ood: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """ID: class means in the first 3 dims + small noise; OOD: near the origin there, large in the last 3 dims."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    means = torch.zeros(C, D)
    means[:, :3] = 3.0 * torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-0.6, -0.6, -0.6]])
    if ood:
        z = 0.3 * torch.randn(n, D, generator=g)
        z[:, 3:] += 3.0 * torch.randn(n, 3, generator=g)
        return z, torch.full((n,), -1)
    return means[y] + 0.5 * torch.randn(n, D, generator=g), y


@pytest.fixture(scope="module")
def syn():
    w, b = _head()
    z_tr, y_tr = _embeddings(300, 1)
    z_te, y_te = _embeddings(80, 2)
    z_ood, _ = _embeddings(60, 3, ood=True)
    return {"w": w, "b": b, "z_tr": z_tr, "y_tr": y_tr, "z_te": z_te, "y_te": y_te, "z_ood": z_ood}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _logsumexp(v: np.ndarray) -> float:
    m = v.max()
    return float(m + math.log(sum(math.exp(x - m) for x in v)))


# ------------------------------------------------------------------------------------------------ logit scores
def test_logit_scores_match_their_formulas():
    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(0)) * 4
    msp, ml, en = O.msp_score(logits), O.maxlogit_score(logits), O.energy_score(logits)
    en_t = O.energy_score(logits, temperature=3.0)
    for i, row in enumerate(_np(logits)):
        e = [math.exp(v) for v in row]
        assert msp[i].item() == pytest.approx(max(e) / sum(e), rel=1e-12)
        assert ml[i].item() == pytest.approx(max(row), rel=1e-12)
        assert en[i].item() == pytest.approx(math.log(sum(e)), rel=1e-12)
        assert en_t[i].item() == pytest.approx(3.0 * math.log(sum(math.exp(v / 3.0) for v in row)), rel=1e-12)
    assert msp.dtype == torch.float64 and msp.shape == (50,)


def test_doctests():
    assert doctest.testmod(O, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


# ------------------------------------------------------------------------------------------------ Mahalanobis
def test_mahalanobis_matches_inverse_of_tied_covariance(syn):
    z, y = _np(syn["z_tr"]), syn["y_tr"].numpy()
    means = np.stack([z[y == c].mean(0) for c in range(C)])
    cov = sum((z[y == c] - means[c]).T @ (z[y == c] - means[c]) for c in range(C)) / len(z)
    prec = np.linalg.inv(cov)
    fit = O.fit_mahalanobis(syn["z_tr"], syn["y_tr"], C)
    for zs in (syn["z_te"], syn["z_ood"]):
        expect = [-min(float((x - m) @ prec @ (x - m)) for m in means) for x in _np(zs)]
        np.testing.assert_allclose(O.mahalanobis_score(zs, fit, chunk=7).numpy(), expect, rtol=1e-9)


def test_mahalanobis_rank_deficient_and_missing_class(syn):
    z = torch.cat([syn["z_tr"], torch.zeros(len(syn["z_tr"]), 2)], dim=1)  # two dead units: singular Σ
    fit = O.fit_mahalanobis(z, syn["y_tr"], C)
    s = O.mahalanobis_score(torch.cat([syn["z_te"], torch.zeros(len(syn["z_te"]), 2)], dim=1), fit)
    ref = O.mahalanobis_score(syn["z_te"], O.fit_mahalanobis(syn["z_tr"], syn["y_tr"], C))
    np.testing.assert_allclose(s.numpy(), ref.numpy(), rtol=1e-7)  # the pseudo-inverse ignores the dead units
    with pytest.raises(ValueError, match=r"classes \[4\] have no training embeddings"):
        O.fit_mahalanobis(syn["z_tr"], syn["y_tr"], C + 1)


# ------------------------------------------------------------------------------------------------ KNN
@pytest.mark.parametrize("k", [1, 5, 50])
def test_knn_matches_brute_force(syn, k):
    bank = _np(syn["z_tr"])
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    got = O.knn_score(syn["z_tr"], syn["z_ood"], k=k).numpy()
    for i, q in enumerate(_np(syn["z_ood"])):
        q = q / np.linalg.norm(q)
        dist = sorted(float(np.sqrt(((q - b) ** 2).sum())) for b in bank)
        assert got[i] == pytest.approx(-dist[k - 1], abs=1e-6)
    with pytest.raises(ValueError, match="k must be in"):
        O.knn_score(syn["z_tr"][:10], syn["z_te"], k=11)


# ------------------------------------------------------------------------------------------------ ViM
def test_vim_follows_the_papers_steps(syn):
    from scipy.special import logsumexp
    from sklearn.covariance import EmpiricalCovariance

    w, b = _np(syn["w"]), _np(syn["b"])
    z_tr = _np(syn["z_tr"])
    dim = D // 2
    u = -np.linalg.pinv(w) @ b  # origin
    ec = EmpiricalCovariance(assume_centered=True).fit(z_tr - u)
    vals, vecs = np.linalg.eig(ec.covariance_)
    ns = np.real(vecs[:, np.argsort(-np.real(vals))[dim:]])  # the d − D least-variance directions
    alpha = (z_tr @ w.T + b).max(-1).mean() / np.linalg.norm((z_tr - u) @ ns, axis=-1).mean()
    fit = O.fit_vim(syn["z_tr"], syn["w"], syn["b"])
    assert fit.dim == dim and fit.alpha == pytest.approx(alpha, rel=1e-9)
    for zs in (syn["z_te"], syn["z_ood"]):
        x = _np(zs)
        expect = -(alpha * np.linalg.norm((x - u) @ ns, axis=-1) - logsumexp(x @ w.T + b, axis=-1))
        np.testing.assert_allclose(O.vim_score(zs, fit).numpy(), expect, rtol=1e-9, atol=1e-9)
    assert [O.vim_default_dim(n) for n in (6, 512, 767, 768, 1024, 2047, 2048, 4096)] == \
        [3, 256, 383, 512, 512, 512, 1000, 1000]
    with pytest.raises(ValueError, match="principal dimension"):
        O.fit_vim(syn["z_tr"], syn["w"], syn["b"], dim=D)


# ------------------------------------------------------------------------------------------------ ReAct
def test_react_clips_at_train_percentile_then_energy(syn):
    z_tr = _np(syn["z_tr"])
    c = float(np.percentile(z_tr.ravel(), 90))
    assert O.react_threshold(syn["z_tr"]) == pytest.approx(c, rel=1e-12)
    w, b = _np(syn["w"]), _np(syn["b"])
    got = O.react_score(syn["z_ood"], syn["w"], syn["b"], c).numpy()
    for i, x in enumerate(_np(syn["z_ood"])):
        h = [min(v, c) for v in x]
        logits = np.array([sum(w[j, t] * h[t] for t in range(D)) + b[j] for j in range(C)])
        assert got[i] == pytest.approx(_logsumexp(logits), rel=1e-10)


# ------------------------------------------------------------------------------------------------ ODIN
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("cnn-gap", 4, (1, 8, 8), width=8)
    with torch.no_grad():  # non-trivial BatchNorm statistics, then eval
        model.train()
        for _ in range(3):
            model(torch.rand(32, 1, 8, 8))
    return model.eval()


def test_odin_matches_per_example_autograd_loop(tiny):
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    T, eps = 1000.0, 0.0014
    tiny.train()  # the function must switch to eval and back
    got = O.odin_score(tiny, x, T, eps)
    assert tiny.training
    assert all(p.grad is None for p in tiny.parameters())
    tiny.eval()
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_(True)
        logits = tiny(xi)[0].double()
        top = int(logits.argmax())
        log_s = torch.log_softmax(logits / T, dim=0)[top]
        log_s.backward()
        x_tilde = xi.detach() - eps * torch.sign(-xi.grad)
        with torch.no_grad():
            expect = torch.softmax(tiny(x_tilde)[0].double() / T, dim=0).max().item()
        assert got[i].item() == pytest.approx(expect, abs=1e-9)
    # ε = 0: plain MSP at temperature T; batched over a dataset in order
    with torch.no_grad():
        msp_t = torch.softmax(tiny(x).double() / T, dim=1).max(1).values
    np.testing.assert_allclose(O.odin_score(tiny, x, T, 0.0).numpy(), msp_t.numpy(), rtol=1e-12)
    ds = A.odin_dataset_scores(tiny, TensorData(x, torch.zeros(12)), batch_size=5)
    np.testing.assert_allclose(ds.numpy(), got.numpy(), atol=1e-9)


# ------------------------------------------------------------------------------------------------ metrics
def _fpr95_brute(s_in: np.ndarray, s_out: np.ndarray) -> float:
    """The largest threshold that accepts (score ≥ t) at least 95 % of ID; FPR = OOD fraction accepted."""
    best = None
    for t in sorted(set(s_in.tolist()), reverse=True):
        if np.mean(s_in >= t) >= 0.95:
            best = t
            break
    return float(np.mean(s_out >= best))


@pytest.mark.parametrize("seed,n_in,n_out,decimals", [(0, 100, 80, None), (1, 37, 53, 1), (2, 20, 200, 0),
                                                      (3, 7, 3, None), (4, 400, 100, 2)])
def test_ood_metrics_match_sklearn_and_brute_force(seed, n_in, n_out, decimals):
    rng = np.random.default_rng(seed)
    s_in, s_out = rng.normal(1.0, 1.0, n_in), rng.normal(0.0, 1.0, n_out)
    if decimals is not None:  # ties within and across the two sets
        s_in, s_out = s_in.round(decimals), s_out.round(decimals)
    y = np.r_[np.ones(n_in), np.zeros(n_out)]
    s = np.r_[s_in, s_out]
    m = O.ood_metrics(torch.from_numpy(s_in), s_out)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    assert m["fpr95"] == pytest.approx(_fpr95_brute(s_in, s_out), abs=1e-12)
    mw = np.mean([(a > b) + 0.5 * (a == b) for a in s_in for b in s_out])  # Mann–Whitney
    assert m["auroc"] == pytest.approx(mw, abs=1e-12)


def test_ood_metrics_degenerate_and_extremes():
    same = np.full(30, 0.7)
    m = O.ood_metrics(same, same)
    assert m == {"auroc": 0.5, "aupr_in": 0.5, "aupr_out": 0.5, "fpr95": 1.0}
    m = O.ood_metrics(np.arange(10, 20.0), np.arange(10.0))
    assert m == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    assert O.ood_metrics(np.arange(10.0), np.arange(10, 20.0))["auroc"] == 0.0
    # FPR95 ties at τ: 20 ID scores, τ = the 19th largest = 1.0 (tied with the 20th); OOD at τ are accepted
    m = O.ood_metrics(np.r_[np.full(2, 1.0), np.full(18, 2.0)], np.r_[1.0, 0.0, 0.0, 3.0])
    assert m["fpr95"] == 0.5
    with pytest.raises(ValueError, match="non-finite"):
        O.ood_metrics(np.array([1.0, np.nan]), np.array([0.0]))
    with pytest.raises(ValueError, match="scores_out is empty"):
        O.ood_metrics(np.array([1.0]), np.array([]))


def test_histogram_and_roc_points():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(size=1000), rng.normal(1, 1, size=700)
    h = O.histogram(s_in, s_out)
    assert len(h["edges"]) == 41 and len(h["id"]) == len(h["ood"]) == 40
    assert sum(h["id"]) == 1000 and sum(h["ood"]) == 700
    assert h["edges"][0] == min(s_in.min(), s_out.min()) and h["edges"][-1] == max(s_in.max(), s_out.max())
    fpr, tpr = O.roc_points(s_in, s_out)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0) and np.all(np.diff(fpr) >= 0)
    assert O.histogram(np.ones(3), np.ones(2))["id"][19:21] in ([3, 0], [0, 3])


# ------------------------------------------------------------------------------------------------ orientation
def test_every_embedding_and_logit_score_ranks_id_above_ood(syn):
    """Higher = ID: peaked ID logits vs flat OOD logits; ID embeddings near class means vs OOD ones off their span,
    with a classifier aligned to the class means (so OOD logits are flat too)."""
    ood_logits = 0.01 * torch.randn(60, C, generator=torch.Generator().manual_seed(9))  # flat
    id_logits = 10.0 * torch.nn.functional.one_hot(syn["y_te"], C).float()  # peaked
    fit = A.FitInputs(syn["z_tr"], syn["y_tr"], C, options={"knn_k": 50})
    for name in ("msp", "maxlogit", "energy"):
        sc, _ = A.OOD_SCORES.get(name).obj(fit)
        s_in, s_out = sc(A.ScoredSet(syn["z_te"], id_logits)), sc(A.ScoredSet(syn["z_ood"], ood_logits))
        assert O.ood_metrics(s_in, s_out)["auroc"] == 1.0, name
    y = syn["y_tr"]
    w = torch.stack([syn["z_tr"][y == c].mean(0) for c in range(C)])  # (C, D)
    b = torch.zeros(C)
    fit = A.FitInputs(syn["z_tr"], y, C, weight=w, bias=b, options={"knn_k": 50})
    for name in ("mahalanobis", "knn", "vim", "react"):
        sc, _ = A.OOD_SCORES.get(name).obj(fit)
        s_in = sc(A.ScoredSet(syn["z_te"], syn["z_te"] @ w.T + b))
        s_out = sc(A.ScoredSet(syn["z_ood"], syn["z_ood"] @ w.T + b))
        assert O.ood_metrics(s_in, s_out)["auroc"] > 0.95, name


# ------------------------------------------------------------------------------------------------ OOD sets
def test_build_ood_sets_noise_shapes_and_determinism():
    digits = create_dataset("digits")
    sets = build_ood_sets(["gaussian", "uniform"], digits)
    assert list(sets) == ["gaussian", "uniform"]
    for ds in sets.values():
        x, y = ds.__getitems__(list(range(len(ds))))
        assert x.shape == (360, 1, 8, 8) and x.dtype == torch.float32 and (y == -1).all()
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    g = sets["gaussian"].x
    assert abs(float(g.mean()) - 0.5) < 0.01 and 0.2 < float(g.std()) < 0.25  # clipping shrinks σ = 0.25 a little
    assert abs(float(sets["uniform"].x.std()) - (1 / 12) ** 0.5) < 0.01
    again = build_ood_sets(["uniform", "gaussian"], digits, seed=0)  # order does not matter
    assert torch.equal(again["gaussian"].x, g) and torch.equal(again["uniform"].x, sets["uniform"].x)
    other = build_ood_sets(["gaussian"], digits, seed=1, n=17)["gaussian"].x
    assert other.shape == (17, 1, 8, 8) and not torch.equal(other, g[:17])
    assert torch.equal(noise_images("gaussian", 17, (1, 8, 8), 1), other)
    assert default_ood_specs(digits) == ["gaussian", "uniform"]


def test_build_ood_sets_heldout_and_datasets(tmp_path):
    sub = create_dataset("digits", classes=(0, 1, 2, 3, 4, 5))
    assert default_ood_specs(sub) == ["heldout", "gaussian", "uniform"]
    sets = build_ood_sets(default_ood_specs(sub) + ["digits"], sub)
    assert len(sets["heldout"]) + len(sub.split("test")) == 360
    assert len(sets["gaussian"]) == len(sub.split("test"))
    x, y = sets["heldout"].__getitems__([0, 1, 2])
    assert x.shape == (3, 1, 8, 8) and (y == -1).all()
    x, y = sets["digits"].__getitems__([0, 1])
    assert len(sets["digits"]) == 360 and (y == -1).all() and sets["digits"][0][1].item() == -1


def test_build_ood_sets_errors(tmp_path):
    digits = create_dataset("digits")
    with pytest.raises(EmbedlabError) as e:
        build_ood_sets(["heldout"], digits)
    assert str(e.value) == ("OOD set 'heldout' needs a model trained on a subset of digits's classes: train with "
                            "--data-opt classes=... (e.g. classes=0,1,2,3,4,5)")
    with pytest.raises(EmbedlabError) as e:
        build_ood_sets(["toy-gmm"], digits)
    assert str(e.value) == ("OOD set 'toy-gmm' has input shape (2,) but the model's dataset 'digits' has (1, 8, 8); "
                            "choose a set with the same shape")
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "tex" / split / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "tex" / split / "a" / "0.png")
    with pytest.raises(EmbedlabError) as e:
        build_ood_sets([f"imagefolder:{tmp_path / 'tex'}/"], digits)
    assert str(e.value) == ("OOD set 'imagefolder:tex' has input shape (3, 8, 8) but the model's dataset 'digits' "
                            "has (1, 8, 8); choose a set with the same shape")
    with pytest.raises(EmbedlabError) as e:
        build_ood_sets(["gausian"], digits)
    assert str(e.value).startswith("unknown OOD set 'gausian' (did you mean 'gaussian'?); known: gaussian, uniform, "
                                   "heldout, or a dataset name: cifar10, ")
    with pytest.raises(EmbedlabError, match="^OOD set 'uniform' is given twice$"):
        build_ood_sets(["uniform", "uniform"], digits)
    with pytest.raises(EmbedlabError, match="^no OOD sets given"):
        build_ood_sets([" "], digits)


# ------------------------------------------------------------------------------------------------ analyses
def _extracted(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> Extracted:
    return Extracted(z.numpy(), (z @ w.T + b).numpy(), y.numpy())


def _inputs(syn, model=None) -> Inputs:
    w, b = syn["w"], syn["b"]
    splits = {"train": _extracted(syn["z_tr"], w, b, syn["y_tr"]), "test": _extracted(syn["z_te"], w, b, syn["y_te"])}
    far, _ = _embeddings(50, 4, ood=True)
    ood = {"far": _extracted(syn["z_ood"], w, b, torch.full((60,), -1)), "far2": _extracted(far, w, b, -torch.ones(50))}
    return Inputs(splits, C, model=model, ood=ood)


def test_ood_logits_analysis_without_model_skips_vim_and_react(syn):
    out = ANALYSES.get("ood_logits").obj(_inputs(syn))
    assert set(out.plots["skipped_scores"]) == {"vim", "react"}
    scores = ["energy", "knn", "mahalanobis", "maxlogit", "msp"]
    expect = {f"ood/{s}/{n}/{k}" for s in ("far", "far2") for n in scores for k in ("auroc", "aupr_in", "aupr_out", "fpr95")}
    expect |= {f"ood/mean/{n}/{k}" for n in scores for k in ("auroc", "fpr95")}
    assert set(out.metrics) == expect
    m = out.metrics["ood/far/knn/fpr95"]
    assert m["higher_is_better"] is False and m["analysis"] == "ood_logits" and m["settings"]["k"] == 50
    assert out.metrics["ood/far/knn/auroc"]["higher_is_better"] is True
    assert out.metrics["ood/far/mahalanobis/auroc"]["value"] > 0.95
    auroc = O.ood_metrics(O.msp_score(torch.from_numpy(_inputs(syn).splits["test"].logits)),
                          O.msp_score(torch.from_numpy(_inputs(syn).ood["far"].logits)))["auroc"]
    assert out.metrics["ood/far/msp/auroc"]["value"] == auroc
    json.dumps(out.plots)
    roc = out.plots["sets"]["far"]["msp"]["roc"]
    assert len(roc["fpr"]) <= 200 and len(out.plots["sets"]["far"]["msp"]["hist"]["id"]) == 40
    assert out.arrays["scores/id/msp"].shape == (80,) and out.arrays["scores/far2/knn"].shape == (50,)


def test_analysis_settings_and_errors(syn):
    fn = ANALYSES.get("ood_logits").obj
    out = fn(_inputs(syn), scores="msp,knn", knn_k=3)
    assert {k.split("/")[2] for k in out.metrics if k.startswith("ood/far/")} == {"msp", "knn"}
    assert out.metrics["ood/far/knn/auroc"]["settings"]["k"] == 3
    with pytest.raises(EmbedlabError, match="run analysis 'ood' instead of 'ood_logits'"):
        fn(_inputs(syn), scores=["odin"])
    with pytest.raises(EmbedlabError, match=r"unknown OOD score 'mahalanobi' \(did you mean 'mahalanobis'\?\)"):
        fn(_inputs(syn), scores="mahalanobi")
    with pytest.raises(EmbedlabError, match="knn_k=500 exceeds the 300 training embeddings"):
        fn(_inputs(syn), scores="knn", knn_k=500)
    assert ANALYSES.get("ood").meta["needs"] == ("train", "test", "logits", "model", "test_data", "ood", "ood_data")
    assert ANALYSES.get("ood_logits").meta["needs"] == ("train", "test", "logits", "ood")
    assert [e.name for e in A.OOD_SCORES if e.meta["needs_grad"]] == ["odin"]


def test_ood_analysis_end_to_end_through_the_runner(tmp_path):
    """Train a tiny cnn-gap on digits 0–5 briefly, then analyse it against held-out digits and noise."""
    from embedlab.analyses.runner import Source, analyze_source

    torch.manual_seed(0)
    data = create_dataset("digits", classes=(0, 1, 2, 3, 4, 5))
    model = create_model("cnn-gap", 6, (1, 8, 8), width=8)
    x, y = data.split("train").__getitems__(list(range(len(data.split("train")))))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for step in range(60):
        idx = torch.randint(0, len(y), (64,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    src = Source("tiny", tmp_path / "tiny.safetensors", "0" * 64, {"dataset": {"name": "digits"}}, data.info.classes,
                 model=model, data=data)
    out = analyze_source(src, tmp_path / "out", analyses=["ood"], cache_dir=tmp_path / "cache", progress=False,
                         settings={"ood": {"knn_k": 20, "max_examples": 60}})  # default sets: heldout + noise
    res = json.loads((out / "results.json").read_text())
    m = res["metrics"]
    for s in ("heldout", "gaussian", "uniform"):
        for n in A.OOD_SCORES.names():
            assert 0.0 <= m[f"ood/{s}/{n}/auroc"]["value"] <= 1.0
    assert m["ood/gaussian/odin/auroc"]["settings"]["n_id"] == 60
    assert m["ood/gaussian/odin/auroc"]["settings"]["n_ood"] == 60
    assert m["ood/gaussian/msp/auroc"]["settings"]["n_ood"] == len(data.split("test"))
    # orientation on a briefly trained model: every score ranks ID digits above held-out digits and uniform noise
    # (a sign error would give AUROC < 0.5; seen: heldout 0.94–0.98, uniform 0.75–1.0), feature-space scores best
    for n in A.OOD_SCORES.names():
        assert m[f"ood/heldout/{n}/auroc"]["value"] > 0.85 and m[f"ood/uniform/{n}/auroc"]["value"] > 0.65, n
    for n in ("mahalanobis", "knn", "vim"):
        assert m[f"ood/uniform/{n}/auroc"]["value"] > 0.9, n
    assert res["plots"]["ood"]["skipped_scores"] == {}
    assert set(res["plots"]["ood"]["sets"]) == {"heldout", "gaussian", "uniform"}
    # near (held-out classes) and far (noise) reported apart: the near mean is heldout's, the far mean the noise sets'
    for n in A.OOD_SCORES.names():
        for key in ("auroc", "fpr95"):
            assert m[f"ood/near/{n}/{key}"]["value"] == pytest.approx(m[f"ood/heldout/{n}/{key}"]["value"])
            far = (m[f"ood/gaussian/{n}/{key}"]["value"] + m[f"ood/uniform/{n}/{key}"]["value"]) / 2
            assert m[f"ood/far/{n}/{key}"]["value"] == pytest.approx(far)
            allm = (m[f"ood/heldout/{n}/{key}"]["value"] + 2 * far) / 3
            assert m[f"ood/mean/{n}/{key}"]["value"] == pytest.approx(allm)
    assert m["ood/near/msp/auroc"]["settings"]["over_sets"] == ["heldout"]
    assert m["ood/far/msp/auroc"]["settings"]["over_sets"] == ["gaussian", "uniform"]
    assert m["ood/heldout/msp/auroc"]["settings"]["group"] == "near"
    assert m["ood/far/msp/auroc"]["table"].startswith("mean over far-OOD sets")


def test_ood_groups_near_and_far_with_dataset_prefixes(tmp_path):
    from embedlab.oodsets import ood_group, set_group

    from PIL import Image

    assert [ood_group(s) for s in ("heldout", "gaussian", "uniform", "svhn", "near:svhn", "far:imagefolder:/x")] == [
        "near", "far", "far", None, "near", "far"]
    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / split / c / f"{i}.png")
    sets = build_ood_sets(["gaussian", f"near:imagefolder:{root}"], create_dataset("imagefolder", str(root)), n=5)
    assert list(sets) == ["gaussian", "imagefolder:imgs"]  # the prefix is not part of the set's name
    assert set_group("imagefolder:imgs", sets["imagefolder:imgs"]) == "near"
    assert set_group("gaussian", sets["gaussian"]) == "far"


# ------------------------------------------------------------------------------------------------ pytorch-ood
def test_matches_pytorch_ood(syn, tiny):
    """pytorch-ood returns outlier scores (higher = OOD): ours = −theirs, except Mahalanobis, whose covariance is the
    unnormalised scatter N·Σ (+1e-6 I) and whose score is half the distance: ours = −2N·theirs."""
    pood = pytest.importorskip("pytorch_ood.detector", exc_type=ImportError)
    w, b = syn["w"], syn["b"]
    logits = syn["z_ood"] @ w.T + b
    np.testing.assert_allclose(O.msp_score(logits).numpy(), -pood.MaxSoftmax(None).predict_logits(logits).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(O.maxlogit_score(logits).numpy(), -pood.MaxLogit(None).predict_logits(logits).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(O.energy_score(logits).numpy(), -pood.EnergyBased(None).predict_logits(logits).numpy(),
                               rtol=1e-6)
    z_tr, y_tr, zq = syn["z_tr"], syn["y_tr"], torch.cat([syn["z_te"], syn["z_ood"]])
    maha = pood.Mahalanobis(None).fit_features(z_tr, y_tr)
    np.testing.assert_allclose(O.mahalanobis_score(zq, O.fit_mahalanobis(z_tr, y_tr, C)).numpy(),
                               -2 * len(z_tr) * maha.predict_features(zq).numpy(), rtol=1e-4)
    knn = pood.KNN(None, k=50).fit_features(z_tr, y_tr)
    np.testing.assert_allclose(O.knn_score(z_tr, zq, 50).numpy(), -knn.predict_features(zq).numpy(), atol=1e-5)
    vim = pood.ViM(None, d=D // 2, w=w, b=b).fit_features(z_tr, y_tr)
    ours = O.fit_vim(z_tr, w, b)
    assert ours.alpha == pytest.approx(vim.alpha, rel=1e-4)
    np.testing.assert_allclose(O.vim_score(zq, ours).numpy(), -vim.predict_features(zq).numpy(), rtol=1e-4, atol=1e-4)
    head = torch.nn.Linear(D, C)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    react = pood.ReAct(lambda v: v, head, percentile=0.9).fit_feature_maps(z_tr, y_tr)
    assert O.react_threshold(z_tr, 90) == pytest.approx(react.threshold, rel=1e-6)
    np.testing.assert_allclose(O.react_score(zq, w, b, react.threshold).numpy(),
                               -react.predict_feature_maps(zq).numpy(), rtol=1e-5)
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    odin = pood.ODIN(tiny, eps=0.0014, temperature=1000.0)
    np.testing.assert_allclose(O.odin_score(tiny, x).numpy(), -odin.predict(x).detach().numpy(), atol=1e-6)


def test_ood_logits_is_not_run_twice_beside_ood(tmp_path):
    """`--analyses all` on a model: ood computes every gradient-free score too, under the same metric names, so
    ood_logits is skipped with the reason instead of computing them a second time (and overwriting them)."""
    import json

    import numpy as np

    from embedlab.analyses.runner import analyze_path

    from tests.test_hostile_input import _checkpoint

    ckpt = _checkpoint(tmp_path / "m.safetensors")
    out = analyze_path(ckpt, tmp_path / "res", analyses=["ood", "ood_logits"], cache_dir=tmp_path / "c",
                       progress=False, settings={}, ood=["gaussian"])
    r = json.loads((out / "results.json").read_text())
    assert "ood computes the same metrics" in r["skipped"]["ood_logits"]
    assert {m["analysis"] for m in r["metrics"].values()} == {"ood"}
    assert "ood/gaussian/energy/auroc" in r["metrics"] and "ood/gaussian/odin/auroc" in r["metrics"]
    assert np.isfinite(r["metrics"]["ood/gaussian/msp/auroc"]["value"])
