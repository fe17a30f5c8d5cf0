"""DAVIS scores (region similarity J, boundary accuracy F, J&F) and label-map resizing.

Everything is compute on torch tensors, on the device of the inputs (numpy arrays are accepted and
converted). The scores follow the official DAVIS 2017 evaluation
(``davisvideochallenge/davis2017-evaluation``, ``davis2017/metrics.py`` and ``evaluation.py``);
the conventions matched, one by one:

- J is the IoU of two binary masks; J = 1 when both are empty (the union is empty).
- F is the boundary F-measure: boundaries are 1-pixel maps from :func:`seg2bmap` (a pixel is on
  the boundary when it differs from its east, south or south-east neighbour; the last row looks
  east only, the last column south only, the bottom-right pixel never is), each boundary is dilated
  by a disk of radius ``ceil(bound_th * image diagonal)`` (``bound_th < 1``; ``bound_th >= 1`` is a
  radius in pixels), precision = predicted boundary pixels inside the dilated ground-truth
  boundary / predicted boundary pixels, recall likewise. Empty boundaries: both empty -> F = 1;
  exactly one empty -> F = 0 (precision 1 and recall 0, or the reverse).
- Objects are the labels ``1..K`` with ``K`` the largest label of the first ground-truth frame;
  255 in the ground truth is background (the official reader maps it to 0 before anything else).
- Semi-supervised scoring leaves out the first frame (it is given) and the last frame.
- Per object: mean (nan-mean over frames), recall (fraction of frames scoring > 0.5), decay (mean of
  the first quarter minus mean of the last quarter, quarters overlapping at their borders as in the
  official code). Dataset: J-Mean, F-Mean, ... are means over all objects of all sequences, and
  J&F-Mean is ``(J-Mean + F-Mean) / 2``.

The dilation is exact and runs on any device: a disk is a stack of horizontal segments, so the
dilation is an OR over rows of horizontally dilated copies, each a difference of cumulative sums
(no ``cv2``/``skimage`` needed); each mask pair is cropped to its boundaries' bounding box first.

Label maps at the patch grid are mapped to frames and back by :func:`grid_to_frame` and
:func:`frame_to_grid`, with two alignments::

    "resize"  the grid spans the whole frame (the frame was resized to the grid times the patch
              size before the backbone, as DINO's evaluation does); nearest resizing reproduces
              PIL's ``Image.resize(..., NEAREST)`` index for index.
    "crop"    the grid covers the top-left ``gh*p x gw*p`` pixels (``labkit.models.prepare_images``
              crops frames down to multiples of the patch size); patch (i, j) covers pixels
              ``[i*p:(i+1)*p, j*p:(j+1)*p]`` and the uncovered strip takes the nearest edge value.

Notation::

    T   frames             K   objects (labels 1..K; 0 is background)
    H, W  frame size       gh, gw  patch grid      p  patch size in pixels

References:
    Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for Video Object
    Segmentation", CVPR 2016 (J and F). Pont-Tuset et al., "The 2017 DAVIS Challenge on Video
    Object Segmentation", arXiv:1704.00675.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from labkit.geometry import (
    Alignment,
    _as_tensor,
    frame_to_grid,
    grid_to_frame,
    resize_nearest,
)

__all__ = [
    "Alignment",
    "SequenceScores",
    "resize_nearest",
    "grid_to_frame",
    "frame_to_grid",
    "jaccard",
    "seg2bmap",
    "disk",
    "boundary_radius",
    "dilate_disk",
    "f_measure",
    "object_masks",
    "db_statistics",
    "davis_frame_scores",
    "davis_sequence_scores",
    "davis_summary",
    "per_object_table",
]


def _as_mask(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = _as_tensor(x, name)
    return t if t.dtype == torch.bool else t != 0


# --------------------------------------------------------------------------------------------
# J and F
# --------------------------------------------------------------------------------------------


def jaccard(
    pred: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    void: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Region similarity J: IoU of binary masks, 1 where both masks are empty.

    Args:
        pred: ``(..., H, W)`` predicted mask (bool, or nonzero = foreground).
        gt: ``(..., H, W)`` ground-truth mask, same shape.
        void: Optional ``(..., H, W)`` mask of pixels left out of both counts.

    Returns:
        ``(...)`` float64 tensor in ``[0, 1]`` on the inputs' device.
    """
    p = _as_mask(pred, "jaccard: pred")
    g = _as_mask(gt, "jaccard: gt").to(p.device)
    if p.shape != g.shape or p.ndim < 2:
        raise ValueError(
            f"jaccard: pred and gt must share a (..., H, W) shape, got {tuple(p.shape)} and "
            f"{tuple(g.shape)}"
        )
    if void is not None:
        keep = ~_as_mask(void, "jaccard: void").to(p.device)
        p, g = p & keep, g & keep
    inter = (p & g).sum(dim=(-2, -1))
    union = (p | g).sum(dim=(-2, -1))
    j = inter.double() / union.clamp(min=1).double()
    return torch.where(union == 0, torch.ones_like(j), j)


