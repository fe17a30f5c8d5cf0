"""Patch grid <-> frame pixels: the one place where a grid of patch values meets an image.

A ViT with patch size ``p`` sees a frame of ``H x W`` pixels as a ``gh x gw`` grid. Two alignments
say which pixels a patch covers::

    "crop"    the grid covers the top-left ``gh*p x gw*p`` pixels (``labkit.models.prepare_images``
              crops frames down to multiples of the patch size); patch (i, j) covers pixels
              ``[i*p:(i+1)*p, j*p:(j+1)*p]``. Border rule: the uncovered strip to the right of and
              below the grid (less than ``p`` pixels) takes the value of the nearest edge patch.
    "resize"  the grid spans the whole frame (the frame was resized to the grid times the patch
              size before the backbone, as DINO's evaluation does); nearest resizing reproduces
              PIL's ``Image.resize(..., NEAREST)`` index for index.

Notation::

    H, W  frame size       gh, gw  patch grid      p  patch size in pixels
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

__all__ = ["Alignment", "resize_nearest", "grid_to_frame", "frame_to_grid"]

Alignment = Literal["resize", "crop"]


def _as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise ValueError(f"{name}: expected a torch tensor or numpy array, got {type(x).__name__}")


# --------------------------------------------------------------------------------------------
# Label maps: grid <-> frame
# --------------------------------------------------------------------------------------------


def _pil_nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel in PIL's nearest resize along one axis.

    PIL (``ImagingScaleAffine``) starts at half a step and adds the step ``n_in / n_out`` once per
    output pixel in double precision, truncating each position; the sequential float64 cumulative
    sum reproduces the same rounding (a closed form ``floor((x + 0.5) * n_in / n_out)`` differs from
    PIL at some sizes).
    """
    step = n_in / n_out
    steps = np.full(n_out, step, dtype=np.float64)
    steps[0] = step * 0.5
    pos = np.cumsum(steps)  # sequential accumulation, like PIL's ``xo += a[0]``
    return np.minimum(pos.astype(np.int64), n_in - 1)


def resize_nearest(labels: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of label maps, index for index as PIL's ``resize(NEAREST)``.

    Args:
        labels: ``(..., h, w)`` tensor of any dtype (labels, masks, scores).
        size: Output ``(H, W)``.

    Returns:
        ``(..., H, W)`` tensor, same dtype and device as ``labels``.
    """
    x = _as_tensor(labels, "resize_nearest: labels")
    if x.ndim < 2:
        raise ValueError(f"resize_nearest: labels must be (..., h, w), got shape {tuple(x.shape)}")
    H, W = int(size[0]), int(size[1])
    if H < 1 or W < 1:
        raise ValueError(f"resize_nearest: size must be positive, got {size}")
    h, w = x.shape[-2:]
    if (h, w) == (H, W):
        return x
    rows = torch.from_numpy(_pil_nearest_index(h, H)).to(x.device)
    cols = torch.from_numpy(_pil_nearest_index(w, W)).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _check_alignment(alignment: str, name: str) -> None:
    if alignment not in ("resize", "crop"):
        raise ValueError(f"{name}: alignment must be 'resize' or 'crop', got {alignment!r}")


def grid_to_frame(
    x: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    *,
    patch_size: int,
    alignment: Alignment = "crop",
) -> torch.Tensor:
    """Map patch-grid values (labels, masks) to frame pixels by nearest neighbour.

    Args:
        x: ``(..., gh, gw)`` values per patch, any dtype.
        size: Frame ``(H, W)``.
        patch_size: Patch size ``p`` in pixels (used by ``"crop"``).
        alignment: ``"crop"`` (grid covers the top-left ``gh*p x gw*p`` pixels, each patch fills
            its ``p x p`` block, the uncovered strip repeats the edge) or ``"resize"`` (grid spans
            the frame; PIL nearest resize). See the module docstring.

    Returns:
        ``(..., H, W)``, same dtype and device as ``x``.
    """
    _check_alignment(alignment, "grid_to_frame")
    t = _as_tensor(x, "grid_to_frame: x")
    if t.ndim < 2:
        raise ValueError(f"grid_to_frame: x must be (..., gh, gw), got shape {tuple(t.shape)}")
    if alignment == "resize":
        return resize_nearest(t, size)
    if patch_size < 1:
        raise ValueError(f"grid_to_frame: patch_size must be >= 1, got {patch_size}")
    gh, gw = t.shape[-2:]
    rows = torch.clamp(torch.arange(int(size[0]), device=t.device) // patch_size, max=gh - 1)
    cols = torch.clamp(torch.arange(int(size[1]), device=t.device) // patch_size, max=gw - 1)
    return t.index_select(-2, rows).index_select(-1, cols)


def frame_to_grid(
    labels: torch.Tensor | np.ndarray,
    grid: tuple[int, int],
    *,
    patch_size: int,
    alignment: Alignment = "crop",
) -> torch.Tensor:
    """Sample frame labels at the patch grid by nearest neighbour (no averaging, no new labels).

    ``"resize"`` is PIL's nearest resize of the whole frame to the grid (DINO's
    ``read_seg``: ``seg.resize((w // p, h // p), 0)``); ``"crop"`` takes the pixel at offset
    ``p // 2`` inside each patch's block (the same pixel PIL picks when the frame is exactly the
    grid times ``p``), clamped to the frame.

    Args:
        labels: ``(..., H, W)`` labels or masks.
        grid: ``(gh, gw)``.
        patch_size: Patch size ``p`` (used by ``"crop"``).
        alignment: ``"crop"`` or ``"resize"``, as in :func:`grid_to_frame`.

    Returns:
        ``(..., gh, gw)``, same dtype and device as ``labels``.
    """
    _check_alignment(alignment, "frame_to_grid")
    t = _as_tensor(labels, "frame_to_grid: labels")
    if t.ndim < 2:
        raise ValueError(f"frame_to_grid: labels must be (..., H, W), got shape {tuple(t.shape)}")
    if alignment == "resize":
        return resize_nearest(t, grid)
    if patch_size < 1:
        raise ValueError(f"frame_to_grid: patch_size must be >= 1, got {patch_size}")
    H, W = t.shape[-2:]
    half = patch_size // 2
    rows = torch.clamp(torch.arange(int(grid[0]), device=t.device) * patch_size + half, max=H - 1)
    cols = torch.clamp(torch.arange(int(grid[1]), device=t.device) * patch_size + half, max=W - 1)
    return t.index_select(-2, rows).index_select(-1, cols)
