"""Seamless upgrades with real processes (issue 4, BEHAVIOR §5).

`upgrade`, `upgrade_fleet`, SIGHUP and `reload` re-exec the master: same pid,
same children, same sockets, same client connections. What happens when a step
of that fails is documented with each failure test below and in
spec/upgrades.md.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import pytest

from tests.integration.harness import EINHORN, Harness, Master
from tests.integration.procfs import alive, children_of, environ_of, fds_of, proc_stat
from tests.integration.upgrade_helpers import (
    HOLD,
    Load,
    bound_port,
    failures,
    fd_kinds,
    integer,
    listener_fd,
    unix_listener_inode,
    upgrade,
    wait_for_file,
    worker_records,
    write_wrapper,
)
from tests.integration.waiting import wait_until
from tests.integration.wire import Connection, frame
from tests.integration.workers import TIME_SERVER

Connect = Callable[[Master], Connection]

FAST = ("-m", "0.1", "-s", "0.1")
"""Timer ACK after 0.1 s, 0.1 s base spin-up interval."""

ACK_IF_INDEX_0 = """
import os, signal
from einhorn import worker
if os.environ["EINHORN_CHILD_INDEX"] == "0":
    worker.ack()
while True:
    signal.pause()
"""
"""A manual-ACK worker that ACKs only as index 0, so that a master has ACKed and un-ACKed workers at once."""

MODE_WORKER = """
import os, signal, sys, time
mode_file, time_server, lifetime = sys.argv[1:4]
with open(mode_file) as f:
    mode = f.read().strip()
if mode == "good":
    os.execv(sys.executable, [sys.executable, time_server])
