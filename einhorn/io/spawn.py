"""Starting workers: fork, set the child up, exec. Exec failures come back through a pipe."""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

from einhorn.core import record as dataclasses  # (the lean `dataclasses`: einhorn/core/record.py)
from einhorn.core.record import dataclass, field
from einhorn.core.state import LaunchSpec
from einhorn.io.signals import RESET_IN_CHILDREN

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: an idle master need not hold it (issue 14)
if TYPE_CHECKING:
    import ctypes

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# glibc reports a failed exec from posix_spawn (since 2.24); elsewhere the fork path does.
POSIX_SPAWN = hasattr(os, "posix_spawn") and sys.platform.startswith("linux")


@dataclass(frozen=True, slots=True)
class WorkerLaunch:
    """Everything needed to start one worker, fixed for the master's lifetime."""

    path: str
    argv: Sequence[str]
    environ: Mapping[str, str]
    listener_fds: Sequence[int]
    listener_families: Sequence[str]
    """The family of each listener, in `listener_fds` order: `AF_INET`, `AF_INET6`, `AF_UNIX`."""
    socket_path: str
    master_pid: int
    pdeathsig: bool = False
    graceful_signal: str = "USR2"
    """`--graceful-signal`: also the parent-death signal of `-k`."""
    prepare_child: Callable[[], None] | None = field(default=None)
    """Runs in the child after fork and before exec (renice); must not raise."""
    listen_fds: bool = False
    """`--listen-fds`: the listeners at fds 3, 4, ... with LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES (systemd's convention)."""
    listener_names: Sequence[str] = ()
    """Each listener's name for LISTEN_FDNAMES (systemd's, for adopted sockets); "" for none."""
    notify_socket: str | None = None
    """`-m notify`: the master's datagram socket, given to workers as NOTIFY_SOCKET."""
    cwd: str | None = None
    """Where the worker starts (its generation's directory); None: the master's own."""
    listener_sources: Sequence[int] = ()
    """`drain` listeners: the master's fd of the socket the worker gets at each of `listener_fds` (its
    generation's own socket, einhorn/io/steering.py), in that order; () : the listeners themselves."""
    shared_environ: Mapping[str, str] = field(init=False, repr=False, compare=False)
    """What every worker's environment starts from (`worker_environment`), made once, not once per worker."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shared_environ", _shared_environment(self))


def launch_spec(launch: WorkerLaunch, cwd: str) -> LaunchSpec:
    """What this master image starts workers from, for the core's generation (`MasterStarted.launch`)."""
    return LaunchSpec(
        argv=tuple(launch.argv),
        path=launch.path,
        cwd=cwd,
        environ=tuple(sorted(launch.environ.items())),
        graceful_signal=launch.graceful_signal,
    )


def generation_launch(launch: WorkerLaunch, spec: LaunchSpec, own_cwd: str) -> WorkerLaunch:
    """`launch` (this image's sockets and settings) with a generation's program, directory, environment
    and graceful signal; its shared environment is built here, once per generation."""
    return dataclasses.replace(
        launch,
        path=spec.path,
        argv=spec.argv,
        environ=dict(spec.environ),
        graceful_signal=spec.graceful_signal,
        cwd=None if spec.cwd == own_cwd else spec.cwd,
    )


EINHORN_VARIABLES = frozenset(
    ["EINHORN_MASTER_PID", "EINHORN_SOCK_PATH", "EINHORN_SOCK_FD", "EINHORN_CHILD_INDEX", "EINHORN_FD_COUNT", "EINHORN_FDS"]
)
EINHORN_NUMBERED_VARIABLE = re.compile(r"EINHORN_FD_(?:FAMILY_)?[0-9]+")
"""`EINHORN_FD_<n>` and `EINHORN_FD_FAMILY_<n>`, for any n."""

SUPERVISOR_VARIABLES = frozenset(["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"])
"""What systemd (or another supervisor) tells the master about itself: never a worker's. A worker gets
its own with `--listen-fds` (LISTEN_*) and `-m notify` (NOTIFY_SOCKET), else none of them."""

LISTEN_FDS_START = 3
"""SD_LISTEN_FDS_START: where systemd's convention puts the first passed socket."""


def is_einhorn_variable(name: str) -> bool:
    """A name einhorn itself gives workers. An inherited value (from an outer einhorn) must never
    reach them: `worker_environment` sets or removes each. Every other name, `EINHORN_*` or not,
    belongs to the user and passes through."""
    return name in EINHORN_VARIABLES or EINHORN_NUMBERED_VARIABLE.fullmatch(name) is not None


