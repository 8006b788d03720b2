"""einhorn.io.notify: the `-m notify` socket as the shell reads it (credentials, MAINPID, barriers) and the
supervisor's sender."""

from __future__ import annotations

import array
import os
import socket
from pathlib import Path

import pytest

from einhorn.core.events import WorkerNotified
from einhorn.io.logs import Logger
from einhorn.io.notify import NotifyServer, Supervisor, descends_from, parse_notification
from einhorn.io.sockets import SetupError

LOG = Logger(verbosity=2)


def test_parse_notification() -> None:
    assert parse_notification(b"READY=1\nSTATUS=a=b c\n\nnonsense\n=x") == {"READY": "1", "STATUS": "a=b c"}


def test_descends_from() -> None:
    assert descends_from(os.getpid(), os.getppid())
    assert not descends_from(os.getppid(), os.getpid())
    assert not descends_from(2**22 + 12345, os.getpid())  # no such process


def send(path: str, payload: bytes, fds: list[int] | None = None) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        sock.sendmsg([payload], ancillary, 0, path)


def test_a_datagram_becomes_an_event_with_the_senders_pid(tmp_path: Path) -> None:
    server = NotifyServer.open(str(tmp_path / "n"), LOG)
    try:
        assert (tmp_path / "n").stat().st_mode & 0o777 == 0o600
        send(server.path, b"READY=1\nSTATUS=up")
        (event,) = server.read()
        assert isinstance(event, WorkerNotified) and event.pid == os.getpid() and dict(event.fields) == {"READY": "1", "STATUS": "up"}
        assert server.read() == []
    finally:
        server.close()


def test_a_barrier_is_answered_by_closing_its_fd_and_reports_nothing(tmp_path: Path) -> None:
    server = NotifyServer.open(str(tmp_path / "n"), LOG)
    read_end, write_end = os.pipe()
    try:
        send(server.path, b"BARRIER=1", [write_end])
        os.close(write_end)  # ours; the master holds the copy it received
        assert server.read() == []
        assert os.read(read_end, 1) == b""  # EOF: every copy of the write end is closed
    finally:
        os.close(read_end)
        server.close()


def test_mainpid_is_taken_only_from_a_descendant(tmp_path: Path) -> None:
    server = NotifyServer.open(str(tmp_path / "n"), LOG)
    go_read, go_write = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            try:
                send(server.path, f"READY=1\nMAINPID={os.getppid()}".encode())  # a child speaks for its parent
                os.read(go_read, 1)  # alive until the parent has read it: /proc must show the ancestry
            finally:
                os._exit(0)
        events: list[object] = []
        while not events:
            events = list(server.read())
        send(server.path, f"READY=1\nMAINPID={pid}".encode())  # the parent is no descendant of the child
        events += server.read()
        os.write(go_write, b"x")
        os.waitpid(pid, 0)
        assert [e.pid for e in events if isinstance(e, WorkerNotified)] == [os.getpid(), os.getpid()]
    finally:
        for fd in (go_read, go_write):
            os.close(fd)
        server.close()


@pytest.mark.parametrize("mainpid", ["\u00b2", "\u0661\u0662\u0663", "9" * 5000, "-1", "", "1e3"])
def test_a_mainpid_that_is_no_pid_is_ignored(tmp_path: Path, mainpid: str) -> None:
    server = NotifyServer.open(str(tmp_path / "n"), LOG)
    try:
        send(server.path, f"READY=1\nMAINPID={mainpid}".encode())
        events: list[object] = []
        while not events:
            events = list(server.read())
        assert [(e.pid, e.fields["READY"]) for e in events if isinstance(e, WorkerNotified)] == [(os.getpid(), "1")]
    finally:
        server.close()


def test_a_stale_notify_socket_is_replaced_and_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as old:
        old.bind(str(path))
    NotifyServer.open(str(path), LOG).close()
    path.unlink()
    path.write_text("x")
    with pytest.raises(SetupError, match="exists and is not a socket"):
        NotifyServer.open(str(path), LOG)


def test_the_supervisor_gets_one_datagram_per_notification(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(tmp_path / "sd"))
        supervisor = Supervisor(str(tmp_path / "sd"), LOG)
        supervisor.send((("READY", "1"), ("STATUS", "2/2 workers ACKed")))
        assert systemd.recv(4096) == b"READY=1\nSTATUS=2/2 workers ACKed"
        supervisor.close()
    abstract = Supervisor("@einhorn-test", LOG)
    assert abstract.address == "\0einhorn-test"
    abstract.send((("WATCHDOG", "1"),))  # nobody listens: logged, not raised
    abstract.close()
