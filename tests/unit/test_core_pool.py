"""einhorn.core.pool: the pure queries that every scheduling rule is built on."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from einhorn.core import pool
from einhorn.core.config import MAX_SPINUP_INTERVAL
from einhorn.core.record import replace
from einhorn.core.state import Child, PendingSpawn, State, initial_state
from tests.unit.fixtures.core_world import make_config


def worker(pid: int, version: int = 1, index: int = 0, **changes: Any) -> Child:
    child = Child(pid=pid, version=version, index=index, spinup_at=float(pid))
    return replace(child, **changes)


def pool_state(*children: Child, pending: tuple[PendingSpawn, ...] = (), number: int = 3, version: int = 1) -> State:
    state = initial_state(make_config(number=number))
    return replace(
        state,
        version=version,
        children={c.pid: c for c in children},
        pending={p.spawn_id: p for p in pending},
        next_spawn_id=max((p.spawn_id + 1 for p in pending), default=0),
    )


# A pool with one of everything, used by several tests below.
MIXED = pool_state(
    worker(10, version=1, index=0, acked=True),  # modern, acked
    worker(11, version=1, index=1),  # modern, un-ACKed
    worker(12, version=1, index=2, acked=True, signaled=frozenset({"USR2"})),  # modern, signaled
    worker(13, version=0, index=3, acked=True),  # old
    worker(14, version=0, index=4, acked=True, signaled=frozenset({"USR2"})),  # old and signaled: not "old"
    pending=(PendingSpawn(0, 5, 1, 0.0), PendingSpawn(1, 6, 0, 0.0)),
    number=4,
)


def pids(children: list[Child]) -> list[int]:
    return [c.pid for c in children]


def test_workers_are_the_worker_children_in_pid_order() -> None:
    state = pool_state(worker(30), worker(10), worker(20))
    assert pids(pool.workers(state)) == [10, 20, 30]
    assert pids(pool.workers(MIXED)) == [10, 11, 12, 13, 14]


def test_classification_of_a_mixed_pool() -> None:
    assert pids(pool.modern_workers(MIXED)) == [10, 11, 12]
    assert pids(pool.unsignaled_modern_workers(MIXED)) == [10, 11]
    assert pids(pool.old_workers(MIXED)) == [13]


def test_ack_count_counts_acked_unsignaled_modern_workers_only() -> None:
    assert pool.ack_count(MIXED) == 1
    assert pool.ack_target(MIXED) == 4


def test_unacked_count_includes_modern_pending_spawns() -> None:
    # 11 is un-ACKed; pending spawn 0 is modern, pending spawn 1 is of version 0.
    assert pool.unacked_unsignaled_modern_count(MIXED) == 2


def test_missing_counts_signaled_modern_workers_and_pending_spawns() -> None:
    # number 4 - modern workers (10, 11, 12 signaled) - modern pending (spawn 0) = 0
    assert pool.missing_worker_count(MIXED) == 0
    assert pool.missing_worker_count(replace(MIXED, config=make_config(number=6))) == 2


def test_missing_is_negative_with_too_many_modern_workers() -> None:
    state = pool_state(worker(1, index=0), worker(2, index=1), worker(3, index=2), number=1)
    assert pool.missing_worker_count(state) == -2


def test_missing_ignores_old_workers_and_old_pending_spawns() -> None:
    state = pool_state(worker(1, version=0), pending=(PendingSpawn(0, 1, 0, 0.0),), number=2)
    assert pool.missing_worker_count(state) == 2


def test_total_worker_count_is_every_worker_and_every_pending_spawn() -> None:
    assert pool.total_worker_count(MIXED) == 7


def test_used_indexes_cover_workers_and_pending_spawns_but_not_state_passers() -> None:
    assert pool.used_indexes(MIXED) == {0, 1, 2, 3, 4, 5, 6}


def test_lowest_free_index() -> None:
    assert pool.lowest_free_index([]) == 0
    assert pool.lowest_free_index([1, 2]) == 0
    assert pool.lowest_free_index([0, 1, 3]) == 2
    assert pool.lowest_free_index(iter([2, 0, 1])) == 3


@settings(deadline=None)
@given(st.sets(st.integers(0, 50), max_size=30))
def test_lowest_free_index_is_the_smallest_unused_natural(used: set[int]) -> None:
    index = pool.lowest_free_index(used)
    assert index not in used
    assert all(i in used for i in range(index))


def test_surplus_priority_is_unacked_first_then_newest() -> None:
    state = pool_state(
        worker(1, acked=True, spinup_at=1.0),
        worker(2, acked=True, spinup_at=5.0),
        worker(3, spinup_at=2.0),
        worker(4, spinup_at=3.0),
        worker(5, acked=True, spinup_at=9.0, signaled=frozenset({"USR2"})),  # already going
        worker(6, version=0, spinup_at=10.0),  # old: not surplus of this version
    )
    assert pids(pool.surplus_by_priority(state)) == [4, 3, 2, 1]


def test_surplus_priority_breaks_spinup_ties_by_higher_pid() -> None:
    state = pool_state(worker(7, spinup_at=1.0), worker(9, spinup_at=1.0), worker(8, spinup_at=1.0))
    assert pids(pool.surplus_by_priority(state)) == [9, 8, 7]


def interval(seconds: float, deaths: int) -> float:
    state = initial_state(make_config(seconds=seconds))
    return pool.spinup_interval(replace(state, deaths_before_ack=deaths))


def test_spinup_interval_grows_by_half_per_death_before_ack() -> None:
    assert interval(1.0, 0) == 1.0
    assert interval(1.0, 1) == 1.5
    assert interval(1.0, 2) == 2.25
    assert interval(2.0, 3) == 6.75
    assert math.isclose(interval(1.0, 8), 1.5**8)  # 25.6...


def test_spinup_interval_caps_at_30_seconds() -> None:
    assert interval(1.0, 9) == MAX_SPINUP_INTERVAL == 30.0
    assert interval(60.0, 0) == 30.0
    assert interval(1e-300, 10_000) == 30.0


def test_spinup_interval_does_not_overflow_on_huge_death_counts() -> None:
    # 1.5 ** 10**12 overflows a float; a billion iterations would hang the test.
    assert interval(1.0, 10**12) == 30.0
    assert interval(0.5, 2**62) == 30.0


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=1e-3, max_value=100.0),
    st.integers(min_value=0, max_value=200),
)
def test_spinup_interval_is_min_of_seconds_times_1_5_to_the_deaths_and_30(seconds: float, deaths: int) -> None:
    expected = min(seconds * 1.5**deaths, MAX_SPINUP_INTERVAL)
    assert math.isclose(interval(seconds, deaths), expected, rel_tol=1e-9)
    assert interval(seconds, deaths) <= MAX_SPINUP_INTERVAL
