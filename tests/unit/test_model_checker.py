"""The model checker has teeth: it passes the real core and catches planted bugs.

Each planted bug replaces one function of the real core modules for the
duration of one test (pytest's `monkeypatch` restores it afterwards, so nothing
leaks between tests), runs `spec.model_check.explore` on a small configuration,
and asserts that the violation it must cause is reported with a trace that
replays (spec/README.md lists the invariants by number).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence

import pytest

from einhorn.core import actions, commands, drain, health, indexed, notify, pool, rollout, step, upgrade
from einhorn.core.actions import Outcome
from einhorn.core.config import Pacing
from einhorn.core.effects import Cause, Effect, Log, LogLevel, Reply, SpawnWorker
from einhorn.core.events import UpgradeCheckPassed
from einhorn.core.record import replace
from einhorn.core.state import Child, RolloutPhase, State
from spec import invariants, model_check
from spec.model_check import Bounds, Scenario, explore, render_trace

SMALL = Bounds(depth=7, failures=1, commands=1)


def _violation(scenario: Scenario, bounds: Bounds) -> tuple[list[str], str]:
    result = explore(scenario, bounds)
    assert result.violations, f"no violation found in {result.states} states"
    violation = result.violations[0]
    assert violation.actions, "a violation needs a non-empty trace"
    return violation.problems, render_trace(violation)


def _assert_reports(problems: list[str], trace: str, prefix: str) -> None:
    assert any(p.startswith(prefix) for p in problems), problems
    assert "  1. " in trace and "violated:" in trace, trace


# --- the real core passes ---------------------------------------------------


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario(1, 1, None, 2, 1.0),
        Scenario(2, 1, 1, None, None),
        Scenario(2, 2, 0, 2, 1.0),
        Scenario(2, 1, 1, None, None, graceful_signal="TERM"),
        Scenario(2, 1, None, None, None, notify=True, supervised=True),
        Scenario(1, 1, 0, None, 1.0, supervised=True),
    ],
    ids=str,
)
def test_the_real_core_passes_a_small_bound(scenario: Scenario) -> None:
    result = explore(scenario, Bounds(depth=6, failures=1, commands=1), stop_at_first=False)
    assert not result.violations, "\n\n".join(render_trace(v) for v in result.violations)
    assert result.states > 100 and result.transitions > result.states
    assert result.liveness_states > 0


def test_the_command_line_runs_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    code = model_check.main(
        ["--number", "1", "--max-unacked", "1", "--max-upgrade-additional", "none", "--signal-timeout", "none",
         "--ack", "manual", "--depth", "4", "--jobs", "1", "--chains", "no", "--health", "no"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "states" in out and "transitions" in out and "OK: no violation" in out


def test_all_pairs_covers_every_pair() -> None:
    axes: list[list[object]] = [[1, 2, 3], ["a", "b"], [None, 0, 1], [True, False]]
    chosen = model_check.all_pairs(axes)
    assert len(chosen) < 3 * 2 * 3 * 2
    for i in range(len(axes)):
        for j in range(i + 1, len(axes)):
            for a in axes[i]:
                for b in axes[j]:
                    assert any(c[i] == a and c[j] == b for c in chosen), (i, a, j, b)


# --- planted bugs -------------------------------------------------------------


def test_bug_no_backoff_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spin-up interval grows without the 30 s cap."""
    monkeypatch.setattr(pool, "spinup_interval", lambda state: state.config.seconds * 1.5**state.deaths_before_ack)
    problems, trace = _violation(Scenario(1, 1, None, None, 1.0, seconds=16.0), Bounds(depth=6, failures=2, commands=0))
    _assert_reports(problems, trace, "S3")


