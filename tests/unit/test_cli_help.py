"""The usage texts of `einhorn` (BEHAVIOR §1): what `-h` and a missing program print."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from einhorn import __version__, cli


def printed(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(list(argv)) == 1
    return capsys.readouterr().out


def test_help_does_not_tell_the_reader_to_run_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = printed(capsys, "-h")
    assert text.startswith("## Usage\n")
    assert "einhorn -h" not in text
    assert "## Overview" in text and "### Options" in text


def test_the_short_usage_still_points_at_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = printed(capsys, "-n", "2")
    assert text.startswith("## Usage\n")
    assert "Run\n`einhorn -h` to see detailed usage." in text
    assert "## Overview" not in text and "### Options" in text


def test_nice_help_says_workers_keep_the_masters_level_without_worker(capsys: pytest.CaptureFixture[str]) -> None:
    text = printed(capsys, "-h")
    entry = text[text.index("--nice") : text.index("--with-state-fd")]
    assert "WORKER=0" not in entry  # the original's text: workers do not default to level 0
    assert entry.startswith("--nice MASTER[:WORKER][:RENICE_CMD]")
    assert "without WORKER, workers keep the master's level" in " ".join(entry.split())


def test_readme_describes_nice_as_the_help_does() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    row = re.search(r"^\| `--nice [^|]*\|([^|]*)\|$", readme, re.MULTILINE)
    assert row is not None
    assert "without `WORKER`, workers keep the master's level" in row.group(1)


def test_the_console_script_and_python_m_run_the_cli() -> None:
    (entry,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "einhorn"]
    assert entry.value == "einhorn.cli:main" and entry.load() is cli.main
    for module in ("einhorn", "einhorn.cli"):
        result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=30)
        assert (result.returncode, result.stdout) == (0, f"{__version__}\n"), result.stderr
