"""The training methods by name: ``method_for(config)`` builds the config's
:class:`labkit.train.method.Method`.

``"dora"`` and ``"dino"``: :class:`labkit.train.dora_dino.DoraDinoMethod`; ``"timetuning"``:
:class:`labkit.train.timetuning_method.TimeTuningMethod`. A new method is a class with the
protocol's members and a line here (and its name in :data:`labkit.train.config.METHODS`).
"""

from __future__ import annotations

from labkit.train.config import TrainConfig
from labkit.train.dora_dino import DoraDinoMethod
from labkit.train.method import Method
from labkit.train.timetuning_method import TimeTuningMethod

__all__ = ["METHOD_CLASSES", "method_for", "log_columns"]

METHOD_CLASSES: dict[str, type[DoraDinoMethod] | type[TimeTuningMethod]] = {
    "dora": DoraDinoMethod,
    "dino": DoraDinoMethod,
    "timetuning": TimeTuningMethod,
}


def method_for(config: TrainConfig) -> Method:
    """The :class:`Method` of ``config.method``, its networks built on the CPU.

    Raises:
        ValueError: no method of that name.
    """
    if config.method not in METHOD_CLASSES:
        raise ValueError(f"method must be one of {sorted(METHOD_CLASSES)}, got {config.method!r}")
    return METHOD_CLASSES[config.method](config)


def log_columns(method: str) -> tuple[str, ...]:
    """Columns of ``log.csv`` (keys of every ``log.jsonl`` record) for a training method."""
    if method not in METHOD_CLASSES:
        raise ValueError(f"method must be one of {sorted(METHOD_CLASSES)}, got {method!r}")
    return METHOD_CLASSES[method].log_columns
