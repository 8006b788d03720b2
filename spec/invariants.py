"""The numbered invariants of the pure core, as executable checks.

spec/README.md states each of them in words; the numbers here are the ones
used there. `check_state` checks the safety invariants of one state (S1-S11),
`check_step` those of one transition (T1-T21), and `converged`/`goal_problem`
say whether a state has reached the goal of the liveness properties (L1-L4),
which only an exploration can check (spec/model_check.py does).

Every function returns a list of human-readable violations, empty when all is
well. The counts used here (modern, old, ACKed ...) are recomputed from the
state's fields on purpose, rather than taken from `pool`, so that a bug in
`pool` is caught rather than copied.

The functions are meant to be called after every `step` in tests: by the model
checker, by the hypothesis state machine, and by anything else that folds
events through the core.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from einhorn.core import drain, pool, step
from einhorn.core.config import MAX_SPINUP_INTERVAL, Pacing
from einhorn.core.effects import (
    OWN_INITIATIVE,
    Cause,
    CompareImage,
    Effect,
    ExecMaster,
    Exit,
    NotifySupervisor,
    Reply,
    SendSignal,
    SpawnWorker,
    StartUpgradeCheck,
)
from einhorn.core.events import (
    ChildExited,
    CommandReceived,
    Event,
    ImageCompared,
    MasterStarted,
    SignalReceived,
    UpgradeCheckPassed,
    WorkerSpawned,
)
from einhorn.core.rollout import CRASH_LOOP_DEATHS
from einhorn.core.state import Child, Reexec, ReexecPhase, ReexecPurpose, RolloutPhase, State, UpgradeKind, Verdict

# --- independent counts (BEHAVIOR §4 vocabulary) --------------------------


@dataclass(frozen=True, slots=True)
class Census:
    """The counts of BEHAVIOR §4 for one state, computed in one pass."""

    workers: int
    """Every worker process, signaled or not."""
    old: tuple[int, ...]
    """Pids of unsignaled workers of another version, but for the canaries of a rollout in its canary phase."""
    unsignaled_modern: int
    ack_count: int
    """ACKed, unsignaled, modern workers."""
    unacked_modern: int
    """Un-ACKed unsignaled modern workers plus modern spawns in flight (what max_unacked limits)."""
    missing: int
    """number - modern workers (signaled or not) - modern spawns in flight."""
    total: int
    """Workers plus spawns in flight (what max_upgrade_additional limits)."""
    busy: int
    """Unsignaled workers plus spawns in flight: the slots no exit in progress will free."""
    serving: int
    """ACKed, unsignaled workers of any version (what the availability floor counts)."""
    old_unacked: int
    """Un-ACKed, unsignaled workers of an earlier version: old ones that serve nothing."""
    condemned: tuple[int, ...] = ()
    """Pids of unsignaled workers a health rule gave a verdict (any version). A condemned
    modern worker counts as gone in unsignaled_modern, ack_count and missing: its successor is due."""


def canary_version(state: State) -> int | None:
    """The new generation while its canaries run beside the old pool (neither modern nor old)."""
    rollout = state.rollout
    return rollout.version if rollout is not None and rollout.phase is RolloutPhase.CANARY else None


def rolled_back(state: State) -> set[int]:
    return {g.version for g in state.generations if g.rolled_back_because is not None}


def waiting_for_drain(state: State) -> set[int]:
    """Unsignaled workers of a generation being drained (drain.py): a stop on the master's own
    initiative may wait for the drain, so the cull's rules (S1, S4, S5, S7, S14, S18) allow them to stay."""
    if not state.config.drain or not state.drains:
        return set()  # (no scan of the pool: the checker calls this for every state, drain or not)
    draining = {d.version for d in state.drains}
    return {c.pid for c in state.children.values() if c.version in draining and not c.signaled}


def census(state: State) -> Census:
    workers = modern = unsignaled_modern = acked = unacked = unsignaled = serving = old_unacked = 0
    old: list[int] = []
    canary = canary_version(state)
    condemned: list[int] = []
    for child in state.children.values():
        workers += 1
        if not child.signaled:
            unsignaled += 1
            serving += child.acked
            if child.verdict is not None:
                condemned.append(child.pid)
                if child.version == state.version:
                    continue  # gone, for the modern counts: its successor is due
        if child.version == canary:
            continue
        if child.version != state.version:
            if not child.signaled:
                old.append(child.pid)
                old_unacked += not child.acked
            continue
        modern += 1
        if child.signaled:
            continue
        unsignaled_modern += 1
        if child.acked:
            acked += 1
        else:
            unacked += 1
    modern_pending = sum(1 for p in state.pending.values() if p.version == state.version)
    return Census(
        workers=workers,
        old=tuple(sorted(old)),
        unsignaled_modern=unsignaled_modern,
        ack_count=acked,
        unacked_modern=unacked + modern_pending,
        missing=state.config.number - modern - modern_pending,
        total=workers + len(state.pending),
        busy=unsignaled + len(state.pending),
        serving=serving,
        old_unacked=old_unacked,
        condemned=tuple(sorted(condemned)),
    )


def expected_spinup_interval(state: State) -> float:
    """BEHAVIOR §4: min(seconds x 1.5^d, 30), d = consecutive deaths before ACK."""
    return min(state.config.seconds * 1.5 ** min(state.deaths_before_ack, 1000), MAX_SPINUP_INTERVAL)


def paced_by_acks(state: State) -> bool:
    """EXTENSIONS §4: ACK pacing, and no death before ACK since the last ACK (which brings the interval back)."""
    return state.config.pacing is Pacing.ACK and state.deaths_before_ack == 0


