"""Report speed: render a 6-model x 10,000-point report, and UMAP with a faiss kNN graph vs umap-learn's own search.

    python benchmarks/report_speed.py                 # both parts (three runs), Markdown tables on stdout
    python benchmarks/report_speed.py --part render   # or: --part umap

Part 1 writes synthetic results files (extraction excluded): per model 10,000 test embeddings (d = 128, 10 classes),
logits, 2,000 32x32 RGB thumbnails, a 50-epoch history and the plot data and metrics every analysis writes
(calibration, robustness, two OOD sets x 8 scores, ...), then times ``load_report_inputs`` + ``render_report`` in this
process with the report defaults (UMAP of every point, faiss kNN graph, 200 epochs; layouts in worker processes
only on idle cores, see ``reports.umap_embed.auto_workers``; umap's import and numba compilation included), then
forced to one process (``--workers 1``) and to two worker processes (``--workers 2``). Budget: 60 s on 2 CPU cores. CPU time includes the worker processes.

Part 2 lays out 50,000 points (d = 128, 50 classes) twice with the same UMAP settings: kNN graph from faiss (exact,
what the report does) and from umap-learn's NN-descent. Both paths are compiled on a small input
first, so the timings compare warm code; the compile time is listed separately. The layouts are compared by kNN
preservation (share of each point's 15 exact high-dimensional neighbours among its 15 nearest in 2-D, over 5,000
sampled points), trustworthiness (scikit-learn, 15 neighbours, on a 5,000-point subsample) and 2-D kNN accuracy.
The exact faiss search costs O(n^2 d): it is cheap at the report's default 10,000 points and, at 50,000, comparable
to NN-descent only once NN-descent's numba compilation (paid once per process) is counted.

Wall and CPU time are both printed: on a shared machine the wall time includes waiting for a core. With
``--part all`` (the default) each run is a fresh process.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_seconds() -> float:
    """CPU time of this process plus its finished child processes (the report's layout workers)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@contextmanager
def timer(into: dict[str, tuple[float, float]], key: str) -> Iterator[None]:
    w, c = time.perf_counter(), cpu_seconds()
    yield
    into[key] = (time.perf_counter() - w, cpu_seconds() - c)


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.processor() or platform.machine()}, {cores} cores available, load average {load:.1f}"


# --------------------------------------------------------------------------------------------- part 1: render


