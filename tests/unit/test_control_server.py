"""einhorn.io.control.CommandServer on a real UNIX socket, driven by hand.

One `Driver.wake_up` is one iteration of the master's loop: a select, its
callbacks, this wake-up's `requests()` (answered by a tiny fake core), `tick`.
The clock is a number the test moves, so graces and backoffs are exact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import socket
import uuid
from collections.abc import Iterator

import pytest

from einhorn import protocol
from einhorn.core.effects import LogLevel
from einhorn.core.events import WORKER_COMMANDS, CommandReceived, ConnectionClosed, Event, RequestUnparseable, command_name
from einhorn.framing import MAX_YAML
from einhorn.io import control
from einhorn.io.control import MAX_LINE, READ_SIZE, CommandServer, RestoredConnection
from einhorn.io.handoff import Descriptor
from einhorn.io.logs import Logger

REPLY_SIZE = 10_000
"""Bytes of the fake core's reply to `help`; every other command gets a short one."""


class RecordingLogger(Logger):
    def __init__(self) -> None:
        super().__init__(verbosity=0)
        self.lines: list[tuple[LogLevel, str]] = []

    def log(self, level: LogLevel, message: str) -> None:
        self.lines.append((level, message))

    def matching(self, text: str) -> list[str]:
        return [message for _, message in self.lines if text in message]


