"""What the benchmarks measure in each worker process: peak resident memory, wall and CPU time."""

from __future__ import annotations

import os
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (VmHWM; ru_maxrss where /proc is absent)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of all this process's threads) now."""
    times = os.times()
    return time.perf_counter(), times.user + times.system


def elapsed(start: tuple[float, float]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all threads of this process) since ``start``."""
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]
