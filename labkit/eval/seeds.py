"""Several seeds of a method: labels, mean ± standard deviation, and an honest comparison.

A model trained (or initialised) with seed ``s`` is labelled ``<method>@s<s>`` (``dora@s0``,
``random@s2``); a label without the mark is a method with one seed (``pretrained``, or a run with
``seeds: 1``). :func:`aggregate_seeds` groups an evaluation's summary rows by method and gives each
metric's mean, sample standard deviation (``ddof=1``; ``None`` with one seed: no error bar), the
count and the per-seed values. :func:`compare` says ``better`` or ``worse`` only where the
intervals ``[mean - std, mean + std]`` of the two methods do not overlap, ``no measurable
difference`` where they do, and ``one seed: no error bar`` when either has a single seed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "SEED_MARK",
    "SeedStats",
    "Outcome",
    "ONE_SEED",
    "seed_label",
    "split_seed_label",
    "seed_stats",
    "aggregate_seeds",
    "aggregate_to_dict",
    "compare",
    "seed_table",
]

SEED_MARK = "@s"  # dora@s0: DoRA trained with seed 0
_SEEDED = re.compile(r"^(?P<method>.+)@s(?P<seed>-?\d+)$")
Outcome = Literal["better", "worse", "no measurable difference", "one seed: no error bar"]
ONE_SEED: Outcome = "one seed: no error bar"


def seed_label(method: str, seed: int | None) -> str:
    """``dora@s0`` for ``("dora", 0)``; ``method`` itself when ``seed`` is None."""
    return method if seed is None else f"{method}{SEED_MARK}{seed}"


def split_seed_label(label: str) -> tuple[str, int | None]:
    """``("dora", 0)`` for ``dora@s0``; ``(label, None)`` for a label without a seed mark."""
    match = _SEEDED.match(label)
    if match is None:
        return label, None
    return match["method"], int(match["seed"])


@dataclass(frozen=True)
class SeedStats:
    """One metric of one method over its seeds."""

    mean: float
    std: float | None  # sample standard deviation (ddof=1); None with one value: no error bar
    n: int  # seeds with a value
    values: tuple[float, ...]  # per seed, in the order of ``seeds``
    seeds: tuple[int | None, ...]  # None: the label named no seed

    @property
    def interval(self) -> tuple[float, float] | None:
        """``(mean - std, mean + std)``, or None with one seed."""
        if self.std is None:
            return None
        return self.mean - self.std, self.mean + self.std

    def text(self, digits: int = 3, show_n: bool = True) -> str:
        """``0.737 ± 0.012 (n=3)``; ``0.737 (n=1: no error bar)`` with one seed. ``show_n=False``
        (a table whose row names its seeds): ``0.737 ± 0.012``, ``0.737 (no error bar)``."""
        if self.std is None:
            return f"{self.mean:.{digits}f} ({f'n={self.n}: ' if show_n else ''}no error bar)"
        n = f" (n={self.n})" if show_n else ""
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}{n}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
            "values": list(self.values),
            "seeds": list(self.seeds),
        }


def seed_stats(values: Sequence[float], seeds: Sequence[int | None] | None = None) -> SeedStats:
    """Mean and sample standard deviation (``ddof=1``) of one metric's per-seed values.

    Args:
        values: one finite number per seed (at least one).
        seeds: the seed of each value (None: unknown); default: None for each.

    Raises:
        ValueError: no values, a value that is not finite, or ``seeds`` of another length.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"seed_stats needs one or more values, got {list(values)!r}")
    if not np.isfinite(array).all():
        raise ValueError(f"seed_stats: values must be finite, got {list(values)!r}")
    seeds = tuple(seeds) if seeds is not None else (None,) * array.size
    if len(seeds) != array.size:
        raise ValueError(f"seed_stats: {array.size} values but {len(seeds)} seeds")
    std = float(array.std(ddof=1)) if array.size > 1 else None
    return SeedStats(float(array.mean()), std, int(array.size), tuple(array.tolist()), seeds)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def aggregate_seeds(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None
) -> dict[str, dict[str, SeedStats]]:
    """Group summary rows by method (labels ``<method>@s<seed>``) and aggregate each metric.

    Args:
        rows: one flat row per model with its label under ``"model"`` (an evaluation's
            ``metrics.json["summary"]``).
        metrics: the columns to aggregate; default: every column with a number in some row.

    Returns:
        method -> metric -> :class:`SeedStats`, methods in the order they first appear; a metric
        that no seed of a method measured is left out of that method.
    """
    groups: dict[str, list[tuple[int | None, Mapping[str, Any]]]] = {}
    for row in rows:
        method, seed = split_seed_label(str(row.get("model", "")))
        groups.setdefault(method, []).append((seed, row))
    out: dict[str, dict[str, SeedStats]] = {}
    for method, members in groups.items():
        names = (
            list(metrics)
            if metrics is not None
            else [
                k
                for k in dict.fromkeys(k for _, r in members for k in r)
                if k != "model" and any(_number(r.get(k)) is not None for _, r in members)
            ]
        )
        stats = {}
        for name in names:
            pairs = [(s, _number(r.get(name))) for s, r in members]
            kept = [(s, v) for s, v in pairs if v is not None]
            if kept:
                stats[name] = seed_stats([v for _, v in kept], [s for s, _ in kept])
        out[method] = stats
    return out


def aggregate_to_dict(aggregated: Mapping[str, Mapping[str, SeedStats]]) -> dict[str, Any]:
    """JSON-ready form of :func:`aggregate_seeds`: method -> metric -> mean, std, n, values,
    seeds (std ``None`` with one seed)."""
    return {m: {k: s.to_dict() for k, s in stats.items()} for m, stats in aggregated.items()}


def compare(a: SeedStats, b: SeedStats) -> Outcome:
    """Is ``a`` better than ``b`` (higher is better), judged by the seeds' spread?

    ``better`` when ``a``'s interval ``[mean - std, mean + std]`` lies wholly above ``b``'s,
    ``worse`` when wholly below, ``no measurable difference`` when they overlap (touching
    counts as overlap), and ``one seed: no error bar`` when either has fewer than two seeds.
    """
    ia, ib = a.interval, b.interval
    if ia is None or ib is None:
        return ONE_SEED
    if ia[0] > ib[1]:
        return "better"
    if ia[1] < ib[0]:
        return "worse"
    return "no measurable difference"


def seed_table(
    aggregated: Mapping[str, Mapping[str, SeedStats]],
    columns: Sequence[str] | None = None,
    digits: int = 3,
) -> list[dict[str, str]]:
    """One row per method: its seeds and each metric as ``0.737 ± 0.012``, with ``(n=2)`` only
    where a metric has fewer values than the row has seeds (``0.900 (n=1: no error bar)`` for a
    model without seeds), so a wide table stays legible.

    Args:
        aggregated: :func:`aggregate_seeds`'s result.
        columns: the metrics shown, in order (absent from every method: dropped); default: every
            metric of any method.
        digits: decimals of mean and std.
    """
    every = list(dict.fromkeys(k for stats in aggregated.values() for k in stats))
    cols = [c for c in (columns if columns is not None else every) if c in every]
    rows = []
    for method, stats in aggregated.items():
        seeds = dict.fromkeys(seed for st in stats.values() for seed in st.seeds)  # in order
        known = [str(s) for s in seeds if s is not None]
        row = {"model": method, "seeds": ", ".join(known) if known else "–"}
        row.update(
            {
                c: stats[c].text(digits, show_n=stats[c].n != len(known)) if c in stats else "–"
                for c in cols
            }
        )
        rows.append(row)
    return rows
