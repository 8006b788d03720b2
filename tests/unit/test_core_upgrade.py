"""The re-exec lifecycle, owned by the core (einhorn/core/upgrade.py, spec/upgrades.md): exact effects."""

from __future__ import annotations

from einhorn.core.config import UPGRADE_CHECK_TIMEOUT
from einhorn.core.effects import (
    AbandonExec,
    CompareImage,
    ExecMaster,
    Log,
    LogLevel,
    Reply,
    SpawnWorker,
    StartUpgradeCheck,
    StopUpgradeCheck,
)
from einhorn.core.events import (
    ImageCompared,
    MasterStarted,
    ReexecFailed,
    SignalReceived,
    Tick,
    UpgradeCheckFailed,
    UpgradeCheckPassed,
)
from einhorn.core.record import replace
from einhorn.core.state import PendingSpawn, Reexec, ReexecPhase, ReexecPurpose, State, Subscriber
from einhorn.core.step import next_deadline, step
from tests.unit.fixtures.core_world import command, image_changed, make_config
from tests.unit.test_core_step import up

ABORT = "Can not initiate einhorn master upgrade safely, aborting: "


def comparing(now: float = 1.0) -> State:
    state, _ = step(up(make_config(number=2)), command(7, "upgrade", id="u", now=now))
    return state


def upgrading(now: float = 1.0) -> State:
    """The upgrade check runs: the new image differs from the running one."""
    state, effects = step(comparing(now), image_changed(0, now))
    assert effects == [Log(LogLevel.INFO, "Running the upgrade check: einhorn/core/step.py changed"), StartUpgradeCheck(0)]
    return state


def test_an_upgrade_first_compares_the_image_with_a_deadline_the_core_owns() -> None:
    state, effects = step(up(make_config(number=2)), command(7, "upgrade", id="u", now=1.0))
    assert effects[-1] == CompareImage(0)
    assert state.reexec == Reexec(
        ReexecPurpose.SMOOTH_UPGRADE, (Subscriber(7, "u"),), 0, 1.0 + UPGRADE_CHECK_TIMEOUT, ReexecPhase.COMPARING
    )
    assert state.next_check_id == 1
    assert next_deadline(state) == 1.0 + UPGRADE_CHECK_TIMEOUT


def test_a_changed_image_starts_the_check_under_the_same_deadline() -> None:
    state = upgrading(now=1.0)
    assert state.reexec == Reexec(ReexecPurpose.SMOOTH_UPGRADE, (Subscriber(7, "u"),), 0, 1.0 + UPGRADE_CHECK_TIMEOUT)
    assert next_deadline(state) == 1.0 + UPGRADE_CHECK_TIMEOUT


def test_an_unchanged_image_is_its_own_check_the_exec_is_ordered_at_once() -> None:
    state, effects = step(comparing(), ImageCompared(0, True, "136 files unchanged since this master started", 1.5))
    assert effects == [
        Log(LogLevel.INFO, "Upgrade check skipped: the new einhorn is this one (136 files unchanged since this master started)"),
        ExecMaster(),
    ]
    assert state.reexec is not None and state.reexec.phase is ReexecPhase.EXECUTING
    assert next_deadline(state) is None


def test_a_comparison_for_another_check_or_phase_is_logged_and_ignored() -> None:
    for state, check_id in ((comparing(), 5), (upgrading(), 0)):
        after, effects = step(state, ImageCompared(check_id, True, "unchanged", 2.0))
        assert effects == [Log(LogLevel.DEBUG, f"Image comparison {check_id} answered after its re-exec ended; ignoring")]
        assert after == replace(state, clock=2.0)


def test_a_comparison_past_its_deadline_fails_with_nothing_to_stop() -> None:
    state = comparing(now=1.0)
    after, effects = step(state, Tick(1.0 + UPGRADE_CHECK_TIMEOUT))
    message = ABORT + "the new einhorn failed its upgrade check: it did not finish within 30s"
    assert effects == [Log(LogLevel.ERROR, message), Reply(7, f"ERROR: {message}", "u", failed=True)]
    assert after.reexec is None


def test_shutting_down_or_aborting_while_comparing_withdraws_nothing() -> None:
    message = ABORT + "einhorn is shutting down"
    state, effects = step(comparing(), SignalReceived("TERM", 2.0))
    assert effects[-2:] == [Log(LogLevel.ERROR, message), Reply(7, f"ERROR: {message}", "u", failed=True)]
    assert not any(isinstance(e, (StopUpgradeCheck, AbandonExec)) for e in effects) and state.reexec is None
    state, effects = step(comparing(), command(8, "abort_upgrade", now=2.0))
    assert not any(isinstance(e, (StopUpgradeCheck, AbandonExec)) for e in effects) and state.reexec is None


def test_a_passed_check_orders_the_exec() -> None:
    state, effects = step(upgrading(), UpgradeCheckPassed(0, 2.0))
    assert effects == [ExecMaster()]
    assert state.reexec is not None and state.reexec.phase is ReexecPhase.EXECUTING
    assert next_deadline(state) is None  # nothing left to time: the exec answers


def test_a_verdict_for_another_check_is_logged_and_ignored() -> None:
    state = upgrading()
    after, effects = step(state, UpgradeCheckPassed(5, 2.0))
    assert effects == [Log(LogLevel.DEBUG, "Upgrade check 5 passed after its re-exec ended; ignoring")]
    assert after == replace(state, clock=2.0)
    after, effects = step(state, UpgradeCheckFailed(5, "exited with status 1", 2.0))
    assert effects == [Log(LogLevel.DEBUG, "Upgrade check 5 failed after its re-exec ended; ignoring")]
    assert after == replace(state, clock=2.0)


