"""DAVIS J and F against an independent re-implementation of the official algorithm.

The references below follow ``davisvideochallenge/davis2017-evaluation`` (``davis2017/metrics.py``,
``davis2017/utils.py``, ``davis2017/evaluation.py``) step by step in plain numpy/scipy, written
for this test: boundary maps from shifted copies, dilation with ``scipy.ndimage`` and a disk built
by loops (the official code uses ``cv2.dilate`` with ``skimage.morphology.disk``), the official
empty-mask conventions. A second, brute-force check measures boundary distances with a k-d tree.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from labkit.eval import metrics as M

# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------


def ref_jaccard(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    pred, gt = pred.astype(bool), gt.astype(bool)
    keep = np.ones_like(pred) if void is None else ~void.astype(bool)
    inter = np.sum(pred & gt & keep)
    union = np.sum((pred | gt) & keep)
    return 1.0 if union == 0 else inter / union


def ref_seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Shifted copies east/south/south-east, XOR, then the last row and column rules."""
    seg = seg.astype(bool)
    h, w = seg.shape
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    diag = np.zeros_like(seg)
    east[:, : w - 1] = seg[:, 1:]
    south[: h - 1, :] = seg[1:, :]
    diag[: h - 1, : w - 1] = seg[1:, 1:]
    b = (seg != east) | (seg != south) | (seg != diag)
    b[h - 1, :] = seg[h - 1, :] != east[h - 1, :]
    b[:, w - 1] = seg[:, w - 1] != south[:, w - 1]
    b[h - 1, w - 1] = False
    return b


def ref_seg2bmap_loops(seg: np.ndarray) -> np.ndarray:
    """The same rules, pixel by pixel (for small masks)."""
    seg = seg.astype(bool)
    h, w = seg.shape
    out = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                out[y, x] = seg[y, x] != seg[y, x + 1]
            elif x == w - 1:
                out[y, x] = seg[y, x] != seg[y + 1, x]
            else:
                out[y, x] = (
                    seg[y, x] != seg[y, x + 1]
                    or seg[y, x] != seg[y + 1, x]
                    or seg[y, x] != seg[y + 1, x + 1]
                )
    return out


def ref_disk(r: int) -> np.ndarray:
    out = np.zeros((2 * r + 1, 2 * r + 1), dtype=bool)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            out[i, j] = (i - r) ** 2 + (j - r) ** 2 <= r * r
    return out


def ref_radius(shape: tuple[int, int], bound_th: float) -> int:
    return int(bound_th) if bound_th >= 1 else int(np.ceil(bound_th * np.linalg.norm(shape)))


def ref_f_measure(pred: np.ndarray, gt: np.ndarray, void=None, bound_th: float = 0.008) -> float:
    pred, gt = pred.astype(bool), gt.astype(bool)
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    r = ref_radius(pred.shape, bound_th)
    fb, gb = ref_seg2bmap(pred), ref_seg2bmap(gt)
    fd = ndimage.binary_dilation(fb, structure=ref_disk(r))
    gd = ndimage.binary_dilation(gb, structure=ref_disk(r))
    n_fg, n_gt = fb.sum(), gb.sum()
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.sum(fb & gd) / float(n_fg)
        recall = np.sum(gb & fd) / float(n_gt)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def kdtree_f_measure(pred: np.ndarray, gt: np.ndarray, r: int) -> float:
    """Brute force: a boundary pixel matches if a boundary pixel of the other mask is <= r away."""
    fb, gb = np.argwhere(ref_seg2bmap(pred)), np.argwhere(ref_seg2bmap(gt))
    if len(fb) == 0 or len(gb) == 0:
        return 1.0 if len(fb) == len(gb) == 0 else 0.0
    precision = np.mean(cKDTree(gb).query(fb)[0] <= r)
    recall = np.mean(cKDTree(fb).query(gb)[0] <= r)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def ref_db_statistics(values: np.ndarray) -> tuple[float, float, float]:
    mean = np.nanmean(values)
    recall = np.nanmean(values > 0.5)
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.uint8)
    bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
    return mean, recall, np.nanmean(bins[0]) - np.nanmean(bins[3])


