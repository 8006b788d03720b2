"""Connection draining on `-b ...,drain` listeners: no connection is lost when a generation's workers stop.

A server that stops gracefully still closes a connection it accepted a moment
before the signal and had not read yet (uvicorn and hypercorn do). With one
shared accept queue that race cannot be avoided: every worker takes from it
until its signal arrives. So each generation accepts on a socket of its own (one
SO_REUSEPORT group; the shell steers each new connection to one of them), and
before the master stops a worker on its own initiative while another generation
serves, it steers every new connection away from the worker's generation,
waits until that generation's queue is seen empty, then `GRACE` more, and only
then signals. spec/README.md §10 states the rules and invariant D1.
"""

from __future__ import annotations

from einhorn.core.effects import Effect
from einhorn.core.events import QueuesMeasured
from einhorn.core.record import replace
from einhorn.core.state import Drain, State

Outcome = tuple[State, list[Effect]]


def drain_of(state: State, version: int) -> Drain | None:
    return next((d for d in state.drains if d.version == version), None)


def _with(state: State, drain: Drain) -> State:
    return replace(state, drains=tuple(drain if d.version == drain.version else d for d in state.drains))


def on_measured(state: State, event: QueuesMeasured) -> Outcome:
    """The first reading with nothing waiting, of the measurement last ordered, starts the grace."""
    drain = drain_of(state, event.version)
    if drain is None or drain.ticket != event.ticket or drain.empty_at is not None or event.queued > 0:
        return state, []
    return _with(state, replace(drain, empty_at=event.now)), []
