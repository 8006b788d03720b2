"""The command server: accepts connections, frames requests and replies (BEHAVIOR §6).

It decides nothing about requests: each complete line becomes a
`CommandReceived` (or `RequestUnparseable`) event for the core, and replies are
whatever the core orders. What it enforces is the channel's safety and
fairness, so that no client can stall the master:

- Only the master's own user (or root) may talk to it (SO_PEERCRED).
- Lines, YAML requests, reads and buffers are bounded.
- Requests are taken round-robin (`requests`): at most a few per connection
  and a bounded number (and time) per wake-up, so one client cannot starve the
  others, the ACK path, signals or reaping.
- Backpressure: a connection whose unsent replies reach `max_output`, or one
  with any reply unsent while all of them together reach `max_total_output`,
  is neither read nor served until it drains; one that stays so for
  `stall_grace` seconds is dropped, its queued requests discarded.
- Admin connections are capped (`max_connections`), counting only live ones.
  A connection's role is known from its first line, and the cap is applied
  then: a worker's `worker:ack`/`worker:ping` (one line, then the master
  closes) is never refused for lack of admin slots. A separate budget at
  accept time would need to know who is a worker before anything is read,
  which only the first line tells (a worker's helper process may ACK for it).
  Connections not yet known hold only an fd; all connections together are
  bounded by `max_open`, beyond which the listener is not selected and new
  clients wait in its backlog.
- When accept fails for lack of descriptors or memory (EMFILE, ENFILE,
  ENOBUFS, ENOMEM), the listener is not selected for a backoff that doubles up
  to `ACCEPT_BACKOFF_MAX`; it is logged once when it starts, once per
  `ACCEPT_REPORT_PERIOD` with the count while it lasts, and once when
  accepting works again.

The loop asks `next_wakeup` when the server needs it back (requests waiting,
a backoff or a grace ending) and calls `tick` after every wake-up.
"""

from __future__ import annotations

import array
import enum
import errno
import os
import select
import selectors
import socket
from collections import deque
from collections.abc import Callable, Iterator, Mapping

from einhorn import framing, protocol
from einhorn.core.commands import ConfigDocumentError
from einhorn.core.events import WORKER_COMMANDS, CommandReceived, ConnectionClosed, Event, RequestUnparseable, command_name
from einhorn.core.record import dataclass, field
from einhorn.io.handoff import Descriptor, Handoff
from einhorn.io.logs import Logger, current_traceback

MAX_CONNECTIONS = 256
"""Live admin connections (any request but `worker:ack`/`worker:ping`)."""
MAX_OPEN = 1024
"""All connections but the master's own `-g` worker sockets: beyond, new clients wait in the backlog."""
MAX_LINE = 64 * 1024
MAX_OUTPUT = 1024 * 1024
"""Unsent bytes of one connection at which it is no longer read or served until it drains."""
MAX_TOTAL_OUTPUT = 8 * 1024 * 1024
"""Unsent bytes of all connections at which only connections with nothing unsent are served."""
STALL_GRACE = 5.0
"""Seconds a connection may stay held back by its unsent replies before it is dropped."""
READ_SIZE = 16 * 1024
"""One read per connection, and only once its queued requests are handled."""
LARGE_REPLY = 128 * 1024
"""A reply at least this long makes its connection's kernel buffer large enough to take it at once."""
"""One read per connection, and only once its queued requests are handled."""
REQUESTS_PER_CONNECTION = 8
REQUESTS_PER_WAKEUP = 64
REQUEST_TIME_PER_WAKEUP = 0.01
"""Seconds of request handling per wake-up, after which the rest waits for the next one."""
ACCEPTS_PER_WAKEUP = 64
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 1.0
ACCEPT_REPORT_PERIOD = 10.0
MAX_ANCESTORS = 32

_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PEERCRED_SIZE = 3 * array.array("i").itemsize
"""struct ucred: pid, uid, gid (C ints; `array`, which `socket` imports, rather than `struct`, which an idle master need not hold)."""
_PEER_GONE = select.POLLHUP | select.POLLRDHUP | select.POLLERR


class Role(enum.Enum):
    UNKNOWN = "unknown"
    """No complete line yet."""
    ADMIN = "admin"
    """Sent something other than `worker:ack`/`worker:ping`: counted against `max_connections`."""
    WORKER = "worker"
    """Sent `worker:ack`/`worker:ping`, or is a `-g` worker socket: never counted."""