def spinup_room(state: State) -> int:
    """How many more workers max_unacked (and max_upgrade_additional) let start now. (A condemned un-ACKed
    worker waiting for its generation's drain still takes its un-ACKed slot until it is signalled.)"""
    counts = census(state)
    held = [state.children[pid] for pid in waiting_for_drain(state)]
    waiting = sum(1 for c in held if c.version == state.version and not c.acked and c.verdict is not None)
    room = state.config.max_unacked - counts.unacked_modern - waiting
    extra = state.config.max_upgrade_additional
    if extra is not None:
        room = min(room, state.config.number + extra - counts.total)
    return room


def room_to_make(state: State) -> int:
    """How many old workers the cull must stop so that an upgrade capped by
    max_upgrade_additional can go on (0 when it can go on by itself).

    Only when workers are missing, no new worker is on its way up (none
    un-ACKed, none spawning), and the unsignaled workers plus spawns in flight
    already fill number + max_upgrade_additional: then nothing else would ever
    free a slot. Signaled workers do not count: their exit frees the slot.
    """
    extra = state.config.max_upgrade_additional
    counts = census(state)
    # After a rollback, old workers the availability floor keeps (S5) need room made just the same.
    if extra is None or (state.upgrading is None and not counts.old) or not state.respawn:
        return 0
    if counts.missing <= 0 or counts.unacked_modern > 0:
        return 0
    return max(0, counts.busy - (state.config.number + extra) + 1)


def held_at_capacity(state: State) -> bool:
    """Whether a capped upgrade that needs room (`room_to_make`) is held by the
    availability floor: every unsignaled old worker is ACKed, no spawn is in
    flight, and no more than `number` workers serve, so stopping any of them
    would leave fewer (T12). Only a change from outside (a higher
    max_upgrade_additional, a crash) lets it go on: L2 accepts it as an end.
    """
    if room_to_make(state) <= 0 or state.pending:
        return False
    counts = census(state)
    return counts.old_unacked == 0 and counts.serving <= state.config.number


# --- S: invariants of every state -----------------------------------------


def check_state(state: State) -> list[str]:
    """Safety invariants S1-S9 of one state, as it is after any `step`."""
    problems: list[str] = []
    config = state.config
    number = config.number
    counts = census(state)

    # S1: the cull leaves at most `number` unsignaled modern workers (a condemned one is not
    # counted: it stays until its successor serves, S18).
    waiting = waiting_for_drain(state)
    waiting_modern = sum(1 for pid in waiting if state.children[pid].version == state.version and state.children[pid].verdict is None)
    if counts.unsignaled_modern - waiting_modern > number:
        problems.append(f"S1: {counts.unsignaled_modern} unsignaled modern workers > number {number}")

    # S2: indexes of live workers and pending spawns are pairwise distinct.
    indexes = [c.index for c in state.children.values()] + [p.index for p in state.pending.values()]
    if len(indexes) != len(set(indexes)):
        problems.append(f"S2: duplicate worker indexes {sorted(indexes)}")

    # S3: the spin-up interval is min(seconds x 1.5^d, 30), never above 30 s.
    interval = pool.spinup_interval(state)
    expected = expected_spinup_interval(state)
    if interval > MAX_SPINUP_INTERVAL or abs(interval - expected) > 1e-9 * expected:  # rounding aside
        problems.append(
            f"S3: spin-up interval {interval} with {state.deaths_before_ack} deaths"
            f" (expected {expected}, at most {MAX_SPINUP_INTERVAL})"
        )

    # S4: a gradual spin-up that waits for time has a timer, at most 30 s after the last spin-up;
    # paced by ACKs it waits for nothing but a free slot, so no slot is free.
    # (During a re-exec it waits for the re-exec to end, not for time.)
    if state.respawn and state.last_spinup_at is not None and counts.missing > 0 and state.reexec is None:
        if paced_by_acks(state):
            room = spinup_room(state)
            if room > 0:
                problems.append(f"S4: paced by ACKs, {counts.missing} workers missing and room for {room} more, but none started")
        else:
            due = state.last_spinup_at + min(interval, MAX_SPINUP_INTERVAL)
            if state.clock < due:
                deadline = step.next_deadline(state)
                if deadline is None or deadline > due:
                    problems.append(f"S4: next spin-up due at {due} but next_deadline is {deadline}")

    # S5: outside an upgrade, no old worker is left unsignaled, but ACKed ones the availability
    # floor keeps while no more than `number` serve (after a rollback, until replacements ACK).
    held = counts.serving <= number
    left = [pid for pid in counts.old if not (held and state.children[pid].acked) and pid not in waiting]
    if state.upgrading is None and left:
        problems.append(f"S5: no upgrade in progress but old workers {left} unsignaled")

    # S6: an upgrade in progress is not already complete.
    if state.upgrading is not None and counts.ack_count >= number:
        problems.append(f"S6: upgrade still marked in progress with {counts.ack_count} / {number} ACKs")

    # S7: a smooth upgrade keeps no more old workers than needed (old + ACKed new <= number).
    if state.upgrading is UpgradeKind.SMOOTH and len(set(counts.old) - waiting) + counts.ack_count > number:
        problems.append(f"S7: smooth upgrade keeps {len(counts.old)} old + {counts.ack_count} ACKed > number {number}")

    # S8: timers already due have been acted on (timer ACKs, SIGKILL escalation).
    ack_timer = config.ack_timer
    if ack_timer is not None:
        late = sorted(
            c.pid for c in state.children.values() if not c.acked and c.spinup_at + ack_timer <= state.clock
        )
        if late:
            problems.append(f"S8: workers {late} are past their timer ACK but not ACKed")
    timeout = config.signal_timeout
    if timeout is not None:
        late = sorted(
            c.pid
            for c in state.children.values()
            if c.last_signaled_at is not None and not c.killed and c.last_signaled_at + timeout <= state.clock
        )
        if late:
            problems.append(f"S8: children {late} outlived the signal timeout without SIGKILL")

    # S9: bookkeeping is consistent.
    problems += _bookkeeping(state)

    # S10: a re-exec is in progress only while respawning (shutting down abandons it).
    if state.reexec is not None and not state.respawn:
        problems.append(f"S10: re-exec ({state.reexec.purpose.value}, {state.reexec.phase.value}) in progress while shutting down")

    # S11: an image comparison or a running upgrade check has a deadline: not yet passed, and armed in next_deadline.
    reexec = state.reexec
    if reexec is not None and reexec.phase is not ReexecPhase.EXECUTING:
        if reexec.deadline <= state.clock:
            problems.append(f"S11: upgrade check still awaited at {state.clock}, past its deadline {reexec.deadline}")
        else:
            deadline = step.next_deadline(state)
            if deadline is None or deadline > reexec.deadline:
                problems.append(f"S11: upgrade check due by {reexec.deadline} but next_deadline is {deadline}")

    # S17: every health rule due has given its verdict: no unsignaled worker past its boot
    # timeout un-ACKed, silent past its ping timeout, or above the RSS limit, and not condemned.
    overdue = sorted(c.pid for c in state.children.values() if not c.signaled and c.verdict is None and any(_earned(state, c, v) for v in Verdict))
    if overdue:
        problems.append(f"S17: workers {overdue} are due a health verdict but have none")

    # S18: a condemned worker goes as soon as the availability floor allows: one that serves
    # nothing at once, one that serves once more than `number` serve.
    stoppable = sorted(
        pid for pid in counts.condemned if (not state.children[pid].acked or counts.serving > number) and pid not in waiting
    )
    if stoppable:
        problems.append(f"S18: condemned workers {stoppable} not stopped with {counts.serving} serving, number {number}")

    return problems + check_generations(state) + check_steering(state)


