"""What happens on upgrade, in the core: the whole re-exec lifecycle and the worker half of an upgrade.

One re-exec, from the request to its end (spec/upgrades.md):

1. `start_reexec` (an `upgrade`, `upgrade_fleet` or `reload` request, SIGHUP):
   record a `Reexec` in phase COMPARING with a deadline, order `CompareImage`.
   A request while one is in progress joins it.
2. `on_image_compared`: the image a re-exec would run is the running one (every
   file it would load is as this image loaded it): the running master is the
   proof a check would give, so phase EXECUTING and `ExecMaster` at once.
   Otherwise phase CHECKING, order `StartUpgradeCheck`.
3. `on_check_passed`: phase EXECUTING, order `ExecMaster` (the shell performs
   it once the events already read are handled). `on_check_failed`, or the
   deadline passing (`CHECK_DEADLINE`), ends the re-exec with an error.
4. `on_restored` (the new image's `MasterStarted(restored=True)`): spawns the
   old image had in flight are failed, then a reload says "Reload done" and an
   upgrade records the new generation with the new image's launch spec and
   starts the rollout to it (`rollout.begin`: a canary, or replacing workers).
   `on_reexec_failed`: the exec itself failed; the old image keeps running.

Shutting down abandons a re-exec in any phase (`abandon_when_shutting_down`,
run by reconcile after every event): the check is stopped, an ordered exec is
withdrawn, and the requesters are told.
"""

from __future__ import annotations

from einhorn.core import drain, rollout
from einhorn.core.actions import announce
from einhorn.core.config import UPGRADE_CHECK_TIMEOUT
from einhorn.core.effects import (
    AbandonExec,
    CompareImage,
    Effect,
    ExecMaster,
    Log,
    LogLevel,
    Reply,
    StartUpgradeCheck,
    StopUpgradeCheck,
)
from einhorn.core.events import ImageCompared, ReexecFailed, UpgradeCheckFailed, UpgradeCheckPassed
from einhorn.core.record import replace
from einhorn.core.state import (
    LaunchSpec,
    Reexec,
    ReexecPhase,
    ReexecPurpose,
    State,
    Subscriber,
    UpgradeKind,
    UpgradeOptions,
)

Outcome = tuple[State, list[Effect]]


def start_reexec(
    state: State, purpose: ReexecPurpose, subscriber: Subscriber | None, options: UpgradeOptions | None = None
) -> Outcome:
    """`options` go with the re-exec to the new image (a request joining one in progress keeps the first's)."""
    if not state.respawn:
        message = "Not reloading einhorn because we're exiting"
        replies = [Reply(subscriber.conn, message, subscriber.request_id, failed=True)] if subscriber else []
        return state, [Log(LogLevel.INFO, message), *replies]
    joining = (subscriber,) if subscriber else ()
    if state.reexec is not None:
        reexec = replace(state.reexec, subscribers=state.reexec.subscribers + joining)
        return replace(state, reexec=reexec), [
            Log(LogLevel.INFO, f"A re-exec ({state.reexec.purpose.value}) is already in progress")
        ]
    check_id = state.next_check_id
    reexec = Reexec(
        purpose, joining, check_id, deadline=state.clock + UPGRADE_CHECK_TIMEOUT, phase=ReexecPhase.COMPARING, options=options
    )
    state = replace(state, reexec=reexec, next_check_id=check_id + 1)
    return state, [*announce(state, LogLevel.INFO, f"Reloading einhorn master ({purpose.value})..."), CompareImage(check_id)]


def _waiting(state: State, check_id: int, phase: ReexecPhase) -> Reexec | None:
    """The re-exec waiting in `phase` for this check's answer, if any (a late or stale answer has none)."""
    reexec = state.reexec
    if reexec is None or reexec.phase is not phase or reexec.check_id != check_id:
        return None
    return reexec


def on_image_compared(state: State, event: ImageCompared) -> Outcome:
    reexec = _waiting(state, event.check_id, ReexecPhase.COMPARING)
    if reexec is None:
        return state, [Log(LogLevel.DEBUG, f"Image comparison {event.check_id} answered after its re-exec ended; ignoring")]
    if event.unchanged:
        state = replace(state, reexec=replace(reexec, phase=ReexecPhase.EXECUTING))
        return state, [Log(LogLevel.INFO, f"Upgrade check skipped: the new einhorn is this one ({event.detail})"), ExecMaster()]
    state = replace(state, reexec=replace(reexec, phase=ReexecPhase.CHECKING))
    return state, [Log(LogLevel.INFO, f"Running the upgrade check: {event.detail}"), StartUpgradeCheck(event.check_id)]


def on_check_passed(state: State, event: UpgradeCheckPassed) -> Outcome:
    reexec = _waiting(state, event.check_id, ReexecPhase.CHECKING)
    if reexec is None:
        return state, [Log(LogLevel.DEBUG, f"Upgrade check {event.check_id} passed after its re-exec ended; ignoring")]
    state = replace(state, reexec=replace(reexec, phase=ReexecPhase.EXECUTING))
    return state, [ExecMaster()]


