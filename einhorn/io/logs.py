"""Log lines on stderr, one per line: `[MASTER 4242] INFO: message` (the original's), or JSON (`--log-format json`).

A JSON line is one object: `time` (UTC, ISO 8601 with milliseconds), `level`,
`role`, `master_pid` (the process that wrote it), `message`, then the line's
structured fields when the core gave any (`Log.fields`: pid, index, version,
cause, ...).
"""

from __future__ import annotations

import os
import sys
import time

from einhorn.core.effects import LogFields, LogLevel

_LOWEST_SHOWN = (LogLevel.DEBUG, LogLevel.INFO, LogLevel.ERROR)
"""By verbosity (0 debug, 1 info, 2 errors only, as in the original): the lowest level written."""

FORMATS = ("text", "json")

HELD_LINES = 256
"""The most lines `Logger.hold` keeps before it writes them: a reader (a log shipper, a terminal) sees a long
burst in pieces while it lasts, not all at its end."""

PIPE_BUF = 4096
"""The largest write a pipe keeps in one piece (POSIX: at least 512; Linux: 4096). The workers share the
master's stderr: held lines go out in writes of whole lines up to this size, so that no worker's output
lands inside a master's line (a longer line is written alone, as it always was)."""


class Logger:
    def __init__(self, role: str = "MASTER", verbosity: int = 1, format: str = "text") -> None:
        self.role = role
        self.verbosity = verbosity
        self.format = format
        self.held: list[str] | None = None
        """Between `hold` and `release`: the lines logged meanwhile, written out together by `flush`."""

    def hold(self) -> None:
        """Keep the lines until `flush` or `release`: a burst (1000 spawns log 2000 lines) is one write, not one each."""
        if self.held is None:
            self.held = []

    def flush(self) -> None:
        held = self.held
        if not held:
            return
        self.held = []
        chunk: list[str] = []
        size = 0
        for line in held:
            length = len(line.encode(errors="backslashreplace"))
            if chunk and size + length > PIPE_BUF:
                self._write("".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += length
        self._write("".join(chunk))

    def release(self) -> None:
        """Write the held lines; from now on each line at once again."""
        self.flush()
        self.held = None

    def log(self, level: LogLevel, message: str) -> None:
        self.log_fields(level, message, ())

    def log_fields(self, level: LogLevel, message: str, fields: LogFields) -> None:
        """`message` with its structured fields (written only in the JSON format)."""
        if level < _LOWEST_SHOWN[max(0, min(self.verbosity, len(_LOWEST_SHOWN) - 1))]:
            return
        if self.format == "json":
            line = json_line(time.time(), level, self.role, os.getpid(), message, fields)
        else:
            line = f"[{self.role} {os.getpid()}] {level.name}: {message}\n"
        if self.held is None:
            self._write(line)
            return
        self.held.append(line)
        if len(self.held) >= HELD_LINES:
            self.flush()

    def _write(self, text: str) -> None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # a closed or full stderr must never take the master down

    def debug(self, message: str) -> None:
        self.log(LogLevel.DEBUG, message)

    def info(self, message: str) -> None:
        self.log(LogLevel.INFO, message)

    def warn(self, message: str) -> None:
        self.log(LogLevel.WARN, message)

    def error(self, message: str) -> None:
        self.log(LogLevel.ERROR, message)


def json_line(wall: float, level: LogLevel, role: str, pid: int, message: str, fields: LogFields) -> str:
    import json  # (already loaded by the re-exec code: no cost)

    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 1000) % 1000:03d}Z"
    document: dict[str, object] = {"time": stamp, "level": level.name, "role": role, "master_pid": pid, "message": message}
    for key, value in fields:
        document.setdefault(key, value)
    return json.dumps(document, ensure_ascii=False) + "\n"


def current_traceback() -> str:
    """The exception being handled, as Python prints it; at least its type and text when the traceback
    module cannot be loaded then (out of descriptors, say), so that reporting a bug never raises."""
    kind, error, _ = sys.exc_info()
    try:
        import traceback  # only when something went wrong: an idle master need not hold it

        return traceback.format_exc()
    except Exception as failure:  # noqa: BLE001 - see above
        name = "None" if kind is None else kind.__name__
        return f"{name}: {error} (no traceback: {type(failure).__name__}: {failure})\n"
