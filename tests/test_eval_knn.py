"""Weighted k-NN classification against a brute-force loop (DINO's eval_knn rule)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit.eval.knn import knn_classify


def brute_knn(train, labels, test, k, temperature, num_classes):
    preds, rankings = [], []
    for x in test:
        sims = []
        for i, y in enumerate(train):
            sims.append((float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y))), i))
        sims.sort(reverse=True)
        votes = [0.0] * num_classes
        for s, i in sims[:k]:
            votes[labels[i]] += math.exp(s / temperature)
        ranking = sorted(range(num_classes), key=lambda c: (-votes[c], c))
        preds.append(ranking[0])
        rankings.append(ranking)
    return np.array(preds), rankings, votes


@pytest.mark.parametrize("k,temperature", [(1, 0.07), (5, 0.07), (20, 0.07), (7, 0.5)])
def test_knn_matches_brute_force(k, temperature):
    rng = np.random.default_rng(k)
    C, D = 6, 12
    centers = rng.normal(size=(C, D))
    train_labels = rng.integers(0, C, 120)
    train = centers[train_labels] + 0.9 * rng.normal(size=(120, D))
    test_labels = rng.integers(0, C, 40)
    test = centers[test_labels] + 0.9 * rng.normal(size=(40, D))
    res = knn_classify(
        torch.from_numpy(train),
        torch.from_numpy(train_labels),
        torch.from_numpy(test),
        k=k,
        temperature=temperature,
        num_classes=C,
        test_labels=torch.from_numpy(test_labels),
        chunk_size=7,
    )
    want, rankings, _ = brute_knn(train, train_labels, test, k, temperature, C)
    assert np.array_equal(res.predictions.numpy(), want)
    assert res.top1 == pytest.approx(np.mean(want == test_labels))
    top5 = np.mean([y in r[: min(5, k)] for y, r in zip(test_labels, rankings)])
    assert res.top5 == pytest.approx(top5)
    assert res.scores.shape == (40, C)
    assert 0.3 < res.top1 <= 1.0  # the clusters are learnable


def test_knn_scores_hand_made_and_errors():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    labels = torch.tensor([0, 1, 2])
    res = knn_classify(
        train, labels, torch.tensor([[2.0, 0.0]]), k=2, temperature=1.0, num_classes=3
    )
    cos = 1.0 / math.sqrt(1.01)
    assert res.scores[0].tolist() == pytest.approx([math.e, 0.0, math.exp(cos)])
    assert res.predictions.tolist() == [0] and res.top1 is None
    with pytest.raises(ValueError, match="k must be"):
        knn_classify(train, labels, train, k=4)
    with pytest.raises(ValueError, match="train_labels"):
        knn_classify(train, labels[:2], train, k=1)
