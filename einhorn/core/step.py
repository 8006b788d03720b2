"""The one entry point: `step(state, event) -> (state, effects)`, and `next_deadline`.

Every event is handled by its own function, then `reconcile` runs after every
event whatever it was: timer ACKs, SIGKILL escalation, replenish, cull, exit.
That pass is the whole scheduling policy of BEHAVIOR §4; spec/README.md states
its rules and invariants in words.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from einhorn.core import assert_never, drain, health, listeners, notify, pool, rollout, upgrade
from einhorn.core.actions import announce, register_ack, signal_children, signal_gracefully, spin_up
from einhorn.core.commands import handle_command
from einhorn.core.effects import (
    Cause,
    Effect,
    Exit,
    Log,
    LogFields,
    LogLevel,
    Reply,
    SendSignal,
)
from einhorn.core.events import (
    ChildExited,
    CommandReceived,
    ConnectionClosed,
    Event,
    ImageCompared,
    ListenerHealthChanged,
    MasterStarted,
    QueuesMeasured,
    ReexecFailed,
    RequestUnparseable,
    SignalReceived,
    SpawnFailed,
    Tick,
    UpgradeCheckFailed,
    UpgradeCheckPassed,
    WorkerMeasured,
    WorkerNotified,
    WorkerSpawned,
)
from einhorn.core.record import dataclass, replace
from einhorn.core.state import Child, ReexecPurpose, State, Subscriber, UpgradeKind, Verdict

Outcome = tuple[State, list[Effect]]


def step(state: State, event: Event) -> Outcome:
    if event.now > state.clock:
        state = replace(state, clock=event.now)
    previous = state
    match event:
        case MasterStarted():
            state, effects = _on_started(state, event)
        case Tick():
            effects = []
        case WorkerSpawned():
            state, effects = _on_spawned(state, event)
        case SpawnFailed():
            state, effects = _on_spawn_failed(state, event)
        case ChildExited():
            state, effects = _on_child_exited(state, event)
        case SignalReceived():
            state, effects = _on_signal(state, event)
        case CommandReceived():
            state, effects = handle_command(state, event)
        case RequestUnparseable():
            effects = [Reply(event.conn, "Could not parse command")]
        case ConnectionClosed():
            state, effects = _on_connection_closed(state, event)
        case ImageCompared():
            state, effects = upgrade.on_image_compared(state, event)
        case UpgradeCheckPassed():
            state, effects = upgrade.on_check_passed(state, event)
        case UpgradeCheckFailed():
            state, effects = upgrade.on_check_failed(state, event)
        case ReexecFailed():
            state, effects = upgrade.on_reexec_failed(state, event)
        case WorkerNotified():
            state, effects = notify.on_worker_notified(state, event)
        case ListenerHealthChanged():
            state, effects = listeners.on_health_changed(state, event)
        case WorkerMeasured():
            state, effects = health.on_measured(state, event)
        case QueuesMeasured():
            state, effects = drain.on_measured(state, event)
        case _:
            assert_never(event)
    state, more = reconcile(state)
    state, steering = drain.settle(previous, state)
    state, told = notify.tell_supervisor(previous, state)
    return state, [*effects, *more, *steering, *_held_notice(previous, state), *health.held_notice(previous, state), *told]


def next_deadline(state: State) -> float | None:
    """When the shell must wake the core with a `Tick`, if nothing else happens first.

    The earliest deadline of any timer (`TIMERS`) after `state.clock`: one at
    or before it has already fired, or is blocked until some other event
    changes the state.
    """
    future = [_first_after(timer.due(state), state.clock) for timer in TIMERS]
    return min((deadline for deadline in future if deadline is not None), default=None)


def _first_after(due: Iterable[tuple[float, int]], clock: float) -> float | None:
    return next((deadline for deadline, _ in due if deadline > clock), None)


# --- events ---------------------------------------------------------------


def _on_started(state: State, event: MasterStarted) -> Outcome:
    if event.restored:
        return upgrade.on_restored(state, event.launch)
    return rollout.record_generation(state, event.launch), []


def _on_spawned(state: State, event: WorkerSpawned) -> Outcome:
    pending = state.pending.get(event.spawn_id)
    if pending is None:
        return state, [Log(LogLevel.ERROR, f"Spawn result for unknown spawn {event.spawn_id} (pid {event.pid}); ignoring")]
    child = Child(
        pid=event.pid,
        version=pending.version,
        index=pending.index,
        spinup_at=event.now,
    )
    state = replace(state, pending=state.indexed_pending.delete(event.spawn_id), children=state.indexed_children.set(child))
    fields = (("pid", event.pid), ("index", pending.index), ("version", pending.version))
    effects = announce(state, LogLevel.INFO, f"===> Launched {event.pid} (index: {pending.index})", fields)
    if not state.respawn and state.shutdown_signal == state.config.graceful_signal:
        state, more = signal_gracefully(state, [event.pid], Cause.SHUTDOWN)
        effects += more
    elif not state.respawn and state.shutdown_signal is not None:
        state, more = signal_children(state, state.shutdown_signal, [event.pid], Cause.SHUTDOWN)
        effects += more
    return state, effects


def _on_spawn_failed(state: State, event: SpawnFailed) -> Outcome:
    if event.spawn_id not in state.pending:
        return state, [Log(LogLevel.ERROR, f"Spawn failure for unknown spawn {event.spawn_id}; ignoring")]
    pending = state.pending[event.spawn_id]
    state = replace(state, pending=state.indexed_pending.delete(event.spawn_id), deaths_before_ack=state.deaths_before_ack + 1)
    fields = (("index", pending.index), ("version", pending.version), ("reason", event.reason), ("streak", state.deaths_before_ack))
    effects: list[Effect] = [
        Log(
            LogLevel.ERROR,
            f"Could not spawn worker: {event.reason}; will retry in {pool.spinup_interval(state):g}s",
            fields,
        ),
        *_crash_loop(state, f"the last could not be spawned: {event.reason}", fields),
    ]
    state, more = rollout.on_worker_lost(state, pending.version, 0, False, True, event.reason)
    return state, effects + more


def _on_child_exited(state: State, event: ChildExited) -> Outcome:
    child = state.children.get(event.pid)
    if child is None:
        if state.config.reaper:  # an orphan of some worker's, adopted: nothing to tell
            return state, [Log(LogLevel.DEBUG, f"Reaped orphaned process {event.pid} ({_describe_exit(event)})")]
        return state, [Log(LogLevel.INFO, f"Reaped unknown process {event.pid} ({_describe_exit(event)}); ignoring")]
    state = replace(state, children=state.indexed_children.delete(event.pid))
    extra = ""
    if not child.acked:
        extra = " before it was ACKed"
    elif health.booted_out(child):
        extra = " after its boot timeout (counted as a death before ACK)"
    elif pool.died_young(state, child):
        extra = f" within {state.config.seconds:g}s of its start (counted as a death before ACK)"
    if extra:
        state = replace(state, deaths_before_ack=state.deaths_before_ack + 1)
    cause = f"signal {event.signal}" if event.signal is not None else f"exit code {event.exit_code}"
    fields = (
        ("pid", event.pid),
        ("index", child.index),
        ("version", child.version),
        ("cause", cause),
        ("before_ack", not child.acked),
        ("streak", state.deaths_before_ack),
    )
    how = _describe_exit(event)
    effects = announce(state, LogLevel.INFO, f"===> Exited worker {event.pid}{extra} ({how})", fields)
    if extra:
        effects += _crash_loop(state, f"the last was {event.pid} ({how})", fields)
    state, more = rollout.on_worker_lost(state, child.version, child.pid, child.acked, bool(extra), how)
    return state, effects + more


CRASH_LOOP_STREAK = 3
"""Consecutive deaths before ACK from which each further one is also a WARN."""


def _crash_loop(state: State, last: str, fields: LogFields) -> list[Effect]:
    streak = state.deaths_before_ack
    if streak < CRASH_LOOP_STREAK:
        return []
    text = f"Crash loop: {streak} workers in a row died before their ACK ({last}); next spin-up in {pool.spinup_interval(state):g}s"
    return [Log(LogLevel.WARN, text, fields)]


def _describe_exit(event: ChildExited) -> str:
    if event.signal is not None:
        return f"killed by signal {event.signal}"
    return f"exit status {event.exit_code}"


def _on_signal(state: State, event: SignalReceived) -> Outcome:
    match event.signal:
        case "INT" | "USR2":
            return _shut_down(state, event.signal, state.config.graceful_signal)
        case "TERM" if state.config.reaper:  # a container's stop: finish, as SIGINT
            return _shut_down(state, event.signal, state.config.graceful_signal)
        case "TERM":
            return _shut_down(state, event.signal, "TERM")
        case "QUIT":
            state, effects = _shut_down(state, event.signal, "QUIT")
            return replace(state, exit_code=1), [*effects, Exit(1)]
        case "HUP":
            return upgrade.start_reexec(state, ReexecPurpose.SMOOTH_UPGRADE, None)
        case "ALRM":
            state, effects = upgrade.start_reexec(state, ReexecPurpose.SMOOTH_UPGRADE, None)
            return state, [Log(LogLevel.ERROR, "Upgrading using SIGALRM is deprecated. Please switch to SIGHUP"), *effects]
        case other:
            return state, [Log(LogLevel.DEBUG, f"Ignoring SIG{other}")]


def _shut_down(state: State, received: str, send: str) -> Outcome:
    graceful = send == state.config.graceful_signal  # then each worker gets its own generation's
    state = replace(state, respawn=False, shutdown_signal=send)
    if graceful:
        state, effects = signal_gracefully(state, sorted(state.children), Cause.SHUTDOWN)
    else:
        state, effects = signal_children(state, send, sorted(state.children), Cause.SHUTDOWN)
    note = Log(LogLevel.INFO, f"Received SIG{received}: sent SIG{send} to all children; exiting once they are gone")
    return state, [note, *effects]


def _on_connection_closed(state: State, event: ConnectionClosed) -> Outcome:
    def keep(subscribers: tuple[Subscriber, ...]) -> tuple[Subscriber, ...]:
        return tuple(s for s in subscribers if s.conn != event.conn)

    reexec = state.reexec
    if reexec is not None:
        reexec = replace(reexec, subscribers=keep(reexec.subscribers))
    return replace(state, upgrade_subscribers=keep(state.upgrade_subscribers), reexec=reexec), []


# --- reconcile: the scheduling pass after every event ---------------------


@dataclass(frozen=True, slots=True)
class Timer:
    """A rule that acts when a deadline passes: `due` lists (deadline, subject)
    pairs, earliest first, `fire` acts on one subject. Reconcile fires every
    subject whose deadline is at or before the clock, and `next_deadline` is
    the earliest later one: the deadline and its action are one definition.
    (Earliest first, so that both stop at the first later deadline: the ACK
    and escalation timers read their orders from `Children`.)"""

    due: Callable[[State], Iterable[tuple[float, int]]]
    fire: Callable[[State, int], Outcome]


def _ack_timer_due(state: State) -> Iterable[tuple[float, int]]:
    delay = state.config.ack_timer
    if delay is None:
        return ()
    return ((spinup_at + delay, pid) for spinup_at, pid in state.indexed_children.unacked_by_spinup())


def _escalation_due(state: State) -> Iterable[tuple[float, int]]:
    timeout = state.config.signal_timeout
    if timeout is None:
        return ()
    return ((signaled_at + timeout, pid) for signaled_at, pid in state.indexed_children.escalating_by_signal_time())


def _escalate(state: State, pid: int) -> Outcome:
    child = state.children[pid]
    state = replace(state, children=state.indexed_children.set(replace(child, killed=True)))
    fields = (("pid", pid), ("index", child.index), ("version", child.version), ("signal", "KILL"), ("cause", Cause.ESCALATION.value))
    return state, [
        Log(LogLevel.WARN, f"Child {pid} is still active after {state.config.signal_timeout}s. Sending SIGKILL.", fields),
        SendSignal(pid, "KILL", Cause.ESCALATION),
    ]


def _check_due(state: State) -> Iterable[tuple[float, int]]:
    deadline = upgrade.check_deadline(state)
    return () if deadline is None else [(deadline, 0)]


def _spinup_due(state: State) -> Iterable[tuple[float, int]]:
    """A gradual spin-up: paced by ACKs, due now (it waits for nothing but a free un-ACKed
    slot, which only an event frees); else the interval after the last one. None while a
    re-exec is in progress: a worker started now would be of the old version."""
    if not state.respawn or state.last_spinup_at is None or state.reexec is not None:
        return ()
    if pool.missing_worker_count(state) <= 0:
        return ()
    if pool.paced_by_acks(state):
        return [(state.clock, 0)]
    return [(state.last_spinup_at + pool.spinup_interval(state), 0)]


# (The lambdas look their rule up when called, so that a test can plant a bug in one.)
TIMER_ACKS = Timer(lambda state: _ack_timer_due(state), lambda state, pid: register_ack(state, pid))
ESCALATION = Timer(lambda state: _escalation_due(state), lambda state, pid: _escalate(state, pid))
CHECK_DEADLINE = Timer(lambda state: _check_due(state), lambda state, _: upgrade.fail_overdue_check(state))
GRADUAL_SPINUP = Timer(lambda state: _spinup_due(state), lambda state, _: _spin_up_gradually(state))
WATCHDOG = Timer(lambda state: notify.watchdog_due(state), lambda state, subject: notify.ping_watchdog(state, subject))
ROLLOUT_TIMEOUT = Timer(lambda state: rollout.timeout_due(state), lambda state, _: rollout.time_out(state))
BAKE = Timer(lambda state: rollout.bake_due(state), lambda state, _: rollout.promote(state))
BOOT_TIMEOUT = Timer(lambda state: health.boot_due(state), lambda state, pid: health.condemn(state, pid, Verdict.BOOT_TIMEOUT))
PING_TIMEOUT = Timer(lambda state: health.ping_due(state), lambda state, pid: health.condemn(state, pid, Verdict.PING_TIMEOUT))
DRAIN_POLL = Timer(lambda state: drain.poll_due(state), lambda state, version: drain.measure(state, version))
DRAIN_GRACE = Timer(lambda state: drain.grace_due(state), lambda state, _: (state, []))  # the cull after it signals
DRAIN_TIMEOUT = Timer(lambda state: drain.timeout_due(state), lambda state, version: drain.time_out(state, version))
TIMERS = (
    TIMER_ACKS,
    ESCALATION,
    CHECK_DEADLINE,
    ROLLOUT_TIMEOUT,
    BAKE,
    GRADUAL_SPINUP,
    WATCHDOG,
    BOOT_TIMEOUT,
    PING_TIMEOUT,
    DRAIN_POLL,
    DRAIN_GRACE,
    DRAIN_TIMEOUT,
)


def _fire(timer: Timer, state: State) -> Outcome:
    effects: list[Effect] = []
    for deadline, subject in timer.due(state):  # the state it was called with: each `fire` makes a new one
        if deadline > state.clock:
            break
        state, more = timer.fire(state, subject)
        effects += more
    return state, effects


def reconcile(state: State) -> Outcome:
    """The scheduling pass after every event, in this order (spec/README.md §4)."""
    effects: list[Effect] = []
    state = drain.begin_pass(state)
    phases: tuple[Callable[[State], Outcome], ...] = (
        lambda s: _fire(TIMER_ACKS, s),
        lambda s: _fire(ESCALATION, s),
        lambda s: _fire(CHECK_DEADLINE, s),
        lambda s: _fire(ROLLOUT_TIMEOUT, s),
        lambda s: _fire(BOOT_TIMEOUT, s),
        lambda s: _fire(PING_TIMEOUT, s),
        lambda s: _fire(DRAIN_POLL, s),
        lambda s: _fire(DRAIN_GRACE, s),
        lambda s: _fire(DRAIN_TIMEOUT, s),
        _stop_condemned,
        upgrade.abandon_when_shutting_down,
        _first_fill,
        rollout.advance,
        lambda s: _fire(BAKE, s),
        lambda s: _fire(GRADUAL_SPINUP, s),
        _cull,
        _maybe_exit,
        lambda s: _fire(WATCHDOG, s),
        rollout.prune,
    )
    for phase in phases:
        state, more = phase(state)
        effects += more
    return state, effects


def _stop_condemned(state: State) -> Outcome:
    """Workers a health rule condemned, oldest first, each as soon as the availability floor
    allows (health.py): before the cull, so that they go before any healthy worker."""
    effects: list[Effect] = []
    for child in pool.condemned(state):
        assert child.verdict is not None
        note = health.stop_message(state, child)
        state, more = _stop(state, [child], health.CAUSES[child.verdict], note, level=LogLevel.WARN)
        effects += more
    return state, effects


def _first_fill(state: State) -> Outcome:
    """Before any spin-up, every missing worker starts at once."""
    if not state.respawn or state.last_spinup_at is not None or state.reexec is not None:
        return state, []
    missing = pool.missing_worker_count(state)
    if missing <= 0:
        return state, []
    state, effects = spin_up(state, missing)
    return state, [Log(LogLevel.INFO, f"Launching {missing} new workers"), *effects]


def _spin_up_gradually(state: State) -> Outcome:
    """Within max_unacked (and max_upgrade_additional): paced by ACKs, every missing worker a
    free slot allows; paced by the interval, one."""
    config = state.config
    unacked = pool.unacked_unsignaled_modern_count(state)
    room = config.max_unacked - unacked
    if config.max_upgrade_additional is not None:
        room = min(room, config.number + config.max_upgrade_additional - pool.total_worker_count(state))
    if room <= 0:
        return state, []
    if pool.paced_by_acks(state):
        count = min(room, pool.missing_worker_count(state))
        what = "a new process" if count == 1 else f"{count} new processes"
        pace = "paced by ACKs"
    else:
        count, what, pace = 1, "a new process", f"spin-up interval {pool.spinup_interval(state):g}s"
    note = Log(
        LogLevel.INFO,
        f"Launching {what} since there are {unacked} unacked new workers and max_unacked is {config.max_unacked} ({pace})",
    )
    state, effects = spin_up(state, count)
    return state, [note, *effects]


def _cull(state: State) -> Outcome:
    effects: list[Effect] = []
    acked = pool.ack_count(state)
    target = pool.ack_target(state)
    if state.upgrading is not None and acked >= target:
        version = f"version {state.version} (Einhorn {state.config.einhorn_version})"
        effects += announce(state, LogLevel.INFO, f"Upgraded successfully to {version}.")
        effects += [Reply(s.conn, "Upgrade done", s.request_id) for s in state.upgrade_subscribers]
        state = replace(state, upgrading=None, upgrade_subscribers=(), rollout=None)

    old = pool.old_count(state)
    if state.upgrading is None and old:
        victims = pool.old_by_priority(state)
        rolled_back = rollout.rolled_back_versions(state)
        note = "Rolling back: stopping {} workers of a rolled-back generation."
        state, more = _stop(state, [c for c in victims if c.version in rolled_back], Cause.ROLLBACK, note)
        effects += more
        rest = [c for c in victims if c.version not in rolled_back]
        state, more = _stop(state, rest, Cause.UPGRADE, "Killing off {} old workers.")
        effects += more
    elif state.upgrading is UpgradeKind.SMOOTH:
        excess = old + acked - target
        if excess > 0:
            state, more = _stop(state, pool.old_by_priority(state, excess), Cause.UPGRADE, "Smooth upgrade: killing off {} old workers.")
            effects += more

    room = _room_to_make(state)
    if room > 0:
        victims = pool.old_by_priority(state, room)
        state, more = _stop(state, victims, Cause.MAKE_ROOM, "At upgrade capacity: killing off {} old workers to make room.")
        effects += more

    surplus = pool.unsignaled_modern_count(state) - target
    if surplus > 0:
        victims = pool.surplus_by_priority(state, surplus)
        note = "Have too many workers at the current version, so killing off {} of them."
        state, more = _stop(state, victims, Cause.SURPLUS, note, stream=False)
        effects += more
    return state, effects


def _stop(state: State, victims: list[Child], cause: Cause, note: str, stream: bool = True, level: LogLevel = LogLevel.INFO) -> Outcome:
    """The graceful signal to `victims`, on the master's own initiative, within the availability floor.

    The floor (spec/README.md, T12): a serving (ACKed, unsignaled) worker is
    stopped only while more than `number` serve (the first serving victims in
    the order given go, the rest stay), so no cull leaves fewer than
    min(number, those serving before it). Un-ACKed victims serve nothing and
    always go. With drain listeners a victim may wait for its generation's
    drain (drain.py), unsignaled and still counted. `note` is logged with the
    count, and streamed to upgrade subscribers when `stream`.
    """
    spare = max(0, pool.serving_count(state) - state.config.number)
    serving = [c.pid for c in victims if c.acked and not c.signaled]
    kept = set(serving[spare:])
    state, pids, effects = drain.admit(state, [c.pid for c in victims if c.pid not in kept])
    if not pids:
        return state, effects
    text = note.format(len(pids))
    effects += announce(state, level, text) if stream else [Log(level, text)]
    state, more = signal_gracefully(state, pids, cause)
    return state, [*effects, *more]


def _room_to_make(state: State) -> int:
    """How many old workers an upgrade capped by max_upgrade_additional must stop to go on.

    Only when workers are missing, no new worker is on its way up (none
    un-ACKed or spawning) and the unsignaled workers plus spawns in flight fill
    number + max_upgrade_additional: then nothing else would ever free a slot,
    and a fleet upgrade with max_upgrade_additional < number (or a smooth one
    with 0) would never finish. Signaled workers do not count: their exit frees
    a slot. (`invariants.room_to_make` is the same rule, computed independently.)
    The availability floor may forbid stopping them (`_stop`): after the cull,
    room still to make means the upgrade is held (`_held_notice`).
    """
    extra = state.config.max_upgrade_additional
    # (After a rollback, old workers the floor keeps are an upgrade in reverse: the same rule.)
    if extra is None or (state.upgrading is None and not pool.old_count(state)) or not state.respawn:
        return 0
    if pool.missing_worker_count(state) <= 0 or pool.unacked_unsignaled_modern_count(state) > 0:
        return 0
    return max(0, pool.busy_count(state) - (state.config.number + extra) + 1)


def _held_notice(previous: State, state: State) -> list[Effect]:
    """Said once per upgrade, when it starts waiting at its capacity cap because only
    serving workers could make room (the step before was not held, or at an older version)."""
    if _room_to_make(state) <= 0 or (_room_to_make(previous) > 0 and previous.version == state.version):
        return []
    number = state.config.number
    serving = pool.serving_count(state)
    what = "Upgrade" if state.upgrading is not None else "Rollback"
    return announce(
        state,
        LogLevel.ERROR,
        f"{what} held at capacity: number {number} + max_upgrade_additional {state.config.max_upgrade_additional}"
        f" leaves no room for a new worker, and stopping an ACKed old worker would leave {serving - 1} of {number}"
        " serving. Raise max_upgrade_additional (config) to go on.",
    )


def _maybe_exit(state: State) -> Outcome:
    if state.respawn or state.children or state.pending or state.exit_code is not None:
        return state, []
    return replace(state, exit_code=0), [Log(LogLevel.INFO, "All workers gone; exiting"), Exit(0)]


