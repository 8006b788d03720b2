"""Listening sockets (`-b`) and the command socket file (`-d`, under the `-f` lock)."""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import re
import select
import socket
import stat
import sys

from einhorn.core.record import dataclass
from einhorn.io.logs import Logger

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: an idle master need not hold it (issue 14)
if TYPE_CHECKING:
    import ipaddress  # at run time only when a port is in use (`_ip`): an idle master need not hold it

_TCP_ADDRESS = re.compile(r"\A(\[[^\]]+\]|[^:\[\]]+):(\d+)\Z")
_FLAGS = {
    "r": "so_reuseaddr",
    "so_reuseaddr": "so_reuseaddr",
    "n": "o_nonblock",
    "o_nonblock": "o_nonblock",
    "reuseport": "reuseport",
    "v6only": "v6only",
    "drain": "drain",
}
_VALUE_FLAGS = ("backlog", "mode")
_KNOWN_FLAGS = {
    "tcp": ("so_reuseaddr", "o_nonblock", "reuseport", "v6only", "backlog", "drain"),
    "unix": ("o_nonblock", "backlog", "mode"),
    "systemd": (),
}
_KNOWN_TEXT = {
    "tcp": "r, so_reuseaddr, n, o_nonblock, reuseport, v6only, backlog=N, drain",
    "unix": "n, o_nonblock, backlog=N, mode=OCTAL",
}
SYSTEMD = "systemd"
UNIX_PREFIX = "unix:"
MAX_UNIX_PATH = 107
"""Bytes of a UNIX socket path (sun_path holds 108 with its NUL)."""


class SetupError(Exception):
    """A start-up problem with a clear message for the operator; the CLI exits non-zero."""


@dataclass(frozen=True, slots=True)
class BindSpec:
    """One `-b`: a TCP address (`host`, `port`), a UNIX socket (`path`), or systemd's sockets (`systemd`)."""

    text: str
    host: str
    port: int
    reuseaddr: bool = False
    nonblock: bool = False
    reuseport: bool = False
    v6only: bool = False
    backlog: int | None = None
    """`backlog=N`: this listener's, instead of `-l`."""
    path: str | None = None
    """A UNIX stream socket's path (absolute)."""
    mode: int | None = None
    """`mode=0660`: the UNIX socket file's mode."""
    systemd: str | None = None
    """`systemd` (""): adopt every socket systemd passed; `systemd:NAME`: those named NAME."""
    drain: bool = False
    """`drain` (TCP, Linux): one socket per generation in one SO_REUSEPORT group, new connections
    steered between them (einhorn/io/steering.py); implies `reuseport`."""

    @property
    def kind(self) -> str:
        return SYSTEMD if self.systemd is not None else "unix" if self.path is not None else "tcp"


def parse_bind(text: str) -> BindSpec:
    """`HOST:PORT`, `[V6]:PORT`, `unix:PATH` (or any address with a `/`), `systemd[:NAME]`; then `,flags`."""
    address, comma, option_text = text.partition(",")
    options = option_text.split(",") if comma else []
    form = f'Invalid value for "{text}": bind address must be of the form address:port[,flags...], unix:PATH[,flags...] or systemd[:NAME]'
    if "" in options:
        raise SetupError(form)
    host, port, path, systemd = "", 0, None, None
    if address == SYSTEMD or address.startswith(SYSTEMD + ":"):
        systemd = address[len(SYSTEMD) + 1 :]
        kind = SYSTEMD
    elif address.startswith(UNIX_PREFIX) or "/" in address:
        given = address[len(UNIX_PREFIX) :] if address.startswith(UNIX_PREFIX) else address
        if not given:
            raise SetupError(f'Invalid value for "{text}": a UNIX socket needs a path')
        path = os.path.abspath(given)
        if len(os.fsencode(path)) > MAX_UNIX_PATH:
            raise SetupError(f'Invalid value for "{text}": the UNIX socket path {path} is longer than {MAX_UNIX_PATH} bytes')
        kind = "unix"
    else:
        match = _TCP_ADDRESS.match(address)
        if match is None:
            raise SetupError(form)
        host, port_text = match.groups()
        host, port = host.strip("[]"), int(port_text)
        if port > 65535:
            raise SetupError(f'Invalid value for "{text}": port {port} is out of range')
        kind = "tcp"
    flags: set[str] = set()
    values: dict[str, int] = {}
    for option in options:
        name, equals, value = option.lower().partition("=")
        flag = name if equals else _FLAGS.get(name, name)
        if flag == "drain" and not equals:
            _check_drain(text, kind)
        if flag not in _KNOWN_FLAGS[kind] or (flag in _VALUE_FLAGS) != bool(equals):
            if kind == SYSTEMD:
                raise SetupError(f'Invalid value for "{text}": systemd\'s sockets take no flags (systemd set them up)')
            raise SetupError(f'Invalid value for "{text}": unknown bind flag "{option.lower()}" (known: {_KNOWN_TEXT[kind]})')
        if equals:
            values[flag] = _flag_value(text, flag, value)
        else:
            flags.add(flag)
    return BindSpec(
        text,
        host,
        port,
        reuseaddr="so_reuseaddr" in flags,
        nonblock="o_nonblock" in flags,
        reuseport="reuseport" in flags,
        v6only="v6only" in flags,
        backlog=values.get("backlog"),
        path=path,
        mode=values.get("mode"),
        systemd=systemd,
        drain="drain" in flags,
    )