def test_a_failed_check_ends_the_reexec_with_an_error_to_its_subscribers() -> None:
    state, effects = step(upgrading(), UpgradeCheckFailed(0, "`einhorn --upgrade-check` exited with status 3", 2.0))
    message = ABORT + "the new einhorn failed its upgrade check: `einhorn --upgrade-check` exited with status 3"
    assert effects == [Log(LogLevel.ERROR, message), Reply(7, f"ERROR: {message}", "u", failed=True)]
    assert state.reexec is None and state.version == 0


def test_a_check_past_its_deadline_is_stopped_and_the_reexec_fails() -> None:
    state = upgrading(now=1.0)
    deadline = next_deadline(state)
    assert deadline is not None
    after, effects = step(state, Tick(deadline - 0.001))
    assert after.reexec == state.reexec
    after, effects = step(state, Tick(deadline))
    message = ABORT + "the new einhorn failed its upgrade check: it did not finish within 30s"
    assert effects == [StopUpgradeCheck(0), Log(LogLevel.ERROR, message), Reply(7, f"ERROR: {message}", "u", failed=True)]
    assert after.reexec is None
    # Its late verdict is then stale.
    _, late = step(after, UpgradeCheckPassed(0, deadline + 1))
    assert late == [Log(LogLevel.DEBUG, "Upgrade check 0 passed after its re-exec ended; ignoring")]


def test_shutting_down_during_the_check_stops_it() -> None:
    state, effects = step(upgrading(), SignalReceived("TERM", 2.0))
    message = ABORT + "einhorn is shutting down"
    assert effects[-3:] == [StopUpgradeCheck(0), Log(LogLevel.ERROR, message), Reply(7, f"ERROR: {message}", "u", failed=True)]
    assert state.reexec is None and not state.respawn


def test_shutting_down_after_the_exec_was_ordered_withdraws_it() -> None:
    state, _ = step(upgrading(), UpgradeCheckPassed(0, 2.0))
    state, effects = step(state, command(8, "die", now=2.0))
    message = ABORT + "einhorn is shutting down"
    assert effects[-3:] == [AbandonExec(), Log(LogLevel.ERROR, message), Reply(7, f"ERROR: {message}", "u", failed=True)]
    assert state.reexec is None


def test_a_failed_exec_ends_the_reexec_and_a_stray_one_is_ignored() -> None:
    state, _ = step(upgrading(), UpgradeCheckPassed(0, 2.0))
    after, effects = step(state, ReexecFailed("could not exec einhorn: Permission denied", 2.0))
    message = ABORT + "could not exec einhorn: Permission denied"
    assert effects == [Log(LogLevel.ERROR, message), Reply(7, f"ERROR: {message}", "u", failed=True)]
    assert after.reexec is None
    stray, effects = step(upgrading(), ReexecFailed("could not exec einhorn", 2.0))
    assert effects == [Log(LogLevel.DEBUG, "Re-exec failure with no exec ordered (could not exec einhorn); ignoring")]
    assert stray.reexec is not None


def test_the_restore_fails_the_spawns_the_old_image_had_in_flight() -> None:
    state, _ = step(upgrading(), UpgradeCheckPassed(0, 2.0))
    state = replace(state, pending={4: PendingSpawn(4, 2, 0, 1.5)}, next_spawn_id=5)
    after, effects = step(state, MasterStarted(3.0, restored=True))
    assert effects[:2] == [
        Log(LogLevel.INFO, "Restored state: version 0, 2 workers"),
        Log(LogLevel.ERROR, "Spawns [4] were in flight across the master's re-exec and are lost; counted as failed"),
    ]
    assert 4 not in after.pending and after.reexec is None and after.version == 1
    # Its index is free again: the upgrade's first new worker takes it.
    assert [e for e in effects if isinstance(e, SpawnWorker)] == [SpawnWorker(5, 2, 1)]


def test_a_request_during_the_check_joins_it_and_hears_its_end() -> None:
    state, _ = step(upgrading(), command(8, "reload", id="r", now=1.5))
    assert state.reexec is not None and state.reexec.subscribers == (Subscriber(7, "u"), Subscriber(8, "r"))
    state, effects = step(state, UpgradeCheckFailed(0, "exited with status 1", 2.0))
    assert [e.conn for e in effects if isinstance(e, Reply)] == [7, 8]


def test_the_next_upgrade_gets_a_new_check_id() -> None:
    state, _ = step(upgrading(), UpgradeCheckFailed(0, "exited with status 1", 2.0))
    state, effects = step(state, command(7, "upgrade", now=3.0))
    assert CompareImage(1) in effects and state.reexec is not None and state.reexec.check_id == 1


def test_lost_spawns_count_as_deaths_before_ack() -> None:
    state, _ = step(up(make_config(number=2)), command(7, "reload", id="r", now=1.0))
    state, _ = step(state, ImageCompared(0, True, "unchanged", 2.0))
    state = replace(state, pending={4: PendingSpawn(4, 2, 0, 1.5), 5: PendingSpawn(5, 3, 0, 1.5)}, next_spawn_id=6)
    after, _ = step(state, MasterStarted(3.0, restored=True))
    assert after.pending == {} and after.deaths_before_ack == 2  # a reload keeps the streak (an upgrade resets it)