signal.signal(signal.SIGUSR2, lambda signum, frame: sys.exit(0))
open(os.path.join(os.path.dirname(mode_file), f"bad-{os.getpid()}"), "w").close()
time.sleep(float(lifetime))
sys.exit(1)
"""
"""A worker that reads MODE_FILE at start: `good`, it is example/time_server (ACKs, serves,
stops on USR2); `bad`, it creates bad-PID beside MODE_FILE and lives LIFETIME seconds without
ACKing (or until USR2), then exits 1."""

USR2_SENT = re.compile(r"Sending USR2 to \[([\d, ]+)\]")

BAD_LIFETIME = 6.0
"""Long enough to be alive through the next upgrade's re-exec on a busy machine; the master
stops bad workers itself (USR2), so it does not lengthen the test."""

UNREADABLE_STATE = r"""
printf 'this is not a state document' > "$here/garbage"
eval "exec $state_fd<\"\$here/garbage\""
"""
"""`on_exec`: the new master finds garbage instead of the state on its --with-state-fd."""


@pytest.fixture
def upgrade_client() -> Iterator[Connect]:
    """Opens command connections (30 s read timeout) and closes them after the test, whatever happens."""
    opened: list[Connection] = []

    def connect(master: Master) -> Connection:
        opened.append(master.connect(timeout=30))
        return opened[-1]

    yield connect
    for conn in opened:
        conn.close()


def log_after(master: Master, marker: str) -> str:
    text = master.log()
    assert marker in text, f"{marker!r} not in the log:\n{text}"
    return text[text.index(marker) :]


def all_workers_modern(master: Master, count: int) -> list[int] | None:
    """The pids if the master runs exactly `count` workers, all of its current version, and nothing else."""
    state = master.state()
    version = integer(state, "version")
    records = worker_records(master)
    pids = sorted(records)
    if len(pids) == count and all(r[0] == version for r in records.values()) and master.children() == pids:
        return pids
    return None


def fionread(sock: socket.socket) -> int:
    value: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    return value


def quiescent_fds(master: Master, idle: Connection) -> dict[int, str]:
    """The master's fd table once every earlier connection close has been handled.

    An `ehlo` answered on `idle` proves it: a close that happened before the
    request was ready in the same wake-up, and every ready source is handled
    before the loop answers.
    """
    idle.send(frame({"command": "ehlo", "id": "quiet"}))
    assert "Welcome" in str(idle.read_reply()["message"])
    return fds_of(master.pid)


# --- what survives the exec ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_reload_keeps_pid_workers_acks_sockets_clients_buffers_and_settings(harness: Harness, upgrade_client: Connect) -> None:
    master = harness.start(
        "-n", "2", "-m", "manual", "-s", "0.1", "-b", "127.0.0.1:0",
        program=[sys.executable, "-c", ACK_IF_INDEX_0],
        workers=2, acked=False,
    )
    wait_until(lambda: sum(r[1] for r in worker_records(master).values()) == 1, what="index 0 to ACK")
    # Runtime changes that must outlive the exec.
    assert "Successfully merged" in master.message("config", "{seconds: 0.2, max_unacked: 5, signal_timeout: 7}")
    assert master.message("inc") == "Incrementing number of workers from 2 -> 3"
    assert "4" in master.message("set_workers", "4")
    master.message("louder")
    master.wait_workers(4, acked=False)
    before = worker_records(master)
    assert sorted(r[1] for r in before.values()) == [False, False, False, True]
    some_worker = min(before)
    fd = listener_fd(some_worker)
    server_inode = unix_listener_inode(master.socket_path)
    fds_before = fds_of(master.pid)
    assert fds_before[fd].startswith("socket:") and server_inode in fds_before.values()

    help_text = master.message("help")
    # A client whose half-sent request the master has already read (it answered the line before it).
    half = upgrade_client(master)
    half.send(frame({"command": "state", "args": ["--json"], "id": "a1"}) + b'{"command": "eh')
    assert half.read_reply()["request_id"] == "a1"
    # A client that does not read: the master holds replies it could not write yet.
    flood = upgrade_client(master)
    flood.send(b"".join(frame({"command": "help", "id": f"b{n}"}) for n in range(400)))
    wait_until(lambda: fionread(flood.sock) > 0, what="the master to answer the flood")
    queued_in_kernel = fionread(flood.sock)
    one_reply = len(b"---%0Amessage: ") + len(help_text)
    assert queued_in_kernel < 400 * one_reply, "everything fit in the socket: nothing is left in the master"

    messages = [str(r["message"]) for r in master.command("reload", timeout=30)]
    assert messages[0] == "Reloading, as commanded" and messages[-1] == "Reload done", messages

    assert master.proc.poll() is None and Path(master.pidfile).read_text() == str(master.pid)
    master.wait_log("About to re-exec einhorn master")
    assert worker_records(master) == before  # same pids, versions, ACKs, indexes, spin-up times
    assert master.children() == sorted(before)
    assert all(getattr(proc_stat(pid), "ppid", None) == master.pid for pid in before)
    state = master.state()
    config = state["config"]
    assert isinstance(config, dict)
    assert (config["number"], config["seconds"], config["max_unacked"]) == (4, 0.2, 5)
    assert state["signal_timeout"] == 7 and state["verbosity"] == 0 and state["version"] == 0
    # `louder` survived: the new image logs debug lines (e.g. reaping the state passer).
    wait_until(lambda: "DEBUG" in log_after(master, "About to re-exec"), what="debug lines from the new image")
    fds_after = fds_of(master.pid)
    assert fds_after[fd] == fds_before[fd], "the listener is not the same socket at the same fd"
    assert unix_listener_inode(master.socket_path) == server_inode and server_inode in fds_after.values()

    # The half-sent request completes across the exec.
    half.send(b'lo", "id": "a2"}\n')
    reply = half.read_reply()
    assert reply["request_id"] == "a2" and "Welcome" in str(reply["message"])
    # Every flood reply arrives, in order and intact.
    for n in range(400):
        reply = flood.read_reply()
        assert (reply["request_id"], reply["message"]) == (f"b{n}", help_text)
    half.close()
    flood.close()


@pytest.mark.timeout(60)
def test_einhornsh_upgrade_started_before_the_exec_hears_upgrade_done_after_it(harness: Harness) -> None:
    master = harness.start("-n", "2", *FAST, "-b", "127.0.0.1:0", workers=2)
    old = master.workers()
    fd = listener_fd(min(old))
    listener_before = fds_of(master.pid)[fd]
    server_inode = unix_listener_inode(master.socket_path)

    result = master.einhornsh("upgrade", timeout=30)

    lines = result.stdout.splitlines()
    assert result.returncode == 0, result
    assert lines[0] == "Upgrading smoothly, as commanded" and lines[-1] == "Upgrade done", lines
    assert "Reloading einhorn master (smooth_upgrade)..." in lines  # said by the old image
    assert "Starting smooth upgrade from version 0..." in lines  # said by the new one
    assert master.proc.poll() is None
    new = wait_until(lambda: all_workers_modern(master, 2), what="only version 1 workers")
    assert not set(new) & set(old) and integer(master.state(), "version") == 1
    assert fds_of(master.pid)[fd] == listener_before and unix_listener_inode(master.socket_path) == server_inode
    assert all(listener_fd(pid) == fd for pid in new)


@pytest.mark.timeout(60)
def test_a_worker_dying_between_exec_and_restore_is_accounted_for_and_ack_timers_keep_running(harness: Harness, upgrade_client: Connect) -> None:
    here = harness.directory
    wrapper = write_wrapper(here, "hold-exec", on_exec=HOLD)
    ack_after = 3.0
    master = harness.start("-n", "3", "-m", str(ack_after), "-s", "0.1", "--reexec-as", wrapper, workers=3, acked=False)
    workers = master.workers()
    assert not any(w["acked"] for w in workers.values())
    launched = {int(m.group(1)): t for t, m in master.timed_lines(r"===> Launched (\d+)")}
    victim = next(pid for pid, w in workers.items() if w["index"] == 1)
    survivors = sorted(set(workers) - {victim})

    (here / "hold").touch()
    reloading = upgrade_client(master)
    reloading.send(frame({"command": "reload", "id": "r"}))
    assert reloading.read_reply()["message"] == "Reloading, as commanded"
    wait_for_file(here / "holding")  # the master's pid is now the wrapper shell's
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not alive(victim), what="the victim to die")
    # Hold the exec long enough that a restarted ACK timer could not pass for a kept one.
    wait_until(lambda: time.monotonic() >= max(launched.values()) + 1.5, what="1.5 s after the launches")
    (here / "go").touch()
    replies = reloading.read_until_last()
    assert replies[-1]["message"] == "Reload done", replies
    reloading.close()

    master.wait_log(rf"===> Exited worker {victim} before it was ACKed")
    after = master.wait_workers(3, acked=True)
    assert victim not in after and set(survivors) <= set(after)
    replacement = (set(after) - set(survivors)).pop()
    assert master.workers()[replacement]["index"] == 1
    assert master.children() == after  # no ghost, no unknown child
    restored_at = master.timed_lines(r"Restored state")[0][0]
    acks = [t for t, _ in master.timed_lines(r"Up to \d+ / 3 timer ACKs")]
    # The survivors were ACKed ack_after seconds after their launch, not after the restore.
    first_two = sorted(acks)[:2]
    latest_launch = max(launched[pid] for pid in survivors)
    assert all(t < latest_launch + ack_after + 0.9 for t in first_two), (first_two, latest_launch, restored_at)
    assert restored_at + ack_after > latest_launch + ack_after + 0.9, "the hold was too short to tell"


# --- upgrades on top of upgrades ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_upgrade_requested_during_a_smooth_upgrade_starts_over_without_leaking_workers(harness: Harness, upgrade_client: Connect) -> None:
    master = harness.start("-n", "3", "-m", "0.1", "-s", "2", workers=3)  # 2 s between new workers: still upgrading after the re-exec
    original = set(master.workers())
    first = upgrade_client(master)
    first.send(frame({"command": "upgrade", "id": "first"}))

    def half_upgraded() -> bool:
        records = worker_records(master)
        return any(r[0] == 1 for r in records.values()) and any(r[0] == 0 for r in records.values())

    wait_until(half_upgraded, what="a smooth upgrade in progress")
    second = upgrade(master, "upgrade_fleet")
    assert any("bumping version and starting over" in m for m in second), second
    first_replies = first.read_until_last()
    assert first_replies[-1]["message"] == "Upgrade done"
    first.close()

    final = wait_until(lambda: all_workers_modern(master, 3), what="three version 2 workers and nothing else")
    assert integer(master.state(), "version") == 2
    assert not set(final) & original
    assert set(harness.leftovers()) - {master.pid} == set(final)  # no worker leaked anywhere


@pytest.mark.timeout(90)
def test_a_second_upgrade_during_a_failing_one_keeps_the_serving_workers(harness: Harness, upgrade_client: Connect) -> None:
    """Issue 10: the second upgrade stopped both ACKed workers (counting the first one's
    un-ACKed workers as old) and nothing served. It must stop the un-ACKed ones instead;
    the old workers serve until the workers of a good upgrade ACK."""
    mode = harness.directory / "mode"
    mode.write_text("good")
    master = harness.start(
        "-n", "2", "-m", "manual", "-s", "0.2", "--max-unacked", "2", "-b", "127.0.0.1:0",
        program=[sys.executable, "-c", MODE_WORKER, str(mode), TIME_SERVER, str(BAD_LIFETIME)],
        workers=2,
    )
    serving = sorted(master.workers())
    load = Load(bound_port(master), threads=1, limit_seconds=60.0, pause=0.05)
    load.start()

    def old_ones_untouched() -> None:
        workers = master.workers()
        assert all(alive(pid) and pid in workers and not workers[pid]["signaled"] for pid in serving), workers

    def bad_ones_of(version: int) -> list[int] | None:
        """Two un-ACKed workers of `version` that have read `bad` (not yet started is not enough)."""
        records = worker_records(master)
        pids = sorted(pid for pid, (v, acked, _, _) in records.items() if v == version and not acked)
        ready = len(pids) == 2 and all((harness.directory / f"bad-{pid}").exists() for pid in pids)
        return pids if ready else None

    def start_upgrade(request_id: str) -> Connection:
        conn = upgrade_client(master)
        conn.send(frame({"command": "upgrade", "id": request_id}))
        assert conn.read_reply()["message"] == "Upgrading smoothly, as commanded"
        return conn

    try:
        mode.write_text("bad")
        first = start_upgrade("first")
        failing = wait_until(lambda: bad_ones_of(1), what="two un-ACKed version 1 workers")
        old_ones_untouched()

        second = start_upgrade("second")
        master.wait_log(r"Currently upgrading \(0 / 2 ACKs; bumping version and starting over\)")
        master.wait_log(r"Smooth upgrade: killing off 2 old workers\.")
        stopped = master.wait_log(USR2_SENT.pattern)[0].group(1)
        assert sorted(int(pid) for pid in stopped.split(", ")) == failing
        wait_until(lambda: not any(alive(pid) for pid in failing), what="the failed version's workers to stop")
        wait_until(lambda: bad_ones_of(2), what="two un-ACKed version 2 workers")
        old_ones_untouched()
        serving_since = time.monotonic()
        wait_until(lambda: load.answered_since(serving_since, "1"), what="answers while only the old workers serve")

        mode.write_text("good")
        third = upgrade(master)
        assert third[0] == "Upgrading smoothly, as commanded", third
        for conn in (first, second):
            assert conn.read_until_last()[-1]["message"] == "Upgrade done"
        final = wait_until(lambda: all_workers_modern(master, 2), what="two version 3 workers and nothing else")
    finally:
        load.stop()
    assert integer(master.state(), "version") == 3 and not set(final) & set(serving)
    # The old workers went only as the good version's workers ACKed.
    lines = log_after(master, "Restored state: version 2").splitlines()
    first_ack = next(n for n, line in enumerate(lines) if "Up to 1 / 2 manual ACKs" in line)
    signaled = [(n, {int(p) for p in m.group(1).split(", ")}) for n, line in enumerate(lines) if (m := USR2_SENT.search(line))]
    assert first_ack < min(n for n, pids in signaled if pids & set(serving)), lines
    assert failures(load.snapshot()) == [], failures(load.snapshot())[:3]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shell", ["/bin/bash", "/bin/sh"])
def test_sighup_and_an_upgrade_sent_while_the_master_is_exec_ing(harness: Harness, upgrade_client: Connect, shell: str) -> None:
    """The re-exec blocks and ignores the master's signals until the new image has its handlers.

    A wrapper that keeps the signal mask (bash; or no wrapper at all) holds a SIGHUP sent
    meanwhile pending, and the new master acts on it: one more upgrade. One that clears the
    mask (dash, /bin/sh here) keeps the ignored disposition: the SIGHUP is lost. Either way
    the signal does not kill the master, and a request sent meanwhile waits in the command
    socket's backlog and starts the upgrade over at a newer version, or, when it is read
    while the SIGHUP's re-exec is still checking the new einhorn, joins that re-exec.
    """
    if not os.path.exists(shell):
        pytest.skip(f"no {shell}")
    here = harness.directory
    wrapper = write_wrapper(here, "hold-exec", on_exec=HOLD, shell=shell)
    master = harness.start("-n", "2", *FAST, "--reexec-as", wrapper, workers=2)
    (here / "hold").touch()
    first = upgrade_client(master)
    first.send(frame({"command": "upgrade", "id": "first"}))
    wait_for_file(here / "holding")  # the master's pid is now the wrapper shell's
    master.send_signal(signal.SIGHUP)
    second = upgrade_client(master)
    second.send(frame({"command": "upgrade_fleet", "id": "second"}))
    (here / "go").touch()

    for conn in (first, second):
        replies = conn.read_until_last()
        assert replies[-1]["message"] == "Upgrade done", replies
    assert master.proc.poll() is None
    final = wait_until(lambda: all_workers_modern(master, 2), what="only workers of the newest version")
    version = integer(master.state(), "version")
    master.wait_log(rf"Upgraded successfully to version {version} ")  # the log has caught up
    log = master.log()
    hup_acted_upon = shell == "/bin/bash"
    fleet_reexecs = log.count("Reloading einhorn master (fleet_upgrade)...")
    joined = log.count("A re-exec (smooth_upgrade) is already in progress")
    smooth_reexecs = log.count("Reloading einhorn master (smooth_upgrade)...")
    assert smooth_reexecs == (2 if hup_acted_upon else 1), log
    assert fleet_reexecs + joined == 1 and (hup_acted_upon or joined == 0), log
    assert version == smooth_reexecs + fleet_reexecs, log
    assert set(harness.leftovers()) - {master.pid} == set(final)


@pytest.mark.timeout(60)
def test_requests_read_together_with_an_upgrade_are_all_handled_before_the_exec(harness: Harness, upgrade_client: Connect) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    with upgrade_client(master) as conn:
        # One write: `inc` spawns a worker, whose pid must not be lost to the exec that `upgrade` orders.
        conn.send(frame({"command": "inc", "id": "i"}) + frame({"command": "upgrade", "id": "u"}))
        done = False
        replies: list[dict[str, object]] = []
        while not done:
            replies.append(conn.read_reply())
            done = replies[-1]["request_id"] == "u" and not replies[-1].get("wait")
    assert replies[0]["message"] == "Incrementing number of workers from 1 -> 2"
    assert replies[-1]["message"] == "Upgrade done", replies
    final = wait_until(lambda: all_workers_modern(master, 2), what="two version 1 workers")
    assert master.state()["pending_spawns"] == 0
    assert set(harness.leftovers()) - {master.pid} == set(final)


# --- failure paths ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("broken", ["check-exits-1", "missing"])
def test_an_executable_that_fails_its_upgrade_check_is_refused_and_the_client_told(harness: Harness, upgrade_client: Connect, broken: str) -> None:
    here = harness.directory
    reexec_as = str(here / "no-such-einhorn")
    if broken == "check-exits-1":
        reexec_as = write_wrapper(here, "broken", on_check="echo 'cannot even start' >&2; exit 1")
    master = harness.start("-n", "2", *FAST, "-b", "127.0.0.1:0", "--reexec-as", reexec_as, workers=2)
    before = worker_records(master)
    idle = upgrade_client(master)
    fds_before = quiescent_fds(master, idle)

    result = master.einhornsh("upgrade", timeout=30)

    status = 1 if broken == "check-exits-1" else 127
    lines = result.stdout.splitlines()
    assert result.returncode == 1 and lines[0] == "Upgrading smoothly, as commanded", result  # failed: exit 1
    assert lines[-1].startswith("ERROR: Can not initiate einhorn master upgrade safely, aborting:"), lines
    assert f"exited with status {status}" in lines[-1]
    master.wait_log(r"ERROR: Can not initiate einhorn master upgrade safely")
    assert "About to re-exec" not in master.log()
    # The master carries on as it was: same workers, nothing left over, nothing leaked.
    assert master.proc.poll() is None and worker_records(master) == before
    assert master.children() == sorted(before)
    assert integer(master.state(), "version") == 0 and master.state()["upgrading"] is False
    assert quiescent_fds(master, idle) == fds_before
    idle.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("module", ["yaml", "argparse", "heapq"])
def test_the_upgrade_check_fails_on_a_broken_dependency_the_master_imports_lazily(tmp_path: Path, module: str) -> None:
    """The master loads PyYAML on its first non-JSON request, argparse for a command line it does not
    read plainly, heapq to stop several old versions together; the upgrade check imports them at once."""
    broken = tmp_path / "shadow" / module
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('this install is broken')\n")
    env = {**os.environ, "PYTHONPATH": str(broken.parent)}
    result = subprocess.run([*EINHORN, "--upgrade-check", "--", "sleep", "1"], env=env, capture_output=True, text=True, timeout=20)
    assert result.returncode != 0 and "this install is broken" in result.stderr, result
    healthy = subprocess.run([*EINHORN, "--upgrade-check", "--", "sleep", "1"], capture_output=True, text=True, timeout=20)
    assert healthy.returncode == 0 and "Upgrade check passed" in healthy.stderr, healthy


# The wrapper's check stops the master, lets the test queue a signal or a request, passes
# (exits 0) and has the master continued only then: the check's exit and what was queued
# arrive in the same wake-up of the master, which must handle both before any exec.
FREEZE_THEN_PASS = """
kill -STOP $PPID
touch "$here/frozen"
( n=0; while [ ! -e "$here/thaw" ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n + 1)); done; kill -CONT $PPID ) &
exit 0
"""


@pytest.mark.timeout(60)
def test_a_signal_that_arrives_with_the_check_result_is_handled_and_stops_the_re_exec(harness: Harness, upgrade_client: Connect) -> None:
    here = harness.directory
    wrapper = write_wrapper(here, "freezing-check", on_check=FREEZE_THEN_PASS)
    master = harness.start("-n", "2", *FAST, "--reexec-as", wrapper, workers=2)
    workers = master.wait_workers(2)
    upgrading = upgrade_client(master)
    upgrading.send(frame({"command": "upgrade", "id": "u"}))
    wait_for_file(here / "frozen")
    master.send_signal(signal.SIGTERM)
    (here / "thaw").touch()
    replies = upgrading.read_until_last()
    assert str(replies[-1]["message"]).startswith("ERROR: Can not initiate einhorn master upgrade safely"), replies
    assert "shutting down" in str(replies[-1]["message"])
    assert master.wait_exit() == 0
    log = master.log()
    assert "Received SIGTERM" in log and "About to re-exec" not in log, log
    wait_until(lambda: not any(alive(pid) for pid in workers), what="the workers to exit")


@pytest.mark.timeout(60)
def test_a_request_that_arrives_with_the_check_result_is_answered(harness: Harness, upgrade_client: Connect) -> None:
    here = harness.directory
    wrapper = write_wrapper(here, "freezing-check", on_check=FREEZE_THEN_PASS)
    master = harness.start("-n", "1", *FAST, "--reexec-as", wrapper, workers=1)
    other = upgrade_client(master)
    other.send(frame({"command": "ehlo", "id": "first"}))
    assert str(other.read_reply()["message"]).startswith("Welcome")  # connected and served before the freeze
    upgrading = upgrade_client(master)
    upgrading.send(frame({"command": "upgrade", "id": "u"}))
    wait_for_file(here / "frozen")
    other.send(frame({"command": "ehlo", "id": "second"}))  # waits in the socket while the master is stopped
    (here / "thaw").touch()
    reply = other.read_reply()
    assert reply["request_id"] == "second" and str(reply["message"]).startswith("Welcome"), reply
    assert upgrading.read_until_last()[-1]["message"] == "Upgrade done"
    master.wait_log(r"About to re-exec")


@pytest.mark.timeout(60)
def test_the_master_keeps_serving_while_the_upgrade_check_runs(harness: Harness, upgrade_client: Connect) -> None:
    here = harness.directory
    wrapper = write_wrapper(here, "slow-check", on_check=HOLD)
    master = harness.start("-n", "2", *FAST, "--reexec-as", wrapper, workers=2)
    victim = master.wait_workers(2)[0]

    (here / "hold").touch()
    upgrading = upgrade_client(master)
    upgrading.send(frame({"command": "upgrade", "id": "u"}))
    assert upgrading.read_reply()["message"] == "Upgrading smoothly, as commanded"
    wait_for_file(here / "holding")  # the upgrade check is running and will not end by itself
    # Meanwhile the master answers other clients and reaps its workers.
    assert master.message("ehlo").startswith("Welcome")
    os.kill(victim, signal.SIGKILL)
    master.wait_log(rf"===> Exited worker {victim}")
    assert master.state()["upgrading"] is False and "About to re-exec" not in master.log()

    (here / "go").touch()
    replies = upgrading.read_until_last()
    assert replies[-1]["message"] == "Upgrade done", replies
    upgrading.close()
    new = master.wait_workers(2)
    assert victim not in new and all(master.workers()[pid]["version"] == 1 for pid in new)
    assert master.log().index(f"===> Exited worker {victim}") < master.log().index("About to re-exec")


@pytest.mark.timeout(60)
def test_an_exec_that_fails_after_the_check_passed_is_reported_and_the_master_keeps_running(harness: Harness, upgrade_client: Connect) -> None:
    here = harness.directory
    wrapper = write_wrapper(here, "vanishing", on_check='rm -f "$0"')  # gone by the time of the exec
    master = harness.start("-n", "2", *FAST, "-b", "127.0.0.1:0", "--reexec-as", wrapper, workers=2)
    before = worker_records(master)
    idle = upgrade_client(master)
    fds_before = quiescent_fds(master, idle)

    messages = [str(r["message"]) for r in master.command("upgrade", timeout=30)]

    assert messages[-1].startswith("ERROR: Can not initiate einhorn master upgrade safely, aborting: could not exec")
    master.wait_log("About to re-exec")
    assert master.proc.poll() is None and worker_records(master) == before
    assert master.children() == sorted(before)  # the state passer was reaped
    assert quiescent_fds(master, idle) == fds_before  # the state pipe was closed, nothing left inheritable
    assert master.state()["reloading_for_upgrade"] is False
    idle.close()


@pytest.mark.timeout(60)
def test_an_unreadable_state_winds_the_workers_down_and_exits_1(harness: Harness) -> None:
    """Documented behaviour: the new image cannot know its workers, sockets or clients, so it
    sends USR2 to every child it has (from /proc), waits for them (SIGKILL after -t seconds),
    removes its pid and socket files and exits 1. Clients see the connection close."""
    here = harness.directory
    wrapper = write_wrapper(here, "garbage-state", on_exec=UNREADABLE_STATE)
    stubborn = 'if [ "$EINHORN_CHILD_INDEX" = 1 ]; then trap "" USR2; fi; exec sleep 30'
    master = harness.start(
        "-n", "2", *FAST, "-t", "1", "--reexec-as", wrapper, program=["sh", "-c", stubborn], workers=2
    )
    workers = master.workers()
    stubborn_pid = next(pid for pid, w in workers.items() if w["index"] == 1)

    result = master.einhornsh("upgrade", timeout=30)

    assert result.returncode == 1 and "connection closed by the master" in result.stderr, result
    assert master.wait_exit(15) == 1
    master.wait_log(r"Sent SIGKILL to \[")  # the log is followed from a file: wait for its end
    log = master.log()
    assert "could not read the state from fd" in log and "Cannot recover the master's state" in log
    assert f"Sent SIGKILL to [{stubborn_pid}]" in log
    assert not any(alive(pid) for pid in workers)
    assert not Path(master.pidfile).exists() and not Path(master.socket_path).exists()
    assert harness.leftovers() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kill_children_on_exit", [True, False])
def test_a_reexec_command_that_exits_instead_of_exec_ing_einhorn(harness: Harness, kill_children_on_exit: bool) -> None:
    """Documented behaviour: the master is gone (its pid was the wrapper's, which exited with
    the wrapper's status) and its clients see their connection close. With -k every worker gets
    its parent-death signal, USR2. Without -k the workers are orphaned: reparented (to init or
    the nearest subreaper), they keep running and serving the inherited listening sockets until
    someone stops them. The pid and socket files are left behind; the socket is stale and the
    next einhorn on that path removes it."""
    here = harness.directory
    wrapper = write_wrapper(here, "quitter", on_exec="exit 3", exec_einhorn=False)
    k = ("-k",) if kill_children_on_exit else ()
    master = harness.start("-n", "2", *FAST, *k, "-b", "127.0.0.1:0", "--reexec-as", wrapper, workers=2)
    workers = sorted(master.workers())

    result = master.einhornsh("upgrade", timeout=30)

    assert result.returncode == 1 and "connection closed by the master" in result.stderr, result
    assert master.wait_exit(10) == 3
    if kill_children_on_exit:
        wait_until(lambda: not any(alive(pid) for pid in workers), what="the workers' parent-death signal")
    else:
        assert all(alive(pid) for pid in workers)
        assert all(getattr(proc_stat(pid), "ppid", master.pid) != master.pid for pid in workers)
    assert Path(master.pidfile).exists() and Path(master.socket_path).exists()


# --- environment -------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_reexec_as_environment_changes_reach_new_workers_and_dropped_variables_are_gone(harness: Harness) -> None:
    here = harness.directory
    wrapper = write_wrapper(here, "exporting", on_exec="WRAPPED_BY=wrapper; export WRAPPED_BY")
    master = harness.start(
        "-n", "2", *FAST, "--drop-env-var", "DROPPED", "--reexec-as", wrapper,
        env={"DROPPED": "yes", "KEPT": "yes"}, workers=2,
    )
    for pid in master.workers():
        env = environ_of(pid)
        assert (env.get("DROPPED"), env.get("KEPT"), env.get("WRAPPED_BY")) == ("yes", "yes", None)

    upgrade(master)

    new = wait_until(lambda: all_workers_modern(master, 2), what="version 1 workers")
    for pid in new:
        env = environ_of(pid)
        assert (env.get("DROPPED"), env.get("KEPT"), env.get("WRAPPED_BY")) == (None, "yes", "wrapper"), env


# --- zero downtime, no leaks ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_zero_downtime_under_load_through_five_upgrades(harness: Harness) -> None:
    here = harness.directory
    (here / "version").write_text("1")
    wrapper = write_wrapper(here, "versioned", on_exec='APP_VERSION=$(cat "$here/version"); export APP_VERSION')
    master = harness.start(
        "-n", "3", "-m", "manual", "-s", "0.2", "-b", "127.0.0.1:0", "--reexec-as", wrapper,
        program=[sys.executable, TIME_SERVER], env={"APP_VERSION": "1"}, workers=3,
    )
    load = Load(bound_port(master), threads=3, limit_seconds=20.0)
    load.start()
    started = time.monotonic()
    switched: dict[int, float] = {}
    try:
        wait_until(lambda: load.answered_since(started, "1"), what="answers from version 1")
        for version, command in enumerate(["upgrade", "upgrade_fleet", "upgrade", "upgrade_fleet", "upgrade"], start=2):
            (here / "version").write_text(str(version))
            upgrade(master, command)
            wait_until(lambda: all_workers_modern(master, 3), what=f"only workers of APP_VERSION {version}")
            switched[version] = time.monotonic()
            wait_until(lambda: load.answered_since(switched[version], str(version)), what=f"answers from {version}")  # noqa: B023 - called at once
    finally:
        load.stop()
    answers = load.snapshot()
    elapsed = max(a.started for a in answers) - started
    by_version = {v: sum(1 for a in answers if a.version == v) for v in sorted({str(a.version) for a in answers})}
    print(
        f"\nzero-downtime load: {len(answers)} requests in {elapsed:.1f}s during 5 upgrades,"
        f" {len(failures(answers))} failures, answers by APP_VERSION: {by_version}"
    )
    assert failures(answers) == [], failures(answers)[:5]
    assert set(by_version) == {"1", "2", "3", "4", "5", "6"}
    for version, since in switched.items():
        stale = [a for a in answers if a.started >= since and a.version is not None and int(a.version) < version]
        assert stale == [], f"old answers after the switch to {version}: {stale[:3]}"


@pytest.mark.timeout(90)
def test_the_master_fd_count_is_the_same_after_20_upgrades(harness: Harness, upgrade_client: Connect) -> None:
    master = harness.start("-n", "1", "-m", "0", "-s", "0.1", "-b", "127.0.0.1:0", workers=1)
    idle = upgrade_client(master)  # a client connection that lives through every exec
    before = quiescent_fds(master, idle)
    for n in range(20):
        upgrade(master, "upgrade_fleet" if n % 2 else "upgrade")
    wait_until(lambda: all_workers_modern(master, 1), what="one worker of the last version")
    assert integer(master.state(), "version") == 20
    after = quiescent_fds(master, idle)
    print(f"\nmaster fds before: {len(before)}, after 20 upgrades: {len(after)}")
    assert len(after) == len(before), (before, after)
    assert fd_kinds(after) == fd_kinds(before)
    assert set(after) == set(before)  # the very same descriptor numbers
    idle.close()


# --- restoring a document of another format, end to end ------------------------------------------------


@pytest.mark.timeout(60)
def test_a_master_restores_an_older_format_state_with_one_log_line(harness: Harness) -> None:
    """`--with-state-fd` given a format-0 document (tests/unit/fixtures/reexec/format_0.json)
    whose children are not ours: they are accounted as exited, and new workers take their place."""
    fixture = Path(__file__).parents[1] / "unit" / "fixtures" / "reexec" / "format_0.json"
    here = harness.directory / "restore"
    here.mkdir()
    socket_path = str(here / "s")
    document = json.loads(fixture.read_text())
    read_end, write_end = os.pipe()
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server,
        socket.create_server(("127.0.0.1", 0)) as listener,
        open(here / "stderr.log", "a+") as log,  # O_APPEND: reading here does not move the master's writes
    ):
        server.bind(socket_path)
        server.listen()
        port = listener.getsockname()[1]
        document["shell"] = {"listener_fds": [listener.fileno()], "server_fd": server.fileno(), "connections": []}
        try:
            os.write(write_end, json.dumps(document).encode())
        finally:
            os.close(write_end)
        argv = [
            *EINHORN, "-d", socket_path, "-e", str(here / "p"), "-f", str(here / "l"), "-n", "2", *FAST,
            "-b", "127.0.0.1:0", "--with-state-fd", str(read_end), "--", "sleep", "30",
        ]
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=harness.environment(),
                pass_fds=(read_end, server.fileno(), listener.fileno()),
            )
        finally:
            os.close(read_end)
        try:
            _check_restored_master(proc, socket_path, port, log)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _check_restored_master(proc: subprocess.Popen[bytes], socket_path: str, port: int, log: TextIO) -> None:
    def workers() -> dict[str, object] | None:
        with Connection(socket_path) as conn:
            conn.send(frame({"command": "state", "args": ["--json"]}))
            state = json.loads(str(conn.read_reply()["message"]))["state"]
        assert isinstance(state, dict)
        children = state["children"]
        assert isinstance(children, dict)
        return state if len(children) == 2 and state["missing"] == 0 else None

    state = wait_until(workers, what="two workers in place of the document's three")
    assert state["version"] == 2 and state["bound_ports"] == [port]
    children = state["children"]
    assert isinstance(children, dict) and not {"3101", "3102", "3103"} & set(children)
    assert sorted(int(pid) for pid in children) == children_of(proc.pid)
    log.seek(0)
    text = log.read()
    assert text.count("State format for einhorn has changed") == 1, text
    assert "format None restored by format 3; state: added default values for ['format', 'pending'" in text
    assert all(f"Child {pid} exited while the master was re-exec'ing" in text for pid in (3101, 3102, 3103))
    with Connection(socket_path) as conn:
        conn.send(frame({"command": "ehlo"}))
        assert "Welcome" in str(conn.read_reply()["message"])
