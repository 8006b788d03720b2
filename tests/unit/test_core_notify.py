"""einhorn.core.notify: sd_notify from the workers (`-m notify`) and to the master's supervisor."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from einhorn.core import pool
from einhorn.core.effects import Effect, Log, LogLevel, NotifySupervisor
from einhorn.core.events import (
    ChildExited,
    ImageCompared,
    MasterStarted,
    SignalReceived,
    Tick,
    UpgradeCheckFailed,
    WorkerNotified,
    WorkerSpawned,
)
from einhorn.core.indexed import Children
from einhorn.core.record import replace
from einhorn.core.state import State, initial_state
from einhorn.core.step import next_deadline, step
from tests.unit.fixtures.core_world import command, image_changed, make_config, run


def spawned(config_changes: Mapping[str, object], count: int = 2) -> State:
    state, _ = run(initial_state(make_config(**config_changes)), MasterStarted(0.0))
    for n in range(count):
        state, _ = step(state, WorkerSpawned(n, 1000 + n, 0.0))
    return state


def notified(pid: int, now: float = 1.0, **fields: str) -> WorkerNotified:
    return WorkerNotified(pid, fields, now)


def told(effects: list[Effect]) -> list[tuple[tuple[str, str], ...]]:
    return [e.fields for e in effects if isinstance(e, NotifySupervisor)]


NOTIFY: Mapping[str, object] = {"number": 2, "ack_timer": None, "notify_acks": True}


def test_ready_is_the_ack_of_the_sending_worker() -> None:
    state = spawned(NOTIFY)
    assert state.config.ack_mode == "notify"
    state, effects = step(state, notified(1000, READY="1", STATUS="warming up"))
    assert state.children[1000].acked and not state.children[1001].acked
    assert state.children[1000].status == "warming up"
    assert Log(LogLevel.INFO, "Up to 1 / 2 notify ACKs") in effects
    state, effects = step(state, notified(1000, READY="1"))  # again (a server's reload): nothing more
    assert Log(LogLevel.DEBUG, "READY=1 from 1000, already ACKed") in effects and pool.ack_count(state) == 1


def test_status_and_watchdog_without_ready() -> None:
    state, _ = step(spawned(NOTIFY), notified(1001, now=3.5, STATUS="busy", WATCHDOG="1"))
    child = state.children[1001]
    assert (child.acked, child.status, child.pinged_at) == (False, "busy", 3.5)


def test_ready_is_ignored_where_acks_do_not_come_from_notifications() -> None:
    for changes in ({"number": 1, "ack_timer": 5.0}, {"number": 1, "ack_timer": None}):
        state, effects = step(spawned(changes, 1), notified(1000, READY="1"))
        assert not state.children[1000].acked
        assert any(isinstance(e, Log) and e.message.startswith("READY=1 from 1000 in ") for e in effects)


def test_a_notification_from_another_process_is_logged_and_ignored() -> None:
    state = spawned(NOTIFY)
    after, effects = step(state, notified(4242, READY="1"))
    assert after.children == state.children
    assert effects[0] == Log(
        LogLevel.INFO,
        "Notification from 4242, which is not a worker; ignoring: READY=1"
        " (from a worker's shell, `systemd-notify --pid=$$ --ready` speaks for the worker)",
    )


def test_worker_ack_still_works_in_notify_mode() -> None:
    state, _ = step(spawned(NOTIFY), command(9, "worker:ack", pid=1000))
    assert state.children[1000].acked


# --- the supervisor -------------------------------------------------------------------------


SUPERVISED: Mapping[str, object] = {"number": 1, "ack_timer": None, "supervised": True}


def test_nothing_is_told_without_a_supervisor() -> None:
    _, effects = run(spawned({"number": 1, "ack_timer": None}, 1), command(9, "worker:ack", pid=1000))
    assert told(effects) == []


def test_ready_reloading_ready_stopping_in_order() -> None:
    state, effects = run(initial_state(make_config(**SUPERVISED)), MasterStarted(0.0), WorkerSpawned(0, 1000, 0.0))
    assert told(effects) == []  # no READY before the pool is ACKed
    state, effects = step(state, command(9, "worker:ack", pid=1000, now=1.0))
    assert told(effects) == [(("READY", "1"), ("STATUS", "1/1 workers ACKed, version 0"))]
    state, effects = step(state, SignalReceived("HUP", 2.5))
    assert told(effects) == [
        (("RELOADING", "1"), ("MONOTONIC_USEC", "2500000"), ("STATUS", "re-exec'ing the master (smooth_upgrade); 1/1 workers ACKed"))
    ]
    assert state.reexec is not None
    # the new image: the re-exec goes on as an upgrade (still reloading), then ends
    state, effects = run(state, ImageCompared(state.reexec.check_id, True, "unchanged", 3.0), MasterStarted(3.0, restored=True))
    assert [f for f in told(effects) if f[0][0] != "STATUS"] == []
    state, effects = run(state, WorkerSpawned(1, 2000, 3.0), command(9, "worker:ack", pid=2000, now=4.0))
    assert (("READY", "1"), ("STATUS", "1/1 workers ACKed, version 1")) in told(effects)
    state, effects = step(state, ChildExited(1000, 0, None, 4.5))
    assert told(effects) == []  # the status line did not change
    state, effects = step(state, SignalReceived("TERM", 5.0))
    assert told(effects) == [(("STOPPING", "1"), ("STATUS", "stopping: 1 workers left"))]


def test_a_failed_upgrade_check_ends_the_reload_with_ready() -> None:
    state, _ = run(spawned(SUPERVISED, 1), command(9, "worker:ack", pid=1000, now=1.0), SignalReceived("HUP", 2.0))
    assert state.reexec is not None
    state, effects = run(state, image_changed(state.reexec.check_id, 3.0), UpgradeCheckFailed(state.reexec.check_id, "exit 1", 3.0))
    assert told(effects) == [(("READY", "1"), ("STATUS", "1/1 workers ACKed, version 0"))]


def test_the_watchdog_pings_at_half_its_interval_while_the_loop_runs() -> None:
    state, effects = run(initial_state(make_config(**SUPERVISED, watchdog_interval=4.0)), MasterStarted(10.0))
    assert (("WATCHDOG", "1"),) in told(effects)  # at once
    assert next_deadline(state) == 12.0
    state, effects = step(state, Tick(11.0))
    assert (("WATCHDOG", "1"),) not in told(effects)
    state, effects = step(state, Tick(12.0))
    assert (("WATCHDOG", "1"),) in told(effects) and next_deadline(state) == 14.0
    state, _ = step(replace(state, children={}, pending={}), SignalReceived("INT", 13.0))
    assert state.exit_code == 0 and next_deadline(state) is None  # exited: no more pings


def test_a_ready_from_an_unsupervised_config_is_never_sent_even_with_the_watchdog() -> None:
    state, effects = run(initial_state(make_config(number=1, watchdog_interval=4.0)), MasterStarted(0.0))
    assert told(effects) == [] and next_deadline(state) is None


def test_the_exact_effects_of_a_ready_and_of_a_stranger() -> None:
    state, effects = step(spawned(NOTIFY), notified(1000, READY="1", STATUS="warming up"))
    assert effects[:2] == [
        Log(LogLevel.DEBUG, "Notification from 1000: READY=1 STATUS=warming up"),
        Log(LogLevel.INFO, "Up to 1 / 2 notify ACKs"),
    ]
    _, effects = step(spawned({"number": 1, "ack_timer": 2.0}, 1), notified(1000, READY="1"))
    assert effects[:2] == [
        Log(LogLevel.DEBUG, "Notification from 1000: READY=1"),
        Log(LogLevel.DEBUG, "READY=1 from 1000 in timer ACK mode; ignoring"),
    ]
    _, effects = step(state, notified(4242, STATUS="x"))
    assert effects[0] == Log(LogLevel.INFO, "Notification from 4242, which is not a worker; ignoring: STATUS=x")


def test_a_status_line_change_alone_is_told() -> None:
    state, _ = run(spawned(SUPERVISED, 1), command(9, "worker:ack", pid=1000, now=1.0))
    assert state.supervisor_ready
    _, effects = step(state, command(9, "inc", now=2.0))
    assert told(effects) == [(("STATUS", "1/2 workers ACKed, version 0"),)]


def test_a_notification_changes_its_worker_without_copying_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """A status line or watchdog ping costs the same at any pool size (issue 14): no copy and no re-index."""
    state = spawned({**NOTIFY, "number": 40}, count=40)

    def reindexed(cls: object, children: object) -> None:
        raise AssertionError("the whole pool was copied and indexed again for one notification")

    monkeypatch.setattr(Children, "of", classmethod(reindexed))
    after, _ = step(state, notified(1007, now=3.5, STATUS="busy", WATCHDOG="1"))
    assert (after.children[1007].status, after.children[1007].pinged_at) == ("busy", 3.5)
