"""Model specs, re-exported: they live in :mod:`labkit.specs` (the models layer, since a spec
names weights, and :mod:`labkit.viz.comparison` parses them too)."""

from labkit.specs import SPEC_SYNTAX, ModelSpec, parse_model_spec

__all__ = ["ModelSpec", "parse_model_spec", "SPEC_SYNTAX"]
