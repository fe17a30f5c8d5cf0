"""Write frame sequences (attention maps, segment overlays) as animations: GIF or MP4 files.

Notation::

    T   frames;  H, W  frame height and width in pixels
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from labkit.viz.render import _to_numpy

__all__ = ["Mp4Writer", "write_animation", "animation_html"]


def _frames(frames: Any) -> np.ndarray:
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("write_animation: frames is empty")
        shapes = {np.shape(_to_numpy(f, "write_animation: frames")) for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"write_animation: frames have different shapes {sorted(shapes)}")
        frames = np.stack([_to_numpy(f, "write_animation: frames") for f in frames])
    a = _to_numpy(frames, "write_animation: frames")
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(
            f"write_animation: frames must be uint8 (T, H, W, 3), got {a.dtype} {a.shape}"
        )
    if len(a) == 0 or a.shape[1] == 0 or a.shape[2] == 0:
        raise ValueError(f"write_animation: frames must be non-empty, got shape {a.shape}")
    return a


def _write_gif(frames: np.ndarray, path: Path, fps: float, loop: int) -> None:
    from PIL import Image

    images = [Image.fromarray(f, mode="RGB") for f in frames]
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000.0 / fps)),  # milliseconds; GIF stores hundredths of a second
        loop=loop,
        optimize=False,
    )


class Mp4Writer:
    """Stream frames into an H.264 MP4 one frame (or one batch) at a time, never holding the video.

    The file is written to a temporary ``.<name>.tmp-<pid>`` beside ``path`` (the form
    :func:`labkit.runfolder.remove_stale_temporaries` cleans up after a killed process) and moved
    to ``path`` by :meth:`close`, so ``path`` is either absent or a complete, playable file.
    libx264, ``yuv420p``, ``+faststart``; odd heights or widths are padded by one row/column
    repeating the edge (yuv420p needs even sizes). Memory: the encoder's own look-ahead (a few
    frames with ``preset="veryfast"``), whatever the length of the video.

    Use as a context manager: leaving the block without an exception closes (finishes) the file;
    an exception deletes the temporary and leaves no ``path``.

    Args:
        path: Output ``.mp4`` file; missing parent folders are created.
        fps: Frames per second, > 0 (kept as a fraction, e.g. 30000/1001).
        crf: x264 constant rate factor (0 lossless .. 51 worst; 18 looks lossless).
        preset: x264 speed preset (``"veryfast"`` ... ``"veryslow"``): slower is smaller, not
            better.
    """

    def __init__(
        self, path: str | Path, fps: float, *, crf: int = 18, preset: str = "medium"
    ) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"Mp4Writer: {self.path}: the file name must end in .mp4")
        if not fps > 0:
            raise ValueError(f"Mp4Writer: fps must be > 0, got {fps}")
        if not 0 <= int(crf) <= 51:
            raise ValueError(f"Mp4Writer: crf must be in 0..51, got {crf}")
        self.fps, self.crf, self.preset = float(fps), int(crf), str(preset)
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (H, W) of the first frame, as given
        self._container: Any = None
        self._stream: Any = None
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")

    def _open(self, height: int, width: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        options = {"movflags": "+faststart"}  # index first: plays while loading in a browser
        self._container = av.open(str(self._tmp), mode="w", format="mp4", options=options)
        stream = self._container.add_stream(
            "libx264", rate=Fraction(self.fps).limit_denominator(1001)
        )
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"  # the format every player decodes
        stream.options = {"crf": str(self.crf), "preset": self.preset}
        self._stream = stream
        self.size = (height, width)

    def write(self, frames: Any) -> None:
        """Encode one uint8 ``(H, W, 3)`` frame or a batch ``(n, H, W, 3)``, all of the first
        size.
        """
        import av

        a = _to_numpy(frames, "Mp4Writer.write: frames")
        a = a[None] if a.ndim == 3 else a
        if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or 0 in a.shape[1:3]:
            raise ValueError(
                "Mp4Writer.write: frames must be uint8 (H, W, 3) or (n, H, W, 3), got "
                f"{a.dtype} {a.shape}"
            )
        if self._container is None:
            if self.frames_written:
                raise ValueError(f"Mp4Writer: {self.path} is closed")
            self._open(a.shape[1], a.shape[2])
        if a.shape[1:3] != self.size:
            raise ValueError(
                f"Mp4Writer.write: frames of {a.shape[1:3]} after frames of {self.size}"
            )
        H, W = self.size
        a = (
            np.pad(a, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
            if H % 2 or W % 2
            else a
        )
        for f in a:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames_written += 1

    def close(self) -> Path:
        """Flush the encoder, close the file and move it to ``path``; returns ``path``."""
        if self._container is None:
            if not self.frames_written:
                raise ValueError(f"Mp4Writer: no frames were written to {self.path}")
            return self.path
        try:
            for packet in self._stream.encode():  # flush the encoder
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close without finishing: the temporary file is deleted, ``path`` is not written."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
            self._container = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _write_mp4(frames: np.ndarray, path: Path, fps: float, crf: int) -> None:
    with Mp4Writer(path, fps, crf=crf) as writer:
        writer.write(frames)


def write_animation(
    frames: Any,
    path: str | Path,
    fps: float = 8.0,
    *,
    loop: int = 0,
    crf: int = 18,
) -> Path:
    """Write frames as an animated GIF (Pillow) or an H.264 MP4 (PyAV), chosen by the suffix.

    GIF: each frame gets its own 256-colour palette; the frame duration is ``1000 / fps`` ms,
    which GIF rounds to hundredths of a second; identical consecutive frames are stored once with
    their durations added (Pillow's behaviour), so the playing time is unchanged. MP4: libx264,
    ``yuv420p`` (plays everywhere, including browsers and notebooks), ``+faststart``; odd heights
    or widths are padded by one row/column repeating the edge, because yuv420p needs even sizes.

    Args:
        frames: uint8 ``(T, H, W, 3)`` RGB, or a sequence of ``(H, W, 3)`` frames of one size.
        path: Output file, ending in ``.gif`` or ``.mp4``; missing parent folders are created.
        fps: Frames per second, > 0.
        loop: GIF only: number of repeats, 0 = loop forever.
        crf: MP4 only: x264 constant rate factor (0 lossless .. 51 worst; 18 looks lossless).

    Returns:
        The path written, as a ``Path``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(
            f"write_animation: {path}: unsupported suffix {path.suffix!r} (use .gif or .mp4)"
        )
    if not fps > 0:
        raise ValueError(f"write_animation: fps must be > 0, got {fps}")
    a = _frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        _write_gif(a, path, float(fps), int(loop))
    else:
        _write_mp4(a, path, float(fps), int(crf))
    return path


def animation_html(path: str | Path, *, width: int | None = None) -> str:
    """An HTML element that plays a GIF or MP4 file with the file's bytes inside it (base64).

    ``IPython.display.HTML(animation_html(path))`` plays in JupyterLab and stays playing in the
    notebook's HTML export (nbconvert keeps ``text/html`` outputs; ``Image(filename=...)`` of a
    GIF is exported as the text ``<IPython.core.display.Image object>``). A GIF becomes
    ``<img src="data:image/gif;base64,...">``, an MP4 a looping, muted, autoplaying ``<video>``.

    Args:
        path: a ``.gif`` or ``.mp4`` file (e.g. from :func:`write_animation`).
        width: display width in CSS pixels; default the file's own width (at most the page's).

    Returns:
        The HTML text (about 4/3 of the file's size).
    """
    import base64
    import html

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(
            f"animation_html: {path}: unsupported suffix {path.suffix!r} (use .gif or .mp4)"
        )
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    style = "max-width: 100%;" + (f" width: {int(width)}px;" if width else "")
    alt = html.escape(path.name, quote=True)
    if suffix == ".gif":
        return f'<img src="data:image/gif;base64,{data}" alt="{alt}" style="{style}">'
    return (
        f'<video autoplay loop muted playsinline controls style="{style}" title="{alt}">'
        f'<source src="data:video/mp4;base64,{data}" type="video/mp4"></video>'
    )
