"""The integration harness itself: what it starts, it stops."""

from __future__ import annotations

import sys

from tests.integration.harness import TAG_VARIABLE, Harness
from tests.integration.procfs import alive, environ_of, kill_and_reap

PRELOADED = """
import signal


def einhorn_main():
    while True:
        signal.pause()
"""


def test_clean_up_stops_preloaded_workers_whose_environ_shows_no_tag() -> None:
    """A `-p` worker is forked from a master whose setproctitle rewrote what /proc/PID/environ shows:
    teardown looked for the tag only, and every run of test_worker_env left three such workers behind."""
    harness = Harness()
    workers: list[int] = []
    try:
        script = harness.directory / "app.py"
        script.write_text(PRELOADED)
        master = harness.start("-n", "2", "-m", "0.1", "-p", str(script), program=[sys.executable, str(script)], workers=2)
        workers = master.children()
        assert master.state()["preloaded"] is True
        assert all(TAG_VARIABLE not in environ_of(pid) for pid in workers), "the tag is visible: this test proves nothing"
    finally:
        harness.clean_up()
    try:
        assert workers and not any(alive(pid) for pid in workers)
    finally:
        kill_and_reap([pid for pid in workers if alive(pid)])
