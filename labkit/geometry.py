"""Patch grid <-> frame pixels: the one place where a grid of patch values meets an image.

Every conversion in labkit between a patch grid and frame pixels goes through here: the masks
and heat maps drawn over frames (``labkit.viz``, the explorer, the films), the masks scored
against ground truth (``labkit.eval``), DoRA's object masks (``labkit.tracking``) and clicks on a
frame (``labkit.viz.embedding``). So a mask is drawn on exactly the pixels it is scored on.

A ViT with patch size ``p`` sees a frame of ``H x W`` pixels as a ``gh x gw`` grid. Two alignments
say which pixels a patch covers::

    "crop"    the grid covers the top-left ``gh*p x gw*p`` pixels (``labkit.models.prepare_images``
              crops frames down to multiples of the patch size); patch (i, j) covers pixels
              ``[i*p:(i+1)*p, j*p:(j+1)*p]``. Border rule: the uncovered strip to the right of and
              below the grid (less than ``p`` pixels) takes the value of the nearest edge patch.
    "resize"  the grid spans the whole frame (the frame was resized to the grid times the patch
              size before the backbone, as DINO's evaluation does); nearest resizing reproduces
              PIL's ``Image.resize(..., NEAREST)`` index for index.

The border rule (``"crop"``), one for every conversion: the frame was cropped down to
``gh*p x gw*p`` before the model saw it, so the strip of ``H - gh*p`` rows below and ``W - gw*p``
columns right of the grid (each less than ``p``) belongs to no patch; it is given the value of
the nearest edge patch (edge repeat), for labels, masks and float maps alike, drawn or scored;
:func:`pixel_to_patch` sends a pixel of the strip to that same edge patch. Bilinear upsampling
(:func:`grid_to_frame` with ``mode="bilinear"``, for heat maps) interpolates between patch
centres and clamps beyond the outer centres, which gives the same edge values on the strip.

Overlapping patches (a patch embedding run with a stride ``s`` smaller than ``p``, as
dino-vit-features does for denser maps; :func:`labkit.models.set_stride`): patch ``i`` covers
pixels ``[i*s, i*s + p)`` and the grid has ``g = (n - p) // s + 1`` patches along a side of ``n``
pixels (cropped down to a multiple of ``p``). Each pixel belongs to the patch whose centre
``i*s + p/2`` is nearest to the pixel's centre ``y + 0.5``: ``i = floor((2y + 1 - p + s) / (2s))``
(a tie, possible only for odd ``s``, goes to the later patch), clamped to ``[0, g)``. The pixels
before the first centre and the strip past the grid thus take the edge patch, as the border
rule says. With ``s == p`` this is ``y // p`` clamped to the grid: the crop rule above, bit for
bit (every function takes ``stride=None`` meaning ``s = p``). Bilinear upsampling puts patch
``i``'s value at ``i*s + p/2`` and interpolates between those centres; sampling frame labels at
the grid (:func:`frame_to_grid`) reads pixel ``i*s + p // 2``.

Notation::

    H, W  frame size       gh, gw  patch grid      p  patch size in pixels
    s  stride between patches in pixels (``p`` unless the patch embedding's stride was changed)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that take tensors, so that labkit.viz (numpy only at import)
# can draw with upsample_grid without loading torch

__all__ = [
    "Alignment",
    "Upsampling",
    "resize_nearest",
    "grid_to_frame",
    "upsample_grid",
    "grid_index",
    "frame_to_grid",
    "check_grid",
    "stride_grid",
    "infer_patch_size",
    "pixel_to_patch",
]

Alignment = Literal["resize", "crop"]
Upsampling = Literal["nearest", "bilinear"]
COMMON_PATCH_SIZES = (8, 14, 16, 32)  # ViT patch sizes, preferred when the grid is ambiguous


def _as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    import torch

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
    import torch

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


def _bilinear_index(
    g: int, n: int, p: int, s: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``n`` pixels: the two patch rows around its centre and the second's weight.

    Pixel ``y``'s centre in patch-centre coordinates is ``(y + 0.5) / p - 0.5`` (with a stride
    ``s``: ``(y + 0.5 - p / 2) / s``), clamped to ``[0, g - 1]`` (``align_corners=False``
    semantics; beyond the outer centres, including the strip past the grid, the edge patch alone).
    """
    if s is None or s == p:
        pos = np.clip((np.arange(n) + 0.5) / p - 0.5, 0.0, g - 1)  # float64
    else:
        pos = np.clip((np.arange(n) + 0.5 - p / 2) / s, 0.0, g - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, g - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def grid_to_frame(
    x: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    *,
    patch_size: int,
    alignment: Alignment = "crop",
    mode: Upsampling = "nearest",
    stride: int | None = None,
) -> torch.Tensor:
    """Map patch-grid values (labels, masks, maps) to frame pixels.

    Args:
        x: ``(..., gh, gw)`` values per patch, any dtype (``"bilinear"``: floating, or converted
            to float32).
        size: Frame ``(H, W)``.
        patch_size: Patch size ``p`` in pixels (used by ``"crop"``).
        alignment: ``"crop"`` (grid covers the top-left ``gh*p x gw*p`` pixels, each patch fills
            its ``p x p`` block, the uncovered strip repeats the edge) or ``"resize"`` (grid spans
            the frame; PIL nearest resize). See the module docstring.
        mode: ``"nearest"`` (each patch paints its pixels) or ``"bilinear"`` (between patch
            centres, for heat maps; ``"crop"`` only).
        stride: ``s`` between overlapping patches (``"crop"`` only; the nearest patch centre
            paints each pixel, see the module docstring); None: ``p``.

    Returns:
        ``(..., H, W)``, same dtype (``"bilinear"``: floating) and device as ``x``.
    """
    import torch

    _check_alignment(alignment, "grid_to_frame")
    _check_mode(mode, "grid_to_frame")
    t = _as_tensor(x, "grid_to_frame: x")
    if t.ndim < 2:
        raise ValueError(f"grid_to_frame: x must be (..., gh, gw), got shape {tuple(t.shape)}")
    if alignment == "resize":
        if mode == "bilinear":
            raise ValueError("grid_to_frame: mode='bilinear' needs alignment='crop'")
        if stride is not None and stride != patch_size:
            raise ValueError("grid_to_frame: a stride needs alignment='crop'")
        return resize_nearest(t, size)
    if patch_size < 1:
        raise ValueError(f"grid_to_frame: patch_size must be >= 1, got {patch_size}")
    _check_stride(stride, patch_size, "grid_to_frame")
    gh, gw = t.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if mode == "bilinear":
        t = t if t.is_floating_point() else t.float()
        y0, y1, wy = (
            torch.from_numpy(a).to(t.device) for a in _bilinear_index(gh, H, patch_size, stride)
        )
        x0, x1, wx = (
            torch.from_numpy(a).to(t.device) for a in _bilinear_index(gw, W, patch_size, stride)
        )
        wy, wx = wy.to(t.dtype), wx.to(t.dtype)
        # (..., H, gw): blend of the two rows around each pixel row, then the same for columns
        rows = t.index_select(-2, y0) * (1 - wy)[:, None] + t.index_select(-2, y1) * wy[:, None]
        return rows.index_select(-1, x0) * (1 - wx) + rows.index_select(-1, x1) * wx
    rows = torch.from_numpy(grid_index(H, gh, patch_size, stride)).to(t.device)  # (H,)
    cols = torch.from_numpy(grid_index(W, gw, patch_size, stride)).to(t.device)  # (W,)
    return t.index_select(-2, rows).index_select(-1, cols)


def _check_mode(mode: str, name: str) -> None:
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"{name}: mode must be 'nearest' or 'bilinear', got {mode!r}")


