"""Cluster-to-class matching, mIoU and attention/object mask scores, against brute force and
hand-made cases.

The brute-force references enumerate every assignment (permutations for k <= 5) and count pixels
with plain loops, following TimeTuning's ``PredsmIoU`` (``SMSD75/Timetuning``, ``metrics.py``):
Hungarian on the IoU matrix, unmatched clusters merged into the background, many-to-one by the
best precision, mIoU over the classes present in the ground truth.
"""

from __future__ import annotations

import itertools
import sys
import types

import numpy as np
import pytest
import torch

from labkit.eval import segmentation as S
from labkit.eval.metrics import grid_to_frame

# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------


def ref_iou(pred: np.ndarray, gt: np.ndarray, c: int, j: int) -> float:
    a, b = gt == c, pred == j
    union = np.sum(a | b)
    return np.sum(a & b) / union if union else 0.0


def ref_miou_after_relabel(relabelled: np.ndarray, gt: np.ndarray) -> tuple[float, dict]:
    """mIoU over the classes present in gt; relabelled == -1 predicts nothing."""
    per = {}
    for c in np.unique(gt):
        a, b = gt == c, relabelled == c
        per[int(c)] = np.sum(a & b) / np.sum(a | b)
    return float(np.mean(list(per.values()))), per


def brute_hungarian(pred, gt, k):
    """Best one-to-one assignment by summed IoU, trying every injective map (TimeTuning's rule)."""
    classes = list(np.unique(gt))
    clusters = [j for j in range(k) if np.any(pred == j)]
    iou = {(c, j): ref_iou(pred, gt, c, j) for c in classes for j in clusters}
    best, best_map = -1.0, None
    n = min(len(classes), len(clusters))
    for cs in (
        itertools.permutations(classes, n) if len(classes) > len(clusters) else [tuple(classes)]
    ):
        for js in itertools.permutations(clusters, n):
            total = sum(iou[c, j] for c, j in zip(cs, js))
            if total > best + 1e-12:
                best, best_map = total, dict(zip(js, cs))
    relabelled = np.full_like(pred, 0)  # unmatched clusters -> background 0
    for j, c in best_map.items():
        relabelled[pred == j] = c
    return ref_miou_after_relabel(relabelled, gt)[0], best


def brute_many_to_one(pred, gt, k):
    classes = list(np.unique(gt))
    relabelled = np.full_like(pred, -1)
    for j in range(k):
        members = pred == j
        if not members.any():
            continue
        precision = [np.sum(members & (gt == c)) / np.sum(members) for c in classes]
        relabelled[members] = classes[int(np.argmax(precision))]
    return ref_miou_after_relabel(relabelled, gt)[0]


def ref_mass_threshold(attn: torch.Tensor, keep: float) -> torch.Tensor:
    """Smallest set of patches holding >= keep of each map's mass (largest values first)."""
    flat = attn.reshape(-1, attn.shape[-2] * attn.shape[-1])
    out = torch.zeros_like(flat, dtype=torch.bool)
    for i, row in enumerate(flat):
        order = torch.argsort(row, descending=True)
        total, acc = row.sum().item(), 0.0
        for idx in order.tolist():
            if acc >= keep * total:
                break
            out[i, idx] = True
            acc += row[idx].item()
    return out.reshape(attn.shape)


@pytest.fixture
def mass_threshold(monkeypatch):
    """labkit.attention.mass_threshold if it exists yet, else the reference above, installed."""
    try:
        from labkit.attention import mass_threshold as real
    except ImportError:
        fake = types.ModuleType("labkit.attention")
        fake.mass_threshold = ref_mass_threshold
        monkeypatch.setitem(sys.modules, "labkit.attention", fake)
        return ref_mass_threshold
    return real


# ---------------------------------------------------------------------------------------------
# Confusion matrix and matching
# ---------------------------------------------------------------------------------------------


