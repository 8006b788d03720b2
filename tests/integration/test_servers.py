"""Ordinary servers, unmodified, under einhorn (docs/servers.md): each with the graceful signal it
stops on, five upgrades under a bounded client load, no failed request, no old server left.

uvicorn and hypercorn close, as they stop, a connection they accepted a moment before and had not read
yet: their recipes bind with `drain` (spec/README.md §9), so that no connection reaches a generation in
its last moments.

The command lines are the documented ones; only the test's plumbing is added (a versioned
`--reexec-as` wrapper so that each upgrade serves a new APP_VERSION, an ephemeral port).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import BIN, Harness, Master
from tests.integration.procfs import alive, descendants_of
from tests.integration.upgrade_helpers import Load, bound_port, failures, upgrade, write_wrapper
from tests.integration.waiting import wait_until
from tests.integration.workers import REPO

EXAMPLE = str(REPO / "example")
REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
UPGRADES = 5


@dataclass(frozen=True)
class Recipe:
    einhorn: tuple[str, ...]
    """The options (docs/servers.md) besides -n and -b."""
    program: tuple[str, ...]
    """The server's command line; its first word is looked up in the venv."""
    bind: str = "127.0.0.1:0,r"
    """The -b address and flags (an ephemeral port here)."""
    go_source: Path | None = None
    """A Go program: built with Debian's golang-go (`.ci/run` installs it) into the test's directory first."""


RECIPES = {
    # uvicorn stops gracefully on TERM (and INT); it says nothing when ready: a timer ACK. Like hypercorn it
    # closes, when it stops, a connection it accepted in the last moment and had not read yet: `drain`.
    "uvicorn": Recipe(
        ("--listen-fds", "--graceful-signal", "TERM", "-m", "1"),
        ("uvicorn", "--fd", "3", "--app-dir", EXAMPLE, "--no-access-log", "--log-level", "warning", "asgi_app:app"),
        bind="127.0.0.1:0,r,drain",
    ),
    # hypercorn: TERM is graceful; -w 0 serves in the process einhorn started (no process of its own between).
    "hypercorn": Recipe(
        ("--listen-fds", "--graceful-signal", "TERM", "-m", "1"),
        ("hypercorn", "-w", "0", "--bind", "fd://3", "--log-level", "warning", f"{EXAMPLE}/asgi_app:app"),
        bind="127.0.0.1:0,r,drain",
    ),
    # gunicorn: TERM is graceful (USR2 is its own re-exec); it reads LISTEN_FDS and says READY=1 itself.
    "gunicorn": Recipe(
        ("--listen-fds", "-m", "notify", "--graceful-signal", "TERM"),
        ("gunicorn", "-w", "1", "--chdir", EXAMPLE, "--log-level", "warning", "wsgi_app:app"),
    ),
    # a plain stdlib server with systemd's conventions only (and the same as a Go net/http server would do)
    "activated_server": Recipe(
        ("--listen-fds", "-m", "notify", "--graceful-signal", "TERM"),
        (sys.executable, str(REPO / "example" / "activated_server")),
    ),
    # the Go net/http server of docs/servers.md, standard library only: the same conventions
    "go_net_http": Recipe(
        ("--listen-fds", "-m", "notify", "--graceful-signal", "TERM"),
        (),
        go_source=REPO / "example" / "go_server" / "main.go",
    ),
}


def built_go_program(source: Path, directory: Path) -> list[str]:
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain (Debian's golang-go; .ci/run installs it as root)")
    output = directory / "go-server"
    env = {**os.environ, "GO111MODULE": "off", "GOCACHE": str(directory / "go-cache"), "GOPATH": str(directory / "go-path")}
    env.pop("GOFLAGS", None)
    built = subprocess.run([go, "build", "-o", str(output), str(source)], env=env, capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr
    return [str(output)]


def program(recipe: Recipe, directory: Path) -> list[str]:
    if recipe.go_source is not None:
        return built_go_program(recipe.go_source, directory)
    first, *rest = recipe.program
    if "/" in first:
        return [first, *rest]
    path = BIN / first
    if not path.exists():
        found = shutil.which(first)
        if found is None:
            pytest.skip(f"{first} is not installed (the test extra has it: pip install -e '.[test]')")
        path = Path(found)
    return [str(path), *rest]


def server_processes(master: Master) -> set[int]:
    return set(descendants_of(master.pid))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("server", sorted(RECIPES))
def test_five_upgrades_under_load_fail_no_request_and_leave_no_old_server(harness: Harness, server: str) -> None:
    recipe = RECIPES[server]
    here = harness.directory
    (here / "version").write_text("1")
    wrapper = write_wrapper(here, "versioned", on_exec='APP_VERSION=$(cat "$here/version"); export APP_VERSION')
    master = harness.start(
        "-n", "2", "-b", recipe.bind, *recipe.einhorn, "--reexec-as", wrapper,
        program=program(recipe, here), env={"APP_VERSION": "1"}, workers=2, timeout=30,
    )  # fmt: skip
    load = Load(bound_port(master), request=REQUEST, threads=3, limit_seconds=200.0, pause=0.01)
    load.start()
    started = time.monotonic()
    try:
        wait_until(lambda: load.answered_since(started, "1"), 20, "answers from version 1")
        for version in range(2, UPGRADES + 2):
            before = server_processes(master)
            (here / "version").write_text(str(version))
            upgrade(master, timeout=60)
            # the old servers (and whatever processes of their own they had) all exit
            wait_until(lambda: not [p for p in before if alive(p)], 60, f"the servers before version {version} to exit")  # noqa: B023
            switched = time.monotonic()
            wait_until(lambda: load.answered_since(switched, str(version)), 20, f"answers from version {version}")  # noqa: B023
    finally:
        load.stop()
    answers = load.snapshot()
    by_version = {v: sum(1 for a in answers if a.version == v) for v in sorted({a.version for a in answers if a.version is not None})}
    print(f"\n{server}: {len(answers)} requests during {UPGRADES} upgrades, {len(failures(answers))} failed, by APP_VERSION: {by_version}")
    failed = failures(answers)
    assert failed == [], failed[:5]
    assert len(answers) >= 100
    assert set(by_version) - {"None"} == {str(v) for v in range(1, UPGRADES + 2)}  # "None": a failed request, checked above
