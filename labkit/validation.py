"""Typed checks of config values and notebook parameters: one-line errors naming the key.

Every workflow's config is a frozen dataclass whose field annotations say what a value must be;
:func:`check_fields` holds each value to its annotation before the dataclass's own range checks
run, so ``lr=abc`` fails as ``lr must be a number, got 'abc'`` instead of a ``TypeError`` deep in
the code. Mappings are checked for keys without a value: YAML reads ``{depth:2}`` (no space after
the colon) as ``{'depth:2': None}``, which would otherwise be dropped silently.

Also here: checks of devices (``cuda`` on a machine without CUDA), output folders (a path that is
a file) and the timm arguments in ``model_kwargs``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

__all__ = [
    "check_device",
    "check_fields",
    "check_mapping",
    "check_model_kwargs",
    "check_output_dir",
    "check_value",
    "expected_form",
    "field_types",
    "read_config_file",
    "resolve_device",
    "yaml_error",
]

# timm ViT arguments that must be whole numbers, with their smallest value
_MODEL_INTS = {
    "depth": 1,
    "num_heads": 1,
    "embed_dim": 1,
    "patch_size": 1,
    "in_chans": 1,
    "num_reg_tokens": 0,
}


def expected_form(annotation: Any) -> str:
    """How an annotation reads in an error message: ``an integer``, ``a list of strings`` ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return "any value"
    if annotation is type(None):
        return "null"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation in (str, Path):
        return "a string"
    if annotation in (dict, Mapping) or origin in (dict, Mapping):
        return "a mapping such as {key: value}"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple or annotation is tuple or origin is list or annotation is list:
        if len(args) == 2 and args[1] is Ellipsis:
            inner = expected_form(args[0]).replace("an ", "").replace("a ", "")
            return f"a list of {inner}s" if not inner.endswith("s") else f"a list of {inner}"
        if args:
            return f"a list of {len(args)} values ({', '.join(expected_form(a) for a in args)})"
        return "a list"
    if origin in (Union, types.UnionType):
        return " or ".join(expected_form(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, annotation: Any, strict: bool = False, in_union: bool = False) -> Any:
    """``value`` as ``annotation`` wants it (lists to tuples, paths to strings; unless ``strict``
    also numeric strings to floats and whole numbers to strings, as YAML reads ``name=2026`` as
    a number), or :class:`_Mismatch`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if annotation is type(None):
        if value is None:
            return None
        raise _Mismatch
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value  # range checks convert; an int stays an int here
        if isinstance(value, str) and not strict:  # PyYAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if annotation in (str, Path):
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return str(value)
        if isinstance(value, int) and not isinstance(value, bool) and not (strict or in_union):
            return str(value)  # a plain string field only: `heads: str | tuple` keeps 3 an error
        raise _Mismatch
    if annotation in (dict, Mapping) or origin in (dict, Mapping):
        if isinstance(value, Mapping):
            return value
        raise _Mismatch
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch
    if origin in (tuple, list) or annotation in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            items = tuple(_coerce(v, args[0], strict) for v in value)
        elif args:
            if len(value) != len(args):
                raise _Mismatch
            items = tuple(_coerce(v, a, strict) for v, a in zip(value, args))
        else:
            items = tuple(value)
        return items if origin is tuple or annotation is tuple else list(items)
    if origin in (Union, types.UnionType):
        for exact in (True,) if strict else (True, False):
            for alternative in args:  # an exact match first: 1 for `str | float` stays a number
                try:
                    return _coerce(value, alternative, strict=exact, in_union=True)
                except _Mismatch:
                    continue
        raise _Mismatch
    return value  # an annotation this checker does not know: left to the config's own checks


def check_value(key: str, value: Any, annotation: Any) -> Any:
    """Hold ``value`` to ``annotation``; returns it normalised (tuples, floats, strings).

    Raises:
        ValueError: ``<key> must be <form>, got <value>``, or a mapping key without a value.
    """
    try:
        out = _coerce(value, annotation)
    except _Mismatch:
        raise ValueError(f"{key} must be {expected_form(annotation)}, got {value!r}") from None
    if isinstance(out, Mapping):
        check_mapping(key, out)
    return out


def check_mapping(key: str, value: Mapping) -> None:
    """A mapping's keys all have values, nested mappings too.

    Raises:
        ValueError: naming the key and how to write it: YAML reads ``{depth:2}`` (no space after
            the colon) as the key ``'depth:2'`` with no value.
    """
    for name, item in value.items():
        if not isinstance(name, str):
            raise ValueError(f"{key}: key {name!r} must be a name (a string)")
        if item is None:
            if ":" in name:
                head, _, tail = name.partition(":")
                raise ValueError(
                    f"{key}: {{{name}}} is read as the key {name!r} with no value; write "
                    f"{{{head.strip()}: {tail.strip()}}} (YAML needs a space after the colon)"
                )
            raise ValueError(f"{key}: key {name!r} has no value; write {{{name}: VALUE}}")
        if isinstance(item, Mapping):
            check_mapping(f"{key}.{name}", item)


def field_types(cls: type) -> dict[str, Any]:
    """The evaluated annotation of every field of a dataclass; ``Any`` for one that does not
    evaluate (a name imported only for type checkers)."""
    try:
        return typing.get_type_hints(cls)
    except NameError:
        import sys

        namespace = vars(sys.modules[cls.__module__])
        out = {}
        for f in dataclasses.fields(cls):
            try:
                out[f.name] = (
                    eval(f.type, namespace)
                    if isinstance(f.type, str)  # noqa: S307
                    else f.type
                )
            except Exception:
                out[f.name] = Any
        return out


def check_fields(config: Any, skip: tuple[str, ...] = ()) -> None:
    """Hold every field of a dataclass instance to its annotation (normalised in place).

    Call first thing in ``__post_init__`` of a frozen config dataclass.

    Raises:
        ValueError: naming the first field whose value has the wrong type.
    """
    hints = field_types(type(config))
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        value = getattr(config, f.name)
        checked = check_value(f.name, value, hints[f.name])
        if checked is not value:
            object.__setattr__(config, f.name, checked)


def check_model_kwargs(key: str, kwargs: Mapping[str, Any]) -> None:
    """The timm arguments that set a ViT's size are whole numbers in range.

    ``{depth: 0}`` builds a ViT without blocks, which fails much later; ``{depth: abc}`` fails
    inside timm with an unrelated ``TypeError``.

    Raises:
        ValueError: naming ``<key>.<argument>``.
    """
    check_mapping(key, kwargs)
    for name, low in _MODEL_INTS.items():
        if name in kwargs:
            value = kwargs[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key}.{name} must be an integer >= {low}, got {value!r}")
    if "mlp_ratio" in kwargs:
        value = kwargs["mlp_ratio"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{key}.mlp_ratio must be a number > 0, got {value!r}")
    dim, heads = kwargs.get("embed_dim"), kwargs.get("num_heads")
    if isinstance(dim, int) and isinstance(heads, int) and dim % heads:
        raise ValueError(f"{key}: embed_dim {dim} is not divisible by num_heads {heads}")


def resolve_device(device: Any) -> str:
    """``"auto"`` as the device this machine has (``cuda`` when available, else ``mps``, else
    ``cpu``); any other value unchanged, as a string."""
    text = str(device)
    if text != "auto":
        return text
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def check_device(key: str, device: Any) -> None:
    """``auto``, ``cpu``, ``cuda[:n]`` or ``mps``, and present on this machine.

    Raises:
        ValueError: naming ``key`` and what this machine has.
    """
    import torch

    text = resolve_device(device)
    if not text.startswith(("cpu", "cuda", "mps")):
        raise ValueError(f"{key} must be 'auto', 'cpu', 'cuda[:n]' or 'mps', got {device!r}")
    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise ValueError(
            f"{key} must be 'auto', 'cpu', 'cuda[:n]' or 'mps', got {device!r}"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{key} {text!r}: CUDA is not available on this machine (use cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"{key} {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{key} {text!r}: MPS is not available on this machine (use cpu)")


def check_output_dir(key: str, path: str | os.PathLike) -> None:
    """``path`` is a folder that exists or can be made: neither it nor a parent is a file, and
    the nearest existing parent is writable.

    Raises:
        ValueError: naming ``key`` and the path in the way.
    """
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{key} {str(path)!r} is a file, not a folder")
    parent = target
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{key} {str(path)!r}: {parent} is a file, not a folder")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{key} {str(path)!r}: {parent} is not writable")


def read_config_file(path: str | os.PathLike, what: str = "config keys") -> dict[str, Any]:
    """A YAML config file's mapping (empty for an empty file), every failure one line naming it.

    Raises:
        ValueError: a folder, a missing or binary file, a YAML syntax error (with line and
            column), or a document that is not a mapping of ``what``.
    """
    import yaml

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config file {path} is a folder; give a YAML file")
    if not path.is_file():
        raise ValueError(f"config file {path} not found")
    try:
        loaded = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not a text (YAML) file") from None
    except yaml.YAMLError as err:
        raise ValueError(f"config file {yaml_error(path, err)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"config file {path} must hold a mapping of {what}, got {type(loaded).__name__}"
        )
    return dict(loaded)


def yaml_error(source: str | os.PathLike, err: Exception) -> str:
    """One line for a YAML syntax error: the file, line and column, and the problem."""
    mark = getattr(err, "problem_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{source}:{where} is not valid YAML ({problem})"
