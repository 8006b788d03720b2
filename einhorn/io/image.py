"""What this master image loaded at its start, so that the core can skip the upgrade check of a re-exec of the very same image.

An upgrade check proves that the command a re-exec runs can start einhorn. When that command
starts this image the way it was started, and nothing it would load differs from what this
master loaded, the running master is that proof already (spec/upgrades.md, "The image
comparison"). Each file is compared by (device, inode, size, mtime in ns, mode, owner, group):

- the script the re-exec runs, its interpreter, and every file mapped into this process
  (/proc/self/maps: the binary, libpython, each C extension module);
- every module file loaded by the end of the start-up, each loaded module's and package's
  directory, and every file of the einhorn package (a restored image imports some a fresh
  one does not: einhorn.io.reexec);
- every entry of sys.path, each `.pth` file in them, and the site directories, present or
  not (a `pip install --user` creates one); a directory by what it holds that an import could
  find (modules, packages, `.pth` files), not by its mtime;
- the environment: the re-exec's must be this image's own at its start (a variable that
  `--drop-env-var` removes can change what Python imports; the caller says so).

Never compared, so always checked: a re-exec through `--reexec-as` (a command of the
operator's), an image started otherwise than its re-exec command would start it
(`python /venv/bin/einhorn`, interpreter options, a zipapp, a `#!/usr/bin/env` script), an
image with a mapped file already replaced or a compared file modified since this process
started, and a system without /proc/self/maps.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Iterable, Sequence

from einhorn.core.record import dataclass

_MISSING = -1
"""The signature of a path that could not be read: it differs from any file's."""


class NotComparable(Exception):
    """Why this image cannot be compared: every upgrade runs its check."""


_IMPORTABLE = (".py", ".pyc", ".so", ".pth", ".zip", ".egg", ".egg-link", ".dist-info", ".egg-info")
"""What an entry of a directory on the import path ends with if it matters to an import (or to a package's
metadata: a new release of a package the master loads only later brings a new `.dist-info` name), besides
the directories an import could name (a package)."""


def _signature(path: str, started_ns: int | None = None) -> int:
    """The file's identity; with `started_ns`, NotComparable if it was modified after that time. A directory's
    is what it holds that an import could find, not its mtime: a master writes its pid file and socket, and
    its workers their logs, into directories that `python -m einhorn` puts on the import path."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            with os.scandir(path) as entries:
                names = sorted(e.name for e in entries if e.name.endswith(_IMPORTABLE) or _package_like(e))
            return hash((info.st_dev, info.st_ino, info.st_mode, info.st_uid, info.st_gid, *names))
    except (OSError, ValueError):
        return _MISSING
    if started_ns is not None and info.st_mtime_ns > started_ns:
        raise NotComparable(f"{path} was modified after this master started")
    return hash((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_mode, info.st_uid, info.st_gid))


@dataclass(frozen=True, slots=True)
class Image:
    """The paths compared and each one's signature at the snapshot."""

    paths: tuple[str, ...]
    signatures: tuple[int, ...]

    @classmethod
    def take(cls, reexec_command: Sequence[str]) -> Image | str:
        """This image now; or why it cannot be compared (logged at each upgrade)."""
        try:
            started_ns = _process_started_ns()
            interpreter = _started_as(reexec_command)
            found = {interpreter, *reexec_command[:1], *_mapped_files(), *_modules(), *_package_files(), *_import_path()}
            paths = sorted(found)
            return cls(tuple(paths), tuple(_signature(p, started_ns) for p in paths))
        except NotComparable as why:
            return str(why)
        except (OSError, ValueError, TypeError) as error:  # a path that is no path (bytes, a NUL), a cwd gone, ...
            return f"the snapshot failed: {error}"

    def compare(self) -> tuple[bool, str]:
        """(unchanged, what was compared or the first difference found)."""
        for path, signature in zip(self.paths, self.signatures, strict=True):
            if _signature(path) != signature:
                return False, f"{path} changed since this master started"
        return True, f"{len(self.paths)} files unchanged since this master started"


def _package_like(entry: os.DirEntry[str]) -> bool:
    """A directory `import NAME` could find (not `__pycache__`, `.pytest_cache`, `my-logs`)."""
    return entry.name.isidentifier() and entry.name != "__pycache__" and entry.is_dir()


def _process_started_ns() -> int:
    """When this process started (its exec), on the wall clock, one clock tick early at most: a file modified
    since may not be what the start-up loaded; one modified a tick before only costs an upgrade check."""
    try:
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime: clock ticks after boot
    except (OSError, IndexError, ValueError):
        raise NotComparable("no /proc/self/stat to tell when this master started") from None
    per_second = os.sysconf("SC_CLK_TCK")
    age_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - ticks * 1_000_000_000 // per_second
    return time.time_ns() - age_ns - 1_000_000_000 // per_second


def _started_as(reexec_command: Sequence[str]) -> str:
    """The interpreter the re-exec runs; NotComparable unless it starts this image the way this process was started."""
    started = list(sys.orig_argv)
    if list(reexec_command[:3]) == [sys.executable, "-m", "einhorn"]:
        if started[1:3] != ["-m", "einhorn"]:
            raise NotComparable(f"started as `{' '.join(started[:3])}`, not as `python -m einhorn`")
        return sys.executable
    script = reexec_command[0]
    with open(script, "rb") as f:
        first = f.readline(256)
    words = first[2:].decode(errors="replace").strip().split(maxsplit=1) if first.startswith(b"#!") else []
    if not words or os.path.basename(words[0]) == "env" or not os.path.isabs(words[0]):
        raise NotComparable(f"{script} names no interpreter by its absolute path on its #! line")
    expected = len(words) + 1
    if started[: len(words)] != words or len(started) < expected or os.path.abspath(started[len(words)]) != script:
        raise NotComparable(f"started as `{' '.join(started[:expected])}`, not by {script}'s #! line")
    return words[0]


def _mapped_files() -> set[str]:
    found = set()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.rstrip("\n").split(maxsplit=5)
                if len(fields) < 6 or not fields[5].startswith("/") or fields[5].startswith(("/dev/", "/memfd:", "/SYSV")):
                    continue
                path = fields[5]
                if path.endswith(" (deleted)"):
                    raise NotComparable(f"{path[: -len(' (deleted)')]} was replaced after this master started")
                found.add(path)
    except OSError:
        raise NotComparable("no /proc/self/maps to list the interpreter's files") from None
    return found


def _modules() -> Iterable[str]:
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            yield path
            yield os.path.dirname(path)
        locations = getattr(module, "__path__", None)  # a package's directories, a namespace package's too
        if isinstance(locations, Iterable) and not isinstance(locations, str):
            yield from (p for p in locations if isinstance(p, str))


def _package_files() -> Iterable[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d != "__pycache__"]
        yield directory
        for name in files:
            yield os.path.join(directory, name)


def _import_path() -> Iterable[str]:
    entries = [entry for entry in sys.path if isinstance(entry, str)]
    if "site" in sys.modules:  # the site directories, present or not: one appearing later is on the re-exec's path
        import site

        entries += site.getsitepackages()
        if site.ENABLE_USER_SITE:
            entries.append(site.getusersitepackages())
    for entry in entries:
        path = os.path.abspath(entry or os.curdir)
        yield path
        try:
            with os.scandir(path) as found:
                pth = [e.path for e in found if e.name.endswith(".pth") and e.is_file()]
        except (OSError, ValueError):
            continue
        yield from pth
