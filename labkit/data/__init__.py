"""Where labkit keeps data it generates or caches, and the synthetic default video.

``data_dir()`` is the one place that decides the folder; ``labkit.data.synthetic`` generates the
default video there on first use (see ``data/README.md`` in the repository for the layout and for
where to put your own videos and datasets).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "data_dir",
    "default_dataset",
    "default_video",
    "ensure_synthetic",
    "generate_synthetic",
    "render_synthetic",
    "SyntheticVideo",
]


def data_dir() -> Path:
    """The folder where labkit writes generated data (the synthetic default video, caches).

    Resolution order:
        1. ``$LABKIT_DATA`` when set and non-empty (``~`` expanded).
        2. ``<repo>/data`` when labkit is imported from a source checkout, i.e. the folder that
           holds the ``labkit`` package also holds ``pyproject.toml`` and a ``data/`` folder.
        3. ``$XDG_CACHE_HOME/labkit``, by default ``~/.cache/labkit`` (an installed package).

    The folder is not created here; the functions that write into it create it.

    Returns:
        Absolute path of the data folder.
    """
    env = os.environ.get("LABKIT_DATA", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(__file__).resolve().parents[2]  # labkit/data/__init__.py -> repo root
    if (repo / "pyproject.toml").is_file() and (repo / "data").is_dir():
        return repo / "data"
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "labkit"


# Re-exported for convenience; imported after data_dir() exists because synthetic uses it.
from labkit.data.synthetic import (  # noqa: E402
    SyntheticVideo,
    default_dataset,
    default_video,
    ensure_synthetic,
    generate_synthetic,
    render_synthetic,
)
