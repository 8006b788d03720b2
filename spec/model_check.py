"""Explicit-state model checker for the pure core (spec/README.md, "Model checker").

It drives the real `einhorn.core.step.step` (there is no second model of the
master): a fake world answers the core's effects and offers, in every state,
every event of a bounded alphabet; a breadth-first search explores every
interleaving of them up to a depth, canonicalising and deduplicating states.
In every reached state it checks the safety invariants of
`spec.invariants` (S*, T*), and from every reached state it runs a
deterministic cooperative world (spawns succeed, workers ACK, signaled workers
exit, timers fire) and requires the goal (L1-L3) within a bounded number of
steps; from every state paced by ACKs it plays ACK rounds and requires the
pool whole within ceil(K / max_unacked) of them (L4). A violation is reported
with the shortest event trace to it, replayed with real pids and times.

    .venv/bin/python -m spec.model_check            # default bounds, all configurations
    .venv/bin/python -m spec.model_check --help
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from einhorn.core import drain as core_drain
from einhorn.core import step as core_step
from einhorn.core.config import MAX_SPINUP_INTERVAL, Config, Pacing
from einhorn.core.effects import (
    AbandonExec,
    CompareImage,
    Effect,
    ExecMaster,
    Exit,
    MeasureQueues,
    ReleaseListeners,
    SendSignal,
    SpawnWorker,
    StartUpgradeCheck,
    Steer,
    StopUpgradeCheck,
)
from einhorn.core.events import (
    ChildExited,
    CommandReceived,
    Event,
    ImageCompared,
    MasterStarted,
    QueuesMeasured,
    ReexecFailed,
    SignalReceived,
    SpawnFailed,
    Tick,
    UpgradeCheckFailed,
    UpgradeCheckPassed,
    WorkerMeasured,
    WorkerNotified,
    WorkerSpawned,
)
from einhorn.core.indexed import Children, PendingSpawns
from einhorn.core.record import fields, replace
from einhorn.core.state import Drain, Generation, LaunchSpec, PendingSpawn, ReexecPhase, State, initial_state
from spec import invariants

CONN = 7
"""The command connection every operator request arrives on."""

IDLE_STEP = 0.5
"""Seconds a "time passes" step moves the clock (when no deadline comes sooner)."""


def release(name: str, graceful_signal: str) -> LaunchSpec:
    """A master image's launch spec, in its own release directory (its `--graceful-signal` is the scenario's)."""
    return LaunchSpec(("./server",), f"/srv/releases/{name}/server", f"/srv/releases/{name}", (), graceful_signal)

"""What every re-exec'd image measures: canonical states rename generations' specs by their role (`canonical`)."""

COMMANDS: dict[str, tuple[str, ...]] = {
    # name -> ("command", command, *args) or ("signal", SIGNAME)
    "inc": ("command", "inc"),
    "dec": ("command", "dec"),
    "set_workers_1": ("command", "set_workers", "1"),
    "set_workers_3": ("command", "set_workers", "3"),
    "upgrade": ("command", "upgrade"),
    "upgrade_fleet": ("command", "upgrade_fleet"),
    "reload": ("command", "reload"),
    "upgrade_canary": ("command", "upgrade", "--canary", "1", "--bake", "2", "--timeout", "6"),
    "upgrade_canary_untimed": ("command", "upgrade", "--canary", "1", "--bake", "2"),
    "upgrade_fleet_canary": ("command", "upgrade_fleet", "--canary", "1", "--bake", "1"),
    "upgrade_timeout": ("command", "upgrade", "--timeout", "20"),
    "abort_upgrade": ("command", "abort_upgrade"),
    "die": ("command", "die"),
    "die_term": ("command", "die", "TERM"),
    "SIGHUP": ("signal", "HUP"),
    "SIGINT": ("signal", "INT"),
    "SIGTERM": ("signal", "TERM"),
    "SIGQUIT": ("signal", "QUIT"),
    "SIGUSR2": ("signal", "USR2"),
}
TAGGED = frozenset({"upgrade_canary", "upgrade_canary_untimed", "upgrade_fleet_canary", "upgrade_timeout", "abort_upgrade"})
"""Requests sent with an id: their requester hears how the upgrade ends (T19)."""
DEFAULT_COMMANDS = ("inc", "dec", "upgrade", "upgrade_fleet", "die", "SIGHUP", "SIGQUIT")


# --- configurations and bounds -------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """One master configuration to explore from a fresh start."""

    number: int
    max_unacked: int
    max_upgrade_additional: int | None
    signal_timeout: int | None
    ack_timer: float | None
    seconds: float = 1.0
    graceful_signal: str = "USR2"
    pacing: Pacing = Pacing.ACK
    notify: bool = False
    """`-m notify` (with `ack_timer` None): a worker's ACK is its READY=1 (`WorkerNotified`)."""
    supervised: bool = False
    """NOTIFY_SOCKET set: the core tells its supervisor (T16)."""
    boot_timeout: float | None = None
    ping_timeout: float | None = None
    """With it, a worker may wedge: ping once, then never again (a failure)."""
    max_worker_rss_mb: int | None = None
    """With it, a worker may bloat: be measured above the limit (a failure)."""
    drain: bool = False
    """`-b ...,drain` listeners (drain.py): a queue read may find connections still waiting."""

    def config(self) -> Config:
        return Config(
            number=self.number,
            ack_timer=self.ack_timer,
            seconds=self.seconds,
            pacing=self.pacing,
            max_unacked=self.max_unacked,
            max_upgrade_additional=self.max_upgrade_additional,
            signal_timeout=self.signal_timeout,
            graceful_signal=self.graceful_signal,
            notify_acks=self.notify,
            supervised=self.supervised,
            boot_timeout=self.boot_timeout,
            ping_timeout=self.ping_timeout,
            max_worker_rss_mb=self.max_worker_rss_mb,
            drain=self.drain,
            einhorn_version="model",
        )

    def __str__(self) -> str:
        ack = "manual" if self.ack_timer is None else f"timer {self.ack_timer:g}s"
        extra = "-" if self.max_upgrade_additional is None else str(self.max_upgrade_additional)
        timeout = "-" if self.signal_timeout is None else f"{self.signal_timeout}s"
        return (
            f"number={self.number} max_unacked={self.max_unacked} max_upgrade_additional={extra}"
            f" signal_timeout={timeout} ack={ack} seconds={self.seconds:g} pacing={self.pacing.value}"
            + ("" if self.graceful_signal == "USR2" else f" graceful_signal={self.graceful_signal}")
            + (" notify" if self.notify else "")
            + (" supervised" if self.supervised else "")
            + ("" if self.boot_timeout is None else f" boot_timeout={self.boot_timeout:g}s")
            + ("" if self.ping_timeout is None else f" ping_timeout={self.ping_timeout:g}s")
            + ("" if self.max_worker_rss_mb is None else f" max_worker_rss={self.max_worker_rss_mb}MiB")
            + (" drain" if self.drain else "")
        )


