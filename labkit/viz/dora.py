"""Pictures of DoRA's discover-and-track, one per step (the teaching notebook's figures).

Each function takes what :mod:`labkit.attention` and :mod:`labkit.tracking` computed and returns a
``matplotlib.figure.Figure``; nothing is saved or shown here.

Notation: T frames, h heads, k objects, gh x gw patch grid, N = gh * gw, H x W frame pixels,
p patch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "plot_cls_attention",
    "plot_prototype_scores",
    "plot_transport_plans",
    "plot_tracked_maps",
    "plot_object_masks",
    "plot_masked_views",
    "plan_balance",
]

_RGB = np.array([[230, 25, 25], [25, 200, 25], [40, 80, 255]], dtype=np.uint8)


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _colours(k: int) -> np.ndarray:
    from labkit.viz.render import palette

    return _RGB[:k] if k <= 3 else palette(k)


def _grid_maps(values: Any, grid: tuple[int, int]) -> np.ndarray:
    """(N, k) or (gh, gw, k) values -> (k, gh, gw)."""
    v = _np(values)
    if v.ndim == 2:
        v = v.reshape(*grid, -1)
    return np.moveaxis(v, -1, 0)


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
    from labkit.viz import heads_to_rgb, overlay, plot_grid, upsample_map

    attn = _np(attention)
    size = frame.shape[:2]
    maps = [
        (frame, upsample_map(a / max(a.max(), 1e-12), size, patch_size)) for a in attn
    ]  # heat over frame
    rgb = heads_to_rgb(attn, tuple(heads), size=size, patch_size=patch_size)
    rows = [maps, [frame, rgb, overlay(frame, rgb, alpha=0.6)]]
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
    from labkit.viz import plot_grid, upsample_map

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

    from labkit.viz import segment_overlay, upsample_map

    names = list(plans)
    k = _grid_maps(plans[names[0]], grid).shape[0]
    colours = _colours(k)
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
    from labkit.viz import plot_grid, upsample_map

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
    from labkit.viz import mask_overlay, plot_grid

    mk = _np(masks).astype(bool)  # (T, k, gh, gw)
    colours = _colours(mk.shape[1])
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
    from labkit.tracking import masks_to_frames
    from labkit.viz import plot_grid

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
