"""Socket activation (`-b systemd`, `-b systemd:NAME`): adopting the listening sockets systemd passed.

systemd's convention (sd_listen_fds(3)): the sockets are at fds 3, 4, ...,
`LISTEN_FDS` says how many, `LISTEN_PID` which process they are for, and
`LISTEN_FDNAMES` (colon-separated) names them. The master reads them once, at
a fresh start, and takes the variables out of its environment, so that neither
its workers nor its re-exec'd self see them: after a re-exec the adopted
sockets come back through the hand-off registry like every listener.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence

from einhorn.core.record import dataclass, field
from einhorn.io.logs import Logger
from einhorn.io.sockets import BindSpec, SetupError
from einhorn.io.spawn import LISTEN_FDS_START

LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
UNNAMED = "unknown"
"""The name sd_listen_fds_with_names gives a socket without one."""


@dataclass(frozen=True, slots=True)
class Passed:
    """One socket systemd passed: its fd and name."""

    fd: int
    name: str


@dataclass
class Activation:
    """The sockets passed to this process, and which `-b systemd` specs have taken them."""

    passed: Sequence[Passed]
    problem: str | None = None
    """Why there are none (no LISTEN_PID, or another process's), for the operator's error."""
    taken: set[int] = field(default_factory=set)

    def take(self, spec: BindSpec) -> list[tuple[socket.socket, str]]:
        """The sockets `spec` (`systemd` or `systemd:NAME`) adopts, each with its name, in fd order."""
        assert spec.systemd is not None
        wanted = [p for p in self.passed if not spec.systemd or p.name == spec.systemd]
        if not wanted:
            if self.problem is not None:
                raise SetupError(f"-b {spec.text}: systemd passed no sockets ({self.problem})")
            names = sorted({p.name for p in self.passed})
            raise SetupError(f"-b {spec.text}: systemd passed no socket named {spec.systemd!r} (passed: {', '.join(names)})")
        adopted = []
        for item in wanted:
            if item.fd in self.taken:
                raise SetupError(f"-b {spec.text}: fd {item.fd} ({item.name}) is already adopted by another -b systemd")
            self.taken.add(item.fd)
            adopted.append((_listening_socket(spec, item), item.name))
        return adopted

    def close_untaken(self, log: Logger) -> None:
        """Close the passed sockets no `-b systemd` adopted: they must not leak into workers. Once: a
        closed fd number may be reused at once, so it counts as taken from then on."""
        for item in self.passed:
            if item.fd not in self.taken:
                log.info(f"Closing fd {item.fd} ({item.name}) passed by systemd: no -b systemd adopts it")
                self.taken.add(item.fd)
                try:
                    os.close(item.fd)
                except OSError:
                    pass


def passed_sockets(environ: Mapping[str, str], pid: int) -> Activation:
    """What systemd passed to process `pid` (sd_listen_fds_with_names), from its environment."""
    listen_pid = environ.get("LISTEN_PID")
    if listen_pid is None or "LISTEN_FDS" not in environ:
        return Activation((), "LISTEN_PID and LISTEN_FDS are not set: is einhorn started by a socket unit?")
    if listen_pid.strip() != str(pid):
        return Activation((), f"LISTEN_PID is {listen_pid}, not this process ({pid})")
    try:
        count = int(environ["LISTEN_FDS"])
    except ValueError:
        count = -1
    if count < 0:
        return Activation((), f"LISTEN_FDS is {environ['LISTEN_FDS']!r}, not a count")
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    if len(names) != count:
        names = [UNNAMED] * count
    return Activation([Passed(LISTEN_FDS_START + n, name or UNNAMED) for n, name in enumerate(names)])


def without_listen_variables(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in LISTEN_VARIABLES}


def _listening_socket(spec: BindSpec, item: Passed) -> socket.socket:
    try:
        sock = socket.socket(fileno=item.fd)
    except OSError as error:
        raise SetupError(f"-b {spec.text}: fd {item.fd} ({item.name}) passed by systemd is not a socket: {error.strerror}") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise SetupError(f"-b {spec.text}: fd {item.fd} ({item.name}) passed by systemd is not a listening stream socket")
    sock.set_inheritable(True)
    return sock