def check_steering(state: State) -> list[str]:
    """D2-D3: with drain listeners, where new connections go, and every drain on its way to an end (spec/README.md §9)."""
    if not state.config.drain:
        return []
    problems: list[str] = []
    steered = dict(state.steered)
    if state.steered and (len(steered) != len(state.steered) or min(steered.values()) <= 0):
        problems.append(f"D2: steering {state.steered} is not one positive weight per generation")
    if len(steered) > 1:
        stopping = {c.version for c in state.children.values() if c.signaled}
        draining = {d.version for d in state.drains}
        wrong = sorted(v for v in steered if v in stopping or v in draining)
        if wrong:
            problems.append(f"D2: new connections steered to generations {wrong}, which have a worker stopping or are drained, beside others")
    if not set(steered) <= state.exposed:
        problems.append(f"D2: generations {sorted(set(steered) - state.exposed)} are steered to but not recorded as exposed {sorted(state.exposed)}")
    deadline = step.next_deadline(state)
    for d in state.drains:
        if d.timed_out or (d.empty_at is not None and state.clock >= d.empty_at + drain.GRACE):
            problems.append(f"D3: the drain of version {d.version} is over but kept")
        elif deadline is None or deadline > d.since + drain.TIMEOUT:
            problems.append(f"D3: the drain of version {d.version} (since {d.since}) waits, but next_deadline is {deadline}")
    return problems


def _accepting(state: State) -> set[int]:
    """Generations that really take new connections: named by the steering in force, with an ACKed unsignaled
    worker, none stopping and no drain (not the current generation named only for lack of any other)."""
    stopping = {c.version for c in state.children.values() if c.signaled}
    serving = {c.version for c in state.children.values() if c.acked and not c.signaled}
    draining = {d.version for d in state.drains}
    return {v for v, _ in state.steered if v in serving and v not in stopping and v not in draining}


def _drained(before: State, after: State, signals: Sequence[SendSignal]) -> list[str]:
    """D1: with drain listeners, a worker stopped on the master's own initiative is never of a generation that
    may have connections waiting (not drained since it was last steered to), undrained, while they could go
    elsewhere: to the current generation (for an older one) or another accepting one. One whose generation
    was steered away for it waited until its queue was read empty GRACE before (or timed out)."""
    if not after.config.drain:
        return []
    problems: list[str] = []
    for sig in signals:
        child = before.children.get(sig.pid)
        if sig.cause not in OWN_INITIATIVE or sig.cause is Cause.ESCALATION or child is None or child.signaled:
            continue
        d = next((d for d in before.drains if d.version == child.version), None)
        if d is not None:
            if not (after.clock >= d.since + drain.TIMEOUT or (d.empty_at is not None and after.clock >= d.empty_at + drain.GRACE)):
                problems.append(f"D1: {sig.signal} to {sig.pid} ({sig.cause.value}) before the drain of version {child.version} was done: {d}")
        elif child.version in before.exposed and (child.version != after.version or _accepting(after) - {child.version}):
            problems.append(
                f"D1: {sig.signal} to {sig.pid} ({sig.cause.value}) while its version {child.version} got new connections,"
                f" undrained, and others get them after the step (steered {before.steered}, then {after.steered})"
            )
    return problems


