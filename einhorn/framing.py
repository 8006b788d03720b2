"""Framing of the command socket protocol (BEHAVIOR §6): the bytes on the wire and their limits.

Each message, in both directions, is one line: a YAML document (clients send
JSON, which is YAML too) in which every ``%`` is written ``%25`` and every
newline ``%0A``, followed by ``\\n``. The document is JSON in UTF-8 that every
YAML loader reads back exactly (`yaml_safe_json`).

A leaf: this module imports only the standard library and nothing of einhorn.
`einhorn.worker` frames its requests with it; `einhorn.protocol` (parsing) and
`einhorn.restricted_yaml` (the YAML loader) build on it.
"""

import json
import re
from collections.abc import Callable, Mapping

MAX_DEPTH = 64
MAX_NODES = 10_000
DEFAULT_MAX_LINE = 1024 * 1024
MAX_INT_DIGITS = 100
"""An integer literal in a request may have at most this many characters (sign, base prefix and
``_`` aside): Python refuses to convert more than 4,300 digits either way, and no field needs 100."""
MAX_YAML = 4 * 1024
"""Characters of a request (or `config` document) that is not JSON, in the master: PyYAML's
pure-Python loader costs up to about 8 µs per character (a flow sequence) on the master's only
thread, so a YAML request costs at most ~35 ms (`bench/yaml_cost.py`). Clients send JSON or a few
hundred bytes of YAML; JSON may be as long as the master's line limit."""

_ESCAPED = re.compile("%(25|0A)", re.IGNORECASE)
_SURROGATE = re.compile("[\ud800-\udfff]")
# What must be escaped inside a double-quoted YAML scalar: all but YAML's printable
# characters (x09 x0A x0D x20-x7E x85 xA0-xD7FF xE000-xFFFD x10000-x10FFFF), the line
# breaks a YAML loader would fold to a space (NEL, LS, PS) and the byte order mark.
_NOT_YAML_PRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")


class RequestError(Exception):
    """A line that is not a valid protocol message."""


class LineTooLong(RequestError):
    """A line grew past the buffer's limit; the connection should be dropped."""


class YamlTooLong(RequestError):
    """A request that is not JSON is longer than `MAX_YAML`; the framing is intact."""


def escape(text: str) -> str:
    """Escape ``%`` and newlines so that ``text`` fits on one line."""
    return text.replace("%", "%25").replace("\n", "%0A")


def unescape(text: str) -> str:
    """Undo `escape`; other ``%`` sequences are left as they are."""
    return _ESCAPED.sub(lambda match: "%" if match.group(1) == "25" else "\n", text)


def encode_message(message: Mapping[str, object], *, compact: bool = False) -> bytes:
    """Frame ``message`` as one protocol line, terminator included.

    ``compact`` leaves out the spaces after ``,`` and ``:``, as in the ACK
    line BEHAVIOR §3 spells out.
    """
    return escape(yaml_safe_json(message, compact=compact)).encode("utf-8") + b"\n"


def yaml_safe_json(value: object, *, compact: bool = False, default: Callable[[object], object] | None = None) -> str:
    """``value`` as JSON that YAML loaders (Ruby's Psych, Go's yaml.v2, PyYAML) read back exactly.

    Characters outside the Basic Multilingual Plane stay as they are: JSON's
    ``ensure_ascii`` would write them as ``\\u`` surrogate pairs, which YAML
    forbids. Only what `_NOT_YAML_PRINTABLE` matches is escaped, as ``\\uXXXX``
    (JSON and YAML alike); a lone surrogate, from bytes that were not UTF-8 and
    so have no UTF-8 form, becomes U+FFFD.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":") if compact else None, default=default)
    if text.isascii() and "\x7f" not in text:  # JSON escaped the rest of ASCII's controls
        return text
    return _NOT_YAML_PRINTABLE.sub(_yaml_escape, text)


def _yaml_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return "\\ufffd" if 0xD800 <= code <= 0xDFFF else f"\\u{code:04x}"


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a UTF-16 surrogate, which no decoded UTF-8 holds."""
    return _SURROGATE.search(text) is not None


def join_surrogate_pairs(text: str) -> str:
    """``text`` with each surrogate pair as the one character it stands for.

    JSON with ``ensure_ascii`` writes characters outside the BMP as ``\\u``
    surrogate pairs, which YAML decodes one half at a time. Raises
    `UnicodeDecodeError` (a `ValueError`) when a surrogate is unpaired.
    """
    if not has_surrogate(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")


class LineBuffer:
    """Reassembles newline-terminated lines from a byte stream."""

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._max_line = max_line
        self._pending = bytearray()
        self._overflowed = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the lines it completed, without their newline.

        Raises `LineTooLong` when a line exceeds ``max_line`` bytes; the
        buffer then refuses all further input.
        """
        if self._overflowed:
            raise LineTooLong("line buffer already overflowed")
        # Only the new bytes can hold a newline: the pending ones had none.
        search_from = len(self._pending)
        self._pending += data
        lines: list[bytes] = []
        line_start = 0
        while (newline := self._pending.find(b"\n", search_from)) != -1:
            self._check_length(newline - line_start)
            lines.append(bytes(self._pending[line_start:newline]))
            line_start = search_from = newline + 1
        del self._pending[:line_start]
        self._check_length(len(self._pending))
        return lines

    @property
    def pending(self) -> bytes:
        """Bytes of an incomplete line received so far."""
        return bytes(self._pending)

    def _check_length(self, length: int) -> None:
        if length > self._max_line:
            self._overflowed = True
            self._pending.clear()
            raise LineTooLong(f"line longer than {self._max_line} bytes")
