"""The attention-explorer workflow: per-head [CLS] maps, masks and k-means segments of one clip.

This is what ``notebooks/attention_explorer.ipynb`` and ``labkit attention VIDEO`` run: read a clip,
one forward pass per batch of frames for the [CLS] attention of every head and the patch features,
then render. Compute (:func:`explore`) is separate from rendering (:class:`Exploration` methods
return arrays and Figures) and from writing files (:func:`save_exploration`).

What DINO's and dino-vit-features' users look for is here too: one image per head and the head
mean (``head_images``, :meth:`Exploration.figure_head_maps`), at any input size (``img_size``,
the shorter side fed to the model: 480 with ViT-S/8 gives a 60-row grid), a ``stride`` smaller
than the patch size for denser maps (:func:`labkit.models.set_stride`), and the ``facet``
(tokens, keys, queries or values) that the k-means segments and the PCA are computed from. The
animation plays at the source's speed and size unless ``animation_fps`` / ``animation_size``
say otherwise.

Notation: T frames, h heads, gh x gw patch grid, D feature channels, H x W frame pixels (as fed
to the model), p patch size, s stride between patches (p unless ``stride`` is set).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from labkit.artifacts import Artifacts, token_artifacts
from labkit.attention import FeatureKind, extract_video, image_batches, mass_threshold
from labkit.clustering import kmeans_segments
from labkit.data import default_video
from labkit.geometry import Upsampling, grid_to_frame, resize_nearest
from labkit.models import load_backbone, patch_size, patch_stride, set_stride, weights_label
from labkit.pos_embed import PosEmbedRule, model_rule
from labkit.specs import parse_model_spec
from labkit.validation import (
    check_device,
    check_fields,
    check_model_kwargs,
    check_output_dir,
    check_value,
    resolve_device,
)
from labkit.video import clip_indices as clip_indices_for
from labkit.video import open_video
from labkit.viz import (
    features_to_rgb,
    heads_to_rgb,
    mask_overlay,
    overlay,
    plot_grid,
    segment_overlay,
    upsample_map,
    write_animation,
)
from labkit.viz.artifacts import plot_artifacts
from labkit.viz.comparison import ModelComparison
from labkit.viz.heads import head_maps, head_scale, plot_head_map, plot_head_maps
from labkit.viz.render import HEAD_COLOURS, label_panels

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ExploreConfig", "Exploration", "explore", "save_exploration", "clip_indices_for"]


def block_words(layer: int) -> str:
    """A block index as a figure says it: ``-1`` is "the last block", ``-2`` "block -2 (from
    the end)", ``3`` "block 3" (counted from 0, as the ``layer`` parameter)."""
    if layer == -1:
        return "the last block"
    return f"block {layer} (from the end)" if layer < 0 else f"block {layer}"


