"""What the integration tests read from /proc (Linux): process states, parents, environments, fds.

Also the clean-up primitives built on them: SIGKILL and reap by pid, reap the
orphans a child subreaper adopts. Nothing here knows about einhorn.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36


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


def cwd_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


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


def become_child_subreaper() -> None:
    """Orphaned descendants of this process become its children (Linux), so that it can reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@contextlib.contextmanager
def descriptor_limit(pid: int, soft: int) -> Iterator[None]:
    """Lower `pid`'s soft RLIMIT_NOFILE (prlimit) for the block, then put it back."""
    before, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (before, hard))
