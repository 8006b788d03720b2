"""A worker that cannot be exec'd is logged with its reason, counted as a death before ACK, and retried with backoff."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.integration.harness import Harness, Master
from tests.integration.waiting import wait_until


def uninterpretable_program(path: Path) -> str:
    """An executable file (start-up accepts it) whose interpreter does not exist: exec fails with ENOENT."""
    path.write_text("#!/nonexistent/interpreter\n")
    path.chmod(0o755)
    return str(path)


def assert_spin_ups_get_further_apart(times: list[float]) -> None:
    gaps = [later - earlier for earlier, later in zip(times[2:], times[3:], strict=False)]
    assert gaps == sorted(gaps) or gaps[-1] > gaps[0], f"spin-ups should get further apart: {gaps}"


def assert_still_respawning_then_stops_cleanly(master: Master) -> None:
    assert master.state()["respawn"] is True, "the master keeps running"
    master.send_signal(signal.SIGTERM)
    assert master.wait_exit() == 0


@pytest.mark.timeout(60)
def test_exec_failure_in_posix_spawn_is_logged_and_retried_with_backoff(harness: Harness, tmp_path: Path) -> None:
    """A plain worker is started by posix_spawn, which reports a failed exec at once."""
    master = harness.start("-n", "2", "-s", "0.2", program=[uninterpretable_program(tmp_path / "broken")])
    failures = master.wait_log(r"Could not spawn worker: No such file or directory \(errno 2\); will retry in (\S+)s", count=6)
    retries = [float(m.group(1)) for m in failures]
    assert retries == sorted(retries) and retries[-1] > retries[0], f"retries should get further apart: {retries}"
    assert_spin_ups_get_further_apart([t for t, _ in master.timed_lines(r"Could not spawn worker")])
    assert "===> Launched" not in master.log() and master.children() == []
    assert_still_respawning_then_stops_cleanly(master)


@pytest.mark.timeout(60)
def test_exec_failure_after_fork_is_logged_and_retried_with_backoff(harness: Harness, tmp_path: Path) -> None:
    """With -k the child is forked (it sets its parent-death signal before exec) and reports the failure."""
    master = harness.start("-k", "-n", "2", "-s", "0.2", program=[uninterpretable_program(tmp_path / "broken")])
    failures = master.wait_log(r"Could not start worker (\d+): No such file or directory \(errno 2\)", count=5, timeout=30)
    assert len({m.group(1) for m in failures}) == len(failures), "each failure is a new worker"
    master.wait_log(r"Exited worker \d+ before it was ACKed \(exit status 127\)", count=5)
    assert_spin_ups_get_further_apart([t for t, _ in master.timed_lines(r"===> Launched")])
    assert_still_respawning_then_stops_cleanly(master)


@pytest.mark.timeout(60)
def test_program_that_appears_later_recovers(harness: Harness, tmp_path: Path) -> None:
    program = tmp_path / "later"
    master = harness.start("-n", "1", "-s", "0.2", "-m", "0.2", program=[uninterpretable_program(program)])
    master.wait_log(r"Could not (start|spawn) worker", count=2, timeout=30)
    program.write_text("#!/bin/sh\nexec sleep 30\n")
    pids = master.wait_workers(1, timeout=40)
    assert master.state()["consecutive_deaths_before_ack"] == 0
    wait_until(lambda: all(os.path.exists(f"/proc/{pid}") for pid in pids), 5, "the recovered worker")
