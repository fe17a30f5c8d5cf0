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

Readers are not thread-safe; give each worker its own (a ``Video`` pickles without its open
decoder, so DataLoader workers can each reopen it).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

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
]

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


# ------------------------------------------------------------------------------------------------
# PyAV


def _open_container(path: Path):
    """av.open + the first video stream; VideoError if FFmpeg cannot read a video from the file."""
    import av

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, OSError) as e:
        raise VideoError(f"{path}: not a video file FFmpeg can read ({e})") from e
    if container.format.name == "tty" or not container.streams.video:
        name = container.format.name
        container.close()
        raise VideoError(f"{path}: no video stream in this file (FFmpeg reads it as '{name}')")
    stream = container.streams.video[0]
    if not stream.codec_context.width or not stream.codec_context.height:
        container.close()
        raise VideoError(f"{path}: the video stream has no frame size (corrupt header?)")
    return container, stream


def _stream_fps(stream, path: Path) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    raise VideoError(f"{path}: the video stream declares no frame rate")


class PyAVVideo(Video):
    """A video file read with PyAV: seek to the keyframe before a frame, then decode forward."""

    backend = "pyav"

    def __init__(self, path: str | Path, *, size: Size = None, num_threads: int = 0) -> None:
        path = Path(path)
        container, stream = _open_container(path)
        try:
            fps = _stream_fps(stream, path)
            source = (stream.codec_context.height, stream.codec_context.width)
            declared = int(stream.frames or 0)
            self._index_packets(container, stream, path)
        finally:
            container.close()
        self._declared = declared
        self._num_threads = int(num_threads)
        self._container = self._stream = self._run = None
        self._pos = -1  # index of the last frame the running decoder produced
        self._frames_decoded = 0  # total decoded frames, to check that seeking works
        # a header that promises more frames than the file holds means truncation: those frames
        # count towards len() and reading them raises VideoError instead of silently vanishing
        super().__init__(
            path, fps=fps, source_size=source, size=size, length=max(declared, self._available)
        )

    def _index_packets(self, container, stream, path: Path) -> None:
        """Demuxes once (no decoding): frame i is the packet with the i-th smallest timestamp."""
        import av

        stamps, keys, self._index_error = [], [], None
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue  # the flush packet at EOF, or edit-list samples never shown
                stamps.append(packet.pts if packet.pts is not None else packet.dts)
                keys.append(packet.is_keyframe)
        except av.FFmpegError as e:  # damaged data: the frames before it stay readable
            self._index_error = e
        self._available = len(stamps)
        if self._available == 0:
            reason = f" ({self._index_error})" if self._index_error else ""
            raise VideoError(f"{path}: no video frames could be read from this file{reason}")
        if any(s is None for s in stamps):  # no timestamps: decode from the start, counting
            self._pts, self._pts_index, self._keyframes = None, None, np.zeros(1, np.int64)
            return
        order = np.argsort(np.asarray(stamps, dtype=np.int64), kind="stable")
        self._pts = np.asarray(stamps, dtype=np.int64)[order]
        self._pts_index = {int(p): i for i, p in enumerate(self._pts)}
        keyframes = np.flatnonzero(np.asarray(keys, dtype=bool)[order])
        self._keyframes = keyframes if keyframes.size and keyframes[0] == 0 else np.r_[0, keyframes]

    def close(self) -> None:
        if getattr(self, "_container", None) is not None:
            self._run = None
            self._container.close()
        self._container = self._stream = self._run = None
        self._pos = -1

    def _keyframe_before(self, index: int) -> int:
        return int(self._keyframes[np.searchsorted(self._keyframes, index, side="right") - 1])

    def _decode_from(self, keyframe: int) -> Iterator[tuple[int, object]]:
        """Seeks to ``keyframe`` and yields (frame index, av.VideoFrame) in display order."""
        if self._container is None:
            self._container, self._stream = _open_container(self.path)
            self._stream.codec_context.thread_type = "AUTO"
            self._stream.codec_context.thread_count = self._num_threads
        container, stream = self._container, self._stream
        if self._pts is None:
            container.seek(0)
            for i, frame in enumerate(container.decode(stream)):
                self._frames_decoded += 1
                yield i, frame
            return
        container.seek(int(self._pts[keyframe]), stream=stream, backward=True, any_frame=False)
        last = None
        for frame in container.decode(stream):
            self._frames_decoded += 1
            if frame.pts is None:  # no timestamp on this frame: it follows the previous one
                i = keyframe if last is None else last + 1
            else:  # a timestamp the demuxer did not report is placed by value
                i = self._pts_index.get(frame.pts, int(np.searchsorted(self._pts, frame.pts)))
            if last is None and i > keyframe > 0:  # the seek overshot: start one GOP earlier
                yield from self._decode_from(self._keyframe_before(keyframe - 1))
                return
            last = i
            yield i, frame

    def _to_array(self, frame) -> np.ndarray:
        if self.size == self.source_size:
            return frame.to_ndarray(format="rgb24")
        h, w = self.size
        return frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="BILINEAR")

    def _read(self, indices: np.ndarray) -> np.ndarray:
        import av

        out = np.empty((len(indices), *self.size, 3), dtype=np.uint8)
        for j, target in enumerate(indices.tolist()):
            if target >= self._available:
                why = f" ({self._index_error})" if self._index_error else ""
                raise VideoError(
                    f"{self.path}: frame {target} is not in the file: the header declares "
                    f"{self._declared} frames but only the first {self._available} are present"
                    f"{why} (truncated or corrupt file?)"
                )
            keyframe = self._keyframe_before(target)
            if self._run is None or target <= self._pos or keyframe > self._pos:
                self._run, self._pos = self._decode_from(keyframe), -1
            while self._pos < target:
                try:
                    self._pos, frame = next(self._run)
                except StopIteration:
                    where = f"after frame {self._pos}" if self._pos >= 0 else "before it"
                    self.close()
                    raise VideoError(
                        f"{self.path}: could not decode frame {target}: the stream ends {where} "
                        "(truncated or corrupt file?)"
                    ) from None
                except av.FFmpegError as e:
                    self.close()
                    raise VideoError(
                        f"{self.path}: could not decode frame {target} ({e}); truncated or "
                        "corrupt file?"
                    ) from e
            if self._pos != target:
                self.close()
                raise VideoError(
                    f"{self.path}: the decoder skipped frame {target} (went on to frame "
                    f"{self._pos}); the file may be corrupt"
                )
            out[j] = self._to_array(frame)
        return out


