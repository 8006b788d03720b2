"""einhorn.core.observe: the observations of a step, exactly, from real steps of the core."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from einhorn.core import observe as observe_module
from einhorn.core.effects import Cause, SendSignal
from einhorn.core.events import (
    ChildExited,
    Event,
    MasterStarted,
    SpawnFailed,
    Tick,
    UpgradeCheckFailed,
    UpgradeCheckPassed,
    WorkerSpawned,
)
from einhorn.core.observe import Observation, observe
from einhorn.core.record import replace
from einhorn.core.state import Child, Reexec, ReexecPhase, ReexecPurpose, State, initial_state
from einhorn.core.step import step
from tests.unit.fixtures.core_world import command, image_changed, make_config, played_states, run


def observed(state: State, event: Event) -> tuple[State, list[Observation]]:
    after, effects = step(state, event)
    return after, observe(state, event, after, effects)


def kinds(observations: list[Observation]) -> list[str]:
    return [o.kind for o in observations]


def started(number: int = 1, **config: object) -> State:
    """A master that ordered its first fill (spawn ids 0..number-1), nothing spawned yet."""
    state, _ = step(initial_state(make_config(number=number, ack_timer=None, **config)), MasterStarted(0.0))
    return state


def with_worker(pid: int = 1000, acked: bool = True, **changes: Any) -> State:
    state = started(1)
    state, _ = step(state, WorkerSpawned(0, pid, 1.0))
    if acked:
        state, _ = step(state, command(5, "worker:ack", now=2.0, pid=pid))
    return replace(state, **changes) if changes else state


def test_a_spawn_is_observed_with_its_index_and_version() -> None:
    _, found = observed(started(1), WorkerSpawned(0, 1000, 1.0))
    assert found == [Observation("spawned", {"pid": 1000, "index": 0, "version": 0})]


def test_a_timer_ack_of_zero_seconds_is_observed_with_the_spawn() -> None:
    state, _ = step(initial_state(make_config(number=1, ack_timer=0.0)), MasterStarted(0.0))
    _, found = observed(state, WorkerSpawned(0, 1000, 1.0))
    assert kinds(found) == ["spawned", "acked"]


def test_an_unknown_spawn_result_is_not_observed() -> None:
    _, found = observed(started(1), WorkerSpawned(7, 1000, 1.0))
    assert found == []


def test_a_spawn_failure_is_observed_with_the_streak() -> None:
    _, found = observed(started(1), SpawnFailed(0, "no such file (errno 2)", 1.0))
    assert found == [Observation("spawn_failed", {"index": 0, "version": 0, "reason": "no such file (errno 2)", "streak": 1})]


def test_a_manual_ack_is_observed() -> None:
    state, _ = step(started(1), WorkerSpawned(0, 1000, 1.0))
    _, found = observed(state, command(5, "worker:ack", now=2.0, pid=1000))
    assert found == [Observation("acked", {"pid": 1000, "index": 0, "version": 0})]


def test_a_timer_ack_is_observed_on_the_tick_that_fires_it() -> None:
    state, _ = step(initial_state(make_config(number=1, ack_timer=1.0)), MasterStarted(0.0))
    state, _ = step(state, WorkerSpawned(0, 1000, 1.0))
    _, found = observed(state, Tick(2.5))
    assert found == [Observation("acked", {"pid": 1000, "index": 0, "version": 0})]


def test_a_death_before_ack_is_observed_with_its_exit_code_and_streak() -> None:
    state, _ = step(started(1), WorkerSpawned(0, 1000, 1.0))
    _, found = observed(state, ChildExited(1000, 3, None, 1.5))
    assert found[0] == Observation(
        "exited",
        {
            "pid": 1000,
            "index": 0,
            "version": 0,
            "exit_code": 3,
            "signal": None,
            "cause": "exit code 3",
            "before_ack": True,
            "counted": True,
            "streak": 1,
            "signaled": None,
            "age": 0.5,
        },
    )


def test_a_death_by_signal_after_ack_names_the_signal_and_what_the_master_sent() -> None:
    state = with_worker(1000)
    state, _ = step(state, command(6, "signal", "TERM", now=100.0))
    _, found = observed(state, ChildExited(1000, None, 15, 101.0))
    fields = found[0].fields
    assert (fields["cause"], fields["signal"], fields["exit_code"]) == ("signal 15", 15, None)
    assert (fields["before_ack"], fields["counted"], fields["streak"], fields["signaled"]) == (False, False, 0, None)


def test_a_signal_is_observed_with_its_cause() -> None:
    state = with_worker(1000)
    _, found = observed(state, command(6, "die", now=50.0))
    signaled = [o for o in found if o.kind == "signaled"]
    assert signaled == [
        Observation("signaled", {"pid": 1000, "signal": "USR2", "cause": "operator", "index": 0, "version": 0, "acked": True})
    ]


def test_the_health_hook_turns_a_health_cause_into_a_health_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observe_module, "HEALTH_CAUSES", frozenset({Cause.SURPLUS}))
    state = with_worker(1000)
    after = state
    found = observe(state, Tick(60.0), after, [SendSignal(1000, "USR2", Cause.SURPLUS)])
    assert found == [
        Observation("signaled", {"pid": 1000, "signal": "USR2", "cause": "surplus", "index": 0, "version": 0, "acked": True}),
        Observation(
            "health", {"pid": 1000, "signal": "USR2", "cause": "surplus", "index": 0, "version": 0, "acked": True, "rule": "surplus"}
        ),
    ]


def test_no_health_verdict_for_ordinary_causes() -> None:
    state = with_worker(1000)
    found = observe(state, Tick(60.0), state, [SendSignal(1000, "USR2", Cause.SURPLUS)])
    assert kinds(found) == ["signaled"]


def test_inc_is_a_config_change_and_a_command() -> None:
    state = with_worker(1000)
    _, found = observed(state, command(6, "inc", now=10.0))
    assert found == [
        Observation("command", {"command": "inc", "result": "ok"}),
        Observation("config_changed", {"setting": "number", "old": 1, "new": 2}),
    ]


def test_config_changes_name_each_setting() -> None:
    state = with_worker(1000)
    event = command(6, "config", "seconds: 3", now=10.0)
    event = replace(event, document={"seconds": 3})
    _, found = observed(state, event)
    assert found[1:] == [
        Observation("config_changed", {"setting": "seconds", "old": 1.0, "new": 3.0}),
        Observation("config_changed", {"setting": "pacing", "old": "ack", "new": "interval"}),
    ]


def test_command_results() -> None:
    state = with_worker(1000)
    _, unknown = observed(state, command(6, "frobnicate"))
    _, invalid = observed(state, command(6, "set_workers", "x"))
    _, fine = observed(state, command(6, "state"))
    assert [o.fields["result"] for o in (*unknown, *invalid, *fine)] == ["unknown", "error", "ok"]
    assert [o.fields["command"] for o in (*unknown, *invalid, *fine)] == ["(unknown)", "set_workers", "state"]


def test_worker_requests_are_not_commands() -> None:
    state = with_worker(1000)
    _, found = observed(state, command(6, "worker:ping", now=5.0, pid=1000))
    assert found == []


def test_an_upgrade_is_observed_phase_by_phase() -> None:
    state = with_worker(1000)
    state, checking = observed(state, command(6, "upgrade", now=10.0, id="1"))
    assert checking[1:] == [Observation("upgrade_phase", {"phase": "checking", "purpose": "smooth_upgrade", "version": 0})]
    state, still_checking = observed(state, image_changed(0, 10.5))
    assert still_checking == []  # comparing the image is part of checking it
    state, executing = observed(state, UpgradeCheckPassed(0, 11.0))
    assert executing == [Observation("upgrade_phase", {"phase": "executing", "purpose": "smooth_upgrade", "version": 0})]
    state, restored = observed(state, MasterStarted(12.0, restored=True))
    assert restored == [
        Observation("reexec", {"version": 0, "workers": 1, "purpose": "smooth_upgrade"}),
        Observation("upgrade_phase", {"phase": "upgrading", "purpose": "smooth", "version": 1}),
    ]
    state, _ = step(state, WorkerSpawned(1, 1001, 13.0))
    state, done = observed(state, command(7, "worker:ack", now=14.0, pid=1001))
    assert kinds(done) == ["acked", "signaled", "upgrade_phase"]
    assert done[2] == Observation("upgrade_phase", {"phase": "done", "purpose": "smooth", "version": 1})


def test_a_failed_upgrade_check_is_observed_with_its_reason() -> None:
    state = with_worker(1000)
    state, _ = run(state, command(6, "upgrade", now=10.0), image_changed(0, 10.5))
    _, found = observed(state, UpgradeCheckFailed(0, "exit status 1", 11.0))
    assert found == [
        Observation(
            "upgrade_phase",
            {"phase": "failed", "purpose": "smooth_upgrade", "version": 0, "reason": "upgrade check failed: exit status 1"},
        )
    ]


def test_an_overdue_check_fails_as_a_timeout() -> None:
    state = with_worker(1000, reexec=Reexec(ReexecPurpose.RELOAD, (), 0, deadline=30.0, phase=ReexecPhase.CHECKING))
    _, found = observed(state, Tick(31.0))
    assert [o.fields.get("reason") for o in found] == ["upgrade check timed out"]


def test_a_restore_without_a_reexec_in_progress_is_still_a_reexec() -> None:
    state = with_worker(1000)
    _, found = observed(state, MasterStarted(20.0, restored=True))
    assert found == [Observation("reexec", {"version": 0, "workers": 1, "purpose": None})]


def test_an_exit_of_an_unknown_process_is_not_observed() -> None:
    state = with_worker(1000)
    _, found = observed(state, ChildExited(4242, 0, None, 5.0))
    assert found == []


def test_an_escalation_is_a_signal_with_its_cause() -> None:
    state = with_worker(1000, config=make_config(number=1, ack_timer=None, signal_timeout=5))
    state, _ = step(state, command(6, "signal", "USR2", now=10.0))
    state, _ = step(state, command(6, "die", "USR2", now=10.0))
    _, found = observed(state, Tick(16.0))
    assert [o for o in found if o.kind == "signaled"] == [
        Observation("signaled", {"pid": 1000, "signal": "KILL", "cause": "escalation", "index": 0, "version": 0, "acked": True})
    ]


def test_unchanged_children_are_not_compared() -> None:
    """A step that touches no worker observes nothing about workers (the un-ACKed are all it reads)."""
    child = Child(pid=1, version=0, index=0, spinup_at=0.0, acked=True)
    state = State(config=make_config(number=1), children={1: child}, last_spinup_at=0.0)
    _, found = observed(state, Tick(1.0))
    assert found == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(played_states())
def test_every_ack_and_spawn_of_a_step_is_observed(state: State) -> None:
    """Folds of random events: the observed ACKs are exactly the workers ACKed by the step."""
    for event in (Tick(state.clock + 1.0), Tick(state.clock + 100.0)):
        after, effects = step(state, event)
        found = observe(state, event, after, effects)
        acked_now = {pid for pid, c in after.children.items() if c.acked and not (pid in state.children and state.children[pid].acked)}
        assert {o.fields["pid"] for o in found if o.kind == "acked"} == acked_now
        signals = [e for e in effects if isinstance(e, SendSignal)]
        assert len([o for o in found if o.kind == "signaled"]) == len(signals)
        state = after
