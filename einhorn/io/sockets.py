"""Listening sockets (`-b`) and the command socket file (`-d`, under the `-f` lock)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from einhorn.io.logs import Logger

_BIND = re.compile(r"\A(\[[^\]]+\]|[^:\[\]]+):(\d+)((?:,\w+)*)\Z")
_FLAGS = {"r": "so_reuseaddr", "so_reuseaddr": "so_reuseaddr", "n": "o_nonblock", "o_nonblock": "o_nonblock"}


class SetupError(Exception):
    """A start-up problem with a clear message for the operator; the CLI exits non-zero."""


@dataclass(frozen=True, slots=True)
class BindSpec:
    text: str
    host: str
    port: int
    reuseaddr: bool
    nonblock: bool


def parse_bind(text: str) -> BindSpec:
    match = _BIND.match(text)
    if match is None:
        raise SetupError(f'Invalid value for "{text}": bind address must be of the form address:port[,flags...]')
    host, port_text, flag_text = match.groups()
    port = int(port_text)
    if port > 65535:
        raise SetupError(f'Invalid value for "{text}": port {port} is out of range')
    flags = set()
    for flag in filter(None, flag_text.lower().split(",")):
        if flag not in _FLAGS:
            raise SetupError(f'Invalid value for "{text}": unknown bind flag "{flag}" (known: r, so_reuseaddr, n, o_nonblock)')
        flags.add(_FLAGS[flag])
    return BindSpec(text, host.strip("[]"), port, "so_reuseaddr" in flags, "o_nonblock" in flags)


def bind_listener(spec: BindSpec, backlog: int) -> socket.socket:
    """A bound, listening, inheritable socket: workers get it as EINHORN_FD_n."""
    try:
        infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise SetupError(f'Invalid value for "{spec.text}": cannot resolve host {spec.host!r}: {error.strerror}') from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if spec.reuseaddr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise SetupError(f"Could not bind {spec.text}: {error.strerror}") from None
    sock.setblocking(not spec.nonblock)
    sock.set_inheritable(True)
    return sock


def bound_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise SetupError(f"Could not open lock file {path}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SetupError(
                f"File lock {path} already acquired by another Einhorn process. This likely indicates you tried to "
                "run Einhorn masters with the same cmd_name at the same time. Pass -c NAME or -d PATH to run another."
            ) from None
        yield
    finally:
        os.close(fd)


def open_command_socket(path: str, lockfile: str, log: Logger) -> socket.socket:
    """Create the command socket (mode 0600) while holding the lock, clearing a stale one."""
    with file_lock(lockfile):
        _clear_stale_socket(path, log)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            server.bind(path)
        except OSError as error:
            server.close()
            raise SetupError(f"Could not create the command socket at {path}: {error.strerror}. Pass -d PATH to put it elsewhere.") from None
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        server.listen(128)
        server.setblocking(False)
        return server


def _clear_stale_socket(path: str, log: Logger) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SetupError(
            f"Non-socket file present at Einhorn command socket path {path}. Either remove that file and restart "
            "Einhorn, or pass a `-d PATH_TO_SOCKET` to change the command socket location."
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as error:
        if error.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SetupError(f"Could not check the command socket at {path}: {error.strerror}") from None
    else:
        raise SetupError(
            f"Another process (probably another Einhorn) is listening on the Einhorn command socket at {path}. "
            "If you'd like to run this Einhorn as well, pass a `-d PATH_TO_SOCKET` to change the command socket location."
        )
    finally:
        probe.close()
    log.info(
        f"Blowing away old Einhorn command socket at {path}. This likely indicates a previous Einhorn master which exited uncleanly."
    )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
