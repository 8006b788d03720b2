"""The health rules with real processes (EXTENSIONS §2): --ping-timeout, --boot-timeout, --max-worker-rss.

Each test watches the pool through `state --json`, polled with a deadline, and
checks what the rule did in the master's WARN lines.
"""

from __future__ import annotations

import sys
import time

import pytest

from tests.integration.harness import Harness, Master
from tests.integration.procfs import alive
from tests.integration.upgrade_helpers import Load, bound_port, failures
from tests.integration.waiting import wait_until
from tests.integration.workers import TIME_SERVER

PINGER = """
import os, signal, sys, time
from einhorn import worker
directory = sys.argv[1]
try:  # one worker, the first to take the marker, wedges: it pings three times, then never again
    os.rename(os.path.join(directory, "wedge"), os.path.join(directory, f"wedged-{os.getpid()}"))
    wedged = True
except FileNotFoundError:
    wedged = False
signal.signal(signal.SIGUSR2, lambda *_: sys.exit(0))
worker.ack()
pings = 0
while True:
    if not wedged or pings < 3:
        worker.ping(str(pings))
        pings += 1
    time.sleep(0.2)
"""

BLOATER = """
import os, runpy, sys, threading, time
directory, server = sys.argv[1], sys.argv[2]
def bloat():
    # The first worker to take the marker (once the test writes it) allocates 100 MiB, and keeps it.
    while True:
        try:
            os.rename(os.path.join(directory, "bloat"), os.path.join(directory, f"bloated-{os.getpid()}"))
        except FileNotFoundError:
            time.sleep(0.05)
            continue
        global hog
        hog = bytearray(b"\\x01") * (100 * 1024 * 1024)  # written, so resident
        open(os.path.join(directory, f"hog-{os.getpid()}"), "w").close()
        return
threading.Thread(target=bloat, daemon=True).start()
sys.argv = [server]
runpy.run_path(server, run_name="__main__")
"""


def serving(master: Master) -> list[int]:
    """The ACKed, unsignaled workers, by `state --json`."""
    return sorted(pid for pid, w in master.workers().items() if w["acked"] and not w["signaled"])


def wait_replaced(master: Master, old: int, number: int, timeout: float) -> list[int]:
    """Poll the pool until `old` is gone and `number` others serve; fail if it ever serves fewer than `number`."""
    lowest: list[tuple[int, list[int]]] = []

    def replaced() -> list[int] | None:
        now = serving(master)
        if len(now) < number:
            lowest.append((len(now), now))
        if old not in master.workers() and not alive(old) and len(now) == number:
            return now
        return None

    final = wait_until(replaced, timeout, f"worker {old} replaced")
    assert lowest == [], f"the pool served fewer than {number}: {lowest}\n{master.log()}"
    return final


@pytest.mark.timeout(60)
def test_a_worker_that_stops_pinging_is_replaced_and_the_pool_never_drops_below_number(harness: Harness) -> None:
    (harness.directory / "wedge").touch()
    master = harness.start(
        "-n", "2", "-m", "manual", "--ping-timeout", "1.5", "--max-unacked", "2",
        program=[sys.executable, "-c", PINGER, str(harness.directory)],
        workers=2,
    )  # fmt: skip
    (wedged,) = [int(p.name.split("-")[1]) for p in harness.directory.glob("wedged-*")]
    healthy = [pid for pid in serving(master) if pid != wedged]
    final = wait_replaced(master, wedged, 2, timeout=30)
    assert healthy[0] in final and wedged not in final
    log = master.log()
    assert f"WARN: Worker {wedged} (index " in log and "(--ping-timeout 1.5s); replacing it" in log
    stop = master.wait_log(rf"WARN: Stopping unhealthy worker {wedged} \(index \d+, version 0\) \(ping_timeout\)")[0]
    assert stop is not None
    # Successor first: the successor's ACK came before the wedged worker was told to go.
    lines = log.splitlines()
    condemned_at = next(n for n, line in enumerate(lines) if f"Worker {wedged} (index" in line and "replacing it" in line)
    stopped_at = next(n for n, line in enumerate(lines) if f"Stopping unhealthy worker {wedged}" in line)
    assert any("Up to 2 / 2 manual ACKs" in line for line in lines[condemned_at:stopped_at]), lines[condemned_at:]
    state = master.state()
    assert state["config"]["ping_timeout"] == 1.5  # type: ignore[index]
    ages = [w["ping_age"] for w in master.workers().values()]
    assert all(age is None or 0 <= age < 1.5 for age in ages), ages  # type: ignore[operator]


