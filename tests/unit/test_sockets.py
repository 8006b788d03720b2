"""einhorn.io.sockets: `-b` parsing, and the operator's error when a `-b` address is in use (who holds it, what to do)."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from einhorn.io.sockets import (
    BindSpec,
    PortUse,
    SetupError,
    SocketFile,
    accepting,
    address_in_use,
    bind_listener,
    listener_address,
    parse_bind,
    port_use,
    socket_file_state,
)

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")


@pytest.mark.parametrize(
    ("text", "host", "port", "reuseaddr", "nonblock"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080, False, False),
        ("0.0.0.0:0", "0.0.0.0", 0, False, False),  # port 0: any free port
        ("localhost:65535", "localhost", 65535, False, False),
        ("[::1]:80", "::1", 80, False, False),  # an IPv6 address in brackets, without them in the spec
        ("[::]:80,r", "::", 80, True, False),
        ("127.0.0.1:80,r", "127.0.0.1", 80, True, False),
        ("127.0.0.1:80,so_reuseaddr", "127.0.0.1", 80, True, False),
        ("127.0.0.1:80,n", "127.0.0.1", 80, False, True),
        ("127.0.0.1:80,o_nonblock,r", "127.0.0.1", 80, True, True),
        ("127.0.0.1:80,R,N", "127.0.0.1", 80, True, True),  # flags in any case
        ("127.0.0.1:80,r,r", "127.0.0.1", 80, True, False),
    ],
)
def test_parse_bind_tcp_forms_and_flags(text: str, host: str, port: int, reuseaddr: bool, nonblock: bool) -> None:
    assert parse_bind(text) == BindSpec(text, host, port, reuseaddr, nonblock)
    assert parse_bind(text).kind == "tcp"


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("[::1]:0,v6only", BindSpec("[::1]:0,v6only", "::1", 0, v6only=True)),
        ("[::]:80,reuseport,backlog=5", BindSpec("[::]:80,reuseport,backlog=5", "::", 80, reuseport=True, backlog=5)),
        ("unix:/run/app.sock", BindSpec("unix:/run/app.sock", "", 0, path="/run/app.sock")),
        ("/run/app.sock,mode=0660", BindSpec("/run/app.sock,mode=0660", "", 0, path="/run/app.sock", mode=0o660)),
        ("unix:/a/b,n,backlog=0,MODE=600", BindSpec("unix:/a/b,n,backlog=0,MODE=600", "", 0, nonblock=True, backlog=0, path="/a/b", mode=0o600)),
        ("systemd", BindSpec("systemd", "", 0, systemd="")),
        ("systemd:web", BindSpec("systemd:web", "", 0, systemd="web")),
    ],
)
def test_parse_bind_ipv6_unix_and_systemd_forms(text: str, spec: BindSpec) -> None:
    assert parse_bind(text) == spec


def test_a_relative_unix_path_is_made_absolute() -> None:
    assert parse_bind("unix:app.sock").path == os.path.abspath("app.sock")
    assert parse_bind("./app.sock").kind == "unix"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("unix:", "a UNIX socket needs a path"),
        ("unix:/a,r", 'unknown bind flag "r" (known: n, o_nonblock, backlog=N, mode=OCTAL)'),
        ("unix:/a,mode=8", "mode must be an octal file mode (mode=0660)"),
        ("unix:/a,mode", 'unknown bind flag "mode" (known: n, o_nonblock, backlog=N, mode=OCTAL)'),
        ("127.0.0.1:80,mode=0600", 'unknown bind flag "mode=0600" (known: r, so_reuseaddr, n, o_nonblock, reuseport, v6only, backlog=N, drain)'),
        ("127.0.0.1:80,backlog=x", "backlog must be an integer >= 0"),
        ("127.0.0.1:80,backlog=-1", "backlog must be an integer >= 0"),
        ("systemd,n", "systemd's sockets take no flags (systemd set them up)"),
        ("unix:/" + "x" * 120, "the UNIX socket path /" + "x" * 120 + " is longer than 107 bytes"),
    ],
)
def test_parse_bind_errors_of_the_new_forms(text: str, why: str) -> None:
    with pytest.raises(SetupError) as raised:
        parse_bind(text)
    assert str(raised.value) == f'Invalid value for "{text}": {why}'


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("127.0.0.1", "bind address must be of the form address:port[,flags...], unix:PATH[,flags...] or systemd[:NAME]"),
        ("127.0.0.1:", "bind address must be of the form address:port[,flags...], unix:PATH[,flags...] or systemd[:NAME]"),
        (":80", "bind address must be of the form address:port[,flags...], unix:PATH[,flags...] or systemd[:NAME]"),
        ("127.0.0.1:http", "bind address must be of the form address:port[,flags...], unix:PATH[,flags...] or systemd[:NAME]"),
        ("127.0.0.1:-1", "bind address must be of the form address:port[,flags...], unix:PATH[,flags...] or systemd[:NAME]"),
        ("::1:80", "bind address must be of the form address:port[,flags...], unix:PATH[,flags...] or systemd[:NAME]"),  # IPv6 needs its brackets
        ("127.0.0.1:80,", "bind address must be of the form address:port[,flags...], unix:PATH[,flags...] or systemd[:NAME]"),
        ("127.0.0.1:65536", "port 65536 is out of range"),
        ("127.0.0.1:80,x", 'unknown bind flag "x" (known: r, so_reuseaddr, n, o_nonblock, reuseport, v6only, backlog=N, drain)'),
        ("127.0.0.1:80,r,reuse", 'unknown bind flag "reuse" (known: r, so_reuseaddr, n, o_nonblock, reuseport, v6only, backlog=N, drain)'),
        # drain: TCP only
        ("unix:/a,drain", "drain is for TCP addresses only (einhorn binds one socket per generation on the address), and this is a UNIX socket"),
        ("systemd,drain", "drain is for TCP addresses only (einhorn binds one socket per generation on the address), and this is systemd's sockets"),
        ("systemd:web,n,drain", "systemd's sockets take no flags (systemd set them up)"),
        ("127.0.0.1:80,drain=1", 'unknown bind flag "drain=1" (known: r, so_reuseaddr, n, o_nonblock, reuseport, v6only, backlog=N, drain)'),
    ],
)
def test_parse_bind_errors_name_the_spec_and_say_why(text: str, why: str) -> None:
    with pytest.raises(SetupError) as raised:
        parse_bind(text)
    assert str(raised.value) == f'Invalid value for "{text}": {why}'


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[socket.socket]:
    family, host = request.param
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
    except OSError as error:
        sock.close()
        pytest.skip(f"cannot bind {host}: {error}")
    sock.listen(1)
    yield sock
    sock.close()


def port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


@linux
@pytest.mark.parametrize(
    ("listener", "asked"),
    [
        ((socket.AF_INET, "127.0.0.1"), "127.0.0.1"),
        ((socket.AF_INET, "0.0.0.0"), "127.0.0.1"),  # the wildcard covers it
        ((socket.AF_INET, "127.0.0.1"), "0.0.0.0"),
        ((socket.AF_INET6, "::1"), "::1"),
        ((socket.AF_INET6, "::"), "127.0.0.1"),  # dual-stack wildcard
    ],
    indirect=["listener"],
)
def test_port_use_names_this_process_for_its_listener(listener: socket.socket, asked: str) -> None:
    use = port_use(asked, port(listener))
    assert (os.getpid(), Path(f"/proc/{os.getpid()}/comm").read_text().strip()) in use.holders
    assert not use.hidden


@linux
@pytest.mark.parametrize("listener", [(socket.AF_INET, "127.0.0.1")], indirect=True)
def test_port_use_ignores_other_addresses_and_ports(listener: socket.socket) -> None:
    assert port_use("127.0.0.2", port(listener)).holders == ()
    assert port_use("::1", port(listener)).holders == ()
    other = (port(listener) + 1) % 65536 or 1
    assert os.getpid() not in dict(port_use("127.0.0.1", other).holders)


@linux
def test_port_use_counts_connections_in_time_wait_and_holds_no_process_for_them() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server side closes first: its end goes to TIME_WAIT
            assert client.recv(1) == b""
        number = port(server)
    use = port_use("127.0.0.1", number)
    assert use.time_wait >= 1
    assert os.getpid() not in dict(use.holders)


@linux
@pytest.mark.parametrize("listener", [(socket.AF_INET, "127.0.0.1")], indirect=True)
def test_bind_listener_on_a_held_port_names_the_holder(listener: socket.socket) -> None:
    spec = parse_bind(f"127.0.0.1:{port(listener)}")
    with pytest.raises(SetupError) as raised:
        bind_listener(spec, 10)
    assert f"held by pid {os.getpid()} (this einhorn)" in str(raised.value)


SPEC = parse_bind("127.0.0.1:8080")
SPEC_R = parse_bind("127.0.0.1:8080,r")
ALIVE = "Is another einhorn running, or are workers of a killed master still alive?"


def test_the_message_names_every_holder_with_its_name() -> None:
    use = PortUse(holders=((1234, "einhorn: web"), (1235, "python3")), hidden=False, time_wait=3)
    assert address_in_use(SPEC, use) == (
        f"Could not bind 127.0.0.1:8080: address already in use, held by pid 1234 (einhorn: web), pid 1235 (python3). {ALIVE}"
    )


def test_the_message_shows_a_few_holders_and_counts_the_rest() -> None:
    use = PortUse(holders=tuple((pid, "python3") for pid in range(100, 120)), hidden=False, time_wait=0)
    message = address_in_use(SPEC, use)
    assert "pid 107 (python3) and 12 more." in message and "pid 108" not in message


def test_the_message_says_when_the_holder_cannot_be_inspected() -> None:
    use = PortUse(holders=(), hidden=True, time_wait=0)
    assert address_in_use(SPEC, use) == (
        f"Could not bind 127.0.0.1:8080: address already in use, held by a process this user cannot inspect. {ALIVE}"
    )


def test_connections_in_time_wait_get_the_r_advice_or_say_why_r_did_not_help() -> None:
    use = PortUse(holders=(), hidden=False, time_wait=2)
    assert address_in_use(SPEC, use) == (
        "Could not bind 127.0.0.1:8080: address already in use by 2 connections in TIME_WAIT, left by a server"
        " that just exited (they clear within a minute). Bind with ,r (-b 127.0.0.1:8080,r), in every run,"
        " to reuse the port at once."
    )
    assert address_in_use(SPEC_R, use).endswith(
        "(they clear within a minute). ,r reuses such a port only if that server bound with ,r too."
    )


def test_without_anything_seen_the_message_still_says_what_usually_holds_a_port() -> None:
    nothing = PortUse(holders=(), hidden=False, time_wait=0)
    assert address_in_use(SPEC, nothing) == (
        f"Could not bind 127.0.0.1:8080: address already in use. {ALIVE} Add ,r (-b 127.0.0.1:8080,r) to reuse a port in TIME_WAIT."
    )
    assert address_in_use(SPEC_R, nothing) == f"Could not bind 127.0.0.1:8080,r: address already in use. {ALIVE}"


# --- bind_listener: IPv6, options, UNIX sockets -------------------------------------------------


def ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        pytest.skip(f"no IPv6 loopback here: {error}")


def test_an_ipv6_listener_serves_on_its_address() -> None:
    ipv6_loopback()
    with bind_listener(parse_bind("[::1]:0"), 10) as sock:
        assert sock.family == socket.AF_INET6 and sock.get_inheritable()
        assert listener_address(sock) == f"[::1]:{port(sock)}"
        with socket.create_connection(("::1", port(sock)), timeout=5):
            pass


@pytest.mark.parametrize(("flags", "reaches_ipv4"), [("", True), (",v6only", False)])
def test_the_ipv6_wildcard_is_dual_stack_unless_v6only(flags: str, reaches_ipv4: bool) -> None:
    ipv6_loopback()
    with bind_listener(parse_bind(f"[::]:0{flags}"), 10) as sock:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == (0 if reaches_ipv4 else 1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            assert client.connect_ex(("127.0.0.1", port(sock))) == (0 if reaches_ipv4 else errno.ECONNREFUSED)


def test_v6only_on_an_ipv4_address_is_refused() -> None:
    with pytest.raises(SetupError, match="v6only needs an IPv6 address, and 127.0.0.1 is AF_INET"):
        bind_listener(parse_bind("127.0.0.1:0,v6only"), 10)


def test_reuseport_lets_two_listeners_share_a_port() -> None:
    with bind_listener(parse_bind("127.0.0.1:0,reuseport"), 10) as first:
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        with bind_listener(parse_bind(f"127.0.0.1:{port(first)},reuseport"), 10) as second:
            assert port(second) == port(first)


def accept_queue_limit(sock: socket.socket) -> int:
    """How many connections the kernel queues before refusing (backlog + 1 on Linux), measured."""
    clients = []
    try:
        for n in range(64):
            client = socket.socket(socket.AF_UNIX if sock.family == socket.AF_UNIX else sock.family, socket.SOCK_STREAM)
            client.setblocking(False)
            clients.append(client)
            try:
                client.connect(sock.getsockname())
            except BlockingIOError:
                return n
            except OSError:
                return n
        return 64
    finally:
        for client in clients:
            client.close()


def test_backlog_per_listener_overrides_the_default(tmp_path: Path) -> None:
    with bind_listener(parse_bind(f"unix:{tmp_path / 'a.sock'},backlog=2"), 50) as sock:
        assert accept_queue_limit(sock) == 3  # backlog 2 (+1, Linux), not 50
    with bind_listener(parse_bind(f"unix:{tmp_path / 'b.sock'}"), 4) as sock:
        assert accept_queue_limit(sock) == 5


def test_a_unix_listener_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    with bind_listener(parse_bind(f"unix:{path},mode=0640"), 10) as sock:
        assert sock.family == socket.AF_UNIX and sock.get_inheritable()
        assert stat.S_ISSOCK(path.lstat().st_mode) and stat.S_IMODE(path.lstat().st_mode) == 0o640
        assert listener_address(sock) == str(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))


def test_a_stale_unix_socket_is_removed_and_a_live_one_or_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(str(path))  # bound, never listening: connect is refused, as after a crash
    assert socket_file_state(str(path)) is SocketFile.STALE
    with bind_listener(parse_bind(f"unix:{path}"), 10) as sock:
        assert socket_file_state(str(path)) is SocketFile.LIVE
        with pytest.raises(SetupError, match=f"another process is listening on {path}"):
            bind_listener(parse_bind(f"unix:{path}"), 10)
        assert sock.getsockname() == str(path)  # the live one is untouched
    path.unlink()
    path.write_text("data")
    with pytest.raises(SetupError, match=f"{path} exists and is not a socket"):
        bind_listener(parse_bind(f"unix:{path}"), 10)
    assert path.read_text() == "data"
# --- is a listener still accepting? -------------------------------------------------------------


@pytest.mark.parametrize("how", [socket.SHUT_RD, socket.SHUT_RDWR])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6, socket.AF_UNIX])
def test_a_listener_shut_down_through_any_copy_stops_accepting(tmp_path: Path, family: socket.AddressFamily, how: int) -> None:
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    address: str | tuple[str, int] = str(tmp_path / "l.sock") if family == socket.AF_UNIX else ("::1" if family == socket.AF_INET6 else "127.0.0.1", 0)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind(address)
        sock.listen(8)
        with socket.socket(family, socket.SOCK_STREAM) as client:
            client.connect(sock.getsockname())  # a connection waiting in the queue does not count as "stopped"
            assert accepting(sock)
        with sock.dup() as copy:
            copy.shutdown(how)
        assert not accepting(sock)


def test_a_copy_closed_or_shut_for_writing_leaves_the_listener_accepting() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.dup().close()
        with sock.dup() as copy:
            copy.shutdown(socket.SHUT_WR)
        assert accepting(sock)


def test_listener_addresses_as_state_shows_them(tmp_path: Path) -> None:
    with socket.socket() as v4:
        v4.bind(("127.0.0.1", 0))
        assert listener_address(v4) == f"127.0.0.1:{v4.getsockname()[1]}"
    if socket.has_ipv6:
        with socket.socket(socket.AF_INET6) as v6:
            v6.bind(("::1", 0))
            assert listener_address(v6) == f"[::1]:{v6.getsockname()[1]}"
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(tmp_path / "u.sock"))
        assert listener_address(unix) == str(tmp_path / "u.sock")


# --- what binding loads -------------------------------------------------------------------------

BIND_PROBE = """
import socket, sys
at_start = set(sys.modules)  # an editable install's import finder brings ipaddress with the site
from einhorn.io.sockets import bind_listener, parse_bind
for text in sys.argv[1:]:
    bind_listener(parse_bind(text), 5).close()
