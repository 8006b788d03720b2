"""`--nice MASTER[:WORKER[:RENICE_CMD]]`: nice levels for the master and its workers.

The master is reniced once at start (again after each re-exec, harmlessly);
each worker in the child between fork and exec (or before `einhorn_main` when
preloaded), so it never runs a single instruction of the program at the wrong
level. Workers without a WORKER level inherit the master's.

With the default renice command the level is set with `setpriority(2)`; any
other command is shell-split and run as `RENICE_CMD LEVEL -p PID` (as the
original did through a shell), waiting for it; its output is logged at debug
level. A failure is logged and never stops einhorn.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Callable

from einhorn.io.logs import Logger

DEFAULT_RENICE_CMD = "/usr/bin/renice"


def renice(level: int, pid: int, renice_cmd: str, log: Logger) -> bool:
    """Set the nice level of `pid`; False (after logging why) if that failed."""
    try:
        argv = shlex.split(renice_cmd)
    except ValueError as error:
        log.error(f"Invalid renice command {renice_cmd!r}: {error}; not renicing process {pid}")
        return False
    if not argv or argv == [DEFAULT_RENICE_CMD]:
        log.info(f"Setting the nice level of process {pid} to {level}")
        try:
            os.setpriority(os.PRIO_PROCESS, pid, level)
        except OSError as error:
            log.error(f"Could not renice process {pid} to level {level}: {error.strerror}, but continuing on anyway.")
            return False
        return True
    argv += [str(level), "-p", str(pid)]
    log.info(f"Running {shlex.join(argv)!r} to renice process {pid} to level {level}")
    try:
        status, output = run_command(argv)
    except OSError as error:
        log.error(f"Could not run the renice command {argv[0]!r}: {error.strerror}, but continuing on anyway.")
        return False
    if output.strip():
        log.debug(f"Renice command said: {output.decode(errors='replace').strip()}")
    if status != 0:
        log.error(f"Renice command exited with status {status}, but continuing on anyway.")
        return False
    return True


def run_command(argv: list[str]) -> tuple[int, bytes]:
    """Run `argv` (found on PATH), wait for it: its exit code (negative: killed by that signal) and stdout.

    `posix_spawn` and a `waitpid` on its own pid, never `subprocess` (STYLE
    pitfall 4); signals the caller blocked or ignored are restored for it
    (pitfall 7).
    """
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawnp(
            argv[0],
            argv,
            dict(os.environ),
            file_actions=[(os.POSIX_SPAWN_DUP2, write_end, 1)],
            setsigmask=(),
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    except OSError:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    chunks = []
    with contextlib.closing(os.fdopen(read_end, "rb", buffering=0)) as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks)


def warn_if_unprivileged(level: int, who: str, log: Logger) -> None:
    """Say clearly, before trying, that lowering the nice level will probably fail."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if level >= current or os.geteuid() == 0 or _rlimit_allows(level):
        return
    log.error(
        f"WARNING: --nice asks for level {level} for the {who}, below the current level {current}. "
        f"That needs root or CAP_SYS_NICE (or a nice limit allowing it: `ulimit -e {20 - level}`), "
        f"and einhorn runs as uid {os.geteuid()}: renicing will probably fail, and the {who} will stay at level {current}."
    )


def _rlimit_allows(level: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or level >= 20 - soft


def worker_hook(level: int, renice_cmd: str, log: Logger) -> Callable[[], None]:
    """For `WorkerLaunch.prepare_child`: renice the worker itself, in the child, before exec; never raises."""

    def renice_worker() -> None:
        try:
            renice(level, os.getpid(), renice_cmd, Logger("WORKER", log.verbosity, log.format))
        except BaseException as error:  # noqa: BLE001 - runs in a forked child
            with contextlib.suppress(OSError):
                os.write(2, f"einhorn: could not renice worker {os.getpid()}: {error!r}\n".encode())

    return renice_worker