@pytest.mark.timeout(60)
def test_a_worker_that_never_acks_is_stopped_at_its_boot_timeout_and_counts_as_a_death(harness: Harness) -> None:
    master = harness.start("-n", "1", "-m", "manual", "--boot-timeout", "1", "-t", "5", program=["sleep", "30"])
    first = master.wait_workers(1, acked=False)[0]
    master.wait_log(rf"WARN: Worker {first} \(index 0, version 0\) not ACKed \d+\.\ds after its spawn \(--boot-timeout 1s\); stopping it")
    master.wait_log(rf"===> Exited worker {first} before it was ACKed \(killed by signal \d+\)")

    def counted() -> int | None:
        deaths = master.state()["consecutive_deaths_before_ack"]
        assert isinstance(deaths, int)
        return deaths or None

    assert wait_until(counted, 10, "the death before ACK to count") >= 1
    # The backoff applies, and the replacement meets the same rule.
    second = wait_until(lambda: [pid for pid in master.workers() if pid != first] or None, 15, "a replacement")[0]
    master.wait_log(rf"WARN: Worker {second} \(index 0, version 0\) not ACKed", timeout=15)
    assert not alive(first)


@pytest.mark.timeout(90)
def test_a_worker_past_the_rss_limit_is_replaced_successor_first_with_no_failed_request(harness: Harness) -> None:
    master = harness.start(
        "-n", "2", "-m", "manual", "--max-worker-rss", "60", "--max-unacked", "2", "-b", "127.0.0.1:0,r",
        program=[sys.executable, "-c", BLOATER, str(harness.directory), TIME_SERVER],
        workers=2,
    )  # fmt: skip
    load = Load(bound_port(master), threads=2, limit_seconds=60.0, pause=0.01)
    load.start()
    try:
        wait_until(lambda: len(load.snapshot()) > 20, 10, "the load to run")
        (harness.directory / "bloat").touch()
        hog = wait_until(lambda: list(harness.directory.glob("hog-*")) or None, 10, "a worker to allocate")[0]
        bloated = int(hog.name.split("-")[1])
        master.wait_log(rf"WARN: Worker {bloated} \(index \d, version 0\) uses 1\d\d\.\d MiB of resident memory \(--max-worker-rss 60 MiB\)", timeout=15)
        wait_replaced(master, bloated, 2, timeout=30)
        answered_after = time.monotonic()
        wait_until(lambda: load.answered_since(answered_after, "1"), 10, "answers from the new pool")
    finally:
        load.stop()
    assert failures(load.snapshot()) == [], failures(load.snapshot())[:3]
    lines = master.log().splitlines()
    condemned_at = next(n for n, line in enumerate(lines) if f"Worker {bloated} (index" in line and "resident memory" in line)
    stopped_at = next(n for n, line in enumerate(lines) if f"Stopping unhealthy worker {bloated}" in line and "(rss_limit)" in line)
    assert any("Up to 2 / 2 manual ACKs" in line for line in lines[condemned_at:stopped_at]), lines[condemned_at:]

    def measured() -> list[int] | None:  # the successor is measured at the next pass, within 2 s
        sizes = [w["rss_bytes"] for w in master.workers().values()]
        return None if None in sizes else [size for size in sizes if isinstance(size, int)]

    sizes = wait_until(measured, 10, "every worker measured")
    assert len(sizes) == 2 and all(0 < size < 60 * 1024 * 1024 for size in sizes), sizes
    assert all(w["health"] is None for w in master.workers().values())


def test_bad_health_flags_are_refused(harness: Harness) -> None:
    for flag, value in (("--boot-timeout", "0"), ("--ping-timeout", "x"), ("--max-worker-rss", "-5")):
        result = harness.run(flag, value, "--", "sleep", "1")
        assert result.returncode != 0 and f"Invalid value for {flag}" in result.stderr, result
