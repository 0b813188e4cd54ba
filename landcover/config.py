"""Configuration loading: TOML/YAML files with embedded defaults into frozen dataclasses.

Library functions take explicit keyword arguments; only ``pipelines/`` and the CLI
load configuration files. A config class is any frozen dataclass whose fields
have defaults (the embedded defaults); :func:`load_config` overlays a TOML or
YAML file and then command-line overrides, rejecting unknown keys with a
one-line error that names the file. A single string where a list of strings or paths
is expected (``scenes = "a.tar"``) is a list of that one item; a string where any other
list is expected is an error (never a list of its characters).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError, InputFileError

__all__ = ["load_config", "config_to_dict", "read_config_file"]

T = TypeVar("T")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "config file not found")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".toml":
            return tomllib.loads(text)
        if p.suffix in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text) or {}
        elif p.suffix == ".json":
            import json

            data = json.loads(text)
        else:
            raise InputFileError(p, "unknown config format (use .toml, .yaml or .json)")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        if isinstance(exc, InputFileError):
            raise
        raise InputFileError(p, f"invalid config: {' '.join(str(exc).split())}") from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise InputFileError(p, f"invalid config: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise InputFileError(p, "config must be a mapping at top level")
    return data


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any or value is None:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, where)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (tuple, list) and isinstance(value, str | Path | list | tuple):
        return _coerce_sequence(value, tp, origin, where)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is Path and isinstance(value, str):
        return Path(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _coerce_union(value: Any, tp: Any, where: str) -> Any:
    """The first member type of ``tp`` (``X | Y``) that accepts ``value``."""
    for arg in typing.get_args(tp):
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, where)
        except (TypeError, ValueError):
            continue
    raise ConfigError(f"{where}: invalid value {value!r}")


def _coerce_sequence(value: Any, tp: Any, origin: Any, where: str) -> Any:
    """``value`` as the ``list[...]``/``tuple[...]`` type ``tp``; one path or string makes a list of one."""
    args = typing.get_args(tp)
    if isinstance(value, str | Path):
        # `scenes = "a.tar"` where a list is expected: one item, not one item per character
        inner = args[0] if args else Any
        if (origin is list or (len(args) == 2 and args[1] is Ellipsis)) and inner in (str, Path, Any):
            return origin([_coerce(value, inner, where)])
        raise ConfigError(f"{where}: expected a list, got the string {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=False))
    inner = args[0] if args else Any
    return origin(_coerce(v, inner, where) for v in value)


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints.get(k, Any), f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    *,
    section: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from its defaults, then a config file, then ``overrides`` (None values ignored).

    Parameters
    ----------
    cls
        A dataclass whose fields all have defaults.
    path
        Optional TOML/YAML/JSON file; with ``section``, that table when the file has
        one, else the file's top level.
    overrides
        Values from the command line; keys whose value is ``None`` are skipped.
    """
    data: dict[str, Any] = {}
    where = cls.__name__
    if path is not None:
        raw = read_config_file(path)
        if section is not None and isinstance(raw.get(section), dict):
            raw = raw[section]
        data.update(raw)
        where = str(path)
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    try:
        return _build(cls, data, where)
    except ConfigError as exc:
        if path is not None:
            raise InputFileError(path, str(exc).removeprefix(f"{where}: ")) from None
        raise


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (paths as strings, tuples as lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        return v

    return dict(conv(cfg))
