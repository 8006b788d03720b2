"""Worker programs for the integration tests, and how to observe them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from tests.integration.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
TIME_SERVER = str(REPO / "example" / "time_server")

RECORDER = """
import os, signal, sys
out, stay = sys.argv[1], set(sys.argv[2].split(",")) if len(sys.argv) > 2 else set()
def record(signum, frame):
    name = signal.Signals(signum).name[3:]
    with open(os.path.join(out, f"{os.getpid()}.signals"), "a") as f:
        f.write(name + "\\n")
    if name not in stay:
        sys.exit(0)
for name in ("TERM", "USR2", "QUIT", "USR1", "INT"):
    signal.signal(getattr(signal, "SIG" + name), record)
open(os.path.join(out, f"{os.getpid()}.ready"), "w").close()
while True:
    signal.pause()
"""
"""A worker that records each signal it gets in OUT/PID.signals and exits 0, except for the
signals listed in its second argument (comma-separated), which it records and survives.
It creates OUT/PID.ready once its handlers are in place."""


def recorder(out: Path, stay: str = "USR1") -> list[str]:
    return [sys.executable, "-c", RECORDER, str(out), stay]


def wait_ready(out: Path, pids: Sequence[int], timeout: float = 10.0) -> None:
    wait_until(lambda: all((out / f"{pid}.ready").exists() for pid in pids), timeout, "recorder workers ready")


def signals_received(out: Path, pid: int) -> list[str]:
    try:
        return (out / f"{pid}.signals").read_text().split()
    except FileNotFoundError:
        return []
