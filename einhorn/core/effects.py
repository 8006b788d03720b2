"""Effects: orders the core gives the shell. Imperative, behaviour-free."""

from __future__ import annotations

import enum
from collections.abc import Mapping

from einhorn.core.record import dataclass, field
from einhorn.core.state import LaunchSpec, RequestId


class LogLevel(enum.IntEnum):
    DEBUG = 0
    INFO = 1
    WARN = 2
    """Not an error, but an operator should look (an ACK sent by another process, ...)."""
    ERROR = 3


LogFields = tuple[tuple[str, str | int | float | bool | None], ...]
"""Structured facts of a log line (pid, index, version, cause, ...): shown by `--log-format json` only."""


@dataclass(frozen=True, slots=True)
class Log:
    """Write one line to the master's log."""

    level: LogLevel
    message: str
    fields: LogFields = field(default=(), compare=False)
    """Not compared: what a line says is its level and message; the fields only repeat its facts for machines."""


@dataclass(frozen=True, slots=True)
class SpawnWorker:
    """Start a worker with this index from generation `version`'s `launch` spec; answer `WorkerSpawned` or `SpawnFailed`."""

    spawn_id: int
    index: int
    version: int
    launch: LaunchSpec | None = None
    """None only where the core knows no generation (a state made by hand): the shell's own spec."""


class Cause(enum.Enum):
    """Why the master sends a signal: who decided it (read by the invariant checker, shown to observers)."""

    OPERATOR = "operator"
    """`signal` or `die`: the operator named the signal."""
    SHUTDOWN = "shutdown"
    """A master signal (SIGINT, SIGUSR2, SIGTERM, SIGQUIT) began a shutdown; or a worker started during one."""
    UPGRADE = "upgrade"
    """An old worker replaced by an upgrade (smooth, fleet, or once the upgrade is done)."""
    MAKE_ROOM = "make_room"
    """An old worker stopped to make room under max_upgrade_additional."""
    SURPLUS = "surplus"
    """More workers at the current version than `number`."""
    ESCALATION = "escalation"
    """SIGKILL: still alive `-t` seconds after the last signal."""
    ROLLBACK = "rollback"
    """A worker of a rolled-back generation stopped (a failed canary, a crash loop, a timeout, `abort_upgrade`)."""
    BOOT_TIMEOUT = "boot_timeout"
    """Not ACKed `--boot-timeout` seconds after its spawn (health.py)."""
    PING_TIMEOUT = "ping_timeout"
    """Pinged, then silent for `--ping-timeout` seconds (health.py)."""
    RSS_LIMIT = "rss_limit"
    """Resident set size above `--max-worker-rss` (health.py)."""


OWN_INITIATIVE = frozenset(
    {
        Cause.UPGRADE,
        Cause.MAKE_ROOM,
        Cause.SURPLUS,
        Cause.ESCALATION,
        Cause.ROLLBACK,
        Cause.BOOT_TIMEOUT,
        Cause.PING_TIMEOUT,
        Cause.RSS_LIMIT,
    }
)
"""The master's own decisions; the others carry out an order (spec/README.md §5)."""


@dataclass(frozen=True, slots=True)
class SendSignal:
    """Send `signal` (a name without `SIG`) to `pid`; a vanished pid is not an error."""

    pid: int
    signal: str
    cause: Cause


@dataclass(frozen=True, slots=True)
class Reply:
    """Send one response message on command connection `conn`."""

    conn: int
    message: str
    request_id: RequestId | None = None
    wait: bool = False
    failed: bool = False
    """The request failed (unknown command, invalid arguments, an error, an upgrade that failed or was
    rolled back): the envelope says `"failed": true` when the request had an id."""


@dataclass(frozen=True, slots=True)
class ReplyData:
    """Send a structured document (the `state` command) serialized as YAML or JSON."""

    conn: int
    data: Mapping[str, object]
    as_json: bool
    request_id: RequestId | None = None


@dataclass(frozen=True, slots=True)
class StreamEvents:
    """Make command connection `conn` a subscriber of the event stream (`subscribe`), until it closes."""

    conn: int
    request_id: RequestId | None = None


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close command connection `conn` once its replies are written."""

    conn: int


@dataclass(frozen=True, slots=True)
class CompareImage:
    """Compare what a re-exec would load with what this master image loaded at its start; answer `ImageCompared`."""

    check_id: int


@dataclass(frozen=True, slots=True)
class StartUpgradeCheck:
    """Start `einhorn --upgrade-check`; answer `UpgradeCheckPassed` or `UpgradeCheckFailed` with this id."""

    check_id: int


@dataclass(frozen=True, slots=True)
class StopUpgradeCheck:
    """The core no longer wants that check's verdict (timed out, or shutting down): kill and reap it."""

    check_id: int


@dataclass(frozen=True, slots=True)
class ExecMaster:
    """Re-exec the master image with the state as it is once the events already read are handled.

    The shell performs it after draining the current batch; an `AbandonExec`
    ordered meanwhile cancels it. The new image answers
    `MasterStarted(restored=True)`; a failed exec, `ReexecFailed`.
    """


@dataclass(frozen=True, slots=True)
class AbandonExec:
    """Withdraw an `ExecMaster` not yet performed (the master began shutting down)."""


@dataclass(frozen=True, slots=True)
class NotifySupervisor:
    """Send these sd_notify fields, one datagram, to the master's own `NOTIFY_SOCKET`."""

    fields: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Steer:
    """On every `drain` listener, send each new connection to one generation's socket, chosen at
    random in proportion to `weights` ((version, weight) pairs, every weight > 0, at least one pair);
    a version not named gets none. The shell opens a version's socket if it has none yet."""

    weights: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class MeasureQueues:
    """Read how many accepted-by-the-kernel connections wait in generation `version`'s sockets of the
    `drain` listeners (their accept queues, all listeners summed), now; answer `QueuesMeasured` with
    the same `ticket` and the time of the reading."""

    version: int
    ticket: int


@dataclass(frozen=True, slots=True)
class ReleaseListeners:
    """Generation `version` has no worker left: close its sockets of the `drain` listeners (the
    listeners' own sockets, which the first generation uses, stay open)."""

    version: int


@dataclass(frozen=True, slots=True)
class Exit:
    """End the master with this exit status."""

    code: int


Effect = (
    Log
    | SpawnWorker
    | SendSignal
    | Reply
    | ReplyData
    | StreamEvents
    | CloseConnection
    | CompareImage
    | StartUpgradeCheck
    | StopUpgradeCheck
    | ExecMaster
    | AbandonExec
    | NotifySupervisor
    | Steer
    | MeasureQueues
    | ReleaseListeners
    | Exit
)
