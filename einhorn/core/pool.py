"""Pure queries over the worker pool: who is modern, old, acked, missing.

Vocabulary (BEHAVIOR §4):
- a *modern* worker runs the current version; an *old* worker is an
  unsignaled worker of an earlier version;
- ack_count = acked, unsignaled, modern workers; ack_target = number;
- missing = number - modern workers (signaled or not, pending spawns included);
- *serving* = acked, unsignaled workers of any version (the availability floor
  counts them: spec/README.md, T12);
- a *condemned* worker is an unsignaled one a health rule gave a verdict
  (health.py): it still serves until stopped, but counts as gone for
  ack_count, missing and the surplus, so that its successor starts first.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

from einhorn.core.config import MAX_SPINUP_INTERVAL, Pacing
from einhorn.core.state import Child, RolloutPhase, State

# Every count below is read from the indexes `State.children` and `State.pending`
# keep (einhorn/core/indexed.py): no query that a step makes scans the pool.


def workers(state: State) -> list[Child]:
    """Every worker, by pid (a scan: for commands and tests, not for the scheduling pass)."""
    return sorted(state.children.values(), key=lambda c: c.pid)


def modern_workers(state: State) -> list[Child]:
    return [c for c in workers(state) if c.version == state.version]


def unsignaled_modern_workers(state: State) -> list[Child]:
    return [c for c in modern_workers(state) if not c.signaled]


def candidate(state: State) -> int | None:
    """The new generation while its canaries run beside the old pool: neither modern nor old."""
    rollout = state.rollout
    return rollout.version if rollout is not None and rollout.phase is RolloutPhase.CANARY else None


def old_workers(state: State) -> list[Child]:
    return [c for c in workers(state) if c.version not in (state.version, candidate(state)) and not c.signaled]


def old_count(state: State) -> int:
    children = state.indexed_children
    canaries = candidate(state)
    beside = 0 if canaries is None else children.count(canaries, signaled=False)
    return children.count(signaled=False) - children.count(state.version, signaled=False) - beside


def old_by_priority(state: State, limit: int | None = None) -> list[Child]:
    """Old workers, the ones to stop first first: un-ACKed (they serve nothing), then the oldest.
    The first `limit` of them (all with None), without looking at the others."""
    children = state.indexed_children
    kept = (state.version, candidate(state))
    orders = [children.unsignaled_by_priority(v) for v in children.unsignaled_versions() if v not in kept]
    if len(orders) <= 1:
        keys = iter(orders[0] if orders else ())
    else:
        import heapq  # with several old versions only: an idle master need not hold it (issue 14)

        keys = heapq.merge(*orders)
    return [children[pid] for _, _, pid in itertools.islice(keys, limit)]


def serving_count(state: State) -> int:
    return state.indexed_children.count(signaled=False, acked=True)


def unacked_unsignaled_modern_count(state: State) -> int:
    live = state.indexed_children.count(state.version, signaled=False, acked=False)
    return live + state.indexed_pending.count(state.version)


def ack_count(state: State) -> int:
    """ACKed, unsignaled, modern workers no health rule condemned."""
    acked = state.indexed_children.count(state.version, signaled=False, acked=True)
    return acked - condemned_modern_count(state, acked=True)


def condemned_modern_count(state: State, acked: bool | None = None) -> int:
    """Condemned (unsignaled) modern workers, ACKed or not (None: both). Few: a scan of them."""
    children = state.indexed_children
    count = 0
    for _, pid in children.condemned():
        child = children[pid]
        if child.version == state.version and (acked is None or child.acked == acked):
            count += 1
    return count


def condemned(state: State) -> list[Child]:
    """Condemned (unsignaled) workers of any version, oldest first."""
    children = state.indexed_children
    return [children[pid] for _, pid in children.condemned()]


def ack_target(state: State) -> int:
    return state.config.number


def unsignaled_modern_count(state: State) -> int:
    """Unsignaled modern workers no health rule condemned (the surplus counts these)."""
    return state.indexed_children.count(state.version, signaled=False) - condemned_modern_count(state)


def total_worker_count(state: State) -> int:
    return len(state.children) + len(state.pending)


def busy_count(state: State) -> int:
    """Unsignaled workers plus spawns in flight: the slots no exit in progress will free."""
    return state.indexed_children.count(signaled=False) + len(state.pending)


def missing_worker_count(state: State) -> int:
    """number - modern workers (signaled or not) - modern spawns in flight, a condemned worker
    counting as gone: its successor is missing."""
    modern = state.indexed_children.count(state.version) + state.indexed_pending.count(state.version)
    return state.config.number - modern + condemned_modern_count(state)


def surplus_by_priority(state: State, limit: int | None = None) -> list[Child]:
    """Unsignaled modern workers, the ones to stop first first: un-ACKed, then newest (the first `limit`)."""
    order = list(state.indexed_children.unsignaled_by_priority(state.version))  # (acked, spinup_at, pid)
    split = state.indexed_children.unsignaled_by_priority(state.version).rank((True, -math.inf, -1))  # the un-ACKed first
    keys = itertools.chain(reversed(order[:split]), reversed(order[split:]))
    healthy = (state.children[pid] for _, _, pid in keys if state.children[pid].verdict is None)  # the condemned go their own way
    return list(itertools.islice(healthy, limit))


def paced_by_acks(state: State) -> bool:
    """Whether a gradual spin-up waits only for un-ACKed slots, not for time: ACK pacing,
    and no death before ACK since the last ACK (a death brings the interval back)."""
    return state.config.pacing is Pacing.ACK and state.deaths_before_ack == 0


def died_young(state: State, child: Child) -> bool:
    """Under ACK pacing, an ACKed worker that exits unasked within `seconds` of its start
    counts as a death before ACK: with nothing but ACKs to wait for, a worker that ACKs at
    once (`-m 0`) and crashes would otherwise be replaced as fast as the shell can fork."""
    young = state.clock - child.spinup_at < state.config.seconds
    return state.config.pacing is Pacing.ACK and young and not child.signaled


def spinup_interval(state: State) -> float:
    """min(seconds * 1.5 ** deaths_before_ack, 30), without overflowing for huge streaks."""
    interval = state.config.seconds
    for _ in range(state.deaths_before_ack):
        if interval >= MAX_SPINUP_INTERVAL:
            break
        interval *= 1.5
    return min(interval, MAX_SPINUP_INTERVAL)


def used_indexes(state: State) -> set[int]:
    used = {c.index for c in state.children.values()}
    return used | {p.index for p in state.pending.values()}


def free_indexes(state: State, count: int) -> list[int]:
    """The `count` lowest indexes no live worker (signaled or not) or pending spawn uses.

    A binary search over the two sorted index sequences: below x, x - used(x)
    are free, where used(x) counts the indexes in use below x (they are
    distinct: S2). In a state where they are not (hand-made, or restored from a
    broken document) the indexes found are still unused, but maybe not the lowest.
    """
    children, pending = state.indexed_children.indexes(), state.indexed_pending.indexes()

    def used_below(x: int) -> int:
        return children.rank(x) + pending.rank(x)

    found: list[int] = []
    for nth in range(1, count + 1):
        low, high = 0, len(children) + len(pending) + nth  # free(high) >= nth
        while low < high:  # the least x with nth free indexes below x + 1
            middle = (low + high) // 2
            if middle + 1 - used_below(middle + 1) >= nth:
                high = middle
            else:
                low = middle + 1
        found.append(low)
    if any(used_below(x + 1) != used_below(x) for x in found):
        used = used_indexes(state)
        found = []
        for _ in range(count):
            found.append(lowest_free_index(used))
            used.add(found[-1])
    return found


def lowest_free_index(used: Iterable[int]) -> int:
    taken = set(used)
    index = 0
    while index in taken:
        index += 1
    return index
