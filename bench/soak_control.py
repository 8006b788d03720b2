"""The control plane under load (issue 16, findings 3-5): the heavy versions of the ordinary suite's tests.

    .venv/bin/python bench/soak_control.py              # every scenario, full size (about 2 minutes)
    .venv/bin/python bench/soak_control.py --short      # smaller sizes (about 40 s), for CI
    .venv/bin/python bench/soak_control.py --only acks_at_the_cap fd_limit
    .venv/bin/python bench/soak_control.py --einhorn PATH   # another einhorn executable (an older checkout)

Scenarios (`SCENARIOS`; `run()` is what a wider soak suite imports):

- acks_at_the_cap: 300 `-m manual` workers ACK at the same instant while 256 admin
  connections (each has sent `ehlo`) are held: every ACK must count.
- upgrade_at_the_cap: SIGHUP with 256 admin connections held: the upgrade must finish.
- idle_connections: 1,000 connections that never send anything: another client's
  `ehlo` latency, the master's RSS and its CPU while they are held.
- slow_readers: 100 clients each leave 5,000 `state` replies unread; once the
  master has taken in what it will, an `upgrade_fleet`: its duration and the
  master's peak RSS (bounded output, bounded hand-off).
- fd_limit: the master's RLIMIT_NOFILE lowered until accept fails: its CPU and
  log lines while the limit holds, and how soon it accepts once the limit is raised.

Every master runs in its own temp dir with `bench/ack_worker.py` workers and is
killed by pid at the end (`bench/harness.py`); UNIX sockets only; every wait
has a deadline. The table has one row per measure, with its target and verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CommandClient, Master, cpu_seconds, python_impl, rss_kib  # noqa: E402

ADMIN_CAP = 256


@dataclass(frozen=True)
class Options:
    short: bool = False
    einhorn: str | None = None


@dataclass(frozen=True)
class Row:
    scenario: str
    measure: str
    value: str
    target: str = ""
    ok: bool | None = None


Scenario = Callable[[Options], list[Row]]


# --- helpers ------------------------------------------------------------------


@contextlib.contextmanager
def held_admin_connections(master: Master, count: int) -> Iterator[list[CommandClient]]:
    """`count` connections that each sent `ehlo` (so they count as admin connections), held open."""
    clients: list[CommandClient] = []
    try:
        for _ in range(count):
            client = CommandClient(master.socket_path, timeout=10)
            clients.append(client)
            client.request("ehlo")
        yield clients
    finally:
        for client in clients:
            client.close()


def log_count(master: Master, text: str) -> int:
    with master.cond:
        return sum(1 for _, line in master.lines if text in line)


def ehlo_latencies(path: str, count: int) -> list[float]:
    client = CommandClient(path, timeout=10)
    try:
        found = []
        for _ in range(count):
            start = time.monotonic()
            client.request("ehlo")
            found.append(time.monotonic() - start)
        return found
    finally:
        client.close()


def wait_idle(pid: int, limit: float = 60.0) -> float:
    """Wait until the master used under 2% CPU over half a second (or `limit` s passed); seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.01:
            break
    return time.monotonic() - start


def p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def enough_descriptors(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard), hard))


