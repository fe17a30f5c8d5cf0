"""Label propagation, kept here under its old name: the code lives in :mod:`labkit.propagation`
(layer 4, below ``eval``, so that TimeTuning can use it without importing ``eval``)."""

from labkit.propagation import (
    LabelPropagator,
    PropagatedFrame,
    iter_propagate_labels,
    labels_from_soft,
    propagate_labels,
    propagate_soft_labels,
    propagation_step,
)

__all__ = [
    "PropagatedFrame",
    "LabelPropagator",
    "propagation_step",
    "propagate_soft_labels",
    "labels_from_soft",
    "iter_propagate_labels",
    "propagate_labels",
]
