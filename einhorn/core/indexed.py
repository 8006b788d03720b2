"""The state's two mappings of workers, persistent and indexed, so that a step costs the same at 16 and 1000 workers.

A step that touches one worker (an ACK, an exit, a spawn result) must not copy
or scan all of them. So `State.children` is a `Children` and `State.pending`
a `PendingSpawns`: an `immutables.Map` (a hash array mapped trie, the
structure behind `contextvars`: set and delete in O(log n), the old and new
maps sharing all but one path, so every state stays its own value), plus the
counts and orders the pool queries and the timers read:

- counts by (version, signaled, acked): modern, ACKed, serving... (`pool`);
- the un-ACKed children by (spinup_at, pid): the timer ACKs, earliest first;
- the signaled, unkilled children by (last_signaled_at, pid): the escalations;
- per version, the unsignaled children by (acked, spinup_at, pid): the order
  old workers are stopped in;
- the indexes in use (the lowest free index);
- the pinged, unsignaled children no health rule condemned yet by (pinged_at, pid):
  the ping timeouts; and the condemned, unsignaled ones by (spinup_at, pid).

An index is made by one scan when first asked for, and from then on each
`set` and `delete` brings it up to date: a count in O(1), an order in a
`Sorted` (chunked sorted tuples: a change copies one chunk and the chunk
directory, not all n keys). Up to SMALL children no index is carried through
a change: the next query scans again, which at that size costs less. Anything
that builds a State from a plain mapping (tests, the model checker, a restore)
gets one through `Children.of` in `State.__post_init__`; the core itself only
passes on what `set` and `delete` return.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: an idle master need not hold it (issue 14)
if TYPE_CHECKING:
    from typing import Generic, TypeVar

    import immutables
    from immutables import Map

    from einhorn.core.state import Child, PendingSpawn

    _K = TypeVar("_K", tuple[float, int], tuple[bool, float, int], int)
else:
    from einhorn.extension import c_module

    _C_MAP = c_module("immutables", "_map")  # not the package: its `__init__` imports typing for its protocols
    if _C_MAP is not None:
        Map = _C_MAP.Map
    else:  # the package without its C module (its pure-Python Map)
        from immutables import Map

    class Generic:
        """What `typing.Generic` does here at run time: `Sorted[...]` is `Sorted`."""

        __slots__ = ()

        def __class_getitem__(cls, item: object) -> type:
            return cls

    _K = None

Kind = tuple[int | None, bool | None, bool | None]
"""(version, signaled, acked): what the counts are kept by; None in a place counts every value."""

CHUNK = 64
"""Keys per chunk of a `Sorted` (up to twice as many before it splits)."""


class Sorted(Generic[_K]):
    """A persistent sorted sequence of keys (repeats allowed), in chunks of up to 2 x CHUNK.

    Adding or removing a key copies one chunk and the tuple of chunks (under
    200 pointers at 1000 keys), where a sorted tuple copies all of them.
    """

    __slots__ = ("_chunks", "_firsts", "_length")

    _chunks: tuple[tuple[_K, ...], ...]
    _firsts: tuple[_K, ...]
    """Each chunk's first key, to find a key's chunk by bisection."""
    _length: int

    @classmethod
    def of(cls, keys: Iterable[_K]) -> Sorted[_K]:
        ordered = sorted(keys)
        if len(ordered) <= CHUNK:  # a small pool: one chunk (or none)
            return cls._make((tuple(ordered),), (ordered[0],), len(ordered)) if ordered else cls._make((), (), 0)
        chunks = tuple(tuple(ordered[i : i + CHUNK]) for i in range(0, len(ordered), CHUNK))
        return cls._make(chunks, tuple(chunk[0] for chunk in chunks), len(ordered))

    @classmethod
    def _make(cls, chunks: tuple[tuple[_K, ...], ...], firsts: tuple[_K, ...], length: int) -> Sorted[_K]:
        made: Sorted[_K] = object.__new__(cls)
        made._chunks, made._firsts, made._length = chunks, firsts, length
        return made

    def _chunk_of(self, key: _K) -> int:
        """The chunk `key` belongs in: the last one that starts at or before it (or the first)."""
        return max(0, bisect_right(self._firsts, key) - 1)

    def _with_chunk(self, at: int, replacement: tuple[tuple[_K, ...], ...], length: int) -> Sorted[_K]:
        firsts = self._firsts
        if len(replacement) != 1 or replacement[0][0] != firsts[at]:  # (most changes keep the chunk's first key)
            firsts = firsts[:at] + tuple([chunk[0] for chunk in replacement]) + firsts[at + 1 :]
        return Sorted._make(self._chunks[:at] + replacement + self._chunks[at + 1 :], firsts, length)

    def add(self, key: _K) -> Sorted[_K]:
        if not self._chunks:
            return Sorted._make(((key,),), (key,), 1)
        at = self._chunk_of(key)
        chunk = self._chunks[at]
        where = bisect_left(chunk, key)
        chunk = chunk[:where] + (key,) + chunk[where:]
        replacement = (chunk[:CHUNK], chunk[CHUNK:]) if len(chunk) > 2 * CHUNK else (chunk,)
        return self._with_chunk(at, replacement, self._length + 1)

    def remove(self, key: _K) -> Sorted[_K]:
        at = self._chunk_of(key)
        chunk = self._chunks[at]
        where = bisect_left(chunk, key)
        assert chunk[where] == key, (key, chunk)
        chunk = chunk[:where] + chunk[where + 1 :]
        return self._with_chunk(at, (chunk,) if chunk else (), self._length - 1)

    def swap(self, old: _K | None, new: _K | None) -> Sorted[_K]:
        """Without `old` and with `new` (either None: nothing), itself when they are the same."""
        if old == new:
            return self
        changed = self if old is None else self.remove(old)
        return changed if new is None else changed.add(new)

    def rank(self, key: _K) -> int:
        """How many keys are smaller than `key`."""
        if not self._chunks:
            return 0
        at = max(0, bisect_left(self._firsts, key) - 1)
        return sum(map(len, self._chunks[:at])) + bisect_left(self._chunks[at], key)

    def __iter__(self) -> Iterator[_K]:
        return chain.from_iterable(self._chunks)

    def __len__(self) -> int:
        return self._length

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sorted) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Sorted({list(self)!r})"


def _kinds_of(child: Child) -> tuple[Kind, ...]:
    """The eight counts `child` is in: each of its version, signaled and acked, or any."""
    v, s, a = child.version, bool(child.signaled), child.acked
    return (v, s, a), (v, s, None), (v, None, a), (v, None, None), (None, s, a), (None, s, None), (None, None, a), (None, None, None)


def _unacked_key(child: Child) -> tuple[float, int] | None:
    return None if child.acked else (child.spinup_at, child.pid)


def _escalation_key(child: Child) -> tuple[float, int] | None:
    if child.last_signaled_at is None or child.killed:
        return None
    return (child.last_signaled_at, child.pid)


def _stop_key(child: Child) -> tuple[bool, float, int] | None:
    return None if child.signaled else (child.acked, child.spinup_at, child.pid)


def _pinged_key(child: Child) -> tuple[float, int] | None:
    if child.pinged_at is None or child.signaled or child.verdict is not None:
        return None
    return (child.pinged_at, child.pid)


def _condemned_key(child: Child) -> tuple[float, int] | None:
    return None if child.verdict is None or child.signaled else (child.spinup_at, child.pid)


SMALL = 8
"""Up to this many children, an index is computed by a scan when first asked for and not
carried through changes: at that size a scan is cheaper than keeping the index up to date
(the model checker's pools, and most test states, are this small)."""

Order = Sorted[tuple[float, int]]
StopOrder = Sorted[tuple[bool, float, int]]


class Children(Mapping[int, "Child"]):
    """pid -> Child, with the indexes above. Immutable: `set` and `delete` return a new one.

    Each index is made from the children when first asked for (None until
    then), and from then on, above SMALL children, kept up to date by every
    change. Asking is cheap either way: the first time is one scan, and a
    step asks a state made by a change whose indexes came along.
    """

    __slots__ = ("_map", "_kinds", "_unacked", "_escalating", "_unsignaled", "_indexes", "_pinged", "_condemned")

    _map: immutables.Map[int, Child]
    _kinds: dict[Kind, int] | None
    _unacked: Order | None
    _escalating: Order | None
    _unsignaled: dict[int, StopOrder] | None
    _indexes: Sorted[int] | None
    _pinged: Order | None
    _condemned: Order | None

    @classmethod
    def of(cls, children: Mapping[int, Child] | Iterable[Child]) -> Children:
        """From a plain mapping pid -> Child (or the children themselves)."""
        if type(children) is Children:
            return children
        return cls._make(Map(children if isinstance(children, Mapping) else {c.pid: c for c in children}))

    @staticmethod
    def empty() -> Children:
        return _NO_CHILDREN

    @classmethod
    def _make(
        cls,
        map_: immutables.Map[int, Child],
        kinds: dict[Kind, int] | None = None,
        unacked: Order | None = None,
        escalating: Order | None = None,
        unsignaled: dict[int, StopOrder] | None = None,
        indexes: Sorted[int] | None = None,
        pinged: Order | None = None,
        condemned: Order | None = None,
    ) -> Children:
        made = object.__new__(cls)
        made._map, made._kinds, made._indexes = map_, kinds, indexes
        made._unacked, made._escalating, made._unsignaled = unacked, escalating, unsignaled
        made._pinged, made._condemned = pinged, condemned
        return made

    # --- the indexes, made from the children -------------------------------------

    def _count_kinds(self) -> dict[Kind, int]:
        exact: dict[Kind, int] = {}  # children of one (version, signaled, acked) count alike
        for child in self._map.values():
            kind = (child.version, bool(child.signaled), child.acked)
            exact[kind] = exact.get(kind, 0) + 1
        kinds: dict[Kind, int] = {}
        for (version, signaled, acked), n in exact.items():
            for v in (version, None):
                for s in (signaled, None):
                    for a in (acked, None):
                        kinds[v, s, a] = kinds.get((v, s, a), 0) + n
        self._kinds = kinds
        return kinds

    def _order_unacked(self) -> Order:
        self._unacked = Sorted.of([(c.spinup_at, c.pid) for c in self._map.values() if not c.acked])
        return self._unacked

    def _order_escalating(self) -> Order:
        self._escalating = Sorted.of([key for key in map(_escalation_key, self._map.values()) if key is not None])
        return self._escalating

    def _order_unsignaled(self) -> dict[int, StopOrder]:
        by_version: dict[int, list[tuple[bool, float, int]]] = {}
        for child in self._map.values():
            if (stop := _stop_key(child)) is not None:
                by_version.setdefault(child.version, []).append(stop)
        self._unsignaled = {version: Sorted.of(keys) for version, keys in by_version.items()}
        return self._unsignaled

    def _order_pinged(self) -> Order:
        self._pinged = Sorted.of([key for key in map(_pinged_key, self._map.values()) if key is not None])
        return self._pinged

    def _order_condemned(self) -> Order:
        self._condemned = Sorted.of([key for key in map(_condemned_key, self._map.values()) if key is not None])
        return self._condemned

    def _order_indexes(self) -> Sorted[int]:
        self._indexes = Sorted.of([c.index for c in self._map.values()])
        return self._indexes

    # --- changes --------------------------------------------------------------

    def set(self, child: Child) -> Children:
        """With `child` added, or replacing the child of its pid."""
        old = self._map.get(child.pid)
        return self._change(old, child, self._map.set(child.pid, child))

    def delete(self, pid: int) -> Children:
        return self._change(self._map[pid], None, self._map.delete(pid))

    def _change(self, old: Child | None, new: Child | None, map_: immutables.Map[int, Child]) -> Children:
        """The indexes this one has, brought up to date (above SMALL children; at or below, none)."""
        if len(map_) <= SMALL:
            return Children._make(map_)
        kinds = self._kinds
        if kinds is not None:
            old_kinds = None if old is None else _kinds_of(old)
            new_kinds = None if new is None else _kinds_of(new)
            if old_kinds != new_kinds:
                kinds = dict(kinds)
                for kind in old_kinds or ():
                    kinds[kind] -= 1
                for kind in new_kinds or ():
                    kinds[kind] = kinds.get(kind, 0) + 1
        unsignaled = self._unsignaled
        if unsignaled is not None:
            old_stop = None if old is None else (old.version, _stop_key(old))
            new_stop = None if new is None else (new.version, _stop_key(new))
            if old_stop != new_stop:
                unsignaled = dict(unsignaled)
                if old_stop is not None and old_stop[1] is not None:
                    unsignaled[old_stop[0]] = unsignaled[old_stop[0]].remove(old_stop[1])
                if new_stop is not None and new_stop[1] is not None:
                    unsignaled[new_stop[0]] = unsignaled.get(new_stop[0], _NO_KEYS).add(new_stop[1])
        unacked, escalating, indexes = self._unacked, self._escalating, self._indexes
        pinged, condemned = self._pinged, self._condemned
        return Children._make(
            map_,
            kinds,
            None if unacked is None else unacked.swap(_unacked_key(old) if old else None, _unacked_key(new) if new else None),
            None if escalating is None else escalating.swap(_escalation_key(old) if old else None, _escalation_key(new) if new else None),
            unsignaled,
            None if indexes is None else indexes.swap(old.index if old else None, new.index if new else None),
            None if pinged is None else pinged.swap(_pinged_key(old) if old else None, _pinged_key(new) if new else None),
            None if condemned is None else condemned.swap(_condemned_key(old) if old else None, _condemned_key(new) if new else None),
        )

    # --- queries --------------------------------------------------------------

    def count(self, version: int | None = None, *, signaled: bool | None = None, acked: bool | None = None) -> int:
        """How many children match (None: any)."""
        kinds = self._kinds if self._kinds is not None else self._count_kinds()
        return kinds.get((version, signaled, acked), 0)

    def unsignaled_versions(self) -> list[int]:
        """The versions some unsignaled child runs."""
        unsignaled = self._unsignaled if self._unsignaled is not None else self._order_unsignaled()
        return [version for version, keys in unsignaled.items() if len(keys)]

    def unacked_by_spinup(self) -> Order:
        """(spinup_at, pid) of every un-ACKed child, earliest first."""
        return self._unacked if self._unacked is not None else self._order_unacked()

    def escalating_by_signal_time(self) -> Order:
        """(last_signaled_at, pid) of every signaled child not yet killed, earliest first."""
        return self._escalating if self._escalating is not None else self._order_escalating()

    def unsignaled_by_priority(self, version: int) -> StopOrder:
        """(acked, spinup_at, pid) of the unsignaled children of `version`: un-ACKed first, then the oldest."""
        unsignaled = self._unsignaled if self._unsignaled is not None else self._order_unsignaled()
        return unsignaled.get(version, _NO_KEYS)

    def pinged_by_time(self) -> Order:
        """(pinged_at, pid) of every unsignaled child that pinged and no health rule condemned, earliest first."""
        return self._pinged if self._pinged is not None else self._order_pinged()

    def condemned(self) -> Order:
        """(spinup_at, pid) of every unsignaled child a health rule condemned, oldest first."""
        return self._condemned if self._condemned is not None else self._order_condemned()

    def indexes(self) -> Sorted[int]:
        """Every child's index, in order."""
        return self._indexes if self._indexes is not None else self._order_indexes()

    # --- Mapping ----------------------------------------------------------------

    def __getitem__(self, pid: int) -> Child:
        return self._map[pid]

    def keys(self) -> immutables.MapKeys[int]:  # type: ignore[override]  # the map's own views: no Python-level iteration
        return self._map.keys()

    def values(self) -> immutables.MapValues[Child]:  # type: ignore[override]
        return self._map.values()

    def items(self) -> immutables.MapItems[int, Child]:  # type: ignore[override]
        return self._map.items()

    def get(self, pid: int, default: Child | None = None) -> Child | None:  # type: ignore[override]
        return self._map.get(pid, default)

    def __contains__(self, pid: object) -> bool:
        return pid in self._map

    def __iter__(self) -> Iterator[int]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Children):
            return self._map == other._map
        if isinstance(other, Mapping):
            return len(self) == len(other) and all(other.get(pid, None) == child for pid, child in self._map.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"Children({dict(sorted(self._map.items()))!r})"

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Children.of, (dict(self._map),))


