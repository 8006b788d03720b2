"""What an operator trips over on day one (issue 10): ports in use, the quick start run twice, a quiet log."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import sys
import urllib.request

import pytest

from tests.integration.harness import Harness
from tests.integration.procfs import alive, fds_of
from tests.integration.upgrade_helpers import Load, failures, listener_fd, upgrade
from tests.integration.waiting import wait_until
from tests.integration.workers import REPO, TIME_SERVER

HTTP_SERVER = str(REPO / "example" / "http_server")

ALIVE_HINT = "Is another einhorn running, or are workers of a killed master still alive?"
TCP_TIME_WAIT = "06"


def free_port() -> int:
    """A loopback port nothing listens on (bound and closed without a connection: no TIME_WAIT)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def time_wait_on(port: int) -> int:
    """Connections in TIME_WAIT whose local port is `port` (server side, IPv4)."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for r in rows if int(r[1].split(":")[1], 16) == port and r[3] == TCP_TIME_WAIT)


def ask_time(port: int) -> str:
    """One request to a time_server; the server closes first, so its end of the connection enters TIME_WAIT."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    return data.decode()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ERROR" in line]


# --- a port in use -----------------------------------------------------------------------------


def test_a_port_held_by_another_process_is_one_error_naming_its_pid(harness: Harness) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = int(holder.getsockname()[1])
        result = harness.run("-b", f"127.0.0.1:{port}", "--", "sleep", "30")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert f"Could not bind 127.0.0.1:{port}: address already in use, held by pid {os.getpid()} (" in errors[0]
    assert errors[0].endswith(ALIVE_HINT)
    assert harness.leftovers() == []


def test_a_port_held_by_a_master_and_then_by_its_orphaned_workers_names_them(harness: Harness) -> None:
    first = harness.start("-c", "web", "-n", "2", "-m", "manual", "-b", "127.0.0.1:0", program=[sys.executable, TIME_SERVER], workers=2)
    port = first.bound_port()
    workers = first.workers()

    second = harness.run("-b", f"127.0.0.1:{port}", "--", "sleep", "30")
    assert second.returncode != 0
    [error] = error_lines(second.stderr)
    holders = {int(pid): name for pid, name in re.findall(r"pid (\d+) \(([^)]*)\)", error)}
    assert set(holders) == {first.pid, *workers}, error
    assert holders[first.pid] == "einhorn: web"
    assert ALIVE_HINT in error

    first.proc.kill()  # a killed master (no -k): its workers keep the listening socket
    first.proc.wait()
    assert all(alive(pid) for pid in workers)
    third = harness.run("-b", f"127.0.0.1:{port}", "--", "sleep", "30")
    assert third.returncode != 0
    [error] = error_lines(third.stderr)
    assert set(map(int, re.findall(r"pid (\d+)", error))) == set(workers), error
    assert ALIVE_HINT in error


# --- the README's quick start, run twice in a row ------------------------------------------------


