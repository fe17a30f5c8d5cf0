"""Pixel-exact scores of patch-grid predictions, from per-patch label histograms.

A prediction made per patch (a cluster id, an attention mask) and drawn on the frame by nearest
neighbour is constant over each patch's pixels. So every pixel count it enters (a confusion
matrix, the intersection and union of a mask with the foreground) is a sum over patches of
"how many pixels of label ``c`` does patch ``j`` cover" -- a ``(P, C)`` histogram computed once
per frame. Scores then cost ``O(P)`` instead of ``O(H W)`` per prediction, and are *equal* to
those of :func:`labkit.eval.segmentation.confusion_matrix` / :func:`labkit.eval.metrics.jaccard`
on the upsampled prediction (the tests check this against those functions).

Notation::

    T  frames    P = gh * gw  patches    C  labels    k  clusters    m  masks (heads, objects)
    H, W  label-map size    p  patch size
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from labkit.geometry import Alignment, grid_to_frame

__all__ = [
    "patch_index_map",
    "patch_histogram",
    "confusion_from_histograms",
    "mask_jaccard",
    "mask_precision",
    "foreground_share",
    "mask_statistics",
]


def patch_index_map(
    grid: tuple[int, int],
    size: tuple[int, int],
    *,
    patch_size: int,
    alignment: Alignment = "resize",
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Which patch each pixel shows when a grid map is drawn on the frame by nearest neighbour.

    Args:
        grid: ``(gh, gw)``.
        size: Frame ``(H, W)``.
        patch_size, alignment: As :func:`labkit.geometry.grid_to_frame`.

    Returns:
        ``(H, W)`` int64 patch index in ``[0, P)`` (row-major over the grid).
    """
    ids = torch.arange(grid[0] * grid[1], device=device).reshape(grid)  # (gh, gw)
    return grid_to_frame(ids, size, patch_size=patch_size, alignment=alignment)


def patch_histogram(
    labels: torch.Tensor | np.ndarray, index_map: torch.Tensor, num_patches: int, num_classes: int
) -> torch.Tensor:
    """Pixel count of every label inside every patch's footprint.

    Args:
        labels: ``(H, W)`` integer labels in ``[0, C)``.
        index_map: ``(H, W)`` from :func:`patch_index_map`.
        num_patches: ``P``.
        num_classes: ``C``.

    Returns:
        ``(P, C)`` int64 on ``index_map``'s device; rows sum to each patch's pixel area.
    """
    lab = torch.as_tensor(labels).to(index_map.device).long()
    if lab.shape != index_map.shape:
        raise ValueError(
            f"patch_histogram: labels {tuple(lab.shape)} and index_map {tuple(index_map.shape)} "
            "must have the same (H, W)"
        )
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
        raise ValueError(
            f"patch_histogram: labels must be in [0, {num_classes}), found "
            f"{int(lab.min())}..{int(lab.max())}"
        )
    flat = (index_map * num_classes + lab).reshape(-1)
    return torch.bincount(flat, minlength=num_patches * num_classes).reshape(
        num_patches, num_classes
    )


def confusion_from_histograms(
    histograms: torch.Tensor, clusters: torch.Tensor, num_clusters: int
) -> torch.Tensor:
    """Confusion matrix of patch cluster ids drawn on the frame, against the labels.

    Args:
        histograms: ``(P, C)`` or ``(T, P, C)`` from :func:`patch_histogram`.
        clusters: ``(P,)`` or ``(T, P)`` (any shape with ``T * P`` elements) cluster id per patch,
            in ``[0, k)``.
        num_clusters: ``k``.

    Returns:
        ``(C, k)`` int64: entry ``[c, j]`` counts pixels of label ``c`` shown as cluster ``j``
        (summed over frames), as :func:`labkit.eval.segmentation.confusion_matrix`.
    """
    C = histograms.shape[-1]
    hist = histograms.reshape(-1, C)  # (T*P, C)
    ids = clusters.reshape(-1).to(hist.device).long()
    if ids.numel() != hist.shape[0]:
        raise ValueError(
            f"confusion_from_histograms: {ids.numel()} cluster ids for {hist.shape[0]} patches"
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_clusters):
        raise ValueError(f"confusion_from_histograms: cluster ids must be in [0, {num_clusters})")
    conf = torch.zeros(num_clusters, C, dtype=torch.long, device=hist.device)
    conf.index_add_(0, ids, hist)  # (k, C)
    return conf.T


