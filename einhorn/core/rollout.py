"""Generations, canaries and rollbacks: how an upgrade goes from one generation to the next (spec/README.md §4, "Generations, canaries and rollbacks").

1. `record_generation` (the first start, `MasterStarted`): generation 0 gets the
   image's launch spec.
2. `begin` (the new image, once an upgrade's re-exec restored the state): the
   new generation is recorded with the new image's spec, and a `Rollout` from
   the current one (`previous`) starts: with `--canary K`, phase CANARY (K new
   workers beside the old pool; the pool stays at the previous version and is
   refilled from its spec); without, phase FINISHING at once.
3. `advance` (reconcile): starts the canaries within max_upgrade_additional,
   streams their ACKs, and once all K are ACKed sets the bake's end;
   `promote` (the BAKE timer) makes the new generation current and the rest
   is a normal smooth or fleet upgrade, which `step._cull` ends ("Upgrade done").
4. `rollback`: a canary that exits, a crash loop of the new generation
   (`CRASH_LOOP_DEATHS` deaths before ACK), the `--timeout` passing (the
   ROLLOUT_TIMEOUT timer) or `abort_upgrade`: the previous generation is
   current again, the new one is marked rolled back (never spawned again), the
   requesters get a failed final reply. The cull then stops the new
   generation's workers (Cause.ROLLBACK) within the availability floor, and
   the pool is refilled from the previous generation's spec.

Automatic rollback is opt-in (`UpgradeOptions.rolls_back_on_failure`): a plain
`upgrade` retries a crashing new version as the original does, and can still
be aborted by hand.
"""

from __future__ import annotations

from einhorn.core import pool
from einhorn.core.actions import announce, spin_up
from einhorn.core.effects import Effect, Log, LogLevel, Reply
from einhorn.core.record import replace
from einhorn.core.state import (
    Generation,
    LaunchSpec,
    Rollout,
    RolloutPhase,
    State,
    UpgradeKind,
    UpgradeOptions,
)

Outcome = tuple[State, list[Effect]]

CRASH_LOOP_DEATHS = 3
"""Deaths before ACK of the new generation (outside the canary phase) that roll an upgrade back."""


def record_generation(state: State, launch: LaunchSpec | None) -> State:
    """The current version's generation, if none is known yet (the first start, or a state from before generations)."""
    if launch is None or state.generation(state.version) is not None:
        return state
    return replace(state, generations=_sorted((*state.generations, Generation(state.version, launch))))


def _sorted(generations: tuple[Generation, ...]) -> tuple[Generation, ...]:
    return tuple(sorted(generations, key=lambda g: g.version))


def next_version(state: State) -> int:
    """A version no generation, worker or spawn ever had (the newest generation is always kept)."""
    versions = [state.version, *(g.version for g in state.generations)]
    versions += [c.version for c in state.children.values()] + [p.version for p in state.pending.values()]
    if state.rollout is not None:
        versions.append(state.rollout.version)
    return max(versions) + 1


def begin(state: State, kind: UpgradeKind, options: UpgradeOptions | None, launch: LaunchSpec | None) -> Outcome:
    """The new image is up: record the new generation and start the rollout to it."""
    options = options or UpgradeOptions()
    if state.upgrading is not None or state.rollout is not None:
        note = (
            f"Currently upgrading ({pool.ack_count(state)} / {pool.ack_target(state)} ACKs;"
            " bumping version and starting over)..."
        )
    else:
        note = f"Starting {kind.value} upgrade from version {state.version}..."
    version = next_version(state)
    superseded = state.rollout
    if superseded is not None and superseded.phase is RolloutPhase.CANARY:  # its canaries go: it never becomes current
        why = f"superseded by the upgrade to version {version}"
        generations = tuple(replace(g, rolled_back_because=why) if g.version == superseded.version else g for g in state.generations)
        state = replace(state, generations=generations)
    current = state.generation(state.version)
    spec = launch if launch is not None else (None if current is None else current.launch)
    if spec is not None and options.env:
        spec = replace(spec, environ=with_env(spec.environ, options.env))
    if spec is not None:
        state = replace(state, generations=_sorted((*state.generations, Generation(version, spec))))
    phase = RolloutPhase.CANARY if options.canary > 0 else RolloutPhase.FINISHING
    rollout = Rollout(version, state.version, kind, options, state.clock, phase)
    if phase is RolloutPhase.CANARY:
        state = replace(state, rollout=rollout, upgrading=None)
        canaries = "1 canary worker" if options.canary == 1 else f"{options.canary} canary workers"
        bake = f"; they must ACK and stay up {options.bake:g}s" if options.bake else "; they must ACK"
        return state, announce(state, LogLevel.INFO, f"{note} Starting {canaries} of version {version} beside the pool{bake}")
    state = replace(state, rollout=rollout)
    return _finish(state, kind, version, note)


