"""Reading values and files the way every labkit command does: one parser, one YAML reader.

``labkit run -p k 5``, ``labkit pipeline -o steps=300``, ``labkit train -o model_kwargs.depth=4``
and the notebooks' parameters all turn text into values with :func:`parse_value` (YAML literals);
config files are read by :func:`labkit.validation.read_config_file`.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["parse_value"]


def parse_value(text: str) -> Any:
    """Turn a command-line value into a Python literal the way YAML reads it.

    ``5`` -> 5, ``0.1`` -> 0.1, ``true`` -> True, ``[0,1,2]`` -> [0, 1, 2]; anything else stays a
    string (paths, model names). An empty string stays ``""``.
    """
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if value is None else value
