"""The names shown by `ps` (`-c NAME`, BEHAVIOR §1).

The master shows `einhorn: NAME` (the original showed `einhorn: ruby NAME`),
or `einhorn: <program args>` without `-c`. Preloaded workers are forks of the
master, so they would show the master's title: they get `einhorn worker: NAME`,
or the program's arguments (what an exec'd worker shows) without `-c`.
Exec'd workers keep their own names.

The full title (`ps`, `/proc/PID/cmdline`) needs the `setproctitle` library.
Without it only the 15-byte kernel name (`ps -o comm`, `/proc/PID/comm`) is
set, with `prctl(PR_SET_NAME)` on Linux; elsewhere nothing is changed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import ModuleType

from einhorn.extension import c_module
from einhorn.io.logs import Logger

PR_SET_NAME = 15
COMM_LENGTH = 15
"""The kernel's process name holds 16 bytes including the terminating NUL."""


def master_title(command_name: str | None, program: Sequence[str]) -> str:
    return f"einhorn: {command_name if command_name else ' '.join(program)}"


def worker_title(command_name: str | None, program: Sequence[str]) -> str:
    return f"einhorn worker: {command_name}" if command_name else " ".join(program)


def set_title(title: str, log: Logger) -> bool:
    """Set this process's `ps` title; False when only the short name (or nothing) could be set."""
    module = _setproctitle()
    if module is not None:
        try:
            module.setproctitle(title)
        except Exception as error:  # noqa: BLE001 - a cosmetic failure must not stop einhorn
            log.debug(f"Could not set the process title with setproctitle: {error!r}")
        else:
            return True
    named = _set_comm(title)
    log.debug(
        "The setproctitle library is not available: "
        + ("only the short process name (ps -o comm) was set" if named else "the process title is unchanged")
        + f" instead of {title!r}"
    )
    return False


def _setproctitle() -> ModuleType | None:
    """The `setproctitle` library's C module, loaded without the package (einhorn/extension.py): its
    `__init__` imports `logging` (and with it `threading`, `traceback`...), which the master would then
    hold for its whole life only to log that the C module is missing (issue 14). The package itself if
    its C module cannot be found that way."""
    module = c_module("setproctitle", "_setproctitle")
    if module is not None:
        return module
    try:
        import setproctitle
    except ImportError:
        return None
    return setproctitle


def _set_comm(title: str) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # only without setproctitle

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        name = ctypes.create_string_buffer(title.encode(errors="replace")[:COMM_LENGTH])
        return int(libc.prctl(PR_SET_NAME, name, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
