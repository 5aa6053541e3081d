"""Speed and agreement of embedlab's analysis maths against scikit-learn, plus the memory of the pairwise metrics.

On synthetic clustered embeddings (``--classes`` isotropic Gaussian classes in R^d with N(0, I) means and noise
``--noise``, seeded; bank and query sets drawn independently), in one run on CPU:

- weighted kNN accuracy (cosine, k=20, T=0.07): ``embedlab.metrics.classification.knn_accuracy`` (faiss ``IndexFlatIP``) vs
  ``sklearn.neighbors.KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute")`` with the same
  ``exp(similarity / T)`` weights (so both compute the same classifier), ``--queries`` queries against an ``--n`` bank;
- k-means, k = #classes, on ℓ2-normalised embeddings: ``embedlab.metrics.clustering.kmeans_assignments`` (faiss) vs
  ``sklearn.cluster.KMeans`` with the same k, k-means++ init, ``n_init = nredo``, ``max_iter = niter`` and
  ``tol=0`` (faiss always runs ``niter`` iterations; scikit-learn also stops when no label changes); agreement is
  the NMI of each against the labels;
- alignment and uniformity (exact, streamed) on the ``--n`` bank: time and peak resident-memory growth, each in a
  fresh process (peak reset through ``/proc/self/clear_refs`` where available, else ``ru_maxrss`` growth), against
  the 4·N² bytes an N×N float32 matrix would need.

On a shared or loaded machine pass ``--threads 1``: OpenMP thread pools that spin-wait (faiss, scikit-learn) slow
down badly when their threads are descheduled. The fast rows are the median of ``--repeats`` runs; a scikit-learn
row whose first run exceeds 60 s is run once (the table says so). Compare the ratios within one run, not
absolute times across runs.

    python benchmarks/analysis_speed.py                       # 50,000 x 512 bank, 10,000 queries, 100 classes
    python benchmarks/analysis_speed.py --n 5000 --d 64 --queries 1000 --classes 10   # a quick look
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import sklearn
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from embedlab.metrics.classification import knn_accuracy
from embedlab.metrics.clustering import kmeans_assignments
from embedlab.metrics.geometry import alignment, uniformity

SLOW_S = 60.0  # a reference run slower than this is not repeated


def make_data(n: int, queries: int, d: int, classes: int, noise: float, seed: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bank ``(n, d)`` and queries ``(queries, d)`` float32 with balanced, shuffled labels in ``[0, classes)``."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, d, generator=g)  # (C, d)

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = (torch.arange(m) % classes)[torch.randperm(m, generator=g)]
        return means[y] + noise * torch.randn(m, d, generator=g), y

    bank, bank_y = draw(n)
    query, query_y = draw(queries)
    return bank, bank_y, query, query_y


def timed(fn: Callable[[], Any], repeats: int, slow_s: float = float("inf")) -> tuple[float, Any, int]:
    """(median seconds, last result, runs); stops after the first run if it took longer than ``slow_s``."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        if times[0] > slow_s:
            break
    return statistics.median(times), result, len(times)


# ----------------------------------------------------------------------------- memory, in a fresh process


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _measure_pairwise(name: str, args: dict[str, Any], chunk: int, queue: mp.Queue) -> None:
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    z, y, _, _ = make_data(args["n"], 1, args["d"], args["classes"], args["noise"], args["seed"])
    before_rss = _status_kb("VmRSS")
    try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = _status_kb("VmHWM") is not None and before_rss is not None
    except OSError:
        reset = False
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    t0 = time.perf_counter()
    value = alignment(z, y, chunk=chunk) if name == "alignment" else uniformity(z, chunk=chunk)
    seconds = time.perf_counter() - t0
    if reset:
        peak_kb, how = _status_kb("VmHWM") - before_rss, "VmHWM after reset - VmRSS before"
    else:
        peak_kb, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_max, "ru_maxrss growth"
    queue.put({"name": name, "value": value, "seconds": seconds, "peak_bytes": peak_kb * 1024, "how": how})


