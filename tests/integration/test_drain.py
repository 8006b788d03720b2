"""Drain listeners end to end (`-b ADDR,drain`, spec/README.md §9): a worker that closes, as it stops,
every connection it accepted and has not read yet loses none across upgrades, and the same worker on a
plain listener does (which is why the option exists).

The worker (SLOW_READER) reads a connection only 20 ms after accepting it and, on SIGTERM, closes what it
has not read: uvicorn's and hypercorn's rule for idle connections, with a window wide enough to hit on
every stop. The upgrades re-exec the master through a versioned wrapper, so each generation answers with
its own APP_VERSION.
"""

from __future__ import annotations

import sys

import pytest

from tests.integration.harness import Harness, Master
from tests.integration.procfs import alive
from tests.integration.upgrade_helpers import Answer, Load, bound_port, failures, upgrade, write_wrapper
from tests.integration.waiting import wait_until

SLOW_READER = r"""
import os, select, signal, socket, sys, time
listener = socket.socket(fileno=int(os.environ["EINHORN_FD_0"]))
listener.setblocking(False)
version = os.environ.get("APP_VERSION", "?")
unread = []
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
while not stopping:
    readable, _, _ = select.select([listener], [], [], 0.002)
    now = time.monotonic()
    while readable:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            break
        unread.append((conn, now))
    while unread and now - unread[0][1] >= 0.02:
        conn, _ = unread.pop(0)
        conn.setblocking(True)
        conn.recv(4096)
        conn.sendall(f"version={version} pid={os.getpid()}\n".encode())
        conn.close()
for conn, _ in unread:  # stopping: what was accepted and not read yet is closed unanswered
    conn.close()
"""


def _start(harness: Harness, bind: str) -> Master:
    here = harness.directory
    (here / "version").write_text("1")
    wrapper = write_wrapper(here, "versioned", on_exec='APP_VERSION=$(cat "$here/version"); export APP_VERSION')
    return harness.start(
        "-n", "2", "-b", bind, "--graceful-signal", "TERM", "-m", "0.2", "--reexec-as", wrapper,
        program=[sys.executable, "-c", SLOW_READER], env={"APP_VERSION": "1"}, workers=2, timeout=30,
    )  # fmt: skip


def _upgrades_under_load(harness: Harness, master: Master, commands: list[str], threads: int = 8) -> list[Answer]:
    load = Load(bound_port(master), request=b"hello\n", threads=threads, limit_seconds=120.0, pause=0.003)
    load.start()
    try:
        wait_until(lambda: load.answered_since(0.0, "1"), 20, "answers from version 1")
        for version, command in enumerate(commands, start=2):
            before = master.children()
            (harness.directory / "version").write_text(str(version))
            upgrade(master, command, timeout=60)
            wait_until(lambda: not [p for p in before if alive(p)], 30, "the old workers to exit")  # noqa: B023
    finally:
        load.stop()
    return list(load.snapshot())


@pytest.mark.timeout(180)
def test_no_connection_is_lost_across_upgrades_on_a_drain_listener(harness: Harness) -> None:
    master = _start(harness, "127.0.0.1:0,r,drain")
    answers = _upgrades_under_load(harness, master, ["upgrade", "upgrade_fleet", "upgrade"], threads=16)
    print(f"\nwith drain: {len(failures(answers))} of {len(answers)} requests lost over 3 upgrades")
    assert failures(answers) == [], failures(answers)[:5]
    assert len(answers) >= 200
    assert {a.version for a in answers} == {"1", "2", "3", "4"}
    log = master.log()
    assert all(f"Draining version {v}:" in log for v in (0, 1, 2)), log  # each generation in turn, as it stopped
    drain = master.state()["drain"]
    assert drain == {"steered": [{"version": 3, "weight": 2}], "draining": []}


@pytest.mark.timeout(180)
def test_without_drain_the_same_worker_loses_connections_as_it_stops(harness: Harness) -> None:
    master = _start(harness, "127.0.0.1:0,r")
    # Fleet upgrades stop both old workers at once, each holding a share of the 16 connections in flight.
    answers = _upgrades_under_load(harness, master, ["upgrade_fleet", "upgrade_fleet", "upgrade"], threads=16)
    lost = failures(answers)
    print(f"\nwithout drain: {len(lost)} of {len(answers)} requests lost over 3 upgrades")
    assert lost, f"no connection lost in {len(answers)} requests: the worker no longer shows the race"
    assert all(a.error == "unexpected answer b''" or "Connection reset" in str(a.error) for a in lost), lost[:5]
