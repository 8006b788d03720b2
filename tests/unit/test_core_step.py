"""einhorn.core.step: every scheduling rule of BEHAVIOR §4-§5, as exact effect lists.

Each example feeds events to `step` and compares the complete list of effects;
the hypothesis folds at the end feed random event sequences through a fake
world and check the invariants after every step.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from einhorn.core import pool
from einhorn.core.config import Config, Pacing
from einhorn.core.effects import (
    Cause,
    CloseConnection,
    CompareImage,
    Effect,
    ExecMaster,
    Exit,
    Log,
    LogLevel,
    Reply,
    SendSignal,
    SpawnWorker,
)
from einhorn.core.events import (
    ChildExited,
    CommandReceived,
    ConnectionClosed,
    MasterStarted,
    ReexecFailed,
    RequestUnparseable,
    SignalReceived,
    SpawnFailed,
    Tick,
    UpgradeCheckFailed,
    UpgradeCheckPassed,
    WorkerSpawned,
)
from einhorn.core.record import replace
from einhorn.core.state import Child, Reexec, ReexecPhase, ReexecPurpose, State, Subscriber, UpgradeKind, initial_state
from einhorn.core.step import next_deadline, step
from tests.unit.fixtures.core_world import (
    Script,
    World,
    actions,
    command,
    configs,
    converged,
    image_changed,
    make_config,
    play,
    run,
)


def info(message: str) -> Log:
    return Log(LogLevel.INFO, message)


def error(message: str) -> Log:
    return Log(LogLevel.ERROR, message)


def debug(message: str) -> Log:
    return Log(LogLevel.DEBUG, message)


def up(config: Config) -> State:
    """A master whose `number` workers (pids 1000, 1001, ...) were spawned at 0.0 and are ACKed."""
    state, _ = run(initial_state(config), MasterStarted(0.0))
    for spawn_id in range(config.number):
        state, _ = step(state, WorkerSpawned(spawn_id, 1000 + spawn_id, 0.0))
    if config.ack_timer is None:
        for pid in range(1000, 1000 + config.number):
            state, _ = step(state, command(99, "worker:ack", pid=pid))
    else:
        state, _ = step(state, Tick(config.ack_timer))
    assert pool.ack_count(state) == config.number and not state.pending
    return state


def spawns(effects: list[Effect]) -> list[SpawnWorker]:
    return [e for e in effects if isinstance(e, SpawnWorker)]


def signals(effects: list[Effect]) -> list[tuple[int, str]]:
    return [(e.pid, e.signal) for e in effects if isinstance(e, SendSignal)]


def gradual(unacked: int, max_unacked: int, interval: str) -> Log:
    return info(
        f"Launching a new process since there are {unacked} unacked new workers"
        f" and max_unacked is {max_unacked} (spin-up interval {interval}s)"
    )


def by_acks(unacked: int, max_unacked: int, count: int = 1) -> Log:
    what = "a new process" if count == 1 else f"{count} new processes"
    return info(f"Launching {what} since there are {unacked} unacked new workers and max_unacked is {max_unacked} (paced by ACKs)")


# --- replenish ------------------------------------------------------------------


def test_first_replenish_spins_up_all_missing_workers_at_once() -> None:
    state, effects = step(initial_state(make_config(number=3)), MasterStarted(0.0))
    assert effects == [
        info("Launching 3 new workers"),
        SpawnWorker(0, 0, 0),
        SpawnWorker(1, 1, 0),
        SpawnWorker(2, 2, 0),
    ]
    assert sorted(state.pending) == [0, 1, 2]
    assert state.last_spinup_at == 0.0 and state.next_spawn_id == 3


def test_pending_spawns_are_not_duplicated_by_later_events() -> None:
    state, _ = step(initial_state(make_config(number=3, max_unacked=5)), MasterStarted(0.0))
    state, effects = run(state, Tick(10.0), WorkerSpawned(0, 1000, 10.0))
    assert effects == [info("===> Launched 1000 (index: 0)")]
    assert state.children[1000] == Child(1000, version=0, index=0, spinup_at=10.0)


def test_gradual_spin_up_is_paced_by_the_interval() -> None:
    state = up(make_config(number=3, seconds=2.0, max_unacked=3, pacing=Pacing.INTERVAL))
    state, effects = step(state, ChildExited(1000, 0, None, 1.5))
    assert effects == [info("===> Exited worker 1000 (exit status 0)")]
    assert next_deadline(state) == 2.0  # last spin-up at 0.0 + 2s
    state, effects = step(state, Tick(2.0))
    assert effects == [gradual(0, 3, "2"), SpawnWorker(3, 0, 0)]
    state, effects = step(state, ChildExited(1001, 0, None, 2.5))
    assert spawns(effects) == []
    assert next_deadline(state) == 4.0
    state, effects = step(state, Tick(3.9))
    assert effects == []
    state, effects = step(state, Tick(4.0))
    assert effects == [gradual(1, 3, "2"), SpawnWorker(4, 1, 0)]


@pytest.mark.parametrize("pacing", list(Pacing))
def test_max_unacked_gates_gradual_spin_up(pacing: Pacing) -> None:
    state = up(make_config(number=3, max_unacked=1, pacing=pacing))
    state, effects = step(state, ChildExited(1000, 0, None, 5.0))
    assert spawns(effects) == [SpawnWorker(3, 0, 0)]
    # The interval has passed, but the pending spawn counts as an un-ACKed worker.
    state, effects = run(state, ChildExited(1001, 0, None, 7.0), WorkerSpawned(3, 2000, 7.0))
    assert effects == [info("===> Exited worker 1001 (exit status 0)"), info("===> Launched 2000 (index: 0)")]
    assert next_deadline(state) == 8.0  # the timer ACK of 2000
    state, effects = step(state, Tick(8.0))
    launch = gradual(0, 1, "1") if pacing is Pacing.INTERVAL else by_acks(0, 1)
    assert effects == [info("Up to 2 / 3 timer ACKs"), launch, SpawnWorker(4, 1, 0)]


def test_paced_by_acks_every_free_slot_fills_at_once_and_each_ack_frees_one() -> None:
    """EXTENSIONS §4: no interval; the un-ACKed slots (max_unacked) are the only gate."""
    state = up(make_config(number=4, max_unacked=2, ack_timer=None))
    state, effects = run(state, ChildExited(1000, 137, None, 5.0), ChildExited(1001, 137, None, 5.0))
    assert effects == [
        info("===> Exited worker 1000 (exit status 137)"),
        by_acks(0, 2),
        SpawnWorker(4, 0, 0),
        info("===> Exited worker 1001 (exit status 137)"),
        by_acks(1, 2),
        SpawnWorker(5, 1, 0),
    ]
    state, effects = step(state, ChildExited(1002, 137, None, 5.0))
    assert spawns(effects) == [] and next_deadline(state) is None  # both slots taken: it waits for an ACK, not for time
    state, _ = run(state, WorkerSpawned(4, 2000, 5.1), WorkerSpawned(5, 2001, 5.1))
    state, effects = step(state, command(9, "worker:ack", pid=2000, now=5.2))
    assert spawns(effects) == [SpawnWorker(6, 2, 0)] and by_acks(1, 2) in effects
    assert state.clock == 5.2 and state.deaths_before_ack == 0


def test_paced_by_acks_several_missing_start_together_when_slots_allow() -> None:
    state = up(make_config(number=2, max_unacked=4, ack_timer=None))
    state, effects = step(state, command(1, "set_workers", "5", now=3.0))
    assert by_acks(0, 4, count=3) in effects and spawns(effects) == [SpawnWorker(2, 2, 0), SpawnWorker(3, 3, 0), SpawnWorker(4, 4, 0)]


def test_paced_by_acks_a_death_before_ack_brings_the_interval_back_until_the_next_ack() -> None:
    state = up(make_config(number=3, max_unacked=3, ack_timer=None))
    state, _ = run(state, ChildExited(1000, 1, None, 5.0), WorkerSpawned(3, 2000, 5.0))
    state, effects = step(state, ChildExited(2000, 1, None, 5.5))  # the replacement dies before its ACK
    assert effects == [info("===> Exited worker 2000 before it was ACKed (exit status 1)")]
    assert state.deaths_before_ack == 1 and next_deadline(state) == 5.0 + 1.5  # the interval, from the last spin-up
    state, effects = step(state, ChildExited(1001, 137, None, 6.0))  # another one goes: still backing off
    assert spawns(effects) == []
    state, effects = step(state, Tick(6.5))
    assert effects == [gradual(0, 3, "1.5"), SpawnWorker(4, 0, 0)]
    state, effects = run(state, WorkerSpawned(4, 2001, 6.5), command(9, "worker:ack", pid=2001, now=6.6))
    assert by_acks(0, 3) in effects and spawns(effects) == [SpawnWorker(5, 1, 0)]  # the ACK ends the streak
    assert state.deaths_before_ack == 0


@pytest.mark.parametrize("pacing", list(Pacing))
def test_a_crash_loop_backs_off_the_same_under_either_pacing(pacing: Pacing) -> None:
    """Workers that die before their ACK: one spin-up per min(seconds x 1.5^d, 30), both pacings."""
    state, _ = run(initial_state(make_config(pacing=pacing, seconds=2.0)), MasterStarted(0.0))
    times = []
    for spawn_id in range(12):
        pid = 1000 + spawn_id
        state, _ = run(state, WorkerSpawned(spawn_id, pid, state.clock), ChildExited(pid, 1, None, state.clock + 0.1))
        assert state.deaths_before_ack == spawn_id + 1 and not state.pending
        deadline = next_deadline(state)
        assert deadline is not None
        state, effects = step(state, Tick(deadline))
        assert spawns(effects) == [SpawnWorker(spawn_id + 1, 0, 0)]
        times.append(deadline)
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert gaps == [min(2.0 * 1.5**d, 30.0) for d in range(2, 13)]


def test_paced_by_acks_a_worker_that_acks_at_once_and_crashes_still_backs_off() -> None:
    """-m 0: every worker is ACKed as it starts; one that dies within `seconds` counts as a death."""
    state, _ = run(initial_state(make_config(ack_timer=0.0)), MasterStarted(0.0), WorkerSpawned(0, 1000, 0.0))
    assert state.children[1000].acked
    state, effects = step(state, ChildExited(1000, 1, None, 0.2))
    assert effects == [info("===> Exited worker 1000 within 1s of its start (counted as a death before ACK) (exit status 1)")]
    assert state.deaths_before_ack == 1 and spawns(effects) == [] and next_deadline(state) == 1.5
    state, effects = run(state, Tick(1.5), WorkerSpawned(1, 1001, 1.5))
    assert state.deaths_before_ack == 0  # its instant ACK ends the streak: each crash costs 1.5 s, not nothing
    state, effects = step(state, ChildExited(1001, 1, None, 2.6))  # lived past `seconds`: replaced at once
    assert spawns(effects) == [SpawnWorker(2, 0, 0)]


def test_under_the_interval_a_worker_that_acks_at_once_and_crashes_is_no_death() -> None:
    """The original rule, exactly: only a death before ACK counts."""
    config = make_config(ack_timer=0.0, pacing=Pacing.INTERVAL)
    state, _ = run(initial_state(config), MasterStarted(0.0), WorkerSpawned(0, 1000, 0.0), ChildExited(1000, 1, None, 0.2))
    assert state.deaths_before_ack == 0 and next_deadline(state) == 1.0


def test_spawn_result_for_an_unknown_spawn_is_logged() -> None:
    state = up(make_config())
    after, effects = step(state, WorkerSpawned(42, 5000, 3.0))
    assert effects == [error("Spawn result for unknown spawn 42 (pid 5000); ignoring")]
    assert after == replace(state, clock=3.0)
    after, effects = step(state, SpawnFailed(42, "EAGAIN", 3.0))
    assert effects == [error("Spawn failure for unknown spawn 42; ignoring")]
    assert after == replace(state, clock=3.0)


# --- deaths before ACK -------------------------------------------------------------


@pytest.mark.parametrize("pacing", list(Pacing))
def test_deaths_before_ack_back_off_and_an_ack_breaks_the_streak(pacing: Pacing) -> None:
    state, _ = run(initial_state(make_config(pacing=pacing)), MasterStarted(0.0), WorkerSpawned(0, 1000, 0.0))
    state, effects = step(state, ChildExited(1000, 1, None, 0.5))
    assert effects == [info("===> Exited worker 1000 before it was ACKed (exit status 1)")]
    assert state.deaths_before_ack == 1 and next_deadline(state) == 1.5
    state, effects = step(state, Tick(1.5))
    assert effects == [gradual(0, 1, "1.5"), SpawnWorker(1, 0, 0)]
    state, effects = step(state, SpawnFailed(1, "Resource temporarily unavailable", 1.6))
    assert effects == [error("Could not spawn worker: Resource temporarily unavailable; will retry in 2.25s")]
    assert state.deaths_before_ack == 2 and next_deadline(state) == 1.5 + 2.25
    state, effects = run(state, Tick(3.75), WorkerSpawned(2, 1001, 3.75), ChildExited(1001, None, 11, 3.8))
    assert effects == [
        gradual(0, 1, "2.25"),
        SpawnWorker(2, 0, 0),
        info("===> Launched 1001 (index: 0)"),
        info("===> Exited worker 1001 before it was ACKed (killed by signal 11)"),
        Log(
            LogLevel.WARN,
            "Crash loop: 3 workers in a row died before their ACK (the last was 1001 (killed by signal 11)); next spin-up in 3.375s",
        ),
    ]
    assert state.deaths_before_ack == 3
    assert dict(effects[-1].fields) == {"pid": 1001, "index": 0, "version": 0, "cause": "signal 11", "before_ack": True, "streak": 3}  # type: ignore[union-attr]
    state, effects = run(state, Tick(3.75 + 3.375), WorkerSpawned(3, 1002, 7.2), Tick(8.2))
    assert effects[-1] == info("Up to 1 / 1 timer ACKs, breaking the streak of 3 consecutive unacked workers dying")
    assert state.deaths_before_ack == 0


def test_acked_worker_exit_does_not_count_as_a_death() -> None:
    state, _ = step(up(make_config(number=2)), ChildExited(1000, 1, None, 5.0))
    assert state.deaths_before_ack == 0


def test_signaled_unacked_worker_exit_counts_as_a_death() -> None:
    state, _ = run(initial_state(make_config(number=2)), MasterStarted(0.0), WorkerSpawned(0, 1000, 0.0))
    state, _ = run(state, SignalReceived("TERM", 0.1), ChildExited(1000, None, 15, 0.2))
    assert state.deaths_before_ack == 1


def test_huge_death_count_keeps_the_interval_at_30_seconds() -> None:
    state = replace(up(make_config(number=2)), deaths_before_ack=10**15)
    state, effects = step(state, ChildExited(1000, 0, None, 100.0))
    assert effects == [info("===> Exited worker 1000 (exit status 0)"), gradual(0, 1, "30"), SpawnWorker(2, 0, 0)]
    state, _ = step(state, SpawnFailed(2, "ENOMEM", 100.0))
    assert pool.spinup_interval(state) == 30.0 and next_deadline(state) == 130.0


# --- ACKs ------------------------------------------------------------------------------


def test_timer_ack_happens_at_spinup_plus_ack_timer() -> None:
    state, _ = run(initial_state(make_config(ack_timer=2.5)), MasterStarted(0.0), WorkerSpawned(0, 1000, 1.0))
    assert next_deadline(state) == 3.5
    state, effects = step(state, Tick(3.4))
    assert effects == [] and not state.children[1000].acked
    state, effects = step(state, Tick(3.5))
    assert effects == [info("Up to 1 / 1 timer ACKs")] and state.children[1000].acked


def test_timer_ack_of_zero_acks_at_once() -> None:
    state, _ = step(initial_state(make_config(ack_timer=0.0)), MasterStarted(0.0))
    state, effects = step(state, WorkerSpawned(0, 1000, 0.5))
    assert effects == [info("===> Launched 1000 (index: 0)"), info("Up to 1 / 1 timer ACKs")]
    assert state.children[1000].acked and next_deadline(state) is None


def manual_state() -> State:
    state, _ = run(initial_state(make_config(ack_timer=None)), MasterStarted(0.0), WorkerSpawned(0, 1000, 0.0))
    return state


def test_manual_ack_registers_and_closes_the_connection() -> None:
    state, effects = step(manual_state(), command(5, "worker:ack", pid=1000, now=2.0))
    assert effects == [info("Up to 1 / 1 manual ACKs"), CloseConnection(5)]
    assert state.children[1000].acked


def test_manual_ack_may_carry_the_pid_as_a_string() -> None:
    state, _ = step(manual_state(), command(5, "worker:ack", pid="1000"))
    assert state.children[1000].acked


@pytest.mark.parametrize(
    ("request_", "log"),
    [
        ({"command": "worker:ack", "pid": 4242}, "Could not find state for PID 4242; ignoring ACK."),
        ({"command": "worker:ack"}, "Invalid worker:ack (no pid): {'command': 'worker:ack'}"),
        ({"command": "worker:ack", "pid": True}, "Invalid worker:ack (no pid): {'command': 'worker:ack', 'pid': True}"),
    ],
)
def test_bad_manual_acks_are_logged_and_ignored(request_: dict[str, object], log: str) -> None:
    state = manual_state()
    after, effects = step(state, CommandReceived(5, request_, 2.0))
    assert effects == [error(log), CloseConnection(5)]
    assert after == replace(state, clock=2.0)


def test_repeated_manual_ack_is_logged_and_ignored() -> None:
    state, _ = step(manual_state(), command(5, "worker:ack", pid=1000))
    after, effects = step(state, command(6, "worker:ack", pid=1000, now=3.0))
    assert effects == [error("Pid 1000 already ACKed; ignoring new ACK."), CloseConnection(6)]
    assert after == replace(state, clock=3.0)


def test_manual_ack_in_timer_mode_is_ignored_and_logged_at_debug_only() -> None:
    """A worker that ACKs whatever the mode (example/time_server) is correct: no ERROR for it."""
    state, _ = run(initial_state(make_config(ack_timer=5.0)), MasterStarted(0.0), WorkerSpawned(0, 1000, 0.0))
    after, effects = step(state, command(5, "worker:ack", pid=1000, now=1.0))
    assert effects == [debug("Received a manual ACK from 1000 in timer ACK mode; ignoring"), CloseConnection(5)]
    assert after == replace(state, clock=1.0)


def test_worker_ping_records_time_and_request_id() -> None:
    ping = CommandReceived(5, {"command": "worker:ping", "pid": 1000, "request_id": "r-7"}, 2.0, wall=1.7e9)
    state, effects = step(manual_state(), ping)
    assert effects == [debug("Ping from 1000 (request id 'r-7')"), CloseConnection(5)]
    assert state.children[1000].pinged_at == 2.0  # monotonic, as every core time; `state` shows it as wall time
    assert state.children[1000].pinged_request_id == "r-7"


def test_worker_ping_from_unknown_pid_is_logged() -> None:
    state = manual_state()
    after, effects = step(state, command(5, "worker:ping", pid=4242, request_id="x", now=2.0))
    assert effects == [error("Ping from unknown pid 4242; ignoring"), CloseConnection(5)]
    assert after == replace(state, clock=2.0)


# --- cull -------------------------------------------------------------------------


def test_old_workers_get_usr2_when_no_upgrade_is_in_progress() -> None:
    state = replace(up(make_config(number=2)), version=1)  # as after a finished upgrade:
    new = {pid: Child(pid, 1, pid - 1998, 4.0, acked=True) for pid in (2000, 2001)}
    state = replace(state, children={**state.children, **new})
    state, effects = step(state, Tick(5.0))
    assert effects == [
        info("Killing off 2 old workers."),
        info("Sending USR2 to [1000, 1001]"),
        SendSignal(1000, "USR2", Cause.UPGRADE),
        SendSignal(1001, "USR2", Cause.UPGRADE),
    ]
    assert state.children[1000].signaled == frozenset({"USR2"})
    assert state.children[1000].last_signaled_at == 5.0
    # Recorded, so they are not "old" any more and are not signaled again.
    state, effects = step(state, Tick(6.0))
    assert signals(effects) == []


def test_old_acked_workers_outside_an_upgrade_go_only_as_new_ones_serve() -> None:
    """The availability floor holds there too (no reachable state needs it: an upgrade ends
    with `number` new workers ACKed; a hand-made one does)."""
    state = replace(up(make_config(number=2, pacing=Pacing.INTERVAL)), version=1)
    state, effects = step(state, Tick(5.0))
    assert effects == [gradual(0, 1, "1"), SpawnWorker(2, 2, 1)]  # 0 and 1 are still held by the old workers
    state, effects = run(state, WorkerSpawned(2, 2000, 5.0), Tick(6.0))
    assert effects == [
        info("===> Launched 2000 (index: 2)"),
        info("Up to 1 / 2 timer ACKs"),
        gradual(0, 1, "1"),
        SpawnWorker(3, 3, 1),
        info("Killing off 1 old workers."),  # 3 serve: one old worker may go, not both
        info("Sending USR2 to [1000]"),
        SendSignal(1000, "USR2", Cause.UPGRADE),
    ]


def test_surplus_after_dec_goes_unacked_first_then_newest() -> None:
    state = up(make_config(number=3))
    state, _ = run(state, command(1, "inc", now=5.0), WorkerSpawned(3, 1003, 5.0))
    assert not state.children[1003].acked
    state, effects = step(state, command(1, "dec", now=5.5))
    assert effects == [
        info("Decrementing number of workers from 4 -> 3"),
        Reply(1, "Decrementing number of workers from 4 -> 3"),
        info("Have too many workers at the current version, so killing off 1 of them."),
        info("Sending USR2 to [1003]"),
        SendSignal(1003, "USR2", Cause.SURPLUS),
    ]
    state, effects = step(state, command(1, "dec", now=6.0))
    assert signals(effects) == [(1002, "USR2")]  # all ACKed now: the newest (highest pid at equal spin-up)


def test_surplus_during_an_upgrade_is_logged_not_streamed() -> None:
    """`dec` during a smooth upgrade: one old worker goes for the new ACK (streamed to the
    upgrade's subscriber), and the surplus new one (un-ACKed, newest) goes (logged only)."""
    old = {p: Child(p, 0, i, 0.0, acked=True) for i, p in enumerate((1000, 1001))}
    new = {p: Child(p, 1, i + 2, 5.0 + i, acked=p == 2000) for i, p in enumerate((2000, 2001, 2002))}
    state = State(
        config=make_config(number=3, ack_timer=None, max_unacked=3), version=1, children={**old, **new},
        upgrading=UpgradeKind.SMOOTH, upgrade_subscribers=(Subscriber(7, "u"),), last_spinup_at=7.0, clock=8.0,
    )
    state, effects = step(state, command(1, "dec", now=8.0))
    assert effects[2:] == [
        info("Smooth upgrade: killing off 1 old workers."),
        Reply(7, "Smooth upgrade: killing off 1 old workers.", "u", wait=True),
        info("Sending USR2 to [1000]"),
        Reply(7, "Sending USR2 to [1000]", "u", wait=True),
        SendSignal(1000, "USR2", Cause.UPGRADE),
        info("Have too many workers at the current version, so killing off 1 of them."),
        info("Sending USR2 to [2002]"),
        Reply(7, "Sending USR2 to [2002]", "u", wait=True),
        SendSignal(2002, "USR2", Cause.SURPLUS),
    ]


def test_a_dec_that_ends_an_upgrade_stops_the_old_workers_and_the_surplus() -> None:
    old = Child(1000, 0, 0, 0.0, acked=True)
    new = {p: Child(p, 1, i + 1, 5.0, acked=p != 2002) for i, p in enumerate((2000, 2001, 2002))}
    state = State(
        config=make_config(number=3, ack_timer=None, max_unacked=3), version=1, children={1000: old, **new},
        upgrading=UpgradeKind.SMOOTH, upgrade_subscribers=(Subscriber(7, "u"),), last_spinup_at=5.0, clock=6.0,
    )
    state, effects = step(state, command(1, "dec", now=6.0))
    assert effects[2:] == [
        info("Upgraded successfully to version 1 (Einhorn 1.1.0)."),
        Reply(7, "Upgraded successfully to version 1 (Einhorn 1.1.0).", "u", wait=True),
        Reply(7, "Upgrade done", "u"),
        info("Killing off 1 old workers."),
        info("Sending USR2 to [1000]"),
        SendSignal(1000, "USR2", Cause.UPGRADE),
        info("Have too many workers at the current version, so killing off 1 of them."),
        info("Sending USR2 to [2002]"),
        SendSignal(2002, "USR2", Cause.SURPLUS),
    ]


def test_surplus_after_set_workers_stops_several() -> None:
    state, effects = step(up(make_config(number=4)), command(1, "set_workers", "1", now=5.0))
    assert signals(effects) == [(1003, "USR2"), (1002, "USR2"), (1001, "USR2")]
    assert [c.pid for c in pool.unsignaled_modern_workers(state)] == [1000]


# --- upgrades ----------------------------------------------------------------------


def test_smooth_upgrade_with_max_upgrade_additional() -> None:
    """The whole conversation of a smooth upgrade; the fleet never exceeds number + 1."""
    state = up(make_config(number=2, max_upgrade_additional=1, pacing=Pacing.INTERVAL))
    state, effects = step(state, command(7, "upgrade", id="u1", now=10.0))
    assert effects == [
        Reply(7, "Upgrading smoothly, as commanded", "u1", wait=True),
        info("Reloading einhorn master (smooth_upgrade)..."),
        Reply(7, "Reloading einhorn master (smooth_upgrade)...", "u1", wait=True),
        CompareImage(0),
    ]
    assert state.reexec_purpose is ReexecPurpose.SMOOTH_UPGRADE
    assert state.reexec_subscribers == (Subscriber(7, "u1"),)

    state, effects = step(state, MasterStarted(11.0, restored=True))
    assert effects == [
        info("Restored state: version 0, 2 workers"),
        info("Starting smooth upgrade from version 0..."),
        Reply(7, "Starting smooth upgrade from version 0...", "u1", wait=True),
        gradual(0, 1, "1"),
        SpawnWorker(2, 2, 1),
    ]
    assert state.version == 1 and state.upgrading is UpgradeKind.SMOOTH
    assert state.upgrade_subscribers == (Subscriber(7, "u1"),) and state.reexec_purpose is None

    state, effects = step(state, WorkerSpawned(2, 2000, 11.0))
    assert effects == [
        info("===> Launched 2000 (index: 2)"),
        Reply(7, "===> Launched 2000 (index: 2)", "u1", wait=True),
    ]
    state, effects = step(state, Tick(12.0))
    assert effects == [
        info("Up to 1 / 2 timer ACKs"),
        info("Smooth upgrade: killing off 1 old workers."),
        Reply(7, "Smooth upgrade: killing off 1 old workers.", "u1", wait=True),
        info("Sending USR2 to [1000]"),
        Reply(7, "Sending USR2 to [1000]", "u1", wait=True),
        SendSignal(1000, "USR2", Cause.UPGRADE),
    ]
    # At capacity (3 = 2 + 1) until the signaled old worker is gone.
    state, effects = step(state, Tick(20.0))
    assert effects == []
    state, effects = step(state, ChildExited(1000, 0, None, 20.5))
    assert effects == [
        info("===> Exited worker 1000 (exit status 0)"),
        Reply(7, "===> Exited worker 1000 (exit status 0)", "u1", wait=True),
        gradual(0, 1, "1"),
        SpawnWorker(3, 0, 1),
    ]
    state, effects = run(state, WorkerSpawned(3, 2001, 20.5), Tick(21.5))
    assert effects == [
        info("===> Launched 2001 (index: 0)"),
        Reply(7, "===> Launched 2001 (index: 0)", "u1", wait=True),
        info("Up to 2 / 2 timer ACKs"),
        info("Upgraded successfully to version 1 (Einhorn 1.1.0)."),
        Reply(7, "Upgraded successfully to version 1 (Einhorn 1.1.0).", "u1", wait=True),
        Reply(7, "Upgrade done", "u1"),
        info("Killing off 1 old workers."),
        info("Sending USR2 to [1001]"),
        SendSignal(1001, "USR2", Cause.UPGRADE),
    ]
    assert state.upgrading is None and state.upgrade_subscribers == ()


def test_paced_by_acks_a_smooth_upgrade_goes_at_the_speed_of_the_acks() -> None:
    """Issue 14: max_unacked new workers at once, one old worker stopped per new ACK, no timer in between."""
    config = make_config(number=4, max_unacked=2, ack_timer=None)
    state = up(config)
    state, effects = run(state, command(7, "upgrade", now=10.0), MasterStarted(10.0, restored=True))
    assert spawns(effects) == [SpawnWorker(4, 4, 1), SpawnWorker(5, 5, 1)]
    pids = iter(range(2000, 2100))
    acks = 0
    while state.upgrading is not None:
        assert next_deadline(state) is None  # nothing waits for time
        for spawn_id in sorted(state.pending):
            state, _ = step(state, WorkerSpawned(spawn_id, next(pids), 10.0))
        unacked = sorted(c.pid for c in pool.modern_workers(state) if not c.acked)
        old_before = len(pool.old_workers(state))
        state, effects = step(state, command(9, "worker:ack", pid=unacked[0], now=10.0))
        acks += 1
        assert len(pool.old_workers(state)) == old_before - 1  # one old worker goes per new ACK
        assert pool.serving_count(state) >= 4
    assert acks == 4 and state.clock == 10.0


def test_smooth_upgrade_signals_old_workers_one_for_one_as_new_ones_ack() -> None:
    world = World(state=up(make_config(number=3, max_unacked=3)), base_config=make_config(number=3, max_unacked=3))
    world.live = {1000, 1001, 1002}
    world.now = 10.0
    world.feed(SignalReceived("HUP", world.now))
    world.restore()
    while pool.ack_count(world.state) < 3:
        assert world.cooperative_step()
        state = world.state
        old = [c for c in pool.workers(state) if c.version == 0]
        signaled_old = [c for c in old if c.signaled]
        if state.upgrading is not None:
            assert len(signaled_old) <= pool.ack_count(state)
            assert len([c for c in old if not c.signaled]) + pool.ack_count(state) <= 3
    world.settle(100)
    assert converged(world) is None


def test_deaths_before_ack_reset_on_upgrade() -> None:
    state = replace(up(make_config()), deaths_before_ack=5, reexec=Reexec(ReexecPurpose.SMOOTH_UPGRADE, (), 0, 0.0, ReexecPhase.EXECUTING))
    state, _ = step(state, MasterStarted(50.0, restored=True))
    assert state.deaths_before_ack == 0 and state.version == 1


def fleet_upgrade(config: Config) -> tuple[State, list[Effect]]:
    state = up(config)
    state, _ = step(state, command(7, "upgrade_fleet", id=3, now=10.0))
    return step(state, MasterStarted(10.0, restored=True))


def test_fleet_upgrade_spins_up_all_new_workers_at_once() -> None:
    state, effects = fleet_upgrade(make_config(number=3))
    assert effects == [
        info("Restored state: version 0, 3 workers"),
        info("Starting fleet upgrade from version 0..."),
        Reply(7, "Starting fleet upgrade from version 0...", 3, wait=True),
        SpawnWorker(3, 3, 1),
        SpawnWorker(4, 4, 1),
        SpawnWorker(5, 5, 1),
    ]
    assert state.upgrading is UpgradeKind.FLEET


def test_fleet_upgrade_signals_old_workers_only_when_all_new_ones_acked() -> None:
    state, _ = fleet_upgrade(make_config(number=3))
    state, _ = run(state, *(WorkerSpawned(3 + i, 2000 + i, 10.0 + i) for i in range(3)))
    state, effects = run(state, Tick(11.0), Tick(12.0))
    assert signals(effects) == [] and pool.ack_count(state) == 2
    state, effects = step(state, Tick(13.0))
    assert effects == [
        info("Up to 3 / 3 timer ACKs"),
        info("Upgraded successfully to version 1 (Einhorn 1.1.0)."),
        Reply(7, "Upgraded successfully to version 1 (Einhorn 1.1.0).", 3, wait=True),
        Reply(7, "Upgrade done", 3),
        info("Killing off 3 old workers."),
        info("Sending USR2 to [1000, 1001, 1002]"),
        SendSignal(1000, "USR2", Cause.UPGRADE),
        SendSignal(1001, "USR2", Cause.UPGRADE),
        SendSignal(1002, "USR2", Cause.UPGRADE),
    ]


def test_fleet_upgrade_spins_up_at_most_the_capacity_at_once() -> None:
    state, effects = fleet_upgrade(make_config(number=3, max_upgrade_additional=2))
    assert spawns(effects) == [SpawnWorker(3, 3, 1), SpawnWorker(4, 4, 1)]
    assert pool.total_worker_count(state) == 5


def test_fleet_upgrade_with_small_capacity_still_completes() -> None:
    config = make_config(number=3, max_upgrade_additional=1)
    world = World(state=up(config), base_config=config, live={1000, 1001, 1002}, now=10.0)
    world.feed(command(7, "upgrade_fleet", now=10.0))
    world.restore()
    world.settle(200)
    assert converged(world) is None and world.state.version == 1


def upgrade_without_time(config: Config, kind: str) -> World:
    """An upgrade in a world where spawns start, signaled workers exit and workers ACK, but no time passes."""
    world = World(state=up(config), base_config=config, live={1000 + i for i in range(config.number)}, now=10.0)
    world.feed(command(7, kind, now=10.0))
    world.restore()
    for _ in range(200):
        state = world.state
        signaled = sorted(c.pid for c in state.children.values() if c.signaled)
        unacked = sorted(c.pid for c in state.children.values() if not c.acked)
        if state.pending:
            world.spawn(min(state.pending))
        elif signaled:
            world.exit(signaled[0])
        elif unacked:
            world.ack(unacked[0])
        else:
            break
    return world


@pytest.mark.parametrize("max_upgrade_additional", [None, 1, 2])
@pytest.mark.parametrize("kind", ["upgrade", "upgrade_fleet"])
def test_paced_by_acks_every_upgrade_goes_at_the_speed_of_the_workers(kind: str, max_upgrade_additional: int | None) -> None:
    """Issue 14: smooth or fleet, capped or not, an upgrade needs no time to pass but the workers' own."""
    config = make_config(number=4, max_unacked=2, ack_timer=None, max_upgrade_additional=max_upgrade_additional)
    world = upgrade_without_time(config, kind)
    assert converged(world) is None and world.state.version == 1 and world.state.clock == 10.0


def test_under_the_interval_a_smooth_upgrade_waits_for_it() -> None:
    world = upgrade_without_time(make_config(number=4, max_unacked=2, ack_timer=None, pacing=Pacing.INTERVAL), "upgrade")
    assert world.state.upgrading is not None and next_deadline(world.state) == 11.0


HELD = error(
    "Upgrade held at capacity: number 2 + max_upgrade_additional 0 leaves no room for a new worker,"
    " and stopping an ACKed old worker would leave 1 of 2 serving. Raise max_upgrade_additional (config) to go on."
)


def test_a_capped_upgrade_is_held_rather_than_stop_a_serving_worker() -> None:
    """max_upgrade_additional 0 and every old worker ACKed: a new worker fits only if one that
    serves is stopped first, which the availability floor forbids. Said once; raising the cap
    lets the upgrade go on."""
    state = up(make_config(number=2, max_upgrade_additional=0))
    state, effects = run(state, SignalReceived("HUP", 10.0), MasterStarted(10.0, restored=True))
    assert effects[3:] == [info("Starting smooth upgrade from version 0..."), HELD]
    state, effects = run(state, Tick(11.0), Tick(20.0))
    assert effects == []
    raise_cap = CommandReceived(1, {"command": "config", "args": ["..."]}, 21.0, document={"max_upgrade_additional": 1})
    state, effects = step(state, raise_cap)
    assert spawns(effects) == [SpawnWorker(2, 2, 1)] and signals(effects) == []
    state, effects = run(state, WorkerSpawned(2, 2000, 21.0), Tick(22.0))
    assert signals(effects) == [(1000, "USR2")]  # one for one again


def test_the_held_notice_follows_what_the_cull_could_do_and_comes_again_for_a_newer_upgrade() -> None:
    config = make_config(number=2, max_upgrade_additional=0, ack_timer=None)
    children = {
        1000: Child(1000, 0, 0, 0.0, acked=True),
        1001: Child(1001, 0, 1, 0.0, acked=True),
        1002: Child(1002, 0, 2, 4.0),  # starting, not serving yet
    }
    state = State(
        config=config, children=children,
        reexec=Reexec(ReexecPurpose.SMOOTH_UPGRADE, (Subscriber(7, "u"),), 0, 0.0, ReexecPhase.EXECUTING), last_spinup_at=4.0, clock=5.0,
    )
    state, effects = step(state, MasterStarted(5.0, restored=True))
    held = HELD.message
    assert effects[1:] == [
        info("Starting smooth upgrade from version 0..."),
        Reply(7, "Starting smooth upgrade from version 0...", "u", wait=True),
        info("Smooth upgrade: killing off 1 old workers."),
        Reply(7, "Smooth upgrade: killing off 1 old workers.", "u", wait=True),
        info("Sending USR2 to [1002]"),
        Reply(7, "Sending USR2 to [1002]", "u", wait=True),
        SendSignal(1002, "USR2", Cause.UPGRADE),
        HELD,
        Reply(7, f"ERROR: {held}", "u", wait=True),
    ]
    state, effects = run(state, ChildExited(1002, 0, None, 6.0), Tick(7.0), command(8, "reload", now=8.0))
    state, more = step(state, MasterStarted(8.0, restored=True))
    assert HELD not in effects + more  # the same upgrade, still held: said once
    state, effects = run(state, command(8, "upgrade", id="v", now=9.0), MasterStarted(9.0, restored=True))
    assert effects[-3:] == [HELD, Reply(7, f"ERROR: {held}", "u", wait=True), Reply(8, f"ERROR: {held}", "v", wait=True)]


def test_a_capped_upgrade_makes_room_by_stopping_an_unacked_old_worker() -> None:
    state = up(make_config(number=2, max_upgrade_additional=0, ack_timer=None))
    state, _ = run(state, ChildExited(1001, 1, None, 5.0), Tick(6.0), WorkerSpawned(2, 1002, 6.0))
    assert not state.children[1002].acked  # an old worker that does not serve (yet)
    state, effects = run(state, SignalReceived("HUP", 10.0), MasterStarted(10.0, restored=True))
    assert effects[3:] == [
        info("Starting smooth upgrade from version 0..."),
        info("At upgrade capacity: killing off 1 old workers to make room."),
        info("Sending USR2 to [1002]"),
        SendSignal(1002, "USR2", Cause.MAKE_ROOM),
    ]
    state, effects = step(state, ChildExited(1002, 0, None, 10.5))
    assert spawns(effects) == [SpawnWorker(3, 1, 1)]
    # The new worker serves, but stopping 1000 would leave 1 of 2: held, and said so.
    state, effects = run(state, WorkerSpawned(3, 2000, 10.5), command(99, "worker:ack", pid=2000, now=11.0))
    assert signals(effects) == [] and effects[-1] == HELD


def test_an_upgrade_during_an_upgrade_starts_over_at_a_newer_version() -> None:
    state, _ = fleet_upgrade(make_config(number=2))
    state, _ = run(state, WorkerSpawned(2, 2000, 10.0), Tick(11.0))
    state, effects = run(state, SignalReceived("HUP", 12.0), MasterStarted(12.0, restored=True))
    assert effects[:6] == [
        info("Reloading einhorn master (smooth_upgrade)..."),
        Reply(7, "Reloading einhorn master (smooth_upgrade)...", 3, wait=True),
        CompareImage(1),
        info("Restored state: version 1, 3 workers"),
        error("Spawns [3] were in flight across the master's re-exec and are lost; counted as failed"),
        info("Currently upgrading (1 / 2 ACKs; bumping version and starting over)..."),
    ]
    assert state.version == 2 and state.upgrading is UpgradeKind.SMOOTH


def failed_upgrade(config: Config) -> State:
    """Two ACKed workers of version 0 (1000, 1001); a smooth upgrade whose two new workers
    (2000, 2001, version 1) are up but never ACK."""
    state = up(config)
    state, _ = run(
        state,
        SignalReceived("HUP", 10.0),
        MasterStarted(10.0, restored=True),
        WorkerSpawned(2, 2000, 10.0),
        Tick(11.0),
        WorkerSpawned(3, 2001, 11.0),
    )
    assert [c.pid for c in pool.old_workers(state)] == [1000, 1001] and pool.ack_count(state) == 0
    return state


def test_a_second_upgrade_stops_the_first_ones_unacked_workers_not_the_serving_ones() -> None:
    """Issue 10: counting the un-ACKed workers of the failed version as old made the second
    upgrade stop both ACKed workers (the oldest) while no new one served."""
    state = failed_upgrade(make_config(number=2, max_unacked=2, ack_timer=None, pacing=Pacing.INTERVAL))
    state, effects = run(state, SignalReceived("HUP", 14.0), MasterStarted(14.0, restored=True))
    assert effects == [
        info("Reloading einhorn master (smooth_upgrade)..."),
        CompareImage(1),
        info("Restored state: version 1, 4 workers"),
        info("Currently upgrading (0 / 2 ACKs; bumping version and starting over)..."),
        gradual(0, 2, "1"),
        SpawnWorker(4, 4, 2),
        info("Smooth upgrade: killing off 2 old workers."),
        info("Sending USR2 to [2000, 2001]"),
        SendSignal(2000, "USR2", Cause.UPGRADE),
        SendSignal(2001, "USR2", Cause.UPGRADE),
    ]
    assert pool.serving_count(state) == 2 and [c.pid for c in pool.old_workers(state)] == [1000, 1001]


def test_a_second_upgrade_after_a_new_worker_died_before_its_ack() -> None:
    state = failed_upgrade(make_config(number=2, max_unacked=2, ack_timer=None))
    state, _ = step(state, ChildExited(2000, 1, None, 12.0))
    state, effects = run(state, SignalReceived("HUP", 14.0), MasterStarted(14.0, restored=True))
    assert signals(effects) == [(2001, "USR2")]


@pytest.mark.parametrize("max_upgrade_additional", [None, 1, 2])
@pytest.mark.parametrize("kinds", [("upgrade", "upgrade"), ("upgrade", "upgrade_fleet"), ("upgrade_fleet", "upgrade"), ("upgrade_fleet", "upgrade_fleet")])
def test_upgrades_on_top_of_failed_upgrades_keep_the_old_workers_serving(kinds: tuple[str, str], max_upgrade_additional: int | None) -> None:
    """Two upgrades whose new workers never ACK (some die first), then one whose workers do:
    the two old workers serve throughout (World.feed checks T12 at every step) and go only
    as the last version's workers ACK."""
    config = make_config(number=2, max_unacked=2, ack_timer=None, max_upgrade_additional=max_upgrade_additional)
    world = World(state=up(config), base_config=config, live={1000, 1001}, now=10.0, next_pid=2000)

    def without_acks(limit: int = 40) -> None:
        for _ in range(limit):
            state = world.state
            if world.reexec_outstanding:
                world.restore()
            elif state.pending:
                world.spawn(min(state.pending))
            elif signaled := sorted(c.pid for c in state.children.values() if c.signaled):
                world.exit(signaled[0])
            elif next_deadline(state) is not None:
                world.tick_at_deadline()
            else:
                return
        raise AssertionError(f"still busy after {limit} events")

    for kind in kinds:
        world.feed(command(7, kind, now=world.now))
        without_acks()
        new = [c.pid for c in pool.modern_workers(world.state)]
        assert new and not any(world.state.children[p].acked for p in new)
        if kind == kinds[0]:
            world.exit(new[0], 9)  # one of the first version's dies before its ACK
            without_acks()
        assert all(not world.state.children[p].signaled for p in (1000, 1001))
        assert pool.serving_count(world.state) == 2
    world.feed(command(7, "upgrade", now=world.now))
    world.settle(200)
    assert converged(world) is None and world.state.version == 3
    assert not {1000, 1001} & set(world.state.children)


def test_a_second_upgrade_request_joins_the_re_exec_in_progress() -> None:
    state, _ = step(up(make_config()), command(7, "upgrade", id="a", now=1.0))
    state, effects = step(state, command(8, "upgrade_fleet", id="b", now=1.0))
    assert effects == [
        Reply(8, "Upgrading fleet, as commanded", "b", wait=True),
        info("A re-exec (smooth_upgrade) is already in progress"),
    ]
    assert state.reexec_subscribers == (Subscriber(7, "a"), Subscriber(8, "b"))


def test_reexec_failure_reports_to_subscribers_and_keeps_running() -> None:
    state, _ = run(up(make_config()), command(7, "upgrade", id="u", now=1.0), image_changed(0, 1.0))
    state, effects = step(state, UpgradeCheckFailed(0, "`einhorn --upgrade-check` exited with status 1", 2.0))
    message = "Can not initiate einhorn master upgrade safely, aborting: the new einhorn failed its upgrade check: `einhorn --upgrade-check` exited with status 1"
    assert effects == [error(message), Reply(7, f"ERROR: {message}", "u", failed=True)]
    assert state.reexec_purpose is None and state.reexec_subscribers == () and state.version == 0


def test_reload_failure_says_reload() -> None:
    state, _ = run(up(make_config()), command(7, "reload", id="r", now=1.0), image_changed(0, 1.0))
    state, effects = step(state, UpgradeCheckPassed(0, 2.0))
    assert effects == [ExecMaster()]
    _, effects = step(state, ReexecFailed("could not exec einhorn: No such file or directory", 2.0))
    assert effects[0] == error("Can not initiate einhorn master reload safely, aborting: could not exec einhorn: No such file or directory")


def test_restored_after_reload_answers_reload_done_and_keeps_the_version() -> None:
    state, _ = step(up(make_config(number=2)), command(7, "reload", id="r", now=1.0))
    state, effects = step(state, MasterStarted(2.0, restored=True))
    assert effects == [info("Restored state: version 0, 2 workers"), Reply(7, "Reload done", "r")]
    assert state.version == 0 and state.reexec_purpose is None and state.upgrading is None


def test_restored_without_a_purpose_only_logs() -> None:
    state = up(make_config(number=2))
    after, effects = step(state, MasterStarted(2.0, restored=True))
    assert effects == [info("Restored state: version 0, 2 workers")]
    assert after == replace(state, clock=2.0)


def test_connection_closed_drops_its_subscriptions() -> None:
    state, _ = step(up(make_config()), command(7, "upgrade", id="u", now=1.0))
    state, _ = step(state, command(8, "upgrade", id="v", now=1.0))
    state, effects = step(state, ConnectionClosed(7, 1.5))
    assert effects == [] and state.reexec_subscribers == (Subscriber(8, "v"),)


# --- signals to the master and shutdown ------------------------------------------------


@pytest.mark.parametrize(("received", "sent"), [("INT", "USR2"), ("USR2", "USR2"), ("TERM", "TERM")])
def test_graceful_shutdown_signals(received: str, sent: str) -> None:
    state, effects = step(up(make_config(number=2)), SignalReceived(received, 5.0))
    assert effects == [
        info(f"Received SIG{received}: sent SIG{sent} to all children; exiting once they are gone"),
        info(f"Sending {sent} to [1000, 1001]"),
        SendSignal(1000, sent, Cause.SHUTDOWN),
        SendSignal(1001, sent, Cause.SHUTDOWN),
    ]
    assert not state.respawn and state.exit_code is None
    state, effects = step(state, ChildExited(1000, 0, None, 6.0))
    assert effects == [info("===> Exited worker 1000 (exit status 0)")]
    state, effects = step(state, ChildExited(1001, None, 15, 7.0))
    assert effects == [
        info("===> Exited worker 1001 (killed by signal 15)"),
        info("All workers gone; exiting"),
        Exit(0),
    ]
    assert state.exit_code == 0


def test_quit_signals_all_and_exits_at_once() -> None:
    state, effects = step(up(make_config(number=2)), SignalReceived("QUIT", 5.0))
    assert effects == [
        info("Received SIGQUIT: sent SIGQUIT to all children; exiting once they are gone"),
        info("Sending QUIT to [1000, 1001]"),
        SendSignal(1000, "QUIT", Cause.SHUTDOWN),
        SendSignal(1001, "QUIT", Cause.SHUTDOWN),
        Exit(1),
    ]
    assert state.exit_code == 1
    _, effects = step(state, ChildExited(1000, 0, None, 6.0))
    assert not any(isinstance(e, Exit) for e in effects)


def test_shutdown_with_no_children_exits_immediately() -> None:
    state = replace(initial_state(make_config()), last_spinup_at=0.0)
    _, effects = step(state, SignalReceived("INT", 1.0))
    assert effects == [
        info("Received SIGINT: sent SIGUSR2 to all children; exiting once they are gone"),
        info("All workers gone; exiting"),
        Exit(0),
    ]


def test_a_worker_spawned_during_shutdown_gets_the_shutdown_signal() -> None:
    state, _ = step(initial_state(make_config(number=2)), MasterStarted(0.0))
    state, _ = step(state, SignalReceived("TERM", 0.1))
    state, effects = step(state, WorkerSpawned(0, 1000, 0.2))
    assert effects == [info("===> Launched 1000 (index: 0)"), info("Sending TERM to [1000]"), SendSignal(1000, "TERM", Cause.SHUTDOWN)]
    state, effects = step(state, SpawnFailed(1, "EAGAIN", 0.3))
    assert spawns(effects) == [] and not any(isinstance(e, Exit) for e in effects)
    _, effects = step(state, ChildExited(1000, None, 15, 0.4))
    assert effects[-2:] == [info("All workers gone; exiting"), Exit(0)]


def test_no_respawn_after_shutdown() -> None:
    state, _ = step(up(make_config(number=3)), command(1, "die", now=1.0))
    state, effects = run(state, ChildExited(1000, 0, None, 5.0), Tick(100.0))
    assert spawns(effects) == [] and next_deadline(state) is None


def test_hup_starts_a_smooth_upgrade_re_exec() -> None:
    state, effects = step(up(make_config()), SignalReceived("HUP", 1.0))
    assert effects == [info("Reloading einhorn master (smooth_upgrade)..."), CompareImage(0)]
    assert state.reexec_purpose is ReexecPurpose.SMOOTH_UPGRADE and state.reexec_subscribers == ()


def test_hup_while_shutting_down_does_not_re_exec() -> None:
    state, _ = step(up(make_config()), command(1, "die", now=1.0))
    after, effects = step(state, SignalReceived("HUP", 2.0))
    assert effects == [info("Not reloading einhorn because we're exiting")]
    assert after == replace(state, clock=2.0)


def test_alrm_is_a_deprecated_hup() -> None:
    _, effects = step(up(make_config()), SignalReceived("ALRM", 1.0))
    assert effects == [
        error("Upgrading using SIGALRM is deprecated. Please switch to SIGHUP"),
        info("Reloading einhorn master (smooth_upgrade)..."),
        CompareImage(0),
    ]


def test_other_signals_are_ignored() -> None:
    state = up(make_config())
    after, effects = step(state, SignalReceived("WINCH", 1.0))
    assert effects == [debug("Ignoring SIGWINCH")] and after == replace(state, clock=1.0)


def test_unknown_pid_exit_is_only_logged() -> None:
    state = up(make_config())
    after, effects = step(state, ChildExited(4242, 0, None, 1.0))
    assert effects == [info("Reaped unknown process 4242 (exit status 0); ignoring")]
    assert after == replace(state, clock=1.0)


def test_unparseable_request_gets_the_original_answer() -> None:
    state = up(make_config())
    after, effects = step(state, RequestUnparseable(3, 1.0))
    assert effects == [Reply(3, "Could not parse command")] and after == replace(state, clock=1.0)


# --- SIGKILL escalation ------------------------------------------------------------------


def test_signal_timeout_escalates_to_sigkill_exactly_once() -> None:
    state = up(make_config(number=2, signal_timeout=5))
    state, _ = step(state, command(1, "die", now=10.0))
    assert next_deadline(state) == 15.0
    state, effects = run(state, ChildExited(1001, 0, None, 12.0), Tick(14.9))
    assert signals(effects) == []
    state, effects = step(state, Tick(15.0))
    assert effects == [Log(LogLevel.WARN, "Child 1000 is still active after 5s. Sending SIGKILL."), SendSignal(1000, "KILL", Cause.ESCALATION)]
    assert state.children[1000].killed and next_deadline(state) is None
    state, effects = step(state, Tick(100.0))
    assert effects == []


def test_no_escalation_without_a_signal_timeout() -> None:
    state, _ = step(up(make_config(number=2)), command(1, "die", now=10.0))
    assert next_deadline(state) is None
    _, effects = step(state, Tick(1000.0))
    assert effects == []


def test_unrecorded_signals_do_not_escalate() -> None:
    state, _ = step(up(make_config(signal_timeout=1)), command(1, "signal", "HUP", now=10.0))
    assert next_deadline(state) is None and state.children[1000].last_signaled_at is None


# --- next_deadline ---------------------------------------------------------------------------


def test_next_deadline_is_none_when_idle() -> None:
    assert next_deadline(initial_state(make_config())) is None
    assert next_deadline(up(make_config(number=3))) is None


def test_next_deadline_is_the_earliest_of_ack_spinup_and_signal_timeout() -> None:
    state = up(make_config(number=3, signal_timeout=10, seconds=4.0, max_unacked=3, pacing=Pacing.INTERVAL))
    state, _ = run(state, command(1, "dec", now=5.0))  # surplus 1002 signaled at 5.0 -> KILL due at 15.0
    assert next_deadline(state) == 15.0
    # Back to 3: the signaled 1002 still counts as modern, so nothing is missing yet.
    state, effects = step(state, command(1, "inc", now=6.0))
    assert spawns(effects) == [] and next_deadline(state) == 15.0
    state, effects = run(state, command(1, "inc", now=6.0), command(1, "inc", now=6.0))
    assert spawns(effects) == [SpawnWorker(3, 3, 0)]  # one now (last spin-up at 0.0), the next at 6.0 + 4s
    assert next_deadline(state) == 10.0
    state, _ = step(state, WorkerSpawned(3, 2000, 7.0))  # timer ACK due at 8.0
    assert next_deadline(state) == 8.0


def test_next_deadline_ignores_a_spin_up_gate_that_has_passed() -> None:
    state = up(make_config(number=2, max_unacked=1))
    state, _ = run(state, ChildExited(1000, 0, None, 5.0), ChildExited(1001, 0, None, 9.0))
    # Blocked by max_unacked (the pending spawn), not by time: no deadline to wake for.
    assert state.clock == 9.0 and next_deadline(state) is None


# --- hypothesis: folds of random events ----------------------------------------------------

@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs, actions)
def test_random_event_folds_keep_invariants_and_converge(config: Config, script: Script) -> None:
    """`World.feed` checks every invariant after every step; then a cooperative world must converge."""
    world = play(config, script)
    world.settle(limit=300)
    assert converged(world) is None, converged(world)


