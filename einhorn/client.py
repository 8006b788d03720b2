"""A client for the master's command socket (BEHAVIOR §6)."""

import itertools
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType

from einhorn.framing import LineBuffer, RequestError, encode_message
from einhorn.protocol import parse_message, request

# Responses such as `state` grow with the number of workers: allow far more
# than the master allows for requests.
MAX_RESPONSE_LINE = 64 * 1024 * 1024
CONNECT_RETRY_INTERVAL = 0.02
"""Seconds between connection attempts while the master's listen backlog is full."""


class UnparseableResponse(Exception):
    """The master sent a line that is not a protocol message."""

    def __init__(self, line: bytes, reason: RequestError) -> None:
        super().__init__(f"unparseable response {line!r}: {reason}")
        self.line = line


def is_failed(response: Mapping[str, object]) -> bool:
    """Whether the master marked this reply as the end of a request that failed.

    Masters that know the flag set it on the final reply to a request with an
    ``id`` (unknown command, invalid arguments, failed or rolled-back upgrade);
    older masters never do.
    """
    return response.get("failed") is True


class Client:
    """One connection to the command socket.

    `deadline` (a `time.monotonic()` value, or None for none) bounds every
    wait on the master: past it, sending or reading raises `TimeoutError`.
    """

    def __init__(self, connection: socket.socket, deadline: float | None = None) -> None:
        self._connection = connection
        self._buffer = LineBuffer(max_line=MAX_RESPONSE_LINE)
        self._received_lines: deque[bytes] = deque()
        self._request_numbers = itertools.count(1)
        self.deadline = deadline

    @classmethod
    def connect(cls, path: str, deadline: float | None = None) -> "Client":
        """Connect to the command socket at ``path``; raises `OSError` (`TimeoutError` past ``deadline``)."""
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if deadline is None:
                connection.connect(path)
            else:
                _connect_before(connection, path, deadline)
        except OSError:
            connection.close()
            raise
        return cls(connection, deadline)

    def send(self, message: Mapping[str, object]) -> None:
        """Send one message."""
        self._arm_timeout()
        self._connection.sendall(encode_message(message))

    def read_message(self) -> dict[str, object]:
        """Wait for the next message.

        Raises `EOFError` when the master closed the connection,
        `UnparseableResponse` for a line that does not parse (the next call
        reads the line after it), `LineTooLong` for an endless line and
        `TimeoutError` once the deadline has passed.
        """
        while not self._received_lines:
            self._arm_timeout()
            data = self._connection.recv(65536)
            if not data:
                raise EOFError("connection closed by the master")
            self._received_lines.extend(self._buffer.feed(data))
        line = self._received_lines.popleft()
        try:
            return parse_message(line)
        except RequestError as error:
            raise UnparseableResponse(line, error) from error

    def stream(
        self,
        command: str,
        args: Sequence[str] = (),
        *,
        on_unparseable: Callable[[bytes], None] | None = None,
    ) -> Iterator[dict[str, object]]:
        """Send a request at once; iterate over every message that follows until the master closes the connection.

        For requests that turn the connection into a stream (``subscribe``);
        unparseable lines are handled as in `command`.
        """
        self.send(request(command, args, self._next_request_id()))
        return self._messages(on_unparseable)

    def command(
        self,
        command: str,
        args: Sequence[str] = (),
        *,
        on_unparseable: Callable[[bytes], None] | None = None,
        **extra: object,
    ) -> Iterator[dict[str, object]]:
        """Send a request at once; iterate over the result for its responses.

        The responses run up to the first one without ``wait``. Unparseable
        lines are passed to ``on_unparseable`` and skipped; without it they
        raise `UnparseableResponse`.
        """
        self.send(request(command, args, self._next_request_id(), **extra))
        return self._responses(on_unparseable)

    def _next_request_id(self) -> str:
        return f"{os.getpid()}-{next(self._request_numbers)}"

    def _responses(self, on_unparseable: Callable[[bytes], None] | None) -> Iterator[dict[str, object]]:
        for response in self._messages(on_unparseable, until_closed=False):
            yield response
            if not response.get("wait"):
                return

    def _messages(self, on_unparseable: Callable[[bytes], None] | None, until_closed: bool = True) -> Iterator[dict[str, object]]:
        while True:
            try:
                yield self.read_message()
            except UnparseableResponse as error:
                if on_unparseable is None:
                    raise
                on_unparseable(error.line)
            except EOFError:
                if until_closed:
                    return
                raise

    def _arm_timeout(self) -> None:
        if self.deadline is None:
            self._connection.settimeout(None)
            return
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the deadline has passed")
        self._connection.settimeout(remaining)

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _connect_before(connection: socket.socket, path: str, deadline: float) -> None:
    """Connect, retrying while the listen backlog is full (a UNIX socket then says EAGAIN at once)."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"could not connect to {path} in time")
        connection.settimeout(remaining)
        try:
            connection.connect(path)
            return
        except BlockingIOError:
            time.sleep(min(CONNECT_RETRY_INTERVAL, max(remaining, 0.0)))
