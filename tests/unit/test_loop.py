"""einhorn.io.loop's own arithmetic: how long a wait may be, and when the listeners are checked; how it writes a burst of log lines."""

from __future__ import annotations

import os
import selectors
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import einhorn.io
from einhorn.core.config import Config
from einhorn.core.effects import CompareImage
from einhorn.core.events import ImageCompared, ListenerHealthChanged, MasterStarted
from einhorn.core.state import initial_state
from einhorn.io.handoff import Handoff
from einhorn.io.logs import PIPE_BUF, Logger
from einhorn.io.loop import LISTENER_CHECK_INTERVAL, MAX_WAIT, ListenerWatch, Master, ShellOptions, select_timeout
from einhorn.io.spawn import Spawned, WorkerLaunch


def test_the_wait_is_until_the_earliest_wake_up() -> None:
    assert select_timeout([None, None], now=5.0) is None
    assert select_timeout([12.0, None, 7.5], now=5.0) == 2.5
    assert select_timeout([3.0], now=5.0) == 0.0  # already due: do not wait


def test_a_deadline_far_away_is_waited_for_in_steps_select_accepts() -> None:
    """Issue 16, finding 1: a deadline 2147484 s away crashed the master in select (OverflowError)."""
    far = select_timeout([5.0 + 2147484.0], now=5.0)
    assert far == MAX_WAIT
    reader, writer = socket.socketpair()
    with reader, writer, selectors.DefaultSelector() as selector:
        selector.register(reader, selectors.EVENT_READ)
        writer.send(b"x")  # ready at once: select returns without waiting, if it takes the timeout at all
        assert len(selector.select(far)) == 1
        with pytest.raises(OverflowError):
            selector.select(2147484.0)  # what the loop passed before the clamp


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock


def test_listener_watch_reports_a_shut_down_listener_once(listener: socket.socket) -> None:
    watch = ListenerWatch([listener], now=10.0)
    assert watch.next_check == 10.0  # the first check comes at once
    assert watch.check(10.0) == []
    with listener.dup() as worker_copy:  # what a worker holds: the same socket under another fd
        worker_copy.shutdown(socket.SHUT_RDWR)
    assert watch.check(10.0 + LISTENER_CHECK_INTERVAL / 2) == []  # not due yet: nothing is asked
    due = 10.0 + LISTENER_CHECK_INTERVAL
    assert watch.check(due) == [ListenerHealthChanged(0, False, due)]
    assert watch.check(due + LISTENER_CHECK_INTERVAL) == []  # no change, no event


def test_listener_watch_without_listeners_never_wakes_the_loop() -> None:
    watch = ListenerWatch([], now=0.0)
    assert watch.next_check is None and watch.check(1e6) == []


def test_rss_watch_measures_each_live_worker_once_per_interval() -> None:
    import os
    import subprocess
    import sys

    from einhorn.core.config import RSS_SAMPLE_INTERVAL
    from einhorn.core.events import WorkerMeasured
    from einhorn.io.loop import RssWatch, resident_bytes

    code = "import sys; print('up', flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"  # exec'd and running
        with open(f"/proc/{child.pid}/status") as status:
            (vm_rss_kib,) = [int(line.split()[1]) for line in status if line.startswith("VmRSS:")]
        gone = 2**22 + 1  # above pid_max's default: no such process
        watch = RssWatch(True, now=5.0)
        assert watch.next_check == 5.0
        events = watch.check([child.pid, gone], now=5.0)
        assert [(e.pid, e.now) for e in events if isinstance(e, WorkerMeasured)] == [(child.pid, 5.0)]  # a vanished pid is skipped
        (measured,) = events
        assert isinstance(measured, WorkerMeasured)
        assert abs(measured.rss_bytes - vm_rss_kib * 1024) < vm_rss_kib * 1024 // 10  # what the kernel's VmRSS says
        assert watch.check([child.pid], now=5.0 + RSS_SAMPLE_INTERVAL / 2) == []  # not due yet: /proc is not read
        assert len(watch.check([child.pid], now=5.0 + RSS_SAMPLE_INTERVAL)) == 1
        mine = resident_bytes(os.getpid())
        assert mine is not None and mine > 0
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
        assert child.stdout is not None
        child.stdout.close()


def test_rss_watch_without_the_limit_never_wakes_the_loop() -> None:
    from einhorn.io.loop import RssWatch

    watch = RssWatch(False, now=0.0)
    assert watch.next_check is None and watch.check([1], 1e6) == []


def test_rss_watch_walks_the_workers_only_when_a_sample_is_due() -> None:
    """The loop hands it the children on every wake-up (each reaped child's among them): sorting or
    reading them then would be O(N) work per wake-up. Measured, they come in pid order."""
    from einhorn.core.config import RSS_SAMPLE_INTERVAL
    from einhorn.core.events import WorkerMeasured
    from einhorn.io.loop import RssWatch

    class Untouchable:
        def __iter__(self) -> Iterator[int]:
            raise AssertionError("walked the children although no sample was due")

    watch = RssWatch(True, now=0.0)
    gone = 2**22 + 1  # above pid_max's default: no such process
    mine = os.getpid()
    parent = os.getppid()
    events = watch.check([gone, max(mine, parent), min(mine, parent)], now=0.0)
    assert [e.pid for e in events if isinstance(e, WorkerMeasured)] == sorted({mine, parent})
    assert watch.check(Untouchable(), now=RSS_SAMPLE_INTERVAL / 2) == []