def test_confusion_matrix_counts_and_ignore():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 3, 500)
    gt[rng.random(500) < 0.1] = 255
    pred = rng.integers(0, 4, 500)
    conf = S.confusion_matrix(pred, gt, 3, 4)
    want = np.zeros((3, 4), dtype=np.int64)
    for p, g in zip(pred, gt):
        if g != 255:
            want[g, p] += 1
    assert conf.dtype == torch.int64 and np.array_equal(conf.numpy(), want)
    with pytest.raises(ValueError, match="ground-truth labels"):
        S.confusion_matrix(pred, np.where(gt == 255, 7, gt), 3, 4)
    with pytest.raises(ValueError, match="cluster ids"):
        S.confusion_matrix(pred, gt, 3, 3)


def test_permuted_labelling_scores_one():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 5, (4, 20, 20))
    perm = np.array([3, 0, 4, 1, 2])
    res = S.hungarian_miou(perm[gt], gt, 5)
    assert res.miou == 1.0
    assert torch.equal(res.per_class_iou, torch.ones(5, dtype=torch.float64))
    assert torch.equal(res.mapping[torch.from_numpy(perm)], torch.arange(5))  # cluster perm[c] -> c
    assert S.overcluster_miou(perm[gt], gt, 5).miou == 1.0


def test_hand_computed_confusion():
    # confusion [[5, 1], [2, 4]]: IoU(0,0) = 5/8, IoU(0,1) = 1/10, IoU(1,0) = 2/11, IoU(1,1) = 4/7
    gt = np.array([0] * 6 + [1] * 6)
    pred = np.array([0] * 5 + [1] + [0] * 2 + [1] * 4)
    res = S.hungarian_miou(pred, gt, 2)
    assert res.mapping.tolist() == [0, 1]
    assert res.per_class_iou.tolist() == pytest.approx([5 / 8, 4 / 7])
    assert res.miou == pytest.approx((5 / 8 + 4 / 7) / 2)
    # 3 classes, 2 clusters: class 2 gets nothing -> IoU 0
    gt3 = np.array([0, 0, 1, 1, 2, 2])
    pred3 = np.array([0, 0, 1, 1, 1, 1])
    res = S.hungarian_miou(pred3, gt3, 3, num_clusters=2)
    assert res.per_class_iou.tolist() == pytest.approx([1.0, 0.5, 0.0])
    # 2 classes, 3 clusters: the unmatched cluster merges into the background (TimeTuning)
    gt2 = np.array([0, 0, 0, 1, 1, 1])
    pred2 = np.array([0, 0, 2, 1, 1, 2])
    res = S.hungarian_miou(pred2, gt2, 2, num_clusters=3)
    assert res.mapping.tolist() == [0, 1, -1]
    # relabelled: [0, 0, 0, 1, 1, 0] -> IoU(0) = 3/4, IoU(1) = 2/3
    assert res.per_class_iou.tolist() == pytest.approx([3 / 4, 2 / 3])
    res = S.hungarian_miou(pred2, gt2, 2, num_clusters=3, unmatched_class=None)
    assert res.per_class_iou.tolist() == pytest.approx([2 / 3, 2 / 3])
    # classes absent from the ground truth are NaN and left out of the mean
    res = S.hungarian_miou(pred, gt, 4)
    assert torch.isnan(res.per_class_iou[2:]).all() and res.miou == pytest.approx(
        (5 / 8 + 4 / 7) / 2
    )


