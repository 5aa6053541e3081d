"""Pure metric functions: tensors in, numbers or tensors out (core layer; no I/O, no device choice).

One module per topic, none imported here, so that ``import embedlab.metrics.geometry`` costs little beyond
``import torch``; heavy libraries (faiss, scikit-learn) are imported inside the functions that need them.

* :mod:`embedlab.metrics.geometry`: ℓ2 normalisation, alignment and uniformity;
* :mod:`embedlab.metrics.classification`: accuracy, kNN search and kNN accuracy, linear probe;
* :mod:`embedlab.metrics.calibration`: ECE, AdaECE, MCE, reliability-diagram data, NLL, Brier, temperature fitting;
* :mod:`embedlab.metrics.clustering`: silhouette, Davies–Bouldin, Calinski–Harabasz, intra/inter ratio, k-means,
  NMI, ARI;
* :mod:`embedlab.metrics.ood`: OOD scores (higher = in-distribution) and their evaluation (AUROC, AUPR, FPR@95, ROC
  points, histograms);
* :mod:`embedlab.metrics.convexity`: embedding-space MMLB;
* :mod:`embedlab.metrics.robustness`: adversarial examples (torchattacks) with a guarded model and RNG.

The analyses in ``embedlab.analyses`` wire their inputs to these functions; this package never imports them.

>>> import torch
>>> from embedlab.metrics.geometry import alignment
>>> alignment(torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 0]))
0.0
"""