def check_generations(state: State) -> list[str]:
    """S12-S16: generations and the rollout (spec/README.md §4, "Generations, canaries and rollbacks")."""
    problems: list[str] = []
    versions = [g.version for g in state.generations]
    rollout = state.rollout
    # S12: one generation per version, in order; the current one and a rollout's two are known.
    if versions != sorted(set(versions)):
        problems.append(f"S12: generations {versions} are not one per version, in order")
    if versions:
        needed = {state.version} if rollout is None else {state.version, rollout.version, rollout.previous}
        unknown = sorted(needed - set(versions))
        if unknown:
            problems.append(f"S12: no generation for versions {unknown} (generations {versions})")
    # S13: the rollout's phase fits the pool: canaries beside the previous generation, or a normal
    # upgrade to the new one; a rolled-back generation is never current again, nor a rollout's target.
    if rollout is not None:
        if rollout.phase is RolloutPhase.CANARY and (state.upgrading is not None or state.version != rollout.previous):
            problems.append(f"S13: canary phase with upgrading {state.upgrading} at version {state.version} (previous {rollout.previous})")
        if rollout.phase is RolloutPhase.FINISHING and (state.upgrading is not rollout.kind or state.version != rollout.version):
            problems.append(f"S13: finishing phase with upgrading {state.upgrading} at version {state.version} (new {rollout.version})")
        if rollout.version in rolled_back(state):
            problems.append(f"S13: a rollout to the rolled-back generation {rollout.version}")
    if state.version in rolled_back(state):
        problems.append(f"S13: the rolled-back generation {state.version} is current")
    # S14: after a rollback, every live worker belongs to the previous generation but those on their way
    # out (signaled) and ACKed ones the availability floor keeps until replacements ACK (serving <= number).
    if state.upgrading is None and rollout is None and state.respawn:
        counts = census(state)
        waiting = waiting_for_drain(state)
        for child in state.children.values():
            if child.version in rolled_back(state) and not child.signaled and child.pid not in waiting:
                if not child.acked or counts.serving > state.config.number:
                    problems.append(
                        f"S14: worker {child.pid} of the rolled-back generation {child.version} is left"
                        f" ({'ACKed' if child.acked else 'un-ACKed'}, {counts.serving} serving of {state.config.number})"
                    )
    # S16: with automatic rollback, the new generation never reaches CRASH_LOOP_DEATHS deaths before ACK.
    if rollout is not None and rollout.new_deaths >= CRASH_LOOP_DEATHS:
        problems.append(f"S16: rollout to {rollout.version} goes on after {rollout.new_deaths} new workers died before ACK")
    # S15: an upgrade ends, done or rolled back, within its timeout; the timeout and the bake are armed.
    if rollout is not None and state.respawn:
        for what, due in (("timeout", rollout.deadline), ("bake", rollout.bake_until if rollout.phase is RolloutPhase.CANARY else None)):
            if due is None:
                continue
            if due <= state.clock:
                problems.append(f"S15: rollout to {rollout.version} still in progress at {state.clock}, past its {what} at {due}")
            else:
                deadline = step.next_deadline(state)
                if deadline is None or deadline > due:
                    problems.append(f"S15: the {what} is due at {due} but next_deadline is {deadline}")
    return problems


def _earned(state: State, child: Child, verdict: Verdict) -> bool:
    """Whether `verdict` fits `child` by `state`'s clock (it may have earned several at once)."""
    config = state.config
    match verdict:
        case Verdict.BOOT_TIMEOUT:
            return config.boot_timeout is not None and not child.acked and state.clock >= child.spinup_at + config.boot_timeout
        case Verdict.PING_TIMEOUT:
            timeout = config.ping_timeout
            return timeout is not None and child.pinged_at is not None and state.clock >= child.pinged_at + timeout
        case Verdict.RSS_LIMIT:
            limit = config.max_worker_rss_mb
            return limit is not None and child.rss_bytes is not None and child.rss_bytes > limit * 1024 * 1024


HEALTH_CAUSES = {Verdict.BOOT_TIMEOUT: Cause.BOOT_TIMEOUT, Verdict.PING_TIMEOUT: Cause.PING_TIMEOUT, Verdict.RSS_LIMIT: Cause.RSS_LIMIT}


def _bookkeeping(state: State) -> list[str]:
    problems: list[str] = []
    for pid, child in state.children.items():
        if child.pid != pid:
            problems.append(f"S9: child recorded under pid {pid} has pid {child.pid}")
        if child.version > state.version and child.version != canary_version(state) and child.version not in rolled_back(state):
            problems.append(f"S9: child {pid} has version {child.version} > current {state.version}, not a canary or rolled back")
        if child.killed and child.last_signaled_at is None:
            problems.append(f"S9: child {pid} was SIGKILLed without having been signaled")
    for spawn_id, spawn in state.pending.items():
        if spawn.spawn_id != spawn_id or spawn_id >= state.next_spawn_id:
            problems.append(f"S9: pending spawn {spawn_id} inconsistent (next_spawn_id {state.next_spawn_id})")
        if spawn.version > state.version and spawn.version != canary_version(state) and spawn.version not in rolled_back(state):
            problems.append(f"S9: pending spawn {spawn_id} has version {spawn.version} > current {state.version}, not a canary or rolled back")
    if state.deaths_before_ack < 0:
        problems.append(f"S9: deaths_before_ack is {state.deaths_before_ack}")
    if not state.respawn and state.shutdown_signal is None:
        problems.append("S9: respawning is off but no shutdown signal is recorded")
    if state.exit_code == 0 and (state.children or state.pending):
        problems.append("S9: exited with 0 while children or spawns remain")
    return problems


# --- T: invariants of every transition -----------------------------------


def _acked_in_step(before: State, after: State) -> list[int]:
    return sorted(
        pid
        for pid, child in after.children.items()
        if child.acked and not (pid in before.children and before.children[pid].acked)
    )


