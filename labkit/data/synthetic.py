"""The synthetic default video: textured objects over a textured floor under a panning camera.

Generated deterministically from a seed in a few seconds, with exact ground-truth masks, so the lab
works (and tracking and segmentation can be measured) without downloading anything. On disk::

    <root>/synthetic.mp4                        H.264, yuv420p, ``fps`` frames per second
    <root>/JPEGImages/480p/synthetic/00000.jpg  the same frames as JPEG (DAVIS layout)
    <root>/Annotations/480p/synthetic/00000.png palette PNG masks, 0 = background, 1..K objects
    <root>/sequences.txt                        "synthetic"

The hard variant's sequence (and mp4) is called ``synthetic-hard`` instead, so that a table or
figure of either dataset says which video it shows (:func:`sequence_name`).
    <root>/meta.json                            parameters, generator version, object descriptions

The folder is called ``480p`` because that is the DAVIS convention that DAVIS readers expect; the
frames have whatever ``size`` says (360 x 640 by default).

Notation:
    T frames, H x W frame height and width (pixels), K objects (mask labels 1..K, 0 = background),
    Hb x Wb background texture (world pixels; it tiles in both directions), t time in seconds.

Geometry. The world is the background texture, in pixels at zoom 1. A camera at world point
(cam_y, cam_x) with zoom z sees frame pixel centre p = (i + 0.5, j + 0.5) at world point
cam + (p - (H, W) / 2) / z; it pans sideways at constant speed, sways a little vertically and zooms
gently in and out. Objects live in frame coordinates: object k's centre follows a Lissajous path,
and it rotates and breathes in scale (also scaled by the camera zoom). Each object is a shape in
its own unit frame (bounding radius 1) painted with a texture defined in that frame, so the
texture moves with the object. A pixel belongs to the front-most object whose shape contains the
pixel centre; the frame colour and the mask label come from that one test, so masks are exact.
Larger objects are further back, so occlusions hide parts of objects, rarely whole ones.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import socket
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import numpy as np

from labkit.data.location import data_dir

__all__ = [
    "GENERATOR_VERSION",
    "SEQUENCE",
    "SyntheticVideo",
    "default_dataset",
    "default_video",
    "ensure_synthetic",
    "generate_synthetic",
    "render_synthetic",
    "sequence_name",
]

GENERATOR_VERSION = 1  # bump whenever the pixels change: cached datasets are then regenerated
SEQUENCE = "synthetic"
RESOLUTION = "480p"  # DAVIS folder name, kept whatever the frame size is
MAX_OBJECTS = 8
VIDEO_CRF = 18  # x264 quality: near-transparent, so the mp4 and the JPEG frames agree closely
JPEG_QUALITY = 90
_GENERATOR = "labkit.data.synthetic"

_SHAPES = ("ellipse", "rounded_rect", "star", "blob")
_TEXTURES = ("stripes", "dots", "checker", "rings")
# (base, pattern) colours per object: saturated, so they stand apart from the muted floor.
_OBJECT_COLORS = (
    ((215, 35, 40), (250, 205, 35)),  # red / yellow
    ((30, 75, 210), (235, 240, 250)),  # blue / white
    ((240, 120, 20), (95, 25, 150)),  # orange / purple
    ((20, 185, 200), (20, 25, 35)),  # cyan / black
    ((225, 40, 160), (130, 230, 40)),  # magenta / lime
    ((245, 245, 245), (200, 20, 20)),  # white / red
    ((250, 225, 50), (30, 120, 60)),  # yellow / green
    ((25, 25, 30), (240, 150, 200)),  # black / pink
)
_OBJECT_RADII = (0.30, 0.26, 0.23, 0.21, 0.19, 0.18, 0.17, 0.16)  # bounding radius / H
_FLOOR_COLORS = ((118, 128, 92), (160, 142, 112), (96, 106, 118))  # olive, tan, slate
VARIANTS = ("easy", "hard")
# The hard variant's objects wear the floor's own colours (two of olive, tan, slate, shared between
# objects) and one texture, paving-like checks; lighting and pattern change over time; two poles in
# front of everything (background in the masks) occlude the objects as the camera pans.
_HARD_TEXTURE = "checker"
_HARD_RADII = (0.24, 0.23, 0.22, 0.21, 0.2, 0.19, 0.18, 0.17)  # similar sizes: no size cue
_NUM_POLES = 2


@dataclass(frozen=True)
class SyntheticVideo:
    """Paths and parameters of a generated synthetic video (layout in the module docstring)."""

    root: Path  # DAVIS-layout root; also holds the mp4, sequences.txt and meta.json
    video: Path  # <root>/<sequence>.mp4
    sequence: str  # DAVIS sequence name: "synthetic", or "synthetic-hard" for the hard variant
    num_frames: int  # T
    size: tuple[int, int]  # (H, W)
    num_objects: int  # K: mask labels are 0 (background) and 1..K
    fps: float
    seed: int
    variant: str = "easy"  # "hard": camouflaged objects, changing looks, occluding poles

    @property
    def frames_dir(self) -> Path:
        return self.root / "JPEGImages" / RESOLUTION / self.sequence

    @property
    def masks_dir(self) -> Path:
        return self.root / "Annotations" / RESOLUTION / self.sequence

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class _Params:
    num_frames: int
    size: tuple[int, int]
    num_objects: int
    fps: float
    seed: int
    variant: str = "easy"

    def __post_init__(self) -> None:
        def is_int(x: object) -> bool:
            return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

        if not is_int(self.num_frames) or self.num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {self.num_frames!r}")
        try:
            size = tuple(self.size)
        except TypeError:
            size = ()
        if len(size) != 2 or not all(is_int(s) and s >= 16 and s % 2 == 0 for s in size):
            raise ValueError(
                f"size must be (H, W) with even ints >= 16 (H.264 yuv420p needs even sides), "
                f"got {self.size!r}"
            )
        if not is_int(self.num_objects) or not 0 <= self.num_objects <= MAX_OBJECTS:
            raise ValueError(
                f"num_objects must be an int in 0..{MAX_OBJECTS}, got {self.num_objects!r}"
            )
        if (
            not isinstance(self.fps, (int, float, np.integer, np.floating))
            or isinstance(self.fps, bool)
            or not 0 < self.fps < 1000
        ):
            raise ValueError(f"fps must be a positive number below 1000, got {self.fps!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))

    def to_json(self) -> dict:
        out = {
            "num_frames": int(self.num_frames),
            "size": [self.size[0], self.size[1]],
            "num_objects": int(self.num_objects),
            "fps": float(self.fps),
            "seed": int(self.seed),
        }
        if self.variant != "easy":  # the easy video's meta.json (and its cache) stay as they were
            out["variant"] = self.variant
        return out


# ----------------------------------------------------------------------------- scene


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth tiling noise: random lattice values, smoothstep-interpolated; (Hb, Wb) in [0, 1]."""
    hb, wb = shape
    cy, cx = max(1, round(hb / cell)), max(1, round(wb / cell))
    lattice = rng.random((cy, cx), dtype=np.float32)

    def axis(n: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = (np.arange(n) + 0.5) * (c / n)  # lattice coordinate of each pixel centre
        i0 = np.floor(g).astype(np.int64)
        f = g - i0
        f = (f * f * (3 - 2 * f)).astype(np.float32)
        return i0 % c, (i0 + 1) % c, f  # wrap: the texture tiles

    y0, y1, fy = axis(hb, cy)
    x0, x1, fx = axis(wb, cx)
    rows = lattice[y0] * (1 - fy)[:, None] + lattice[y1] * fy[:, None]  # (Hb, cx)
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx  # (Hb, Wb)


def _floor_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The world: a paved floor of muted colours; uint8 (Hb, Wb, 3) = (2H, 3W, 3), tiling."""
    hb, wb = 2 * h, 3 * w

    def fbm(base_cell: float) -> np.ndarray:
        octaves = [(1.0, 1.0), (0.5, 0.5), (0.25, 0.25)]  # (cell factor, amplitude)
        total = sum(a for _, a in octaves)
        layers = (a * _value_noise(rng, (hb, wb), base_cell * c) for c, a in octaves)
        return cast(np.ndarray, sum(layers)) / total  # a sum of arrays: an array

    olive, tan, slate = (np.array(c, np.float32) for c in _FLOOR_COLORS)
    m1 = np.clip((fbm(0.5 * h) - 0.3) / 0.4, 0, 1)[..., None]  # (Hb, Wb, 1)
    m2 = np.clip((fbm(0.35 * h) - 0.45) / 0.3, 0, 1)[..., None]
    tex = olive * (1 - m1) + tan * m1
    tex = tex * (1 - 0.7 * m2) + slate * (0.7 * m2)

    # Paving stones: a random brightness per stone and dark grout lines between them.
    ty, tx = max(1, round(hb / (0.4 * h))), max(1, round(wb / (0.4 * h)))
    sy, sx = hb / ty, wb / tx  # stone size; the counts divide the texture, so it still tiles
    yc, xc = np.arange(hb) + 0.5, np.arange(wb) + 0.5
    stone = rng.uniform(0.85, 1.12, (ty, tx)).astype(np.float32)
    tex *= stone[(yc // sy).astype(np.int64)][:, (xc // sx).astype(np.int64)][..., None]
    dy = np.minimum(yc % sy, sy - yc % sy)  # distance to the nearest grout line
    dx = np.minimum(xc % sx, sx - xc % sx)
    grout = np.minimum(dy[:, None], dx[None, :])  # (Hb, Wb)
    half = max(0.012 * h, 0.75)
    tex *= (0.6 + 0.4 * np.clip(grout - half, 0, 1)).astype(np.float32)[..., None]

    grain = _value_noise(rng, (hb, wb), max(0.015 * h, 1.5))  # fine gravel-like grain
    tex *= (0.9 + 0.2 * grain)[..., None]
    return np.clip(tex + 0.5, 0, 255).astype(np.uint8)


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which points (u, v) of the object's unit frame lie inside its shape (all within radius 1)."""
    if shape == "ellipse":
        return u * u + (v / 0.62) ** 2 <= 1.0
    if shape == "rounded_rect":  # half sides 0.88 x 0.58, corner radius 0.25
        qx, qy = np.abs(u) - 0.63, np.abs(v) - 0.33
        dist = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
        return dist <= 0.25
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    if shape == "star":  # five points reaching radius 0.95, valleys at 0.5
        return r <= 0.5 + 0.45 * ((1 + np.cos(5 * theta)) / 2) ** 1.5
    if shape == "blob":
        return r <= 0.76 + 0.13 * np.cos(3 * theta + 1.0) + 0.08 * np.sin(2 * theta + 0.5)
    raise ValueError(f"unknown shape {shape!r}")


def _pattern(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Weight of the pattern colour at (u, v) in the object's unit frame, float in [0, 1]."""
    if texture == "stripes":  # diagonal, period 1/3
        s = np.sin(2 * np.pi * 3.0 * (0.8 * u + 0.6 * v))
    elif texture == "dots":  # dots of radius 0.1 on a 0.3 grid
        p = 0.3
        a, b = u / p - np.round(u / p), v / p - np.round(v / p)
        return np.clip((0.1 - np.hypot(a, b) * p) / 0.03 + 0.5, 0, 1)
    elif texture == "checker":  # squares of side 0.3
        s = 4 * np.sin(np.pi * u / 0.3) * np.sin(np.pi * v / 0.3)
    elif texture == "rings":
        s = np.sin(2 * np.pi * 3.2 * np.hypot(u, v))
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return np.clip(0.5 + 2.5 * s, 0, 1)  # soft-edged two-tone bands


@dataclass(frozen=True)
class _Object:
    label: int
    shape: str
    texture: str
    colors: np.ndarray  # (2, 3) float32: base, pattern
    radius: float  # bounding radius in pixels at scale 1 and zoom 1
    amp: tuple[float, float]  # Lissajous amplitude (y / H, x / W)
    freq: tuple[float, float]  # Hz
    phase: tuple[float, float]
    angle0: float
    spin: float  # rad / s
    breathe: tuple[float, float, float]  # scale amplitude, Hz, phase
    light: tuple[float, float, float] = (0.0, 0.0, 0.0)  # brightness amplitude, Hz, phase
    swap: tuple[float, float] = (0.0, 0.0)  # Hz and phase of the base/pattern colour exchange

    def appearance(self, t: float) -> tuple[float, float]:
        """(brightness factor, pattern exchange in [0, 1]) at time t; (1, 0) for a steady look."""
        a, f, p = self.light
        brightness = 1.0 + a * math.sin(2 * math.pi * f * t + p)
        exchange = 0.5 - 0.5 * math.cos(2 * math.pi * self.swap[0] * t + self.swap[1])
        return brightness, exchange if self.swap[0] > 0 else 0.0

    def pose(self, t: float, h: int, w: int) -> tuple[float, float, float, float]:
        """(cy, cx, angle, scale) at time t, centre in frame pixels."""
        cy = h * (0.5 + self.amp[0] * math.sin(2 * math.pi * self.freq[0] * t + self.phase[0]))
        cx = w * (0.5 + self.amp[1] * math.sin(2 * math.pi * self.freq[1] * t + self.phase[1]))
        a, f, p = self.breathe
        return cy, cx, self.angle0 + self.spin * t, 1.0 + a * math.sin(2 * math.pi * f * t + p)


class _Scene:
    """Everything that is fixed for a video: floor texture, camera path and objects."""

    def __init__(self, params: _Params) -> None:
        self.params = params
        h, w = params.size
        k = params.num_objects
        # Independent streams: the floor and camera do not depend on how many objects there are.
        streams = np.random.SeedSequence(params.seed).spawn(1 + MAX_OBJECTS)
        rng = np.random.default_rng(streams[0])
        floor = _floor_texture(rng, h, w)  # (Hb, Wb, 3)
        self.floor_size = floor.shape[:2]
        # Padded by one frame (plus the bilinear neighbours) with its own wrap-around, so any camera
        # view is a box of this image, resampled by Pillow's bilinear resize.
        from PIL import Image

        padded = np.pad(floor, ((0, h + 2), (0, w + 2), (0, 0)), mode="wrap")
        self._floor_img = Image.fromarray(padded)
        self.cam_start = (rng.uniform(0, 2 * h), rng.uniform(0, 3 * w))
        self.cam_phase = (rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi))
        self.objects = [
            self._make_object(i, k, np.random.default_rng(streams[1 + i])) for i in range(k)
        ]
        self.depth_order = sorted(range(k), key=lambda i: -self.objects[i].radius)  # back to front
        # Poles (hard variant): (world x at t = 0 as a fraction of W, half width / W, parallax),
        # drawn in front of the objects; parallax > 1: nearer the camera than the floor.
        pole_rng = np.random.default_rng(np.random.SeedSequence([params.seed, 7]))
        self.poles = (
            [
                (
                    (j + pole_rng.uniform(0.2, 0.8)) / _NUM_POLES,
                    pole_rng.uniform(0.025, 0.04),
                    pole_rng.uniform(1.6, 2.2),
                )
                for j in range(_NUM_POLES)
            ]
            if params.variant == "hard"
            else []
        )
        self._yc = np.arange(h, dtype=np.float32) + 0.5  # pixel centres
        self._xc = np.arange(w, dtype=np.float32) + 0.5

    def _make_object(self, i: int, k: int, rng: np.random.Generator) -> _Object:
        h = self.params.size[0]
        if self.params.variant == "hard":
            return self._make_hard_object(i, k, rng)
        return _Object(
            label=i + 1,
            shape=_SHAPES[i % len(_SHAPES)],
            texture=_TEXTURES[(i + i // len(_TEXTURES)) % len(_TEXTURES)],
            colors=np.array(_OBJECT_COLORS[i], np.float32),
            radius=_OBJECT_RADII[i] * h * rng.uniform(0.92, 1.08),
            amp=(rng.uniform(0.14, 0.22), rng.uniform(0.26, 0.34)),
            freq=(rng.uniform(0.12, 0.22), rng.uniform(0.10, 0.18)),
            # spread the objects across the frame at t = 0
            phase=(rng.uniform(0, 2 * np.pi), 2 * np.pi * i / k + rng.uniform(-0.3, 0.3)),
            angle0=rng.uniform(0, 2 * np.pi),
            spin=rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.6),
            breathe=(rng.uniform(0.06, 0.12), rng.uniform(0.15, 0.35), rng.uniform(0, 2 * np.pi)),
        )

    def _make_hard_object(self, i: int, k: int, rng: np.random.Generator) -> _Object:
        """An object dressed like the floor: its colours are two of the floor's, shared."""
        h = self.params.size[0]
        floor = np.array(_FLOOR_COLORS, np.float32)  # (3, 3)
        base, pattern = floor[i % 3], floor[(i + 1 + i // 3) % 3]
        tint = rng.uniform(0.9, 1.1)  # a stone's spread of brightness, no more
        return _Object(
            label=i + 1,
            shape=_SHAPES[i % len(_SHAPES)],
            texture=_HARD_TEXTURE,
            colors=np.stack([base * tint, pattern * tint]).astype(np.float32),
            radius=_HARD_RADII[i] * h * rng.uniform(0.95, 1.05),
            amp=(rng.uniform(0.2, 0.28), rng.uniform(0.3, 0.38)),  # wider paths: more overlaps
            freq=(rng.uniform(0.14, 0.24), rng.uniform(0.12, 0.2)),
            phase=(rng.uniform(0, 2 * np.pi), 2 * np.pi * i / k + rng.uniform(-0.3, 0.3)),
            angle0=rng.uniform(0, 2 * np.pi),
            spin=rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.6),
            breathe=(rng.uniform(0.06, 0.12), rng.uniform(0.15, 0.35), rng.uniform(0, 2 * np.pi)),
            light=(rng.uniform(0.18, 0.28), rng.uniform(0.2, 0.35), rng.uniform(0, 2 * np.pi)),
            swap=(rng.uniform(0.08, 0.14), rng.uniform(0, 2 * np.pi)),
        )

    def pole_spans(self, t: float) -> list[tuple[int, int]]:
        """Column ranges [j0, j1) covered by the poles at time t (hard variant; else none)."""
        h, w = self.params.size
        cam_x = self.camera(t)[1] - self.cam_start[1]  # world pan since t = 0, pixels
        spans = []
        for x0, half, parallax in self.poles:
            period = w * (1 + 2 * half)  # a pole leaves on the left and comes back on the right
            cx = (x0 * w - parallax * cam_x) % period - half * w
            j0, j1 = max(round(cx - half * w), 0), min(round(cx + half * w), w)
            if j0 < j1:
                spans.append((j0, j1))
        return spans

    def camera(self, t: float) -> tuple[float, float, float]:
        """(cam_y, cam_x, zoom) at time t: world point at the frame centre, and zoom >= 1."""
        h = self.params.size[0]
        cam_y = self.cam_start[0] + 0.05 * h * math.sin(2 * math.pi * t / 4.5 + self.cam_phase[0])
        cam_x = self.cam_start[1] + 0.5 * h * t  # pan right at half a frame height per second
        zoom = 1.07 + 0.07 * math.sin(2 * math.pi * t / 6.0 + self.cam_phase[1])
        return cam_y, cam_x, zoom

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``index``: (frame uint8 (H, W, 3) RGB, labels uint8 (H, W) in 0..K)."""
        h, w = self.params.size
        t = index / self.params.fps
        cam_y, cam_x, zoom = self.camera(t)
        frame = self._view(cam_y - h / 2 / zoom, cam_x - w / 2 / zoom, zoom)  # (H, W, 3) uint8
        labels = np.zeros((h, w), np.uint8)
        for i in self.depth_order:
            obj = self.objects[i]
            cy, cx, angle, scale = obj.pose(t, h, w)
            r = obj.radius * scale * zoom  # bounding radius in pixels now
            i0, i1 = max(math.floor(cy - r), 0), min(math.ceil(cy + r) + 1, h)
            j0, j1 = max(math.floor(cx - r), 0), min(math.ceil(cx + r) + 1, w)
            if i0 >= i1 or j0 >= j1:
                continue
            dy = (self._yc[i0:i1] - cy)[:, None]  # (h', 1)
            dx = (self._xc[j0:j1] - cx)[None, :]  # (1, w')
            c, s = math.cos(angle), math.sin(angle)
            u = (c * dx + s * dy) / r  # (h', w') object unit frame
            v = (c * dy - s * dx) / r
            inside = _inside(obj.shape, u, v)  # (h', w') bool
            u, v = u[inside], v[inside]  # (n,) the object's pixels only
            weight = _pattern(obj.texture, u, v)[:, None]  # (n, 1)
            brightness, exchange = obj.appearance(t)
            weight = weight + (1.0 - 2.0 * weight) * exchange  # base and pattern trade places
            color = obj.colors[0] + (obj.colors[1] - obj.colors[0]) * weight  # (n, 3)
            color *= (brightness * (1.0 - 0.22 * (u * u + v * v)))[:, None]  # rim: a hint of 3-D
            frame[i0:i1, j0:j1][inside] = np.clip(color + 0.5, 0, 255).astype(np.uint8)
            labels[i0:i1, j0:j1][inside] = obj.label
        for j0, j1 in self.pole_spans(t):  # in front of everything; background in the masks
            x = np.arange(j0, j1, dtype=np.float32) + 0.5
            centre, half = (j0 + j1) / 2, max((j1 - j0) / 2, 1.0)
            shade = 1.0 - 0.35 * ((x - centre) / half) ** 2  # a round pole, lit from the front
            rings = 0.88 + 0.12 * (np.sin(self._yc / (0.03 * h)) > 0)  # (H,) bands along it
            pole = np.array(_FLOOR_COLORS[2], np.float32)[None, None] * (
                rings[:, None, None] * shade[None, :, None]
            )
            frame[:, j0:j1] = np.clip(pole + 0.5, 0, 255).astype(np.uint8)
            labels[:, j0:j1] = 0
        return frame, labels

    def _view(self, top: float, left: float, zoom: float) -> np.ndarray:
        """The floor seen by the camera: frame pixel centre p shows world (top, left) + p / zoom.

        Returns:
            uint8 (H, W, 3), bilinear resample of the tiling floor texture (a writable copy).
        """
        from PIL import Image

        h, w = self.params.size
        hb, wb = self.floor_size
        top, left = top % hb, left % wb  # the floor tiles; the padding covers the rest of the view
        box = (left, top, left + w / zoom, top + h / zoom)  # zoom >= 1: a plain bilinear upsample
        return np.array(self._floor_img.resize((w, h), Image.Resampling.BILINEAR, box=box))

    def describe(self) -> list[dict]:
        depth = {i: rank for rank, i in enumerate(self.depth_order)}
        return [
            {
                "label": o.label,
                "shape": o.shape,
                "texture": o.texture,
                "colors": o.colors.astype(int).tolist(),
                "depth": depth[i],  # 0 = furthest back
                **(
                    {"changes": "brightness and base/pattern colours over time"}
                    if o.swap[0] > 0
                    else {}
                ),
            }
            for i, o in enumerate(self.objects)
        ]


def render_synthetic(
    *,
    num_frames: int = 120,
    size: tuple[int, int] = (360, 640),
    num_objects: int = 3,
    fps: float = 24,
    seed: int = 0,
    variant: str = "easy",
) -> tuple[np.ndarray, np.ndarray]:
    """Render the synthetic video in memory: the exact frames ``generate_synthetic`` encodes.

    Args:
        num_frames: T, number of frames.
        size: (H, W) of the frames, even ints >= 16.
        num_objects: K in 0..8; the floor and camera do not depend on K.
        fps: frames per second; motion is defined in seconds, so fps sets the time step.
        seed: the same seed (and other arguments) gives identical arrays.
        variant: ``"easy"`` (saturated objects on a muted floor, the default video) or ``"hard"``
            (objects in the floor's colours and one shared texture, brightness and colours that
            change over time, two poles in front that occlude them; masks just as exact).

    Returns:
        frames: uint8 (T, H, W, 3) RGB in [0, 255].
        masks: uint8 (T, H, W) labels, 0 = background, 1..K objects.
    """
    params = _Params(num_frames, size, num_objects, fps, seed, variant)
    scene = _Scene(params)
    h, w = params.size
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    masks = np.empty((num_frames, h, w), np.uint8)
    for i in range(num_frames):
        frames[i], masks[i] = scene.render(i)
    return frames, masks


# ----------------------------------------------------------------------------- writing


def _davis_palette() -> bytes:
    """The DAVIS / PASCAL VOC colour map: label bits spread over the high bits of R, G and B."""
    labels = np.arange(256)
    pal = np.zeros((256, 3), np.int64)
    for bit in range(8):
        for ch in range(3):
            pal[:, ch] |= ((labels >> (3 * bit + ch)) & 1) << (7 - bit)
    return pal.astype(np.uint8).tobytes()


def generate_synthetic(
    out_dir: str | os.PathLike,
    *,
    num_frames: int = 120,
    size: tuple[int, int] = (360, 640),
    num_objects: int = 3,
    fps: float = 24,
    seed: int = 0,
    variant: str = "easy",
) -> SyntheticVideo:
    """Generate the synthetic video, its DAVIS-layout frames and masks and meta.json in ``out_dir``.

    Writes in place (``ensure_synthetic`` wraps this with caching and an atomic rename). The default
    (120 frames, 360 x 640) takes a few seconds and about 8 MB.

    Args:
        out_dir: folder to write into; created if missing, must be empty if it exists.
        num_frames: T, number of frames.
        size: (H, W) of the frames, even ints >= 16.
        num_objects: K in 0..8.
        fps: frames per second of the mp4 (and the time step of the motion).
        seed: the same seed gives identical frames (before encoding) and byte-identical masks.
        variant: ``"easy"`` or ``"hard"``, as in :func:`render_synthetic`.

    Returns:
        A ``SyntheticVideo`` with the paths written.

    Raises:
        ValueError: bad parameters, or ``out_dir`` exists and is not an empty folder.
    """
    import av
    from PIL import Image

    params = _Params(num_frames, size, num_objects, fps, seed, variant)
    root = Path(out_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"out_dir {root} exists and is not an empty folder")
    name = sequence_name(params.variant)
    result = SyntheticVideo(
        root=root,
        video=root / f"{name}.mp4",
        sequence=name,
        num_frames=params.num_frames,
        size=params.size,
        num_objects=params.num_objects,
        fps=float(params.fps),
        seed=params.seed,
        variant=params.variant,
    )
    result.frames_dir.mkdir(parents=True)
    result.masks_dir.mkdir(parents=True)
    # Marks the folder as ours but incomplete until the final meta.json replaces it, so that
    # ensure_synthetic may replace what an interrupted run left behind.
    meta = {
        "generator": _GENERATOR,
        "version": GENERATOR_VERSION,
        "params": params.to_json(),
        "complete": False,
    }
    _write_json(result.meta_path, meta)
    scene = _Scene(params)
    h, w = params.size
    palette = _davis_palette()

    with av.open(str(result.video), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(params.fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = max(1, round(params.fps))  # a keyframe a second: fast seeks
        stream.options = {"crf": str(VIDEO_CRF), "preset": "veryfast"}
        for i in range(params.num_frames):
            frame, labels = scene.render(i)
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = i
            for packet in stream.encode(video_frame):
                container.mux(packet)
            Image.fromarray(frame).save(result.frames_dir / f"{i:05d}.jpg", quality=JPEG_QUALITY)
            mask = Image.frombytes("P", (w, h), labels.tobytes())
            mask.putpalette(palette)
            mask.save(result.masks_dir / f"{i:05d}.png")
        for packet in stream.encode():
            container.mux(packet)

    (root / "sequences.txt").write_text(name + "\n")
    meta.update(
        complete=True,
        sequence=name,
        video=result.video.name,
        frames=f"JPEGImages/{RESOLUTION}/{name}/%05d.jpg",
        masks=f"Annotations/{RESOLUTION}/{name}/%05d.png",
        encoding={"codec": "libx264", "pix_fmt": "yuv420p", "crf": VIDEO_CRF, "jpeg": JPEG_QUALITY},
        objects=scene.describe(),
        **(
            {"occluders": f"{len(scene.poles)} poles, background in the masks"}
            if scene.poles
            else {}
        ),
    )
    _write_json(result.meta_path, meta)  # last: "complete" marks a finished dataset
    return result


def _write_json(path: Path, obj: dict) -> None:
    """Write JSON so that readers see the old file or the new one, never a partial one."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(part, path)


# ----------------------------------------------------------------------------- caching


def _load(root: Path, params: _Params) -> SyntheticVideo | None:
    """The dataset in ``root`` if it is complete and was made by this generator with ``params``."""
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(meta, dict)
        or meta.get("generator") != _GENERATOR
        or meta.get("version") != GENERATOR_VERSION
        or meta.get("params") != json.loads(json.dumps(params.to_json()))
        or meta.get("complete") is not True
    ):
        return None
    name = sequence_name(params.variant)
    found = SyntheticVideo(
        root=root,
        video=root / f"{name}.mp4",
        sequence=name,
        num_frames=params.num_frames,
        size=params.size,
        num_objects=params.num_objects,
        fps=float(params.fps),
        seed=params.seed,
        variant=params.variant,
    )
    try:
        complete = (
            found.video.is_file()
            and len(list(found.frames_dir.glob("*.jpg"))) == params.num_frames
            and len(list(found.masks_dir.glob("*.png"))) == params.num_frames
        )
    except OSError:
        return None
    return found if complete else None


def _check_replaceable(root: Path) -> None:
    """Raise unless ``root`` is empty or holds a dataset this generator wrote (stale or partial)."""
    if not root.is_dir():
        raise ValueError(
            f"{root} exists and is not a folder; move it away or choose another out_dir"
        )
    if not any(root.iterdir()):
        return
    try:
        ours = json.loads((root / "meta.json").read_text()).get("generator") == _GENERATOR
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise ValueError(
            f"{root} exists and is not a labkit synthetic dataset (no meta.json from "
            f"{_GENERATOR}); move it away or choose another out_dir"
        )


_LEFTOVER = r"^\.{name}\.(tmp|old)-(\d+)-[0-9a-f]+-(.+)$"


def _scratch_name(name: str, kind: str) -> str:
    """Hidden sibling name for a folder being generated ("tmp") or discarded ("old")."""
    return f".{name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}-{socket.gethostname()}"


def _remove_leftovers(parent: Path, name: str) -> None:
    """Delete scratch folders left by interrupted runs: same host, and the process is gone."""
    if os.name != "posix":  # os.kill(pid, 0) is only a liveness probe on POSIX
        return
    pattern = re.compile(_LEFTOVER.format(name=re.escape(name)))
    for path in parent.glob(f".{name}.*-*"):
        match = pattern.match(path.name)
        if not match or match.group(3) != socket.gethostname():
            continue
        try:
            os.kill(int(match.group(2)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # alive but not ours (PermissionError), or unknowable: leave it
            pass


def ensure_synthetic(
    out_dir: str | os.PathLike,
    *,
    num_frames: int = 120,
    size: tuple[int, int] = (360, 640),
    num_objects: int = 3,
    fps: float = 24,
    seed: int = 0,
    variant: str = "easy",
) -> SyntheticVideo:
    """Reuse the synthetic dataset in ``out_dir`` if it matches, else generate it there atomically.

    A dataset is reused when its meta.json names this generator version and the same parameters and
    all files are present. Otherwise it is generated into a hidden sibling folder and renamed into
    place, so an interrupted run never leaves a partial dataset at ``out_dir``; a stale dataset this
    generator wrote is replaced. Two processes may call this at once: both generate, the first
    rename wins, the other reuses it.

    Args:
        out_dir: the dataset folder (``data_dir() / "synthetic"`` for the default).
        num_frames, size, num_objects, fps, seed, variant: as in ``generate_synthetic``.

    Returns:
        A ``SyntheticVideo`` rooted at ``out_dir``.

    Raises:
        ValueError: bad parameters, or ``out_dir`` holds something this generator did not write.
    """
    params = _Params(num_frames, size, num_objects, fps, seed, variant)
    root = Path(out_dir).expanduser().absolute()
    found = _load(root, params)
    if found is not None:
        return found
    if root.exists():
        _check_replaceable(root)  # fail before spending time on generation
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root.parent, root.name)

    scratch = root.parent / _scratch_name(root.name, "tmp")
    try:
        generate_synthetic(scratch, **params.to_json())
        for _ in range(10):
            try:
                os.rename(scratch, root)  # atomic; replaces only an empty folder
                break
            except OSError:
                if not root.exists():
                    continue
                if _load(root, params) is not None:
                    break  # another process finished first
                _check_replaceable(root)
                old = root.parent / _scratch_name(root.name, "old")
                try:
                    os.rename(root, old)
                except FileNotFoundError:
                    continue
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    found = _load(root, params)
    if found is None:
        raise OSError(f"could not install the synthetic dataset at {root}")
    return found


def default_video(variant: str = "easy") -> Path:
    """The default video, generated on first use under ``labkit.data.data_dir() / "synthetic"``.

    Args:
        variant: ``"easy"`` (the default video) or ``"hard"`` (``data_dir() / "synthetic-hard"``:
            camouflaged objects, changing looks, occlusions; see :func:`render_synthetic`).

    Returns:
        Path of the H.264 mp4 (120 frames, 360 x 640, 24 fps, 3 objects, seed 0):
        ``synthetic/synthetic.mp4``, or ``synthetic-hard/synthetic-hard.mp4`` for the hard variant.
    """
    return ensure_synthetic(data_dir() / sequence_name(variant), variant=variant).video


def sequence_name(variant: str = "easy") -> str:
    """The variant's sequence name, also its mp4's stem and its default folder's name:
    ``"synthetic"`` for the default (easy) video, ``"synthetic-hard"`` for the hard one."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    return SEQUENCE if variant == "easy" else f"{SEQUENCE}-{variant}"


def default_dataset(variant: str = "easy") -> Path:
    """The default video as a DAVIS-layout dataset, generated on first use.

    Args:
        variant: ``"easy"`` or ``"hard"``, as in :func:`default_video`.

    Returns:
        Path of the DAVIS root: ``JPEGImages/480p/<sequence>/*.jpg``,
        ``Annotations/480p/<sequence>/*.png`` (palette PNGs, 0 = background, 1..3 objects),
        ``sequences.txt``; the sequence is :func:`sequence_name` (``synthetic`` or
        ``synthetic-hard``).
    """
    return ensure_synthetic(data_dir() / sequence_name(variant), variant=variant).root
