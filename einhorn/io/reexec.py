"""The shell's half of a re-exec (BEHAVIOR §5): the processes and the document; the core decides.

`upgrade.py` in the core decides every step; this module performs them: the
`--upgrade-check` process, the state passer, the exec itself
(`Master._exec_master` in loop.py calls `exec_master`), and the restore side.
The state travels as JSON through a pipe written by a short-lived forked "state
passer", since the document can exceed the pipe buffer and the reader is the
master itself after exec. The descriptors that survive come from the hand-off
registry (`handoff.py`) and are named in the document.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import NoReturn

from einhorn.core import serialize
from einhorn.core.config import Config
from einhorn.core.record import dataclass, field
from einhorn.core.state import State
from einhorn.io import handoff
from einhorn.io.handoff import Descriptor
from einhorn.io.logs import Logger


@dataclass(frozen=True, slots=True)
class Restored:
    """What a re-exec'd master read from its predecessor."""

    state: State
    notes: list[str]
    descriptors: list[Descriptor]
    helpers: list[int]
    """Pids of the old image's helper processes (its state passer): the new shell reaps them quietly."""
    data: dict[str, object] = field(default_factory=dict)
    """The hand-off registry's data (`Handoff.register_data`), by key."""


class StateUnreadable(Exception):
    pass


def shell_document(
    descriptors: Sequence[Descriptor], helpers: Sequence[int] = (), data: Mapping[str, object] | None = None
) -> dict[str, object]:
    document: dict[str, object] = {"descriptors": handoff.to_plain(descriptors), "helpers": list(helpers)}
    if data:
        document["data"] = dict(data)
    return document


def fork_state_passer(state: State, shell: Mapping[str, object], write_fd: int) -> int:
    """Fork a child that writes the state document into `write_fd` and exits; it lists itself as a helper."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid != 0:
        return pid
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        helpers = [*_list_of_ints(shell.get("helpers", [])), os.getpid()]
        document = {"core": serialize.to_plain(state), "shell": {**shell, "helpers": helpers}}
        payload = json.dumps(document).encode()
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view):]
        code = 0
    finally:
        os._exit(code)


@dataclass(frozen=True, slots=True)
class UpgradeCheck:
    """A running `einhorn --upgrade-check`, started for the core's `StartUpgradeCheck(check_id)`."""

    check_id: int
    pid: int
    argv: Sequence[str]

    def verdict(self, status: int) -> str | None:
        """None if the check passed (exited 0), else why it did not."""
        code = os.waitstatus_to_exitcode(status)
        return None if code == 0 else f"`{' '.join(self.argv)}` exited with status {code}"


def start_upgrade_check(check_id: int, argv: Sequence[str], environ: Mapping[str, str]) -> UpgradeCheck:
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
    return UpgradeCheck(check_id, pid, tuple(argv))


class ExecFailed(Exception):
    """The exec (or what it needs: a pipe, the state passer) failed; the master was left as it was."""


def exec_master(
    state: State,
    command: Sequence[str],
    program_argv: Sequence[str],
    environ: Mapping[str, str],
    descriptors: Sequence[Descriptor],
    helpers: Sequence[int],
    log: Logger,
    data: Mapping[str, object] | None = None,
) -> NoReturn:
    """Exec `command --with-state-fd FD -- program...` with the state and the descriptors.

    Returns only by raising ExecFailed, the master left as it was. Signals
    must already be blocked (`signals.block_for_exec`).
    """
    try:
        read_end, write_end = os.pipe()
    except OSError as error:
        raise ExecFailed(f"could not create the state pipe: {error.strerror}") from None
    argv = [*command, "--with-state-fd", str(read_end), "--", *program_argv]
    passer: int | None = None
    undo = None
    try:
        passer = fork_state_passer(state, shell_document(descriptors, helpers, data), write_end)
        os.close(write_end)
        write_end = -1
        log.info(f"About to re-exec einhorn master as {argv}")
        undo = handoff.make_inheritable([*descriptors, Descriptor("state", read_end)])
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvpe(argv[0], argv, dict(environ))
    except OSError as error:
        if undo is not None:
            undo()
        for fd in (read_end, write_end):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if passer is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(passer, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(passer, 0)
            raise ExecFailed(f"could not exec {argv[0]}: {error.strerror}") from None
        raise ExecFailed(f"could not fork the state passer: {error.strerror}") from None


def read_state(fd: int, config: Config) -> Restored:
    try:
        with os.fdopen(fd, "rb") as pipe:
            raw = pipe.read()
        document = json.loads(raw)
        shell = document["shell"]
        core = document["core"]
        helpers = _list_of_ints(shell.get("helpers", [])) + _legacy_state_passers(core)
        state, notes = serialize.from_plain(core, config)
        descriptors = handoff.from_plain(shell["descriptors"]) if "descriptors" in shell else _legacy_descriptors(shell)
        data = shell.get("data", {})
        if not isinstance(data, dict):
            raise TypeError(f"shell data: expected a mapping, got {type(data).__name__}")
        return Restored(state, notes, descriptors, helpers, data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, serialize.StateFormatError) as error:
        raise StateUnreadable(f"could not read the state from fd {fd}: {error}") from None


def _list_of_ints(value: object) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"expected a list of integers, got {value!r}")
    return list(value)


def _legacy_state_passers(core: object) -> list[int]:
    """A format 0/1 document listed its state passer among the children."""
    if not isinstance(core, Mapping) or not isinstance(core.get("children"), list):
        return []
    return [
        int(c["pid"])
        for c in core["children"]
        if isinstance(c, Mapping) and c.get("kind", "worker") != "worker" and isinstance(c.get("pid"), int)
    ]


def _legacy_descriptors(shell: Mapping[str, object]) -> list[Descriptor]:
    """The shell document of format 0/1 masters: fixed keys instead of the registry's list."""
    listener_fds = shell["listener_fds"]
    connections = shell["connections"]
    if not isinstance(listener_fds, list) or not isinstance(connections, list):
        raise TypeError("listener_fds and connections must be lists")
    found = [Descriptor("listener", int(fd), {"index": n}) for n, fd in enumerate(listener_fds)]
    found.append(Descriptor("command_server", int(shell["server_fd"])))  # type: ignore[call-overload]
    for c in connections:
        found.append(Descriptor("connection", int(c["fd"]), {"id": int(c["id"]), "unread": str(c["unread"]), "unsent": str(c["unsent"])}))
    return found


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