def test_many_to_one_merges_split_clusters():
    gt = np.array([0] * 10 + [1] * 6 + [2] * 4)
    # class 0 split over clusters 0, 3, 4; class 1 over 1 and 5; class 2 is cluster 2
    pred = np.array([0] * 4 + [3] * 3 + [4] * 3 + [1] * 3 + [5] * 3 + [2] * 4)
    res = S.overcluster_miou(pred, gt, 3, num_clusters=6)
    assert res.mapping.tolist() == [0, 1, 2, 0, 0, 1]
    assert res.miou == 1.0
    # precision vs IoU: cluster 1 covers all of small class 2 (3 px) plus 4 px of class 0
    gt = np.array([0] * 20 + [2] * 3 + [1] * 5)
    pred = np.array([0] * 16 + [1] * 4 + [1] * 3 + [2] * 5)
    by_precision = S.overcluster_miou(pred, gt, 3, num_clusters=3)
    assert by_precision.mapping.tolist() == [0, 0, 1]  # 4/7 of cluster 1 is class 0
    assert by_precision.per_class_iou.tolist() == pytest.approx([20 / 23, 1.0, 0.0])
    by_iou = S.overcluster_miou(pred, gt, 3, num_clusters=3, criterion="iou")
    # IoU(class 2, cluster 1) = 3/7 > IoU(class 0, cluster 1) = 4/23
    assert by_iou.mapping.tolist() == [0, 2, 1]
    assert by_iou.per_class_iou.tolist() == pytest.approx([16 / 20, 1.0, 3 / 7])


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_hungarian_against_brute_force(k):
    rng = np.random.default_rng(k)
    for trial in range(6):
        C = k if trial % 2 == 0 else max(2, k - 1)
        gt = rng.integers(0, C, 300)
        # a noisy, permuted copy of gt with k clusters
        pred = rng.permutation(k)[np.where(rng.random(300) < 0.4, rng.integers(0, k, 300), gt)]
        res = S.hungarian_miou(pred, gt, C, num_clusters=k)
        want_miou, want_total = brute_hungarian(pred, gt, k)
        assert res.miou == pytest.approx(want_miou, abs=1e-12)
        iou = S._iou_matrix(S.confusion_matrix(pred, gt, C, k))
        matched = [(int(c), j) for j, c in enumerate(res.mapping.tolist()) if c >= 0]
        assert sum(iou[c, j] for c, j in matched) == pytest.approx(want_total, abs=1e-12)
        assert S.overcluster_miou(pred, gt, C, num_clusters=k).miou == pytest.approx(
            brute_many_to_one(pred, gt, k), abs=1e-12
        )


def test_accumulator_streams_like_one_shot():
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 4, (6, 16, 16))
    gt[:, :2] = 255
    pred = rng.integers(0, 7, (6, 16, 16))
    acc = S.ConfusionAccumulator(4, 7)
    for t in range(6):
        acc.update(torch.from_numpy(pred[t]), torch.from_numpy(gt[t]))
    assert torch.equal(acc.matrix, S.confusion_matrix(pred, gt, 4, 7))
    one_h, one_m = (
        S.hungarian_miou(pred, gt, 4, num_clusters=7),
        S.overcluster_miou(pred, gt, 4, num_clusters=7),
    )
    assert acc.hungarian().miou == one_h.miou and acc.many_to_one().miou == one_m.miou
    acc.reset()
    assert int(acc.matrix.sum()) == 0


def test_cluster_scores_frame_vs_clip():
    # ids swap between frames: each frame is perfect on its own, the clip as a whole is not
    gt = np.zeros((2, 8, 8), dtype=np.int64)
    gt[:, :, 4:] = 1
    labels = gt.copy()
    labels[1] = 1 - labels[1]
    frame = S.cluster_scores(labels, gt, protocol="frame")
    clip = S.cluster_scores(labels, gt, protocol="clip")
    assert frame.miou == 1.0 and frame.per_frame.tolist() == [1.0, 1.0]
    assert clip.miou == pytest.approx(1 / 3) and clip.per_frame is None
    # grid labels are mapped to the frame (crop alignment: p x p blocks)
    grid = np.zeros((2, 2, 2), dtype=np.int64)
    grid[:, :, 1] = 1
    assert S.cluster_scores(grid, gt, patch_size=4).miou == 1.0


def test_kmeans_miou_recovers_feature_clusters():
    pytest.importorskip("labkit.clustering")
    gen = torch.Generator().manual_seed(0)
    gt_grid = torch.zeros(3, 6, 8, dtype=torch.long)
    gt_grid[:, 1:4, 2:5] = 1
    gt_grid[:, 4:, 5:] = 2
    feats = 4 * torch.nn.functional.one_hot(gt_grid, 3).float() + 0.1 * torch.randn(
        3, 6, 8, 3, generator=gen
    )
    gt = grid_to_frame(gt_grid, (24, 32), patch_size=4)
    for protocol in ("frame", "clip"):
        assert S.kmeans_miou(feats, gt, 3, protocol=protocol, patch_size=4).miou == pytest.approx(
            1.0
        )
    over = S.kmeans_miou(feats, gt, 5, protocol="clip", matching="many_to_one", patch_size=4)
    assert over.miou == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Attention and object masks
