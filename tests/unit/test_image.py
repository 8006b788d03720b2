"""The image comparison (einhorn/io/image.py): a re-exec of the very same image needs no upgrade check."""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from einhorn.io import image as image_module
from einhorn.io import loop
from einhorn.io.image import Image

COMMAND = [sys.executable, "-m", "einhorn"]
AN_HOUR_AGO_NS = time.time_ns() - 3600 * 10**9


def aged(*paths: Path) -> None:
    """As if written before this process started (a file modified since is never compared)."""
    for path in paths:
        os.utime(path, ns=(AN_HOUR_AGO_NS, AN_HOUR_AGO_NS))


def touched(path: Path) -> None:
    """Modified a moment from now: later than the snapshot's start, and with another mtime than `aged` gave it."""
    later = time.time_ns() + 10 * 10**9
    os.utime(path, ns=(later, later))


@pytest.fixture(autouse=True)
def started_as_python_m_einhorn(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test process stands for a master started as `python -m einhorn -n 1` (COMMAND) the moment it takes
    its snapshot (files this test writes are older)."""
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "einhorn", "-n", "1"])
    monkeypatch.setattr(image_module, "_process_started_ns", time.time_ns)


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path with a module `image_probe` imported from it (both undone afterwards)."""
    probe = tmp_path / "image_probe.py"
    probe.write_text("VALUE = 1\n")
    aged(probe, tmp_path)
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    importlib.import_module("image_probe")
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("image_probe", None)


def taken(command: list[str] = COMMAND) -> Image:
    image = Image.take(command)
    assert isinstance(image, Image), image
    return image


def test_an_unchanged_image_compares_equal_and_says_how_much_it_compared(module_dir: Path) -> None:
    image = taken()
    assert str(module_dir / "image_probe.py") in image.paths and sys.executable in image.paths
    assert any(path.endswith(os.path.join("einhorn", "io", "reexec.py")) for path in image.paths)  # imported only after a re-exec
    assert image.compare() == (True, f"{len(image.paths)} files unchanged since this master started")


def test_every_file_mapped_into_the_process_is_compared() -> None:
    with open("/proc/self/maps") as maps:
        mapped = {line.split(maxsplit=5)[5].strip() for line in maps if len(line.split(maxsplit=5)) == 6}
    libraries = {path for path in mapped if path.startswith("/") and ".so" in os.path.basename(path) and os.path.isfile(path)}
    assert libraries, "this interpreter maps no shared library"
    assert libraries <= set(taken().paths)


def test_a_module_file_rewritten_since_the_start_is_found(module_dir: Path) -> None:
    image = taken()
    probe = module_dir / "image_probe.py"
    probe.write_text("VALUE = 2  # the new release\n")
    assert image.compare() == (False, f"{probe} changed since this master started")


def test_a_module_added_to_a_directory_on_the_import_path_is_found(module_dir: Path) -> None:
    image = taken()
    (module_dir / "shadowing.py").write_text("")
    assert image.compare() == (False, f"{module_dir} changed since this master started")


def test_a_package_added_to_a_directory_on_the_import_path_is_found(module_dir: Path) -> None:
    image = taken()
    (module_dir / "yaml").mkdir()
    assert image.compare() == (False, f"{module_dir} changed since this master started")


def test_files_no_import_can_find_do_not_change_a_directory(module_dir: Path) -> None:
    """The master's pid file, socket and logs in its working directory, which `python -m einhorn` puts on the path."""
    image = taken()
    for name in ("einhorn.pid", "einhorn.log"):
        (module_dir / name).write_text("1")
    for name in ("__pycache__", ".pytest_cache", "my-logs"):
        (module_dir / name).mkdir()
    assert image.compare()[0] is True


def test_a_new_release_of_a_package_loaded_only_later_is_found_by_its_metadata(module_dir: Path) -> None:
    (module_dir / "PyYAML-6.0.1.dist-info").mkdir()
    aged(module_dir)
    image = taken()
    (module_dir / "PyYAML-6.0.1.dist-info").rename(module_dir / "PyYAML-6.0.2.dist-info")
    assert image.compare() == (False, f"{module_dir} changed since this master started")


def test_a_module_made_unreadable_is_found(module_dir: Path) -> None:
    image = taken()
    (module_dir / "image_probe.py").chmod(0o000)
    assert image.compare() == (False, f"{module_dir / 'image_probe.py'} changed since this master started")


def test_a_deleted_module_file_is_found(module_dir: Path) -> None:
    image = taken()
    (module_dir / "image_probe.py").unlink()
    unchanged, detail = image.compare()
    assert not unchanged and "changed since this master started" in detail


def test_a_pth_file_edited_in_place_is_found(module_dir: Path) -> None:
    pth = module_dir / "extra.pth"
    pth.write_text("")
    aged(pth, module_dir)
    image = taken()
    assert str(pth) in image.paths
    pth.write_text("import os\n")
    assert image.compare() == (False, f"{pth} changed since this master started")


def test_a_site_directory_missing_at_the_start_is_compared_as_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import site

    user_site = tmp_path / "user-site"
    monkeypatch.setattr(site, "ENABLE_USER_SITE", True)
    monkeypatch.setattr(site, "getusersitepackages", lambda: str(user_site))
    image = taken()
    assert str(user_site) in image.paths
    user_site.mkdir()  # `pip install --user` of a new release
    assert image.compare() == (False, f"{user_site} changed since this master started")


def test_a_file_modified_after_the_process_started_is_never_compared(module_dir: Path) -> None:
    probe = module_dir / "image_probe.py"
    touched(probe)  # a deploy wrote it while the master was starting: what was imported is unknown
    assert Image.take(COMMAND) == f"{probe} was modified after this master started"


@pytest.mark.parametrize(
    ("orig_argv", "why"),
    [
        (["python3", "-I", "-m", "einhorn"], "started as `python3 -I -m`, not as `python -m einhorn`"),
        (["python3", "einhorn.pyz", "-n", "1"], "started as `python3 einhorn.pyz -n`, not as `python -m einhorn`"),
    ],
)
def test_a_master_started_otherwise_than_python_m_einhorn_is_never_compared(
    monkeypatch: pytest.MonkeyPatch, orig_argv: list[str], why: str
) -> None:
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    assert Image.take(COMMAND) == why


def script(directory: Path, shebang: str) -> Path:
    path = directory / "einhorn"
    path.write_text(f"#!{shebang}\nfrom einhorn.cli import main\n")
    aged(path, directory)
    return path


def test_a_console_script_started_by_its_own_shebang_is_compared(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = script(tmp_path, sys.executable)
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, str(path), "-n", "1"])
    image = taken([str(path), "-n", "1"])
    assert str(path) in image.paths and image.compare()[0] is True
    path.write_text(f"#!{sys.executable}\nexec /new/release/einhorn\n")
    assert image.compare() == (False, f"{path} changed since this master started")


