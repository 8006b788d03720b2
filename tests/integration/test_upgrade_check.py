"""The upgrade check runs when einhorn changed on disk, and only then (spec/upgrades.md, "the image comparison")."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import einhorn
from tests.integration.harness import EINHORN, Harness
from tests.integration.upgrade_helpers import integer, worker_records

FAST = ("-m", "0.1", "-s", "0.1")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("started", ["script", "python -m einhorn"])
def test_an_upgrade_of_the_running_image_skips_its_check(harness: Harness, started: str) -> None:
    master = harness.start("-n", "2", *FAST, workers=2, einhorn=EINHORN if started == "script" else [sys.executable, "-m", "einhorn"])
    assert master.command("upgrade", timeout=30)[-1]["message"] == "Upgrade done"
    master.wait_log(r"INFO: Upgrade check skipped: the new einhorn is this one \(\d+ files unchanged since this master started\)")
    assert "Upgrade check passed" not in master.log()
    # The re-exec'd image compares itself in turn: the next upgrade skips the check too.
    assert master.command("upgrade_fleet", timeout=30)[-1]["message"] == "Upgrade done"
    master.wait_log(r"Upgrade check skipped", count=2)
    assert "Upgrade check passed" not in master.log() and integer(master.state(), "version") == 2


@pytest.mark.timeout(60)
@pytest.mark.skipif(len(EINHORN) != 1, reason="no einhorn console script in this environment")
def test_a_master_started_otherwise_than_its_reexec_command_is_checked(harness: Harness) -> None:
    """`python /venv/bin/einhorn`: the re-exec runs the script by its #! line, which may name another interpreter."""
    master = harness.start("-n", "1", *FAST, workers=1, einhorn=[sys.executable, *EINHORN])
    assert master.command("upgrade", timeout=30)[-1]["message"] == "Upgrade done"
    master.wait_log(r"INFO: Running the upgrade check: this image is not compared: started as `.*`, not by .*'s #! line")
    master.wait_log(r"INFO: Upgrade check passed: einhorn ")


@pytest.mark.timeout(90)
def test_an_einhorn_changed_on_disk_is_checked_and_a_broken_one_refused(harness: Harness, tmp_path: Path) -> None:
    """The master runs a copy of the package (PYTHONPATH): a new release of it is checked before the exec,
    and a release that cannot start is refused with the master and its workers untouched."""
    install = tmp_path / "install"
    shutil.copytree(Path(einhorn.__file__).parent, install / "einhorn", ignore=shutil.ignore_patterns("__pycache__"))
    master = harness.start("-n", "2", *FAST, env={"PYTHONPATH": str(install)}, workers=2)
    step_source = install / "einhorn" / "core" / "step.py"

    step_source.write_text(step_source.read_text() + "\n# release 2\n")
    assert master.command("upgrade", timeout=30)[-1]["message"] == "Upgrade done"
    master.wait_log(r"INFO: Upgrade check passed: einhorn ")
    assert "Upgrade check skipped" not in master.log()

    master.wait_workers(2)  # the first upgrade's old workers are gone: only the new ones are left
    step_source.write_text(step_source.read_text() + "\ndef broken(:\n")
    before = worker_records(master)
    final = master.command("upgrade", timeout=30)[-1]["message"]
    assert str(final).startswith("ERROR: Can not initiate einhorn master upgrade safely, aborting: the new einhorn failed its upgrade check"), final
    assert master.proc.poll() is None and worker_records(master) == before
    assert integer(master.state(), "version") == 1