def test_bug_smooth_upgrade_culls_before_new_workers_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cull counts un-ACKed new workers as ACKed, so old ones go before their replacements
    are up (the availability floor keeps the ACKed ones: the old workers still booting go)."""
    monkeypatch.setattr(pool, "ack_count", lambda state: len(pool.unsignaled_modern_workers(state)))
    problems, trace = _violation(Scenario(2, 1, None, None, None), replace(SMALL, command_names=("upgrade",)))
    _assert_reports(problems, trace, "T7")


def _plant_the_old_cull_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 10's rule: old workers are culled oldest first, ACKed or not, with no availability floor."""

    def oldest_first(state: State, limit: int | None = None) -> list[Child]:
        return sorted(pool.old_workers(state), key=lambda c: (c.spinup_at, c.pid))[:limit]

    monkeypatch.setattr(pool, "old_by_priority", oldest_first)
    monkeypatch.setattr(pool, "serving_count", lambda state: 10**6)  # every ACKed worker may go


def test_bug_a_second_upgrade_stops_the_serving_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the old rule a second upgrade stops the workers that serve instead of the first
    upgrade's new ones that never ACKed."""
    _plant_the_old_cull_rule(monkeypatch)
    report = Scenario(2, 2, None, None, None, pacing=Pacing.INTERVAL)  # the pacing of the report
    problems, trace = _violation(report, Bounds(depth=10, failures=0, commands=2, command_names=("upgrade",)))
    _assert_reports(problems, trace, "T12")
    assert problems == ["T12: stopped ACKed workers [1] on its own initiative, leaving 0 serving < min(number 2, 1 serving before)"]
    lines = trace.splitlines()
    assert "t=2 the new master image restores the state" in lines[-4] and lines[-4].endswith("-> USR2->100"), trace
    assert "100(v0 #0 acked got USR2), 101(v1 #1 unacked), 102(v1 #2 unacked)" in lines[-3], trace
    assert sum("operator runs `upgrade`" in line for line in lines) == 2, trace


@pytest.mark.parametrize("chain", model_check.UPGRADE_CHAINS, ids=lambda chain: str(chain[0]))
def test_every_upgrade_chain_catches_the_old_rule(monkeypatch: pytest.MonkeyPatch, chain: tuple[Scenario, Bounds]) -> None:
    """The upgrade chains of the default run (the real core passes them there) each have teeth."""
    _plant_the_old_cull_rule(monkeypatch)
    problems, trace = _violation(*chain)
    _assert_reports(problems, trace, "T12")


def test_bug_make_room_without_the_availability_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """max_upgrade_additional 0: making room by stopping the only worker that serves."""
    monkeypatch.setattr(pool, "serving_count", lambda state: 10**6)
    problems, trace = _violation(Scenario(1, 1, 0, None, 1.0), replace(SMALL, command_names=("upgrade",)))
    assert problems == ["T12: stopped ACKed workers [1] on its own initiative, leaving 0 serving < min(number 1, 1 serving before)"]
    assert any("the new master image restores the state" in line and line.endswith("-> USR2->100") for line in trace.splitlines()), trace


def test_bug_ack_does_not_reset_the_death_streak(monkeypatch: pytest.MonkeyPatch) -> None:
    def register_ack(state: State, pid: int) -> Outcome:
        child = state.children[pid]
        state = replace(state, children={**state.children, pid: replace(child, acked=True)})
        return state, [Log(LogLevel.INFO, "ACK")]

    monkeypatch.setattr(actions, "register_ack", register_ack)
    monkeypatch.setattr(step, "register_ack", register_ack)
    monkeypatch.setattr(commands, "register_ack", register_ack)
    problems, trace = _violation(Scenario(1, 1, None, None, 1.0), SMALL)
    _assert_reports(problems, trace, "T6")


def test_bug_old_workers_signalled_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The order old workers are stopped in forgets to leave out the ones already signaled
    (`Children` keeps them in it): the smooth cull re-sends USR2 to one still on its way out."""
    monkeypatch.setattr(indexed, "_stop_key", lambda child: (child.acked, child.spinup_at, child.pid))
    problems, trace = _violation(Scenario(2, 2, None, None, None), replace(SMALL, depth=10, failures=0, command_names=("upgrade",)))
    _assert_reports(problems, trace, "T4")


def test_bug_a_cull_forgets_the_graceful_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cull sends USR2 whatever `--graceful-signal` says (as before it existed): T15."""
    real = actions.signal_children

    def usr2_always(state: State, signal: str, pids: Sequence[int], cause: Cause, record: bool = True) -> Outcome:
        return real(state, "USR2" if cause is Cause.UPGRADE else signal, pids, cause, record)

    monkeypatch.setattr(step, "signal_children", usr2_always)
    monkeypatch.setattr(actions, "signal_children", usr2_always)
    problems, trace = _violation(Scenario(1, 1, None, None, 1.0, graceful_signal="TERM"), replace(SMALL, depth=8, command_names=("upgrade",)))
    _assert_reports(problems, trace, "T15")


