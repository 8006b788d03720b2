"""Connection draining on `-b ...,drain` listeners: no connection is lost when a generation's workers stop.

A server that stops gracefully still closes a connection it accepted a moment
before the signal and had not read yet (uvicorn and hypercorn do). With one
shared accept queue that race cannot be avoided: every worker takes from it
until its signal arrives. So on a `drain` listener each generation accepts on
a socket of its own (one SO_REUSEPORT group), and the shell sends each new
connection to one of them as the core's `Steer` says: in proportion to how
many workers of each generation serve. Before the master stops a worker on its
own initiative while another generation serves, it steers every new connection
away from the worker's generation, has the shell read that generation's accept
queue until it is empty, waits `GRACE` more, and only then signals.
spec/README.md §9 states the rules and invariant D1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from einhorn.core.effects import Effect, Log, LogLevel, MeasureQueues, ReleaseListeners, Steer
from einhorn.core.events import QueuesMeasured
from einhorn.core.record import replace
from einhorn.core.state import Drain, State

Outcome = tuple[State, list[Effect]]

GRACE = 0.1
"""From the first reading of an empty queue to the signal: the connections a worker accepted last have
their requests read by then (a server reads as soon as it accepts)."""
POLL = 0.005
"""Between two readings of a queue that is not empty yet."""
TIMEOUT = 10.0
"""A generation whose queue is still not empty this long after connections were steered away (a worker
that stopped accepting) is stopped anyway, with a warning."""


def drain_of(state: State, version: int) -> Drain | None:
    return next((d for d in state.drains if d.version == version), None)


def _with(state: State, drain: Drain) -> State:
    return replace(state, drains=tuple(drain if d.version == drain.version else d for d in state.drains))


def serving(state: State, version: int) -> int:
    return state.indexed_children.count(version, signaled=False, acked=True)


def accepting(state: State) -> list[tuple[int, int]]:
    """(version, serving workers) of each generation that may get new connections: one with a serving worker,
    not steered away from, and with no worker stopping (a server told to stop may still accept for a while
    before it closes what it accepted unread: its generation gets nothing more until it is gone). During the
    pass, a drain no stop has waited for yet does not count: unless one does, it ends with the pass."""
    out = {d.version for d in state.drains if d.held}
    children = state.indexed_children
    return [
        (v, n)
        for v in sorted(children.unsignaled_versions())
        if v not in out and not children.count(v, signaled=True) and (n := serving(state, v)) > 0
    ]


def _elsewhere(state: State, version: int) -> bool:
    """New connections can go somewhere else than `version`'s socket: to another accepting generation, or
    (for an older one) to the current generation's, whose workers take them once they accept."""
    return version != state.version or any(v != version for v, _ in accepting(state))


def done(state: State, drain: Drain) -> bool:
    return drain.timed_out or (drain.empty_at is not None and state.clock >= drain.empty_at + GRACE)


def admit(state: State, pids: Sequence[int]) -> tuple[State, list[int], list[Effect]]:
    """Which of `pids`, workers the master is about to stop on its own initiative, may be signalled now.

    With drain listeners: a worker whose generation is being drained waits until the drain is done; one
    whose generation may have connections waiting (`State.exposed`) waits for a drain, started here, if
    they can go elsewhere (`_elsewhere`); the others (no connection can be waiting for them, or nothing
    else could take them) go at once."""
    if not state.config.drain:
        return state, list(pids), []
    ready: list[int] = []
    effects: list[Effect] = []
    for pid in pids:
        version = state.children[pid].version
        drain = drain_of(state, version)
        if drain is None and (version not in state.exposed or not _elsewhere(state, version)):
            ready.append(pid)
        elif drain is None:
            state = replace(state, drains=tuple(sorted((*state.drains, Drain(version, since=state.clock)), key=lambda d: d.version)))
            effects.append(
                Log(
                    LogLevel.INFO,
                    f"Draining version {version}: new connections go to the other generations; its workers are"
                    " stopped once its accept queue is empty",
                    (("version", version),),
                )
            )
        elif done(state, drain):
            ready.append(pid)
        elif not drain.held:
            state = _with(state, replace(drain, held=True))
    return state, ready, effects


def begin_pass(state: State) -> State:
    """Before the scheduling pass: no stop waits for any drain yet (`admit` marks those that wait)."""
    if not state.drains or not any(d.held for d in state.drains):
        return state
    return replace(state, drains=tuple(replace(d, held=False) for d in state.drains))


