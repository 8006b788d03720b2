"""sd_notify(3) in the core: what a worker's datagram means (`-m notify`), and what the master tells
its own supervisor (systemd) when `NOTIFY_SOCKET` is in its environment.

Workers (`WorkerNotified`): `READY=1` is the worker's ACK, by the rule of
`worker:ack` (only in an ACK mode that takes ACKs, once per worker);
`STATUS=` is recorded and shown in `state`; `WATCHDOG=1` counts as a ping.
Other fields are ignored.

The supervisor (`tell_supervisor`, after every step, when `Config.supervised`):
`READY=1` once the first pool is fully ACKed; `RELOADING=1` with
`MONOTONIC_USEC` when a re-exec or an upgrade starts, and `READY=1` when it
ends (done or failed); `STOPPING=1` when the master starts shutting down;
`STATUS=` whenever the one line of progress changes. `WATCHDOG=1` is a timer
(`WATCHDOG`) at half of `Config.watchdog_interval`: it fires only while the
loop runs.
"""

from __future__ import annotations

from collections.abc import Mapping

from einhorn.core import pool
from einhorn.core.actions import register_ack
from einhorn.core.effects import Effect, Log, LogLevel, NotifySupervisor
from einhorn.core.events import WorkerNotified
from einhorn.core.record import replace
from einhorn.core.state import State

Outcome = tuple[State, list[Effect]]


def on_worker_notified(state: State, event: WorkerNotified) -> Outcome:
    child = state.children.get(event.pid)
    fields = event.fields
    if child is None:
        hint = " (from a worker's shell, `systemd-notify --pid=$$ --ready` speaks for the worker)" if "READY" in fields else ""
        return state, [Log(LogLevel.INFO, f"Notification from {event.pid}, which is not a worker; ignoring: {_shown(fields)}{hint}")]
    effects: list[Effect] = [Log(LogLevel.DEBUG, f"Notification from {event.pid}: {_shown(fields)}")]
    if "STATUS" in fields:
        child = replace(child, status=fields["STATUS"])
    if fields.get("WATCHDOG") == "1":
        child = replace(child, pinged_at=event.now)
    state = replace(state, children=state.indexed_children.set(child))
    if fields.get("READY") == "1":
        if state.config.ack_timer is not None or not state.config.notify_acks:
            effects.append(Log(LogLevel.DEBUG, f"READY=1 from {child.pid} in {state.config.ack_mode} ACK mode; ignoring"))
        elif child.acked:
            effects.append(Log(LogLevel.DEBUG, f"READY=1 from {child.pid}, already ACKed"))
        else:
            state, more = register_ack(state, child.pid)
            effects += more
    return state, effects


def _shown(fields: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(fields.items()))


# --- the master's supervisor ------------------------------------------------------------


def tell_supervisor(previous: State, state: State) -> Outcome:
    """What changed from `previous` to `state`, as the supervisor hears it (nothing unless supervised)."""
    if not state.config.supervised:
        return state, []
    fields: list[tuple[str, str]] = []
    if previous.respawn and not state.respawn:
        fields.append(("STOPPING", "1"))
    elif state.respawn and not state.supervisor_ready:
        if not _reloading(state) and pool.ack_count(state) >= pool.ack_target(state):
            fields.append(("READY", "1"))
            state = replace(state, supervisor_ready=True)
    elif state.respawn and _reloading(state) and not _reloading(previous):
        fields += [("RELOADING", "1"), ("MONOTONIC_USEC", str(int(state.clock * 1_000_000)))]
    elif state.respawn and _reloading(previous) and not _reloading(state):
        fields.append(("READY", "1"))
    status = status_line(state)
    if fields or status != status_line(previous):
        fields.append(("STATUS", status))
    return state, [NotifySupervisor(tuple(fields))] if fields else []


def _reloading(state: State) -> bool:
    return state.reexec is not None or state.upgrading is not None


def status_line(state: State) -> str:
    """One line of progress for the supervisor (`systemctl status`)."""
    acked, number = pool.ack_count(state), pool.ack_target(state)
    if not state.respawn:
        return f"stopping: {len(state.children)} workers left"
    if state.reexec is not None:
        return f"re-exec'ing the master ({state.reexec.purpose.value}); {acked}/{number} workers ACKed"
    if state.upgrading is not None:
        return f"upgrading to version {state.version}: {acked}/{number} new workers ACKed"
    return f"{acked}/{number} workers ACKed, version {state.version}"


def watchdog_due(state: State) -> list[tuple[float, int]]:
    interval = state.config.watchdog_interval
    if not state.config.supervised or interval is None or state.exit_code is not None:
        return []
    return [(state.clock if state.watchdog_at is None else state.watchdog_at + interval / 2, 0)]


def ping_watchdog(state: State, _: int) -> Outcome:
    return replace(state, watchdog_at=state.clock), [NotifySupervisor((("WATCHDOG", "1"),))]
