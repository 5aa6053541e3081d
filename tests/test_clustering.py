"""embedlab.metrics.clustering (and the linear probe) against scikit-learn and slow double loops; invariances, degenerate cases, the analysis."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from embedlab.analyses.clustering import clustering
from embedlab.analyses.registry import ANALYSES, Inputs
from embedlab.metrics.classification import linear_probe_accuracy
from embedlab.metrics.clustering import (
    adjusted_rand_index,
    calinski_harabasz,
    davies_bouldin,
    intra_inter_distance_ratio,
    kmeans_assignments,
    normalized_mutual_info,
    silhouette_cosine,
)
from embedlab.store import Extracted

# ----------------------------------------------------------------------------- data + slow references

SIZES = (30, 12, 25, 3, 40, 10)  # unequal classes, so per-pair and per-class averaging differ


def _blobs(sizes=SIZES, d: int = 12, sep: float = 2.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian classes (non-trivial scores), float64, in shuffled order with labels 10, 20, ..."""
    g = torch.Generator().manual_seed(seed)
    means = sep * torch.randn(len(sizes), d, generator=g, dtype=torch.float64)
    z = torch.cat([means[k] + torch.randn(n, d, generator=g, dtype=torch.float64) for k, n in enumerate(sizes)])
    y = torch.cat([torch.full((n,), 10 * (k + 1)) for k, n in enumerate(sizes)])
    perm = torch.randperm(len(y), generator=g)
    return z[perm], y[perm]


def _ref_ratio(z: torch.Tensor, y: torch.Tensor) -> float:
    u = z.numpy() / np.linalg.norm(z.numpy(), axis=1, keepdims=True)
    same, diff = [], []
    lab = y.tolist()
    for i in range(len(lab)):
        for j in range(i + 1, len(lab)):
            (same if lab[i] == lab[j] else diff).append(float(np.linalg.norm(u[i] - u[j])))
    return float(np.mean(same) / np.mean(diff))


def _relabel(y: torch.Tensor) -> torch.Tensor:
    """A bijective relabelling that also changes the sorted order of the classes."""
    return 1000 - 7 * y


INTERNAL = [silhouette_cosine, davies_bouldin, calinski_harabasz, intra_inter_distance_ratio]


