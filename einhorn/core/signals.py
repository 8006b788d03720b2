"""The signal names the core speaks (without `SIG`): the one table; the shell maps them to numbers.

`einhorn/io/signals.py` derives every set it installs, blocks or resets from
`MASTER_SIGNALS`, and a unit test checks that each name here is a signal of
the platform the tests run on.
"""

from __future__ import annotations

from collections.abc import Mapping

MASTER_SIGNALS: Mapping[str, str] = {
    "INT": "graceful shutdown: the graceful signal (USR2) to every child, stop respawning, exit once all are gone",
    "TERM": "shutdown: TERM to every child, stop respawning, exit once all are gone",
    "QUIT": "QUIT to every child and exit 1 at once, without waiting",
    "HUP": "smooth upgrade: re-exec the master, then replace the workers one for one",
    "ALRM": "smooth upgrade, as HUP (deprecated: logged as such)",
    "USR1": "ignored, logged at DEBUG (handled: its default action would kill the master)",
    "USR2": "graceful shutdown, as INT",
    "CHLD": "only wakes the loop to reap (never a `SignalReceived`)",
    "WINCH": "ignored, logged at DEBUG",
}
"""The signals the master handles, and what each one means (`step._on_signal` acts on them)."""

REAP_SIGNAL = "CHLD"
"""The master signal that is no event: the loop reaps after every wake-up anyway."""

OPERATOR_SIGNALS = frozenset(
    "HUP INT QUIT ILL TRAP ABRT BUS FPE KILL USR1 SEGV USR2 PIPE ALRM TERM STKFLT CHLD CONT STOP "
    "TSTP TTIN TTOU URG XCPU XFSZ VTALRM PROF WINCH IO POLL PWR SYS".split()
)
"""The names an operator may have sent to the workers (`signal`, `die`): Linux's. On a platform
without one of them, sending it fails and is logged."""


def bare_signal(name: str) -> str:
    """`sigusr2`, `SIGUSR2` or ` usr2 ` as `USR2`."""
    upper = name.strip().upper()
    return upper[3:] if upper.startswith("SIG") else upper


def normalize_signal(name: str) -> str | None:
    """The bare name of a signal an operator may send, or None."""
    bare = bare_signal(name)
    return bare if bare in OPERATOR_SIGNALS else None


NOT_GRACEFUL = frozenset({"KILL", "STOP", "CHLD", "CONT", "TSTP", "TTIN", "TTOU", "URG", "WINCH"})
"""Signals that cannot mean "finish and exit": uncatchable, or ignored or stopping by default."""


def graceful_signal_problem(name: str) -> str | None:
    """Why `name` cannot be the graceful signal (`--graceful-signal`), or None if it can."""
    bare = normalize_signal(name)
    if bare is None:
        return "not a signal name"
    if bare in NOT_GRACEFUL:
        return f"SIG{bare} cannot ask a worker to finish and exit"
    return None
