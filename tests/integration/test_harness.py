"""The integration harness itself: what it starts, it stops."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.integration.harness import TAG_VARIABLE, Harness, LogTail
from tests.integration.procfs import alive, children_of, environ_of, kill_and_reap
from tests.integration.waiting import wait_until

PRELOADED = """
import signal


def einhorn_main():
    while True:
        signal.pause()
"""


HIDDEN = ["sh", "-c", "cd / && exec env -i sleep 300"]
"""A worker with no environment at all, and not in the test's directory (as gunicorn --chdir with setproctitle)."""


@contextlib.contextmanager
def cleaned_up_workers() -> Iterator[tuple[Harness, list[int]]]:
    """A harness for the block; its clean_up must stop every worker the block lists (any left are killed after)."""
    harness = Harness()
    workers: list[int] = []
    try:
        yield harness, workers
    finally:
        harness.clean_up()
    try:
        assert workers and not any(alive(pid) for pid in workers)
    finally:
        kill_and_reap([pid for pid in workers if alive(pid)])


def test_clean_up_stops_preloaded_workers_whose_environ_shows_no_tag() -> None:
    """A `-p` worker is forked from a master whose setproctitle rewrote what /proc/PID/environ shows:
    teardown looked for the tag only, and every run of test_worker_env left three such workers behind."""
    with cleaned_up_workers() as (harness, workers):
        script = harness.directory / "app.py"
        script.write_text(PRELOADED)
        master = harness.start("-n", "2", "-m", "0.1", "-p", str(script), program=[sys.executable, str(script)], workers=2)
        workers += master.children()
        assert master.state()["preloaded"] is True
        assert all(TAG_VARIABLE not in environ_of(pid) for pid in workers), "the tag is visible: this test proves nothing"


def test_the_log_read_right_after_a_write_has_every_complete_line(tmp_path: Path) -> None:
    """`Master.log()` right after the master exited missed its last lines when the tail thread had
    not polled yet (test_master_signal_is_forwarded... failed once under load)."""
    path = tmp_path / "stderr.log"
    path.write_bytes(b"")
    lines: list[tuple[float, str]] = []
    tail = LogTail(path, lines)
    try:
        tail.stopping.set()  # the thread may be anywhere in its 5 ms poll: take it out of the picture
        tail.thread.join(timeout=5)
        with open(path, "ab") as f:
            f.write(b"All workers gone; exiting\nhalf a li")
        tail.catch_up()
        assert [text for _, text in lines] == ["All workers gone; exiting\n"]
    finally:
        tail.stop()


def test_clean_up_stops_workers_that_show_neither_the_tag_nor_the_directory() -> None:
    """gunicorn --chdir leaves the test's directory and its setproctitle hides its environment:
    every run of test_servers left two gunicorns behind."""
    with cleaned_up_workers() as (harness, workers):
        master = harness.start("-n", "2", "-m", "0.1", program=HIDDEN, workers=2)
        workers += master.children()
        assert all(TAG_VARIABLE not in environ_of(pid) for pid in workers), "the tag is visible: this test proves nothing"


def test_clean_up_stops_hidden_workers_of_a_master_that_exited_first() -> None:
    """A test that kills its master leaves the workers to the test process (a subreaper): the harness
    finds them by the pids the master logged."""
    with cleaned_up_workers() as (harness, workers):
        master = harness.start("-n", "2", "-m", "0.1", program=HIDDEN, workers=2)
        workers += master.children()
        master.proc.kill()
        master.proc.wait()
        wait_until(lambda: set(workers) <= set(children_of(os.getpid())), 10, "the workers adopted by the test process")