def on_check_failed(state: State, event: UpgradeCheckFailed) -> Outcome:
    if _waiting(state, event.check_id, ReexecPhase.CHECKING) is None:
        return state, [Log(LogLevel.DEBUG, f"Upgrade check {event.check_id} failed after its re-exec ended; ignoring")]
    return end_failed(state, f"the new einhorn failed its upgrade check: {event.reason}")


def on_reexec_failed(state: State, event: ReexecFailed) -> Outcome:
    if state.reexec is None or state.reexec.phase is not ReexecPhase.EXECUTING:
        return state, [Log(LogLevel.DEBUG, f"Re-exec failure with no exec ordered ({event.reason}); ignoring")]
    return end_failed(state, event.reason)


def end_failed(state: State, reason: str) -> Outcome:
    """End the re-exec in progress with an error to its requesters; the master keeps running the old code."""
    assert state.reexec is not None
    what = "reload" if state.reexec.purpose is ReexecPurpose.RELOAD else "upgrade"
    message = f"Can not initiate einhorn master {what} safely, aborting: {reason}"
    effects: list[Effect] = [Log(LogLevel.ERROR, message)]
    effects += [Reply(s.conn, f"ERROR: {message}", s.request_id, failed=True) for s in state.reexec.subscribers]
    return replace(state, reexec=None), effects


def check_deadline(state: State) -> float | None:
    """When the comparison or the running upgrade check must have passed."""
    reexec = state.reexec
    return reexec.deadline if reexec is not None and reexec.phase is not ReexecPhase.EXECUTING else None


def fail_overdue_check(state: State) -> Outcome:
    """The check's deadline passed without a verdict (the `CHECK_DEADLINE` timer fired): stop it, fail the re-exec."""
    assert state.reexec is not None and state.reexec.phase is not ReexecPhase.EXECUTING
    stop = withdrawal(state.reexec)
    state, effects = end_failed(
        state, f"the new einhorn failed its upgrade check: it did not finish within {UPGRADE_CHECK_TIMEOUT:g}s"
    )
    return state, [*stop, *effects]


def withdrawal(reexec: Reexec) -> list[Effect]:
    """What the shell must stop when a re-exec ends early: the running check, or the ordered exec."""
    match reexec.phase:
        case ReexecPhase.COMPARING:
            return []  # the shell answers a comparison at once: nothing runs
        case ReexecPhase.CHECKING:
            return [StopUpgradeCheck(reexec.check_id)]
        case ReexecPhase.EXECUTING:
            return [AbandonExec()]


def abandon_when_shutting_down(state: State) -> Outcome:
    """No re-exec once shutting down, whatever phase it reached."""
    if state.respawn or state.reexec is None:
        return state, []
    withdraw = withdrawal(state.reexec)
    state, effects = end_failed(state, "einhorn is shutting down")
    return state, [*withdraw, *effects]


def on_restored(state: State, launch: LaunchSpec | None) -> Outcome:
    """The new image is up with the old image's state (`MasterStarted(restored=True)`); `launch` is its launch spec."""
    effects: list[Effect] = [Log(LogLevel.INFO, f"Restored state: version {state.version}, {len(state.children)} workers")]
    state, effects = _fail_lost_spawns(state, effects)
    state = rollout.record_generation(state, launch)  # a state from before generations
    reexec = state.reexec
    state = drain.after_reexec(replace(state, reexec=None))
    if reexec is None:
        return state, effects
    match reexec.purpose:
        case ReexecPurpose.RELOAD:
            effects += [Reply(s.conn, "Reload done", s.request_id) for s in reexec.subscribers]
        case ReexecPurpose.SMOOTH_UPGRADE | ReexecPurpose.FLEET_UPGRADE:
            kind = UpgradeKind.SMOOTH if reexec.purpose is ReexecPurpose.SMOOTH_UPGRADE else UpgradeKind.FLEET
            state = replace(state, upgrade_subscribers=(*state.upgrade_subscribers, *reexec.subscribers))
            state, more = rollout.begin(state, kind, reexec.options, launch)
            effects += more
    return state, effects


def _fail_lost_spawns(state: State, effects: list[Effect]) -> tuple[State, list[Effect]]:
    """A spawn the old image had in flight will never be answered: it failed (a death before ACK), and
    the rollout hears of it as of any failed spawn (a canary's: the canary failed)."""
    if not state.pending:
        return state, effects
    lost = [state.pending[spawn_id] for spawn_id in sorted(state.pending)]
    state = replace(state, pending={}, deaths_before_ack=state.deaths_before_ack + len(lost))
    note = f"Spawns {[p.spawn_id for p in lost]} were in flight across the master's re-exec and are lost; counted as failed"
    effects = [*effects, Log(LogLevel.ERROR, note)]
    for spawn in lost:
        state, more = rollout.on_worker_lost(state, spawn.version, 0, False, True, "in flight across the master's re-exec")
        effects += more
    return state, effects
