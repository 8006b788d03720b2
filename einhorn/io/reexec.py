"""Re-exec of the master (BEHAVIOR §5): upgrade check, state passer, exec; and the restore side.

The state travels as JSON through a pipe written by a short-lived forked "state
passer", since the document can exceed the pipe buffer and the reader is the
master itself after exec. File descriptors that must survive (listeners, the
command server, client connections, the pipe) are made inheritable just before
exec and are named in the document.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from einhorn.core import serialize
from einhorn.core.config import Config
from einhorn.core.state import Child, ChildKind, State

UPGRADE_CHECK_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class RestoredConnection:
    id: int
    fd: int
    unread: bytes
    unsent: bytes


@dataclass(frozen=True, slots=True)
class Restored:
    state: State
    notes: list[str]
    listener_fds: list[int]
    server_fd: int
    connections: list[RestoredConnection]


class StateUnreadable(Exception):
    pass


def shell_document(listener_fds: Sequence[int], server_fd: int, connections: Sequence[RestoredConnection]) -> dict[str, object]:
    return {
        "listener_fds": list(listener_fds),
        "server_fd": server_fd,
        "connections": [
            {"id": c.id, "fd": c.fd, "unread": c.unread.decode("latin-1"), "unsent": c.unsent.decode("latin-1")}
            for c in connections
        ],
    }


def with_state_passer(state: State, pid: int, now: float) -> State:
    passer = Child(pid=pid, kind=ChildKind.STATE_PASSER, version=state.version, index=-1, spinup_at=now)
    return replace(state, children={**state.children, pid: passer})


def fork_state_passer(state: State, shell: Mapping[str, object], write_fd: int, now: float) -> int:
    """Fork a child that writes the state document into `write_fd` and exits."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid != 0:
        return pid
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        document = {"core": serialize.to_plain(with_state_passer(state, os.getpid(), now)), "shell": shell}
        payload = json.dumps(document).encode()
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view):]
        code = 0
    finally:
        os._exit(code)


@dataclass
class UpgradeCheck:
    """A running `einhorn --upgrade-check`: the master keeps serving until it exits."""

    pid: int
    argv: Sequence[str]
    deadline: float
    timed_out: bool = False

    def verdict(self, status: int) -> str | None:
        """None if the check passed (exited 0), else why it did not."""
        if self.timed_out:
            return f"`{' '.join(self.argv)}` did not finish within {UPGRADE_CHECK_TIMEOUT:g}s"
        code = os.waitstatus_to_exitcode(status)
        return None if code == 0 else f"`{' '.join(self.argv)}` exited with status {code}"


def start_upgrade_check(argv: Sequence[str], environ: Mapping[str, str], now: float) -> UpgradeCheck:
    """Fork and exec the new einhorn with `--upgrade-check`; OSError if the fork failed.

    The caller reaps it like any child and asks `verdict`; an exec failure
    shows up as exit status 127.
    """
    pid = os.fork()
    if pid == 0:
        try:
            signal.set_wakeup_fd(-1)
            os.execvpe(argv[0], list(argv), dict(environ))
        except OSError as error:
            os.write(2, f"Could not exec {argv[0]}: {error.strerror}\n".encode())
        finally:
            os._exit(127)
    return UpgradeCheck(pid, tuple(argv), now + UPGRADE_CHECK_TIMEOUT)


def read_state(fd: int, config: Config) -> Restored:
    try:
        with os.fdopen(fd, "rb") as pipe:
            raw = pipe.read()
        document = json.loads(raw)
        shell = document["shell"]
        state, notes = serialize.from_plain(document["core"], config)
        connections = [
            RestoredConnection(int(c["id"]), int(c["fd"]), c["unread"].encode("latin-1"), c["unsent"].encode("latin-1"))
            for c in shell["connections"]
        ]
        return Restored(state, notes, [int(fd) for fd in shell["listener_fds"]], int(shell["server_fd"]), connections)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, serialize.StateFormatError) as error:
        raise StateUnreadable(f"could not read the state from fd {fd}: {error}") from None


def restore_note(notes: Sequence[str]) -> str | None:
    """The one log line saying how a state of another format was adapted (None if it was not)."""
    return f"State format for einhorn has changed: {'; '.join(notes)}" if notes else None


def stop_children(pids: Sequence[int], kill_after: float | None, poll: float = 0.05) -> list[int]:
    """USR2 to `pids`, then reap children until none is left; SIGKILL whoever outlives `kill_after`."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGUSR2)
    deadline = None if kill_after is None else time.monotonic() + kill_after
    killed: list[int] = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return killed
        if pid != 0:
            continue
        if deadline is not None and time.monotonic() >= deadline:
            deadline = None
            for pid in own_children():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        time.sleep(poll)


def own_children() -> list[int]:
    """Pids of this process's children, from /proc (Linux), for the unreadable-state rescue."""
    pids: list[int] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids
