"""Adversarial robustness analysis: torchattacks wrappers, ε grids, model state, seeding, runner-style inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torchattacks")

from embedlab.metrics import robustness as R  # noqa: E402
from embedlab.analyses.registry import ANALYSES, Inputs  # noqa: E402
from embedlab.data import TensorData, create_dataset  # noqa: E402
from embedlab.errors import EmbedlabError  # noqa: E402
from embedlab.models import EmbedNet, create_model  # noqa: E402

LINF_GRID = (0, 2, 4, 8, 16, 32)  # /255; digits pixels are multiples of 1/16, so ε ≥ 16/255 is where they break
L2_GRID = (0.125, 0.25, 0.5, 1.0)
N_SUBSET = 128


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models gain nothing from a second intra-op thread, and on a shared 2-core machine two spinning OpenMP
    # threads ran training ~100x slower (measured: 22 s vs 0.2 s for 200 MLP steps under load ≈ 6).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _few_threads():
    """Overrides conftest's per-test ``torch.set_num_threads(2)`` (see ``_one_thread``)."""
    yield


@pytest.fixture(scope="module")
def digits():
    return create_dataset("digits")


def _train(digits, name: str, steps: int = 200, **options) -> EmbedNet:
    torch.manual_seed(0)
    model = create_model(name, 10, (1, 8, 8), digits.info.mean, digits.info.std, **options)
    train = digits.split("train")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(train), (128,), generator=g)
        loss = nn.functional.cross_entropy(model(train.x[idx]), train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def cnn(digits) -> EmbedNet:
    """cnn-gap (BatchNorm: train/eval mode matters), ~98 % test accuracy on digits after 200 Adam steps."""
    return _train(digits, "cnn-gap", width=8)


@pytest.fixture(scope="module")
def mlp(digits) -> EmbedNet:
    """A one-hidden-layer MLP: cheap enough for AutoAttack's 5000-query Square attack in a unit test."""
    return _train(digits, "mlp", hidden=(64,))


def _inputs(model, digits, seed: int = 0) -> Inputs:
    """Inputs as analyses.runner builds them for an analysis needing ("model", "test_data")."""
    return Inputs({}, digits.info.num_classes, digits.info.classes, model=model, device=torch.device("cpu"),
                  test_data=digits.split("test"), seed=seed)


def _run(inp: Inputs, **settings):
    return ANALYSES.get("robustness").obj(inp, **settings)


@pytest.fixture(scope="module")
def result(cnn, digits):
    return _run(_inputs(cnn, digits), eps=LINF_GRID, l2_eps=L2_GRID, max_examples=N_SUBSET, batch_size=64)


def _values(out) -> dict[str, float]:
    return {k: v["value"] for k, v in out.metrics.items()}


# ------------------------------------------------------------------------------------------------ results


def test_registered_with_needs_and_metric_names(result):
    entry = ANALYSES.get("robustness")
    assert entry.meta["needs"] == ("model", "test_data", "logits")  # attacks are on the classifier
    expected = {"clean_acc_subset"}
    expected |= {f"robust_acc/{a}/eps={e:g}/255" for a in ("fgsm_linf", "pgd_linf") for e in LINF_GRID}
    expected |= {f"robust_acc/pgd_l2/eps={e:g}" for e in L2_GRID}
    assert set(result.metrics) == expected
    assert all(m["higher_is_better"] is True and m["analysis"] == "robustness" for m in result.metrics.values())
    s = result.metrics["robust_acc/pgd_linf/eps=8/255"]["settings"]
    assert s["eps"] == pytest.approx(8 / 255) and s["alpha"] == pytest.approx(2 / 255)  # Madry: α = 2/255 at 8/255
    assert s["steps"] == 10 and s["random_start"] and s["n_examples"] == N_SUBSET and s["norm"] == "Linf"
    assert result.metrics["robust_acc/pgd_l2/eps=0.5"]["settings"]["alpha"] == pytest.approx(0.125)


def test_plots_start_at_clean_accuracy(result):
    clean = result.metrics["clean_acc_subset"]["value"]
    assert result.plots["kind"] == "curves" and result.plots["y_label"] == "robust accuracy"
    assert set(result.plots["curves"]) == {"fgsm_linf", "pgd_linf", "pgd_l2"}
    for label, plot in result.plots["curves"].items():
        assert plot["x"][0] == 0 and plot["y"][0] == clean
        assert len(plot["x"]) == len(plot["y"]) and plot["x"] == sorted(plot["x"])
        assert plot["norm"] == ("L2" if label == "pgd_l2" else "Linf")
    assert result.plots["curves"]["pgd_linf"]["x"] == [float(e) for e in LINF_GRID]
    assert result.arrays["correct_pgd_linf"].shape == (len(LINF_GRID), N_SUBSET)
    assert result.arrays["subset_indices"].shape == (N_SUBSET,)


def test_fgsm_at_zero_eps_equals_clean_accuracy(result, cnn, digits):
    v = _values(result)
    assert v["robust_acc/fgsm_linf/eps=0/255"] == v["clean_acc_subset"] > 0.9
    assert v["robust_acc/pgd_linf/eps=0/255"] == v["clean_acc_subset"]
    # not only the ε = 0 shortcut in perturb: torchattacks' own FGSM at ε = 0 returns the input unchanged
    x, y = digits.split("test").x[:64], digits.split("test").y[:64]
    with R.frozen_eval(cnn):
        assert torch.equal(R.make_attack(cnn, "fgsm", 0.0)(x, y), x)
    for attack in ("fgsm", "pgd_linf", "pgd_l2"):  # PGD-L2 at ε = 0 would be 0/0 = NaN inside torchattacks
        assert torch.equal(R.perturb(cnn, x, y, attack, 0.0), x)


def test_robust_accuracy_non_increasing_in_eps(result):
    # Neither FGSM (one linearised step can overshoot at a larger ε) nor PGD (local ascent from a random start) is
    # monotone in ε per example; the same seed per batch for every ε (common random numbers) keeps the aggregate
    # monotone in practice. Slack: one example of the subset.
    tol = 1 / N_SUBSET + 1e-9
    for label, plot in result.plots["curves"].items():
        acc = plot["y"]
        assert all(b <= a + tol for a, b in zip(acc, acc[1:])), (label, acc)
        assert acc[-1] < acc[0] - 0.4, (label, acc)  # the attacks do bite at the largest radius


def test_pgd_at_least_as_strong_as_fgsm(result):
    # PGD-10 (α = ε/4, random start) does not contain FGSM's single full-ε step as a special case, so on one example
    # FGSM's corner point can beat PGD's local optimum; allow two examples of the subset, and ask PGD to be clearly
    # stronger where the model breaks.
    v = _values(result)
    tol = 2 / N_SUBSET + 1e-9
    for e in LINF_GRID:
        assert v[f"robust_acc/pgd_linf/eps={e}/255"] <= v[f"robust_acc/fgsm_linf/eps={e}/255"] + tol
    assert v["robust_acc/pgd_linf/eps=32/255"] < v["robust_acc/fgsm_linf/eps=32/255"] - 0.05


# ------------------------------------------------------------------------------------------------ the attack wrapper


@pytest.mark.parametrize("attack,eps", [("fgsm", 8 / 255), ("fgsm", 32 / 255), ("pgd_linf", 8 / 255),
                                        ("pgd_linf", 32 / 255), ("pgd_l2", 0.25), ("pgd_l2", 1.0)])
def test_adversarial_examples_in_box_and_ball(cnn, digits, attack, eps):
    x, y = digits.split("test").x[:64], digits.split("test").y[:64]
    x_adv = R.perturb(cnn, x, y, attack, eps, seed=1)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    d = (x_adv - x).flatten(1)  # (B, 64)
    if R.ATTACKS[attack].norm == "Linf":
        assert d.abs().max() <= eps + 1e-6
        assert d.abs().max() >= eps - 1e-6  # signed steps reach the boundary somewhere
    else:
        assert (d.norm(dim=1) <= eps * (1 + 1e-5)).all()
    assert not torch.equal(x_adv, x)


def test_fgsm_on_linear_model_is_eps_sign_of_hand_gradient():
    """logits = W·((x − μ)/σ) + b, so ∇ₓ CE = (softmax(logits) − onehot(y))·W / σ;
    FGSM must give clip(x + ε·sign(∇ₓ CE), 0, 1)."""
    g = torch.Generator().manual_seed(0)
    mu, sigma = 0.3, 0.2
    head = nn.Linear(16, 3)
    with torch.no_grad():
        head.weight.copy_(torch.randn(3, 16, generator=g))
        head.bias.copy_(torch.randn(3, generator=g))
    model = EmbedNet([nn.Flatten()], head, "none", mean=[mu], std=[sigma]).eval()
    x = torch.rand(32, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    eps = 0.1

    w, b = head.weight.double(), head.bias.double()
    z = ((x.double().flatten(1) - mu) / sigma) @ w.T + b  # (32, 3)
    grad = (z.softmax(1) - nn.functional.one_hot(y, 3).double()) @ w / sigma  # (32, 16); batch mean only rescales
    assert grad.abs().min() > 1e-6  # no sign ambiguity
    expected = (x.double().flatten(1) + eps * grad.sign()).clamp(0, 1).reshape_as(x).float()

    x_adv = R.perturb(model, x, y, "fgsm", eps)
    torch.testing.assert_close(x_adv, expected, atol=1e-6, rtol=0)
    assert ((x_adv - x).abs() < eps - 1e-6).any()  # some pixels were clipped at 0 or 1: the box is applied too


def test_perturb_is_seeded_and_leaves_global_rng_alone(cnn, digits):
    x, y = digits.split("test").x[:64], digits.split("test").y[:64]
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = R.perturb(cnn, x, y, "pgd_linf", 16 / 255, seed=5)
    b = R.perturb(cnn, x, y, "pgd_linf", 16 / 255, seed=5)
    c = R.perturb(cnn, x, y, "pgd_linf", 16 / 255, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)  # random start follows the seed
    assert torch.equal(torch.get_rng_state(), before)


def test_unknown_attack_and_bad_inputs_raise(cnn, digits):
    with pytest.raises(EmbedlabError, match=r"unknown attack 'cw'; known: fgsm, pgd_linf, pgd_l2, autoattack"):
        _run(_inputs(cnn, digits), attacks=("cw",))
    with pytest.raises(EmbedlabError, match=r"radius must be ≥ 0"):
        R.perturb(cnn, torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), "fgsm", -1.0)
    vectors = TensorData(torch.rand(8, 2) * 4 - 2, torch.zeros(8, dtype=torch.long))
    inp = Inputs({}, 2, model=create_model("mlp", 2, (2,), hidden=(8,)), test_data=vectors)
    with pytest.raises(EmbedlabError, match=r"image inputs \(B, C, H, W\) in \[0, 1\]"):
        _run(inp, max_examples=8)


# ------------------------------------------------------------------------------------------------ model state, seeds


def test_analysis_leaves_model_state_untouched(digits):
    torch.manual_seed(0)
    model = create_model("cnn-gap", 10, (1, 8, 8), digits.info.mean, digits.info.std, width=4)
    x, y = digits.split("train").x[:64], digits.split("train").y[:64]
    nn.functional.cross_entropy(model(x), y).backward()  # populate .grad (and move BN running stats)
    model.head.bias.grad = None
    model.stages[0].requires_grad_(False)
    model.train()
    model.stages[1].eval()  # a partly-frozen model must come back partly frozen
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}

    settings = dict(eps=(8,), l2_eps=(0.5,), max_examples=32, batch_size=16)  # AutoAttack: see the test below
    out = _run(_inputs(model, digits), **settings)

    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for n, p in model.named_parameters():
        assert (p.grad is None) == (grads[n] is None) and (p.grad is None or torch.equal(p.grad, grads[n])), n
        assert p.requires_grad == flags[n], n
    assert {n: m.training for n, m in model.named_modules()} == modes
    # the attacks ran in eval mode: the same numbers as for the model put in eval mode by hand
    model.eval()
    again = _run(_inputs(model, digits), **settings)
    assert _values(again) == _values(out)


