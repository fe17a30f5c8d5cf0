"""The reader interface shared by every backend: ``Video``, ``VideoError`` and size and index
checks.

Notation and behaviour: see :mod:`labkit.video`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

Size = int | tuple[int, int] | None
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoError(ValueError):
    """A video, a frame folder or a mask folder could not be read, or a request on it is invalid."""


# ------------------------------------------------------------------------------------------------
# Argument checks shared by every reader


def resolve_size(
    size: Size, source_size: tuple[int, int], *, what: str = "size"
) -> tuple[int, int]:
    """Turns a ``size`` argument into the (H, W) that frames are returned at.

    Args:
        size: None keeps ``source_size``; an int sets the shorter side to that value, keeps the
            aspect ratio and rounds both sides to the nearest even number (half rounds up);
            an (H, W) pair is used exactly.
        source_size: (H, W) of the frames in the file.
        what: name used in error messages.

    Returns:
        (H, W), two positive ints.
    """
    if size is None:
        return source_size
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if size < 2:
            raise VideoError(f"{what}={size!r}: the shorter side must be an int >= 2")
        h, w = source_size
        scale = int(size) / min(h, w)
        return _even(h * scale), _even(w * scale)
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
    ):
        if min(size) < 1:
            raise VideoError(f"{what}={tuple(size)!r}: height and width must be positive")
        return int(size[0]), int(size[1])
    raise VideoError(
        f"{what}={size!r}: expected None, an int (shorter side) or a pair of ints (height, width)"
    )


def _even(x: float) -> int:
    return max(2, 2 * math.floor(x / 2 + 0.5))


def _check_indices(indices: Sequence[int] | np.ndarray, length: int, path: Path) -> np.ndarray:
    """Validated frame indices as int64 (N,); raises VideoError naming the file."""
    if isinstance(indices, (int, np.integer)):
        raise VideoError(
            f"{path}: indices must be a sequence of ints, got the single int {indices}; "
            "use video[i] for one frame"
        )
    arr = np.asarray(indices)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise VideoError(f"{path}: indices must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise VideoError(f"{path}: indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise VideoError(
            f"{path}: negative frame index {lo}; negative indices are not wrapped, "
            f"use {length} + ({lo}) if you mean counting from the end"
        )
    if hi >= length:
        raise VideoError(f"{path}: frame index {hi} out of range, the video has {length} frames")
    return arr


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise VideoError(f"{name}={value!r}: expected a positive int")
    return int(value)


def _natural_key(path: Path) -> list:
    """Sort key that orders frame_2 before frame_10 and equals plain name order for padded names."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


# ------------------------------------------------------------------------------------------------
# The common interface