def test_bug_ready_told_while_an_upgrade_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor hears READY=1 as soon as the pool is full, an upgrade in progress or not: T16."""
    monkeypatch.setattr(notify, "_reloading", lambda state: False)
    problems, trace = _violation(Scenario(1, 1, None, None, None, notify=True, supervised=True), replace(SMALL, depth=8, command_names=("upgrade",)))
    _assert_reports(problems, trace, "T16")


def test_bug_index_of_a_live_signaled_child_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The free indexes only leave out unsignaled workers', but a signaled one is alive until reaped."""

    def free_indexes(state: State, count: int) -> list[int]:
        used = {c.index for c in state.children.values() if not c.signaled} | {p.index for p in state.pending.values()}
        found: list[int] = []
        for _ in range(count):
            found.append(pool.lowest_free_index(used))
            used.add(found[-1])
        return found

    monkeypatch.setattr(pool, "free_indexes", free_indexes)
    problems, trace = _violation(Scenario(1, 1, None, None, 1.0), replace(SMALL, depth=9, command_names=("upgrade",)))
    _assert_reports(problems, trace, "S2")


def test_bug_spin_up_while_respawn_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gradual spin-up timer forgets that respawning is off."""
    original = step._spinup_due
    monkeypatch.setattr(step, "_spinup_due", lambda state: original(replace(state, respawn=True)))
    problems, trace = _violation(Scenario(1, 1, None, None, 1.0), replace(SMALL, command_names=("die",)))
    _assert_reports(problems, trace, "T2")


def test_bug_sigkill_escalated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Escalation forgets that it already sent SIGKILL."""
    original = step._escalation_due

    def escalation_due(state: State) -> Iterable[tuple[float, int]]:
        return original(replace(state, children={pid: replace(c, killed=False) for pid, c in state.children.items()}))

    monkeypatch.setattr(step, "_escalation_due", escalation_due)
    problems, trace = _violation(Scenario(2, 1, None, 2, 1.0), replace(SMALL, command_names=("die",)))
    _assert_reports(problems, trace, "T5")


def test_bug_exit_while_a_spawn_is_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    original = step._maybe_exit

    def maybe_exit(state: State) -> Outcome:
        after, effects = original(replace(state, pending={}))
        return replace(after, pending=state.pending), effects

    monkeypatch.setattr(step, "_maybe_exit", maybe_exit)
    problems, trace = _violation(Scenario(1, 1, None, None, 1.0), replace(SMALL, command_names=("die",)))
    _assert_reports(problems, trace, "T9")


