"""An ipywidgets explorer over one clip: scrub frames, switch layer, heads, Sinkhorn-Knopp and k.

Four panels per frame, side by side::

    frame | three [CLS] heads as R, G, B | DoRA's three objects as R, G, B | k-means segments

DoRA's objects (:mod:`labkit.tracking`): the three heads shown as R, G, B seed three object
prototypes on the clip's *first* frame (``discover_objects``, Sinkhorn-Knopp on or off), which
are tracked through the clip (``track_objects``); each object's map is drawn in its colour
(:func:`labkit.viz.palette.object_colours`: the channel of the head that seeded it), min-max
scaled within each frame on its own (:func:`labkit.viz.dora.objects_to_rgb`), so each object
is visible in every frame. The status line gives, for the shown frame, the objects' shares
(fraction of patches where each object's map is the largest) and their overlap
(:func:`labkit.tracking.object_shares`) with Sinkhorn-Knopp on and off. Everything uses the
chosen block's attention, queries, keys and tokens (DoRA itself uses the last block,
``layer=-1``).

Caching, so that scrubbing is instant:

* per layer, one batched pass over the clip extracts [CLS] attention, tokens and keys for every
  frame (progress bar while it fills); per (layer, k) one clip-level k-means; per (layer, heads,
  Sinkhorn) one discovery and tracking, and the colour grids of every frame at once;
* per panel and state key (frame and the controls that panel depends on), the rendered panel's
  encoded bytes (JPEG by default, Pillow), in an LRU bounded by ``cache_mb``. Moving the frame
  slider over computed layers costs one nearest-neighbour upsample and blend per panel, or a
  dictionary look-up once the frame was shown; no matplotlib in that path
  (``bench/explorer.py`` measures it).

Facets and similarity: the k-means segments (and :meth:`embedding_view`) use the chosen facet of
the block (``"tokens"``, ``"keys"``, ``"queries"`` or ``"values"``, dino-vit-features' facets,
all through :func:`labkit.attention.extract_video`). A click on a patch of any panel picks it;
the app then shows its cosine similarity with every patch of the clip
(:func:`labkit.embedding.patch_similarity`): a heat map over the shown frame with a colour bar,
and a strip of frames spread over the clip on the same scale (:mod:`labkit.viz.similarity`).
``"similarity"`` is also a panel (:data:`ALL_PANELS`) for static figures.

In the live app (:meth:`show` in JupyterLab) everything heavy, a block's pass over the clip, a
facet's pass, a clip k-means, the token norms, runs in one background thread: :meth:`show`
returns at once (the notebook's next cells run), panels whose data is there are drawn at once,
the others show a grey placeholder saying what is being computed and how far ("computing layer
7: 40/100 frames"), the status line and progress bar say the same, and the newest state wins
(moving k from 5 to 8 key by key computes one k-means, for 8; a layer pass that a newer layer
choice makes stale stops at its next batch). Methods called from code (:meth:`render`,
:meth:`layer_data` ...) wait for the background work they need, then compute in the caller.

Outside a live JupyterLab front end (papermill, nbconvert, ``LABKIT_HEADLESS=1``) :meth:`show`
renders the current state as a static figure, so an executed notebook shows something useful;
everything is computed in the foreground there, as with :meth:`widget` alone.

Notation: T frames, h heads, gh x gw patch grid, D channels, H x W frame pixels, p patch size.
"""

from __future__ import annotations

import html
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import numpy as np
import torch

from labkit.artifacts import token_artifacts
from labkit.attention import FEATURE_KINDS, FeatureKind, extract_video, image_batches
from labkit.clustering import kmeans_segments
from labkit.data import default_video
from labkit.embedding import patch_similarity
from labkit.environment import is_headless
from labkit.geometry import pixel_to_patch, upsample_grid
from labkit.models import load_backbone, patch_size, weights_label
from labkit.pos_embed import PosEmbedRule
from labkit.tracking import discover_objects, object_shares, track_objects
from labkit.validation import resolve_device
from labkit.video import Video, clip_indices, open_video
from labkit.viz.artifacts import norms_to_rgb, outline_patches
from labkit.viz.dora import objects_to_rgb
from labkit.viz.embedding import EmbeddingView
from labkit.viz.encode import encode_image
from labkit.viz.plot import plot_grid, plot_strip
from labkit.viz.render import caption, heads_to_rgb, palette
from labkit.viz.similarity import (
    colour_bar,
    placeholder,
    similarity_overlay,
    similarity_strip,
    strip_frames,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "AttentionExplorer",
    "ArtifactData",
    "ExplorerState",
    "LayerData",
    "PANELS",
    "ALL_PANELS",
]

PANELS: tuple[str, ...] = ("frame", "heads", "objects", "segments")  # the default panels
# every panel: also the token norms of the block with high-norm outliers outlined
# (labkit.artifacts), the register tokens' own attention (models with registers), and the
# clicked patch's similarity
ALL_PANELS: tuple[str, ...] = (*PANELS, "artifacts", "registers", "similarity")
_TITLES = {
    "frame": "frame",
    "heads": "[CLS] heads as R, G, B",
    "objects": "DoRA objects as R, G, B",
    "segments": "k-means segments",
    "artifacts": "token norms, outliers in cyan",
    "registers": "registers' attention",
    "similarity": "similarity to the clicked patch",
}
_STRIP_FRAMES = 10  # frames in the app's similarity strip (plus the clicked and the shown one)


@dataclass(frozen=True)
class ExplorerState:
    """What the explorer shows."""

    frame: int = 0  # position in the clip (not the video's frame number)
    layer: int = -1  # block; normalised to 0..depth-1 by the explorer
    heads: tuple[int, int, int] = (0, 1, 2)  # heads drawn as R, G, B; they also seed DoRA's objects
    k: int = 5  # k-means segments
    alpha: float = 0.5  # opacity of the maps over the frame (1: the maps alone)
    sinkhorn: bool = True  # DoRA's discovery refined with Sinkhorn-Knopp (else a row softmax)
    facet: FeatureKind = (
        "tokens"  # features of k-means and similarity: tokens, keys, queries, values
    )
    patch: tuple[int, int, int] | None = None  # clicked patch (t, i, j) for the similarity map


class LayerData(NamedTuple):
    """What one block gives for the whole clip (CPU)."""

    attention: torch.Tensor  # (T, h, gh, gw) float32 [CLS] attention over the patches
    tokens: torch.Tensor  # (T, gh, gw, D) float32 output tokens (final norm applied)
    keys: torch.Tensor | None  # (T, gh, gw, D) float32 keys, heads concatenated; None until needed
    queries: torch.Tensor | None  # (gh, gw, D) float32 queries of the clip's first frame


class ArtifactData(NamedTuple):
    """Token norms and outliers of every block for the whole clip (CPU), from one pass per batch."""

    norms: torch.Tensor  # (T, L, gh, gw) float32 patch-token norms at each block's output
    outliers: torch.Tensor  # (T, L, gh, gw) bool, norm > factor x the median (labkit.artifacts)
    cls_outlier_mass: (
        torch.Tensor
    )  # (T, L) float32 [CLS] patch-attention share on outliers, mean over heads
    cls_register_mass: torch.Tensor | None  # (T, L) float32 [CLS] share on the registers, or None
    register_maps: (
        torch.Tensor | None
    )  # (T, L, G, gh, gw) float32 registers' attention, mean over heads
    factor: float  # the outlier rule's multiple of the median


class _Stale(Exception):
    """Raised in the worker's progress callback when a newer state made its pass useless."""


