"""The master's settings: fixed at start, a few changeable at run time (`config`, `inc`)."""

from __future__ import annotations

import enum

from einhorn.core.record import dataclass, replace

MAX_SPINUP_INTERVAL = 30.0
"""Seconds: the gradual spin-up interval never grows past this, however many workers died."""

UPGRADE_CHECK_TIMEOUT = 30.0
"""Seconds the upgrade check may run before the re-exec fails (the check is then killed)."""

MAX_WORKERS = 1000
"""Upper bound (inclusive) of `set_workers` and `inc`, as in the original."""

MAX_DURATION = 7 * 24 * 3600
"""Seconds (one week): the longest duration a setting may name (`-m`, `-s`, `-t`, `config`).

Anything longer is a typo, and no deadline the core computes from one can
overflow what the shell's wait (select) accepts or what a float holds.
"""

DURATION_RANGE = f"at most {MAX_DURATION} (one week)"
"""How the upper bound reads in an error message."""

MAX_WORKER_RSS_MB = 1 << 20
"""The largest `--max-worker-rss` (MiB): one TiB."""

RSS_SAMPLE_INTERVAL = 2.0
"""Seconds between two passes of the shell over the workers' RSS (`--max-worker-rss`)."""


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    """A listening socket as `state` shows it: `AF_INET`/`AF_INET6`/`AF_UNIX` and where it really is."""

    family: str
    address: str
    """`127.0.0.1:8080`, `[::1]:8080`, or a UNIX socket's path."""
    name: str = ""
    """systemd's name for an adopted socket (`LISTEN_FDNAMES`); "" for a `-b` address."""
    drain: bool = False
    """`-b ...,drain`: one socket per generation, connections steered away from a generation before its workers stop."""


class Pacing(enum.StrEnum):
    """How spin-ups after the first fill are paced (EXTENSIONS §4, spec/README.md §4 rule 5)."""

    ACK = "ack"
    """The default: a new worker starts as soon as fewer than `max_unacked` are un-ACKed,
    with no fixed interval; a death before ACK brings back the interval until the next ACK."""
    INTERVAL = "interval"
    """The original's rule, kept for those who pass `-s`: one spin-up per interval."""


