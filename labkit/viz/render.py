"""Render attention maps, masks, segments and features as images: numpy uint8 RGB arrays.

Inputs may be torch tensors or numpy arrays; outputs are always numpy arrays on the CPU.

Notation::

    T   frames;  H, W  frame height and width in pixels
    h   attention heads;  gh, gw  patch grid;  p  patch size in pixels;  D  feature channels
    C   channels of a map;  K  masks drawn on one frame

Patch layout (the contract of ``labkit.models.prepare_images``): frames are cropped *down* to a
multiple of the patch size keeping the top-left corner, so patch ``(i, j)`` covers pixels
``[i*p:(i+1)*p, j*p:(j+1)*p]`` of the original frame and the grid covers its top-left
``gh*p x gw*p`` pixels. Maps brought back to frame size are aligned that way, and the strip of
fewer than ``p`` pixels left at the right and bottom is filled with the edge values: the border
rule of :mod:`labkit.geometry`, which does every grid -> pixel mapping (the evaluation scores
masks on the same pixels as are drawn here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from labkit.geometry import infer_patch_size, upsample_grid
from labkit.viz.palette import HEAD_COLOURS, palette

__all__ = [
    "palette",
    "HEAD_COLOURS",
    "upsample_map",
    "heads_to_rgb",
    "overlay",
    "mask_overlay",
    "box_overlay",
    "segments_to_rgb",
    "segment_overlay",
    "features_to_rgb",
    "caption",
    "label_panels",
]

# the colours (palette, HEAD_COLOURS) live in labkit.viz.palette; re-exported here


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Tensor or array-like -> numpy array (detached, on the CPU)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: cannot convert {type(x).__name__} to an array") from e


def _frame(frame: Any, name: str = "frame") -> np.ndarray:
    f = _to_numpy(frame, name)
    if f.ndim != 3 or f.shape[-1] != 3 or f.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 (H, W, 3), got {f.dtype} {f.shape}")
    return f


_palette_fn = palette  # for functions that have an argument called palette


# grid -> pixels: labkit.geometry, with its one border rule (the strip right of and below the
# grid repeats the edge patches), the same rule the evaluation scores masks with
_grid_patch_size = infer_patch_size


def _upsample_nearest(a: np.ndarray, size: tuple[int, int], p: int) -> np.ndarray:
    """(..., gh, gw) any dtype -> (..., H, W): each patch on its p x p block, edge repeated."""
    return upsample_grid(a, size, patch_size=p)


def _upsample_bilinear(a: np.ndarray, size: tuple[int, int], p: int) -> np.ndarray:
    """(C, gh, gw) float -> (C, H, W): bilinear between patch centres, clamped at the borders."""
    return upsample_grid(a, size, patch_size=p, mode="bilinear")


def upsample_map(
    map: Any,
    size: tuple[int, int],
    patch_size: int | None = None,
    mode: Literal["nearest", "bilinear"] = "nearest",
) -> np.ndarray:
    """Bring a patch-grid map to frame resolution (top-left aligned, see the module docstring).

    ``nearest`` paints patch ``(i, j)`` on exactly the pixels ``[i*p:(i+1)*p, j*p:(j+1)*p]``;
    ``bilinear`` interpolates between patch centres (``align_corners=False`` semantics, clamped
    at the borders). The bottom/right strip not covered by the grid repeats the edge values.

    Args:
        map: ``(gh, gw)`` or ``(C, gh, gw)`` values (tensor or array).
        size: Frame ``(H, W)``, with ``H // p == gh`` and ``W // p == gw``.
        patch_size: ``p``; inferred from ``size`` and the grid when ``None`` (the largest of
            8, 14, 16, 32 that fits, else the largest ``p`` that fits; pass it to be exact).
        mode: ``"nearest"`` or ``"bilinear"``.

    Returns:
        float32 ``(H, W)`` or ``(H, W, C)`` (channels last), values within the input's range.
    """
    a = _to_numpy(map, "upsample_map: map").astype(np.float32, copy=False)
    if a.ndim not in (2, 3):
        raise ValueError(f"upsample_map: map must be (gh, gw) or (C, gh, gw), got {a.shape}")
    H, W = (int(s) for s in size)
    p = _grid_patch_size(a.shape[-2:], (H, W), patch_size)
    a3 = a[None] if a.ndim == 2 else a  # (C, gh, gw)
    if mode == "nearest":
        out = _upsample_nearest(a3, (H, W), p)
    elif mode == "bilinear":
        out = _upsample_bilinear(a3, (H, W), p)
    else:
        raise ValueError(f"upsample_map: mode must be 'nearest' or 'bilinear', got {mode!r}")
    return out[0] if a.ndim == 2 else np.ascontiguousarray(out.transpose(1, 2, 0))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] -> uint8 0..255 (rounded, clipped)."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def heads_to_rgb(
    attn: Any,
    heads: Sequence[int] = (0, 1, 2),
    *,
    size: tuple[int, int] | None = None,
    mode: Literal["nearest", "bilinear"] = "nearest",
    patch_size: int | None = None,
    norm: Literal["frame", "clip"] = "frame",
) -> np.ndarray:
    """Show three attention heads at once as the R, G and B channels of one image.

    Each chosen head is min-max normalised on its own, ``(a - min) / (max - min)``, over its patch
    grid (``norm="frame"``) or over all frames given (``norm="clip"``, so brightness is comparable
    over time); a constant head maps to 0, not NaN. Normalisation happens on the grid, before any
    upsampling.

    Args:
        attn: ``(h, gh, gw)`` or ``(T, h, gh, gw)`` attention maps (tensor or array).
        heads: Three head indices for R, G, B (repeats allowed).
        size: Frame ``(H, W)`` to upsample to (see :func:`upsample_map`); ``None`` keeps the grid.
        mode: Upsampling, ``"nearest"`` or ``"bilinear"``.
        patch_size: ``p``; inferred from ``size`` when ``None``.
        norm: ``"frame"`` or ``"clip"`` (see above).

    Returns:
        uint8 ``([T,] H, W, 3)`` (or ``([T,] gh, gw, 3)`` without ``size``), 0..255.
    """
    a = _to_numpy(attn, "heads_to_rgb: attn").astype(np.float32)
    if a.ndim not in (3, 4):
        raise ValueError(f"heads_to_rgb: attn must be (h, gh, gw) or (T, h, gh, gw), got {a.shape}")
    single = a.ndim == 3
    a = a[None] if single else a  # (T, h, gh, gw)
    heads = [int(i) for i in heads]
    if len(heads) != 3 or not all(-a.shape[1] <= i < a.shape[1] for i in heads):
        raise ValueError(f"heads_to_rgb: need 3 head indices in [0, {a.shape[1]}), got {heads}")
    if norm not in ("frame", "clip"):
        raise ValueError(f"heads_to_rgb: norm must be 'frame' or 'clip', got {norm!r}")
    sel = a[:, heads]  # (T, 3, gh, gw)
    axes = (2, 3) if norm == "frame" else (0, 2, 3)
    lo = sel.min(axis=axes, keepdims=True)
    rng = sel.max(axis=axes, keepdims=True) - lo
    unit = np.where(rng > 0, (sel - lo) / np.where(rng > 0, rng, 1.0), 0.0)  # (T, 3, gh, gw)
    if size is None:
        out = unit.transpose(0, 2, 3, 1)  # (T, gh, gw, 3)
    else:
        out = np.stack([upsample_map(u, size, patch_size, mode) for u in unit])  # (T, H, W, 3)
    out = _to_uint8(out)
    return out[0] if single else out


def _blend(frame: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    out = (1.0 - alpha) * frame.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _check_alpha(alpha: float, name: str) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{name}: alpha must be in [0, 1], got {alpha}")
    return float(alpha)


def overlay(
    frame: Any,
    image: Any,
    alpha: float = 0.5,
    cmap: str = "inferno",
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    patch_size: int | None = None,
    mode: Literal["nearest", "bilinear"] = "bilinear",
) -> np.ndarray:
    """Blend a heat map (through a colormap) or an RGB image over a frame.

    A heat map is scaled to [0, 1] with ``vmin``/``vmax`` (default: its own min and max; a
    constant map gives 0) and coloured with the matplotlib colormap ``cmap``. A map or image at
    patch-grid resolution is first upsampled to the frame (see :func:`upsample_map`).

    Args:
        frame: uint8 ``(H, W, 3)``, or ``(T, H, W, 3)`` with ``image`` having the same ``T``.
        image: Heat map ``(H, W)`` / ``(gh, gw)`` (any real dtype), or uint8 RGB ``(H, W, 3)`` /
            ``(gh, gw, 3)`` such as the output of :func:`heads_to_rgb`.
        alpha: Weight of the map: 0 gives the frame back, 1 the coloured map.
        cmap: Colormap name for heat maps.
        vmin: Heat value shown as the colormap's low end.
        vmax: Heat value shown as its high end.
        patch_size: ``p`` for maps at grid resolution; inferred when ``None``.
        mode: Upsampling of grid-resolution maps.

    Returns:
        uint8 array shaped like ``frame``.
    """
    alpha = _check_alpha(alpha, "overlay")
    f = _to_numpy(frame, "overlay: frame")
    img = _to_numpy(image, "overlay: image")
    if f.ndim == 4:
        if len(img) != len(f):
            raise ValueError(f"overlay: {len(f)} frames but {len(img)} maps")
        kw: dict[str, Any] = dict(vmin=vmin, vmax=vmax, patch_size=patch_size, mode=mode)
        return np.stack([overlay(fi, mi, alpha, cmap, **kw) for fi, mi in zip(f, img)])
    f = _frame(f, "overlay: frame")
    H, W = f.shape[:2]
    if img.ndim == 3 and img.shape[-1] == 3:
        if img.dtype != np.uint8:
            raise ValueError(f"overlay: an RGB image must be uint8, got {img.dtype}")
        if img.shape[:2] != (H, W):
            up = upsample_map(img.transpose(2, 0, 1), (H, W), patch_size, mode)
            img = np.clip(np.rint(up), 0, 255).astype(np.uint8)
        colour = img
    elif img.ndim == 2:
        heat = img.astype(np.float32)
        if heat.shape != (H, W):
            heat = upsample_map(heat, (H, W), patch_size, mode)
        lo = float(heat.min()) if vmin is None else float(vmin)
        hi = float(heat.max()) if vmax is None else float(vmax)
        unit = np.clip((heat - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(heat)
        import matplotlib

        colour = _to_uint8(matplotlib.colormaps[cmap](unit)[..., :3])
    else:
        raise ValueError(
            f"overlay: image must be a heat map (H, W) or uint8 RGB (H, W, 3), got {img.dtype} "
            f"{img.shape}"
        )
    return _blend(f, colour, alpha)


def _mask_to_frame(
    mask: np.ndarray, size: tuple[int, int], patch_size: int | None, name: str
) -> np.ndarray:
    """(H, W) or (gh, gw) mask -> bool (H, W)."""
    if mask.ndim != 2:
        raise ValueError(f"{name}: a mask must be 2-D (H, W) or (gh, gw), got {mask.shape}")
    m = mask.astype(bool) if mask.dtype != bool else mask
    if m.shape != tuple(size):
        m = _upsample_nearest(m, size, _grid_patch_size(m.shape, size, patch_size))
    return m


def mask_overlay(
    frame: Any,
    mask: Any,
    color: Sequence[int] | Sequence[Sequence[int]] | np.ndarray | None = None,
    alpha: float = 0.5,
    *,
    contour: bool = True,
    thickness: int = 1,
    patch_size: int | None = None,
    halo: bool = False,
) -> np.ndarray:
    """Draw boolean masks over a frame: a translucent fill and a solid contour (DINO style).

    Masks at patch-grid resolution are upsampled nearest (whole patches). The contour is the set
    of mask pixels within ``thickness`` pixels of a non-mask pixel (the frame border does not
    count as outside). Several masks are drawn in order, later ones on top.

    Args:
        frame: uint8 ``(H, W, 3)``, or ``(T, H, W, 3)`` with a leading ``T`` on ``mask`` too.
        mask: bool-like ``(H, W)`` / ``(gh, gw)``, or ``K`` masks ``(K, H, W)`` / ``(K, gh, gw)``
            (e.g. one per head from ``labkit.attention.mass_threshold``).
        color: One RGB colour, or ``(K, 3)`` colours; default :func:`palette` colours
            ``3, 0, 1, 2, ...`` (red first).
        alpha: Opacity of the fill (0: contour only).
        contour: Draw the contour in the solid colour.
        thickness: Contour width in pixels.
        patch_size: ``p`` for grid-resolution masks; inferred when ``None``.
        halo: Also draw a black line ``thickness`` pixels wide just outside each contour, so the
            contour stands out on frames of its own colour.

    Returns:
        uint8 array shaped like ``frame``.
    """
    alpha = _check_alpha(alpha, "mask_overlay")
    f = _to_numpy(frame, "mask_overlay: frame")
    m = _to_numpy(mask, "mask_overlay: mask")
    if f.ndim == 4:
        if m.ndim not in (3, 4) or len(m) != len(f):
            raise ValueError(
                f"mask_overlay: {len(f)} frames need masks (T, H, W) or (T, K, H, W), got {m.shape}"
            )
        kw: dict[str, Any] = dict(
            contour=contour, thickness=thickness, patch_size=patch_size, halo=halo
        )
        return np.stack([mask_overlay(fi, mi, color, alpha, **kw) for fi, mi in zip(f, m)])
    out = _frame(f, "mask_overlay: frame").copy()
    masks = m[None] if m.ndim == 2 else m  # (K, ., .)
    if masks.ndim != 3:
        raise ValueError(f"mask_overlay: mask must be (H, W) or (K, H, W), got {m.shape}")
    K = len(masks)
    if color is None:
        order = [3] + [i for i in range(K + 3) if i != 3]  # red first, then the others in order
        colours = palette(K + 3)[order[:K]]
    else:
        colours = np.asarray(color, dtype=np.int64).reshape(-1, 3)
        if len(colours) == 1:
            colours = np.repeat(colours, K, axis=0)
        if len(colours) != K or (colours < 0).any() or (colours > 255).any():
            raise ValueError(f"mask_overlay: color must be one RGB or {K} RGB in 0..255")
    if thickness < 1:
        raise ValueError(f"mask_overlay: thickness must be >= 1, got {thickness}")
    from scipy.ndimage import binary_dilation, binary_erosion

    H, W = out.shape[:2]
    for mk, col in zip(masks, colours.astype(np.uint8)):
        mk = _mask_to_frame(mk, (H, W), patch_size, "mask_overlay: mask")
        out[mk] = _blend(out[mk], col[None], alpha)
        if contour and halo and mk.any():
            out[binary_dilation(mk, np.ones((3, 3), bool), iterations=thickness) & ~mk] = 0
        if contour and mk.any():
            inner = binary_erosion(mk, iterations=thickness, border_value=1)
            out[mk & ~inner] = col
    return out


def box_overlay(
    frame: Any,
    boxes: Any,
    color: Sequence[int] | np.ndarray | None = None,
    *,
    thickness: int = 2,
    patch_size: int | None = None,
) -> np.ndarray:
    """Draw box outlines over a frame (e.g. the boxes of :mod:`labkit.discovery`).

    Args:
        frame: uint8 ``(H, W, 3)``.
        boxes: ``(4,)`` or ``(K, 4)`` ``(row0, col0, row1, col1)``, end exclusive; in pixels, or
            in patches with ``patch_size`` (patch ``(i, j)`` covers ``[i*p:(i+1)*p, j*p:(j+1)*p]``).
            Empty boxes (``row1 <= row0`` or ``col1 <= col0``) are not drawn.
        color: One RGB colour, or ``(K, 3)``; default :func:`palette` colours from 3 (red) on.
        thickness: Line width in pixels, drawn inside the box.
        patch_size: ``p`` for boxes on the patch grid; None for pixel boxes.

    Returns:
        uint8 ``(H, W, 3)`` array, a copy of the frame with the outlines.
    """
    out = _frame(frame, "box_overlay: frame").copy()
    b = _to_numpy(boxes, "box_overlay: boxes").astype(np.float64).reshape(-1, 4)
    if thickness < 1:
        raise ValueError(f"box_overlay: thickness must be >= 1, got {thickness}")
    if patch_size is not None:
        b = b * patch_size
    K = len(b)
    if color is None:
        colours = palette(K + 3)[[(3 + i) % (K + 3) for i in range(K)]]
    else:
        colours = np.asarray(color, dtype=np.int64).reshape(-1, 3)
        if len(colours) == 1:
            colours = np.repeat(colours, K, axis=0)
        if len(colours) != K or (colours < 0).any() or (colours > 255).any():
            raise ValueError(f"box_overlay: color must be one RGB or {K} RGB in 0..255")
    H, W = out.shape[:2]
    for (r0, c0, r1, c1), col in zip(b, colours.astype(np.uint8)):
        if not np.isfinite([r0, c0, r1, c1]).all() or r1 <= r0 or c1 <= c0:
            continue
        r0, c0 = max(0, int(round(r0))), max(0, int(round(c0)))
        r1, c1 = min(H, int(round(r1))), min(W, int(round(c1)))
        if r1 <= r0 or c1 <= c0:
            continue
        t = min(thickness, r1 - r0, c1 - c0)
        out[r0 : r0 + t, c0:c1] = col
        out[r1 - t : r1, c0:c1] = col
        out[r0:r1, c0 : c0 + t] = col
        out[r0:r1, c1 - t : c1] = col
    return out


def segments_to_rgb(
    labels: Any,
    *,
    size: tuple[int, int] | None = None,
    palette: np.ndarray | Sequence[Sequence[int]] | None = None,
    patch_size: int | None = None,
) -> np.ndarray:
    """Colour a label map with one fixed colour per label id (the same id, the same colour).

    Args:
        labels: Integer labels ``(gh, gw)`` or ``(T, gh, gw)``; ``-1`` means "no label" (black).
        size: Frame ``(H, W)`` to upsample to (nearest, top-left layout); ``None`` or the labels'
            own size keeps them as they are.
        palette: ``(m, 3)`` uint8 colours indexed by label; default :func:`palette`.
        patch_size: ``p``; inferred from ``size`` when ``None``.

    Returns:
        uint8 ``([T,] H, W, 3)`` (or ``([T,] gh, gw, 3)`` without ``size``).
    """
    lab = _to_numpy(labels, "segments_to_rgb: labels")
    if lab.ndim not in (2, 3) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(
            f"segments_to_rgb: labels must be integer (gh, gw) or (T, gh, gw), got {lab.dtype} "
            f"{lab.shape}"
        )
    hi = int(lab.max()) if lab.size else -1
    if lab.size and int(lab.min()) < -1:
        raise ValueError("segments_to_rgb: labels must be >= -1 (-1 = no label)")
    pal = _palette_fn(hi + 1) if palette is None else np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3:
        raise ValueError(f"segments_to_rgb: palette must be (m, 3), got {pal.shape}")
    if hi >= len(pal):
        raise ValueError(f"segments_to_rgb: label {hi} but the palette has {len(pal)} colours")
    table = np.concatenate([pal.astype(np.uint8), np.zeros((1, 3), np.uint8)])  # -1 -> black
    if size is not None and tuple(lab.shape[-2:]) != tuple(size):
        p = _grid_patch_size(lab.shape[-2:], size, patch_size)
        lab = _upsample_nearest(lab, (size[0], size[1]), p)
    return table[lab]


def segment_overlay(
    frame: Any,
    labels: Any,
    alpha: float = 0.5,
    *,
    palette: np.ndarray | Sequence[Sequence[int]] | None = None,
    patch_size: int | None = None,
) -> np.ndarray:
    """Blend segment colours over a frame or a clip; label ``j`` gets colour ``palette[j]``.

    With ids aligned over time (``labkit.clustering.kmeans_segments``) a segment keeps its colour
    in every frame: the default palette does not depend on how many labels a frame uses.

    Args:
        frame: uint8 ``(H, W, 3)`` or ``(T, H, W, 3)``.
        labels: Integer ``(gh, gw)`` / ``(H, W)``, or ``(T, ., .)`` for a clip; ``-1`` leaves the
            pixel unchanged.
        alpha: Opacity of the colours.
        palette: ``(m, 3)`` uint8 colours; default :func:`palette`.
        patch_size: ``p`` for grid-resolution labels; inferred when ``None``.

    Returns:
        uint8 array shaped like ``frame``.
    """
    alpha = _check_alpha(alpha, "segment_overlay")
    f = _to_numpy(frame, "segment_overlay: frame")
    lab = _to_numpy(labels, "segment_overlay: labels")
    if f.ndim == 4:
        if lab.ndim != 3 or len(lab) != len(f):
            raise ValueError(
                f"segment_overlay: {len(f)} frames need labels (T, ., .), got {lab.shape}"
            )
        kw: dict[str, Any] = dict(palette=palette, patch_size=patch_size)
        return np.stack([segment_overlay(fi, li, alpha, **kw) for fi, li in zip(f, lab)])
    f = _frame(f, "segment_overlay: frame")
    if lab.ndim != 2:
        raise ValueError(f"segment_overlay: labels must be 2-D for one frame, got {lab.shape}")
    H, W = f.shape[:2]
    colour = segments_to_rgb(lab, size=(H, W), palette=palette, patch_size=patch_size)
    out = _blend(f, colour, alpha)
    if lab.size and int(lab.min()) < 0:
        p = 1 if lab.shape == (H, W) else _grid_patch_size(lab.shape, (H, W), patch_size)
        none = _upsample_nearest(lab < 0, (H, W), p)
        out[none] = f[none]
    return out


def features_to_rgb(
    features: Any,
    *,
    size: tuple[int, int] | None = None,
    patch_size: int | None = None,
    mode: Literal["nearest", "bilinear"] = "nearest",
    quantile: float = 0.0,
) -> np.ndarray:
    """Show patch features as colours: their first three principal components as R, G, B.

    The PCA (``labkit.clustering.pca``) and the scaling of each component to 0..255 use the
    patches of *all* frames given together, so a colour means the same feature direction in every
    frame. Each component is scaled from its ``quantile`` to its ``1 - quantile`` value (default
    min to max), clipping outside.

    Args:
        features: ``(gh, gw, D)`` or ``(T, gh, gw, D)`` patch features, ``D >= 3``.
        size: Frame ``(H, W)`` to upsample to; ``None`` keeps the grid.
        patch_size: ``p``; inferred from ``size`` when ``None``.
        mode: Upsampling, ``"nearest"`` or ``"bilinear"``.
        quantile: Robust scaling, in ``[0, 0.5)``; e.g. 0.01 ignores 1% outliers at each end.

    Returns:
        uint8 ``([T,] H, W, 3)`` (or ``([T,] gh, gw, 3)`` without ``size``), 0..255.
    """
    import torch

    from labkit.clustering import pca

    x = torch.as_tensor(_to_numpy(features, "features_to_rgb: features")).float()
    if x.ndim not in (3, 4):
        raise ValueError(
            f"features_to_rgb: features must be (gh, gw, D) or (T, gh, gw, D), got {tuple(x.shape)}"
        )
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"features_to_rgb: quantile must be in [0, 0.5), got {quantile}")
    single = x.ndim == 3
    x = x[None] if single else x  # (T, gh, gw, D)
    T, gh, gw, D = x.shape
    z = pca(x.reshape(-1, D), 3).numpy()  # (T*gh*gw, 3), shared basis
    lo = np.quantile(z, quantile, axis=0) if quantile > 0 else z.min(0)
    hi = np.quantile(z, 1 - quantile, axis=0) if quantile > 0 else z.max(0)
    rng = hi - lo
    unit = np.where(rng > 0, (z - lo) / np.where(rng > 0, rng, 1.0), 0.0)
    unit = np.clip(unit, 0, 1).reshape(T, gh, gw, 3).astype(np.float32)
    if size is not None:
        unit = np.stack([upsample_map(u.transpose(2, 0, 1), size, patch_size, mode) for u in unit])
    out = _to_uint8(unit)
    return out[0] if single else out


def caption(frame: Any, text: str, *, font_size: int | None = None) -> np.ndarray:
    """Write one line of text in a dark band across the top of a frame, so a viewer knows what it
    is.

    The band is the frame darkened to 35% (the picture stays faintly visible behind the text);
    text is white, in Pillow's built-in scalable font, cut at the right edge if too long.

    Args:
        frame: uint8 ``(H, W, 3)``.
        text: The caption (one line; newlines become spaces).
        font_size: Text height in pixels; default ``H / 32``, at least 9 and at most 28 (legible
            on a 480p frame at 100%, not dominant on a 1080p one).

    Returns:
        uint8 ``(H, W, 3)``, a copy of the frame with the caption; the rows below the band are
        unchanged.
    """
    from PIL import Image, ImageDraw, ImageFont

    out = _frame(frame, "caption: frame").copy()
    H, W = out.shape[:2]
    size = int(font_size) if font_size is not None else int(min(28, max(9, round(H / 32))))
    if size < 1:
        raise ValueError(f"caption: font_size must be >= 1, got {font_size}")
    band = min(H, round(size * 1.5))
    out[:band] = (out[:band].astype(np.uint16) * 9 // 25).astype(np.uint8)  # 36% of the colour
    image = Image.fromarray(out[:band])
    font = ImageFont.load_default(size=size)
    ImageDraw.Draw(image).text(
        (max(2, size // 3), (band - size) // 2),
        " ".join(str(text).split()),
        fill=(255, 255, 255),
        font=font,
    )
    out[:band] = np.asarray(image)
    return out


def _font(size: int) -> Any:
    """DejaVu Sans (matplotlib's bundled copy) at ``size`` pixels, else Pillow's scalable
    default.
    """
    from pathlib import Path

    from PIL import ImageFont

    try:
        import matplotlib

        return ImageFont.truetype(
            str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), size
        )
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def label_panels(
    frames: Any,
    panel_titles: Sequence[str],
    info: str | Sequence[str] = "",
    *,
    font_size: int | None = None,
) -> np.ndarray:
    """Add a dark band above frames made of side-by-side panels: each panel's title over it and,
    below the titles, one line of information per frame (frame number, weights ...).

    The band is added above the frames (nothing of the picture is covered); text is white (the
    information line light grey) in DejaVu Sans, cut at the panel's or frame's edge if too long.

    Args:
        frames: uint8 ``(T, H, W, 3)`` or one frame ``(H, W, 3)``, ``len(panel_titles)`` panels of
            equal width side by side (e.g. :meth:`labkit.explore.Exploration.animation_frames`).
        panel_titles: What each panel shows, left to right.
        info: One line under the titles, the same for every frame (a string) or one per frame.
        font_size: Text height in pixels; default ``H / 16``, between 12 and 24 (legible in a
            GIF shown at its own size on a 1400 px page).

    Returns:
        uint8 ``([T,] H + band, W, 3)``: the band (``2.9 x font_size`` rows with an info line,
        ``1.6 x`` without), then the frames unchanged.
    """
    from PIL import Image, ImageDraw

    f = _to_numpy(frames, "label_panels: frames")
    single = f.ndim == 3
    f = f[None] if single else f
    if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
        raise ValueError(
            f"label_panels: frames must be uint8 (T, H, W, 3), got {f.dtype} {f.shape}"
        )
    T, H, W, _ = f.shape
    n = len(panel_titles)
    if n < 1:
        raise ValueError("label_panels: need at least one panel title")
    infos = [str(info)] * T if isinstance(info, str) else [str(i) for i in info]
    if len(infos) != T:
        raise ValueError(f"label_panels: {T} frames but {len(infos)} info lines")
    size = int(font_size) if font_size is not None else int(min(24, max(12, round(H / 16))))
    if size < 1:
        raise ValueError(f"label_panels: font_size must be >= 1, got {font_size}")
    font = _font(size)
    has_info = any(infos)
    band = round(size * (2.9 if has_info else 1.6))
    pad = max(2, size // 3)
    # the titles are the same in every frame: draw them once
    top = Image.new("RGB", (W, band), (24, 24, 24))
    draw = ImageDraw.Draw(top)
    width = W / n
    for i, title in enumerate(panel_titles):
        text = " ".join(str(title).split())
        while text and draw.textlength(text, font=font) > width - 2 * pad:
            text = text[:-1]
        x = i * width + (width - draw.textlength(text, font=font)) / 2
        draw.text((x, pad // 2), text, fill=(255, 255, 255), font=font)
        if i:
            draw.line([(round(i * width), 0), (round(i * width), band)], fill=(90, 90, 90), width=1)
    out = np.empty((T, H + band, W, 3), np.uint8)
    out[:, band:] = f
    for t in range(T):
        image = top.copy()
        if infos[t]:
            d = ImageDraw.Draw(image)
            text = " ".join(infos[t].split())
            while text and d.textlength(text, font=font) > W - 2 * pad:
                text = text[:-1]
            d.rectangle([(0, round(size * 1.45)), (W, band)], fill=(24, 24, 24))
            d.text((pad, round(size * 1.5)), text, fill=(200, 200, 200), font=font)
        out[t, :band] = np.asarray(image)
    return out[0] if single else out
