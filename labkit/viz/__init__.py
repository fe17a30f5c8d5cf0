"""Visualisation: render (numpy uint8 images), plot (matplotlib Figures), animate (files).

Layers, one module each::

    render.py   attention / masks / segments / features -> uint8 RGB arrays
    plot.py     arrays -> matplotlib.figure.Figure (nothing shown, nothing saved)
    animate.py  uint8 frame sequences -> .gif / .mp4 files

Importing this package imports numpy only; matplotlib, Pillow, PyAV and torch are imported by the
functions that need them.
"""

from labkit.viz.animate import Mp4Writer, write_animation
from labkit.viz.plot import plot_attention_strip, plot_grid, plot_strip
from labkit.viz.render import (
    box_overlay,
    caption,
    features_to_rgb,
    heads_to_rgb,
    mask_overlay,
    overlay,
    palette,
    segment_overlay,
    segments_to_rgb,
    upsample_map,
)

__all__ = [
    "Mp4Writer",
    "box_overlay",
    "caption",
    "features_to_rgb",
    "heads_to_rgb",
    "mask_overlay",
    "overlay",
    "palette",
    "plot_attention_strip",
    "plot_grid",
    "plot_strip",
    "segment_overlay",
    "segments_to_rgb",
    "upsample_map",
    "write_animation",
]