def _check_drain(text: str, kind: str) -> None:
    if kind != "tcp":
        what = "systemd's sockets" if kind == SYSTEMD else "a UNIX socket"
        raise SetupError(
            f'Invalid value for "{text}": drain is for TCP addresses only (einhorn binds one socket per generation '
            f"on the address), and this is {what}"
        )
    if not sys.platform.startswith("linux"):
        raise SetupError(f'Invalid value for "{text}": drain needs Linux (SO_ATTACH_REUSEPORT_CBPF), and this is {sys.platform}')


def _flag_value(text: str, flag: str, value: str) -> int:
    try:
        number = int(value, 8 if flag == "mode" else 10)
    except ValueError:
        number = -1
    if flag == "mode" and not 0 <= number <= 0o777:
        raise SetupError(f'Invalid value for "{text}": mode must be an octal file mode (mode=0660)')
    if flag == "backlog" and number < 0:
        raise SetupError(f'Invalid value for "{text}": backlog must be an integer >= 0')
    return number


def bind_listener(spec: BindSpec, backlog: int, log: Logger | None = None) -> socket.socket:
    """A bound, listening, inheritable socket: workers get it as EINHORN_FD_n. `backlog` is `-l`'s."""
    if spec.path is not None:
        sock = _bind_unix(spec, spec.path, spec.backlog if spec.backlog is not None else backlog, log)
    else:
        sock = _bind_tcp(spec, spec.backlog if spec.backlog is not None else backlog)
    sock.setblocking(not spec.nonblock)
    sock.set_inheritable(True)
    return sock


