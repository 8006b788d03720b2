"""What this master image loaded at its start, so that the core can skip the upgrade check of a re-exec of the very same image.

An upgrade check proves that the command a re-exec runs can start einhorn. When nothing that
command would load differs from what this master loaded, the running master is that proof
already (spec/upgrades.md, "the image comparison"). What is compared, each file by
(device, inode, size, mtime in ns), as Python's own byte-code cache judges a source:

- the script the re-exec runs, the interpreter, and every file mapped into this process
  (/proc/self/maps: the binary, libpython, each C extension module);
- every module file loaded by the end of the start-up, and every file of the einhorn package
  (a restored image imports some a fresh one does not: einhorn.io.reexec);
- every entry of sys.path and each `.pth` file in them (a module or `.pth` added or removed
  changes its directory), and the directory of each module loaded;
- the environment: the re-exec's must be this image's (`--drop-env-var` can change what
  Python imports), apart from the systemd variables the master consumes.

A re-exec through `--reexec-as` runs a command of the operator's: never compared. Neither
is an image that has a mapped file deleted already (it was replaced after the start), nor
one on a system without /proc/self/maps. A file changed within the ~0.1 s between its import
and the snapshot (`Image.take`, at the end of the start-up) goes unseen.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence

from einhorn.core.record import dataclass
from einhorn.io.activation import LISTEN_VARIABLES

_MISSING = -1
"""The signature of a path that could not be read: it differs from any file's."""


def _signature(path: str) -> int:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return _MISSING
    return hash((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))


@dataclass(frozen=True, slots=True)
class Image:
    """The paths compared and each one's signature at the snapshot."""

    paths: tuple[str, ...]
    signatures: tuple[int, ...]
    environ: tuple[tuple[str, str], ...]

    @classmethod
    def take(cls, reexec_command: Sequence[str], environ: Mapping[str, str], reexec_as: bool) -> Image | str:
        """This image now; or why it cannot be compared (the reason is logged at each upgrade)."""
        if reexec_as:
            return "--reexec-as runs a command of its own"
        mapped = _mapped_files()
        if isinstance(mapped, str):
            return mapped
        paths = sorted({*_executable(reexec_command), *mapped, *_modules(), *_package_files(), *_import_path()})
        return cls(tuple(paths), tuple(_signature(p) for p in paths), _comparable(environ))

    def compare(self, environ: Mapping[str, str]) -> tuple[bool, str]:
        """(unchanged, what was compared or the first difference found)."""
        if _comparable(environ) != self.environ:
            return False, "the re-exec's environment differs from this image's (--drop-env-var)"
        for path, signature in zip(self.paths, self.signatures, strict=True):
            if _signature(path) != signature:
                return False, f"{path} changed since this master started"
        return True, f"{len(self.paths)} files unchanged since this master started"


def _comparable(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in environ.items() if k not in LISTEN_VARIABLES))


def _executable(reexec_command: Sequence[str]) -> list[str]:
    """The command's script (einhorn's own, as absolute path) and the interpreter (`python -m einhorn` runs sys.executable)."""
    return [path for path in (sys.executable, *reexec_command[:1]) if path]


def _mapped_files() -> list[str] | str:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return "no /proc/self/maps to list the interpreter's files"
    found = set()
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/") or fields[5].startswith(("/dev/", "/memfd:", "/SYSV")):
            continue
        path = fields[5]
        if path.endswith(" (deleted)"):
            return f"{path[: -len(' (deleted)')]} was replaced after this master started"
        found.add(path)
    return sorted(found)


def _modules() -> Iterable[str]:
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            yield path
            yield os.path.dirname(path)


def _package_files() -> Iterable[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d != "__pycache__"]
        yield directory
        for name in files:
            if name.endswith((".py", ".so")):
                yield os.path.join(directory, name)


def _import_path() -> Iterable[str]:
    for entry in sys.path:
        path = os.path.abspath(entry or os.curdir)
        yield path
        try:
            with os.scandir(path) as entries:
                pth = [e.path for e in entries if e.name.endswith(".pth") and e.is_file()]
        except OSError:
            continue
        yield from pth