@dataclass(frozen=True, slots=True)
class Bounds:
    depth: int = 9
    failures: int = 2
    commands: int = 2
    liveness_steps: int = 100
    idle: bool = False
    command_names: tuple[str, ...] = DEFAULT_COMMANDS
    max_states: int = 2_000_000


DEFAULTS = Bounds()

UPGRADE_ALPHABET = ("upgrade", "upgrade_fleet")

ROLLOUT_CHAINS: tuple[tuple[Scenario, Bounds], ...] = (
    # Canaries (issue 12; spec/README.md §4, "Generations, canaries and rollbacks"): a canary that ACKs and bakes, or dies before its ACK or
    # during the bake, or never ACKs until the timeout; an old worker that dies meanwhile.
    (Scenario(2, 1, None, 2, None), Bounds(depth=12, failures=1, commands=1, command_names=("upgrade_canary",))),
    # abort_upgrade at any point of a canary upgrade, and a new upgrade during the canary or its bake.
    (Scenario(2, 1, None, None, None), Bounds(depth=11, failures=0, commands=2, command_names=("upgrade_canary", "abort_upgrade", "upgrade"))),
    # A reload (a re-exec of the same version) while a canary's spawn is in flight: the new image fails the spawn,
    # and the canary (no --timeout to end it otherwise) with it.
    (Scenario(2, 1, None, None, None), Bounds(depth=10, failures=0, commands=2, command_names=("upgrade_canary_untimed", "reload"))),
    # A fleet canary within max_upgrade_additional 1, timer ACKs, aborted or not.
    (Scenario(2, 2, 1, None, 1.0), Bounds(depth=11, failures=1, commands=2, command_names=("upgrade_fleet_canary", "abort_upgrade"))),
    # Rollbacks within max_upgrade_additional 0: held at capacity where the floor keeps the new worker.
    (Scenario(1, 1, 0, None, 1.0), Bounds(depth=10, failures=1, commands=2, command_names=("upgrade_timeout", "abort_upgrade"))),
    # A new generation that crash-loops (three deaths before ACK) is rolled back.
    (Scenario(1, 1, None, None, 1.0), Bounds(depth=10, failures=3, commands=1, command_names=("upgrade_timeout",))),
)
"""Runs added to the configuration matrix by default (`--chains`), after the upgrade chains."""

UPGRADE_CHAINS: tuple[tuple[Scenario, Bounds], ...] = (
    # Upgrades on top of upgrades whose new workers stay un-ACKed or die before their ACK
    # (issue 10; T12): deeper than the matrix, with only upgrades to choose from.
    # The report (under the interval, as it was made): two ACKed workers, two new ones that never ACK, a second upgrade.
    (Scenario(2, 2, None, None, None, pacing=Pacing.INTERVAL), Bounds(depth=12, failures=0, commands=2, command_names=("upgrade",))),
    # Three upgrades, smooth and fleet in any order; a new worker may die before its ACK.
    (Scenario(1, 1, None, None, None), Bounds(depth=13, failures=1, commands=3, command_names=UPGRADE_ALPHABET)),
    # The same within max_upgrade_additional 1, timer ACKs.
    (Scenario(2, 2, 1, None, 1.0), Bounds(depth=10, failures=1, commands=3, command_names=UPGRADE_ALPHABET)),
    # Two upgrades within max_upgrade_additional 1, manual ACKs.
    (Scenario(2, 1, 1, None, None), Bounds(depth=12, failures=0, commands=2, command_names=UPGRADE_ALPHABET)),
    # max_upgrade_additional 0: upgrades the availability floor holds, on top of each other.
    (Scenario(2, 1, 0, None, 1.0), Bounds(depth=10, failures=1, commands=3, command_names=UPGRADE_ALPHABET)),
)
"""Runs added to the configuration matrix by default (`--chains`)."""

HEALTH_RUNS: tuple[tuple[Scenario, Bounds], ...] = (
    # A wedged worker (pings once, then never again) among two ACKed ones: replaced successor first.
    (Scenario(2, 1, None, None, None, ping_timeout=2.0), Bounds(depth=10, failures=2, commands=1, command_names=("upgrade", "dec"))),
    # A worker that never ACKs: stopped at its boot timeout (and SIGKILLed), a death before ACK.
    (Scenario(1, 1, None, 2, None, boot_timeout=3.0), Bounds(depth=9, failures=1, commands=1, command_names=("upgrade", "inc"))),
    # An RSS breach during an upgrade, old worker or new.
    (Scenario(2, 2, None, None, None, max_worker_rss_mb=64), Bounds(depth=10, failures=2, commands=2, command_names=("upgrade",))),
    # Two rules at once: wedged and bloated workers, timer ACKs.
    (Scenario(2, 2, None, None, 1.0, ping_timeout=2.0, max_worker_rss_mb=64), Bounds(depth=9, failures=2, commands=1, command_names=("upgrade",))),
    # All three rules within max_upgrade_additional 0: the cap may hold a successor back, the floor holds.
    (Scenario(2, 1, 0, None, None, boot_timeout=3.0, ping_timeout=2.0, max_worker_rss_mb=64), Bounds(depth=9, failures=2, commands=1, command_names=("upgrade",))),
)
"""Runs with the health rules (`--health`), added by default."""

DRAIN_RUNS: tuple[tuple[Scenario, Bounds], ...] = (
    # Smooth and fleet upgrades and an abort on drain listeners; a queue read finds connections still waiting
    # (not a failure: the world's choice), a worker crashes meanwhile.
    (Scenario(2, 1, None, None, None, drain=True), Bounds(depth=11, failures=1, commands=2, command_names=("upgrade", "upgrade_fleet", "abort_upgrade"))),
    # A canary rolled back while the old generation is drained; timer ACKs, a signal timeout.
    (Scenario(2, 2, None, 2, 1.0, drain=True), Bounds(depth=10, failures=1, commands=2, command_names=("upgrade_canary", "dec", "upgrade"))),
    # max_upgrade_additional 0: the old workers that make room wait for their drain too.
    (Scenario(2, 1, 0, None, 1.0, drain=True), Bounds(depth=10, failures=1, commands=2, command_names=UPGRADE_ALPHABET)),
    # A new generation that crashes (two deaths) while the old one drains, or is rolled back; boot timeouts.
    (Scenario(2, 1, None, 2, None, boot_timeout=3.0, drain=True), Bounds(depth=10, failures=2, commands=1, command_names=("upgrade_timeout",))),
)
"""Runs with drain listeners, added by default with the health runs (`--health`)."""

