"""Scores of single-object discovery (:mod:`labkit.discovery`) against DAVIS masks.

Per frame and method:

- **J**: foreground Jaccard of the discovered mask drawn on the frame (nearest, as every other
  patch-level prediction of the lab) against the union of the ground-truth objects, pixel-exact
  through the per-patch histograms of :mod:`labkit.eval.patchgrid`;
- **CorLoc**: 1 if the discovered box overlaps the ground-truth box with IoU >= 0.5 (LOST's and
  TokenCut's measure), the ground-truth box being the box around the whole foreground (for a
  DAVIS 2016 mask, *the* object's box). ``corloc_any`` is LOST's multi-object rule instead: a hit
  if the box matches *any* ground-truth object's box (DAVIS 2017 palettes); on DAVIS 2016 the
  two are equal. Frames without foreground are left out of CorLoc (NaN);
- **stability**: Jaccard of consecutive frames' masks on the patch grid (both empty: 1), the
  discovered object followed from frame to frame (per-frame methods are re-run on every frame;
  DoRA follows the objects found on frame 0): 1 means the object stays put, low values mean the
  method jumps between objects (or the object moves fast).

Boxes are ``(row0, col0, row1, col1)``, end exclusive: in patches on the grid, in pixels at the
masks' resolution. A grid box goes to pixels through the same nearest-neighbour map that draws the
masks (:func:`labkit.eval.patchgrid.patch_index_map`), so box and mask agree pixel for pixel.

Notation::

    T  frames (T' annotated)   K  ground-truth objects   gh, gw  patch grid   P = gh * gw
    H, W  mask size
"""

from __future__ import annotations

import math
from typing import Any

import torch

from labkit.eval.patchgrid import mask_jaccard

__all__ = [
    "box_iou",
    "label_boxes",
    "grid_boxes_to_pixels",
    "corloc",
    "consecutive_jaccard",
    "discovery_scores",
]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes paired elementwise (broadcast).

    Args:
        a: (..., 4) ``(row0, col0, row1, col1)``, end exclusive.
        b: (..., 4) the same.

    Returns:
        (...) float64 in [0, 1]; 0 where the union is empty; NaN where a box is NaN.
    """
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    rows = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    cols = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = rows * cols
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-12)
    iou = torch.where(union > 0, iou, torch.zeros_like(iou))
    nan = torch.isnan(a).any(dim=-1) | torch.isnan(b).any(dim=-1)
    return torch.where(nan, torch.full_like(iou, math.nan), iou)


def label_boxes(labels: torch.Tensor, num_objects: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of the ground truth: the whole foreground and each object.

    Args:
        labels: (T, H, W) integer labels, 0 background, 1..K objects; labels above K (objects
            the first frame lacks) count as foreground, as in the lab's J, but have no box of
            their own.
        num_objects: K.

    Returns:
        ``(foreground (T, 4), objects (T, K, 4))`` float64 pixel boxes ``(row0, col0, row1,
        col1)``, end exclusive; NaN rows where the frame has no such pixels.
    """
    labels = torch.as_tensor(labels)
    ids = torch.arange(1, num_objects + 1, device=labels.device)
    masks = labels[:, None] == ids[None, :, None, None]  # (T, K, H, W)
    fg = (labels >= 1)[:, None]  # (T, 1, H, W)
    return _pixel_boxes(fg)[:, 0], _pixel_boxes(masks)


