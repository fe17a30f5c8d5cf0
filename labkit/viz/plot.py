"""Plot layer: lay images out in matplotlib Figures (no pyplot state, nothing shown or saved).

Every function returns a ``matplotlib.figure.Figure`` built directly (not through pyplot), so
nothing accumulates in pyplot's figure registry; Jupyter displays a returned Figure inline, and
``fig.savefig`` writes it where the caller wants.

Notation::

    T   frames;  H, W  frame size;  h  heads;  gh, gw  patch grid
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

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


def _is_pair(im: Any) -> bool:
    return isinstance(im, tuple) and len(im) == 2


def _panel(im: Any, where: str) -> Any:
    """An image, a (background RGB, heat map) pair, or None, checked and as numpy."""
    if im is None:
        return None
    if _is_pair(im):
        back, heat = _image(im[0], where + "[0]"), _image(im[1], where + "[1]")
        if back.ndim != 3 or heat.ndim != 2 or back.shape[:2] != heat.shape:
            raise ValueError(
                f"{where}: a (frame, heat) pair needs an RGB (H, W, 3) frame and an (H, W) map of "
                f"the same size, got {back.shape} and {heat.shape}"
            )
        return back, heat
    return _image(im, where)


def _wrap(
    rows: list[list[Any]],
    row_titles: list[str] | None,
    col_titles: list[list[str] | None],
    max_columns: int | None,
) -> tuple[list[list[Any]], list[str] | None, list[list[str] | None]]:
    """Rows longer than ``max_columns`` cut into balanced chunks (8 -> 4 + 4, 6 -> 3 + 3).

    Rows of equal length wrap together in blocks, so a column keeps one frame's panels above each
    other (block 1: every row's first chunk, block 2: every row's second chunk ...); rows of
    different lengths wrap one after the other. Titles follow their panels.
    """
    ncols = max(len(r) for r in rows)
    if max_columns is None or ncols <= max_columns:
        return rows, row_titles, col_titles
    chunks = -(-ncols // max_columns)  # ceil
    width = -(-ncols // chunks)
    out: list[list[Any]] = []
    out_rt: list[str] | None = [] if row_titles is not None else None
    out_ct: list[list[str] | None] = []

    def add(i: int, c: int) -> None:
        part = rows[i][c * width : (c + 1) * width]
        if not part and c > 0:
            return
        out.append(part)
        if out_rt is not None and row_titles is not None:  # both or neither
            out_rt.append(row_titles[i])
        titles = col_titles[i]
        out_ct.append(None if titles is None else list(titles[c * width : (c + 1) * width]))

    if len({len(r) for r in rows}) == 1:
        for c in range(chunks):
            for i in range(len(rows)):
                add(i, c)
    else:
        for i in range(len(rows)):
            for c in range(chunks):
                add(i, c)
    return out, out_rt, out_ct


# Text sizes in points. Figures are about ``max_width`` inches wide and are saved or shown at
# 100-110 dpi, i.e. 1300-1450 px, and viewed in a ~1400 px wide report or notebook: 11 pt is
# about 15 px there, the size of the page's own text.
TITLE_SIZE = 11.0  # panel titles and row labels
SUPTITLE_SIZE = 13.0  # the figure's title
MAX_WIDTH = 13.0  # inches: default widest figure (1430 px at 110 dpi)


def plot_grid(
    rows: Sequence[Sequence[Any]],
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | Sequence[Sequence[str]] | None = None,
    *,
    panel_size: float = 2.5,
    cmap: str = "viridis",
    suptitle: str | None = None,
    max_columns: int | None = 4,
    max_width: float | None = MAX_WIDTH,
    colorbar: bool | str = False,
    vmin: float | None = None,
    vmax: float | None = None,
    heat_alpha: float = 0.6,
) -> Figure:
    """Images in a grid of rows; rows may have different lengths (missing panels stay blank).

    Rows longer than ``max_columns`` wrap into several rows of balanced length (8 panels: two
    rows of 4; 6: two of 3); rows of equal length wrap in blocks, so each column still shows one
    frame's panels above each other, and every wrapped row keeps its row title. The figure is at
    most ``max_width`` inches wide (panels shrink to fit), so that with the fixed text sizes
    (``TITLE_SIZE`` points) the labels stay legible where the figure is viewed (a ~1400 px page).

    Args:
        rows: Rows of images; each image ``(H, W)`` (shown with ``cmap``), ``(H, W, 3)`` or
            ``(H, W, 4)`` (uint8 0..255 or float 0..1), tensor or array; ``None`` leaves a blank;
            a pair ``(frame, heat)`` draws the ``(H, W)`` heat map with ``cmap`` at opacity
            ``heat_alpha`` over the ``(H, W, 3)`` frame.
        row_titles: One label per row, written left of the row.
        col_titles: One title per column (above the first row), or one list of titles per row.
        panel_size: Height of one panel in inches (before shrinking to ``max_width``); widths
            follow the first image's aspect ratio.
        cmap: Colormap for single-channel images and heat maps.
        suptitle: Title of the whole figure.
        max_columns: Most panels in one row of the figure; ``None``: never wrap.
        max_width: Widest figure in inches; ``None``: no limit.
        colorbar: Colour bars for the single-channel panels and heat maps (a string labels them):
            one shared bar when ``vmin`` and ``vmax`` are both given, else one per panel.
        vmin: Value at the low end of ``cmap`` (default: each panel's minimum).
        vmax: Value at the high end of ``cmap`` (default: each panel's maximum).
        heat_alpha: Opacity of heat maps drawn over frames.

    Returns:
        ``matplotlib.figure.Figure`` whose first ``rows x columns`` axes hold the panels
        (row-major, wrapped rows included; colour bars come after them).
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
    if max_columns is not None and max_columns < 1:
        raise ValueError(f"plot_grid: max_columns must be >= 1 or None, got {max_columns}")
    if not 0.0 <= heat_alpha <= 1.0:
        raise ValueError(f"plot_grid: heat_alpha must be in [0, 1], got {heat_alpha}")

    images = [
        [_panel(im, f"plot_grid: rows[{i}][{j}]") for j, im in enumerate(r)]
        for i, r in enumerate(rows)
    ]
    if col_titles is None:
        titles: list[list[str] | None] = [None] * nrows
    elif per_row:
        titles = [list(t) for t in cast("Sequence[Sequence[str]]", col_titles)]  # per row
    else:
        one = list(cast("Sequence[str]", col_titles))  # one title per column
        titles = [one if i == 0 else None for i in range(nrows)]
    images, row_titles, titles = _wrap(
        images, None if row_titles is None else list(row_titles), titles, max_columns
    )
    nrows, ncols = len(images), max(len(r) for r in images)

    first = next(im for r in images for im in r if im is not None)
    first = first[0] if isinstance(first, tuple) else first
    aspect = first.shape[1] / first.shape[0]  # W / H
    panel_w = panel_size * aspect
    if max_width is not None:
        panel_w = min(panel_w, max_width / ncols)
    panel_h = panel_w / aspect
    bar = 0.5 if colorbar else 0.0  # room for colour bars (inches)
    text_h = 0.3 if any(titles) else 0.05  # a title line above each row
    label_w = 0.35 if row_titles is not None else 0.0
    figsize = (
        ncols * panel_w + label_w + bar,
        nrows * (panel_h + text_h) + (0.45 if suptitle else 0.1),
    )
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    mappables = []
    for i in range(nrows):
        for j in range(ncols):
            ax = axes[i, j]
            _bare(ax)
            im = images[i][j] if j < len(images[i]) else None
            if im is None:
                ax.set_axis_off()
                continue
            if isinstance(im, tuple):
                ax.imshow(im[0], interpolation="nearest")
                m = ax.imshow(
                    im[1],
                    cmap=cmap,
                    vmin=vmin,
                    vmax=vmax,
                    alpha=heat_alpha,
                    interpolation="nearest",
                )
                mappables.append((ax, m))
            elif im.ndim == 2:
                m = ax.imshow(im, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
                mappables.append((ax, m))
            else:
                ax.imshow(im, interpolation="nearest")
            row_cols = titles[i]
            if row_cols is not None and j < len(row_cols) and row_cols[j]:
                ax.set_title(row_cols[j], fontsize=TITLE_SIZE)
        if row_titles is not None:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=TITLE_SIZE)
    label = colorbar if isinstance(colorbar, str) else None
    if colorbar and mappables:
        if vmin is not None and vmax is not None:  # one scale: one bar beside the whole grid
            cb = fig.colorbar(
                mappables[0][1], ax=axes.ravel().tolist(), shrink=0.8, aspect=30, pad=0.01
            )
            if cb.solids is not None:
                cb.solids.set_alpha(1.0)
            if label:
                cb.set_label(label, fontsize=TITLE_SIZE)
            cb.ax.tick_params(labelsize=TITLE_SIZE - 2)
        else:
            for ax, m in mappables:
                cb = fig.colorbar(m, ax=ax, fraction=0.046, pad=0.02)
                if cb.solids is not None:
                    cb.solids.set_alpha(1.0)
                if label:
                    cb.set_label(label, fontsize=TITLE_SIZE - 2)
                cb.ax.tick_params(labelsize=TITLE_SIZE - 3)
    if suptitle:
        fig.suptitle(suptitle, fontsize=SUPTITLE_SIZE)
    return fig


def plot_strip(
    images: Sequence[Any] | np.ndarray,
    titles: Sequence[str] | None = None,
    *,
    panel_size: float = 2.5,
    cmap: str = "viridis",
    suptitle: str | None = None,
    max_columns: int | None = 4,
    colorbar: bool | str = False,
) -> Figure:
    """Images side by side in one row, wrapped into rows of at most ``max_columns``.

    Args:
        images: A sequence of images or an array ``(N, H, W[, 3])`` (see :func:`plot_grid`).
        titles: One title per image.
        panel_size: Height of the row in inches.
        cmap: Colormap for single-channel images.
        suptitle: Title of the whole figure.
        max_columns: Most panels per row (``None``: one row however long).
        colorbar: Colour bars on single-channel images (a string labels them).

    Returns:
        ``matplotlib.figure.Figure`` with ``N`` image axes (row-major), then any colour bars.
    """
    images = list(images)
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"plot_strip: {len(images)} images but {len(titles)} titles")
    return plot_grid(
        [images],
        col_titles=titles,
        panel_size=panel_size,
        cmap=cmap,
        suptitle=suptitle,
        max_columns=max_columns,
        colorbar=colorbar,
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