def blobs(shape, n, rng, radius=(3, 12)) -> np.ndarray:
    """Random union of discs."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, dtype=bool)
    for _ in range(n):
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        r = rng.integers(*radius)
        out |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return out


def perturbed(mask: np.ndarray, rng) -> np.ndarray:
    """A prediction near ``mask``: shifted by a few pixels, with a blob added or cut out."""
    dy, dx = rng.integers(-4, 5, 2)
    out = np.roll(mask, (int(dy), int(dx)), axis=(0, 1))
    return out ^ blobs(mask.shape, 1, rng, radius=(2, 6))


def square(shape, y0, x0, a) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[y0 : y0 + a, x0 : x0 + a] = True
    return out


def read_davis_mask(path: Path) -> np.ndarray:
    m = np.array(Image.open(path))
    return (m > 0).astype(np.uint8) if set(np.unique(m)) <= {0, 255} else m


# ---------------------------------------------------------------------------------------------
# Grid <-> frame
# ---------------------------------------------------------------------------------------------


def test_resize_nearest_matches_pil():
    rng = np.random.default_rng(0)
    pairs = [
        ((480, 854), (30, 52)),
        ((480, 854), (30, 53)),
        ((480, 832), (480, 854)),
        ((30, 53), (480, 854)),
    ]
    pairs += [((int(a), int(b)), (int(c), int(d))) for a, b, c, d in rng.integers(1, 200, (150, 4))]
    for (h, w), (H, W) in pairs:
        x = rng.integers(0, 256, (h, w)).astype(np.uint8)
        want = np.array(Image.fromarray(x).resize((W, H), Image.NEAREST))
        got = M.resize_nearest(torch.from_numpy(x), (H, W)).numpy()
        assert np.array_equal(got, want), ((h, w), (H, W))


def test_grid_to_frame_crop_and_frame_to_grid():
    grid = torch.arange(12).reshape(3, 4)
    out = M.grid_to_frame(grid, (14, 18), patch_size=4, alignment="crop")
    for y in range(14):
        for x in range(18):
            assert out[y, x] == grid[min(y // 4, 2), min(x // 4, 3)]
    back = M.frame_to_grid(out, (3, 4), patch_size=4, alignment="crop")
    assert torch.equal(back, grid)
    # resize alignment is PIL's resize both ways
    frame = torch.from_numpy(np.random.default_rng(1).integers(0, 5, (27, 35)).astype(np.uint8))
    small = M.frame_to_grid(frame, (6, 8), patch_size=4, alignment="resize")
    assert np.array_equal(
        small.numpy(), np.array(Image.fromarray(frame.numpy()).resize((8, 6), Image.NEAREST))
    )
    with pytest.raises(ValueError, match="alignment"):
        M.grid_to_frame(grid, (8, 8), patch_size=4, alignment="center")


# ---------------------------------------------------------------------------------------------
# J
# ---------------------------------------------------------------------------------------------


def test_jaccard_hand_made():
    shape = (60, 80)
    a = square(shape, 10, 10, 20)
    assert M.jaccard(a, a).item() == 1.0
    assert M.jaccard(a, square(shape, 35, 50, 20)).item() == 0.0
    empty = np.zeros(shape, dtype=bool)
    assert M.jaccard(empty, empty).item() == 1.0  # DAVIS: both empty -> 1
    assert M.jaccard(empty, a).item() == 0.0
    assert M.jaccard(a, empty).item() == 0.0
    # square of side 20 shifted by d columns: J = 20 (20 - d) / (20 (20 + d)) = (20 - d) / (20 + d)
    for d in (1, 5, 10, 19):
        assert M.jaccard(square(shape, 10, 10 + d, 20), a).item() == pytest.approx(
            (20 - d) / (20 + d)
        )
    # void pixels are left out of both counts
    void = np.zeros(shape, dtype=bool)
    void[:, 30:] = True  # hides the 5 columns where the shifted square sticks out
    shifted = square(shape, 10, 15, 20)
    assert M.jaccard(shifted, a, void).item() == pytest.approx(15 / 20)
    assert M.jaccard(shifted, a, void).item() == pytest.approx(ref_jaccard(shifted, a, void))


def test_jaccard_random_batched_against_reference():
    rng = np.random.default_rng(2)
    pred = np.stack([blobs((40, 50), 3, rng) for _ in range(6)])
    gt = np.stack([blobs((40, 50), 3, rng) for _ in range(6)])
    got = M.jaccard(torch.from_numpy(pred), torch.from_numpy(gt))
    assert got.shape == (6,) and got.dtype == torch.float64
    for i in range(6):
        assert got[i].item() == pytest.approx(ref_jaccard(pred[i], gt[i]), abs=1e-15)


# ---------------------------------------------------------------------------------------------
# Boundaries and dilation
# ---------------------------------------------------------------------------------------------


def test_seg2bmap_square_ring_and_border():
    shape, y0, x0, a = (30, 40), 8, 12, 10
    b = M.seg2bmap(square(shape, y0, x0, a)).numpy()
    # the boundary is the ring of the (a+1) x (a+1) square from (y0-1, x0-1) to (y0+a-1, x0+a-1)
    ring = np.zeros(shape, dtype=bool)
    ring[y0 - 1, x0 - 1 : x0 + a] = ring[y0 + a - 1, x0 - 1 : x0 + a] = True
    ring[y0 - 1 : y0 + a, x0 - 1] = ring[y0 - 1 : y0 + a, x0 + a - 1] = True
    assert np.array_equal(b, ring) and b.sum() == 4 * a
    # the image border is not a boundary
    assert not M.seg2bmap(np.ones(shape, dtype=bool)).any()


def test_seg2bmap_random_against_references():
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = rng.random((int(rng.integers(1, 12)), int(rng.integers(1, 12)))) < 0.5
        want = ref_seg2bmap_loops(m)
        assert np.array_equal(ref_seg2bmap(m), want)  # the two references agree
        assert np.array_equal(M.seg2bmap(m).numpy(), want)
    batch = rng.random((3, 2, 16, 17)) < 0.4
    got = M.seg2bmap(torch.from_numpy(batch)).numpy()
    for i in np.ndindex(3, 2):
        assert np.array_equal(got[i], ref_seg2bmap(batch[i]))


def test_disk_and_dilation_against_scipy():
    rng = np.random.default_rng(4)
    for r in range(0, 10):
        assert np.array_equal(M.disk(r).numpy(), ref_disk(r))
        m = rng.random((37, 45)) < 0.01
        m[0, 0] = m[-1, 20] = m[18, -1] = True  # near the borders
        want = ndimage.binary_dilation(m, structure=ref_disk(r)) if r else m
        assert np.array_equal(M.dilate_disk(torch.from_numpy(m), r).numpy(), want), r
    # radius larger than the image
    m = np.zeros((5, 6), dtype=bool)
    m[2, 3] = True
    assert np.array_equal(
        M.dilate_disk(m, 9).numpy(), ndimage.binary_dilation(m, structure=ref_disk(9))
    )


def test_boundary_radius_official():
    assert M.boundary_radius((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert M.boundary_radius((480, 854)) == ref_radius((480, 854), 0.008)
    assert M.boundary_radius((1080, 1920), 0.008) == math.ceil(0.008 * math.hypot(1080, 1920))
    assert M.boundary_radius((480, 854), 3) == 3
    with pytest.raises(ValueError):
        M.boundary_radius((480, 854), 2.5)


# ---------------------------------------------------------------------------------------------
# F
# ---------------------------------------------------------------------------------------------


def test_f_measure_hand_made():
    shape = (120, 160)
    a = square(shape, 30, 30, 40)
    assert M.f_measure(a, a).item() == 1.0
    # far apart (more than the radius everywhere) -> 0
    assert M.f_measure(square(shape, 30, 100, 20), a, bound_th=3).item() == 0.0
    # a shift within the tolerance matches every boundary pixel
    for d in (1, 2, 3):
        assert M.f_measure(square(shape, 30, 30 + d, 40), a, bound_th=3).item() == 1.0
    # shift 20 > r = 3, worked out by hand on the 4a = 160-pixel rings: per ring, the top and
    # bottom rows keep a + r - d + 1 = 24 matched pixels each, the near vertical side matches the
    # r = 3 pixels next to each corner (6), the far side none: 54 / 160 both ways.
    got = M.f_measure(square(shape, 30, 50, 40), a, bound_th=3).item()
    assert got == pytest.approx(54 / 160)
    empty = np.zeros(shape, dtype=bool)
    assert M.f_measure(empty, empty).item() == 1.0  # both empty
    assert M.f_measure(empty, a).item() == 0.0  # nothing predicted
    assert M.f_measure(a, empty).item() == 0.0  # something predicted, nothing there
    # a full-frame mask has no boundary: counts as empty
    assert M.f_measure(np.ones(shape, dtype=bool), empty).item() == 1.0


@pytest.mark.parametrize("bound_th", [0.008, 0.02, 2, 5])
def test_f_measure_random_against_references(bound_th):
    rng = np.random.default_rng(5)
    gt = np.stack([blobs((90, 120), 4, rng) for _ in range(5)])
    pred = np.stack([perturbed(g, rng) for g in gt])
    got = M.f_measure(torch.from_numpy(pred), torch.from_numpy(gt), bound_th=bound_th)
    assert got.shape == (5,)
    r = ref_radius((90, 120), bound_th)
    for i in range(5):
        want = ref_f_measure(pred[i], gt[i], bound_th=bound_th)
        assert got[i].item() == pytest.approx(want, abs=1e-12)
        assert want == pytest.approx(kdtree_f_measure(pred[i], gt[i], r), abs=1e-12)
    assert int(((got > 0.05) & (got < 0.99)).sum()) >= 3  # the random cases are not trivial


def test_f_measure_void_against_reference():
    rng = np.random.default_rng(6)
    gt = blobs((60, 70), 3, rng)
    pred, void = perturbed(gt, rng), blobs((60, 70), 2, rng)
    assert M.f_measure(pred, gt, void).item() == pytest.approx(
        ref_f_measure(pred, gt, void), abs=1e-12
    )


# ---------------------------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------------------------


def test_db_statistics_against_reference():
    rng = np.random.default_rng(7)
    for n in (1, 3, 4, 5, 17, 60):
        v = rng.random(n)
        assert M.db_statistics(v) == pytest.approx(ref_db_statistics(v), nan_ok=True)
    # 4 frames: ids = round([1, 1.75, 2.5, 3.25, 4]) - 1 = [0, 1, 1, 2, 3] (2.5 rounds to even), so
    # the first quarter is values[0:2] and the last values[2:4]: decay 0.9 - 0.3
    mean, recall, decay = M.db_statistics([1.0, 0.8, 0.4, 0.2])
    assert (mean, recall, decay) == pytest.approx((0.6, 0.5, 0.6))


def test_sequence_scores_multi_object_and_conventions():
    rng = np.random.default_rng(8)
    T, shape = 7, (48, 64)
    gt = np.zeros((T, *shape), dtype=np.uint8)
    pred = np.zeros_like(gt)
    for t in range(T):
        gt[t][blobs(shape, 2, rng)] = 1
        gt[t][blobs(shape, 1, rng)] = 2
        pred[t][blobs(shape, 2, rng)] = 1
        pred[t][gt[t] == 2] = 2
    gt[3, :4, :4] = 255  # void in the ground truth counts as background (official reader)
    s = M.davis_sequence_scores(pred, gt, name="toy")
    assert s.num_objects == 2 and s.frames.tolist() == list(range(1, T - 1))
    gt_bg = np.where(gt == 255, 0, gt)
    for i, obj in enumerate((1, 2)):
        for col, t in enumerate(range(1, T - 1)):
            assert s.j[i, col].item() == pytest.approx(ref_jaccard(pred[t] == obj, gt_bg[t] == obj))
            assert s.f[i, col].item() == pytest.approx(
                ref_f_measure(pred[t] == obj, gt_bg[t] == obj)
            )
    assert s.j[1].min().item() == 1.0  # object 2 predicted exactly
    for i in range(2):
        assert s.j_stats[i] == pytest.approx(ref_db_statistics(s.j[i].numpy()))
    # streaming: frame by frame, then assembled, gives the same
    per_frame = [M.davis_frame_scores(pred[t], gt[t], 2) for t in range(1, T - 1)]
    streamed = M.SequenceScores.from_frames(
        "toy", range(1, T - 1), [r[0] for r in per_frame], [r[1] for r in per_frame]
    )
    assert torch.equal(streamed.j, s.j) and torch.equal(streamed.f, s.f)
    assert torch.equal(streamed.frames, s.frames)
    # every frame, as the unsupervised protocol
    assert M.davis_sequence_scores(pred, gt, exclude_first_last=False).j.shape == (2, T)
    # dataset summary: every object counts once
    other = M.davis_sequence_scores(gt_bg[:, :, :], gt_bg, name="perfect")
    summary = M.davis_summary([s, other])
    j_means = [s.j_stats[0, 0], s.j_stats[1, 0], 1.0, 1.0]
    f_means = [s.f_stats[0, 0], s.f_stats[1, 0], 1.0, 1.0]
    assert summary["J-Mean"] == pytest.approx(np.mean(j_means))
    assert summary["J&F-Mean"] == pytest.approx((np.mean(j_means) + np.mean(f_means)) / 2)
    rows = M.per_object_table([s, other])
    assert [r["Sequence"] for r in rows] == ["toy_1", "toy_2", "perfect_1", "perfect_2"]
    # labels the ground truth does not have, or a first frame without objects, are refused
    with pytest.raises(ValueError, match="only 2 objects"):
        M.davis_sequence_scores(np.full_like(gt, 3), gt)
    binary = (gt_bg > 0).astype(np.uint8) * 255
    with pytest.raises(ValueError, match="0/255"):
        M.davis_sequence_scores(pred.clip(0, 1), binary)


def test_real_davis_masks_against_reference(davis_root):
    """J and F on real 480p masks: ground truth vs the mask of a later frame."""
    for seq in ("cows", "dance-twirl", "motocross-jump"):
        folder = davis_root / "Annotations" / "480p" / seq
        files = sorted(folder.glob("*.png"))
        gt = np.stack([read_davis_mask(files[i]) for i in (5, 6)])
        pred = np.stack([read_davis_mask(files[i]) for i in (9, 14)])  # a few frames later
        j, f = M.davis_frame_scores(pred, gt, 1)
        assert j.shape == f.shape == (1, 2)
        for t in range(2):
            assert j[0, t].item() == pytest.approx(ref_jaccard(pred[t], gt[t]), abs=1e-12)
            want = ref_f_measure(pred[t], gt[t])
            assert f[0, t].item() == pytest.approx(want, abs=1e-12)
            assert 0.05 < want < 0.999  # a real, imperfect match
        assert M.f_measure(gt[0], gt[0]).item() == 1.0


@pytest.mark.gpu
def test_metrics_on_cuda_match_cpu():
    rng = np.random.default_rng(9)
    pred = torch.from_numpy(np.stack([blobs((120, 200), 4, rng) for _ in range(4)]))
    gt = torch.from_numpy(np.stack([blobs((120, 200), 4, rng) for _ in range(4)]))
    cpu = M.f_measure(pred, gt), M.jaccard(pred, gt)
    gpu = M.f_measure(pred.cuda(), gt.cuda()), M.jaccard(pred.cuda(), gt.cuda())
    assert gpu[0].is_cuda
    assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())
