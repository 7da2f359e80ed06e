"""Configuration as dataclasses: defaults in code, optional YAML file, ``--key=value`` overrides.

Nested dataclasses are addressed with dots: ``--encoder.dim=128 --train.lr=0.002``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value that does not fit the dataclass."""


def _convert(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(annotation) or (str,)
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
        converted = [_convert(v, inner, key) for v in items]
        return tuple(converted) if origin is tuple else converted
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation in (int, float, str):
            return annotation(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot read {value!r} as {annotation.__name__}") from None
    return value


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
                _apply(current, k, v, f"{full_key}.{k}")
        else:
            raise ConfigError(f"{full_key} is a section; give one of its keys")
        return
    if rest:
        raise ConfigError(f"{full_key}: {head} is not a section")
    setattr(obj, head, _convert(value, hints[head], full_key))


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                ) -> T:
    """Defaults of ``cls``, then the YAML file at ``path``, then ``overrides`` (``key=value`` strings).

    The result is validated by re-running the dataclasses' ``__post_init__``.
    """
    config = cls()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        for key, value in data.items():
            _apply(config, key, value, key)
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides or []]
    for key, value in items:
        _apply(config, key, value, key)
    return revalidate(config)


def _split(text: str) -> tuple[str, str]:
    key, sep, value = text.lstrip("-").partition("=")
    if not sep:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    return key.replace("-", "_"), value


def revalidate(config: T) -> T:
    """Run ``__post_init__`` again on every nested dataclass (after fields were changed)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            revalidate(value)
    post = getattr(config, "__post_init__", None)
    if post is not None:
        try:
            post()
        except ValueError as err:
            raise ConfigError(str(err)) from None
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
