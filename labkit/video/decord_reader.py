"""Video files read with decord on the CPU, with its read-ahead stopped and its small-width bug
avoided.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from labkit.video.base import Size, Video, VideoError, resolve_size
from labkit.video.pyav_reader import PyAVVideo, _open_container


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
        pyav = getattr(self, "_pyav", None)  # None also when __init__ failed early
        if pyav is not None:
            pyav.close()

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
                [
                    np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR))
                    for f in frames
                ]
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