def with_env(environ: tuple[tuple[str, str], ...], env: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """`environ` with `--env` settings over it (the last of a name wins), sorted by name as every launch spec's."""
    merged = dict(environ)
    merged.update(env)
    return tuple(sorted(merged.items()))


def _finish(state: State, kind: UpgradeKind, version: int, note: str) -> Outcome:
    """Make `version` current and start replacing workers: a normal smooth or fleet upgrade."""
    state = replace(state, upgrading=kind, version=version, deaths_before_ack=0)
    effects = announce(state, LogLevel.INFO, note)
    if kind is UpgradeKind.FLEET and state.respawn:
        state, more = spin_up(state, _fleet_capacity(state))
        effects += more
    return state, effects


def _fleet_capacity(state: State) -> int:
    missing = pool.missing_worker_count(state)
    extra = state.config.max_upgrade_additional
    if extra is None:
        return missing
    return max(0, min(missing, state.config.number + extra - pool.total_worker_count(state)))


def advance(state: State) -> Outcome:
    """The canary phase, in reconcile: start the canaries there is room for, stream their ACKs, start the bake;
    a canary a health rule condemned (a missed ping, an RSS breach, its boot timeout) fails it."""
    rollout = state.rollout
    if rollout is None or rollout.phase is not RolloutPhase.CANARY or not state.respawn:
        return state, []
    for child in state.children.values():
        if child.version == rollout.version and child.verdict is not None:
            return rollback(state, f"canary worker {child.pid} failed a health rule ({child.verdict.value})")
    effects: list[Effect] = []
    wanted = rollout.options.canary - rollout.canaries_started
    if wanted > 0 and state.reexec is None:
        extra = state.config.max_upgrade_additional
        room = wanted if extra is None else state.config.number + extra - pool.total_worker_count(state)
        count = max(0, min(wanted, room))
        if count:
            state, more = spin_up(state, count, rollout.version)
            rollout = replace(rollout, canaries_started=rollout.canaries_started + count)
            effects += more
    acked = state.indexed_children.count(rollout.version, signaled=False, acked=True)
    if acked > rollout.canaries_acked:
        rollout = replace(rollout, canaries_acked=acked)
        total = rollout.options.canary
        baking = ""
        if acked >= total and rollout.bake_until is None:
            rollout = replace(rollout, bake_until=state.clock + rollout.options.bake)
            baking = f"; baking {rollout.options.bake:g}s"
        state = replace(state, rollout=rollout)
        effects += announce(state, LogLevel.INFO, f"Canary {acked}/{total} ACKed{baking}")
    return replace(state, rollout=rollout), effects


def bake_due(state: State) -> list[tuple[float, int]]:
    rollout = state.rollout
    if rollout is None or rollout.phase is not RolloutPhase.CANARY or rollout.bake_until is None or not state.respawn:
        return []
    return [(rollout.bake_until, 0)]


def promote(state: State) -> Outcome:
    """The canaries lived through the bake (any exit would have rolled back): finish the upgrade."""
    rollout = state.rollout
    assert rollout is not None and rollout.phase is RolloutPhase.CANARY
    state = replace(state, rollout=replace(rollout, phase=RolloutPhase.FINISHING, bake_until=None))
    note = f"Canary baked {rollout.options.bake:g}s; finishing the {rollout.kind.value} upgrade to version {rollout.version}"
    return _finish(state, rollout.kind, rollout.version, note)


def timeout_due(state: State) -> list[tuple[float, int]]:
    rollout = state.rollout
    deadline = None if rollout is None else rollout.deadline
    return [] if deadline is None or not state.respawn else [(deadline, 0)]


def time_out(state: State) -> Outcome:
    assert state.rollout is not None and state.rollout.options.timeout is not None
    return rollback(state, f"not done within --timeout {state.rollout.options.timeout:g}s")


def on_worker_lost(state: State, version: int, pid: int, acked: bool, death_before_ack: bool, how: str) -> Outcome:
    """A worker exited (or a spawn failed: `pid` 0): a canary's end or a crash loop rolls the upgrade back."""
    rollout = state.rollout
    if rollout is None or version != rollout.version or not state.respawn:
        return state, []
    if rollout.phase is RolloutPhase.CANARY:
        who = "a canary spawn failed" if not pid else f"canary worker {pid} exited {'during the bake' if acked else 'before ACK'}"
        return rollback(state, f"{who} ({how})")
    if not death_before_ack or not rollout.options.rolls_back_on_failure:
        return state, []
    deaths = rollout.new_deaths + 1
    state = replace(state, rollout=replace(rollout, new_deaths=deaths, last_death=how))
    if deaths < CRASH_LOOP_DEATHS:
        return state, []
    return rollback(state, f"{deaths} new workers exited before ACK (last: {how})")


def rollback(state: State, why: str) -> Outcome:
    """The previous generation is current again; the new one is never spawned again, and the cull stops its workers."""
    rollout = state.rollout
    assert rollout is not None
    generations = tuple(
        replace(g, rolled_back_because=why) if g.version == rollout.version else g for g in state.generations
    )
    subscribers = state.upgrade_subscribers
    state = replace(
        state,
        version=rollout.previous,
        upgrading=None,
        rollout=None,
        generations=generations,
        deaths_before_ack=0,
        upgrade_subscribers=(),
    )
    text = f"Upgrade rolled back: {why}"
    effects: list[Effect] = [
        Log(LogLevel.WARN, f"Upgrade to version {rollout.version} rolled back: {why}; version {rollout.previous} is current again")
    ]
    effects += [Reply(s.conn, text, s.request_id, failed=True) for s in subscribers]
    return state, effects


def rolled_back_versions(state: State) -> frozenset[int]:
    return frozenset(g.version for g in state.generations if g.rolled_back_because is not None)


def prune(state: State) -> Outcome:
    """Forget generations nothing refers to any more: not current, not a rollout's, not the newest, no worker or spawn."""
    generations = state.generations
    if len(generations) <= 2:
        return state, []
    keep = {state.version, generations[-1].version}
    if state.rollout is not None:
        keep |= {state.rollout.version, state.rollout.previous}
    children, pending = state.indexed_children, state.indexed_pending
    kept = tuple(g for g in generations if g.version in keep or children.count(g.version) or pending.count(g.version))
    if len(kept) == len(generations):
        return state, []
    return replace(state, generations=kept), []