def test_frozen_eval_keeps_backward_off_the_parameters(cnn, digits):
    before = [p.grad for p in cnn.parameters()]
    x = digits.split("test").x[:8].clone().requires_grad_()
    with R.frozen_eval(cnn):
        cnn(x).sum().backward()
    assert x.grad is not None and [p.grad for p in cnn.parameters()] == before
    assert all(p.requires_grad for p in cnn.parameters())


def test_same_seed_same_numbers_and_global_rng_untouched(cnn, digits):
    settings = dict(eps=(4, 16), l2_eps=(0.5,), max_examples=96, batch_size=32)
    torch.manual_seed(99)
    before = torch.get_rng_state()
    a = _run(_inputs(cnn, digits, seed=3), **settings)
    b = _run(_inputs(cnn, digits, seed=3), **settings)
    assert torch.equal(torch.get_rng_state(), before)
    assert _values(a) == _values(b) and a.plots == b.plots
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    c = _run(_inputs(cnn, digits, seed=4), **settings)
    assert not np.array_equal(c.arrays["subset_indices"], a.arrays["subset_indices"])  # the seed picks the subset


def test_results_do_not_depend_on_the_other_attacks_requested(cnn, digits):
    inp = _inputs(cnn, digits)
    alone = _run(inp, attacks=("pgd_linf",), eps=(16,), max_examples=64, batch_size=32)
    together = _run(inp, eps=(2, 16), max_examples=64, batch_size=32)
    key = "robust_acc/pgd_linf/eps=16/255"
    assert set(alone.metrics) == {"clean_acc_subset", key}
    assert alone.metrics[key]["value"] == together.metrics[key]["value"]