def check_step(before: State, event: Event, after: State, effects: Sequence[Effect]) -> list[str]:
    """Safety invariants T1-T16 of one transition `before --event--> after` with `effects`."""
    problems: list[str] = []
    signals = [e for e in effects if isinstance(e, SendSignal)]
    spawns = [e for e in effects if isinstance(e, SpawnWorker)]
    exits = [e for e in effects if isinstance(e, Exit)]
    spawned_pid = event.pid if isinstance(event, WorkerSpawned) and event.spawn_id in before.pending else None
    own = [sig for sig in signals if sig.cause in OWN_INITIATIVE]

    # T1: every signal goes to a live, known child (never to a reaped or unknown pid).
    for sig in signals:
        known_before = sig.pid in before.children or sig.pid == spawned_pid
        if not known_before or sig.pid not in after.children:
            problems.append(f"T1: {sig.signal} sent to pid {sig.pid}, which is not a live child")

    # T2: no spin-up while respawning is off.
    if spawns and not (before.respawn and after.respawn):
        problems.append(f"T2: {len(spawns)} workers spun up while respawning is off")

    # T3: each spin-up is a new pending spawn of the current version, at the
    # lowest indexes no live worker or other spawn uses.
    for order in spawns:
        pending = after.pending.get(order.spawn_id)
        if order.spawn_id in before.pending or order.spawn_id < before.next_spawn_id:
            problems.append(f"T3: spawn id {order.spawn_id} reused")
        elif pending is None or (pending.index, pending.version) != (order.index, order.version):
            problems.append(f"T3: spawn {order.spawn_id} not recorded as pending")
        if order.version not in (after.version, canary_version(after)):
            problems.append(f"T3: spawn {order.spawn_id} at version {order.version}, current is {after.version} (no canary of it)")
    if spawns:
        new_ids = {order.spawn_id for order in spawns}
        used = {c.index for c in after.children.values()}
        used |= {p.index for sid, p in after.pending.items() if sid not in new_ids}
        lowest = sorted(set(range(len(used) + len(spawns))) - used)[: len(spawns)]
        chosen = sorted(order.index for order in spawns)
        if chosen != lowest:
            problems.append(f"T3: spawned at indexes {chosen}, the lowest free ones are {lowest}")

    # T4: on its own initiative the master never sends a child the same signal twice.
    sent: set[tuple[int, str]] = set()
    for sig in own:
        key = (sig.pid, sig.signal)
        if sig.cause is Cause.ESCALATION:
            continue  # T5
        child = before.children.get(sig.pid)
        if key in sent or (child is not None and sig.signal in child.signaled):
            problems.append(f"T4: {sig.signal} sent again to child {sig.pid}")
        sent.add(key)

    # T5: at most one SIGKILL per child, and only once its signal timeout has passed.
    timeout = after.config.signal_timeout
    kills = [sig.pid for sig in signals if sig.cause is Cause.ESCALATION]
    for pid in kills:
        child = before.children.get(pid)
        if kills.count(pid) > 1 or child is None or child.killed:
            problems.append(f"T5: SIGKILL sent again to child {pid}")
        elif timeout is None or child.last_signaled_at is None or child.last_signaled_at + timeout > after.clock:
            problems.append(f"T5: SIGKILL sent to child {pid} before its signal timeout")
        elif not (pid in after.children and after.children[pid].killed):
            problems.append(f"T5: SIGKILL to child {pid} not recorded")

    # T6: a step that ACKs a worker ends with the death streak reset; one in which a worker
    # dies before its ACK (or, paced by ACKs, unasked within `seconds` of its start) and none
    # ACKs ends with a streak, unless it rolled an upgrade back (the streak was the new generation's).
    acked = _acked_in_step(before, after)
    if acked and after.deaths_before_ack != 0:
        problems.append(f"T6: ACK of {acked} left deaths_before_ack at {after.deaths_before_ack}")
    rolls_back = rolled_back(after) - rolled_back(before)
    if isinstance(event, ChildExited) and event.pid in before.children and not acked and not rolls_back and after.deaths_before_ack == 0:
        dead = before.children[event.pid]
        young = before.config.pacing is Pacing.ACK and not dead.signaled and after.clock - dead.spinup_at < before.config.seconds
        booted_out = dead.verdict is Verdict.BOOT_TIMEOUT
        if not dead.acked or young or booted_out:
            why = "before its ACK" if not dead.acked else "after its boot timeout" if booted_out else "young"
            problems.append(f"T6: worker {event.pid} died {why} but the death streak is 0")

    # T7/T8: upgrades stop old workers only once replacements are ACKed.
    old_signaled = sorted(
        e.pid
        for e in signals
        if e.cause in (Cause.UPGRADE, Cause.MAKE_ROOM)
        and e.pid in before.children
        and before.children[e.pid].version != after.version
        and not before.children[e.pid].signaled
    )
    if old_signaled and not _made_room(after):
        counts = census(after)
        number = after.config.number
        # (A canary upgrade on top of an unfinished one makes that one's generation the pool, with no
        # upgrade in progress: its older workers are then old, stopped within the availability floor.)
        canary_begins = after.rollout is not None and after.rollout.phase is RolloutPhase.CANARY and before.rollout != after.rollout
        smooth = UpgradeKind.SMOOTH in (before.upgrading, after.upgrading) and not canary_begins
        if smooth and len(counts.old) + counts.ack_count < number:
            problems.append(
                f"T7: smooth upgrade stopped old workers {old_signaled}, leaving {len(counts.old)} old"
                f" + {counts.ack_count} ACKed < number {number}"
            )
        if after.upgrading is UpgradeKind.FLEET:
            problems.append(f"T8: fleet upgrade stopped old workers {old_signaled} before all new ones ACKed")

    # T9: the master exits at most once; with 0 only when no child is left.
    for leave in exits:
        if before.exit_code is not None or len(exits) > 1:
            problems.append(f"T9: Exit({leave.code}) after the master already exited")
        if leave.code != after.exit_code:
            problems.append(f"T9: Exit({leave.code}) but the state records exit code {after.exit_code}")
        if leave.code == 0 and (after.children or after.pending or after.respawn):
            problems.append(f"T9: Exit(0) with {len(after.children)} children and {len(after.pending)} spawns left")
        if leave.code != 0 and not (isinstance(event, SignalReceived) and event.signal == "QUIT"):
            problems.append(f"T9: Exit({leave.code}) without SIGQUIT")
    if before.exit_code is not None and (signals or spawns):
        problems.append("T9: the master acted after it exited")

    # T10: with max_upgrade_additional N, a spin-up never brings the total above number + N.
    extra = after.config.max_upgrade_additional
    if spawns and extra is not None and census(after).total > after.config.number + extra:
        problems.append(f"T10: spun up to {census(after).total} workers > number {after.config.number} + {extra}")

    # T11: a gradual spin-up stays within max_unacked and starts no more than are missing;
    # paced by the interval (or backing off) it starts one worker, no sooner than the interval.
    first = before.last_spinup_at is None
    fleet = isinstance(event, MasterStarted) and before.reexec_purpose is ReexecPurpose.FLEET_UPGRADE
    fleet = fleet or (before.rollout is not None and before.rollout.phase is RolloutPhase.CANARY and after.upgrading is UpgradeKind.FLEET)
    spawns = [order for order in spawns if order.version == after.version]  # (not the canaries beside the pool)
    if spawns and not first and not fleet:
        assert before.last_spinup_at is not None
        if not paced_by_acks(after):  # the death streak of the spin-up: nothing after it in the step changes it
            if len(spawns) > 1:
                problems.append(f"T11: gradual spin-up started {len(spawns)} workers at once")
            interval = pool.spinup_interval(after)  # S3 checks it against the rule
            if after.clock < before.last_spinup_at + interval:
                problems.append(f"T11: spin-up {after.clock - before.last_spinup_at}s after the last one, interval is {interval}s")
        counts = census(after)
        if counts.unacked_modern > after.config.max_unacked:
            problems.append(f"T11: {counts.unacked_modern} un-ACKed new workers > max_unacked {after.config.max_unacked}")
        if counts.missing < 0:
            problems.append(f"T11: spun up {-counts.missing} more workers than were missing")

    # T12: the availability floor. On its own initiative the master stops an ACKed
    # worker only if at least min(number, ACKed unsignaled workers before) still serve.
    stopped = sorted(
        sig.pid
        for sig in own
        if sig.pid in before.children
        and not before.children[sig.pid].signaled
        and sig.pid in after.children
        and after.children[sig.pid].acked
    )
    if stopped:
        serving_before = census(before).serving
        floor = min(after.config.number, serving_before)
        left = census(after).serving
        if left < floor:
            problems.append(
                f"T12: stopped ACKed workers {stopped} on its own initiative, leaving {left} serving"
                f" < min(number {after.config.number}, {serving_before} serving before)"
            )
    problems += _health(before, after, signals)
    problems += _drained(before, after, signals)
    return (
        problems
        + _causes(event, before, after, signals)
        + check_lifecycle_step(before, event, after, effects)
        + _told(before, after, effects)
        + check_rollout_step(before, event, after, effects)
    )


