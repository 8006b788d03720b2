"""Process plumbing for the benchmarks: start a master, watch its log, talk to its command socket.

Everything a benchmark starts is tracked here and killed by pid in `Master.stop`;
each master lives in its own temp dir (command socket, pid file, lock file,
TMPDIR) which `stop` removes.
"""

from __future__ import annotations

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORKER = BENCH_DIR / "ack_worker.py"


def default_worker_python() -> str:
    # The base interpreter behind the venv (no venv site-packages, no pyenv shim):
    # the worker is stdlib-only and its start-up time is part of every number.
    return os.path.realpath(sys.executable)


@dataclass(frozen=True)
class Impl:
    name: str
    argv: tuple[str, ...]
    """How to exec the master, up to (not including) its options."""
    env: dict[str, str] = field(default_factory=dict)


def python_impl(einhorn: str | None = None) -> Impl:
    return Impl("python", (einhorn or str(REPO / ".venv" / "bin" / "einhorn"),))


def ruby_impl(script: str, ruby: str = "ruby") -> Impl:
    lib = str(Path(script).resolve().parent.parent / "lib")
    # -I for the first exec; RUBYLIB because the master re-execs its script directly
    # (shebang `#!/usr/bin/env ruby`) on upgrade and for the --upgrade-check sentinel.
    return Impl("ruby", (ruby, f"-I{lib}", script), {"RUBYLIB": lib})


# --- /proc ------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid, in seconds (/proc/<pid>/stat fields 14 and 15)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the command socket -----------------------------------------------------

_WAIT = re.compile(rb'%0Await: true(?:%0A|\s*$)|"wait":\s*true')
_UNESCAPE = re.compile(r"%(25|0A)")


def decode(line: bytes) -> dict[str, object]:
    text = _UNESCAPE.sub(lambda m: "%" if m.group(1) == "25" else "\n", line.decode().rstrip("\n"))
    if text.lstrip().startswith("{"):
        return json.loads(text)  # type: ignore[no-any-return]
    import yaml  # Ruby replies are YAML documents

    return yaml.safe_load(text)  # type: ignore[no-any-return]


