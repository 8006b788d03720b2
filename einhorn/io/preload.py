"""`-p PATH`: load Python code once in the master, fork without exec per worker (BEHAVIOR §7).

PATH is a Python file (`app.py`, or any existing file) or an importable module
name (`myapp.server`). The master loads it before its event loop (a re-exec
for an upgrade loads the new code again) and, for each worker, forks and calls
the module's `einhorn_main()` in the child, as the original does for Ruby.

Loading:
  - a file is imported under its own name (its stem; `__einhorn_preload__`
    when that name is taken or not an identifier), never as `__main__`, so an
    `if __name__ == "__main__":` block does not run in the master; its
    directory goes first on `sys.path`, as for `python app.py`;
  - a module name is imported with the current directory appended to
    `sys.path` (as `python -m` would find it);
  - collection is off while loading and everything is `gc.freeze()`d after,
    and again before each fork: the children's collector then never writes to
    the preloaded objects, which stay shared copy-on-write;
  - descriptors the code opened while loading (a log file, say) stay open in
    the workers, as in the original: everything else of the master is closed.

A load that raises (even `SystemExit`) or defines no callable `einhorn_main`
is logged with its traceback and einhorn falls back to fork+exec of the
program.

The child, after fork: the set-up shared with exec'd workers
(`become_worker_process`: process group, default signal handlers, no wakeup fd,
`-k` parent-death signal, `--nice`), SIGPIPE/SIGXFSZ back to ignored (what any
Python program runs with), every other descriptor closed, `os.environ` set to
the worker environment (§2), `sys.argv` set to the program's arguments (the
interpreter and its options dropped: `python3 app.py --port 5` gives
`['app.py', '--port', '5']`), `random` re-seeded (and numpy's legacy global
generator if numpy is loaded), the process title set; then `einhorn_main()`.
Its return value is the exit code as for `sys.exit()`; an exception prints a
traceback and exits 1. Non-daemon threads are joined, `atexit` handlers run,
stdio flushed, then `os._exit`: the master's stack below the fork never
unwinds in the child.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import importlib.machinery
import importlib.util
import os
import random
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Collection, Iterable, Sequence
from types import ModuleType
from typing import NoReturn

from einhorn.core.record import dataclass
from einhorn.io import proctitle
from einhorn.io.logs import Logger
from einhorn.io.signals import PYTHON_IGNORED
from einhorn.io.spawn import (
    Spawned,
    WorkerLaunch,
    become_worker_process,
    flush_stdio,
    fork_reporting,
    listener_moves,
    move_listeners,
    worker_environment,
)

FALLBACK_MODULE_NAME = "__einhorn_preload__"
_PYTHON = re.compile(r"\A(python|pypy)[0-9.]*\Z")
_PYTHON_OPTIONS_WITH_VALUE = frozenset(["-W", "-X", "--check-hash-based-pycs"])


@dataclass(frozen=True, slots=True)
class Preloaded:
    """Code loaded in the master, ready to run in forked workers."""

    path: str
    main: Callable[[], object]
    fds: frozenset[int]
    """Descriptors the code opened while loading: kept open in the workers."""


def load(path: str, log: Logger) -> Preloaded | None:
    """Load PATH in this process; None (after logging why) when einhorn must fork+exec instead."""
    hint = "(if this hangs, make sure your code can be properly loaded as a library)"
    before = open_fds()
    collecting = gc.isenabled()
    gc.disable()
    try:
        if _is_file(path):
            log.info(f"Loading {path} {hint}")
            module = _load_file(path)
        else:
            log.info(f"Importing {path} {hint}")
            module = _import(path)
    except (Exception, SystemExit) as error:
        log.error(f"Proceeding with postload -- could not load {path}: {error} ({type(error).__name__})\n{traceback.format_exc()}")
        return None
    finally:
        if collecting:
            gc.enable()
    main = getattr(module, "einhorn_main", None)
    if not callable(main):
        log.error(f"Proceeding with postload -- loaded {path}, but no einhorn_main function was defined")
        return None
    opened = frozenset(fd for fd, identity in open_fds().items() if before.get(fd) != identity)
    if opened:
        log.info(f"{path} opened descriptors {sorted(opened)} while loading: workers inherit them")
    if threading.active_count() > 1:
        log.error(
            f"WARNING: {path} started {threading.active_count() - 1} thread(s) while loading: forking a threaded "
            "process can deadlock the workers. Start threads in einhorn_main() instead."
        )
    gc.freeze()
    log.info(f"Successfully loaded {path}")
    return Preloaded(path, main, opened)


def _is_file(path: str) -> bool:
    return path.endswith(".py") or os.path.isfile(path)


def _load_file(path: str) -> ModuleType:
    location = os.path.abspath(path)
    stem = os.path.splitext(os.path.basename(location))[0]
    name = stem if stem.isidentifier() and stem not in sys.modules else FALLBACK_MODULE_NAME
    loader = importlib.machinery.SourceFileLoader(name, location)
    spec = importlib.util.spec_from_file_location(name, location, loader=loader)
    if spec is None:
        raise ImportError(f"cannot load {path} as Python source")
    module = importlib.util.module_from_spec(spec)
    directory = os.path.dirname(location)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import(name: str) -> ModuleType:
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.append(here)
    return importlib.import_module(name)


def open_fds() -> dict[int, tuple[int, int]]:
    """This process's open descriptors, each with its file's identity (device, inode)."""
    try:
        listed: Iterable[int] = [int(name) for name in os.listdir(_fd_directory())]
    except OSError:
        listed = range(3)
    found: dict[int, tuple[int, int]] = {}
    for fd in listed:
        try:
            info = os.fstat(fd)  # the listing's own descriptor is closed by now: skipped here
        except OSError:
            continue
        found[fd] = (info.st_dev, info.st_ino)
    return found


def _fd_directory() -> str:
    return "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"


def close_fds_except(keep: Collection[int]) -> None:
    """Close every descriptor of this process but `keep`."""
    try:
        listed: Iterable[int] = [int(name) for name in os.listdir(_fd_directory())]
    except OSError:
        listed = range(os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)
    for fd in listed:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def worker_argv(program: Sequence[str]) -> list[str]:
    """`sys.argv` for a preloaded worker: what the program would see if exec'd."""
    if not program or not _PYTHON.match(os.path.basename(program[0])):
        return list(program)
    rest = list(program[1:])
    i = 0
    while i < len(rest) and rest[i].startswith("-") and rest[i] != "-":
        option = rest[i]
        if option == "-m" and i + 1 < len(rest):
            return [rest[i + 1], *rest[i + 2 :]]
        if option == "-c":
            return ["-c", *rest[i + 2 :]]
        if option == "--":
            i += 1
            break
        i += 2 if option in _PYTHON_OPTIONS_WITH_VALUE else 1
    return rest[i:] or [program[0]]