# --- the graceful signal (--graceful-signal) ------------------------------------------


def test_every_finish_and_exit_of_the_master_is_the_graceful_signal() -> None:
    """Upgrade cull, surplus, `die` without argument, SIGINT and SIGUSR2 send the configured signal."""
    term = make_config(number=2, graceful_signal="TERM")
    state = replace(up(term), version=1)
    new = {pid: Child(pid, 1, pid - 1998, 4.0, acked=True) for pid in (2000, 2001)}
    state, effects = step(replace(state, children={**state.children, **new}), Tick(5.0))
    assert signals(effects) == [(1000, "TERM"), (1001, "TERM")]  # the upgrade cull

    state, _ = run(up(make_config(number=3, graceful_signal="QUIT")), command(1, "inc", now=5.0), WorkerSpawned(3, 1003, 5.0))
    state, effects = step(state, command(1, "dec", now=5.5))
    assert [e for e in effects if isinstance(e, SendSignal)] == [SendSignal(1003, "QUIT", Cause.SURPLUS)]

    state, effects = step(up(term), command(1, "die", now=1.0))
    assert signals(effects) == [(1000, "TERM"), (1001, "TERM")] and state.shutdown_signal == "TERM"
    assert effects[0] == info("Einhorn is going down! Successfully sent TERMs to 2 processes: [1000, 1001]")
    _, effects = step(up(term), command(1, "die", "USR1", now=1.0))
    assert signals(effects) == [(1000, "USR1"), (1001, "USR1")]  # a named signal is the operator's

    for received in ("INT", "USR2"):
        state, effects = step(up(make_config(number=1, graceful_signal="INT")), SignalReceived(received, 5.0))
        assert effects[0] == info(f"Received SIG{received}: sent SIGINT to all children; exiting once they are gone")
        assert [e for e in effects if isinstance(e, SendSignal)] == [SendSignal(1000, "INT", Cause.SHUTDOWN)]
    _, effects = step(up(term), SignalReceived("QUIT", 5.0))
    assert signals(effects) == [(1000, "QUIT"), (1001, "QUIT")]  # QUIT stays QUIT


