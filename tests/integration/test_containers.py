"""einhorn as a container's init: PID 1 of a new PID namespace (`unshare`), or `--subreaper`.
Orphaned grandchildren are reaped quietly, and SIGTERM (what `docker stop` sends) is graceful."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.harness import Harness, Master
from tests.integration.procfs import children_of, proc_stat
from tests.integration.waiting import wait_until
from tests.integration.workers import RECORDER

ORPHANS = 3
ORPHAN_SECONDS = 1.5


def worker(out: Path) -> list[str]:
    """A worker that double-forks ORPHANS short-lived orphans at start, then records its signals (exits on any)."""
    orphans = "; ".join(f"( sleep {ORPHAN_SECONDS} & )" for _ in range(ORPHANS))
    return ["sh", "-c", f'{orphans}; exec {sys.executable} -c "$0" "$1" ""', RECORDER, str(out)]


def zombies_under(pid: int) -> list[int]:
    return [child for child in _all_children(pid) if (stat := proc_stat(child)) is not None and stat.state == "Z"]


def _all_children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := proc_stat(int(name))) is not None and stat.ppid == pid:
            found.append(int(name))
    return found


def no_zombies_after(master_pid: int, seconds: float) -> None:
    """Every orphan has exited by `seconds` and none is left a zombie (polled until then, then checked)."""
    wait_until(lambda: not [p for p in _all_children(master_pid) if _is_sleep(p)], ORPHAN_SECONDS + 5, "orphans exited")
    wait_until(lambda: not zombies_under(master_pid), seconds, "orphans reaped")


def _is_sleep(pid: int) -> bool:
    """A live orphan (a zombie's comm stays `sleep`: its state tells)."""
    stat = proc_stat(pid)
    try:
        return stat is not None and stat.state != "Z" and Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"
    except OSError:
        return False


def quiet(master: Master) -> None:
    assert "Reaped unknown process" not in master.log() and "Reaped orphaned" not in master.log(), master.log()


def test_subreaper_adopts_and_reaps_orphans_quietly_and_stops_gracefully_on_sigterm(harness: Harness) -> None:
    out = Path(tempfile.mkdtemp(prefix="orph", dir=harness.directory))
    master = harness.start("-n", "2", "-m", "0.1", "--subreaper", program=worker(out))
    adopted = wait_until(lambda: [p for p in _all_children(master.pid) if _is_sleep(p)] or None, 5, "orphans adopted by the master")
    assert adopted
    workers = master.wait_workers(2)
    no_zombies_after(master.pid, 1.0)
    quiet(master)
    os.kill(master.pid, signal.SIGTERM)
    assert master.wait_exit() == 0
    assert [(out / f"{pid}.signals").read_text().split() for pid in workers] == [["USR2"], ["USR2"]]  # graceful


def unshare() -> str:
    path = shutil.which("unshare")
    if path is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run([path, "--fork", "--pid", "--mount-proc", "true"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.strip()}")
    return path


def test_as_pid_1_of_a_pid_namespace(harness: Harness) -> None:
    out = Path(tempfile.mkdtemp(prefix="pid1", dir=harness.directory))
    master = harness.start(
        "-n", "2", "-m", "0.1", program=worker(out), prefix=[unshare(), "--fork", "--pid", "--mount-proc"]
    )  # fmt: skip
    (einhorn,) = wait_until(lambda: children_of(master.pid) or None, 5, "einhorn under unshare")
    state = json.loads(master.message("state", "--json"))["state"]
    assert state["master_pid"] == 1
    wait_until(lambda: len([w for w in master.workers().values() if w["acked"]]) == 2, 10, "2 ACKed workers")
    no_zombies_after(einhorn, 1.0)
    quiet(master)
    os.kill(einhorn, signal.SIGTERM)  # as `docker stop` does (from outside the namespace)
    assert master.wait_exit() == 0  # unshare exits with einhorn's status
    recorded = sorted((out).glob("*.signals"))
    assert [f.read_text().split() for f in recorded] == [["USR2"], ["USR2"]], master.log()
