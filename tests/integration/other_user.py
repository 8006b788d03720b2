"""Running einhorn as another user (`nobody`), from a checkout that user may not be able to read.

A clone in a fresh `mktemp -d` (mode 0700) is closed to every other user: an
unprivileged master started from it cannot even run the venv's interpreter,
let alone import einhorn. `nobody(directory)` finds an interpreter and an
import path that `nobody` can reach: the checkout itself if it is readable,
else a copy of einhorn and its runtime dependencies made in `directory`
(which must be traversable by everyone, e.g. a 0755 temp dir). A test that
cannot get one skips, saying what was tried. `as_nobody()` does it all in a
fresh directory under /tmp.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = (
    "import os, sys\n"
    "import einhorn.cli, einhorn.io.preload, einhorn.restricted_yaml\n"
    "if not os.access(sys.executable, os.X_OK):\n"
    "    sys.exit(f'{sys.executable} is not executable for this user')\n"
)
"""Run as the other user: what an unprivileged einhorn (and its upgrade check) imports, and the interpreter
must pass `os.access` (einhorn looks a worker program up that way) as well as start."""


@dataclass(frozen=True)
class OtherUser:
    name: str
    uid: int
    gid: int
    python: str
    """An interpreter this user can run."""
    pythonpath: str
    """Where that interpreter finds einhorn and its dependencies."""

    def wrap(self) -> list[str]:
        """The prefix that runs a command as this user (no supplementary groups)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--"]

    def einhorn(self) -> list[str]:
        return [*self.wrap(), self.python, "-m", "einhorn"]

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        return {**base, "PYTHONPATH": self.pythonpath}


@contextlib.contextmanager
def as_nobody() -> Iterator[OtherUser]:
    """`nobody(directory)` with a fresh directory under /tmp open to all, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="eh-nobody-", dir="/tmp" if os.path.isdir("/tmp") else None))
    try:
        directory.chmod(0o755)
        yield nobody(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def nobody(directory: Path) -> OtherUser:
    """`nobody`, with an interpreter and import path it can reach; skips the test with the reason if there is none."""
    found = find_nobody(directory)
    if isinstance(found, str):
        pytest.skip(found)
    return found


def find_nobody(directory: Path) -> OtherUser | str:
    """`nobody` with an interpreter and import path it can reach, or why there is none (for `bench/soak.py` too)."""
    if os.geteuid() != 0:
        return "switching to another user needs root"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return "there is no user 'nobody'"
    user = OtherUser(entry.pw_name, entry.pw_uid, entry.pw_gid, sys.executable, str(REPO))
    tried: list[str] = []
    why = _cannot_import(user)
    if why is None:
        return user
    tried.append(f"{user.python} with the checkout {REPO}: {why}")
    copy = directory / "readable-einhorn"
    _readable_copy(copy)
    if not _reachable(copy, user):
        return f"{copy} is not reachable by {user.name}: a parent directory is closed to other users"
    for python in _interpreters():
        candidate = OtherUser(user.name, user.uid, user.gid, python, str(copy))
        why = _cannot_import(candidate)
        if why is None:
            return candidate
        tried.append(f"{python} with a copy in {copy}: {why}")
    return f"{user.name} cannot run einhorn here; tried " + "; ".join(tried)


def _cannot_import(user: OtherUser) -> str | None:
    """None if `user` can run einhorn's interpreter and import it, else what went wrong."""
    try:
        result = subprocess.run(
            [*user.wrap(), user.python, "-c", PROBE],
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
            env={"PATH": os.defpath, "PYTHONPATH": user.pythonpath},
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def _interpreters() -> list[str]:
    """Interpreters of this Python's version that another user may be able to run (C extensions need the same one)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = [os.path.realpath(sys.executable), f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    return [p for i, p in enumerate(found) if os.path.isfile(p) and p not in found[:i]]


def _runtime_modules() -> list[str]:
    """The top-level modules of einhorn and of its runtime dependencies (not the test extras)."""
    modules = ["einhorn"]
    for requirement in importlib.metadata.requires("einhorn") or []:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]
        distribution = importlib.metadata.distribution(name)
        top_level = distribution.read_text("top_level.txt")
        if top_level:
            modules += top_level.split()
            continue
        files = distribution.files or []
        modules += sorted({f.parts[0] for f in files if len(f.parts) > 1 and not f.parts[0].endswith((".dist-info", ".data"))})
        modules += sorted(f.stem for f in files if len(f.parts) == 1 and f.suffix == ".py")
    return modules


def _readable_copy(target: Path) -> None:
    target.mkdir(mode=0o755)
    for module in _runtime_modules():
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        if spec.submodule_search_locations:  # a package: copy its directory
            shutil.copytree(origin.parent, target / origin.parent.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, target / origin.name)
    for path in [target, *target.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | (0o111 if path.is_dir() else 0))


def _reachable(path: Path, user: OtherUser) -> bool:
    """Every directory above `path` lets `user` through (owner, group or other execute bit)."""
    for parent in [*reversed(path.parents), path]:
        info = parent.stat()
        if info.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif info.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


SET_PROCESS_LIMIT = """
import resource, sys
pid, soft = int(sys.argv[1]), int(sys.argv[2])
_, hard = resource.prlimit(pid, resource.RLIMIT_NPROC)
resource.prlimit(pid, resource.RLIMIT_NPROC, (hard if soft < 0 else soft, hard))
"""


def process_limit(user: OtherUser, pid: int, soft: int) -> None:
    """Set `pid`'s soft RLIMIT_NPROC (1: no fork can succeed; -1: back to the hard limit).

    As `user`: prlimit on another user's process needs CAP_SYS_RESOURCE, which root may lack here.
    """
    command = [*user.wrap(), user.python, "-c", SET_PROCESS_LIMIT, str(pid), str(soft)]
    subprocess.run(command, check=True, timeout=30, cwd="/", stdin=subprocess.DEVNULL, capture_output=True)