class Driver:
    def __init__(self, listener: socket.socket | None = None, **limits: object) -> None:
        self.address = "\0einhorn-test-" + uuid.uuid4().hex  # abstract: no file to clean up
        self.listener = listener or socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.address)
        self.listener.listen(128)
        self.selector = selectors.DefaultSelector()
        self.log = RecordingLogger()
        self.now = 100.0
        self.server = CommandServer(self.listener, self.selector, self.log, lambda: (self.now, 1e9), **limits)  # type: ignore[arg-type]
        self.handled: list[Event] = []
        self.clients: list[socket.socket] = []

    def connect(self) -> socket.socket:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(5)
        client.connect(self.address)
        self.clients.append(client)
        return client

    def wake_up(self, newest_first: bool = False) -> list[Event]:
        """One loop iteration; the requests it handled."""
        keys = [key for key, _ in self.selector.select(0)]
        if newest_first:
            keys.sort(key=lambda key: key.fd, reverse=True)
        for key in keys:
            key.data()
        handled = []
        for event in self.server.requests():
            handled.append(event)
            self.answer(event)
        self.server.tick()
        self.handled += handled
        return handled

    def settle(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            self.wake_up()

    def answer(self, event: Event) -> None:
        """The fake core: short replies, a long one to `help`, and a closed connection after an ACK."""
        if isinstance(event, RequestUnparseable):
            self.server.send(event.conn, {"message": "Could not parse command"})
        elif isinstance(event, CommandReceived):
            command = command_name(event.request)
            if command in WORKER_COMMANDS:
                self.server.close(event.conn)
            else:
                text = "h" * REPLY_SIZE if command == "help" else f"{command} done"
                self.server.send(event.conn, {"message": text, "request_id": event.request.get("id")})

    def commands(self, conn_id: int | None = None) -> list[object]:
        return [
            e.request.get("id") or e.request.get("command")
            for e in self.handled
            if isinstance(e, CommandReceived) and (conn_id is None or e.conn == conn_id)
        ]

    def conn_of(self, client: socket.socket) -> int:
        """The server's id for the connection of `client` (matched by the socket pair's inode... by name)."""
        mine = client.getsockname()
        for conn in self.server.connections.values():
            if conn.sock.getpeername() == mine:
                return conn.id
        raise AssertionError("not connected")

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.server.shutdown()
        self.selector.close()


@pytest.fixture
def driver() -> Iterator[Driver]:
    d = Driver()
    yield d
    d.close()


def bind_client(client: socket.socket) -> socket.socket:
    """Give a client socket a name of its own (abstract), so the server side can be told apart."""
    client.bind("\0einhorn-client-" + uuid.uuid4().hex)
    return client


def line(command: str, **extra: object) -> bytes:
    return json.dumps({"command": command, **extra}).encode() + b"\n"


def replies(client: socket.socket) -> list[dict[str, object]]:
    """Every whole reply line that has arrived so far."""
    data = b""
    client.setblocking(False)
    try:
        while chunk := client.recv(1 << 20):
            data += chunk
    except BlockingIOError:
        pass
    finally:
        client.settimeout(5)
    return [json.loads(raw) for raw in data.split(b"\n") if raw]


def connect_named(driver: Driver) -> socket.socket:
    client = bind_client(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    client.settimeout(5)
    client.connect(driver.address)
    driver.clients.append(client)
    driver.wake_up()  # accepted
    return client


# --- the admin cap and the ACK path ----------------------------------------------------


def test_worker_acks_are_taken_with_every_admin_slot_taken() -> None:
    driver = Driver(max_connections=2)
    try:
        admins = [connect_named(driver) for _ in range(2)]
        for admin in admins:
            admin.sendall(line("ehlo"))
        driver.settle(3)
        ackers = [connect_named(driver) for _ in range(5)]
        for pid, acker in enumerate(ackers):
            acker.sendall(line("worker:ack", pid=1000 + pid))
        one_more = connect_named(driver)
        one_more.sendall(line("ehlo", id="late"))
        driver.settle(3)
        acked = [e.request["pid"] for e in driver.handled if isinstance(e, CommandReceived) and e.request["command"] == "worker:ack"]
        assert set(acked) == {1000, 1001, 1002, 1003, 1004} and len(acked) == 5
        assert all(replies(acker) == [] and acker.recv(10) == b"" for acker in ackers)  # closed, no reply
        assert replies(one_more) == [{"message": "Too many connections (2 open); try again later"}]
        assert "late" not in driver.commands()
        assert driver.log.matching("Refusing command connections: 2 already open")
    finally:
        driver.close()


def test_an_ack_carries_its_peer_and_the_peers_ancestry(driver: Driver) -> None:
    acker = connect_named(driver)
    acker.sendall(line("worker:ack", pid=5))
    driver.settle(2)
    (ack,) = driver.handled
    assert isinstance(ack, CommandReceived) and ack.peer_pid == os.getpid()
    assert ack.peer_ancestors is not None and ack.peer_ancestors[:1] == (os.getppid(),)


def test_the_admin_cap_does_not_count_a_peer_that_has_gone() -> None:
    driver = Driver(max_connections=1)
    try:
        leaving = connect_named(driver)
        newcomer = connect_named(driver)
        leaving.sendall(b"".join(line("ehlo", id=f"a{n}") for n in range(20)))
        driver.wake_up()  # read: its 20 requests are queued, and it is not read again until they are handled
        leaving.shutdown(socket.SHUT_WR)  # gone, but its end of file is not read yet
        newcomer.sendall(line("ehlo", id="b"))
        driver.settle(5)
        assert replies(newcomer) == [{"message": "ehlo done", "request_id": "b"}]
        assert [r["request_id"] for r in replies(leaving)] == [f"a{n}" for n in range(20)]  # and it got all its replies
    finally:
        driver.close()


# --- fairness -----------------------------------------------------------------------------


def test_a_request_is_answered_in_the_first_wake_up_beside_a_connection_with_1000_queued(driver: Driver) -> None:
    busy = connect_named(driver)
    other = connect_named(driver)
    busy.sendall(b"".join(line("ehlo", id=f"busy{n}") for n in range(1000)))
    other.sendall(line("ehlo", id="other"))
    handled = driver.wake_up()
    ids = [e.request.get("id") for e in handled if isinstance(e, CommandReceived)]
    assert "other" in ids[: control.REQUESTS_PER_CONNECTION + 1] and len(ids) <= control.REQUESTS_PER_WAKEUP
    assert replies(other) == [{"message": "ehlo done", "request_id": "other"}]
    driver.settle(400)
    assert driver.commands(driver.conn_of(busy)) == [f"busy{n}" for n in range(1000)]  # all, in order


def test_each_wake_up_handles_a_bounded_number_of_requests(driver: Driver) -> None:
    clients = [connect_named(driver) for _ in range(20)]
    for n, client in enumerate(clients):
        client.sendall(b"".join(line("ehlo", id=f"{n}-{k}") for k in range(20)))
    for _ in range(3):
        driver.wake_up()
    per_wake_up = [len(driver.wake_up()) for _ in range(3)]
    assert max(per_wake_up) == control.REQUESTS_PER_WAKEUP
    driver.settle(20)
    assert len(driver.handled) == 400


# --- backpressure -------------------------------------------------------------------------


def test_a_client_that_never_reads_is_held_back_then_dropped_with_its_queued_requests() -> None:
    driver = Driver(max_output=4096, stall_grace=3.0)
    try:
        greedy = connect_named(driver)
        polite = connect_named(driver)
        greedy.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            for n in range(2000):
                greedy.send(line("help", id=f"g{n}"))
        driver.settle(200)
        conn = driver.server.connections[driver.conn_of(greedy)]
        taken = len(driver.commands(conn.id))
        assert taken < 2000 and conn.output and len(conn.output) < 4096 + REPLY_SIZE + 100
        assert len(conn.queue) <= READ_SIZE // 20
        driver.settle(50)
        assert len(driver.commands(conn.id)) == taken  # held back: nothing more read or handled
        polite.sendall(line("ehlo", id="p"))
        driver.settle(2)
        assert replies(polite) == [{"message": "ehlo done", "request_id": "p"}]  # others are served meanwhile
        driver.now += 3.0
        driver.wake_up()
        assert conn.id not in driver.server.connections
        assert driver.server.take_closed()[-1] == ConnectionClosed(conn.id, driver.now)
        (dropped,) = driver.log.matching("is not reading its replies")
        assert f"[client {conn.id}]" in dropped and "dropping it and" in dropped
        driver.settle(5)
        assert len(driver.commands(conn.id)) == taken  # its queued requests were discarded
        assert driver.server.total_output == 0
    finally:
        driver.close()


def test_a_client_held_back_is_served_again_once_it_reads() -> None:
    driver = Driver(max_output=4096, stall_grace=3.0)
    try:
        slow = connect_named(driver)
        slow.sendall(b"".join(line("help", id=f"s{n}") for n in range(300)))
        driver.settle(100)
        assert len(driver.commands()) < 300
        received: list[dict[str, object]] = []
        for _ in range(2000):
            received += replies(slow)
            driver.wake_up()
            driver.now += 0.01  # 20 s in all: the client drains, so no grace runs out
            if len(received) == 300:
                break
        assert [r["request_id"] for r in received] == [f"s{n}" for n in range(300)]
        assert not driver.log.matching("is not reading its replies")
    finally:
        driver.close()


def test_the_total_unsent_output_is_bounded() -> None:
    driver = Driver(max_output=1 << 20, max_total_output=64 * 1024)
    try:
        greedy = [connect_named(driver) for _ in range(6)]
        for client in greedy:
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                for n in range(500):
                    client.send(line("help", id=f"{n}"))
        worst = 0
        for _ in range(300):
            driver.wake_up()
            worst = max(worst, driver.server.total_output)
        assert 64 * 1024 <= worst <= 64 * 1024 + len(greedy) * (REPLY_SIZE + 100)
        polite = connect_named(driver)
        polite.sendall(line("ehlo", id="p"))
        driver.settle(2)
        assert replies(polite) == [{"message": "ehlo done", "request_id": "p"}]  # nothing unsent: still served
    finally:
        driver.close()


def test_what_crosses_a_re_exec_is_bounded() -> None:
    driver = Driver(max_output=4096)
    try:
        flooder = connect_named(driver)
        flooder.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            for n in range(50_000):
                flooder.send(line("help", id=f"{n}"))
        driver.settle(100)
        (descriptor,) = [d for d in driver.server.descriptors() if d.kind == control.CONNECTION]
        restored = RestoredConnection.of(descriptor)
        assert len(restored.unread) <= READ_SIZE + MAX_LINE
        assert 0 < len(restored.unsent) < 4096 + REPLY_SIZE + 100
        assert restored.role == "admin" and not restored.trusted
    finally:
        driver.close()


# --- one connection's own lines ---------------------------------------------------------------


@pytest.mark.parametrize("odd", [{"a": 1}, [1], [[1]]])
def test_a_command_that_is_not_a_string_is_passed_on_first_or_later(driver: Driver, odd: object) -> None:
    """Unhashable values once crashed the master where a connection is given its role (the fuzzer found it)."""
    first, later = driver.connect(), driver.connect()
    first.sendall(json.dumps({"command": odd, "id": "first"}).encode() + b"\n")
    later.sendall(line("ehlo", id="role") + json.dumps({"command": odd, "id": "later"}).encode() + b"\n")
    driver.settle(5)
    assert sorted(map(str, driver.commands())) == ["first", "later", "role"]
    assert [r["request_id"] for r in replies(first)] == ["first"]


def test_a_bug_reading_one_request_closes_that_connection_and_the_server_goes_on(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    parse = protocol.parse_message

    def broken_on_boom(line: bytes, max_yaml: int) -> object:
        if b"boom" in line:
            raise RuntimeError("a bug")
        return parse(line, max_yaml=max_yaml)

    monkeypatch.setattr(protocol, "parse_message", broken_on_boom)
    victim, bystander = driver.connect(), driver.connect()
    victim.sendall(line("boom"))
    bystander.sendall(line("ehlo", id="fine"))
    driver.settle(5)
    assert victim.recv(100) == b""
    assert [r["request_id"] for r in replies(bystander)] == ["fine"]
    (logged,) = driver.log.matching("Bug while reading a request")
    assert "RuntimeError: a bug" in logged


def test_lines_after_a_worker_ack_are_discarded(driver: Driver) -> None:
    acker = connect_named(driver)
    acker.sendall(line("worker:ack", pid=7) + line("ehlo", id="after"))
    driver.settle(3)
    assert driver.commands() == ["worker:ack"]
    assert acker.recv(100) == b""


def test_a_yaml_request_too_long_gets_a_reply_and_the_connection_goes_on(driver: Driver) -> None:
    client = connect_named(driver)
    client.sendall(b"command: ehlo%0Auser: " + b"a" * MAX_YAML + b"\n" + line("ehlo", id="next"))
    driver.settle(3)
    first, second = replies(client)
    assert first["message"] == f"Request too long for YAML (a document that is not JSON may be at most {MAX_YAML} characters; send JSON)"
    assert second == {"message": "ehlo done", "request_id": "next"}


def test_a_line_too_long_gets_a_reply_and_closes_that_connection(driver: Driver) -> None:
    client = connect_named(driver)
    client.sendall(b"x" * (MAX_LINE + 10))
    driver.settle(10)
    assert replies(client) == [{"message": f"Request too long (limit {MAX_LINE} bytes)"}]
    assert client.recv(10) == b""


def test_a_client_that_sends_and_half_closes_gets_its_replies(driver: Driver) -> None:
    client = connect_named(driver)
    client.sendall(line("ehlo", id="1") + line("ehlo", id="2"))
    client.shutdown(socket.SHUT_WR)
    driver.settle(3)
    assert [r["request_id"] for r in replies(client)] == ["1", "2"]
    assert client.recv(10) == b""
    assert driver.server.connections == {}


# --- re-exec ------------------------------------------------------------------------------------


def test_a_restored_connection_keeps_its_role_and_trust() -> None:
    conn = RestoredConnection(4, 11, b"a", b"b", trusted=True, role="worker")
    assert RestoredConnection.of(conn.descriptor()) == conn
    legacy = Descriptor(control.CONNECTION, 11, {"id": 4, "unread": "a", "unsent": "b"})
    assert RestoredConnection.of(legacy) == RestoredConnection(4, 11, b"a", b"b", False, "unknown")
    with pytest.raises(ValueError, match="malformed"):
        RestoredConnection.of(Descriptor(control.CONNECTION, 11, {"id": 4, "unread": "", "unsent": "", "role": "boss"}))


# --- running out of descriptors ------------------------------------------------------------------


class ExhaustedListener(socket.socket):
    """A real listening socket whose accept fails with EMFILE while `exhausted` is set."""

    exhausted = True
    attempts = 0

    def accept(self) -> tuple[socket.socket, object]:
        type(self).attempts += 1
        if type(self).exhausted:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_accept_at_the_descriptor_limit_backs_off_logs_once_per_period_and_resumes() -> None:
    ExhaustedListener.exhausted, ExhaustedListener.attempts = True, 0
    driver = Driver(listener=ExhaustedListener(socket.AF_UNIX, socket.SOCK_STREAM))
    try:
        waiting = driver.connect()  # stays in the backlog while accept fails
        start = driver.now
        for _ in range(300):  # 30 s of wake-ups, every 0.1 s
            driver.wake_up()
            driver.now += 0.1
        # 0.05, 0.1, 0.2, 0.4, 0.8, then every 1 s: about 33 attempts in 30 s, not one per wake-up
        assert 25 <= ExhaustedListener.attempts <= 40
        logged = [m for _, m in driver.log.lines if "accept command connections" in m]
        assert logged[0] == "Cannot accept command connections: Too many open files; trying again with a backoff of up to 1s"
        assert len(logged) == 1 + int((driver.now - start) // control.ACCEPT_REPORT_PERIOD)
        assert all(m.startswith("Still cannot accept command connections: Too many open files (") for m in logged[1:])
        ExhaustedListener.exhausted = False
        driver.now += 1.0
        driver.wake_up()
        driver.wake_up()
        waiting.sendall(line("ehlo", id="w"))
        driver.settle(3)
        assert replies(waiting) == [{"message": "ehlo done", "request_id": "w"}]
        assert driver.log.matching("Accepting command connections again after")
    finally:
        driver.close()


def test_beyond_max_open_new_clients_wait_in_the_backlog() -> None:
    driver = Driver(max_open=3)
    try:
        held = [connect_named(driver) for _ in range(3)]
        waiting = driver.connect()
        driver.settle(3)
        assert len(driver.server.connections) == 3
        waiting.sendall(line("ehlo", id="w"))
        driver.settle(3)
        assert replies(waiting) == []
        held[0].close()
        driver.settle(3)
        assert replies(waiting) == [{"message": "ehlo done", "request_id": "w"}]
    finally:
        driver.close()


# --- large replies ----------------------------------------------------------------------


def test_a_large_reply_is_taken_by_the_kernel_in_one_write(driver: Driver) -> None:
    """A `state` of 1000 workers (350 KB) leaves nothing for a later wake-up, even before the client reads."""
    client = connect_named(driver)
    conn = driver.conn_of(client)
    reply = b'{"message": "' + b"x" * 400_000 + b'"}\n'
    driver.server.send_line(conn, reply)
    assert driver.server.unsent(conn) == 0
    received = b""
    while not received.endswith(b"\n"):
        received += client.recv(1 << 20)
    assert received == reply


def test_a_small_reply_leaves_the_kernel_buffer_as_it_was(driver: Driver) -> None:
    client = connect_named(driver)
    conn = driver.conn_of(client)
    sock = driver.server.connections[conn].sock
    before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    driver.server.send(conn, {"message": "x" * 1000})
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == before
    assert replies(client) == [{"message": "x" * 1000}]
