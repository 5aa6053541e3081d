"""2-D UMAP layouts of saved embeddings, with an exact faiss kNN graph handed to UMAP.

The kNN graph comes from faiss (exact, inner product on normalised vectors for cosine) whenever the metric allows:
it is exact like umap-learn's own search below 4,096 points (a pairwise-distance matrix, computed there one pair at a
time in Python) and like NN-descent's target above, and faster than both (``benchmarks/report_speed.py``).
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from embedlab.errors import EmbedlabError

FAISS_METRICS = ("cosine", "euclidean")


def umap_2d(
    embeddings: np.ndarray,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    seed: int = 0,
    max_points: int | None = None,
    use_faiss: bool | None = None,
    n_epochs: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Project ``embeddings`` (N, d) to 2-D with UMAP; return ``(coords (n, 2) float32, idx (n,) int64)``.

    ``idx`` are the rows of ``embeddings`` that were laid out (all of them unless ``max_points`` < N, in which case
    a sorted random subsample drawn with ``numpy.random.default_rng(seed)``). The layout is seeded and therefore
    reproducible. ``use_faiss=None`` uses faiss for the kNN graph when the metric is cosine or euclidean; ``True``
    requires it, ``False`` leaves neighbour search to umap. ``n_neighbors`` is clipped to n - 1.
    ``n_epochs`` is umap's number of layout epochs (None: umap's default, 500 below 10,000 points, else 200).
    """
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise EmbedlabError(f"embeddings must be a 2-D (N, d) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise EmbedlabError("embeddings contain NaN or infinite values; cannot compute UMAP")
    if n_neighbors < 2:
        raise EmbedlabError(f"UMAP n_neighbors must be at least 2, got {n_neighbors}")
    if max_points is not None and max_points < 1:
        raise EmbedlabError(f"max_points must be a positive integer, got {max_points}")
    if n_epochs is not None and n_epochs < 1:
        raise EmbedlabError(f"n_epochs must be a positive integer, got {n_epochs}")

    n_total = len(x)
    idx = np.arange(n_total, dtype=np.int64)
    if max_points is not None and n_total > max_points:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(n_total, size=max_points, replace=False)).astype(np.int64)
    x = np.ascontiguousarray(x[idx], dtype=np.float32)
    n = len(x)

    if n <= 3:  # too few points for UMAP's graph/spectral init: a fixed, trivial layout
        return _trivial_layout(n), idx

    k = min(n_neighbors, n - 1)
    use_faiss = uses_faiss(metric, use_faiss)

    with warnings.catch_warnings():  # deferred: importing umap/numba is slow
        warnings.simplefilter("ignore", ImportWarning)  # "Tensorflow not installed; ParametricUMAP unavailable"
        import umap

    kwargs: dict = dict(
        n_components=2,
        n_neighbors=k,
        min_dist=min_dist,
        metric=metric,
        random_state=seed,
        n_jobs=1,  # umap is single-threaded anyway once seeded; saying so avoids its warning
        init="spectral" if n > 4 else "random",
        n_epochs=n_epochs,
    )
    with warnings.catch_warnings():
        # precomputed_knn without a pynndescent index only disables .transform(), which we never call
        warnings.filterwarnings("ignore", message=r".*knn_search_index.*")
        if use_faiss:
            kwargs["precomputed_knn"] = knn_graph(x, k, metric=metric)
        try:
            coords = umap.UMAP(**kwargs).fit_transform(x)
        except ValueError as e:  # bad user-supplied settings (metric name, min_dist...)
            raise EmbedlabError(f"UMAP failed: {' '.join(str(e).split())}") from e
    return np.asarray(coords, dtype=np.float32), idx