def test_autoattack_in_bounds_and_not_weaker_than_pgd(mlp, digits):
    x, y = digits.split("test").x[:32], digits.split("test").y[:32]
    eps = 16 / 255
    params = [p.detach().clone() for p in mlp.parameters()]
    mlp.train()
    try:
        x_aa = R.perturb(mlp, x, y, "autoattack", eps, num_classes=10, seed=0)
        # FAB-T (run on what APGD-CE and APGD-T leave unbroken, here about 3/4 of the batch) calls .backward()
        assert mlp.training and all(p.grad is None and p.requires_grad for p in mlp.parameters())
        assert all(torch.equal(p, q) for p, q in zip(mlp.parameters(), params))
    finally:
        mlp.eval()
    assert x_aa.min() >= 0 and x_aa.max() <= 1 and (x_aa - x).abs().max() <= eps + 1e-6
    x_pgd = R.perturb(mlp, x, y, "pgd_linf", eps, seed=0)
    with torch.no_grad():
        acc_aa = (mlp(x_aa).argmax(1) == y).float().mean()
        acc_pgd = (mlp(x_pgd).argmax(1) == y).float().mean()
    # AutoAttack runs APGD-CE (100 steps) and three more attacks on whatever survives: one example of slack for PGD's
    # different random start
    assert acc_aa <= acc_pgd + 1 / 32 + 1e-9
    with pytest.raises(EmbedlabError, match="num_classes"):
        R.make_attack(mlp, "autoattack", eps)