@dataclass(slots=True, eq=False)
class Connection:
    """One client of the command socket: its socket, buffers and requests."""

    id: int
    sock: socket.socket
    reader: framing.LineBuffer
    trusted: bool = False
    """Created by the master itself (a `-g` worker socket): counted against no cap."""
    role: Role = Role.UNKNOWN
    queue: deque[bytes] = field(default_factory=deque)
    """Complete lines not yet handled."""
    output: bytearray = field(default_factory=bytearray)
    closing: bool = False
    """Close once the output is written; nothing more is read or handled."""
    at_eof: bool = False
    """The client sent everything it will: handle the queue, then close."""
    interest: int = 0
    """What the selector watches for it now (0: not registered)."""
    held_since: float | None = None
    """When its unsent output began to hold it back (see the module doc)."""


@dataclass(frozen=True, slots=True)
class RestoredConnection:
    """A command connection as it crosses a re-exec: its fd and what was buffered either way."""

    id: int
    fd: int
    unread: bytes
    unsent: bytes
    trusted: bool = False
    role: str = Role.UNKNOWN.value

    def descriptor(self) -> Descriptor:
        data = {
            "id": self.id,
            "unread": self.unread.decode("latin-1"),
            "unsent": self.unsent.decode("latin-1"),
            "trusted": self.trusted,
            "role": self.role,
        }
        return Descriptor(CONNECTION, self.fd, data)

    @classmethod
    def of(cls, descriptor: Descriptor) -> RestoredConnection:
        data = descriptor.data
        conn_id, unread, unsent = data["id"], data["unread"], data["unsent"]
        trusted, role = data.get("trusted", False), data.get("role", Role.UNKNOWN.value)
        if (
            isinstance(conn_id, bool)
            or not isinstance(conn_id, int)
            or not isinstance(unread, str)
            or not isinstance(unsent, str)
            or not isinstance(trusted, bool)
            or role not in {r.value for r in Role}
        ):
            raise ValueError(f"malformed connection descriptor {dict(data)!r}")
        assert isinstance(role, str)
        return cls(conn_id, descriptor.fd, unread.encode("latin-1"), unsent.encode("latin-1"), trusted, role)


COMMAND_SERVER = "command_server"
CONNECTION = "connection"
"""The kinds this module registers with the hand-off registry."""


def restored_server(handoff: Handoff) -> tuple[socket.socket, list[RestoredConnection]]:
    """The command server socket and connections the old image handed over (ValueError if absent)."""
    servers = handoff.claim(COMMAND_SERVER)
    if len(servers) != 1:
        raise ValueError(f"expected one command server descriptor, got {len(servers)}")
    server = socket.socket(fileno=servers[0].fd)
    server.set_inheritable(False)
    return server, [RestoredConnection.of(d) for d in handoff.claim(CONNECTION)]


