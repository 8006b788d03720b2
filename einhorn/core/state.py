"""The master's whole state, as one immutable value.

Theory of operation
-------------------
The shell turns the world into events and feeds them, one at a time, to
`step.step`. Each step returns a new `State` and a list of effects for the
shell to perform in order. Nothing here is ever mutated: a transition builds a
new value with `dataclasses.replace`, so a step that raises (a bug) leaves the
previous state intact.

A worker exists in two phases. When the core decides to start one it records a
`PendingSpawn` (holding its index and version) and emits `SpawnWorker`; the
shell answers with `WorkerSpawned` (the pending spawn becomes a `Child`) or
`SpawnFailed` (it is dropped and counts as a death before ACK). Pending spawns
count as workers everywhere a count decides whether to start more, so a spawn
in flight is never duplicated.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from einhorn.core.config import Config


class ChildKind(enum.Enum):
    WORKER = "worker"
    STATE_PASSER = "state_passer"


class UpgradeKind(enum.Enum):
    SMOOTH = "smooth"
    FLEET = "fleet"


class ReexecPurpose(enum.Enum):
    """Why the master re-execs itself, and so what it does once restored."""

    RELOAD = "reload"
    SMOOTH_UPGRADE = "smooth_upgrade"
    FLEET_UPGRADE = "fleet_upgrade"


@dataclass(frozen=True, slots=True)
class Child:
    pid: int
    kind: ChildKind
    version: int
    index: int
    spinup_at: float
    acked: bool = False
    signaled: frozenset[str] = frozenset()
    last_signaled_at: float | None = None
    killed: bool = False
    pinged_at: float | None = None
    pinged_request_id: str | None = None

    @property
    def is_worker(self) -> bool:
        return self.kind is ChildKind.WORKER


@dataclass(frozen=True, slots=True)
class PendingSpawn:
    spawn_id: int
    index: int
    version: int
    requested_at: float


RequestId = str | int
"""A request's `id`, echoed back unchanged as `request_id` (clients match on it, type included)."""


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A command connection that asked for upgrade progress messages."""

    conn: int
    request_id: RequestId | None


@dataclass(frozen=True, slots=True)
class State:
    config: Config
    version: int = 0
    children: Mapping[int, Child] = field(default_factory=dict)
    pending: Mapping[int, PendingSpawn] = field(default_factory=dict)
    next_spawn_id: int = 0
    respawn: bool = True
    upgrading: UpgradeKind | None = None
    upgrade_subscribers: tuple[Subscriber, ...] = ()
    reexec_purpose: ReexecPurpose | None = None
    reexec_subscribers: tuple[Subscriber, ...] = ()
    shutdown_signal: str | None = None
    deaths_before_ack: int = 0
    last_spinup_at: float | None = None
    clock: float = 0.0
    verbosity: int = 1
    exit_code: int | None = None


def initial_state(config: Config, verbosity: int = 1) -> State:
    return State(config=config, verbosity=verbosity)
