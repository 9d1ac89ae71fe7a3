"""Build typed, frozen config dataclasses from YAML-shaped dicts.

Why not pydantic: configs are plain dataclasses (validated in ``__post_init__``) so that the core has
no heavy dependency and Tune/CLI overrides can use ``dataclasses.replace``. This module only walks the
type hints, rejects unknown keys and wrong types, and prefixes every error with the YAML key path
(``experts[1].generation.max_new_tokens``) so a user can find the line to fix. Imports: stdlib, errors.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from der_ray.errors import ConfigError

T = TypeVar("T")


class FieldError(ConfigError):
    """Raised by ``__post_init__`` validators: ``key`` is relative to the dataclass being built."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def check(condition: bool, key: str, message: str) -> None:
    """Raise ``FieldError(key, message)`` unless ``condition`` holds."""
    if not condition:
        raise FieldError(key, message)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and not key.startswith("[") else f"{path}{key}"


def build(cls: type[T], data: Any, path: str = "") -> T:
    """Instantiate dataclass ``cls`` from ``data`` (a mapping), validating recursively."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = _join(path, str(unknown[0]))
        raise ConfigError(f"{key}: unknown key; valid keys: {', '.join(sorted(fields))}")
    kwargs = {name: _convert(hints[name], data[name], _join(path, name)) for name in fields if name in data}
    missing = [
        n for n, f in fields.items()
        if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{_join(path, missing[0])}: required key is missing")
    try:
        return cls(**kwargs)
    except FieldError as e:
        raise ConfigError(f"{_join(path, e.key)}: {e.message}") from None


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _convert(a, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        item = args[0]
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(args[1], v, _join(path, str(k))) for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (str, int, float, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported config type {tp!r}")  # a bug in a config class


def to_dict(obj: Any) -> Any:
    """The YAML-shaped dict of a config dataclass (inverse of ``build``: tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj
