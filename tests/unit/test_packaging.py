"""The package ships what its users need: the PEP 561 marker that makes einhorn.worker and einhorn.client typed."""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_package_has_the_py_typed_marker() -> None:
    assert (importlib.resources.files("einhorn") / "py.typed").is_file()


@pytest.mark.timeout(120)
def test_a_build_of_the_package_ships_the_py_typed_marker(tmp_path: Path) -> None:
    # What setuptools copies into a wheel, built from a copy of the project so the worktree stays clean.
    pytest.importorskip("setuptools")
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "einhorn", project / "einhorn", ignore=shutil.ignore_patterns("__pycache__"))
    build = tmp_path / "build"
    result = subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py", "--build-lib", str(build)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (build / "einhorn" / "worker.py").is_file()
    assert (build / "einhorn" / "py.typed").is_file()