def test_end_to_end_defaults_through_runner_inputs(cnn, digits):
    out = _run(_inputs(cnn, digits), max_examples=64)
    names = {"clean_acc_subset"} | {f"robust_acc/{a}/eps={e}/255" for a in ("fgsm_linf", "pgd_linf") for e in (1, 2, 4, 8)}
    names |= {f"robust_acc/pgd_l2/eps={e:g}" for e in L2_GRID}
    assert set(out.metrics) == names
    json.dumps({"metrics": out.metrics, "plots": out.plots})  # results.json must be able to hold them
    assert all(0.0 <= m["value"] <= 1.0 for m in out.metrics.values())
    assert out.metrics["clean_acc_subset"]["settings"]["n_examples"] == 64


def test_through_the_runner_into_results_json(cnn, digits, tmp_path):
    from embedlab.analyses.runner import Source, analyze_source

    src = Source("tiny", tmp_path / "tiny.safetensors", "0" * 64, {"dataset": {"name": "digits"}}, digits.info.classes,
                 model=cnn, data=digits)
    out = analyze_source(src, tmp_path / "out", analyses=["robustness"], cache_dir=tmp_path / "cache", progress=False,
                         settings={"robustness": {"eps": [4, 16], "l2_eps": [0.5], "max_examples": 48}})
    res = json.loads((out / "results.json").read_text())
    assert res["skipped"] == {}
    assert res["metrics"]["robust_acc/pgd_linf/eps=16/255"]["settings"]["n_examples"] == 48
    assert res["plots"]["robustness"]["curves"]["pgd_l2"]["x"] == [0.0, 0.5]
    with np.load(out / "arrays.npz") as arrays:
        assert arrays["robustness.correct_fgsm_linf"].shape == (2, 48)