@pytest.mark.parametrize(
    ("shebang", "orig_argv", "why"),
    [
        ("/usr/bin/env python3", None, "names no interpreter by its absolute path on its #! line"),
        (sys.executable, ["python3", "SCRIPT"], "not by SCRIPT's #! line"),  # `python3 /venv/bin/einhorn`
        (sys.executable, [sys.executable, "-X", "dev", "SCRIPT"], "not by SCRIPT's #! line"),
    ],
)
def test_a_console_script_started_otherwise_is_never_compared(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shebang: str, orig_argv: list[str] | None, why: str
) -> None:
    path = script(tmp_path, shebang)
    started = [part.replace("SCRIPT", str(path)) for part in (orig_argv or [shebang.split()[0], str(path)])]
    monkeypatch.setattr(sys, "orig_argv", started)
    reason = Image.take([str(path), "-n", "1"])
    assert isinstance(reason, str) and reason.endswith(why.replace("SCRIPT", str(path))), reason


def test_an_interpreter_file_replaced_since_the_start_is_never_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    real = open

    class Maps:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.text = "7f00-7f01 r-xp 00000000 08:01 1234 /usr/lib/libpython3.11.so.1.0 (deleted)\n"

        def __enter__(self) -> Maps:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def __iter__(self) -> Iterator[str]:
            return iter(self.text.splitlines(keepends=True))

    monkeypatch.setattr(image_module, "open", lambda path, *a, **k: Maps() if path == "/proc/self/maps" else real(path, *a, **k), raising=False)
    assert Image.take(COMMAND) == "/usr/lib/libpython3.11.so.1.0 was replaced after this master started"


def test_entries_that_are_no_paths_are_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [*sys.path, "with\0nul", b"bytes"])
    assert isinstance(Image.take(COMMAND), Image)


def test_a_snapshot_that_cannot_be_taken_says_why_and_raises_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # the master's working directory deleted under it: '' on sys.path has no absolute path
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    reason = Image.take(COMMAND)
    assert isinstance(reason, str) and reason.startswith("the snapshot failed: "), reason


def test_the_snapshot_the_master_takes_apart_is_the_one_taken_in_process(module_dir: Path) -> None:
    """`loop.snapshot_apart` runs `Image.take` in a forked child (the same modules and mappings) and gets its result."""
    image = taken()
    assert loop.snapshot_apart(COMMAND) == (image.paths, image.signatures)
    reason = Image.take(["/no/such/einhorn"])  # a reason, not an image: sent back as it is
    assert isinstance(reason, str) and loop.snapshot_apart(["/no/such/einhorn"]) == reason


def test_a_snapshot_that_hangs_is_given_up_on_and_its_process_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "SNAPSHOT_TIMEOUT", 0.3)
    def hangs(cls: type[Image], command: list[str]) -> str:
        time.sleep(30)  # a stat on a hung network mount
        return "never"

    monkeypatch.setattr(Image, "take", classmethod(hangs))
    started = time.monotonic()
    assert loop.snapshot_apart(COMMAND) == "the snapshot took longer than 0.3s"
    assert time.monotonic() - started < 5  # killed and reaped, not waited for