def test_bug_capped_fleet_upgrade_never_makes_room(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the make-room cull, a fleet upgrade capped below `number` waits forever (liveness)."""
    monkeypatch.setattr(step, "_room_to_make", lambda state: 0)
    problems, trace = _violation(Scenario(2, 1, 1, None, 1.0), replace(SMALL, depth=8, command_names=("upgrade_fleet",)))
    _assert_reports(problems, trace, "stuck")
    assert "L2" in problems[0] and "no failures" in trace


def test_bug_spin_up_timer_never_armed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`next_deadline` forgets the gradual spin-up: after a crash nothing wakes the master."""
    original: Callable[[State], float | None] = step.next_deadline
    monkeypatch.setattr(step, "next_deadline", lambda state: original(replace(state, last_spinup_at=None)))
    problems, trace = _violation(Scenario(1, 1, None, None, 1.0), SMALL)
    _assert_reports(problems, trace, "S4")


def test_liveness_is_checked_without_the_safety_net(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same timer bug, with S4 silenced, is still caught: by L1, from the cooperative world."""
    original: Callable[[State], float | None] = step.next_deadline
    monkeypatch.setattr(step, "next_deadline", lambda state: original(replace(state, last_spinup_at=None)))
    check_state = invariants.check_state
    monkeypatch.setattr(
        invariants, "check_state", lambda state: [p for p in check_state(state) if not p.startswith("S4")]
    )
    problems, trace = _violation(Scenario(1, 1, None, None, 1.0), SMALL)
    assert problems[0].startswith("stuck") and ": L" in problems[0], problems
    assert "cooperative world" in trace


# --- planted bugs in the pacing (EXTENSIONS §4) --------------------------------------------------


def test_bug_paced_by_the_interval_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core ignores ACK pacing: a missing worker waits for the interval although a slot is free."""
    monkeypatch.setattr(pool, "paced_by_acks", lambda state: False)
    problems, trace = _violation(Scenario(2, 1, None, None, None), SMALL)
    _assert_reports(problems, trace, "S4")
    assert "paced by ACKs" in problems[0] and "pacing=ack" in trace


def _plant_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paced by ACKs, but only one new worker per spin-up however many slots are free."""
    original = actions.spin_up
    monkeypatch.setattr(step, "spin_up", lambda state, count: original(state, min(count, 1)))


GROW = Bounds(depth=6, failures=0, commands=1, command_names=("set_workers_3",))
"""From 1 worker to 3: two go missing in one step."""


def test_bug_one_spin_up_at_a_time_although_slots_are_free(monkeypatch: pytest.MonkeyPatch) -> None:
    _plant_one_at_a_time(monkeypatch)
    problems, trace = _violation(Scenario(1, 2, None, None, None), GROW)
    _assert_reports(problems, trace, "S4")
    assert "operator runs `set_workers 3`" in trace


def test_the_ack_rounds_catch_a_slow_replacement_without_the_safety_net(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bug with S4 silenced: L4, K = 2 missing with max_unacked 2 take 2 ACK rounds, not 1."""
    _plant_one_at_a_time(monkeypatch)
    check_state = invariants.check_state
    monkeypatch.setattr(invariants, "check_state", lambda state: [p for p in check_state(state) if not p.startswith("S4")])
    problems, trace = _violation(Scenario(1, 2, None, None, None), GROW)
    assert problems[0].startswith("L4: ") and "after 1 ACK rounds (at most 1 allowed)" in problems[0], problems
    assert "cooperative world" in trace and "operator runs `set_workers 3`" in trace, trace


def test_bug_a_worker_that_acks_and_crashes_at_once_is_no_death(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paced by ACKs, a crash right after the ACK must count, or a `-m 0` crash loop respawns unthrottled."""
    monkeypatch.setattr(pool, "died_young", lambda state, child: False)
    problems, trace = _violation(Scenario(1, 1, None, None, None), SMALL)
    _assert_reports(problems, trace, "T6")
    assert "died young but the death streak is 0" in problems[0]


def test_the_interval_pacing_is_explored_too() -> None:
    """Under the interval, L4 does not apply, and the original's one-per-interval rule holds (T11)."""
    result = explore(Scenario(2, 2, None, None, None, pacing=Pacing.INTERVAL), Bounds(depth=6, failures=1, commands=1))
    assert not result.violations and result.replacement_states == 0
    ack = explore(Scenario(2, 2, None, None, None), Bounds(depth=6, failures=1, commands=1))
    assert not ack.violations and ack.replacement_states > 0


# --- planted bugs in the re-exec lifecycle (spec/upgrades.md) -----------------------------------


def test_bug_exec_during_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutting down forgets to abandon the re-exec: the master would exec while winding down."""
    monkeypatch.setattr(upgrade, "abandon_when_shutting_down", lambda state: (state, []))
    problems, trace = _violation(Scenario(1, 1, None, None, 1.0), replace(SMALL, commands=2, command_names=("upgrade", "die")))
    _assert_reports(problems, trace, "S10")
    assert "operator runs `upgrade`" in trace and "operator runs `die`" in trace


def test_bug_lost_spawn_left_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    """The new image forgets the spawns the old one had in flight: they would hold their slots for ever."""
    monkeypatch.setattr(upgrade, "_fail_lost_spawns", lambda state, effects: (state, effects))
    problems, trace = _violation(Scenario(1, 1, None, None, 1.0), replace(SMALL, command_names=("upgrade",)))
    _assert_reports(problems, trace, "T14")
    assert "the new master image restores the state" in trace


def test_bug_a_lost_canary_spawn_is_not_a_failed_canary(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lost spawns are failed, but the rollout does not hear of it: a canary lost in a reload's re-exec
    leaves the upgrade in progress for ever (found by the hypothesis state machine first)."""

    def silent(state: State, effects: list[Effect]) -> tuple[State, list[Effect]]:
        lost = len(state.pending)
        return replace(state, pending={}, deaths_before_ack=state.deaths_before_ack + lost), effects

    monkeypatch.setattr(upgrade, "_fail_lost_spawns", silent)
    scenario, bounds = next(chain for chain in model_check.ROLLOUT_CHAINS if "reload" in chain[1].command_names)
    problems, trace = _violation(scenario, bounds)
    assert any("L2: canary of version" in p and "still in progress" in p for p in problems), problems
    assert "operator runs `reload`" in trace and "violated:" in trace


def test_bug_check_deadline_never_armed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`next_deadline` forgets the upgrade check: a hung check would leave the upgrade pending for ever."""
    monkeypatch.setattr(step, "_check_due", lambda state: ())
    problems, trace = _violation(Scenario(1, 1, None, None, None), replace(SMALL, command_names=("upgrade",)))
    _assert_reports(problems, trace, "S11")


def test_bug_check_deadline_ignored_when_it_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline is armed but nothing happens when it passes: the check is still awaited."""
    monkeypatch.setattr(upgrade, "fail_overdue_check", lambda state: (state, []))
    problems, trace = _violation(Scenario(1, 1, None, None, None), replace(SMALL, command_names=("upgrade",)))
    _assert_reports(problems, trace, "S11")
    assert "time passes to t=30" in trace


def test_bug_exec_on_a_failed_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed check is taken for a pass: the broken einhorn would be exec'd."""
    monkeypatch.setattr(
        upgrade, "on_check_failed", lambda state, event: upgrade.on_check_passed(state, UpgradeCheckPassed(event.check_id, event.now))
    )
    problems, trace = _violation(Scenario(1, 1, None, None, 1.0), replace(SMALL, command_names=("upgrade",)))
    _assert_reports(problems, trace, "T13")
    assert "the upgrade check FAILS" in trace


def test_bug_exec_on_a_changed_image_without_its_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every comparison is taken for "unchanged": a new einhorn on disk would be exec'd unchecked."""
    original = upgrade.on_image_compared
    monkeypatch.setattr(upgrade, "on_image_compared", lambda state, event: original(state, replace(event, unchanged=True)))
    problems, trace = _violation(Scenario(1, 1, None, None, 1.0), replace(SMALL, command_names=("upgrade",)))
    _assert_reports(problems, trace, "T13")
    assert "the shell finds the new image changed" in trace


def test_bug_an_own_decision_passed_off_as_an_operators_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cull labels its signals as the operator's: the checker would exempt them from T4 and T12."""
    original = actions.signal_children

    def signal_children(state: State, signal: str, pids: Sequence[int], cause: Cause, record: bool = True) -> Outcome:
        return original(state, signal, pids, Cause.OPERATOR, record)

    monkeypatch.setattr(step, "signal_children", signal_children)
    monkeypatch.setattr(actions, "signal_children", signal_children)
    problems, trace = _violation(Scenario(1, 1, None, None, 1.0), replace(SMALL, depth=8, command_names=("upgrade",)))
    _assert_reports(problems, trace, "T15")


# --- generations, canaries, rollbacks (spec/README.md §4, "Generations, canaries and rollbacks") -----------------------------------------

CANARY = Scenario(2, 1, None, None, None)
CANARY_BOUNDS = Bounds(depth=9, failures=1, commands=1, command_names=("upgrade_canary",))
ABORT_BOUNDS = Bounds(depth=8, failures=0, commands=2, command_names=("upgrade_canary", "abort_upgrade"))


def test_the_real_core_passes_small_rollout_runs() -> None:
    for scenario, bounds in [(CANARY, CANARY_BOUNDS), (CANARY, ABORT_BOUNDS), (Scenario(1, 1, None, None, 1.0), model_check.ROLLOUT_CHAINS[-1][1])]:
        result = explore(scenario, bounds, stop_at_first=False)
        assert not result.violations, "\n\n".join(render_trace(v) for v in result.violations)


def test_bug_a_rollback_forgets_the_generation_it_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    real = rollout.rollback

    def forgetful(state: State, why: str) -> Outcome:
        generations = state.generations
        state, effects = real(state, why)
        return replace(state, generations=generations), effects

    monkeypatch.setattr(rollout, "rollback", forgetful)
    _assert_reports(*_violation(CANARY, CANARY_BOUNDS), "T20")  # no generation marked: nothing was rolled back


def test_bug_the_bake_never_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "bake_due", lambda state: [])
    _assert_reports(*_violation(CANARY, CANARY_BOUNDS), "S15")


def test_bug_the_upgrade_timeout_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "timeout_due", lambda state: [])
    _assert_reports(*_violation(CANARY, CANARY_BOUNDS), "S15")


def test_bug_a_canary_that_dies_is_not_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    real = rollout.on_worker_lost

    def lenient(state: State, version: int, pid: int, acked: bool, death: bool, how: str) -> Outcome:
        if state.rollout is not None and state.rollout.phase is RolloutPhase.CANARY:
            return state, []
        return real(state, version, pid, acked, death, how)

    monkeypatch.setattr(rollout, "on_worker_lost", lenient)
    _assert_reports(*_violation(CANARY, CANARY_BOUNDS), "T20")


def test_bug_a_crash_loop_is_never_rolled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "CRASH_LOOP_DEATHS", 99)
    _assert_reports(*_violation(*model_check.ROLLOUT_CHAINS[-1]), "S16")


