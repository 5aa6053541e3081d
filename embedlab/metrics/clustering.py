"""How well the classes cluster in embedding space (METHODS.md §3, "Clustering").

Functions take embeddings ``z`` (N, d) and integer ``labels`` (N,) and return Python floats, computing in float64
on the device of the inputs; k-means runs in faiss (imported when called) on CPU copies. Labels may be any integers:
classes are the distinct values present. The linear probe is
:func:`embedlab.metrics.classification.linear_probe_accuracy`.

Every function that compares classes needs ``2 <= K <= N - 1`` distinct classes (scikit-learn's rule: at least two
classes, and not every example alone in its class) and raises ``ValueError`` otherwise.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import Tensor

from embedlab.metrics._common import check_chunk, check_labels, check_matrix, to_faiss, upper_triangle_blocks
from embedlab.metrics.geometry import l2_normalize

__all__ = [
    "adjusted_rand_index",
    "calinski_harabasz",
    "davies_bouldin",
    "intra_inter_distance_ratio",
    "kmeans_assignments",
    "normalized_mutual_info",
    "silhouette_cosine",
]

KMEANS_INITS = {"random": "ClusteringInitMethod_RANDOM", "k-means++": "ClusteringInitMethod_KMEANS_PLUS_PLUS"}


def _classes(z: Tensor, labels: Tensor, what: str) -> tuple[Tensor, Tensor, int]:
    """Validate ``(z, labels)``; return labels mapped to ``0..K-1`` on z's device, the class sizes and ``K``."""
    check_matrix("z", z)
    n = z.shape[0]
    check_labels("labels", labels, n)
    _, y = torch.unique(labels.to(z.device), return_inverse=True)  # (N,) in 0..K-1
    k = int(y.max()) + 1 if n else 0
    if k < 2:
        raise ValueError(f"{what} needs at least 2 classes, got {k}")
    if k >= n:
        raise ValueError(f"{what} needs a class with at least 2 examples, but each of the {n} examples is alone "
                         f"in its class")
    return y, torch.bincount(y, minlength=k), k


def _centroids(x: Tensor, y: Tensor, counts: Tensor) -> Tensor:
    """Class means ``(K, d)`` of ``x`` (N, d) under labels ``y`` in ``0..K-1``."""
    sums = torch.zeros(counts.shape[0], x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x)
    return sums / counts[:, None].to(x.dtype)


# ----------------------------------------------------------------------------- internal validity indices


@torch.no_grad()
def silhouette_cosine(z: Tensor, labels: Tensor, chunk: int = 4096) -> float:
    """Mean silhouette coefficient with cosine distance (Rousseeuw 1987), as ``sklearn.metrics.silhouette_score(
    metric="cosine")``. Higher is better; range ``[-1, 1]``.

    Shapes: ``z`` (N, d), ``labels`` (N,) integer.

    With ``u_i = z_i / ||z_i||`` (a zero vector stays zero) and ``D(i, j) = 1 - <u_i, u_j>``, ``D(i, i) = 0``:
    ``a_i = mean_{j in C(i), j != i} D(i, j)``, ``b_i = min_{C != C(i)} mean_{j in C} D(i, j)``,
    ``s_i = (b_i - a_i) / max(a_i, b_i)`` (``0`` when ``C(i)`` is ``{i}`` or both are 0), result ``mean_i s_i``.

    Exact without any pairwise matrix: ``D`` is affine in ``u_j``, so ``sum_{j in C} D(i, j) = |C| - <u_i, S_C>``
    with ``S_C = sum_{j in C} u_j``. Rows are processed ``chunk`` at a time: memory O(chunk * K + K * d).

    >>> z = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
    >>> round(silhouette_cosine(z, torch.tensor([0, 0, 1, 1])), 4)
    0.9991
    """
    y, counts, _ = _classes(z, labels, "silhouette")
    check_chunk(chunk)
    u = l2_normalize(z.detach().to(torch.float64))  # (N, d)
    sums = torch.zeros(counts.shape[0], u.shape[1], dtype=u.dtype, device=u.device).index_add_(0, y, u)  # (K, d)
    sizes = counts.to(u.dtype)  # (K,)
    total = torch.zeros((), dtype=u.dtype, device=u.device)
    for start in range(0, u.shape[0], chunk):
        rows, row_y = u[start:start + chunk], y[start:start + chunk]  # (c, d), (c,)
        dist_sum = sizes[None, :] - rows @ sums.T  # (c, K): sum_{j in class} D(i, j), including j = i
        own_size = sizes[row_y]  # (c,)
        self_dist = 1.0 - (rows * rows).sum(dim=1)  # (c,): 0 for unit rows, 1 for zero rows; D(i, i) must be 0
        a = (dist_sum.gather(1, row_y[:, None])[:, 0] - self_dist) / (own_size - 1).clamp(min=1)
        mean_dist = (dist_sum / sizes[None, :]).scatter_(1, row_y[:, None], math.inf)  # (c, K), own class masked
        b = mean_dist.min(dim=1).values
        denom = torch.maximum(a, b)
        s = torch.where((own_size > 1) & (denom > 0), (b - a) / denom, torch.zeros_like(a))
        total += s.sum()
    return (total / u.shape[0]).item()