PARALLEL_MIN_POINTS = 20_000  # below this many points in all, worker processes cost more (start, compile) than they save
MAX_WORKERS = 4


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_workers(sizes: Sequence[int]) -> int:
    """Worker processes for laying out inputs of these sizes: 1 (this process) for little work, else one per input
    up to 1 + the idle cores (available cores minus the 1-minute load average) and :data:`MAX_WORKERS`.

    Each worker compiles umap's numba code again (about 6 CPU seconds), which pays off only on cores that would
    otherwise idle: on a free 2-core machine two workers cut a 6 x 10,000-point report by about a third, on a busy
    one they slow it down (``benchmarks/report_speed.py``).
    """
    if len(sizes) < 2 or sum(sizes) < PARALLEL_MIN_POINTS:
        return 1
    cores = available_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this platform: assume a free machine
        load = 0.0
    idle = int(max(0.0, cores - load))
    return max(1, min(len(sizes), cores, MAX_WORKERS, 1 + idle))


def _layout_job(args: tuple[np.ndarray, dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    x, settings = args
    return umap_2d(x, **settings)


def umap_layouts(inputs: Sequence[np.ndarray], settings: Mapping[str, Any],
                 workers: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`umap_2d` of each input with the same ``settings``; ``workers`` processes (None: :func:`auto_workers`).

    Each layout is seeded and single-threaded, so the result does not depend on ``workers``. Workers are started
    with "spawn" (safe in a process that holds threads, e.g. torch's) and each compiles umap's numba code once; if
    they cannot be started, the layouts are computed here.
    """
    settings = dict(settings)
    workers = auto_workers([len(x) for x in inputs]) if workers is None else max(1, int(workers))
    workers = min(workers, len(inputs))
    if workers <= 1:
        return [umap_2d(x, **settings) for x in inputs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(_layout_job, [(np.asarray(x), settings) for x in inputs]))
    except (OSError, BrokenProcessPool):  # no processes in this environment: do it here
        return [umap_2d(x, **settings) for x in inputs]


def uses_faiss(metric: str, use_faiss: bool | None = None) -> bool:
    """Whether :func:`umap_2d` builds the kNN graph with faiss (see its ``use_faiss``)."""
    if use_faiss is None:
        return metric in FAISS_METRICS
    if use_faiss and metric not in FAISS_METRICS:
        raise EmbedlabError(f"faiss kNN supports metric {' or '.join(FAISS_METRICS)}, not {metric!r}")
    return bool(use_faiss)


def knn_graph(x: np.ndarray, k: int, *, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN with faiss: ``(indices (n, k) int64, distances (n, k) float32)``, each row's own point first.

    Distances are what umap expects for ``metric``: cosine distance ``1 - cos`` (clipped to [0, 2]) or euclidean
    distance (the square root of faiss's squared L2).
    """
    import faiss  # deferred: only needed for large inputs or when forced

    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if metric == "cosine":
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        index: faiss.Index = faiss.IndexFlatIP(xn.shape[1])
        index.add(xn)
        sims, ind = index.search(xn, k)
        dists = np.clip(1.0 - sims, 0.0, 2.0)
    elif metric == "euclidean":
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x)
        sq, ind = index.search(x, k)
        dists = np.sqrt(np.maximum(sq, 0.0))
    else:
        raise EmbedlabError(f"faiss kNN supports metric {' or '.join(FAISS_METRICS)}, not {metric!r}")
    ind, dists = _self_first(ind.astype(np.int64), dists.astype(np.float32))
    return ind, dists


def _self_first(ind: np.ndarray, dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make each row's own index its first neighbour at distance 0 (duplicates can displace it in faiss's order)."""
    rows = np.arange(len(ind), dtype=np.int64)[:, None]
    ind, dists = ind.copy(), dists.copy()
    missing = ~(ind == rows).any(axis=1)
    ind[missing, -1] = rows[missing, 0]
    order = np.argsort(ind != rows, axis=1, kind="stable")  # self (False) first, the rest in distance order
    ind = np.take_along_axis(ind, order, axis=1)
    dists = np.take_along_axis(dists, order, axis=1)
    dists[:, 0] = 0.0
    return ind, dists


def _trivial_layout(n: int) -> np.ndarray:
    """Points evenly spaced on the unit circle (a single point at the origin)."""
    if n <= 1:
        return np.zeros((n, 2), dtype=np.float32)
    angles = 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