def test_bug_a_rollback_stops_the_previous_generation_too(monkeypatch: pytest.MonkeyPatch) -> None:
    real = rollout.rollback

    def sweeping(state: State, why: str) -> Outcome:
        state, effects = real(state, why)
        state, more = actions.signal_children(state, state.config.graceful_signal, sorted(state.children), Cause.ROLLBACK)
        return state, effects + more

    monkeypatch.setattr(rollout, "rollback", sweeping)
    _assert_reports(*_violation(CANARY, CANARY_BOUNDS), "T18")


def test_bug_a_rolled_back_upgrade_is_not_a_failed_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    real = rollout.rollback

    def quiet(state: State, why: str) -> Outcome:
        state, effects = real(state, why)
        return state, [replace(e, failed=False) if isinstance(e, Reply) else e for e in effects]

    monkeypatch.setattr(rollout, "rollback", quiet)
    _assert_reports(*_violation(CANARY, CANARY_BOUNDS), "T19")


def test_bug_workers_spawned_from_the_newest_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    real = actions.spin_up

    def newest(state: State, count: int, version: int | None = None) -> Outcome:
        state, effects = real(state, count, version)
        launch = state.generations[-1].launch if state.generations else None
        return state, [replace(e, launch=launch) if isinstance(e, SpawnWorker) else e for e in effects]

    monkeypatch.setattr(actions, "spin_up", newest)
    monkeypatch.setattr(rollout, "spin_up", newest)
    monkeypatch.setattr(step, "spin_up", newest)
    _assert_reports(*_violation(CANARY, CANARY_BOUNDS), "T17")


