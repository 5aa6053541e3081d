"""Tests for embedlab.metrics (geometry, classification, calibration) against slow explicit references, torchmetrics and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import KNeighborsClassifier
from torchmetrics.functional.classification import multiclass_calibration_error

from embedlab.metrics.calibration import expected_calibration_error, reliability_diagram
from embedlab.metrics.classification import accuracy, knn_accuracy, knn_search
from embedlab.metrics.geometry import alignment, uniformity

# ----------------------------------------------------------------------------- data + references


def _embeddings(
    n: int = 40, d: int = 8, n_classes: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % n_classes  # every class has >= 2 members
    y = y[torch.randperm(n, generator=g)]
    return z, y


def _unit(z: torch.Tensor) -> np.ndarray:
    a = z.detach().cpu().double().numpy()
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _ref_alignment(z: torch.Tensor, y: torch.Tensor, alpha: float) -> float:
    u, lab = _unit(z), y.tolist()
    vals = [
        np.linalg.norm(u[i] - u[j]) ** alpha
        for i in range(len(lab))
        for j in range(i + 1, len(lab))
        if lab[i] == lab[j]
    ]
    return float(np.mean(vals))


def _ref_uniformity(z: torch.Tensor, t: float) -> float:
    u = _unit(z)
    exps = [-t * np.sum((u[i] - u[j]) ** 2) for i in range(len(u)) for j in range(i + 1, len(u))]
    m = max(exps)  # log-mean-exp, stable
    return float(m + math.log(np.mean(np.exp(np.array(exps) - m))))


def _logits(n: int = 500, c: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    # Informative but imperfect logits with a spread of temperatures -> confidences across all bins.
    logits = torch.randn(n, c, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, c)
    logits = logits * torch.empty(n, 1).uniform_(0.2, 4.0, generator=g)
    return logits, labels


def _ref_ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    probs = torch.softmax(logits.double(), dim=1)
    conf, pred = probs.max(dim=1)
    n, ece = len(labels), 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        members = [i for i in range(n) if lo < conf[i].item() <= hi]
        if members:
            acc = sum(int(pred[i] == labels[i]) for i in members) / len(members)
            mean_conf = sum(conf[i].item() for i in members) / len(members)
            ece += len(members) / n * abs(acc - mean_conf)
    return ece


def _blobs(
    n_bank: int, n_query: int, n_classes: int, d: int = 16, spread: float = 1.6, seed: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, d, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, n_classes, (n,), generator=g)
        return centres[y] + spread * torch.randn(n, d, generator=g), y

    bank_z, bank_y = draw(n_bank)
    query_z, query_y = draw(n_query)
    return bank_z, bank_y, query_z, query_y


def _ref_knn_accuracy(
    bank_z: torch.Tensor,
    bank_y: torch.Tensor,
    query_z: torch.Tensor,
    query_y: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> float:
    b, q = _unit(bank_z), _unit(query_z)
    sims = q @ b.T
    k = min(k, len(b))
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(sims, order, axis=1)
    weights = np.exp(top / temperature)
    scores = np.zeros((len(q), num_classes))
    for n in range(len(q)):
        for r in range(k):
            scores[n, bank_y[order[n, r]].item()] += weights[n, r]
    return float(np.mean(scores.argmax(axis=1) == query_y.numpy()))


# ----------------------------------------------------------------------------- accuracy


def test_accuracy_all_correct_is_one() -> None:
    logits, labels = _logits()
    assert accuracy(torch.nn.functional.one_hot(labels, 5).float(), labels) == 1.0


def test_accuracy_known_value() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.1, 0.2]])
    labels = torch.tensor([0, 1, 1, 1])
    assert accuracy(logits, labels) == pytest.approx(0.75)
    assert accuracy(logits, 1 - labels) == pytest.approx(0.25)


def test_accuracy_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        accuracy(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError):
        accuracy(torch.zeros(4), torch.zeros(4, dtype=torch.long))


# ----------------------------------------------------------------------------- alignment / uniformity


@pytest.mark.parametrize("chunk", [1, 7, 13, 40, 4096])
@pytest.mark.parametrize("alpha", [2.0, 1.0, 3.5])
def test_alignment_matches_pair_loop(chunk: int, alpha: float) -> None:
    z, y = _embeddings()
    assert alignment(z, y, alpha=alpha, chunk=chunk) == pytest.approx(_ref_alignment(z, y, alpha), rel=1e-12)


@pytest.mark.parametrize("chunk", [1, 7, 13, 40, 4096])
@pytest.mark.parametrize("t", [2.0, 0.5, 10.0])
def test_uniformity_matches_pair_loop(chunk: int, t: float) -> None:
    z, _ = _embeddings()
    assert uniformity(z, t=t, chunk=chunk) == pytest.approx(_ref_uniformity(z, t), rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(4, 25), chunk=st.integers(1, 30), seed=st.integers(0, 10_000))
def test_streaming_matches_pair_loop_property(n: int, chunk: int, seed: int) -> None:
    z, _ = _embeddings(n=n, d=5, seed=seed)
    y = torch.arange(n) % 3
    assert uniformity(z, chunk=chunk) == pytest.approx(_ref_uniformity(z, 2.0), rel=1e-10, abs=1e-12)
    assert alignment(z, y, chunk=chunk) == pytest.approx(_ref_alignment(z, y, 2.0), rel=1e-10, abs=1e-12)


def test_alignment_and_uniformity_known_values() -> None:
    antipodal = torch.tensor([[1.0, 0.0], [-3.0, 0.0]])
    same = torch.tensor([0, 0])
    assert alignment(antipodal, same) == pytest.approx(4.0)  # ||u_i - u_j||^2 = 2^2
    assert alignment(antipodal, same, alpha=1.0) == pytest.approx(2.0)
    orthogonal = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    assert uniformity(orthogonal, t=2.0) == pytest.approx(-4.0)  # log(exp(-2 * 2))
    # Only same-class pairs count: the one cross-class pair (distance 2) must be ignored.
    three = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert alignment(three, torch.tensor([5, 5, 9])) == pytest.approx(0.0, abs=1e-12)


def test_uniformity_is_stable_for_large_t() -> None:
    # exp(-1000 * 2) underflows to 0 in float64; the log-sum-exp path must still give -2000.
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert uniformity(orthogonal, t=1000.0) == pytest.approx(-2000.0)
    z, _ = _embeddings()
    assert uniformity(z, t=300.0, chunk=7) == pytest.approx(_ref_uniformity(z, 300.0), rel=1e-12)


def test_alignment_uniformity_invariant_to_sample_order() -> None:
    z, y = _embeddings()
    perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(3))
    assert alignment(z[perm], y[perm], chunk=7) == pytest.approx(alignment(z, y, chunk=7), rel=1e-12)
    assert uniformity(z[perm], chunk=7) == pytest.approx(uniformity(z, chunk=7), rel=1e-12)
    # Decisiveness: permuting the labels alone (breaking the z <-> y pairing) changes alignment.
    assert alignment(z, y[perm]) != pytest.approx(alignment(z, y), rel=1e-6)


def test_alignment_uniformity_invariant_to_positive_scaling() -> None:
    z, y = _embeddings()
    g = torch.Generator().manual_seed(4)
    scale = torch.empty(len(z), 1, dtype=torch.float64).uniform_(0.01, 100.0, generator=g)
    assert alignment(z * scale, y, chunk=7) == pytest.approx(alignment(z, y), rel=1e-12)
    assert uniformity(z * scale, chunk=7) == pytest.approx(uniformity(z), rel=1e-12)
    assert uniformity(z * 1e-3) == pytest.approx(uniformity(z), rel=1e-12)


def test_alignment_invariant_to_class_relabelling() -> None:
    z, y = _embeddings()
    mapping = torch.tensor([42, -3, 7, 1000])  # a permutation onto arbitrary, non-contiguous ids
    assert alignment(z, mapping[y], chunk=7) == pytest.approx(alignment(z, y), rel=1e-12)
    # Merging two classes is not a relabelling and must change the value.
    assert alignment(z, y.clamp(max=2)) != pytest.approx(alignment(z, y), rel=1e-6)


def test_float32_input_matches_float64() -> None:
    z, y = _embeddings()
    assert alignment(z.float(), y) == pytest.approx(alignment(z, y), rel=1e-6)
    assert uniformity(z.float()) == pytest.approx(uniformity(z), rel=1e-6)


def test_alignment_requires_a_same_class_pair() -> None:
    z, _ = _embeddings(n=6)
    with pytest.raises(ValueError, match="same-class pair"):
        alignment(z, torch.arange(6))


def test_uniformity_requires_two_points() -> None:
    with pytest.raises(ValueError):
        uniformity(torch.randn(1, 4))


def test_streaming_never_builds_full_pair_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    z, y = _embeddings(n=40)
    shapes: list[tuple[int, ...]] = []
    original = torch.Tensor.__matmul__

    def recording_matmul(self: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        out = original(self, other)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", recording_matmul)
    alignment(z, y, chunk=7)
    uniformity(z, chunk=7)
    assert shapes, "expected the pairwise blocks to be computed with @"
    assert max(s[0] for s in shapes) <= 7


# ----------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("n_bins", [15, 10, 3])
def test_ece_matches_slow_loop(n_bins: int) -> None:
    logits, labels = _logits()
    ece = expected_calibration_error(logits, labels, n_bins=n_bins)
    assert ece == pytest.approx(_ref_ece(logits, labels, n_bins), rel=1e-10, abs=1e-12)
    assert 0.0 < ece < 1.0


def test_ece_matches_torchmetrics() -> None:
    logits, labels = _logits()
    expected = multiclass_calibration_error(logits, labels, num_classes=5, n_bins=15, norm="l1").item()
    assert expected > 0.01  # non-trivial case
    assert expected_calibration_error(logits, labels, n_bins=15) == pytest.approx(expected, abs=1e-5)


def test_ece_perfectly_confident() -> None:
    _, labels = _logits(n=50)
    confident_right = 100.0 * torch.nn.functional.one_hot(labels, 5).double()
    assert expected_calibration_error(confident_right, labels) == 0.0
    # ... and confidently wrong is maximally miscalibrated.
    assert expected_calibration_error(confident_right, (labels + 1) % 5) == pytest.approx(1.0)


def test_reliability_diagram_consistent_with_ece() -> None:
    logits, labels = _logits()
    diagram = reliability_diagram(logits, labels, n_bins=15)
    assert set(diagram) == {"lower", "upper", "count", "confidence", "accuracy"}
    assert all(len(v) == 15 for v in diagram.values())
    assert sum(diagram["count"]) == len(labels)
    assert diagram["lower"][0] == 0.0 and diagram["upper"][-1] == 1.0
    assert diagram["lower"][1:] == diagram["upper"][:-1]
    ece = 0.0
    for lo, hi, c, conf, acc in zip(*diagram.values(), strict=True):
        if c == 0:
            assert conf is None and acc is None
            continue
        assert lo < conf <= hi
        assert 0.0 <= acc <= 1.0
        ece += c / len(labels) * abs(acc - conf)
    assert ece == pytest.approx(expected_calibration_error(logits, labels), rel=1e-12)


def test_reliability_diagram_bins_are_closed_on_the_right() -> None:
    labels = torch.tensor([0, 1, 0, 0])
    # Equal logits over 2 classes -> confidence exactly 0.5, which belongs to (0, 0.5] with 2 bins
    # and to (0.25, 0.5] with 4 bins; over 4 classes -> exactly 0.25 -> (0, 0.25].
    assert reliability_diagram(torch.zeros(4, 2), labels, n_bins=2)["count"] == [4, 0]
    assert reliability_diagram(torch.zeros(4, 2), labels, n_bins=4)["count"] == [0, 4, 0, 0]
    assert reliability_diagram(torch.zeros(4, 4), labels, n_bins=4)["count"] == [4, 0, 0, 0]
    diagram = reliability_diagram(torch.zeros(4, 2), labels, n_bins=2)
    assert diagram["confidence"] == [pytest.approx(0.5), None]
    assert diagram["accuracy"] == [pytest.approx(0.75), None]  # argmax tie -> class 0


# ----------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_knn_accuracy_matches_brute_force(k: int, temperature: float) -> None:
    data = _blobs(n_bank=300, n_query=120, n_classes=4)
    expected = _ref_knn_accuracy(*data, num_classes=4, k=k, temperature=temperature)
    assert 0.3 < expected < 1.0  # non-trivial problem
    got = knn_accuracy(*data, num_classes=4, k=k, temperature=temperature)
    assert got == pytest.approx(expected, abs=1e-12)


def test_knn_accuracy_k_larger_than_bank() -> None:
    data = _blobs(n_bank=30, n_query=50, n_classes=3)
    got = knn_accuracy(*data, num_classes=3, k=1000, temperature=0.1)
    assert got == pytest.approx(_ref_knn_accuracy(*data, num_classes=3, k=30, temperature=0.1), abs=1e-12)


def test_knn_weighting_uses_temperature() -> None:
    # One very close neighbour of class 0 against two farther ones of class 1 (k = 3).
    bank = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(0.75)], [0.5, -math.sqrt(0.75)], [-1.0, 0.0]])
    bank_y = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[math.cos(0.1), math.sin(0.1)]])
    query_y = torch.tensor([0])
    assert knn_accuracy(bank, bank_y, query, query_y, num_classes=2, k=3, temperature=0.07) == 1.0
    # With T -> infinity every neighbour weighs the same: plain majority vote picks class 1.
    assert knn_accuracy(bank, bank_y, query, query_y, num_classes=2, k=3, temperature=1e6) == 0.0


@pytest.mark.parametrize("k", [1, 5, 15])
def test_knn_huge_temperature_matches_sklearn_uniform_vote(k: int) -> None:
    bank_z, bank_y, query_z, query_y = _blobs(n_bank=200, n_query=150, n_classes=2, spread=2.5, seed=5)
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="uniform")
    expected = clf.fit(bank_z.numpy(), bank_y.numpy()).score(query_z.numpy(), query_y.numpy())
    assert 0.5 < expected < 1.0  # non-trivial problem
    got = knn_accuracy(bank_z, bank_y, query_z, query_y, num_classes=2, k=k, temperature=1e6)
    assert got == pytest.approx(expected, abs=1e-12)


def test_knn_search_matches_numpy() -> None:
    bank_z, _, query_z, _ = _blobs(n_bank=100, n_query=20, n_classes=3)
    sims, idx = knn_search(bank_z, query_z, k=7)
    assert sims.shape == idx.shape == (20, 7)
    assert idx.dtype == torch.int64
    ref = _unit(query_z) @ _unit(bank_z).T
    ref_idx = np.argsort(-ref, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(sims.numpy(), np.take_along_axis(ref, ref_idx, axis=1), atol=1e-5)
    assert torch.all(sims[:, :-1] >= sims[:, 1:])
    # A bank vector (rescaled) used as a query finds itself with cosine similarity 1.
    sims_self, idx_self = knn_search(bank_z, 3.0 * bank_z[:5], k=200)
    assert idx_self.shape == (5, 100)
    np.testing.assert_array_equal(idx_self[:, 0].numpy(), np.arange(5))
    np.testing.assert_allclose(sims_self[:, 0].numpy(), 1.0, atol=1e-5)


def test_knn_rejects_out_of_range_labels() -> None:
    bank_z, bank_y, query_z, query_y = _blobs(n_bank=20, n_query=5, n_classes=3)
    with pytest.raises(ValueError):
        knn_accuracy(bank_z, bank_y, query_z, query_y, num_classes=2)
