"""Typed, validated config sections built from plain dataclasses.

A section is a dataclass; its field types and ``field(metadata=...)`` bounds are the schema.  Reading
a YAML mapping into a section checks unknown keys (with a did-you-mean), types and ranges, and
reports the full dotted path of the offending key, so that users never see a traceback for a typo.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from .errors import ConfigError, did_you_mean, unknown_choice  # noqa: F401 - unknown_choice: re-exported

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def option(default: Any = dataclasses.MISSING, *, min: float | None = None, max: float | None = None,
           help: str = "", default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with bounds and a help line (shown by ``cilearn list --options``)."""
    metadata = {"min": min, "max": max, "help": help}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        names = " or ".join(_type_name(a) for a in args if a is not type(None))
        return names + (" (or null)" if type(None) in args else "")
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        return f"a list of {plural.get(inner, 'values')}"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise a ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    wrong = ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}.")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise wrong
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise unknown_choice("value", value, [str(a) for a in typing.get_args(tp)], path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise wrong
        (inner,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise wrong
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # parsed already (a method's options, of a subclass of the field's type)
            return value
        return build_section(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not value.is_integer()):  # also refuses nan and inf
            raise wrong
        return int(value)
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; it means a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}.")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise wrong
        return str(value)
    raise TypeError(f"unsupported schema type {tp!r} at {path}")


def build_section(cls: type, values: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a mapping, validating keys, types and bounds."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: expected a mapping of options, got {values!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            raise ConfigError(f"{path}: unknown key '{key}'.{did_you_mean(key, fields)} "
                              f"Valid keys: {', '.join(sorted(fields))}.")
    kwargs = {}
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: required key is missing.")
            continue
        value = _coerce(values[name], hints[name], where)
        low, high = f.metadata.get("min"), f.metadata.get("max")
        for item in (value if isinstance(value, list) else [value]):
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                if low is not None and item < low:
                    raise ConfigError(f"{where}: {item} is below the minimum {low}.")
                if high is not None and item > high:
                    raise ConfigError(f"{where}: {item} is above the maximum {high}.")
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(section: Any) -> Any:
    """Plain-YAML form of a section (dataclasses become mappings)."""
    if dataclasses.is_dataclass(section):
        return {f.name: to_dict(getattr(section, f.name)) for f in dataclasses.fields(section)}
    if isinstance(section, list):
        return [to_dict(v) for v in section]
    if isinstance(section, dict):
        return {k: to_dict(v) for k, v in section.items()}
    return section


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each option of a section, for ``cilearn list``; the options of a
    nested section follow it as ``section.option``."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        nested = dataclasses.is_dataclass(hints[f.name])
        rows.append((prefix + f.name, _type_name(hints[f.name]), "{...}" if nested else default,
                     f.metadata.get("help", "")))
        if nested:
            rows.extend(describe(hints[f.name], f"{prefix}{f.name}."))
    return rows


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return to_dict(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return to_dict(f.default_factory())
    return dataclasses.MISSING


def _type_schema(tp: Any, bounds: dict, defs: dict) -> dict:
    """JSON Schema of one field type; ``bounds`` (minimum/maximum) apply to its numbers."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return {}
    if origin in (Union, types.UnionType):
        options = [_type_schema(a, bounds, defs) for a in typing.get_args(tp)]
        return options[0] if len(options) == 1 else {"anyOf": options}
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return {"type": "array", "items": _type_schema(inner, bounds, defs)}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if dataclasses.is_dataclass(tp):
        defs.setdefault(tp.__name__, section_schema(tp, defs))
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if tp is type(None):
        return {"type": "null"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", **bounds}
    if tp is float:  # YAML 1.1 (PyYAML) reads 1e-3 as a string; cilearn takes it as the number it means
        return {"type": ["number", "string"], "pattern": f"^{_NUMBER.pattern}$", **bounds}
    if tp is str:
        return {"type": "string"}
    raise TypeError(f"unsupported schema type {tp!r}")


def section_schema(cls: type, defs: dict | None = None) -> dict:
    """JSON Schema (draft 2020-12) of a section: the same types, choices, bounds, defaults and help lines that
    :func:`build_section` checks and ``cilearn list --options`` shows; unknown keys are refused.  Nested
    sections are put in ``defs`` (referenced as ``#/$defs/<class name>``)."""
    defs = {} if defs is None else defs
    hints = typing.get_type_hints(cls)
    properties, required = {}, []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        bounds = {key: f.metadata[name] for name, key in (("min", "minimum"), ("max", "maximum"))
                  if f.metadata.get(name) is not None}
        prop = _type_schema(hints[f.name], bounds, defs)
        if f.metadata.get("help"):
            prop["description"] = f.metadata["help"]
        default = _default(f)
        if default is dataclasses.MISSING:
            required.append(f.name)
        elif not dataclasses.is_dataclass(hints[f.name]):  # a nested section lists its own defaults
            prop["default"] = default
        properties[f.name] = prop
    schema: dict = {"type": "object", "properties": properties, "additionalProperties": False}
    if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):  # not the dataclass's generated one
        schema["description"] = cls.__doc__.strip().splitlines()[0]
    if required:
        schema["required"] = required
    return schema