@dataclass(frozen=True)
class ExploreConfig:
    """Parameters of the attention explorer; the notebook's parameters cell uses the same names."""

    video_path: str = ""  # mp4 or frame folder; empty means the lab's default synthetic video
    # timm name; a tagged name (vit_small_patch16_224.dino) loads its weights
    model: str = "vit_small_patch16_224"
    checkpoint: str = ""  # local checkpoint (timm, DINO, DoRA or labkit format); empty: none
    # timm's weights of a tagged model name: true, false, or "auto" (if in the local cache, else
    # a random init that says so); None: true where the name has a tag
    pretrained: bool | Literal["auto"] | None = "auto"
    pos_embed_rule: PosEmbedRule = "auto"  # "dino", "dinov2", "timm"; auto: as the weights' authors
    model_kwargs: dict = field(
        default_factory=dict
    )  # extra timm arguments, e.g. {"depth": 2} for tests
    layer: int = -1  # block whose [CLS] attention is shown; negative counts from the end
    heads: tuple[int, int, int] = (0, 1, 2)  # the three heads drawn as R, G, B
    num_frames: int = 16  # frames in the clip
    start_frame: int = 0
    frame_step: int = 4  # clip stride in frames; 0 spreads num_frames evenly over the whole video
    img_size: int = 224  # shorter side of the frames fed to the model (aspect ratio kept)
    # pixels between patches: 0 is the patch size; a divisor of it (8 for a /16 model) runs the
    # patch embedding with that stride for a denser grid, (H - p) // s + 1 rows, at about
    # (p / s)^2 the tokens and up to (p / s)^4 the attention cost (labkit.models.set_stride)
    stride: int = 0
    # features the k-means segments and the PCA use: "tokens" (block output after the final
    # norm), "keys", "queries" or "values" of the block (dino-vit-features' facets)
    facet: FeatureKind = "tokens"
    k: int = 5  # k-means segments
    keep: float = 0.6  # attention mass kept by the thresholded masks (DINO uses 0.6)
    batch_size: int = 8  # frames per forward pass
    # save head_00.png ... and head_mean.png (each head's [CLS] attention over one frame and
    # their mean, DINO's visualize_attention.py) and heads_grid.png with all of them
    head_images: bool = False
    head_frame: int = 0  # the clip position whose per-head images are saved
    animation_fps: float = 0.0  # 0: the source's speed (its frame rate / the clip's frame step)
    animation_size: int = 0  # shorter side of the animation's panels; 0: the source frame size
    device: str = "auto"  # "auto": CUDA when available, else the CPU
    seed: int = 0
    out_dir: str = "runs/attention_explorer"
    # models compared frame by frame, one row each (labkit.viz.comparison.ModelComparison), as
    # eval model specs "LABEL=ARCH[:CHECKPOINT|:pretrained]"; empty: no comparison
    compare_models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_fields(
            self, skip=("heads",)
        )  # every value of its annotated type, or the key is named
        check_value("heads", self.heads, tuple[int, ...])
        check_model_kwargs("model_kwargs", self.model_kwargs)
        check_device("device", self.device)
        object.__setattr__(self, "device", resolve_device(self.device))
        check_output_dir("out_dir", self.out_dir)
        heads = tuple(int(h) for h in self.heads)
        object.__setattr__(self, "heads", heads)
        if len(heads) != 3:
            raise ValueError(f"heads must name exactly three heads (R, G, B), got {self.heads!r}")
        if any(h < 0 for h in heads):
            raise ValueError(f"heads must be non-negative head indices, got {self.heads!r}")
        for name in ("num_frames", "img_size", "k", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.k < 2:
            raise ValueError(f"k must be >= 2 segments, got {self.k}")
        if self.stride < 0:
            raise ValueError(f"stride must be >= 0 (0: the patch size), got {self.stride}")
        if self.facet not in ("tokens", "keys", "queries", "values"):
            raise ValueError(
                f"facet must be 'tokens', 'keys', 'queries' or 'values', got {self.facet!r}"
            )
        if not 0 <= self.head_frame < self.num_frames:
            raise ValueError(
                f"head_frame must be a clip position in 0 .. {self.num_frames - 1}, "
                f"got {self.head_frame}"
            )
        if self.animation_fps < 0 or self.animation_size < 0:
            raise ValueError(
                "animation_fps and animation_size must be >= 0 (0: the source's), got "
                f"{self.animation_fps}, {self.animation_size}"
            )
        if self.start_frame < 0 or self.frame_step < 0:
            raise ValueError(
                "start_frame and frame_step must be >= 0, got "
                f"{self.start_frame}, {self.frame_step}"
            )
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {self.keep}")
        if self.video_path and not Path(self.video_path).exists():
            raise ValueError(f"video_path {self.video_path!r} does not exist")
        if self.checkpoint and not Path(self.checkpoint).is_file():
            raise ValueError(f"checkpoint {self.checkpoint!r} is not a file")
        if not str(self.device).startswith(("cpu", "cuda", "mps")):
            raise ValueError(f"device must be 'cpu', 'cuda[:n]' or 'mps', got {self.device!r}")
        if self.compare_models:
            try:
                labels = [parse_model_spec(spec).label for spec in self.compare_models]
            except ValueError as err:
                raise ValueError(f"compare_models: {err}") from None
            if len(set(labels)) != len(labels):
                raise ValueError(
                    f"compare_models: labels {labels} repeat; give each spec its own as "
                    "LABEL=ARCH..."
                )


@dataclass
class Exploration:
    """Everything computed for one clip; methods render it.

    Attributes:
        config: the parameters used.
        indices: int64 (T,) frame indices in the video.
        frames: uint8 (T, H, W, 3) RGB frames as fed to the model (before the patch crop).
        attention: float32 (T, h, gh, gw) [CLS] attention of each head over the patches.
        features: float32 (T, gh, gw, D) the block's ``config.facet`` (patch tokens by
            default; keys, queries or values), which the segments and the PCA are made of.
        keys: float32 (T, gh, gw, D) the block's keys (heads concatenated), for DoRA's tracking.
        queries: float32 (gh, gw, D) the block's queries on the clip's first frame, for DoRA's
            discovery; keys and queries come from the same pass (the interactive explorer uses
            them).
        masks: bool (T, h, gh, gw) smallest patch sets holding ``keep`` of each head's mass.
        segments_frame: int64 (T, gh, gw) per-frame k-means, labels aligned over time.
        segments_clip: int64 (T, gh, gw) one k-means over the whole clip.
        patch_size: the model's patch size in pixels.
        stride: pixels between patches (``patch_size`` unless ``config.stride`` set another).
        display_frames: uint8 (T, H2, W2, 3) the same frames at the animation's size (the
            source's, or ``config.animation_size``) where that differs from ``frames``, else None.
        model: the backbone used (for the interactive explorer's other layers).
        seconds: wall time of each step.
        weights: the network and its weights in words, e.g. ``"vit_small_patch16_224.dino,
            pretrained dino"``; every figure's title says it.
        artifacts: patch-token norms, high-norm outliers and [CLS]/register attention of every
            block for every frame (:func:`labkit.artifacts.token_artifacts`; register maps at
            ``layer``), or None.
    """

    config: ExploreConfig
    indices: np.ndarray
    frames: np.ndarray
    attention: torch.Tensor
    features: torch.Tensor
    masks: torch.Tensor
    segments_frame: torch.Tensor
    segments_clip: torch.Tensor
    patch_size: int
    keys: torch.Tensor | None = field(default=None, repr=False)
    queries: torch.Tensor | None = field(default=None, repr=False)
    model: torch.nn.Module | None = field(default=None, repr=False)
    video_info: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    weights: str = ""  # which network and weights, in words (labkit.models.weights_label)
    artifacts: Artifacts | None = field(default=None, repr=False)  # token norms of every block
    stride: int = 0  # pixels between patches; 0: patch_size
    display_frames: np.ndarray | None = field(default=None, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    @property
    def patch_stride(self) -> int:
        """s, pixels between patches (the patch size unless a stride was set)."""
        return self.stride or self.patch_size

    @property
    def grid(self) -> tuple[int, int]:
        """(gh, gw), the patch grid."""
        return int(self.attention.shape[-2]), int(self.attention.shape[-1])

    def _on_pixels(
        self, x: torch.Tensor, size: tuple[int, int] | None = None, mode: Upsampling = "nearest"
    ) -> tuple[torch.Tensor, int]:
        """Grid values ``(..., gh, gw)`` ready for a :mod:`labkit.viz` renderer of ``size``.

        Returns ``(x, p)`` unchanged where the frames are ``size`` and patches do not overlap (the
        renderers map the grid themselves, as always); else the values mapped to the frames'
        pixels by :mod:`labkit.geometry` (the stride's nearest-centre rule, then a nearest resize
        to ``size``) and ``1``, the patch size of a pixel map.
        """
        size = size or self.size
        if size == self.size and self.patch_stride == self.patch_size:
            return x, self.patch_size
        px = grid_to_frame(
            x,
            self.size,
            patch_size=self.patch_size,
            stride=self.patch_stride,
            mode=mode,
        )  # (..., H, W)
        return (px if size == self.size else resize_nearest(px, size)), 1

    def _input_words(self) -> str:
        """The input size and the grid in words: ``"input 480x848 px, grid 60x106, patch 8"``."""
        (H, W), (gh, gw), p = self.size, self.grid, self.patch_size
        H, W = H // p * p, W // p * p  # what the model saw: cropped to multiples of p
        s = self.patch_stride
        return f"input {H}x{W} px, grid {gh}x{gw}, patch {p}" + (f", stride {s}" if s != p else "")

    # ---- render: arrays -------------------------------------------------------------------
    def rgb_maps(
        self, heads: tuple[int, int, int] | None = None, mode: Upsampling = "nearest"
    ) -> np.ndarray:
        """Three heads as R, G, B at frame resolution: uint8 (T, H, W, 3)."""

        return self._rgb_maps(heads, mode, self.size)

    def _rgb_maps(
        self, heads: tuple[int, int, int] | None, mode: Upsampling, size: tuple[int, int]
    ) -> np.ndarray:
        heads = heads or self.config.heads
        attention, p = self._on_pixels(self.attention[:, list(heads)], size, mode)  # (T, 3, ., .)
        return np.stack(
            [heads_to_rgb(a, (0, 1, 2), size=size, mode=mode, patch_size=p) for a in attention]
        )

    def mask_overlays(self, head: int | None = None) -> np.ndarray:
        """Thresholded masks drawn over the frames in their head's colour: uint8 (T, H, W, 3).

        Args:
            head: one head's mask, or None for the three chosen heads' masks, each in its colour
                (the chosen heads are red, green and blue as in :meth:`rgb_maps`; another head
                is drawn in white).
        """

        heads = list(self.config.heads) if head is None else [head]
        chosen = list(self.config.heads)
        colours = [HEAD_COLOURS[chosen.index(h)] if h in chosen else (255, 255, 255) for h in heads]
        out = []
        masks, p = self._on_pixels(self.masks[:, heads])  # (T, K, ., .), one mask per head
        for frame, m in zip(self.frames, masks.numpy()):
            out.append(
                mask_overlay(
                    frame,
                    m,
                    colours,
                    alpha=0.35,
                    patch_size=p,
                    thickness=2,
                    halo=True,
                )
            )
        return np.stack(out)

    def segment_overlays(self, mode: str = "frame", alpha: float = 0.55) -> np.ndarray:
        """k-means segments over the frames: uint8 (T, H, W, 3); ``mode`` 'frame' or 'clip'."""

        return self._segment_overlays(mode, alpha, self.frames)

    def _segment_overlays(self, mode: str, alpha: float, frames: np.ndarray) -> np.ndarray:
        labels = self.segments_frame if mode == "frame" else self.segments_clip
        labels, p = self._on_pixels(labels, (int(frames.shape[1]), int(frames.shape[2])))
        return np.stack(
            [
                segment_overlay(f, lab.numpy(), alpha=alpha, patch_size=p)
                for f, lab in zip(frames, labels)
            ]
        )

    def pca_maps(self) -> np.ndarray:
        """Patch features as RGB through a PCA shared by all frames: uint8 (T, gh, gw, 3)."""

        return features_to_rgb(self.features)

    def animation_fps(self) -> float:
        """Frames per second of the animation: ``config.animation_fps``, else the source's speed
        (its frame rate divided by the clip's step between frames; 6 where the rate is unknown).
        """
        if self.config.animation_fps > 0:
            return float(self.config.animation_fps)
        fps = float(self.video_info.get("fps") or 0.0)
        if fps <= 0:
            return 6.0
        steps = np.diff(self.indices)
        step = float(np.median(steps)) if len(steps) else 1.0
        return fps / max(step, 1.0)

    def animation_frames(self, labels: bool = False) -> np.ndarray:
        """Frame | heads as RGB | k-means (clip) side by side: uint8 (T, H, 3 W, 3).

        The panels are at the animation's size: ``display_frames``' (the source's, or
        ``config.animation_size``) where :func:`explore` read them, else the model's frames'.

        Args:
            labels: add a band above the panels (:func:`labkit.viz.render.label_panels`) saying
                what each panel is, the frame number and the weights: uint8 (T, band + H, 3 W, 3).
        """
        frames = self.frames if self.display_frames is None else self.display_frames
        size = (int(frames.shape[1]), int(frames.shape[2]))
        anim = np.concatenate(
            [
                frames,
                self._rgb_maps(None, "nearest", size),
                self._segment_overlays("clip", 0.55, frames),
            ],
            axis=2,
        )
        if not labels:
            return anim

        cfg, T = self.config, len(self.indices)
        titles = [
            f"frame ({self._input_words()})",
            f"heads {cfg.heads[0]}, {cfg.heads[1]}, {cfg.heads[2]} as R, G, B "
            f"({block_words(cfg.layer)})",
            f"k-means of the {self.config.facet} over the clip, k={cfg.k}",
        ]
        info = [
            f"frame {int(i)} ({t + 1}/{T})" + (f"  ·  {self.weights}" if self.weights else "")
            for t, i in enumerate(self.indices)
        ]
        return label_panels(anim, titles, info)

    # ---- plot: Figures --------------------------------------------------------------------
    def _titles(self) -> list[str]:
        return [f"frame {i}" for i in self.indices]

    def _suptitle(self, what: str) -> str:
        return f"{what} ({self.weights})" if self.weights else what

    def _strip_columns(self, max_columns: int) -> np.ndarray:
        t = len(self.indices)
        return np.unique(np.linspace(0, t - 1, min(t, max_columns)).round().astype(int))

    def figure_heads(self, max_columns: int = 8) -> Figure:
        """Frames, the three heads as RGB, and the RGB map over the frame."""

        cols = self._strip_columns(max_columns)
        rgb = self.rgb_maps()
        rows = [
            [self.frames[c] for c in cols],
            [rgb[c] for c in cols],
            [overlay(self.frames[c], rgb[c], alpha=0.6) for c in cols],
        ]
        h = self.config.heads
        return plot_grid(
            rows,
            row_titles=["frame", f"heads {h[0]},{h[1]},{h[2]} as RGB", "over the frame"],
            col_titles=[self._titles()[c] for c in cols],
            suptitle=self._suptitle(f"[CLS] attention, {block_words(self.config.layer)}"),
        )

    def figure_all_heads(self, frame: int = 0) -> Figure:
        """Every head's map for one frame of the clip (its position in the clip)."""

        attn, p = self._on_pixels(self.attention[frame])
        images = []
        for a in attn:
            a = a / a.max().clamp_min(1e-12)
            heat = upsample_map(a, self.size, p, mode="nearest")
            images.append((self.frames[frame], heat))  # heat map over the frame, with a colour bar
        return plot_grid(
            [images],
            col_titles=[f"head {i}" for i in range(len(images))],
            row_titles=[f"frame {self.indices[frame]}"],
            suptitle=self._suptitle(f"every head's [CLS] attention, {self._input_words()}"),
            cmap="inferno",
            vmin=0.0,
            vmax=1.0,
            heat_alpha=0.7,
            colorbar="attention / head's maximum",
        )

    def figure_masks(self, max_columns: int = 8) -> Figure:
        """Per head R, G, B masks keeping ``keep`` of the attention mass, over the frames."""

        cols = self._strip_columns(max_columns)
        rows = [[self.mask_overlays(head)[c] for c in cols] for head in self.config.heads]
        return plot_grid(
            rows,
            row_titles=[f"head {h}, {self.config.keep:.0%} mass" for h in self.config.heads],
            col_titles=[self._titles()[c] for c in cols],
            suptitle=self._suptitle("attention masks"),
        )

    def figure_segments(self, max_columns: int = 8) -> Figure:
        """k-means per frame (labels matched over time) and over the whole clip, plus PCA RGB."""

        cols = self._strip_columns(max_columns)
        per_frame = self.segment_overlays("frame")
        per_clip = self.segment_overlays("clip")
        if self.patch_stride == self.patch_size:
            pca = features_to_rgb(self.features, size=self.size, patch_size=self.patch_size)
        else:  # overlapping patches: the grid's colours mapped to pixels by labkit.geometry
            grid = torch.from_numpy(features_to_rgb(self.features)).permute(0, 3, 1, 2)
            pca = self._on_pixels(grid)[0].permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)
        pca_full = [pca[c] for c in cols]
        k, facet = self.config.k, self.config.facet
        return plot_grid(
            [[per_frame[c] for c in cols], [per_clip[c] for c in cols], pca_full],
            row_titles=[
                f"k-means per frame (k={k})",
                f"k-means per clip (k={k})",
                f"PCA of the {facet}",
            ],
            col_titles=[self._titles()[c] for c in cols],
            suptitle=self._suptitle(
                f"segments of {block_words(self.config.layer)}'s {facet}, {self._input_words()}"
            ),
        )

    # ---- one image per head (DINO's visualize_attention.py) ------------------------------
    def head_maps(self, frame: int | None = None, mode: Upsampling = "nearest") -> np.ndarray:
        """Every head's [CLS] attention over one frame and their mean, at frame resolution.

        Args:
            frame: position in the clip; default ``config.head_frame``.
            mode: ``"nearest"`` (each patch paints its pixels, as DINO) or ``"bilinear"``.

        Returns:
            float32 (h + 1, H, W), heads then their mean, values in [0, 1]
            (:func:`labkit.viz.heads.head_maps`).
        """
        t = self.config.head_frame if frame is None else int(frame)
        return head_maps(
            self.attention[t],
            self.size,
            patch_size=self.patch_size,
            stride=self.patch_stride,
            mode=mode,
        )

    def _head_title(self, frame: int, what: str) -> str:
        return "\n".join(
            [
                f"{what}, {block_words(self.config.layer)}, frame {int(self.indices[frame])}",
                self.weights or self.config.model,
                self._input_words(),
            ]
        )

    def figure_head_maps(
        self, frame: int | None = None, scale: str = "shared", mode: Upsampling = "nearest"
    ) -> Figure:
        """The frame, every head's [CLS] attention and their mean, with a colour bar.

        Titled with the weights, the block, the input size and the grid (e.g. 60x60 for ViT-S/8
        at 480 x 480). ``scale="shared"``: one colour bar over the range of all the maps;
        ``"own"``: each panel its own (:func:`labkit.viz.heads.plot_head_maps`).
        """
        t = self.config.head_frame if frame is None else int(frame)
        return plot_head_maps(
            self.frames[t],
            self.head_maps(t, mode),
            title=self._head_title(t, "[CLS] attention of every head and their mean"),
            scale=scale,  # type: ignore[arg-type]
        )

    def head_figures(
        self, frame: int | None = None, mode: Upsampling = "nearest"
    ) -> dict[str, Figure]:
        """One Figure per head (``head_00`` ...) and ``head_mean``, on one shared colour scale.

        Returns:
            ``{"head_00": Figure, ..., "head_mean": Figure}``, each map alone with a colour bar
            from the smallest to the largest value of all of them (one scale for every file),
            titled like :meth:`figure_head_maps`.
        """
        t = self.config.head_frame if frame is None else int(frame)
        maps = self.head_maps(t, mode)
        vmin, vmax = head_scale(maps, "shared")
        h = maps.shape[0] - 1
        out = {}
        for i, heat in enumerate(maps):
            name, what = (
                (f"head_{i:02d}", f"head {i}") if i < h else ("head_mean", f"mean of {h} heads")
            )
            out[name] = plot_head_map(
                heat,
                title=self._head_title(t, f"[CLS] attention, {what}"),
                label=f"{what} (scale shared by all heads)",
                vmin=vmin,
                vmax=vmax,
            )
        return out

    def comparison(self, models: Any = None, **kwargs: Any) -> ModelComparison:
        """The clip's frames under several models, one row each, same block, heads and k.

        Args:
            models: model specs, backbones or ``(label, backbone)`` pairs
                (:class:`labkit.viz.comparison.ModelComparison`); default ``config.compare_models``.
            kwargs: passed on to ``ModelComparison`` (e.g. ``panels="all"``).

        Returns:
            :class:`labkit.viz.comparison.ModelComparison` over this exploration's frames.
        """

        cfg = self.config
        models = list(cfg.compare_models if models is None else models)
        if not models:
            raise ValueError("comparison: no models (set compare_models)")
        options = dict(
            indices=[int(i) for i in self.indices],
            model_kwargs=cfg.model_kwargs,
            pos_embed_rule=cfg.pos_embed_rule,
            layer=cfg.layer,
            heads=cfg.heads,
            k=cfg.k,
            device=cfg.device,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            name=Path(self.video_info["path"]).name if self.video_info.get("path") else None,
        )
        return ModelComparison(self.frames, models, **{**options, **kwargs})

    def artifact_frame(self) -> int:
        """Position in the clip of the frame with the most outlier patches at the last block."""
        if self.artifacts is None:
            raise ValueError("this exploration has no artifacts (explore computes them)")
        return int(self.artifacts.outliers[:, -1].flatten(1).sum(-1).argmax())

    def figure_artifacts(self, frame: int | None = None, max_layers: int = 8) -> Figure:
        """High-norm artifact tokens (Darcet et al.): norm maps per block for one frame with the
        outliers outlined, the outlier fraction and the [CLS] attention on outliers (and on the
        registers) per block, the registers' own attention
        (:func:`labkit.viz.artifacts.plot_artifacts`).

        Args:
            frame: position in the clip; default :meth:`artifact_frame`, a frame with outliers.
            max_layers: most norm maps shown.
        """

        if self.artifacts is None:  # e.g. a strided exploration
            raise ValueError("this exploration has no artifacts (explore computes them)")
        frame = self.artifact_frame() if frame is None else int(frame)
        return plot_artifacts(
            self.artifacts,
            self.frames,
            self.patch_size,
            frame=frame,
            max_layers=max_layers,
            frame_label=f"frame {self.indices[frame]}",
            title=self._suptitle("high-norm tokens, [CLS] and register attention"),
            register_layer=self.config.layer % self.artifacts.norms.shape[1],
        )

    def artifact_metrics(self) -> dict[str, Any]:
        """Per block, over the clip: outlier fraction, [CLS] share on outliers and on registers."""
        art = self.artifacts
        if art is None:
            return {}
        flat = art.norms.flatten(2)  # (T, L, P)
        ratio = flat.max(-1).values / flat.median(-1).values.clamp_min(1e-12)  # (T, L)
        register = art.cls_register_mass

        def rounded(values: torch.Tensor) -> list[float]:
            return [round(float(v), 5) for v in values]

        return {
            "outlier_rule": f"patch-token norm at a block's output (before the final norm) > "
            f"{art.factor:g} x the median patch norm of the same frame and block",
            "num_registers": int(art.num_registers),
            "outlier_fraction_per_layer": rounded(art.outlier_fraction().mean(0)),
            "cls_outlier_mass_per_layer": rounded(art.cls_outlier_mass.mean((0, 2))),
            "cls_register_mass_per_layer": None
            if register is None
            else rounded(register.mean((0, 2))),
            "max_over_median_norm_per_layer": rounded(ratio.mean(0)),
            "median_norm_per_layer": rounded(flat.median(-1).values.mean(0)),
        }

    # ---- numbers --------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """Plain numbers describing the clip's attention and segments (JSON-serialisable)."""
        attn = self.attention.flatten(2)  # (T, h, P)
        p = attn / attn.sum(-1, keepdim=True).clamp_min(1e-12)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)  # (T, h) nats
        seg = self.segments_frame
        persistence = (seg[1:] == seg[:-1]).float().mean().item() if len(seg) > 1 else 1.0
        seg_c = self.segments_clip
        persistence_clip = (
            (seg_c[1:] == seg_c[:-1]).float().mean().item() if len(seg_c) > 1 else 1.0
        )
        cfg = self.config
        return {
            "model": cfg.model,
            "checkpoint": cfg.checkpoint or None,
            "weights": self.weights,
            "pos_embed_rule": cfg.pos_embed_rule if self.model is None else model_rule(self.model),
            "video": self.video_info,
            "frames": [int(i) for i in self.indices],
            "num_frames": int(len(self.indices)),
            "frame_size": list(self.size),
            "grid": [int(self.attention.shape[-2]), int(self.attention.shape[-1])],
            "num_heads": int(self.attention.shape[1]),
            "layer": cfg.layer,
            "heads": list(cfg.heads),
            "k": cfg.k,
            "facet": cfg.facet,
            "patch_size": int(self.patch_size),
            "stride": int(self.patch_stride),
            "attention_entropy_nats": float(entropy.mean()),
            "attention_entropy_uniform_nats": float(np.log(attn.shape[-1])),
            "mask_patch_fraction": float(self.masks.float().mean()),
            "segment_persistence_frame": persistence,
            "segment_persistence_clip": persistence_clip,
            "artifacts": self.artifact_metrics(),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "frames_per_second": float(
                len(self.indices) / max(self.seconds.get("extract", 0.0), 1e-9)
            ),
        }


