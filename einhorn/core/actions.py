"""Actions shared by event handlers and command handlers: signalling, ACKs, spin-ups."""

from __future__ import annotations

from collections.abc import Sequence

from einhorn.core import pool
from einhorn.core.effects import Cause, Effect, Log, LogFields, LogLevel, Reply, SendSignal, SpawnWorker
from einhorn.core.records import replace
from einhorn.core.state import Child, PendingSpawn, State

Outcome = tuple[State, list[Effect]]


def announce(state: State, level: LogLevel, message: str, fields: LogFields = ()) -> list[Effect]:
    """Log `message` and stream it as a progress line to every upgrade/reload subscriber."""
    text = f"ERROR: {message}" if level is LogLevel.ERROR else message
    subscribers = (*state.upgrade_subscribers, *state.reexec_subscribers)
    return [Log(level, message, fields), *(Reply(s.conn, text, s.request_id, wait=True) for s in subscribers)]


def signal_children(state: State, signal: str, pids: Sequence[int], cause: Cause, record: bool = True) -> Outcome:
    """Send `signal` to each of `pids` (known children only) for `cause`, recording it when `record`.

    Signalling nobody says nothing (no `Sending TERM to []`)."""
    if not pids:
        return state, []
    fields: LogFields = (("signal", signal), ("cause", cause.value), ("pids", ",".join(map(str, pids))))
    effects: list[Effect] = announce(state, LogLevel.INFO, f"Sending {signal} to [{', '.join(map(str, pids))}]", fields)
    children = state.indexed_children
    for pid in pids:
        child = children.get(pid)
        if child is None:
            effects.append(Log(LogLevel.ERROR, f"Trying to send {signal} to dead child {pid}. The fact we tried this probably indicates a bug in Einhorn."))
            continue
        if record:
            if signal in child.signaled:
                effects.append(
                    Log(
                        LogLevel.ERROR,
                        f"Re-sending {signal} to already-signaled child {pid}. "
                        f"It may be slow to spin down, or it may be swallowing {signal}s.",
                    )
                )
            children = children.set(replace(child, signaled=child.signaled | {signal}, last_signaled_at=state.clock))
        effects.append(SendSignal(pid, signal, cause))
    return replace(state, children=children), effects


def graceful_signal_of(state: State, child: Child) -> str:
    """The signal that asks `child` to finish and exit: its own generation's (`--graceful-signal` of the
    master image that launched it), so that a release stopping on TERM is still stopped with TERM after an
    upgrade to one stopping on USR2; the master's own where the generation is not known."""
    generation = state.generation(child.version)
    return state.config.graceful_signal if generation is None else generation.launch.graceful_signal


def signal_gracefully(state: State, pids: Sequence[int], cause: Cause) -> Outcome:
    """`signal_children` with each worker's own graceful signal (`graceful_signal_of`), in `pids` order per signal."""
    groups: dict[str, list[int]] = {}
    for pid in pids:
        child = state.children.get(pid)
        signal = state.config.graceful_signal if child is None else graceful_signal_of(state, child)
        groups.setdefault(signal, []).append(pid)
    effects: list[Effect] = []
    for signal, group in groups.items():
        state, more = signal_children(state, signal, group, cause)
        effects += more
    return state, effects


def register_ack(state: State, pid: int) -> Outcome:
    child = state.children[pid]
    streak = state.deaths_before_ack
    extra = f", breaking the streak of {streak} consecutive unacked workers dying" if streak else ""
    state = replace(state, children=state.indexed_children.set(replace(child, acked=True)), deaths_before_ack=0)
    message = f"Up to {pool.ack_count(state)} / {pool.ack_target(state)} {state.config.ack_mode} ACKs{extra}"
    return state, [Log(LogLevel.INFO, message)]


def spin_up(state: State, count: int, version: int | None = None) -> Outcome:
    """Order `count` new workers of generation `version` (the current one by default) at the lowest
    free indexes, each from that generation's launch spec."""
    version = state.version if version is None else version
    generation = state.generation(version)
    launch = None if generation is None else generation.launch
    effects: list[Effect] = []
    pending = state.indexed_pending
    spawn_id = state.next_spawn_id
    for index in pool.free_indexes(state, count):
        pending = pending.set(PendingSpawn(spawn_id, index, version, state.clock))
        effects.append(SpawnWorker(spawn_id, index, version, launch))
        spawn_id += 1
    if count > 0:
        state = replace(state, pending=pending, next_spawn_id=spawn_id, last_spinup_at=state.clock)
    return state, effects
