"""Messages of the command socket protocol (BEHAVIOR §6): building requests, parsing lines.

The framing (one escaped line per message), its limits and the line buffer
are `einhorn.framing`. Requests come from anyone who can connect to the
socket, so parsing is deliberately narrower than YAML: no anchors or aliases
(no alias bombs), no tags (no arbitrary types), bounded depth and size
(`framing.MAX_DEPTH`, `framing.MAX_NODES`), integers of at most
`framing.MAX_INT_DIGITS` digits, string mapping keys, and only JSON-like values
come out (str, int, float, bool, None, list, dict). YAML limits an implicit
mapping key to 1024 characters, so a longer key, as written on the wire, does
not parse. The master also caps documents that are not JSON (``max_yaml``,
`framing.MAX_YAML`); a client reading a Ruby master's YAML replies does not.

PyYAML comes in, through `einhorn.restricted_yaml`, only when a request is
not JSON.
"""

import json
from collections.abc import Sequence

from einhorn.framing import MAX_DEPTH, MAX_INT_DIGITS, MAX_NODES, RequestError, YamlTooLong, has_surrogate, unescape


def request(
    command: str,
    args: Sequence[str] = (),
    request_id: str | None = None,
    **extra: object,
) -> dict[str, object]:
    """Build a request mapping; ``id`` is left out when ``request_id`` is None."""
    message: dict[str, object] = {"command": command, "args": list(args)}
    if request_id is not None:
        message["id"] = request_id
    message.update(extra)
    return message


def parse_message(line: bytes, max_yaml: int | None = None) -> dict[str, object]:
    """Parse one protocol line (trailing newline optional) into a mapping."""
    try:
        text = line.removesuffix(b"\n").decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(f"message is not valid UTF-8: {error}") from error
    document = parse_document(unescape(text), max_yaml)
    if not isinstance(document, dict):
        raise RequestError(f"message is a {type(document).__name__}, not a mapping")
    return document


def parse_document(text: str, max_yaml: int | None = None) -> object:
    """Parse untrusted YAML with the restrictions of the module doc.

    JSON objects, which is what almost every client sends, take the C JSON
    parser first: PyYAML's pure-Python loader costs about 4 s per MiB on the
    master's only thread, hence ``max_yaml`` (`YamlTooLong`, before any
    parsing). The same limits apply to both paths.
    """
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            document = json.loads(stripped, parse_int=_bounded_int)
        except (ValueError, RecursionError):
            pass
        else:
            _check_json_limits(document)
            return document
    if max_yaml is not None and len(text) > max_yaml:
        raise YamlTooLong(f"a document that is not JSON may be at most {max_yaml} characters; send JSON")
    # Imported here: PyYAML costs every start and re-exec ~20 ms that JSON requests never need.
    try:
        from einhorn import restricted_yaml
    except ImportError as error:  # the installation changed under a running master
        raise RequestError(f"cannot load the YAML parser ({error}); send JSON") from error
    return restricted_yaml.load(text)


def _bounded_int(literal: str) -> int:
    # A RequestError, not a ValueError: the YAML fallback would only refuse it again, slowly.
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise RequestError(f"an integer with more than {MAX_INT_DIGITS} digits")
    return int(literal)


def _check_json_limits(document: object) -> None:
    nodes = 0
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise RequestError(f"more than {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise RequestError(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            if has_surrogate(value):
                raise RequestError("unpaired surrogate in string")
        elif isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
