"""Attention films: every frame of a video, at its own size, streamed into one MP4 per method.

``labkit attention VIDEO --film`` runs this. The video is read ``batch_size`` frames at a time;
each batch goes through the ViT once (fused attention, nothing N x N in the blocks: see
:mod:`labkit.attention`), each method turns the batch's attention or features into pictures, and
each picture is encoded into its method's MP4 before the next batch is read. Nothing grows with
the length of the video: memory is one batch of frames, its features and one method's rendered
batch at a time, plus the encoders' look-ahead (a few frames each), plus, for ``kmeans``, the
features of the ``sample_frames`` frames its centroids are fitted on.

Notation::

    T   frames filmed (the whole video by default; never held)
    n   frames in a batch (<= batch_size)          S  frames sampled for the k-means fit
    H, W  frame size in pixels (the source's, or scaled down to ``max_side``)
    p   patch size;  gh, gw = H // p, W // p  the patch grid
    h   attention heads;  k  objects (DoRA) or segments (k-means);  D  feature channels

Methods (:data:`FILM_METHODS`), each over the frame unless said otherwise:

* ``heads``: three heads' [CLS] attention as R, G, B (:func:`labkit.viz.heads_to_rgb`, each head
  min-max normalised per frame), blended over the frame (60% map).
* ``mean``: the mean over all heads of the [CLS] attention, min-max normalised per frame and
  coloured with ``inferno``, alone, nearest-upsampled: the picture DINO's ``video_generation.py``
  saves for each frame (``plt.imsave`` of the head average).
* ``dora``: DoRA's objects (:mod:`labkit.tracking`): ``objects`` prototypes discovered on the
  first frame (heads ``0 .. objects-1``, Sinkhorn-Knopp), then tracked on every frame by
  cross-attention with its keys (per-map mean threshold), one colour per object. With
  ``rediscover=N`` the prototypes are discovered afresh on every N-th frame (useful across scene
  cuts; an object's colour stays tied to its head, not to what it tracked before).
* ``discovery``: single-object discovery on each frame's keys (:mod:`labkit.discovery`, LOST by
  default, or TokenCut): the mask and its box. LOST forms one frame's N x N key correlations
  (N = gh * gw: 8,040 x 8,040, 260 MB, for ViT-S/16 at 1920x1080), frames one at a time;
  TokenCut's float64 eigendecomposition of that matrix is only practical at small sizes.
* ``kmeans``: whole-video segments as :func:`labkit.segments.video_segments` makes them: one
  k-means fitted on the last-block tokens of ``sample_frames`` evenly spaced frames (at most
  ``max_points`` patches), then every frame's patches assigned to the nearest centroid, so a
  segment keeps its colour throughout.

Frame size: films are at the frames' size as read (the source's; with ``max_side`` the reader
scales the longer side down to it, both sides rounded to even). The model sees the frame cropped
*down* to multiples of the patch size, top-left kept (:func:`labkit.models.prepare_images`);
maps are drawn on that top-left ``gh*p x gw*p`` area and the strip of fewer than ``p`` pixels at
the right and bottom repeats the edge patches' values (masks and segments: their edge patches).
Odd sizes get one extra edge row/column in the MP4 (yuv420p needs even sizes).

Each film frame carries a caption: the method, the network and weights
(:func:`labkit.models.weights_label`) and the frame number (1-based, of T).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from labkit.attention import FeatureKind, extract, extract_video, image_batches
from labkit.clustering import assign, fit_video_kmeans
from labkit.discovery import lost, tokencut
from labkit.models import patch_size, weights_label
from labkit.segments import sample_frame_indices
from labkit.tracking import discover_objects, track_objects
from labkit.validation import check_device, resolve_device
from labkit.video import open_video
from labkit.viz import (
    Mp4Writer,
    box_overlay,
    caption,
    heads_to_rgb,
    mask_overlay,
    overlay,
    segment_overlay,
    upsample_map,
)
from labkit.viz.palette import object_colours

__all__ = [
    "FILM_METHODS",
    "FilmConfig",
    "FilmBatch",
    "film_batches",
    "render_film",
    "head_mean_to_rgb",
    "write_films",
]

FilmMethod = Literal["heads", "mean", "dora", "discovery", "kmeans"]
FILM_METHODS: tuple[FilmMethod, ...] = ("heads", "mean", "dora", "discovery", "kmeans")


@dataclass(frozen=True)
class FilmConfig:
    """What :func:`write_films` films and how; every field has a working default."""

    methods: tuple[FilmMethod, ...] = FILM_METHODS  # one MP4 each, named <method>.mp4
    batch_size: int = 8  # frames decoded and passed through the model at once: bounds the memory
    max_side: int | None = (
        None  # scale frames so the longer side is at most this; None: source size
    )
    num_frames: int | None = None  # film only the first frames; None: every frame of the video
    layer: int = -1  # block whose attention, keys and tokens are used; negative counts from the end
    heads: tuple[int, int, int] = (0, 1, 2)  # heads shown as R, G, B in the heads film
    objects: int = 3  # DoRA objects (heads 0 .. objects-1, as DoRA's 3 heads)
    rediscover: int = (
        0  # DoRA: rediscover objects every this many frames; 0: on the first frame only
    )
    discovery: Literal["lost", "tokencut"] = "lost"  # the discovery film's method
    k: int = 5  # k-means segments
    sample_frames: int = 16  # frames the k-means is fitted on, evenly spaced over the film
    max_points: int = 50_000  # k-means fit on at most this many of the sample's patches
    seed: int = 0  # k-means seed
    crf: int = 20  # x264 quality (0 lossless .. 51); 20 keeps attention maps' edges clean
    preset: str = (
        "veryfast"  # x264 speed; its short look-ahead also keeps the encoders' memory small
    )
    captions: bool = True  # method, weights and frame number on every frame
    fps: float | None = None  # frames per second of the films; None: the video's own rate
    backend: Literal["auto", "decord", "pyav"] = "pyav"  # PyAV decodes forward without seeking
    # "cpu", "cuda[:n]", "mps", "auto" (CUDA when available, else mps, else the CPU; stored
    # resolved); None: wherever the model's parameters are
    device: str | None = None

    def __post_init__(self) -> None:
        if self.device is not None:
            check_device("FilmConfig.device", self.device)
            object.__setattr__(self, "device", resolve_device(self.device))
        methods = tuple(self.methods)
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "heads", tuple(self.heads))
        bad = [m for m in methods if m not in FILM_METHODS]
        if not methods or bad or len(set(methods)) != len(methods):
            raise ValueError(
                f"FilmConfig: methods must be distinct names from {', '.join(FILM_METHODS)}; got "
                f"{', '.join(map(str, methods)) or 'none'}"
            )
        for name in ("batch_size", "objects", "k", "sample_frames", "max_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FilmConfig: {name} must be an int >= 1, got {value!r}")
        for name, low in (("max_side", 16), ("num_frames", 1)):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < low
            ):
                raise ValueError(
                    f"FilmConfig: {name} must be None or an int >= {low}, got {value!r}"
                )
        if (
            isinstance(self.rediscover, bool)
            or not isinstance(self.rediscover, int)
            or self.rediscover < 0
        ):
            raise ValueError(f"FilmConfig: rediscover must be an int >= 0, got {self.rediscover!r}")
        ints = all(isinstance(h, int) and not isinstance(h, bool) for h in self.heads)
        if len(self.heads) != 3 or not ints:
            raise ValueError(f"FilmConfig: heads must be three ints (R, G, B), got {self.heads!r}")
        if self.discovery not in ("lost", "tokencut"):
            raise ValueError(
                f"FilmConfig: discovery must be 'lost' or 'tokencut', got {self.discovery!r}"
            )
        if self.backend not in ("auto", "decord", "pyav"):
            raise ValueError(
                f"FilmConfig: backend must be 'auto', 'decord' or 'pyav', got {self.backend!r}"
            )
        if self.fps is not None and (
            isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not self.fps > 0
        ):
            raise ValueError(f"FilmConfig: fps must be None or a number > 0, got {self.fps!r}")
        if isinstance(self.crf, bool) or not isinstance(self.crf, int) or not 0 <= self.crf <= 51:
            raise ValueError(f"FilmConfig: crf must be an int in 0..51, got {self.crf!r}")


class FilmBatch(NamedTuple):
    """One batch of a film, computed: what :func:`render_film` draws (tensors on the CPU)."""

    indices: np.ndarray  # (n,) int64 frame indices in the video
    frames: np.ndarray  # (n, H, W, 3) uint8 frames as read
    attention: torch.Tensor | None  # (n, h, gh, gw) float32 [CLS] attention (heads, mean)
    objects: torch.Tensor | None  # (n, k, gh, gw) bool DoRA object masks
    discovered: torch.Tensor | None  # (n, gh, gw) bool discovery masks
    boxes: torch.Tensor | None  # (n, 4) int64 discovery boxes (row0, col0, row1, col1) in patches
    segments: torch.Tensor | None  # (n, gh, gw) int64 k-means labels in [0, k)


def _open(video: Any, cfg: FilmConfig) -> Any:
    if isinstance(video, (str, Path)):
        backend = "auto" if Path(video).is_dir() else cfg.backend
        opened = open_video(video, backend=backend)
        H, W = opened.source_size
        if cfg.max_side is None or max(H, W) <= cfg.max_side:
            return opened
        opened.close()
        scale = cfg.max_side / max(H, W)
        size = (max(2, 2 * round(H * scale / 2)), max(2, 2 * round(W * scale / 2)))  # even sides
        return open_video(video, size=size, backend=backend)
    if cfg.max_side is not None:
        raise ValueError("write_films: max_side needs a path; open the video with size= instead")
    if not hasattr(video, "get") or not hasattr(video, "__len__"):
        raise ValueError(
            f"write_films: video must be a path or a labkit Video, got {type(video).__name__}"
        )
    return video


def _fit_kmeans(
    model: torch.nn.Module,
    video: Any,
    indices: np.ndarray,
    cfg: FilmConfig,
    device: str,
    progress: bool,
) -> torch.Tensor:
    """(k, D) centroids fitted on the tokens of ``sample_frames`` evenly spaced frames."""
    from tqdm.auto import tqdm

    sample = indices[sample_frame_indices(len(indices), cfg.sample_frames)]  # (S,)
    parts = []
    with tqdm(total=len(sample), unit="frame", desc="k-means sample", disable=not progress) as bar:
        for start in range(
            0, len(sample), cfg.batch_size
        ):  # one call per batch: its frames die with it
            parts.append(
                extract_video(
                    model,
                    video,
                    sample[start : start + cfg.batch_size],
                    layer=cfg.layer,
                    attention=False,
                    kinds=("tokens",),
                    batch_size=cfg.batch_size,
                    device=device,
                    progress=False,
                ).features["tokens"]
            )  # (n, gh, gw, D)
            bar.update(len(parts[-1]))
    feats = torch.cat(parts)  # (S, gh, gw, D)
    del parts
    if feats.shape[0] * feats.shape[1] * feats.shape[2] < cfg.k:
        raise ValueError(
            f"write_films: k={cfg.k} segments but the sample has only {feats[..., 0].numel()} "
            "patches"
        )
    return fit_video_kmeans(feats.to(device), cfg.k, seed=cfg.seed, max_points=cfg.max_points)


def film_batches(
    video: Any, model: torch.nn.Module, config: FilmConfig | None = None, *, progress: bool = False
) -> Iterator[FilmBatch]:
    """Compute a film batch by batch: frames, attention, DoRA objects, discovery masks, segments.

    Only what ``config.methods`` needs is computed (the rest of :class:`FilmBatch` is None).
    DoRA's prototypes and the k-means centroids are carried from batch to batch; nothing else is.

    Args:
        video: a path (video file or frame folder; opened with ``config.backend`` and
            ``config.max_side``) or an open :class:`labkit.video.Video` (anything with ``__len__``
            and ``get(indices)`` returning uint8 (n, H, W, 3)).
        model: a timm VisionTransformer (:func:`labkit.models.load_backbone`), on ``config.device``
            where that is set.
        config: what to compute; default :class:`FilmConfig()`.
        progress: a tqdm bar over the frames (frames per second on the right), on stderr.

    Yields:
        :class:`FilmBatch` per batch of at most ``config.batch_size`` frames, in video order;
        tensors on the CPU.
    """
    from tqdm.auto import tqdm

    cfg = config or FilmConfig()
    video = _open(video, cfg)
    blocks: Any = model.blocks  # timm's Blocks (nn.Module attributes are untyped)
    num_heads, depth = blocks[0].attn.num_heads, len(blocks)
    if not all(-num_heads <= h < num_heads for h in cfg.heads):
        raise ValueError(
            f"write_films: heads {cfg.heads} out of range, the model has {num_heads} heads"
        )
    if "dora" in cfg.methods and cfg.objects > num_heads:
        raise ValueError(
            f"write_films: {cfg.objects} DoRA objects need as many heads, the model has {num_heads}"
        )
    if not -depth <= cfg.layer < depth:
        raise ValueError(
            f"write_films: layer {cfg.layer} out of range, the model has {depth} blocks"
        )
    param = next(model.parameters(), None)
    device = cfg.device
    if device is None:
        device = str(param.device) if param is not None else "cpu"
        cfg = replace(cfg, device=device)
    if param is not None and param.device != torch.device(device):
        raise ValueError(f"write_films: the model is on {param.device}, device is {device}")
    total = len(video) if cfg.num_frames is None else min(cfg.num_frames, len(video))
    indices = np.arange(total, dtype=np.int64)
    methods = set(cfg.methods)
    centroids = (
        _fit_kmeans(model, video, indices, cfg, device, progress) if "kmeans" in methods else None
    )
    prototypes: torch.Tensor | None = None  # (1, k, D) DoRA objects being tracked
    position = 0  # frames filmed so far
    # frames per second even below 1 (tqdm would switch to seconds per frame)
    rate = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]"
    with tqdm(total=total, unit="frame", desc="film", disable=not progress, bar_format=rate) as bar:
        for idx, frames, images in image_batches(
            model, video, indices, batch_size=cfg.batch_size, device=device
        ):  # (n,), uint8 (n, H, W, 3), (n, 3, gh*p, gw*p) on the device
            n = len(idx)
            # positions in this batch where DoRA discovers its objects afresh
            starts = [
                i
                for i in range(n)
                if position + i == 0 or (cfg.rediscover and (position + i) % cfg.rediscover == 0)
            ]
            kinds: list[FeatureKind] = []
            if methods & {"dora", "discovery"}:
                kinds.append("keys")
            if "dora" in methods and starts:
                kinds += ["queries", "tokens"]
            if "kmeans" in methods and "tokens" not in kinds:
                kinds.append("tokens")
            attention = bool(methods & {"heads", "mean"}) or ("dora" in methods and bool(starts))
            out = extract(model, images, cfg.layer, attention=attention, kinds=tuple(kinds))
            del images
            objects = discovered = boxes = segments = None
            if "dora" in methods:
                objects, prototypes = _track(out, starts, prototypes, cfg)
            if "discovery" in methods:
                discovered, boxes = _discover(out.features["keys"], cfg)
            if centroids is not None:  # "kmeans" in methods
                segments = assign(out.features["tokens"], centroids).cpu()  # (n, gh, gw)
            attn = (
                out.attention.cpu()
                if out.attention is not None and methods & {"heads", "mean"}
                else None
            )
            del out
            yield FilmBatch(idx, frames, attn, objects, discovered, boxes, segments)
            del frames, attn, objects, discovered, boxes, segments  # before the next batch is read
            position += n
            bar.update(n)


def _track(
    out: Any, starts: Sequence[int], prototypes: torch.Tensor | None, cfg: FilmConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """DoRA object masks (n, k, gh, gw) for a batch, rediscovering at the positions ``starts``."""

    keys = out.features["keys"]  # (n, gh, gw, D)
    n = keys.shape[0]
    bounds = sorted(set(starts)) + [n]
    pieces = []
    for start, stop in zip([0] + bounds[:-1], bounds):
        if start in starts:
            found = discover_objects(
                out.attention[start : start + 1],
                out.features["queries"][start : start + 1],
                out.features["tokens"][start : start + 1],
                k=cfg.objects,
            )
            prototypes = found.prototypes  # (1, k, D)
        if stop > start:
            if prototypes is None:  # pragma: no cover - frame 0 always discovers
                raise RuntimeError("DoRA film: no prototypes before the first discovery")
            pieces.append(
                track_objects(prototypes, keys[None, start:stop]).masks[0]
            )  # (m, k, gh, gw)
    if prototypes is None:  # pragma: no cover - frame 0 always discovers
        raise RuntimeError("DoRA film: no prototypes before the first discovery")
    return torch.cat(pieces).cpu(), prototypes


def _discover(keys: torch.Tensor, cfg: FilmConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Discovery masks (n, gh, gw) and boxes (n, 4), one frame at a time (N x N per frame)."""

    method = lost if cfg.discovery == "lost" else tokencut
    found = [method(keys[i : i + 1]) for i in range(keys.shape[0])]
    return torch.cat([f.masks for f in found]).cpu(), torch.cat([f.boxes for f in found]).cpu()


