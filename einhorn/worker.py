"""Helpers for worker processes running under einhorn (BEHAVIOR §2, §3, §7).

The Python counterpart of the original's ``einhorn/worker.rb``. It uses the
standard library and einhorn's stdlib-only framing leaf `einhorn.framing`
only, so that a worker can import it without PyYAML or the rest of einhorn.
"""

import collections
import errno
import json
import os
import random
import signal
import socket as _socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socketserver

from einhorn.framing import encode_message, unescape


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

    Over a socket path it waits (up to `DELIVERY_WAIT` seconds) for the master
    to close the connection, which every master does once it has read the
    line, without a reply. A master that answers "try again later" instead
    (one at its connection limit), resets the connection or has a full
    backlog is tried again with a growing delay, for up to `RETRY_FOR`
    seconds; any other answer raises `ConnectionRefusedError` with its text.
    """
    _send({"command": "worker:ack", "pid": os.getpid()}, path)


def ping(request_id: str, path: str | None = None) -> None:
    """Report liveness; the master shows ``request_id`` in its ``state``."""
    _send({"command": "worker:ping", "pid": os.getpid(), "request_id": request_id}, path)


DELIVERY_WAIT = 5.0
"""Seconds `ack`/`ping` wait for the master to close the connection; then the line is taken as delivered."""
RETRY_FOR = 30.0
"""Seconds `ack`/`ping` keep trying a master that turns them away for now."""
RETRY_DELAY = (0.05, 1.0)
"""The first and the longest delay between tries (it doubles, with jitter)."""

HANDLER_GRACE_SECONDS = 0.1
"""How long the SIGUSR2 handler waits for a graceful-shutdown handler before it lets the main thread go on."""


def graceful_shutdown(handler: Callable[[], None]) -> None:
    """Call ``handler()`` when the master asks this worker to stop (SIGUSR2).

    Install it from the main thread, like any signal handler. ``handler`` runs
    on a helper thread, and the signal handler waits up to 0.1 s for it. One
    that is done by then (it sets a flag, calls ``sys.exit()``) acts as if it
    had run in the signal handler: its exception is raised there, in the main
    thread. One that needs the main thread to run meanwhile, like
    socketserver's ``server.shutdown()``, which waits for ``serve_forever()``
    to return, lets the main thread go on; once it is done, the main thread
    gets SIGUSR2 again, which wakes a loop that waits on signals (EINTR,
    ``signal.set_wakeup_fd``) and raises ``handler``'s exception, if any.

    The helper thread is not a daemon: a program whose main thread ends first
    still exits only when ``handler`` is done.
    """
    signal.signal(signal.SIGUSR2, _GracefulShutdown(handler).on_signal)


def serve_forever(server: "socketserver.BaseServer", poll_interval: float = 0.5) -> None:
    """Serve ``server`` until the master's SIGUSR2, then close it; the socketserver recipe.

    ``graceful_shutdown(server.shutdown)``, ``ack()`` when this process is a
    worker (in timer ACK mode the master ignores it), ``server.serve_forever()``,
    and ``server.server_close()``, which for a ``ThreadingMixIn`` server (such as
    ``http.server.ThreadingHTTPServer``) waits for the requests in flight.
    """
    graceful_shutdown(server.shutdown)
    if is_worker():
        ack()
    try:
        server.serve_forever(poll_interval)
    finally:
        server.server_close()


class _GracefulShutdown:
    """The SIGUSR2 handler: runs the handler off the signal frame, which may be the frame it waits for."""

    def __init__(self, handler: Callable[[], None]) -> None:
        self.handler = handler
        self.late: collections.deque[BaseException | None] = collections.deque()
        """Outcomes of runs that outlived the grace, for the main thread to take on its next SIGUSR2."""

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.late:  # the wake-up call of a run that finished late
            outcomes = [self.late.popleft() for _ in range(len(self.late))]
            errors = [error for error in outcomes if error is not None]
            if errors:
                raise errors[0]
            return
        run = _HandlerRun(self.handler, self._finished_late)
        thread = threading.Thread(target=run, name="einhorn-graceful-shutdown")
        thread.start()
        thread.join(HANDLER_GRACE_SECONDS)
        error = run.outcome_or_late()
        if error is not None:
            raise error

    def _finished_late(self, error: BaseException | None) -> None:
        self.late.append(error)
        main = threading.main_thread()
        # Not once the interpreter is shutting down (the main thread waits for this one), nor
        # if the program has since replaced the handler (the signal could kill it).
        if main.is_alive() and main.ident is not None and signal.getsignal(signal.SIGUSR2) == self.on_signal:
            signal.pthread_kill(main.ident, signal.SIGUSR2)
        elif error is not None and not isinstance(error, SystemExit):
            traceback.print_exception(error)  # no main thread left to raise it in: never lose it silently


class _HandlerRun:
    """One call of the handler on its helper thread; whether it finished in time is settled under the lock."""

    def __init__(self, handler: Callable[[], None], finished_late: Callable[[BaseException | None], None]) -> None:
        self.handler = handler
        self.finished_late = finished_late
        self.lock = threading.Lock()
        self.done = False
        self.abandoned = False
        self.error: BaseException | None = None

    def __call__(self) -> None:
        try:
            self.handler()
        except BaseException as error:  # noqa: BLE001 - SystemExit too: it belongs to the main thread
            self.error = error
        with self.lock:
            self.done = True
            late = self.abandoned
        if late:
            self.finished_late(self.error)

    def outcome_or_late(self) -> BaseException | None:
        """The handler's exception if it is done; otherwise None, and it reports through `finished_late`."""
        with self.lock:
            if not self.done:
                self.abandoned = True
                return None
        return self.error


