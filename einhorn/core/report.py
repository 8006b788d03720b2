"""The `state` command's document: the master's state as plain data.

Shaped like the original's `{:state => Einhorn::State.dumpable_state}` so Ruby
clients find the keys they know. The shell renders `Symbol` as a Ruby symbol
(`:worker`) and `Timestamp` as a YAML timestamp; in JSON they become a plain
string and an ISO-8601 string.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from einhorn.core import pool
from einhorn.core.record import dataclass
from einhorn.core.state import Child, Generation, Rollout, RolloutPhase, State


@dataclass(frozen=True, slots=True)
class Symbol:
    """A Ruby symbol in `state` (`:name` in YAML, the bare name in JSON)."""

    name: str


@dataclass(frozen=True, slots=True)
class Timestamp:
    """Seconds since the epoch (wall clock), for display only."""

    epoch: float


class Workers(Mapping[int, Mapping[str, object]]):
    """The document's `children`: pid -> that worker's entry, in pid order, made when it is read.

    A `state` of 1000 workers would otherwise build 1000 dicts (and thrice as many times)
    per request, which is most of its garbage; the shell can instead render each `Child`
    once and reuse it while the child and the times it shows stay the same (einhorn/io/render.py).
    """

    __slots__ = ("children", "wall_offset", "clock")

    def __init__(self, children: Mapping[int, Child], wall_offset: float, clock: float) -> None:
        self.children = children
        self.wall_offset = wall_offset
        self.clock = clock

    def __getitem__(self, pid: int) -> Mapping[str, object]:
        return _child(self.children[pid], self.wall_offset, self.clock)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.children))

    def __len__(self) -> int:
        return len(self.children)

    def __repr__(self) -> str:
        return f"Workers({dict(self)!r})"

    def entry(self, child: Child) -> Mapping[str, object]:
        """What `self[child.pid]` is."""
        return _child(child, self.wall_offset, self.clock)

    def ping_age(self, child: Child) -> float | None:
        """The one field of an entry that changes with the request's clock rather than with the child."""
        return _ping_age(child.pinged_at, self.clock)


def snapshot(state: State, wall_offset: float) -> dict[str, object]:
    """`wall_offset` turns the core's monotonic times into wall-clock times.

    Per worker, `ping_age` (seconds since its last ping, by the state's clock),
    `rss_bytes` (the last measurement, with `--max-worker-rss`) and `health`
    (a health rule's verdict, not yet carried out: `boot_timeout`,
    `ping_timeout`, `rss_limit`; or null) show the health rules' view.

    The offset is taken to the millisecond: two clocks read one after the other
    differ by a few microseconds more or less each time, and a worker's times
    would change from one `state` to the next with it (and so every worker's
    entry, which the shell otherwise renders once)."""
    wall_offset = round(wall_offset, 3)

    def at(t: float | None) -> Timestamp | None:
        return None if t is None else Timestamp(t + wall_offset)

    config = state.config
    shown = config.display
    ack_mode: dict[str, object] = (
        {"type": Symbol(config.ack_mode)} if config.ack_timer is None else {"type": Symbol("timer"), "timeout": config.ack_timer}
    )
    return {
        "state": {
            "children": Workers(state.children, wall_offset, state.clock),
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
                | ({"drain": True} if x.drain else {})
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
            **({"drain": _drain(state, wall_offset)} if config.drain else {}),
        }
    }


def _drain(state: State, wall_offset: float) -> dict[str, object]:
    """With drain listeners: where new connections go, and the generations being drained (drain.py)."""
    return {
        "steered": [{"version": v, "weight": w} for v, w in state.steered],
        "draining": [
            {
                "version": d.version,
                "since": Timestamp(d.since + wall_offset),
                "queue": "timed out" if d.timed_out else "waiting" if d.empty_at is None else "empty",
            }
            for d in state.drains
        ],
    }


def _generations(state: State) -> list[dict[str, object]]:
    if not state.generations:
        return []
    children = state.indexed_children
    pids: dict[int, list[int]] = {}
    for generation in state.generations:  # (the usual case: all workers are of one generation, no pass over them)
        if children.count(generation.version) == len(children):
            pids[generation.version] = sorted(children)
    if not pids:
        for pid in sorted(children):  # one pass, whatever the number of generations
            pids.setdefault(children[pid].version, []).append(pid)
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
        "ping_age": _ping_age(pinged_at, clock),
        "rss_bytes": child.rss_bytes,
        "health": None if child.verdict is None else child.verdict.value,
    }


def _ping_age(pinged_at: float | None, clock: float) -> float | None:
    return None if pinged_at is None else round(clock - pinged_at, 3)


# --- `status`: the same state, for people ------------------------------------------


