"""Pictures of DoRA's discover-and-track, one per step (the teaching notebook's figures).

Render (:func:`objects_to_rgb`, :func:`object_labels`: uint8 / int arrays) and plot (the
``plot_*`` functions: ``matplotlib.figure.Figure``) of what :mod:`labkit.attention` and
:mod:`labkit.tracking` computed; nothing is saved or shown here. Object j is drawn in
:func:`labkit.viz.palette.object_colours` ``(k)[j]`` everywhere (the same colours as a training
run's objects and the explorer's).

Object maps are normalised per frame and per object for display: each object's map is min-max
scaled within each frame on its own, so every object is visible in its colour whatever its
range; how the objects divide the frame and how much they overlap is measured on the raw maps
(:func:`labkit.tracking.object_shares`) and written in the titles.

Notation: T frames, h heads, k objects, gh x gw patch grid, N = gh * gw, H x W frame pixels,
p patch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from labkit.tracking import ObjectShares, masks_to_frames, object_shares
from labkit.viz.palette import object_colours
from labkit.viz.plot import MAX_WIDTH, TITLE_SIZE, plot_grid
from labkit.viz.render import (
    heads_to_rgb,
    mask_overlay,
    overlay,
    segment_overlay,
    upsample_map,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "objects_to_rgb",
    "object_labels",
    "sinkhorn_numbers",
    "plot_sinkhorn_comparison",
    "plot_cls_attention",
    "plot_prototype_scores",
    "plot_transport_plans",
    "plot_tracked_maps",
    "plot_object_masks",
    "plot_masked_views",
    "plan_balance",
]


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _grid_maps(values: Any, grid: tuple[int, int]) -> np.ndarray:
    """(N, k) or (gh, gw, k) values -> (k, gh, gw)."""
    v = _np(values)
    if v.ndim == 2:
        v = v.reshape(*grid, -1)
    return np.moveaxis(v, -1, 0)


def _objects_last(values: Any, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """A plan (N, k) or (gh, gw, k) as (k, gh, gw) maps, float tensor on the CPU."""
    v = torch.as_tensor(_np(values)).float()
    if v.ndim == 2:
        if grid is None:
            raise ValueError(f"a plan of shape {tuple(v.shape)} needs grid (gh, gw)")
        v = v.reshape(*grid, v.shape[-1])  # (gh, gw, k)
    if v.ndim != 3:
        raise ValueError(f"a plan must be (N, k) or (gh, gw, k), got {tuple(v.shape)}")
    return v.permute(2, 0, 1)  # (k, gh, gw)


def objects_to_rgb(
    maps: Any,
    size: tuple[int, int] | None = None,
    patch_size: int | None = None,
    *,
    colours: Any = None,
) -> np.ndarray:
    """k object maps as one colour image per frame, each object in its own colour.

    Each object's map is min-max normalised within each frame on its own, ``(a - min) / (max -
    min)`` over the patch grid (a constant map becomes 0), so every object reaches full
    brightness in every frame it is in; the maps are tinted with the objects' colours and the
    tints add (clipped at 255). Where the objects' maps agree the colours mix towards white (or
    grey): that is overlap, measured by :func:`labkit.tracking.object_shares`.

    Args:
        maps: (T, k, gh, gw) or (k, gh, gw) nonnegative maps (tensor or array).
        size: (H, W) to upsample to (nearest, top-left grid, see
            :func:`labkit.viz.render.upsample_map`); None keeps the grid.
        patch_size: p; inferred from ``size`` when None.
        colours: (k, 3) uint8 colours; default :func:`labkit.viz.palette.object_colours`.

    Returns:
        uint8 ([T,] H, W, 3), or ([T,] gh, gw, 3) without ``size``; deterministic.
    """
    m = _np(maps).astype(np.float32)
    if m.ndim not in (3, 4):
        raise ValueError(f"objects_to_rgb: maps must be ([T,] k, gh, gw), got {m.shape}")
    single = m.ndim == 3
    m = m[None] if single else m  # (T, k, gh, gw)
    k = m.shape[1]
    tints = object_colours(k) if colours is None else np.asarray(colours, dtype=np.uint8)
    if tints.shape != (k, 3):
        raise ValueError(f"objects_to_rgb: colours must be ({k}, 3), got {tints.shape}")
    lo = m.min(axis=(2, 3), keepdims=True)  # (T, k, 1, 1): per frame and object
    span = m.max(axis=(2, 3), keepdims=True) - lo
    unit = np.where(span > 0, (m - lo) / np.where(span > 0, span, 1.0), 0.0)  # (T, k, gh, gw)
    # t frame, k object, h / w grid, c colour channel
    mixed = np.einsum("tkhw,kc->tchw", unit, tints.astype(np.float32) / 255.0).clip(0, 1)
    if size is None:
        mixed = mixed.transpose(0, 2, 3, 1)  # (T, gh, gw, 3)
    else:
        mixed = np.stack([upsample_map(x, size, patch_size) for x in mixed])  # (T, H, W, 3)
    out = np.rint(mixed * 255).clip(0, 255).astype(np.uint8)
    return out[0] if single else out


def object_labels(maps: Any) -> np.ndarray:
    """The object whose map is the largest at each patch (ties: the lowest index).

    Args:
        maps: ([T,] k, gh, gw) maps on one scale per object (tracking maps, plan columns).

    Returns:
        int64 ([T,] gh, gw) in 0..k-1; its colour picture is the ``share`` of
        :func:`labkit.tracking.object_shares`.
    """
    m = _np(maps)
    if m.ndim not in (3, 4):
        raise ValueError(f"object_labels: maps must be ([T,] k, gh, gw), got {m.shape}")
    return m.argmax(axis=-3).astype(np.int64)


def sinkhorn_numbers(
    maps: Mapping[str, Any],
    plans: Mapping[str, Any] | None = None,
    grid: tuple[int, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """The numbers :func:`plot_sinkhorn_comparison` writes, as plain lists (for ``metrics.json``).

    Per name (e.g. ``"Sinkhorn-Knopp"``, ``"softmax"``), from
    :func:`labkit.tracking.object_shares` of the tracking maps (and of the plan on the
    reference frame):

    * ``share`` (T lists of k): fraction of each frame's patches where the object's map is the
      largest; ``share_mean`` (k): its mean over the frames.
    * ``mass`` (T lists of k): mean over patches of the object's part of the k maps' sum.
    * ``overlap`` (T): sum over patches of min(a, b) of two objects' maps (each summing to 1),
      mean over the pairs of objects: 1 identical, 0 disjoint; ``overlap_mean``: over frames.
    * with ``plans``: ``plan_share``, ``plan_mass`` (k) and ``plan_overlap`` of the transport
      plan's columns (``plan_mass`` is 1/k per object under Sinkhorn-Knopp).

    Args:
        maps: name -> (T, k, gh, gw) tracking maps (each summing to 1 over the patches).
        plans: name -> (N, k) or (gh, gw, k) transport plan on the reference frame, or None.
        grid: (gh, gw), needed for (N, k) plans (default: the maps' grid).

    Returns:
        name -> dict of floats and lists of floats.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, value in maps.items():
        m = torch.as_tensor(_np(value)).float()  # (T, k, gh, gw)
        if m.ndim != 4:
            raise ValueError(f"sinkhorn_numbers: maps[{name!r}] must be (T, k, gh, gw)")
        got: ObjectShares = object_shares(m)
        row: dict[str, Any] = {
            "share": got.share.tolist(),
            "share_mean": got.share.mean(0).tolist(),
            "mass": got.mass.tolist(),
            "overlap": got.mean_overlap().tolist(),
            "overlap_mean": float(got.mean_overlap().mean()),
        }
        if plans is not None and name in plans:
            plan_grid = grid or (int(m.shape[-2]), int(m.shape[-1]))
            plan = object_shares(_objects_last(plans[name], plan_grid))
            row.update(
                plan_share=plan.share.tolist(),
                plan_mass=plan.mass.tolist(),
                plan_overlap=float(plan.mean_overlap()),
            )
        out[name] = row
    return out


def _shares(values: Sequence[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def plot_sinkhorn_comparison(
    frames: np.ndarray,
    maps: Mapping[str, Any],
    patch_size: int,
    *,
    plans: Mapping[str, Any] | None = None,
    indices: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    weights: str | None = None,
    max_frames: int = 4,
    alpha: float = 0.6,
) -> Figure:
    """DoRA's objects with and without Sinkhorn-Knopp, side by side on the same frames.

    Two rows per plan (e.g. ``{"with Sinkhorn-Knopp": ..., "row softmax": ...}``): the objects'
    maps over the frame (each object min-max normalised within each frame, in its colour), and
    the object whose map is the largest at each patch. Each panel's title gives the objects'
    shares of that frame (fraction of patches where each object is the largest) and their
    overlap (sum over patches of min(a, b) of two maps scaled to sum 1, mean over the pairs),
    the numbers of :func:`sinkhorn_numbers`. With ``plans``, a first column shows the transport
    plan on the reference frame (``frames[0]``), where Sinkhorn-Knopp acts.

    Args:
        frames: uint8 (T, H, W, 3), the clip whose first frame the objects were found on.
        maps: name -> (T, k, gh, gw) tracking maps, one entry per plan (2 expected).
        patch_size: p.
        plans: name -> (N, k) or (gh, gw, k) plan on ``frames[0]``, or None.
        indices: frame numbers for the titles.
        heads: the head behind each object, for the legend.
        weights: which network (:func:`labkit.models.weights_label`), named in the title.
        max_frames: most frames shown (spread over the clip).
        alpha: opacity of the colours over the frames.

    Returns:
        ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    names = list(maps)
    if not names:
        raise ValueError("plot_sinkhorn_comparison: maps is empty")
    numbers = sinkhorn_numbers(maps, plans)
    first = _np(maps[names[0]])
    total, k, gh, gw = first.shape
    cols = np.unique(np.linspace(0, total - 1, min(max_frames, total)).round().astype(int))
    with_plan = plans is not None and all(n in plans for n in names)
    colours = object_colours(k)
    size = frames.shape[1:3]
    ncols = len(cols) + int(with_plan)
    aspect = size[1] / size[0]
    panel_w = min(2.9, (MAX_WIDTH - 0.5) / ncols)
    fig = Figure(
        figsize=(ncols * panel_w + 0.5, len(names) * (2 * panel_w / aspect + 0.95) + 1.3),
        layout="constrained",
    )
    axes = fig.subplots(2 * len(names), ncols, squeeze=False)
    for r, name in enumerate(names):
        m = _np(maps[name])  # (T, k, gh, gw)
        got = numbers[name]
        panels = []  # (maps, frame, title) per column
        if with_plan:
            assert plans is not None
            plan = _objects_last(plans[name], (gh, gw)).numpy()  # (k, gh, gw)
            title = (
                f"plan on the first frame\nshares {_shares(got['plan_share'])}\n"
                f"overlap {got['plan_overlap']:.2f}"
            )
            panels.append((plan, frames[0], title))
        for c in cols:
            label = f"frame {indices[c]}" if indices is not None else f"t={c}"
            title = f"{label}\nshares {_shares(got['share'][c])}\noverlap {got['overlap'][c]:.2f}"
            panels.append((m[c], frames[c], title))
        for j, (obj, frame, title) in enumerate(panels):
            tint = objects_to_rgb(obj, size, patch_size, colours=colours)
            top, bottom = axes[2 * r, j], axes[2 * r + 1, j]
            top.imshow(overlay(frame, tint, alpha=alpha), interpolation="nearest")
            bottom.imshow(
                segment_overlay(
                    frame, object_labels(obj), alpha=alpha, palette=colours, patch_size=patch_size
                ),
                interpolation="nearest",
            )
            top.set_title(title, fontsize=TITLE_SIZE)
            for ax in (top, bottom):
                ax.set_xticks([])
                ax.set_yticks([])
        axes[2 * r, 0].set_ylabel(f"{name}:\nmaps", fontsize=TITLE_SIZE)
        axes[2 * r + 1, 0].set_ylabel(f"{name}:\nlargest object", fontsize=TITLE_SIZE)
    owners = [f" (head {h})" for h in heads] if heads is not None else [""] * k
    fig.legend(
        handles=[Patch(color=colours[j] / 255.0, label=f"object {j}{owners[j]}") for j in range(k)],
        loc="outside lower center",
        ncol=min(k, 6),
        fontsize=TITLE_SIZE,
        frameon=False,
    )
    head = "DoRA's objects with and without Sinkhorn-Knopp"
    fig.suptitle(
        (f"{head} · weights: {weights}" if weights else head)
        + "\nmaps: each object min-max scaled within each frame · shares: fraction of patches "
        "where the object's map is the largest\noverlap: sum over patches of min(a, b) of two "
        "objects' maps (each summing to 1), mean over the pairs: 1 identical, 0 disjoint",
        fontsize=TITLE_SIZE,
    )
    return fig


def plot_cls_attention(
    frame: np.ndarray, attention: Any, heads: Sequence[int], patch_size: int
) -> Figure:
    """Step 1: every head's [CLS] attention on the reference frame, and three heads as R, G, B.

    Args:
        frame: uint8 (H, W, 3).
        attention: (h, gh, gw) [CLS] attention of one frame.
        heads: the three heads drawn as red, green and blue.
        patch_size: p.
    """
    attn = _np(attention)
    size = frame.shape[:2]
    maps = [
        (frame, upsample_map(a / max(a.max(), 1e-12), size, patch_size)) for a in attn
    ]  # heat over frame
    rgb = heads_to_rgb(attn, tuple(heads), size=size, patch_size=patch_size)
    rows: list[list[Any]] = [maps, [frame, rgb, overlay(frame, rgb, alpha=0.6)]]
    return plot_grid(
        rows,
        row_titles=["each head", "heads as RGB"],
        col_titles=[
            [f"head {i}" for i in range(len(attn))],
            ["frame", f"heads {tuple(heads)} as R, G, B", "over the frame"],
        ],
        cmap="inferno",
        vmin=0.0,
        vmax=1.0,
        heat_alpha=0.7,
        colorbar="attention / head's maximum",
    )


def plot_prototype_scores(
    frame: np.ndarray, logits: Any, grid: tuple[int, int], patch_size: int, heads: Sequence[int]
) -> Figure:
    """Step 2: how similar each patch is to each of the k prototypes (the Sinkhorn logits).

    Args:
        frame: uint8 (H, W, 3) reference frame.
        logits: (N, k) normalised patch tokens times prototypes (``Discovery.logits[0]``).
        grid: (gh, gw).
        patch_size: p.
        heads: the head behind each prototype.
    """
    maps = _grid_maps(logits, grid)  # (k, gh, gw)
    size = frame.shape[:2]
    panels = [(frame, upsample_map(m, size, patch_size)) for m in maps]  # heat over the frame
    return plot_grid(
        [[frame, *panels]],
        col_titles=["frame"] + [f"prototype {j} (head {h})" for j, h in enumerate(heads)],
        cmap="viridis",
        vmin=float(maps.min()),
        vmax=float(maps.max()),
        heat_alpha=0.7,
        colorbar="token · prototype",
    )


def plan_balance(plan: Any) -> np.ndarray:
    """Share of the patches each object receives under a transport plan: float (k,), sums to 1.

    Args:
        plan: (N, k) or (gh, gw, k) assignment whose rows sum to 1.
    """
    p = _np(plan).reshape(-1, _np(plan).shape[-1])
    return p.sum(0) / max(p.sum(), 1e-12)


def plot_transport_plans(
    frame: np.ndarray, plans: Mapping[str, Any], grid: tuple[int, int], patch_size: int
) -> Figure:
    """Step 3: the assignment of patches to objects without and with Sinkhorn-Knopp.

    One row per plan: the object that takes each patch (colours over the frame), each object's
    column of the plan as a map, and a bar chart of the share of patches per object (Sinkhorn-Knopp
    makes the objects share the patches equally).

    Args:
        frame: uint8 (H, W, 3).
        plans: name -> (N, k) or (gh, gw, k) plan; rows sum to 1.
        grid: (gh, gw).
        patch_size: p.
    """
    from matplotlib.figure import Figure

    names = list(plans)
    k = _grid_maps(plans[names[0]], grid).shape[0]
    colours = object_colours(k)
    size = frame.shape[:2]
    fig = Figure(figsize=(2.6 * (k + 2), 2.4 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), k + 2, squeeze=False)
    for r, name in enumerate(names):
        maps = _grid_maps(plans[name], grid)  # (k, gh, gw)
        winner = maps.argmax(0)
        axes[r, 0].imshow(
            segment_overlay(frame, winner, alpha=0.55, palette=colours, patch_size=patch_size)
        )
        axes[r, 0].set_title(f"{name}: object per patch", fontsize=8)
        for j in range(k):
            axes[r, j + 1].imshow(
                upsample_map(maps[j], size, patch_size), vmin=0, vmax=1, cmap="magma"
            )
            axes[r, j + 1].set_title(f"{name}: object {j}", fontsize=8)
        share = plan_balance(plans[name])
        axes[r, k + 1].bar(range(k), share, color=colours / 255.0)
        axes[r, k + 1].axhline(1.0 / k, color="k", lw=0.8, ls="--")
        axes[r, k + 1].set_ylim(0, 1)
        axes[r, k + 1].set_xticks(range(k))
        axes[r, k + 1].set_title("share of patches", fontsize=8)
        for ax in axes[r, : k + 1]:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def plot_tracked_maps(
    frames: np.ndarray, maps: Any, patch_size: int, indices: Sequence[int] | None = None
) -> Figure:
    """Step 4: each object's cross-attention map in every frame of the clip.

    Args:
        frames: uint8 (T, H, W, 3).
        maps: (T, k, gh, gw) tracking maps (softmax over patches).
        patch_size: p.
        indices: frame numbers for the column titles.
    """
    m = _np(maps)
    size = frames.shape[1:3]
    rows = [list(frames)]
    for j in range(m.shape[1]):
        rows.append(
            [
                (
                    f,
                    upsample_map(mj / max(mj.max(), 1e-12), size, patch_size),
                )  # heat over the frame
                for f, mj in zip(frames, m[:, j])
            ]
        )
    titles = [f"frame {i}" for i in (indices if indices is not None else range(len(frames)))]
    return plot_grid(
        rows,
        row_titles=["frames"] + [f"object {j}" for j in range(m.shape[1])],
        col_titles=titles,
        panel_size=1.9,
        cmap="inferno",
        vmin=0.0,
        vmax=1.0,
        heat_alpha=0.7,
        colorbar="attention / its maximum in the frame",
    )


def plot_object_masks(
    frames: np.ndarray, masks: Any, patch_size: int, indices: Sequence[int] | None = None
) -> Figure:
    """Step 5: the binarised object masks over the frames (one colour per object)."""
    mk = _np(masks).astype(bool)  # (T, k, gh, gw)
    colours = object_colours(mk.shape[1])
    rows = [list(mask_overlay(frames, mk, colours, 0.4, patch_size=patch_size))]
    for j in range(mk.shape[1]):
        rows.append(list(mask_overlay(frames, mk[:, j], colours[j], 0.45, patch_size=patch_size)))
    titles = [f"frame {i}" for i in (indices if indices is not None else range(len(frames)))]
    return plot_grid(
        rows,
        row_titles=["all objects"] + [f"object {j}" for j in range(mk.shape[1])],
        col_titles=titles,
        panel_size=1.9,
    )


def plot_masked_views(
    frames: np.ndarray, masks: Any, patch_size: int, indices: Sequence[int] | None = None
) -> Figure:
    """Step 6: what the student sees: every frame times each object's mask (black elsewhere)."""
    mk = torch.as_tensor(_np(masks)).bool()  # (T, k, gh, gw)
    pixel = masks_to_frames(mk, patch_size, frames.shape[1:3]).numpy()  # (T, k, H, W)
    rows = [
        [(f * pixel[t, j][..., None]).astype(np.uint8) for t, f in enumerate(frames)]
        for j in range(mk.shape[1])
    ]
    titles = [f"frame {i}" for i in (indices if indices is not None else range(len(frames)))]
    return plot_grid(
        rows,
        row_titles=[f"view of object {j}" for j in range(mk.shape[1])],
        col_titles=titles,
        panel_size=1.9,
    )