class PendingSpawns(Mapping[int, "PendingSpawn"]):
    """spawn id -> PendingSpawn, with counts by version and the indexes in use."""

    __slots__ = ("_map", "_versions", "_indexes")

    _map: immutables.Map[int, PendingSpawn]
    _versions: Mapping[int, int]
    _indexes: Sorted[int]

    @classmethod
    def of(cls, pending: Mapping[int, PendingSpawn]) -> PendingSpawns:
        if type(pending) is PendingSpawns:
            return pending
        versions: dict[int, int] = {}
        for spawn in pending.values():
            versions[spawn.version] = versions.get(spawn.version, 0) + 1
        return cls._make(Map(pending), versions, Sorted.of(p.index for p in pending.values()))

    @staticmethod
    def empty() -> PendingSpawns:
        return _NO_SPAWNS

    @classmethod
    def _make(cls, map_: immutables.Map[int, PendingSpawn], versions: Mapping[int, int], indexes: Sorted[int]) -> PendingSpawns:
        made = object.__new__(cls)
        made._map, made._versions, made._indexes = map_, versions, indexes
        return made

    def set(self, spawn: PendingSpawn) -> PendingSpawns:
        if spawn.spawn_id in self._map:
            return self.delete(spawn.spawn_id).set(spawn)
        versions = dict(self._versions)
        versions[spawn.version] = versions.get(spawn.version, 0) + 1
        return PendingSpawns._make(self._map.set(spawn.spawn_id, spawn), versions, self._indexes.add(spawn.index))

    def delete(self, spawn_id: int) -> PendingSpawns:
        spawn = self._map[spawn_id]
        versions = dict(self._versions)
        versions[spawn.version] -= 1
        return PendingSpawns._make(self._map.delete(spawn_id), versions, self._indexes.remove(spawn.index))

    def count(self, version: int | None = None) -> int:
        return len(self._map) if version is None else self._versions.get(version, 0)

    def indexes(self) -> Sorted[int]:
        return self._indexes

    def __getitem__(self, spawn_id: int) -> PendingSpawn:
        return self._map[spawn_id]

    def keys(self) -> immutables.MapKeys[int]:  # type: ignore[override]  # the map's own views: no Python-level iteration
        return self._map.keys()

    def values(self) -> immutables.MapValues[PendingSpawn]:  # type: ignore[override]
        return self._map.values()

    def items(self) -> immutables.MapItems[int, PendingSpawn]:  # type: ignore[override]
        return self._map.items()

    def get(self, spawn_id: int, default: PendingSpawn | None = None) -> PendingSpawn | None:  # type: ignore[override]
        return self._map.get(spawn_id, default)

    def __contains__(self, spawn_id: object) -> bool:
        return spawn_id in self._map

    def __iter__(self) -> Iterator[int]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PendingSpawns):
            return self._map == other._map
        if isinstance(other, Mapping):
            return len(self) == len(other) and all(other.get(sid, None) == spawn for sid, spawn in self._map.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"PendingSpawns({dict(sorted(self._map.items()))!r})"

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (PendingSpawns.of, (dict(self._map),))


_NO_KEYS: Sorted[tuple[bool, float, int]] = Sorted.of(())
_NO_CHILDREN = Children.of({})
_NO_SPAWNS = PendingSpawns.of({})
