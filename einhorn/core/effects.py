"""Effects: orders the core gives the shell. Imperative, behaviour-free."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from einhorn.core.state import RequestId


class LogLevel(enum.IntEnum):
    DEBUG = 0
    INFO = 1
    ERROR = 2


@dataclass(frozen=True, slots=True)
class Log:
    level: LogLevel
    message: str


@dataclass(frozen=True, slots=True)
class SpawnWorker:
    """Start a worker with this index; answer `WorkerSpawned` or `SpawnFailed`."""

    spawn_id: int
    index: int
    version: int


@dataclass(frozen=True, slots=True)
class SendSignal:
    """Send `signal` (a name without `SIG`) to `pid`; a vanished pid is not an error."""

    pid: int
    signal: str


@dataclass(frozen=True, slots=True)
class Reply:
    """Send one response message on command connection `conn`."""

    conn: int
    message: str
    request_id: RequestId | None = None
    wait: bool = False


@dataclass(frozen=True, slots=True)
class ReplyData:
    """Send a structured document (the `state` command) serialized as YAML or JSON."""

    conn: int
    data: Mapping[str, object]
    as_json: bool
    request_id: RequestId | None = None


@dataclass(frozen=True, slots=True)
class CloseConnection:
    conn: int


@dataclass(frozen=True, slots=True)
class ReexecMaster:
    """Re-exec the master image with the current state; answer `ReexecFailed` on failure."""


@dataclass(frozen=True, slots=True)
class Exit:
    code: int


Effect = Log | SpawnWorker | SendSignal | Reply | ReplyData | CloseConnection | ReexecMaster | Exit
