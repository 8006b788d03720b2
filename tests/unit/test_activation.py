"""einhorn.io.activation: reading what systemd passed (sd_listen_fds), and adopting it per `-b systemd[:NAME]`."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from einhorn.io.activation import Activation, Passed, passed_sockets, without_listen_variables
from einhorn.io.logs import Logger
from einhorn.io.sockets import SetupError, parse_bind


def test_the_sockets_are_for_this_pid_only() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:admin"}
    assert passed_sockets(env, 42) == Activation([Passed(3, "web"), Passed(4, "admin")])
    other = passed_sockets(env, 43)
    assert other.passed == () and other.problem == "LISTEN_PID is 42, not this process (43)"
    assert passed_sockets({}, 42).problem == "LISTEN_PID and LISTEN_FDS are not set: is einhorn started by a socket unit?"
    assert passed_sockets({"LISTEN_PID": "42", "LISTEN_FDS": "x"}, 42).problem == "LISTEN_FDS is 'x', not a count"


def test_names_that_do_not_match_the_count_are_ignored_as_sd_listen_fds_with_names_does() -> None:
    assert passed_sockets({"LISTEN_PID": "7", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web"}, 7).passed == [Passed(3, "unknown"), Passed(4, "unknown")]
    assert passed_sockets({"LISTEN_PID": "7", "LISTEN_FDS": "1"}, 7).passed == [Passed(3, "unknown")]


def test_the_variables_are_taken_out() -> None:
    assert without_listen_variables({"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a", "PATH": "/bin"}) == {"PATH": "/bin"}


@pytest.fixture
def listening() -> Iterator[list[socket.socket]]:
    socks = []
    for _ in range(3):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    for sock in socks[:2]:
        sock.listen(1)
    yield socks
    for sock in socks:
        sock.close()


def test_take_by_name_or_all(listening: list[socket.socket]) -> None:
    fds = [os.dup(s.fileno()) for s in listening[:2]]
    activation = Activation([Passed(fds[0], "web"), Passed(fds[1], "admin")])
    (web,) = activation.take(parse_bind("systemd:web"))
    assert web[1] == "web" and web[0].getsockname() == listening[0].getsockname() and web[0].get_inheritable()
    with pytest.raises(SetupError, match="systemd passed no socket named 'api' \\(passed: admin, web\\)"):
        activation.take(parse_bind("systemd:api"))
    with pytest.raises(SetupError, match="is already adopted by another -b systemd"):
        activation.take(parse_bind("systemd"))
    for sock, _ in [web]:
        sock.close()
    os.close(fds[1])


def test_take_refuses_a_socket_that_does_not_listen(listening: list[socket.socket]) -> None:
    fd = os.dup(listening[2].fileno())
    with pytest.raises(SetupError, match=f"fd {fd} \\(web\\) passed by systemd is not a listening stream socket"):
        Activation([Passed(fd, "web")]).take(parse_bind("systemd"))
    os.close(fd)


def test_without_sockets_the_error_says_why() -> None:
    with pytest.raises(SetupError, match="^-b systemd: systemd passed no sockets \\(LISTEN_PID is 1, not this process \\(2\\)\\)$"):
        passed_sockets({"LISTEN_PID": "1", "LISTEN_FDS": "1"}, 2).take(parse_bind("systemd"))


def test_untaken_sockets_are_closed(listening: list[socket.socket]) -> None:
    fds = [os.dup(s.fileno()) for s in listening[:2]]
    activation = Activation([Passed(fds[0], "web"), Passed(fds[1], "admin")])
    (web, _), = activation.take(parse_bind("systemd:web"))
    activation.close_untaken(Logger(verbosity=2))
    with pytest.raises(OSError):
        os.fstat(fds[1])
    reused = os.dup(web.fileno())  # the lowest free number: most likely the one just closed
    activation.close_untaken(Logger(verbosity=2))  # again (an error path): closes nothing
    os.fstat(reused)
    os.close(reused)
    assert web.fileno() == fds[0]
    web.close()
