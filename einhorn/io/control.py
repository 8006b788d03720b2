"""The command server: accepts connections, frames requests and replies (BEHAVIOR §6).

It decides nothing: each complete line becomes a `CommandReceived` (or
`RequestUnparseable`) event for the core, and replies are whatever the core
orders. What it does enforce is the channel's safety: only the master's own
user (or root) may talk to it, lines and write buffers are bounded, and the
number of concurrent connections is capped.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from einhorn import framing, protocol
from einhorn.core.commands import ConfigDocumentError
from einhorn.core.events import CommandReceived, ConnectionClosed, Event, RequestUnparseable
from einhorn.io.handoff import Descriptor, Handoff
from einhorn.io.logs import Logger

MAX_CONNECTIONS = 256
MAX_LINE = 64 * 1024
MAX_PENDING_OUTPUT = 8 * 1024 * 1024
_PEERCRED = struct.Struct("3i")


@dataclass(slots=True)
class Connection:
    id: int
    sock: socket.socket
    reader: framing.LineBuffer
    output: bytearray = field(default_factory=bytearray)
    closing: bool = False
    trusted: bool = False
    """Created by the master itself (a `-g` worker socket): not counted against the cap."""


@dataclass(frozen=True, slots=True)
class RestoredConnection:
    """A command connection as it crosses a re-exec: its fd and what was buffered either way."""

    id: int
    fd: int
    unread: bytes
    unsent: bytes

    def descriptor(self) -> Descriptor:
        data = {"id": self.id, "unread": self.unread.decode("latin-1"), "unsent": self.unsent.decode("latin-1")}
        return Descriptor(CONNECTION, self.fd, data)

    @classmethod
    def of(cls, descriptor: Descriptor) -> RestoredConnection:
        data = descriptor.data
        conn_id, unread, unsent = data["id"], data["unread"], data["unsent"]
        if isinstance(conn_id, bool) or not isinstance(conn_id, int) or not isinstance(unread, str) or not isinstance(unsent, str):
            raise ValueError(f"malformed connection descriptor {dict(data)!r}")
        return cls(conn_id, descriptor.fd, unread.encode("latin-1"), unsent.encode("latin-1"))


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
    ) -> None:
        self.server = server
        self.selector = selector
        self.log = log
        self.clock = clock
        self.max_connections = max_connections
        self.connections: dict[int, Connection] = {}
        self.next_id = 1
        self._cap_logged = False
        self._pending_lines: dict[int, list[bytes]] = {}
        self.closed: list[int] = []
        server.setblocking(False)
        selector.register(server, selectors.EVENT_READ, self._accept)

    # --- connections ------------------------------------------------------

    def adopt(self, sock: socket.socket, trusted: bool = False, read: bytes = b"", output: bytes = b"", conn_id: int | None = None) -> int:
        """Start serving an already-connected socket (a `-g` worker socket, or one restored after re-exec)."""
        if conn_id is None:
            conn_id = self.next_id
        self.next_id = max(self.next_id, conn_id + 1)
        sock.setblocking(False)
        sock.set_inheritable(False)
        conn = Connection(conn_id, sock, framing.LineBuffer(MAX_LINE), bytearray(output), trusted=trusted)
        self.connections[conn_id] = conn
        self.selector.register(sock, self._interest(conn), lambda: self._service(conn))
        if read:
            self._pending_lines[conn_id] = conn.reader.feed(read)
        return conn_id

    def _accept(self) -> list[Event]:
        while True:
            try:
                sock, _ = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return []
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.error(f"Cannot accept command connections: {error.strerror}")
                    return []
                raise
            refusal = self._refusal(sock)
            if refusal is not None:
                self._refuse(sock, refusal)
                continue
            self.adopt(sock)

    def _refusal(self, sock: socket.socket) -> str | None:
        untrusted = sum(1 for c in self.connections.values() if not c.trusted)
        if untrusted >= self.max_connections:
            if not self._cap_logged:
                self.log.error(f"Refusing command connections: {self.max_connections} already open")
                self._cap_logged = True
            return f"Too many connections ({self.max_connections} open); try again later"
        self._cap_logged = False
        pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        if not may_command(uid, os.geteuid()):
            self.log.error(f"Refused a command connection from pid {pid}, uid {uid}: not the master's user")
            return f"Permission denied: only uid {os.geteuid()} (the master's user) or root may command this Einhorn"
        return None

    def _refuse(self, sock: socket.socket, reason: str) -> None:
        try:
            sock.setblocking(False)
            sock.send(framing.encode_message({"message": reason}))
        except OSError:
            pass
        finally:
            sock.close()

    def _service(self, conn: Connection) -> list[Event]:
        events: list[Event] = []
        if conn.output:
            self._flush(conn)
        if conn.id in self.connections and not conn.closing:
            events += self._read(conn)
        return events

    def _read(self, conn: Connection) -> list[Event]:
        lines = self._pending_lines.pop(conn.id, [])
        while True:
            try:
                chunk = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                self.log.debug(f"[client {conn.id}] read error: {error.strerror}")
                chunk = b""
            if not chunk:
                events = self._lines_to_events(conn, lines)
                self._drop(conn)
                return events
            try:
                lines += conn.reader.feed(chunk)
            except framing.LineTooLong:
                self.log.error(f"[client {conn.id}] sent a line longer than {MAX_LINE} bytes; closing the connection")
                self.send(conn.id, {"message": f"Request too long (limit {MAX_LINE} bytes)"})
                self.close(conn.id)
                break
        return self._lines_to_events(conn, lines)

    def _lines_to_events(self, conn: Connection, lines: list[bytes]) -> list[Event]:
        events: list[Event] = []
        for line in lines:
            now, wall = self.clock()
            try:
                request = protocol.parse_message(line)
            except framing.RequestError as error:
                self.log.debug(f"[client {conn.id}] unparseable request: {error}")
                events.append(RequestUnparseable(conn.id, now))
                continue
            events.append(CommandReceived(conn.id, request, now, wall, config_document(request)))
        return events

    # --- output -----------------------------------------------------------

    def send(self, conn_id: int, message: Mapping[str, object]) -> None:
        conn = self.connections.get(conn_id)
        if conn is None or conn.closing:
            return
        conn.output += framing.encode_message(message)
        if len(conn.output) > MAX_PENDING_OUTPUT:
            self.log.error(f"[client {conn.id}] is not reading its replies ({len(conn.output)} bytes pending); dropping it")
            self._drop(conn)
            return
        self._flush(conn)

    def close(self, conn_id: int) -> None:
        """Close once everything queued for this connection is written."""
        conn = self.connections.get(conn_id)
        if conn is None:
            return
        conn.closing = True
        self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        try:
            while conn.output:
                sent = conn.sock.send(conn.output)
                del conn.output[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as error:
            self.log.debug(f"[client {conn.id}] write error: {error.strerror}")
            conn.output.clear()
            conn.closing = True
        if conn.closing and not conn.output:
            self._drop(conn)
        elif conn.id in self.connections:
            self.selector.modify(conn.sock, self._interest(conn), lambda: self._service(conn))

    def _interest(self, conn: Connection) -> int:
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.output else 0)

    def _drop(self, conn: Connection) -> None:
        """Forget the connection; the core hears about it through `take_closed`."""
        if self.connections.pop(conn.id, None) is None:
            return
        self.selector.unregister(conn.sock)
        conn.sock.close()
        self._pending_lines.pop(conn.id, None)
        self.closed.append(conn.id)

    def take_closed(self) -> list[Event]:
        now, _ = self.clock()
        events: list[Event] = [ConnectionClosed(conn_id, now) for conn_id in self.closed]
        self.closed.clear()
        return events

    def take_restored_lines(self) -> list[Event]:
        """Requests that were already buffered when the master re-exec'd."""
        events: list[Event] = []
        for conn_id in list(self._pending_lines):
            conn = self.connections.get(conn_id)
            if conn is not None:
                events += self._lines_to_events(conn, self._pending_lines.pop(conn_id))
        return events

    def pending_input(self, conn_id: int) -> bytes:
        """Bytes received but not yet handled (for handing the connection across a re-exec)."""
        conn = self.connections[conn_id]
        lines = self._pending_lines.get(conn_id, [])
        return b"".join(line + b"\n" for line in lines) + conn.reader.pending

    def descriptors(self) -> list[Descriptor]:
        """For the hand-off registry: the server socket and every connection with its buffers."""
        found = [Descriptor(COMMAND_SERVER, self.server.fileno())]
        for conn in self.connections.values():
            restored = RestoredConnection(conn.id, conn.sock.fileno(), self.pending_input(conn.id), bytes(conn.output))
            found.append(restored.descriptor())
        return found

    def shutdown(self) -> None:
        for conn in list(self.connections.values()):
            self._flush(conn)
            self._drop(conn)
        self.closed.clear()
        self.selector.unregister(self.server)
        self.server.close()


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
        return protocol.parse_document(" ".join(str(a) for a in args))
    except framing.RequestError as error:
        return ConfigDocumentError(str(error))