def head_mean_to_rgb(
    attn: torch.Tensor | np.ndarray, size: tuple[int, int], patch_size: int
) -> np.ndarray:
    """DINO's video frame: the head-averaged [CLS] attention, min-max scaled, ``inferno``, nearest.

    As ``video_generation.py`` saves each frame (``plt.imsave`` of the mean over heads, which
    scales the map from its own min to its max): the colour is computed per patch, then each patch
    is painted on its ``p x p`` pixels (top-left layout, edge strip repeated; see
    :func:`labkit.viz.upsample_map`). A constant map is drawn as the colormap's low end.

    Args:
        attn: (n, h, gh, gw) or (h, gh, gw) per-head attention.
        size: frame (H, W) in pixels, ``H // p == gh`` and ``W // p == gw``.
        patch_size: p.

    Returns:
        uint8 (n, H, W, 3) (or (H, W, 3) for one frame's maps), RGB.
    """
    import matplotlib

    if isinstance(attn, torch.Tensor):
        a = attn.detach().float().cpu().numpy()
    else:
        a = np.asarray(attn, np.float32)
    single = a.ndim == 3
    a = a[None] if single else a
    if a.ndim != 4:
        raise ValueError(
            f"head_mean_to_rgb: attn must be (n, h, gh, gw) or (h, gh, gw), got {a.shape}"
        )
    mean = a.mean(axis=1)  # (n, gh, gw)
    lo = mean.min(axis=(1, 2), keepdims=True)
    span = mean.max(axis=(1, 2), keepdims=True) - lo
    unit = np.where(span > 0, (mean - lo) / np.where(span > 0, span, 1.0), 0.0)  # (n, gh, gw)
    colours = matplotlib.colormaps["inferno"](unit, bytes=True)[..., :3]  # (n, gh, gw, 3) uint8
    out = np.stack(
        [upsample_map(c.transpose(2, 0, 1), size, patch_size) for c in colours]
    )  # (n, H, W, 3)
    out = out.astype(np.uint8)  # nearest upsampling of uint8 values: exact
    return out[0] if single else out