def test_bug_a_rollback_without_the_availability_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    real = step._stop

    def careless(state: State, victims: list[Child], cause: Cause, note: str, stream: bool = True) -> Outcome:
        if cause is not Cause.ROLLBACK or not victims:
            return real(state, victims, cause, note, stream)
        return actions.signal_children(state, state.config.graceful_signal, [c.pid for c in victims], cause)

    monkeypatch.setattr(step, "_stop", careless)
    _assert_reports(*_violation(CANARY, ABORT_BOUNDS), "T12")


def test_bug_a_rollback_keeps_the_new_version_current(monkeypatch: pytest.MonkeyPatch) -> None:
    real = rollout.rollback

    def stubborn(state: State, why: str) -> Outcome:
        version = state.version
        state, effects = real(state, why)
        return replace(state, version=version), effects

    monkeypatch.setattr(rollout, "rollback", stubborn)
    _assert_reports(*_violation(CANARY, CANARY_BOUNDS), "S13")


# --- the health rules (spec/README.md §4 rules 3a-3b; runs in §7) -------------------------------------------------------

WEDGED, NEVER_ACKS, RSS_DURING_UPGRADE, TWO_RULES, CAPPED = model_check.HEALTH_RUNS


@pytest.mark.parametrize(
    ("run", "depth"),
    [*((run, 7) for run in model_check.HEALTH_RUNS), *((run, 8) for run in model_check.DRAIN_RUNS)],
    ids=lambda value: str(value[0]) if isinstance(value, tuple) else f"depth {value}",
)
def test_the_real_core_passes_the_health_and_drain_runs_at_a_small_bound(run: tuple[Scenario, Bounds], depth: int) -> None:
    scenario, bounds = run
    result = explore(scenario, replace(bounds, depth=depth), stop_at_first=False)
    assert not result.violations, "\n\n".join(render_trace(v) for v in result.violations)
    assert result.states > 100 and result.liveness_states > 0


