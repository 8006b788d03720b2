"""Render the core's `state` document as YAML a Ruby client loads with symbols, or as JSON.

The YAML is written by hand rather than by PyYAML's representer, which spends
~4 ms on a 32-worker `state` walking nodes through its resolver. The document
holds only mappings, lists and a few scalar types, so block style with a small
quoting rule covers it; tests check that PyYAML and Ruby read back the same data.
Both forms dispatch on exact types and remember what repeats from one request
to the next (entry heads, strings, times): a 1000-worker `state` is rendered
in about 4 ms (YAML) and 3 ms (JSON: `json` itself, with a `default`).

`state_reply` goes further for the command socket: it keeps each worker's entry
as the bytes it takes in the framed reply, keyed by the (immutable) `Child`, and
renders again only the workers that changed; the rest of the document is small.
The bytes are those of `encode_message(envelope(to_ruby_yaml(data)))` (or
`to_json`): JSON's string escapes, `yaml_safe_json`'s and the framing's each
escape one character at a time, so the escaped whole is the escaped parts joined.
"""

from __future__ import annotations

import datetime
import functools
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any

from einhorn.core.report import Symbol, Timestamp, Workers
from einhorn.core.state import Child
from einhorn.framing import encode_message, escape, yaml_safe_json

# A string is written plain only when no YAML 1.1 loader (PyYAML, Ruby's Psych) could
# read it as anything but that string: it starts with a letter, `_` or `/` (so it is no
# number, timestamp, symbol or indicator), holds no character with a meaning in YAML,
# and is not one of the words that mean a boolean or null.
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
_SPECIAL_WORDS = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null", "nan", "inf"})
_SYMBOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*[?!]?")


def to_ruby_yaml(data: Mapping[str, object]) -> str:
    """Keys and `Symbol`s become `:name` plain scalars, which Ruby's YAML loads as Symbols."""
    return _yaml(data, None)


def to_json(data: Mapping[str, object]) -> str:
    return yaml_safe_json(data, default=_json_default)


def state_reply(data: Mapping[str, object], as_json: bool, envelope: Callable[[str], Mapping[str, object]]) -> bytes:
    """`encode_message(envelope(to_json(data) if as_json else to_ruby_yaml(data)))`, reusing what earlier replies rendered."""
    holes: list[tuple[Workers, int]] = []
    if as_json:
        text, hole, rendered = _json_with_holes(data, holes), _JSON_HOLE, _JSON_WORKERS
    else:
        text, hole, rendered = _yaml(data, holes), _HOLE, _YAML_WORKERS
    pieces = text.split(hole)
    assert len(pieces) == len(holes) + 1
    head, found, tail = encode_message(envelope(_HOLE)).partition(_wire(_HOLE))
    assert found
    out = [head]
    for piece, (workers, indent) in zip(pieces, holes, strict=False):
        out.append(_wire(piece))
        out.append(rendered.join(workers, indent))
    out += (_wire(pieces[-1]), tail)
    return b"".join(out)


_HOLE = "\x00workers\x00"
"""Where `state_reply` puts a `Workers` back: no rendered text holds a NUL (strings with one are quoted, escaped)."""
_JSON_HOLE = yaml_safe_json(_HOLE)
"""A string `_HOLE` as both forms write it (quoted)."""


def _wire(text: str) -> bytes:
    """`text` as it is written inside the framed reply's JSON string."""
    if text.isascii() and "\x7f" not in text:  # what `yaml_safe_json` does then, without a JSONEncoder per call
        return escape(encode_basestring(text)[1:-1]).encode("ascii")
    return escape(yaml_safe_json(text)[1:-1]).encode("utf-8")


