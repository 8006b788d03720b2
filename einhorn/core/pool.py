"""Pure queries over the worker pool: who is modern, old, acked, missing.

Vocabulary (BEHAVIOR §4):
- a *modern* worker runs the current version; an *old* worker is an
  unsignaled worker of an earlier version;
- ack_count = acked, unsignaled, modern workers; ack_target = number;
- missing = number - modern workers (signaled or not, pending spawns included);
- *serving* = acked, unsignaled workers of any version (the availability floor
  counts them: spec/README.md, T12).
"""

from __future__ import annotations

from collections.abc import Iterable

from einhorn.core.config import MAX_SPINUP_INTERVAL, Pacing
from einhorn.core.state import Child, State


def workers(state: State) -> list[Child]:
    return sorted(state.children.values(), key=lambda c: c.pid)


def modern_workers(state: State) -> list[Child]:
    return [c for c in workers(state) if c.version == state.version]


def unsignaled_modern_workers(state: State) -> list[Child]:
    return [c for c in modern_workers(state) if not c.signaled]


def old_workers(state: State) -> list[Child]:
    return [c for c in workers(state) if c.version != state.version and not c.signaled]


def old_by_priority(state: State) -> list[Child]:
    """Old workers, the ones to stop first first: un-ACKed (they serve nothing), then the oldest."""
    return sorted(old_workers(state), key=lambda c: (c.acked, c.spinup_at, c.pid))


def serving_count(state: State) -> int:
    return sum(1 for c in workers(state) if c.acked and not c.signaled)


def unacked_unsignaled_modern_count(state: State) -> int:
    live = sum(1 for c in unsignaled_modern_workers(state) if not c.acked)
    return live + sum(1 for p in state.pending.values() if p.version == state.version)


def ack_count(state: State) -> int:
    return sum(1 for c in unsignaled_modern_workers(state) if c.acked)


def ack_target(state: State) -> int:
    return state.config.number


def total_worker_count(state: State) -> int:
    return len(workers(state)) + len(state.pending)


def missing_worker_count(state: State) -> int:
    modern_pending = sum(1 for p in state.pending.values() if p.version == state.version)
    return state.config.number - len(modern_workers(state)) - modern_pending


def surplus_by_priority(state: State) -> list[Child]:
    """Unsignaled modern workers, the ones to stop first first: un-ACKed, then newest."""
    candidates = unsignaled_modern_workers(state)
    return sorted(candidates, key=lambda c: (c.acked, -c.spinup_at, -c.pid))


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


def lowest_free_index(used: Iterable[int]) -> int:
    taken = set(used)
    index = 0
    while index in taken:
        index += 1
    return index