def check_rollout_step(before: State, event: Event, after: State, effects: Sequence[Effect]) -> list[str]:
    """T17-T20: spawns from their own generation, rollbacks that spare the previous generation, their
    replies, and what rolls back."""
    problems: list[str] = []
    # T17: a worker is spawned from its own generation's spec, and a rolled-back generation never again.
    for spawn in (e for e in effects if isinstance(e, SpawnWorker)):
        generation = after.generation(spawn.version)
        if spawn.version in rolled_back(before) | rolled_back(after):
            problems.append(f"T17: spawn #{spawn.spawn_id} of the rolled-back generation {spawn.version}")
        if after.generations and (generation is None or spawn.launch != generation.launch):
            problems.append(f"T17: spawn #{spawn.spawn_id} (version {spawn.version}) not from its generation's spec")
    # T18: a rollback stops only workers of a rolled-back generation: never one of the generation
    # current after the step (the previous one), so never an ACKed old worker.
    for sig in (e for e in effects if isinstance(e, SendSignal) and e.cause is Cause.ROLLBACK):
        child = before.children.get(sig.pid) or after.children.get(sig.pid)
        if child is None or child.version not in rolled_back(after) or child.version == after.version:
            problems.append(f"T18: {sig.signal} to {sig.pid} for a rollback, not a worker of a rolled-back generation")
    # T20: a canary that exits rolls its upgrade back; so does, with automatic rollback, the
    # CRASH_LOOP_DEATHS-th death before ACK of the new generation (each one counts).
    rollout = before.rollout
    if isinstance(event, ChildExited) and rollout is not None and before.respawn and event.pid in before.children:
        dead = before.children[event.pid]
        ended = rollout.version in rolled_back(after)
        if dead.version == rollout.version and rollout.phase is RolloutPhase.CANARY and not ended:
            problems.append(f"T20: canary {event.pid} exited but the upgrade to {rollout.version} was not rolled back")
        counted = after.rollout is not None and after.rollout.new_deaths == rollout.new_deaths + 1
        finishing = rollout.phase is RolloutPhase.FINISHING and rollout.options.rolls_back_on_failure
        if finishing and dead.version == rollout.version and not dead.acked and not (ended or counted):
            problems.append(f"T20: new worker {event.pid} died before its ACK, neither counted nor rolled back")
    # T19: an upgrade rolled back tells each of its requesters once (per request) that it failed.
    if before.rollout is not None and after.rollout is None:
        replies = [e for e in effects if isinstance(e, Reply) and not e.wait]
        rolled = before.rollout.version in rolled_back(after)
        for subscriber in before.upgrade_subscribers:
            mine = [r for r in replies if r.conn == subscriber.conn and r.request_id == subscriber.request_id]
            told = len(mine) == before.upgrade_subscribers.count(subscriber)
            if rolled and not (told and all(r.failed and r.message.startswith("Upgrade rolled back: ") for r in mine)):
                problems.append(f"T19: requester {subscriber} of the rolled-back upgrade was told {mine}")
    return problems


