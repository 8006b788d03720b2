"""Observations: what happened in one step, as plain facts for the event stream, the metrics and the logs.

`observe(before, event, after, effects)` reads a step's input, its output and
the states on either side, and says what an operator would want to hear:

    spawned          a worker started (pid, index, version)
    spawn_failed     the shell could not start one (index, version, reason)
    acked            a worker ACKed (pid, index, version)
    exited           a worker exited (pid, index, version, exit_code or signal, before_ack, streak)
    signaled         the master sent a worker a signal (pid, signal, cause)
    health           a signal sent on a health rule's verdict (`HEALTH_CAUSES`): rule, pid
    upgrade_phase    a re-exec or an upgrade changed phase (phase, purpose, version, reason)
    config_changed   a runtime setting changed (setting, old, new)
    reexec           the master re-exec'd and restored its state (version, workers)
    steered          drain listeners: new connections now go to these generations (weights, "1:3,2:1")
    drain            drain listeners: a generation's drain began or ended (version, phase: draining,
                     drained, timed_out, or ended when no stop waits for it any more)
    command          a command request was handled (command, result)

It decides nothing and is never needed by `step`: the shell calls it after a
step only when someone is watching (a subscriber, the metrics), so it costs an
unwatched master nothing. It reads only what the step touched (the event's
pid, the signals ordered, the un-ACKed workers), never the whole pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from einhorn.core import drain
from einhorn.core.commands import COMMANDS
from einhorn.core.effects import Cause, Effect, Reply, SendSignal
from einhorn.core.events import (
    WORKER_COMMANDS,
    ChildExited,
    CommandReceived,
    Event,
    MasterStarted,
    ReexecFailed,
    SpawnFailed,
    Tick,
    UpgradeCheckFailed,
    WorkerSpawned,
    command_name,
)
from einhorn.core.record import dataclass, field
from einhorn.core.state import Child, Reexec, ReexecPhase, RolloutPhase, State

FieldValue = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Observation:
    kind: str
    fields: Mapping[str, FieldValue] = field(default_factory=dict)


HEALTH_CAUSES: frozenset[Cause] = frozenset({Cause.BOOT_TIMEOUT, Cause.PING_TIMEOUT, Cause.RSS_LIMIT})
"""Causes that are a health rule's verdict: each signal sent for one is also a `health` observation,
with the cause's value as its rule. (The health rules add BOOT_TIMEOUT, PING_TIMEOUT, RSS_LIMIT.)"""

"""Not observed as commands: a worker's ACK is `acked`, and pings would drown the stream."""


def observe(before: State, event: Event, after: State, effects: Sequence[Effect]) -> list[Observation]:
    found: list[Observation] = []
    match event:
        case WorkerSpawned(spawn_id=spawn_id, pid=pid):
            child = after.children.get(pid)
            if spawn_id in before.pending and child is not None:
                found.append(Observation("spawned", _worker(child)))
                if child.acked:  # a timer ACK of 0 seconds, in the same step
                    found.append(Observation("acked", _worker(child)))
        case SpawnFailed(spawn_id=spawn_id, reason=reason):
            pending = before.pending.get(spawn_id)
            if pending is not None:
                failed: dict[str, FieldValue] = {"index": pending.index, "version": pending.version, "reason": reason}
                failed["streak"] = after.deaths_before_ack
                found.append(Observation("spawn_failed", failed))
        case ChildExited(pid=pid):
            child = before.children.get(pid)
            if child is not None:
                found.append(Observation("exited", _exit_fields(child, event, before, after)))
        case MasterStarted(restored=True):
            purpose = before.reexec_purpose
            restored: dict[str, FieldValue] = {"version": before.version, "workers": len(before.children)}
            restored["purpose"] = None if purpose is None else purpose.value
            found.append(Observation("reexec", restored))
        case CommandReceived(request=request):
            command = command_name(request)
            if command not in WORKER_COMMANDS:
                found.append(Observation("command", {"command": _command_name(command), "result": _result(event, effects)}))
        case _:
            pass
    found += _acks(before, event, after)
    for effect in effects:
        if isinstance(effect, SendSignal):
            found += _signaled(before, after, effect)
    found += _upgrade_phases(before, event, after)
    found += _config_changes(before, after)
    if after.config.drain:
        found += _drains(before, after)
    return found