def readme_quick_start(port: int) -> tuple[list[str], list[str]]:
    """The README's quick-start einhorn command, on `port` and with this test's interpreter: (options, program)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Quick start") :]
    command = re.search(r"\.venv/bin/einhorn (.*)", section)
    assert command is not None, "no einhorn command in the README's quick start"
    words = shlex.split(command.group(1))
    options, program = words[: words.index("--")], words[words.index("--") + 1 :]
    assert "-b" in options and options[options.index("-b") + 1].startswith("127.0.0.1:8080")
    options = [word.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for word in options]
    program = [sys.executable if word == ".venv/bin/python" else str(REPO / word) if word.startswith("example/") else word for word in program]
    return options, program


def test_the_readme_quick_start_binds_with_r() -> None:
    options, _ = readme_quick_start(8080)
    assert options[options.index("-b") + 1] == "127.0.0.1:8080,r"


def test_the_readme_quick_start_starts_again_right_after_ctrl_c_with_connections_in_time_wait(harness: Harness) -> None:
    port = free_port()
    options, program = readme_quick_start(port)
    number = int(options[options.index("-n") + 1])

    first = harness.start(*options, program=program, workers=number)
    assert "pid=" in ask_time(port)
    first.send_signal(signal.SIGINT)  # ^C
    assert first.wait_exit() == 0
    assert time_wait_on(port) >= 1, "the test needs a connection in TIME_WAIT on the port"

    without_r = harness.run("-b", f"127.0.0.1:{port}", "--", "sleep", "30")
    assert without_r.returncode != 0  # so the TIME_WAIT really blocks a bind without ,r
    [error] = error_lines(without_r.stderr)
    assert "in TIME_WAIT" in error and f"-b 127.0.0.1:{port},r" in error, error

    second = harness.start(*options, program=program, workers=number)
    assert "pid=" in ask_time(port)
    second.send_signal(signal.SIGINT)
    assert second.wait_exit() == 0


# --- a correct worker makes no ERROR ----------------------------------------------------------------


def test_time_server_without_manual_ack_mode_makes_the_master_log_no_error(harness: Harness) -> None:
    master = harness.start("-v", "-n", "2", "-m", "0.1", "-b", "127.0.0.1:0", program=[sys.executable, TIME_SERVER], workers=2)
    master.wait_log(r"Received a manual ACK from \d+ in timer ACK mode", count=2)  # at -v (debug) only
    assert "ERROR" not in master.log()


# --- example/http_server: a socketserver worker through upgrades -------------------------------------


def http_get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


@pytest.mark.timeout(90)
def test_http_server_passes_five_upgrades_under_load_without_a_failed_request_or_an_old_worker_left(harness: Harness) -> None:
    master = harness.start("-n", "2", "-m", "manual", "-b", "127.0.0.1:0", program=[sys.executable, HTTP_SERVER], workers=2)
    port = master.bound_port()
    workers = master.wait_workers(2)
    answer = re.fullmatch(r"pid=(\d+) index=([01]) version=1\n", http_get(port))
    assert answer is not None and int(answer.group(1)) in workers

    load = Load(port, request=b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", threads=3, limit_seconds=40.0)
    load.start()
    old: set[int] = set()
    try:
        for command in ["upgrade", "upgrade_fleet", "upgrade", "upgrade_fleet", "upgrade"]:
            old |= set(workers)
            upgrade(master, command)
            workers = master.wait_workers(2, timeout=20)
            assert not old & set(workers)
            wait_until(lambda: not any(alive(pid) for pid in old), 20, "every old worker to exit")  # noqa: B023 - called at once
    finally:
        load.stop()
    answers = load.snapshot()
    print(f"\nhttp_server: {len(answers)} requests during 5 upgrades, {len(failures(answers))} failures")
    assert answers and failures(answers) == [], failures(answers)[:5]
    assert master.children() == workers
    assert "ERROR" not in master.log()


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


@pytest.mark.timeout(60)
def test_http_server_answers_a_request_in_flight_in_full_before_it_stops(harness: Harness) -> None:
    """SIGUSR2 while a request is being read: the answer is whole, then the worker exits.

    ThreadingHTTPServer's request threads are daemons, which server_close() does not wait
    for: the worker exited mid-answer (headers sent, body cut), a failure the five-upgrade
    test above showed once under load."""
    master = harness.start("-n", "1", "-m", "manual", "-b", "127.0.0.1:0", program=[sys.executable, HTTP_SERVER], workers=1)
    port = master.bound_port()
    (worker,) = master.wait_workers(1)
    listener = listener_fd(worker)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
        client.sendall(b"GET / HTTP/1.0\r\n")  # the first line only: its handler thread waits for the rest
        wait_until(lambda: threads_of(worker) >= 2, what="the request's handler thread")
        os.kill(worker, signal.SIGUSR2)
        wait_until(lambda: not alive(worker) or listener not in fds_of(worker), what="the worker to stop accepting")
        with contextlib.suppress(OSError):  # gone already (the defect): the read below says so
            client.sendall(b"Host: 127.0.0.1\r\n\r\n")
        data = b""
        with contextlib.suppress(OSError):
            while chunk := client.recv(4096):
                data += chunk
    assert re.search(rb"\r\n\r\npid=%d index=0 version=1\n\Z" % worker, data), data
    wait_until(lambda: not alive(worker), what="the worker to exit")
