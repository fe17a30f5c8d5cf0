"""labkit's colours, defined once: labels, the three heads shown as R, G, B, DoRA's objects.

* :func:`palette`: ``n`` distinct colours for labels (segments, models, ground-truth objects).
* :data:`HEAD_COLOURS`: the colours of the three heads drawn as R, G, B (their masks, curves).
* :func:`object_colours`: the colour of DoRA's object j, wherever an object is drawn (the
  teaching notebook, a training run's objects, the explorer, the films, the pipeline report).
  DoRA seeds object j with the j-th chosen head, so the first three objects are pure red, green
  and blue, the channels the heads are drawn in (:func:`labkit.viz.render.heads_to_rgb`): three
  object maps drawn together then mix to exactly grey or white where they agree, so overlapping
  objects look like what they are, not like one object's colour. Objects past three continue
  with the label palette minus its blue, green and red. A prefix of ``object_colours(m)`` for
  any ``m >= k``, so object j has one colour whatever k is.

Everything here is a uint8 ``(n, 3)`` RGB array in 0..255; importing this module imports numpy
only.
"""

from __future__ import annotations

import colorsys

import numpy as np

__all__ = ["palette", "HEAD_COLOURS", "OBJECT_RGB", "object_colours"]

# matplotlib's "tab20" colours, reordered: the ten dark ones (tab10) first, then the ten light ones,
# so that the first few labels get clearly different hues.
_TAB20 = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
)
# the colours of the three heads shown as R, G, B (heads_to_rgb): their masks and curves get the
# same colour; blue lightened a little so that a blue outline stays visible on dark frames
HEAD_COLOURS = np.array([(255, 0, 0), (0, 230, 0), (40, 110, 255)], dtype=np.uint8)
_GOLDEN = 0.618033988749895
_SV = ((0.75, 0.90), (0.95, 0.65), (0.55, 0.95), (0.85, 0.50))  # (saturation, value) cycle past 20
# DoRA's first three objects: the pure channels, so that equal maps add up to a neutral grey
OBJECT_RGB = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255)], dtype=np.uint8)
_RED_GREEN_BLUE = (0, 2, 3)  # tab20's blue, green and red: too close to OBJECT_RGB


def palette(n: int) -> np.ndarray:
    """``n`` fixed, distinct colours for labels; a prefix of ``palette(m)`` for any ``m >= n``.

    The first 20 are matplotlib's ``tab20`` colours (its ten dark ones first); further colours
    step the hue by the golden ratio, cycling through four (saturation, value) pairs, and skip
    any colour already used.

    Args:
        n: Number of colours, ``n >= 0``.

    Returns:
        uint8 array ``(n, 3)``, RGB in 0..255.
    """
    if n < 0:
        raise ValueError(f"palette: n must be >= 0, got {n}")
    colours = list(_TAB20[:n])
    seen = set(colours)
    i = 0
    while len(colours) < n:
        s, v = _SV[i % len(_SV)]
        r, g, b = colorsys.hsv_to_rgb((i * _GOLDEN) % 1.0, s, v)
        rgb = (round(r * 255), round(g * 255), round(b * 255))
        i += 1
        if rgb not in seen:
            seen.add(rgb)
            colours.append(rgb)
    return np.array(colours, dtype=np.uint8).reshape(n, 3)


def object_colours(k: int) -> np.ndarray:
    """The colours of DoRA's objects 0 .. k-1 (one palette for every picture of them).

    Objects 0, 1, 2 take :data:`OBJECT_RGB` (pure red, green, blue: the channels of the heads
    that seed them); objects 3 and on take :func:`palette`'s colours in order, without its blue,
    green and red.

    Args:
        k: number of objects, ``k >= 0``.

    Returns:
        uint8 array ``(k, 3)``, RGB in 0..255; a prefix of ``object_colours(m)`` for ``m >= k``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"object_colours: k must be an int >= 0, got {k!r}")
    first = len(OBJECT_RGB)
    if k <= first:
        return OBJECT_RGB[:k].copy()
    rest = np.delete(palette(k - first + len(_RED_GREEN_BLUE)), _RED_GREEN_BLUE, 0)
    return np.concatenate([OBJECT_RGB, rest[: k - first]]).astype(np.uint8)
