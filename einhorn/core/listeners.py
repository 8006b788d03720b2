"""The `-b` listeners' health: measured by the shell, shown by the core, never decided on.

A worker that calls `shutdown()` on its copy of a listening socket shuts down
the one socket every worker shares: no worker accepts any more, although each
one still runs. The shell checks each listener every few seconds and reports
a change as `ListenerHealthChanged`; here it is logged once (a warning when it
stops, a note if it accepts again) and kept in `Display.stopped_listeners`,
which `state` shows under `listeners`.
"""

from __future__ import annotations

from einhorn.core.effects import Effect, Log, LogLevel
from einhorn.core.events import ListenerHealthChanged
from einhorn.core.record import replace
from einhorn.core.state import State

Outcome = tuple[State, list[Effect]]

ADVICE = "see 'A listener that stopped accepting' in docs/production.md"


def on_health_changed(state: State, event: ListenerHealthChanged) -> Outcome:
    shown = state.config.display
    was_accepting = event.index not in shown.stopped_listeners
    if event.accepting == was_accepting:
        return state, []
    name = f"Listener {event.index}"
    if event.index < len(shown.listeners):
        name += f" ({shown.listeners[event.index].address})"
    if event.accepting:
        stopped = shown.stopped_listeners - {event.index}
        message = Log(LogLevel.INFO, f"{name} accepts connections again")
    else:
        stopped = shown.stopped_listeners | {event.index}
        message = Log(
            LogLevel.ERROR,
            f"WARNING: {name} stopped accepting connections: no worker can accept on it any more, although they"
            f" all still run. A worker probably called shutdown() on the shared socket; {ADVICE}.",
        )
    config = replace(state.config, display=replace(shown, stopped_listeners=stopped))
    return replace(state, config=config), [message]