# --- the world: actions, canonical states ---------------------------------

Action = tuple[object, ...]
"""What happens next, independent of pid numbering: ("spawned", rank), ("exit", rank), ...

Ranks index the sorted pids (or spawn ids) of the state the action applies to,
so an action means the same in a canonical state and in the real state it
stands for."""


@dataclass(frozen=True, slots=True)
class Node:
    state: State
    failures: int = 0
    commands: int = 0


def _pid_at(state: State, rank: object) -> int:
    assert isinstance(rank, int)
    return sorted(state.children)[rank]


def _spawn_at(state: State, rank: object) -> int:
    assert isinstance(rank, int)
    return sorted(state.pending)[rank]


def make_event(state: State, action: Action, new_pid: int) -> Event:
    """The event `action` stands for in `state` (a new worker gets `new_pid`)."""
    now = state.clock
    match action:
        case ("spawned", rank):
            return WorkerSpawned(_spawn_at(state, rank), new_pid, now)
        case ("spawn_failed", rank):
            return SpawnFailed(_spawn_at(state, rank), "EAGAIN (model)", now)
        case ("exit", rank):
            child = state.children[_pid_at(state, rank)]
            if child.killed:
                return ChildExited(child.pid, None, 9, now)
            return ChildExited(child.pid, 0 if child.signaled else 1, None, now)
        case ("wedge", rank):
            return CommandReceived(CONN, {"command": "worker:ping", "pid": _pid_at(state, rank)}, now)
        case ("bloat", rank):
            limit = state.config.max_worker_rss_mb
            assert limit is not None
            return WorkerMeasured(_pid_at(state, rank), (limit + 1) * 1024 * 1024, now)
        case ("measured", rank, queued):
            assert isinstance(rank, int) and isinstance(queued, int)
            d = _measured_drains(state)[rank]
            return QueuesMeasured(d.version, d.ticket, queued, now)
        case ("stale_reading", rank):
            assert isinstance(rank, int)
            d = _measured_drains(state)[rank]
            return QueuesMeasured(d.version, d.ticket + 1, 0, now)  # an answer to some other order: to be ignored
        case ("ack", rank):
            if state.config.notify_acks:
                return WorkerNotified(_pid_at(state, rank), {"READY": "1"}, now)
            return CommandReceived(CONN, {"command": "worker:ack", "pid": _pid_at(state, rank)}, now)
        case ("tick",):
            deadline = core_step.next_deadline(state)
            assert deadline is not None
            return Tick(deadline)
        case ("idle",):
            return Tick(now + IDLE_STEP)
        case ("image_compared", unchanged):
            assert state.reexec is not None
            return ImageCompared(state.reexec.check_id, bool(unchanged), "the model's answer", now)
        case ("check_passed",):
            assert state.reexec is not None
            return UpgradeCheckPassed(state.reexec.check_id, now)
        case ("check_failed",):
            assert state.reexec is not None
            return UpgradeCheckFailed(state.reexec.check_id, "exited with status 1 (model)", now)
        case ("reexec_ok",):
            return MasterStarted(now, restored=True, launch=release("new", state.config.graceful_signal))
        case ("reexec_failed",):
            return ReexecFailed("could not exec (model)", now)
        case ("command", name):
            assert isinstance(name, str)
            spec = COMMANDS[name]
            if spec[0] == "signal":
                return SignalReceived(spec[1], now)
            request: dict[str, object] = {"command": spec[1]}
            if len(spec) > 2:
                request["args"] = list(spec[2:])
            if name in TAGGED:
                request["id"] = name
            return CommandReceived(CONN, request, now)
    raise ValueError(f"unknown action {action!r}")


def _measured_drains(state: State) -> list[Drain]:
    """Drains with a queue reading ordered and not yet answered empty, by version."""
    return [d for d in state.drains if d.measured_at is not None and d.empty_at is None]


def enabled(node: Node, bounds: Bounds) -> Iterator[tuple[Action, int, int]]:
    """Every action the world may take in `node`: (action, failures used, commands used)."""
    state = node.state
    if state.exit_code is not None:
        return  # the master is gone
    can_fail = node.failures < bounds.failures
    # A check that hangs is the world doing nothing: time passes to its deadline (a "tick").
    if state.reexec is not None and state.reexec.phase is ReexecPhase.COMPARING:
        yield ("image_compared", 0), 0, 0  # einhorn changed on disk: the check runs
        yield ("image_compared", 1), 0, 0  # the very same image: the exec is ordered at once
    if state.reexec is not None and state.reexec.phase is ReexecPhase.CHECKING:
        yield ("check_passed",), 0, 0
        if can_fail:
            yield ("check_failed",), 1, 0
    if state.reexec is not None and state.reexec.phase is ReexecPhase.EXECUTING:
        yield ("reexec_ok",), 0, 0
        if can_fail:
            yield ("reexec_failed",), 1, 0
    for rank, _ in enumerate(_measured_drains(state)):
        yield ("measured", rank, 0), 0, 0
        yield ("measured", rank, 1), 0, 0  # connections still wait: the core reads again
        yield ("stale_reading", rank), 0, 0  # "empty", for an order that is not the last one
    if state.pending:  # the shell answers spawns in the order it was asked for them
        yield ("spawned", 0), 0, 0
        if can_fail:
            yield ("spawn_failed", 0), 1, 0
    for rank, pid in enumerate(sorted(state.children)):
        child = state.children[pid]
        if child.signaled or child.killed:
            yield ("exit", rank), 0, 0  # a compliant worker stops when told to
        elif can_fail:
            yield ("exit", rank), 1, 0  # a crash, before or after its ACK
        if state.config.ack_timer is None and not child.acked:
            yield ("ack", rank), 0, 0
        if can_fail and not child.signaled and child.verdict is None:
            if state.config.ping_timeout is not None and child.pinged_at is None:
                yield ("wedge", rank), 1, 0  # its first ping is its last
            if state.config.max_worker_rss_mb is not None and child.rss_bytes is None:
                yield ("bloat", rank), 1, 0
    deadline = core_step.next_deadline(state)
    if deadline is not None:
        yield ("tick",), 0, 0
    if bounds.idle and (deadline is None or deadline > state.clock + IDLE_STEP):
        yield ("idle",), 0, 0
    if node.commands < bounds.commands:
        for name in bounds.command_names:
            yield ("command", name), 0, 1


