"""Listening sockets (`-b`) and the command socket file (`-d`, under the `-f` lock)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import re
import select
import socket
import stat
import sys
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
        if error.errno == errno.EADDRINUSE:
            raise SetupError(address_in_use(spec, port_use(str(address[0]), int(address[1])))) from None
        raise SetupError(f"Could not bind {spec.text}: {error.strerror}") from None
    sock.setblocking(not spec.nonblock)
    sock.set_inheritable(True)
    return sock


# --- who holds a port: read once, on the EADDRINUSE error path only -------------------------------

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TCP_TIME_WAIT = "06"
MAX_HOLDERS_SHOWN = 8
STILL_ALIVE = "Is another einhorn running, or are workers of a killed master still alive?"


@dataclass(frozen=True, slots=True)
class PortUse:
    """What /proc (Linux) shows on a TCP address; all empty where there is no /proc/net/tcp."""

    holders: tuple[tuple[int, str], ...]
    """(pid, name) of each process this user can inspect that has a socket on the address"""
    hidden: bool
    """sockets on the address that no inspectable process holds (another user's, as non-root)"""
    time_wait: int
    """connections in TIME_WAIT on the address: they hold a port without any process"""


def port_use(host: str, port: int) -> PortUse:
    """Who holds `host:port`: socket inodes from /proc/net/tcp{,6}, then the `socket:[inode]` fd links in /proc/*/fd."""
    wanted = _ip(host)
    inodes: set[str] = set()
    time_wait = 0
    for table in TCP_TABLES:
        try:
            with open(table) as f:
                rows = f.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10:
                continue
            address, _, port_hex = fields[1].partition(":")
            if int(port_hex, 16) != port or not _overlap(wanted, _proc_ip(address)):
                continue
            if fields[3] == TCP_TIME_WAIT:
                time_wait += 1
            elif fields[9] != "0":  # 0: no process owns it (TIME_WAIT, orphaned FIN_WAIT...)
                inodes.add(f"socket:[{fields[9]}]")
    holding = _processes_holding(inodes) if inodes else {}
    seen: set[str] = set().union(*holding.values())
    holders = tuple((pid, _process_name(pid)) for pid in sorted(holding))
    return PortUse(holders, hidden=bool(inodes - seen), time_wait=time_wait)


def address_in_use(spec: BindSpec, use: PortUse) -> str:
    """The operator's error for EADDRINUSE: who holds the address, if we can tell, and what to do."""
    prefix = f"Could not bind {spec.text}: address already in use"
    with_r = f"-b {spec.text},r"
    if use.holders:
        shown = [f"pid {pid} ({'this einhorn' if pid == os.getpid() else name})" for pid, name in use.holders[:MAX_HOLDERS_SHOWN]]
        more = len(use.holders) - len(shown)
        return f"{prefix}, held by {', '.join(shown)}{f' and {more} more' if more > 0 else ''}. {STILL_ALIVE}"
    if use.hidden:
        return f"{prefix}, held by a process this user cannot inspect. {STILL_ALIVE}"
    if use.time_wait:
        left = f"by {use.time_wait} connection{'s' if use.time_wait > 1 else ''} in TIME_WAIT, left by a server that just exited (they clear within a minute)"
        if spec.reuseaddr:
            return f"{prefix} {left}. ,r reuses such a port only if that server bound with ,r too."
        return f"{prefix} {left}. Bind with ,r ({with_r}), in every run, to reuse the port at once."
    hint = "" if spec.reuseaddr else f" Add ,r ({with_r}) to reuse a port in TIME_WAIT."
    return f"{prefix}. {STILL_ALIVE}{hint}"


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(host.partition("%")[0])  # without an IPv6 scope
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def _proc_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in hex, each in host byte order."""
    raw = bytes.fromhex(text)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return _ip(str(ipaddress.ip_address(raw)))


def _overlap(a: ipaddress.IPv4Address | ipaddress.IPv6Address, b: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether binding one can collide with the other: the same address, or a wildcard that covers the other
    (`::` covers IPv4 too unless IPV6_V6ONLY, which /proc does not show; here it only names suspects)."""
    if a == b:
        return True
    return any(x.is_unspecified and (x.version == 6 or y.version == 4) for x, y in ((a, b), (b, a)))


def _processes_holding(inodes: set[str]) -> dict[int, set[str]]:
    """pid -> the wanted socket links it holds, for the processes this user may read (all of them as root)."""
    found: dict[int, set[str]] = {}
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # not ours to read, or gone meanwhile
            continue
        held = set()
        for fd in fds:
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link in inodes:
                    held.add(link)
        if held:
            found[pid] = held
    return found


def _process_name(pid: int) -> str:
    """The kernel's short name (`ps -o comm`): `einhorn: NAME` for a master, even without setproctitle."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


def listener_address(sock: socket.socket) -> str:
    """How `state` names a listener: `HOST:PORT`, `[V6ADDR]:PORT`, or a UNIX socket's path."""
    address = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"[{address[0]}]:{address[1]}"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return os.fsdecode(address)


_HUNG_UP = select.POLLHUP | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


def accepting(sock: socket.socket) -> bool:
    """Whether a listening socket still takes connections (no system call here allocates a descriptor).

    `shutdown()` of a listening socket, by any process holding it, stops it for
    every holder. On Linux a TCP listener then drops SO_ACCEPTCONN; a UNIX one
    keeps it, but polls as hung up (POLLRDHUP), as a shut TCP one does too.
    """
    try:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False
    except OSError:
        pass  # SO_ACCEPTCONN unknown here: the poll still tells
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | _HUNG_UP)
    return not any(revents & _HUNG_UP for _, revents in poller.poll(0))


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
