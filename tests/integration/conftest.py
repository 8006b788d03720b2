"""Fixtures of the integration tests; the helpers they use live beside this file.

harness.py   real masters: start, observe, clean up by pid (the `harness` fixture)
procfs.py    what the tests read from /proc, and kill/reap by pid
wire.py      the command-socket protocol spoken by hand
workers.py   worker programs for the tests (the signal recorder, example/time_server)
waiting.py   wait_until: conditions with deadlines, never fixed sleeps
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.integration.harness import Harness
from tests.integration.procfs import become_child_subreaper

if not sys.platform.startswith("linux"):
    pytest.skip("the integration tests inspect /proc (Linux only)", allow_module_level=True)


@pytest.fixture(scope="session", autouse=True)
def child_subreaper() -> None:
    """Orphaned workers become our children, so that teardown can find and reap them."""
    become_child_subreaper()


@pytest.fixture
def harness() -> Iterator[Harness]:
    with Harness() as h:
        yield h
