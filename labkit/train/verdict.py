"""Did a DoRA / DINO run learn? The loss judged against its frozen-network control, and the teacher.

A DINO-style loss is a poor witness on its own: its centre starts at zero, so the first steps'
loss is low and a network that learns nothing sees its loss rise as the centre moves. The fair
witness is the **frozen-network control** (``TrainConfig.control``): the same step on the same
batches with the initial networks frozen and only the control's own centre moving, logged as
``control_loss``. A run **learns** when, with ``first10`` / ``last10`` the means over the first
and the last tenth of the steps (``max(1, steps // 10)`` steps each):

* ``loss_falls``: the loss's ``last10 < first10``;
* ``below_control``: the loss's ``last10`` is below the control's ``last10`` (None without a
  control: nothing to compare with);
* ``teacher_healthy``: the teacher has not collapsed, ``entropy_ratio <= 0.9`` and
  ``kl_uniform >= 0.1``, where ``entropy_ratio`` is the mean of ``teacher_entropy`` over the last
  tenth of the steps divided by ``log K`` (1: every output uniform) and ``kl_uniform`` the mean of
  ``teacher_kl_uniform`` over the same steps (0: the batch spreads its mass evenly over all K
  dimensions, which with the entropy near ``log K`` is the uniform collapse). Means over the last
  tenth, not the last step's values, because both move a lot from step to step on small batches.

``learns`` is all three: False if any is False, None if none is False but one is unknown (no
control), True otherwise. :func:`learning_verdict` is the rule on known numbers;
:func:`learning_summary` reads a training log; :func:`learning_sentence` words the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ENTROPY_RATIO_MAX",
    "KL_UNIFORM_MIN",
    "window_means",
    "learning_verdict",
    "learning_summary",
    "learning_sentence",
]

ENTROPY_RATIO_MAX = 0.9  # final teacher entropy at most 0.9 log K
KL_UNIFORM_MIN = 0.1  # final KL of the teacher's batch mean to uniform at least 0.1 nats
FRACTION = 0.1  # the first and last tenth of the steps


def window_means(values: Sequence[float], fraction: float = FRACTION) -> tuple[float, float]:
    """Means of the first and the last ``fraction`` of ``values`` (at least one value each).

    Args:
        values: one value per step, in step order (at least one).
        fraction: the share of the steps in each window, in (0, 1].

    Returns:
        ``(first, last)``: the means of the first and of the last ``max(1, int(n * fraction))``
        values.

    Raises:
        ValueError: no values, or ``fraction`` outside (0, 1].
    """
    if not values:
        raise ValueError("window_means: no values")
    if not 0 < fraction <= 1:
        raise ValueError(f"window_means: fraction must be in (0, 1], got {fraction}")
    n = max(1, int(len(values) * fraction))
    return sum(values[:n]) / n, sum(values[-n:]) / n


def _all(*flags: bool | None) -> bool | None:
    """False if any flag is False, else None if any is None, else True."""
    if any(f is False for f in flags):
        return False
    if any(f is None for f in flags):
        return None
    return True


def learning_verdict(
    loss_first10: float,
    loss_last10: float,
    control_last10: float | None,
    entropy_ratio: float | None,
    kl_uniform: float | None,
) -> dict[str, Any]:
    """The learning criteria on known numbers (see the module docstring).

    Args:
        loss_first10, loss_last10: means of the loss over the first and last tenth of the steps.
        control_last10: the control loss's mean over the last tenth, or None (no control).
        entropy_ratio: the final teacher entropy over ``log K``, or None (no teacher).
        kl_uniform: the final KL of the teacher's batch mean to uniform (nats), or None.

    Returns:
        ``{"loss_falls", "below_control", "entropy_ratio", "kl_uniform", "teacher_healthy",
        "learns"}``: the flags are bools, or None where their numbers are missing.
    """
    below = None if control_last10 is None else bool(loss_last10 < control_last10)
    healthy = (
        None
        if entropy_ratio is None or kl_uniform is None
        else bool(entropy_ratio <= ENTROPY_RATIO_MAX and kl_uniform >= KL_UNIFORM_MIN)
    )
    falls = bool(loss_last10 < loss_first10)
    return {
        "loss_falls": falls,
        "below_control": below,
        "entropy_ratio": entropy_ratio,
        "kl_uniform": kl_uniform,
        "teacher_healthy": healthy,
        "learns": _all(falls, below, healthy),
    }


def learning_summary(log: Sequence[Mapping[str, Any]], out_dim: int | None) -> dict[str, Any]:
    """The entries of ``metrics.json`` that judge learning, from a run's log records.

    Args:
        log: the run's records in step order (``Trainer.log``, :func:`labkit.train.read_log`).
        out_dim: K of the DINO head; None for a method without a teacher (TimeTuning): then no
            ``learning`` entry.

    Returns:
        ``{"loss_first10", "loss_last10"}``, with ``"control_first10", "control_last10"`` when
        the records hold ``control_loss``, and ``"learning"`` (:func:`learning_verdict`) when
        ``out_dim`` is given; empty for an empty log.
    """
    if not log:
        return {}
    first, last = window_means([float(r["loss"]) for r in log])
    out: dict[str, Any] = {"loss_first10": first, "loss_last10": last}
    control = None
    if all(r.get("control_loss") is not None for r in log):
        control_first, control = window_means([float(r["control_loss"]) for r in log])
        out.update(control_first10=control_first, control_last10=control)
    if out_dim is None:
        return out
    ratio = kl = None
    if all(r.get("teacher_entropy") is not None for r in log) and out_dim >= 2:
        ratio = window_means([float(r["teacher_entropy"]) for r in log])[1] / math.log(out_dim)
    if all(r.get("teacher_kl_uniform") is not None for r in log):
        kl = window_means([float(r["teacher_kl_uniform"]) for r in log])[1]
    out["learning"] = learning_verdict(first, last, control, ratio, kl)
    return out


def learning_sentence(metrics: Mapping[str, Any]) -> str:
    """What ``metrics.json`` says about learning, in one or two plain sentences.

    Args:
        metrics: a run's ``metrics.json`` (``Trainer.summary``).

    Returns:
        e.g. ``"Loss 8.10 -> 6.30 (first/last 10% of steps), frozen control 6.88: below
        control. Teacher entropy 0.84 log K, KL 0.31: healthy."``; a sentence saying so for a
        run without these entries (written before them).
    """
    if "loss_first10" not in metrics:
        return "This run's metrics predate the learning verdict (no loss_first10)."
    text = (
        f"Loss {metrics['loss_first10']:.2f} -> {metrics['loss_last10']:.2f} "
        "(first/last 10% of steps)"
    )
    learning = metrics.get("learning") or {}
    if metrics.get("control_last10") is not None:
        where = "below" if metrics["loss_last10"] < metrics["control_last10"] else "not below"
        text += f", frozen control {metrics['control_last10']:.2f}: {where} control."
    else:
        falls = metrics["loss_last10"] < metrics["loss_first10"]
        text += f": {'falls' if falls else 'does not fall'} (no frozen-network control to judge)."
    if learning.get("entropy_ratio") is not None and learning.get("kl_uniform") is not None:
        state = (
            "healthy"
            if learning["teacher_healthy"]
            else f"not healthy (needs <= {ENTROPY_RATIO_MAX} log K and KL >= {KL_UNIFORM_MIN})"
        )
        text += (
            f" Teacher entropy {learning['entropy_ratio']:.2f} log K, KL "
            f"{learning['kl_uniform']:.2f}: {state}."
        )
    if learning:
        verdict = {True: "learns", False: "does not learn", None: "cannot tell (no control)"}
        text += f" Verdict: {verdict[learning['learns']]}."
    return text
