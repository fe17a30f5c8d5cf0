"""Where labkit keeps the data it generates or caches: :func:`data_dir`, the one place that decides.

Its own module so that :mod:`labkit.data.synthetic` can import it while :mod:`labkit.data`
re-exports both.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir"]


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
    repo = Path(__file__).resolve().parents[2]  # labkit/data/location.py -> repo root
    if (repo / "pyproject.toml").is_file() and (repo / "data").is_dir():
        return repo / "data"
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "labkit"