@torch.no_grad()
def davies_bouldin(z: Tensor, labels: Tensor) -> float:
    """Davies–Bouldin index (1979) with Euclidean distance, as ``sklearn.metrics.davies_bouldin_score``. Lower is
    better; ``>= 0``.

    Shapes: ``z`` (N, d), ``labels`` (N,) integer.

    With centroids ``mu_k``, spreads ``S_k = mean_{i in C_k} ||z_i - mu_k||_2`` and ``M_kl = ||mu_k - mu_l||_2``:

    ``DB = (1/K) * sum_k max_{l != k} (S_k + S_l) / M_kl``.

    Raises ``ValueError`` if two classes have the same centroid (``M_kl <= 1e-12 max_i ||z_i - mean||``, i.e. 0 up
    to rounding; scikit-learn instead treats such a pair as infinitely far apart).

    >>> z = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
    >>> davies_bouldin(z, torch.tensor([0, 0, 1, 1]))
    0.2
    """
    y, counts, k = _classes(z, labels, "Davies-Bouldin")
    x = z.detach().to(torch.float64)
    x = x - x.mean(dim=0)  # translation-invariant; centring keeps the float64 sums well conditioned
    mu = _centroids(x, y, counts)  # (K, d)
    spread = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, y, (x - mu[y]).norm(dim=1)) / counts
    sep = torch.cdist(mu, mu, compute_mode="donot_use_mm_for_euclid_dist")  # (K, K), exact differences
    off_diag = ~torch.eye(k, dtype=torch.bool, device=x.device)
    # Centroids equal up to float64 rounding of the class sums count as coincident.
    coincident = off_diag & (sep <= 1e-12 * x.norm(dim=1).max())
    if bool(coincident.any()):
        i, j = [int(v) for v in torch.nonzero(coincident)[0]]
        raise ValueError(f"Davies-Bouldin is undefined: classes {i} and {j} (in sorted label order) have the same "
                         f"centroid")
    ratio = (spread[:, None] + spread[None, :]) / sep  # (K, K)
    ratio = ratio.masked_fill(~off_diag, -math.inf)
    return ratio.max(dim=1).values.mean().item()


@torch.no_grad()
def calinski_harabasz(z: Tensor, labels: Tensor) -> float:
    """Calinski–Harabasz index (variance ratio criterion, 1974), as ``sklearn.metrics.calinski_harabasz_score``.
    Higher is better.

    Shapes: ``z`` (N, d), ``labels`` (N,) integer.

    With the global mean ``mu``, class means ``mu_k`` and sizes ``n_k``:
    ``B = sum_k n_k ||mu_k - mu||^2``, ``W = sum_k sum_{i in C_k} ||z_i - mu_k||^2`` and

    ``CH = (B / (K - 1)) / (W / (N - K))``.

    Raises ``ValueError`` if ``W = 0`` (every class collapsed to one point; scikit-learn returns 1.0 there).

    >>> z = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
    >>> calinski_harabasz(z, torch.tensor([0, 0, 1, 1]))
    50.0
    """
    y, counts, k = _classes(z, labels, "Calinski-Harabasz")
    x = z.detach().to(torch.float64)
    x = x - x.mean(dim=0)  # (N, d); now mu = 0
    mu = _centroids(x, y, counts)  # (K, d)
    between = (counts.to(x.dtype) * mu.square().sum(dim=1)).sum()
    within = (x - mu[y]).square().sum()
    if within.item() == 0.0:
        raise ValueError("Calinski-Harabasz is undefined: every class is collapsed to a single point (W = 0)")
    n = x.shape[0]
    return (between * (n - k) / (within * (k - 1))).item()


