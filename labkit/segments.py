"""Segment maps of whole videos, streamed: one k-means for the whole video, or one per frame.

Two pictures of the same video, from the patch features of a ViT:

* whole-video segments (:func:`video_segments`, k = 5 by default): one k-means over the patches
  of a sample of frames (:func:`labkit.clustering.fit_video_kmeans`), then every frame's patches
  go to their nearest centroid (:func:`labkit.clustering.assign`). A segment has the same id, so
  the same colour, in every frame, and it means the same thing throughout the video;
* per-frame segments (:func:`frame_segments`, k = 10 by default): each frame is clustered on its
  own; ids are carried from frame to frame by the Hungarian matching of centroids
  (:func:`labkit.clustering.kmeans_segments` ``mode="frame"``, continued across batches), so
  colours persist as long as the segments look alike.

Both stream the video: frames are decoded and passed through the model ``batch_size`` at a time
(:func:`labkit.attention.extract_video`); what is kept is the labels ``(T, gh, gw)``, plus, for
the whole-video fit, the features of the ``sample_frames`` sampled frames. Fitting on all frames
of a clip gives :func:`labkit.clustering.kmeans_segments` ``mode="clip"``.

The two pictures side by side, as in the talk that introduced TimeTuning: :func:`segment_maps`
computes both for a set of frames. This module is compute only; their pictures (frames coloured
by segment, the animation, the Figure) are drawn by :mod:`labkit.viz.segments`.

Notation::

    T   frames segmented        S   frames sampled for the whole-video fit
    n   frames in a batch       gh, gw  patch grid;  D  feature channels;  k  segments
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from labkit.attention import FeatureKind, extract_video
from labkit.clustering import assign, fit_video_kmeans, hungarian, kmeans_segments
from labkit.models import patch_size

__all__ = [
    "VideoSegments",
    "SegmentMaps",
    "sample_frame_indices",
    "video_segments",
    "frame_segments",
    "frame_segments_from_features",
    "segment_maps",
]


class VideoSegments(NamedTuple):
    """Segment maps of a video (all on the CPU)."""

    labels: torch.Tensor  # (T, gh, gw) int64 in [0, k), ids consistent over time
    indices: np.ndarray  # (T,) int64 frame index of each row of ``labels``
    centroids: torch.Tensor | None  # (k, D) whole-video centroids; None for per-frame segments
    sample_indices: np.ndarray | None  # (S,) frames the whole-video k-means was fitted on


def sample_frame_indices(num_frames: int, sample_frames: int) -> np.ndarray:
    """Evenly spaced positions for fitting, the first and last included.

    Args:
        num_frames: T, frames available.
        sample_frames: S wanted, >= 1.

    Returns:
        ``(min(S, T),)`` int64 positions in ``[0, T)``, increasing, distinct.
    """
    if num_frames < 1 or sample_frames < 1:
        raise ValueError(
            f"sample_frame_indices: need num_frames >= 1 and sample_frames >= 1, got "
            f"{num_frames}, {sample_frames}"
        )
    if sample_frames >= num_frames:
        return np.arange(num_frames, dtype=np.int64)
    return np.unique(np.linspace(0, num_frames - 1, sample_frames).round().astype(np.int64))


def _indices(video: Any, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
    if indices is None:
        idx = np.arange(len(video), dtype=np.int64)
    else:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("video segments: no frames to segment")
    if idx.min() < 0 or idx.max() >= len(video):
        raise ValueError(f"video segments: indices out of range for a video of {len(video)} frames")
    return idx


def _feature_batches(
    model: torch.nn.Module,
    video: Any,
    indices: np.ndarray,
    *,
    layer: int,
    kind: FeatureKind,
    batch_size: int,
    device: str | torch.device,
    dtype: torch.dtype,
    bar: Any,
) -> Iterator[torch.Tensor]:
    """Features ``(n, gh, gw, D)`` on the CPU, ``batch_size`` frames at a time, in order."""
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        out = extract_video(
            model,
            video,
            chunk,
            layer=layer,
            attention=False,
            kinds=(kind,),
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            progress=False,
        )
        bar.update(len(chunk))
        yield out.features[kind]


def _check_common(k: int, batch_size: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"video segments: k must be an int >= 1, got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"video segments: batch_size must be an int >= 1, got {batch_size!r}")


def video_segments(
    model: torch.nn.Module,
    video: Any,
    *,
    k: int = 5,
    sample_frames: int = 64,
    indices: Sequence[int] | np.ndarray | None = None,
    layer: int = -1,
    kind: FeatureKind = "tokens",
    normalize: bool = False,
    max_points: int | None = None,
    seed: int = 0,
    iters: int = 100,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> VideoSegments:
    """Whole-video segments: one k-means for all frames, so a segment keeps its colour throughout.

    First the ``sample_frames`` evenly spaced frames are passed through the model and k-means is
    fitted on all their patches; then every frame (the sample included) is passed through again,
    batch by batch, and its patches are assigned to the nearest centroid. Memory: the sample's
    features and the labels; never all frames' features. When the sample is every frame, the
    sample's features are assigned directly (one pass).

    Args:
        model: a timm VisionTransformer on ``device``.
        video: a :class:`labkit.video.Video`, or anything with ``__len__`` and ``get(indices)``.
        k: number of segments (5 by default: a few large, stable parts of the scene).
        sample_frames: frames the k-means is fitted on (evenly spaced over ``indices``).
        indices: frames to segment, in order; all frames by default.
        layer: block whose features are clustered (negative counts from the end).
        kind: ``"tokens"``, ``"keys"`` or ``"queries"`` (see :mod:`labkit.attention`).
        normalize: cluster L2-normalised features (cosine-like).
        max_points: fit on at most this many of the sample's patches (random, seeded).
        seed: k-means seed.
        iters: maximum Lloyd iterations.
        batch_size: frames decoded and passed through the model at once.
        device: where the model runs and the k-means is fitted.
        dtype: dtype of the images fed to the model.
        progress: show a tqdm progress bar over the frames passed through the model.

    Returns:
        :class:`VideoSegments` with labels ``(T, gh, gw)`` int64, the frame ``indices``, the
        ``(k, D)`` float32 centroids (segment 0 the largest in the sample) and ``sample_indices``.
    """
    _check_common(k, batch_size)
    idx = _indices(video, indices)
    sample = idx[sample_frame_indices(len(idx), sample_frames)]  # (S,)
    reuse = len(sample) == len(idx)
    from tqdm.auto import tqdm

    total = len(sample) + (0 if reuse else len(idx))
    options: dict[str, Any] = dict(
        layer=layer, kind=kind, batch_size=batch_size, device=device, dtype=dtype
    )
    with tqdm(total=total, unit="frame", disable=not progress, desc="video segments") as bar:
        sampled = list(_feature_batches(model, video, sample, bar=bar, **options))  # S frames
        centroids = fit_video_kmeans(
            [f.to(device) for f in sampled],
            k,
            seed=seed,
            iters=iters,
            normalize=normalize,
            max_points=max_points,
        )  # (k, D)
        source = sampled if reuse else _feature_batches(model, video, idx, bar=bar, **options)
        if not reuse:
            del sampled
        labels = [assign(f.to(device), centroids, normalize=normalize).cpu() for f in source]
    return VideoSegments(torch.cat(labels), idx, centroids.float().cpu(), sample)


def frame_segments_from_features(
    batches: Iterable[torch.Tensor],
    k: int,
    *,
    seed: int = 0,
    iters: int = 100,
    normalize: bool = False,
) -> torch.Tensor:
    """Per-frame k-means over a stream of feature batches, ids aligned across batch boundaries.

    The compute half of :func:`frame_segments`. Each batch goes through
    :func:`labkit.clustering.kmeans_segments` (``mode="frame"``); every batch after the first is
    then renamed as a whole so that its first frame's centroids match the previous batch's last
    frame's (Hungarian matching on squared distances, as within a batch). With one batch holding
    all frames this is ``kmeans_segments(features, k, mode="frame").labels``.

    Args:
        batches: iterable of ``(n, gh, gw, D)`` patch features, frames in order, same grid.
        k: segments per frame.
        seed, iters, normalize: as in :func:`labkit.clustering.kmeans_segments`.

    Returns:
        ``(T, gh, gw)`` int64 labels on the CPU.
    """
    labels: list[torch.Tensor] = []
    reference: torch.Tensor | None = None  # (k, D) aligned centroids of the previous frame
    for feats in batches:
        seg = kmeans_segments(feats, k, mode="frame", seed=seed, iters=iters, normalize=normalize)
        lab, cents = seg.labels, seg.centroids  # (n, gh, gw), (n, k, D) aligned in the batch
        if reference is not None:
            cost = torch.cdist(reference.double(), cents[0].double()) ** 2  # (k running, k batch)
            rows, cols = hungarian(cost)
            rename = torch.empty(k, dtype=torch.int64)
            rename[torch.from_numpy(cols)] = torch.from_numpy(rows)  # batch id -> running id
            rename = rename.to(lab.device)
            lab = rename[lab]
            cents = cents[:, torch.argsort(rename)]  # row j: centroid of running id j
        reference = cents[-1]
        labels.append(lab.cpu())
    if not labels:
        raise ValueError("frame_segments_from_features: no feature batches given")
    return torch.cat(labels)


def frame_segments(
    model: torch.nn.Module,
    video: Any,
    *,
    k: int = 10,
    indices: Sequence[int] | np.ndarray | None = None,
    layer: int = -1,
    kind: FeatureKind = "tokens",
    normalize: bool = False,
    seed: int = 0,
    iters: int = 100,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> VideoSegments:
    """Per-frame segments: k-means on each frame alone, ids matched from frame to frame.

    Each batch is segmented by :func:`labkit.clustering.kmeans_segments` (``mode="frame"``: one
    k-means per frame, ids aligned within the batch by the Hungarian matching of centroids); the
    batch is then renamed as a whole so that its first frame matches the previous batch's last
    frame, which continues the frame-to-frame alignment across batches. Memory: one batch's
    features and the labels.

    Args:
        model: a timm VisionTransformer on ``device``.
        video: a :class:`labkit.video.Video`, or anything with ``__len__`` and ``get(indices)``.
        k: segments per frame (10 by default: the finer picture).
        indices: frames to segment, in order; all frames by default.
        layer, kind, normalize, seed, iters: as in :func:`video_segments`.
        batch_size: frames decoded, passed through the model and clustered at once.
        device: where the model runs and the k-means run.
        dtype: dtype of the images fed to the model.
        progress: show a tqdm progress bar.

    Returns:
        :class:`VideoSegments` with labels ``(T, gh, gw)`` int64 (the first frame's ids ordered
        by segment size, largest first), the frame ``indices``, ``centroids=None`` and
        ``sample_indices=None``.
    """
    _check_common(k, batch_size)
    idx = _indices(video, indices)
    from tqdm.auto import tqdm

    options: dict[str, Any] = dict(
        layer=layer, kind=kind, batch_size=batch_size, device=device, dtype=dtype
    )
    with tqdm(total=len(idx), unit="frame", disable=not progress, desc="frame segments") as bar:
        batches = (f.to(device) for f in _feature_batches(model, video, idx, bar=bar, **options))
        labels = frame_segments_from_features(
            batches, k, seed=seed, iters=iters, normalize=normalize
        )
    return VideoSegments(labels, idx, None, None)


# ----------------------------------------------------------------------------------------------
# The two pictures side by side (drawn by labkit.viz.segments)
# ----------------------------------------------------------------------------------------------


class SegmentMaps(NamedTuple):
    """Whole-video and per-frame segments of the same frames (see :func:`segment_maps`)."""

    whole: VideoSegments  # one k-means for all frames: labels (T, gh, gw), ids fixed over time
    per_frame: VideoSegments  # one k-means per frame, ids matched frame to frame
    k_video: int  # segments of the whole-video k-means
    k_frame: int  # segments of each per-frame k-means
    patch_size: int  # p, to map the grid onto the frames

    @property
    def indices(self) -> np.ndarray:
        """``(T,)`` int64 frame numbers of the rows of both label maps."""
        return self.whole.indices


def segment_maps(
    model: torch.nn.Module,
    video: Any,
    *,
    frames: int | Sequence[int] | np.ndarray | None = 48,
    k_video: int = 5,
    k_frame: int = 10,
    sample_frames: int = 64,
    layer: int = -1,
    kind: FeatureKind = "tokens",
    normalize: bool = True,
    seed: int = 0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> SegmentMaps:
    """Both segment pictures of a video: whole-video k-means (k = 5) and per-frame k-means (k = 10).

    The whole-video k-means is fitted on ``sample_frames`` evenly spaced frames of the chosen
    ones and every chosen frame is assigned to it (:func:`video_segments`); the per-frame k-means
    clusters each chosen frame alone (:func:`frame_segments`). Both stream the frames.

    Args:
        model: a timm VisionTransformer on ``device``.
        video: a :class:`labkit.video.Video`, or anything with ``__len__`` and ``get(indices)``.
        frames: which frames: a count (evenly spaced over the video, first and last included),
            explicit indices, or ``None`` / ``0`` for every frame.
        k_video: segments of the whole-video k-means.
        k_frame: segments of each frame's k-means.
        sample_frames: frames the whole-video k-means is fitted on.
        layer, kind: which features (see :mod:`labkit.attention`).
        normalize: cluster L2-normalised features (cosine-like, as the evaluation lab's k-means).
        seed: k-means seed.
        batch_size: frames per forward pass.
        device: where the model and the k-means run.
        progress: tqdm progress bars.

    Returns:
        :class:`SegmentMaps` (labels on the CPU).
    """

    if frames is None or (isinstance(frames, (int, np.integer)) and frames == 0):
        indices = np.arange(len(video), dtype=np.int64)
    elif isinstance(frames, (int, np.integer)):
        if frames < 0:
            raise ValueError(f"segment_maps: frames must be >= 0, got {frames}")
        indices = sample_frame_indices(len(video), int(frames))
    else:
        indices = np.asarray(frames, dtype=np.int64).reshape(-1)
    common: dict[str, Any] = dict(
        indices=indices,
        layer=layer,
        kind=kind,
        normalize=normalize,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    whole = video_segments(model, video, k=k_video, sample_frames=sample_frames, **common)
    per_frame = frame_segments(model, video, k=k_frame, **common)
    return SegmentMaps(whole, per_frame, int(k_video), int(k_frame), patch_size(model))
