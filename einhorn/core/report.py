"""The `state` command's document: the master's state as plain data.

Shaped like the original's `{:state => Einhorn::State.dumpable_state}` so Ruby
clients find the keys they know. The shell renders `Symbol` as a Ruby symbol
(`:worker`) and `Timestamp` as a YAML timestamp; in JSON they become a plain
string and an ISO-8601 string.
"""

from __future__ import annotations

from dataclasses import dataclass

from einhorn.core import pool
from einhorn.core.state import Child, State


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str


@dataclass(frozen=True, slots=True)
class Timestamp:
    """Seconds since the epoch (wall clock), for display only."""

    epoch: float


def snapshot(state: State, wall_offset: float) -> dict[str, object]:
    """`wall_offset` turns the core's monotonic times into wall-clock times.

    Per worker, `ping_age` (seconds since its last ping, by the state's clock),
    `rss_bytes` (the last measurement, with `--max-worker-rss`) and `health`
    (a health rule's verdict, not yet carried out: `boot_timeout`,
    `ping_timeout`, `rss_limit`; or null) show the health rules' view."""

    def at(t: float | None) -> Timestamp | None:
        return None if t is None else Timestamp(t + wall_offset)

    config = state.config
    shown = config.display
    ack_mode: dict[str, object] = (
        {"type": Symbol(config.ack_mode)} if config.ack_timer is None else {"type": Symbol("timer"), "timeout": config.ack_timer}
    )
    return {
        "state": {
            "children": {pid: _child(state.children[pid], wall_offset, state.clock) for pid in sorted(state.children)},
            "config": {
                "number": config.number,
                "backlog": shown.backlog,
                "seconds": config.seconds,
                "pacing": config.pacing.value,
                "max_unacked": config.max_unacked,
                "max_upgrade_additional": config.max_upgrade_additional,
                "boot_timeout": config.boot_timeout,
                "ping_timeout": config.ping_timeout,
                "max_worker_rss_mb": config.max_worker_rss_mb,
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
        }
    }


_WORKER = Symbol("worker")


def _child(child: Child, wall_offset: float, clock: float) -> dict[str, object]:
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
        "ping_age": None if pinged_at is None else round(clock - pinged_at, 3),
        "rss_bytes": child.rss_bytes,
        "health": None if child.verdict is None else child.verdict.value,
    }
