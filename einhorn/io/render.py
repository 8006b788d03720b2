"""Render the core's `state` document as YAML a Ruby client loads with symbols, or as JSON.

The YAML is written by hand rather than by PyYAML's representer, which spends
~4 ms on a 32-worker `state` walking nodes through its resolver. The document
holds only mappings, lists and a few scalar types, so block style with a small
quoting rule covers it; tests check that PyYAML and Ruby read back the same data.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping, Sequence
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
    return yaml_safe_json(_plain(data))


def _mapping(value: Mapping[Any, object], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for key, item in value.items():
        head = f"{pad}{_key(key)}:"
        if isinstance(item, Mapping) and item:
            lines.append(head)
            _mapping(item, indent + 2, lines)
        elif isinstance(item, (list, tuple)) and item:
            lines.append(head)
            _sequence(item, indent, lines)  # PyYAML's style: a list in a mapping is not indented
        else:
            lines.append(f"{head} {_scalar(item)}")


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


def _key(key: object) -> str:
    if isinstance(key, str):
        return f":{key}" if _SYMBOL_NAME.fullmatch(key) else _quoted(key)
    return _scalar(key)


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, Symbol):
        return f":{value.name}" if _SYMBOL_NAME.fullmatch(value.name) else _quoted(f":{value.name}")
    if isinstance(value, Timestamp):
        return datetime.datetime.fromtimestamp(value.epoch, tz=datetime.UTC).isoformat(" ")
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, (list, tuple)):
        return "[]"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _SPECIAL_WORDS:
        return text
    return _quoted(text)


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


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, Timestamp):
        return datetime.datetime.fromtimestamp(value.epoch, tz=datetime.UTC).isoformat()
    return value
