"""Real einhorn masters for the integration tests: start, observe, clean up by pid.

Every master runs in its own short temporary directory (UNIX socket paths are
limited to 107 bytes) with its own `-d`/`-e`/`-f` paths and `$TMPDIR`, so tests
can run side by side. Its stderr goes to a file there, which a thread follows,
stamping each line with the monotonic time it appeared.

Clean-up never relies on names: the environment of every master carries a
unique tag, which all its descendants inherit, and teardown SIGKILLs each
process that holds the tag or runs in the harness's directory (a preloaded
worker's /proc environ no longer shows the tag), by pid, then reaps it. The
test process makes itself a child subreaper (Linux; the `child_subreaper`
fixture in conftest.py), so workers orphaned by a master that exited become
its children and are reaped here rather than left as zombies.

Tests wait on conditions (`wait_until`), never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.integration.procfs import alive, all_pids, children_of, cwd_of, descendants_of, environ_of, kill_and_reap, reap_orphans
from tests.integration.waiting import wait_until
from tests.integration.wire import Connection, frame

BIN = Path(sys.executable).parent
EINHORN = [str(BIN / "einhorn")] if (BIN / "einhorn").exists() else [sys.executable, "-m", "einhorn"]
EINHORNSH = [str(BIN / "einhornsh")] if (BIN / "einhornsh").exists() else [sys.executable, "-m", "einhorn.einhornsh"]
TAG_VARIABLE = "EHTEST_TAG"  # passed on by the master to every worker, as any name it does not define itself


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries `tag` (a master and all it started)."""
    me = os.getpid()
    return sorted(pid for pid in all_pids() if pid != me and environ_of(pid).get(TAG_VARIABLE) == tag and alive(pid))


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
        self.tail.catch_up()
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
        self.tail.catch_up()
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

    def wait_up(self, timeout: float = 10.0) -> None:
        """Wait for the command socket to answer (failing at once if the master exited)."""

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"master exited with {self.proc.returncode}\n{self.log()}")
            with contextlib.suppress(OSError), self.connect(timeout=1.0):
                return True
            return False

        wait_until(up, timeout, "the command socket")


class Harness:
    """Starts masters (and one-shot einhorn runs) and cleans up after them, by pid."""

    def __init__(self) -> None:
        base = "/tmp" if os.path.isdir("/tmp") else None
        self.directory = Path(tempfile.mkdtemp(prefix="eh", dir=base))
        self.tag = uuid.uuid4().hex
        self.masters: list[Master] = []
        self.count = 0

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # Nor what a supervisor running the tests told their process (systemd's NOTIFY_SOCKET...).
        supervisor = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
        env = {k: v for k, v in os.environ.items() if not k.startswith("EINHORN_") and k not in supervisor}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', os.defpath)}"
        env["TMPDIR"] = str(self.directory)
        env[TAG_VARIABLE] = self.tag
        env.pop("PYTHONSTARTUP", None)
        env.update(extra or {})
        return env

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clean_up()

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
        prefix: Sequence[str] = (),
        wait: bool = True,
        einhorn: Sequence[str] = EINHORN,
        shared: bool = False,
    ) -> Master:
        """Start a master with `options` and `program`; wait for its command socket (and `workers`).

        `prefix` runs einhorn through another program (`systemd-socket-activate ...`); without
        `wait` the caller waits for the command socket itself (`Master.wait_up`). `einhorn` is the
        command that runs einhorn; `shared` opens the master's directory to every user, for a
        master that runs as another one (`other_user.py`).
        """
        directory, sock, pidfile, lockfile = self.paths()
        if shared:
            self.directory.chmod(0o711)
            directory.chmod(0o777)
        path_options = ["-d", sock, "-e", pidfile, "-f", lockfile] if paths else []
        argv = [*prefix, *einhorn, *path_options, *options, "--", *program]
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
        if paths and wait:
            master.wait_up(timeout)
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
        """Live processes started by this harness: they carry its tag, or run in its directory.

        The directory matters for preloaded (`-p`) workers: forked from a master whose
        setproctitle rewrote the memory that /proc/PID/environ shows, they have no tag there.
        """
        inside = str(self.directory) + os.sep
        me = os.getpid()
        in_directory = [pid for pid in all_pids() if pid != me and (cwd_of(pid) or "").startswith(inside) and alive(pid)]
        return sorted({*tagged_pids(self.tag), *in_directory, *self.adopted_workers()})

    def adopted_workers(self) -> list[int]:
        """Workers of this harness's masters that outlived their master, with their descendants: the test
        process (a subreaper) adopted them. Found by the pids the masters logged, as a worker may show
        neither the tag nor the directory (gunicorn --chdir); a pid taken by someone else is not our child."""
        launched = {int(found.group(1)) for master in self.masters for _, found in master.timed_lines(r"===> Launched (\d+)")}
        adopted = [pid for pid in children_of(os.getpid()) if pid in launched and alive(pid)]
        return sorted({*adopted, *(d for pid in adopted for d in descendants_of(pid))})

    def clean_up(self) -> None:
        for master in self.masters:  # first, so that nothing new is spawned
            if master.proc.poll() is None:
                # Its processes as they are now: a server may show neither the tag nor our directory
                # (gunicorn --chdir, and its setproctitle overwrites what /proc shows of its environment).
                descendants = descendants_of(master.pid)
                master.proc.kill()
                master.proc.wait()
                kill_and_reap([pid for pid in descendants if alive(pid)])
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
    `catch_up` reads what the thread has not read yet, so that the log of a master that
    has exited is whole when a test looks at it.
    """

    def __init__(self, path: Path, lines: list[tuple[float, str]]) -> None:
        self.path = path
        self.lines = lines
        self.file = open(path, "rb")  # closed by stop()
        self.partial = b""
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def catch_up(self) -> bool:
        """Take in every complete line written so far; whether there was anything new."""
        with self.lock:
            if self.file.closed:
                return False
            chunk = self.file.read()
            if not chunk:
                return False
            self.partial += chunk
            *complete, self.partial = self.partial.split(b"\n")
            now = time.monotonic()
            self.lines.extend((now, line.decode(errors="replace") + "\n") for line in complete)
            return True

    def _follow(self) -> None:
        while self.catch_up() or not self.stopping.wait(0.005):
            pass

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        with self.lock:
            self.file.close()
