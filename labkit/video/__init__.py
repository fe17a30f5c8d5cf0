"""Read videos and folders of frames as uint8 RGB arrays: by index, by clip, or in batches.

Notation::

    N  frames requested by one call        T  frames in a clip
    n  frames in one batch                 H, W  frame height and width as returned
                                                 (after resize-on-read)

Every reader returns frames as ``np.ndarray`` uint8 of shape (N, H, W, 3), RGB, values 0..255, in
the order the caller asked for (duplicates allowed). Opening decodes at most frame 0 (a decord
sanity check), and nothing is kept between calls except decoder state, so memory is bounded by the
frames of one request: long videos are read clip by clip (``clips``) or batch by batch
(``batches``), never whole.

Backends (``Video.backend``):

- ``"decord"``: ``decord.VideoReader`` on the CPU; the fastest for scattered indices.
- ``"pyav"``: PyAV (FFmpeg). At open it demuxes the file once (packets only, no decoding) to learn
  every frame's timestamp and the keyframes; a read then seeks to the keyframe before the first
  wanted frame and decodes forward. Consecutive reads that move forward reuse the running decoder.
- ``"frames"``: a folder of jpg/png images sorted by name (the DAVIS ``JPEGImages/480p/<seq>/``
  layout).

``open_video(path)`` tries decord first and falls back to PyAV when decord is missing, cannot open
the file, or fails while decoding it. Bad input (missing path, not a video, truncated or corrupt
file, no frames, indices out of range, a clip longer than the video, a bad ``size``) raises
``VideoError`` naming the file and the problem. Negative indices are rejected, not wrapped: an index
computed to be negative is almost always a bug, and ``len(video) - 1`` says what it means.

The package: ``base`` (``Video``, ``VideoError``, size and index checks), ``pyav_reader``,
``decord_reader``, ``frames`` (frame and mask folders, DAVIS sequences), and ``open_video``,
``frame_batches`` and ``clip_indices`` (the frames of a clip) here.

Readers are not thread-safe; give each worker its own (a ``Video`` pickles without its open
decoder, so DataLoader workers can each reopen it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from labkit.video.base import IMAGE_SUFFIXES, Size, Video, VideoError, resolve_size
from labkit.video.decord_reader import DecordVideo
from labkit.video.frames import FrameFolder, davis_sequence, load_masks, open_frames
from labkit.video.pyav_reader import PyAVVideo

__all__ = [
    "VideoError",
    "Video",
    "DecordVideo",
    "PyAVVideo",
    "FrameFolder",
    "open_video",
    "open_frames",
    "load_masks",
    "davis_sequence",
    "resolve_size",
    "IMAGE_SUFFIXES",
    "Size",
    "frame_batches",
    "clip_indices",
]


def frame_batches(
    video: Any, indices: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Frames ``indices`` of ``video`` in chunks of at most ``batch_size``, one chunk in memory.

    Args:
        video: a :class:`Video` (its own ``batches``, indices checked first), a uint8
            (T, H, W, 3) array of frames, or anything with ``get(indices)`` returning uint8
            (n, H, W, 3).
        indices: int64 (T,) frame numbers, in reading order.
        batch_size: n, frames per chunk (the last may be shorter).

    Yields:
        (indices int64 (n,), frames uint8 (n, H, W, 3)).
    """
    if hasattr(video, "batches"):
        yield from video.batches(indices, batch_size)
        return
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        yield chunk, video[chunk] if isinstance(video, np.ndarray) else video.get(chunk)


def clip_indices(num_video_frames: int, num_frames: int, start: int, step: int) -> np.ndarray:
    """Frame indices of a clip: ``num_frames`` from ``start`` every ``step``, capped at the end.

    Args:
        num_video_frames: frames in the video.
        num_frames: frames wanted; capped at what the video has.
        start: first frame.
        step: stride; 0 spreads ``num_frames`` evenly over the whole video.

    Returns:
        int64 array (T,) of valid, increasing frame indices.

    Raises:
        ValueError: the video has no frames, or ``start`` is past its last frame.
    """
    if num_video_frames < 1:
        raise ValueError("the video has no frames")
    if start >= num_video_frames:
        raise ValueError(
            f"start_frame {start} is past the video's last frame ({num_video_frames - 1})"
        )
    if step == 0:
        count = min(num_frames, num_video_frames)
        return np.unique(np.linspace(0, num_video_frames - 1, count).round().astype(np.int64))
    count = min(num_frames, (num_video_frames - 1 - start) // step + 1)
    return start + step * np.arange(count, dtype=np.int64)


def open_video(
    path: str | os.PathLike,
    *,
    size: Size = None,
    backend: Literal["auto", "decord", "pyav"] = "auto",
    num_threads: int = 0,
) -> Video:
    """Opens a video file, or a folder of frames, for reading by index or clip.

    Args:
        path: a video file (anything FFmpeg reads: mp4, mkv, webm, avi, ...) or a folder of
            jpg/png frames (then this is ``open_frames(path, size=size)``).
        size: frames are returned at this size: None keeps the file's, int = shorter side
            (aspect kept, both sides rounded to even), (H, W) exact.
        backend: "auto" uses decord and falls back to PyAV when decord is missing, cannot open
            the file or fails while decoding; "decord" or "pyav" forces one.
        num_threads: decoder threads; 0 lets the library choose.

    Returns:
        a ``Video``; ``video.backend`` says which reader is in use.
    """
    if backend not in ("auto", "decord", "pyav"):
        raise VideoError(f"backend={backend!r}: expected 'auto', 'decord' or 'pyav'")
    path = Path(path).expanduser()
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if path.is_dir():
        if backend != "auto":
            raise VideoError(f"{path}: a folder of frames; backend={backend!r} reads video files")
        return open_frames(path, size=size)
    if not path.is_file():
        raise VideoError(f"{path}: not a regular file")
    num_threads = int(num_threads)
    if backend == "decord":
        return DecordVideo(path, size=size, num_threads=num_threads)
    if backend == "pyav":
        return PyAVVideo(path, size=size, num_threads=num_threads)
    resolve_size(size, (2, 2))  # a bad size is the caller's error, not a reason to fall back
    try:
        import decord  # noqa: F401
    except ImportError:
        return PyAVVideo(path, size=size, num_threads=num_threads)
    try:
        return DecordVideo(path, size=size, num_threads=num_threads, fallback=True)
    except VideoError:
        # decord cannot open it (a truncated file, a codec it lacks): PyAV either reads it or
        # raises its own VideoError, which names the problem more plainly than decord's trace
        return PyAVVideo(path, size=size, num_threads=num_threads)