def _pixel_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool -> (..., 4) float64 boxes, NaN where empty."""
    H, W = masks.shape[-2:]
    rows, cols = masks.any(dim=-1), masks.any(dim=-2)  # (..., H), (..., W)
    r = torch.arange(H, device=masks.device)
    c = torch.arange(W, device=masks.device)
    box = torch.stack(
        [
            torch.where(rows, r, H).min(dim=-1).values,
            torch.where(cols, c, W).min(dim=-1).values,
            torch.where(rows, r + 1, 0).max(dim=-1).values,
            torch.where(cols, c + 1, 0).max(dim=-1).values,
        ],
        dim=-1,
    ).double()  # (..., 4)
    return torch.where(rows.any(dim=-1, keepdim=True), box, torch.full_like(box, math.nan))


def grid_boxes_to_pixels(
    boxes: torch.Tensor, index_map: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Patch-grid boxes to pixel boxes, through the map that draws patches on the frame.

    Args:
        boxes: (T, 4) int ``(row0, col0, row1, col1)`` in patches; ``(0, 0, 0, 0)`` for none.
        index_map: (H, W) patch index of every pixel
            (:func:`labkit.eval.patchgrid.patch_index_map`).
        grid: (gh, gw).

    Returns:
        (T, 4) float64 pixel boxes: the box around the pixels that show the grid box's patches
        (NaN for an empty box).
    """
    gw = grid[1]
    pixel_row = (index_map[:, 0] // gw).cpu()  # (H,) patch row shown by each pixel row
    pixel_col = (index_map[0, :] % gw).cpu()  # (W,) patch column shown by each pixel column
    boxes = torch.as_tensor(boxes).long().cpu()
    in_rows = (pixel_row[None] >= boxes[:, :1]) & (pixel_row[None] < boxes[:, 2:3])  # (T, H)
    in_cols = (pixel_col[None] >= boxes[:, 1:2]) & (pixel_col[None] < boxes[:, 3:4])  # (T, W)
    return _pixel_boxes(in_rows[:, :, None] & in_cols[:, None, :])


def corloc(pred: torch.Tensor, gt: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Correct localisation per frame: IoU(pred, gt) >= threshold.

    Args:
        pred: (T, 4) predicted boxes.
        gt: (T, 4) ground-truth boxes, or (T, K, 4) several per frame (a hit on any counts, LOST's
            rule); NaN boxes are absent objects.
        threshold: IoU needed (0.5 in LOST and TokenCut).

    Returns:
        (T,) float64: 1.0 hit, 0.0 miss, NaN where the frame has no ground-truth box.
    """
    pred = torch.as_tensor(pred).double()
    gt = torch.as_tensor(gt).double()
    if gt.ndim == 2:
        gt = gt[:, None]  # (T, 1, 4)
    iou = box_iou(pred[:, None], gt)  # (T, K)
    present = ~torch.isnan(iou)
    hit = ((iou >= threshold) & present).any(dim=1).double()
    return torch.where(present.any(dim=1), hit, torch.full_like(hit, math.nan))


def consecutive_jaccard(masks: torch.Tensor) -> torch.Tensor:
    """Jaccard of each frame's mask with the next one's.

    Args:
        masks: (T, gh, gw) bool.

    Returns:
        (T - 1,) float64 in [0, 1]; 1 where both masks are empty.
    """
    m = masks.flatten(1).bool()
    inter = (m[1:] & m[:-1]).sum(dim=1).double()
    union = (m[1:] | m[:-1]).sum(dim=1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan


def discovery_scores(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    annotated: torch.Tensor,
    foreground: torch.Tensor,
    area: torch.Tensor,
    index_map: torch.Tensor,
    num_objects: int,
) -> dict[str, Any]:
    """J, CorLoc and stability of one method's objects over one sequence.

    Args:
        masks: (T, gh, gw) bool discovered masks of every frame.
        boxes: (T, 4) int their grid boxes.
        labels: (T', H, W) ground-truth labels of the annotated frames (0 background).
        annotated: (T,) bool, which frames have a mask (scored); stability uses every frame.
        foreground: (T', P) foreground pixels under each patch (annotated frames).
        area: (P,) pixels of each patch's footprint.
        index_map: (H, W) patch index of every pixel.
        num_objects: K.

    Returns:
        dict with per-frame ``jaccard`` (T',), ``corloc`` (T',), ``corloc_any`` (T',),
        ``box_iou`` (T',) (against the foreground box), ``stability_per_frame`` (T - 1,), and
        their means ``j``, ``corloc_mean``, ``corloc_any_mean``, ``stability``.
    """

    grid = (masks.shape[1], masks.shape[2])  # (gh, gw)
    annotated = torch.as_tensor(annotated, dtype=torch.bool)
    j = mask_jaccard(masks[annotated][:, None], foreground, area)[:, 0]  # (T',)
    fg_box, obj_boxes = label_boxes(labels, num_objects)  # (T', 4), (T', K, 4)
    pred = grid_boxes_to_pixels(boxes[annotated], index_map, grid)  # (T', 4)
    hits = corloc(pred, fg_box)
    hits_any = corloc(pred, obj_boxes)
    stable = consecutive_jaccard(masks)
    return {
        "jaccard": j,
        "corloc": hits,
        "corloc_any": hits_any,
        "box_iou": box_iou(pred, fg_box),
        "stability_per_frame": stable,
        "j": float(j.mean()) if j.numel() else math.nan,
        "corloc_mean": _nanmean(hits),
        "corloc_any_mean": _nanmean(hits_any),
        "stability": float(stable.mean()) if stable.numel() else math.nan,
    }