@dataclass(frozen=True, slots=True)
class Display:
    """What the core shows about this master but never decides on.

    Only the `state` document (`report.snapshot`) and a few reply texts (ehlo's
    greeting, dec's "Run kill PID") read these; `step` does not. `binds` are the
    `-b` specs as given, `bound_ports` the ports actually bound (None for a UNIX
    socket), `listeners` every listening socket (a `-b systemd` may adopt several),
    and `stopped_listeners` the indexes of those the shell saw stop accepting
    (`ListenerHealthChanged`).
    """

    master_pid: int = 0
    command_name: str | None = None
    program: tuple[str, ...] = ()
    socket_path: str = ""
    pidfile: str = ""
    lockfile: str = ""
    binds: tuple[str, ...] = ()
    bound_ports: tuple[int | None, ...] = ()
    listeners: tuple[ListenerInfo, ...] = ()
    stopped_listeners: frozenset[int] = frozenset()
    backlog: int = 100
    command_socket_as_fd: bool = False
    kill_children_on_exit: bool = False
    preloaded: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    """The master's policy: what `step` reads to decide (a few changeable at run time, `RUNTIME_SETTINGS`).

    `ack_timer` is the timer-ACK delay in seconds, or None for manual ACKs.
    `einhorn_version` is shown, but also in a message `step` writes ("Upgraded
    successfully to ..."); everything else that is only shown is in `display`.
    `pacing` is INTERVAL when `-s` was given (or `seconds` set with `config`), else ACK.
    """

    number: int = 1
    ack_timer: float | None = 1.0
    notify_acks: bool = False
    """`-m notify`: with `ack_timer` None, `READY=1` on the notify socket ACKs a worker (as `worker:ack` does)."""
    seconds: float = 1.0
    pacing: Pacing = Pacing.ACK
    max_unacked: int = 1
    max_upgrade_additional: int | None = None
    signal_timeout: int | None = None
    graceful_signal: str = "USR2"
    """What "finish and exit" is sent as (`--graceful-signal`): upgrade culls, surplus, make-room,
    `die` without argument, the master's SIGINT/SIGUSR2."""
    reaper: bool = False
    """PID 1 (a container's init) or `--subreaper`: orphaned descendants are reaped here, quietly, and
    SIGTERM (a container's stop) is a graceful shutdown, as SIGINT."""
    supervised: bool = False
    """`NOTIFY_SOCKET` is in the master's environment: tell the supervisor (systemd) how the master is (`notify.py`)."""
    watchdog_interval: float | None = None
    """Seconds of systemd's watchdog (`WATCHDOG_USEC`): `WATCHDOG=1` goes out every half of it."""
    boot_timeout: float | None = None
    """`--boot-timeout`: seconds a worker has from its spawn to ACK, or it is stopped (health.py)."""
    ping_timeout: float | None = None
    """`--ping-timeout`: seconds a worker that pinged once may go without pinging, or it is replaced."""
    max_worker_rss_mb: int | None = None
    """`--max-worker-rss`: MiB of resident memory above which a worker is replaced (the shell measures)."""
    drain: bool = False
    """Some `-b` listener has `drain`: each generation accepts on a socket of its own, and a worker is
    stopped on the master's own initiative only once its generation's socket gets no new connection and
    its queue is empty (drain.py)."""
    einhorn_version: str = ""
    display: Display = Display()

    @property
    def max_worker_rss_bytes(self) -> int | None:
        return None if self.max_worker_rss_mb is None else self.max_worker_rss_mb * 1024 * 1024

    @property
    def ack_mode(self) -> str:
        if self.ack_timer is not None:
            return "timer"
        return "notify" if self.notify_acks else "manual"


RUNTIME_SETTINGS = ("number", "seconds", "max_unacked", "max_upgrade_additional", "signal_timeout", "pacing")
"""Settings an operator may change while running (`config`, and `inc`/`dec`/`set_workers` for number).

Setting `seconds` is an explicit choice of the interval, as `-s` is: it also sets
`pacing` to INTERVAL (`pacing: ack` in the same or a later `config` goes back)."""


def apply_setting(config: Config, name: str, value: object) -> Config | str:
    """`config` with one runtime setting changed, or why `value` is not acceptable."""
    match name:
        case "number":
            count = _int_in(value, 1, MAX_WORKERS)
            return f"must be an integer in [1, {MAX_WORKERS}]" if count is None else replace(config, number=count)
        case "max_unacked":
            count = _int_in(value, 1, None)
            return "must be an integer >= 1" if count is None else replace(config, max_unacked=count)
        case "max_upgrade_additional":
            if value is None:
                return replace(config, max_upgrade_additional=None)
            count = _int_in(value, 0, None)
            return "must be an integer >= 0 or null" if count is None else replace(config, max_upgrade_additional=count)
        case "signal_timeout":
            if value is None:
                return replace(config, signal_timeout=None)
            count = _int_in(value, 1, MAX_DURATION)
            if count is None:
                return f"must be an integer number of seconds >= 1 and {DURATION_RANGE}, or null"
            return replace(config, signal_timeout=count)
        case "seconds":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_DURATION:
                return f"must be a number of seconds > 0 and {DURATION_RANGE}"
            return replace(config, seconds=float(value), pacing=Pacing.INTERVAL)
        case "pacing":
            if not isinstance(value, str) or value not in tuple(Pacing):
                return f"must be one of {', '.join(p.value for p in Pacing)}"
            return replace(config, pacing=Pacing(value))
        case _:
            return f"unknown setting; known settings: {', '.join(RUNTIME_SETTINGS)}"


def _int_in(value: object, low: int, high: int | None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if value < low or (high is not None and value > high):
        return None
    return value