print(sorted({"encodings.idna", "ipaddress"} & (set(sys.modules) - at_start)))
"""


@pytest.mark.parametrize(("binds", "loaded"), [(["127.0.0.1:0", "[::1]:0"], "[]"), (["localhost:0"], "['encodings.idna']")])
def test_a_numeric_address_binds_without_the_idna_codec(binds: list[str], loaded: str) -> None:
    """`getaddrinfo` encodes a str host with idna (with stringprep and unicodedata, for the master's life);
    a numeric address does not need it, a host name still gets it."""
    if "[::1]:0" in binds and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    result = subprocess.run([sys.executable, "-c", BIND_PROBE, *binds], capture_output=True, text=True, timeout=60)
    if "[::1]:0" in binds and "Cannot assign requested address" in result.stderr:
        pytest.skip("no IPv6 loopback here")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == loaded


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("127.0.0.1:80,drain", BindSpec("127.0.0.1:80,drain", "127.0.0.1", 80, drain=True)),
        ("[::]:0,DRAIN,r,backlog=5", BindSpec("[::]:0,DRAIN,r,backlog=5", "::", 0, reuseaddr=True, backlog=5, drain=True)),
    ],
)
def test_drain_is_a_tcp_flag(text: str, spec: BindSpec) -> None:
    assert parse_bind(text) == spec


def test_drain_needs_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(SetupError) as raised:
        parse_bind("127.0.0.1:80,drain")
    assert str(raised.value) == 'Invalid value for "127.0.0.1:80,drain": drain needs Linux (SO_ATTACH_REUSEPORT_CBPF), and this is darwin'


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drain is Linux's")
def test_a_drain_listener_is_in_a_reuseport_group_that_sends_nothing_to_a_newcomer() -> None:
    """SO_REUSEPORT implied; the steering program attached at bind keeps every connection on the listener itself."""
    with bind_listener(parse_bind("127.0.0.1:0,drain"), 10) as first:
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        with bind_listener(parse_bind(f"127.0.0.1:{port(first)},reuseport"), 10) as newcomer:
            clients = [socket.create_connection(("127.0.0.1", port(first)), timeout=5) for _ in range(8)]
            try:
                newcomer.setblocking(False)
                with pytest.raises(BlockingIOError):
                    newcomer.accept()
                for _ in clients:
                    first.accept()[0].close()
            finally:
                for client in clients:
                    client.close()
