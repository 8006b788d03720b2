"""einhorn.io.nice: --nice for the master and the workers (levels >= the current one: safe without root)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from einhorn.io import nice
from einhorn.io.logs import Logger

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/stat")

RECORDER = '#!/bin/sh\necho "$@" >> "{record}"\necho "renice says hi"\nexit {status}\n'


def nice_of(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[16])


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A child process to renice; killed and reaped by pid afterwards."""
    pid = os.posix_spawn("/bin/sleep", ["sleep", "60"], dict(os.environ))
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def recorder(tmp_path: Path, status: int = 0) -> tuple[str, Path]:
    record = tmp_path / "record"
    script = tmp_path / "renice.sh"
    script.write_text(RECORDER.format(record=record, status=status))
    script.chmod(0o755)
    return str(script), record


def level_above_current(step: int) -> int:
    return min(19, os.getpriority(os.PRIO_PROCESS, 0) + step)


def test_default_command_uses_setpriority(sleeper: int, capsys: pytest.CaptureFixture[str]) -> None:
    level = level_above_current(3)
    assert nice.renice(level, sleeper, nice.DEFAULT_RENICE_CMD, Logger())
    assert nice_of(sleeper) == level
    assert f"Setting the nice level of process {sleeper} to {level}" in capsys.readouterr().err


def test_custom_command_gets_level_and_pid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script, record = recorder(tmp_path)
    assert nice.renice(4, 4242, script, Logger(verbosity=0))
    assert record.read_text() == "4 -p 4242\n"
    err = capsys.readouterr().err
    assert f"Running '{script} 4 -p 4242' to renice process 4242 to level 4" in err
    assert "Renice command said: renice says hi" in err


def test_custom_command_is_shell_split(tmp_path: Path) -> None:
    script, record = recorder(tmp_path)
    assert nice.renice(-2, 17, f"sh '{script}'", Logger())
    assert record.read_text() == "-2 -p 17\n"


def test_custom_command_failure_is_logged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script, _ = recorder(tmp_path, status=3)
    assert not nice.renice(1, 17, script, Logger())
    assert "Renice command exited with status 3, but continuing on anyway." in capsys.readouterr().err


def test_missing_command_is_logged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert not nice.renice(1, 17, str(tmp_path / "absent"), Logger())
    assert "Could not run the renice command" in capsys.readouterr().err


def test_unparseable_command_is_logged(capsys: pytest.CaptureFixture[str]) -> None:
    assert not nice.renice(1, 17, "renice 'unbalanced", Logger())
    assert "Invalid renice command" in capsys.readouterr().err


def test_setpriority_failure_is_logged(capsys: pytest.CaptureFixture[str]) -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert not nice.renice(5, pid_max + 1, nice.DEFAULT_RENICE_CMD, Logger())
    assert f"Could not renice process {pid_max + 1} to level 5" in capsys.readouterr().err


def test_run_command_status_and_output() -> None:
    assert nice.run_command(["sh", "-c", "echo out; echo err >&2; exit 4"]) == (4, b"out\n")
    assert nice.run_command(["sh", "-c", "kill -TERM $$"])[0] == -signal.SIGTERM


@pytest.mark.parametrize(
    ("euid", "allowed", "level", "warned"),
    [(1000, False, -5, True), (1000, False, 5, False), (0, False, -5, False), (1000, True, -5, False)],
)
def test_warning_when_lowering_without_privileges(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], euid: int, allowed: bool, level: int, warned: bool
) -> None:
    monkeypatch.setattr(os, "getpriority", lambda which, who: 0)
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    monkeypatch.setattr(nice, "_rlimit_allows", lambda level: allowed)
    nice.warn_if_unprivileged(level, "workers", Logger())
    err = capsys.readouterr().err
    assert ("WARNING: --nice asks for level -5 for the workers, below the current level 0" in err) == warned
    if warned:
        assert "ulimit -e 25" in err and "uid 1000" in err


def _in_child(hook_level: int, renice_cmd: str) -> int:
    """Run the worker hook in a forked child: the child's nice level afterwards."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            nice.worker_hook(hook_level, renice_cmd, Logger("WORKER"))()
            os.write(write_end, str(os.getpriority(os.PRIO_PROCESS, 0)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read()
    finally:
        os.waitpid(pid, 0)
    return int(answer)


def test_worker_hook_renices_the_child_itself() -> None:
    level = level_above_current(5)
    assert _in_child(level, nice.DEFAULT_RENICE_CMD) == level
    assert os.getpriority(os.PRIO_PROCESS, 0) < level or level == 19


def test_worker_hook_never_raises() -> None:
    current = os.getpriority(os.PRIO_PROCESS, 0)
    assert _in_child(current + 1, "renice 'unbalanced") == current