def test_make_room_uses_the_graceful_signal() -> None:
    state = up(make_config(number=2, max_upgrade_additional=0, ack_timer=None, graceful_signal="TERM"))
    state, _ = run(state, ChildExited(1001, 1, None, 5.0), Tick(6.0), WorkerSpawned(2, 1002, 6.0))
    state, effects = run(state, SignalReceived("HUP", 10.0), MasterStarted(10.0, restored=True))
    assert [e for e in effects if isinstance(e, SendSignal)] == [SendSignal(1002, "TERM", Cause.MAKE_ROOM)]


# --- PID 1 and --subreaper ------------------------------------------------------------------


def test_as_a_reaper_orphans_are_reaped_quietly_and_sigterm_is_graceful() -> None:
    state = up(make_config(number=2, reaper=True))
    _, effects = step(state, ChildExited(4242, 0, None, 1.0))
    assert effects == [debug("Reaped orphaned process 4242 (exit status 0)")]
    state, effects = step(state, SignalReceived("TERM", 2.0))
    assert effects[0] == info("Received SIGTERM: sent SIGUSR2 to all children; exiting once they are gone")
    assert signals(effects) == [(1000, "USR2"), (1001, "USR2")] and state.shutdown_signal == "USR2"
    _, effects = step(up(make_config(number=1, reaper=True, graceful_signal="QUIT")), SignalReceived("TERM", 2.0))
    assert signals(effects) == [(1000, "QUIT")]
