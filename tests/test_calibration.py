"""embedlab.metrics.calibration against slow loops, torchmetrics and scikit-learn; temperature scaling; the analysis wiring."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from sklearn.metrics import brier_score_loss, log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from embedlab.analyses.calibration import calibration
from embedlab.analyses.registry import ANALYSES, Inputs
from embedlab.metrics.calibration import (
    adaptive_calibration_error,
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
)
from embedlab.store import Extracted

# ----------------------------------------------------------------------------- data + slow references


def _logits(n: int = 600, c: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Informative but imperfect logits with a spread of per-example scales -> confidences in most bins."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, c)
    return logits * torch.empty(n, 1).uniform_(0.2, 4.0, generator=g), labels


def _calibrated(n: int, c: int, seed: int, scale: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that are calibrated by construction: labels are drawn from softmax(logits)."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, c, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=g)[:, 0]
    return logits, labels


def _conf_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[int]]:
    probs = torch.softmax(logits.double(), dim=1)
    conf, pred = probs.max(dim=1)
    return conf.tolist(), [int(p == y) for p, y in zip(pred.tolist(), labels.tolist(), strict=True)]


def _ref_adaptive_ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    conf, correct = _conf_correct(logits, labels)
    n = len(conf)
    order = sorted(range(n), key=lambda i: (conf[i], correct[i]))
    sizes = [n // n_bins + (1 if b < n % n_bins else 0) for b in range(n_bins)]
    ece, start = 0.0, 0
    for size in sizes:
        members = order[start:start + size]
        start += size
        if members:
            acc = sum(correct[i] for i in members) / size
            mean_conf = sum(conf[i] for i in members) / size
            ece += size / n * abs(acc - mean_conf)
    assert start == n
    return ece


def _ref_mce(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    conf, correct = _conf_correct(logits, labels)
    gaps = []
    for k in range(n_bins):
        members = [i for i, p in enumerate(conf) if k / n_bins < p <= (k + 1) / n_bins]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            gaps.append(abs(acc - sum(conf[i] for i in members) / len(members)))
    return max(gaps)


def _ref_brier(logits: torch.Tensor, labels: torch.Tensor) -> float:
    probs = torch.softmax(logits.double(), dim=1).tolist()
    total = 0.0
    for row, y in zip(probs, labels.tolist(), strict=True):
        total += sum((p - (1.0 if c == y else 0.0)) ** 2 for c, p in enumerate(row))
    return total / len(probs)


def _nll_at(logits: torch.Tensor, labels: torch.Tensor, t: float) -> float:
    return negative_log_likelihood(logits.double() / t, labels)


# ----------------------------------------------------------------------------- binned errors


@pytest.mark.parametrize(("n", "n_bins"), [(600, 15), (601, 15), (600, 7), (10, 15), (600, 1)])
def test_adaptive_ece_matches_slow_loop(n: int, n_bins: int) -> None:
    logits, labels = _logits(n=n)
    got = adaptive_calibration_error(logits, labels, n_bins=n_bins)
    assert got == pytest.approx(_ref_adaptive_ece(logits, labels, n_bins), rel=1e-10, abs=1e-12)
    assert got > 0.0


def test_adaptive_ece_differs_from_equal_width_ece_but_agrees_with_one_bin() -> None:
    logits, labels = _logits()
    ada, ece = adaptive_calibration_error(logits, labels), expected_calibration_error(logits, labels)
    assert ada != pytest.approx(ece, rel=1e-3)
    # One bin: both are |accuracy - mean confidence|.
    assert adaptive_calibration_error(logits, labels, n_bins=1) == pytest.approx(
        expected_calibration_error(logits, labels, n_bins=1), rel=1e-12)


def test_adaptive_ece_bins_have_equal_mass() -> None:
    # Confidence strictly increasing with the index; labels correct exactly on the 4 most confident examples.
    # 12 examples, 3 bins -> the last bin holds exactly those 4: its gap is |1 - mean conf|, the others |0 - mean conf|.
    c = 3
    margin = torch.linspace(0.1, 3.0, 12, dtype=torch.float64)
    logits = torch.zeros(12, c, dtype=torch.float64)
    logits[:, 0] = margin
    labels = torch.tensor([1] * 8 + [0] * 4)
    conf = torch.softmax(logits, dim=1)[:, 0]
    expected = (conf[:8].sum() + (4 - conf[8:].sum())).item() / 12
    assert adaptive_calibration_error(logits, labels, n_bins=3) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n_bins", [15, 10, 4])
def test_mce_matches_slow_loop_and_torchmetrics(n_bins: int) -> None:
    logits, labels = _logits()
    got = maximum_calibration_error(logits, labels, n_bins=n_bins)
    assert got == pytest.approx(_ref_mce(logits, labels, n_bins), rel=1e-10, abs=1e-12)
    probs = torch.softmax(logits.double(), dim=1)  # probabilities in [0, 1]: torchmetrics uses them as given
    expected = multiclass_calibration_error(probs, labels, num_classes=5, n_bins=n_bins, norm="max").item()
    assert got == pytest.approx(expected, rel=1e-6)  # torchmetrics bins in float32
    assert got >= expected_calibration_error(logits, labels, n_bins=n_bins)  # the max gap bounds the weighted mean


def test_ece_in_calibration_metrics_matches_torchmetrics() -> None:
    logits, labels = _logits()
    probs = torch.softmax(logits.double(), dim=1)
    expected = multiclass_calibration_error(probs, labels, num_classes=5, n_bins=15, norm="l1").item()
    assert calibration_metrics(logits, labels)["ece"] == pytest.approx(expected, rel=1e-6)  # float32 inside


def test_perfect_and_uniform_predictions_have_exact_values() -> None:
    _, labels = _logits(n=40)
    confident_right = 60.0 * torch.nn.functional.one_hot(labels, 5).double()
    m = calibration_metrics(confident_right, labels)
    assert m["ece"] == m["adaptive_ece"] == m["mce"] == pytest.approx(0.0, abs=1e-20)
    assert m["nll"] == pytest.approx(0.0, abs=1e-20) and m["brier"] == pytest.approx(0.0, abs=1e-20)
    wrong = calibration_metrics(confident_right, (labels + 1) % 5)
    assert wrong["ece"] == wrong["adaptive_ece"] == wrong["mce"] == pytest.approx(1.0)
    assert wrong["brier"] == pytest.approx(2.0)  # the maximum of the sum-over-classes convention
    uniform = calibration_metrics(torch.zeros(40, 5), labels)
    assert uniform["nll"] == pytest.approx(math.log(5), rel=1e-12)
    assert uniform["brier"] == pytest.approx(1.0 - 1.0 / 5, rel=1e-12)


# ----------------------------------------------------------------------------- NLL and Brier


def test_nll_matches_sklearn_log_loss() -> None:
    logits, labels = _logits()
    probs = torch.softmax(logits.double(), dim=1).numpy()
    expected = log_loss(labels.numpy(), probs, labels=list(range(5)))
    assert negative_log_likelihood(logits, labels) == pytest.approx(expected, rel=1e-10)


def test_nll_is_stable_for_huge_logits() -> None:
    logits = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]])
    assert negative_log_likelihood(logits, torch.tensor([0, 0])) == pytest.approx(500.0)


def test_brier_matches_explicit_formula_and_sklearn() -> None:
    logits, labels = _logits()
    got = brier_score(logits, labels)
    assert got == pytest.approx(_ref_brier(logits, labels), rel=1e-12)
    probs = torch.softmax(logits.double(), dim=1).numpy()
    assert got == pytest.approx(brier_score_loss(labels.numpy(), probs, labels=list(range(5)), scale_by_half=False),
                                rel=1e-10)


def test_metrics_invariant_to_sample_order_and_class_relabelling() -> None:
    logits, labels = _logits(n=300)
    logits = (logits * 2).round() / 2  # many exact confidence ties, which equal-mass bins must handle consistently
    base = calibration_metrics(logits, labels)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(3))
    assert calibration_metrics(logits[perm], labels[perm]) == pytest.approx(base, rel=1e-12, abs=1e-15)
    # Relabel classes: permute logit columns and labels together.
    classes = torch.tensor([3, 0, 4, 1, 2])  # new index of old class c
    inverse = torch.argsort(classes)
    relabelled = calibration_metrics(logits[:, inverse], classes[labels])
    assert relabelled["nll"] == pytest.approx(base["nll"], rel=1e-12)
    assert relabelled["brier"] == pytest.approx(base["brier"], rel=1e-12)


@pytest.mark.parametrize("fn", [adaptive_calibration_error, maximum_calibration_error, negative_log_likelihood,
                                brier_score, fit_temperature])
def test_bad_inputs_raise(fn) -> None:
    logits, labels = _logits(n=20)
    with pytest.raises(ValueError, match=r"shape"):
        fn(logits, labels[:10])
    with pytest.raises(ValueError, match=r"integer"):
        fn(logits, labels.float())
    if fn in (negative_log_likelihood, brier_score, fit_temperature):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
            fn(logits, labels + 5)


def test_bin_count_must_be_positive() -> None:
    logits, labels = _logits(n=20)
    with pytest.raises(ValueError, match=r"n_bins must be >= 1"):
        adaptive_calibration_error(logits, labels, n_bins=0)
    with pytest.raises(ValueError, match=r"n_bins must be >= 1"):
        maximum_calibration_error(logits, labels, n_bins=0)


# ----------------------------------------------------------------------------- temperature scaling


@pytest.mark.parametrize("factor", [3.0, 0.5])
def test_temperature_recovers_miscalibration_factor(factor: float) -> None:
    logits, labels = _calibrated(n=10000, c=10, seed=4)
    t = fit_temperature(factor * logits, labels)
    assert t == pytest.approx(factor, rel=0.05)


def test_fitted_temperature_is_a_stationary_point_and_lowers_nll() -> None:
    logits, labels = _logits()
    t = fit_temperature(logits, labels)
    assert not 0.9 < t < 1.1  # the test data are miscalibrated: scaling must matter
    h = 1e-5 * t
    slope = (_nll_at(logits, labels, t + h) - _nll_at(logits, labels, t - h)) / (2 * h)
    assert abs(slope) < 1e-6
    # a minimum, not a maximum, and better than no scaling
    assert _nll_at(logits, labels, t) < min(_nll_at(logits, labels, 0.95 * t), _nll_at(logits, labels, 1.05 * t))
    assert _nll_at(logits, labels, t) < _nll_at(logits, labels, 1.0) - 1e-3


def test_temperature_matches_scipy_bounded_search() -> None:
    logits, labels = _logits(seed=7)
    res = minimize_scalar(lambda s: _nll_at(logits, labels, math.exp(s)), bounds=(math.log(1e-2), math.log(1e2)),
                          method="bounded", options={"xatol": 1e-9})
    assert fit_temperature(logits, labels) == pytest.approx(math.exp(res.x), rel=1e-4)


def test_temperature_is_deterministic_and_shift_invariant() -> None:
    logits, labels = _logits()
    logits = logits.double()
    t = fit_temperature(logits, labels)
    assert fit_temperature(logits, labels) == t
    shift = torch.randn(len(labels), 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 10
    assert fit_temperature(logits + shift, labels) == pytest.approx(t, rel=1e-9)


def test_temperature_bracket_ends_and_flat_case() -> None:
    labels = torch.tensor([0, 1, 2, 0])
    separable = 5.0 * torch.nn.functional.one_hot(labels, 3).double()
    assert fit_temperature(separable, labels, t_min=0.05) == 0.05  # NLL keeps falling as T -> 0
    assert fit_temperature(separable, (labels + 1) % 3, t_max=50.0) == 50.0  # anti-informative: T -> infinity
    assert fit_temperature(torch.full((4, 3), 2.0), labels) == 1.0  # constant rows: NLL independent of T


def test_temperature_rejects_bad_bracket_and_nan() -> None:
    logits, labels = _logits(n=20)
    with pytest.raises(ValueError, match=r"t_min < t_max"):
        fit_temperature(logits, labels, t_min=2.0, t_max=1.0)
    with pytest.raises(ValueError, match=r"t_min < t_max"):
        fit_temperature(logits, labels, t_min=0.0)
    bad = logits.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        fit_temperature(bad, labels)


# ----------------------------------------------------------------------------- the registered analysis


def _split(logits: torch.Tensor, labels: torch.Tensor) -> Extracted:
    n = len(labels)
    return Extracted(np.zeros((n, 2), np.float32), logits.float().numpy(), labels.numpy())


def test_analysis_fits_on_val_and_reports_test_before_and_after() -> None:
    val_z, val_y = _calibrated(n=4000, c=10, seed=11)
    test_z, test_y = _calibrated(n=3000, c=10, seed=12)
    inp = Inputs({"val": _split(3.0 * val_z, val_y), "test": _split(2.0 * test_z, test_y)}, num_classes=10)
    entry = ANALYSES.get("calibration")
    assert entry.meta["needs"] == ("test", "logits") and entry.meta["optional"] == ("val",)
    out = entry.obj(inp)
    m = out.metrics

    names = ["ece", "adaptive_ece", "mce", "nll", "brier"]
    assert set(m) == {*names, *(f"{n}_ts" for n in names), "temperature"}
    assert all(m[k]["higher_is_better"] is False for k in m if k != "temperature")
    assert m["temperature"]["higher_is_better"] is None and m["temperature"]["settings"]["fitted_on"] == "val"

    t_val = fit_temperature(inp.t("val", "logits"), inp.t("val", "labels"))
    t_test = fit_temperature(inp.t("test", "logits"), inp.t("test", "labels"))
    assert m["temperature"]["value"] == t_val  # fitted on val ...
    assert t_val == pytest.approx(3.0, rel=0.05) and t_test == pytest.approx(2.0, rel=0.05)  # ... not on test

    test_logits = inp.t("test", "logits")
    before = calibration_metrics(test_logits, test_y)
    after = calibration_metrics(test_logits.double() / t_val, test_y)
    for n in names:
        assert m[n]["value"] == pytest.approx(before[n], rel=1e-12)
        assert m[f"{n}_ts"]["value"] == pytest.approx(after[n], rel=1e-12)
    assert m["nll_ts"]["value"] < m["nll"]["value"] and m["ece_ts"]["value"] < m["ece"]["value"]
    assert m["adaptive_ece"]["settings"] == {"n_bins": 15, "bins": "equal-mass"}

    assert out.plots["kind"] == "reliability" and set(out.plots["diagrams"]) == {"before temperature scaling", "after temperature scaling"}
    diagrams = out.plots["diagrams"]
    assert diagrams["before temperature scaling"] == reliability_diagram(test_logits, test_y)
    assert sum(diagrams["after temperature scaling"]["count"]) == 3000
    assert diagrams["after temperature scaling"] != diagrams["before temperature scaling"]


def test_analysis_function_accepts_settings() -> None:
    val_z, val_y = _calibrated(n=500, c=4, seed=1)
    inp = Inputs({"val": _split(val_z, val_y), "test": _split(val_z, val_y)}, num_classes=4)
    out = calibration(inp, n_bins=5, t_min=0.5, t_max=2.0)
    assert len(out.plots["diagrams"]["before temperature scaling"]["count"]) == 5
    assert out.metrics["mce"]["settings"]["n_bins"] == 5
    assert 0.5 <= out.metrics["temperature"]["value"] <= 2.0
