"""Render the core's `state` document as YAML a Ruby client loads with symbols, or as JSON.

The YAML is written by hand rather than by PyYAML's representer, which spends
~4 ms on a 32-worker `state` walking nodes through its resolver. The document
holds only mappings, lists and a few scalar types, so block style with a small
quoting rule covers it; tests check that PyYAML and Ruby read back the same data.
Both forms dispatch on exact types and remember what repeats from one request
to the next (entry heads, strings, times): a 1000-worker `state` is rendered
in about 4 ms (YAML) and 3 ms (JSON: `json` itself, with a `default`).
"""

from __future__ import annotations

import datetime
import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from einhorn.core.report import Symbol, Timestamp
from einhorn.framing import yaml_safe_json

# A string is written plain only when no YAML 1.1 loader (PyYAML, Ruby's Psych) could
# read it as anything but that string: it starts with a letter, `_` or `/` (so it is no
# number, timestamp, symbol or indicator), holds no character with a meaning in YAML,
# and is not one of the words that mean a boolean or null.
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
_SPECIAL_WORDS = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null", "nan", "inf"})
_SYMBOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*[?!]?")


def to_ruby_yaml(data: Mapping[str, object]) -> str:
    """Keys and `Symbol`s become `:name` plain scalars, which Ruby's YAML loads as Symbols."""
    if not data:
        return "--- {}\n"
    lines = ["---"]
    _mapping(data, 0, lines)
    lines.append("")
    return "\n".join(lines)


def to_json(data: Mapping[str, object]) -> str:
    return yaml_safe_json(data, default=_json_default)


# Rendering walks every worker of every `state`: dispatch on the exact type first (an
# isinstance against an ABC costs as much as the rest of a line), and remember what
# repeats from one request to the next (keys, strings, times).


def _mapping(value: Mapping[Any, object], indent: int, lines: list[str]) -> None:
    for key, item in value.items():
        kind = type(item)
        write = _WRITERS.get(kind)
        if write is not None:
            lines.append(_head(indent, key) + write(item))
        elif not item:
            lines.append(_head(indent, key) + _scalar(item))
        elif kind is list or kind is tuple:
            lines.append(_head(indent, key)[:-1])
            _sequence(item, indent, lines)  # type: ignore[arg-type]  # PyYAML's style: a list in a mapping is not indented
        elif kind is dict or isinstance(item, Mapping):
            lines.append(_head(indent, key)[:-1])
            _mapping(item, indent + 2, lines)  # type: ignore[arg-type]
        else:
            lines.append(_head(indent, key) + _scalar(item))


def _sequence(value: Sequence[object], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for item in value:
        if (isinstance(item, Mapping) or isinstance(item, (list, tuple))) and item:
            start = len(lines)
            if isinstance(item, Mapping):
                _mapping(item, indent + 2, lines)
            else:
                _sequence(item, indent + 2, lines)
            lines[start] = f"{pad}- {lines[start][indent + 2 :]}"
        else:
            lines.append(f"{pad}- {_scalar(item)}")


@functools.lru_cache(maxsize=8192, typed=True)  # typed: a key True is not the key 1
def _head(indent: int, key: object) -> str:
    """`key: ` at `indent`: what starts the line of an entry."""
    return f"{' ' * indent}{_key(key)}: "


@functools.lru_cache(maxsize=4096, typed=True)
def _key(key: object) -> str:
    if isinstance(key, str):
        return f":{key}" if _SYMBOL_NAME.fullmatch(key) else _quoted(key)
    return _scalar(key)


def _scalar(value: object) -> str:
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is str:
        return _string(value)
    if kind is Timestamp:
        return _yaml_time(value.epoch)  # type: ignore[attr-defined]
    if kind is Symbol:
        return _symbol(value.name)  # type: ignore[attr-defined]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, (list, tuple)):
        return "[]"
    return _string(str(value))




@functools.lru_cache(maxsize=4096)
def _string(text: str) -> str:
    if _PLAIN.fullmatch(text) and text.lower() not in _SPECIAL_WORDS:
        return text
    return _quoted(text)


@functools.lru_cache(maxsize=256)
def _symbol(name: str) -> str:
    return f":{name}" if _SYMBOL_NAME.fullmatch(name) else _quoted(f":{name}")


@functools.lru_cache(maxsize=8192)
def _yaml_time(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).isoformat(" ")


@functools.lru_cache(maxsize=8192)
def _json_time(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).isoformat()


_WRITERS: dict[type, Callable[[Any], str]] = {
    type(None): lambda _: "null",
    bool: lambda value: "true" if value else "false",
    int: str,
    str: _string,
    Timestamp: lambda value: _yaml_time(value.epoch),
    Symbol: lambda value: _symbol(value.name),
}
"""How a scalar of exactly this type is written (anything else: `_scalar`)."""


def _float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "." not in text:  # YAML 1.1 reads 1e-05 as a string; 1.0e-05 is a float
        text = text.replace("e", ".0e", 1)
    return text


def _quoted(text: str) -> str:
    """A double-quoted scalar: a JSON string, as the protocol writes one (JSON's escapes are YAML's too)."""
    return yaml_safe_json(text)


def _json_default(value: object) -> object:
    """What `json` cannot write itself: a Symbol is its name, a Timestamp an ISO-8601 string."""
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, Timestamp):
        return _json_time(value.epoch)
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    raise TypeError(f"{type(value).__name__} in a state document")
