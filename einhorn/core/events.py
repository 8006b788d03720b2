"""Events: facts the shell reports to the core. Past tense, behaviour-free.

Every event carries `now`, a monotonic clock reading in seconds; the core
never reads a clock itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from einhorn.core.record import dataclass
from einhorn.core.state import LaunchSpec


@dataclass(frozen=True, slots=True)
class MasterStarted:
    """The master is up (freshly, or restored after a re-exec); sockets are bound."""

    now: float
    restored: bool = False
    launch: LaunchSpec | None = None
    """How this image starts workers (argv, physical cwd, environment, graceful signal), as the shell
    measured it: the first generation's spec, or the new one's after an upgrade's re-exec."""


@dataclass(frozen=True, slots=True)
class Tick:
    """The deadline the core asked for (see `next_deadline`) has passed."""

    now: float


@dataclass(frozen=True, slots=True)
class WorkerSpawned:
    """The shell started the worker the core asked for in `SpawnWorker`."""

    spawn_id: int
    pid: int
    now: float


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    """The shell could not start that worker (fork/exec error)."""

    spawn_id: int
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class ChildExited:
    """The shell reaped a process: `exit_code` or `signal` tells how it ended."""

    pid: int
    exit_code: int | None
    signal: int | None
    now: float


@dataclass(frozen=True, slots=True)
class SignalReceived:
    """The master itself got a signal, by name without `SIG`: "INT", "HUP", ..."""

    signal: str
    now: float


WORKER_COMMANDS = frozenset({"worker:ack", "worker:ping"})
"""What a worker says about itself: never refused for the admin cap, never counted as an operator's command."""


def command_name(request: Mapping[str, object]) -> str | None:
    """The request's `command` if it is a string: a client may send any YAML value there (a mapping, a list)."""
    command = request.get("command")
    return command if isinstance(command, str) else None


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A parsed request arrived on command-socket connection `conn`.

    `request` is the decoded mapping as the client sent it; the core validates
    every field. `wall` is the wall-clock time, used only for display.
    `document` is the YAML document in `args` of a `config` request, decoded
    by the shell (or a `ConfigDocumentError`), since the core parses no YAML.
    The shell's parser bounds integers (`framing.MAX_INT_DIGITS`); the core
    still converts nothing it has not checked.
    """

    conn: int
    request: Mapping[str, object]
    now: float
    wall: float = 0.0
    document: object = None
    peer_pid: int | None = None
    """The process that opened the connection (SO_PEERCRED), when the shell knows it."""
    peer_ancestors: tuple[int, ...] | None = None
    """`peer_pid`'s ancestors below the master, parent first, as /proc showed them when the
    request was read; None when not known (the shell fills it for `worker:ack`/`worker:ping`)."""


@dataclass(frozen=True, slots=True)
class RequestUnparseable:
    """A line arrived on `conn` that is not a YAML mapping."""

    conn: int
    now: float


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The client on `conn` went away (or the shell dropped it)."""

    conn: int
    now: float


@dataclass(frozen=True, slots=True)
class ImageCompared:
    """The answer to `CompareImage(check_id)`: `unchanged` if every file a re-exec would load (the script, the
    interpreter and its libraries, each module, each directory on the import path) is as this image loaded it,
    and the re-exec runs with this image's environment; `detail` says what was compared, or what differs."""

    check_id: int
    unchanged: bool
    detail: str
    now: float


@dataclass(frozen=True, slots=True)
class UpgradeCheckPassed:
    """The upgrade check ordered by `StartUpgradeCheck(check_id)` exited 0."""

    check_id: int
    now: float


@dataclass(frozen=True, slots=True)
class UpgradeCheckFailed:
    """That upgrade check could not start, or exited with an error (`reason` says how)."""

    check_id: int
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class ReexecFailed:
    """The `ExecMaster` order failed (the exec itself); the master keeps running the old code."""

    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class WorkerNotified:
    """A datagram on the `-m notify` socket (sd_notify(3)): `fields` from process `pid`.

    The shell reads `pid` from the kernel's credentials (SO_PASSCRED), or from
    `MAINPID=` when the sender is a descendant of that process (`systemd-notify`
    run by a worker's shell).
    """

    pid: int
    fields: Mapping[str, str]
    now: float


@dataclass(frozen=True, slots=True)
class ListenerHealthChanged:
    """The `-b` listener `index` stopped accepting connections (a worker shut it down), or accepts again."""

    index: int
    accepting: bool
    now: float


@dataclass(frozen=True, slots=True)
class WorkerMeasured:
    """The shell read worker `pid`'s resident set size (/proc/PID/statm), with `--max-worker-rss`."""

    pid: int
    rss_bytes: int
    now: float


@dataclass(frozen=True, slots=True)
class QueuesMeasured:
    """The answer to `MeasureQueues`: `queued` connections waited in generation `version`'s accept queues at `now`."""

    version: int
    ticket: int
    queued: int
    now: float


Event = (
    MasterStarted
    | Tick
    | WorkerSpawned
    | SpawnFailed
    | ChildExited
    | SignalReceived
    | CommandReceived
    | RequestUnparseable
    | ConnectionClosed
    | ImageCompared
    | UpgradeCheckPassed
    | UpgradeCheckFailed
    | ReexecFailed
    | WorkerNotified
    | ListenerHealthChanged
    | WorkerMeasured
    | QueuesMeasured
)
