"""Real einhorn masters for the integration tests: start, observe, clean up by pid.

Every master runs in its own short temporary directory (UNIX socket paths are
limited to 107 bytes) with its own `-d`/`-e`/`-f` paths and `$TMPDIR`, so tests
can run side by side. Its stderr goes to a file there, which a thread follows,
stamping each line with the monotonic time it appeared.

Clean-up never relies on names: the environment of every master carries a
unique tag, which all its descendants inherit, and teardown SIGKILLs each
process that holds the tag, by pid, then reaps it. The test process makes
itself a child subreaper (Linux), so workers orphaned by a master that exited
become its children and are reaped here rather than left as zombies.

Tests wait on conditions (`wait_until`), never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TIME_SERVER = str(REPO / "example" / "time_server")
BIN = Path(sys.executable).parent
EINHORN = [str(BIN / "einhorn")] if (BIN / "einhorn").exists() else [sys.executable, "-m", "einhorn"]
EINHORNSH = [str(BIN / "einhornsh")] if (BIN / "einhornsh").exists() else [sys.executable, "-m", "einhorn.einhornsh"]
TAG_VARIABLE = "EHTEST_TAG"  # passed on by the master to every worker, as any name it does not define itself
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36

T = TypeVar("T")

if not sys.platform.startswith("linux"):
    pytest.skip("the integration tests inspect /proc (Linux only)", allow_module_level=True)


# --- waiting ----------------------------------------------------------------


def wait_until(predicate: Callable[[], T | None], timeout: float = 10.0, what: str = "", interval: float = 0.02) -> T:
    """Poll `predicate` until it returns something truthy, and return that; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


# --- /proc ------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgrp: int
    cpu_seconds: float
    start_ticks: int


def proc_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return ProcStat(
        pid=pid,
        state=fields[0],
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        cpu_seconds=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
        start_ticks=int(fields[19]),
    )


def alive(pid: int) -> bool:
    """Running (a zombie or a vanished pid is not)."""
    stat = proc_stat(pid)
    return stat is not None and stat.state not in ("Z", "X", "x")


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children_of(pid: int) -> list[int]:
    """Live direct children of `pid`, sorted."""
    found = []
    for candidate in all_pids():
        stat = proc_stat(candidate)
        if stat is not None and stat.ppid == pid and stat.state not in ("Z", "X", "x"):
            found.append(candidate)
    return sorted(found)


def descendants_of(pid: int) -> list[int]:
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = children_of(frontier.pop())
        found += children
        frontier += children
    return sorted(found)