# ----------------------------------------------------------------------------- internal indices vs sklearn


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_silhouette_matches_sklearn(seed: int, chunk: int) -> None:
    z, y = _blobs(seed=seed)
    expected = silhouette_score(z.numpy(), y.numpy(), metric="cosine")
    assert 0.05 < expected < 0.9  # non-trivial
    assert silhouette_cosine(z, y, chunk=chunk) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_silhouette_singleton_class_and_zero_vector_follow_sklearn() -> None:
    z, y = _blobs()
    y = y.clone()
    y[5] = 999  # a class of one example: s = 0 there
    z = z.clone()
    z[9] = 0.0  # a zero embedding: cosine distance 1 to every other point
    expected = silhouette_score(z.numpy(), y.numpy(), metric="cosine")
    assert silhouette_cosine(z, y, chunk=16) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_silhouette_ignores_norms() -> None:
    z, y = _blobs()
    scales = torch.rand(len(y), 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 10 + 0.1
    assert silhouette_cosine(z * scales, y) == pytest.approx(silhouette_cosine(z, y), rel=1e-10)
    # ... whereas the Euclidean indices do not.
    assert davies_bouldin(z * scales, y) != pytest.approx(davies_bouldin(z, y), rel=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_davies_bouldin_and_calinski_harabasz_match_sklearn(seed: int) -> None:
    z, y = _blobs(seed=seed)
    assert davies_bouldin(z, y) == pytest.approx(davies_bouldin_score(z.numpy(), y.numpy()), rel=1e-10)
    assert calinski_harabasz(z, y) == pytest.approx(calinski_harabasz_score(z.numpy(), y.numpy()), rel=1e-10)


def test_euclidean_indices_are_translation_invariant_and_float32_ok() -> None:
    z, y = _blobs()
    shifted = z + 1e3  # a large offset: centring inside keeps float64 sums accurate
    assert davies_bouldin(shifted, y) == pytest.approx(davies_bouldin(z, y), rel=1e-8)
    assert calinski_harabasz(shifted, y) == pytest.approx(calinski_harabasz(z, y), rel=1e-8)
    assert calinski_harabasz(z.float(), y) == pytest.approx(calinski_harabasz(z, y), rel=1e-5)


@pytest.mark.parametrize("chunk", [1, 5, 1024])
def test_intra_inter_ratio_matches_double_loop(chunk: int) -> None:
    z, y = _blobs(sizes=(9, 4, 13, 2), d=5, sep=1.0, seed=3)
    expected = _ref_ratio(z, y)
    assert 0.5 < expected < 1.0
    assert intra_inter_distance_ratio(z, y, chunk=chunk) == pytest.approx(expected, rel=1e-10)


def test_intra_inter_ratio_orders_separation() -> None:
    tight = intra_inter_distance_ratio(*_blobs(sep=6.0))
    loose = intra_inter_distance_ratio(*_blobs(sep=0.5))
    assert tight < 0.5 < loose < 1.05


@pytest.mark.parametrize("fn", INTERNAL)
def test_internal_indices_invariant_to_sample_order_and_relabelling(fn) -> None:
    z, y = _blobs(seed=4)
    base = fn(z, y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(9))
    assert fn(z[perm], y[perm]) == pytest.approx(base, rel=1e-10)
    assert fn(z, _relabel(y)) == pytest.approx(base, rel=1e-12)


def test_internal_indices_rank_separation_correctly() -> None:
    well, poor = _blobs(sep=6.0), _blobs(sep=0.5)
    assert silhouette_cosine(*well) > silhouette_cosine(*poor)
    assert davies_bouldin(*well) < davies_bouldin(*poor)
    assert calinski_harabasz(*well) > calinski_harabasz(*poor)


# ----------------------------------------------------------------------------- degenerate cases


@pytest.mark.parametrize("fn", INTERNAL)
def test_one_class_raises(fn) -> None:
    z, _ = _blobs()
    with pytest.raises(ValueError, match=r"at least 2 classes, got 1"):
        fn(z, torch.full((len(z),), 3))


@pytest.mark.parametrize("fn", INTERNAL)
def test_one_example_per_class_raises(fn) -> None:
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"each of the 6 examples is alone in its class"):
        fn(z, torch.arange(6))


@pytest.mark.parametrize("fn", INTERNAL)
def test_bad_shapes_raise(fn) -> None:
    z, y = _blobs()
    with pytest.raises(ValueError, match=r"shape"):
        fn(z, y[:-1])
    with pytest.raises(ValueError, match=r"integer"):
        fn(z, y.double())


def test_coincident_centroids_and_collapsed_classes_raise() -> None:
    z = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0], [5.0, 5.0], [5.0, 6.0]])
    y = torch.tensor([0, 0, 1, 1, 2, 2])  # classes 0 and 1 both centred at the origin
    with pytest.raises(ValueError, match=r"classes 0 and 1 .* same centroid"):
        davies_bouldin(z, y)
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match=r"collapsed"):
        calinski_harabasz(collapsed, torch.tensor([0, 0, 1, 1]))
    assert davies_bouldin(collapsed, torch.tensor([0, 0, 1, 1])) == 0.0  # zero spread: a perfect score
    with pytest.raises(ValueError, match=r"inter-class distances are 0"):
        intra_inter_distance_ratio(torch.ones(4, 3), torch.tensor([0, 0, 1, 1]))


# ----------------------------------------------------------------------------- NMI / ARI vs sklearn


@pytest.mark.parametrize(("ka", "kb", "seed"), [(5, 5, 0), (3, 8, 1), (10, 2, 2), (1, 4, 3), (4, 1, 4), (1, 1, 5)])
def test_nmi_and_ari_match_sklearn_on_random_labelings(ka: int, kb: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, ka, (300,), generator=g)
    b = torch.where(torch.rand(300, generator=g) < 0.6, a % kb, torch.randint(0, kb, (300,), generator=g))  # related
    assert normalized_mutual_info(a, b) == pytest.approx(normalized_mutual_info_score(a, b), rel=1e-10, abs=1e-12)
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), rel=1e-10, abs=1e-12)


def test_nmi_and_ari_exact_values_and_invariances() -> None:
    a = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    assert normalized_mutual_info(a, 7 - 3 * a) == 1.0 and adjusted_rand_index(a, 7 - 3 * a) == 1.0
    assert normalized_mutual_info(a, torch.zeros_like(a)) == 0.0
    assert adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])) == -0.5
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 6, (200,), generator=g)
    perm = torch.randperm(200, generator=g)
    for fn in (normalized_mutual_info, adjusted_rand_index):
        base = fn(x, y)
        assert abs(base) < 0.1  # independent labelings
        assert fn(y, x) == pytest.approx(base, rel=1e-12)  # symmetric
        assert fn(x[perm], y[perm]) == pytest.approx(base, rel=1e-12)
        assert fn(_relabel(x), y) == pytest.approx(base, rel=1e-12)


