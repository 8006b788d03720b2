"""einhorn.core.signals: the names the core speaks, and which may be the graceful signal."""

from __future__ import annotations

import pytest

from einhorn.core.signals import graceful_signal_problem, normalize_signal


@pytest.mark.parametrize("name", ["USR2", "sigterm", " INT ", "QUIT", "HUP", "USR1"])
def test_signals_that_can_ask_a_worker_to_finish(name: str) -> None:
    assert graceful_signal_problem(name) is None and normalize_signal(name) is not None


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("KILL", "SIGKILL cannot ask a worker to finish and exit"),
        ("SIGSTOP", "SIGSTOP cannot ask a worker to finish and exit"),
        ("chld", "SIGCHLD cannot ask a worker to finish and exit"),
        ("WINCH", "SIGWINCH cannot ask a worker to finish and exit"),
        ("TERN", "not a signal name"),
        ("", "not a signal name"),
    ],
)
def test_signals_that_cannot(name: str, problem: str) -> None:
    assert graceful_signal_problem(name) == problem
