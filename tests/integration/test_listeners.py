"""Every listener kind on a real master: UNIX stream sockets (the stale-file dance, across upgrades,
removed at exit) and IPv6 (loopback, the dual-stack wildcard, v6only)."""

from __future__ import annotations

import os
import socket
import stat
import sys
from pathlib import Path

import pytest

from tests.integration.harness import Harness, Master
from tests.integration.procfs import environ_of
from tests.integration.upgrade_helpers import unix_listener_inode, upgrade
from tests.integration.waiting import wait_until
from tests.integration.workers import REPO

HTTP_SERVER = [sys.executable, str(REPO / "example" / "http_server")]
REQUEST = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"


def http_get(family: socket.AddressFamily, address: str | tuple[str, int]) -> str:
    """One HTTP/1.0 GET; the body (`pid=... index=... version=...`)."""
    with socket.socket(family, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(address)
        conn.sendall(REQUEST)
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), data
    return body.decode()


def answering_pids(family: socket.AddressFamily, address: str | tuple[str, int], expected: set[int]) -> set[int]:
    """Send requests until every pid in `expected` has answered one (at most 300 requests)."""
    seen: set[int] = set()
    for _ in range(300):
        seen.add(int(http_get(family, address).split()[0].removeprefix("pid=")))
        if expected <= seen:
            break
    return seen


def listeners(master: Master) -> list[dict[str, object]]:
    shown = master.state()["listeners"]
    assert isinstance(shown, list)
    return shown


@pytest.mark.timeout(120)
def test_a_unix_listener_from_stale_file_to_exit(harness: Harness) -> None:
    path = harness.directory / "app.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
        crashed.bind(str(path))  # a socket file nobody listens on: what a killed server leaves
    master = harness.start("-n", "3", "-m", "manual", "-b", f"unix:{path},mode=0660", program=HTTP_SERVER, workers=3)
    master.wait_log(f"Removing the stale socket file {path}")
    assert listeners(master) == [{"family": "AF_UNIX", "address": str(path), "name": None, "accepting": True}]
    assert master.state()["bound_ports"] == [None]
    assert stat.S_IMODE(path.lstat().st_mode) == 0o660
    inode = path.lstat().st_ino
    listening = unix_listener_inode(str(path))
    workers = master.wait_workers(3)
    env = environ_of(workers[0])
    assert (env["EINHORN_FD_FAMILY_0"], env["EINHORN_FDS"]) == ("AF_UNIX", env["EINHORN_FD_0"])
    assert answering_pids(socket.AF_UNIX, str(path), set(workers)) == set(workers)

    refused = harness.run("-d", str(harness.directory / "other.sock"), "-b", f"unix:{path}", "--", "sleep", "30")
    assert refused.returncode == 1 and f"another process is listening on {path}" in refused.stderr

    for version in (1, 2, 3):
        upgrade(master)
        new = master.wait_workers(3)
        assert all(master.workers()[pid]["version"] == version for pid in new)
        assert path.lstat().st_ino == inode and unix_listener_inode(str(path)) == listening  # the same file and socket
        assert answering_pids(socket.AF_UNIX, str(path), set(new)) == set(new)

    os.kill(master.pid, 2)
    assert master.wait_exit() == 0
    assert not path.exists()


def test_a_non_socket_file_is_never_removed(harness: Harness) -> None:
    path = harness.directory / "data"
    path.write_text("precious")
    result = harness.run("-d", str(harness.directory / "s.sock"), "-b", str(path), "--", "sleep", "30")
    assert result.returncode == 1 and f"{path} exists and is not a socket" in result.stderr
    assert path.read_text() == "precious"


def ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        pytest.skip(f"the kernel gives no IPv6 loopback here: {error}")


def test_ipv6_loopback_and_the_dual_stack_wildcard(harness: Harness) -> None:
    ipv6_loopback()
    master = harness.start(
        "-n", "2", "-m", "manual", "-b", "[::1]:0", "-b", "[::]:0", "-b", "[::]:0,v6only", program=HTTP_SERVER, workers=2
    )
    shown = listeners(master)
    assert [x["family"] for x in shown] == ["AF_INET6"] * 3
    ports = master.state()["bound_ports"]
    assert isinstance(ports, list)
    assert [x["address"] for x in shown] == [f"[::1]:{ports[0]}", f"[::]:{ports[1]}", f"[::]:{ports[2]}"]
    workers = set(master.wait_workers(2))
    assert environ_of(min(workers))["EINHORN_FD_FAMILY_0"] == "AF_INET6"
    assert answering_pids(socket.AF_INET6, ("::1", ports[0]), workers) == workers  # every worker serves the first listener
    # The example serves its first listener only; the kernel completes connections to the others.
    assert connects(socket.AF_INET6, ("::1", ports[1])) and connects(socket.AF_INET, ("127.0.0.1", ports[1]))  # dual stack
    assert connects(socket.AF_INET6, ("::1", ports[2])) and not connects(socket.AF_INET, ("127.0.0.1", ports[2]))  # v6only


def connects(family: socket.AddressFamily, address: tuple[str, int]) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        return client.connect_ex(address) == 0


def test_every_listener_kind_reaches_the_workers_with_its_family(harness: Harness) -> None:
    path = harness.directory / "w.sock"
    master = harness.start("-n", "1", "-m", "0.1", "-b", "127.0.0.1:0", "-b", str(path), workers=1)
    (pid,) = master.wait_workers(1)
    env = environ_of(pid)
    assert [env["EINHORN_FD_FAMILY_0"], env["EINHORN_FD_FAMILY_1"]] == ["AF_INET", "AF_UNIX"]
    assert env["EINHORN_FDS"] == f"{env['EINHORN_FD_0']} {env['EINHORN_FD_1']}"
    wait_until(lambda: Path(f"/proc/{pid}/fd/{env['EINHORN_FD_1']}").exists(), 5, "the UNIX listener in the worker")