class Video:
    """A sequence of RGB frames read on demand. Use ``open_video`` / ``open_frames`` to make one.

    Attributes:
        path: the file or folder read.
        backend: "decord", "pyav" or "frames".
        fps: frames per second (the ``fps`` argument for a frame folder).
        size: (H, W) of frames as returned, after resize-on-read.
        source_size: (H, W) of frames in the file.
    """

    backend: Literal["decord", "pyav", "frames"]

    def __init__(
        self, path: Path, *, fps: float, source_size: tuple[int, int], size: Size, length: int
    ) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.source_size = (int(source_size[0]), int(source_size[1]))
        self.size = resolve_size(size, self.source_size)
        self._length = int(length)
        if self._length <= 0:
            raise VideoError(f"{self.path}: contains no frames")

    # subclasses implement: frames for sorted unique indices, (U, H, W, 3) uint8
    def _read(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Releases the open file or decoder; a later read reopens it."""

    def __len__(self) -> int:
        return self._length

    def get(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Reads frames by index.

        Args:
            indices: frame indices in [0, len(self)), any order, duplicates allowed.

        Returns:
            uint8 array (N, H, W, 3), RGB 0..255, frame k is ``indices[k]``.
        """
        idx = _check_indices(indices, len(self), self.path)
        if idx.size == 0:
            return np.zeros((0, *self.size, 3), dtype=np.uint8)
        unique, inverse = np.unique(idx, return_inverse=True)
        frames = self._read(unique)  # (U, H, W, 3), decoded once each, in file order
        if frames.shape != (len(unique), *self.size, 3) or frames.dtype != np.uint8:
            raise VideoError(
                f"{self.path}: the {self.backend} reader returned {frames.dtype} {frames.shape}, "
                f"expected uint8 {(len(unique), *self.size, 3)}"
            )
        if len(unique) == len(idx) and np.array_equal(unique, idx):
            return frames
        return frames[inverse.reshape(-1)]

    def __getitem__(self, index: int) -> np.ndarray:
        """One frame, uint8 (H, W, 3). Negative indices are rejected, as in ``get``."""
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise VideoError(f"{self.path}: video[{index!r}]: index must be an int; use get()")
        return self.get([int(index)])[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frames in order, one (H, W, 3) array at a time, decoded in batches of 16."""
        for _, frames in self.batches():
            yield from frames

    def clip_indices(self, start: int, num_frames: int, step: int = 1) -> np.ndarray:
        """Indices of the clip of ``num_frames`` frames from ``start``, every ``step``-th frame.

        Returns:
            int64 array (T,) = start + step * arange(T); raises VideoError if it runs past the end.
        """
        t = _positive_int(num_frames, "num_frames")
        s = _positive_int(step, "step")
        if not isinstance(start, (int, np.integer)) or isinstance(start, bool) or start < 0:
            raise VideoError(f"{self.path}: clip start={start!r} must be an int >= 0")
        last = int(start) + (t - 1) * s
        if last >= len(self):
            raise VideoError(
                f"{self.path}: a clip of {t} frames with step {s} from frame {start} needs frames "
                f"up to {last}, but the video has {len(self)} frames"
            )
        return int(start) + s * np.arange(t, dtype=np.int64)

    def get_clip(self, start: int, num_frames: int, step: int = 1) -> np.ndarray:
        """Reads one clip.

        Returns:
            uint8 array (T, H, W, 3) of frames ``clip_indices(start, num_frames, step)``.
        """
        return self.get(self.clip_indices(start, num_frames, step))

    def clips(
        self, num_frames: int, step: int = 1, stride: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterates the full clips of the video, one clip in memory at a time.

        Args:
            num_frames: T, frames per clip.
            step: distance between frames of a clip (DoRA samples long videos this way).
            stride: distance between the first frames of consecutive clips; default
                ``num_frames * step``, so clips tile the video on the same frame grid. A final
                clip that would run past the end is not yielded.

        Yields:
            (indices int64 (T,), frames uint8 (T, H, W, 3)).
        """
        t = _positive_int(num_frames, "num_frames")
        s = _positive_int(step, "step")
        stride = t * s if stride is None else _positive_int(stride, "stride")
        self.clip_indices(0, t, s)  # raises if not even one clip fits
        for start in range(0, len(self) - (t - 1) * s, stride):
            idx = self.clip_indices(start, t, s)
            yield idx, self.get(idx)

    def batches(
        self, indices: Sequence[int] | np.ndarray | None = None, batch_size: int = 16
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterates frames in chunks, all indices validated before the first read.

        Args:
            indices: frames to read, in the order to read them; default every frame.
            batch_size: n, frames per chunk (the last chunk may be shorter).

        Yields:
            (indices int64 (n,), frames uint8 (n, H, W, 3)).
        """
        n = _positive_int(batch_size, "batch_size")
        if indices is None:
            idx = np.arange(len(self), dtype=np.int64)
        else:
            idx = _check_indices(indices, len(self), self.path)
        for i in range(0, len(idx), n):
            yield idx[i : i + n], self.get(idx[i : i + n])

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        self.close()  # open decoders do not pickle; the copy reopens on first read
        return dict(self.__dict__)

    def __repr__(self) -> str:
        resized = "" if self.size == self.source_size else f", source_size={self.source_size}"
        return (
            f"{type(self).__name__}(path='{self.path}', backend='{self.backend}', "
            f"frames={len(self)}, fps={self.fps:g}, size={self.size}{resized})"
        )
