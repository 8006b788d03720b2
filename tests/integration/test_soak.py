"""The short variants of the soak and fault suite (`bench/soak.py --short`), run as part of the ordinary suite.

The full run (`bench/soak.py`, about 10 minutes) is not: its figures are in bench/README.md.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.other_user import REPO


@pytest.mark.timeout(600)
def test_the_short_soak_and_fault_suite_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--short"],
        capture_output=True,
        text=True,
        timeout=570,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{result.stdout}\n--- stderr (end) ---\n{result.stderr[-6000:]}"