def worker_fds(launch: WorkerLaunch, sock_fd: int | None) -> tuple[list[int], int | None]:
    """The fd numbers the worker finds its listeners and its `-g` socket at: as in the master, or
    with `--listen-fds` at 3, 4, ... and the `-g` socket right after them (`place_listen_fds`)."""
    if not launch.listen_fds:
        return list(launch.listener_fds), sock_fd
    count = len(launch.listener_fds)
    placed = list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
    return placed, None if sock_fd is None else LISTEN_FDS_START + count


def worker_environment(launch: WorkerLaunch, index: int, sock_fd: int | None) -> dict[str, str]:
    """LISTEN_PID (`--listen-fds`) is the worker's own pid: the forked child adds it (`_exec_child`)."""
    env = dict(launch.shared_environ)
    env["EINHORN_CHILD_INDEX"] = str(index)
    _, placed_sock_fd = worker_fds(launch, sock_fd)
    if placed_sock_fd is not None:
        env["EINHORN_SOCK_FD"] = str(placed_sock_fd)
    return env


def _shared_environment(launch: WorkerLaunch) -> dict[str, str]:
    """Every worker's environment but its index and `-g` socket."""
    # A name that is empty or holds "=" cannot be passed to a program (execve would misread it).
    env = {
        k: v
        for k, v in launch.environ.items()
        if k and "=" not in k and not is_einhorn_variable(k) and k not in SUPERVISOR_VARIABLES
    }
    listener_fds, _ = worker_fds(launch, None)
    env["EINHORN_MASTER_PID"] = str(launch.master_pid)
    env["EINHORN_SOCK_PATH"] = launch.socket_path
    env["EINHORN_FD_COUNT"] = str(len(listener_fds))
    for n, (fd, family) in enumerate(zip(listener_fds, launch.listener_families, strict=True)):
        env[f"EINHORN_FD_{n}"] = str(fd)
        env[f"EINHORN_FD_FAMILY_{n}"] = family
    # Legacy (PHP, socketmaster-era clients): "" without listeners, as EINHORN_FD_COUNT is 0.
    env["EINHORN_FDS"] = " ".join(str(fd) for fd in listener_fds)
    if launch.listen_fds:
        env["LISTEN_FDS"] = str(len(listener_fds))
        names = list(launch.listener_names) or [""] * len(listener_fds)
        env["LISTEN_FDNAMES"] = ":".join(name or "unknown" for name in names)
    if launch.notify_socket is not None:
        env["NOTIFY_SOCKET"] = launch.notify_socket
    return env


@dataclass(frozen=True, slots=True)
class Spawned:
    """A started worker. For a forked one, `report_fd` reaches EOF once the child has
    exec'd (or started its preloaded code); if it could not, the child writes
    `errno:message` into it first and exits 127. The master does not wait: workers
    start in parallel. A worker started by `posix_spawn` has exec'd already (None)."""

    pid: int
    report_fd: int | None


def failure_report(data: bytes) -> OSError | None:
    """The error a child wrote into its report pipe, if any."""
    if not data:
        return None
    code, _, message = data.decode(errors="replace").partition(":")
    return OSError(int(code) if code.isdigit() else errno.EIO, message)


def wait_for_report(spawned: Spawned) -> OSError | None:
    """Block until the child exec'd or failed to; close the pipe. (For tests and tools.)"""
    if spawned.report_fd is None:
        return None
    try:
        return failure_report(_read_all(spawned.report_fd))
    finally:
        os.close(spawned.report_fd)


def spawn_worker(launch: WorkerLaunch, index: int, sock_fd: int | None) -> Spawned:
    """Start one worker that execs the program.

    Without child-side set-up beyond BEHAVIOR §2 (no `-k`, no worker nice level),
    `posix_spawn`: libc's vfork-style spawn costs the master a third of a fork and
    its child runs no Python before exec; an exec failure is an OSError here. Else
    fork, set up, exec; OSError only if the fork itself failed, an exec failure
    comes back through `report_fd`.
    """
    env = worker_environment(launch, index, sock_fd)
    moves = listener_moves(launch)
    if not launch.pdeathsig and launch.prepare_child is None and not launch.listen_fds and launch.cwd is None and POSIX_SPAWN:
        actions = [(os.POSIX_SPAWN_DUP2, source, target) for source, target in moves]  # dup2 clears close-on-exec
        pid = os.posix_spawn(
            launch.path, list(launch.argv), env, file_actions=actions, setpgroup=0, setsigdef=RESET_IN_CHILDREN, setsigmask=()
        )
        return Spawned(pid, None)
    passed = [*launch.listener_fds, *([] if sock_fd is None else [sock_fd])]
    return fork_reporting(lambda report_fd: _exec_child(launch, env, report_fd, passed, moves))