def cooperative_action(state: State) -> Action | None:
    """What a world with no failures does next (None: nothing, not even time)."""
    if state.reexec is not None:
        match state.reexec.phase:
            case ReexecPhase.COMPARING:
                return ("image_compared", 0)
            case ReexecPhase.CHECKING:
                return ("check_passed",)
            case ReexecPhase.EXECUTING:
                return ("reexec_ok",)
    if _measured_drains(state):
        return ("measured", 0, 0)
    if state.pending:
        return ("spawned", 0)
    pids = sorted(state.children)
    for rank, pid in enumerate(pids):
        if state.children[pid].signaled or state.children[pid].killed:
            return ("exit", rank)
    if state.config.ack_timer is None:
        for rank, pid in enumerate(pids):
            child = state.children[pid]
            if not child.acked:
                return ("ack", rank)
    if core_step.next_deadline(state) is not None:
        return ("tick",)
    return None


def _horizon(state: State) -> float:
    """Past this many seconds ago, every timestamp compares the same against every deadline."""
    config, rollout = state.config, state.rollout
    spans = [MAX_SPINUP_INTERVAL, config.seconds, config.ack_timer or 0.0, float(config.signal_timeout or 0)]
    spans += [config.boot_timeout or 0.0, config.ping_timeout or 0.0]
    if config.drain:
        spans.append(core_drain.TIMEOUT)
    if rollout is not None:
        spans += [rollout.options.bake, rollout.options.timeout or 0.0]
    return max(spans) + 1.0


def _streak_cap(config: Config) -> int:
    """The smallest death streak whose back-off is strictly past the cap: longer ones behave alike.
    (At least 1: a streak of 0 and one of 1 differ under ACK pacing whatever the interval.)"""
    d = 1
    while config.seconds * 1.5**d <= MAX_SPINUP_INTERVAL:
        d += 1
    return d


def canonical(state: State) -> State:
    """The representative of `state`'s class: pids 1..n and spawn ids 0..m-1 by
    order, the clock at 0, timestamps relative and clamped at the horizon, the
    versions renamed by their role (current 2, a canary's 3, a rollout's previous 1, a
    rolled-back one -1, any other 0, in that order but for the rolled-back), each generation's
    spec by its version, the death streak clamped where the back-off saturates (never to 0).
    The core's behaviour is the same from both, up to that renaming (it only compares pids,
    spawn ids and versions, takes a new version above all, and compares times against
    deadlines no longer than the horizon)."""
    base = state.clock
    floor = -_horizon(state)

    def t(value: float) -> float:
        return max(value - base, floor)

    def opt(value: float | None) -> float | None:
        return None if value is None else t(value)

    rollout = state.rollout
    rolled_back = invariants.rolled_back(state)
    new, previous = (None, None) if rollout is None else (rollout.version, rollout.previous)

    def v(version: int) -> int:
        if version == state.version:
            return 2
        if version == new:
            return 3
        if version == previous:
            return 1
        return -1 if version in rolled_back else 0

    generations = {
        v(g.version): Generation(v(g.version), release(f"v{v(g.version)}", g.launch.graceful_signal), g.rolled_back_because and "rolled back")
        for g in state.generations
    }
    if rollout is not None:
        rollout = replace(
            rollout,
            version=v(rollout.version),
            previous=v(rollout.previous),
            started_at=t(rollout.started_at),
            bake_until=opt(rollout.bake_until),
        )

    pids = {pid: i + 1 for i, pid in enumerate(sorted(state.children))}
    children = {
        pids[c.pid]: replace(
            c,
            pid=pids[c.pid],
            version=v(c.version),
            spinup_at=t(c.spinup_at),
            last_signaled_at=opt(c.last_signaled_at),
            pinged_at=opt(c.pinged_at),
            measured_at=None if c.measured_at is None else 0.0,  # only the value is read
            verdict_at=None if c.verdict_at is None else 0.0,  # shown, never read
        )
        for c in (state.children[p] for p in sorted(state.children))
    }
    reexec = state.reexec
    if reexec is not None:
        reexec = replace(reexec, check_id=0, deadline=t(reexec.deadline))
    drains = tuple(
        sorted(
            (
                replace(d, version=v(d.version), since=t(d.since), ticket=0, measured_at=opt(d.measured_at), empty_at=opt(d.empty_at))
                for d in state.drains
            ),
            key=lambda d: d.version,
        )
    )
    ids = {sid: i for i, sid in enumerate(sorted(state.pending))}
    pending = {
        ids[p.spawn_id]: PendingSpawn(ids[p.spawn_id], p.index, v(p.version), 0.0)
        for p in (state.pending[s] for s in sorted(state.pending))
    }
    return replace(
        state,
        version=2,
        generations=tuple(generations[cv] for cv in sorted(generations)),
        rollout=rollout,
        children=children,
        pending=pending,
        next_spawn_id=len(pending),
        reexec=reexec,
        next_check_id=0 if reexec is None else 1,
        deaths_before_ack=min(state.deaths_before_ack, _streak_cap(state.config)),
        last_spinup_at=opt(state.last_spinup_at),
        clock=0.0,
        watchdog_at=opt(state.watchdog_at),
        drains=drains,
        steered=tuple(sorted((v(version), weight) for version, weight in state.steered)),
        exposed=frozenset(v(version) for version in state.exposed),
        next_ticket=0,
    )


def _hashable(value: object) -> object:
    """Mappings (children, pending spawns) as sorted item tuples; everything else in State is hashable."""
    if type(value) in _MAPPINGS:  # (not isinstance: an ABC's check, for every field of every state)
        assert isinstance(value, Mapping)
        return tuple(sorted(value.items()))
    return value


_MAPPINGS = (Children, PendingSpawns, dict)


_STATE_FIELDS = tuple(f.name for f in fields(State))


