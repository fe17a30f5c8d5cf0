"""The two segment pictures of :mod:`labkit.segments` side by side: render and plot.

:func:`labkit.segments.segment_maps` computes both pictures (whole-video and per-frame k-means)
for a set of frames; here :func:`segment_panels` and :func:`segment_animation` colour them over the
frames (render, uint8 arrays; the animation goes to :func:`labkit.viz.write_animation`) and
:func:`plot_segment_maps` lays a strip of frames out in a Figure with one row per picture (plot),
as in the talk that introduced TimeTuning.

Notation::

    T   frames segmented;  n  frames drawn;  gh, gw  patch grid;  p  patch size in pixels
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from labkit.segments import SegmentMaps, sample_frame_indices
from labkit.viz.plot import plot_grid
from labkit.viz.render import segment_overlay

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["segment_panels", "segment_animation", "plot_segment_maps"]


def _positions(maps: SegmentMaps, positions: Sequence[int] | np.ndarray | None) -> np.ndarray:
    count = len(maps.indices)
    pos = np.arange(count) if positions is None else np.asarray(positions, dtype=np.int64)
    if pos.ndim != 1 or pos.size == 0 or pos.min() < 0 or pos.max() >= count:
        raise ValueError(
            f"segment maps: positions must index the {count} segmented frames, got {pos.tolist()}"
        )
    return pos


def segment_panels(
    maps: SegmentMaps,
    video: Any,
    positions: Sequence[int] | np.ndarray | None = None,
    *,
    alpha: float = 0.6,
) -> dict[str, np.ndarray]:
    """The frames and their two segment pictures as images (render layer).

    Frames are read again from ``video`` and cropped to the patch grid (top-left, as the model
    saw them); each segment id has a fixed colour (:func:`labkit.viz.palette`), so a
    whole-video segment keeps its colour in every frame.

    Args:
        maps: from :func:`segment_maps` on this video.
        video: the same video (anything with ``get(indices)``).
        positions: rows of ``maps`` to render (positions in ``maps.indices``); all by default.
        alpha: opacity of the segment colours over the frame.

    Returns:
        ``{"frame", "whole", "per_frame"}``: uint8 ``(n, gh * p, gw * p, 3)`` each.
    """
    pos = _positions(maps, positions)
    gh, gw = maps.whole.labels.shape[1:]
    p = maps.patch_size
    frames = np.asarray(video.get(maps.indices[pos]))[:, : gh * p, : gw * p]  # (n, H', W', 3)
    if frames.shape[1:3] != (gh * p, gw * p):
        raise ValueError(
            f"segment_panels: frames of {frames.shape[1:3]} do not cover the {gh}x{gw} grid of "
            f"{p}-pixel patches; pass the video the maps were computed on"
        )
    overlay: dict[str, Any] = dict(alpha=alpha, patch_size=p)
    return {
        "frame": frames,
        "whole": segment_overlay(frames, maps.whole.labels[pos].numpy(), **overlay),
        "per_frame": segment_overlay(frames, maps.per_frame.labels[pos].numpy(), **overlay),
    }


def segment_animation(
    maps: SegmentMaps,
    video: Any,
    *,
    alpha: float = 0.6,
    gap: int = 4,
    batch_size: int = 32,
) -> np.ndarray:
    """Frames of an animation: ``[frame | whole-video segments | per-frame segments]`` side by side.

    Pass the result to :func:`labkit.viz.write_animation` (``.gif`` or ``.mp4``). Frames are read
    ``batch_size`` at a time.

    Args:
        maps: from :func:`segment_maps` on this video.
        video: the same video.
        alpha: opacity of the segment colours.
        gap: white pixels between the three panels.
        batch_size: frames read and coloured at once.

    Returns:
        uint8 ``(T, gh * p, 3 * gw * p + 2 * gap, 3)``, one row per segmented frame.
    """
    out = []
    for start in range(0, len(maps.indices), batch_size):
        pos = np.arange(start, min(start + batch_size, len(maps.indices)))
        panels = segment_panels(maps, video, pos, alpha=alpha)
        n, H, W, _ = panels["frame"].shape
        white = np.full((n, H, gap, 3), 255, np.uint8)
        out.append(
            np.concatenate(
                [panels["frame"], white, panels["whole"], white, panels["per_frame"]], axis=2
            )
        )
    return np.concatenate(out)


def plot_segment_maps(
    maps: SegmentMaps,
    video: Any,
    *,
    columns: int = 8,
    alpha: float = 0.6,
    title: str | None = None,
    panel_size: float = 2.5,
) -> Figure:
    """A strip of frames with both pictures: rows frame, whole-video and per-frame k-means.

    Args:
        maps: from :func:`segment_maps` on this video.
        video: the same video.
        columns: frames shown, evenly spaced over the segmented ones.
        alpha: opacity of the segment colours.
        title: figure title.
        panel_size: height of a panel in inches.

    Returns:
        ``matplotlib.figure.Figure`` with 3 rows (``"frame"``, ``"whole-video k-means (k=5)"``,
        ``"per-frame k-means (k=10)"`` with the maps' k) of ``min(columns, T)`` panels.
    """
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"plot_segment_maps: columns must be an int >= 1, got {columns!r}")
    pos = sample_frame_indices(len(maps.indices), columns)
    panels = segment_panels(maps, video, pos, alpha=alpha)
    fig = plot_grid(
        [list(panels["frame"]), list(panels["whole"]), list(panels["per_frame"])],
        row_titles=[
            "frame",
            f"whole-video k-means (k={maps.k_video})",
            f"per-frame k-means (k={maps.k_frame})",
        ],
        col_titles=[f"frame {int(i)}" for i in maps.indices[pos]],
        panel_size=panel_size,
        suptitle=title,
    )
    for ax in fig.axes:
        ax.yaxis.label.set_fontsize("small")
    return fig