def test_bug_a_wedged_worker_is_stopped_before_its_successor_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The health rule stops every condemned worker at once, without the availability floor."""

    def at_once(state: State) -> Outcome:
        effects: list[Effect] = []
        for child in pool.condemned(state):
            assert child.verdict is not None
            state, more = actions.signal_children(state, state.config.graceful_signal, [child.pid], health.CAUSES[child.verdict])
            effects += more
        return state, effects

    monkeypatch.setattr(step, "_stop_condemned", at_once)
    problems, trace = _violation(*WEDGED)
    _assert_reports(problems, trace, "T12")
    assert "sends worker:ping" in trace and "CONDEMNED(ping_timeout)" in trace


def test_bug_the_ping_timeout_never_fires(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ping timer is not armed: a wedged worker would serve nothing for ever."""
    monkeypatch.setattr(health, "ping_due", lambda state: ())
    problems, trace = _violation(*WEDGED)
    _assert_reports(problems, trace, "S17")


def test_bug_the_boot_timeout_fires_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """The boot deadline is half the timeout: a worker still within it is stopped."""

    def early(state: State) -> Iterable[tuple[float, int]]:
        timeout = state.config.boot_timeout
        assert timeout is not None
        return ((spinup_at + timeout / 2, pid) for spinup_at, pid in state.indexed_children.unacked_by_spinup() if not health.judged(state.children[pid]))

    monkeypatch.setattr(health, "boot_due", early)
    problems, trace = _violation(*NEVER_ACKS)
    _assert_reports(problems, trace, "T21")


def test_bug_a_boot_timeout_death_that_acked_late_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker told to go at its boot timeout ACKs on its way out: its death must still count."""
    monkeypatch.setattr(health, "booted_out", lambda child: False)
    problems, trace = _violation(*NEVER_ACKS)
    _assert_reports(problems, trace, "T6")
    assert "CONDEMNED(boot_timeout)" in trace


def test_bug_the_surplus_cull_takes_the_successor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The surplus counts a condemned worker as present: the successor of a bloated worker is
    culled as surplus as soon as it starts, and the bloated one is never replaced."""
    monkeypatch.setattr(pool, "unsignaled_modern_count", lambda state: state.indexed_children.count(state.version, signaled=False))
    problems, trace = _violation(*RSS_DURING_UPGRADE)
    assert problems[0].startswith("no convergence within 100 cooperative steps"), problems
    assert "measured at 65 MiB" in trace