def test_the_cost_of_gradient_analyses_is_announced_before_they_start(tmp_path):
    """With progress on, `analyze` prints one line per analysis that back-propagates to the input, with its pass
    count and an estimated time, before it starts; the pass counts follow the settings."""
    import re
    import subprocess
    import sys

    from tests.test_hostile_input import _checkpoint

    ckpt = _checkpoint(tmp_path / "m.safetensors")
    proc = subprocess.run([sys.executable, "-m", "embedlab", "analyze", str(ckpt), "--out", str(tmp_path / "r"),
                           "--analyses", "robustness,accuracy", "--opt", "robustness.max_examples=100", "--opt",
                           "robustness.eps=2,4", "--opt", "robustness.l2_eps=0.5", "--cache-dir", str(tmp_path / "c")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.replace("\r", "\n").splitlines() if ln.startswith("embedlab: ")]
    # 100 examples x (FGSM at 2 radii + PGD-10 L-inf at 2 radii + PGD-10 L2 at 1 radius) = 100 x 32
    assert len(lines) == 1 and re.fullmatch(r"embedlab: robustness: about [0-9,]+ s \(3,200 input-gradient passes at "
                                            r"[0-9.]+ ms, measured on one batch; --opt robustness.max_examples bounds "
                                            r"it\)", lines[0]), lines


def test_single_values_from_the_command_line_are_lists(tmp_path):
    """`--opt robustness.eps=8` arrives as one number and `--opt robustness.attacks=fgsm` as one string: both are
    read as one-element lists (a single number was a TypeError traceback, a string was read letter by letter)."""
    import json

    from embedlab.cli import main
    from tests.test_hostile_input import _checkpoint

    ckpt = _checkpoint(tmp_path / "m.safetensors")
    assert main(["analyze", str(ckpt), "--out", str(tmp_path / "r"), "--analyses", "robustness", "--opt",
                 "robustness.eps=8", "--opt", "robustness.attacks=fgsm", "--opt", "robustness.max_examples=20",
                 "--cache-dir", str(tmp_path / "c"), "--no-progress"]) == 0
    names = [k for k in json.loads((tmp_path / "r" / "m" / "results.json").read_text())["metrics"]
             if k.startswith("robust_acc/")]
    assert names == ["robust_acc/fgsm_linf/eps=8/255"]