def listener_moves(launch: WorkerLaunch) -> list[tuple[int, int]]:
    """(source, target): each generation's socket the child must put at its listener's fd number."""
    if not launch.listener_sources:
        return []
    return [(source, target) for source, target in zip(launch.listener_sources, launch.listener_fds, strict=True) if source != target]


def move_listeners(moves: Sequence[tuple[int, int]]) -> None:
    """In the child: each source socket at its listener's number (inheritable), in place of the listener.
    A source is never another's target: both are open in the master, each a different descriptor."""
    for source, target in moves:
        os.dup2(source, target)


def fork_reporting(child: Callable[[int], object]) -> Spawned:
    """Fork; the child runs `child(report_fd)`, which must exec or exit, and reports a failure
    into `report_fd` first (the pipe is close-on-exec: a successful exec closes it empty)."""
    read_end, write_end = os.pipe()
    flush_stdio()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise
    if pid == 0:
        try:
            os.close(read_end)
            child(write_end)
        finally:
            os._exit(127)  # only if `child` returned or raised: never run the master's code in a child
    os.close(write_end)
    return Spawned(pid, read_end)


def flush_stdio() -> None:
    """Flush Python's buffers so a forked child does not write them out a second time."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def become_worker_process(launch: WorkerLaunch) -> None:
    """Child-side set-up shared by exec'd and preloaded workers (BEHAVIOR §2, STYLE pitfalls 6, 7, 9)."""
    os.setpgid(0, 0)
    signal.set_wakeup_fd(-1)
    for signum in RESET_IN_CHILDREN:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    if launch.pdeathsig:
        set_parent_death_signal(signal.Signals[f"SIG{launch.graceful_signal}"])
        if os.getppid() != launch.master_pid:
            os.write(2, b"Parent process died before we set pdeathsig; cowardly refusing to exec child process.\n")
            os._exit(1)
    if launch.prepare_child is not None:
        launch.prepare_child()
    if launch.cwd is not None:
        os.chdir(launch.cwd)  # an OSError is reported as the exec's (the release directory is gone)


def _exec_child(
    launch: WorkerLaunch, env: Mapping[str, str], report_fd: int, passed: Sequence[int], moves: Sequence[tuple[int, int]]
) -> None:
    try:
        become_worker_process(launch)
        move_listeners(moves)
        if launch.listen_fds:
            report_fd = place_listen_fds(passed, report_fd)
            env = {**env, "LISTEN_PID": str(os.getpid())}
        os.execve(launch.path, list(launch.argv), env)
    except OSError as error:
        os.write(report_fd, f"{error.errno}:{error.strerror}".encode())
    except BaseException as error:  # noqa: BLE001 - nothing may escape a forked child
        os.write(report_fd, f"{errno.EIO}:{error!r}".encode())
    finally:
        os._exit(127)


def place_listen_fds(passed: Sequence[int], report_fd: int) -> int:
    """In the child: `passed` at fds 3, 4, ... (inheritable), their old numbers closed; the report fd moved
    above them (close-on-exec). Returns the report fd's new number.

    Everything is first copied above the target range, so that a source already inside it (a socket
    systemd passed at 3, the report pipe at 4) is never overwritten before it is copied.
    """
    above = LISTEN_FDS_START + len(passed)
    copies = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above) for fd in passed]
    report = fcntl.fcntl(report_fd, fcntl.F_DUPFD_CLOEXEC, above)
    for fd in {*passed, report_fd}:
        os.close(fd)
    for target, copy in enumerate(copies, start=LISTEN_FDS_START):
        os.dup2(copy, target)  # inheritable
        os.close(copy)
    return report


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


_libc: ctypes.CDLL | None = None
"""libc, loaded in the master by `pdeathsig_available` (with `-k` only: ctypes costs every start ~10 ms)."""


@functools.cache  # asked for the launch settings and again for the start-up notice
def pdeathsig_available() -> bool:
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl  # noqa: B018 - raises AttributeError without prctl
    except (OSError, AttributeError):
        return False
    _libc = libc
    return True


def set_parent_death_signal(signum: int) -> None:
    import ctypes  # already imported by `pdeathsig_available` in the master

    libc = _libc if _libc is not None else ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def become_child_subreaper() -> None:
    """`--subreaper`: orphaned descendants are re-parented to this process (Linux 3.4+); OSError if refused."""
    import ctypes

    libc = _libc if _libc is not None else ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