# ---------------------------------------------------------------------------------------------


def _scene(T=4, grid=(6, 8), p=4):
    gt_grid = torch.zeros(T, *grid, dtype=torch.long)
    for t in range(T):
        gt_grid[t, 1:4, 1 + t : 4 + t] = 1
    gt = grid_to_frame(gt_grid, (grid[0] * p, grid[1] * p), patch_size=p)
    return gt_grid, gt


def test_attention_mask_scores_known_heads(mass_threshold):
    gt_grid, gt = _scene()
    T = gt_grid.shape[0]
    gen = torch.Generator().manual_seed(0)
    fg = gt_grid.float()
    heads = torch.stack([fg, 1 - fg, torch.rand(fg.shape, generator=gen)], dim=1)  # (T, 3, gh, gw)
    out = S.attention_mask_scores(heads, gt, keep=0.99, patch_size=4)
    j = out["jaccard"]
    assert j.shape == (T, 3)
    assert torch.all(j[:, 0] == 1) and torch.all(j[:, 1] == 0)  # the foreground head is exact
    assert out["best_head"] == 0 and out["best_head_j"] == 1.0 and out["stability"] == 1.0
    assert out["oracle_j"] == 1.0 and out["oracle_gap"] == 0.0 and out["switches"] == 0

    # every number against an independent computation from the thresholded masks
    def blocks_j(mask_grid, frame_gt):  # nearest upsampling by p = 4, then IoU with gt > 0
        m = mask_grid.repeat_interleave(4, 0).repeat_interleave(4, 1)
        g = frame_gt > 0
        return ((m & g).sum() / (m | g).sum()).item()

    masks = mass_threshold(heads, 0.99)
    for t in range(T):
        for h in range(3):
            assert j[t, h].item() == pytest.approx(blocks_j(masks[t, h], gt[t]))
    assert out["mean_over_heads"] == pytest.approx(j.mean().item())
    avg = mass_threshold(heads.mean(dim=1), 0.99)
    want_avg = [blocks_j(avg[t], gt[t]) for t in range(T)]
    assert out["head_average_j"] == pytest.approx(np.mean(want_avg))


def test_best_head_stability_when_heads_alternate(mass_threshold):
    gt_grid, gt = _scene(T=5)
    fg = gt_grid.float()
    half = fg.clone()
    half[:, 1] = 0  # the object's top row removed: J = 2/3
    # head 0 is exact on frames 0, 1, 2 and partial on 3, 4; head 1 the other way round
    h0 = torch.stack([fg[0], fg[1], fg[2], half[3], half[4]])
    h1 = torch.stack([half[0], half[1], half[2], fg[3], fg[4]])
    out = S.attention_mask_scores(torch.stack([h0, h1], dim=1), gt, keep=0.99, patch_size=4)
    j = out["jaccard"]
    assert out["best_head"] == 0  # 3 exact frames beat 2
    assert out["best_per_frame"].tolist() == [0, 0, 0, 1, 1]
    assert out["stability"] == pytest.approx(3 / 5) and out["switches"] == 1
    assert out["oracle_j"] == pytest.approx(1.0)
    assert j[:, 0].tolist() == pytest.approx([1, 1, 1, 2 / 3, 2 / 3])
    assert out["oracle_gap"] == pytest.approx(1.0 - (3 + 4 / 3) / 5)


def test_object_mask_scores_bool_and_float(mass_threshold):
    gt_grid, gt = _scene()
    fg = gt_grid.bool()
    masks = torch.stack([~fg, fg], dim=1)  # object 1 is the foreground
    out = S.object_mask_scores(masks, gt, patch_size=4)
    assert out["best_head"] == 1 and out["best_head_j"] == 1.0 and out["stability"] == 1.0
    maps = masks.float() / masks.float().sum(dim=(2, 3), keepdim=True)  # softmax-like maps
    out_f = S.object_mask_scores(maps, gt, keep=0.99, patch_size=4)
    assert torch.equal(out_f["jaccard"], out["jaccard"])
