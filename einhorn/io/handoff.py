"""The hand-off registry: every descriptor that survives a re-exec, registered once by its owner.

An owner (the listeners, the command server, later the notify socket or the
metrics listener) registers a *provider*: a function that lists its
descriptors as they are right now, each with a kind and the plain data the
new image needs to adopt it. The exec path iterates the registry: it makes
every listed fd inheritable, writes the list into the state document, and
restores each fd's inheritability if the exec fails. The new image hands the
list back, and each owner `claim`s its kind. Adding a descriptor kind touches
its owner and nothing in the exec path.

Owners with no descriptor but facts to carry over (the event stream's
sequence number, the metrics' counters) register a *data provider* under a
key instead (`register_data`); the new image reads it back with `claim_data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from einhorn.core.record import dataclass, field


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One descriptor that survives a re-exec, with what its owner needs to adopt it."""

    kind: str
    """Who adopts it in the new image: "listener", "command_server", "connection", ..."""
    fd: int
    data: Mapping[str, object] = field(default_factory=dict)
    """JSON-able facts the owner needs to adopt it (an index, buffered bytes as latin-1 text, ...)."""


Provider = Callable[[], Iterable[Descriptor]]


class Handoff:
    def __init__(self, restored: Sequence[Descriptor] = (), data: Mapping[str, object] | None = None) -> None:
        self._providers: list[Provider] = []
        self._unclaimed = list(restored)
        self._data_providers: dict[str, Callable[[], object]] = {}
        self._restored_data = dict(data or {})

    def register_data(self, key: str, provider: Callable[[], object]) -> None:
        """`provider()` (JSON-able) crosses the next re-exec under `key`."""
        self._data_providers[key] = provider

    def data(self) -> dict[str, object]:
        return {key: provider() for key, provider in self._data_providers.items()}

    def claim_data(self, key: str) -> object:
        """What the old image's provider for `key` gave (None if it had none)."""
        return self._restored_data.pop(key, None)

    def register(self, provider: Provider) -> None:
        self._providers.append(provider)

    def descriptors(self) -> list[Descriptor]:
        return [d for provider in self._providers for d in provider()]

    def claim(self, kind: str) -> list[Descriptor]:
        """The restored descriptors of `kind`, in the order they were exported; each is claimed once."""
        mine = [d for d in self._unclaimed if d.kind == kind]
        self._unclaimed = [d for d in self._unclaimed if d.kind != kind]
        return mine

    def unclaimed(self) -> list[Descriptor]:
        return list(self._unclaimed)


def make_inheritable(descriptors: Iterable[Descriptor]) -> Callable[[], None]:
    """Make every descriptor inheritable for the exec; returns the undo for a failed exec."""
    before = [(d.fd, os.get_inheritable(d.fd)) for d in descriptors]
    for fd, _ in before:
        os.set_inheritable(fd, True)

    def undo() -> None:
        for fd, inheritable in before:
            os.set_inheritable(fd, inheritable)

    return undo


def to_plain(descriptors: Iterable[Descriptor]) -> list[dict[str, object]]:
    return [{"kind": d.kind, "fd": d.fd, "data": dict(d.data)} for d in descriptors]


def from_plain(items: object) -> list[Descriptor]:
    """The inverse of `to_plain`; ValueError/TypeError/KeyError on a malformed list."""
    if not isinstance(items, list):
        raise TypeError(f"descriptors: expected a list, got {type(items).__name__}")
    found = []
    for item in items:
        if not isinstance(item, Mapping):
            raise TypeError(f"descriptor: expected a mapping, got {type(item).__name__}")
        kind, fd, data = item["kind"], item["fd"], item.get("data", {})
        if not isinstance(kind, str) or isinstance(fd, bool) or not isinstance(fd, int) or not isinstance(data, Mapping):
            raise ValueError(f"malformed descriptor {item!r}")
        found.append(Descriptor(kind, fd, dict(data)))
    return found
