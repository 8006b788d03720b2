"""`--graceful-signal`: every "finish and exit" of a real master is the configured signal."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.integration.harness import Harness
from tests.integration.upgrade_helpers import upgrade
from tests.integration.waiting import wait_until
from tests.integration.workers import recorder, signals_received, wait_ready


def test_upgrades_dec_and_die_send_the_graceful_signal(harness: Harness) -> None:
    out = Path(tempfile.mkdtemp(prefix="sig", dir=harness.directory))
    master = harness.start("-n", "2", "-m", "0.1", "-s", "0.1", "--graceful-signal", "sigterm", program=recorder(out, stay=""), workers=2)
    assert master.state()["graceful_signal"] == "TERM"
    first = master.wait_workers(2)
    wait_ready(out, first)
    upgrade(master)
    wait_until(lambda: all(signals_received(out, pid) for pid in first), 10, "old workers signaled")
    assert [signals_received(out, pid) for pid in first] == [["TERM"], ["TERM"]]
    second = master.wait_workers(2)
    wait_ready(out, second)
    master.message("dec")
    wait_until(lambda: len(master.wait_workers(1)) == 1, 10, "one worker left")
    stopped = [pid for pid in second if signals_received(out, pid)]
    assert len(stopped) == 1 and signals_received(out, stopped[0]) == ["TERM"]
    (last,) = master.wait_workers(1)
    assert "Successfully sent TERMs to 1 processes" in master.message("die")
    assert master.wait_exit() == 0
    assert signals_received(out, last) == ["TERM"]


def test_an_unusable_graceful_signal_is_refused(harness: Harness) -> None:
    result = harness.run("--graceful-signal", "KILL", "--", sys.executable, "-c", "pass")
    assert result.returncode == 1
    assert "Invalid value for --graceful-signal: 'KILL' (SIGKILL cannot ask a worker to finish and exit)" in result.stderr
