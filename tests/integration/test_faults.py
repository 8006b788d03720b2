"""Faults a real master must survive (issue 16): absurd durations, a pid file on a full disk, a
listener that a worker shut down, an upgrade at the descriptor limit or at the process limit
(`ulimit -u`, which binds only an unprivileged master: those tests run it as `nobody`).

Each test names the finding it guards. Masters and workers are cleaned up by the harness, by pid.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Harness, Master
from tests.integration.other_user import OtherUser, as_nobody, process_limit
from tests.integration.procfs import alive, descriptor_limit, fds_of
from tests.integration.upgrade_helpers import write_wrapper
from tests.integration.waiting import wait_until
from tests.integration.wire import Connection, frame
from tests.integration.workers import recorder, wait_ready

FAST = ("-m", "0.1", "-s", "0.1")
WEEK = "604800"
"""The longest duration einhorn accepts, in seconds."""


# --- finding 1: durations --------------------------------------------------------------------------


@pytest.mark.parametrize("options", [("-m", "2147484"), ("-s", "604801"), ("-t", "3000000"), ("-t", "9" * 400)])
def test_a_duration_longer_than_a_week_is_refused_at_start(harness: Harness, options: tuple[str, str]) -> None:
    """`-m 2147484` started, then crashed at its first wait (select: timeout is too large), orphaning its workers."""
    result = harness.run("-n", "2", *options, "--", "sleep", "30")
    assert result.returncode != 0
    assert "at most 604800 (one week)" in result.stderr, result.stderr
    assert harness.leftovers() == []


def test_a_week_long_signal_timeout_and_config_past_a_week(harness: Harness, tmp_path: Path) -> None:
    """`-t 3000000` then `dec`, or `config {signal_timeout: 3000000}` then `dec`, crashed the master."""
    master = harness.start("-n", "3", *FAST, "-s", WEEK, "-t", WEEK, program=recorder(tmp_path, stay="USR2"), workers=3)
    wait_ready(tmp_path, master.children())
    assert "Successfully merged" not in master.message("config", "{signal_timeout: 3000000}")
    assert master.message("config", "{signal_timeout: 3000000}").startswith(
        "Invalid value for signal_timeout: 3000000 (must be an integer number of seconds >= 1 and at most 604800"
    )
    # A 400-digit integer is refused by the request parser before any conversion (issue 16, finding 6).
    huge = master.message("config", "{signal_timeout: " + "9" * 400 + "}")
    assert huge.startswith("Could not parse argument. Must be a YAML-encoded hash") and "more than 100 digits" in huge, huge
    assert master.state()["signal_timeout"] == int(WEEK)
    assert "Successfully merged" in master.message("config", "{seconds: 604800}")
    master.message("dec")  # the USR2 it sends is survived: the SIGKILL escalation is due in a week
    wait_until(lambda: sum(1 for w in master.workers().values() if w["signaled"]) == 1, what="one worker signaled")
    assert master.message("ehlo").startswith("Welcome")
    assert master.proc.poll() is None and len(master.children()) == 3
    assert "Master crashed" not in master.log() and "Bug while handling" not in master.log()


# --- finding 7: the pid file, a listener shut down by a worker --------------------------------------


def test_a_pid_file_that_cannot_be_written_is_named_in_the_error(harness: Harness) -> None:
    """A full disk (here /dev/full) fails the pid file's write; the error said only 'No space left on device'."""
    full = harness.directory / "full.pid"
    full.symlink_to("/dev/full")
    sock = harness.directory / "s"
    result = harness.run("-d", str(sock), "-e", str(full), "-f", str(harness.directory / "l"), "--", "sleep", "30")
    assert result.returncode == 1
    assert f"Could not write the pid file {full}: No space left on device (errno 28)" in result.stderr, result.stderr
    assert not sock.exists() and full.is_symlink() and Path("/dev/full").exists()
    assert harness.leftovers() == []


SHUTS_LISTENER_DOWN_ON_HUP = """
import os, signal, socket
listener = socket.socket(fileno=int(os.environ["EINHORN_FD_0"]))
signal.signal(signal.SIGHUP, lambda *_: listener.shutdown(socket.SHUT_RDWR))
open(os.path.join(os.environ["TMPDIR"], f"{os.getpid()}.ready"), "w").close()
while True:
    signal.pause()
"""
"""A worker with a bug: on SIGHUP it shuts down its copy of the shared listener."""