def test_nmi_ari_reject_mismatched_labelings() -> None:
    with pytest.raises(ValueError, match=r"shape"):
        normalized_mutual_info(torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"empty"):
        adjusted_rand_index(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))


# ----------------------------------------------------------------------------- k-means (faiss)


def test_kmeans_recovers_well_separated_classes() -> None:
    z, y = _blobs(sizes=(40, 25, 30, 35), d=16, sep=8.0, seed=2)
    assign = kmeans_assignments(z, 4, seed=0)
    assert assign.shape == (130,) and assign.dtype == torch.int64 and set(assign.tolist()) == {0, 1, 2, 3}
    assert normalized_mutual_info(y, assign) == 1.0 and adjusted_rand_index(y, assign) == 1.0


def test_kmeans_is_seeded_and_close_to_sklearn() -> None:
    z, y = _blobs(sizes=(60,) * 6, d=12, sep=1.2, seed=5)  # overlapping: the answer depends on the optimiser
    for init in ("k-means++", "random"):
        a = kmeans_assignments(z, 6, seed=3, init=init)
        assert torch.equal(a, kmeans_assignments(z, 6, seed=3, init=init))
    ours = normalized_mutual_info(y, kmeans_assignments(z, 6, seed=3))
    u = (z / z.norm(dim=1, keepdim=True)).numpy()
    ref = KMeans(n_clusters=6, n_init=3, max_iter=25, random_state=0).fit_predict(u)
    assert 0.2 < ours < 0.95
    assert ours == pytest.approx(normalized_mutual_info_score(y.numpy(), ref), abs=0.05)


def test_kmeans_rejects_bad_arguments() -> None:
    z, _ = _blobs()
    with pytest.raises(ValueError, match=r"1 <= k <= N"):
        kmeans_assignments(z[:3], 4)
    with pytest.raises(ValueError, match=r"unknown k-means init"):
        kmeans_assignments(z, 3, init="kmeans||")


# ----------------------------------------------------------------------------- linear probe


def test_linear_probe_matches_the_sklearn_pipeline_it_states() -> None:
    ztr, ytr = _blobs(sep=0.6, seed=6)
    zte, yte = _blobs(sep=0.6, seed=6)[0] + 0.3, _blobs(sep=0.6, seed=6)[1]
    got = linear_probe_accuracy(ztr, ytr, zte, yte, C=1.0, max_iter=1000, seed=0)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, random_state=0))
    assert got == pipe.fit(ztr.numpy(), ytr.numpy()).score(zte.numpy(), yte.numpy())
    assert 0.3 < got < 1.0


def test_linear_probe_separable_vs_random_labels() -> None:
    (ztr, ytr), (zte, yte) = _blobs(sep=5.0, seed=7), _blobs(sep=5.0, seed=7)
    assert linear_probe_accuracy(ztr, ytr, zte, yte) == 1.0
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (400,), generator=g)
    assert linear_probe_accuracy(z[:200], y[:200], z[200:], y[200:]) < 0.4  # chance is 0.25


def test_linear_probe_is_invariant_to_train_order_and_relabelling() -> None:
    ztr, ytr = _blobs(sep=0.6, seed=8)
    zte, yte = _blobs(sep=0.6, seed=9)
    base = linear_probe_accuracy(ztr, ytr, zte, yte)
    perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(1))
    assert linear_probe_accuracy(ztr[perm], ytr[perm], zte, yte) == pytest.approx(base, abs=1 / len(yte))
    assert linear_probe_accuracy(ztr, _relabel(ytr), zte, _relabel(yte)) == pytest.approx(base, abs=1 / len(yte))


def test_linear_probe_rejects_one_class_and_dim_mismatch() -> None:
    z, y = _blobs()
    with pytest.raises(ValueError, match=r"at least 2 classes"):
        linear_probe_accuracy(z, torch.zeros_like(y), z, y)
    with pytest.raises(ValueError, match=r"dim"):
        linear_probe_accuracy(z, y, z[:, :3], y)


# ----------------------------------------------------------------------------- the registered analysis


