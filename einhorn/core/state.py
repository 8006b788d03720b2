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

`children` and `pending` are persistent, indexed mappings
(`indexed.Children`, `indexed.PendingSpawns`): a transition that touches one
worker changes one path of a trie and the counts and orders the pool reads,
and shares the rest with the state before, so that a step costs the same at
16 and at 1000 workers. Any mapping is accepted on construction (and indexed
then); read and write them through `indexed_children` / `indexed_pending`.

A re-exec has the same shape (spec/upgrades.md): the core records a `Reexec`
in phase CHECKING with a deadline and orders `StartUpgradeCheck`; the shell
answers `UpgradeCheckPassed` or `UpgradeCheckFailed`. On a pass the phase
becomes EXECUTING and the core orders `ExecMaster`; the new image answers
`MasterStarted(restored=True)`, a failed exec `ReexecFailed`. Shutting down
abandons a re-exec in either phase, and the deadline fails it: both are
decided here, never in the shell.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from einhorn.core.config import Config
from einhorn.core.indexed import Children, PendingSpawns


class UpgradeKind(enum.Enum):
    SMOOTH = "smooth"
    FLEET = "fleet"


class ReexecPurpose(enum.Enum):
    """Why the master re-execs itself, and so what it does once restored."""

    RELOAD = "reload"
    SMOOTH_UPGRADE = "smooth_upgrade"
    FLEET_UPGRADE = "fleet_upgrade"


class Verdict(enum.Enum):
    """Why a health rule condemned a worker (einhorn/core/health.py): it is stopped, successor first
    when stopping it at once would leave fewer than `number` serving."""

    BOOT_TIMEOUT = "boot_timeout"
    """Not ACKed `--boot-timeout` seconds after its spawn."""
    PING_TIMEOUT = "ping_timeout"
    """Pinged once, then no ping for `--ping-timeout` seconds (a wedged worker)."""
    RSS_LIMIT = "rss_limit"
    """Measured above `--max-worker-rss`."""


class ReexecPhase(enum.Enum):
    """Where a re-exec is (spec/upgrades.md): the check runs, then the exec is ordered."""

    CHECKING = "checking"
    """`StartUpgradeCheck` ordered; its verdict is due by `Reexec.deadline`."""
    EXECUTING = "executing"
    """The check passed and `ExecMaster` is ordered; `MasterStarted(restored)` or `ReexecFailed` ends it."""


@dataclass(frozen=True, slots=True)
class Child:
    """A worker process. (The shell's own helpers, the upgrade check and the
    state passer, are not children of the core: the shell reaps them.)"""

    pid: int
    version: int
    index: int
    spinup_at: float
    acked: bool = False
    signaled: frozenset[str] = frozenset()
    last_signaled_at: float | None = None
    killed: bool = False
    pinged_at: float | None = None
    """Monotonic time of the last `worker:ping` (shown as wall-clock time)."""
    pinged_request_id: str | None = None
    status: str | None = None
    """The last `STATUS=` the worker sent on the `-m notify` socket (not kept across a re-exec)."""
    rss_bytes: int | None = None
    """The worker's resident set size as the shell last measured it (`WorkerMeasured`), with `--max-worker-rss`."""
    measured_at: float | None = None
    """Monotonic time of that measurement."""
    verdict: Verdict | None = None
    """A health rule condemned this worker (health.py): it is stopped as soon as the availability floor allows."""
    verdict_at: float | None = None
    """When the verdict was given."""


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
class Reexec:
    """A re-exec in progress: why, who hears how it ends, and which phase it is in."""

    purpose: ReexecPurpose
    subscribers: tuple[Subscriber, ...]
    check_id: int
    deadline: float
    """When the upgrade check must have passed (monotonic); past it, the re-exec fails."""
    phase: ReexecPhase = ReexecPhase.CHECKING


@dataclass(frozen=True, slots=True)
class State:
    config: Config
    version: int = 0
    children: Mapping[int, Child] = field(default_factory=Children.empty)
    """Any mapping pid -> Child on construction; always a `Children` after it (`indexed_children`)."""
    pending: Mapping[int, PendingSpawn] = field(default_factory=PendingSpawns.empty)
    """Any mapping spawn id -> PendingSpawn on construction; always a `PendingSpawns` after it."""
    next_spawn_id: int = 0
    respawn: bool = True
    upgrading: UpgradeKind | None = None
    upgrade_subscribers: tuple[Subscriber, ...] = ()
    reexec: Reexec | None = None
    next_check_id: int = 0
    shutdown_signal: str | None = None
    deaths_before_ack: int = 0
    last_spinup_at: float | None = None
    clock: float = 0.0
    verbosity: int = 1
    exit_code: int | None = None
    supervisor_ready: bool = False
    """`READY=1` went to the supervisor once the pool was ACKed (`notify.tell_supervisor`). Not kept
    across a re-exec: the new image says READY=1 again once its pool is ACKed, which ends the reload."""
    watchdog_at: float | None = None
    """When `WATCHDOG=1` last went to the supervisor (not kept across a re-exec: the new image sends at once)."""

    def __post_init__(self) -> None:
        # A plain mapping (a test, the model checker, a restore) is indexed once here;
        # the core itself only ever passes on what `Children.set` and `.delete` return.
        if type(self.children) is not Children:  # (not isinstance: an ABC's check costs a step's worth)
            object.__setattr__(self, "children", Children.of(self.children))
        if type(self.pending) is not PendingSpawns:
            object.__setattr__(self, "pending", PendingSpawns.of(self.pending))

    @property
    def indexed_children(self) -> Children:
        children = self.children
        assert type(children) is Children
        return children

    @property
    def indexed_pending(self) -> PendingSpawns:
        pending = self.pending
        assert type(pending) is PendingSpawns
        return pending

    @property
    def reexec_purpose(self) -> ReexecPurpose | None:
        return None if self.reexec is None else self.reexec.purpose

    @property
    def reexec_subscribers(self) -> tuple[Subscriber, ...]:
        return () if self.reexec is None else self.reexec.subscribers


def initial_state(config: Config, verbosity: int = 1) -> State:
    return State(config=config, verbosity=verbosity)