class _RenderedWorkers:
    """Each worker's entry as reply bytes, kept for one form, indentation and wall-clock offset.

    A worker that pinged shows its ping's age, which changes with every request: its
    entry is kept as the bytes before and after that one number."""

    def __init__(
        self,
        render: Callable[[int, Mapping[str, object], int], str],
        scalar: Callable[[object], str],
        opening: str,
        separator: str,
        closing: str,
    ) -> None:
        self.render, self.scalar = render, scalar
        self.opening, self.separator, self.closing = _wire(opening), _wire(separator), _wire(closing)
        self.shape: tuple[int, float] | None = None
        # Plain mappings by id(child) rather than one of tuples: a thousand tuples kept from
        # one request to the next are work for the garbage collector. The child itself is
        # kept, so no other object can have its id meanwhile.
        self.children: dict[int, Child] = {}
        self.rendered: dict[int, bytes] = {}
        """The entry; for a worker that pinged, what comes before its ping age."""
        self.after_ping_age: dict[int, bytes] = {}
        self.last: tuple[Mapping[int, Child], float, bool, bytes] | None = None
        """The last children joined, the clock then, whether any entry showed it (a ping age), and the bytes."""

    def join(self, workers: Workers, indent: int) -> bytes:
        if self.shape != (indent, workers.wall_offset):
            self.shape, self.last = (indent, workers.wall_offset), None
            self.children, self.rendered, self.after_ping_age = {}, {}, {}
        children, last = workers.children, self.last
        if last is not None and last[0] is children and (last[1] == workers.clock or not last[2]):
            return last[3]  # the pool is as it was: nothing to look at
        seen, rendered, after_ping_age = self.children, self.rendered, self.after_ping_age
        parts = []
        pinged = False
        for child in sorted(children.values(), key=_PID):
            key = id(child)
            if seen.get(key) is not child:
                seen[key] = child
                self._render(key, child, workers, indent)
            if child.pinged_at is None:
                parts.append(rendered[key])
            else:
                pinged = True
                parts.append(rendered[key] + _wire(self.scalar(workers.ping_age(child))) + after_ping_age[key])
        if len(seen) > 2 * len(children) + 64:  # workers gone since: keep only the live ones
            live = [id(c) for c in children.values()]
            self.children = {key: seen[key] for key in live}
            self.rendered = {key: rendered[key] for key in live}
            self.after_ping_age = {key: after_ping_age[key] for key in live if key in after_ping_age}
        joined = self.opening + self.separator.join(parts) + self.closing
        self.last = (children, workers.clock, pinged, joined)
        return joined

    def _render(self, key: int, child: Child, workers: Workers, indent: int) -> None:
        if child.pinged_at is None:
            self.rendered[key] = _wire(self.render(child.pid, workers.entry(child), indent))
            return
        entry = {**workers.entry(child), "ping_age": _HOLE}
        # The last match: only a number and a verdict's name follow `ping_age` in an entry.
        before, hole, after = self.render(child.pid, entry, indent).rpartition(_JSON_HOLE)
        assert hole
        self.rendered[key], self.after_ping_age[key] = _wire(before), _wire(after)


_PID = operator.attrgetter("pid")


def _yaml(data: Mapping[str, object], holes: list[tuple[Workers, int]] | None) -> str:
    if not data:
        return "--- {}\n"
    lines = ["---"]
    _mapping(data, 0, lines, holes)
    lines.append("")
    return "\n".join(lines)


def _yaml_worker(pid: int, entry: Mapping[str, object], indent: int) -> str:
    lines: list[str] = []
    _mapping({pid: entry}, indent, lines)
    return "\n".join(lines)


def _json_with_holes(data: Mapping[str, object], holes: list[tuple[Workers, int]]) -> str:
    def default(value: object) -> object:
        if type(value) is Workers and value:
            holes.append((value, 0))
            return _HOLE
        return _json_default(value)

    return yaml_safe_json(data, default=default)


def _json_worker(pid: int, entry: Mapping[str, object], indent: int) -> str:
    return yaml_safe_json({pid: entry}, default=_json_default)[1:-1]


_YAML_WORKERS = _RenderedWorkers(_yaml_worker, lambda value: _scalar(value), "", "\n", "")
_JSON_WORKERS = _RenderedWorkers(_json_worker, yaml_safe_json, "{", ", ", "}")


# Rendering walks every worker of every `state`: dispatch on the exact type first (an
# isinstance against an ABC costs as much as the rest of a line), and remember what
# repeats from one request to the next (keys, strings, times).


def _mapping(value: Mapping[Any, object], indent: int, lines: list[str], holes: list[tuple[Workers, int]] | None = None) -> None:
    """`holes`: leave a line `_HOLE` for each (non-empty) `Workers` and list it there, with the indentation of its keys."""
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
        elif kind is Workers and holes is not None:
            lines += (_head(indent, key)[:-1], _HOLE)
            holes.append((item, indent + 2))  # type: ignore[arg-type]
        elif kind is dict or isinstance(item, Mapping):
            lines.append(_head(indent, key)[:-1])
            _mapping(item, indent + 2, lines, holes)  # type: ignore[arg-type]
        else:
            lines.append(_head(indent, key) + _scalar(item))


def _sequence(value: Sequence[object], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    if set(map(type, value)) == _INTS:  # a generation's workers: a thousand pids, in one piece
        lines.append(pad + "- " + f"\n{pad}- ".join(map(str, value)))
        return
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


_INTS = {int}


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
