"""`replace` for the core's frozen records: `dataclasses.replace`'s meaning at a third of its cost.

The core makes a new `State` (and `Child`) several times per event; the generic
`dataclasses.replace` walks and checks every field's definition on each call,
which with 1000 workers starting was a quarter of a spawn's time in the core.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

R = TypeVar("R")

_INIT_FIELDS: dict[type, tuple[str, ...]] = {}
"""Per record class, the names its constructor takes (as `dataclasses.replace` passes them on)."""


def replace(record: R, /, **changes: object) -> R:
    """A copy of the dataclass instance `record` with `changes`, made by its constructor (so its
    `__post_init__` runs), as `dataclasses.replace` does."""
    cls = type(record)
    names = _INIT_FIELDS.get(cls)
    if names is None:
        names = _INIT_FIELDS[cls] = tuple(f.name for f in fields(record) if f.init)  # type: ignore[arg-type]
    for name in names:
        if name not in changes:
            changes[name] = getattr(record, name)
    return cls(**changes)