def _mask_pixels(
    masks: torch.Tensor, foreground: torch.Tensor, area: torch.Tensor, caller: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel counts of patch masks drawn on the frame, float64 on the CPU: foreground pixels
    under each mask (T, m), pixels under each mask (T, m) and the foreground (T, P)."""
    m = masks.reshape(masks.shape[0], masks.shape[1], -1).double().cpu()  # (T, m, P)
    fg = foreground.double().cpu()  # (T, P)
    if m.shape[0] != fg.shape[0] or m.shape[2] != fg.shape[1] or area.numel() != fg.shape[1]:
        raise ValueError(
            f"{caller}: masks {tuple(masks.shape)}, foreground {tuple(foreground.shape)} and "
            f"area {tuple(area.shape)} disagree"
        )
    inter = torch.einsum("tmp,tp->tm", m, fg)  # (T, m) foreground pixels under the mask
    pred = torch.einsum("tmp,p->tm", m, area.double().cpu())  # (T, m) pixels under the mask
    return inter, pred, fg


def mask_jaccard(masks: torch.Tensor, foreground: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """J of patch masks drawn on the frame against the foreground, per frame and mask.

    Equal to :func:`labkit.eval.metrics.jaccard` of the nearest-upsampled masks against the
    foreground mask (1 where both are empty).

    Args:
        masks: ``(T, m, gh, gw)`` or ``(T, m, P)`` bool.
        foreground: ``(T, P)`` foreground pixels inside each patch's footprint.
        area: ``(P,)`` pixels of each patch's footprint.

    Returns:
        ``(T, m)`` float64 in ``[0, 1]`` on the CPU.
    """
    inter, pred, fg = _mask_pixels(masks, foreground, area, "mask_jaccard")
    union = pred + fg.sum(dim=1, keepdim=True) - inter
    j = inter / union.clamp(min=1)
    return torch.where(union == 0, torch.ones_like(j), j)


def mask_precision(
    masks: torch.Tensor, foreground: torch.Tensor, area: torch.Tensor
) -> torch.Tensor:
    """Share of each patch mask's pixels, drawn on the frame, that are foreground.

    J alone hides a mask that covers much of the frame: a mask over everything scores the
    foreground's share of the frame. Precision says whether the mask prefers the objects: compare
    it with :func:`foreground_share`, the precision of a mask that picks its pixels at random.
    Equal to ``(up & fg).sum() / up.sum()`` for the nearest-upsampled mask ``up`` and the pixel
    foreground ``fg``.

    Args:
        masks: ``(T, m, gh, gw)`` or ``(T, m, P)`` bool.
        foreground: ``(T, P)`` foreground pixels inside each patch's footprint.
        area: ``(P,)`` pixels of each patch's footprint.

    Returns:
        ``(T, m)`` float64 in ``[0, 1]`` on the CPU; NaN for an empty mask (it has no pixels to
        be right or wrong about), which the means over frames skip (``torch.nanmean``).
    """
    inter, pred, _ = _mask_pixels(masks, foreground, area, "mask_precision")
    return torch.where(pred > 0, inter / pred.clamp(min=1), torch.full_like(pred, math.nan))


def foreground_share(foreground: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """Foreground share of each frame: the precision a mask of random pixels has on average.

    Args:
        foreground: ``(T, P)`` foreground pixels inside each patch's footprint.
        area: ``(P,)`` pixels of each patch's footprint.

    Returns:
        ``(T,)`` float64 in ``[0, 1]`` on the CPU (0 for a frame of no pixels).
    """
    fg = foreground.double().cpu()  # (T, P)
    if fg.ndim != 2 or area.numel() != fg.shape[1]:
        raise ValueError(
            f"foreground_share: foreground {tuple(foreground.shape)} and area "
            f"{tuple(area.shape)} disagree"
        )
    return fg.sum(dim=1) / max(float(area.sum()), 1.0)


def mask_statistics(j: torch.Tensor) -> dict[str, Any]:
    """Best mask, mean over masks, oracle and stability from J per frame and mask.

    :func:`labkit.eval.segmentation.mask_scores` returns these for pixel-level J.

    Args:
        j: ``(T, m)`` J per frame and mask.

    Returns:
        dict with ``jaccard (T, m)``, ``per_head (m,)``, ``best_head``, ``best_head_j``,
        ``mean_over_heads``, ``oracle_j``, ``oracle_gap``, ``best_per_frame (T,)``,
        ``stability`` (fraction of frames where the sequence's best mask is a frame's best) and
        ``switches`` (frames whose best mask differs from the previous frame's).
    """
    per_head = j.mean(dim=0)  # (m,)
    best = int(per_head.argmax())
    frame_best = j.max(dim=1).values  # (T,)
    best_per_frame = j.argmax(dim=1)  # (T,)
    return {
        "jaccard": j,
        "per_head": per_head,
        "best_head": best,
        "best_head_j": float(per_head[best]),
        "mean_over_heads": float(j.mean()),
        "oracle_j": float(frame_best.mean()),
        "oracle_gap": float(frame_best.mean() - per_head[best]),
        "best_per_frame": best_per_frame,
        "stability": float((j[:, best] >= frame_best - 1e-12).double().mean()),
        "switches": int((best_per_frame[1:] != best_per_frame[:-1]).sum()),
    }
