"""One picture per attention head and their mean: what DINO's ``visualize_attention.py`` saves.

Render (:func:`head_maps`) turns one frame's per-head [CLS] attention into float maps at frame
resolution, the head mean last; plot (:func:`plot_head_maps`, :func:`plot_head_map`) turns them
into Figures with a colour bar. Values stay the attention itself (each head's share of the [CLS]
row that went to a patch), so heads compare on one scale and the mean is the mean of the maps.

Notation: h heads, gh x gw patch grid, H x W frame pixels, p patch size, s stride (p unless the
patch embedding's stride was changed, :func:`labkit.models.set_stride`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from labkit.geometry import upsample_grid
from labkit.viz.plot import plot_grid

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["head_maps", "head_scale", "plot_head_maps", "plot_head_map"]

Scale = Literal["shared", "own"]


def head_maps(
    attention: Any,
    size: tuple[int, int],
    *,
    patch_size: int,
    stride: int | None = None,
    mode: Literal["nearest", "bilinear"] = "nearest",
) -> np.ndarray:
    """Every head's [CLS] attention over one frame, and their mean, at frame resolution.

    Each head's ``(gh, gw)`` map is upsampled to the frame with :mod:`labkit.geometry`'s rule
    (``"nearest"``: each patch paints its pixels, as DINO's ``visualize_attention.py``; with a
    stride, each pixel takes the patch whose centre is nearest); the last map is the mean of the
    ``h`` upsampled maps (equal to the upsampled mean: both upsamplings are linear).

    Args:
        attention: ``(h, gh, gw)`` attention of one frame (tensor or array), non-negative.
        size: frame ``(H, W)``.
        patch_size: ``p``.
        stride: ``s`` between overlapping patches; None: ``p``.
        mode: ``"nearest"`` or ``"bilinear"`` (between patch centres).

    Returns:
        float32 ``(h + 1, H, W)``: heads ``0 .. h-1``, then the mean; values as the attention's
        (in [0, 1]).
    """
    if hasattr(attention, "detach"):
        attention = attention.detach().float().cpu().numpy()
    a = np.asarray(attention, dtype=np.float32)
    if a.ndim != 3:
        raise ValueError(f"head_maps: attention must be (h, gh, gw), got shape {a.shape}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError("head_maps: attention must be finite and non-negative")
    maps = upsample_grid(a, size, patch_size=patch_size, mode=mode, stride=stride)  # (h, H, W)
    maps = maps.astype(np.float32)
    return np.concatenate([maps, maps.mean(axis=0, keepdims=True)])  # (h + 1, H, W)


def head_scale(maps: np.ndarray, scale: Scale = "shared") -> tuple[float | None, float | None]:
    """``(vmin, vmax)`` for :func:`plot_head_maps`: ``"shared"``: the smallest to the largest
    value of all maps (one colour bar, heads comparable, and the contrast of DINO's per-image
    scaling where the heads agree in range); ``"own"``: ``(None, None)``, each map its own range.
    """
    if scale not in ("shared", "own"):
        raise ValueError(f"head_scale: scale must be 'shared' or 'own', got {scale!r}")
    if scale == "own":
        return None, None
    lo, hi = float(np.min(maps)), float(np.max(maps))
    return lo, max(hi, lo + 1e-12)


def _labels(num_heads: int) -> list[str]:
    return [f"head {i}" for i in range(num_heads)] + [f"mean of {num_heads} heads"]


def plot_head_maps(
    frame: np.ndarray,
    maps: np.ndarray,
    *,
    title: str = "",
    scale: Scale = "shared",
    cmap: str = "inferno",
    max_columns: int = 4,
    labels: Sequence[str] | None = None,
) -> Figure:
    """The frame, then one panel per head and the head mean (from :func:`head_maps`).

    Args:
        frame: uint8 ``(H, W, 3)``, the frame as the model saw it.
        maps: float ``(h + 1, H, W)``, the heads then their mean.
        title: the figure's title (say the model, weights, block, input size and grid).
        scale: ``"shared"``: one colour bar from the smallest to the largest value of all maps,
            so heads compare; ``"own"``: each panel its own range and colour bar.
        cmap: the maps' colormap.
        max_columns: panels per row before wrapping.
        labels: one title per map; default ``head 0 .. head h-1, mean of h heads``.

    Returns:
        ``matplotlib.figure.Figure``.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[0] < 2:
        raise ValueError(f"plot_head_maps: maps must be (h + 1, H, W), got shape {maps.shape}")
    labels = list(labels) if labels is not None else _labels(maps.shape[0] - 1)
    if len(labels) != maps.shape[0]:
        raise ValueError(f"plot_head_maps: {maps.shape[0]} maps but {len(labels)} labels")
    vmin, vmax = head_scale(maps, scale)
    bar = (
        f"[CLS] attention, shared scale {vmin:.3g} .. {vmax:.3g}"
        if vmax is not None
        else "[CLS] attention, each panel its own scale"
    )
    return plot_grid(
        [[frame, *maps]],
        col_titles=["frame", *labels],
        suptitle=title or None,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        colorbar=bar,
        max_columns=max_columns,
    )


def plot_head_map(
    heat: np.ndarray,
    *,
    title: str = "",
    label: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "inferno",
) -> Figure:
    """One map (a head's, or the mean) alone, with a colour bar from ``vmin`` to ``vmax``.

    Args:
        heat: float ``(H, W)``.
        title: the figure's title.
        label: the panel's title, e.g. ``"head 3"``.
        vmin: bottom of the colour bar; None: the map's minimum.
        vmax: top of the colour bar; None: the map's maximum. Pass the same ``vmin`` and ``vmax``
            to every head's figure to compare them (:func:`head_scale`).
        cmap: colormap.

    Returns:
        ``matplotlib.figure.Figure``.
    """
    heat = np.asarray(heat)
    if heat.ndim != 2:
        raise ValueError(f"plot_head_map: heat must be (H, W), got shape {heat.shape}")
    low = float(heat.min()) if vmin is None else float(vmin)
    top = float(heat.max()) if vmax is None else float(vmax)
    top = max(top, low + 1e-12)
    return plot_grid(
        [[heat]],
        col_titles=[label] if label else None,
        suptitle=title or None,
        cmap=cmap,
        vmin=low,
        vmax=top,
        colorbar=f"[CLS] attention, {low:.3g} .. {top:.3g}",
        max_columns=1,
    )
