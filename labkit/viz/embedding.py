"""A linked view of a clip's patch features: 2-D embedding (PCA or UMAP) <-> patches on the frames.

Left, every sampled patch of the clip as a point (plotly), coloured by its k-means segment (the
colours of the explorer's segment panel) or by its frame; right, the current frame. A lasso or
box selection of points fills the selected patches on the frames (yellow) and lists which frames
hold them, with a strip of those frames; clicking a patch of the frame rings its point (cyan), and
clicking a point jumps to its frame and outlines its patch.

How a click on the frame becomes a patch: the frame is an ``ipywidgets.Image`` (JPEG, like the
explorer's panels) watched by an ``ipyevents.Event``, whose click message gives the pixel (x, y)
in the image's own resolution (``dataX``, ``dataY``) whatever its size on screen; the patch is
``(y // p, x // p)``. (A plotly image trace would give (x, y) too, but plotly 7's FigureWidget
stops forwarding clicks on image traces once Python has updated the figure, which the view does
on every frame change; selections on the scatter are not affected.) Selections give point
indices, and point ``q`` is patch ``embedding.index[q]`` exactly
(:class:`labkit.embedding.PatchEmbedding`; subsampling rule in :mod:`labkit.embedding`).

A click on a patch that the subsample left out rings the sampled point whose feature is closest
to it (cosine, :func:`labkit.embedding.nearest_patch`) and says so; in a view linked to an
explorer the click also shows the patch's similarity map there.

UMAP runs in a worker process in the live app (:func:`labkit.embedding.embed_patches_in_worker`:
the kernel stays responsive; PCA is shown meanwhile, with a note that counts the seconds, as the
first UMAP of a session compiles numba code); headless, it runs in the foreground. A figure or
PNG made while UMAP still runs says "PCA (UMAP still running)" in its title;
:meth:`EmbeddingView.save_png` can wait for it and rewrites its file when UMAP is done.

Sharing without a kernel: :meth:`EmbeddingView.write_html` writes a standalone HTML page (plotly.js
inlined by default, so it opens offline) with the embedding, the frames on a slider, hover
showing each point's (frame, row, column), and a small script that outlines the patches of a
lasso or box selection on the frame shown.

Notation: T frames, gh x gw patch grid, D channels, H x W frame pixels, p patch size, n points.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from labkit.embedding import (
    PatchEmbedding,
    embed_patches,
    embed_patches_in_worker,
    nearest_patch,
    umap_warmed_up,
)
from labkit.environment import is_headless
from labkit.geometry import pixel_to_patch
from labkit.viz.encode import encode_image
from labkit.viz.render import mask_overlay, palette

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["EmbeddingView", "SELECTED_RGB", "CLICKED_RGB"]

SELECTED_RGB = (255, 221, 0)  # fill and outline of selected patches
CLICKED_RGB = (0, 229, 255)  # outline of the clicked patch and ring of its point
_MAX_STRIP = 8  # frames in the selection strip


def _hex(rgb: Sequence[int]) -> str:
    r, g, b = (int(c) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def _data_uri(image: np.ndarray, fmt: Literal["jpeg", "png"] = "jpeg") -> str:
    mime = "image/jpeg" if fmt == "jpeg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(encode_image(image, fmt)).decode("ascii")


class EmbeddingView:
    """2-D embedding of a clip's patch features, linked to its frames.

    Args:
        frames: uint8 (T, H, W, 3) frames the features were computed on.
        features: (T, gh, gw, D) patch features.
        segments: int (T, gh, gw) segment labels for colours (e.g. clip-level k-means), or None.
        patch_size: p, pixels per patch side (patch (i, j) covers ``[i*p:(i+1)*p, j*p:(j+1)*p]``).
        indices: frame numbers in the video, for labels (default 0..T-1).
        method: ``"pca"`` or ``"umap"``.
        max_points: most points shown (rule: :func:`labkit.embedding.sample_patches`).
        color_by: ``"segment"`` or ``"frame"``.
        seed: subsample and UMAP seed.
        frame: the frame shown first (position in the clip).
        name: what the view shows, for titles.
    """

    def __init__(
        self,
        frames: np.ndarray,
        features: torch.Tensor | np.ndarray,
        segments: np.ndarray | torch.Tensor | None = None,
        *,
        patch_size: int,
        indices: Sequence[int] | None = None,
        method: Literal["pca", "umap"] = "pca",
        max_points: int = 3000,
        color_by: Literal["segment", "frame"] = "segment",
        seed: int = 0,
        frame: int = 0,
        name: str = "",
    ) -> None:
        frames = np.asarray(frames)
        feats = torch.as_tensor(features)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}"
            )
        if feats.ndim != 4 or feats.shape[0] != len(frames):
            raise ValueError(
                f"features must be (T, gh, gw, D) with T={len(frames)}, got {tuple(feats.shape)}"
            )
        gh, gw = int(feats.shape[1]), int(feats.shape[2])
        p = int(patch_size)
        if frames.shape[1] // p != gh or frames.shape[2] // p != gw:
            raise ValueError(
                f"a {gh}x{gw} grid of {p}-pixel patches does not fit frames {frames.shape[1:3]}"
            )
        if method not in ("pca", "umap"):
            raise ValueError(f"method must be 'pca' or 'umap', got {method!r}")
        if color_by not in ("segment", "frame"):
            raise ValueError(f"color_by must be 'segment' or 'frame', got {color_by!r}")
        self.frames = frames
        self.features = feats
        self.patch_size = p
        self.grid = (gh, gw)
        self.indices = list(range(len(frames))) if indices is None else [int(i) for i in indices]
        self.max_points = int(max_points)
        self.seed = int(seed)
        self.method = method
        self.color_by = color_by
        self.name = name
        self.frame = int(frame)
        self.segments: np.ndarray | None = None
        self.set_segments(segments, refresh=False)
        self.selection = np.zeros(0, dtype=np.int64)  # selected point indices, sorted
        self.clicked: tuple[int, int, int] | None = None  # (t, i, j) of the last clicked patch
        self.nearest: tuple[int, float] | None = None  # (point, cosine) for an unsampled click
        self.layer: int | None = None  # set by AttentionExplorer.embedding_view
        self.facet = "tokens"  # the features' facet, set by AttentionExplorer.embedding_view
        self._save_when_done: list[tuple[Path, int]] = []
        self.explorer: Any = None
        self._embeddings: dict[str, PatchEmbedding] = {}
        self._ui: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self.note = ""

    # ---- compute --------------------------------------------------------------------------
    def embedding(self, method: Literal["pca", "umap"] | None = None) -> PatchEmbedding:
        """The embedding by ``method`` (default: the view's), computed once in the foreground."""
        method = method or self.method
        if method not in self._embeddings:
            self._embeddings[method] = embed_patches(
                self.features, method, max_points=self.max_points, seed=self.seed
            )
        return self._embeddings[method]

    @property
    def shown(self) -> PatchEmbedding:
        """The embedding on screen: the view's method once computed; in the live app PCA until
        the background UMAP is done (headless, UMAP is computed here, in the foreground)."""
        if self.method in self._embeddings:
            return self._embeddings[self.method]
        if self._ui or (self._thread is not None and self._thread.is_alive()):
            return self.embedding("pca")
        return self.embedding()

    def set_segments(
        self, segments: np.ndarray | torch.Tensor | None, refresh: bool = True
    ) -> None:
        """New segment labels (T, gh, gw) for the colours, e.g. after k changed."""
        if segments is not None:
            seg = np.asarray(segments.numpy() if isinstance(segments, torch.Tensor) else segments)
            if seg.shape != (len(self.frames), *self.grid):
                raise ValueError(
                    f"segments must be (T, gh, gw) = {(len(self.frames), *self.grid)}, got "
                    f"{seg.shape}"
                )
            self.segments = seg.astype(np.int64)
        else:
            self.segments = None
        if refresh and self._ui:
            self._update_colors()

    def point_colors(self, emb: PatchEmbedding | None = None) -> list[str] | np.ndarray:
        """Marker colours: hex strings of the segment palette, or the frame positions (n,)."""

        emb = emb or self.shown
        t, i, j = emb.index.T
        if self.color_by == "segment" and self.segments is not None:
            labels = self.segments[t, i, j]
            pal = [_hex(c) for c in palette(int(self.segments.max()) + 1)]
            return [pal[label] for label in labels]
        return t.astype(np.float64)

    # ---- selection ------------------------------------------------------------------------
    def select(self, points: Sequence[int] | np.ndarray) -> np.ndarray:
        """Select points of the shown embedding; returns their patches, int64 (m, 3) (t, i, j)."""
        pts = np.unique(np.asarray(points, dtype=np.int64).reshape(-1))
        patches = self.shown.patches(pts)  # validates the indices
        self.selection = pts
        if self._ui:
            self._update_frames()
        return patches

    def select_box(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> np.ndarray:
        """Select the points inside a box of embedding coordinates (as plotly's box select)."""
        xy = self.shown.coords
        inside = (
            (xy[:, 0] >= min(x_range))
            & (xy[:, 0] <= max(x_range))
            & (xy[:, 1] >= min(y_range))
            & (xy[:, 1] <= max(y_range))
        )
        self.select(np.flatnonzero(inside))
        return self.selection

    def selected_patches(self) -> np.ndarray:
        """int64 (m, 3) rows (t, i, j) of the selected points."""
        return self.shown.patches(self.selection)

    def clear(self) -> None:
        """Drop the selection and the clicked patch."""
        self.selection = np.zeros(0, dtype=np.int64)
        self.clicked = None
        if self._ui:
            self._update_frames()
            self._update_clicked()

    def click_patch(self, t: int, i: int, j: int) -> int | None:
        """A click on patch (i, j) of frame t: shows that frame, outlines the patch, rings its point
        (or, where the subsample left it out, the sampled point closest to it in feature space:
        :attr:`nearest`). In a view linked to a live explorer, the explorer shows the patch's
        similarity map.

        Returns:
            The patch's point index, or None where the subsample left it out.
        """
        q = self.shown.point_of(int(t), int(i), int(j))
        self.clicked = (int(t), int(i), int(j))
        self.nearest = (
            None if q is not None else nearest_patch(self.features, self.shown.index, t, i, j)
        )
        self.frame = int(t)
        if self._ui:
            self._set_frame_control(self.frame)
            self._update_frames()
            self._update_clicked()
            if self.explorer is not None and self.explorer._ui:
                self.explorer.select_patch(t, i, j)
        return q

    def click_pixel(self, x: float, y: float) -> int | None:
        """A click at pixel (x, y) of the current frame (column, row): :meth:`click_patch` of
        patch (y // p, x // p); None outside the frame."""
        height, width = self.frames.shape[1:3]
        if not (0 <= x < width and 0 <= y < height):
            return None
        # the strip (< p pixels) right of and below the grid shows the edge patch
        # (labkit.geometry's border rule)
        patch = pixel_to_patch(y, x, self.grid, self.patch_size)
        if patch is None:  # a negative coordinate, excluded above
            return None
        return self.click_patch(self.frame, *patch)

    def click_point(self, q: int) -> tuple[int, int, int]:
        """A click on point q: shows its frame and outlines its patch. Returns (t, i, j)."""
        t, i, j = (int(v) for v in self.shown.patches([q])[0])
        self.click_patch(t, i, j)
        return t, i, j

    def selection_counts(self) -> list[tuple[int, int]]:
        """(frame position, selected patches in it), frames with the most first."""
        sel = self.selected_patches()
        if not len(sel):
            return []
        frames, counts = np.unique(sel[:, 0], return_counts=True)
        order = np.lexsort((frames, -counts))
        return [(int(frames[o]), int(counts[o])) for o in order]

    def selection_summary(self, limit: int = 12) -> str:
        """One line: how many points are selected and in which frames (video frame numbers)."""
        counts = self.selection_counts()
        if not counts:
            return "no selection: drag a lasso or a box over the points"
        listed = ", ".join(f"{self.indices[t]} ({c})" for t, c in counts[:limit])
        more = f", ... {len(counts) - limit} more frames" if len(counts) > limit else ""
        return (
            f"{len(self.selection)} patches selected in {len(counts)} frames; "
            f"frame (patches): {listed}{more}"
        )

    # ---- render: arrays -------------------------------------------------------------------
    def render_frame(self, t: int | None = None) -> np.ndarray:
        """Frame t (default: current) with its selected patches filled and the clicked one outlined.

        Returns:
            uint8 (H, W, 3).
        """

        t = self.frame if t is None else int(t)
        out = self.frames[t]
        sel = self.selected_patches()
        mask = np.zeros(self.grid, dtype=bool)
        rows = sel[sel[:, 0] == t]
        mask[rows[:, 1], rows[:, 2]] = True
        if mask.any():
            out = mask_overlay(out, mask, SELECTED_RGB, alpha=0.45, patch_size=self.patch_size)
        if self.clicked is not None and self.clicked[0] == t:
            box = np.zeros(self.grid, dtype=bool)
            box[self.clicked[1], self.clicked[2]] = True
            out = mask_overlay(
                out, box, CLICKED_RGB, alpha=0.0, thickness=2, patch_size=self.patch_size
            )
        return np.array(out, copy=True)

    def render_strip(self, max_frames: int = _MAX_STRIP) -> np.ndarray | None:
        """The frames holding the most selected patches (up to ``max_frames``, in clip order),
        highlighted, side by side with a 4-pixel gap: uint8 (H, n W + 4 (n - 1), 3), or None."""
        counts = self.selection_counts()[:max_frames]
        if not counts:
            return None
        frames = sorted(t for t, _ in counts)
        height = self.frames.shape[1]
        gap = np.full((height, 4, 3), 255, dtype=np.uint8)
        parts: list[np.ndarray] = []
        for t in frames:
            parts += [self.render_frame(t), gap]
        return np.concatenate(parts[:-1], axis=1)

    # ---- plot: Figures --------------------------------------------------------------------
    def _title(self) -> str:
        emb = self.shown
        method = emb.method.upper()
        if self.method == "umap" and emb.method != "umap":
            method += " (UMAP still running)" if self._thread is not None else " (UMAP not run)"
        return (
            f"{method} of patch {self.facet}{': ' + self.name if self.name else ''} | "
            f"{len(emb)} of {emb.total_patches} patches"
        )

    def figure(self) -> Figure:
        """The current state as a static matplotlib Figure: embedding | frame | selected frames."""
        from matplotlib.figure import Figure

        emb = self.shown
        strip = self.render_strip(4)
        fig = Figure(figsize=(12, 4.6 if strip is None else 7.4), layout="constrained")
        grid = fig.add_gridspec(
            1 if strip is None else 2,
            2,
            height_ratios=None if strip is None else [3, 2],
            width_ratios=[1, 1.4],
        )
        ax = fig.add_subplot(grid[0, 0])
        colors = self.point_colors(emb)
        if isinstance(colors, np.ndarray):
            sc = ax.scatter(
                emb.coords[:, 0], emb.coords[:, 1], c=colors, s=5, cmap="viridis", linewidths=0
            )
            fig.colorbar(sc, ax=ax, label="frame (position in the clip)")
        else:
            ax.scatter(emb.coords[:, 0], emb.coords[:, 1], c=colors, s=5, linewidths=0)
        if len(self.selection):
            xy = emb.coords[self.selection]
            ax.scatter(
                xy[:, 0],
                xy[:, 1],
                s=14,
                facecolors="none",
                edgecolors=_hex(SELECTED_RGB),
                linewidths=0.8,
            )
        ax.set_title(f"{emb.method.upper()}, coloured by {self.color_by}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax = fig.add_subplot(grid[0, 1])
        ax.imshow(self.render_frame())
        ax.set_title(f"frame {self.indices[self.frame]}", fontsize=9)
        ax.axis("off")
        if strip is not None:
            ax = fig.add_subplot(grid[1, :])
            ax.imshow(strip)
            ax.set_title(self.selection_summary(limit=6), fontsize=9)
            ax.axis("off")
        fig.suptitle(self._title(), fontsize=10)
        return fig

    def save_png(self, path: str | Path, dpi: int = 100, wait: float | None = 0.0) -> Path:
        """Write :meth:`figure` as a PNG; returns the path.

        While a background UMAP runs (live app), waits up to ``wait`` seconds for it (None: as
        long as it takes); if it is still running then, writes the PCA with "PCA (UMAP still
        running)" in the title and writes the file again, with the UMAP, when UMAP is done.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        running = self.method == "umap" and "umap" not in self._embeddings
        if running and self._thread is not None and not self.wait(wait):
            self._save_when_done.append((path, dpi))
        self.figure().savefig(path, dpi=dpi)
        return path

    # ---- plotly: standalone HTML ----------------------------------------------------------
    def plotly_figure(self, max_frames: int = 200) -> Any:
        """A standalone plotly Figure: embedding (hover: frame, patch, segment) | frame on a slider.

        Args:
            max_frames: most frames on the slider (uniform stride over the clip beyond that).

        Returns:
            ``plotly.graph_objects.Figure``; with :data:`_SELECTION_JS` (added by
            :meth:`write_html`) a selection outlines its patches on the frame shown.
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        emb = self.shown
        T = len(self.frames)
        height, width = self.frames.shape[1:3]
        seg = (
            self.segments[emb.index[:, 0], emb.index[:, 1], emb.index[:, 2]]
            if self.segments is not None
            else np.full(len(emb), -1)
        )
        frame_no = np.asarray(self.indices)[emb.index[:, 0]]
        custom = np.stack(
            [emb.index[:, 0], emb.index[:, 1], emb.index[:, 2], seg, frame_no], axis=1
        )
        colors = self.point_colors(emb)
        marker: dict[str, Any] = {"size": 5, "color": colors}
        if isinstance(colors, np.ndarray):
            marker.update(colorscale="Viridis", colorbar={"title": "frame", "x": 0.42})
        fig = make_subplots(
            rows=1,
            cols=2,
            column_widths=[0.45, 0.55],
            horizontal_spacing=0.06,
            subplot_titles=(f"{emb.method.upper()}, coloured by {self.color_by}", "frame"),
        )
        fig.add_trace(
            go.Scatter(
                x=emb.coords[:, 0],
                y=emb.coords[:, 1],
                mode="markers",
                marker=marker,
                customdata=custom,
                hovertemplate="frame %{customdata[4]}<br>patch row %{customdata[1]}, "
                "col %{customdata[2]}<br>segment %{customdata[3]}<extra></extra>",
                name="patches",
            ),
            row=1,
            col=1,
        )
        shown = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int))
        start = int(shown[np.argmin(np.abs(shown - self.frame))])
        uris = {int(t): _data_uri(self.frames[t], "jpeg") for t in shown}
        fig.add_trace(
            go.Image(
                source=uris[start],
                x0=0,
                dx=1,
                y0=0,
                dy=1,
                name="frame",
                hovertemplate="x %{x}, y %{y}<extra></extra>",
            ),
            row=1,
            col=2,
        )
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.update_xaxes(range=[-0.5, width - 0.5], row=1, col=2)
        fig.update_yaxes(range=[height - 0.5, -0.5], scaleanchor="x2", row=1, col=2)
        steps = [
            {
                "method": "restyle",
                "label": str(self.indices[t]),
                "args": [{"source": [uris[int(t)]]}, [1]],
            }
            for t in shown
        ]
        fig.update_layout(
            title=self._title(),
            dragmode="lasso",
            height=560,
            width=1200,
            showlegend=False,
            sliders=[
                {
                    "active": int(np.flatnonzero(shown == start)[0]),
                    "steps": steps,
                    "currentvalue": {"prefix": "frame "},
                    "pad": {"t": 30},
                }
            ],
            meta={"patch_size": self.patch_size, "positions": [int(t) for t in shown]},
        )
        return fig

    def write_html(
        self,
        path: str | Path,
        include_plotlyjs: bool | Literal["cdn"] = True,
        max_frames: int = 200,
    ) -> Path:
        """Write :meth:`plotly_figure` as a standalone, interactive HTML page.

        Args:
            path: the ``.html`` file.
            include_plotlyjs: True (default) inlines plotly.js (about 4.7 MB, opens offline);
                ``"cdn"`` links it from the CDN instead (small file, needs the internet).
            max_frames: most frames on the slider.

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = self.plotly_figure(max_frames=max_frames)
        fig.write_html(
            path, include_plotlyjs=include_plotlyjs, full_html=True, post_script=_SELECTION_JS
        )
        return path

    # ---- widgets --------------------------------------------------------------------------
    def widget(self) -> Any:
        """The ipywidgets app (built once): method, colouring, frame slider, the embedding (plotly
        FigureWidget), the clickable frame, the selection summary and strip. UMAP starts in the
        background."""
        if self._ui:
            return self._ui["app"]
        import ipywidgets as w
        import plotly.graph_objects as go

        ui = self._ui
        emb = self.embedding("pca") if self.method == "umap" else self.embedding()
        height, width = self.frames.shape[1:3]
        ui["method"] = w.ToggleButtons(
            options=["pca", "umap"],
            value=self.method,
            description="embedding",
            style={"button_width": "70px"},
        )
        ui["color_by"] = w.ToggleButtons(
            options=["segment", "frame"],
            value=self.color_by,
            description="colour by",
            style={"button_width": "80px"},
        )
        ui["frame"] = w.IntSlider(
            value=self.frame,
            min=0,
            max=len(self.frames) - 1,
            description="frame",
            continuous_update=True,
            layout=w.Layout(width="420px"),
        )
        ui["clear"] = w.Button(description="clear selection", layout=w.Layout(width="140px"))
        ui["note"] = w.HTML("")
        ui["scatter_title"] = w.HTML("")
        ui["summary"] = w.HTML("")
        ui["strip"] = w.Image(format="jpeg", layout=w.Layout(max_width="100%"))
        scatter = go.FigureWidget(
            data=[
                go.Scatter(
                    x=emb.coords[:, 0],
                    y=emb.coords[:, 1],
                    mode="markers",
                    marker={"size": 5},
                    name="patches",
                    hoverinfo="text",
                    unselected={"marker": {"opacity": 0.25}},
                ),
                go.Scatter(
                    x=[],
                    y=[],
                    mode="markers",
                    name="clicked",
                    hoverinfo="skip",
                    marker={
                        "size": 14,
                        "color": "rgba(0,0,0,0)",
                        "line": {"width": 3, "color": _hex(CLICKED_RGB)},
                    },
                ),
            ],
            layout=go.Layout(
                width=460,
                height=460,
                dragmode="lasso",
                showlegend=False,
                margin={"l": 10, "r": 10, "t": 30, "b": 10},
                xaxis={"visible": False},
                yaxis={"visible": False},
            ),
        )
        scale = max(1.0, 420 / width)
        image = w.Image(format="jpeg", layout=w.Layout(width=f"{int(width * scale)}px"))
        image.add_class("labkit-embedding-frame")
        ui["image_title"] = w.HTML("")
        try:
            from ipyevents import Event

            ui["events"] = Event(
                source=image, watched_events=["click"], prevent_default_action=True
            )
        except ImportError:  # clicks need ipyevents; everything else works without it
            ui["events"] = None
            ui["image_title"].value = "<small>(install ipyevents to click on patches)</small>"
        ui["scatter"], ui["image"] = scatter, image

        def on_selection(trace: Any, points: Any, selector: Any) -> None:
            self.select(points.point_inds)

        def on_deselect(trace: Any, points: Any) -> None:
            self.select([])

        def on_point_click(trace: Any, points: Any, state: Any) -> None:
            if points.point_inds:
                self.click_point(int(points.point_inds[0]))

        def on_image_click(event: dict[str, Any]) -> None:
            if event.get("type") == "click" and "dataX" in event:
                self.click_pixel(float(event["dataX"]), float(event["dataY"]))

        scatter.data[0].on_selection(on_selection)
        scatter.data[0].on_deselect(on_deselect)
        scatter.data[0].on_click(on_point_click)
        if ui["events"] is not None:
            ui["events"].on_dom_event(on_image_click)

        def on_frame(change: Any) -> None:
            self.frame = int(change["new"])
            self._update_frames()

        def on_method(change: Any) -> None:
            self.set_method(change["new"])

        def on_color(change: Any) -> None:
            self.color_by = change["new"]
            self._update_colors()

        ui["frame"].observe(on_frame, names="value")
        ui["method"].observe(on_method, names="value")
        ui["color_by"].observe(on_color, names="value")
        ui["clear"].on_click(lambda _: self.clear())
        ui["app"] = w.VBox(
            [
                w.HBox([ui["method"], ui["color_by"]]),
                w.HBox([ui["frame"], ui["clear"]]),
                ui["note"],
                w.HBox(
                    [w.VBox([ui["scatter_title"], scatter]), w.VBox([ui["image_title"], image])],
                    layout=w.Layout(align_items="flex-start"),
                ),
                ui["summary"],
                ui["strip"],
            ]
        )
        ui["app"].add_class("labkit-embedding")
        if self.explorer is not None and self.explorer._ui:
            w.link((self.explorer._ui["frame"], "value"), (ui["frame"], "value"))
        self._update_points()
        self._update_frames()
        if self.method == "umap":
            self.set_method("umap")
        return ui["app"]

    def _set_frame_control(self, t: int) -> None:
        if self._ui and self._ui["frame"].value != t:
            self._ui["frame"].value = t  # its observer redraws

    def _follow_explorer(self, state: Any) -> None:
        """Called by the explorer after each change: same frame, and new colours for a new k."""
        if (
            self.layer is not None
            and state.layer == self.layer
            and state.facet == self.facet
            and self.explorer is not None
        ):
            seg = self.explorer._segments.get((state.layer, state.k, state.facet))
            if seg is not None and (
                self.segments is None or not np.array_equal(seg, self.segments)
            ):
                self.set_segments(seg)
        if self.frame != state.frame:
            self.frame = state.frame
            if self._ui:
                self._set_frame_control(state.frame)
                self._update_frames()

    def _update_points(self) -> None:
        """Coordinates, colours and hover text of the shown embedding."""
        ui = self._ui
        emb = self.shown
        text = [f"frame {self.indices[t]}, patch ({i}, {j})" for t, i, j in emb.index]
        with ui["scatter"].batch_update():
            ui["scatter"].data[0].x = emb.coords[:, 0]
            ui["scatter"].data[0].y = emb.coords[:, 1]
            ui["scatter"].data[0].text = text
        ui["scatter_title"].value = f"<b>{self._title()}</b>"
        self._update_colors()
        self._update_clicked()
        n, total = len(emb), emb.total_patches
        rule = (
            "all patches"
            if n == total
            else f"{n} of {total} patches: an equal share of every frame, drawn at random "
            f"(seed {self.seed})"
        )
        ui["note"].value = f"<small>{rule}{' | ' + self.note if self.note else ''}</small>"

    def _update_note(self) -> None:
        ui = self._ui
        n, total = len(self.shown), self.shown.total_patches
        rule = (
            "all patches"
            if n == total
            else f"{n} of {total} patches: an equal share of every frame, drawn at random "
            f"(seed {self.seed})"
        )
        ui["note"].value = f"<small>{rule}{' | ' + self.note if self.note else ''}</small>"
        ui["scatter_title"].value = f"<b>{self._title()}</b>"

    def _update_colors(self) -> None:
        emb = self.shown
        colors = self.point_colors(emb)
        marker = self._ui["scatter"].data[0].marker
        with self._ui["scatter"].batch_update():
            if isinstance(colors, np.ndarray):
                marker.color = colors
                marker.colorscale = "Viridis"
                marker.showscale = True
                marker.colorbar = {"title": {"text": "frame"}, "len": 0.6}
            else:
                marker.showscale = False
                marker.color = colors

    def _update_clicked(self) -> None:
        ui = self._ui
        q = None if self.clicked is None else self.shown.point_of(*self.clicked)
        if q is None and self.nearest is not None and self.nearest[0] < len(self.shown):
            q = self.nearest[0]  # an unsampled patch: its nearest sampled point
        xy = self.shown.coords[[q]] if q is not None else np.zeros((0, 2))
        with ui["scatter"].batch_update():
            ui["scatter"].data[1].x = xy[:, 0]
            ui["scatter"].data[1].y = xy[:, 1]

    def _update_frames(self) -> None:
        """The frame with its highlights, the selection summary and strip."""

        ui = self._ui
        ui["image"].value = encode_image(self.render_frame(), "jpeg")
        clicked = ""
        if self.clicked is not None:
            t, i, j = self.clicked
            q = self.shown.point_of(t, i, j)
            where = f"point {q}" if q is not None else "not sampled"
            if q is None and self.nearest is not None and self.nearest[0] < len(self.shown):
                n, cos = self.nearest
                nt, ni, nj = (int(v) for v in self.shown.index[n])
                where += (
                    f"; ringed: the nearest sampled point, patch ({ni}, {nj}) of frame "
                    f"{self.indices[nt]} (cosine {cos:.2f})"
                )
            clicked = f" | clicked patch ({i}, {j}) of frame {self.indices[t]}: {where}"
        ui["image_title"].value = f"<b>frame {self.indices[self.frame]}</b>{clicked}"
        ui["summary"].value = f"<small>{self.selection_summary()}</small>"
        strip = self.render_strip()
        if strip is None:
            ui["strip"].layout.display = "none"
        else:
            ui["strip"].value = encode_image(strip, "jpeg")
            ui["strip"].layout.display = None

    def set_method(self, method: Literal["pca", "umap"]) -> None:
        """Switch between PCA and UMAP; in the live app UMAP is computed in a worker process."""
        if method not in ("pca", "umap"):
            raise ValueError(f"method must be 'pca' or 'umap', got {method!r}")
        self.method = method
        self.selection = np.zeros(0, dtype=np.int64)  # point indices belong to one embedding
        if self.clicked is not None:  # the nearest sampled point depends on the sample's points
            self.nearest = (
                None
                if self.shown.point_of(*self.clicked) is not None
                else nearest_patch(self.features, self.shown.index, *self.clicked)
            )
        if not self._ui:
            return
        if method in self._embeddings:
            self.note = ""
            self._update_points()
            self._update_frames()
            return
        if self._thread is not None and self._thread.is_alive():
            return
        first = (
            ""
            if umap_warmed_up()
            else " (the first UMAP of a kernel also compiles numba code: most of the wait)"
        )
        self.note = f"UMAP: computing in a worker process, PCA shown meanwhile{first}"
        self._update_points()

        future = embed_patches_in_worker(self.features, max_points=self.max_points, seed=self.seed)

        def work() -> None:
            import concurrent.futures

            start = time.perf_counter()
            try:
                while True:  # the note counts the seconds: the only progress UMAP gives
                    try:
                        self._embeddings["umap"] = future.result(timeout=1.0)  # GIL released
                        break
                    except concurrent.futures.TimeoutError:
                        elapsed = time.perf_counter() - start
                        self.note = (
                            f"UMAP: running for {elapsed:.0f} s in a worker process, PCA shown "
                            f"meanwhile{first}"
                        )
                        self._update_note()
                self.note = f"UMAP took {time.perf_counter() - start:.1f} s (in a worker process)"
            except Exception as err:  # shown in the app: a thread has nowhere else to report
                self.note = f"UMAP failed: {type(err).__name__}: {err}"
            if self.method == "umap":
                self.selection = np.zeros(0, dtype=np.int64)
                if self.clicked is not None and "umap" in self._embeddings:
                    q = self.shown.point_of(*self.clicked)
                    self.nearest = (
                        None
                        if q is not None
                        else nearest_patch(self.features, self.shown.index, *self.clicked)
                    )
                self._update_points()
                self._update_frames()
            for path, dpi in self._save_when_done:  # save_png gave up waiting: now the UMAP
                self.figure().savefig(path, dpi=dpi)
            self._save_when_done.clear()

        self._thread = threading.Thread(target=work, name="labkit-umap", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background UMAP; True when none is running any more."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def show(self, static: bool | None = None) -> None:
        """Display the live app, or a static figure when headless (``static=None``: detect)."""
        from IPython.display import display

        static = is_headless() if static is None else static
        if static:
            self.embedding()  # UMAP in the foreground when asked for
            display(self.figure())
        else:
            display(self.widget())


# Added to the standalone HTML by write_html: outlines the patches of a lasso/box selection on the
# frame shown (points carry customdata [t, i, j, segment, frame number]; the slider's active step
# gives the frame shown; layout.meta has the patch size and each step's frame position).
_SELECTION_JS = """
var gd = document.getElementById('{plot_id}');
var picked = [];
function outline() {
  var meta = gd.layout.meta, p = meta.patch_size;
  var t = meta.positions[gd.layout.sliders[0].active || 0];
  var shapes = picked.filter(function (c) { return c[0] === t; }).map(function (c) {
    return {type: 'rect', xref: 'x2', yref: 'y2', x0: c[2] * p - 0.5, x1: (c[2] + 1) * p - 0.5,
            y0: c[1] * p - 0.5, y1: (c[1] + 1) * p - 0.5,
            line: {color: '#ffdd00', width: 2}, fillcolor: 'rgba(255,221,0,0.3)'};
  });
  Plotly.relayout(gd, {shapes: shapes});
}
gd.on('plotly_selected', function (ev) {
  picked = (ev && ev.points ? ev.points : []).filter(function (pt) { return pt.curveNumber === 0; })
    .map(function (pt) { return pt.customdata; });
  outline();
});
gd.on('plotly_deselect', function () { picked = []; outline(); });
gd.on('plotly_sliderchange', function () { setTimeout(outline, 0); });
"""
