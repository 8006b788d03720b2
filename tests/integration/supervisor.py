"""A test-owned NOTIFY_SOCKET: what systemd hears from the master it supervises."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path


class Supervisor:
    """A test-owned NOTIFY_SOCKET, read promptly by a thread as systemd would: (when, sender pid, fields)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.1)
        self.path = str(path)
        self.got: list[tuple[float, int, dict[str, str]]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stopping.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            pid = next(struct.unpack("3i", payload[:12])[0] for _, kind, payload in ancillary if kind == socket.SCM_CREDENTIALS)
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            self.got.append((time.monotonic(), pid, fields))

    def heard(self, key: str, count: int = 1) -> bool:
        return sum(1 for _, _, f in list(self.got) if key in f) >= count

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sock.close()
