"""Log lines on stderr, one per line: `[MASTER 4242] INFO: message`."""

from __future__ import annotations

import os
import sys

from einhorn.core.effects import LogLevel

_LOWEST_SHOWN = (LogLevel.DEBUG, LogLevel.INFO, LogLevel.ERROR)
"""By verbosity (0 debug, 1 info, 2 errors only, as in the original): the lowest level written."""


class Logger:
    def __init__(self, role: str = "MASTER", verbosity: int = 1) -> None:
        self.role = role
        self.verbosity = verbosity

    def log(self, level: LogLevel, message: str) -> None:
        if level < _LOWEST_SHOWN[max(0, min(self.verbosity, len(_LOWEST_SHOWN) - 1))]:
            return
        line = f"[{self.role} {os.getpid()}] {level.name}: {message}\n"
        try:
            sys.stderr.write(line)
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