class CommandServer:
    def __init__(
        self,
        server: socket.socket,
        selector: selectors.BaseSelector,
        log: Logger,
        clock: Callable[[], tuple[float, float]],
        max_connections: int = MAX_CONNECTIONS,
        *,
        max_open: int = MAX_OPEN,
        max_output: int = MAX_OUTPUT,
        max_total_output: int = MAX_TOTAL_OUTPUT,
        stall_grace: float = STALL_GRACE,
    ) -> None:
        self.server = server
        self.selector = selector
        self.log = log
        self.clock = clock
        self.max_connections = max_connections
        self.max_open = max_open
        self.max_output = max_output
        self.max_total_output = max_total_output
        self.stall_grace = stall_grace
        self.connections: dict[int, Connection] = {}
        self.next_id = 1
        self.closed: list[int] = []
        self.total_output = 0
        self._trusted = 0
        self._ready: deque[int] = deque()
        """Connections with queued lines, in round-robin order (an id may be stale: skipped)."""
        self._queued: set[int] = set()
        self._cap_logged = False
        self._listening = False
        self._accept = AcceptBackoff("command connections")
        server.setblocking(False)
        self._update_listening()

    # --- connections ------------------------------------------------------

    def adopt(self, sock: socket.socket, trusted: bool = False, read: bytes = b"", output: bytes = b"", conn_id: int | None = None) -> int:
        """Start serving an already-connected socket (a `-g` worker socket, or one restored after re-exec)."""
        return self._adopt(sock, trusted, Role.WORKER if trusted else Role.UNKNOWN, read, output, conn_id)

    def restore(self, conn: RestoredConnection) -> int:
        """Serve a connection the old image handed over, as it was."""
        return self._adopt(socket.socket(fileno=conn.fd), conn.trusted, Role(conn.role), conn.unread, conn.unsent, conn.id)

    def _adopt(self, sock: socket.socket, trusted: bool, role: Role, read: bytes, output: bytes, conn_id: int | None) -> int:
        if conn_id is None:
            conn_id = self.next_id
        self.next_id = max(self.next_id, conn_id + 1)
        sock.setblocking(False)
        sock.set_inheritable(False)
        conn = Connection(conn_id, sock, framing.LineBuffer(MAX_LINE), trusted=trusted, role=role)
        self.connections[conn_id] = conn
        self._trusted += trusted
        if output:
            self._add_output(conn, output)
        if read:
            self._take_in(conn, read)
        if conn_id in self.connections:  # not refused for an overlong line
            self._refresh(conn)
        return conn_id

    def _on_acceptable(self) -> list[Event]:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if self._open() >= self.max_open:
                break
            try:
                sock, _ = self.server.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue  # the client gave up while it waited in the backlog
            except OSError as error:
                if error.errno not in _EXHAUSTED:
                    raise
                now, _ = self.clock()
                message = self._accept.failed(now, error.strerror or str(error))
                if message:
                    self.log.error(message)
                break
            now, _ = self.clock()
            message = self._accept.succeeded(now)
            if message:
                self.log.info(message)
            self._admit(sock)
        self._update_listening()
        return []

    def _admit(self, sock: socket.socket) -> None:
        pid, uid = _peer(sock)
        if not may_command(uid, os.geteuid()):
            self.log.error(f"Refused a command connection from pid {pid}, uid {uid}: not the master's user")
            _refuse(sock, f"Permission denied: only uid {os.geteuid()} (the master's user) or root may command this Einhorn")
            return
        self.adopt(sock)

    def _open(self) -> int:
        return len(self.connections) - self._trusted

    def _update_listening(self) -> None:
        now, _ = self.clock()
        want = self._accept.may_accept(now) and self._open() < self.max_open
        if want and not self._listening:
            self.selector.register(self.server, selectors.EVENT_READ, self._on_acceptable)
        elif self._listening and not want:
            self.selector.unregister(self.server)
        self._listening = want

    # --- input --------------------------------------------------------------

    def _on_ready(self, conn: Connection) -> list[Event]:
        if conn.id not in self.connections:
            return []  # dropped by an earlier callback of the same wake-up
        if conn.output:
            self._flush(conn)
        if conn.id in self.connections and self._wants_input(conn):
            self._read(conn)
        return []

    def _read(self, conn: Connection) -> None:
        try:
            chunk = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.log.debug(f"[client {conn.id}] read error: {error.strerror}")
            chunk = b""
        if chunk:
            self._take_in(conn, chunk)
        else:
            conn.at_eof = True
            if not conn.queue:
                self.close(conn.id)
        if conn.id in self.connections:
            self._refresh(conn)

    def _take_in(self, conn: Connection, data: bytes) -> None:
        try:
            lines = conn.reader.feed(data)
        except framing.LineTooLong:
            self.log.error(f"[client {conn.id}] sent a line longer than {MAX_LINE} bytes; closing the connection")
            self._refuse_and_close(conn, f"Request too long (limit {MAX_LINE} bytes)")
            return
        if lines:
            conn.queue.extend(lines)
            if conn.id not in self._queued:
                self._queued.add(conn.id)
                self._ready.append(conn.id)

    def _wants_input(self, conn: Connection) -> bool:
        return not conn.queue and not conn.at_eof and self._may_serve(conn)

    def _may_serve(self, conn: Connection) -> bool:
        if conn.closing or len(conn.output) >= self.max_output:
            return False
        return not conn.output or self.total_output < self.max_total_output

    # --- requests -------------------------------------------------------------

    def requests(self) -> Iterator[Event]:
        """The requests to handle this wake-up, one at a time, round-robin over the connections.

        Each is taken only once the one before it is handled (a generator), so
        that a connection dropped meanwhile has nothing more taken from it.
        """
        start, _ = self.clock()
        taken: dict[int, int] = {}
        waiting: list[int] = []
        handled = 0
        while self._ready and handled < REQUESTS_PER_WAKEUP:
            if handled and self.clock()[0] - start >= REQUEST_TIME_PER_WAKEUP:
                break
            conn_id = self._ready.popleft()
            conn = self.connections.get(conn_id)
            if conn is None or not conn.queue:
                self._queued.discard(conn_id)
                continue
            if not self._may_serve(conn) or taken.get(conn_id, 0) >= REQUESTS_PER_CONNECTION:
                waiting.append(conn_id)
                continue
            taken[conn_id] = taken.get(conn_id, 0) + 1
            handled += 1
            self._ready.append(conn_id)
            try:
                event = self._event_for(conn, conn.queue.popleft())
            except Exception:  # noqa: BLE001 - a bug reading one client's request must not stop the master
                self.log.error(f"[client {conn.id}] Bug while reading a request; closing the connection:\n{current_traceback()}")
                self.close(conn.id)
                continue
            if event is not None:
                yield event
            if conn.id in self.connections:
                if not conn.queue and conn.at_eof:
                    self.close(conn.id)
                else:
                    self._refresh(conn)
        self._ready.extend(waiting)

    def _event_for(self, conn: Connection, line: bytes) -> Event | None:
        now, wall = self.clock()
        try:
            request = protocol.parse_message(line, max_yaml=framing.MAX_YAML)
        except framing.YamlTooLong as error:
            self.send(conn.id, {"message": f"Request too long for YAML ({error})"})
            return None
        except framing.RequestError as error:
            self.log.debug(f"[client {conn.id}] unparseable request: {error}")
            return RequestUnparseable(conn.id, now) if self._admitted(conn, None) else None
        command = command_name(request)
        if not self._admitted(conn, command):
            return None
        if command not in WORKER_COMMANDS or conn.trusted:
            return CommandReceived(conn.id, request, now, wall, config_document(request))
        peer = _peer_pid(conn.sock)
        ancestors = None if peer is None else ancestors_of(peer, stop=os.getpid())
        return CommandReceived(conn.id, request, now, wall, None, peer_pid=peer, peer_ancestors=ancestors)

    def _admitted(self, conn: Connection, command: str | None) -> bool:
        """Give a connection its role on its first line; False if it is refused for the admin cap."""
        if conn.role is not Role.UNKNOWN:
            return True
        if command in WORKER_COMMANDS:
            conn.role = Role.WORKER
            return True
        if self._live_admins() >= self.max_connections:
            if not self._cap_logged:
                self.log.error(f"Refusing command connections: {self.max_connections} already open")
                self._cap_logged = True
            self._refuse_and_close(conn, f"Too many connections ({self.max_connections} open); try again later")
            return False
        self._cap_logged = False
        conn.role = Role.ADMIN
        return True

    def _live_admins(self) -> int:
        admins = [c for c in self.connections.values() if c.role is Role.ADMIN and not c.closing and not c.at_eof]
        if len(admins) < self.max_connections:
            return len(admins)
        # Only at the cap: a peer that has gone, but whose end of file is not read yet, is not counted.
        poller = select.poll()
        for conn in admins:
            poller.register(conn.sock, select.POLLIN | select.POLLRDHUP)
        gone = sum(1 for _, events in poller.poll(0) if events & _PEER_GONE)
        return len(admins) - gone

    # --- output -----------------------------------------------------------

    def send(self, conn_id: int, message: Mapping[str, object]) -> None:
        self.send_line(conn_id, framing.encode_message(message))

    def send_line(self, conn_id: int, line: bytes) -> None:
        """A message already framed (`framing.encode_message`)."""
        conn = self.connections.get(conn_id)
        if conn is None or conn.closing:
            return
        if len(line) > LARGE_REPLY:
            _make_room(conn.sock, len(line))
        if not conn.output:  # (the usual case: written from the line itself, not copied into the buffer first)
            line = line[self._write(conn, line) :]
        if line:
            self._add_output(conn, line)
        self._flush(conn)

    def close(self, conn_id: int) -> None:
        """Close once everything queued for this connection is written; its unhandled requests are dropped."""
        conn = self.connections.get(conn_id)
        if conn is None:
            return
        conn.closing = True
        conn.queue.clear()
        self._flush(conn)

    def unsent(self, conn_id: int) -> int | None:
        """Bytes queued for this connection and not yet written; None if it is gone or closing."""
        conn = self.connections.get(conn_id)
        return None if conn is None or conn.closing else len(conn.output)

    def discard(self, conn_id: int) -> None:
        """Drop the connection now, unsent output and all (a subscriber that stopped reading)."""
        conn = self.connections.get(conn_id)
        if conn is not None:
            self._drop(conn)

    def _refuse_and_close(self, conn: Connection, reason: str) -> None:
        self.send(conn.id, {"message": reason})
        self.close(conn.id)

    def _add_output(self, conn: Connection, data: bytes) -> None:
        conn.output += data
        self._change_total(len(data))

    def _write(self, conn: Connection, data: bytes | bytearray) -> int:
        """Bytes of `data` done with: written, or all of them after a write error (the connection is closing then)."""
        try:
            return conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            self.log.debug(f"[client {conn.id}] write error: {error.strerror}")
            conn.closing = True
            return len(data)

    def _flush(self, conn: Connection) -> None:
        before = len(conn.output)
        while conn.output:
            done = self._write(conn, conn.output)
            if not done:
                break
            del conn.output[:done]
        if len(conn.output) != before:
            self._change_total(len(conn.output) - before)
        if conn.closing and not conn.output:
            self._drop(conn)
        elif conn.id in self.connections:
            self._refresh(conn)

    def _change_total(self, delta: int) -> None:
        before = self.total_output >= self.max_total_output
        self.total_output += delta
        if (self.total_output >= self.max_total_output) != before:
            for conn in list(self.connections.values()):
                self._refresh(conn)

    # --- the selector and the timers -------------------------------------------

    def _refresh(self, conn: Connection) -> None:
        """Watch what the connection now needs, and note whether its unsent output holds it back."""
        interest = (selectors.EVENT_READ if self._wants_input(conn) else 0) | (selectors.EVENT_WRITE if conn.output else 0)
        if interest != conn.interest:
            if not interest:
                self.selector.unregister(conn.sock)
            elif not conn.interest:
                self.selector.register(conn.sock, interest, lambda: self._on_ready(conn))
            else:
                self.selector.modify(conn.sock, interest, lambda: self._on_ready(conn))
            conn.interest = interest
        held = bool(conn.output) and (conn.closing or not self._may_serve(conn))
        if not held:
            conn.held_since = None
        elif conn.held_since is None:
            conn.held_since = self.clock()[0]

    def next_wakeup(self) -> float | None:
        """The monotonic time by which the loop must call `tick` (or take `requests`), if any."""
        now, _ = self.clock()
        if any(conn is not None and conn.queue and self._may_serve(conn) for conn in map(self.connections.get, self._ready)):
            return now
        times = [c.held_since + self.stall_grace for c in self.connections.values() if c.held_since is not None]
        if self._accept.resume_at is not None:
            times.append(self._accept.resume_at)
        return min(times) if times else None

    def tick(self) -> None:
        """Resume accepting once a backoff is over; drop connections held back for longer than the grace."""
        now, _ = self.clock()
        for conn in list(self.connections.values()):
            if conn.held_since is not None and now - conn.held_since >= self.stall_grace:
                self.log.error(
                    f"[client {conn.id}] is not reading its replies ({len(conn.output)} bytes pending for "
                    f"{now - conn.held_since:.1f}s); dropping it and {len(conn.queue)} queued requests"
                )
                self._drop(conn)
        self._update_listening()

    def _drop(self, conn: Connection) -> None:
        """Forget the connection and what it queued; the core hears about it through `take_closed`."""
        if self.connections.pop(conn.id, None) is None:
            return
        if conn.interest:
            self.selector.unregister(conn.sock)
        conn.sock.close()
        conn.queue.clear()
        self._trusted -= conn.trusted
        self.closed.append(conn.id)
        if conn.output:
            pending, conn.output = len(conn.output), bytearray()
            self._change_total(-pending)
        self._update_listening()

    def take_closed(self) -> list[Event]:
        now, _ = self.clock()
        events: list[Event] = [ConnectionClosed(conn_id, now) for conn_id in self.closed]
        self.closed.clear()
        return events

    # --- re-exec and exit ---------------------------------------------------

    def pending_input(self, conn_id: int) -> bytes:
        """Bytes received but not yet handled (for handing the connection across a re-exec)."""
        conn = self.connections[conn_id]
        return b"".join(line + b"\n" for line in conn.queue) + conn.reader.pending

    def descriptors(self) -> list[Descriptor]:
        """For the hand-off registry: the server socket and every connection with its buffers.

        What crosses the exec is bounded by the same limits as what is held:
        per connection, at most one read of unhandled lines plus one partial
        line (`READ_SIZE` + `MAX_LINE`), and in all about `max_total_output`
        of unsent replies (plus at most one reply per connection).
        """
        found = [Descriptor(COMMAND_SERVER, self.server.fileno())]
        for conn in self.connections.values():
            if conn.closing:
                continue  # its requests are dropped already; the new image need not finish its output
            unread, unsent = self.pending_input(conn.id), bytes(conn.output)
            restored = RestoredConnection(conn.id, conn.sock.fileno(), unread, unsent, conn.trusted, conn.role.value)
            found.append(restored.descriptor())
        return found

    def shutdown(self) -> None:
        for conn in list(self.connections.values()):
            self._flush(conn)
            self._drop(conn)
        self.closed.clear()
        if self._listening:
            self.selector.unregister(self.server)
            self._listening = False
        self.server.close()


