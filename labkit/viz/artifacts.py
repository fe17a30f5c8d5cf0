"""Pictures of high-norm artifact tokens (:mod:`labkit.artifacts`): norm maps, outliers, registers.

Render functions return uint8 arrays, :func:`plot_artifacts` returns a Figure (nothing shown or
saved). Outlier patches are outlined in cyan everywhere.

Notation::

    T  frames;  L  blocks;  h  heads;  G  registers;  gh, gw  patch grid;  H, W  frame pixels;
    p  patch size
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from labkit.viz.render import heads_to_rgb, overlay

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from labkit.artifacts import Artifacts

__all__ = ["OUTLIER_COLOUR", "norms_to_rgb", "outline_patches", "norm_overlay", "plot_artifacts"]

OUTLIER_COLOUR = (0, 255, 255)  # cyan: not in the magma colour map of the norms


def norms_to_rgb(
    norms: Any, vmax: float | None = None, cmap: str = "magma", vmin: float = 0.0
) -> np.ndarray:
    """Token norms as colours, ``vmin`` .. ``vmax`` over the colour map.

    Args:
        norms: (..., gh, gw) non-negative norms (tensor or array).
        vmax: the norm drawn at the top of the colour map (default: the maps' maximum); larger
            norms are clipped to it.
        cmap: a matplotlib colour map name.
        vmin: the norm drawn at the bottom; smaller norms are clipped to it.

    Returns:
        uint8 (..., gh, gw, 3).
    """
    from matplotlib import colormaps

    a = np.asarray(norms.detach().cpu() if hasattr(norms, "detach") else norms, dtype=np.float32)
    top = float(a.max()) if vmax is None else float(vmax)
    span = top - float(vmin)
    unit = np.clip((a - float(vmin)) / span, 0.0, 1.0) if span > 0 else np.zeros_like(a)
    lut = (
        (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    )  # (256, 3)
    return lut[np.rint(unit * 255).astype(np.int64)]


def outline_patches(
    image: np.ndarray,
    mask: Any,
    patch_size: int,
    colour: tuple[int, int, int] = OUTLIER_COLOUR,
    width: int | None = None,
) -> np.ndarray:
    """Draw the border of every patch where ``mask`` is True (patch (i, j): pixels i*p.., j*p..).

    Args:
        image: uint8 (H, W, 3), H >= gh * p and W >= gw * p.
        mask: bool (gh, gw).
        patch_size: p in pixels.
        colour: RGB of the outline.
        width: line width in pixels (default: p // 8, at least 1).

    Returns:
        A uint8 (H, W, 3) copy with the outlines.
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    m = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask, dtype=bool)
    p = int(patch_size)
    w = max(1, p // 8) if width is None else int(width)
    for i, j in zip(*np.nonzero(m)):
        y, x = i * p, j * p
        out[y : y + w, x : x + p] = colour
        out[y + p - w : y + p, x : x + p] = colour
        out[y : y + p, x : x + w] = colour
        out[y : y + p, x + p - w : x + p] = colour
    return out


def norm_overlay(
    frame: np.ndarray,
    norms: Any,
    outliers: Any,
    patch_size: int,
    *,
    alpha: float = 1.0,
    vmax: float | None = None,
    vmin: float = 0.0,
) -> np.ndarray:
    """One frame's token-norm map (magma, nearest upsampling) over the frame, outliers outlined.

    Args:
        frame: uint8 (H, W, 3).
        norms: (gh, gw) norms of one image at one block.
        outliers: bool (gh, gw).
        patch_size: p.
        alpha: opacity of the norm colours (1: the map alone).
        vmax: top of the colour scale (default: this map's maximum).
        vmin: bottom of the colour scale.

    Returns:
        uint8 (H, W, 3).
    """

    grid = norms_to_rgb(norms, vmax, vmin=vmin)  # (gh, gw, 3)
    blended = overlay(frame, grid, alpha, patch_size=patch_size, mode="nearest")
    return outline_patches(blended, outliers, patch_size)


def _spread(count: int, most: int) -> list[int]:
    return sorted({int(round(x)) for x in np.linspace(0, count - 1, min(count, most))})


def plot_artifacts(
    art: Artifacts,
    frames: np.ndarray,
    patch_size: int,
    *,
    frame: int = 0,
    frame_label: str | None = None,
    title: str = "",
    max_layers: int = 8,
    register_layer: int | None = None,
) -> Figure:
    """Norm maps per block for one frame (outliers outlined), the outlier fraction and the [CLS]
    attention on outliers and registers per block, and the registers' own attention maps.

    Row 1: the frame, then the patch-token norms of up to ``max_layers`` blocks spread over the
    depth, each on its own scale (its minimum .. the outlier cut, ``factor`` x its median, since
    norms grow with depth; outliers saturate and are outlined). Row 2: per
    block, over all frames of ``art`` (mean, with min and max shaded): the fraction of outlier
    patches; the share of the [CLS] attention on the outliers of the block's input against that
    fraction (what attention blind to norms gives) and, with registers, the [CLS] share on them;
    the largest norm over the median. Row 3 (register models): each register's attention, mean
    over heads, at ``register_layer`` (default: the last kept) over the frame.

    Args:
        art: artifacts of T frames (:func:`labkit.artifacts.token_artifacts`).
        frames: uint8 (T, H, W, 3) the frames fed to the model.
        patch_size: p.
        frame: which frame of ``art`` the maps show.
        frame_label: what to call that frame in titles (default ``"frame {frame}"``).
        title: the figure's title (say the model and its weights).
        max_layers: most norm maps shown.
        register_layer: block (one of ``art.register_layers``) of the register maps.

    Returns:
        ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    if frames.ndim != 4 or len(frames) != art.norms.shape[0]:
        raise ValueError(
            f"plot_artifacts: {art.norms.shape[0]} frames of artifacts, frames {frames.shape}"
        )
    if not 0 <= frame < len(frames):
        raise ValueError(f"plot_artifacts: frame {frame} out of range 0..{len(frames) - 1}")
    label = frame_label or f"frame {frame}"
    depth = art.norms.shape[1]
    layers = _spread(depth, max_layers)
    has_maps = art.register_attention is not None
    height, width = frames.shape[1:3]
    aspect = width / height

    panels = len(layers) + 1  # the frame, then the norm maps
    top_rows = 1 if panels <= 5 else 2
    ncols = -(-panels // top_rows)
    panel_w = 14.0 / ncols
    rows = [top_rows * (panel_w / aspect + 0.55), 3.2] + (
        [14.0 / 6 / aspect + 0.5] if has_maps else []
    )
    fig = Figure(figsize=(14.0, sum(rows) + 0.6), layout="constrained")
    # two or more rows: an array of SubFigures (matplotlib's stubs also allow one SubFigure)
    top, middle, *bottom = fig.subfigures(len(rows), 1, height_ratios=rows)  # type: ignore[misc]

    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    axes = top.subplots(top_rows, ncols, squeeze=False).reshape(-1)
    axes[0].imshow(frames[frame])
    axes[0].set_title(label, fontsize="medium")
    norms, outliers = art.norms[frame], art.outliers[frame]  # (L, gh, gw)
    for ax, layer in zip(axes[1:], layers):
        n = norms[layer]
        median = float(n.flatten().median())
        image = norm_overlay(
            frames[frame],
            n,
            outliers[layer],
            patch_size,
            vmax=art.factor * median,
            vmin=float(n.min()),
        )
        ax.imshow(image, interpolation="nearest")
        bar = top.colorbar(
            ScalarMappable(Normalize(float(n.min()), art.factor * median), cmap="magma"),
            ax=ax,
            fraction=0.046,
            pad=0.02,
            shrink=0.7,
        )  # this map's scale: norms
        bar.ax.tick_params(labelsize=7)
        ax.set_title(
            f"block {layer}: median {median:.3g}, max {float(n.max()):.3g}, "
            f"{int(outliers[layer].sum())} out",
            fontsize="small",
        )
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[panels:]:
        ax.set_axis_off()
    top.suptitle(
        f"patch-token norms at each block's output (before the final norm), {label}; colours "
        f"from the map's minimum to {art.factor:g} x its median (magma); cyan outline: outlier, "
        f"norm > {art.factor:g} x median",
        fontsize="medium",
    )

    x = np.arange(depth)
    fraction = art.outlier_fraction().numpy()  # (T, L)
    mass = art.cls_outlier_mass.mean(-1).numpy()  # (T, L)
    inputs = art.input_outliers().flatten(2).float().mean(-1).numpy()  # (T, L)
    flat = art.norms.flatten(2)  # (T, L, P)
    ratio = (flat.max(-1).values / flat.median(-1).values.clamp_min(1e-12)).numpy()  # (T, L)
    ax1, ax2, ax3 = middle.subplots(1, 3)

    def band(ax: Any, values: np.ndarray, colour: str, name: str, style: str = "-") -> None:
        ax.plot(x, values.mean(0), style, color=colour, marker="o", markersize=3, label=name)
        if len(values) > 1:
            ax.fill_between(x, values.min(0), values.max(0), color=colour, alpha=0.15, linewidth=0)

    band(ax1, 100 * fraction, "tab:blue", "outliers")
    ax1.set_ylabel("% of patches")
    ax1.set_title(f"outlier patches (norm > {art.factor:g} x median)", fontsize="medium")
    band(ax2, 100 * mass, "tab:red", "[CLS] on outliers of the block's input")
    band(ax2, 100 * inputs, "tab:blue", "attention blind to norms (= % outliers)", "--")
    if art.cls_register_mass is not None:
        band(
            ax2,
            100 * art.cls_register_mass.mean(-1).numpy(),
            "tab:green",
            "[CLS] on the registers",
            ":",
        )
    ax2.set_ylabel("% of [CLS] attention")
    ax2.set_title("[CLS] attention (mean over heads)", fontsize="medium")
    ax2.legend(fontsize="small", loc="best")
    band(ax3, ratio, "tab:purple", "largest / median norm")
    ax3.axhline(
        art.factor, color="0.4", linestyle="--", linewidth=1, label=f"outlier cut {art.factor:g}x"
    )
    ax3.set_ylabel("largest norm / median")
    ax3.set_title("largest patch norm over the median", fontsize="medium")
    ax3.legend(fontsize="small", loc="best")
    for ax in (
        ax1,
        ax2,
    ):  # percentages from 0; at least 0 .. 1 % so that all-zero lines sit at the bottom
        top = max(line.get_ydata().max() for line in ax.get_lines())
        ax.set_ylim(0, max(1.0, 1.15 * float(top)))
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("block")
        ax.set_xticks(x if depth <= 16 else x[::2])
        ax.grid(alpha=0.3)
    what = f"over {len(frames)} frames (mean, min..max shaded)" if len(frames) > 1 else "one frame"
    middle.suptitle(f"per block, {what}", fontsize="medium")

    if art.register_attention is not None:  # has_maps
        kept = list(art.register_layers)
        layer = kept[-1] if register_layer is None else register_layer
        if layer not in kept:
            raise ValueError(f"plot_artifacts: register maps kept at blocks {kept}, not {layer}")
        maps = art.register_attention[frame, kept.index(layer)].mean(1)  # (G, gh, gw)
        g = maps.shape[0]
        axes = bottom[0].subplots(1, max(g, 6), squeeze=False)[0]
        for i in range(g):
            rgb = heads_to_rgb(
                maps[i][None], (0, 0, 0), size=(height, width), patch_size=patch_size
            )
            axes[i].imshow(overlay(frames[frame], rgb, 0.7, patch_size=patch_size, mode="nearest"))
            axes[i].set_title(f"register {i}: max {float(maps[i].max()):.2g}", fontsize="small")
        for ax in axes[g:]:
            ax.set_axis_off()
        for ax in axes[:g]:
            ax.set_xticks([])
            ax.set_yticks([])
        bottom[0].suptitle(
            f"the registers' own attention over the patches, block {layer}, {label} "
            "(mean over heads; white: high, each map scaled to its maximum)",
            fontsize="medium",
        )
    if title:
        fig.suptitle(title, fontsize="large")
    return fig
