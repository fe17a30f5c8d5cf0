"""Pictures of one patch's similarity with every patch of a clip (dino-vit-features' click demo).

Compute is :func:`labkit.embedding.patch_similarity` (cosine, (T, gh, gw)); here the maps become
uint8 arrays: a heat map over a frame with the clicked patch outlined, a colour bar with its
numbers, a strip of frames over the clip on one shared scale, and a grey placeholder with a line
of text for pictures that are still being computed. numpy and Pillow only (no torch).

Notation: T frames, gh x gw patch grid, H x W frame pixels, p patch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from labkit.viz.artifacts import norms_to_rgb, outline_patches
from labkit.viz.render import _font, caption, overlay

__all__ = [
    "CLICKED_RGB",
    "SIMILARITY_CMAP",
    "colour_bar",
    "placeholder",
    "similarity_overlay",
    "similarity_strip",
    "strip_frames",
]

SIMILARITY_CMAP = "inferno"  # dark: unlike the clicked patch; bright yellow: alike
CLICKED_RGB = (0, 229, 255)  # cyan outline of the clicked patch (as in the embedding view)


def placeholder(size: tuple[int, int], text: str) -> np.ndarray:
    """A grey picture with one or more lines of centred text, for a panel not computed yet.

    Args:
        size: (H, W) pixels.
        text: what is being computed (newlines start new lines).

    Returns:
        uint8 (H, W, 3).
    """
    from PIL import Image, ImageDraw

    height, width = (int(s) for s in size)
    image = Image.new("RGB", (width, height), (96, 96, 96))
    draw = ImageDraw.Draw(image)
    font_size = int(min(18, max(9, round(min(height, width) / 14))))
    font = _font(font_size)
    lines = str(text).split("\n")
    top = (height - len(lines) * round(font_size * 1.3)) // 2
    for n, line in enumerate(lines):
        left = max(2, (width - int(draw.textlength(line, font=font))) // 2)
        draw.text((left, top + n * round(font_size * 1.3)), line, fill=(235, 235, 235), font=font)
    return np.asarray(image)


def similarity_overlay(
    frame: np.ndarray,
    similarity: Any,
    *,
    patch_size: int,
    vmin: float,
    vmax: float = 1.0,
    alpha: float = 0.6,
    patch: tuple[int, int] | None = None,
) -> np.ndarray:
    """One frame's similarity map as a heat map over the frame, the clicked patch outlined.

    Args:
        frame: uint8 (H, W, 3).
        similarity: (gh, gw) cosine similarities of this frame's patches with the clicked one.
        patch_size: p.
        vmin, vmax: similarities drawn at the bottom and top of :data:`SIMILARITY_CMAP`.
        alpha: opacity of the heat map (1: the map alone).
        patch: (i, j) of the clicked patch when it is in this frame, outlined in cyan.

    Returns:
        uint8 (H, W, 3): :func:`labkit.viz.render.overlay` of the map (upsampled bilinearly
        between patch centres, the one border rule) through :data:`SIMILARITY_CMAP`.
    """
    sim = np.asarray(similarity, dtype=np.float32)
    out = overlay(
        frame,
        sim,
        alpha,
        SIMILARITY_CMAP,
        vmin=vmin,
        vmax=vmax,
        patch_size=patch_size,
        mode="bilinear",
    )  # uint8 (H, W, 3)
    if patch is not None:
        mask = np.zeros(sim.shape, dtype=bool)
        mask[patch[0], patch[1]] = True
        out = outline_patches(out, mask, patch_size, colour=CLICKED_RGB, width=2)
    return out


def colour_bar(
    height: int, vmin: float, vmax: float, label: str = "cosine", *, width: int = 72
) -> np.ndarray:
    """A vertical colour bar of :data:`SIMILARITY_CMAP` with its top, middle and bottom values.

    Args:
        height: pixels (the height of the picture it stands beside).
        vmin, vmax: the values at the bottom and the top.
        label: one word written above the numbers.
        width: pixels.

    Returns:
        uint8 (height, width, 3), white background.
    """
    from PIL import Image, ImageDraw

    height, width = int(height), int(width)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    size = int(min(13, max(8, height // 12)))
    top, bottom = size + 6, height - size - 2  # room for the lowest number's text
    bar = np.linspace(vmax, vmin, max(bottom - top, 2), dtype=np.float32)[:, None]  # (n, 1)
    rgb = norms_to_rgb(np.repeat(bar, 12, axis=1), vmax=vmax, vmin=vmin, cmap=SIMILARITY_CMAP)
    out[top : top + len(bar), 4:16] = rgb
    image = Image.fromarray(out)
    draw = ImageDraw.Draw(image)
    font = _font(size)
    draw.text((2, 1), label, fill=(0, 0, 0), font=font)
    for value, y in ((vmax, top), ((vmin + vmax) / 2, (top + bottom) // 2), (vmin, bottom)):
        draw.text((19, y - size // 2 - 1), f"{value:.2f}", fill=(0, 0, 0), font=font)
    return np.asarray(image)


def strip_frames(num_frames: int, count: int, include: Sequence[int] = ()) -> list[int]:
    """Positions of up to ``count`` frames spread evenly over a clip, plus those in ``include``.

    Returns:
        Sorted, distinct positions in 0..num_frames-1.
    """
    even = np.linspace(0, num_frames - 1, min(int(count), num_frames)).round().astype(int)
    return sorted({*(int(t) for t in even), *(int(t) for t in include if 0 <= t < num_frames)})


def similarity_strip(
    frames: np.ndarray,
    maps: Any,
    labels: Sequence[str],
    *,
    patch_size: int,
    vmin: float,
    vmax: float = 1.0,
    alpha: float = 0.6,
    patch: tuple[int, int, int] | None = None,
    positions: Sequence[int] | None = None,
    per_row: int = 5,
    scale: float = 0.5,
) -> np.ndarray:
    """Similarity heat maps of several frames on one scale, in rows, with one colour bar.

    Args:
        frames: uint8 (n, H, W, 3) the frames shown.
        maps: (n, gh, gw) their similarity maps.
        labels: a caption per frame (e.g. ``"frame 12"``).
        patch_size: p.
        vmin, vmax: the shared colour scale.
        alpha: opacity of the heat maps.
        patch: (t, i, j) of the clicked patch; outlined on the frame whose position is t.
        positions: the frames' positions in the clip (for ``patch``); default 0..n-1.
        per_row: frames per row.
        scale: size of each frame relative to its pixels (nearest neighbour would alias; Pillow's
            box filter).

    Returns:
        uint8 (rows x h', per_row x w' + bar, 3), white gaps of 4 pixels.
    """
    from PIL import Image

    sims = np.asarray(maps, dtype=np.float32)
    n = len(frames)
    if sims.shape[0] != n or len(labels) != n:
        raise ValueError(
            f"similarity_strip: {n} frames, {sims.shape[0]} maps and {len(labels)} labels"
        )
    pos = list(range(n)) if positions is None else [int(t) for t in positions]
    height, width = frames.shape[1:3]
    th, tw = max(16, round(height * scale)), max(16, round(width * scale))
    tiles = []
    for k in range(n):
        clicked = (patch[1], patch[2]) if patch is not None and patch[0] == pos[k] else None
        pic = similarity_overlay(
            frames[k],
            sims[k],
            patch_size=patch_size,
            vmin=vmin,
            vmax=vmax,
            alpha=alpha,
            patch=clicked,
        )
        pic = np.asarray(Image.fromarray(pic).resize((tw, th), Image.Resampling.BOX))
        tiles.append(caption(pic, labels[k], font_size=max(9, th // 10)))
    cols = min(per_row, n)
    rows = -(-n // cols)
    gap = 4
    out = np.full((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        out[r * (th + gap) : r * (th + gap) + th, c * (tw + gap) : c * (tw + gap) + tw] = tile
    return np.concatenate([out, colour_bar(len(out), vmin, vmax)], axis=1)
