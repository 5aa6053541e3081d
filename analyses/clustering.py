"""The ``clustering`` analysis (METHODS.md §3, "Clustering"): every metric of :mod:`embedlab.metrics.clustering` on
the test embeddings, and the linear probe (:func:`embedlab.metrics.classification.linear_probe_accuracy`) fitted on
the train embeddings and evaluated on the test ones.
"""
from __future__ import annotations

import warnings
from typing import Annotated

import torch

from embedlab.analyses.registry import Inputs, Output, metric, register_analysis
from embedlab.config import AT_LEAST_1, POSITIVE
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


@register_analysis("clustering",
                   description="silhouette (cosine), Davies-Bouldin, Calinski-Harabasz, k-means (k = #classes in test, faiss) "
                               "NMI/ARI, intra/inter distance ratio on test embeddings; linear probe train -> test",
                   needs=("test",), optional=("train",), title="Clustering", min_classes=2)
def clustering(inp: Inputs, chunk: Annotated[int, AT_LEAST_1] = 1024, kmeans_niter: Annotated[int, AT_LEAST_1] = 25,
               kmeans_nredo: Annotated[int, AT_LEAST_1] = 3, kmeans_init: str = "k-means++",
               kmeans_normalize: bool = True, probe_C: Annotated[float, POSITIVE] = 1.0,
               probe_max_iter: Annotated[int, AT_LEAST_1] = 1000) -> Output:
    z, y = inp.t("test", "embeddings"), inp.t("test", "labels")
    k = int(torch.unique(y).numel())  # the classes of the test set: classes only other splits have are no cluster
    assignments = kmeans_assignments(z, k, seed=inp.seed, niter=kmeans_niter, nredo=kmeans_nredo, init=kmeans_init,
                                     normalize=kmeans_normalize)
    km = {"k": k, "niter": kmeans_niter, "nredo": kmeans_nredo, "init": kmeans_init, "normalize": kmeans_normalize,
          "seed": inp.seed}
    a = "clustering"
    metrics = {
        "silhouette": metric(silhouette_cosine(z, y, chunk=chunk), True, a, distance="cosine"),
        "davies_bouldin": metric(davies_bouldin(z, y), False, a, distance="euclidean"),
        "calinski_harabasz": metric(calinski_harabasz(z, y), True, a),
        "kmeans_nmi": metric(normalized_mutual_info(y, assignments), True, a, average="arithmetic", **km),
        "kmeans_ari": metric(adjusted_rand_index(y, assignments), True, a, **km),
        "intra_inter_ratio": metric(intra_inter_distance_ratio(z, y, chunk=chunk), False, a,
                                    distance="euclidean on l2-normalised", average="over pairs"),
    }
    skipped = {}
    if "train" in inp.splits:
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings(record=True) as caught:  # recorded in the settings, not printed on stderr
            warnings.simplefilter("always", ConvergenceWarning)
            probe = linear_probe_accuracy(inp.t("train", "embeddings"), inp.t("train", "labels"), z, y, C=probe_C,
                                          max_iter=probe_max_iter, seed=inp.seed)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        for w in caught:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        metrics["linear_probe_accuracy"] = metric(probe, True, a, C=probe_C, max_iter=probe_max_iter,
                                                  solver="lbfgs", standardize=True, fitted_on="train",
                                                  converged=converged)
    else:
        skipped["linear_probe_accuracy"] = "needs a train split (the probe is fitted on train, scored on test)"
    return Output(metrics, arrays={"kmeans_assignments": assignments.cpu().numpy()}, skipped=skipped)