def key_of(s: State) -> tuple[object, ...]:
    """Hashable identity of a canonical state: every `State` field, so that a new field
    can never silently merge distinct states."""
    return tuple(_hashable(getattr(s, name)) for name in _STATE_FIELDS)


# --- exploration ----------------------------------------------------------


@dataclass(slots=True)
class Violation:
    scenario: Scenario
    problems: list[str]
    actions: list[Action]
    """The path from the start: BFS actions, then (for liveness) the cooperative ones."""
    cooperative_from: int | None = None
    """Index in `actions` where the cooperative (failure-free) continuation starts."""


@dataclass(slots=True)
class Result:
    scenario: Scenario
    states: int = 0
    nodes: int = 0
    transitions: int = 0
    depth: int = 0
    liveness_states: int = 0
    replacement_states: int = 0
    """States L4 (replacement within ACK rounds) was checked from."""
    seconds: float = 0.0
    cpu: float = 0.0
    truncated: bool = False
    label: str = ""
    """What the run's bounds were, when they are not the command line's (an upgrade chain)."""
    violations: list[Violation] = field(default_factory=list)


Key = tuple[object, ...]


def _start(scenario: Scenario) -> tuple[State, list[Effect]]:
    return core_step.step(initial_state(scenario.config()), MasterStarted(0.0, launch=release("first", scenario.graceful_signal)))


def _apply(state: State, action: Action) -> tuple[Event, State, list[Effect], list[str]]:
    new_pid = max(state.children, default=0) + 1
    event = make_event(state, action, new_pid)
    try:
        after, effects = core_step.step(state, event)
    except Exception as error:  # a bug in the core: report it like a violation
        return event, state, [], [f"step raised {type(error).__name__}: {error}"]
    problems = invariants.check_step(state, event, after, effects) + invariants.check_state(after)
    return event, after, effects, problems


def explore(scenario: Scenario, bounds: Bounds, stop_at_first: bool = True) -> Result:
    """Breadth-first search over every interleaving, then liveness from every state.

    A node is a canonical state plus the failures and commands used to reach
    it. A node is skipped when the same state was reached before (so at no
    greater depth) with no more failures and no more commands used: that
    earlier visit has every future this one has. Step results are memoised per
    (state, action), as they do not depend on those counters.
    """
    started, cpu = time.monotonic(), time.process_time()
    result = Result(scenario)
    state, _ = _start(scenario)
    problems = invariants.check_state(state)
    if problems:
        result.violations.append(Violation(scenario, problems, []))
        return result
    root = Node(canonical(state))
    root_key = key_of(root.state)
    NodeId = tuple[Key, int, int]
    root_id: NodeId = (root_key, 0, 0)
    parents: dict[NodeId, tuple[NodeId | None, Action | None]] = {root_id: (None, None)}
    states: dict[Key, State] = {root_key: root.state}
    first_id: dict[Key, NodeId] = {root_key: root_id}
    fronts: dict[Key, list[tuple[int, int]]] = {root_key: [(0, 0)]}
    memo: dict[tuple[Key, Action], tuple[Key, list[str]]] = {}
    frontier = [root_id]
    seen_problems: set[str] = set()

    def path(node_id: NodeId) -> list[Action]:
        actions: list[Action] = []
        current: NodeId | None = node_id
        while current is not None:
            parent, action = parents[current]
            if action is not None:
                actions.append(action)
            current = parent
        return actions[::-1]

    for depth in range(1, bounds.depth + 1):
        next_frontier: list[NodeId] = []
        for node_id in frontier:
            key, failures, commands = node_id
            node = Node(states[key], failures, commands)
            for action, failed, commanded in enabled(node, bounds):
                memo_key = (key, action)
                known = memo.get(memo_key)
                if known is None:
                    _, after, _, problems = _apply(node.state, action)
                    result.transitions += 1
                    after_state = canonical(after)
                    after_key = key_of(after_state)
                    memo[memo_key] = (after_key, problems)
                    if not problems and after_key not in states:
                        states[after_key] = after_state
                else:
                    after_key, problems = known
                if problems:
                    fresh = [p for p in problems if p.split(":")[0] not in seen_problems]
                    if fresh:
                        seen_problems.update(p.split(":")[0] for p in fresh)
                        result.violations.append(Violation(scenario, problems, path(node_id) + [action]))
                        if stop_at_first:
                            result.states = len(states)
                            result.depth = depth
                            result.seconds, result.cpu = time.monotonic() - started, time.process_time() - cpu
                            return result
                    continue
                f, c = failures + failed, commands + commanded
                front = fronts.setdefault(after_key, [])
                if any(f0 <= f and c0 <= c for f0, c0 in front):
                    continue
                front[:] = [(f0, c0) for f0, c0 in front if not (f <= f0 and c <= c0)] + [(f, c)]
                child_id: NodeId = (after_key, f, c)
                parents[child_id] = (node_id, action)
                first_id.setdefault(after_key, child_id)
                next_frontier.append(child_id)
        if not next_frontier:
            break
        result.depth = depth
        frontier = next_frontier
        if len(states) > bounds.max_states:
            result.truncated = True
            break

    result.states = len(states)
    result.nodes = len(parents)
    reached = {k: states[k] for k in reversed(first_id)}  # deepest first: shallower walks then end sooner
    _check_liveness(result, bounds, reached, lambda k: path(first_id[k]), stop_at_first, memo, states)
    if not (stop_at_first and result.violations):
        _check_replacement(result, reached, lambda k: path(first_id[k]), stop_at_first)
    result.seconds, result.cpu = time.monotonic() - started, time.process_time() - cpu
    return result