def test_a_listener_a_worker_shut_down_is_warned_about_and_shown_in_state(harness: Harness) -> None:
    program = [sys.executable, "-c", SHUTS_LISTENER_DOWN_ON_HUP]
    master = harness.start("-n", "2", *FAST, "-b", "127.0.0.1:0", program=program, workers=2)
    port = master.bound_port()
    pids = master.children()
    wait_ready(harness.directory, pids)
    assert master.state()["listeners"] == [{"family": "AF_INET", "address": f"127.0.0.1:{port}", "name": None, "accepting": True}]
    socket.create_connection(("127.0.0.1", port), timeout=5).close()

    os.kill(pids[0], signal.SIGHUP)
    warning = rf"WARNING: Listener 0 \(127\.0\.0\.1:{port}\) stopped accepting connections"
    master.wait_log(warning)
    assert master.state()["listeners"] == [{"family": "AF_INET", "address": f"127.0.0.1:{port}", "name": None, "accepting": False}]
    assert ":accepting: false" in master.message("state")  # the Ruby clients' YAML shows it too
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert master.children() == pids and all(alive(pid) for pid in pids)  # every worker runs; none can serve
    assert len(master.timed_lines(warning)) == 1


# --- finding 2: an upgrade at the descriptor limit ----------------------------------------------------


def fill_descriptor_table(master: Master, free: int) -> list[Connection]:
    """Hold `free` command connections, so that the master has no descriptor left; they are returned open."""
    held = [master.connect() for _ in range(free)]
    limit = resource.prlimit(master.pid, resource.RLIMIT_NOFILE)[0]
    wait_until(lambda: len(fds_of(master.pid)) == limit, what=f"the master at its limit of {limit} descriptors")
    return held


@pytest.mark.timeout(90)
def test_an_upgrade_at_the_descriptor_limit_is_aborted_and_the_master_keeps_its_workers(harness: Harness) -> None:
    """Issue 16, finding 2: at RLIMIT_NOFILE with client connections held, SIGHUP crashed the master in the re-exec."""
    master = harness.start("-n", "3", *FAST, "-b", "127.0.0.1:0", workers=3)
    pids = master.wait_workers(3)
    free = 6
    held: list[Connection] = []
    try:
        with descriptor_limit(master.pid, len(fds_of(master.pid)) + free):
            held = fill_descriptor_table(master, free)
            held[0].send(frame({"command": "upgrade", "id": "at-the-limit"}))
            replies = held[0].read_until_last()
            final = str(replies[-1]["message"])
            assert re.match(r"ERROR: Can not initiate einhorn master upgrade safely, aborting: .*Too many open files", final), replies
            master.send_signal(signal.SIGHUP)
            master.wait_log(r"aborting: .*Too many open files", count=2)
            # No new connection can be accepted now: ask on the ones held.
            held[1].send(frame({"command": "ehlo"}))
            assert str(held[1].read_reply()["message"]).startswith("Welcome")
            held[1].send(frame({"command": "state", "args": ["--json"]}))
            state = json.loads(str(held[1].read_reply()["message"]))["state"]
            assert sorted(int(pid) for pid in state["children"]) == pids and state["version"] == 0
            assert master.children() == pids
        # The limit is raised again: the next upgrade goes through.
        held[2].send(frame({"command": "upgrade", "id": "after"}))
        assert held[2].read_until_last()[-1]["message"] == "Upgrade done"
        upgraded = master.wait_workers(3)
        assert not set(upgraded) & set(pids) and master.proc.poll() is None
    finally:
        for conn in held:
            conn.close()
    assert "Master crashed" not in master.log()


