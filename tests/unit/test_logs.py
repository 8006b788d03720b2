"""einhorn.io.logs: the text log lines, and which levels each verbosity writes."""

from __future__ import annotations

import os

import pytest

from einhorn.core.effects import LogLevel
from einhorn.io.logs import Logger


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