def reseed() -> None:
    """Give this process its own random streams (a fork copies the generators' state)."""
    random.seed()
    numpy = sys.modules.get("numpy")
    legacy_seed = getattr(getattr(numpy, "random", None), "seed", None)
    if callable(legacy_seed):
        try:
            legacy_seed()
        except Exception:  # noqa: BLE001 - a third-party generator must not stop the worker
            pass


def exit_code(value: object) -> int:
    """The exit status for `einhorn_main()`'s return value or a `SystemExit` code, as `sys.exit` does."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def run_main(main: Callable[[], object]) -> int:
    """Call `einhorn_main()`: its exit status, as `sys.exit(einhorn_main())` would give."""
    try:
        return exit_code(main())
    except SystemExit as exit:
        return exit_code(exit.code)
    except BaseException:  # noqa: BLE001 - everything ends as an exit status
        traceback.print_exc()
        return 1


def finish(code: int) -> int:
    """End like a Python program: join non-daemon threads, run `atexit` handlers; the final status."""
    try:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = code or 1
    return code


class Preloader:
    """`ShellOptions.spawn` for preloaded code: fork, set the child up, call `einhorn_main()`."""

    def __init__(self, preloaded: Preloaded, program: Sequence[str], command_name: str | None, log: Logger) -> None:
        self.preloaded = preloaded
        self.argv = worker_argv(program)
        self.title = proctitle.worker_title(command_name, program)
        self.log = log

    def spawn(self, launch: WorkerLaunch, index: int, sock_fd: int | None) -> Spawned:
        """Fork one preloaded worker; OSError if the fork itself failed."""
        env = worker_environment(launch, index, sock_fd)
        keep = {0, 1, 2, *launch.listener_fds, *self.preloaded.fds}
        if sock_fd is not None:
            keep.add(sock_fd)
        gc.collect()
        gc.freeze()
        moves = listener_moves(launch)
        return fork_reporting(lambda report_fd: self._child(launch, env, keep, report_fd, moves))

    def _child(self, launch: WorkerLaunch, env: dict[str, str], keep: set[int], report_fd: int, moves: list[tuple[int, int]]) -> NoReturn:
        try:
            become_worker_process(launch)
            move_listeners(moves)  # before the close: each source is one of the descriptors closed
            for signum in PYTHON_IGNORED:  # reset to the default by `become_worker_process`, as for exec'd workers
                signal.signal(signum, signal.SIG_IGN)
            close_fds_except(keep | {report_fd})
            log = Logger("WORKER", self.log.verbosity, self.log.format)
            proctitle.set_title(self.title, log)  # first: setproctitle needs the original environ to find argv
            os.environ.clear()
            os.environ.update(env)
            sys.argv = list(self.argv)
            reseed()
            log.info("About to tear down Einhorn state and run einhorn_main")
        except BaseException as error:  # noqa: BLE001 - nothing may escape a forked child
            try:
                code = error.errno if isinstance(error, OSError) and error.errno else 5
                os.write(report_fd, f"{code}:preloaded worker set-up failed: {error!r}".encode())
            finally:
                os._exit(127)
        code = 1
        try:
            os.close(report_fd)
            code = finish(run_main(self.preloaded.main))
        finally:
            flush_stdio()
            os._exit(code)

