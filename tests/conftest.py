"""Suite-wide fixtures."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _remove_tmp_paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Remove this run's tmp_path directories (fake command sockets, preload apps) at the end, failed or not.

    Not pytest's `tmp_path_retention_policy = "none"`: that cleanup is an atexit
    handler, and the preload unit tests fork children of the pytest process that run
    atexit handlers as a preloaded worker does, removing the directories under the
    tests still using them.
    """
    yield
    shutil.rmtree(tmp_path_factory.getbasetemp(), ignore_errors=True)