def environ_of(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def fds_of(pid: int) -> dict[int, str]:
    """Open descriptors of `pid` and what they point at."""
    fds: dict[int, str] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            fds[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return fds


def cpu_seconds(pid: int) -> float:
    stat = proc_stat(pid)
    assert stat is not None, f"process {pid} is gone"
    return stat.cpu_seconds


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries `tag` (a master and all it started)."""
    me = os.getpid()
    return sorted(pid for pid in all_pids() if pid != me and environ_of(pid).get(TAG_VARIABLE) == tag and alive(pid))


def kill_and_reap(pids: Sequence[int]) -> None:
    """SIGKILL each pid, then reap the ones that are (or became, as orphans) our children."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        stat = proc_stat(pid)
        if stat is not None and stat.ppid == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def reap_orphans(exclude: Sequence[int] = ()) -> None:
    """Reap zombies that were reparented to us (we are a subreaper), leaving `exclude` (Popen's) alone."""
    me = os.getpid()
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is not None and stat.ppid == me and stat.state == "Z" and pid not in exclude:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


@pytest.fixture(scope="session", autouse=True)
def child_subreaper() -> None:
    """Orphaned workers become our children, so that teardown can find and reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


# --- the protocol, spoken by hand ------------------------------------------


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


# --- workers for the tests -------------------------------------------------

RECORDER = """
import os, signal, sys
out, stay = sys.argv[1], set(sys.argv[2].split(",")) if len(sys.argv) > 2 else set()
def record(signum, frame):
    name = signal.Signals(signum).name[3:]
    with open(os.path.join(out, f"{os.getpid()}.signals"), "a") as f:
        f.write(name + "\\n")
    if name not in stay:
        sys.exit(0)
for name in ("TERM", "USR2", "QUIT", "USR1", "INT"):
    signal.signal(getattr(signal, "SIG" + name), record)
open(os.path.join(out, f"{os.getpid()}.ready"), "w").close()
while True:
    signal.pause()
"""
"""A worker that records each signal it gets in OUT/PID.signals and exits 0, except for the
signals listed in its second argument (comma-separated), which it records and survives.
It creates OUT/PID.ready once its handlers are in place."""


def recorder(out: Path, stay: str = "USR1") -> list[str]:
    return [sys.executable, "-c", RECORDER, str(out), stay]


def wait_ready(out: Path, pids: Sequence[int], timeout: float = 10.0) -> None:
    wait_until(lambda: all((out / f"{pid}.ready").exists() for pid in pids), timeout, "recorder workers ready")


def signals_received(out: Path, pid: int) -> list[str]:
    try:
        return (out / f"{pid}.signals").read_text().split()
    except FileNotFoundError:
        return []


# --- a master under test ------------------------------------------------------


@dataclass
class Master:
    proc: subprocess.Popen[bytes]
    directory: Path
    socket_path: str
    pidfile: str
    lockfile: str
    env: dict[str, str]
    lines: list[tuple[float, str]]
    """(monotonic time seen, text) of each line the master and its workers wrote to stderr"""
    tail: LogTail
    request_number: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    # log

    def log(self) -> str:
        return "".join(line for _, line in list(self.lines))

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> list[re.Match[str]]:
        """Wait until `pattern` (a regex) matches `count` log lines; the matches."""
        regex = re.compile(pattern)

        def matches() -> list[re.Match[str]] | None:
            found = [m for _, line in list(self.lines) if (m := regex.search(line))]
            return found if len(found) >= count else None

        try:
            return wait_until(matches, timeout, f"{count} log line(s) matching {pattern!r}")
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- master log ---\n{self.log()}") from None

    def timed_lines(self, pattern: str) -> list[tuple[float, re.Match[str]]]:
        regex = re.compile(pattern)
        return [(t, m) for t, line in list(self.lines) if (m := regex.search(line))]

    # processes

    def children(self) -> list[int]:
        return children_of(self.pid)

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"master {self.pid} still running after {timeout:g}s\n{self.log()}") from None

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    # the command socket

    def connect(self, timeout: float = 10.0) -> Connection:
        return Connection(self.socket_path, timeout)

    def send_raw(self, chunks: Sequence[bytes], replies: int = 1, timeout: float = 10.0) -> list[dict[str, object]]:
        """Send `chunks` (one write each) on a new connection and read `replies` reply lines."""
        with self.connect(timeout) as conn:
            for chunk in chunks:
                conn.send(chunk)
            return [conn.read_reply() for _ in range(replies)]

    def command(self, command: str, *args: str, timeout: float = 10.0, **extra: object) -> list[dict[str, object]]:
        """Send one request with an id; every reply up to the last one."""
        self.request_number += 1
        request: dict[str, object] = {"id": str(self.request_number), "command": command, "args": list(args), **extra}
        with self.connect(timeout) as conn:
            conn.send(frame(request))
            return conn.read_until_last()

    def message(self, command: str, *args: str) -> str:
        replies = self.command(command, *args)
        assert len(replies) == 1, replies
        text = replies[0]["message"]
        assert isinstance(text, str)
        return text

    def state(self) -> dict[str, object]:
        document = json.loads(self.message("state", "--json"))
        assert isinstance(document, dict)
        state = document["state"]
        assert isinstance(state, dict)
        return state

    def workers(self) -> dict[int, dict[str, object]]:
        """The master's worker records, by pid."""
        children = self.state()["children"]
        assert isinstance(children, dict)
        return {int(pid): child for pid, child in children.items() if child["type"] == "worker"}

    def wait_workers(self, count: int, acked: bool = True, timeout: float = 10.0) -> list[int]:
        """Wait for exactly `count` live, unsignaled (and ACKed) workers, which are our children; their pids."""

        def ready() -> list[int] | None:
            workers = self.workers()
            good = sorted(
                pid for pid, w in workers.items() if not w["signaled"] and (w["acked"] or not acked)
            )
            if len(workers) == count and len(good) == count and self.children() == good:
                return good
            return None

        try:
            return wait_until(ready, timeout, f"{count} {'ACKed ' if acked else ''}workers")
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- master log ---\n{self.log()}") from None

    def einhornsh(self, execute: str | None, *options: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        argv = [*EINHORNSH, "-d", self.socket_path, *options]
        if execute is not None:
            argv += ["-e", execute]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=self.env, stdin=subprocess.DEVNULL
        )

    def bound_port(self) -> int:
        return int(self.wait_log(r"Bound \S+ on port (\d+)")[0].group(1))


class Harness:
    """Starts masters (and one-shot einhorn runs) and cleans up after them, by pid."""

    def __init__(self) -> None:
        base = "/tmp" if os.path.isdir("/tmp") else None
        self.directory = Path(tempfile.mkdtemp(prefix="eh", dir=base))
        self.tag = uuid.uuid4().hex
        self.masters: list[Master] = []
        self.count = 0

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EINHORN_")}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', os.defpath)}"
        env["TMPDIR"] = str(self.directory)
        env[TAG_VARIABLE] = self.tag
        env.pop("PYTHONSTARTUP", None)
        env.update(extra or {})
        return env

    def paths(self) -> tuple[Path, str, str, str]:
        self.count += 1
        directory = self.directory / str(self.count)
        directory.mkdir()
        return directory, str(directory / "s"), str(directory / "p"), str(directory / "l")

    def start(
        self,
        *options: str,
        program: Sequence[str] = ("sleep", "30"),
        env: Mapping[str, str] | None = None,
        workers: int | None = None,
        acked: bool = True,
        paths: bool = True,
        timeout: float = 10.0,
    ) -> Master:
        """Start a master with `options` and `program`; wait for its command socket (and `workers`)."""
        directory, sock, pidfile, lockfile = self.paths()
        path_options = ["-d", sock, "-e", pidfile, "-f", lockfile] if paths else []
        argv = [*EINHORN, *path_options, *options, "--", *program]
        environment = self.environment(env)
        log_path = directory / "stderr.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env=environment,
                cwd=directory,  # where any core dump of a worker would land
            )
        lines: list[tuple[float, str]] = []
        master = Master(proc, directory, sock, pidfile, lockfile, environment, lines, LogTail(log_path, lines))
        self.masters.append(master)

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"master exited with {proc.returncode}\n{master.log()}")
            with contextlib.suppress(OSError), master.connect(timeout=1.0):
                return True
            return False

        if paths:
            wait_until(up, timeout, "the command socket")
        if workers is not None:
            master.wait_workers(workers, acked=acked, timeout=timeout)
        return master

    def run(
        self, *argv: str, env: Mapping[str, str] | None = None, timeout: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        """Run einhorn to completion (for CLI errors, -h, --version)."""
        return subprocess.run(
            [*EINHORN, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environment(env),
            stdin=subprocess.DEVNULL,
            cwd=self.directory,
        )

    def leftovers(self) -> list[int]:
        """Live processes started by this harness."""
        return tagged_pids(self.tag)

    def clean_up(self) -> None:
        for master in self.masters:  # first, so that nothing new is spawned
            if master.proc.poll() is None:
                master.proc.kill()
                master.proc.wait()
        for _ in range(10):  # a dying process may still fork: repeat until nothing holds the tag
            pids = self.leftovers()
            if not pids:
                break
            kill_and_reap(pids)
        reap_orphans(exclude=[m.pid for m in self.masters])
        for master in self.masters:
            master.tail.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class LogTail:
    """Follows a log file from a thread, stamping each line with the monotonic time it was seen.

    The master writes straight to the file (its workers share that stderr), so no pipe
    can block anyone; polling the file every 5 ms gives the times the backoff test measures.
    """

    def __init__(self, path: Path, lines: list[tuple[float, str]]) -> None:
        self.path = path
        self.lines = lines
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        partial = b""
        with open(self.path, "rb") as f:
            while True:
                chunk = f.read()
                if chunk:
                    partial += chunk
                    *complete, partial = partial.split(b"\n")
                    now = time.monotonic()
                    self.lines.extend((now, line.decode(errors="replace") + "\n") for line in complete)
                elif self.stopping.wait(0.005):
                    return

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.clean_up()