# ------------------------------------------------------------------------------------------------
# decord


class DecordVideo(Video):
    """A video file read with ``decord.VideoReader`` on the CPU (no global bridge is set).

    decord 0.6 returns malformed frames (or fails with "DECORDArrayCopyFromTo: The size must
    exactly match") at some small output widths (2, 3, 4, 6, 8, 12, 16, 24, 48, 72 px). Opening
    reads frame 0 to check; if decord's own resize hits the bug, frames are decoded at the file's
    size and resized with PIL instead; if the file's own width hits it, opening fails.
    """

    backend = "decord"

    def __init__(
        self,
        path: str | Path,
        *,
        size: Size = None,
        num_threads: int = 0,
        fallback: bool = False,
    ) -> None:
        path = Path(path)
        # PyAV reads the header first: it validates the file cheaply before decord sees it, and
        # gives the source size that resize-on-read needs before decord's reader is built
        container, stream = _open_container(path)
        source = (stream.codec_context.height, stream.codec_context.width)
        container.close()
        self.path, self.source_size, self.size = path, source, resolve_size(size, source)
        self._num_threads = int(num_threads)
        self._fallback = fallback  # on a decode error, retry the read with PyAV (open_video "auto")
        self._pyav: PyAVVideo | None = None
        self._resize_with_pil = False
        reader = self._open_reader()
        if not self._frame0_ok(reader) and self.size != source:
            self._resize_with_pil = True  # decord's resize hit its stride bug: resize ourselves
            reader = self._open_reader()
        if not self._frame0_ok(reader):
            raise VideoError(
                f"{path}: decord cannot decode frame 0 correctly at width {source[1]} "
                "(a decord stride bug); use backend='pyav'"
            )
        super().__init__(
            path, fps=reader.get_avg_fps(), source_size=source, size=size, length=len(reader)
        )

    def _decode_size(self) -> tuple[int, int]:
        return self.source_size if self._resize_with_pil else self.size

    def _open_reader(self):
        try:
            import decord
        except ImportError as e:
            raise VideoError(f"{self.path}: decord is not installed ({e}); use 'pyav'") from e
        h, w = self._decode_size()
        resize = {} if (h, w) == self.source_size else {"width": w, "height": h}
        try:
            self._reader = decord.VideoReader(
                str(self.path), ctx=decord.cpu(0), num_threads=self._num_threads, **resize
            )
        except Exception as e:  # decord raises DECORDError (a RuntimeError) with a C++ trace
            raise VideoError(f"{self.path}: decord cannot open this file ({_short(e)})") from e
        if len(self._reader) == 0:
            raise VideoError(f"{self.path}: decord finds no frames in this file")
        return self._reader

    def _frame0_ok(self, reader) -> bool:
        try:
            frame = reader.get_batch([0]).asnumpy()
            reader.seek(0)  # stop decord's read-ahead (see _read)
        except Exception:
            return False
        return frame.shape == (1, *self._decode_size(), 3) and frame.dtype == np.uint8

    def close(self) -> None:
        self._reader = None
        if getattr(self, "_pyav", None) is not None:
            self._pyav.close()

    def _read(self, indices: np.ndarray) -> np.ndarray:
        try:
            reader = self._reader if self._reader is not None else self._open_reader()
            frames = reader.get_batch(indices.tolist()).asnumpy()  # (U, h, w, 3)
            # After get_batch, decord's decoder keeps decoding ahead in the background and keeps
            # every frame it decodes: left alone it holds the rest of the video in memory (about
            # 100 MB/s of growth at 480p, the whole file in the end). Seeking back to frame 0
            # stops it; the next read seeks to its own keyframe anyway. Memory stays bounded by
            # the clip being read, at the price of sequential reads re-seeking.
            reader.seek(0)
            if frames.shape != (len(indices), *self._decode_size(), 3):
                raise RuntimeError(f"decord returned frames of shape {frames.shape}")
        except VideoError:
            raise
        except Exception as e:
            if not self._fallback:
                raise VideoError(
                    f"{self.path}: decord could not decode frames {_span(indices)} ({_short(e)})"
                ) from e
            warnings.warn(
                f"{self.path}: decord failed on frames {_span(indices)} ({_short(e)}); "
                "reading them with PyAV",
                stacklevel=3,
            )
            if self._pyav is None:
                self._pyav = PyAVVideo(self.path, size=self.size, num_threads=self._num_threads)
            return self._pyav.get(indices)
        if self._resize_with_pil:
            from PIL import Image

            h, w = self.size
            frames = np.stack(
                [np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames]
            )
        return frames


