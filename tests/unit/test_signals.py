"""The signal table (einhorn.core.signals) and the shell's sets derived from it (einhorn.io.signals)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import pytest

from einhorn.core.signals import MASTER_SIGNALS, OPERATOR_SIGNALS, REAP_SIGNAL, bare_signal, normalize_signal
from einhorn.io import signals

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the operator's names are Linux's")


def test_every_master_signal_is_a_signal_of_this_platform() -> None:
    for name in MASTER_SIGNALS:
        assert isinstance(signals.number(name), signal.Signals), name
    assert REAP_SIGNAL in MASTER_SIGNALS


@linux
def test_every_signal_an_operator_may_send_is_a_signal_of_this_platform() -> None:
    for name in OPERATOR_SIGNALS:
        assert isinstance(signals.number(name), signal.Signals), name


def test_the_shell_handles_exactly_the_master_signals() -> None:
    assert [s.name for s in signals.HANDLED_SIGNALS] == [f"SIG{name}" for name in MASTER_SIGNALS]
    assert signals.BLOCKED_ACROSS_EXEC == set(signals.HANDLED_SIGNALS) - {signal.SIGCHLD}
    assert set(signals.RESET_IN_CHILDREN) == {*signals.HANDLED_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ}
    assert signals.STILL_STOP_WHEN_WINDING_DOWN < signals.BLOCKED_ACROSS_EXEC


def test_signal_names_are_normalized_or_refused() -> None:
    assert [bare_signal(n) for n in ("sigusr2", "SIGUSR2", " usr2 ", "Hup")] == ["USR2", "USR2", "USR2", "HUP"]
    assert normalize_signal("sigterm") == "TERM"
    assert normalize_signal("SIGFOO") is None and normalize_signal("") is None


def test_drain_gives_the_names_in_order_without_sigchld() -> None:
    reader, writer = socket.socketpair()
    with reader, writer:
        reader.setblocking(False)
        writer.send(bytes([signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR2, signal.SIGHUP]))
        assert signals.drain(reader) == ["HUP", "USR2", "HUP"]
        assert signals.drain(reader) == []


WIND_DOWN = """
import json, signal
from einhorn.io import signals
signal.pthread_sigmask(signal.SIG_BLOCK, signals.BLOCKED_ACROSS_EXEC)  # as the old image left it
for signum in signals.BLOCKED_ACROSS_EXEC:
    signal.signal(signum, signal.SIG_IGN)
signals.wind_down()
print(json.dumps({
    "ignored": sorted(s.name for s in signals.HANDLED_SIGNALS if signal.getsignal(s) == signal.SIG_IGN),
    "default": sorted(s.name for s in signals.HANDLED_SIGNALS if signal.getsignal(s) == signal.SIG_DFL),
    "blocked": sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
}))
"""


def test_a_master_winding_down_still_stops_on_int_term_and_quit_only() -> None:
    result = subprocess.run([sys.executable, "-c", WIND_DOWN], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(result.stdout) == {
        "ignored": ["SIGALRM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH"],
        "default": ["SIGCHLD", "SIGINT", "SIGQUIT", "SIGTERM"],
        "blocked": [],
    }
