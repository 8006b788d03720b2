"""The command-socket protocol spoken by hand: a raw connection, request framing, reply decoding.

Written independently of `einhorn.framing` and `einhorn.protocol` (replies are
read with plain `yaml.safe_load`), so that the tests check einhorn's framing
rather than reuse it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping

import yaml


def frame(message: Mapping[str, object]) -> bytes:
    """One request line, as the Python and Go clients send it (JSON, escaped)."""
    return escape(json.dumps(message)).encode() + b"\n"


def escape(text: str) -> str:
    return text.replace("%", "%25").replace("\n", "%0A")


def decode_reply(line: bytes) -> dict[str, object]:
    text = line.decode().replace("%0A", "\n").replace("%25", "%")
    document = yaml.safe_load(text)
    assert isinstance(document, dict), f"reply is not a mapping: {line!r}"
    return document


class Connection:
    """A raw command-socket connection that reads whole reply lines."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except BlockingIOError:  # the listen backlog is full: a UNIX socket says EAGAIN
                if time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                self.sock.close()
                raise
            except OSError:
                self.sock.close()
                raise
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> bytes | None:
        """The next line without its newline; None at EOF."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def read_reply(self) -> dict[str, object]:
        line = self.read_line()
        assert line is not None, "the master closed the connection instead of replying"
        return decode_reply(line)

    def read_until_last(self) -> list[dict[str, object]]:
        """Replies up to and including the first one without `wait`."""
        replies = [self.read_reply()]
        while replies[-1].get("wait"):
            replies.append(self.read_reply())
        return replies

    def closed_by_peer(self) -> bool:
        """True once the master has closed its end (everything before EOF is discarded)."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