@torch.no_grad()
def intra_inter_distance_ratio(z: Tensor, labels: Tensor, chunk: int = 1024) -> float:
    """Mean intra-class over mean inter-class distance of ℓ2-normalised embeddings. Lower is better; ``>= 0``.

    Shapes: ``z`` (N, d), ``labels`` (N,) integer.

    With ``u_i = z_i / ||z_i||_2``, ``P_same = {i < j : y_i = y_j}`` and ``P_diff = {i < j : y_i != y_j}``:

    ``ratio = mean_{(i,j) in P_same} ||u_i - u_j||_2  /  mean_{(i,j) in P_diff} ||u_i - u_j||_2``

    (plain, not squared, Euclidean distance; every pair weighs the same, so larger classes weigh more). Exact,
    streamed over ``chunk`` rows of the upper triangle at a time (memory O(chunk * N)), accumulated in float64.
    Raises ``ValueError`` if all inter-class distances are 0.

    >>> z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    >>> intra_inter_distance_ratio(z, torch.tensor([0, 0, 1, 1]))
    0.0
    """
    y, counts, _ = _classes(z, labels, "intra/inter distance ratio")
    check_chunk(chunk)
    u = l2_normalize(z.detach().to(torch.float64))
    n = u.shape[0]
    n_same = int((counts * (counts - 1) // 2).sum())
    n_diff = n * (n - 1) // 2 - n_same
    same_sum = torch.zeros((), dtype=u.dtype, device=u.device)
    all_sum = torch.zeros((), dtype=u.dtype, device=u.device)
    for start, end, sq_dist, upper in upper_triangle_blocks(u, chunk):
        dist = sq_dist.sqrt_()  # (c, N - start)
        same = upper & (y[start:end, None] == y[None, start:])
        all_sum += dist.masked_fill_(~upper, 0.0).sum()
        same_sum += dist.masked_fill_(~same, 0.0).sum()
    inter = (all_sum - same_sum).item() / n_diff
    if inter == 0.0:
        raise ValueError("intra/inter distance ratio is undefined: all inter-class distances are 0")
    return same_sum.item() / n_same / inter


# ----------------------------------------------------------------------------- k-means and agreement with labels


@torch.no_grad()
def kmeans_assignments(z: Tensor, k: int, *, seed: int = 0, niter: int = 25, nredo: int = 3,
                       init: str = "k-means++", normalize: bool = True) -> Tensor:
    """Cluster index of each embedding from faiss k-means (Lloyd), best of ``nredo`` runs by k-means objective.

    Shapes: ``z`` (N, d) -> (N,) int64 in ``[0, k)``, on ``z``'s device.

    Minimises ``sum_i min_c ||x_i - m_c||_2^2`` over centroids ``m``, with ``x_i = z_i / ||z_i||`` when
    ``normalize`` (default: the cosine geometry of the kNN and silhouette metrics) and ``x = z`` otherwise.
    ``niter`` Lloyd iterations per run (no early stop), ``init`` ``"k-means++"`` or ``"random"`` (k distinct
    points), seeded by ``seed``; all points are used (no faiss subsampling). Runs on a float32 CPU copy.

    >>> z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> a = kmeans_assignments(z, 2)
    >>> bool(a[0] == a[1]) and bool(a[2] == a[3]) and bool(a[0] != a[2])
    True
    """
    check_matrix("z", z)
    n = z.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= N, got k = {k} for N = {n}")
    if niter < 1 or nredo < 1:
        raise ValueError(f"niter and nredo must be >= 1, got niter={niter}, nredo={nredo}")
    if init not in KMEANS_INITS:
        raise ValueError(f"unknown k-means init {init!r}; known: {sorted(KMEANS_INITS)}")
    import faiss

    init_method = getattr(faiss, KMEANS_INITS[init], None)
    if init_method is None:
        raise ValueError(f"this faiss ({faiss.__version__}) has no {init!r} initialisation; use init='random'")
    x = l2_normalize(z.detach().float()) if normalize else z.detach().float()
    x_np = to_faiss(x)
    km = faiss.Kmeans(x_np.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=False, init_method=init_method,
                      min_points_per_centroid=1, max_points_per_centroid=max(n, 1))
    km.train(x_np)
    _, idx = km.index.search(x_np, 1)
    return torch.from_numpy(idx[:, 0]).to(torch.int64).to(z.device)


def _contingency(labels_true: Tensor, labels_pred: Tensor) -> Tensor:
    """Contingency table ``(K_true, K_pred)`` int64 of two labelings of the same N examples."""
    if not isinstance(labels_true, Tensor) or labels_true.ndim != 1:
        raise ValueError("labels_true must be a 1-d integer torch.Tensor")
    check_labels("labels_true", labels_true, labels_true.shape[0])
    check_labels("labels_pred", labels_pred, labels_true.shape[0])
    if labels_true.shape[0] == 0:
        raise ValueError("labelings are empty (N = 0)")
    _, a = torch.unique(labels_true, return_inverse=True)
    _, b = torch.unique(labels_pred.to(labels_true.device), return_inverse=True)
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    return torch.bincount(a * kb + b, minlength=ka * kb).view(ka, kb)


@torch.no_grad()
def normalized_mutual_info(labels_true: Tensor, labels_pred: Tensor) -> float:
    """Normalised mutual information with arithmetic-mean normalisation, as ``sklearn.metrics.
    normalized_mutual_info_score``. Higher is better; range ``[0, 1]``; symmetric, invariant to relabelling.

    Shapes: ``labels_true`` (N,), ``labels_pred`` (N,) integer.

    With the contingency table ``n_ab``, ``p_ab = n_ab / N`` and marginals ``p_a``, ``p_b`` (natural log):
    ``MI = sum_ab p_ab log(p_ab / (p_a p_b))``, ``H(A) = -sum_a p_a log p_a`` and

    ``NMI = MI / ((H(A) + H(B)) / 2)``; 1 when both labelings have one cluster, 0 when ``MI = 0``.

    >>> normalized_mutual_info(torch.tensor([0, 0, 1, 1]), torch.tensor([5, 5, 2, 2]))
    1.0
    """
    c = _contingency(labels_true, labels_pred).to(torch.float64)  # (Ka, Kb)
    if c.shape[0] == c.shape[1] == 1:
        return 1.0
    p = c / c.sum()
    pa, pb = p.sum(dim=1), p.sum(dim=0)
    nz = p > 0
    mi = (p[nz] * (p[nz].log() - (pa[:, None] * pb[None, :])[nz].log())).sum().clamp(min=0.0).item()
    if mi == 0.0:
        return 0.0
    h_a = -(pa * pa.log()).sum().item()
    h_b = -(pb * pb.log()).sum().item()
    return mi / ((h_a + h_b) / 2.0)


@torch.no_grad()
def adjusted_rand_index(labels_true: Tensor, labels_pred: Tensor) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985), as ``sklearn.metrics.adjusted_rand_score``. Higher is better;
    1 for identical partitions, about 0 for independent ones, can be negative.

    Shapes: ``labels_true`` (N,), ``labels_pred`` (N,) integer.

    With the contingency table ``n_ab`` and margins ``a_i``, ``b_j``: ``I = sum_ab C(n_ab, 2)``,
    ``A = sum_i C(a_i, 2)``, ``B = sum_j C(b_j, 2)``, ``E = A B / C(N, 2)`` and

    ``ARI = (I - E) / ((A + B) / 2 - E)``; 1 when the partitions agree on every pair (``I = A = B``).
    Counts are combined in exact integer/rational arithmetic.

    >>> adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]))
    -0.5
    """
    c = _contingency(labels_true, labels_pred)  # (Ka, Kb) int64

    def pairs(counts: Tensor) -> int:
        return int((counts * (counts - 1) // 2).sum())

    index, a, b = pairs(c), pairs(c.sum(dim=1)), pairs(c.sum(dim=0))
    if index == a == b:
        return 1.0
    n = int(c.sum())
    expected = Fraction(a * b, n * (n - 1) // 2)
    return float((index - expected) / (Fraction(a + b, 2) - expected))