class _BytesLRU:
    """Encoded panels by state key, least recently used dropped past ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.items: OrderedDict[tuple, bytes] = OrderedDict()

    def get(self, key: tuple) -> bytes | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: tuple, value: bytes) -> None:
        if key in self.items:
            self.size -= len(self.items.pop(key))
        self.items[key] = value
        self.size += len(value)
        while self.size > self.limit and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.size -= len(old)


def _blend_grid(frame: np.ndarray, grid: np.ndarray, alpha: float, p: int) -> np.ndarray:
    """Blend a uint8 (gh, gw, 3) colour grid over a uint8 (H, W, 3) frame: uint8 (H, W, 3).

    Patch (i, j) covers pixels [i*p:(i+1)*p, j*p:(j+1)*p]; the strip right and below the grid
    repeats the edge colours (labkit.geometry's border rule), and the blend is render.overlay's:
    rint((1 - a) f + a c) in float32.
    """
    height, width = frame.shape[:2]
    colour = upsample_grid(np.moveaxis(grid, -1, 0), (height, width), patch_size=p)  # (3, H, W)
    colour = np.moveaxis(colour, 0, -1)  # (H, W, 3)
    out = frame.astype(np.float32)
    out *= np.float32(1.0 - alpha)
    out += np.float32(alpha) * colour.astype(np.float32)
    np.rint(out, out=out)
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def _load_clip(
    video: Any,
    indices: Sequence[int] | None,
    start_frame: int,
    num_frames: int,
    frame_step: int,
    img_size: int | tuple[int, int] | None,
) -> tuple[np.ndarray, list[int], str]:
    """Frames (T, H, W, 3) uint8, their numbers in the video, and a name for titles."""

    if isinstance(video, np.ndarray):
        frames = video
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}"
            )
        numbers = list(range(len(frames))) if indices is None else [int(i) for i in indices]
        if len(numbers) != len(frames):
            raise ValueError(f"indices: {len(numbers)} numbers for {len(frames)} frames")
        return frames, numbers, "frames"

    def read(v: Video) -> tuple[np.ndarray, list[int]]:
        idx = (
            np.asarray(indices, dtype=np.int64)
            if indices is not None
            else clip_indices(len(v), num_frames, start_frame, frame_step)
        )
        return v.get(idx), [int(i) for i in idx]

    if isinstance(video, Video):
        frames, numbers = read(video)
        return frames, numbers, Path(video.path).name
    if video is None or str(video) == "":
        video = default_video()
    path = Path(video)
    if not path.exists():
        raise ValueError(f"video {str(video)!r} does not exist")
    with open_video(path, size=img_size) as v:
        frames, numbers = read(v)
    return frames, numbers, path.name


def _shared_controls(
    w: Any, s: ExplorerState, *, last_frame: int, num_heads: int, interval: int
) -> dict[str, Any]:
    """The controls the explorer and the comparison share: a frame slider linked to a play
    button (``interval`` ms a frame), R, G, B head pickers, Sinkhorn-Knopp, k, opacity, a
    progress bar and its label. ``w`` is the ipywidgets module."""
    ui: dict[str, Any] = {
        "frame": w.IntSlider(
            value=s.frame,
            min=0,
            max=last_frame,
            description="frame",
            continuous_update=True,
            layout=w.Layout(width="420px"),
        ),
        "play": w.Play(value=s.frame, min=0, max=last_frame, interval=interval, description="play"),
        "heads": [
            w.Dropdown(
                options=list(range(num_heads)),
                value=h,
                description=c,
                layout=w.Layout(width="120px"),
                style={"description_width": "20px"},
            )
            for h, c in zip(s.heads, ("R", "G", "B"))
        ],
        "sinkhorn": w.Checkbox(
            value=s.sinkhorn,
            description="Sinkhorn-Knopp",
            indent=False,
            layout=w.Layout(width="140px"),
        ),
        "k": w.IntSlider(
            value=s.k,
            min=2,
            max=20,
            description="k",
            continuous_update=False,  # on release; a burst of key presses: the last counts
            layout=w.Layout(width="260px"),
        ),
        "alpha": w.FloatSlider(
            value=s.alpha,
            min=0.0,
            max=1.0,
            step=0.05,
            description="opacity",
            layout=w.Layout(width="280px"),
        ),
        "progress": w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="300px")),
        "busy": w.Label(""),
    }
    w.jslink((ui["play"], "value"), (ui["frame"], "value"))
    return ui


def _state_controls(ui: dict[str, Any]) -> list[Any]:
    """The shared controls whose values make an :class:`ExplorerState` (with the layer's)."""
    return [ui["frame"], ui["layer"], ui["k"], ui["alpha"], ui["sinkhorn"], *ui["heads"]]


def _state_of(ui: dict[str, Any], **extra: Any) -> ExplorerState:
    """The state the shared controls and the layer's dropdown show, with ``extra`` fields."""
    return ExplorerState(
        frame=ui["frame"].value,
        layer=ui["layer"].value,
        heads=tuple(h.value for h in ui["heads"]),
        k=ui["k"].value,
        alpha=ui["alpha"].value,
        sinkhorn=ui["sinkhorn"].value,
        **extra,
    )


class AttentionExplorer:
    """Interactive per-head attention, DoRA objects and k-means segments of one clip.

    Args:
        video: a :class:`labkit.video.Video`, a path to an mp4 or frame folder (``""``/None: the
            lab's synthetic default video), or uint8 frames (T, H, W, 3) already at model size.
        model: a backbone from :func:`labkit.models.load_backbone`, or a timm name to load.
        start_frame, num_frames, frame_step: the clip, as in :func:`labkit.video.clip_indices`
            (``frame_step=0`` spreads the frames over the whole video); ignored for frames.
        indices: explicit frame numbers of the clip in the video (overrides the three above); for
            frames given as an array, their numbers for titles (default 0..T-1).
        img_size: shorter side of the frames read from a path (aspect kept); a Video is read at
            its own size.
        checkpoint, pretrained, pos_embed_rule, model_kwargs: passed to ``load_backbone`` when
            ``model`` is a name (``pretrained="auto"``: a tagged name's weights if cached).
        layer, heads, k, alpha, sinkhorn, facet: the initial state (see :class:`ExplorerState`).
        patch: a patch (t, i, j) whose similarity map is shown first (default: none until a click).
        device: where the model runs.
        batch_size: frames per forward pass while the cache fills.
        seed: k-means and embedding seed, and the seed of the random weights of a model given by
            name without a checkpoint (the global torch RNG is left as it was).
        progress: a progress bar while a layer is extracted (tqdm outside the app).
        image_format: how the app sends panels to the browser, ``"jpeg"`` (smaller, faster) or
            ``"png"`` (lossless).
        cache_mb: memory for encoded panels.
        panel_width: width in screen pixels of one panel in the app (default: the frame's width,
            at least 256).
        panels: the panels shown, in order, from :data:`ALL_PANELS` (default :data:`PANELS`);
            ``"all"``: every panel the model has (``"registers"`` only with register tokens),
            except ``"similarity"`` (the clicked patch's map over the shown frame: by name).
            ``"artifacts"``: the patch-token norms of the block at the current frame (magma from
            the frame's smallest norm to 3x its median, over the frame at the opacity) with the
            high-norm outliers outlined in cyan (:func:`labkit.artifacts.outlier_mask`);
            ``"registers"``: each register token's
            attention over the patches (mean over heads, white), tiled; the title line gives the
            outlier count and the [CLS] attention on the outliers and on the registers.
    """

    def __init__(
        self,
        video: Any,
        model: torch.nn.Module | str,
        *,
        start_frame: int = 0,
        num_frames: int = 100,
        frame_step: int = 1,
        indices: Sequence[int] | None = None,
        img_size: int | tuple[int, int] | None = 224,
        checkpoint: str | Path | None = None,
        pretrained: bool | Literal["auto"] | None = "auto",
        pos_embed_rule: PosEmbedRule = "auto",
        model_kwargs: dict[str, Any] | None = None,
        layer: int = -1,
        heads: Sequence[int] = (0, 1, 2),
        k: int = 5,
        alpha: float = 0.5,
        sinkhorn: bool = True,
        facet: FeatureKind = "tokens",
        patch: Sequence[int] | None = None,
        device: str | torch.device = "auto",
        batch_size: int = 8,
        seed: int = 0,
        progress: bool = True,
        image_format: Literal["jpeg", "png"] = "jpeg",
        cache_mb: float = 256.0,
        panel_width: int | None = None,
        panels: Sequence[str] | Literal["all"] = PANELS,
    ) -> None:
        if isinstance(model, str):  # random weights: the same for the same seed
            model = load_backbone(
                model,
                checkpoint=checkpoint or None,
                pretrained=pretrained,
                device=device,
                pos_embed_rule=pos_embed_rule,
                seed=int(seed),
                **(model_kwargs or {}),
            )
        if not hasattr(model, "blocks"):
            raise ValueError(
                "model must be a timm ViT (from labkit.models.load_backbone), got "
                f"{type(model).__name__}"
            )
        if image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
        frames, numbers, name = _load_clip(
            video, indices, start_frame, num_frames, frame_step, img_size
        )
        if len(frames) < 1:
            raise ValueError("the clip has no frames")
        self.frames = np.ascontiguousarray(frames)
        self.indices = numbers
        self.name = name
        self.model = model
        self.weights = weights_label(model)  # said in every title
        blocks: Any = model.blocks  # timm's Blocks (untyped on nn.Module)
        self.depth = len(blocks)
        self.num_heads = int(blocks[0].attn.num_heads)
        self.patch_size = patch_size(model)
        height, width = self.frames.shape[1:3]
        if height < self.patch_size or width < self.patch_size:
            raise ValueError(
                f"frames {height}x{width} are smaller than one {self.patch_size}-pixel patch"
            )
        self.grid = (height // self.patch_size, width // self.patch_size)
        self.device = resolve_device(device)  # "auto": CUDA when available, else the CPU
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.progress = progress
        self.image_format = image_format
        self.panel_width = int(panel_width) if panel_width else max(width, 256)
        self.num_registers = int(getattr(model, "num_reg_tokens", 0) or 0)
        if isinstance(panels, str):
            if panels != "all":
                raise ValueError(f"panels must be a list of panel names or 'all', got {panels!r}")
            # "similarity" needs a clicked patch: named, not part of "all"
            panels = [
                p
                for p in ALL_PANELS
                if p != "similarity" and (p != "registers" or self.num_registers)
            ]
        self.panels: tuple[str, ...] = tuple(panels)
        bad = [p for p in self.panels if p not in ALL_PANELS]
        if bad or not self.panels or len(set(self.panels)) != len(self.panels):
            raise ValueError(
                f"panels must be distinct names from {ALL_PANELS}, got {list(self.panels)}"
            )
        self._layers: dict[int, LayerData] = {}
        self._artifacts: ArtifactData | None = None
        self._facets: dict[tuple[int, str], torch.Tensor] = {}  # queries, values: (T, gh, gw, D)
        self._similarity: dict[tuple, np.ndarray] = {}  # (layer, facet, patch) -> (T, gh, gw)
        self._segments: dict[tuple[int, int, str], np.ndarray] = {}  # (layer, k, facet)
        self._head_rgb: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
        self._objects: dict[tuple[int, tuple[int, ...], bool], np.ndarray] = {}
        self._object_rgb: dict[tuple[int, tuple[int, ...], bool], np.ndarray] = {}
        self._encoded = _BytesLRU(int(cache_mb * 2**20))
        self._on_progress: Callable[[int, int, str], None] | None = None
        self._ui: dict[str, Any] = {}
        self._views: list[EmbeddingView] = []
        self.last_update_ms: float | None = None
        # background work in the live app (show() turns it on; see the module docstring)
        self.background = False
        self._lock = threading.RLock()  # one heavy computation at a time, in any thread
        self._show_lock = threading.Lock()  # one thread at a time sets the app's pictures
        self._wake = threading.Condition()
        self._wanted: ExplorerState | None = None  # the newest state the worker should compute
        self._worker: threading.Thread | None = None
        self._busy = ""  # what the worker computes now, for placeholders
        self._busy_shown = 0.0
        self.state = self._validated(
            ExplorerState(
                frame=0,
                layer=layer,
                heads=cast("tuple[int, int, int]", tuple(heads)),  # three: _validated checks
                k=k,
                alpha=alpha,
                sinkhorn=bool(sinkhorn),
                facet=facet,
                patch=None if patch is None else tuple(int(v) for v in patch),  # type: ignore[arg-type]
            )
        )

    @classmethod
    def from_exploration(cls, exp: Any, **kwargs: Any) -> AttentionExplorer:
        """Reuse the frames, model and what :func:`labkit.explore.explore` computed for its
        layer.
        """
        cfg = exp.config
        explorer = cls(
            exp.frames,
            exp.model,
            indices=list(exp.indices),
            layer=cfg.layer,
            heads=cfg.heads,
            k=cfg.k,
            device=cfg.device,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            **kwargs,
        )
        layer = explorer.state.layer
        keys, queries = getattr(exp, "keys", None), getattr(exp, "queries", None)
        explorer._layers[layer] = LayerData(
            exp.attention.float(),
            exp.features.float(),
            None if keys is None else keys.float(),
            None if queries is None else queries.float(),
        )
        explorer._segments[(layer, cfg.k, "tokens")] = np.asarray(exp.segments_clip, dtype=np.int64)
        if getattr(exp, "video_info", {}).get("path"):
            explorer.name = Path(exp.video_info["path"]).name  # titles name the video, not "frames"
        return explorer

    # ---- state ----------------------------------------------------------------------------
    def _validated(self, state: ExplorerState) -> ExplorerState:
        if not -self.depth <= state.layer < self.depth:
            raise ValueError(f"layer {state.layer} out of range: the model has {self.depth} blocks")
        heads = tuple(int(h) for h in state.heads)
        if len(heads) != 3 or not all(0 <= h < self.num_heads for h in heads):
            raise ValueError(
                f"heads must be three indices in 0..{self.num_heads - 1}, got {state.heads}"
            )
        if not 0 <= state.frame < len(self.frames):
            raise ValueError(
                f"frame {state.frame} out of range: the clip has {len(self.frames)} frames"
            )
        patches = len(self.frames) * self.grid[0] * self.grid[1]
        if not 2 <= state.k <= patches:
            raise ValueError(f"k must be in 2..{patches} (patches of the clip), got {state.k}")
        if not 0.0 <= state.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {state.alpha}")
        if state.facet not in FEATURE_KINDS:
            raise ValueError(f"facet must be one of {FEATURE_KINDS}, got {state.facet!r}")
        patch = None if state.patch is None else tuple(int(v) for v in state.patch)
        if patch is not None and (
            len(patch) != 3
            or not 0 <= patch[0] < len(self.frames)
            or not 0 <= patch[1] < self.grid[0]
            or not 0 <= patch[2] < self.grid[1]
        ):
            raise ValueError(
                f"patch must be (t, i, j) in a {len(self.frames)}x{self.grid[0]}x{self.grid[1]} "
                f"clip, got {state.patch}"
            )
        return ExplorerState(
            int(state.frame),
            state.layer % self.depth,
            heads,
            int(state.k),
            float(state.alpha),
            bool(state.sinkhorn),
            state.facet,
            patch,
        )

    def set(self, **changes: Any) -> ExplorerState:
        """Change the state (``frame``, ``layer``, ``heads``, ``k``, ``alpha``, ``sinkhorn``,
        ``facet``, ``patch``).

        Also moves the app's controls when it is built, so that it shows the new state.

        Returns:
            The new, validated state.
        """
        self.state = self._validated(replace(self.state, **changes))
        if self._ui:
            self._sync_controls()
            self._refresh()
        return self.state

    # ---- cached compute -------------------------------------------------------------------
    def _report(self, done: int, total: int, what: str) -> None:
        if self._on_progress is not None:
            self._on_progress(done, total, what)

    def _extract(
        self, layer: int, kinds: tuple[str, ...], attention: bool
    ) -> dict[str, torch.Tensor]:
        """One batched pass over the clip (:func:`labkit.attention.extract_video`):
        {"attention"?, kind...} stacked on the CPU, float32."""
        what = f"extracting layer {layer}"
        out = extract_video(
            self.model,
            self.frames,
            layer=layer,
            attention=attention,
            kinds=kinds,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            device=self.device,
            # the app's status line when it listens, else a tqdm bar if asked
            progress=self.progress
            if self._on_progress is None
            else lambda done, total: self._report(done, total, what),
        )
        parts = dict(out.features)
        if attention:
            if out.attention is None:  # pragma: no cover - attention=True computes it
                raise ValueError("explorer: the extraction returned no [CLS] attention")
            parts["attention"] = out.attention
        return {name: value.float() for name, value in parts.items()}

    def layer_data(self, layer: int, *, keys: bool = True) -> LayerData:
        """Attention, tokens, keys (and the first frame's queries) of one block, cached.

        Args:
            layer: block index (negative counts from the end).
            keys: make sure keys and queries are there (DoRA needs them) when the layer was
                seeded without them (:meth:`from_exploration`); a fresh layer always has them.

        Returns:
            :class:`LayerData` for the whole clip.
        """
        layer = layer % self.depth
        data = self._layers.get(layer)
        if data is not None and (not keys or data.keys is not None):
            return data  # cached: no lock, so the app draws while the worker computes
        with self._lock:  # the background worker may be computing this very layer
            data = self._layers.get(layer)
            if data is None:  # one pass gives everything the panels need
                out = self._extract(layer, ("tokens", "keys", "queries"), attention=True)
                data = LayerData(
                    out["attention"], out["tokens"], out["keys"], out["queries"][0].clone()
                )
                self._layers[layer] = data
            elif keys and data.keys is None:  # seeded by from_exploration without keys
                out = self._extract(layer, ("keys", "queries"), attention=False)
                data = data._replace(keys=out["keys"], queries=out["queries"][0].clone())
                self._layers[layer] = data
        return data

    def features(self, layer: int, facet: FeatureKind = "tokens") -> torch.Tensor:
        """One facet of a block for the whole clip, cached.

        Tokens and keys come with the block's pass (:meth:`layer_data`); queries and values take
        a pass of their own (:func:`labkit.attention.extract_video`).

        Args:
            layer: block index (negative counts from the end).
            facet: ``"tokens"``, ``"keys"``, ``"queries"`` or ``"values"`` (heads concatenated).

        Returns:
            float32 (T, gh, gw, D) on the CPU.
        """
        if facet not in FEATURE_KINDS:
            raise ValueError(f"facet must be one of {FEATURE_KINDS}, got {facet!r}")
        layer = layer % self.depth
        if facet in ("tokens", "keys"):
            data = self.layer_data(layer, keys=facet == "keys")
            return data.tokens if facet == "tokens" else data.keys  # type: ignore[return-value]
        got = self._facets.get((layer, facet))
        if got is None:
            with self._lock:
                got = self._facets.get((layer, facet))
                if got is None:
                    got = self._extract(layer, (facet,), attention=False)[facet]
                    self._facets[(layer, facet)] = got
        return got

    def _has_features(self, layer: int, facet: str) -> bool:
        data = self._layers.get(layer)
        if facet == "tokens":
            return data is not None
        if facet == "keys":
            return data is not None and data.keys is not None
        return (layer, facet) in self._facets

    def similarity(self, layer: int, facet: FeatureKind, patch: Sequence[int]) -> np.ndarray:
        """Cosine similarity of one patch's facet with every patch of the clip, cached.

        Args:
            layer: block index.
            facet: as in :meth:`features`.
            patch: (t, i, j) position in the clip, row, column.

        Returns:
            float32 (T, gh, gw) in [-1, 1] (:func:`labkit.embedding.patch_similarity`).
        """
        t, i, j = (int(v) for v in patch)
        key = (layer % self.depth, facet, (t, i, j))
        got = self._similarity.get(key)
        if got is None:
            got = patch_similarity(self.features(layer, facet), t, i, j).numpy()
            if len(self._similarity) >= 64:  # clicks accumulate: keep the newest
                self._similarity.pop(next(iter(self._similarity)))
            self._similarity[key] = got
        return got

    def segments(self, layer: int, k: int, facet: FeatureKind = "tokens") -> np.ndarray:
        """One k-means over the whole clip's patch features (a facet, default the tokens):
        int64 (T, gh, gw), cached."""
        layer = layer % self.depth
        key = (layer, int(k), facet)
        if key not in self._segments:
            with self._lock:
                if key not in self._segments:
                    feats = self.features(layer, facet)
                    self._report(0, 1, f"k-means k={k} of the {facet}")
                    labels = kmeans_segments(feats, int(k), mode="clip", seed=self.seed).labels
                    self._segments[key] = labels.numpy().astype(np.int64)
                    self._report(1, 1, f"k-means k={k} of the {facet}")
        return self._segments[key]

    def objects(self, layer: int, heads: Sequence[int], sinkhorn: bool) -> np.ndarray:
        """DoRA's three objects: discovered on the first frame, tracked over the clip, cached.

        Args:
            layer: block whose attention, queries, tokens and keys are used.
            heads: the three heads whose [CLS] attention seeds the objects.
            sinkhorn: refine the discovery with Sinkhorn-Knopp (else a row softmax).

        Returns:
            float32 (T, 3, gh, gw) maps, each a softmax over the patches of its frame.
        """

        layer = layer % self.depth
        key = (layer, tuple(int(h) for h in heads), bool(sinkhorn))
        if key not in self._objects:
            data = self.layer_data(layer, keys=True)
            if data.keys is None or data.queries is None:  # pragma: no cover - keys=True
                raise ValueError("explorer: the block's keys and queries were not computed")
            found = discover_objects(
                data.attention[:1],
                data.queries[None],
                data.tokens[:1],
                k=3,
                heads=list(key[1]),
                sinkhorn=key[2],
            )  # reference: the clip's first frame
            tracks = track_objects(found.prototypes, data.keys[None])  # maps (1, T, 3, gh, gw)
            self._objects[key] = tracks.maps[0].numpy().astype(np.float32)
        return self._objects[key]

    def _heads_grid(self, layer: int, heads: tuple[int, ...]) -> np.ndarray:
        """uint8 (T, gh, gw, 3): each head min-max scaled per frame (DINO's picture)."""
        key = (layer, heads)
        if key not in self._head_rgb:
            attn = self.layer_data(layer, keys=False).attention
            self._head_rgb[key] = heads_to_rgb(attn, heads, norm="frame")
        return self._head_rgb[key]

    def _objects_grid(self, layer: int, heads: tuple[int, ...], sinkhorn: bool) -> np.ndarray:
        """uint8 (T, gh, gw, 3): each object's map min-max scaled within each frame, in its
        colour (:func:`labkit.viz.dora.objects_to_rgb`)."""
        key = (layer, heads, sinkhorn)
        if key not in self._object_rgb:
            maps = self.objects(layer, heads, sinkhorn)  # (T, 3, gh, gw)
            self._object_rgb[key] = objects_to_rgb(maps)  # (T, gh, gw, 3)
        return self._object_rgb[key]

    def objects_numbers(
        self, state: ExplorerState | None = None, sinkhorn: bool | None = None
    ) -> str:
        """DoRA's objects in the shown frame: ``"shares a/b/c, overlap x"`` (empty until computed).

        Shares: the fraction of the frame's patches where each object's map is the largest;
        overlap: sum over patches of min(a, b) of two objects' maps (each summing to 1), mean over
        the pairs (:func:`labkit.tracking.object_shares`). Reads the cache only, never computes.

        Args:
            state: the state (default: the current one).
            sinkhorn: the plan (default: the state's).
        """
        s = self.state if state is None else state
        use = s.sinkhorn if sinkhorn is None else sinkhorn
        maps = self._objects.get((s.layer % self.depth, tuple(int(h) for h in s.heads), bool(use)))
        if maps is None:
            return ""
        got = object_shares(torch.from_numpy(maps[s.frame]))  # of (3, gh, gw)
        shares = "/".join(f"{v:.2f}" for v in got.share.tolist())
        return f"shares {shares}, overlap {float(got.mean_overlap()):.2f}"

    def compute(self, state: ExplorerState | None = None) -> None:
        """Fill every cache the state needs (layer pass, k-means, DoRA), without rendering."""
        s = self.state if state is None else self._validated(state)
        self.layer_data(s.layer, keys=True)
        self.segments(s.layer, s.k, s.facet)
        if s.patch is not None:
            self.similarity(s.layer, s.facet, s.patch)
        self._heads_grid(s.layer, s.heads)
        self._objects_grid(s.layer, s.heads, s.sinkhorn)
        self.objects(s.layer, s.heads, not s.sinkhorn)  # the status line compares on and off
        if "artifacts" in self.panels or "registers" in self.panels:
            self.artifacts()

    # ---- render ---------------------------------------------------------------------------
    def _key(self, name: str, s: ExplorerState) -> tuple:
        if name == "frame":
            return ("frame", s.frame)
        if name == "heads":
            return ("heads", s.frame, s.layer, s.heads, s.alpha)
        if name == "objects":
            return ("objects", s.frame, s.layer, s.heads, s.sinkhorn, s.alpha)
        if name == "segments":
            return ("segments", s.frame, s.layer, s.k, s.facet, s.alpha)
        if name in ("artifacts", "registers"):
            return (name, s.frame, s.layer, s.alpha)
        if name == "similarity":
            return ("similarity", s.frame, s.layer, s.facet, s.patch, s.alpha)
        raise ValueError(f"panel must be one of {ALL_PANELS}, got {name!r}")

    def panel(self, name: str, state: ExplorerState | None = None) -> np.ndarray:
        """One panel of a state (default: the current one).

        The same pixels as :func:`labkit.viz.render.overlay` (heads, objects: their colour grids
        over the frame, nearest upsampling) and :func:`labkit.viz.render.segment_overlay`
        (segments), by a faster path: the uint8 grid is upsampled by repetition, then blended.

        Args:
            name: ``"frame"``, ``"heads"``, ``"objects"``, ``"segments"``, ``"artifacts"`` or
                ``"registers"`` (see the class docstring); any of them, shown or not.
            state: what to show.

        Returns:
            uint8 (H, W, 3).
        """
        s = self.state if state is None else self._validated(state)
        frame = self.frames[s.frame]
        if name == "frame":
            return frame.copy()
        if name == "artifacts":
            return self._artifact_panel(s)
        if name == "registers":
            return self._register_panel(s)
        if name == "similarity":
            return self._similarity_panel(s)
        if name == "heads":
            grid = self._heads_grid(s.layer, s.heads)[s.frame]  # (gh, gw, 3)
        elif name == "objects":
            grid = self._objects_grid(s.layer, s.heads, s.sinkhorn)[s.frame]
        elif name == "segments":
            grid = self._segment_grid(s.layer, s.k, s.facet)[s.frame]
        else:
            raise ValueError(f"panel must be one of {ALL_PANELS}, got {name!r}")
        return _blend_grid(frame, grid, s.alpha, self.patch_size)

    def _similarity_panel(self, s: ExplorerState) -> np.ndarray:
        """The clicked patch's similarity over the shown frame (inferno, the clip's lowest
        similarity .. 1), the patch outlined in cyan where it is in this frame; a caption gives
        the patch and the scale. Without a clicked patch: a placeholder saying to click one."""
        frame = self.frames[s.frame]
        if s.patch is None:
            return placeholder(frame.shape[:2], "click a patch of any panel:\nits similarity here")
        t, i, j = s.patch
        sims = self.similarity(s.layer, s.facet, s.patch)  # (T, gh, gw)
        vmin = float(sims.min())
        pic = similarity_overlay(
            frame,
            sims[s.frame],
            patch_size=self.patch_size,
            vmin=vmin,
            alpha=s.alpha,
            patch=(i, j) if t == s.frame else None,
        )
        return caption(pic, f"cosine to ({i},{j}) of frame {self.indices[t]}, {vmin:.2f}..1")

    def similarity_pictures(
        self, state: ExplorerState | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The app's similarity section for a state with a clicked patch.

        Returns:
            (the shown frame's heat map with a colour bar: uint8 (H, W + 72, 3); a strip of
            frames spread over the clip plus the clicked and the shown frame, on the same scale,
            with a colour bar: uint8 (rows h', ..., 3), see
            :func:`labkit.viz.similarity.similarity_strip`).
        """
        s = self.state if state is None else self._validated(state)
        if s.patch is None:
            raise ValueError("similarity_pictures: no patch clicked (state.patch is None)")
        sims = self.similarity(s.layer, s.facet, s.patch)
        vmin = float(sims.min())
        t = s.patch[0]
        panel = self._similarity_panel(s)
        head = np.concatenate([panel, colour_bar(len(panel), vmin, 1.0)], axis=1)
        shown = strip_frames(len(self.frames), _STRIP_FRAMES, include=(t, s.frame))
        labels = [f"frame {self.indices[k]}" + (" (clicked)" if k == t else "") for k in shown]
        strip = similarity_strip(
            self.frames[shown],
            sims[shown],
            labels,
            patch_size=self.patch_size,
            vmin=vmin,
            alpha=s.alpha,
            patch=s.patch,
            positions=shown,
            per_row=6,
        )
        return head, strip

    def _artifact_panel(self, s: ExplorerState) -> np.ndarray:
        """Token norms of block ``s.layer`` at frame ``s.frame`` over the frame, outliers
        outlined.
        """

        data = self.artifacts()
        norms = data.norms[s.frame, s.layer]  # (gh, gw)
        grid = norms_to_rgb(
            norms, vmax=data.factor * float(norms.flatten().median()), vmin=float(norms.min())
        )
        blended = _blend_grid(self.frames[s.frame], grid, s.alpha, self.patch_size)
        return outline_patches(blended, data.outliers[s.frame, s.layer], self.patch_size)

    def _register_panel(self, s: ExplorerState) -> np.ndarray:
        """Each register's attention at block ``s.layer`` (mean over heads, white), tiled over the
        panel: uint8 (H, W, 3); a model without registers gets the frame, darkened, saying so."""

        frame = self.frames[s.frame]
        maps = self.artifacts().register_maps
        if maps is None:
            return caption((frame * 0.3).astype(np.uint8), "no register tokens")
        from PIL import Image

        regs = maps[s.frame, s.layer]  # (G, gh, gw)
        g = regs.shape[0]
        cols = int(np.ceil(np.sqrt(g)))
        rows = int(np.ceil(g / cols))
        height, width = frame.shape[:2]
        tile_h, tile_w = height // rows, width // cols
        out = np.zeros_like(frame)
        for i in range(g):
            m = regs[i].numpy()
            lo, span = m.min(), m.max() - m.min()
            unit = (m - lo) / span if span > 0 else np.zeros_like(m)
            grid = np.repeat(
                np.rint(unit * 255).astype(np.uint8)[..., None], 3, axis=-1
            )  # (gh, gw, 3)
            full = _blend_grid(frame, grid, max(s.alpha, 0.5), self.patch_size)
            tile = np.asarray(
                Image.fromarray(full).resize((tile_w, tile_h), Image.Resampling.BILINEAR)
            )
            tile = caption(tile, f"register {i}")
            r, c = divmod(i, cols)
            out[r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w] = tile
        return out

    def artifacts(self) -> ArtifactData:
        """Token norms, outliers and [CLS]/register attention of every block for the clip, cached.

        One pass over all blocks per batch of frames (:func:`labkit.artifacts.token_artifacts`),
        register maps averaged over heads as they come.
        """
        if self._artifacts is not None:
            return self._artifacts
        with self._lock:
            if self._artifacts is None:
                self._compute_artifacts()
        return self._artifacts  # type: ignore[return-value]

    def _compute_artifacts(self) -> None:
        parts: dict[str, list[torch.Tensor]] = {}
        every = tuple(range(self.depth)) if self.num_registers else ()
        factor = 0.0
        for idx, _, images in image_batches(
            self.model, self.frames, batch_size=self.batch_size, device=self.device
        ):
            art = token_artifacts(self.model, images, register_layers=every)
            factor = art.factor
            values = {
                "norms": art.norms,
                "outliers": art.outliers,
                "cls_outlier_mass": art.cls_outlier_mass.mean(-1),
                "cls_register_mass": None
                if art.cls_register_mass is None
                else art.cls_register_mass.mean(-1),
                "register_maps": None
                if art.register_attention is None
                else art.register_attention.mean(3),
            }
            for name, value in values.items():
                if value is not None:
                    parts.setdefault(name, []).append(
                        value.float().cpu() if value.is_floating_point() else value.cpu()
                    )
            self._report(int(idx[-1]) + 1, len(self.frames), "token norms")
        joined = {name: torch.cat(p) for name, p in parts.items()}
        self._artifacts = ArtifactData(
            joined["norms"],
            joined["outliers"],
            joined["cls_outlier_mass"],
            joined.get("cls_register_mass"),
            joined.get("register_maps"),
            factor,
        )

    def _segment_grid(self, layer: int, k: int, facet: FeatureKind = "tokens") -> np.ndarray:
        """uint8 (T, gh, gw, 3): the segment colours (labkit.viz.render.palette) of every patch."""

        labels = self.segments(layer, k, facet)
        return palette(int(labels.max()) + 1)[labels]

    def render(self, state: ExplorerState | None = None) -> np.ndarray:
        """The panels of a state side by side: uint8 (H, n W, 3), in the order of
        ``self.panels``.
        """
        s = self.state if state is None else self._validated(state)
        return np.concatenate([self.panel(name, s) for name in self.panels], axis=1)

    def encoded(self, name: str, state: ExplorerState | None = None) -> bytes:
        """A panel as the app sends it (``image_format`` bytes), from the LRU cache when there."""
        s = self.state if state is None else self._validated(state)
        key = self._key(name, s)
        data = self._encoded.get(key)
        if data is None:
            data = encode_image(self.panel(name, s), self.image_format)
            self._encoded.put(key, data)
        return data

    def prerender(
        self, frames: Sequence[int] | None = None, state: ExplorerState | None = None
    ) -> None:
        """Render and encode every panel of the given frames (default all) for a state, ahead."""
        s = self.state if state is None else self._validated(state)
        self.compute(s)
        todo = range(len(self.frames)) if frames is None else frames
        for n, t in enumerate(todo):
            for name in self.panels:
                self.encoded(name, replace(s, frame=int(t)))
            self._report(n + 1, len(todo), "rendering")

    def title(self, state: ExplorerState | None = None) -> str:
        """One line saying what a state shows."""
        s = self.state if state is None else state
        norms = ""
        if self._artifacts is not None and (
            "artifacts" in self.panels or "registers" in self.panels
        ):
            data = self._artifacts  # once computed (compute() does it), so the title never waits
            norms = (
                f"norms: {int(data.outliers[s.frame, s.layer].sum())} outliers; [CLS] "
                f"{float(data.cls_outlier_mass[s.frame, s.layer]):.0%} on the block input's "
                "outliers"
            )
            if data.cls_register_mass is not None:
                norms += f", {float(data.cls_register_mass[s.frame, s.layer]):.0%} on the registers"
            norms += " | "
        on, off = self.objects_numbers(s, True), self.objects_numbers(s, False)
        dora = f"DoRA objects, Sinkhorn-Knopp {'on' if s.sinkhorn else 'off'}"
        if on and off:  # the shown frame's shares and overlap, both plans (per-frame maps)
            dora += f" (with SK: {on}; without: {off})"
        facet = f" of the {s.facet}" if s.facet != "tokens" else ""
        clicked = ""
        if s.patch is not None:
            t, i, j = s.patch
            clicked = f"similarity to patch ({i},{j}) of frame {self.indices[t]}{facet} | "
        return (
            f"{self.name} frame {self.indices[s.frame]} ({s.frame + 1}/{len(self.frames)}) | "
            f"layer {s.layer} | heads {s.heads} as R,G,B | {dora} | k-means k={s.k}{facet} | "
            f"opacity {s.alpha:.2f} | {clicked}{norms}{self.weights}"
        )

    def figure(self, state: ExplorerState | None = None) -> Figure:
        """A state (default: the current one) as a static matplotlib Figure, one panel per view
        (one row; rows of three for more than four panels)."""

        s = self.state if state is None else self._validated(state)
        images, titles = [self.panel(n, s) for n in self.panels], self.panel_titles(s)
        # the status line in three lines: frame and heads; DoRA's objects; the rest
        suptitle = self.title(s).replace(" | DoRA", "\nDoRA").replace(" | k-means", "\nk-means")
        if len(images) <= 4:
            return plot_strip(images, titles=titles, suptitle=suptitle, panel_size=3.0)

        per = 3  # more than four panels: rows of three, so that the figure stays readable
        return plot_grid(
            [images[i : i + per] for i in range(0, len(images), per)],
            col_titles=[titles[i : i + per] for i in range(0, len(titles), per)],
            suptitle=suptitle.replace(" | norms:", "\nnorms:"),
            panel_size=3.0,
        )

    def panel_titles(self, state: ExplorerState | None = None) -> list[str]:
        """A short title per shown panel (what the static figure writes above each)."""
        s = self.state if state is None else state
        facet = f" ({s.facet})" if s.facet != "tokens" else ""
        titles = {**_TITLES, "segments": f"k-means k={s.k}{facet}"}
        if s.patch is not None:
            t, i, j = s.patch
            titles["similarity"] = f"similarity to ({i},{j}) of frame {self.indices[t]}{facet}"
        if not s.sinkhorn:
            titles["objects"] = "DoRA objects (no Sinkhorn-Knopp)"
        numbers = self.objects_numbers(s)
        if numbers:
            titles["objects"] += "\n" + numbers  # the shown frame's shares and overlap
        if "artifacts" in self.panels or "registers" in self.panels:
            data = self.artifacts()
            count = int(data.outliers[s.frame, s.layer].sum())
            titles["artifacts"] = f"token norms, {count} outlier{'s' if count != 1 else ''}"
            if data.cls_register_mass is not None:
                share = float(data.cls_register_mass[s.frame, s.layer])
                titles["registers"] = f"registers' attention, [CLS] {share:.0%}"
        return [titles[n] for n in self.panels]

    def save_png(self, path: str | Path, state: ExplorerState | None = None) -> Path:
        """Write the four panels of a state (:meth:`render`) as one PNG; returns the path."""
        from PIL import Image

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.render(state)).save(path)
        return path

    # ---- embeddings -----------------------------------------------------------------------
    def embedding_view(
        self,
        method: Literal["pca", "umap"] = "pca",
        *,
        max_points: int = 3000,
        color_by: Literal["segment", "frame"] = "segment",
        layer: int | None = None,
        facet: FeatureKind | None = None,
    ) -> EmbeddingView:
        """A 2-D embedding of the clip's patch tokens, linked to this explorer.

        The view's frame follows the explorer's frame slider (both ways) and its segment colours
        follow k while the explorer stays on the view's layer.

        Args:
            method: ``"pca"`` or ``"umap"`` (computed in the background in the live app).
            max_points: most points shown (rule: :func:`labkit.embedding.sample_patches`).
            color_by: ``"segment"`` (the k-means colours of the segment panel) or ``"frame"``.
            layer: block of the features (default: the current one).
            facet: features embedded (default: the explorer's facet; see :meth:`features`).

        Returns:
            :class:`labkit.viz.embedding.EmbeddingView`.
        """

        layer = self.state.layer if layer is None else layer % self.depth
        facet = self.state.facet if facet is None else facet
        view = EmbeddingView(
            self.frames,
            self.features(layer, facet),
            self.segments(layer, self.state.k, facet),
            patch_size=self.patch_size,
            indices=self.indices,
            method=method,
            max_points=max_points,
            color_by=color_by,
            seed=self.seed,
            frame=self.state.frame,
            name=f"{self.name}, layer {layer}" + (f", {facet}" if facet != "tokens" else ""),
        )
        view.layer = layer
        view.facet = facet
        view.explorer = self
        self._views.append(view)
        return view

    # ---- widgets --------------------------------------------------------------------------
    def widget(self) -> Any:
        """The ipywidgets app (built once): frame slider with play, layer, heads, Sinkhorn-Knopp,
        k, opacity, a progress bar and the four panels. Call :meth:`show` to display it and fill
        its cache with the progress bar visible."""
        if self._ui:
            return self._ui["app"]
        import ipywidgets as w

        s = self.state
        last = len(self.frames) - 1
        ui = self._ui
        ui.update(_shared_controls(w, s, last_frame=last, num_heads=self.num_heads, interval=100))
        ui["layer"] = w.Dropdown(
            options=list(range(self.depth)),
            value=s.layer,
            description="layer",
            layout=w.Layout(width="160px"),
        )
        ui["facet"] = w.Dropdown(
            options=list(FEATURE_KINDS),
            value=s.facet,
            description="facet",
            layout=w.Layout(width="190px"),
        )
        # HTML, not a Label: a Label cuts a long line at the widget's edge; this one wraps
        ui["status"] = w.HTML(_status_html(self.title()))
        ui["images"] = {}
        cells = []
        for name in self.panels:
            image = w.Image(
                format=self.image_format, layout=w.Layout(width=f"{self.panel_width}px")
            )
            image.value = self._placeholder("waiting for the kernel")  # never a broken image
            image.add_class(f"labkit-panel-{name}")
            image.add_class("labkit-pending")
            ui["images"][name] = image
            cells.append(w.VBox([w.HTML(f"<b>{_TITLES[name]}</b>"), image]))
        # the clicked patch's similarity: shown frame with a colour bar, and a strip over the clip
        ui["sim_title"] = w.HTML("<b>similarity</b>: click a patch of any panel")
        scale = self.panel_width / self.frames.shape[2]  # as the panels: frame + 72 px colour bar
        ui["sim_frame"] = w.Image(
            format=self.image_format,
            layout=w.Layout(width=f"{round((self.frames.shape[2] + 72) * scale)}px"),
        )
        ui["sim_frame"].add_class("labkit-similarity-frame")
        ui["sim_strip"] = w.Image(format=self.image_format, layout=w.Layout(max_width="100%"))
        ui["sim_strip"].add_class("labkit-similarity-strip")
        ui["sim_strip"].layout.display = "none"
        ui["events"] = []
        try:
            from ipyevents import Event
        except ImportError:  # clicks need ipyevents; everything else works without it
            Event = None
            ui["sim_title"].value = "<b>similarity</b>: (install ipyevents to click on patches)"

        def on_click(event: dict[str, Any]) -> None:
            if event.get("type") != "click" or "dataX" not in event:
                return
            x, y = float(event["dataX"]), float(event["dataY"])
            height, width = self.frames.shape[1:3]
            patch = pixel_to_patch(y, x, self.grid, self.patch_size)
            if patch is not None and x < width and y < height:  # the frame, not the colour bar
                self.select_patch(self.state.frame, *patch)

        if Event is not None:
            for image in [*ui["images"].values(), ui["sim_frame"]]:
                event = Event(source=image, watched_events=["click"], prevent_default_action=True)
                event.on_dom_event(on_click)
                ui["events"].append(event)
        ui["panels"] = w.GridBox(
            cells,
            layout=w.Layout(grid_template_columns="repeat(2, max-content)", grid_gap="4px 8px"),
        )
        ui["syncing"] = False

        def on_change(_: Any = None) -> None:
            if ui["syncing"]:
                return
            self.state = self._validated(
                _state_of(ui, facet=ui["facet"].value, patch=self.state.patch)
            )
            self._refresh()

        for control in (*_state_controls(ui), ui["facet"]):
            control.observe(on_change, names="value")

        def progress(done: int, total: int, what: str) -> None:
            bar = ui["progress"]
            bar.max = max(int(total), 1)
            bar.value = int(done)
            bar.description = ""
            text = what if total <= 1 else f"{what}: {done}/{total} frames"
            ui["busy"].value = text if done < total else ""
            bar.layout.visibility = "visible" if done < total else "hidden"
            if self.background and done < total:
                self._busy = text
                now = time.perf_counter()
                if now - self._busy_shown > 0.5:  # the placeholders say how far, twice a second
                    self._busy_shown = now
                    self._update_placeholders()

        ui["on_progress"] = progress
        ui["progress"].layout.visibility = "hidden"
        ui["app"] = w.VBox(
            [
                w.HBox([ui["play"], ui["frame"], ui["layer"], ui["facet"]]),
                w.HBox([*ui["heads"], ui["sinkhorn"], ui["k"], ui["alpha"]]),
                w.HBox([ui["progress"], ui["busy"]]),
                ui["status"],
                ui["panels"],
                ui["sim_title"],
                ui["sim_frame"],
                ui["sim_strip"],
            ]
        )
        ui["app"].add_class("labkit-explorer")
        return ui["app"]

    def _sync_controls(self) -> None:
        """Move the app's controls to ``self.state`` without triggering their callbacks."""
        ui, s = self._ui, self.state
        ui["syncing"] = True
        try:
            ui["frame"].value = s.frame
            ui["layer"].value = s.layer
            for control, h in zip(ui["heads"], s.heads):
                control.value = h
            ui["k"].value = s.k
            ui["alpha"].value = s.alpha
            ui["sinkhorn"].value = s.sinkhorn
            ui["facet"].value = s.facet
        finally:
            ui["syncing"] = False

    def select_patch(self, t: int, i: int, j: int) -> ExplorerState:
        """A click on patch (i, j) of frame t: its similarity map becomes the shown one."""
        return self.set(patch=(int(t), int(i), int(j)))

    def ready(self, name: str, state: ExplorerState | None = None) -> bool:
        """Whether a panel (or ``"similarity"``, the app's section) of a state can be drawn
        without a heavy computation (a block's or a facet's pass, a clip k-means, token norms)."""
        s = self.state if state is None else state
        data = self._layers.get(s.layer)
        if name == "frame":
            return True
        if name == "heads":
            return data is not None
        if name == "objects":
            return data is not None and data.keys is not None and data.queries is not None
        if name == "segments":
            return (s.layer, s.k, s.facet) in self._segments
        if name in ("artifacts", "registers"):
            return self._artifacts is not None
        if name == "similarity":
            return s.patch is None or self._has_features(s.layer, s.facet)
        raise ValueError(f"panel must be one of {ALL_PANELS}, got {name!r}")

    def _placeholder(self, text: str) -> bytes:
        return encode_image(placeholder(self.frames.shape[1:3], text), self.image_format)

    def _update_placeholders(self) -> None:
        """Rewrite the pending panels' placeholders with what the worker is doing."""
        ui = self._ui
        data = self._placeholder(self._busy or "waiting")
        for image in ui["images"].values():
            if "labkit-pending" in image._dom_classes:
                image.value = data

    def _show(self) -> bool:
        """Swap in the current state's panels that can be drawn now, placeholders for the others,
        the similarity section and the status line. Returns True when something is pending."""
        ui = self._ui
        with self._show_lock:
            s = self.state
            pending = False
            busy = self._placeholder(self._busy or "computing")
            for name in self.panels:
                image = ui["images"][name]
                if self.ready(name, s):
                    data = self.encoded(name, s)
                    image.remove_class("labkit-pending")
                else:
                    data, pending = busy, True
                    image.add_class("labkit-pending")
                if image.value != data:
                    image.value = data
            if self.ready("objects", s):  # the status line compares Sinkhorn-Knopp on and off
                self.objects(s.layer, s.heads, not s.sinkhorn)
            pending |= self._show_similarity(s)
            ui["status"].value = _status_html(self.title(s))
        for view in self._views:
            view._follow_explorer(s)
        return pending

    def _show_similarity(self, s: ExplorerState) -> bool:
        ui = self._ui
        if s.patch is None:
            ui["sim_frame"].layout.display = "none"
            ui["sim_strip"].layout.display = "none"
            return False
        t, i, j = s.patch
        facet = f"{s.facet}, " if s.facet != "tokens" else ""
        where = f"patch ({i}, {j}) of frame {self.indices[t]}"
        ui["sim_frame"].layout.display = None
        if not self.ready("similarity", s):
            ui[
                "sim_title"
            ].value = f"<b>similarity to {where}</b> ({facet}layer {s.layer}): computing"
            ui["sim_frame"].value = self._placeholder(self._busy or "computing")
            ui["sim_frame"].add_class("labkit-pending")
            ui["sim_strip"].layout.display = "none"
            return True
        head, strip = self.similarity_pictures(s)
        ui["sim_title"].value = (
            f"<b>cosine similarity to {where}</b> ({facet}layer {s.layer}): the shown frame, "
            f"and frames spread over the clip on the same scale (click another patch)"
        )
        ui["sim_frame"].value = encode_image(head, self.image_format)
        ui["sim_frame"].remove_class("labkit-pending")
        ui["sim_strip"].value = encode_image(strip, self.image_format)
        ui["sim_strip"].layout.display = None
        return False

    def _refresh(self) -> None:
        """Show the current state. In the foreground (default): compute what is missing (progress
        bar), then swap in the panels. In the background (the live app, :meth:`show`): swap in
        what can be drawn now, placeholders for the rest, and hand the rest to the worker."""
        ui, s = self._ui, self.state
        start = time.perf_counter()
        if self.background:
            if self._show():
                self._request(s)
            self.last_update_ms = (time.perf_counter() - start) * 1e3
            return
        self._on_progress = ui["on_progress"]
        try:
            self.compute(s)
        finally:
            self._on_progress = None
        self._show()
        self.last_update_ms = (time.perf_counter() - start) * 1e3

    # ---- background worker (the live app) ---------------------------------------------------
    def _request(self, state: ExplorerState) -> None:
        """Ask the worker thread to compute a state (the newest request replaces older ones)."""
        with self._wake:
            self._wanted = state
            self._wake.notify()
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._work, name="labkit-explorer", daemon=True
                )
                self._worker.start()

    def _work(self) -> None:
        """The worker: take the newest requested state, compute it, show the current state."""
        ui = self._ui
        while True:
            with self._wake:
                while self._wanted is None:
                    self._wake.wait()
                s = self._wanted
                self._wanted = None
            time.sleep(0.2)  # key presses come in bursts: wait for the last one
            if self._wanted is not None:
                continue

            def report(done: int, total: int, what: str, layer: int = s.layer) -> None:
                wanted = self._wanted
                if wanted is not None and wanted.layer != layer:
                    raise _Stale  # a newer choice of layer: this pass is not needed any more
                ui["on_progress"](done, total, what)

            try:
                with self._lock:
                    self._on_progress = report
                    try:
                        self.compute(s)
                    finally:
                        self._on_progress = None
            except _Stale:
                continue
            except Exception as err:  # shown in the app: a thread has nowhere else to report
                ui["busy"].value = f"failed: {type(err).__name__}: {err}"
                continue
            finally:
                self._busy = ""
                ui["progress"].layout.visibility = "hidden"
            if self._wanted is None:
                ui["busy"].value = ""
                self._show()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the background worker has computed the current state (live app).

        Returns:
            True when every panel of the current state can be drawn.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not all(self.ready(n) for n in (*self.panels, "similarity")):
            if deadline is not None and time.monotonic() > deadline:
                return False
            if not self.background:
                self.compute()
            time.sleep(0.05)
        return True

    def show(self, static: bool | None = None) -> None:
        """Display the live app, or a static figure when headless (``static=None``: detect).

        The live app is displayed at once and this returns at once: what is missing (the block's
        pass over the clip, k-means ...) is computed by a background thread, placeholders and
        the progress bar saying what and how far; the notebook's next cells run meanwhile.
        """
        from IPython.display import display

        static = is_headless() if static is None else static
        if static:
            display(self.figure())
            return
        self.background = True
        app = self.widget()
        display(app)
        self._refresh()


def _status_html(text: str) -> str:
    """The explorer's status line as HTML that wraps within the widget (the text escaped)."""
    return f'<div style="white-space: normal; line-height: 1.3">{html.escape(text)}</div>'
