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

Every upgrade (and the first start) records a `Generation`: the version and
the `LaunchSpec` its workers are started from, as the master image that
created it measured it (spec/README.md §4, "Generations, canaries and rollbacks"). A worker is always spawned from
its own generation's spec. An upgrade is a `Rollout` from the `previous`
generation to a new one: an optional canary phase (K new workers beside the
old pool, ACKed and baked), then a smooth or fleet upgrade; a failure, a
crash loop of the new generation, its timeout or `abort_upgrade` roll it
back (einhorn/core/rollout.py).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from einhorn.core.config import Config
from einhorn.core.indexed import Children, PendingSpawns
from einhorn.core.record import dataclass, field


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
    """Where a re-exec is (spec/upgrades.md): the image is compared, the check runs if it changed, then the exec is ordered."""

    COMPARING = "comparing"
    """`CompareImage` ordered: is the image the re-exec would run the running one? Due by `Reexec.deadline`."""
    CHECKING = "checking"
    """`StartUpgradeCheck` ordered; its verdict is due by `Reexec.deadline`."""
    EXECUTING = "executing"
    """The check passed and `ExecMaster` is ordered; `MasterStarted(restored)` or `ReexecFailed` ends it."""


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """How a generation's workers are started, as the master image that created it measured it."""

    argv: tuple[str, ...]
    path: str
    """`argv[0]` resolved to an absolute path by that image."""
    cwd: str
    """That image's physical working directory (a `--reexec-as` wrapper that `cd`s into a symlinked
    `current/` pins the release directory here)."""
    environ: tuple[tuple[str, str], ...]
    """That image's environment for workers, sorted by name."""
    graceful_signal: str


@dataclass(frozen=True, slots=True)
class Drain:
    """Generation `version` is steered away from on the `drain` listeners (drain.py): no new connection
    reaches its socket since `since`, and its workers the master stops wait until the queue is empty."""

    version: int
    since: float
    ticket: int = 0
    """The last `MeasureQueues` ordered for it: only its answer counts."""
    measured_at: float | None = None
    """When that measurement was ordered."""
    empty_at: float | None = None
    """The first reading, after `since`, with no connection waiting; None while some wait."""
    timed_out: bool = False
    """The queue did not empty within `drain.TIMEOUT`: its workers are stopped anyway."""
    held: bool = True
    """Some stop waited for this drain in the last scheduling pass (a drain no stop waits for ends)."""


@dataclass(frozen=True, slots=True)
class Generation:
    version: int
    launch: LaunchSpec
    rolled_back_because: str | None = None
    """Why it was rolled back; a rolled-back generation is never spawned again."""


class RolloutPhase(enum.Enum):
    CANARY = "canary"
    """`UpgradeOptions.canary` workers of the new generation beside the old pool: they must ACK, then live through the bake."""
    FINISHING = "finishing"
    """A normal smooth or fleet upgrade to the new generation (`State.upgrading`)."""


@dataclass(frozen=True, slots=True)
class UpgradeOptions:
    """`upgrade [--canary K] [--bake SECONDS] [--timeout SECONDS] [--env K=V]...` (and `upgrade_fleet`)."""

    canary: int = 0
    bake: float = 0.0
    timeout: float | None = None
    env: tuple[tuple[str, str], ...] = ()
    """`--env K=V`: set in the new generation's environment (over the new image's own), in the order given."""

    @property
    def rolls_back_on_failure(self) -> bool:
        """Opt-in: a plain upgrade behaves as the original's (it retries a crashing new version for ever)."""
        return self.canary > 0 or self.timeout is not None


@dataclass(frozen=True, slots=True)
class Rollout:
    """An upgrade from generation `previous` to generation `version`, until it is done or rolled back."""

    version: int
    previous: int
    kind: UpgradeKind
    options: UpgradeOptions
    started_at: float
    phase: RolloutPhase
    canaries_started: int = 0
    canaries_acked: int = 0
    bake_until: float | None = None
    """Set once every canary ACKed: the canary phase ends then, if none died."""
    new_deaths: int = 0
    """Workers of the new generation that died before their ACK (its crash-loop streak)."""
    last_death: str = ""
    """How the last of them ended (`exit status 1`)."""

    @property
    def deadline(self) -> float | None:
        timeout = self.options.timeout
        return None if timeout is None else self.started_at + timeout


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
    """A worker ordered (`SpawnWorker`) whose pid is not known yet."""

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
    options: UpgradeOptions | None = None
    """The upgrade's options (None: a reload, a signal, or no options given)."""


@dataclass(frozen=True, slots=True)
class State:
    """Everything the master knows: the pool, its settings, the upgrade in progress, the clients waiting."""

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
    generations: tuple[Generation, ...] = ()
    """By version: the current one, a rollout's two, and every one that still has workers (or is newest)."""
    rollout: Rollout | None = None
    """The upgrade in progress since its new generation was created (after the re-exec)."""
    drains: tuple[Drain, ...] = ()
    """With `drain` listeners: the generations steered away from, by version (not kept across a re-exec:
    the new image steers again and drains again before it stops anyone)."""
    steered: tuple[tuple[int, int], ...] = ()
    """The weights of the last `Steer` ordered; () before the first (and after a re-exec)."""
    exposed: frozenset[int] = frozenset()
    """Generations new connections may have been steered to since their queues were last drained: a worker
    of one is stopped only after a drain, when its connections can go elsewhere. After a re-exec, every live
    generation (the new image does not know what the old one steered)."""
    next_ticket: int = 0

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

    def generation(self, version: int) -> Generation | None:
        return next((g for g in self.generations if g.version == version), None)

    @property
    def reexec_purpose(self) -> ReexecPurpose | None:
        return None if self.reexec is None else self.reexec.purpose

    @property
    def reexec_subscribers(self) -> tuple[Subscriber, ...]:
        return () if self.reexec is None else self.reexec.subscribers


def initial_state(config: Config, verbosity: int = 1) -> State:
    return State(config=config, verbosity=verbosity)
