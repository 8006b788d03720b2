"""The `state` command's document: the master's state as plain data.

Shaped like the original's `{:state => Einhorn::State.dumpable_state}` so Ruby
clients find the keys they know. The shell renders `Symbol` as a Ruby symbol
(`:worker`) and `Timestamp` as a YAML timestamp; in JSON they become a plain
string and an ISO-8601 string.
"""

from __future__ import annotations

from dataclasses import dataclass

from einhorn.core import pool
from einhorn.core.state import Child, Generation, Rollout, State


@dataclass(frozen=True, slots=True)
class Symbol:
    """A Ruby symbol in `state` (`:name` in YAML, the bare name in JSON)."""

    name: str


@dataclass(frozen=True, slots=True)
class Timestamp:
    """Seconds since the epoch (wall clock), for display only."""

    epoch: float


def snapshot(state: State, wall_offset: float) -> dict[str, object]:
    """`wall_offset` turns the core's monotonic times into wall-clock times."""

    def at(t: float | None) -> Timestamp | None:
        return None if t is None else Timestamp(t + wall_offset)

    config = state.config
    shown = config.display
    ack_mode: dict[str, object] = (
        {"type": Symbol(config.ack_mode)} if config.ack_timer is None else {"type": Symbol("timer"), "timeout": config.ack_timer}
    )
    return {
        "state": {
            "children": {pid: _child(state.children[pid], wall_offset) for pid in sorted(state.children)},
            "config": {
                "number": config.number,
                "backlog": shown.backlog,
                "seconds": config.seconds,
                "pacing": config.pacing.value,
                "max_unacked": config.max_unacked,
                "max_upgrade_additional": config.max_upgrade_additional,
            },
            "version": state.version,
            "bind": list(shown.binds),
            "bound_ports": list(shown.bound_ports),
            "listeners": [
                {"family": x.family, "address": x.address, "name": x.name or None, "accepting": n not in shown.stopped_listeners}
                for n, x in enumerate(shown.listeners)
            ],
            "cmd": list(shown.program),
            "respawn": state.respawn,
            "upgrading": state.upgrading is not None,
            "smooth_upgrade": state.upgrading is not None and state.upgrading.value == "smooth",
            "reloading_for_upgrade": state.reexec_purpose is not None and state.reexec_purpose.value != "reload",
            "cmd_name": shown.command_name,
            "verbosity": state.verbosity,
            "last_spinup": at(state.last_spinup_at),
            "ack_mode": ack_mode,
            "kill_children_on_exit": shown.kill_children_on_exit,
            "command_socket_as_fd": shown.command_socket_as_fd,
            "socket_path": shown.socket_path,
            "pidfile": shown.pidfile,
            "lockfile": shown.lockfile,
            "consecutive_deaths_before_ack": state.deaths_before_ack,
            "signal_timeout": config.signal_timeout,
            "graceful_signal": config.graceful_signal,
            "preloaded": shown.preloaded,
            "master_pid": shown.master_pid,
            "ack_count": pool.ack_count(state),
            "ack_target": pool.ack_target(state),
            "missing": max(0, pool.missing_worker_count(state)),
            "pending_spawns": len(state.pending),
            "generations": _generations(state),
            "rollout": None if state.rollout is None else _rollout(state.rollout, wall_offset),
        }
    }


def _generations(state: State) -> list[dict[str, object]]:
    if not state.generations:
        return []
    pids: dict[int, list[int]] = {}
    for pid in sorted(state.children):  # one pass, whatever the number of generations
        pids.setdefault(state.children[pid].version, []).append(pid)
    return [_generation(state, g, pids.get(g.version, [])) for g in state.generations]


def _generation(state: State, generation: Generation, workers: list[int]) -> dict[str, object]:
    launch = generation.launch
    version = generation.version
    return {
        "version": version,
        "current": version == state.version,
        "argv": list(launch.argv),
        "path": launch.path,
        "cwd": launch.cwd,
        "environment_variables": len(launch.environ),
        "graceful_signal": launch.graceful_signal,
        "rolled_back_because": generation.rolled_back_because,
        "workers": workers,
        "pending_spawns": state.indexed_pending.count(version),
    }


def _rollout(rollout: Rollout, wall_offset: float) -> dict[str, object]:
    options = rollout.options
    deadline, bake_until = rollout.deadline, rollout.bake_until
    return {
        "version": rollout.version,
        "previous": rollout.previous,
        "kind": rollout.kind.value,
        "phase": rollout.phase.value,
        "canary": options.canary,
        "bake": options.bake,
        "timeout": options.timeout,
        "started_at": Timestamp(rollout.started_at + wall_offset),
        "deadline": None if deadline is None else Timestamp(deadline + wall_offset),
        "canaries_started": rollout.canaries_started,
        "canaries_acked": rollout.canaries_acked,
        "bake_until": None if bake_until is None else Timestamp(bake_until + wall_offset),
        "new_deaths_before_ack": rollout.new_deaths,
        "last_death": rollout.last_death or None,
    }


_WORKER = Symbol("worker")


def _child(child: Child, wall_offset: float) -> dict[str, object]:
    # (Written out rather than through `at`: this runs once per worker per `state`.)
    signaled_at, pinged_at = child.last_signaled_at, child.pinged_at
    return {
        "type": _WORKER,
        "version": child.version,
        "acked": child.acked,
        "signaled": sorted(child.signaled) if child.signaled else [],
        "last_signaled_at": None if signaled_at is None else Timestamp(signaled_at + wall_offset),
        "index": child.index,
        "spinup_time": Timestamp(child.spinup_at + wall_offset),
        "pinged_at": None if pinged_at is None else Timestamp(pinged_at + wall_offset),
        "pinged_request_id": child.pinged_request_id,
        "status": child.status,
    }