def test_clustering_analysis_wires_test_and_train() -> None:
    ztr, ytr = _blobs(sizes=(30,) * 6, sep=1.5, seed=10)
    zte, yte = _blobs(sep=1.5, seed=11)
    # labels 10..60 in the fixture -> 0..5 as the runner provides them
    ytr, yte = ytr // 10 - 1, yte // 10 - 1
    split = lambda z, y: Extracted(z.float().numpy(), None, y.numpy())  # noqa: E731
    inp = Inputs({"train": split(ztr, ytr), "test": split(zte, yte)}, num_classes=6, seed=0)
    entry = ANALYSES.get("clustering")
    assert entry.meta["needs"] == ("test",) and entry.meta["optional"] == ("train",)
    out = entry.obj(inp)
    m = out.metrics
    directions = {"silhouette": True, "davies_bouldin": False, "calinski_harabasz": True, "kmeans_nmi": True,
                  "kmeans_ari": True, "linear_probe_accuracy": True, "intra_inter_ratio": False}
    assert {k: v["higher_is_better"] for k, v in m.items()} == directions
    z32, y = inp.t("test", "embeddings"), inp.t("test", "labels")
    assert m["silhouette"]["value"] == pytest.approx(silhouette_cosine(z32, y), rel=1e-12)
    assert m["davies_bouldin"]["value"] == pytest.approx(davies_bouldin(z32, y), rel=1e-12)
    assert m["calinski_harabasz"]["value"] == pytest.approx(calinski_harabasz(z32, y), rel=1e-12)
    assert m["intra_inter_ratio"]["value"] == pytest.approx(intra_inter_distance_ratio(z32, y), rel=1e-12)
    assign = torch.from_numpy(out.arrays["kmeans_assignments"])
    assert assign.shape == (len(y),)
    assert torch.equal(assign, kmeans_assignments(z32, 6, seed=0))
    assert m["kmeans_nmi"]["value"] == normalized_mutual_info(y, assign)
    assert m["kmeans_ari"]["value"] == adjusted_rand_index(y, assign)
    assert m["kmeans_nmi"]["settings"]["k"] == 6 and m["kmeans_nmi"]["settings"]["nredo"] >= 3
    probe = linear_probe_accuracy(inp.t("train", "embeddings"), inp.t("train", "labels"), z32, y)
    assert m["linear_probe_accuracy"]["value"] == probe
    assert m["linear_probe_accuracy"]["settings"]["fitted_on"] == "train"
    # settings pass through
    assert clustering(inp, kmeans_nredo=4, probe_C=0.1).metrics["kmeans_ari"]["settings"]["nredo"] == 4


def test_linear_probe_that_stops_early_is_recorded_not_printed(recwarn):
    """sklearn's multi-line ConvergenceWarning does not reach stderr: the metric's settings say converged=False."""
    from sklearn.exceptions import ConvergenceWarning

    from embedlab.analyses.clustering import clustering
    from embedlab.analyses.registry import Inputs
    from embedlab.store import Extracted

    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 4
    z = (torch.randn(120, 16, generator=g) + torch.eye(16)[y] * 0.5).numpy()
    split = Extracted(z, None, y.numpy())
    out = clustering(Inputs({"train": split, "test": split}, 4), probe_max_iter=1)
    assert out.metrics["linear_probe_accuracy"]["settings"]["converged"] is False
    assert not [w for w in recwarn if issubclass(w.category, ConvergenceWarning)]
    out = clustering(Inputs({"train": split, "test": split}, 4))
    assert out.metrics["linear_probe_accuracy"]["settings"]["converged"] is True


def test_kmeans_k_is_the_number_of_classes_in_the_test_set():
    """Classes that only the other splits (or the class list) have are no cluster of the test embeddings: with 3
    classes named and 2 of them in test, k = 2, so k-means NMI/ARI of two well-separated blobs are 1."""
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, 0.1, (20, 4)) + 5 * np.eye(4)[c] for c in (0, 1)]).astype(np.float32)
    y = np.repeat([0, 1], 20)
    inp = Inputs({"test": Extracted(z, None, y)}, 3, ("a", "b", "c"))
    m = clustering(inp).metrics
    assert m["kmeans_nmi"]["settings"]["k"] == 2
    assert m["kmeans_nmi"]["value"] == pytest.approx(1.0) and m["kmeans_ari"]["value"] == pytest.approx(1.0)