def _short(error: Exception) -> str:
    """The gist of an error message: decord's start with "[hh:mm:ss] /path/file.cc:123: "."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return re.sub(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", lines[0])


def _span(indices: np.ndarray) -> str:
    return str(int(indices[0])) if len(indices) == 1 else f"{int(indices[0])}..{int(indices[-1])}"


# ------------------------------------------------------------------------------------------------
# Folders of images and masks


def _image_files(folder: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    if not folder.exists():
        raise VideoError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise VideoError(f"{folder}: not a folder of {what}")
    files = sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
        ),
        key=_natural_key,
    )
    if not files:
        hint = ""
        if (folder / "JPEGImages").is_dir():
            hint = "; this looks like a DAVIS root, use davis_sequence(root, seq)"
        raise VideoError(f"{folder}: no {what} ({'/'.join(suffixes)}) in this folder{hint}")
    return files


def _open_image(file: Path):
    from PIL import Image

    try:
        image = Image.open(file)
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise VideoError(f"{file}: cannot read this image ({e})") from e
    return image


class FrameFolder(Video):
    """A folder of jpg/png frames sorted by name, read with PIL."""

    backend = "frames"

    def __init__(self, folder: str | Path, *, size: Size = None, fps: float = 24.0) -> None:
        folder = Path(folder)
        self.files = _image_files(folder, IMAGE_SUFFIXES, "images")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf:
            raise VideoError(f"{folder}: fps={fps!r} must be a positive number")
        from PIL import Image

        try:
            with Image.open(self.files[0]) as first:  # reads the header only
                w, h = first.size
        except (OSError, SyntaxError, ValueError) as e:
            raise VideoError(f"{self.files[0]}: cannot read this image ({e})") from e
        super().__init__(folder, fps=fps, source_size=(h, w), size=size, length=len(self.files))

    def _read(self, indices: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = np.empty((len(indices), *self.size, 3), dtype=np.uint8)
        h, w = self.size
        for j, i in enumerate(indices.tolist()):
            image = _open_image(self.files[i]).convert("RGB")
            if image.size != (self.source_size[1], self.source_size[0]):
                raise VideoError(
                    f"{self.files[i]}: frame is {image.size[1]}x{image.size[0]} (HxW) but "
                    f"{self.files[0].name} is {self.source_size[0]}x{self.source_size[1]}"
                )
            if self.size != self.source_size:
                image = image.resize((w, h), Image.BILINEAR)
            out[j] = np.asarray(image)
        return out


def _mask_labels(image, file: Path) -> np.ndarray:
    """Integer labels (H, W) uint8 of one annotation image."""
    if image.mode == "P":  # DAVIS 2017: palette index = object id, 0 background
        return np.asarray(image, dtype=np.uint8)
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if image.mode in ("RGB", "RGBA", "LA"):
        rgb = np.asarray(image.convert("RGB"))
        if not (rgb == rgb[..., :1]).all():  # some pixel is not grey
            raise VideoError(
                f"{file}: a colour RGB mask; save multi-object masks as palette ('P') PNGs "
                "whose indices are the object ids"
            )
        values = rgb[..., 0]
    elif image.mode in ("L", "I", "I;16", "I;16B", "I;16L"):
        values = np.asarray(image)
    else:
        raise VideoError(f"{file}: unsupported mask image mode '{image.mode}'")
    top = int(values.max())
    if top <= 1 or (top == 255 and np.isin(values, (0, 255)).all()):  # binary 0/1 or 0/255
        return (values > 0).astype(np.uint8)
    if top < 128:  # a grey-level label map: 0, 1, 2, ... as stored
        return values.astype(np.uint8)
    return (values >= 128).astype(np.uint8)  # a soft 0..255 mask, thresholded at half


def load_masks(folder: str | Path, *, size: Size = None) -> np.ndarray:
    """Reads a folder of annotation PNGs (sorted by name) as integer label maps.

    Palette ('P') PNGs (DAVIS 2017) give their palette indices, 0 = background, 1..K objects.
    Binary grayscale or grey RGB masks (DAVIS 2016, 0/255) give 0/1; other grey masks whose values
    are all below 128 are kept as labels; soft grey masks are thresholded at 128.

    Args:
        folder: folder of .png masks, e.g. ``Annotations/480p/<seq>/``.
        size: None keeps the mask size; int = shorter side (aspect kept, even); (H, W) exact.
            Resizing uses nearest neighbour, so labels stay labels.

    Returns:
        uint8 array (N, H, W) of labels.
    """
    from PIL import Image

    folder = Path(folder)
    files = _image_files(folder, (".png",), "mask PNGs")
    masks = None
    for k, file in enumerate(files):
        labels = _mask_labels(_open_image(file), file)  # (H0, W0)
        if masks is None:
            source = labels.shape
            h, w = resolve_size(size, source)
            masks = np.empty((len(files), h, w), dtype=np.uint8)
        elif labels.shape != source:
            raise VideoError(
                f"{file}: mask is {labels.shape[0]}x{labels.shape[1]} (HxW) but "
                f"{files[0].name} is {source[0]}x{source[1]}"
            )
        if (h, w) != source:
            labels = np.asarray(Image.fromarray(labels).resize((w, h), Image.NEAREST))
        masks[k] = labels
    return masks


# ------------------------------------------------------------------------------------------------
# Entry points


def open_video(
    path: str | Path,
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


def open_frames(folder: str | Path, *, size: Size = None, fps: float = 24.0) -> Video:
    """Opens a folder of jpg/png frames, sorted by name, e.g. DAVIS ``JPEGImages/480p/<seq>/``.

    Args:
        folder: the folder of one sequence's frames.
        size: None, int (shorter side) or (H, W), as in ``open_video``; resized with bilinear.
        fps: frame rate to report (DAVIS is 24).

    Returns:
        a ``Video`` with backend "frames".
    """
    return FrameFolder(folder, size=size, fps=fps)


def davis_sequence(
    root: str | Path, seq: str, resolution: str = "480p", *, size: Size = None
) -> tuple[Video, np.ndarray]:
    """Opens one DAVIS sequence: its frames and its annotation masks, checked to agree.

    Args:
        root: DAVIS root holding ``JPEGImages/<resolution>/<seq>/`` and
            ``Annotations/<resolution>/<seq>/`` (DAVIS 2016 or 2017 layout).
        seq: sequence name, e.g. "cows".
        resolution: "480p" or "Full-Resolution".
        size: None, int or (H, W); frames are resized bilinearly and masks by nearest neighbour
            to the same (H, W).

    Returns:
        (video, masks): masks uint8 (N, H, W) labels (0/1 for DAVIS 2016, object ids for 2017),
        one per frame, same (H, W) as ``video.size``.
    """
    root = Path(root)
    frames_dir = root / "JPEGImages" / resolution / seq
    masks_dir = root / "Annotations" / resolution / seq
    if not frames_dir.is_dir():
        parent = root / "JPEGImages" / resolution
        known = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        listing = f"; sequences there: {', '.join(known)}" if known else f"; {parent} not found"
        raise VideoError(f"{frames_dir}: no such DAVIS sequence folder{listing}")
    video = open_frames(frames_dir, size=size)
    masks = load_masks(masks_dir, size=size)
    if len(masks) != len(video):
        raise VideoError(
            f"{root}: sequence '{seq}' has {len(video)} frames but {len(masks)} masks "
            f"({masks_dir}); a test-dev split annotates only the first frame, load its masks "
            "with load_masks"
        )
    if masks.shape[1:] != video.size:
        raise VideoError(
            f"{root}: sequence '{seq}' frames are {video.size} (H, W) but masks are "
            f"{masks.shape[1:]}"
        )
    return video, masks
