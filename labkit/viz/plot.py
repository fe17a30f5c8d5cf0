"""Plot layer: lay images out in matplotlib Figures (no pyplot state, nothing shown or saved).

Every function returns a ``matplotlib.figure.Figure`` built directly (not through pyplot), so
nothing accumulates in pyplot's figure registry; Jupyter displays a returned Figure inline, and
``fig.savefig`` writes it where the caller wants.

Notation::

    T   frames;  H, W  frame size;  h  heads;  gh, gw  patch grid
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from labkit.viz.render import _to_numpy, heads_to_rgb, overlay

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_strip", "plot_grid", "plot_attention_strip"]


def _image(img: Any, where: str) -> np.ndarray:
    a = _to_numpy(img, where)
    if a.dtype == bool:
        a = a.astype(np.float32)
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise ValueError(f"{where}: an image must be (H, W), (H, W, 3) or (H, W, 4), not {a.shape}")
    return a


def _bare(ax: Axes) -> None:
    """No ticks and no frame, but keep the axis labels (row titles) visible."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_grid(
    rows: Sequence[Sequence[Any]],
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | Sequence[Sequence[str]] | None = None,
    *,
    panel_size: float = 2.5,
    cmap: str = "viridis",
    suptitle: str | None = None,
) -> Figure:
    """Images in a grid of rows; rows may have different lengths (missing panels stay blank).

    Args:
        rows: Rows of images; each image ``(H, W)`` (shown with ``cmap``), ``(H, W, 3)`` or
            ``(H, W, 4)`` (uint8 0..255 or float 0..1), tensor or array; ``None`` leaves a blank.
        row_titles: One label per row, written left of the row.
        col_titles: One title per column (above the first row), or one list of titles per row.
        panel_size: Height of one panel in inches; widths follow the first image's aspect ratio.
        cmap: Colormap for single-channel images.
        suptitle: Title of the whole figure.

    Returns:
        ``matplotlib.figure.Figure`` with ``len(rows) x max(len(row))`` axes.
    """
    from matplotlib.figure import Figure

    rows = [list(r) for r in rows]
    if not rows or not any(rows):
        raise ValueError("plot_grid: rows must contain at least one image")
    nrows, ncols = len(rows), max(len(r) for r in rows)
    if row_titles is not None and len(row_titles) != nrows:
        raise ValueError(f"plot_grid: {nrows} rows but {len(row_titles)} row_titles")
    per_row = col_titles is not None and len(col_titles) > 0 and not isinstance(col_titles[0], str)
    if col_titles is not None:
        if per_row and len(col_titles) != nrows:
            raise ValueError(f"plot_grid: {nrows} rows but {len(col_titles)} lists of col_titles")
        if not per_row and len(col_titles) != ncols:
            raise ValueError(f"plot_grid: {ncols} columns but {len(col_titles)} col_titles")

    images = [[None if im is None else _image(im, f"plot_grid: rows[{i}][{j}]")
               for j, im in enumerate(r)] for i, r in enumerate(rows)]  # fmt: skip
    first = next(im for r in images for im in r if im is not None)
    aspect = first.shape[1] / first.shape[0]  # W / H
    fig = Figure(figsize=(ncols * panel_size * aspect, nrows * panel_size), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i in range(nrows):
        for j in range(ncols):
            ax = axes[i, j]
            _bare(ax)
            im = images[i][j] if j < len(images[i]) else None
            if im is None:
                ax.set_axis_off()
                continue
            if im.ndim == 2:
                ax.imshow(im, cmap=cmap, interpolation="nearest")
            else:
                ax.imshow(im, interpolation="nearest")
            title = None
            if per_row and j < len(col_titles[i]):
                title = col_titles[i][j]
            elif col_titles is not None and not per_row and i == 0:
                title = col_titles[j]
            if title:
                ax.set_title(title, fontsize="small")
        if row_titles is not None:
            axes[i, 0].set_ylabel(row_titles[i])
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_strip(
    images: Sequence[Any] | np.ndarray,
    titles: Sequence[str] | None = None,
    *,
    panel_size: float = 2.5,
    cmap: str = "viridis",
    suptitle: str | None = None,
) -> Figure:
    """Images side by side in one row.

    Args:
        images: A sequence of images or an array ``(N, H, W[, 3])`` (see :func:`plot_grid`).
        titles: One title per image.
        panel_size: Height of the row in inches.
        cmap: Colormap for single-channel images.
        suptitle: Title of the whole figure.

    Returns:
        ``matplotlib.figure.Figure`` with ``N`` axes in one row.
    """
    images = list(images)
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"plot_strip: {len(images)} images but {len(titles)} titles")
    return plot_grid(
        [images], col_titles=titles, panel_size=panel_size, cmap=cmap, suptitle=suptitle
    )


def plot_attention_strip(
    frames: Any,
    attn: Any,
    heads: Sequence[int] = (0, 1, 2),
    *,
    alpha: float = 0.5,
    mode: Literal["nearest", "bilinear"] = "nearest",
    patch_size: int | None = None,
    titles: Sequence[str] | None = None,
    panel_size: float = 2.5,
) -> Figure:
    """Frames, their attention heads as RGB (:func:`heads_to_rgb`), and the two blended.

    Args:
        frames: uint8 ``(T, H, W, 3)`` (or one frame ``(H, W, 3)``).
        attn: ``(T, h, gh, gw)`` attention maps (or ``(h, gh, gw)``) for those frames.
        heads: Three heads shown as R, G, B.
        alpha: Weight of the head map in the overlay row.
        mode: Upsampling of the head maps to the frame.
        patch_size: ``p``; inferred from the frame and grid sizes when ``None``.
        titles: One title per column; default ``"frame t"``.
        panel_size: Height of one panel in inches.

    Returns:
        ``matplotlib.figure.Figure`` with 3 rows (frame, heads as RGB, overlay) of ``T`` panels.
    """
    f = _to_numpy(frames, "plot_attention_strip: frames")
    a = _to_numpy(attn, "plot_attention_strip: attn")
    if f.ndim == 3:
        f, a = f[None], a[None]
    if f.ndim != 4 or a.ndim != 4 or len(f) != len(a):
        raise ValueError(
            f"plot_attention_strip: need frames (T, H, W, 3) and attn (T, h, gh, gw) with the same "
            f"T, got {f.shape} and {a.shape}"
        )
    size = f.shape[1:3]
    rgb = heads_to_rgb(a, heads, size=size, mode=mode, patch_size=patch_size)  # (T, H, W, 3)
    blended = overlay(f, rgb, alpha)  # (T, H, W, 3)
    titles = [f"frame {t}" for t in range(len(f))] if titles is None else list(titles)
    heads_s = ", ".join(str(int(h)) for h in heads)
    return plot_grid(
        [list(f), list(rgb), list(blended)],
        row_titles=["frame", f"heads {heads_s} as RGB", "overlay"],
        col_titles=titles,
        panel_size=panel_size,
    )