def _numeric_or_name(host: str) -> str | bytes:
    """A numeric address as bytes: `getaddrinfo` encodes a str host with the idna codec (encodings.idna,
    stringprep, unicodedata: half a MiB for the life of the master), which changes no numeric address."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return host.encode("ascii")
    return host


def _bind_tcp(spec: BindSpec, backlog: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(_numeric_or_name(spec.host), spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise SetupError(f'Invalid value for "{spec.text}": cannot resolve host {spec.host!r}: {error.strerror}') from None
    family, kind, proto, _, address = infos[0]
    if spec.v6only and family != socket.AF_INET6:
        raise SetupError(f'Invalid value for "{spec.text}": v6only needs an IPv6 address, and {spec.host} is {family.name}')
    try:
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise SetupError(f"Could not bind {spec.text}: {error.strerror}") from None
    try:
        if spec.reuseaddr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if spec.reuseport or spec.drain:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # Explicit either way: the kernel's default (net.ipv6.bindv6only) varies between machines.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if spec.v6only else 0)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise SetupError(address_in_use(spec, port_use(str(address[0]), int(address[1])))) from None
        raise SetupError(f"Could not bind {spec.text}: {error.strerror}") from None
    if spec.drain:
        from einhorn.io import steering  # only with drain

        try:
            steering.attach(sock, [(0, 1)])  # everything to this socket: one joining the group gets nothing until steered
        except OSError as error:
            sock.close()
            raise SetupError(f"Could not bind {spec.text}: cannot attach the drain steering program (SO_ATTACH_REUSEPORT_CBPF): {error.strerror}") from None
    return sock


def _bind_unix(spec: BindSpec, path: str, backlog: int, log: Logger | None) -> socket.socket:
    """Bind `path`, first removing a stale socket file there (one nobody listens on); a live one is an error."""
    match socket_file_state(path):
        case SocketFile.LIVE:
            raise SetupError(f"Could not bind {spec.text}: another process is listening on {path}. Stop it, or bind another path.")
        case SocketFile.NOT_A_SOCKET:
            raise SetupError(f"Could not bind {spec.text}: {path} exists and is not a socket. Remove it, or bind another path.")
        case SocketFile.STALE:
            if log is not None:
                log.info(f"Removing the stale socket file {path} (nothing listens on it: left by a process that exited uncleanly)")
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        case SocketFile.ABSENT:
            pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~spec.mode) if spec.mode is not None else None
    try:
        sock.bind(path)
        if spec.mode is not None:
            os.chmod(path, spec.mode)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise SetupError(f"Could not bind {spec.text}: {error.strerror}") from None
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    return sock


class SocketFile(enum.Enum):
    ABSENT = "absent"
    STALE = "stale"
    """A socket file nothing listens on (connect is refused)."""
    LIVE = "live"
    NOT_A_SOCKET = "not a socket"


def socket_file_state(path: str) -> SocketFile:
    """What is at `path`: tells a live UNIX socket from a stale one by connecting to it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return SocketFile.ABSENT
    if not stat.S_ISSOCK(mode):
        return SocketFile.NOT_A_SOCKET
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a listener with a full backlog is live, not a reason to wait
        try:
            probe.connect(path)
        except FileNotFoundError:
            return SocketFile.ABSENT
        except ConnectionRefusedError:
            return SocketFile.STALE
        except BlockingIOError:
            return SocketFile.LIVE
        except OSError as error:
            if error.errno == errno.EPROTOTYPE:  # a datagram socket: someone else's
                return SocketFile.LIVE
            raise SetupError(f"Could not check the socket file {path}: {error.strerror}") from None
    return SocketFile.LIVE


def listener_address(sock: socket.socket) -> str:
    """Where a listener really is: `127.0.0.1:8080`, `[::1]:8080`, a UNIX path (`@name` if abstract)."""
    name = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    if sock.family == socket.AF_INET:
        return f"{name[0]}:{name[1]}"
    if isinstance(name, bytes):  # abstract namespace
        return "@" + name[1:].decode(errors="replace")
    return str(name)


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
    import ipaddress

    ip = ipaddress.ip_address(host.partition("%")[0])  # without an IPv6 scope
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def _proc_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in hex, each in host byte order."""
    import ipaddress

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
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link in inodes:
                    held.add(link)
            except OSError:
                pass
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


def bound_port(sock: socket.socket) -> int | None:
    """The TCP port a listener is bound to; None for a UNIX socket."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return int(sock.getsockname()[1])


def _lock_file(path: str) -> int:
    """The lock file's descriptor, its lock held (until it is closed)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise SetupError(f"Could not open lock file {path}: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SetupError(
            f"File lock {path} already acquired by another Einhorn process. This likely indicates you tried to "
            "run Einhorn masters with the same cmd_name at the same time. Pass -c NAME or -d PATH to run another."
        ) from None
    except OSError:
        os.close(fd)
        raise
    return fd


def open_command_socket(path: str, lockfile: str, log: Logger) -> socket.socket:
    """Create the command socket (mode 0600) while holding the lock, clearing a stale one."""
    lock = _lock_file(lockfile)
    try:
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
    finally:
        os.close(lock)


def _clear_stale_socket(path: str, log: Logger) -> None:
    match socket_file_state(path):
        case SocketFile.ABSENT:
            return
        case SocketFile.NOT_A_SOCKET:
            raise SetupError(
                f"Non-socket file present at Einhorn command socket path {path}. Either remove that file and restart "
                "Einhorn, or pass a `-d PATH_TO_SOCKET` to change the command socket location."
            )
        case SocketFile.LIVE:
            raise SetupError(
                f"Another process (probably another Einhorn) is listening on the Einhorn command socket at {path}. "
                "If you'd like to run this Einhorn as well, pass a `-d PATH_TO_SOCKET` to change the command socket location."
            )
        case SocketFile.STALE:
            log.info(
                f"Blowing away old Einhorn command socket at {path}. This likely indicates a previous Einhorn master which exited uncleanly."
            )
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