def _send(message: Mapping[str, object], path: str | None) -> None:
    _ensure_worker()
    line = encode_message(message, compact=True)
    if path is None and "EINHORN_SOCK_FD" in os.environ:
        # The master's own end, connected before this process started: nothing to turn us away.
        with _duplicate_inherited_socket() as connection:
            connection.sendall(line)
        return
    deadline = time.monotonic() + RETRY_FOR
    delay = RETRY_DELAY[0]
    while True:
        try:
            _deliver(line, path)
            return
        except _TryAgain as error:
            if time.monotonic() + delay > deadline:
                raise ConnectionRefusedError(errno.ECONNREFUSED, f"the einhorn master kept turning this away: {error}") from None
        time.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, RETRY_DELAY[1])


class _TryAgain(Exception):
    """The master turned the line away for now (a refusal to try again later, a reset, a full backlog)."""


def _deliver(line: bytes, path: str | None) -> None:
    try:
        with _connect(path, DELIVERY_WAIT) as connection:
            try:
                connection.sendall(line)
                sent = True
            except (BrokenPipeError, ConnectionResetError):
                sent = False  # closed before it read anything: its answer, if any, says why
            answer = _read_until_closed(connection)
    except (BlockingIOError, ConnectionResetError, BrokenPipeError) as error:
        raise _TryAgain(error.strerror or str(error)) from None
    if not answer and not sent:
        raise _TryAgain("the master closed the connection before reading")
    if answer:
        text = _message_of(answer)
        if "try again later" in text:
            raise _TryAgain(text)
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"the einhorn master refused this: {text}")


def _read_until_closed(connection: _socket.socket) -> bytes:
    """What the master wrote before closing; what came so far if it keeps the connection open."""
    received = b""
    try:
        while chunk := connection.recv(4096):
            received += chunk
    except TimeoutError:
        pass
    except ConnectionResetError:
        # A master that answers without reading (a refusal) resets the connection after its answer.
        if not received:
            raise
    return received


def _message_of(answer: bytes) -> str:
    line = answer.split(b"\n", 1)[0].decode("utf-8", "replace")
    try:
        reply = json.loads(unescape(line))
    except ValueError:
        return line
    return str(reply.get("message", line)) if isinstance(reply, dict) else line


def _connect(path: str | None, timeout: float | None = None) -> _socket.socket:
    if path is None:
        path = os.environ.get("EINHORN_SOCK_PATH")
    if not path:
        raise NotRunningUnderEinhorn(
            "neither EINHORN_SOCK_FD nor EINHORN_SOCK_PATH is set:"
            " is this process running under einhorn?"
        )
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    connection.settimeout(timeout)
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
