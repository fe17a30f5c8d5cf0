"""Reading values and files the way every labkit command does: one parser, one YAML loader.

``labkit run -p k 5``, ``labkit pipeline -o steps=300``, ``labkit train -o model_kwargs.depth=4``
and the notebooks' parameters all turn text into values with :func:`parse_value` (YAML literals).
:func:`load_config` is the one loader of a config dataclass from a YAML file plus ``key=value``
overrides, used by ``labkit train`` (:func:`labkit.train.load_config`) and ``labkit pipeline``
(:func:`labkit.pipeline.load_pipeline_config`); the file itself is read by
:func:`labkit.validation.read_config_file` (folder, missing, binary, syntax, not a mapping: one
line naming the file).

Keys, in the file and in the overrides:

* ``name=value``: a field of the dataclass; an unknown name is one line naming it, where it came
  from and the nearest field (``did you mean 'steps'?``).
* ``mapping.entry=value``: one entry of a dict field (``model_kwargs.depth=2``,
  ``train.num_local=4``).
* ``section.name=value``: a field through its section, for dataclasses grouped in sections
  (``optimisation.lr=1e-4`` is ``lr=1e-4``); in a YAML file a section is a nested mapping
  (``optimisation: {lr: 1e-4}``). A section may share its name with a field (TrainConfig's
  ``model``): a mapping value is the section, anything else the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml

from labkit.validation import read_config_file

__all__ = ["parse_value", "parse_overrides", "apply_overrides", "load_config"]

T = TypeVar("T")
Sections = Mapping[str, Sequence[str]]


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


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Turn ``["lr=1e-4", "model_kwargs.depth=2"]`` into ``{"lr": 1e-4, "model_kwargs.depth": 2}``.

    Values are read by :func:`parse_value` (``5``, ``0.1``, ``true``, ``[0,1,2]``, ``{depth: 2}``);
    anything else stays a string. A mapping is returned as a dict, its values untouched.

    Raises:
        ValueError: an item without ``=`` or with an empty key.
    """
    if isinstance(overrides, Mapping):
        return dict(overrides)
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} must read key=value")
        out[key] = parse_value(text.strip())
    return out


def _unknown(
    key: str, names: Sequence[str], where: str, owner: str, prefix: str = ""
) -> ValueError:
    name = key.removeprefix(prefix)
    hint = difflib.get_close_matches(name, list(names), n=1)
    suggestion = f"; did you mean {prefix + hint[0]!r}?" if hint else ""
    return ValueError(
        f"unknown config key {key!r}{where}{suggestion} ({owner} has: {', '.join(names)})"
    )


def _mapping_fields(cls: type) -> tuple[str, ...]:
    """The fields of a dataclass annotated as a dict (their entries take dotted keys)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name)
        if hint in (dict, Mapping) or typing.get_origin(hint) in (dict, Mapping):
            out.append(f.name)
    return tuple(out)


def apply_overrides(
    cls: type,
    values: Mapping[str, Any],
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    source: str = "",
    sections: Sections | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``cls``: ``values`` (a file's mapping) with ``overrides`` on top.

    Args:
        cls: the config dataclass (its fields are the valid names).
        values: flat field names, or sections as nested mappings (``{"optimisation": {...}}``).
        overrides: ``key=value`` strings or a mapping; keys as in the module docstring.
        source: where ``values`` came from, for messages (a file path).
        sections: section name -> its field names, for a dataclass in sections.

    Returns:
        A flat dict of field names (not yet validated: ``cls(**result)`` does that).

    Raises:
        ValueError: one line naming the key and where it came from.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    owner = cls.__name__
    sections = dict(sections or {})
    mappings = _mapping_fields(cls)
    where = f" in {source}" if source else ""
    out: dict[str, Any] = {}

    def put(key: str, value: Any, origin: str) -> None:
        if key not in names:
            raise _unknown(key, names, origin, owner)
        if key in out:
            raise ValueError(f"config key {key!r} is given twice{origin}")
        out[key] = value

    for key, value in values.items():
        key = str(key)
        if key in sections and isinstance(value, Mapping):  # a section: its fields, flat
            for name, inner in value.items():
                if str(name) not in sections[key]:
                    raise _unknown(
                        f"{key}.{name}", sections[key], where, f"section {key!r}", f"{key}."
                    )
                put(str(name), inner, where)
        else:
            put(key, value, where)

    for key, value in parse_overrides(overrides).items():
        head, dot, sub = key.partition(".")
        if not dot:
            if key not in names:
                raise _unknown(key, names, " in the overrides", owner)
            out[key] = value
        elif head in mappings and sub:
            out[head] = {**dict(out.get(head) or {}), sub: value}
        elif head in sections and sub:
            if sub not in sections[head]:
                raise _unknown(
                    key, sections[head], " in the overrides", f"section {head!r}", f"{head}."
                )
            out[sub] = value
        else:
            dotted = [f"{m}.<entry>" for m in mappings] + [f"{s}.<field>" for s in sections]
            raise ValueError(
                f"override {key!r}: only {', '.join(dotted) or 'no key'} take a dotted key"
            )
    return out


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    sections: Sections | None = None,
) -> T:
    """A config dataclass from an optional YAML file with ``key=value`` overrides on top.

    Args:
        cls: the frozen config dataclass, validated by its own ``__post_init__``.
        path: a YAML file mapping field names (or sections) to values; None: the defaults.
        overrides: ``key=value`` strings (values as :func:`parse_value` reads them) or a mapping.
        sections: section name -> field names, for a dataclass in sections.

    Returns:
        ``cls(**values)``.

    Raises:
        ValueError: the file is a folder, missing, binary, not YAML or not a mapping; a key is
            unknown (named with where it came from and the nearest valid one); a value is bad
            (named by the dataclass).
    """
    values: dict[str, Any] = {}
    if path is not None and str(path):
        values = read_config_file(path, f"{cls.__name__} keys")
    kwargs = apply_overrides(
        cls, values, overrides, source=str(path) if path else "", sections=sections
    )
    return cls(**kwargs)
