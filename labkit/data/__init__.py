"""Where labkit keeps data it generates or caches, and the synthetic default video.

``data_dir()`` (:mod:`labkit.data.location`) is the one place that decides the folder;
``labkit.data.synthetic`` generates the default video there on first use (see ``data/README.md``
in the repository for the layout and for where to put your own videos and datasets).
"""

from __future__ import annotations

from labkit.data.location import data_dir
from labkit.data.synthetic import (
    SyntheticVideo,
    default_dataset,
    default_video,
    ensure_synthetic,
    generate_synthetic,
    render_synthetic,
    sequence_name,
)

__all__ = [
    "data_dir",
    "default_dataset",
    "default_video",
    "ensure_synthetic",
    "generate_synthetic",
    "render_synthetic",
    "sequence_name",
    "SyntheticVideo",
]