def _health(before: State, after: State, signals: Sequence[SendSignal]) -> list[str]:
    """T21: a health rule acts only on a worker that earned it, and unhealthy workers go first.

    A verdict given in a step fits the worker by the step's clock (it really was
    overdue, or over the limit); a signal for a health cause goes to a worker
    condemned for that rule, unsignaled before; no healthy ACKed worker is
    stopped on the master's own initiative while a condemned ACKed one serves.
    """
    problems: list[str] = []
    for pid, child in after.children.items():
        earlier = before.children.get(pid)
        if child.verdict is None or (earlier is not None and earlier.verdict is not None):
            continue
        if not _earned(after, child, child.verdict):
            problems.append(f"T21: worker {pid} condemned for {child.verdict.value} at t={after.clock} without having earned it")
    # Unhealthy before healthy: no healthy ACKed worker is stopped on the master's own
    # initiative while a condemned one still serves.
    still_condemned = [pid for pid in census(after).condemned if after.children[pid].acked]
    healthy_stopped = sorted(
        sig.pid
        for sig in signals
        if sig.cause in OWN_INITIATIVE
        and sig.cause is not Cause.ESCALATION
        and (earlier_child := before.children.get(sig.pid)) is not None
        and earlier_child.acked
        and not earlier_child.signaled
        and (sig.pid not in after.children or after.children[sig.pid].verdict is None)  # (condemned in the step: not healthy)
    )
    if still_condemned and healthy_stopped:
        problems.append(f"T21: stopped healthy ACKed workers {healthy_stopped} while condemned workers {still_condemned} still serve")
    causes = set(HEALTH_CAUSES.values())
    for sig in signals:
        if sig.cause not in causes:
            continue
        target = after.children.get(sig.pid)
        earlier = before.children.get(sig.pid)
        if target is None or target.verdict is None or HEALTH_CAUSES[target.verdict] is not sig.cause:
            problems.append(f"T21: {sig.signal} to {sig.pid} for {sig.cause.value}, but it is not condemned for it")
        elif earlier is not None and earlier.signaled:
            problems.append(f"T21: {sig.signal} to {sig.pid} for {sig.cause.value}, already signaled")
    return problems


def _told(before: State, after: State, effects: Sequence[Effect]) -> list[str]:
    """T16: what the supervisor hears fits the step (EXTENSIONS §5).

    Nothing unless supervised; at most one datagram a step, with STATUS in it;
    READY=1 only with no re-exec or upgrade in progress after the step, and
    the pool fully ACKed unless it ends a reload systemd heard of (done or
    failed, READY=1 ends it whatever the pool); RELOADING=1 only on the step one starts, with
    MONOTONIC_USEC the clock in microseconds; STOPPING=1 only on the step
    respawning turns off.
    """
    told = [dict(e.fields) for e in effects if isinstance(e, NotifySupervisor) and dict(e.fields) != {"WATCHDOG": "1"}]
    if not told:
        return []
    if not after.config.supervised:
        return [f"T16: told the supervisor {told} without one"]
    problems: list[str] = []
    if len(told) > 1:
        problems.append(f"T16: {len(told)} datagrams to the supervisor in one step: {told}")
    fields = told[0]
    if "STATUS" not in fields:
        problems.append(f"T16: no STATUS in {fields}")

    def reloading(state: State) -> bool:
        return state.reexec is not None or state.upgrading is not None

    counts = census(after)
    reload_ended = before.supervisor_ready and reloading(before) and not reloading(after)
    if "READY" in fields and (not after.respawn or reloading(after) or (counts.ack_count < after.config.number and not reload_ended)):
        problems.append(f"T16: READY=1 with {counts.ack_count} of {after.config.number} ACKed, reloading {reloading(after)}")
    if "RELOADING" in fields:
        if reloading(before) or not reloading(after):
            problems.append("T16: RELOADING=1 but no re-exec or upgrade started in this step")
        if fields.get("MONOTONIC_USEC") != str(int(after.clock * 1_000_000)):
            problems.append(f"T16: RELOADING=1 with MONOTONIC_USEC {fields.get('MONOTONIC_USEC')}, the clock is {after.clock}")
    if "STOPPING" in fields and not (before.respawn and not after.respawn):
        problems.append("T16: STOPPING=1 but the shutdown did not begin in this step")
    return problems


def _own_graceful(before: State, after: State, pid: int) -> str:
    """The graceful signal of the generation that launched worker `pid` (the master's where unknown)."""
    child = before.children.get(pid) or after.children.get(pid)
    generation = None if child is None else (after.generation(child.version) or before.generation(child.version))
    return after.config.graceful_signal if generation is None else generation.launch.graceful_signal


def _causes(event: Event, before: State, after: State, signals: Sequence[SendSignal]) -> list[str]:
    """T15: each signal's cause fits its step, so that no own decision passes for an order.

    An operator's signal only in a step that handles a command; a shutdown's
    only once respawning is off, and it is the shutdown signal (each worker's
    own generation's graceful signal when that is the master's); SIGKILL of the
    master's own only by escalation, and escalation only SIGKILL; the master's
    own decisions only with the worker's generation's graceful signal.
    """
    problems: list[str] = []
    for sig in signals:
        own = _own_graceful(before, after, sig.pid)
        shutdown = {after.shutdown_signal, own} if after.shutdown_signal == after.config.graceful_signal else {after.shutdown_signal}
        match sig.cause:
            case Cause.OPERATOR if not isinstance(event, CommandReceived):
                problems.append(f"T15: {sig.signal} to {sig.pid} as an operator's order on {type(event).__name__}")
            case Cause.SHUTDOWN if after.respawn or sig.signal not in shutdown:
                problems.append(f"T15: {sig.signal} to {sig.pid} as a shutdown's (respawn {after.respawn}, shutdown signal {after.shutdown_signal})")
            case Cause.ESCALATION if sig.signal != "KILL":
                problems.append(f"T15: {sig.signal} to {sig.pid} as an escalation")
            case (
                Cause.UPGRADE
                | Cause.MAKE_ROOM
                | Cause.SURPLUS
                | Cause.ROLLBACK
                | Cause.BOOT_TIMEOUT
                | Cause.PING_TIMEOUT
                | Cause.RSS_LIMIT
            ) if sig.signal != own:
                problems.append(f"T15: {sig.signal} to {sig.pid} for {sig.cause.value}, not its generation's graceful signal {own}")
    return problems


