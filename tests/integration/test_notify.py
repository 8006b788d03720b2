"""sd_notify both ways on a real master: workers ACK with READY=1 (`-m notify`, with systemd's own
`systemd-notify`), and the master tells a test-owned NOTIFY_SOCKET how it is, as systemd would hear it."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Harness
from tests.integration.supervisor import Supervisor
from tests.integration.upgrade_helpers import upgrade
from tests.integration.waiting import wait_until
from tests.integration.workers import REPO

ACTIVATED_SERVER = [sys.executable, str(REPO / "example" / "activated_server")]


def systemd_notify() -> str:
    path = shutil.which("systemd-notify")
    if path is None:
        pytest.skip("systemd-notify is not installed (Debian's systemd package; .ci/run installs it as root)")
    return path


def test_systemd_notify_ready_in_a_shell_worker_is_its_ack(harness: Harness) -> None:
    notify = systemd_notify()
    # --pid=$$: the datagram speaks for the shell (the worker), not for systemd-notify's own pid.
    script = f'{notify} --pid=$$ --ready --status="shell $$ serving"; exec sleep 60'
    master = harness.start("-n", "2", "-m", "notify", program=["sh", "-c", script], workers=2)
    path = Path(master.socket_path + ".notify")
    assert stat_is_socket(path)
    workers = master.wait_workers(2)
    assert master.state()["ack_mode"] == {"type": "notify"}
    assert {pid: w["status"] for pid, w in master.workers().items()} == {pid: f"shell {pid} serving" for pid in workers}
    inode = path.lstat().st_ino
    upgrade(master)  # the new workers ACK through the same socket, handed over to the new image
    assert not set(master.wait_workers(2)) & set(workers)
    assert path.lstat().st_ino == inode
    os.kill(master.pid, 15)
    assert master.wait_exit() == 0
    assert not path.exists()


def stat_is_socket(path: Path) -> bool:
    import stat

    return stat.S_ISSOCK(path.lstat().st_mode)


def test_a_server_that_only_speaks_sd_notify_is_acked_once_it_says_ready(harness: Harness) -> None:
    master = harness.start(
        "-n", "2", "-m", "notify", "--listen-fds", "--graceful-signal", "TERM", "-b", "127.0.0.1:0", program=ACTIVATED_SERVER, workers=2
    )
    statuses = {w["status"] for w in master.workers().values()}
    assert statuses == {"serving on fd 3"}


# --- the master's own notifications ---------------------------------------------------------


@pytest.fixture
def supervisor(harness: Harness) -> Iterator[Supervisor]:
    listening = Supervisor(harness.directory / "systemd.notify")
    yield listening
    listening.close()


def test_the_master_tells_its_supervisor_ready_reloading_ready_stopping(harness: Harness, supervisor: Supervisor) -> None:
    env = {"NOTIFY_SOCKET": supervisor.path, "WATCHDOG_USEC": "2000000"}
    master = harness.start("-n", "2", "-m", "0.3", program=["sleep", "60"], env=env, workers=2)
    wait_until(lambda: supervisor.heard("READY"), 10, "READY=1")
    before = time.monotonic()
    upgrade(master)
    wait_until(lambda: supervisor.heard("READY", 2), 10, "READY=1 after the upgrade")
    os.kill(master.pid, 2)
    assert master.wait_exit() == 0
    wait_until(lambda: supervisor.heard("STOPPING"), 5, "STOPPING=1")
    got = list(supervisor.got)
    assert {pid for _, pid, _ in got} == {master.pid}  # one pid all along: the re-exec keeps it

    events = [f for _, _, f in got if set(f) != {"WATCHDOG"}]
    keys = [next(k for k in ("READY", "RELOADING", "STOPPING") if k in f) for f in events if {"READY", "RELOADING", "STOPPING"} & set(f)]
    assert keys == ["READY", "RELOADING", "READY", "STOPPING"], got
    reloading = next(f for f in events if "RELOADING" in f)
    assert before <= int(reloading["MONOTONIC_USEC"]) / 1e6 <= time.monotonic()  # CLOCK_MONOTONIC, as systemd wants
    assert all("STATUS" in f for f in events)
    ready = [f for f in events if "READY" in f]
    assert ready[0]["STATUS"] == "2/2 workers ACKed, version 0" and ready[1]["STATUS"] == "2/2 workers ACKed, version 1"

    pings = [t for t, _, f in got if f == {"WATCHDOG": "1"}]
    assert len(pings) >= 2
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert max(gaps) < 2.0, gaps  # every half of WATCHDOG_USEC; a gap of a whole one would be a kill, re-exec included