class CountingStderr:
    """Stands in for sys.stderr: each `write` kept apart, so that a test can count them."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_burst_of_spawns_is_logged_in_a_few_writes_not_two_per_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14's cold start: 1000 workers log 2001 lines in one wake-up. One write each (a system call, and a
    wake-up of whoever reads the log) cost the master ~0.1 s; the lines now go out in writes of up to PIPE_BUF bytes and at
    the end of the wake-up, and what was logged before a spawn is written before it."""
    number = 300
    stderr = CountingStderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    written_before_spawn: list[int] = []

    def spawn(launch: WorkerLaunch, index: int, sock_fd: int | None) -> Spawned:
        written_before_spawn.append(len(stderr.writes))
        return Spawned(100_000 + index, None)  # no process: the test never reaps nor signals one

    launch = WorkerLaunch("/bin/true", ["/bin/true"], {}, [], [], str(tmp_path / "cmd.sock"), os.getpid())
    options = ShellOptions(launch, False, (), ["einhorn"], {}, spawn=spawn)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(tmp_path / "cmd.sock"))
        server.listen(8)
        master = Master(initial_state(Config(number=number, ack_timer=0.0)), options, server, Logger(), Handoff())
        try:
            master.feed([MasterStarted(0.0)])
        finally:
            master.selector.close()
            master.wake_reader.close()
            master.wake_writer.close()
    lines = "".join(stderr.writes).splitlines()
    assert len([line for line in lines if "===> Launched" in line]) == number
    assert lines[-1].endswith(f"Up to {number} / {number} timer ACKs")
    assert written_before_spawn == [1] * number and stderr.writes[0].endswith("INFO: Launching 300 new workers\n")
    assert all(text.endswith("\n") and len(text.encode()) <= PIPE_BUF for text in stderr.writes)  # whole lines, each in one piece
    assert len(stderr.writes) < number // 10


@pytest.fixture
def bare_master(tmp_path: Path) -> Iterator[Callable[[ShellOptions], Master]]:
    """A Master on a command socket of its own, its loop never run (closed afterwards)."""
    made: list[tuple[Master, socket.socket]] = []

    def make(options: ShellOptions) -> Master:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(tmp_path / f"cmd{len(made)}.sock"))
        server.listen(8)
        made.append((Master(initial_state(Config(number=1)), options, server, Logger(), Handoff()), server))
        return made[-1][0]

    yield make
    for master, server in made:
        master.selector.close()
        master.wake_reader.close()
        master.wake_writer.close()
        server.close()


def options(tmp_path: Path, reexec_as: bool = False, dropped: tuple[str, ...] = ()) -> ShellOptions:
    launch = WorkerLaunch("/bin/true", ["/bin/true"], {}, [], [], str(tmp_path / "cmd.sock"), os.getpid())
    command = [sys.executable, "-m", "einhorn"]
    return ShellOptions(launch, False, (), command, {}, reexec_as=reexec_as, dropped_from_reexec=dropped)


def test_an_image_a_reexec_never_runs_again_as_it_is_is_not_compared(
    tmp_path: Path, bare_master: Callable[[ShellOptions], Master]
) -> None:
    custom = bare_master(options(tmp_path, reexec_as=True))
    assert custom._snapshot() == "--reexec-as runs a command of its own"
    dropping = bare_master(options(tmp_path, dropped=("PYTHONPATH", "TZ")))
    assert dropping._snapshot() == "--drop-env-var leaves PYTHONPATH, TZ out of the re-exec's environment"
    dropping.image = dropping._snapshot()
    [answer] = dropping.perform(CompareImage(4))
    assert isinstance(answer, ImageCompared)
    assert (answer.check_id, answer.unchanged, answer.detail) == (4, False, f"this image is not compared: {dropping.image}")


def test_a_comparison_that_cannot_load_the_reexec_code_says_changed_and_raises_nothing(
    tmp_path: Path, bare_master: Callable[[ShellOptions], Master], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors, or a new release's module that cannot load into this one: the import fails here, not in the exec."""
    master = bare_master(options(tmp_path))
    monkeypatch.delattr(einhorn.io, "reexec", raising=False)
    monkeypatch.setitem(sys.modules, "einhorn.io.reexec", None)  # its import raises ImportError
    [answer] = master.perform(CompareImage(2))
    assert isinstance(answer, ImageCompared) and answer.check_id == 2 and not answer.unchanged
    assert answer.detail.startswith("could not load the re-exec code: ModuleNotFoundError("), answer.detail
