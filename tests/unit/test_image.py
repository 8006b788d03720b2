"""The image comparison (einhorn/io/image.py): a re-exec of the very same image needs no upgrade check."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from einhorn.io.image import Image

COMMAND = [sys.executable, "-m", "einhorn"]


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path with a module `image_probe` imported from it (both undone afterwards)."""
    (tmp_path / "image_probe.py").write_text("VALUE = 1\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    importlib.import_module("image_probe")
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("image_probe", None)


def taken() -> Image:
    image = Image.take(COMMAND, os.environ, reexec_as=False)
    assert isinstance(image, Image), image
    return image


def test_an_unchanged_image_compares_equal_and_says_how_much_it_compared(module_dir: Path) -> None:
    image = taken()
    assert str(module_dir / "image_probe.py") in image.paths and sys.executable in image.paths
    assert any(path.endswith(os.path.join("einhorn", "io", "reexec.py")) for path in image.paths)  # imported only after a re-exec
    assert image.compare(os.environ) == (True, f"{len(image.paths)} files unchanged since this master started")


def test_a_module_file_rewritten_since_the_start_is_found(module_dir: Path) -> None:
    image = taken()
    probe = module_dir / "image_probe.py"
    before = probe.stat()
    probe.write_text("VALUE = 2  # the new release\n")
    os.utime(probe, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert image.compare(os.environ) == (False, f"{probe} changed since this master started")


def test_a_module_added_to_a_directory_on_the_import_path_is_found(module_dir: Path) -> None:
    image = taken()
    (module_dir / "shadowing.py").write_text("")
    os.utime(module_dir, ns=(0, module_dir.stat().st_mtime_ns + 1_000_000))
    unchanged, detail = image.compare(os.environ)
    assert not unchanged and detail == f"{module_dir} changed since this master started"


def test_a_deleted_module_file_is_found(module_dir: Path) -> None:
    image = taken()
    (module_dir / "image_probe.py").unlink()
    unchanged, detail = image.compare(os.environ)
    assert not unchanged and "changed since this master started" in detail


def test_a_pth_file_edited_in_place_is_found(module_dir: Path) -> None:
    pth = module_dir / "extra.pth"
    pth.write_text("")
    image = taken()
    assert str(pth) in image.paths
    pth.write_text("import os\n")
    assert image.compare(os.environ) == (False, f"{pth} changed since this master started")


def test_another_environment_is_never_the_same_image() -> None:
    image = taken()
    unchanged, detail = image.compare({**os.environ, "PYTHONPATH": "/elsewhere"})
    assert not unchanged and "environment differs" in detail
    dropped = dict(os.environ)
    dropped.pop("PATH", None)
    assert image.compare(dropped)[0] is False


def test_the_systemd_variables_the_master_consumes_do_not_count() -> None:
    image = Image.take(COMMAND, {**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": "1"}, reexec_as=False)
    assert isinstance(image, Image)
    assert image.compare(os.environ)[0] is True


def test_a_reexec_as_command_is_never_compared() -> None:
    assert Image.take(["/srv/deploy/reexec.sh"], os.environ, reexec_as=True) == "--reexec-as runs a command of its own"


def test_the_script_the_reexec_runs_is_compared(tmp_path: Path) -> None:
    script = tmp_path / "einhorn"
    script.write_text("#!/bin/sh\n")
    image = Image.take([str(script)], os.environ, reexec_as=False)
    assert isinstance(image, Image) and str(script) in image.paths
    script.write_text("#!/bin/sh\nexec /new/release/einhorn \"$@\"\n")
    assert image.compare(os.environ) == (False, f"{script} changed since this master started")
