"""A collapse watchdog for DINO-style training: warn when the teacher stops carrying information.

Notation::

    K  head output dimension;  R  teacher rows of a step;  q_r  the centred, sharpened teacher
    distribution of row r, softmax((t_r - c) / tau) over K;  q_bar = mean_r q_r

A DINO / DoRA teacher collapses in one of two ways (Caron et al. 2021, section 5.3):

* **uniform**: every row is (nearly) uniform, ``H(q_r) ~ log K`` (too much centring, or a
  teacher that changes too fast). Here: the step's mean row entropy ``teacher_entropy`` is at
  least ``(1 - tolerance) * log K``, tolerance 1%.
* **one dimension**: most rows put their mass on the same dimension (too much sharpening, too
  little centring). Here: the batch-mean distribution's top dimension holds more than half the
  mass, ``max_K q_bar > 0.5`` (``teacher_top_mass``; for a healthy teacher it is a few / K).

Both statistics come from :func:`labkit.train.step.teacher_statistics`, logged every step. A
collapse is declared when either condition holds on ``patience`` consecutive steps; the
watchdog then warns once (:class:`CollapseWarning`) naming the step the streak began, its kind
and the usual remedies, and reports the event (``log.jsonl`` record of the step it fired,
``metrics.json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CollapseWarning",
    "CollapseWatchdog",
    "collapse_kind",
    "REMEDIES",
    "describe_collapse",
    "collapse_sentence",
]

ENTROPY_TOLERANCE = 0.01  # "within 1% of log K"
TOP_MASS_LIMIT = 0.5  # the batch-mean distribution's top dimension above half the mass

REMEDIES = (
    "raise momentum_teacher (e.g. 0.999 or 0.9995 for small batches), lower lr, lower "
    "teacher_temp (0.04 or below), use a smaller out_dim, or set center_init='first_batch'"
)

CollapseKind = Literal["uniform", "one_dimension"]


class CollapseWarning(UserWarning):
    """The DINO / DoRA teacher looks collapsed (see :mod:`labkit.train.watchdog`)."""


def collapse_kind(record: dict[str, Any], out_dim: int) -> CollapseKind | None:
    """Which collapse condition a step's log record meets, if any.

    Args:
        record: a training log record with ``teacher_entropy`` (nats) and, in logs written
            since the watchdog exists, ``teacher_top_mass``.
        out_dim: K.

    Returns:
        ``"uniform"`` (entropy within 1% of log K), ``"one_dimension"`` (top mass > 0.5) or
        None. With K = 1 nothing can be told apart: None.
    """
    if out_dim < 2:
        return None
    entropy = record.get("teacher_entropy")
    if entropy is not None and entropy >= (1.0 - ENTROPY_TOLERANCE) * math.log(out_dim):
        return "uniform"
    top = record.get("teacher_top_mass")
    if top is not None and top > TOP_MASS_LIMIT:
        return "one_dimension"
    return None


def describe_collapse(event: dict[str, Any] | None, method: str = "DINO") -> str:
    """One plain sentence about a run's collapse event (``metrics.json``'s ``collapse``).

    Args:
        event: ``{"step", "kind", "detected_at", "patience"}`` or None (no collapse).
        method: the name the sentence uses for the run ("DINO", "DoRA").

    Returns:
        e.g. ``"the DINO teacher collapsed at step 12: entropy within 1% of log K for 20 steps."``
    """
    if not event:
        return f"the {method} teacher did not collapse."
    if event.get("kind") == "uniform":
        why = "entropy within 1% of log K"
    else:
        why = "over half the batch's mass on one output dimension"
    steps = event.get("patience")
    lasting = f" for {steps} steps" if steps else ""
    return f"the {method} teacher collapsed at step {event.get('step')}: {why}{lasting}."


def collapse_sentence(metrics: dict[str, Any]) -> str:
    """What a training run's ``metrics.json`` says about collapse, as one sentence.

    Args:
        metrics: ``Trainer.summary`` / ``metrics.json`` of a run (``method``, ``collapse``).

    Returns:
        :func:`describe_collapse`'s sentence, capitalised; for TimeTuning (no teacher) or a run
        written before the watchdog existed (no ``collapse`` key), a sentence saying so.
    """
    method = metrics.get("method", "dino")
    if method == "timetuning":
        return "TimeTuning has no teacher to collapse (its collapse signal is the cluster count)."
    if "collapse" not in metrics:
        return "This run predates the collapse watchdog (no record of collapse)."
    sentence = describe_collapse(metrics["collapse"], "DoRA" if method == "dora" else "DINO")
    return sentence[0].upper() + sentence[1:]


@dataclass
class CollapseWatchdog:
    """Counts consecutive collapsed steps; fires once when the count reaches ``patience``.

    Args:
        out_dim: K.
        patience: consecutive collapsed steps before the event; 0 disables the watchdog.

    Attributes:
        event: the event once fired, ``{"step": first collapsed step of the streak, "kind",
            "detected_at": the step it fired, "patience"}``, else None.
    """

    out_dim: int
    patience: int = 20

    def __post_init__(self) -> None:
        if self.patience < 0:
            raise ValueError(f"CollapseWatchdog: patience must be >= 0, got {self.patience}")
        self.event: dict[str, Any] | None = None
        self._start: int | None = None
        self._kind: CollapseKind | None = None
        self._count = 0

    def update(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Feed one step's record (steps in order).

        Returns:
            The event on the step it fires (once per watchdog), else None.
        """
        if self.patience == 0 or self.event is not None:
            return None
        kind = collapse_kind(record, self.out_dim)
        if kind is None:
            self._start, self._kind, self._count = None, None, 0
            return None
        if self._start is None:
            self._start, self._kind = int(record["step"]), kind
        self._count += 1
        if self._count < self.patience:
            return None
        self.event = {
            "step": self._start,
            "kind": self._kind,
            "detected_at": int(record["step"]),
            "patience": self.patience,
        }
        return self.event

    def message(self, method: str = "DINO") -> str:
        """The warning's text for the fired event."""
        if self.event is None:
            raise ValueError("CollapseWatchdog.message: no collapse detected")
        return (
            f"{describe_collapse(self.event, method)[:-1]} (detected at step "
            f"{self.event['detected_at']}). Usual remedies: {REMEDIES}."
        )
