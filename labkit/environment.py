"""What a result was measured on, and how many CPU threads a process should use.

:func:`describe`: machine, CPU, device, Python and package versions, git commit. One record,
written beside every run folder (``environment.json``), evaluation (``metrics.json``) and
benchmark result, so that a number can always be traced to the machine and code behind it.

:func:`available_cpus` and :func:`configure_threads`: torch picks its intra-op thread count from
the machine's cores, not from the CPUs this process may actually use (its affinity mask, a
container's cgroup CPU quota). On a shared or limited machine the surplus threads spin waiting
for each other. Training,
evaluation, the pipeline and ``labkit attention`` therefore set the count to the CPUs available
less the data-loading workers (each worker runs one torch thread: torch's DataLoader sets it).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "labkit",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "decord",
    "av",
    "papermill",
    "scikit-learn",
    "scipy",
    "umap-learn",
    "matplotlib",
    "plotly",
)


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(
    root: str | os.PathLike = CGROUP_ROOT, proc_cgroup: str | os.PathLike = "/proc/self/cgroup"
) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (e.g. 2.0, or 1.5), or None if unlimited.

    cgroup v2: ``cpu.max`` reads ``"max 100000"`` (no limit) or ``"<quota> <period>"`` (in
    microseconds), looked up in the process's own cgroup folder (from ``proc_cgroup``'s
    ``0::<path>`` line) and then at ``root``. cgroup v1: ``cpu.cfs_quota_us`` (-1: no limit) over
    ``cpu.cfs_period_us``, in ``root/cpu``, ``root/cpu,cpuacct`` or ``root``.

    Args:
        root: the cgroup file system's mount point (a folder of test files in tests).
        proc_cgroup: the file naming this process's cgroups.

    Returns:
        The quota in CPUs (> 0), or None (no quota, or no cgroup files readable).
    """
    root = Path(root)
    folders = []
    try:
        for line in Path(proc_cgroup).read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip().lstrip("/")
                if own:
                    folders.append(root / own)
    except OSError:
        pass
    for folder in [*folders, root]:  # v2
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota == "max":
            return None
        try:
            return _quota(float(quota), float(period))
        except ValueError:
            return None
    for folder in (root / "cpu", root / "cpu,cpuacct", root):  # v1
        try:
            quota_us = float((folder / "cpu.cfs_quota_us").read_text().strip())
            period_us = float((folder / "cpu.cfs_period_us").read_text().strip())
        except (OSError, ValueError):
            continue
        return _quota(quota_us, period_us)
    return None


def _quota(quota: float, period: float) -> float | None:
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(
    *,
    affinity: set[int] | None = None,
    cgroup_root: str | os.PathLike = CGROUP_ROOT,
    proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
) -> int:
    """The CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota.

    Args:
        affinity: the CPU set (default ``os.sched_getaffinity(0)``, or ``os.cpu_count()``
            CPUs where the platform has no affinity call).
        cgroup_root, proc_cgroup: see :func:`cgroup_cpu_limit`.

    Returns:
        An int >= 1; a fractional quota is rounded down (1.5 CPUs: 1 thread runs unthrottled).
    """
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            affinity = set(range(os.cpu_count() or 1))
    cpus = max(len(affinity), 1)
    limit = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if limit is not None:
        cpus = min(cpus, max(int(math.floor(limit)), 1))
    return cpus


def automatic_threads(workers: int = 0, processes: int = 1, cpus: int | None = None) -> int:
    """Threads for one process: ``cpus // processes - workers``, at least 1, at most a positive
    ``OMP_NUM_THREADS`` if set (the user's own cap).

    Args:
        workers: data-loading worker processes of this process (one thread each).
        processes: processes of the job sharing this machine (DDP ranks).
        cpus: the CPUs available (default :func:`available_cpus`).

    Returns:
        An int >= 1.
    """
    if workers < 0 or processes < 1:
        raise ValueError(f"need workers >= 0 and processes >= 1, got {workers}, {processes}")
    cpus = available_cpus() if cpus is None else int(cpus)
    threads = max(cpus // processes - workers, 1)
    try:
        cap = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        cap = 0
    return min(threads, cap) if cap > 0 else threads


def configure_threads(threads: int | None = None, workers: int = 0, processes: int = 1) -> int:
    """Set torch's intra-op thread count; returns the count set.

    Args:
        threads: an explicit count (> 0), used as given; None or 0: :func:`automatic_threads`.
        workers: data-loading workers (each runs one torch thread, which torch's DataLoader
            sets in the worker).
        processes: processes of the job on this machine.

    Returns:
        The thread count now in effect (``torch.get_num_threads()``).
    """
    import torch

    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 0
    ):
        raise ValueError(f"threads must be an int >= 0 (0: automatic), got {threads!r}")
    count = threads if threads else automatic_threads(workers, processes)
    torch.set_num_threads(count)
    return torch.get_num_threads()


@contextlib.contextmanager
def threads_for(threads: int | None = None, workers: int = 0, processes: int = 1) -> Iterator[int]:
    """:func:`configure_threads` for a ``with`` block; torch's previous count is restored after.

    Yields:
        The thread count set.
    """
    import torch

    previous = torch.get_num_threads()
    try:
        yield configure_threads(threads, workers, processes)
    finally:
        torch.set_num_threads(previous)


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
        commit = (
            subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, (bool(status.strip()) if commit else None)


def describe(device: str = "cpu") -> dict[str, Any]:
    """The environment record.

    Args:
        device: the device the work runs on (``"cpu"``, ``"cuda:0"`` ...).

    Returns:
        dict with ``date`` (ISO 8601 with time zone), ``machine`` (host name), ``platform``,
        ``processor`` (CPU model), ``cpu_count``, ``torch_threads``, ``available_cpus`` (affinity
        and cgroup quota, :func:`available_cpus`), ``load_average_1m``,
        ``python``, ``torch``, ``device`` (plus ``device_name`` on CUDA), ``git_commit``,
        ``git_dirty`` and ``packages`` (name -> version, None when not installed).
    """
    import torch

    packages: dict[str, str | None] = {}
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
        "available_cpus": available_cpus(),
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


def is_headless() -> bool:
    """True when widgets cannot be shown live: under ``labkit run``/papermill or outside IPython."""
    if os.environ.get("LABKIT_HEADLESS", "") not in ("", "0"):
        return True
    try:
        from IPython import get_ipython
    except ImportError:
        return True
    shell = get_ipython()
    return shell is None or not hasattr(shell, "kernel")