def write_synthetic(root: Path, name: str, seed: int, n: int = 10_000, d: int = 128, k: int = 10,
                    n_thumbs: int = 2000) -> None:
    data = np.random.default_rng(1234)  # the test set: the same labels and images for every model
    labels = data.integers(0, k, n).astype(np.int64)
    idx = np.sort(data.permutation(n)[:n_thumbs]).astype(np.int64)
    coarse = data.integers(0, 256, (n_thumbs, 4, 4, 3)).astype(np.float64)  # smooth images, not noise
    thumbs = np.clip(np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
                     + data.normal(0, 12, (n_thumbs, 32, 32, 3)), 0, 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 2.5
    emb = (centers[labels] + rng.normal(size=(n, d))).astype(np.float32)
    logits = (np.eye(k)[labels] * 4 + rng.normal(size=(n, k)) * 1.5).astype(np.float32)
    out = root / name
    out.mkdir(parents=True)
    np.savez(out / "arrays.npz", embeddings=emb, labels=labels, logits=logits, thumbnail_index=idx, thumbnails=thumbs)

    def m(v: float, hib: bool | None, analysis: str, **settings: Any) -> dict[str, Any]:
        return {"value": float(v), "higher_is_better": hib, "analysis": analysis, "settings": settings}

    metrics = {"accuracy": m(rng.uniform(0.8, 0.95), True, "accuracy"),
               "knn_accuracy": m(rng.uniform(0.8, 0.95), True, "knn", k=20),
               "alignment": m(rng.uniform(0.2, 0.8), False, "align_uniform"),
               "uniformity": m(rng.uniform(-3, -1), False, "align_uniform"),
               "embedding_mmlb": m(rng.uniform(0, 0.05), False, "embedding_mmlb")}
    for key in ("ece", "adaptive_ece", "mce", "nll", "brier"):
        metrics[key] = m(rng.uniform(0, 0.3), False, "calibration")
        metrics[key + "_ts"] = m(rng.uniform(0, 0.1), False, "calibration")
    metrics["temperature"] = m(rng.uniform(0.5, 2), None, "calibration")
    for key, hib in (("silhouette", True), ("davies_bouldin", False), ("calinski_harabasz", True), ("kmeans_nmi", True),
                     ("kmeans_ari", True), ("linear_probe_accuracy", True), ("intra_inter_ratio", False)):
        metrics[key] = m(rng.uniform(0, 1), hib, "clustering")
    scores = ("msp", "maxlogit", "energy", "odin", "mahalanobis", "knn", "vim", "react")
    sets = ("gaussian", "uniform")
    ood_sets: dict[str, Any] = {}
    for s in sets:
        ood_sets[s] = {}
        for sc in scores:
            for key in ("auroc", "aupr_in", "aupr_out", "fpr95"):
                metrics[f"ood/{s}/{sc}/{key}"] = m(rng.uniform(0.3, 1), key != "fpr95", "ood", set=s, score=sc)
            fpr = np.sort(rng.uniform(0, 1, 200))
            ood_sets[s][sc] = {"hist": {"edges": np.linspace(-5, 5, 41).tolist(), "id": rng.integers(0, 500, 40).tolist(),
                                        "ood": rng.integers(0, 500, 40).tolist()},
                               "roc": {"fpr": fpr.tolist(), "tpr": np.sqrt(fpr).tolist()}}
    for sc in scores:
        for key in ("auroc", "fpr95"):
            metrics[f"ood/mean/{sc}/{key}"] = m(rng.uniform(0.3, 1), key != "fpr95", "ood", score=sc)
    robustness = {}
    for attack, norm, grid in (("fgsm_linf", "Linf", [1, 2, 4, 8]), ("pgd_linf", "Linf", [1, 2, 4, 8]),
                               ("pgd_l2", "L2", [0.125, 0.25, 0.5, 1.0])):
        acc = np.sort(rng.uniform(0, 0.9, len(grid)))[::-1]
        for e, a in zip(grid, acc):
            metrics[f"robust_acc/{attack}/eps={e:g}" + ("/255" if norm == "Linf" else "")] = m(a, True, "robustness")
        robustness[attack] = {"eps": [0.0, *map(float, grid)], "accuracy": [0.9, *acc.tolist()], "norm": norm,
                              "eps_unit": "1/255" if norm == "Linf" else "L2"}
    metrics["clean_acc_subset"] = m(0.9, True, "robustness")

    def diagram() -> dict[str, Any]:
        count = rng.integers(0, 2000, 15).tolist()
        return {"lower": [i / 15 for i in range(15)], "upper": [(i + 1) / 15 for i in range(15)], "count": count,
                "confidence": [(i + 0.5) / 15 if c else None for i, c in enumerate(count)],
                "accuracy": [float(rng.uniform(0, 1)) if c else None for c in count]}

    history = [{"epoch": e, "train_loss": 2 / e, "val_loss": 1.8 / e, "val_accuracy": 1 - 0.5 / e, "lr": 0.1,
                "seconds": 10.0} for e in range(1, 51)]
    results = {
        "schema_version": 1, "kind": "embedlab.analysis",
        "model": {"name": name, "source": f"runs/{name}/model.safetensors", "sha256": f"{seed:064x}",
                  "meta": {"method": {"name": name, "options": {"alpha": 1.0}}, "model": {"name": "preact-resnet18"},
                           "dataset": {"name": "synthetic"}, "history": history,
                           "config": {"epochs": 50, "seed": 0, "method": name, "dataset": "synthetic"},
                           "hardware": {"device": "cuda", "gpu": "synthetic"}, "versions": {"torch": "2.14.1"}}},
        "dataset": {"name": "synthetic", "split": "test", "num_examples": n, "classes": [f"class {i}" for i in range(k)]},
        "metrics": metrics,
        "plots": {"calibration": {"reliability": diagram(), "reliability_ts": diagram()}, "robustness": robustness,
                  "embedding_mmlb": {"per_class": {f"class {i}": 0.01 for i in range(k)}},
                  "ood": {"conventions": {"orientation": "every score: higher = more in-distribution"},
                          "skipped_scores": {}, "sets": ood_sets}},
        "skipped": {}, "settings": {}, "arrays": "arrays.npz", "created_utc": "2026-11-22T00:00:00Z",
        "versions": {"embedlab": "0.1.0"},
    }
    (out / "results.json").write_text(json.dumps(results))


def bench_render(models: int, points: int, workers: int | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="report-speed-"))
    try:
        for i in range(models):
            write_synthetic(tmp / "results", f"model{i}", seed=i, n=points)
        import embedlab.reports.figures as figures
        from embedlab.reports.umap_embed import auto_workers

        t: dict[str, tuple[float, float]] = {}
        real_layouts = figures.group_layouts

        def timed_layouts(*a: Any, **kw: Any) -> Any:
            with timer(t, "umap"):
                return real_layouts(*a, **kw)

        figures.group_layouts = timed_layouts  # type: ignore[assignment]
        from embedlab.reports import load_report_inputs, render_report

        at_start = machine()
        decided = auto_workers([points] * models) if workers is None else workers  # what the report would choose

        with timer(t, "total"):
            with timer(t, "load"):
                inputs = load_report_inputs([tmp / "results"])
            with timer(t, "render"):
                out = render_report(inputs.results, tmp / "report.html", studies=inputs.studies, workers=decided)
        size = out.stat().st_size
        mode = f"{decided} worker processes" if decided > 1 else "in this process"
        how = "chosen by the report" if workers is None else f"--workers {workers}"
        print(f"### Render: {models} models x {points:,} test points, UMAP layouts {mode} ({how}; at start: {at_start})\n")
        print("| step | wall (s) | CPU (s) |")
        print("|---|---:|---:|")
        print(f"| load results ({models} x results.json + arrays.npz) | {t['load'][0]:.1f} | {t['load'][1]:.1f} |")
        print(f"| UMAP layouts of {models} models (incl. umap import and numba compilation per process) | "
              f"{t['umap'][0]:.1f} | {t['umap'][1]:.1f} |")
        print(f"| tables, other figures, thumbnails, HTML | {t['render'][0] - t['umap'][0]:.1f} | "
              f"{t['render'][1] - t['umap'][1]:.1f} |")
        print(f"| **total (load + render)** | **{t['total'][0]:.1f}** | **{t['total'][1]:.1f}** |")
        print(f"\nReport file: {size / 1e6:.1f} MB; 60 s budget (wall): {'met' if t['total'][0] < 60 else 'NOT met'}.\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------- part 2: faiss vs NN-descent


def blobs(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class clusters spread along random 3-dimensional subspaces plus a little isotropic noise (embedding-like:
    each class a low-dimensional, anisotropic cloud)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    centers = rng.normal(size=(k, d)) * 1.2
    bases = rng.normal(size=(k, 3, d)) / np.sqrt(d) * 3.0
    z = rng.normal(size=(n, 3))
    x = centers[labels] + np.einsum("nj,njd->nd", z, bases[labels]) + rng.normal(size=(n, d)) * 0.1
    return x.astype(np.float32), labels


def knn_preservation(x: np.ndarray, y2: np.ndarray, sample: np.ndarray, k: int = 15) -> float:
    import faiss

    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    hi = faiss.IndexFlatIP(xn.shape[1])
    hi.add(xn)
    _, nb_hi = hi.search(xn[sample], k + 1)
    lo = faiss.IndexFlatL2(2)
    lo.add(np.ascontiguousarray(y2, dtype=np.float32))
    _, nb_lo = lo.search(np.ascontiguousarray(y2[sample], dtype=np.float32), k + 1)
    hits = [len((set(a) - {i}) & (set(b) - {i})) / k for i, a, b in zip(sample, nb_hi, nb_lo)]
    return float(np.mean(hits))


def bench_umap(n: int, d: int, k: int, neighbors: int, epochs: int) -> None:
    from sklearn.manifold import trustworthiness
    from sklearn.neighbors import KNeighborsClassifier

    from embedlab.reports.umap_embed import knn_graph

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap

    x, labels = blobs(n, d, k, seed=0)
    t: dict[str, tuple[float, float]] = {}

    def layout(precomputed: Any, data: np.ndarray, **extra: Any) -> np.ndarray:
        kw: dict[str, Any] = dict(n_components=2, n_neighbors=neighbors, min_dist=0.1, metric="cosine", random_state=0,
                                  n_jobs=1, n_epochs=epochs, init="spectral", **extra)
        if precomputed is not None:
            kw["precomputed_knn"] = precomputed
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore")
            return np.asarray(umap.UMAP(**kw).fit_transform(data), dtype=np.float32)

    small = x[:3000]
    with timer(t, "compile_faiss"):
        layout(knn_graph(small, neighbors), small)
    with timer(t, "compile_nnd"):  # below 4,096 points umap would use exact distances: force NN-descent to compile it
        layout(None, small, force_approximation_algorithm=True)
    with timer(t, "knn_faiss"):
        graph = knn_graph(x, neighbors)
    with timer(t, "layout_faiss"):
        y_faiss = layout(graph, x)
    with timer(t, "umap_nnd"):
        y_nnd = layout(None, x)

    # how close NN-descent's graph is to the exact one
    from pynndescent import NNDescent

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        nnd = NNDescent(x, n_neighbors=neighbors, metric="cosine", random_state=0, n_jobs=1, low_memory=True,
                        n_trees=min(64, 5 + int(round((n ** 0.5) / 20.0))), n_iters=max(5, int(round(np.log2(n)))))
    approx = nnd.neighbor_graph[0]
    recall = float(np.mean([len(set(a) & set(b)) / neighbors for a, b in zip(graph[0], approx)]))

    rng = np.random.default_rng(1)
    sample = rng.choice(n, 5000, replace=False)
    rows = []
    for name, y2, total in (("faiss exact kNN → UMAP", y_faiss, t["knn_faiss"][0] + t["layout_faiss"][0]),
                            ("umap-learn NN-descent → UMAP", y_nnd, t["umap_nnd"][0])):
        pres = knn_preservation(x, y2, sample, neighbors)
        trust = trustworthiness(x[sample], y2[sample], n_neighbors=neighbors, metric="cosine")
        knn_acc = KNeighborsClassifier(15).fit(y2[sample[:4000]], labels[sample[:4000]]).score(
            y2[sample[4000:]], labels[sample[4000:]])
        rows.append((name, total, pres, trust, knn_acc))
    print(f"### UMAP of {n:,} points (d = {d}, {k} classes): faiss kNN graph vs umap-learn's NN-descent ({machine()})\n")
    print(f"Same UMAP settings for both: n_neighbors={neighbors}, min_dist=0.1, metric=cosine, n_epochs={epochs}, "
          "random_state=0 (single-threaded), spectral init.\n")
    print("| step | wall (s) | CPU (s) |")
    print("|---|---:|---:|")
    print(f"| numba compile + first small layout, faiss path | {t['compile_faiss'][0]:.1f} | {t['compile_faiss'][1]:.1f} |")
    print(f"| numba compile (NN-descent) + small layout, umap path | {t['compile_nnd'][0]:.1f} | {t['compile_nnd'][1]:.1f} |")
    print(f"| faiss exact kNN graph (IndexFlatIP) | {t['knn_faiss'][0]:.1f} | {t['knn_faiss'][1]:.1f} |")
    print(f"| UMAP layout from the faiss graph | {t['layout_faiss'][0]:.1f} | {t['layout_faiss'][1]:.1f} |")
    print(f"| **faiss path total** | **{t['knn_faiss'][0] + t['layout_faiss'][0]:.1f}** | "
          f"**{t['knn_faiss'][1] + t['layout_faiss'][1]:.1f}** |")
    print(f"| **umap-learn path total (NN-descent + layout)** | **{t['umap_nnd'][0]:.1f}** | **{t['umap_nnd'][1]:.1f}** |")
    for label, parts in (("faiss path", ("compile_faiss", "knn_faiss", "layout_faiss")),
                         ("umap-learn path", ("compile_nnd", "umap_nnd"))):
        print(f"| {label} in a fresh process (compile + total) | {sum(t[k][0] for k in parts):.1f} | "
              f"{sum(t[k][1] for k in parts):.1f} |")
    print()
    print(f"| layout | wall (s) | kNN preservation@{neighbors} | trustworthiness@{neighbors} | 2-D kNN accuracy |")
    print("|---|---:|---:|---:|---:|")
    for name, total, pres, trust, acc in rows:
        print(f"| {name} | {total:.1f} | {pres:.3f} | {trust:.4f} | {acc:.3f} |")
    print(f"\nNN-descent graph recall against the exact graph: {recall:.3f} (share of exact {neighbors}-NN found).\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("render", "umap", "all"), default="all")
    ap.add_argument("--models", type=int, default=6)
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--umap-points", type=int, default=50_000)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=0, help="layout processes for the render part (0: the report's default)")
    args = ap.parse_args()
    common = ["--models", str(args.models), "--points", str(args.points), "--umap-points", str(args.umap_points),
              "--epochs", str(args.epochs)]
    if args.part == "all":  # one fresh process per run, so each pays its own imports and numba compilation
        import subprocess

        for extra in (["--part", "render"], ["--part", "render", "--workers", "1"], ["--part", "render", "--workers", "2"],
                      ["--part", "umap"]):
            subprocess.run([sys.executable, __file__, *extra, *common], check=True)
    elif args.part == "render":
        bench_render(args.models, args.points, args.workers or None)
    else:
        bench_umap(args.umap_points, 128, 50, 15, args.epochs)


if __name__ == "__main__":
    main()