def seg2bmap(mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """One-pixel boundary map of a binary mask, the DAVIS ``seg2bmap`` convention.

    A pixel is a boundary pixel when its value differs from its east, south or south-east
    neighbour. In the last row only the east neighbour counts, in the last column only the south
    one, and the bottom-right pixel is never a boundary pixel; the image border itself is not a
    boundary (a mask filling the frame has none). The boundary therefore sits half a pixel towards
    the origin from the true contour and includes some background pixels.

    Args:
        mask: ``(..., H, W)`` binary mask.

    Returns:
        ``(..., H, W)`` bool tensor.
    """
    m = _as_mask(mask, "seg2bmap: mask")
    if m.ndim < 2:
        raise ValueError(f"seg2bmap: mask must be (..., H, W), got shape {tuple(m.shape)}")
    b = torch.zeros_like(m)
    here = m[..., :-1, :-1]
    b[..., :-1, :-1] = (
        (here != m[..., :-1, 1:]) | (here != m[..., 1:, :-1]) | (here != m[..., 1:, 1:])
    )
    b[..., -1, :-1] = m[..., -1, :-1] != m[..., -1, 1:]  # last row: east neighbour only
    b[..., :-1, -1] = m[..., :-1, -1] != m[..., 1:, -1]  # last column: south neighbour only
    return b


def disk(radius: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Disk structuring element: offsets ``(dy, dx)`` with ``dy**2 + dx**2 <= radius**2``.

    This is ``skimage.morphology.disk(radius)`` (the one the official F uses), as bools.

    Returns:
        ``(2r+1, 2r+1)`` bool tensor.
    """
    if radius < 0 or int(radius) != radius:
        raise ValueError(f"disk: radius must be a non-negative integer, got {radius}")
    r = int(radius)
    offsets = torch.arange(-r, r + 1, device=device)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= r * r


def boundary_radius(size: tuple[int, int], bound_th: float = 0.008) -> int:
    """Dilation radius of the F-measure for a frame of ``size`` (H, W).

    ``bound_th < 1`` is a fraction of the image diagonal, rounded up (``ceil(bound_th * diag)``;
    8 pixels at 480x854); ``bound_th >= 1`` is the radius in pixels (must be an integer).
    """
    if bound_th <= 0:
        raise ValueError(f"boundary_radius: bound_th must be positive, got {bound_th}")
    if bound_th >= 1:
        if int(bound_th) != bound_th:
            raise ValueError(
                f"boundary_radius: bound_th >= 1 is a radius in pixels, got {bound_th}"
            )
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(size[0], size[1])))


def dilate_disk(mask: torch.Tensor | np.ndarray, radius: int) -> torch.Tensor:
    """Binary dilation by :func:`disk` ``(radius)``, pixels outside the frame counting as 0.

    Exact (equal to ``cv2.dilate`` / ``scipy.ndimage.binary_dilation`` with the same disk): the
    disk is the union over ``dy`` of horizontal segments of half-width ``floor(sqrt(r^2 - dy^2))``,
    so the dilation is an OR over ``dy`` of row-shifted, horizontally dilated copies; a horizontal
    dilation is a difference of row-wise cumulative sums (a window count > 0), taken by slicing.

    Args:
        mask: ``(..., H, W)`` binary mask.
        radius: Disk radius in pixels (``>= 0``).

    Returns:
        ``(..., H, W)`` bool tensor on the input's device.
    """
    m = _as_mask(mask, "dilate_disk: mask")
    if m.ndim < 2:
        raise ValueError(f"dilate_disk: mask must be (..., H, W), got shape {tuple(m.shape)}")
    if radius < 0 or int(radius) != radius:
        raise ValueError(f"dilate_disk: radius must be a non-negative integer, got {radius}")
    r = int(radius)
    if r == 0:
        return m.clone()
    shape = m.shape
    H, W = shape[-2:]
    x = m.reshape(-1, H, W)  # (N, H, W)
    # ext[..., i] = number of mask pixels in columns [0, clamp(i - r, 0, W)) of the row, so the
    # count in columns [j - w, j + w] is ext[..., r + w + 1 + j] - ext[..., r - w + j]: slices only
    ext = torch.zeros(x.shape[0], H, W + 1 + 2 * r, dtype=torch.int32, device=x.device)
    torch.cumsum(x, dim=-1, dtype=torch.int32, out=ext[..., r + 1 : r + 1 + W])
    ext[..., r + 1 + W :] = ext[..., r + W : r + 1 + W]
    out = torch.zeros_like(x)
    rows: dict[int, torch.Tensor] = {}
    for dy in range(-r, r + 1):
        half = math.isqrt(r * r - dy * dy)
        if half not in rows:  # (N, H, W): any mask pixel within `half` columns in the same row
            rows[half] = (
                ext[..., r + half + 1 : r + half + 1 + W] > ext[..., r - half : r - half + W]
            )
        row = rows[half]
        # out[y] |= row[y + dy] where 0 <= y + dy < H
        if 0 <= dy < H:
            out[:, : H - dy].logical_or_(row[:, dy:])
        elif 0 < -dy < H:
            out[:, -dy:].logical_or_(row[:, : H + dy])
    return out.reshape(shape)


def _boundary_hits(
    pb: torch.Tensor, gb: torch.Tensor, radius: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boundary pixels of each map within ``radius`` of the other's, per item of the batch.

    Each item is cropped to the bounding box of its two boundaries first: the hits only involve
    boundary pixels, and the dilation inside the box only involves boundary pixels inside it, so
    the crop changes nothing but the cost.
    """
    H, W = pb.shape[-2:]
    pbf, gbf = pb.reshape(-1, H, W), gb.reshape(-1, H, W)
    pred_hit = torch.zeros(pbf.shape[0], dtype=torch.long, device=pb.device)
    gt_hit = torch.zeros_like(pred_hit)
    both = pbf | gbf
    rows_any, cols_any = both.any(dim=2), both.any(dim=1)  # (N, H), (N, W)
    for i in range(pbf.shape[0]):
        rows = torch.nonzero(rows_any[i]).flatten()
        if rows.numel() == 0:
            continue
        cols = torch.nonzero(cols_any[i]).flatten()
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        p, g = pbf[i, y0:y1, x0:x1], gbf[i, y0:y1, x0:x1]
        pred_hit[i] = (p & dilate_disk(g, radius)).sum()
        gt_hit[i] = (g & dilate_disk(p, radius)).sum()
    return pred_hit.reshape(pb.shape[:-2]), gt_hit.reshape(pb.shape[:-2])


def f_measure(
    pred: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    void: torch.Tensor | np.ndarray | None = None,
    bound_th: float = 0.008,
) -> torch.Tensor:
    """Boundary accuracy F (DAVIS): F-measure of boundary pixels matched within a tolerance.

    Args:
        pred: ``(..., H, W)`` predicted mask.
        gt: ``(..., H, W)`` ground-truth mask.
        void: Optional ``(..., H, W)`` void pixels, removed from both masks before boundaries are
            taken (as the official code does).
        bound_th: Tolerance: fraction of the image diagonal if ``< 1`` (radius
            ``ceil(bound_th * diag)``), else a radius in pixels.

    Returns:
        ``(...)`` float64 tensor in ``[0, 1]``: 1 when both boundaries are empty, 0 when exactly
        one is.
    """
    p = _as_mask(pred, "f_measure: pred")
    g = _as_mask(gt, "f_measure: gt").to(p.device)
    if p.shape != g.shape or p.ndim < 2:
        raise ValueError(
            f"f_measure: pred and gt must share a (..., H, W) shape, got {tuple(p.shape)} and "
            f"{tuple(g.shape)}"
        )
    if void is not None:
        keep = ~_as_mask(void, "f_measure: void").to(p.device)
        p, g = p & keep, g & keep
    radius = boundary_radius((p.shape[-2], p.shape[-1]), bound_th)
    pb, gb = seg2bmap(p), seg2bmap(g)
    n_pred = pb.sum(dim=(-2, -1))
    n_gt = gb.sum(dim=(-2, -1))
    pred_hit, gt_hit = _boundary_hits(pb, gb, radius)
    # Empty boundaries, official conventions: no predicted boundary -> precision 1; no
    # ground-truth boundary -> recall 1. With both empty F = 1; with one empty the hits are 0 and
    # F = 0.
    one = torch.ones((), dtype=torch.float64, device=p.device)
    precision = torch.where(n_pred > 0, pred_hit.double() / n_pred.clamp(min=1).double(), one)
    recall = torch.where(n_gt > 0, gt_hit.double() / n_gt.clamp(min=1).double(), one)
    denom = precision + recall
    f = 2 * precision * recall / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, f, torch.zeros_like(f))


# --------------------------------------------------------------------------------------------
# Objects, sequences, datasets
# --------------------------------------------------------------------------------------------


def object_masks(labels: torch.Tensor | np.ndarray, num_objects: int) -> torch.Tensor:
    """One binary mask per object label ``1..K``.

    Args:
        labels: ``(..., H, W)`` integer labels.
        num_objects: ``K``.

    Returns:
        ``(K, ..., H, W)`` bool tensor; row ``i`` is ``labels == i + 1``.
    """
    t = _as_tensor(labels, "object_masks: labels")
    ids = torch.arange(1, num_objects + 1, device=t.device).view(-1, *([1] * t.ndim))
    return t.unsqueeze(0).long() == ids


def db_statistics(
    values: torch.Tensor | np.ndarray | Sequence[float],
) -> tuple[float, float, float]:
    """Mean, recall and decay of one object's per-frame scores (official ``db_statistics``).

    Mean is the nan-mean; recall is the fraction of frames scoring ``> 0.5`` (NaN counts as a
    miss); decay splits the frames into four quarters whose borders are shared
    (``ids = round(linspace(1, n, 5)) - 1``, quarter ``i`` is ``values[ids[i]:ids[i+1]+1]``) and
    returns mean(first quarter) - mean(last quarter). (The official code stores ``ids`` as uint8,
    which wraps past 256 frames; here they are plain integers.)

    Returns:
        ``(mean, recall, decay)`` floats.
    """
    v = np.asarray(
        values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values,
        dtype=np.float64,
    ).reshape(-1)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    with np.errstate(invalid="ignore"):
        valid = v[~np.isnan(v)]
        mean = float(valid.mean()) if valid.size else float("nan")
        recall = float(np.mean(np.nan_to_num(v, nan=0.0) > 0.5))
        ids = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(np.int64)
        quarters = [v[ids[i] : ids[i + 1] + 1] for i in range(4)]

        def nanmean(q: np.ndarray) -> float:
            q = q[~np.isnan(q)]
            return float(q.mean()) if q.size else float("nan")

        decay = nanmean(quarters[0]) - nanmean(quarters[3])
    return mean, recall, decay


def davis_frame_scores(
    pred: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    num_objects: int,
    *,
    bound_th: float = 0.008,
) -> tuple[torch.Tensor, torch.Tensor]:
    """J and F of every object in one frame or a stack of frames (streaming building block).

    ``gt == 255`` is background, as in the official reader. Predicted labels above
    ``num_objects`` raise (the official evaluation refuses them too).

    Args:
        pred: ``(H, W)`` or ``(T, H, W)`` predicted labels.
        gt: Ground-truth labels of the same shape.
        num_objects: ``K`` (the largest label of the sequence's first ground-truth frame).
        bound_th: F tolerance, see :func:`f_measure`.

    Returns:
        ``(J, F)``: float64 tensors ``(K,)`` for one frame or ``(K, T)`` for a stack.
    """
    p = _as_tensor(pred, "davis_frame_scores: pred")
    g = _as_tensor(gt, "davis_frame_scores: gt").to(p.device)
    if p.shape != g.shape or p.ndim not in (2, 3):
        raise ValueError(
            f"davis_frame_scores: pred and gt must share a (H, W) or (T, H, W) shape, got "
            f"{tuple(p.shape)} and {tuple(g.shape)}"
        )
    if num_objects < 1:
        raise ValueError(f"davis_frame_scores: num_objects must be >= 1, got {num_objects}")
    if p.numel() and int(p.max()) > num_objects:
        raise ValueError(
            f"davis_frame_scores: prediction has label {int(p.max())} but the ground truth has "
            f"only {num_objects} objects"
        )
    g = torch.where(g == 255, torch.zeros_like(g), g)
    pm, gm = object_masks(p, num_objects), object_masks(g, num_objects)  # (K, [T,] H, W)
    return jaccard(pm, gm), f_measure(pm, gm, bound_th=bound_th)


@dataclass
class SequenceScores:
    """Per-object, per-frame J and F of one sequence, with the official statistics."""

    name: str
    frames: torch.Tensor  # (T',) int64 indices of the scored frames
    j: torch.Tensor  # (K, T') float64 region similarity per object and scored frame
    f: torch.Tensor  # (K, T') float64 boundary accuracy per object and scored frame

    @classmethod
    def from_frames(
        cls,
        name: str,
        frames: Sequence[int],
        j: Sequence[torch.Tensor],
        f: Sequence[torch.Tensor],
    ) -> SequenceScores:
        """Assemble from per-frame ``(K,)`` results of :func:`davis_frame_scores` (streaming)."""
        if not (len(frames) == len(j) == len(f)) or len(frames) == 0:
            raise ValueError(
                f"SequenceScores.from_frames: need as many frames, J and F results (got "
                f"{len(frames)}, {len(j)}, {len(f)}), at least one"
            )
        return cls(
            name=name,
            frames=torch.as_tensor(list(frames), dtype=torch.long),
            j=torch.stack([x.detach().cpu() for x in j], dim=1),
            f=torch.stack([x.detach().cpu() for x in f], dim=1),
        )

    @property
    def num_objects(self) -> int:
        return int(self.j.shape[0])

    def _stats(self, which: str) -> np.ndarray:
        values = self.j if which == "j" else self.f
        return np.array([db_statistics(row) for row in values], dtype=np.float64).reshape(-1, 3)

    @property
    def j_stats(self) -> np.ndarray:
        """``(K, 3)``: J mean, recall, decay per object."""
        return self._stats("j")

    @property
    def f_stats(self) -> np.ndarray:
        """``(K, 3)``: F mean, recall, decay per object."""
        return self._stats("f")

    @property
    def j_mean(self) -> float:
        """Mean over objects of each object's mean J."""
        return float(np.mean(self.j_stats[:, 0]))

    @property
    def f_mean(self) -> float:
        """Mean over objects of each object's mean F."""
        return float(np.mean(self.f_stats[:, 0]))

    @property
    def jf_mean(self) -> float:
        """``(J-Mean + F-Mean) / 2`` of this sequence alone."""
        return (self.j_mean + self.f_mean) / 2


def davis_sequence_scores(
    pred: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    *,
    num_objects: int | None = None,
    exclude_first_last: bool = True,
    bound_th: float = 0.008,
    name: str = "",
) -> SequenceScores:
    """Score a whole sequence as the official semi-supervised DAVIS evaluation does.

    Args:
        pred: ``(T, H, W)`` predicted labels (0 background, 1..K objects).
        gt: ``(T, H, W)`` ground-truth labels (DAVIS 2017 palette indices, or DAVIS 2016 masks
            mapped to 0/1; 255 counts as background).
        num_objects: ``K``; default: the largest label of the first ground-truth frame.
        exclude_first_last: Leave out the first and last frames (the semi-supervised protocol);
            ``False`` scores every frame (the unsupervised protocol).
        bound_th: F tolerance, see :func:`f_measure`.
        name: Sequence name, kept in the result.

    Returns:
        :class:`SequenceScores` with ``j`` and ``f`` of shape ``(K, T')``.
    """
    p = _as_tensor(pred, "davis_sequence_scores: pred")
    g = _as_tensor(gt, "davis_sequence_scores: gt").to(p.device)
    if p.shape != g.shape or p.ndim != 3:
        raise ValueError(
            f"davis_sequence_scores: pred and gt must both be (T, H, W), got {tuple(p.shape)} and "
            f"{tuple(g.shape)}"
        )
    if num_objects is None:
        first = g[0].long()
        first = torch.where(first == 255, torch.zeros_like(first), first)
        num_objects = int(first.max())
        if num_objects < 1:
            raise ValueError(
                f"davis_sequence_scores{f' ({name})' if name else ''}: the first ground-truth "
                "frame has no object (labels 1..254); binary 0/255 masks must be mapped to 0/1 "
                "first (labkit.video.load_masks does this)"
            )
    T = p.shape[0]
    frames = torch.arange(1, T - 1) if exclude_first_last else torch.arange(T)
    if frames.numel() == 0:
        raise ValueError(
            f"davis_sequence_scores: {T} frames leave nothing to score with exclude_first_last"
        )
    idx = frames.to(p.device)
    j, f = davis_frame_scores(p[idx], g[idx], num_objects, bound_th=bound_th)
    return SequenceScores(name=name, frames=frames, j=j.cpu(), f=f.cpu())


def davis_summary(sequences: Sequence[SequenceScores]) -> dict[str, float]:
    """Dataset scores as the official ``evaluation_method.py`` reports them.

    Every object of every sequence counts once (a sequence with three objects weighs three times
    a sequence with one).

    Returns:
        ``{"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}`` floats.
    """
    if len(sequences) == 0:
        raise ValueError("davis_summary: no sequences given")
    js = np.concatenate([s.j_stats for s in sequences], axis=0)  # (objects, 3)
    fs = np.concatenate([s.f_stats for s in sequences], axis=0)
    jm, jr, jd = (float(np.mean(js[:, i])) for i in range(3))
    fm, fr, fd = (float(np.mean(fs[:, i])) for i in range(3))
    return {
        "J&F-Mean": (jm + fm) / 2,
        "J-Mean": jm,
        "J-Recall": jr,
        "J-Decay": jd,
        "F-Mean": fm,
        "F-Recall": fr,
        "F-Decay": fd,
    }


def per_object_table(sequences: Sequence[SequenceScores]) -> list[dict[str, float | str]]:
    """One row per object, named ``<sequence>_<object>`` as the official per-sequence CSV.

    Returns:
        List of ``{"Sequence": str, "J-Mean": float, "F-Mean": float}``.
    """
    rows: list[dict[str, float | str]] = []
    for s in sequences:
        js, fs = s.j_stats, s.f_stats
        for i in range(s.num_objects):
            rows.append({"Sequence": f"{s.name}_{i + 1}", "J-Mean": js[i, 0], "F-Mean": fs[i, 0]})
    return rows