def status(state: State) -> str:
    """A short summary for an operator (`status`): about 7 lines and one per worker.

    Ages are from `state.clock` (the request's time). `state --json` stays the machine form.
    """
    config = state.config
    shown = config.display
    name = f" ({shown.command_name})" if shown.command_name else ""
    total = len(state.children) + len(state.pending)
    serving = pool.serving_count(state)
    lines = [
        f"Einhorn {config.einhorn_version}, master {shown.master_pid}{name}: version {state.version}, "
        f"{pool.ack_count(state)}/{config.number} ACKed at this version, {serving} serving, {total} workers in all"
    ]
    lines += [f"  {line}" for line in _versions(state)]
    lines.append(f"upgrade: {_upgrade_phase(state)}")
    if state.deaths_before_ack:
        loop = " (crash loop)" if state.deaths_before_ack >= 3 else ""
        lines.append(f"deaths before ACK in a row: {state.deaths_before_ack}{loop}")
    lines.append(f"settings: {_settings(state)}")
    lines.append(f"listeners: {_listeners(state)}")
    if config.drain:
        lines.append(f"connections: {_steering(state)}")
    lines.append(f"{'index':>5}  {'pid':>7}  {'version':>7}  {'age':>7}  {'ack':<8}  {'ping':>7}  signals")
    for child in sorted(state.children.values(), key=lambda c: (c.index, c.pid)):
        lines.append(_worker_line(state, child))
    for pending in sorted(state.pending.values(), key=lambda p: p.index):
        age = _age(state.clock - pending.requested_at)
        lines.append(f"{pending.index:>5}  {'-':>7}  {pending.version:>7}  {age:>7}  {'spawning':<8}  {'-':>7}  -")
    return "\n".join(lines) + "\n"


def _steering(state: State) -> str:
    total = sum(w for _, w in state.steered) or 1
    shares = ", ".join(f"version {v} {100 * w // total}%" for v, w in state.steered) or "not steered yet"
    drains = [
        f"version {d.version} ({'queue read empty' if d.empty_at is not None else 'queue not empty yet'}, {_age(state.clock - d.since)})"
        for d in state.drains
    ]
    return shares + (f"; draining {', '.join(drains)}" if drains else "")


def _versions(state: State) -> list[str]:
    children = state.indexed_children
    versions = sorted({c.version for c in children.values()} | {p.version for p in state.pending.values()}, reverse=True)
    found = []
    for version in versions:
        acked = children.count(version, signaled=False, acked=True)
        unacked = children.count(version, signaled=False, acked=False)
        signaled = children.count(version, signaled=True)
        spawning = state.indexed_pending.count(version)
        generation = state.generation(version)
        if version == state.version:
            which = "current"
        elif generation is not None and generation.rolled_back_because is not None:
            which = f"rolled back: {generation.rolled_back_because}"
        elif state.rollout is not None and state.rollout.version == version:
            which = "canary"
        else:
            which = "old"
        text = f"version {version} ({which}): {acked} ACKed, {unacked} un-ACKed, {signaled} signaled"
        found.append(text + (f", {spawning} spawning" if spawning else ""))
    return found


def _upgrade_phase(state: State) -> str:
    parts = []
    if state.reexec is not None:
        parts.append(f"re-exec ({state.reexec.purpose.value}) {state.reexec.phase.value}")
    if state.upgrading is not None:
        old = pool.old_count(state)
        parts.append(
            f"{state.upgrading.value} upgrade to version {state.version}: {pool.ack_count(state)}/{state.config.number}"
            f" new workers ACKed, {old} old still serving"
        )
    rollout = state.rollout
    if rollout is not None and rollout.phase is RolloutPhase.CANARY:
        baking = "" if rollout.bake_until is None else f", baking until {_age(rollout.bake_until - state.clock)} from now"
        parts.append(
            f"canary of version {rollout.version}: {rollout.canaries_acked}/{rollout.options.canary} ACKed{baking}"
        )
    if rollout is not None and rollout.options.timeout is not None:
        parts.append(f"rolled back if not done in {_age(rollout.started_at + rollout.options.timeout - state.clock)}")
    if not parts:
        return "none" if state.respawn else "none (shutting down)"
    return "; ".join(parts)


def _settings(state: State) -> str:
    config = state.config
    ack = f"timer {config.ack_timer:g}s" if config.ack_timer is not None else ("notify" if config.notify_acks else "manual")
    timeout = "none" if config.signal_timeout is None else f"{config.signal_timeout}s"
    return f"ack {ack}, signal timeout {timeout}, graceful {config.graceful_signal}, health rules: {', '.join(health_flags(state)) or 'none'}"


def health_flags(state: State) -> list[str]:
    """The health rules in force, as their flags read."""
    config = state.config
    flags = []
    if config.boot_timeout is not None:
        flags.append(f"--boot-timeout {config.boot_timeout:g}")
    if config.ping_timeout is not None:
        flags.append(f"--ping-timeout {config.ping_timeout:g}")
    if config.max_worker_rss_mb is not None:
        flags.append(f"--max-worker-rss {config.max_worker_rss_mb}")
    return flags


def _listeners(state: State) -> str:
    shown = state.config.display
    if not shown.listeners:
        return "none"
    return ", ".join(
        f"{x.address}{' ' + x.name if x.name else ''}{' (drain)' if x.drain else ''}{' (not accepting)' if n in shown.stopped_listeners else ''}"
        for n, x in enumerate(shown.listeners)
    )


def _worker_line(state: State, child: Child) -> str:
    age = _age(state.clock - child.spinup_at)
    ack = "yes" if child.acked else "no"
    ping = "-" if child.pinged_at is None else _age(state.clock - child.pinged_at)
    signals = ",".join(sorted(child.signaled)) or "-"
    if child.killed:
        signals += " (killed)"
    if child.verdict is not None:
        signals += f" (condemned: {child.verdict.value})"
    return f"{child.index:>5}  {child.pid:>7}  {child.version:>7}  {age:>7}  {ack:<8}  {ping:>7}  {signals}"


def _age(seconds: float) -> str:
    """`42s`, `3m07s`, `2h05m`, `3d04h`."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