def _check_liveness(
    result: Result,
    bounds: Bounds,
    states: dict[Key, State],
    path: Callable[[Key], list[Action]],
    stop_at_first: bool,
    memo: dict[tuple[Key, Action], tuple[Key, list[str]]] | None = None,
    known: dict[Key, State] | None = None,
) -> None:
    """L1-L3: from every reached state, the cooperative world reaches the goal within K steps.

    `memo` and `known` are the search's step results and states, reused so that
    only walks beyond the search's horizon call the core again.
    """
    memo = {} if memo is None else memo
    known = {} if known is None else known
    distance: dict[Key, int] = {}  # canonical state -> cooperative steps to the goal
    limit = bounds.liveness_steps
    for key, state in states.items():
        walk: list[Key] = []
        actions: list[Action] = []
        failure: list[str] | None = None
        reached: int | None = None
        while True:
            skey = key_of(state)
            if skey in distance:
                reached = distance[skey]
                break
            if invariants.converged(state):
                reached = 0
                break
            if len(walk) >= limit:
                failure = [f"no convergence within {limit} cooperative steps: {invariants.goal_problem(state)}"]
                break
            action = cooperative_action(state)
            if action is None:
                failure = [f"stuck, nothing left to happen (no deadline): {invariants.goal_problem(state)}"]
                break
            walk.append(skey)
            actions.append(action)
            hit = memo.get((skey, action))
            if hit is not None and not hit[1] and hit[0] in known:
                state = known[hit[0]]
                continue
            _, after, _, problems = _apply(state, action)
            result.transitions += 1
            if problems:
                failure = problems
                break
            state = canonical(after)
        if reached is not None and reached + len(walk) > limit:
            failure = [f"convergence takes {reached + len(walk)} > {limit} cooperative steps"]
        if failure is not None:
            prefix = path(key)
            result.violations.append(Violation(result.scenario, failure, prefix + actions, cooperative_from=len(prefix)))
            if stop_at_first:
                break
            continue
        assert reached is not None
        for i, skey in enumerate(walk):
            distance[skey] = reached + len(walk) - i
    result.liveness_states = len(distance)


def replacement_applies(state: State) -> bool:
    """Whether L4 speaks of `state`: respawning, paced by ACKs with no death streak, no
    re-exec or upgrade (nor canary), no signaled child (so no old worker either: S5), no health
    verdict given or coming (a condemned or a wedged worker is replaced through an exit,
    which ACK rounds do not play: L1 speaks of those), and no drain (its workers wait for it, then exit)."""
    pinging = state.config.ping_timeout is not None
    return (
        state.respawn
        and state.exit_code is None
        and state.reexec is None
        and state.upgrading is None
        and state.rollout is None
        and not _rolled_back_left(state)
        and not state.drains
        and invariants.paced_by_acks(state)
        and not any(c.signaled or c.verdict is not None or (pinging and c.pinged_at is not None) for c in state.children.values())
    )


def _rolled_back_left(state: State) -> bool:
    """Workers or spawns of a rolled-back generation are left: they go once they exit, which no ACK round plays."""
    rolled_back = invariants.rolled_back(state)
    return any(c.version in rolled_back for c in state.children.values()) or any(
        p.version in rolled_back for p in state.pending.values()
    )


@dataclass(slots=True)
class Rounds:
    """What `ack_rounds` played: how many rounds, the actions, the state reached, what went wrong."""

    rounds: int
    actions: list[Action]
    state: State
    problems: list[str]


def ack_rounds(state: State, limit: int) -> Rounds:
    """L4: play ACK rounds from `state` until the pool is whole, at most `limit` rounds.

    A round: every spawn ordered is answered (started), then every un-ACKed
    worker ACKs: one by one in manual mode, in timer mode by time passing to
    the timer ACK of the last of them. No other time passes, but for a drain's: with drain listeners,
    old workers wait for their generation's drain, played to its end. The problems are
    a violated invariant, the goal not reached in `limit` rounds, or nothing
    left to do before the goal.
    """
    played = Rounds(0, [], state, [])

    def act(action: Action) -> bool:
        played.actions.append(action)
        _, played.state, _, played.problems = _apply(played.state, action)
        return not played.problems

    while not invariants.converged(played.state):
        while played.state.drains:  # stopping the workers a drain holds is no ACK round: the drain is played out
            if not act(("measured", 0, 0) if _measured_drains(played.state) else ("tick",)):
                return played
        if invariants.converged(played.state):
            break
        if played.rounds == limit:
            played.problems = [f"L4: {invariants.goal_problem(played.state)} after {played.rounds} ACK rounds (at most {limit} allowed)"]
            return played
        for _ in range(len(played.state.pending)):
            if not act(("spawned", 0)):
                return played
        unacked = sorted(c.pid for c in played.state.children.values() if not c.acked)
        if not unacked:
            played.problems = [f"L4: {invariants.goal_problem(played.state)}, and no worker to ACK, no spawn to answer"]
            return played
        if played.state.config.ack_timer is None:
            for pid in unacked:
                if not act(("ack", sorted(played.state.children).index(pid))):
                    return played
        else:
            last = max(played.state.children[pid].spinup_at for pid in unacked) + played.state.config.ack_timer
            while played.state.clock < last:  # the deadlines on the way are timer ACKs (no signaled child, no re-exec)
                if not act(("tick",)):
                    return played
        played.rounds += 1
    return played