def _drains(before: State, after: State) -> list[Observation]:
    found: list[Observation] = []
    now = {d.version: d for d in after.drains}
    for d in before.drains:
        if d.version not in now:
            if d.empty_at is not None and after.clock >= d.empty_at + drain.GRACE:
                phase = "drained"
            else:
                phase = "timed_out" if after.clock >= d.since + drain.TIMEOUT else "ended"
            found.append(Observation("drain", {"version": d.version, "phase": phase}))
    known = {d.version for d in before.drains}
    found += [Observation("drain", {"version": v, "phase": "draining"}) for v in sorted(now) if v not in known]
    if after.steered != before.steered:
        found.append(Observation("steered", {"weights": ",".join(f"{v}:{w}" for v, w in after.steered)}))
    return found


def _worker(child: Child) -> dict[str, FieldValue]:
    return {"pid": child.pid, "index": child.index, "version": child.version}


def _exit_fields(child: Child, event: ChildExited, before: State, after: State) -> dict[str, FieldValue]:
    fields = _worker(child)
    fields.update(
        exit_code=event.exit_code,
        signal=event.signal,
        cause=f"signal {event.signal}" if event.signal is not None else f"exit code {event.exit_code}",
        before_ack=not child.acked,
        counted=after.deaths_before_ack > before.deaths_before_ack,
        streak=after.deaths_before_ack,
        signaled=",".join(sorted(child.signaled)) or None,
        age=round(event.now - child.spinup_at, 3),
    )
    return fields


def _acks(before: State, event: Event, after: State) -> list[Observation]:
    """Workers un-ACKed before and ACKed after: looked for only when the counts say there are some."""
    gone = before.children.get(event.pid) if isinstance(event, ChildExited) else None  # the one worker a step removes
    acks = (
        after.indexed_children.count(acked=True) - before.indexed_children.count(acked=True) + (1 if gone and gone.acked else 0)
    )
    if acks <= 0:
        return []
    found = []
    for _, pid in before.indexed_children.unacked_by_spinup():
        child = after.children.get(pid)
        if child is not None and child.acked:
            found.append(Observation("acked", _worker(child)))
    return found


def _signaled(before: State, after: State, order: SendSignal) -> list[Observation]:
    child = before.children.get(order.pid) or after.children.get(order.pid)
    fields: dict[str, FieldValue] = {"pid": order.pid, "signal": order.signal, "cause": order.cause.value}
    if child is not None:
        fields.update(index=child.index, version=child.version, acked=child.acked)
    found = [Observation("signaled", fields)]
    if order.cause in HEALTH_CAUSES:
        found.append(Observation("health", {**fields, "rule": order.cause.value}))
    return found


def _upgrade_phases(before: State, event: Event, after: State) -> list[Observation]:
    found = []
    old, new = before.reexec, after.reexec
    if old is not new:
        phase = _phase_name(new)
        if new is not None and (old is None or _phase_name(old) != phase):
            found.append(Observation("upgrade_phase", {"phase": phase, "purpose": new.purpose.value, "version": after.version}))
        elif new is None and old is not None and not isinstance(event, MasterStarted):
            reason = _reexec_failure(event)
            phase = "aborted" if _is_abort(event) else "failed"
            found.append(
                Observation(
                    "upgrade_phase", {"phase": phase, "purpose": old.purpose.value, "version": after.version, "reason": reason}
                )
            )
    rolled_back = _rolled_back(after) - _rolled_back(before)
    found += _rollout_phases(before, event, after, rolled_back)
    if after.upgrading is not None and (before.upgrading is None or before.version != after.version):
        found.append(
            Observation("upgrade_phase", {"phase": "upgrading", "purpose": after.upgrading.value, "version": after.version})
        )
    elif before.upgrading is not None and after.upgrading is None and not rolled_back:
        found.append(Observation("upgrade_phase", {"phase": "done", "purpose": before.upgrading.value, "version": after.version}))
    return found