def test_bug_healthy_workers_are_stopped_before_unhealthy_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """While an upgrade runs the health rules leave ACKed workers be: the upgrade's cull stops a
    healthy old worker while a bloated one keeps serving."""
    real_condemned = pool.condemned

    def booting_only_while_upgrading(state: State) -> list[Child]:
        return [c for c in real_condemned(state) if state.upgrading is None or not c.acked]

    monkeypatch.setattr(pool, "condemned", booting_only_while_upgrading)
    problems, trace = _violation(*RSS_DURING_UPGRADE)
    _assert_reports(problems, trace, "T21")
    assert "operator runs `upgrade`" in trace


def test_the_matrix_explores_both_pacings_with_the_default_graceful_signal() -> None:
    """The pacing axis reaches `Scenario.pacing` (it once landed in `graceful_signal`, positionally)."""
    args = argparse.Namespace(
        ack=["manual"], max_upgrade_additional=["none"], signal_timeout=["none"], pacing=["ack", "interval"],
        number=[1], max_unacked=[1], matrix="full", seconds=1.0,
    )  # fmt: skip
    found = model_check.scenarios(args)
    assert sorted(s.pacing.value for s in found) == ["ack", "interval"]
    assert {s.graceful_signal for s in found} == {"USR2"}


# --- drain listeners (spec/README.md §9) -------------------------------------------------------

DRAINED_UPGRADES, DRAINED_CANARY, DRAINED_CAPPED, DRAINED_CRASHES = model_check.DRAIN_RUNS


def test_bug_a_worker_is_stopped_without_waiting_for_its_generations_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every victim goes at once, as without drain listeners: a connection steered to it may be lost."""
    monkeypatch.setattr(drain, "admit", lambda state, pids: (state, list(pids), []))
    problems, trace = _violation(*DRAINED_UPGRADES)
    _assert_reports(problems, trace, "D1")


def test_bug_the_grace_after_an_empty_queue_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first empty reading ends the drain: what a worker accepted last may still be unread."""
    monkeypatch.setattr(drain, "done", lambda state, d: d.timed_out or d.empty_at is not None)
    problems, trace = _violation(*DRAINED_UPGRADES)
    _assert_reports(problems, trace, "D1")
    assert "the shell reads the queues of version" in trace


def test_bug_connections_steered_to_a_generation_whose_worker_is_stopping(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signalled server may still accept for a while: its generation must get nothing more."""

    def with_stopping(state: State) -> list[tuple[int, int]]:
        out = {d.version for d in state.drains if d.held}
        children = state.indexed_children
        return [(v, n) for v in sorted(children.unsignaled_versions()) if v not in out and (n := drain.serving(state, v)) > 0]

    monkeypatch.setattr(drain, "accepting", with_stopping)
    problems, trace = _violation(*DRAINED_UPGRADES)
    _assert_reports(problems, trace, "D2")


def test_bug_the_queue_is_never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The poll timer is not armed (and no timeout): a drain would wait for ever."""
    monkeypatch.setattr(drain, "poll_due", lambda state: [])
    monkeypatch.setattr(drain, "timeout_due", lambda state: [])
    problems, trace = _violation(*DRAINED_UPGRADES)
    _assert_reports(problems, trace, "D3")


def test_bug_a_generation_no_longer_steered_to_is_taken_as_drained(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortcut for a generation out of the steering, without its queue ever read empty: connections
    steered to it earlier (the current one's, alone, while nothing served) would be lost."""
    real = drain.admit

    def unsteered_is_quiet(state: State, pids: Sequence[int]) -> tuple[State, list[int], list[Effect]]:
        steered = dict(state.steered)
        early = [p for p in pids if steered and state.children[p].version not in steered and drain.drain_of(state, state.children[p].version) is None]
        state, ready, effects = real(state, [p for p in pids if p not in early])
        return state, [*early, *ready], effects

    monkeypatch.setattr(drain, "admit", unsteered_is_quiet)
    problems, trace = _violation(*DRAINED_CRASHES)
    _assert_reports(problems, trace, "D1")
