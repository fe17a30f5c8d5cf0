"""Write frame sequences (attention maps, segment overlays) as animations: GIF or MP4 files.

Notation::

    T   frames;  H, W  frame height and width in pixels
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from labkit.viz.render import _to_numpy

__all__ = ["write_animation"]


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


def _write_mp4(frames: np.ndarray, path: Path, fps: float, crf: int) -> None:
    import av

    # yuv420p subsamples colour 2x2, so libx264 needs even sizes: repeat the last row/column.
    T, H, W, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
    rate = Fraction(fps).limit_denominator(1001)
    options = {"movflags": "+faststart"}  # index first: plays while loading in a browser
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"  # the format every player decodes
        stream.options = {"crf": str(crf)}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)


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
