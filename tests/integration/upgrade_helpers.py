"""Helpers for the upgrade tests: `--reexec-as` wrapper scripts, sockets seen through /proc, a client load.

The wrappers are small POSIX shell scripts. Each tells the two ways einhorn
runs it apart: with `--upgrade-check` (the check before a re-exec) or with
`--with-state-fd FD` (the re-exec itself), and ends, unless told otherwise, by
exec'ing the einhorn under test with the arguments it was given.
"""

from __future__ import annotations

import datetime
import re
import shlex
import socket
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.harness import EINHORN, Master
from tests.integration.procfs import environ_of
from tests.integration.waiting import wait_until

HOLD_LIMIT_SECONDS = 20
"""A wrapper told to hold the exec waits at most this long for the test's go-ahead."""


def write_wrapper(
    directory: Path,
    name: str,
    *,
    on_check: str = "",
    on_exec: str = "",
    exec_einhorn: bool = True,
    shell: str = "/bin/sh",
    command: Sequence[str] = EINHORN,
) -> str:
    """An executable `--reexec-as` script; its path.

    `on_check` runs before the einhorn `--upgrade-check` and `on_exec` before the
    re-exec proper, where `$state_fd` holds the state pipe's fd number and
    `$here` the wrapper's directory. Without `exec_einhorn` the re-exec proper
    ends after `on_exec` (the script exits 0 unless `on_exec` exits first).
    `command` is how the script runs einhorn.
    """
    einhorn = shlex.join(command)
    path = directory / name
    path.write_text(
        f"""#!{shell}
here={shlex.quote(str(directory))}
state_fd=
check=
previous=
for arg in "$@"; do
    [ "$arg" = "--" ] && break
    [ "$arg" = "--upgrade-check" ] && check=1
    [ "$previous" = "--with-state-fd" ] && state_fd=$arg
    previous=$arg
done
if [ -n "$check" ]; then
{on_check or ":"}
    exec {einhorn} "$@"
fi
{on_exec or ":"}
{f'exec {einhorn} "$@"' if exec_einhorn else "exit 0"}
"""
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


HOLD = f"""
if [ -e "$here/hold" ]; then
    rm -f "$here/hold"
    touch "$here/holding"
    n=0
    while [ ! -e "$here/go" ] && [ $n -lt {HOLD_LIMIT_SECONDS * 20} ]; do sleep 0.05; n=$((n + 1)); done
    rm -f "$here/go" "$here/holding"
fi
"""
"""`on_exec` snippet: if the file `hold` exists, create `holding` and wait for `go` before exec'ing.

The master's pid is then a shell's: a test can act "between exec and restore"."""


def upgrade(master: Master, command: str = "upgrade", timeout: float = 30.0) -> list[str]:
    """Run `command` over the command socket and return every progress message; it must end with Upgrade done."""
    messages = [str(reply.get("message")) for reply in master.command(command, timeout=timeout)]
    assert messages[-1] == "Upgrade done", f"{messages}\n--- master log ---\n{master.log()}"
    return messages


def worker_records(master: Master) -> dict[int, tuple[int, bool, int, float]]:
    """pid -> (version, acked, index, spin-up time to the centisecond) for every worker the master knows.

    The spin-up time is shown as wall-clock time computed from the monotonic
    clock at each `state` request, so it can move by a microsecond between two.
    """
    records: dict[int, tuple[int, bool, int, float]] = {}
    for pid, child in master.workers().items():
        version, acked, index, spinup = child["version"], child["acked"], child["index"], child["spinup_time"]
        assert isinstance(version, int) and isinstance(acked, bool) and isinstance(index, int)
        when = datetime.datetime.fromisoformat(str(spinup)).timestamp()
        records[pid] = (version, acked, index, round(when + 0.001, 2))  # +1 ms: clear of a rounding edge
    return records


def integer(state: dict[str, object], key: str) -> int:
    value = state[key]
    assert isinstance(value, int), f"{key}: {value!r}"
    return value


def unix_listener_inode(path: str) -> str:
    """`socket:[INODE]` of the listening UNIX socket bound at `path` (from /proc/net/unix)."""
    with open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and parts[7] == path and parts[5] == "01":  # 01: listening
                return f"socket:[{parts[6]}]"
    raise AssertionError(f"no listening UNIX socket at {path}")


def listener_fd(worker_pid: int) -> int:
    """The first listening socket's fd number, as the master told the worker."""
    return int(environ_of(worker_pid)["EINHORN_FD_0"])


def fd_kinds(fds: dict[int, str]) -> list[str]:
    """Descriptors by kind only (`socket`, `pipe`, `anon_inode:[eventpoll]`, a path), sorted."""
    return sorted(re.sub(r":\[\d+\]$", "", target) for target in fds.values())


def bound_port(master: Master) -> int:
    ports = master.state()["bound_ports"]
    assert isinstance(ports, list) and ports and isinstance(ports[0], int), ports
    return ports[0]


def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    wait_until(path.exists, timeout, f"{path.name} to appear")


# --- a client load ------------------------------------------------------------

VERSION = re.compile(rb"\bversion=(\S+)")


@dataclass
class Answer:
    started: float
    version: str | None
    error: str | None


@dataclass
class Load:
    """A few threads that connect to 127.0.0.1:port, send `request`, read the answer to EOF and close, until stopped."""

    port: int
    request: bytes = b""
    """Sent on each connection (an HTTP request for example/http_server; nothing for time_server)."""
    threads: int = 4
    limit_seconds: float = 20.0
    pause: float = 0.002
    """Between two requests of a thread: enough load to matter, enough CPU left for the upgrades on 2 cores."""
    answers: list[Answer] = field(default_factory=list)
    latest: dict[str, float] = field(default_factory=dict)
    """Version -> when the latest request it answered was started."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        deadline = time.monotonic() + self.limit_seconds
        for n in range(self.threads):
            thread = threading.Thread(target=self._run, args=(deadline,), name=f"load-{n}", daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=10)
        assert not any(t.is_alive() for t in self._workers), "a load thread is stuck"

    def _run(self, deadline: float) -> None:
        while not self._stop.wait(self.pause) and time.monotonic() < deadline:
            answer = self.one_request()
            with self._lock:
                self.answers.append(answer)
                if answer.version is not None:
                    self.latest[answer.version] = max(answer.started, self.latest.get(answer.version, answer.started))

    def one_request(self) -> Answer:
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as conn:
                conn.sendall(self.request)
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
        except OSError as error:
            return Answer(started, None, f"{type(error).__name__}: {error}")
        match = VERSION.search(data)
        if match is None:
            return Answer(started, None, f"unexpected answer {data!r}")
        return Answer(started, match.group(1).decode(), None)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def answered_since(self, since: float, version: str) -> bool:
        with self._lock:
            return self.latest.get(version, since - 1) >= since


def failures(answers: Sequence[Answer]) -> list[Answer]:
    return [a for a in answers if a.error is not None]
