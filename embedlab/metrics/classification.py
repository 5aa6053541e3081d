"""Classification metrics: top-1 accuracy, exact kNN search, weighted kNN accuracy and a linear probe.

faiss (kNN search) and scikit-learn (linear probe) are imported inside the functions that use them and run on CPU
copies; everything else computes on the device of the inputs.
"""
from __future__ import annotations

import torch
from torch import Tensor

from embedlab.metrics._common import check_class_logits, check_labels, check_matrix, to_faiss
from embedlab.metrics.geometry import l2_normalize

__all__ = ["accuracy", "knn_accuracy", "knn_search", "linear_probe_accuracy"]


@torch.no_grad()
def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy.

    Shapes: ``logits`` (N, C), ``labels`` (N,) integer class indices.

    ``acc = (1/N) * sum_i [argmax_c logits[i, c] == labels[i]]`` (ties in the argmax go to the
    lowest class index).

    >>> accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    0.6666666666666666
    """
    check_class_logits(logits, labels)
    return (logits.argmax(dim=1) == labels).double().mean().item()


@torch.no_grad()
def knn_search(bank: Tensor, query: Tensor, k: int, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """Exact k-nearest-neighbour search by inner product with ``faiss.IndexFlatIP``.

    Shapes: ``bank`` (M, d), ``query`` (N, d) -> ``sims`` (N, k') float32 and ``idx`` (N, k') int64,
    with ``k' = min(k, M)``, each row sorted by decreasing similarity.

    ``sims[n, r] = <q_n, b_{idx[n, r]}>`` with ``q = query / ||query||_2`` and
    ``b = bank / ||bank||_2`` when ``normalize`` (cosine similarity), raw vectors otherwise.
    The search runs on CPU float32 copies; results are returned on ``query``'s device.

    >>> bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> sims, idx = knn_search(bank, torch.tensor([[2.0, 0.1]]), k=2)
    >>> idx
    tensor([[0, 2]])
    """
    import faiss

    check_matrix("bank", bank)
    check_matrix("query", query)
    if bank.shape[1] != query.shape[1]:
        raise ValueError(f"bank has dim {bank.shape[1]} but query has dim {query.shape[1]}")
    if bank.shape[0] == 0:
        raise ValueError("bank is empty (M = 0); need at least one bank vector")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, bank.shape[0])
    if normalize:
        bank = l2_normalize(bank.detach().float())
        query = l2_normalize(query.detach().float())
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(to_faiss(bank))
    sims, idx = index.search(to_faiss(query), k)
    return torch.from_numpy(sims).to(query.device), torch.from_numpy(idx).to(query.device)


@torch.no_grad()
def knn_accuracy(
    bank_z: Tensor,
    bank_y: Tensor,
    query_z: Tensor,
    query_y: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Accuracy of a temperature-weighted kNN classifier (InstDisc / DINO evaluation).

    Shapes: ``bank_z`` (M, d), ``bank_y`` (M,), ``query_z`` (N, d), ``query_y`` (N,); labels are
    integers in ``[0, num_classes)``.

    Both sets are l2-normalised; for query ``n`` let ``N_k(n)`` be its ``k' = min(k, M)`` nearest
    bank items by cosine similarity ``s_{nm}``. Then

    ``score_{nc} = sum_{m in N_k(n)} exp(s_{nm} / T) * [bank_y_m == c]``,
    ``pred_n = argmax_c score_{nc}`` (ties to the lowest class), and the result is
    ``(1/N) * sum_n [pred_n == query_y_n]``.

    >>> bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> knn_accuracy(bank, torch.tensor([0, 0, 1, 1]), torch.tensor([[1.0, 0.2], [0.2, 1.0]]),
    ...              torch.tensor([0, 1]), num_classes=2, k=2)
    1.0
    """
    check_matrix("bank_z", bank_z)
    check_matrix("query_z", query_z)
    check_labels("bank_y", bank_y, bank_z.shape[0])
    check_labels("query_y", query_y, query_z.shape[0])
    if query_z.shape[0] == 0:
        raise ValueError("query_z is empty (N = 0); need at least one query")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if bank_y.numel() and (int(bank_y.min()) < 0 or int(bank_y.max()) >= num_classes):
        raise ValueError(f"bank_y has labels outside [0, {num_classes})")

    sims, idx = knn_search(bank_z, query_z, k, normalize=True)
    sims = sims.to(torch.float64)
    # Subtracting the row max only rescales each row's weights by a positive constant, so the
    # argmax is unchanged while exp() can no longer overflow for tiny temperatures.
    weights = torch.exp((sims - sims.max(dim=1, keepdim=True).values) / temperature)
    neighbour_y = bank_y.to(idx.device)[idx]
    scores = torch.zeros(idx.shape[0], num_classes, dtype=torch.float64, device=idx.device)
    scores.scatter_add_(1, neighbour_y, weights)
    pred = scores.argmax(dim=1)
    return (pred == query_y.to(pred.device)).double().mean().item()


def linear_probe_accuracy(train_z: Tensor, train_y: Tensor, test_z: Tensor, test_y: Tensor, *, C: float = 1.0,
                          max_iter: int = 1000, seed: int = 0) -> float:
    """Test accuracy of a multinomial logistic-regression probe trained on standardised train embeddings.
    Higher is better.

    Shapes: ``train_z`` (M, d), ``train_y`` (M,), ``test_z`` (N, d), ``test_y`` (N,) integer.

    Features are standardised with the train mean and standard deviation (``StandardScaler``); the probe is
    ``sklearn.linear_model.LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, random_state=seed)``
    (multinomial softmax loss + ``1/(2C) ||W||^2``, no penalty on the bias) fitted in float64 on CPU; the result is
    ``(1/N) sum_n [argmax_c (W x_n + b)_c == test_y_n]``. lbfgs is deterministic; scikit-learn warns
    (``ConvergenceWarning``) if ``max_iter`` is reached first.

    >>> z = torch.tensor([[0.0, 1.0], [0.2, 1.1], [3.0, 0.0], [3.1, 0.2]])
    >>> linear_probe_accuracy(z, torch.tensor([0, 0, 1, 1]), z, torch.tensor([0, 0, 1, 1]))
    1.0
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    check_matrix("train_z", train_z)
    check_matrix("test_z", test_z)
    check_labels("train_y", train_y, train_z.shape[0])
    check_labels("test_y", test_y, test_z.shape[0])
    if train_z.shape[1] != test_z.shape[1]:
        raise ValueError(f"train_z has dim {train_z.shape[1]} but test_z has dim {test_z.shape[1]}")
    if test_z.shape[0] == 0:
        raise ValueError("test_z is empty (N = 0)")
    if torch.unique(train_y).numel() < 2:
        raise ValueError("linear probe needs at least 2 classes in train_y")
    x_train = train_z.detach().to("cpu", torch.float64).numpy()
    x_test = test_z.detach().to("cpu", torch.float64).numpy()
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    probe.fit(scaler.transform(x_train), train_y.cpu().numpy())
    pred = probe.predict(scaler.transform(x_test))
    return float((pred == test_y.cpu().numpy()).mean())
