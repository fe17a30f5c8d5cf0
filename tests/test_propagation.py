"""Label propagation against a step-by-step re-implementation of DINO's DAVIS evaluation.

``reference_propagation`` below follows ``facebookresearch/dino`` ``eval_video_segmentation.py``
(``read_seg``, ``restrict_neighborhood``, ``label_propagation``, ``norm_mask`` and the frame loop)
literally, in dense form, written for this test: PIL nearest resize of the first mask to the grid,
one-hot, a dense (P, P) neighbourhood mask built with loops, ``exp(sim / 0.1)`` affinities, top-k
over all context patches with everything below the k-th value zeroed, a queue of the ``n_last``
previous soft predictions, bilinear upsampling by the patch size, per-channel min-max
normalisation with DINO's 0/0, ``torch.max`` and a PIL nearest resize to the original size.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from labkit.eval import metrics as M
from labkit.propagation import (
    LabelPropagator,
    iter_propagate_labels,
    labels_from_soft,
    propagate_labels,
    propagation_step,
)


@functools.cache
def ref_neighborhood(h: int, w: int, r: int) -> torch.Tensor:
    mask = torch.zeros(h, w, h, w)
    for i in range(h):
        for j in range(w):
            for p in range(2 * r + 1):
                for q in range(2 * r + 1):
                    y, x = i - r + p, j - r + q
                    if 0 <= y < h and 0 <= x < w:
                        mask[i, j, y, x] = 1
    return mask.reshape(h * w, h * w)


def ref_step(feat_tar, feats_src, segs_src, h, w, r, topk, temp):
    """feat_tar (hw, D); feats_src list of (D, hw); segs_src list of (1, C, h, w)."""
    n = len(feats_src)
    tar = F.normalize(feat_tar, dim=1, p=2)
    src = F.normalize(torch.stack(feats_src), dim=1, p=2)  # (n, D, hw)
    aff = torch.exp(torch.bmm(tar.unsqueeze(0).repeat(n, 1, 1), src) / temp)  # (n, tar, src)
    if r > 0:
        aff = aff * ref_neighborhood(h, w, r).unsqueeze(0)
    aff = aff.transpose(2, 1).reshape(-1, h * w)  # (n * src, tar)
    kth = torch.topk(aff, dim=0, k=topk).values.min(dim=0).values
    aff[aff < kth] = 0
    aff = aff / aff.sum(dim=0, keepdim=True)
    segs = torch.cat(segs_src)  # (n, C, h, w)
    C = segs.shape[1]
    segs = segs.reshape(n, C, -1).transpose(2, 1).reshape(-1, C).T  # (C, n * hw)
    return (segs @ aff).reshape(1, C, h, w)


def ref_norm_mask(mask):
    for c in range(mask.shape[0]):
        ch = mask[c]
        if ch.max() > 0:
            ch = ch - ch.min()
            ch = ch / ch.max()
            mask[c] = ch
    return mask


def reference_propagation(feats, first_labels, p, n_last=7, topk=5, temp=0.1, r=12):
    """feats (T, h, w, D) float tensor; first_labels (H, W) uint8 array."""
    T, h, w, D = feats.shape
    H, W = first_labels.shape
    small = np.array(Image.fromarray(first_labels).resize((w, h), 0))
    small = torch.from_numpy(small).long()
    first_seg = F.one_hot(small, int(small.max()) + 1).permute(2, 0, 1).float().unsqueeze(0)
    first_feat = feats[0].reshape(-1, D).T  # (D, hw)
    queue: list[tuple[torch.Tensor, torch.Tensor]] = []
    outputs, softs = [first_labels], []
    for t in range(1, T):
        tar = feats[t].reshape(-1, D)
        seg = ref_step(
            tar,
            [first_feat] + [q[0] for q in queue],
            [first_seg] + [q[1] for q in queue],
            h,
            w,
            r,
            topk,
            temp,
        )
        if len(queue) == n_last:
            queue.pop(0)
        queue.append((tar.T, seg.clone()))
        softs.append(seg[0])
        up = F.interpolate(
            seg, scale_factor=p, mode="bilinear", align_corners=False, recompute_scale_factor=False
        )[0]
        up = ref_norm_mask(up)
        lab = torch.max(up, dim=0).indices.numpy().astype(np.uint8)
        outputs.append(np.array(Image.fromarray(lab).resize((W, H), 0)))
    return np.stack(outputs), softs


def moving_squares(T: int, grid=(10, 12), p=8, seed=0):
    """Patch-aligned ground truth: two squares moving one patch at most per frame."""
    gh, gw = grid
    rng = np.random.default_rng(seed)
    gt = np.zeros((T, gh, gw), dtype=np.uint8)
    pos = [np.array([2, 2]), np.array([5, 7])]
    for t in range(T):
        for k, (y, x) in enumerate(pos):
            gt[t, y : y + 3, x : x + 3] = k + 1
        pos = [np.clip(q + rng.integers(-1, 2, 2), 0, [gh - 3, gw - 3]) for q in pos]
    return np.repeat(np.repeat(gt, p, axis=1), p, axis=2)  # (T, gh*p, gw*p)


def onehot_features(gt_grid: np.ndarray, D: int, noise: float, seed: int) -> torch.Tensor:
    """(T, gh, gw, D): one-hot of the patch label in the first channels, plus Gaussian noise."""
    g = torch.from_numpy(gt_grid.astype(np.int64))
    f = F.one_hot(g, D).float()
    gen = torch.Generator().manual_seed(seed)
    return f + noise * torch.randn(f.shape, generator=gen)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_last,topk,radius", [(7, 5, 12), (3, 5, 2), (2, 1, 1), (4, 7, 0)])
def test_matches_dino_reference_on_random_features(n_last, topk, radius):
    T, gh, gw, D, p = 9, 6, 8, 16, 4
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(T, gh, gw, D, generator=gen)
    # a first mask larger than the grid * p and not a multiple of it: both PIL resizes matter
    rng = np.random.default_rng(0)
    first = np.zeros((27, 35), dtype=np.uint8)
    first[3:15, 4:20], first[14:25, 18:33] = 1, 2
    first[rng.random(first.shape) < 0.05] = 0
    want, want_soft = reference_propagation(feats, first, p, n_last=n_last, topk=topk, r=radius)

    got = propagate_labels(feats, first, n_last=n_last, topk=topk, radius=radius, patch_size=p)
    assert got.shape == (T, 27, 35) and got.dtype == torch.uint8
    assert np.array_equal(got[0].numpy(), first)
    mismatch = (got.numpy() != want).mean()
    assert mismatch < 1e-3, mismatch  # float-rounding near-ties only
    prop = LabelPropagator(feats[0], first, n_last=n_last, topk=topk, radius=radius, patch_size=p)
    for t in range(1, T):
        soft = prop.step(feats[t]).soft
        torch.testing.assert_close(soft, want_soft[t - 1], atol=1e-5, rtol=1e-4)


def test_ties_and_context_queue_match_reference():
    """One-hot features: many exactly tied affinities; DINO keeps every tie at the k-th value."""
    gt = moving_squares(12, grid=(6, 7), p=4)
    grid_labels = M.frame_to_grid(
        torch.from_numpy(gt), (6, 7), patch_size=4, alignment="resize"
    ).numpy()
    feats = onehot_features(grid_labels, 4, noise=0.0, seed=0)
    feats[5:] = torch.roll(feats[5:], 1, dims=2)  # break the perfect match after frame 5
    want, want_soft = reference_propagation(feats, gt[0], 4, n_last=3, r=2)
    prop = LabelPropagator(feats[0], gt[0], n_last=3, radius=2, patch_size=4)
    for t in range(1, 12):
        out = prop.step(feats[t])
        torch.testing.assert_close(out.soft, want_soft[t - 1], atol=1e-6, rtol=1e-5)
        assert np.array_equal(out.labels.numpy(), want[t])
    assert len(prop._recent) == 3  # the queue holds n_last frames


def test_step_top1_and_window():
    """Hand-made: with top-1 a patch copies the label of its most similar context patch in range."""
    grid = (1, 5)
    ctx = torch.eye(5)[None]  # (1, 5, 5): context patch j has feature e_j
    labels = F.one_hot(torch.tensor([0, 1, 2, 3, 4]), 5).float()[None]  # label j
    target = torch.eye(5)[[4, 3, 2, 1, 0]]  # patch i looks like context patch 4 - i
    out = propagation_step(target, ctx, labels, grid=grid, topk=1, radius=None)
    assert torch.equal(out.argmax(1), torch.tensor([4, 3, 2, 1, 0]))
    # radius 1: patch 0 cannot see context patch 4; all in-range similarities are 0 -> tie of
    # its 2 neighbours (patches 0 and 1), equal weights
    out = propagation_step(target, ctx, labels, grid=grid, topk=1, radius=1)
    torch.testing.assert_close(out[0], torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0]))
    assert out[2].argmax() == 2


def test_onehot_features_reproduce_ground_truth():
    """Features one-hot in the true label: the patch-level prediction is the truth, J = 1."""
    T, grid, p = 15, (10, 12), 8
    gt = moving_squares(T, grid, p, seed=3)  # (T, 80, 96), patch-aligned
    gt_grid = M.frame_to_grid(torch.from_numpy(gt), grid, patch_size=p, alignment="resize")
    feats = onehot_features(gt_grid.numpy(), 6, noise=0.02, seed=0)
    prop = LabelPropagator(feats[0], gt[0], patch_size=p)
    for t in range(1, T):
        out = prop.step(feats[t])
        assert torch.equal(out.soft.argmax(0), gt_grid[t].long())  # exact at patch resolution
        j = M.jaccard(M.object_masks(out.soft.argmax(0), 2), M.object_masks(gt_grid[t], 2))
        assert torch.all(j == 1)
        # at pixel resolution, exact away from the boundaries smoothed by the bilinear upsampling
        away = ~M.dilate_disk(M.seg2bmap(torch.from_numpy(gt[t] > 0)), p)
        assert torch.equal(out.labels[away], torch.from_numpy(gt[t])[away])


def test_streaming_sources_agree_and_crop_alignment():
    T, gh, gw, D, p = 6, 5, 7, 8, 4
    feats = torch.randn(T, gh, gw, D, generator=torch.Generator().manual_seed(2))
    first = np.zeros((gh * p + 3, gw * p + 2), dtype=np.uint8)
    first[4:14, 5:20] = 1
    kw = dict(patch_size=p, n_last=2, alignment="crop")
    from_tensor = propagate_labels(feats, first, **kw)
    from_iter = propagate_labels(iter(list(feats)), first, **kw)
    from_callable = propagate_labels(lambda t: feats[t], first, num_frames=T, **kw)
    streamed = torch.stack(list(iter_propagate_labels((f for f in feats.numpy()), first, **kw)))
    for other in (from_iter, from_callable, streamed):
        assert torch.equal(from_tensor, other)
    assert from_tensor.shape == (T, *first.shape)
    # crop alignment: the strip beyond gh*p x gw*p repeats the last upsampled row/column
    assert torch.equal(
        from_tensor[1:, gh * p :, :], from_tensor[1:, gh * p - 1 : gh * p, :].expand(-1, 3, -1)
    )
    assert torch.equal(
        from_tensor[1:, :, gw * p :], from_tensor[1:, :, gw * p - 1 : gw * p].expand(-1, -1, 2)
    )
    # n_last = 0: every frame is propagated from the first frame alone
    alone = propagate_labels(feats, first, patch_size=p, n_last=0)
    for t in range(1, T):
        pair = propagate_labels(feats[[0, t]], first, patch_size=p, n_last=0)
        assert torch.equal(alone[t], pair[1])


def test_labels_from_soft_norm_mask_conventions():
    # channel 0 constant positive: DINO's 0/0 gives NaN, which wins torch.max -> label 0 everywhere
    soft = torch.zeros(3, 2, 3)
    soft[0] = 0.5
    soft[1, 0, 0], soft[2] = 0.5, 0.5
    soft[2, 0, 0] = 0.0
    got = labels_from_soft(soft, patch_size=2, out_size=(4, 6))
    want = torch.max(
        ref_norm_mask(
            F.interpolate(soft[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
        ),
        dim=0,
    ).indices
    assert torch.equal(got.long(), want) and torch.all(got == 0)


def test_bad_inputs():
    feats = torch.randn(3, 4, 4, 8)
    with pytest.raises(ValueError, match="0/255"):
        propagate_labels(feats, np.full((16, 16), 255, dtype=np.uint8), patch_size=4)
    with pytest.raises(ValueError, match="num_frames"):
        propagate_labels(lambda t: feats[t], np.zeros((16, 16), dtype=np.uint8), patch_size=4)
    with pytest.raises(ValueError, match="gh, gw, D"):
        propagate_labels(torch.randn(3, 16, 8), np.zeros((16, 16), dtype=np.uint8), patch_size=4)
    prop = LabelPropagator(feats[0], np.zeros((16, 16), dtype=np.uint8), patch_size=4)
    with pytest.raises(ValueError, match="do not match"):
        prop.step(torch.randn(5, 4, 8))


def _read_sequence(davis_root, seq: str, n: int) -> np.ndarray:
    files = sorted((davis_root / "Annotations" / "480p" / seq).glob("*.png"))[:n]
    masks = np.stack([np.array(Image.open(f)) for f in files])
    return (masks > 0).astype(np.uint8)  # DAVIS 2016: 0/255 -> 0/1


def test_real_davis_sequence_high_with_label_features_low_with_random(davis_root):
    """cows, 480x854, 16-pixel patches: features from the ground truth give high J&F."""
    gt = _read_sequence(davis_root, "cows", 8)
    T, H, W = gt.shape
    p, grid = 16, (H // 16, W // 16)  # (30, 53), the grid spans the frame ("resize")
    gt_grid = M.frame_to_grid(torch.from_numpy(gt), grid, patch_size=p, alignment="resize")
    feats = onehot_features(gt_grid.numpy(), 8, noise=0.1, seed=0)
    pred = propagate_labels(feats, gt[0], patch_size=p)
    scores = M.davis_sequence_scores(pred, gt, name="cows")
    # the best a patch-level prediction can do: the ground truth's own grid labels, upsampled
    oracle = torch.stack(
        [torch.from_numpy(gt[0])]
        + [
            labels_from_soft(
                F.one_hot(g.long(), 2).permute(2, 0, 1).float(), patch_size=p, out_size=(H, W)
            )
            for g in gt_grid[1:]
        ]
    )
    best = M.davis_sequence_scores(oracle, gt)
    # measured: J 0.90, F 0.96, the same as the oracle (the patch grid limits J on cows)
    assert scores.j_mean > 0.85 and scores.f_mean > 0.9
    assert scores.jf_mean > best.jf_mean - 0.02

    random = torch.randn(feats.shape, generator=torch.Generator().manual_seed(1))
    bad = M.davis_sequence_scores(propagate_labels(random, gt[0], patch_size=p), gt)
    assert bad.j_mean < 0.4 and bad.jf_mean < scores.jf_mean - 0.4  # measured: J 0.08, F 0.17


@pytest.mark.gpu
def test_cuda_matches_cpu():
    gt = moving_squares(6, grid=(8, 9), p=8)
    gt_grid = M.frame_to_grid(torch.from_numpy(gt), (8, 9), patch_size=8, alignment="resize")
    feats = onehot_features(gt_grid.numpy(), 6, noise=0.3, seed=0)
    cpu = propagate_labels(feats, gt[0], patch_size=8)
    gpu = propagate_labels(feats.cuda(), gt[0], patch_size=8)
    assert gpu.is_cuda
    assert (cpu != gpu.cpu()).float().mean() < 1e-3
