"""A client for the master's command socket (BEHAVIOR §6)."""

import itertools
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType

from einhorn.framing import LineBuffer, RequestError, encode_message
from einhorn.protocol import parse_message, request

# Responses such as `state` grow with the number of workers: allow far more
# than the master allows for requests.
MAX_RESPONSE_LINE = 64 * 1024 * 1024


class UnparseableResponse(Exception):
    """The master sent a line that is not a protocol message."""

    def __init__(self, line: bytes, reason: RequestError) -> None:
        super().__init__(f"unparseable response {line!r}: {reason}")
        self.line = line


class Client:
    """One connection to the command socket."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self._buffer = LineBuffer(max_line=MAX_RESPONSE_LINE)
        self._received_lines: deque[bytes] = deque()
        self._request_numbers = itertools.count(1)

    @classmethod
    def connect(cls, path: str) -> "Client":
        """Connect to the command socket at ``path``; raises `OSError`."""
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(path)
        except OSError:
            connection.close()
            raise
        return cls(connection)

    def send(self, message: Mapping[str, object]) -> None:
        """Send one message."""
        self._connection.sendall(encode_message(message))

    def read_message(self) -> dict[str, object]:
        """Wait for the next message.

        Raises `EOFError` when the master closed the connection,
        `UnparseableResponse` for a line that does not parse (the next call
        reads the line after it) and `LineTooLong` for an endless line.
        """
        while not self._received_lines:
            data = self._connection.recv(65536)
            if not data:
                raise EOFError("connection closed by the master")
            self._received_lines.extend(self._buffer.feed(data))
        line = self._received_lines.popleft()
        try:
            return parse_message(line)
        except RequestError as error:
            raise UnparseableResponse(line, error) from error

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
        request_id = f"{os.getpid()}-{next(self._request_numbers)}"
        self.send(request(command, args, request_id, **extra))
        return self._responses(on_unparseable)

    def _responses(
        self, on_unparseable: Callable[[bytes], None] | None
    ) -> Iterator[dict[str, object]]:
        while True:
            try:
                response = self.read_message()
            except UnparseableResponse as error:
                if on_unparseable is None:
                    raise
                on_unparseable(error.line)
                continue
            yield response
            if not response.get("wait"):
                return

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
