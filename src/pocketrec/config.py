"""Configuration as dataclasses: defaults in code, optional YAML file, ``--key=value`` overrides.

Nested dataclasses are addressed with dots: ``--encoder.dim=128 --train.lr=0.002``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value that does not fit the dataclass."""


_YAML_BOOL_HINT = " (YAML reads yes/no/on/off/true/false as booleans: quote the value)"


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _as_int(value: Any) -> int:
    """Whole numbers only: ``3``, ``3.0``, ``"3"``, ``"3.0"``; never ``2.7`` or ``True`` (a bool is an int to
    Python, but ``epochs: true`` is a mistake, not 1)."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            value = float(value.strip())  # "3.0" or "1e3", checked below like a YAML float
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    raise ValueError(value)


def _as_float(value: Any) -> float:
    """A finite number (int, float or numeric string), never a bool."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise ValueError(value)
    out = float(value.strip() if isinstance(value, str) else value)
    if not math.isfinite(out):
        raise ValueError(value)
    return out


def _as_str(value: Any) -> str:
    """Text, or a number YAML read as one (``dataset: 2019``); not a bool, list, mapping or null."""
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
        raise ValueError(value)
    return str(value)


_READERS: dict[Any, Callable[[Any], Any]] = {bool: _as_bool, int: _as_int, float: _as_float, str: _as_str}


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """``value`` (from YAML or a ``--key=value`` string) as the field's type; the same rules for both."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        if isinstance(value, (bool, dict)) or value is None:
            raise ConfigError(f"{key}: cannot read {value!r} as a list")
        (inner, *_) = typing.get_args(annotation) or (str,)
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
        converted = [_convert(v, inner, key) for v in items]
        return tuple(converted) if origin is tuple else converted
    reader = _READERS.get(annotation)
    if reader is None:
        return value
    try:
        return reader(value)
    except (TypeError, ValueError, OverflowError):
        hint = _YAML_BOOL_HINT if annotation is str and isinstance(value, bool) else ""
        raise ConfigError(f"{key}: cannot read {value!r} as {annotation.__name__}{hint}") from None


def _apply(obj: Any, key: str, value: Any, full_key: str) -> None:
    head, _, rest = key.partition(".")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if head not in fields:
        raise ConfigError(f"unknown config key {full_key!r} (known: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(type(obj))
    current = getattr(obj, head)
    if dataclasses.is_dataclass(current):
        if rest:
            _apply(current, rest, value, full_key)
        elif isinstance(value, dict):
            for k, v in value.items():
                _apply(current, str(k), v, f"{full_key}.{k}")
        else:
            raise ConfigError(f"{full_key} is a section; give one of its keys")
        return
    if rest:
        raise ConfigError(f"{full_key}: {head} is not a section")
    setattr(obj, head, _convert(value, hints[head], full_key))


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                base: T | None = None) -> T:
    """Defaults of ``cls`` (or ``base``, changed in place), then the YAML file at ``path``, then ``overrides``
    (``key=value`` strings).

    The result is validated by re-running the dataclasses' ``__post_init__``.
    """
    config = base if base is not None else cls()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = read_yaml(path)
        for key, value in data.items():
            _apply(config, str(key), value, str(key))
    items = overrides.items() if isinstance(overrides, dict) else [split_override(o) for o in overrides or []]
    for key, value in items:
        _apply(config, key, value, key)
    return revalidate(config)


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in the YAML file ``path``; every problem is one :class:`ConfigError` line naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(text)  # safe: a !!python/object tag is a ConstructorError, not code
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(err, text)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _yaml_problem(err: yaml.YAMLError, text: str) -> str:
    """``line N: problem`` on one line (PyYAML's own message spans several, with a source excerpt)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        where = f"line {err.problem_mark.line + 1}: " if err.problem_mark is not None else ""
        return " ".join(f"{where}{err.problem}".split())
    if isinstance(err, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(err.position, 0)) + 1
        return f"line {line}: unacceptable character #x{err.character:04x} ({err.reason})"
    return " ".join(str(err).split())


def split_override(text: str) -> tuple[str, str]:
    """``("train.lr", "0.01")`` of ``"--train.lr=0.01"`` (dashes in the key become underscores)."""
    key, sep, value = text.lstrip("-").partition("=")
    if not sep:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    return key.replace("-", "_"), value


def revalidate(config: T, _section: str = "") -> T:
    """Run ``__post_init__`` again on every nested dataclass (after fields were changed).

    A refusal becomes a :class:`ConfigError` prefixed with the section, e.g. ``encoder: heads must be >= 1``.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            revalidate(value, f"{_section}{f.name}.")
    post = getattr(config, "__post_init__", None)
    if post is not None:
        try:
            post()
        except (TypeError, ValueError, ZeroDivisionError) as err:
            raise ConfigError(f"{_section[:-1]}: {err}" if _section else str(err)) from None
    return config


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config saved with :func:`to_dict`, ignoring keys this version does not know."""
    config = cls()
    for key, value in data.items():
        try:
            _apply(config, key, value, key)
        except ConfigError:
            continue
    return revalidate(config)