def measure_pairwise(name: str, args: dict[str, Any], chunk: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure_pairwise, args=(name, args, chunk, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


# ----------------------------------------------------------------------------- main


def fmt_s(seconds: float, runs: int) -> str:
    return f"{seconds:.2f} s" + ("" if runs > 1 else " (1 run)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000, help="bank size (kNN bank, k-means and pairwise metrics)")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--noise", type=float, default=4.0, help="per-coordinate noise std (class means are N(0, I))")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--temperature", type=float, default=0.07)
    ap.add_argument("--kmeans-niter", type=int, default=25)
    ap.add_argument("--kmeans-nredo", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunks", default="4096,512",
                    help="comma-separated row chunks for alignment/uniformity (4096 is their default)")
    ap.add_argument("--skip-pairwise", action="store_true", help="skip alignment/uniformity")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for torch, faiss and scikit-learn's BLAS/OpenMP (0: library defaults)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
        faiss.omp_set_num_threads(a.threads)
        threadpool_limits(a.threads)  # scikit-learn's BLAS and OpenMP pools

    bank, bank_y, query, query_y = make_data(a.n, a.queries, a.d, a.classes, a.noise, a.seed)
    rows: list[tuple[str, str, str, str, str]] = []

    # kNN: same neighbours, same exp(s/T) weights -> the same classifier in both libraries.
    t_ours, acc_ours, r_ours = timed(lambda: knn_accuracy(bank, bank_y, query, query_y, a.classes, k=a.k,
                                                          temperature=a.temperature), a.repeats)

    def sk_knn() -> float:
        clf = KNeighborsClassifier(n_neighbors=a.k, metric="cosine", algorithm="brute",
                                   weights=lambda dist: np.exp((1.0 - dist) / a.temperature))
        clf.fit(bank.numpy(), bank_y.numpy())
        return float((clf.predict(query.numpy()) == query_y.numpy()).mean())

    t_sk, acc_sk, r_sk = timed(sk_knn, a.repeats, SLOW_S)
    rows.append((f"weighted kNN accuracy (k={a.k}, cosine, {a.queries:,} queries vs {a.n:,} bank)",
                 fmt_s(t_ours, r_ours), fmt_s(t_sk, r_sk), f"{t_sk / t_ours:.1f}x",
                 f"accuracy {acc_ours:.4f} vs {acc_sk:.4f} (Δ {abs(acc_ours - acc_sk):.4f})"))

    # k-means on the unit-normalised bank, k = #classes.
    unit = torch.nn.functional.normalize(bank, dim=1)
    t_ours, assign, r_ours = timed(lambda: kmeans_assignments(bank, a.classes, seed=a.seed, niter=a.kmeans_niter,
                                                              nredo=a.kmeans_nredo, init="k-means++"), a.repeats)
    nmi_ours = normalized_mutual_info_score(bank_y.numpy(), assign.numpy())

    def sk_kmeans() -> KMeans:
        return KMeans(n_clusters=a.classes, init="k-means++", n_init=a.kmeans_nredo, max_iter=a.kmeans_niter, tol=0.0,
                      random_state=a.seed, algorithm="lloyd").fit(unit.numpy())

    t_sk, km, r_sk = timed(sk_kmeans, a.repeats, SLOW_S)
    nmi_sk = normalized_mutual_info_score(bank_y.numpy(), km.labels_)
    rows.append((f"k-means (k={a.classes}, {a.kmeans_niter} iter, best of {a.kmeans_nredo}, k-means++) "
                 f"on {a.n:,} x {a.d}", fmt_s(t_ours, r_ours), fmt_s(t_sk, r_sk), f"{t_sk / t_ours:.1f}x",
                 f"NMI vs labels {nmi_ours:.4f} vs {nmi_sk:.4f} (sklearn ran {km.n_iter_} iter)"))

    print(f"\n{a.n:,} x {a.d} bank, {a.queries:,} queries, {a.classes} Gaussian classes (noise {a.noise}, seed "
          f"{a.seed}); torch {torch.__version__}, faiss {faiss.__version__}, scikit-learn {sklearn.__version__}; "
          f"{torch.get_num_threads()} torch threads, {faiss.omp_get_max_threads()} faiss threads; "
          f"{platform.processor() or platform.machine()}\n")
    print("| task | embedlab (faiss) | scikit-learn | sklearn / ours | agreement |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")

    if not a.skip_pairwise:
        args = {"n": a.n, "d": a.d, "classes": a.classes, "noise": a.noise, "seed": a.seed, "threads": a.threads}
        full = 4 * a.n * a.n
        print(f"\n| exact pairwise metric on {a.n:,} x {a.d} | chunk | value | time (1 run) | peak memory growth "
              f"| vs one N x N float32 ({full / 1e9:.1f} GB) |")
        print("|---|---|---|---|---|---|")
        for chunk in (int(c) for c in a.chunks.split(",")):
            for name in ("alignment", "uniformity"):
                r = measure_pairwise(name, args, chunk)
                print(f"| {name} | {chunk} | {r['value']:.6f} | {r['seconds']:.1f} s | {r['peak_bytes'] / 1e9:.2f} GB "
                      f"({r['how']}) | {r['peak_bytes'] / full:.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