def _describe(method: str, cfg: FilmConfig, num_heads: int) -> str:
    if method == "heads":
        return f"heads {cfg.heads[0]},{cfg.heads[1]},{cfg.heads[2]} as R,G,B"
    if method == "mean":
        return f"mean of {num_heads} heads' [CLS] attention"
    if method == "dora":
        when = (
            f"rediscovered every {cfg.rediscover} frames"
            if cfg.rediscover
            else "discovered on frame 1"
        )
        return f"DoRA: {cfg.objects} objects {when}"
    if method == "discovery":
        return f"{'LOST' if cfg.discovery == 'lost' else 'TokenCut'} object discovery"
    return f"k-means, k={cfg.k}, fitted on {cfg.sample_frames} frames"


def render_film(
    method: FilmMethod,
    batch: FilmBatch,
    patch_size: int,
    config: FilmConfig | None = None,
    *,
    label: str = "",
    total: int | None = None,
) -> np.ndarray:
    """Draw one method's film frames for a computed batch (see the module docstring for each).

    Args:
        method: one of :data:`FILM_METHODS`, computed in ``batch``.
        batch: from :func:`film_batches`.
        patch_size: the model's p.
        config: the config the batch was computed with (heads, objects, k for the captions).
        label: the network and weights, for the caption (:func:`labkit.models.weights_label`).
        total: T for "frame i/T" in the caption.

    Returns:
        uint8 (n, H, W, 3) RGB film frames, H, W the frames' size.
    """

    cfg = config or FilmConfig()
    frames = batch.frames
    size = frames.shape[1:3]
    p = patch_size
    if method in ("heads", "mean"):
        if batch.attention is None:
            raise ValueError(f"render_film: the batch has no attention for the {method} film")
        if method == "heads":
            rgb = heads_to_rgb(batch.attention, cfg.heads, size=size, patch_size=p)  # (n, H, W, 3)
            out = overlay(frames, rgb, alpha=0.6, patch_size=p)
        else:
            out = head_mean_to_rgb(batch.attention, size, p)
    elif method == "dora":
        if batch.objects is None:
            raise ValueError("render_film: the batch has no DoRA objects")
        thickness = max(1, size[0] // 240)
        objects = batch.objects.numpy()  # (n, k, gh, gw)
        out = mask_overlay(
            frames,
            objects,
            object_colours(objects.shape[1]),  # DoRA's objects: the one palette
            alpha=0.45,
            thickness=thickness,
            patch_size=p,
        )
    elif method == "discovery":
        if batch.discovered is None or batch.boxes is None:
            raise ValueError("render_film: the batch has no discovery masks")
        masked = mask_overlay(
            frames, batch.discovered.numpy(), alpha=0.4, contour=False, patch_size=p
        )
        out = np.stack(
            [
                box_overlay(
                    f,
                    b.numpy(),
                    color=(255, 255, 0),
                    thickness=max(2, size[0] // 160),
                    patch_size=p,
                )
                for f, b in zip(masked, batch.boxes)
            ]
        )
    elif method == "kmeans":
        if batch.segments is None:
            raise ValueError("render_film: the batch has no k-means segments")
        out = segment_overlay(frames, batch.segments.numpy(), alpha=0.5, patch_size=p)
    else:
        raise ValueError(f"render_film: unknown method {method!r}; choose from {FILM_METHODS}")
    if cfg.captions:
        heads = batch.attention.shape[1] if batch.attention is not None else 0
        what = _describe(method, cfg, heads)
        of = f"/{total}" if total else ""
        out = np.stack(
            [
                caption(f, "  |  ".join(t for t in (what, label, f"frame {int(i) + 1}{of}") if t))
                for f, i in zip(out, batch.indices)
            ]
        )
    return out


def write_films(
    video: str | Path | Any,
    model: torch.nn.Module,
    out_dir: str | Path,
    config: FilmConfig | None = None,
    *,
    progress: bool = False,
    **options: Any,
) -> dict[str, Path]:
    """Film a whole video: one MP4 per method, at the frames' size and the video's frame rate
    (``config.fps`` and ``config.max_side`` change them).

    Batches come from :func:`film_batches`, are drawn by :func:`render_film` one method at a time
    and streamed into :class:`labkit.viz.Mp4Writer`s, so memory is bounded by the batch (module
    docstring), not by the video. Each file appears complete or not at all: a failure or Ctrl-C
    leaves no partial ``<method>.mp4``.

    Args:
        video: a video file, a frame folder, or an open :class:`labkit.video.Video`.
        model: a timm VisionTransformer, on ``config.device`` where that is set.
        out_dir: folder for ``<method>.mp4`` (created; existing films of the same names replaced).
        config: :class:`FilmConfig`; default ``FilmConfig()``.
        progress: a tqdm bar with frames per second on stderr.
        **options: :class:`FilmConfig` fields overriding ``config`` (e.g. ``methods=("mean",)``,
            ``batch_size=4``).

    Returns:
        ``{method: path}`` of the MP4s written, in ``config.methods`` order.
    """

    names = {f.name for f in fields(FilmConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(
            f"write_films: unknown option(s) {unknown}; FilmConfig has {sorted(names)}"
        )
    cfg = replace(config or FilmConfig(), **options)
    opened = _open(video, cfg)
    total = len(opened) if cfg.num_frames is None else min(cfg.num_frames, len(opened))
    fps = cfg.fps or (opened.fps if opened.fps > 0 else 24.0)
    out = Path(out_dir)
    p = patch_size(model)
    label = weights_label(model)
    writers = {
        m: Mp4Writer(out / f"{m}.mp4", fps, crf=cfg.crf, preset=cfg.preset) for m in cfg.methods
    }
    try:
        for batch in film_batches(opened, model, replace(cfg, max_side=None), progress=progress):
            for method, writer in writers.items():
                writer.write(render_film(method, batch, p, cfg, label=label, total=total))
            del batch  # so the next batch is read with this one gone
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        if opened is not video:  # opened here from a path
            opened.close()
    return {method: writer.close() for method, writer in writers.items()}