def check_lifecycle_step(before: State, event: Event, after: State, effects: Sequence[Effect]) -> list[str]:
    """T13-T14: the re-exec lifecycle (spec/upgrades.md)."""
    problems: list[str] = []
    # T13: a new re-exec first compares the image; the check is started only when the current
    # comparison found it changed; the exec is ordered only on the pass of the current check,
    # or on the current comparison finding the image unchanged, and only while respawning.
    current = before.reexec
    for comparison in (e for e in effects if isinstance(e, CompareImage)):
        fresh = current is None and after.reexec is not None and after.reexec.phase is ReexecPhase.COMPARING
        if not fresh or after.reexec is None or after.reexec.check_id != comparison.check_id:
            problems.append(f"T13: image comparison {comparison.check_id} ordered outside a new re-exec")
    for order in (e for e in effects if isinstance(e, StartUpgradeCheck)):
        changed = isinstance(event, ImageCompared) and not event.unchanged and _awaits(current, ReexecPhase.COMPARING, event.check_id)
        if not changed or after.reexec is None or after.reexec.phase is not ReexecPhase.CHECKING or after.reexec.check_id != order.check_id:
            problems.append(f"T13: upgrade check {order.check_id} started, not on the current comparison finding the image changed")
    if any(isinstance(e, ExecMaster) for e in effects):
        passed = isinstance(event, UpgradeCheckPassed) and _awaits(current, ReexecPhase.CHECKING, event.check_id)
        unchanged = isinstance(event, ImageCompared) and event.unchanged and _awaits(current, ReexecPhase.COMPARING, event.check_id)
        if not (passed or unchanged) or not after.respawn:
            problems.append(
                f"T13: exec ordered on {type(event).__name__} (check passed: {passed}, image unchanged: {unchanged}, respawning: {after.respawn})"
            )
    # T14: the new image fails every spawn the old one had in flight: none is left pending.
    if isinstance(event, MasterStarted) and event.restored:
        lost = sorted(set(before.pending) & set(after.pending))
        if lost:
            problems.append(f"T14: spawns {lost} in flight across the re-exec are still pending after the restore")
    return problems


def _awaits(reexec: Reexec | None, phase: ReexecPhase, check_id: int) -> bool:
    """The re-exec in progress waits in `phase` for the answer about `check_id`."""
    return reexec is not None and reexec.phase is phase and reexec.check_id == check_id


def _made_room(after: State) -> bool:
    """Whether the old workers stopped in a step were the make-room cull of a
    capped upgrade (see `room_to_make`), and no more were stopped than needed:
    after it, the unsignaled workers and spawns fill number + N - 1 slots."""
    extra = after.config.max_upgrade_additional
    if extra is None or after.upgrading is None or not after.respawn:
        return False
    counts = census(after)
    if counts.missing <= 0 or counts.unacked_modern > 0:
        return False
    return counts.busy >= after.config.number + extra - 1


# --- L: the goal of the liveness properties -------------------------------


def goal_problem(state: State) -> str | None:
    """Why `state` is not (yet) the goal of L1-L3, or None if it is.

    Respawning on: exactly `number` ACKed modern workers (no surplus, S1), no
    old worker left unsignaled, no upgrade or re-exec in progress, or an upgrade
    held at its capacity cap by the availability floor (`held_at_capacity`).
    Respawning off: the master has exited.
    """
    if not state.respawn or state.exit_code is not None:
        return None if state.exit_code is not None else "L3: respawning is off but the master has not exited"
    if state.reexec_purpose is not None:
        return f"L2: re-exec ({state.reexec_purpose.value}) still in progress"
    if state.rollout is not None and state.rollout.phase is RolloutPhase.CANARY:
        return f"L2: canary of version {state.rollout.version} still in progress"
    counts = census(state)
    if held_at_capacity(state):  # an upgrade, or a rollback, that the availability floor holds
        return None
    if state.upgrading is not None:
        return f"L2: {state.upgrading.value} upgrade still in progress ({counts.ack_count} / {state.config.number} ACKs)"
    if counts.condemned and not health_held(state):
        return f"L1: condemned workers {list(counts.condemned)} still unsignaled"
    if counts.ack_count != state.config.number and not health_held(state):
        return f"L1: {counts.ack_count} ACKed modern workers, want {state.config.number}"
    if counts.old:
        return f"L1: old workers {list(counts.old)} still unsignaled"
    return None


def health_held(state: State) -> bool:
    """Whether a condemned worker's successor cannot start: max_upgrade_additional N caps the
    pool at number + N workers and the pool is there, while stopping the condemned worker
    first would leave fewer than `number` serving (T12). Only a change from outside (a
    higher cap, a crash) lets it go on: L1 accepts it as an end."""
    extra = state.config.max_upgrade_additional
    counts = census(state)
    if extra is None or not counts.condemned or state.pending or counts.unacked_modern > 0:
        return False
    return counts.total >= state.config.number + extra and counts.serving <= state.config.number


def converged(state: State) -> bool:
    return goal_problem(state) is None


check_invariants = check_state
"""The name STYLE.md uses."""