def _check_stride(stride: int | None, patch_size: int, name: str) -> None:
    if stride is not None and not 1 <= int(stride) <= int(patch_size):
        raise ValueError(f"{name}: stride must be in 1 .. patch_size={patch_size}, got {stride}")


def grid_index(n: int, g: int, patch_size: int, stride: int | None = None) -> np.ndarray:
    """The patch row (or column) each of ``n`` pixel rows (or columns) shows ("crop" alignment).

    ``min(y // p, g - 1)``: patch ``i`` covers pixels ``i*p .. (i+1)*p - 1``, and the strip past
    the grid repeats the edge patch (the border rule of the module docstring). With a stride
    ``s`` (overlapping patches ``[i*s, i*s + p)``): the patch with the nearest centre,
    ``floor((2y + 1 - p + s) / (2s))`` clamped to ``[0, g)``, which is ``y // p`` for ``s == p``.

    Returns:
        int64 (n,) in ``[0, g)``.
    """
    if patch_size < 1 or g < 1:
        raise ValueError(f"grid_index: patch_size and g must be >= 1, got {patch_size}, {g}")
    _check_stride(stride, patch_size, "grid_index")
    y = np.arange(int(n), dtype=np.int64)
    p = int(patch_size)
    if stride is None or int(stride) == p:
        return np.minimum(y // p, g - 1)
    s = int(stride)
    return np.clip((2 * y + 1 - p + s) // (2 * s), 0, g - 1)  # nearest patch centre


def upsample_grid(
    a: np.ndarray,
    size: tuple[int, int],
    *,
    patch_size: int,
    mode: Upsampling = "nearest",
    stride: int | None = None,
) -> np.ndarray:
    """:func:`grid_to_frame` ("crop") for numpy arrays, without torch: what labkit.viz draws with.

    Args:
        a: ``(..., gh, gw)`` values, any dtype (``"bilinear"``: floating; others become float32).
        size: Frame ``(H, W)``.
        patch_size: ``p``.
        mode: ``"nearest"`` or ``"bilinear"`` (between patch centres, see the module docstring).
        stride: ``s`` between overlapping patches; None: ``p``.

    Returns:
        ``(..., H, W)`` array, ``a``'s dtype (``"bilinear"``: floating), equal to
        ``grid_to_frame(a, size, patch_size=p, mode=mode, stride=stride).numpy()``.
    """
    _check_mode(mode, "upsample_grid")
    a = np.asarray(a)
    if a.ndim < 2:
        raise ValueError(f"upsample_grid: a must be (..., gh, gw), got shape {a.shape}")
    gh, gw = a.shape[-2:]
    H, W = int(size[0]), int(size[1])
    _check_stride(stride, patch_size, "upsample_grid")
    if mode == "nearest":
        rows = grid_index(H, gh, patch_size, stride)
        cols = grid_index(W, gw, patch_size, stride)
        return a[..., rows, :][..., cols]
    a = a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float32)
    y0, y1, wy = _bilinear_index(gh, H, patch_size, stride)
    x0, x1, wx = _bilinear_index(gw, W, patch_size, stride)
    wy, wx = wy.astype(a.dtype), wx.astype(a.dtype)
    # (..., H, gw): blend of the two rows around each pixel row, then the same for columns
    rows_ = a[..., y0, :] * (1 - wy)[:, None] + a[..., y1, :] * wy[:, None]
    return rows_[..., x0] * (1 - wx) + rows_[..., x1] * wx


def check_grid(
    grid: tuple[int, int],
    size: tuple[int, int],
    patch_size: int,
    name: str,
    stride: int | None = None,
) -> None:
    """Check that a ``gh x gw`` grid of ``p``-pixel patches is the grid of an ``H x W`` frame.

    True when ``0 <= H - gh*p < p`` and ``0 <= W - gw*p < p``: the frame cropped to multiples of
    ``p`` (:func:`labkit.models.prepare_images`) gives that grid. With a stride ``s``: when
    ``gh == stride_grid(H, p, s)`` and the same for ``W``.

    Raises:
        ValueError: starting with ``name``, saying the grid does not fit.
    """
    if stride is not None and int(stride) != int(patch_size):
        want = (stride_grid(size[0], patch_size, stride), stride_grid(size[1], patch_size, stride))
        if tuple(grid) != want:
            raise ValueError(
                f"{name}: a {grid[0]}x{grid[1]} grid does not fit frames of size {tuple(size)} "
                f"with {patch_size}-pixel patches every {stride} pixels (that grid is "
                f"{want[0]}x{want[1]})"
            )
        return
    (gh, gw), (H, W), p = grid, size, int(patch_size)
    if p < 1 or not (0 <= H - gh * p < p and 0 <= W - gw * p < p):
        raise ValueError(
            f"{name}: a {gh}x{gw} grid of {patch_size}-pixel patches does not fit "
            f"frames of size {(H, W)} (need 0 <= H - gh*p < p and 0 <= W - gw*p < p)"
        )


def stride_grid(n: int, patch_size: int, stride: int | None = None) -> int:
    """Patches along a side of ``n`` pixels: ``(n' - p) // s + 1``, ``n'`` = ``n`` cropped down to
    a multiple of ``p`` (as :func:`labkit.models.prepare_images` crops); ``n // p`` for ``s == p``.

    Raises:
        ValueError: ``n < p`` or a stride outside ``1 .. p``.
    """
    p = int(patch_size)
    _check_stride(stride, p, "stride_grid")
    if n < p:
        raise ValueError(f"stride_grid: {n} pixels are fewer than one {p}-pixel patch")
    s = p if stride is None else int(stride)
    return (n // p * p - p) // s + 1


def infer_patch_size(
    grid: tuple[int, int], size: tuple[int, int], patch_size: int | None = None
) -> int:
    """The patch size ``p`` that maps a ``grid`` onto a frame of ``size`` ("crop" alignment).

    ``p`` is valid when ``H // p == gh`` and ``W // p == gw``. Several values can be valid (a
    224 x 224 frame with a 14 x 14 grid fits p = 15 and 16); inference then takes the largest
    common ViT patch size among them (8, 14, 16, 32), else the largest valid one.

    Args:
        grid: ``(gh, gw)``.
        size: Frame ``(H, W)``.
        patch_size: ``p`` to check, or None to infer it.

    Returns:
        ``p``.

    Raises:
        ValueError: no ``p`` gives that grid, or the given one does not.
    """
    (gh, gw), (H, W) = grid, size
    if patch_size is None:
        lo = max(H // (gh + 1), W // (gw + 1)) + 1  # gh * p <= H < (gh + 1) * p, same for W
        hi = min(H // gh, W // gw) if gh and gw else 0
        if lo > hi:
            raise ValueError(
                f"cannot infer the patch size for a {gh}x{gw} grid on a {H}x{W} frame (no p "
                "gives that grid); pass patch_size="
            )
        common = [p for p in COMMON_PATCH_SIZES if lo <= p <= hi]
        return common[-1] if common else hi
    p = int(patch_size)
    if p < 1 or H // p != gh or W // p != gw:
        raise ValueError(
            f"patch_size={patch_size}: a {H}x{W} frame cropped to multiples of {p} gives a "
            f"{H // max(p, 1)}x{W // max(p, 1)} grid, not {gh}x{gw}"
        )
    return p


def pixel_to_patch(
    y: float, x: float, grid: tuple[int, int], patch_size: int, stride: int | None = None
) -> tuple[int, int] | None:
    """The patch ``(i, j)`` a frame pixel belongs to ("crop" alignment, border rule above).

    Args:
        y, x: pixel row and column (floats are truncated), in an ``H x W`` frame whose grid is
            ``grid`` (see :func:`check_grid`).
        grid: ``(gh, gw)``.
        patch_size: ``p``.
        stride: ``s`` between overlapping patches (the patch with the nearest centre, as
            :func:`grid_index`); None: ``p``.

    Returns:
        ``(y // p, x // p)`` clamped to the grid (the strip belongs to the edge patch), or None
        for a negative coordinate.
    """
    if y < 0 or x < 0:
        return None
    if stride is not None and int(stride) != int(patch_size):
        i = int(grid_index(int(y) + 1, grid[0], patch_size, stride)[-1])
        j = int(grid_index(int(x) + 1, grid[1], patch_size, stride)[-1])
        return i, j
    i = min(int(y) // patch_size, grid[0] - 1)
    j = min(int(x) // patch_size, grid[1] - 1)
    return i, j


def frame_to_grid(
    labels: torch.Tensor | np.ndarray,
    grid: tuple[int, int],
    *,
    patch_size: int,
    alignment: Alignment = "crop",
    stride: int | None = None,
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
        stride: ``s`` between overlapping patches (``"crop"``: pixel ``i*s + p // 2``); None: ``p``.

    Returns:
        ``(..., gh, gw)``, same dtype and device as ``labels``.
    """
    import torch

    _check_alignment(alignment, "frame_to_grid")
    t = _as_tensor(labels, "frame_to_grid: labels")
    if t.ndim < 2:
        raise ValueError(f"frame_to_grid: labels must be (..., H, W), got shape {tuple(t.shape)}")
    if alignment == "resize":
        return resize_nearest(t, grid)
    if patch_size < 1:
        raise ValueError(f"frame_to_grid: patch_size must be >= 1, got {patch_size}")
    _check_stride(stride, patch_size, "frame_to_grid")
    H, W = t.shape[-2:]
    half = patch_size // 2
    step = patch_size if stride is None else int(stride)
    rows = torch.clamp(torch.arange(int(grid[0]), device=t.device) * step + half, max=H - 1)
    cols = torch.clamp(torch.arange(int(grid[1]), device=t.device) * step + half, max=W - 1)
    return t.index_select(-2, rows).index_select(-1, cols)