def rounds_allowed(state: State) -> int:
    """L4's bound: ceil(K / max_unacked) for the K workers of `number` not serving yet."""
    waiting = state.config.number - invariants.census(state).ack_count
    return -(-waiting // state.config.max_unacked)


def _check_replacement(result: Result, states: dict[Key, State], path: Callable[[Key], list[Action]], stop_at_first: bool) -> None:
    """L4 from every reached state it speaks of (`replacement_applies`)."""
    for key, state in states.items():
        if not replacement_applies(state):
            continue
        result.replacement_states += 1
        played = ack_rounds(state, rounds_allowed(state))
        if played.problems:
            prefix = path(key)
            violation = Violation(result.scenario, played.problems, prefix + played.actions, cooperative_from=len(prefix))
            result.violations.append(violation)
            if stop_at_first:
                return


# --- traces ---------------------------------------------------------------


def describe_event(event: Event) -> str:
    match event:
        case WorkerSpawned(spawn_id=sid, pid=pid):
            return f"spawn #{sid} started as pid {pid}"
        case SpawnFailed(spawn_id=sid):
            return f"spawn #{sid} FAILED"
        case ChildExited(pid=pid, exit_code=code, signal=sig):
            return f"pid {pid} exited ({f'signal {sig}' if sig is not None else f'status {code}'})"
        case CommandReceived(request=request):
            if request.get("command") in ("worker:ack", "worker:ping"):
                return f"pid {request.get('pid')} sends {request.get('command')}"
            raw_args = request.get("args")
            args = " ".join(str(a) for a in raw_args) if isinstance(raw_args, list) else ""
            return f"operator runs `{request.get('command')}{' ' + args if args else ''}`"
        case SignalReceived(signal=sig):
            return f"master receives SIG{sig}"
        case Tick(now=now):
            return f"time passes to t={now:g}"
        case MasterStarted(restored=restored):
            return "the new master image restores the state" if restored else "master starts"
        case ImageCompared(unchanged=unchanged):
            return "the shell finds the new image " + ("the running one" if unchanged else "changed")
        case UpgradeCheckPassed():
            return "the upgrade check passes"
        case UpgradeCheckFailed():
            return "the upgrade check FAILS"
        case ReexecFailed():
            return "the exec FAILS"
        case WorkerMeasured(pid=pid, rss_bytes=rss):
            return f"pid {pid} measured at {rss // (1024 * 1024)} MiB"
        case QueuesMeasured(version=version, queued=queued):
            return f"the shell reads the queues of version {version}: {queued} waiting"
    return repr(event)


def describe_state(state: State) -> str:
    parts = []
    for pid in sorted(state.children):
        c = state.children[pid]
        flags = "acked" if c.acked else "unacked"
        if c.signaled:
            flags += " got " + "+".join(sorted(c.signaled))
        if c.killed:
            flags += " KILLed"
        if c.verdict is not None:
            flags += f" CONDEMNED({c.verdict.value})"
        parts.append(f"{pid}(v{c.version} #{c.index} {flags})")
    for sid in sorted(state.pending):
        p = state.pending[sid]
        parts.append(f"spawn#{sid}(v{p.version} #{p.index})")
    extra = []
    if state.upgrading is not None:
        extra.append(f"{state.upgrading.value} upgrade")
    if state.reexec is not None:
        extra.append(f"re-exec ({state.reexec.purpose.value}) {state.reexec.phase.value}")
    if not state.respawn:
        extra.append("respawn off")
    if state.deaths_before_ack:
        extra.append(f"deaths={state.deaths_before_ack}")
    rollout = state.rollout
    if rollout is not None:
        bake = "" if rollout.bake_until is None else f", baking until t={rollout.bake_until:g}"
        extra.append(f"rollout v{rollout.previous}->v{rollout.version} {rollout.phase.value}{bake}, {rollout.new_deaths} new deaths")
    rolled = sorted(invariants.rolled_back(state))
    if rolled:
        extra.append(f"rolled back: {', '.join(f'v{v}' for v in rolled)}")
    if state.config.drain:
        weights = ", ".join(f"v{v}:{w}" for v, w in state.steered)
        drains = ", ".join(f"v{d.version}{'' if d.empty_at is None else ' empty'}" for d in state.drains)
        extra.append(f"steered {weights or '-'}" + (f"; draining {drains}" if drains else ""))
    return f"n={state.config.number} v{state.version} [{', '.join(parts) or 'no workers'}]" + (
        f" ({'; '.join(extra)})" if extra else ""
    )


def describe_effects(effects: Sequence[Effect]) -> str:
    shown = []
    for effect in effects:
        match effect:
            case SpawnWorker(spawn_id=sid, index=index):
                shown.append(f"spawn #{sid} (index {index})")
            case SendSignal(pid=pid, signal=sig):
                shown.append(f"{sig}->{pid}")
            case CompareImage():
                shown.append("compare the image")
            case StartUpgradeCheck():
                shown.append("start upgrade check")
            case StopUpgradeCheck():
                shown.append("stop upgrade check")
            case ExecMaster():
                shown.append("EXEC")
            case AbandonExec():
                shown.append("abandon exec")
            case Exit(code=code):
                shown.append(f"EXIT {code}")
            case Steer(weights=weights):
                shown.append("steer " + ", ".join(f"v{v}:{w}" for v, w in weights))
            case MeasureQueues(version=version):
                shown.append(f"read v{version} queues")
            case ReleaseListeners(version=version):
                shown.append(f"release v{version} sockets")
    return ", ".join(shown)


def render_trace(violation: Violation) -> str:
    """Replay the trace on real states (real pids, real times), one numbered line per event."""
    lines = [f"configuration: {violation.scenario}"]
    state, effects = _start(violation.scenario)
    lines.append(f"  0. master starts                                   -> {describe_effects(effects)}")
    lines.append(f"     {describe_state(state)}")
    next_pid = 100
    for number, action in enumerate(violation.actions, 1):
        if violation.cooperative_from is not None and number - 1 == violation.cooperative_from:
            lines.append("  --- from here on, no failures: the cooperative world ---")
        event = make_event(state, action, next_pid)
        if isinstance(event, WorkerSpawned):
            next_pid += 1
        try:
            after, effects = core_step.step(state, event)
        except Exception as error:
            lines.append(f"{number:3}. t={state.clock:g} {describe_event(event)}: step raised {error!r}")
            break
        shown = describe_effects(effects)
        lines.append(f"{number:3}. t={after.clock:g} {describe_event(event):45} {'-> ' + shown if shown else ''}")
        lines.append(f"     {describe_state(after)}")
        state = after
    if violation.cooperative_from is not None and violation.cooperative_from == len(violation.actions):
        lines.append("  --- from here on, no failures: the cooperative world has nothing left to do ---")
    lines.append("violated:")
    lines += [f"  {p}" for p in violation.problems]
    return "\n".join(lines)


# --- command line ---------------------------------------------------------


def all_pairs(axes: Sequence[Sequence[object]]) -> list[tuple[object, ...]]:
    """A small set of combinations in which every pair of values of any two axes occurs.

    Greedy: repeatedly take the combination (in product order) that covers the
    most pairs not covered yet. Deterministic.
    """
    uncovered = {
        (i, a, j, b) for i, j in itertools.combinations(range(len(axes)), 2) for a in axes[i] for b in axes[j]
    }

    def pairs(combo: tuple[object, ...]) -> set[tuple[int, object, int, object]]:
        return {(i, combo[i], j, combo[j]) for i, j in itertools.combinations(range(len(combo)), 2)}

    chosen: list[tuple[object, ...]] = []
    candidates = list(itertools.product(*axes))
    while uncovered:
        best = max(candidates, key=lambda combo: len(pairs(combo) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    acks: list[float | None] = [None if a == "manual" else float(a) for a in args.ack]
    extras: list[int | None] = [None if x == "none" else int(x) for x in args.max_upgrade_additional]
    timeouts: list[int | None] = [None if x == "none" else int(x) for x in args.signal_timeout]
    pacings = [Pacing(p) for p in args.pacing]
    axes: list[Sequence[object]] = [args.number, args.max_unacked, extras, timeouts, acks, pacings]
    combos = list(itertools.product(*axes)) if args.matrix == "full" else all_pairs(axes)
    found = []
    for number, unacked, extra, timeout, ack, pacing in combos:
        assert isinstance(number, int) and isinstance(unacked, int)
        assert extra is None or isinstance(extra, int)
        assert timeout is None or isinstance(timeout, int)
        assert ack is None or isinstance(ack, float)
        assert isinstance(pacing, Pacing)
        found.append(Scenario(number, unacked, extra, timeout, ack, args.seconds, pacing=pacing))
    # the biggest first, so that the parallel run ends evenly
    return sorted(found, key=lambda s: (-s.number, -s.max_unacked, str(s)))


Job = tuple[Scenario, Bounds, str]


def _run(job: Job) -> Result:
    result = explore(job[0], job[1])
    result.label = job[2]
    return result


def _chain_label(bounds: Bounds) -> str:
    return (
        f"chain of {bounds.commands} x [{','.join(bounds.command_names)}], depth {bounds.depth},"
        f" failures {bounds.failures}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spec.model_check",
        description="Explore every interleaving of a bounded event alphabet through einhorn.core.step "
        "and check the invariants of spec/README.md.",
    )
    parser.add_argument("--depth", type=int, default=DEFAULTS.depth, help="events per trace (default %(default)s)")
    parser.add_argument("--failures", type=int, default=DEFAULTS.failures, help="crashes, failed spawns and failed re-execs per trace (default %(default)s)")
    parser.add_argument("--commands", type=int, default=DEFAULTS.commands, help="operator commands and master signals per trace (default %(default)s)")
    parser.add_argument("--liveness-steps", type=int, default=DEFAULTS.liveness_steps, help="cooperative steps allowed to converge (default %(default)s)")
    parser.add_argument("--idle", action="store_true", help=f"also let time pass by {IDLE_STEP:g}s between deadlines (default: time jumps from deadline to deadline)")
    parser.add_argument("--alphabet", default=",".join(DEFAULT_COMMANDS), help=f"commands and signals, from {','.join(COMMANDS)} (default %(default)s)")
    parser.add_argument("--number", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--max-unacked", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-upgrade-additional", nargs="+", default=["none", "0", "1"], help="integers or none")
    parser.add_argument("--signal-timeout", nargs="+", default=["none", "2"], help="integers or none")
    parser.add_argument("--ack", nargs="+", default=["1", "manual"], help="timer seconds or manual")
    parser.add_argument("--pacing", nargs="+", choices=[p.value for p in Pacing], default=[p.value for p in Pacing], help="spin-up pacing (EXTENSIONS §4)")
    parser.add_argument(
        "--matrix",
        choices=["pairs", "full"],
        default="pairs",
        help="configurations: every pair of the values below in at least one (default), or every combination",
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="the base spin-up interval -s")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: CPUs)")
    parser.add_argument("--all", action="store_true", help="report every distinct violation, not just the first per configuration")
    parser.add_argument(
        "--chains",
        choices=["yes", "no", "only"],
        default="yes",
        help="also (or only) run the upgrade and rollout chains: a few deeper runs with only upgrades (canaries, aborts) in the alphabet (default %(default)s)",
    )
    parser.add_argument(
        "--health",
        choices=["yes", "no", "only"],
        default="yes",
        help="also (or only) run the health-rule runs (wedged, never-ACKing and bloated workers) and the drain-listener runs (default %(default)s)",
    )
    args = parser.parse_args(argv)
    names = tuple(n for n in args.alphabet.split(",") if n)
    unknown = [n for n in names if n not in COMMANDS]
    if unknown:
        parser.error(f"unknown commands {unknown}; known: {', '.join(COMMANDS)}")
    bounds = Bounds(args.depth, args.failures, args.commands, args.liveness_steps, args.idle, names)
    only = args.chains == "only" or args.health == "only"
    jobs: list[Job] = [] if only else [(s, bounds, "") for s in scenarios(args)]
    matrix = len(jobs)
    if args.chains != "no" and args.health != "only":
        chains = [(s, replace(b, liveness_steps=bounds.liveness_steps)) for s, b in (*UPGRADE_CHAINS, *ROLLOUT_CHAINS)]
        jobs += [(s, b, _chain_label(b)) for s, b in chains]
    if args.health != "no" and args.chains != "only":
        health = [(s, replace(b, liveness_steps=bounds.liveness_steps)) for s, b in HEALTH_RUNS]
        jobs += [(s, b, "health rules, " + _chain_label(b)) for s, b in health]
        drains = [(s, replace(b, liveness_steps=bounds.liveness_steps)) for s, b in DRAIN_RUNS]
        jobs += [(s, b, "drain listeners, " + _chain_label(b)) for s, b in drains]
    jobs.sort(key=lambda job: (-job[0].number, -job[0].max_unacked))  # the biggest first, to end evenly
    print(
        f"model check: {matrix} configurations, depth {bounds.depth}, failures {bounds.failures},"
        f" commands {bounds.commands} from [{', '.join(names)}], liveness within {bounds.liveness_steps} steps;"
        f" {len(jobs) - matrix} upgrade and rollout chains and health runs",
        flush=True,
    )
    started = time.monotonic()
    results: list[Result] = []
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(args.jobs) as workers:
            for result in workers.imap_unordered(_run_all if args.all else _run, jobs):
                _report(result)
                results.append(result)
    else:
        for job in jobs:
            result = (_run_all if args.all else _run)(job)
            _report(result)
            results.append(result)
    elapsed = time.monotonic() - started
    violations = [v for r in results for v in r.violations]
    print(
        f"total: {sum(r.states for r in results)} states, {sum(r.transitions for r in results)} transitions,"
        f" max depth {max((r.depth for r in results), default=0)},"
        f" {sum(r.liveness_states for r in results)} states on cooperative runs,"
        f" {sum(r.replacement_states for r in results)} replacements in ACK rounds,"
        f" {elapsed:.1f}s wall, {sum(r.cpu for r in results):.1f}s CPU"
    )
    for violation in violations:
        print()
        print(render_trace(violation))
    print("FAIL" if violations else "OK: no violation")
    return 1 if violations else 0


def _run_all(job: Job) -> Result:
    result = explore(job[0], job[1], stop_at_first=False)
    result.label = job[2]
    return result


def _report(result: Result) -> None:
    status = f"{len(result.violations)} VIOLATION(S)" if result.violations else "ok"
    if result.label:
        print(f"{result.label}:")
    print(
        f"{str(result.scenario):110} {result.states:7} states {result.transitions:7} transitions"
        f" depth {result.depth:2} {result.seconds:6.1f}s ({result.cpu:.1f}s CPU) {status}{' (truncated)' if result.truncated else ''}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
