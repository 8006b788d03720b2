"""The one settings record, `Settings` (built by `args.parse`), and the view each part of the master gets of it.

    core_config    the core's `Config`: the policy `step` reads, and the facts it only displays
    worker_launch  the shell's `WorkerLaunch`: how to start one worker
    shell_options  the shell's `ShellOptions`: how to serve, re-exec and clean up

Each view is derived here, by one function, and nowhere else.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence

from einhorn import __version__
from einhorn.core.config import Config, Display, Pacing
from einhorn.core.record import dataclass
from einhorn.io.loop import ShellOptions
from einhorn.io.notify import notify_socket_path
from einhorn.io.sockets import BindSpec
from einhorn.io.spawn import Spawned, WorkerLaunch, pdeathsig_available

Spawner = Callable[[WorkerLaunch, int, int | None], Spawned]
"""Starts worker `index` (`spawn_worker`, or a `-p` preloader's fork), with the command socket fd of `-g`."""


@dataclass(frozen=True, slots=True)
class Nice:
    """`--nice MASTER[:WORKER][:RENICE_CMD]`; a level of None is left as it is."""

    master: int | None = None
    worker: int | None = None
    renice_cmd: str = "/usr/bin/renice"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the command line says, validated."""

    # The core's policy; number, seconds, pacing, max_unacked, max_upgrade_additional and signal_timeout
    # may then change at run time (and travel across a re-exec in the state document).
    number: int
    ack_timer: float | None
    """Seconds until a worker counts as ACKed (`-m FLOAT`), or None for `-m manual`."""
    seconds: float
    pacing: Pacing
    """INTERVAL when `-s` was given: the original's one spin-up per interval; else ACK (EXTENSIONS §4)."""
    max_unacked: int
    max_upgrade_additional: int | None
    signal_timeout: int | None
    graceful_signal: str
    """`--graceful-signal`, a bare name ("USR2")."""
    boot_timeout: float | None
    """`--boot-timeout` seconds (health rules, einhorn/core/health.py)."""
    ping_timeout: float | None
    max_worker_rss_mb: int | None

    # The workers.
    program: tuple[str, ...]
    program_path: str
    """`program[0]` found in PATH, absolute."""
    binds: tuple[BindSpec, ...]
    backlog: int
    command_socket_as_fd: bool
    kill_children_on_exit: bool
    preload: str | None
    nice: Nice

    # The master.
    command_name: str | None
    socket_path: str
    pidfile: str
    lockfile: str
    verbosity: int

    # Re-exec.
    flags: tuple[str, ...]
    """The options as given, but for the internal ones: what the re-exec'd master is started with."""
    reexec_as: tuple[str, ...] | None
    drop_env: tuple[str, ...]
    with_state_fd: int | None
    """Set in a re-exec'd master: where the old master's state document is."""
    upgrade_check: bool

    # systemd and containers.
    listen_fds: bool = False
    """`--listen-fds`: workers get systemd's convention (listeners at 3, 4, ...; LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES)."""
    ack_notify: bool = False
    """`-m notify`: workers ACK with sd_notify's READY=1 on the master's notify socket (`notify_path`)."""
    subreaper: bool = False
    """`--subreaper`: PR_SET_CHILD_SUBREAPER at start."""
    reaper: bool = False
    """`--subreaper`, or einhorn is PID 1: orphans are reaped quietly and SIGTERM is graceful (the core's `reaper`)."""
    supervised: bool = False
    """`NOTIFY_SOCKET` is in the master's environment: it notifies its supervisor (systemd)."""
    watchdog_interval: float | None = None
    """`WATCHDOG_USEC` (for this pid, if `WATCHDOG_PID` says), in seconds."""

    # Observing.
    metrics: BindSpec | None = None
    """`--metrics ADDR`: where to serve /metrics, /healthz and /readyz."""
    log_format: str = "text"
    """`--log-format`: "text" (the original's lines) or "json" (one object per line)."""

    @property
    def notify_path(self) -> str | None:
        return notify_socket_path(self.socket_path) if self.ack_notify else None

    @property
    def unix_listener_paths(self) -> tuple[str, ...]:
        return tuple(spec.path for spec in self.binds if spec.path is not None)

    @property
    def owned_paths(self) -> tuple[str, ...]:
        """The files the master creates (its pidfile, its command socket, its UNIX listeners): removed
        when it exits, and only then (a re-exec keeps them)."""
        notify = () if self.notify_path is None else (self.notify_path,)
        metrics = () if self.metrics is None or self.metrics.path is None else (self.metrics.path,)
        return self.pidfile, self.socket_path, *notify, *self.unix_listener_paths, *metrics


def core_config(settings: Settings, *, master_pid: int, preloaded: bool) -> Config:
    """The core's settings; `display.bound_ports` is filled in once the listeners are there."""
    return Config(
        number=settings.number,
        ack_timer=settings.ack_timer,
        notify_acks=settings.ack_notify,
        reaper=settings.reaper,
        supervised=settings.supervised,
        watchdog_interval=settings.watchdog_interval,
        seconds=settings.seconds,
        pacing=settings.pacing,
        max_unacked=settings.max_unacked,
        max_upgrade_additional=settings.max_upgrade_additional,
        signal_timeout=settings.signal_timeout,
        graceful_signal=settings.graceful_signal,
        boot_timeout=settings.boot_timeout,
        ping_timeout=settings.ping_timeout,
        max_worker_rss_mb=settings.max_worker_rss_mb,
        drain=any(spec.drain for spec in settings.binds),
        einhorn_version=__version__,
        display=Display(
            master_pid=master_pid,
            command_name=settings.command_name,
            program=settings.program,
            socket_path=settings.socket_path,
            pidfile=settings.pidfile,
            lockfile=settings.lockfile,
            binds=tuple(spec.text for spec in settings.binds),
            backlog=settings.backlog,
            command_socket_as_fd=settings.command_socket_as_fd,
            kill_children_on_exit=settings.kill_children_on_exit,
            preloaded=preloaded,
        ),
    )


def worker_launch(
    settings: Settings,
    environ: Mapping[str, str],
    *,
    master_pid: int,
    listeners: Sequence[socket.socket],
    prepare_child: Callable[[], None] | None,
    listener_names: Sequence[str] = (),
) -> WorkerLaunch:
    """How to start a worker: each listener with its family as the socket itself says (after a re-exec too)."""
    return WorkerLaunch(
        path=settings.program_path,
        argv=settings.program,
        environ=environ,
        listener_fds=tuple(sock.fileno() for sock in listeners),
        listener_families=tuple(sock.family.name for sock in listeners),
        socket_path=settings.socket_path,
        master_pid=master_pid,
        pdeathsig=settings.kill_children_on_exit and pdeathsig_available(),
        graceful_signal=settings.graceful_signal,
        prepare_child=prepare_child,
        listen_fds=settings.listen_fds,
        listener_names=tuple(listener_names) or ("",) * len(listeners),
        notify_socket=settings.notify_path,
    )


def shell_options(settings: Settings, environ: Mapping[str, str], launch: WorkerLaunch, spawn: Spawner) -> ShellOptions:
    dropped = set(settings.drop_env)
    return ShellOptions(
        launch=launch,
        command_socket_as_fd=settings.command_socket_as_fd,
        owned_paths=settings.owned_paths,
        reexec_command=(*(settings.reexec_as or self_command()), *settings.flags),
        reexec_environ={k: v for k, v in environ.items() if k not in dropped},
        reexec_as=settings.reexec_as is not None,
        dropped_from_reexec=tuple(sorted(k for k in environ if k in dropped)),
        kill_children_on_exit=settings.kill_children_on_exit,
        spawn=spawn,
    )


def self_command() -> list[str]:
    """How to run this einhorn again: its console script if that is how it was started."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "einhorn" and os.access(argv0, os.X_OK):
        return [os.path.abspath(argv0)]
    return [sys.executable, "-m", "einhorn"]
