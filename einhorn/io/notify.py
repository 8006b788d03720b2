"""sd_notify(3) datagrams, both ways: the `-m notify` socket workers send to, and the master's own
notifications to its supervisor (`NOTIFY_SOCKET` in its environment).

The notify socket is a datagram UNIX socket with SO_PASSCRED: the kernel
stamps each datagram with the sender's pid and uid. The shell only reads and
reports (`WorkerNotified`); the core decides what a notification means.
"""

from __future__ import annotations

import array
import os
import socket
import stat
import time
from collections.abc import Mapping, Sequence

from einhorn.core.events import Event, WorkerNotified
from einhorn.io.handoff import Descriptor, Handoff
from einhorn.io.logs import Logger
from einhorn.io.sockets import MAX_UNIX_PATH, SetupError

NOTIFY_SOCKET_KIND = "notify_socket"
"""The hand-off kind of the `-m notify` socket."""

MAX_DATAGRAM = 4096
_UCRED_SIZE = 3 * array.array("i").itemsize
"""struct ucred: pid, uid, gid (C ints)."""
_MAX_FDS = 16
"""Descriptors a datagram may carry (systemd-notify's BARRIER=1 sends one); more are closed by the kernel."""
MAX_ANCESTRY = 64
SUPERVISOR_SEND_TIMEOUT = 1.0
"""Seconds a notification to the supervisor may wait for room in its queue before it is dropped."""


def notify_socket_path(command_socket_path: str) -> str:
    """Where the `-m notify` socket lives: beside the command socket, so that `-d` keeps masters apart."""
    return command_socket_path + ".notify"


class NotifyServer:
    """The `-m notify` socket: datagrams in, `WorkerNotified` events out."""

    def __init__(self, sock: socket.socket, path: str, log: Logger) -> None:
        self.sock = sock
        self.path = path
        self.log = log
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    @classmethod
    def open(cls, path: str, log: Logger) -> NotifyServer:
        """Bind a fresh socket at `path` (mode 0600), replacing a socket file a killed master left."""
        if len(os.fsencode(path)) > MAX_UNIX_PATH:
            raise SetupError(f"-m notify: the notify socket path {path} is longer than {MAX_UNIX_PATH} bytes: pass a shorter -d")
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise SetupError(f"-m notify: {path} exists and is not a socket. Remove it, or pass another -d.")
            os.unlink(path)  # the command socket at -d was free: this is a dead master's
            log.info(f"Removing the stale notify socket {path}")
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError as error:
            sock.close()
            raise SetupError(f"-m notify: could not create the notify socket at {path}: {error.strerror}") from None
        finally:
            os.umask(old_umask)
        return cls(sock, path, log)

    @classmethod
    def restored(cls, handoff: Handoff, log: Logger) -> NotifyServer | None:
        """The socket the old image handed over, if it had one."""
        found = handoff.claim(NOTIFY_SOCKET_KIND)
        if not found:
            return None
        path = found[0].data.get("path")
        sock = socket.socket(fileno=found[0].fd)
        sock.set_inheritable(False)
        return cls(sock, path if isinstance(path, str) else "", log)

    def descriptors(self) -> list[Descriptor]:
        return [Descriptor(NOTIFY_SOCKET_KIND, self.sock.fileno(), {"path": self.path})]

    def read(self) -> list[Event]:
        """Every datagram waiting, as events."""
        events: list[Event] = []
        space = socket.CMSG_SPACE(_UCRED_SIZE) + socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(MAX_DATAGRAM, space)
            except (BlockingIOError, InterruptedError):
                return events
            credentials, fds = _ancillary(ancillary)
            try:
                event = self._event(data, credentials)
            finally:
                for fd in fds:  # systemd-notify's BARRIER=1 waits for these to close: after the /proc check
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            if event is not None:
                events.append(event)

    def _event(self, data: bytes, credentials: tuple[int, int, int] | None) -> Event | None:
        if credentials is None:
            self.log.error("Dropping a notification without credentials")
            return None
        pid, uid, _ = credentials
        if uid not in (os.getuid(), 0):
            self.log.error(f"Dropping a notification from pid {pid} of uid {uid}: not this master's user")
            return None
        fields = parse_notification(data)
        if fields == {"BARRIER": "1"}:  # sd_notify_barrier: answered by closing its fd (`read`), no news
            return None
        main = _pid(fields.get("MAINPID"))
        if main is not None and main != pid and descends_from(pid, main):
            pid = main  # `systemd-notify --ready` run by a worker's shell speaks for it
        return WorkerNotified(pid, fields, time.monotonic())

    def close(self) -> None:
        self.sock.close()


def parse_notification(data: bytes) -> dict[str, str]:
    """`KEY=VALUE` lines (sd_notify(3)); lines without `=` are ignored."""
    fields: dict[str, str] = {}
    for line in data.decode(errors="replace").split("\n"):
        key, equals, value = line.partition("=")
        if equals and key:
            fields[key] = value
    return fields


def _ancillary(ancillary: Sequence[tuple[int, int, bytes]]) -> tuple[tuple[int, int, int] | None, list[int]]:
    credentials = None
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED_SIZE:
            pid, uid, gid = array.array("i", payload[:_UCRED_SIZE])
            credentials = (pid, uid, gid)
        elif kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
            fds += list(received)
    return credentials, fds


def _pid(text: str | None) -> int | None:
    """A pid in ASCII digits: `isdigit` alone also takes "²" and 5,000 digits, which `int` refuses."""
    return int(text) if text is not None and text.isascii() and text.isdigit() and len(text) <= 10 else None


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether `pid` is a descendant of `ancestor` now (from /proc; False once either is gone)."""
    for _ in range(MAX_ANCESTRY):
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            return False
        pid = int(text[text.rindex(")") + 2 :].split()[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


class Supervisor:
    """The master's own notifications to the socket in its `NOTIFY_SOCKET` (systemd's, usually)."""

    def __init__(self, address: str, log: Logger) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.log = log
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # A full queue (the supervisor busy) would drop a READY=1: wait for room, a little.
        self.sock.settimeout(SUPERVISOR_SEND_TIMEOUT)

    def send(self, fields: Sequence[tuple[str, str]]) -> None:
        payload = "\n".join(f"{key}={value}" for key, value in fields).encode()
        try:
            self.sock.sendto(payload, self.address)
        except OSError as error:  # the supervisor is gone or stuck: it is not the master's to fix
            self.log.error(f"Could not notify the supervisor at {self.address!r} ({payload!r}): {error}")

    def close(self) -> None:
        self.sock.close()


def supervisor_of(environ: Mapping[str, str], log: Logger) -> Supervisor | None:
    address = environ.get("NOTIFY_SOCKET")
    return Supervisor(address, log) if address else None
