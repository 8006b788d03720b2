"""Each numbered invariant of einhorn.core.invariants fires on a state or step that breaks it,
and stays quiet on ones that keep it (spec/README.md numbers them)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from einhorn.core import pool, step
from einhorn.core.config import Config, Pacing
from einhorn.core.effects import Cause, Effect, Exit, NotifySupervisor, Reply, SendSignal, SpawnWorker
from einhorn.core.events import (
    ChildExited,
    CommandReceived,
    Event,
    MasterStarted,
    SignalReceived,
    Tick,
    WorkerSpawned,
)
from einhorn.core.record import fields, replace
from einhorn.core.state import (
    Child,
    Generation,
    LaunchSpec,
    PendingSpawn,
    Reexec,
    ReexecPhase,
    ReexecPurpose,
    Rollout,
    RolloutPhase,
    State,
    Subscriber,
    UpgradeKind,
    UpgradeOptions,
    initial_state,
)
from spec import invariants
from spec.invariants import census, check_state, check_step, goal_problem, room_to_make


def worker(pid: int, version: int = 0, index: int | None = None, acked: bool = True, **changes: object) -> Child:
    child = Child(pid=pid, version=version, index=pid if index is None else index, spinup_at=0.0, acked=acked)
    return replace(child, **changes)  # type: ignore[arg-type]


def make(*children: Child, number: int = 1, **changes: object) -> State:
    config_changes = {k: changes.pop(k) for k in list(changes) if k in {f.name for f in fields(Config)}}
    state = State(
        config=Config(**config_changes),  # type: ignore[arg-type]
        children={c.pid: c for c in children},
        last_spinup_at=0.0,
    )
    state = replace(state, config=replace(state.config, number=number))
    return replace(state, **changes)  # type: ignore[arg-type]


def numbers(problems: Sequence[str]) -> set[str]:
    return {p.split(":")[0] for p in problems}


def steady(number: int = 1, **changes: object) -> State:
    return make(*(worker(i) for i in range(number)), number=number, **changes)


# --- S: states ------------------------------------------------------------------


def test_a_steady_pool_keeps_every_state_invariant() -> None:
    assert check_state(steady(3)) == []
    assert check_state(initial_state(Config())) == []


def test_s1_surplus_of_unsignaled_modern_workers() -> None:
    assert "S1" in numbers(check_state(make(worker(1), worker(2), number=1)))
    assert "S1" not in numbers(check_state(make(worker(1), worker(2, signaled=frozenset({"USR2"})), number=1)))


def test_s2_duplicate_indexes_among_workers_and_spawns() -> None:
    assert "S2" in numbers(check_state(make(worker(1, index=0), worker(2, index=0), number=2)))
    clash = replace(steady(1), pending={0: PendingSpawn(0, 0, 0, 0.0)}, next_spawn_id=1)
    assert "S2" in numbers(check_state(clash))
    signaled = make(worker(1, index=0, signaled=frozenset({"USR2"})), worker(2, index=1))
    assert "S2" not in numbers(check_state(signaled))


def test_s3_spinup_interval_capped_and_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "S3" not in numbers(check_state(steady(1, deaths_before_ack=100)))
    assert invariants.expected_spinup_interval(steady(1, deaths_before_ack=100)) == 30.0
    assert invariants.expected_spinup_interval(steady(1, deaths_before_ack=2, seconds=2.0)) == 4.5
    assert invariants.expected_spinup_interval(steady(1, deaths_before_ack=10_000, seconds=1e-9)) == 30.0
    assert "S3" not in numbers(check_state(steady(1, deaths_before_ack=7, seconds=0.1)))
    monkeypatch.setattr(pool, "spinup_interval", lambda state: 31.0)
    assert "S3" in numbers(check_state(steady(1)))
    monkeypatch.setattr(pool, "spinup_interval", lambda state: 2.0)
    assert "S3" in numbers(check_state(steady(1)))


def test_s4_a_waiting_spinup_has_a_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    waiting = make(number=1, clock=0.5, last_spinup_at=0.0, pacing=Pacing.INTERVAL)
    assert step.next_deadline(waiting) == 1.0
    assert "S4" not in numbers(check_state(waiting))
    monkeypatch.setattr(step, "next_deadline", lambda state: None)
    assert "S4" in numbers(check_state(waiting))
    monkeypatch.setattr(step, "next_deadline", lambda state: 1.5)
    assert "S4" in numbers(check_state(waiting))
    assert "S4" not in numbers(check_state(replace(waiting, respawn=False, shutdown_signal="USR2")))
    assert "S4" not in numbers(check_state(replace(waiting, clock=1.0)))


def test_s4_paced_by_acks_no_missing_worker_waits_for_a_free_slot() -> None:
    waiting = make(worker(1, index=0), number=3, max_unacked=2, clock=0.5, last_spinup_at=0.0)
    assert numbers(check_state(waiting)) == {"S4"}
    assert check_state(waiting)[0] == "S4: paced by ACKs, 2 workers missing and room for 2 more, but none started"
    one_on_its_way = replace(waiting, pending={0: PendingSpawn(0, 1, 0, 0.5)}, next_spawn_id=1)
    assert "S4" in numbers(check_state(one_on_its_way))  # room for one more
    full = replace(one_on_its_way, children={**waiting.children, 2: worker(2, index=2, acked=False)})
    assert "S4" not in numbers(check_state(full))  # 2 un-ACKed: max_unacked
    capped = replace(waiting, config=replace(waiting.config, max_upgrade_additional=0, number=2))
    assert "S4" in numbers(check_state(capped))
    assert "S4" not in numbers(check_state(replace(capped, pending={0: PendingSpawn(0, 1, 0, 0.5)}, next_spawn_id=1)))
    # a death streak brings the interval back: then it waits for its timer
    backing_off = replace(waiting, deaths_before_ack=1)
    assert "S4" not in numbers(check_state(backing_off))
    assert "S4" not in numbers(check_state(replace(waiting, reexec=Reexec(ReexecPurpose.RELOAD, (), 0, 9.0))))


def test_s5_old_workers_outside_an_upgrade() -> None:
    state = make(worker(1, version=0), worker(2, version=1), version=1)
    assert "S5" in numbers(check_state(state))
    assert "S5" not in numbers(check_state(replace(state, upgrading=UpgradeKind.SMOOTH)))


def test_s6_an_upgrade_that_is_done_is_not_in_progress() -> None:
    state = make(worker(1, version=1), version=1, upgrading=UpgradeKind.FLEET)
    assert "S6" in numbers(check_state(state))
    assert "S6" not in numbers(check_state(make(worker(1, version=1, acked=False), version=1, upgrading=UpgradeKind.FLEET)))


def test_s7_smooth_upgrade_keeps_no_more_old_workers_than_needed() -> None:
    state = make(worker(1), worker(2), worker(3, version=1), number=2, version=1, upgrading=UpgradeKind.SMOOTH)
    assert "S7" in numbers(check_state(state))
    assert "S7" not in numbers(check_state(replace(state, upgrading=UpgradeKind.FLEET)))
    ok = make(worker(1), worker(3, version=1), number=2, version=1, upgrading=UpgradeKind.SMOOTH)
    assert "S7" not in numbers(check_state(ok))


def test_s8_due_timers_have_fired() -> None:
    late_ack = make(worker(1, acked=False), clock=1.0, ack_timer=1.0)
    assert "S8" in numbers(check_state(late_ack))
    assert "S8" not in numbers(check_state(replace(late_ack, clock=0.5)))
    assert "S8" not in numbers(check_state(make(worker(1, acked=False), clock=9.0, ack_timer=None)))
    late_kill = make(worker(1, signaled=frozenset({"USR2"}), last_signaled_at=0.0), worker(2), clock=2.0, signal_timeout=2)
    assert "S8" in numbers(check_state(late_kill))
    assert "S8" not in numbers(check_state(replace(late_kill, clock=1.5)))
    killed = replace(late_kill, children={**late_kill.children, 1: replace(late_kill.children[1], killed=True)})
    assert "S8" not in numbers(check_state(killed))


def test_s9_messages() -> None:
    assert "S9: respawning is off but no shutdown signal is recorded" in check_state(make(worker(1), respawn=False))
    exited = make(worker(1), respawn=False, shutdown_signal="USR2", exit_code=0)
    assert "S9: exited with 0 while children or spawns remain" in check_state(exited)


@pytest.mark.parametrize(
    "state",
    [
        make(worker(1), number=1, children={2: worker(1)}),
        make(worker(1, version=2), version=1),
        make(worker(1, killed=True)),
        make(pending={0: PendingSpawn(0, 0, 0, 0.0)}, next_spawn_id=0),
        make(pending={3: PendingSpawn(2, 0, 0, 0.0)}, next_spawn_id=5),
        make(pending={0: PendingSpawn(0, 0, 2, 0.0)}, next_spawn_id=1, version=1),
        make(worker(1), deaths_before_ack=-1),
        make(worker(1), respawn=False),
        make(worker(1), respawn=False, shutdown_signal="USR2", exit_code=0),
        make(respawn=False, shutdown_signal="USR2", exit_code=0, pending={0: PendingSpawn(0, 0, 0, 0.0)}, next_spawn_id=1),
    ],
)
def test_s9_bookkeeping(state: State) -> None:
    assert "S9" in numbers(check_state(state))


def test_s9_quiet_on_a_clean_exit() -> None:
    assert "S9" not in numbers(check_state(make(respawn=False, shutdown_signal="USR2", exit_code=0)))
    assert "S9" not in numbers(check_state(make(worker(1), respawn=False, shutdown_signal="QUIT", exit_code=1)))


# --- T: transitions -------------------------------------------------------------


def step_numbers(before: State, event: Event, after: State, effects: Sequence[Effect]) -> set[str]:
    return numbers(check_step(before, event, after, effects))


TICK = Tick(0.0)


def test_real_steps_keep_every_transition_invariant() -> None:
    state = initial_state(Config(number=2, signal_timeout=2))
    events: list[Event] = [
        MasterStarted(0.0),
        WorkerSpawned(0, 10, 0.0),
        WorkerSpawned(1, 11, 0.0),
        Tick(1.0),
        CommandReceived(1, {"command": "die"}, 1.0),
        Tick(3.0),
        ChildExited(10, None, 9, 3.0),
        ChildExited(11, None, 9, 3.0),
    ]
    for event in events:
        after, effects = step.step(state, event)
        assert check_step(state, event, after, effects) == [], event
        assert check_state(after) == [], event
        state = after
    assert state.exit_code == 0


def test_t1_signals_only_live_known_children() -> None:
    before = steady(1)
    assert "T1" in step_numbers(before, TICK, before, [SendSignal(99, "USR2", Cause.UPGRADE)])
    gone = replace(before, children={})
    assert "T1" in step_numbers(before, ChildExited(0, 0, None, 0.0), gone, [SendSignal(0, "USR2", Cause.UPGRADE)])
    assert "T1" not in step_numbers(before, TICK, before, [SendSignal(0, "USR2", Cause.UPGRADE)])
    spawning = replace(make(), pending={0: PendingSpawn(0, 0, 0, 0.0)}, next_spawn_id=1)
    spawned = make(worker(5, index=0))
    assert "T1" not in step_numbers(spawning, WorkerSpawned(0, 5, 0.0), spawned, [SendSignal(5, "USR2", Cause.UPGRADE)])
    assert "T1" in step_numbers(spawning, WorkerSpawned(1, 5, 0.0), spawned, [SendSignal(5, "USR2", Cause.UPGRADE)])


def test_t2_no_spinup_while_respawn_is_off() -> None:
    before = make(number=1)
    after = replace(before, pending={0: PendingSpawn(0, 0, 0, 0.0)}, next_spawn_id=1)
    spawn = [SpawnWorker(0, 0, 0)]
    assert "T2" not in step_numbers(before, TICK, after, spawn)
    off = replace(after, respawn=False, shutdown_signal="USR2")
    assert "T2" in step_numbers(before, TICK, off, spawn)
    assert "T2" in step_numbers(replace(before, respawn=False, shutdown_signal="USR2"), TICK, after, spawn)


def test_t3_spawns_are_new_recorded_current_and_at_the_lowest_free_index() -> None:
    before = make(worker(1, index=0), number=3, next_spawn_id=4)
    after = replace(before, pending={4: PendingSpawn(4, 1, 0, 0.0), 5: PendingSpawn(5, 2, 0, 0.0)}, next_spawn_id=6)
    good = [SpawnWorker(4, 1, 0), SpawnWorker(5, 2, 0)]
    assert "T3" not in step_numbers(before, TICK, after, good)
    assert "T3" in step_numbers(before, TICK, after, [SpawnWorker(3, 1, 0)])
    assert "T3" in step_numbers(before, TICK, before, [SpawnWorker(4, 1, 0)])
    assert "T3" in step_numbers(before, TICK, after, [SpawnWorker(4, 2, 0)])
    assert "T3" in step_numbers(before, TICK, replace(after, version=1), good)
    wrong_index = replace(before, pending={4: PendingSpawn(4, 3, 0, 0.0)}, next_spawn_id=5)
    assert "T3" in step_numbers(before, TICK, wrong_index, [SpawnWorker(4, 3, 0)])
    reused = replace(before, pending={4: PendingSpawn(4, 0, 0, 0.0)}, next_spawn_id=5)
    assert "T3" in step_numbers(before, TICK, reused, [SpawnWorker(4, 0, 0)])


def test_t4_no_signal_twice_on_the_masters_own_initiative() -> None:
    before = make(worker(1, signaled=frozenset({"USR2"})), worker(2))
    assert "T4" in step_numbers(before, TICK, before, [SendSignal(1, "USR2", Cause.UPGRADE)])
    assert "T4" in step_numbers(before, TICK, before, [SendSignal(2, "USR2", Cause.UPGRADE), SendSignal(2, "USR2", Cause.UPGRADE)])
    assert "T4" not in step_numbers(before, TICK, before, [SendSignal(1, "TERM", Cause.UPGRADE), SendSignal(2, "USR2", Cause.UPGRADE)])
    # Orders may be re-sent: the shutdown's signal, the operator's.
    assert "T4" not in step_numbers(before, SignalReceived("INT", 0.0), before, [SendSignal(1, "USR2", Cause.SHUTDOWN)])
    assert "T4" not in step_numbers(before, CommandReceived(1, {"command": "die"}, 0.0), before, [SendSignal(1, "USR2", Cause.OPERATOR)])
    # The master's own USR2 in the same step as an operator's order is still its own.
    assert "T4" in step_numbers(before, CommandReceived(1, {"command": "die", "args": ["TERM"]}, 0.0), before, [SendSignal(1, "USR2", Cause.UPGRADE)])
    assert "T4" in step_numbers(before, CommandReceived(1, {"command": "signal", "args": ["USR2"]}, 0.0), before, [SendSignal(1, "USR2", Cause.SURPLUS)])


def test_t5_one_sigkill_after_the_timeout() -> None:
    signaled = worker(1, signaled=frozenset({"USR2"}), last_signaled_at=0.0)
    before = make(signaled, clock=2.0, signal_timeout=2)
    after = make(replace(signaled, killed=True), clock=2.0, signal_timeout=2)
    kill = [SendSignal(1, "KILL", Cause.ESCALATION)]
    assert "T5" not in step_numbers(before, Tick(2.0), after, kill)
    assert "T5" in step_numbers(before, Tick(2.0), after, kill + kill)
    assert "T5" in step_numbers(after, Tick(2.0), after, kill)
    assert "T5" in step_numbers(replace(before, clock=1.0), Tick(1.0), replace(after, clock=1.0), kill)
    assert "T5" in step_numbers(before, Tick(2.0), before, kill)
    no_timeout = replace(before, config=replace(before.config, signal_timeout=None))
    assert "T5" in step_numbers(no_timeout, Tick(2.0), replace(after, config=no_timeout.config), kill)
    assert "T5" in step_numbers(make(), Tick(2.0), after, kill)
    unsignaled = make(worker(1), clock=2.0, signal_timeout=2)
    assert "T5" in step_numbers(unsignaled, Tick(2.0), after, kill)
    die_kill = CommandReceived(1, {"command": "die", "args": ["KILL"]}, 2.0)
    assert "T5" not in step_numbers(after, die_kill, after, [SendSignal(1, "KILL", Cause.OPERATOR)])


def test_t5_a_worker_spawned_during_a_kill_shutdown_gets_its_kill() -> None:
    before = make(respawn=False, shutdown_signal="KILL", pending={0: PendingSpawn(0, 0, 0, 0.0)}, next_spawn_id=1)
    after = make(worker(7, index=0, signaled=frozenset({"KILL"}), last_signaled_at=0.0), respawn=False, shutdown_signal="KILL")
    assert check_step(before, WorkerSpawned(0, 7, 0.0), after, [SendSignal(7, "KILL", Cause.SHUTDOWN)]) == []


def test_t6_an_ack_resets_the_death_streak() -> None:
    before = make(worker(1, acked=False), deaths_before_ack=2)
    acked = make(worker(1), deaths_before_ack=2)
    assert "T6" in step_numbers(before, TICK, acked, [])
    assert "T6" not in step_numbers(before, TICK, replace(acked, deaths_before_ack=0), [])
    assert "T6" not in step_numbers(before, TICK, before, [])
    fresh = make(worker(2), deaths_before_ack=1)
    assert "T6" in step_numbers(make(deaths_before_ack=1), TICK, fresh, [])


def test_t7_smooth_upgrade_stops_old_workers_only_for_acked_replacements() -> None:
    before = make(worker(1), worker(2), worker(3, version=1, acked=False), number=2, version=1, upgrading=UpgradeKind.SMOOTH)
    early = replace(before, children={**before.children, 1: replace(before.children[1], signaled=frozenset({"USR2"}))})
    assert "T7" in step_numbers(before, TICK, early, [SendSignal(1, "USR2", Cause.UPGRADE)])
    acked = replace(early, children={**early.children, 3: replace(early.children[3], acked=True)})
    assert "T7" not in step_numbers(before, TICK, acked, [SendSignal(1, "USR2", Cause.UPGRADE)])
    assert "T7" not in step_numbers(before, SignalReceived("USR2", 0.0), early, [SendSignal(1, "USR2", Cause.SHUTDOWN)])
    assert "T7" not in step_numbers(before, TICK, early, [SendSignal(3, "USR2", Cause.UPGRADE)])


def test_t7_make_room_exemption_for_a_capped_upgrade() -> None:
    before = make(worker(1, acked=False), version=1, upgrading=UpgradeKind.SMOOTH, max_upgrade_additional=0)
    assert room_to_make(before) == 1
    after = make(worker(1, acked=False, signaled=frozenset({"USR2"})), version=1, upgrading=UpgradeKind.SMOOTH, max_upgrade_additional=0)
    assert check_step(before, TICK, after, [SendSignal(1, "USR2", Cause.UPGRADE)]) == []
    uncapped = replace(after, config=replace(after.config, max_upgrade_additional=None))
    assert "T7" in step_numbers(replace(before, config=uncapped.config), TICK, uncapped, [SendSignal(1, "USR2", Cause.UPGRADE)])


def test_t8_fleet_upgrade_stops_no_old_worker_before_it_is_done() -> None:
    before = make(worker(1), worker(2), worker(3, version=1), number=2, version=1, upgrading=UpgradeKind.FLEET)
    after = replace(before, children={**before.children, 1: replace(before.children[1], signaled=frozenset({"USR2"}))})
    assert "T8" in step_numbers(before, TICK, after, [SendSignal(1, "USR2", Cause.UPGRADE)])
    done = replace(after, upgrading=None)
    assert "T8" not in step_numbers(before, TICK, done, [SendSignal(1, "USR2", Cause.UPGRADE)])


def test_t9_exit_once_and_cleanly() -> None:
    gone = make(respawn=False, shutdown_signal="USR2", exit_code=0)
    before = make(worker(1, signaled=frozenset({"USR2"})), respawn=False, shutdown_signal="USR2")
    exited = ChildExited(1, 0, None, 0.0)
    assert check_step(before, exited, gone, [Exit(0)]) == []
    assert "T9" in step_numbers(before, exited, replace(gone, children=before.children), [Exit(0)])
    assert "T9" in step_numbers(gone, exited, gone, [Exit(0)])
    assert "T9" in step_numbers(before, exited, gone, [Exit(0), Exit(0)])
    assert "T9" in step_numbers(before, exited, replace(gone, exit_code=None), [Exit(0)])
    assert "T9" in step_numbers(before, exited, replace(gone, exit_code=1), [Exit(1)])
    quit_after = replace(before, exit_code=1, shutdown_signal="QUIT")
    assert "T9" not in step_numbers(before, SignalReceived("QUIT", 0.0), quit_after, [Exit(1), SendSignal(1, "QUIT", Cause.SHUTDOWN)])
    assert "T9" in step_numbers(gone, TICK, gone, [SendSignal(1, "USR2", Cause.UPGRADE)])
    spawning = replace(gone, pending={0: PendingSpawn(0, 0, 0, 0.0)}, next_spawn_id=1)
    assert "T9" in step_numbers(gone, TICK, spawning, [SpawnWorker(0, 0, 0)])


def test_t10_spinups_respect_max_upgrade_additional() -> None:
    before = make(worker(1), worker(2, version=1, acked=False), version=1, upgrading=UpgradeKind.SMOOTH, max_upgrade_additional=1)
    after = replace(before, pending={0: PendingSpawn(0, 0, 1, 0.0)}, next_spawn_id=1)
    assert "T10" in step_numbers(before, TICK, after, [SpawnWorker(0, 0, 1)])
    roomy = replace(after, config=replace(after.config, max_upgrade_additional=2))
    assert "T10" not in step_numbers(replace(before, config=roomy.config), TICK, roomy, [SpawnWorker(0, 0, 1)])


def test_t11_gradual_spinups_one_at_a_time_after_the_interval_within_max_unacked() -> None:
    before = make(worker(1, index=0), number=3, max_unacked=1, clock=1.0, last_spinup_at=0.0, pacing=Pacing.INTERVAL)
    one = replace(before, pending={0: PendingSpawn(0, 1, 0, 1.0)}, next_spawn_id=1, last_spinup_at=1.0)
    assert check_step(before, Tick(1.0), one, [SpawnWorker(0, 1, 0)]) == []
    two = replace(one, pending={**one.pending, 1: PendingSpawn(1, 2, 0, 1.0)}, next_spawn_id=2)
    assert "T11" in step_numbers(before, Tick(1.0), two, [SpawnWorker(0, 1, 0), SpawnWorker(1, 2, 0)])
    early = replace(before, clock=0.5)
    assert "T11" in step_numbers(early, Tick(0.5), replace(one, clock=0.5), [SpawnWorker(0, 1, 0)])
    busy = make(worker(1, index=0, acked=False), number=3, max_unacked=1, clock=1.0, last_spinup_at=0.0, pacing=Pacing.INTERVAL)
    busy_after = replace(busy, pending={0: PendingSpawn(0, 1, 0, 1.0)}, next_spawn_id=1, last_spinup_at=1.0)
    assert "T11" in step_numbers(busy, Tick(1.0), busy_after, [SpawnWorker(0, 1, 0)])
    first = replace(before, last_spinup_at=None)
    assert "T11" not in step_numbers(first, Tick(1.0), two, [SpawnWorker(0, 1, 0), SpawnWorker(1, 2, 0)])
    fleet = replace(before, reexec=Reexec(ReexecPurpose.FLEET_UPGRADE, (), 0, 0.0, ReexecPhase.EXECUTING))
    restored = MasterStarted(1.0, restored=True)
    assert "T11" not in step_numbers(fleet, restored, two, [SpawnWorker(0, 1, 0), SpawnWorker(1, 2, 0)])
    smooth = replace(before, reexec=Reexec(ReexecPurpose.SMOOTH_UPGRADE, (), 0, 0.0, ReexecPhase.EXECUTING))
    assert "T11" in step_numbers(smooth, restored, two, [SpawnWorker(0, 1, 0), SpawnWorker(1, 2, 0)])


def test_t11_paced_by_acks_several_at_once_at_any_time_within_max_unacked() -> None:
    before = make(worker(1, index=0), number=4, max_unacked=2, clock=0.25, last_spinup_at=0.0)
    two = replace(
        before, pending={0: PendingSpawn(0, 1, 0, 0.25), 1: PendingSpawn(1, 2, 0, 0.25)}, next_spawn_id=2, last_spinup_at=0.25
    )
    assert check_step(before, Tick(0.25), two, [SpawnWorker(0, 1, 0), SpawnWorker(1, 2, 0)]) == []
    three = replace(two, pending={**two.pending, 2: PendingSpawn(2, 3, 0, 0.25)}, next_spawn_id=3)
    problems = check_step(before, Tick(0.25), three, [SpawnWorker(0, 1, 0), SpawnWorker(1, 2, 0), SpawnWorker(2, 3, 0)])
    assert problems == ["T11: 3 un-ACKed new workers > max_unacked 2"]
    roomy = replace(three, config=replace(three.config, max_unacked=5))
    four = replace(roomy, pending={**three.pending, 3: PendingSpawn(3, 4, 0, 0.25)}, next_spawn_id=4)
    effects = [SpawnWorker(i, i + 1, 0) for i in range(4)]
    assert check_step(replace(before, config=roomy.config), Tick(0.25), four, effects) == ["T11: spun up 1 more workers than were missing"]
    # with a death streak after the step, the interval rule applies again
    backing_off = replace(two, deaths_before_ack=1)
    assert "T11" in step_numbers(before, Tick(0.25), backing_off, [SpawnWorker(0, 1, 0), SpawnWorker(1, 2, 0)])


def test_t6_a_death_before_ack_or_young_under_ack_pacing_leaves_a_streak() -> None:
    before = make(worker(1, acked=False), worker(2, spinup_at=0.0), number=2, clock=0.5)
    gone = replace(before, children={2: before.children[2]})
    exited = ChildExited(1, 1, None, 0.5)
    assert "T6" in step_numbers(before, exited, gone, [])
    assert "T6" not in step_numbers(before, exited, replace(gone, deaths_before_ack=1), [])
    young = ChildExited(2, 1, None, 0.5)
    left = replace(before, children={1: before.children[1]})
    assert "T6" in step_numbers(before, young, left, [])  # ACKed, but 0.5 s after its start: seconds is 1
    assert "T6" not in step_numbers(replace(before, clock=1.0), replace(young, now=1.0), replace(left, clock=1.0), [])
    interval = replace(before, config=replace(before.config, pacing=Pacing.INTERVAL))
    assert "T6" not in step_numbers(interval, young, replace(left, config=interval.config), [])
    told = replace(before, children={**before.children, 2: replace(before.children[2], signaled=frozenset({"USR2"}))})
    assert "T6" not in step_numbers(told, young, left, [])


# --- helpers and the liveness goal ---------------------------------------------------


def test_t15_each_cause_fits_its_step() -> None:
    before = make(worker(1), worker(2))
    shutting = replace(before, respawn=False, shutdown_signal="TERM")
    die = CommandReceived(1, {"command": "die", "args": ["TERM"]}, 0.0)
    assert "T15" not in step_numbers(before, die, shutting, [SendSignal(1, "TERM", Cause.OPERATOR)])
    assert "T15" in step_numbers(before, TICK, before, [SendSignal(1, "TERM", Cause.OPERATOR)])  # no order on a tick
    assert "T15" not in step_numbers(before, SignalReceived("TERM", 0.0), shutting, [SendSignal(1, "TERM", Cause.SHUTDOWN)])
    assert "T15" in step_numbers(before, SignalReceived("HUP", 0.0), before, [SendSignal(1, "TERM", Cause.SHUTDOWN)])
    assert "T15" in step_numbers(before, SignalReceived("TERM", 0.0), shutting, [SendSignal(1, "USR2", Cause.SHUTDOWN)])
    assert "T15" in step_numbers(before, TICK, before, [SendSignal(1, "USR2", Cause.ESCALATION)])
    for cause in (Cause.UPGRADE, Cause.MAKE_ROOM, Cause.SURPLUS):
        assert "T15" in step_numbers(before, TICK, before, [SendSignal(1, "KILL", cause)])
        assert "T15" not in step_numbers(before, TICK, before, [SendSignal(1, "USR2", cause)])
    graceful_term = replace(before, config=replace(before.config, graceful_signal="TERM"))
    for cause in (Cause.UPGRADE, Cause.MAKE_ROOM, Cause.SURPLUS):  # own decisions use the graceful signal, whichever it is
        assert "T15" in step_numbers(graceful_term, TICK, graceful_term, [SendSignal(1, "USR2", cause)])
        assert "T15" not in step_numbers(graceful_term, TICK, graceful_term, [SendSignal(1, "TERM", cause)])


def test_census_counts() -> None:
    state = make(
        worker(1, version=0),
        worker(2, version=0, signaled=frozenset({"USR2"})),
        worker(3, version=1),
        worker(4, version=1, acked=False),
        worker(5, version=1, signaled=frozenset({"USR2"})),
        worker(7, version=0, index=10, acked=False),
        number=4,
        version=1,
        pending={0: PendingSpawn(0, 7, 1, 0.0), 1: PendingSpawn(1, 8, 0, 0.0)},
        next_spawn_id=2,
    )
    assert census(state) == invariants.Census(
        workers=6, old=(1, 7), unsignaled_modern=2, ack_count=1, unacked_modern=2, missing=0, total=8, busy=6,
        serving=2, old_unacked=1,
    )


def test_room_to_make() -> None:
    capped = make(worker(1), worker(2), worker(3, version=1), number=2, version=1, upgrading=UpgradeKind.FLEET, max_upgrade_additional=1)
    assert room_to_make(capped) == 1
    assert room_to_make(replace(capped, config=replace(capped.config, max_upgrade_additional=2))) == 0
    assert room_to_make(replace(capped, config=replace(capped.config, max_upgrade_additional=None))) == 0
    assert room_to_make(replace(capped, upgrading=None)) == 1  # old workers the floor keeps (after a rollback)
    assert room_to_make(replace(capped, upgrading=None, children={3: capped.children[3]})) == 0  # no old worker
    assert room_to_make(replace(capped, respawn=False, shutdown_signal="USR2")) == 0
    unacked = replace(capped, children={**capped.children, 3: replace(capped.children[3], acked=False)})
    assert room_to_make(unacked) == 0
    spawning = replace(capped, pending={0: PendingSpawn(0, 5, 1, 0.0)}, next_spawn_id=1)
    assert room_to_make(spawning) == 0
    full = replace(capped, config=replace(capped.config, max_upgrade_additional=0))
    assert room_to_make(full) == 2
    done = replace(capped, config=replace(capped.config, number=1))
    assert room_to_make(done) == 0


def test_goal() -> None:
    assert goal_problem(steady(2)) is None and invariants.converged(steady(2))
    assert (goal_problem(make(worker(1), number=2)) or "").startswith("L1")
    assert (goal_problem(make(worker(1), worker(2, version=1), version=1, number=1)) or "").startswith("L1: old")
    assert (goal_problem(replace(steady(1), upgrading=UpgradeKind.SMOOTH)) or "").startswith("L2")
    assert (goal_problem(replace(steady(1), reexec=Reexec(ReexecPurpose.RELOAD, (), 0, 0.0, ReexecPhase.EXECUTING))) or "").startswith("L2")
    dying = replace(steady(1), respawn=False, shutdown_signal="USR2")
    assert (goal_problem(dying) or "").startswith("L3")
    assert goal_problem(replace(dying, exit_code=1)) is None
    assert invariants.check_invariants is check_state


def test_made_room_is_exactly_the_capped_case() -> None:
    made_room = invariants._made_room
    # number 2, N 1: after stopping one old worker, 2 unsignaled remain (old 1 + new ACKed 1) = number + N - 1
    after = make(
        worker(1, signaled=frozenset({"USR2"})),
        worker(2),
        worker(3, version=1),
        number=2,
        version=1,
        upgrading=UpgradeKind.FLEET,
        max_upgrade_additional=1,
    )
    assert made_room(after)
    assert not made_room(replace(after, config=replace(after.config, max_upgrade_additional=None)))
    assert not made_room(replace(after, upgrading=None))
    assert not made_room(replace(after, respawn=False, shutdown_signal="USR2"))
    one_missing_unacked = replace(after, children={**after.children, 3: worker(3, version=1, acked=False)})
    assert not made_room(one_missing_unacked)
    none_missing = replace(after, config=replace(after.config, number=1))
    assert not made_room(none_missing)
    two_unacked = replace(
        after,
        config=replace(after.config, number=3),
        children={**after.children, 3: worker(3, version=1, acked=False), 4: worker(4, version=1, acked=False)},
    )
    assert not made_room(two_unacked)
    too_many = replace(after, children={**after.children, 2: worker(2, signaled=frozenset({"USR2"}))})
    assert not made_room(too_many)  # busy 1 < number + N - 1 = 2: one more stopped than needed
    wider = replace(after, config=replace(after.config, number=2, max_upgrade_additional=2))
    assert not made_room(wider)  # busy 2 < 3


def test_goal_messages() -> None:
    dying = replace(steady(1), respawn=False, shutdown_signal="USR2")
    assert goal_problem(dying) == "L3: respawning is off but the master has not exited"
    assert goal_problem(replace(dying, respawn=True, shutdown_signal=None, exit_code=0)) is None
    assert goal_problem(make(worker(1), worker(2, version=1), version=1)) == "L1: old workers [1] still unsignaled"
    assert goal_problem(make(worker(1), number=2)) == "L1: 1 ACKed modern workers, want 2"
    assert goal_problem(replace(steady(1), upgrading=UpgradeKind.SMOOTH)) == "L2: smooth upgrade still in progress (1 / 1 ACKs)"
    assert goal_problem(replace(steady(1), reexec=Reexec(ReexecPurpose.RELOAD, (), 0, 0.0, ReexecPhase.EXECUTING))) == "L2: re-exec (reload) still in progress"
    assert not invariants.converged(dying)


def test_t4_only_the_event_itself_makes_a_repeat_legitimate() -> None:
    # During a shutdown, a step that is not a spawn may not re-send the shutdown signal on its own.
    before = make(worker(1, signaled=frozenset({"USR2"})), respawn=False, shutdown_signal="USR2")
    assert "T4" in step_numbers(before, TICK, before, [SendSignal(1, "USR2", Cause.UPGRADE)])
    # A KILL earlier in the step does not hide a repeat after it.
    live = make(worker(1, signaled=frozenset({"USR2"}), last_signaled_at=0.0), clock=5.0, signal_timeout=2)
    problems = check_step(live, TICK, live, [SendSignal(1, "KILL", Cause.ESCALATION), SendSignal(1, "USR2", Cause.UPGRADE)])
    assert any(p.startswith("T4: USR2 sent again to child 1") for p in problems), problems


def test_t3_a_spawn_id_below_next_is_reused_even_if_recorded() -> None:
    before = make(worker(1, index=0), number=2, next_spawn_id=4)
    after = replace(before, pending={3: PendingSpawn(3, 1, 0, 0.0)})
    assert "T3: spawn id 3 reused" in check_step(before, TICK, after, [SpawnWorker(3, 1, 0)])


def test_census_walks_every_child_whatever_comes_first() -> None:
    signaled_new = worker(2, version=1, signaled=frozenset({"USR2"}))
    state = make(number=4, version=1)
    state = replace(
        state,
        children={2: signaled_new, 3: worker(3, version=1, acked=False), 4: worker(4, version=1, acked=False), 5: worker(5, version=1)},
    )
    assert census(state) == invariants.Census(
        workers=4, old=(), unsignaled_modern=3, ack_count=1, unacked_modern=2, missing=0, total=4, busy=3,
        serving=1, old_unacked=0,
    )


def test_t9_messages_and_edges() -> None:
    alive = make(respawn=True)
    assert "T9" in step_numbers(alive, TICK, replace(alive, exit_code=0), [Exit(0)])
    dying = make(worker(1), respawn=False, shutdown_signal="USR2")
    assert "T9" in step_numbers(dying, TICK, replace(dying, exit_code=1), [Exit(1)])
    assert "T9" in step_numbers(dying, SignalReceived("INT", 0.0), replace(dying, exit_code=1), [Exit(1)])
    gone = replace(make(respawn=False, shutdown_signal="USR2"), exit_code=0)
    assert "T9: the master acted after it exited" in check_step(gone, TICK, gone, [SendSignal(1, "USR2", Cause.UPGRADE)])


def stopped(state: State, *pids: int) -> State:
    """`state` with `pids` recorded as sent USR2."""
    usr2 = frozenset({"USR2"})
    return replace(state, children={**state.children, **{p: replace(state.children[p], signaled=usr2) for p in pids}})


def usr2(*pids: int, cause: Cause = Cause.UPGRADE) -> list[Effect]:
    return [SendSignal(p, "USR2", cause) for p in pids]


def test_t12_the_master_never_stops_serving_workers_below_the_floor() -> None:
    # Issue 10: a second upgrade while the first one's new workers never ACKed.
    before = make(
        worker(1), worker(2), worker(3, version=1, acked=False), worker(4, version=1, acked=False),
        number=2, version=2, upgrading=UpgradeKind.SMOOTH,
    )
    problems = check_step(before, MasterStarted(0.0, restored=True), stopped(before, 1, 2), usr2(1, 2))
    assert problems == ["T12: stopped ACKed workers [1, 2] on its own initiative, leaving 0 serving < min(number 2, 2 serving before)"]
    assert "T12" in step_numbers(before, TICK, stopped(before, 1, 3), usr2(1, 3))
    assert "T12" not in step_numbers(before, TICK, stopped(before, 3, 4), usr2(3, 4))  # they serve nothing
    # More than `number` serve: down to `number`, not below.
    wide = make(worker(1), worker(2), worker(3, version=2), number=2, version=2, upgrading=UpgradeKind.FLEET)
    assert "T12" not in step_numbers(wide, TICK, stopped(wide, 1), usr2(1))
    assert "T12" in step_numbers(wide, TICK, stopped(wide, 1, 2), usr2(1, 2))
    # A worker ACKed in the step serves when it is stopped; one that crashed in it is not the master's doing.
    booting = replace(wide, children={**wide.children, 3: replace(wide.children[3], acked=False)})
    assert "T12" in step_numbers(booting, TICK, stopped(wide, 1, 3), usr2(1, 3))
    crashed = replace(wide, children={p: c for p, c in wide.children.items() if p != 3})
    assert "T12" in step_numbers(wide, ChildExited(3, 1, None, 0.0), stopped(crashed, 1), usr2(1))
    assert "T12" not in step_numbers(wide, ChildExited(3, 1, None, 0.0), crashed, [])


def test_t12_exempts_what_the_operator_orders_by_its_own_number() -> None:
    before = make(worker(1), worker(2), worker(3, version=1, acked=False), number=2, version=1, upgrading=UpgradeKind.SMOOTH)
    everyone = stopped(before, 1, 2, 3)
    for event, cause in (
        (CommandReceived(1, {"command": "die"}, 0.0), Cause.OPERATOR),
        (CommandReceived(1, {"command": "signal", "args": ["USR2"]}, 0.0), Cause.OPERATOR),
        (SignalReceived("INT", 0.0), Cause.SHUTDOWN),
        (SignalReceived("USR2", 0.0), Cause.SHUTDOWN),
    ):
        assert "T12" not in step_numbers(before, event, everyone, usr2(1, 2, 3, cause=cause)), event
    term = CommandReceived(1, {"command": "die", "args": ["TERM"]}, 0.0)
    assert "T12" in step_numbers(before, term, everyone, usr2(1, 2, 3))  # the master's own USR2, not the TERM asked for
    # `dec` and `set_workers` lower `number` itself: the floor is min(the new number, serving before).
    three = make(worker(1), worker(2), worker(3), number=3)
    two = replace(stopped(three, 3), config=replace(three.config, number=2))
    dec = CommandReceived(1, {"command": "dec"}, 0.0)
    assert "T12" not in step_numbers(three, dec, two, usr2(3, cause=Cause.SURPLUS))
    assert "T12" in step_numbers(three, dec, stopped(two, 2), usr2(2, 3, cause=Cause.SURPLUS))


def test_l2_accepts_only_an_upgrade_the_floor_holds_at_its_capacity_cap() -> None:
    held = make(worker(1), worker(2), number=2, version=1, upgrading=UpgradeKind.SMOOTH, max_upgrade_additional=0)
    assert room_to_make(held) == 1 and invariants.held_at_capacity(held) and goal_problem(held) is None
    assert goal_problem(replace(held, reexec=Reexec(ReexecPurpose.SMOOTH_UPGRADE, (), 0, 0.0, ReexecPhase.EXECUTING))) == "L2: re-exec (smooth_upgrade) still in progress"
    booting = make(worker(2, acked=False), worker(1), number=2, version=1, upgrading=UpgradeKind.SMOOTH, max_upgrade_additional=0)
    assert not invariants.held_at_capacity(booting)  # the un-ACKed one could make room
    assert goal_problem(booting) == "L2: smooth upgrade still in progress (0 / 2 ACKs)"
    spawning = replace(held, pending={0: PendingSpawn(0, 5, 0, 0.0)}, next_spawn_id=1)
    assert room_to_make(spawning) == 2 and not invariants.held_at_capacity(spawning)
    fleet = make(worker(1), worker(2), worker(3, version=1), number=2, version=1, upgrading=UpgradeKind.FLEET, max_upgrade_additional=1)
    assert room_to_make(fleet) == 1 and not invariants.held_at_capacity(fleet)  # 3 serve: one old one may go
    uncapped = replace(held, config=replace(held.config, max_upgrade_additional=None))
    assert not invariants.held_at_capacity(uncapped)


def test_t11_messages() -> None:
    before = make(worker(1, index=0), number=3, max_unacked=5, clock=1.0, last_spinup_at=0.0, pacing=Pacing.INTERVAL)
    two = replace(before, pending={0: PendingSpawn(0, 1, 0, 1.0), 1: PendingSpawn(1, 2, 0, 1.0)}, next_spawn_id=2)
    problems = check_step(before, Tick(1.0), two, [SpawnWorker(0, 1, 0), SpawnWorker(1, 2, 0)])
    assert problems == ["T11: gradual spin-up started 2 workers at once"]
    early = make(worker(1, index=0), number=3, max_unacked=5, clock=0.75, last_spinup_at=0.25, pacing=Pacing.INTERVAL)
    one = replace(early, pending={0: PendingSpawn(0, 1, 0, 0.75)}, next_spawn_id=1, last_spinup_at=0.75)
    problems = check_step(early, Tick(0.75), one, [SpawnWorker(0, 1, 0)])
    assert problems == ["T11: spin-up 0.5s after the last one, interval is 1.0s"]


def test_s3_tolerates_rounding_only(monkeypatch: pytest.MonkeyPatch) -> None:
    state = steady(1, deaths_before_ack=10)
    monkeypatch.setattr(pool, "spinup_interval", lambda s: 30.0 * (1 - 1e-10))
    assert "S3" not in numbers(check_state(state))
    monkeypatch.setattr(pool, "spinup_interval", lambda s: 30.0 * (1 - 1e-6))
    assert "S3" in numbers(check_state(state))


def test_t4_leaves_an_escalation_after_die_kill_to_t5() -> None:
    # `die KILL` recorded KILL; the escalation's own SIGKILL later is T5's business, not a T4 repeat.
    dead_man = worker(1, signaled=frozenset({"KILL"}), last_signaled_at=0.0)
    before = make(dead_man, respawn=False, shutdown_signal="KILL", clock=2.0, signal_timeout=2)
    after = replace(before, children={1: replace(dead_man, killed=True)})
    assert check_step(before, Tick(2.0), after, [SendSignal(1, "KILL", Cause.ESCALATION)]) == []


def test_t16_what_the_supervisor_hears_fits_the_step() -> None:
    ready = NotifySupervisor((("READY", "1"), ("STATUS", "x")))
    full = make(worker(1), supervised=True)
    assert "T16" not in step_numbers(full, TICK, full, [ready])
    alone = replace(full, config=replace(full.config, supervised=False))
    assert "T16" in step_numbers(alone, TICK, alone, [ready])  # no supervisor
    assert "T16" in step_numbers(full, TICK, full, [NotifySupervisor((("READY", "1"),))])  # no STATUS
    empty = make(worker(1, acked=False), supervised=True)
    assert "T16" in step_numbers(empty, TICK, empty, [ready])  # the pool is not ACKed
    upgrading = replace(full, upgrading=UpgradeKind.SMOOTH)
    assert "T16" in step_numbers(full, TICK, upgrading, [ready])  # still reloading
    reloading = NotifySupervisor((("RELOADING", "1"), ("MONOTONIC_USEC", "0"), ("STATUS", "x")))
    assert "T16" not in step_numbers(full, TICK, upgrading, [reloading])
    assert "T16" in step_numbers(upgrading, TICK, upgrading, [reloading])  # nothing started in this step
    stopping = NotifySupervisor((("STOPPING", "1"), ("STATUS", "x")))
    assert "T16" not in step_numbers(full, TICK, replace(full, respawn=False), [stopping])
    assert "T16" in step_numbers(full, TICK, full, [stopping])
    assert "T16" not in step_numbers(full, TICK, full, [NotifySupervisor((("WATCHDOG", "1"),))])


# --- generations and rollouts (S12-S16, T17-T20) ------------------------------------------------

SPEC_A = LaunchSpec(("./server",), "/srv/releases/a/server", "/srv/releases/a", (), "USR2")
SPEC_B = LaunchSpec(("./server",), "/srv/releases/b/server", "/srv/releases/b", (), "USR2")


def canary(phase: RolloutPhase = RolloutPhase.CANARY, **changes: object) -> Rollout:
    rollout = Rollout(1, 0, UpgradeKind.SMOOTH, UpgradeOptions(1, 5.0, 20.0), 0.0, phase)
    return replace(rollout, **changes)  # type: ignore[arg-type]


def rolled(state: State, version: int = 1) -> State:
    generations = tuple(replace(g, rolled_back_because="canary died") if g.version == version else g for g in state.generations)
    return replace(state, generations=generations)


def two_generations(*children: Child, number: int = 2, **changes: object) -> State:
    return make(*children, number=number, generations=(Generation(0, SPEC_A), Generation(1, SPEC_B)), **changes)


def test_s12_generations_one_per_version_and_the_needed_ones_known() -> None:
    assert check_state(two_generations(worker(0), worker(1))) == []
    state = make(worker(0), generations=(Generation(1, SPEC_B), Generation(0, SPEC_A)))
    assert "S12" in numbers(check_state(state))
    state = make(worker(0), generations=(Generation(0, SPEC_A),), rollout=canary(), next_spawn_id=0)
    assert [p for p in check_state(state) if p.startswith("S12")] == ["S12: no generation for versions [1] (generations [0])"]


def test_s13_the_rollout_phase_fits_the_pool() -> None:
    pool_ = (worker(0), worker(1), worker(2, version=1, index=2))
    assert check_state(two_generations(*pool_, rollout=canary())) == []
    assert "S13" in numbers(check_state(two_generations(*pool_, rollout=canary(), upgrading=UpgradeKind.SMOOTH)))
    finishing = two_generations(*pool_, rollout=canary(RolloutPhase.FINISHING), version=1)
    assert "S13" in numbers(check_state(finishing))  # no upgrade marked
    assert "S13" in numbers(check_state(replace(rolled(two_generations(worker(0, version=1))), version=1)))


def test_s14_after_a_rollback_only_the_floor_keeps_a_rolled_back_worker() -> None:
    held = rolled(two_generations(worker(0), worker(1, version=1)))  # 2 serve of 2: the floor keeps it
    assert "S14" not in numbers(check_state(held))
    surplus = rolled(two_generations(worker(0), worker(1), worker(2, version=1)))
    assert "S14" in numbers(check_state(surplus))
    unacked = rolled(two_generations(worker(0), worker(1), worker(2, version=1, acked=False)))
    assert "S14" in numbers(check_state(unacked))
    leaving = rolled(two_generations(worker(0), worker(1), worker(2, version=1, signaled=frozenset({"USR2"}), last_signaled_at=0.0)))
    assert "S14" not in numbers(check_state(leaving))


def test_s15_an_upgrade_ends_within_its_timeout_and_the_bake_is_armed() -> None:
    pool_ = (worker(0), worker(1), worker(2, version=1, index=2))
    assert "S15" not in numbers(check_state(two_generations(*pool_, rollout=canary(), clock=19.0)))
    assert "S15" in numbers(check_state(two_generations(*pool_, rollout=canary(), clock=20.0)))
    assert "S15" in numbers(check_state(two_generations(*pool_, rollout=canary(bake_until=3.0), clock=4.0)))


def test_s16_no_rollout_goes_on_after_a_crash_loop() -> None:
    finishing = two_generations(worker(0), rollout=canary(RolloutPhase.FINISHING, new_deaths=3), version=1, upgrading=UpgradeKind.SMOOTH)
    assert "S16" in numbers(check_state(finishing))


def test_t17_spawns_from_their_own_generation_never_a_rolled_back_one() -> None:
    before = two_generations(worker(0), number=2)
    after = replace(before, pending={0: PendingSpawn(0, 1, 0, 0.0)}, next_spawn_id=1)
    assert "T17" not in numbers(check_step(before, Tick(0.0), after, [SpawnWorker(0, 1, 0, SPEC_A)]))
    assert "T17" in numbers(check_step(before, Tick(0.0), after, [SpawnWorker(0, 1, 0, SPEC_B)]))
    gone = rolled(before, 0)
    assert "T17" in numbers(check_step(gone, Tick(0.0), rolled(after, 0), [SpawnWorker(0, 1, 0, SPEC_A)]))


def test_t18_a_rollback_stops_only_the_rolled_back_generation() -> None:
    before = two_generations(worker(0), worker(1), worker(2, version=1))
    after = rolled(before)
    stop_new = replace(after, children={**after.children, 2: replace(after.children[2], signaled=frozenset({"USR2"}), last_signaled_at=0.0)})
    assert "T18" not in numbers(check_step(before, Tick(0.0), stop_new, [SendSignal(2, "USR2", Cause.ROLLBACK)]))
    stop_old = replace(after, children={**after.children, 0: replace(after.children[0], signaled=frozenset({"USR2"}), last_signaled_at=0.0)})
    assert "T18" in numbers(check_step(before, Tick(0.0), stop_old, [SendSignal(0, "USR2", Cause.ROLLBACK)]))


def test_t19_a_rolled_back_upgrade_tells_its_requesters_it_failed() -> None:
    before = two_generations(worker(0), worker(1), rollout=canary(), upgrade_subscribers=(Subscriber(7, "u"),))
    after = rolled(replace(before, rollout=None, upgrade_subscribers=()))
    told = Reply(7, "Upgrade rolled back: canary died", "u", failed=True)
    assert "T19" not in numbers(check_step(before, Tick(0.0), after, [told]))
    assert "T19" in numbers(check_step(before, Tick(0.0), after, [replace(told, failed=False)]))
    assert "T19" in numbers(check_step(before, Tick(0.0), after, []))


def test_t20_a_canary_that_exits_rolls_back() -> None:
    before = two_generations(worker(0), worker(1), worker(2, version=1, index=2), rollout=canary())
    gone = {pid: c for pid, c in before.children.items() if pid != 2}
    exited = ChildExited(2, 1, None, 0.0)
    assert "T20" not in numbers(check_step(before, exited, rolled(replace(before, children=gone, rollout=None)), []))
    assert "T20" in numbers(check_step(before, exited, replace(before, children=gone), []))
