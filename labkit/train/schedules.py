"""The schedules of a training run: DINO's linear warm-up followed by a half cosine.

The trainer's learning rate and weight decay and DoRA / DINO's teacher momentum follow
:func:`cosine_schedule`, as a function of the step (DINO computes the same values as arrays).
"""

from __future__ import annotations

import math

__all__ = ["cosine_schedule"]


def cosine_schedule(
    step: int, total: int, base: float, final: float, warmup: int = 0, warmup_start: float = 0.0
) -> float:
    """Value at ``step`` of a linear warm-up followed by a half cosine.

    Steps ``0 .. warmup - 1`` go linearly from ``warmup_start`` towards ``base``; from ``warmup``
    to ``total - 1`` the value follows ``final + (base - final) * (1 + cos(pi * i / n)) / 2``
    with ``i = step - warmup`` and ``n = total - warmup`` (DINO's schedules, as a function).

    Returns:
        The value, a float.
    """
    if step < warmup:
        return warmup_start + (base - warmup_start) * step / warmup
    span = max(total - warmup, 1)
    progress = min(step - warmup, span) / span
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))
