"""Helpers for worker processes running under einhorn (BEHAVIOR §2, §3, §7).

The Python counterpart of the original's ``einhorn/worker.rb``. It uses the
standard library and einhorn's stdlib-only `einhorn.protocol` only, so that a
worker can import it without PyYAML or the rest of einhorn.
"""

import os
import signal
import socket as _socket
from collections.abc import Callable, Mapping
from types import FrameType

from einhorn.protocol import encode_message


class NotRunningUnderEinhorn(RuntimeError):
    """The environment einhorn gives its workers is missing or wrong."""


def is_worker() -> bool:
    """Whether this process is a direct child of the einhorn master."""
    try:
        return master_pid() == os.getppid()
    except NotRunningUnderEinhorn:
        return False


def master_pid() -> int:
    """The pid of the einhorn master, from ``EINHORN_MASTER_PID``."""
    return _int_from_env("EINHORN_MASTER_PID")


def child_index() -> int:
    """This worker's index in ``[0, number)``, from ``EINHORN_CHILD_INDEX``."""
    return _int_from_env("EINHORN_CHILD_INDEX")


def socket_fds() -> list[int]:
    """The inherited listening socket fds, in the order of einhorn's ``-b`` flags."""
    return [_int_from_env(f"EINHORN_FD_{n}") for n in range(_int_from_env("EINHORN_FD_COUNT"))]


def socket(n: int = 0) -> _socket.socket:
    """The ``n``-th inherited listening socket (family and type are detected).

    The returned object owns the fd: call this once per socket, and closing
    it closes the inherited fd.
    """
    count = _int_from_env("EINHORN_FD_COUNT")
    if not 0 <= n < count:
        raise IndexError(f"no listening socket {n}: einhorn passed {count} (EINHORN_FD_COUNT)")
    fd = _int_from_env(f"EINHORN_FD_{n}")
    try:
        return _socket.socket(fileno=fd)
    except OSError as error:
        raise NotRunningUnderEinhorn(
            f"EINHORN_FD_{n}={fd} is not an open socket: {error}"
        ) from error


def ack(path: str | None = None) -> None:
    """Tell the master this worker is up (manual ACK mode, ``-m manual``).

    Sends to the command socket at ``path`` if given, else over the connected
    socket in ``EINHORN_SOCK_FD`` (``einhorn -g``), else to the socket at
    ``EINHORN_SOCK_PATH``. Connection errors propagate as `OSError`.
    """
    _send({"command": "worker:ack", "pid": os.getpid()}, path)


def ping(request_id: str, path: str | None = None) -> None:
    """Report liveness; the master shows ``request_id`` in its ``state``."""
    _send({"command": "worker:ping", "pid": os.getpid(), "request_id": request_id}, path)


def graceful_shutdown(handler: Callable[[], None]) -> None:
    """Call ``handler()`` when the master asks this worker to stop (SIGUSR2).

    Like any Python signal handler, it must be installed from the main thread
    and runs there.
    """

    def on_sigusr2(signum: int, frame: FrameType | None) -> None:
        handler()

    signal.signal(signal.SIGUSR2, on_sigusr2)


def _send(message: Mapping[str, object], path: str | None) -> None:
    _ensure_worker()
    line = encode_message(message, compact=True)
    with _connect(path) as connection:
        connection.sendall(line)


def _connect(path: str | None) -> _socket.socket:
    if path is None and "EINHORN_SOCK_FD" in os.environ:
        return _duplicate_inherited_socket()
    if path is None:
        path = os.environ.get("EINHORN_SOCK_PATH")
    if not path:
        raise NotRunningUnderEinhorn(
            "neither EINHORN_SOCK_FD nor EINHORN_SOCK_PATH is set:"
            " is this process running under einhorn?"
        )
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        connection.connect(path)
    except OSError:
        connection.close()
        raise
    return connection


def _duplicate_inherited_socket() -> _socket.socket:
    # A duplicate, so that closing it leaves the inherited fd for later pings.
    fd = _int_from_env("EINHORN_SOCK_FD")
    try:
        duplicate = os.dup(fd)
    except OSError as error:
        raise NotRunningUnderEinhorn(f"EINHORN_SOCK_FD={fd} is not open: {error}") from error
    try:
        return _socket.socket(fileno=duplicate)
    except OSError as error:
        os.close(duplicate)
        raise NotRunningUnderEinhorn(f"EINHORN_SOCK_FD={fd} is not a socket: {error}") from error


def _ensure_worker() -> None:
    master, parent = master_pid(), os.getppid()
    if master != parent:
        raise NotRunningUnderEinhorn(
            f"EINHORN_MASTER_PID is {master} but the parent pid is {parent}:"
            " this is probably a subprocess of an einhorn worker, not a worker"
        )


def _int_from_env(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise NotRunningUnderEinhorn(f"{name} is not set: is this process running under einhorn?")
    try:
        return int(value)
    except ValueError:
        raise NotRunningUnderEinhorn(f"{name}={value!r} is not an integer") from None