class AcceptBackoff:
    """When accept may be tried again after running out of descriptors, and what to log about it
    (for the command socket and the metrics listener: `what` they accept)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.resume_at: float | None = None
        self._reset()

    def _reset(self) -> None:
        self.delay = 0.0
        self.since: float | None = None
        self.failures = 0
        self.reported_at = 0.0
        self.unreported = 0

    def may_accept(self, now: float) -> bool:
        if self.resume_at is not None and now >= self.resume_at:
            self.resume_at = None
        return self.resume_at is None

    def failed(self, now: float, reason: str) -> str | None:
        self.delay = min(ACCEPT_BACKOFF_MAX, self.delay * 2) if self.delay else ACCEPT_BACKOFF_MIN
        self.resume_at = now + self.delay
        self.failures += 1
        self.unreported += 1
        if self.since is None:
            self.since = self.reported_at = now
            self.unreported = 0
            return f"Cannot accept {self.what}: {reason}; trying again with a backoff of up to {ACCEPT_BACKOFF_MAX:g}s"
        if now - self.reported_at >= ACCEPT_REPORT_PERIOD:
            message = f"Still cannot accept {self.what}: {reason} ({self.unreported} more failures in {now - self.reported_at:.0f}s)"
            self.reported_at, self.unreported = now, 0
            return message
        return None

    def succeeded(self, now: float) -> str | None:
        if self.since is None:
            return None
        message = f"Accepting {self.what} again after {self.failures} failures in {now - self.since:.1f}s"
        self._reset()
        return message


def _make_room(sock: socket.socket, size: int) -> None:
    """Let the kernel take a large reply (`state` of 1000 workers: 350 KB) in one write.

    With the default buffer (~200 KB) it goes in two, the second a wake-up later, after
    whatever else that wake-up does. Only connections that were sent such a reply get more."""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < 2 * size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, min(size, MAX_OUTPUT))  # (the kernel doubles it)
    except OSError:
        pass


def _peer(sock: socket.socket) -> tuple[int, int]:
    """The (pid, uid) of the process that connected (SO_PEERCRED)."""
    pid, uid, _ = array.array("i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED_SIZE))
    return pid, uid


def _peer_pid(sock: socket.socket) -> int | None:
    """The connecting process, if this socket knows it (0: from another pid namespace)."""
    try:
        pid, _ = _peer(sock)
    except OSError:
        return None
    return pid if pid > 0 else None


def _refuse(sock: socket.socket, reason: str) -> None:
    try:
        sock.setblocking(False)
        sock.send(framing.encode_message({"message": reason}))
    except OSError:
        pass
    finally:
        sock.close()


def ancestors_of(pid: int, stop: int) -> tuple[int, ...] | None:
    """`pid`'s ancestors, parent first, up to `stop` or init (excluded), as /proc shows them now.

    None if `pid` is gone (its ancestry is unknown); the walk ends early where an ancestor is gone.
    """
    found: list[int] = []
    current = pid
    for _ in range(MAX_ANCESTORS):
        parent = _parent_of(current)
        if parent is None:
            return None if current == pid else tuple(found)
        if parent in (0, 1, stop):
            break
        found.append(parent)
        current = parent
    return tuple(found)


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    return int(text[text.rindex(b")") + 2 :].split()[1])


def may_command(peer_uid: int, master_uid: int) -> bool:
    """Whether a peer running as ``peer_uid`` may command a master running as ``master_uid``: its own user or root."""
    return peer_uid in (master_uid, 0)


def config_document(request: Mapping[str, object]) -> object:
    """The YAML document a `config` request carries in its ``args``, for `CommandReceived.document`.

    None for any other request (or ``args`` that are not strings); a
    `ConfigDocumentError` with the reason when the document does not parse.
    """
    args = request.get("args")
    if request.get("command") != "config" or not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return None
    try:
        return protocol.parse_document(" ".join(str(a) for a in args), max_yaml=framing.MAX_YAML)
    except framing.RequestError as error:
        return ConfigDocumentError(str(error))