def settle(previous: State, state: State) -> Outcome:
    """After the pass: end the drains no stop waits for, steer as the pool now serves, release the
    sockets of generations with no worker left."""
    if not state.config.drain:
        return state, []
    effects: list[Effect] = []
    exposed = set(state.exposed)
    if any(not d.held for d in state.drains):
        for d in state.drains:
            if not d.held:
                if done(state, d):
                    exposed.discard(d.version)
                effects.append(Log(LogLevel.DEBUG, f"Version {d.version}'s drain ends", (("version", d.version),)))
        state = replace(state, drains=tuple(d for d in state.drains if d.held))
    wanted = weights(state)
    if wanted != state.steered:
        state = replace(state, steered=wanted)
        effects.append(Steer(wanted))
    ended = sorted(_ended(previous, state))
    now_exposed = frozenset((exposed | {v for v, _ in wanted}) - set(ended))
    if now_exposed != state.exposed:
        state = replace(state, exposed=now_exposed)
    effects += [ReleaseListeners(v) for v in ended]
    return state, effects


def after_reexec(state: State) -> State:
    """The new image knows nothing of the old one's drains and steering (a restored document has none; a state
    passed on in memory, as the model checker does, must not keep them either): it steers at its first step,
    and takes every live generation as possibly holding connections, so that it drains before it stops anyone."""
    if not state.config.drain:
        return state
    live = {state.version, *(c.version for c in state.children.values()), *(p.version for p in state.pending.values())}
    return replace(state, drains=(), steered=(), exposed=frozenset(live))


def weights(state: State) -> tuple[tuple[int, int], ...]:
    """Each `accepting` generation by its serving workers; the current one alone when none is (connections
    wait in its queue for its workers)."""
    return tuple(accepting(state)) or ((state.version, 1),)


def _live(state: State, version: int) -> bool:
    return version == state.version or bool(state.indexed_children.count(version) or state.indexed_pending.count(version))


def _ended(previous: State, state: State) -> Iterable[int]:
    """Generations that had a worker (or were current) before this step and have none now."""
    known = {previous.version, *(g.version for g in previous.generations), *(v for v, _ in previous.steered)}
    return (v for v in known if _live(previous, v) and not _live(state, v))


# --- the drain's timers (step.TIMERS) ---------------------------------------


def poll_due(state: State) -> list[tuple[float, int]]:
    """A reading of each queue not seen empty yet: POLL after the last one was ordered (or after the steer)."""
    return sorted(((d.since if d.measured_at is None else d.measured_at) + POLL, d.version) for d in state.drains if d.empty_at is None)


def measure(state: State, version: int) -> Outcome:
    drain = drain_of(state, version)
    assert drain is not None
    ticket = state.next_ticket
    state = _with(replace(state, next_ticket=ticket + 1), replace(drain, ticket=ticket, measured_at=state.clock))
    return state, [MeasureQueues(version, ticket)]


def grace_due(state: State) -> list[tuple[float, int]]:
    """The end of each grace: the pass then signals the workers that waited (its `fire` does nothing)."""
    return sorted((d.empty_at + GRACE, d.version) for d in state.drains if d.empty_at is not None and not d.timed_out)


def timeout_due(state: State) -> list[tuple[float, int]]:
    return sorted((d.since + TIMEOUT, d.version) for d in state.drains if d.empty_at is None and not d.timed_out)


def time_out(state: State, version: int) -> Outcome:
    drain = drain_of(state, version)
    assert drain is not None
    state = _with(state, replace(drain, timed_out=True))
    message = (
        f"Version {version}'s accept queue is still not empty {TIMEOUT:g}s after new connections were steered away"
        " (a worker that stopped accepting?); stopping its workers anyway"
    )
    return state, [Log(LogLevel.WARN, message, (("version", version),))]


def on_measured(state: State, event: QueuesMeasured) -> Outcome:
    """The first reading with nothing waiting, of the measurement last ordered, starts the grace."""
    drain = drain_of(state, event.version)
    if drain is None or drain.ticket != event.ticket or drain.measured_at is None or drain.empty_at is not None or event.queued > 0:
        return state, []
    return _with(state, replace(drain, empty_at=event.now)), []
