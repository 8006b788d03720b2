"""`einhorn.core.records.replace`: the same records as `dataclasses.replace`, for the core's hot path."""

from __future__ import annotations

import dataclasses

import pytest

from einhorn.core.config import Config
from einhorn.core.indexed import Children
from einhorn.core.records import replace
from einhorn.core.state import Child, State, initial_state


def test_replace_makes_what_dataclasses_replace_makes() -> None:
    state = initial_state(Config(number=3))
    child = Child(pid=7, version=0, index=1, spinup_at=2.0)
    assert replace(state, clock=5.0, verbosity=0) == dataclasses.replace(state, clock=5.0, verbosity=0)
    assert replace(child, acked=True) == dataclasses.replace(child, acked=True)
    assert replace(child) == child and replace(child) is not child


def test_replace_runs_the_constructor_checks() -> None:
    """State's `__post_init__` indexes a plain mapping: a copy made without the constructor would not."""
    child = Child(pid=7, version=0, index=1, spinup_at=2.0)
    copy = replace(initial_state(Config(number=3)), children={7: child})
    assert type(copy.children) is Children and copy.children[7] == child


def test_replace_refuses_a_name_the_record_does_not_take() -> None:
    with pytest.raises(TypeError):
        replace(Child(pid=7, version=0, index=1, spinup_at=2.0), colour="red")


def test_replace_keeps_the_type() -> None:
    assert type(replace(initial_state(Config(number=3)))) is State
