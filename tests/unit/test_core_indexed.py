"""einhorn.core.indexed: the persistent, indexed mappings behind State.children and State.pending.

Every change is checked against a plain dict and indexes recomputed from it, so
the incremental bookkeeping can only be as right as a full scan.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from einhorn.core import pool
from einhorn.core.config import Config
from einhorn.core.indexed import CHUNK, Children, PendingSpawns, Sorted
from einhorn.core.record import replace
from einhorn.core.state import Child, PendingSpawn, State

# --- Sorted ------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=300))
def test_sorted_keeps_order_through_adds_and_removes(moves: list[tuple[bool, int]]) -> None:
    keys = Sorted.of([7, 3])
    model = [3, 7]
    for add, key in moves:
        before = keys
        if add or key not in model:
            keys, model = keys.add(key), sorted([*model, key])
        else:
            keys = keys.remove(key)
            model.remove(key)
        assert list(keys) == model and len(keys) == len(model)
        assert all(len(chunk) <= 2 * CHUNK for chunk in keys._chunks) and all(keys._chunks)
        for probe in (-1, key, key + 1, 41):
            assert keys.rank(probe) == sum(1 for k in model if k < probe)
        assert before is not keys  # persistent: the old one is untouched
    assert keys.swap(5, 5) is keys


def test_sorted_splits_into_chunks_and_drops_empty_ones() -> None:
    keys = Sorted.of(range(10 * CHUNK))
    assert len(keys._chunks) == 10
    grown = keys
    for _ in range(CHUNK + 1):
        grown = grown.add(0)
    assert len(grown._chunks) == 11 and list(grown) == sorted([*range(10 * CHUNK), *([0] * (CHUNK + 1))])
    shrunk = Sorted.of(range(CHUNK))
    for k in range(CHUNK):
        shrunk = shrunk.remove(k)
    assert shrunk._chunks == () and len(shrunk) == 0 and shrunk.rank(5) == 0


# --- Children and PendingSpawns -------------------------------------------------------------------

children = st.builds(
    Child,
    pid=st.integers(1, 12),
    version=st.integers(0, 2),
    index=st.integers(0, 15),
    spinup_at=st.sampled_from([0.0, 1.0, 2.5]),
    acked=st.booleans(),
    signaled=st.sampled_from([frozenset(), frozenset({"USR2"})]),
    last_signaled_at=st.sampled_from([None, 1.0, 3.0]),
    killed=st.booleans(),
)


def assert_indexes_match(indexed: Children, model: dict[int, Child]) -> None:
    assert indexed == model and dict(indexed) == model and sorted(indexed) == sorted(model)
    values = list(model.values())
    for version in (None, 0, 1, 2, 3):
        for signaled in (None, False, True):
            for acked in (None, False, True):
                expected = sum(
                    1
                    for c in values
                    if (version is None or c.version == version)
                    and (signaled is None or bool(c.signaled) == signaled)
                    and (acked is None or c.acked == acked)
                )
                assert indexed.count(version, signaled=signaled, acked=acked) == expected
    assert list(indexed.unacked_by_spinup()) == sorted((c.spinup_at, c.pid) for c in values if not c.acked)
    escalating = sorted((c.last_signaled_at, c.pid) for c in values if c.last_signaled_at is not None and not c.killed)
    assert list(indexed.escalating_by_signal_time()) == escalating
    for version in (0, 1, 2):
        expected_order = sorted((c.acked, c.spinup_at, c.pid) for c in values if c.version == version and not c.signaled)
        assert list(indexed.unsignaled_by_priority(version)) == expected_order
    assert sorted(indexed.unsignaled_versions()) == sorted({c.version for c in values if not c.signaled})
    assert list(indexed.indexes()) == sorted(c.index for c in values)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.integers(1, 12), children, max_size=6), st.lists(st.tuples(st.booleans(), children), max_size=40))
def test_children_changes_keep_every_index_as_a_full_scan_would(start: dict[int, Child], moves: list[tuple[bool, Child]]) -> None:
    model = {pid: replace(c, pid=pid) for pid, c in start.items()}
    indexed = Children.of(model)
    assert_indexes_match(indexed, model)
    for delete, child in moves:
        before, before_model = indexed, dict(model)
        if delete and child.pid in model:
            indexed = indexed.delete(child.pid)
            del model[child.pid]
        else:
            indexed = indexed.set(child)
            model[child.pid] = child
        assert_indexes_match(indexed, model)
        assert_indexes_match(before, before_model)  # persistent: the old value is unchanged
    assert Children.of(model) == indexed and Children.of(indexed) is indexed


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 9), st.integers(0, 2)), max_size=30))
def test_pending_spawns_keep_their_counts_and_indexes(moves: list[tuple[int, int, int]]) -> None:
    pending = PendingSpawns.of({})
    model: dict[int, PendingSpawn] = {}
    for spawn_id, index, version in moves:
        if spawn_id in model and index % 3 == 0:
            pending = pending.delete(spawn_id)
            del model[spawn_id]
        else:
            spawn = PendingSpawn(spawn_id, index, version, 0.0)
            pending = pending.set(spawn)
            model[spawn_id] = spawn
        assert pending == model and PendingSpawns.of(model) == pending
        assert [pending.count(v) for v in (None, 0, 1, 2)] == [len(model)] + [sum(p.version == v for p in model.values()) for v in (0, 1, 2)]
        assert list(pending.indexes()) == sorted(p.index for p in model.values())


def test_a_state_built_from_plain_mappings_is_indexed_and_compares_equal() -> None:
    child = Child(5, 0, 0, 1.0)
    state = State(config=Config(), children={5: child}, pending={0: PendingSpawn(0, 1, 0, 1.0)})
    assert isinstance(state.children, Children) and isinstance(state.pending, PendingSpawns)
    assert state == State(config=Config(), children={5: child}, pending={0: PendingSpawn(0, 1, 0, 1.0)})
    assert state != replace(state, children={})
    assert replace(state, version=1).children is state.children  # passed on, not rebuilt
    assert state.children == {5: child} and {5: child} == state.children
    assert repr(state.children) == f"Children({{5: {child!r}}})"


# --- the free indexes ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.sets(st.integers(0, 60), max_size=40),
    st.sets(st.integers(0, 60), max_size=10),
    st.integers(1, 12),
)
def test_free_indexes_are_the_lowest_ones_no_worker_or_spawn_uses(held: set[int], spawning: set[int], count: int) -> None:
    spawning -= held  # distinct, as in every reachable state (S2)
    kids = {1000 + i: Child(1000 + i, 0, index, 0.0) for i, index in enumerate(sorted(held))}
    spawns = {i: PendingSpawn(i, index, 0, 0.0) for i, index in enumerate(sorted(spawning))}
    state = State(config=Config(), children=kids, pending=spawns)
    used = held | spawning
    expected = sorted(set(range(len(used) + count)) - used)[:count]
    assert pool.free_indexes(state, count) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 20), max_size=20), st.lists(st.integers(0, 20), max_size=5), st.integers(1, 6))
def test_free_indexes_of_a_state_with_duplicate_indexes_are_still_unused(held: list[int], spawning: list[int], count: int) -> None:
    """A state breaking S2 (two workers at one index): never an index in use, even then."""
    kids = {1000 + i: Child(1000 + i, 0, index, 0.0) for i, index in enumerate(held)}
    spawns = {i: PendingSpawn(i, index, 0, 0.0) for i, index in enumerate(spawning)}
    found = pool.free_indexes(State(config=Config(), children=kids, pending=spawns), count)
    assert len(set(found)) == count and not set(found) & (set(held) | set(spawning))
