"""`-b ...,drain` on a real master: each generation's workers get a socket of their own at the listener's fd
number, and those sockets cross the master's re-exec (the core's steering itself is tested in einhorn/core)."""

from __future__ import annotations

import sys

import pytest

from tests.integration.harness import Harness, Master
from tests.integration.procfs import fds_of
from tests.integration.upgrade_helpers import listener_fd, upgrade

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drain is Linux's SO_ATTACH_REUSEPORT_CBPF")

O_CLOEXEC = 0o2000000


def sockets_by_version(master: Master) -> dict[int, set[str]]:
    """version -> the sockets (`socket:[INODE]`) its workers hold at the listener's fd number."""
    found: dict[int, set[str]] = {}
    for pid, child in master.workers().items():
        version = child["version"]
        assert isinstance(version, int)
        found.setdefault(version, set()).add(fds_of(pid)[listener_fd(pid)])
    return found


def close_on_exec(pid: int, fd: int) -> bool:
    with open(f"/proc/{pid}/fdinfo/{fd}") as info:
        flags = next(line for line in info if line.startswith("flags:"))
    return bool(int(flags.split()[1], 8) & O_CLOEXEC)


@pytest.mark.timeout(120)
def test_each_generation_gets_its_own_socket_and_keeps_it_across_a_reexec(harness: Harness) -> None:
    master = harness.start("-n", "2", "-m", "0.1", "-b", "127.0.0.1:0,drain", workers=2)
    shown = master.state()["listeners"]
    assert isinstance(shown, list) and shown[0]["drain"] is True
    first = sockets_by_version(master)
    [(old_version, [original])] = [(v, sorted(s)) for v, s in first.items()]
    workers = master.wait_workers(2)
    fd = listener_fd(workers[0])
    assert fds_of(master.pid)[fd] == original  # the first generation: the listener itself, as without drain

    upgrade(master)  # a re-exec, then the new generation's workers on a socket of their own
    master.wait_workers(2)
    second = sockets_by_version(master)
    [(new_version, [own])] = [(v, sorted(s)) for v, s in second.items() if v != old_version]
    assert own != original
    held = {target: n for n, target in fds_of(master.pid).items()}
    assert held[original] == fd and close_on_exec(master.pid, held[own])  # (a worker gets it by dup2 only)

    upgrade(master)  # this re-exec must hand the second generation's socket over
    master.wait_workers(2)
    third = sockets_by_version(master)
    [(_, [newest])] = [(v, sorted(s)) for v, s in third.items() if v not in (old_version, new_version)]
    assert newest not in (original, own)
    held = {target: n for n, target in fds_of(master.pid).items()}
    assert original in held and own in held, f"the sockets did not cross the re-exec: {held}\n{master.log()}"
    assert not close_on_exec(master.pid, held[original]) and close_on_exec(master.pid, held[own])
    assert "nothing here adopts it" not in master.log()


def test_drain_on_a_unix_or_systemd_listener_is_refused(harness: Harness) -> None:
    for bind, what in ((f"unix:{harness.directory / 'app.sock'}", "a UNIX socket"), ("systemd", "systemd's sockets")):
        result = harness.run("-d", str(harness.directory / "s.sock"), "-b", f"{bind},drain", "--", "sleep", "30")
        assert result.returncode == 1, result
        assert f"drain is for TCP addresses only (einhorn binds one socket per generation on the address), and this is {what}" in result.stderr
