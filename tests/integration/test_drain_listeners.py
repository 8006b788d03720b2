"""`-b ...,drain` on a real master: each generation's workers get a socket of their own at the listener's fd
number, and those sockets cross the master's re-exec (the core's steering itself is tested in einhorn/core)."""

from __future__ import annotations

import sys

import pytest

from tests.integration.harness import Harness, Master
from tests.integration.procfs import fds_of
from tests.integration.upgrade_helpers import listener_fd, upgrade
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drain is Linux's SO_ATTACH_REUSEPORT_CBPF")

O_CLOEXEC = 0o2000000


def sockets_by_version(master: Master) -> dict[int, set[str]]:
    """version -> the sockets (`socket:[INODE]`) its workers hold at the listener's fd number (a worker
    that exits meanwhile is left out)."""
    found: dict[int, set[str]] = {}
    for pid, child in master.workers().items():
        version = child["version"]
        assert isinstance(version, int)
        try:
            held = fds_of(pid)[listener_fd(pid)]
        except (OSError, KeyError):
            continue
        found.setdefault(version, set()).add(held)
    return found


def close_on_exec(pid: int, fd: int) -> bool:
    with open(f"/proc/{pid}/fdinfo/{fd}") as info:
        flags = next(line for line in info if line.startswith("flags:"))
    return bool(int(flags.split()[1], 8) & O_CLOEXEC)


@pytest.mark.timeout(120)
def test_each_generation_gets_its_own_socket_keeps_it_across_a_reexec_and_frees_it_at_its_end(harness: Harness) -> None:
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

    replies = [str(r.get("message")) for r in master.command("reload", timeout=30)]  # a re-exec, the same generation
    assert replies[-1] == "Reload done", replies
    held = {target: n for n, target in fds_of(master.pid).items()}
    assert original in held and own in held, f"the sockets did not cross the re-exec: {held}\n{master.log()}"
    assert not close_on_exec(master.pid, held[original]) and close_on_exec(master.pid, held[own])
    assert sockets_by_version(master) == {new_version: {own}}  # its workers kept it, as the master did
    assert "nothing here adopts it" not in master.log()

    upgrade(master)  # the first generation is gone: its socket, the listener's own, serves the next one
    wait_until(lambda: set(sockets_by_version(master)) == {new_version + 1}, 30, "only the third generation's workers")
    assert sockets_by_version(master) == {new_version + 1: {original}}
    wait_until(lambda: own not in fds_of(master.pid).values(), 30, "the second generation's socket to be closed")


def test_drain_on_a_unix_or_systemd_listener_is_refused(harness: Harness) -> None:
    for bind, what in ((f"unix:{harness.directory / 'app.sock'}", "a UNIX socket"), ("systemd", "systemd's sockets")):
        result = harness.run("-d", str(harness.directory / "s.sock"), "-b", f"{bind},drain", "--", "sleep", "30")
        assert result.returncode == 1, result
        assert f"drain is for TCP addresses only (einhorn binds one socket per generation on the address), and this is {what}" in result.stderr
