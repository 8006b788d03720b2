"""einhorn.io.sockets: `-b` parsing, and the operator's error when a `-b` address is in use (who holds it, what to do)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from einhorn.io.sockets import (
    BindSpec,
    PortUse,
    SetupError,
    accepting,
    address_in_use,
    bind_listener,
    listener_address,
    parse_bind,
    port_use,
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
def test_parse_bind_forms_and_flags(text: str, host: str, port: int, reuseaddr: bool, nonblock: bool) -> None:
    assert parse_bind(text) == BindSpec(text, host, port, reuseaddr, nonblock)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("127.0.0.1", "bind address must be of the form address:port[,flags...]"),
        ("127.0.0.1:", "bind address must be of the form address:port[,flags...]"),
        (":80", "bind address must be of the form address:port[,flags...]"),
        ("127.0.0.1:http", "bind address must be of the form address:port[,flags...]"),
        ("127.0.0.1:-1", "bind address must be of the form address:port[,flags...]"),
        ("::1:80", "bind address must be of the form address:port[,flags...]"),  # IPv6 needs its brackets
        ("127.0.0.1:80,", "bind address must be of the form address:port[,flags...]"),
        ("127.0.0.1:65536", "port 65536 is out of range"),
        ("127.0.0.1:80,x", 'unknown bind flag "x" (known: r, so_reuseaddr, n, o_nonblock)'),
        ("127.0.0.1:80,r,reuse", 'unknown bind flag "reuse" (known: r, so_reuseaddr, n, o_nonblock)'),
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
