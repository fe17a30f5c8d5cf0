"""Video files read with PyAV (FFmpeg): demux once for timestamps, seek to a keyframe, decode
forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labkit.video.base import Size, Video, VideoError

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream


def _open_container(path: Path) -> tuple[InputContainer, VideoStream]:
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
        self._container: InputContainer | None = None
        self._stream: VideoStream | None = None
        self._run: Iterator[tuple[int, VideoFrame]] | None = None
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
        container = getattr(self, "_container", None)  # None also when __init__ failed early
        if container is not None:
            self._run = None
            container.close()
        self._container = self._stream = self._run = None
        self._pos = -1

    def _keyframe_before(self, index: int) -> int:
        return int(self._keyframes[np.searchsorted(self._keyframes, index, side="right") - 1])

    def _decode_from(self, keyframe: int) -> Iterator[tuple[int, VideoFrame]]:
        """Seeks to ``keyframe`` and yields (frame index, av.VideoFrame) in display order."""
        container, stream = self._container, self._stream
        if container is None or stream is None:  # both are set and cleared together
            container, stream = _open_container(self.path)
            stream.codec_context.thread_type = "AUTO"
            stream.codec_context.thread_count = self._num_threads
            self._container, self._stream = container, stream
        if self._pts is None or self._pts_index is None:  # both None without timestamps
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

    def _to_array(self, frame: VideoFrame) -> np.ndarray:
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
