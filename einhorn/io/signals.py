"""The master's signal plumbing: handlers that only wake the loop, and the exec window.

STYLE pitfalls 1 and 2: every handled signal gets a no-op Python handler, and
the wakeup fd (a non-blocking socketpair) carries the signal numbers to the
loop, which turns them into `SignalReceived` events. SIGCHLD only wakes the
loop (it reaps after every wake-up).
"""

from __future__ import annotations

import signal
import socket

from einhorn.core.signals import MASTER_SIGNALS, REAP_SIGNAL


def number(name: str) -> signal.Signals:
    """The signal of a core signal name ("USR2"); KeyError for a name this platform lacks."""
    return signal.Signals[f"SIG{name}"]


HANDLED_SIGNALS = tuple(number(name) for name in MASTER_SIGNALS)
"""The master's signals (the core's `MASTER_SIGNALS`): each gets a handler that only wakes the loop."""

REAPING = number(REAP_SIGNAL)
"""SIGCHLD: wakes the loop, which reaps; never an event."""

BLOCKED_ACROSS_EXEC = frozenset(HANDLED_SIGNALS) - {REAPING}
"""Blocked and ignored from just before a re-exec until the new image has its
handlers, so that a SIGHUP/SIGTERM sent meanwhile does not kill the master with
the default action. Both survive exec: while the mask holds (einhorn exec'd
directly, or a bash wrapper) the signal stays pending and is acted upon late; a
wrapper that clears the mask (dash) inherits the ignored disposition, and a
signal sent while it runs is lost. (SIGCHLD's default keeps zombies.)"""

PYTHON_IGNORED = (signal.SIGPIPE, signal.SIGXFSZ)
"""Python ignores these at start-up (a write then raises instead of killing): a Python worker expects that."""

RESET_IN_CHILDREN = (*HANDLED_SIGNALS, *PYTHON_IGNORED)
"""What a worker gets back at their default disposition: every signal the master
handles, and the two Python ignores (STYLE pitfall 7)."""

STILL_STOP_WHEN_WINDING_DOWN = frozenset(number(name) for name in ("INT", "TERM", "QUIT"))
"""A master that could not restore its state after a re-exec winds down (`wind_down`): the
conventional stop signals (^C, TERM, QUIT) get their default action back, so an operator may
still stop it; the other master signals (an upgrade, USR2's graceful stop: under way already)
are ignored."""


def _wake_only(signum: int, frame: object) -> None:
    """Signal handlers only wake the loop (the wakeup fd carries the signal number)."""


def install(wakeup: socket.socket) -> None:
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, _wake_only)
    signal.set_wakeup_fd(wakeup.fileno(), warn_on_full_buffer=False)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED_ACROSS_EXEC)


def drain(wake_reader: socket.socket) -> list[str]:
    """Names (without SIG) of the signals received since the last drain, in order; SIGCHLD left out."""
    names: list[str] = []
    while True:
        try:
            data = wake_reader.recv(4096)
        except (BlockingIOError, InterruptedError):
            break
        if not data:
            break
        for signum in data:
            if signum == REAPING:
                continue
            try:
                names.append(signal.Signals(signum).name[3:])
            except ValueError:
                continue
    return names


def block_for_exec() -> None:
    """From here until the new image's `install`, handled signals stay pending (or are lost to a dash wrapper)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_ACROSS_EXEC)
    for signum in BLOCKED_ACROSS_EXEC:
        signal.signal(signum, signal.SIG_IGN)  # a blocked signal stays pending all the same
    signal.set_wakeup_fd(-1)


def unblock_after_failed_exec(wakeup: socket.socket) -> None:
    install(wakeup)


def wind_down() -> None:
    """Dispositions for a re-exec'd master that cannot restore its state and stops its children."""
    for signum in BLOCKED_ACROSS_EXEC - STILL_STOP_WHEN_WINDING_DOWN:
        signal.signal(signum, signal.SIG_IGN)
    for signum in STILL_STOP_WHEN_WINDING_DOWN:
        signal.signal(signum, signal.SIG_DFL)  # ignored across the exec (`block_for_exec`)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED_ACROSS_EXEC)  # blocked by the old image