def explore(cfg: ExploreConfig, *, progress: bool = True) -> Exploration:
    """Read the clip, extract attention and features, threshold and cluster them.

    Args:
        cfg: the explorer's parameters.
        progress: show progress bars while frames go through the model.

    Returns:
        An :class:`Exploration` holding tensors on the CPU.
    """
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    path = Path(cfg.video_path) if cfg.video_path else default_video()
    model = load_backbone(
        cfg.model,
        checkpoint=cfg.checkpoint or None,
        pretrained=cfg.pretrained,
        device=cfg.device,
        pos_embed_rule=cfg.pos_embed_rule,
        seed=cfg.seed,
        **cfg.model_kwargs,
    )
    set_stride(model, cfg.stride or None)  # 0: the patch size, the model as built
    blocks: Any = model.blocks  # timm's Blocks (untyped on nn.Module)
    num_heads = blocks[0].attn.num_heads
    if max(cfg.heads) >= num_heads:
        raise ValueError(f"heads {cfg.heads} out of range: {cfg.model} has {num_heads} heads")
    depth = len(blocks)
    if not -depth <= cfg.layer < depth:
        raise ValueError(f"layer {cfg.layer} out of range: {cfg.model} has {depth} blocks")
    seconds["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with open_video(path, size=cfg.img_size) as video:
        indices = clip_indices_for(len(video), cfg.num_frames, cfg.start_frame, cfg.frame_step)
        frames = video.get(indices)
        info = {
            "path": str(path),
            "backend": video.backend,
            "fps": float(video.fps),
            "length": len(video),
            "source_size": list(video.source_size),
        }
        source_size = tuple(int(v) for v in video.source_size)
    display = None  # the frames at the animation's size, where that is not the model's
    want = cfg.animation_size or min(source_size)
    if want != min(frames.shape[1:3]):
        with open_video(path, size=cfg.animation_size or None) as video:
            display = video.get(indices)
    seconds["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = extract_video(
        model,
        frames,
        layer=cfg.layer,
        attention=True,
        # one pass: the block runs whole anyway; values only where they are the facet
        kinds=("tokens", "keys", "queries") + (("values",) if cfg.facet == "values" else ()),
        batch_size=cfg.batch_size,
        device=cfg.device,
        progress=progress,
    )  # on the CPU: attention (T, h, gh, gw), features (T, gh, gw, D)
    if out.attention is None:  # pragma: no cover - attention=True computes it
        raise ValueError("explore: the extraction returned no [CLS] attention")
    attention = out.attention.float()
    features = out.features[cfg.facet].float()  # what the segments and the PCA are made of
    queries = out.features["queries"][0].float().clone()  # (gh, gw, D), the first frame
    seconds["extract"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stride = patch_stride(model)
    artifacts = None  # drawn on the patch grid of the model as built: not with another stride
    if stride == patch_size(model):
        artifacts = Artifacts.concat(
            [
                token_artifacts(model, images, register_layers=(cfg.layer,)).cpu()
                for _, _, images in image_batches(
                    model, frames, batch_size=cfg.batch_size, device=cfg.device
                )
            ]
        )  # every block's norms in one more pass per batch
    seconds["artifacts"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    masks = mass_threshold(attention, keep=cfg.keep)
    seg_frame = kmeans_segments(features, cfg.k, mode="frame", seed=cfg.seed).labels
    seg_clip = kmeans_segments(features, cfg.k, mode="clip", seed=cfg.seed).labels
    seconds["cluster"] = time.perf_counter() - t0

    return Exploration(
        config=cfg,
        indices=indices,
        frames=frames,
        attention=attention,
        features=features,
        masks=masks,
        segments_frame=seg_frame,
        segments_clip=seg_clip,
        patch_size=patch_size(model),
        keys=out.features["keys"].float(),
        queries=queries,
        model=model,
        video_info=info,
        seconds=seconds,
        weights=weights_label(model),
        artifacts=artifacts,
        stride=stride,
        display_frames=display,
    )


def save_exploration(
    exp: Exploration,
    out_dir: str | Path,
    *,
    figures: bool = True,
    fps: float | None = None,
    comparison: ModelComparison | None = None,
    head_images: bool | None = None,
) -> dict[str, Path]:
    """Write the figures (PNG), the animation (GIF and MP4) and ``metrics.json`` into ``out_dir``.

    The animation runs at ``fps``, default :meth:`Exploration.animation_fps` (the source's speed
    unless ``config.animation_fps`` is set), its panels at the animation's size
    (:meth:`Exploration.animation_frames`). With ``head_images`` (default
    ``config.head_images``): ``head_00.png ... head_mean.png`` (each head's [CLS] attention over
    frame ``config.head_frame`` and their mean, one shared colour scale) and ``heads_grid.png``
    (all of them with the frame, :meth:`Exploration.figure_head_maps`).

    With a ``comparison`` (:meth:`Exploration.comparison`) also ``comparison.png`` (its current
    state), and ``metrics.json`` gets ``"comparison"``: per model label, its weights and artifact
    numbers per block.

    Returns:
        Mapping of what was written to its path.
    """

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if figures:
        for name, fig in (
            ("heads", exp.figure_heads()),
            ("all_heads", exp.figure_all_heads()),
            ("masks", exp.figure_masks()),
            ("segments", exp.figure_segments()),
            *((("artifacts", exp.figure_artifacts()),) if exp.artifacts is not None else ()),
        ):
            path = out / f"{name}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            written[name] = path
    if exp.config.head_images if head_images is None else head_images:
        figs = {**exp.head_figures(), "heads_grid": exp.figure_head_maps()}
        for name, fig in figs.items():  # Figures without pyplot: nothing to close
            path = out / f"{name}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            written[name] = path
    fps = exp.animation_fps() if fps is None else fps
    anim = exp.animation_frames(labels=True)  # what each panel is, frame number, weights
    written["animation_gif"] = write_animation(anim, out / "attention.gif", fps=fps)
    written["animation_mp4"] = write_animation(anim, out / "attention.mp4", fps=fps)
    metrics = exp.metrics()
    if comparison is not None:
        written["comparison"] = comparison.save_png(out / "comparison.png")
        metrics["comparison"] = comparison.metrics()
    metrics["config"] = {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(exp.config).items()
    }
    path = out / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2))
    written["metrics"] = path
    return written
