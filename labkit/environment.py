"""What a result was measured on: machine, CPU, device, Python and package versions, git commit.

One record, written beside every run folder (``environment.json``), evaluation (``metrics.json``)
and benchmark result, so that a number can always be traced to the machine and code behind it.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("labkit", "torch", "torchvision", "timm", "numpy", "decord", "av", "papermill",
            "scikit-learn", "scipy", "umap-learn", "matplotlib", "plotly")  # fmt: skip


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(repo: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout labkit runs from; (None, None) outside a git checkout."""
    repo = Path(repo) if repo else Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, (bool(status.strip()) if commit else None)


def describe(device: str = "cpu") -> dict[str, Any]:
    """The environment record.

    Args:
        device: the device the work runs on (``"cpu"``, ``"cuda:0"`` ...).

    Returns:
        dict with ``date`` (ISO 8601 with time zone), ``machine`` (host name), ``platform``,
        ``processor`` (CPU model), ``cpu_count``, ``torch_threads``, ``load_average_1m``,
        ``python``, ``torch``, ``device`` (plus ``device_name`` on CUDA), ``git_commit``,
        ``git_dirty`` and ``packages`` (name -> version, None when not installed).
    """
    import torch

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    commit, dirty = git_state()
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": platform.node(),
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": str(device),
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": packages,
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return info