def _rolled_back(state: State) -> frozenset[int]:
    return frozenset(g.version for g in state.generations if g.rolled_back_because is not None)


def _rollout_phases(before: State, event: Event, after: State, rolled_back: frozenset[int]) -> list[Observation]:
    """A canary phase begins, its bake begins, it is promoted; a generation is rolled back (or aborted)."""
    found = []
    old, new = before.rollout, after.rollout
    if new is not None and new.phase is RolloutPhase.CANARY and (old is None or old.version != new.version):
        fields: dict[str, FieldValue] = {
            "phase": "canary",
            "purpose": new.kind.value,
            "version": new.version,
            "canaries": new.options.canary,
        }
        found.append(Observation("upgrade_phase", fields))
    if new is not None and new.bake_until is not None and (old is None or old.bake_until is None or old.version != new.version):
        found.append(
            Observation(
                "upgrade_phase", {"phase": "baking", "purpose": new.kind.value, "version": new.version, "bake": new.options.bake}
            )
        )
    if (
        old is not None
        and new is not None
        and old.version == new.version
        and old.phase is RolloutPhase.CANARY
        and new.phase is RolloutPhase.FINISHING
    ):
        found.append(Observation("upgrade_phase", {"phase": "promoted", "purpose": new.kind.value, "version": new.version}))
    aborted = _is_abort(event)
    for version in sorted(rolled_back):
        generation = after.generation(version)
        reason = generation.rolled_back_because if generation is not None else None
        purpose = old.kind.value if old is not None and old.version == version else "upgrade"
        phase = "aborted" if aborted else "rolled_back"
        found.append(
            Observation(
                "upgrade_phase",
                {"phase": phase, "purpose": purpose, "version": version, "current": after.version, "reason": reason},
            )
        )
    return found


def _phase_name(reexec: Reexec | None) -> str:
    """The phase observers see: comparing the image is part of checking it."""
    return "executing" if reexec is not None and reexec.phase is ReexecPhase.EXECUTING else "checking"


def _is_abort(event: Event) -> bool:
    return isinstance(event, CommandReceived) and event.request.get("command") == "abort_upgrade"


def _reexec_failure(event: Event) -> str:
    if _is_abort(event):
        return "aborted by abort_upgrade"
    match event:
        case UpgradeCheckFailed(reason=reason):
            return f"upgrade check failed: {reason}"
        case ReexecFailed(reason=reason):
            return f"exec failed: {reason}"
        case Tick():
            return "upgrade check timed out"
        case _:
            return "abandoned: shutting down"


_SETTINGS = ("number", "seconds", "pacing", "max_unacked", "max_upgrade_additional", "signal_timeout")


def _config_changes(before: State, after: State) -> list[Observation]:
    if before.config is after.config:
        return []
    found = []
    for name in _SETTINGS:
        old, new = getattr(before.config, name), getattr(after.config, name)
        if old != new:
            found.append(Observation("config_changed", {"setting": name, "old": _plain(old), "new": _plain(new)}))
    return found


def _plain(value: object) -> FieldValue:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def _command_name(command: object) -> str:
    """A known command's name; any other request as "(unknown)" (a client may send any text)."""
    return command if isinstance(command, str) and command in COMMANDS else "(unknown)"


def _result(event: CommandReceived, effects: Sequence[Effect]) -> str:
    """ "ok", "unknown" (no such command) or "error" (a failed reply: an invalid request, an ERROR, a rollback)."""
    if command_name(event.request) not in COMMANDS:
        return "unknown"
    for effect in effects:
        if isinstance(effect, Reply) and effect.conn == event.conn and effect.failed:
            return "error"
    return "ok"