class RssSampler:
    """The master's peak VmRSS, sampled every 20 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_kib(pid)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stopping.wait(0.02):
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, rss_kib(self.pid))

    def stop(self) -> float:
        self.stopping.set()
        self.thread.join(5)
        return self.peak / 1024


# --- scenarios ----------------------------------------------------------------


def acks_at_the_cap(options: Options) -> list[Row]:
    name, number = "acks_at_the_cap", 50 if options.short else 300
    enough_descriptors(ADMIN_CAP + 200)
    with Master(python_impl(options.einhorn), number, "go") as master:
        master.launched_all()
        with held_admin_connections(master, ADMIN_CAP):
            start = time.monotonic()
            Path(master.dir, "go").touch()
            try:
                took = f"{master.wait_all_acked(timeout=60) - start:.2f} s"
                counted = number
            except TimeoutError:
                took = "not within 60 s"
                counted = max((int(m) for m in _acked_counts(master)), default=0)
        refused = log_count(master, "Refusing command connections")
    return [
        Row(name, f"{number} workers ACKing at once, {ADMIN_CAP} admin connections held: ACKs counted", f"{counted} / {number}", f"{number} / {number}", counted == number),
        Row(name, "time from the go to the last ACK counted", took),
        Row(name, "connections refused for the admin cap", str(refused), "0", refused == 0),
    ]


def _acked_counts(master: Master) -> Iterator[str]:
    with master.cond:
        for _, line in master.lines:
            found = re.search(r"Up to (\d+) / \d+ manual ACKs", line)
            if found:
                yield found.group(1)


def upgrade_at_the_cap(options: Options) -> list[Row]:
    name = "upgrade_at_the_cap"
    enough_descriptors(ADMIN_CAP + 200)
    with Master(python_impl(options.einhorn), 4, "go") as master:
        Path(master.dir, "go").touch()
        master.wait_all_acked(timeout=30)
        with held_admin_connections(master, ADMIN_CAP):
            mark = master.mark()
            start = time.monotonic()
            os.kill(master.pid, signal.SIGHUP)
            try:
                _, when, _ = master.wait_log(r"Upgraded successfully to", mark, timeout=60)
                took, done = f"{when - start:.2f} s", True
            except TimeoutError:
                took, done = "not within 60 s", False
    return [Row(name, f"SIGHUP (-n 4, smooth) with {ADMIN_CAP} admin connections held: upgrade done", took, "done", done)]


def idle_connections(options: Options) -> list[Row]:
    name, count = "idle_connections", 200 if options.short else 1000
    enough_descriptors(count + 200)
    with Master(python_impl(options.einhorn), 1, "ack") as master:
        master.wait_all_acked(timeout=30)
        rss_before = rss_kib(master.pid) / 1024
        idle: list[socket.socket] = []
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                idle.append(sock)
                sock.connect(master.socket_path)
            deadline = time.monotonic() + 30
            while len(os.listdir(f"/proc/{master.pid}/fd")) < count and time.monotonic() < deadline:
                time.sleep(0.05)
            accepted = len(os.listdir(f"/proc/{master.pid}/fd")) >= count
            try:
                latencies = ehlo_latencies(master.socket_path, 300)
            except (OSError, ConnectionError):
                latencies = [float("inf")]  # refused
            cpu_start, wall_start = cpu_seconds(master.pid), time.monotonic()
            time.sleep(3)
            cpu = (cpu_seconds(master.pid) - cpu_start) / (time.monotonic() - wall_start)
            rss = rss_kib(master.pid) / 1024
        finally:
            for sock in idle:
                sock.close()
    return [
        Row(name, f"{count} idle connections accepted", "yes" if accepted else "no", "yes", accepted),
        Row(name, "another client's ehlo beside them, p50 / p99 (ms)", f"{statistics.median(latencies) * 1000:.2f} / {p99(latencies) * 1000:.2f}", "p99 < 50", p99(latencies) < 0.05),
        Row(name, "master CPU while they are held, idle", f"{cpu:.1%}", "< 5%", cpu < 0.05),
        Row(name, "master RSS before / with them (MB)", f"{rss_before:.1f} / {rss:.1f}", "< 64", rss < 64),
    ]


def slow_readers(options: Options) -> list[Row]:
    name = "slow_readers"
    clients_count, replies = (20, 2000) if options.short else (100, 5000)
    enough_descriptors(clients_count + 200)
    with Master(python_impl(options.einhorn), 4, "ack") as master:
        master.wait_all_acked(timeout=30)
        request = b'{"command": "state"}\n'
        sampler = RssSampler(master.pid)
        readers: list[socket.socket] = []
        try:
            for _ in range(clients_count):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(master.socket_path)
                sock.setblocking(False)
                readers.append(sock)
                with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                    for _ in range(replies):
                        sock.send(request)
            waited = wait_idle(master.pid)
            upgrader = CommandClient(master.socket_path, timeout=120)
            start = time.monotonic()
            try:
                lines = upgrader.request("upgrade_fleet")
                took = time.monotonic() - start
                done = b"Upgrade done" in lines[-1]
            except (OSError, ConnectionError):
                took, done = time.monotonic() - start, False
            finally:
                upgrader.close()
        finally:
            for sock in readers:
                sock.close()
            peak = sampler.stop()
        dropped = log_count(master, "is not reading its replies")
    return [
        Row(name, f"upgrade_fleet beside {clients_count} clients leaving {replies} replies each unread", f"{took:.2f} s" + ("" if done else " (no Upgrade done)"), "done, < 5 s", done and took < 5),
        Row(name, "master peak RSS (MB)", f"{peak:.1f}", "< 64", peak < 64),
        Row(name, "slow readers dropped for not reading", f"{dropped} / {clients_count}"),
        Row(name, "time until the master was idle, before the upgrade", f"{waited:.1f} s"),
    ]


def fd_limit(options: Options) -> list[Row]:
    name = "fd_limit"
    window = 2.0 if options.short else 5.0
    with Master(python_impl(options.einhorn), 1, "ack") as master:
        master.wait_all_acked(timeout=30)
        soft, hard = resource.prlimit(master.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(master.pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{master.pid}/fd")) + 3, hard))
        clients: list[socket.socket] = []
        try:
            for _ in range(10):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(10)
                sock.connect(master.socket_path)
                sock.sendall(b'{"command": "ehlo"}\n')
                clients.append(sock)
            master.wait_log(r"accept command connections: Too many open files", timeout=10)
            lines_before = log_count(master, "accept command connections")
            cpu_start, wall_start = cpu_seconds(master.pid), time.monotonic()
            time.sleep(window)
            cpu = (cpu_seconds(master.pid) - cpu_start) / (time.monotonic() - wall_start)
            lines = log_count(master, "accept command connections") - lines_before
            resource.prlimit(master.pid, resource.RLIMIT_NOFILE, (soft, hard))
            raised = time.monotonic()
            last = clients[-1]  # still in the backlog: answered once the master accepts again
            last.recv(65536)
            recovered = time.monotonic() - raised
        finally:
            for sock in clients:
                sock.close()
            with contextlib.suppress(OSError):
                resource.prlimit(master.pid, resource.RLIMIT_NOFILE, (soft, hard))
    return [
        Row(name, f"master CPU over {window:g} s at the descriptor limit", f"{cpu:.1%}", "< 5%", cpu < 0.05),
        Row(name, f"log lines about accept over those {window:g} s", str(lines), "<= 1", lines <= 1),
        Row(name, "a waiting client answered after the limit is raised", f"{recovered:.2f} s", "< 1.5 s", recovered < 1.5),
    ]


SCENARIOS: dict[str, Scenario] = {
    "acks_at_the_cap": acks_at_the_cap,
    "upgrade_at_the_cap": upgrade_at_the_cap,
    "idle_connections": idle_connections,
    "slow_readers": slow_readers,
    "fd_limit": fd_limit,
}


def run(names: Sequence[str] = tuple(SCENARIOS), options: Options = Options()) -> list[Row]:
    rows: list[Row] = []
    for scenario in names:
        try:
            rows += SCENARIOS[scenario](options)
        except Exception as error:  # noqa: BLE001 - one scenario's failure is a row, the others still run
            rows.append(Row(scenario, "scenario failed", f"{type(error).__name__}: {error}"[:200], "", False))
    return rows


def print_table(rows: Sequence[Row]) -> None:
    print("| scenario | measure | value | target | ok |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        verdict = "" if row.ok is None else ("yes" if row.ok else "**NO**")
        print(f"| {row.scenario} | {row.measure} | {row.value} | {row.target} | {verdict} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="smaller sizes (for CI)")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--einhorn", help="einhorn executable (default .venv/bin/einhorn)")
    args = parser.parse_args(argv)
    print(f"# soak_control{' --short' if args.short else ''}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    rows = run(args.only, Options(args.short, args.einhorn))
    print_table(rows)
    print(f"# load average {os.getloadavg()[0]:.2f} at end")
    return 0 if all(row.ok is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
