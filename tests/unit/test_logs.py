"""einhorn.io.logs: the text log lines, and which levels each verbosity writes."""

from __future__ import annotations

import builtins
import json
import os
import re
import sys

import pytest

from einhorn.core.effects import LogLevel
from einhorn.io.logs import HELD_LINES, PIPE_BUF, Logger, current_traceback, json_line


@pytest.mark.parametrize(
    ("verbosity", "shown"),
    [(0, ["DEBUG", "INFO", "WARN", "ERROR"]), (1, ["INFO", "WARN", "ERROR"]), (2, ["ERROR"])],
    ids=["-v", "default", "-q"],
)
def test_each_verbosity_writes_its_levels_and_up(verbosity: int, shown: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    log = Logger(verbosity=verbosity)
    for level in LogLevel:
        log.log(level, f"a {level.name.lower()} line")
    pid = os.getpid()
    assert capsys.readouterr().err.splitlines() == [f"[MASTER {pid}] {name}: a {name.lower()} line" for name in shown]


def test_warn_sits_between_info_and_error() -> None:
    assert LogLevel.INFO < LogLevel.WARN < LogLevel.ERROR


def test_a_json_line_has_time_level_role_pid_message_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    log = Logger(format="json")
    log.log_fields(LogLevel.WARN, "Crash loop: …", (("pid", 7), ("cause", "exit code 1"), ("before_ack", True), ("message", "not this")))
    log.info("plain")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first.pop("time"))
    assert first == {"level": "WARN", "role": "MASTER", "master_pid": os.getpid(), "message": "Crash loop: …", "pid": 7, "cause": "exit code 1", "before_ack": True}
    assert second["message"] == "plain" and "pid" not in second


def test_json_lines_keep_the_verbosity_filter(capsys: pytest.CaptureFixture[str]) -> None:
    Logger(verbosity=2, format="json").info("hidden")
    assert capsys.readouterr().err == ""


def test_text_lines_ignore_the_fields(capsys: pytest.CaptureFixture[str]) -> None:
    Logger().log_fields(LogLevel.INFO, "===> Launched 7 (index: 0)", (("pid", 7),))
    assert capsys.readouterr().err == f"[MASTER {os.getpid()}] INFO: ===> Launched 7 (index: 0)\n"


def test_json_time_is_utc_with_milliseconds() -> None:
    line = json.loads(json_line(1700000000.25, LogLevel.INFO, "MASTER", 1, "m", ()))
    assert line["time"] == "2023-11-14T22:13:20.250Z"


def test_held_lines_are_written_together_at_a_flush_or_once_there_are_held_lines_of_them(capsys: pytest.CaptureFixture[str]) -> None:
    log = Logger()
    log.hold()
    log.info("one")
    log.info("two")
    assert capsys.readouterr().err == ""
    log.flush()
    pid = os.getpid()
    assert capsys.readouterr().err == f"[MASTER {pid}] INFO: one\n[MASTER {pid}] INFO: two\n"
    for n in range(HELD_LINES):
        log.info(f"line {n}")
    assert capsys.readouterr().err.count("\n") == HELD_LINES  # a long burst is seen while it lasts
    log.info("last held")
    log.release()
    log.info("at once")
    assert capsys.readouterr().err == f"[MASTER {pid}] INFO: last held\n[MASTER {pid}] INFO: at once\n"


def test_held_lines_go_out_in_writes_a_pipe_keeps_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers write to the same stderr: a write longer than PIPE_BUF may be split, and a worker's
    output land inside a master's line. A line longer than that is written alone, as it always was."""
    writes: list[str] = []

    class Stderr:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Stderr())
    log = Logger()
    log.hold()
    for n in range(100):
        log.info(f"line {n} " + "\u00e9" * 50)  # 2 bytes a character: the limit is in bytes
    log.info("x" * 5000)
    log.info("after")
    log.release()
    lines = "".join(writes).splitlines(keepends=True)
    assert len(lines) == 102 and all(text.endswith("\n") for text in writes)
    assert all(len(text.encode()) <= PIPE_BUF for text in writes if "x" * 5000 not in text)
    assert any(text.endswith("x" * 5000 + "\n") and text.count("\n") == 1 for text in writes)  # alone
    assert len(writes) < 20


def test_a_traceback_is_told_even_when_the_traceback_module_cannot_be_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the descriptor limit importing a module fails: reporting a bug must not raise in its turn."""
    real_import = builtins.__import__

    def no_traceback(name: str, *args: object, **kwargs: object) -> object:
        if name == "traceback":
            raise OSError(24, "Too many open files")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.delitem(sys.modules, "traceback", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_traceback)
    try:
        raise ValueError("the bug")
    except ValueError:
        told = current_traceback()
    assert told == "ValueError: the bug (no traceback: OSError: [Errno 24] Too many open files)\n"
