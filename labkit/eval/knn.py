"""Weighted k-nearest-neighbour classification of frame features (DINO's ``eval_knn``).

Each test feature votes with its ``k`` most cosine-similar training features; a neighbour with
similarity ``s`` adds ``exp(s / temperature)`` to its class. Features are L2-normalised here (DINO
normalises them when extracting). Top-5 accuracy looks at the ``min(5, k)`` best-scored classes,
as DINO does.

Notation::

    n   training samples     m   test samples     D   feature channels     C   classes

References:
    Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR
    2018 (the weighted k-NN); Caron et al., ICCV 2021 (``eval_knn.py``: k = 20, T = 0.07).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["KNNResult", "knn_classify"]


class KNNResult(NamedTuple):
    """Result of :func:`knn_classify`."""

    predictions: torch.Tensor  # (m,) int64 top-1 class per test sample
    scores: torch.Tensor  # (m, C) float32 summed vote weights per class
    top1: float | None  # fraction in [0, 1] of correct top-1 predictions (None without labels)
    top5: (
        float | None
    )  # fraction with the true class among the min(5, k) best (None without labels)


def _tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor or array, got {type(x).__name__}")
    return x


def knn_classify(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    *,
    test_labels: torch.Tensor | np.ndarray | None = None,
    chunk_size: int = 1024,
) -> KNNResult:
    """Classify test features by a temperature-weighted vote of their k nearest training features.

    Args:
        train_features: ``(n, D)``.
        train_labels: ``(n,)`` int labels in ``[0, C)``.
        test_features: ``(m, D)``.
        k: Neighbours (DINO: 20), ``1 <= k <= n``.
        temperature: Vote temperature (DINO: 0.07).
        num_classes: ``C``; default ``max(train_labels) + 1``.
        test_labels: Optional ``(m,)`` labels, for the accuracies.
        chunk_size: Test rows per similarity matrix (memory bound).

    Returns:
        :class:`KNNResult` ``(predictions (m,), scores (m, C), top1, top5)``; ties between class
        scores go to the lower class id. On the device of ``train_features``.
    """
    train = _tensor(train_features, "knn_classify: train_features")
    device = train.device
    labels = _tensor(train_labels, "knn_classify: train_labels").to(device).long()
    test = _tensor(test_features, "knn_classify: test_features").to(device)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(
            f"knn_classify: features must be (n, D) and (m, D), got {tuple(train.shape)} and "
            f"{tuple(test.shape)}"
        )
    if labels.shape != (train.shape[0],):
        raise ValueError(
            f"knn_classify: train_labels must be ({train.shape[0]},), got {tuple(labels.shape)}"
        )
    if not 1 <= k <= train.shape[0]:
        raise ValueError(f"knn_classify: k must be in [1, {train.shape[0]}], got {k}")
    if temperature <= 0:
        raise ValueError(f"knn_classify: temperature must be > 0, got {temperature}")
    C = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if int(labels.min()) < 0 or int(labels.max()) >= C:
        raise ValueError(f"knn_classify: train_labels must be in [0, {C})")
    train_n = F.normalize(train.float(), dim=1)
    test_n = F.normalize(test.float(), dim=1)
    scores = torch.zeros(test.shape[0], C, dtype=torch.float32, device=device)
    for start in range(0, test.shape[0], chunk_size):
        sim = test_n[start : start + chunk_size] @ train_n.T  # (b, n) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)  # (b, k)
        weight = torch.exp(top_sim / temperature)  # (b, k)
        scores[start : start + chunk_size].scatter_add_(1, labels[top_idx], weight)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (m, C)
    predictions = order[:, 0]
    top1 = top5 = None
    if test_labels is not None:
        y = _tensor(test_labels, "knn_classify: test_labels").to(device).long()
        if y.shape != (test.shape[0],):
            raise ValueError(
                f"knn_classify: test_labels must be ({test.shape[0]},), got {tuple(y.shape)}"
            )
        correct = order[:, : min(5, k)] == y[:, None]
        top1 = float(correct[:, 0].double().mean()) if y.numel() else float("nan")
        top5 = float(correct.any(dim=1).double().mean()) if y.numel() else float("nan")
    return KNNResult(predictions, scores, top1, top5)