class CommandClient:
    """One connection to a master's command socket. Requests are JSON lines (valid YAML)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.next_id = 1

    def send(self, command: str, args: Sequence[str] | None = None) -> str:
        request_id = str(self.next_id)
        self.next_id += 1
        request: dict[str, object] = {"command": command, "id": request_id}
        if args is not None:
            request["args"] = list(args)
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        return request_id

    def read_line(self) -> tuple[bytes, bool]:
        """(raw line, is_final). Finality is decided on the raw bytes: no parsing cost is timed."""
        line = self.file.readline()
        if not line:
            raise ConnectionError("command socket closed")
        return line, _WAIT.search(line) is None

    def request(self, command: str, args: Sequence[str] | None = None) -> list[bytes]:
        self.send(command, args)
        lines = []
        while True:
            line, final = self.read_line()
            lines.append(line)
            if final:
                return lines

    def close(self) -> None:
        self.file.close()
        self.sock.close()


# --- a master under test ----------------------------------------------------


class Master:
    """`einhorn -n N -m manual -b 127.0.0.1:0 -- python ack_worker.py MODE TAG [BOOT]` in its own temp dir.

    With `sleep=True` the workers are `sleep` (started as DIR/sleep, a symlink, so that
    their command line names this run's temp dir too) with timer ACKs after `ack` seconds.
    `options` are passed before the program.
    """

    def __init__(
        self,
        impl: Impl,
        number: int,
        mode: str = "ack",
        worker_python: str | None = None,
        boot: float = 0.0,
        sleep: bool = False,
        ack: str = "manual",
        options: Sequence[str] = (),
    ) -> None:
        self.impl = impl
        self.number = number
        self.dir = tempfile.mkdtemp(prefix="einhorn-bench-")
        self.socket_path = os.path.join(self.dir, "cmd.sock")
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.worker_pids: set[int] = set()
        self.ack_mode = "manual" if ack == "manual" else "timer"
        python = worker_python or default_worker_python()
        if sleep:
            os.symlink(shutil.which("sleep") or "/bin/sleep", os.path.join(self.dir, "sleep"))
            program = [os.path.join(self.dir, "sleep"), "100000"]
        else:
            program = [python, "-I", "-S", str(WORKER), mode, self.dir, *([f"{boot:g}"] if boot else [])]
        self.argv = [
            *impl.argv,
            "-d", self.socket_path,
            "-e", os.path.join(self.dir, "einhorn.pid"),
            "-f", os.path.join(self.dir, "einhorn.lock"),
            "-n", str(number),
            "-m", ack,
            "-b", "127.0.0.1:0",
            *options,
            "--", *program,
        ]  # fmt: skip
        env = dict(os.environ)
        env.update(impl.env)
        env["TMPDIR"] = self.dir
        self.t_exec = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, cwd=self.dir, start_new_session=True,
        )  # fmt: skip
        self.pid = self.proc.pid
        self.reader = threading.Thread(target=self._read_log, daemon=True)
        self.reader.start()

    # --- log ---------------------------------------------------------------

    _LAUNCHED = re.compile(r"===> Launched (\d+)")

    def _read_log(self) -> None:
        """Each chunk the pipe gives is stamped with the time it was read and handed over at once: a waiter
        woken per line would keep this thread from the pipe (the GIL) while a master writes 2000 lines."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        partial = b""
        while chunk := os.read(fd, 1 << 16):
            now = time.monotonic()
            *complete, partial = (partial + chunk).split(b"\n")
            lines = [raw.decode(errors="replace") for raw in complete]
            launched = [int(found.group(1)) for line in lines if (found := self._LAUNCHED.search(line))]
            with self.cond:
                self.worker_pids.update(launched)
                self.lines.extend((now, line) for line in lines)
                self.cond.notify_all()
        with self.cond:
            if partial:
                self.lines.append((time.monotonic(), partial.decode(errors="replace")))
            self.lines.append((time.monotonic(), "<EOF>"))
            self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def wait_log(self, pattern: str, start: int = 0, timeout: float = 60.0) -> tuple[int, float, re.Match[str]]:
        """First log line at index >= start matching pattern: (index, monotonic time read, match)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self.cond:
            while True:
                while index < len(self.lines):
                    when, line = self.lines[index]
                    if line == "<EOF>":
                        raise RuntimeError(f"{self.impl.name} master exited while waiting for {pattern!r}:\n{self.tail()}")
                    found = regex.search(line)
                    if found:
                        return index, when, found
                    index += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.impl.name}: no {pattern!r} within {timeout}s:\n{self.tail()}")
                self.cond.wait(left)

    def wait_all_acked(self, start: int = 0, timeout: float = 120.0) -> float:
        """Time at which the master logged `Up to N / N manual ACKs` (or timer ACKs; both implementations log it)."""
        _, when, _ = self.wait_log(rf"Up to {self.number} / {self.number} {self.ack_mode} ACKs", start, timeout)
        return when

    def launched_all(self) -> float:
        """Time at which the N-th `===> Launched PID` line was read."""
        index, count = 0, 0
        while True:
            index, when, _ = self.wait_log(r"===> Launched \d+", index)
            count += 1
            index += 1
            if count == self.number:
                return when

    def tail(self, n: int = 15) -> str:
        return "\n".join(line for _, line in self.lines[-n:])

    # --- helpers -----------------------------------------------------------

    def client(self) -> CommandClient:
        return CommandClient(self.socket_path)

    def port(self) -> int:
        """The ephemeral port of -b 127.0.0.1:0 (Ruby logs only the requested port 0, so ask /proc)."""
        return _port_from_proc(self.pid)

    def live_workers(self) -> list[int]:
        """Current children of the master (from /proc), i.e. its workers."""
        kids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
            if ppid == self.pid and self.dir in _cmdline(int(entry.name)):
                kids.append(int(entry.name))
        return kids

    # --- teardown ----------------------------------------------------------

    def stop(self) -> None:
        """Graceful SIGTERM, then SIGKILL by pid for the master and every worker it launched; remove the temp dir."""
        with self.cond:
            pids = set(self.worker_pids)
        pids.update(self.live_workers() if self.proc.poll() is None else [])
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in pids:
            # Only our own workers: their command line names this run's temp dir.
            if _alive(pid) and self.dir in _cmdline(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Master:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_from_proc(master_pid: int) -> int:
    """Find the 127.0.0.1 listening TCP socket among the master's fds (/proc/net/tcp by inode)."""
    inodes = set()
    for fd in Path(f"/proc/{master_pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, state, inode = parts[1], parts[3], parts[9]
        if state == "0A" and inode in inodes:  # 0A = LISTEN
            return int(local.split(":")[1], 16)
    raise RuntimeError(f"no listening TCP socket found for master {master_pid}")