def test_a_g_worker_spawned_at_the_descriptor_limit_fails_into_the_backoff_and_comes_once_raised(harness: Harness) -> None:
    """With -g every spawn needs a socketpair: at the limit it fails, is retried with backoff, and succeeds later."""
    master = harness.start("-n", "2", *FAST, "-g", workers=2)
    pids = master.wait_workers(2)
    held: list[Connection] = []
    try:
        with descriptor_limit(master.pid, len(fds_of(master.pid)) + 2):
            held = fill_descriptor_table(master, 2)
            held[0].send(frame({"command": "inc"}))
            assert "3" in str(held[0].read_reply()["message"])
            master.wait_log(r"Could not spawn worker: Too many open files \(errno 24\); will retry")
            assert master.children() == pids and master.proc.poll() is None
        assert sorted(set(master.wait_workers(3)) - set(pids)) != []
    finally:
        for conn in held:
            conn.close()


# --- finding 2, the forks of the re-exec path: `ulimit -u` reached (an unprivileged master) -----------


@pytest.fixture
def nobody_user() -> Iterator[OtherUser]:
    with as_nobody() as user:
        yield user


def start_as(harness: Harness, user: OtherUser, *options: str, workers: int) -> Master:
    return harness.start(*options, einhorn=user.einhorn(), env=user.environment({}), shared=True, workers=workers)


@pytest.mark.timeout(90)
def test_at_the_process_limit_upgrades_and_respawns_fail_and_recover_once_raised(harness: Harness, nobody_user: OtherUser) -> None:
    """The upgrade's fork fails (the state passer's, or the check's if einhorn changed): upgrade aborted, the
    requester told; a respawn backs off; all recover."""
    master = start_as(harness, nobody_user, "-n", "2", *FAST, workers=2)
    pids = master.wait_workers(2)
    process_limit(nobody_user, master.pid, 1)
    final = master.command("upgrade", timeout=30)[-1]["message"]
    assert re.match(r"ERROR: Can not initiate einhorn master upgrade safely, aborting: .*could not fork the (state passer|upgrade check)", str(final)), final
    os.kill(pids[0], signal.SIGKILL)
    master.wait_log(r"Could not spawn worker: .*; will retry")
    assert master.message("ehlo").startswith("Welcome") and master.children() == pids[1:]
    process_limit(nobody_user, master.pid, -1)
    assert master.command("upgrade", timeout=30)[-1]["message"] == "Upgrade done"
    assert not set(master.wait_workers(2, timeout=20)) & set(pids)
    assert "Master crashed" not in master.log()


HOLD_THE_CHECK = """
if [ -e "$here/hold" ]; then
    rm -f "$here/hold"
    touch "$here/holding"
    n=0
    while [ ! -e "$here/go" ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n + 1)); done
    rm -f "$here/go"
fi
"""
"""`on_check`: if `hold` exists, say `holding` and wait for `go` (at most 20 s) before the check runs."""


@pytest.mark.timeout(90)
def test_when_the_state_passer_cannot_be_forked_the_upgrade_is_aborted(harness: Harness, nobody_user: OtherUser) -> None:
    """The check passed, then the state passer's fork fails: upgrade aborted, master and workers unchanged."""
    wrapper_dir = harness.directory / "wrapper"
    wrapper_dir.mkdir(mode=0o777)
    wrapper_dir.chmod(0o777)
    wrapper = write_wrapper(wrapper_dir, "reexec.sh", on_check=HOLD_THE_CHECK, command=[nobody_user.python, "-m", "einhorn"])
    master = start_as(harness, nobody_user, "-n", "2", *FAST, f"--reexec-as={wrapper}", workers=2)
    pids = master.wait_workers(2)
    (wrapper_dir / "hold").touch()
    with master.connect(timeout=30) as conn:
        conn.send(frame({"command": "upgrade", "id": "u"}))
        wait_until((wrapper_dir / "holding").exists, what="the upgrade check to start")
        process_limit(nobody_user, master.pid, 1)  # the check is running already: the next fork is the state passer's
        (wrapper_dir / "go").touch()
        final = conn.read_until_last()[-1]["message"]
    assert re.match(r"ERROR: Can not initiate einhorn master upgrade safely, aborting: could not fork the state passer", str(final)), final
    assert master.wait_workers(2) == pids and master.state()["version"] == 0
    process_limit(nobody_user, master.pid, -1)
    assert master.command("upgrade", timeout=30)[-1]["message"] == "Upgrade done"
    assert not set(master.wait_workers(2, timeout=20)) & set(pids)
