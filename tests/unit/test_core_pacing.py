"""Spin-up pacing (EXTENSIONS §4, spec/README.md §4 rule 5 and L4) at pool sizes the model checker cannot reach.

L4: paced by ACKs, K missing workers are all replaced within ceil(K / max_unacked)
ACK rounds, and no time needs to pass but the ACKs' own. The rounds are played by
`spec.model_check.ack_rounds`, the same world the model checker uses.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from einhorn.core import pool
from einhorn.core.config import Config, Pacing
from einhorn.core.events import ChildExited, MasterStarted
from einhorn.core.state import State, initial_state
from einhorn.core.step import step
from spec import invariants
from spec.model_check import ack_rounds, rounds_allowed
from tests.unit.fixtures.core_world import make_config


def full_pool(config: Config) -> State:
    """A fresh master whose first fill is up and ACKed: itself one ACK round."""
    state, _ = step(initial_state(config), MasterStarted(0.0))
    played = ack_rounds(state, limit=1)
    assert played.problems == [] and played.rounds == 1 and pool.ack_count(played.state) == config.number
    return played.state


def crash(state: State, count: int) -> State:
    """`count` ACKed workers die at once (an OOM kill), 10 s after the pool came up."""
    now = state.clock + 10.0
    for pid in sorted(state.children)[:count]:
        state, _ = step(state, ChildExited(pid, None, 9, now))
        assert invariants.check_state(state) == []
    return state


@settings(max_examples=60, deadline=None)
@given(number=st.integers(1, 60), max_unacked=st.integers(1, 8), lost=st.floats(0.0, 1.0), manual=st.booleans())
def test_k_missing_workers_are_replaced_in_exactly_ceil_k_over_max_unacked_ack_rounds(
    number: int, max_unacked: int, lost: float, manual: bool
) -> None:
    config = make_config(number=number, max_unacked=max_unacked, ack_timer=None if manual else 1.0)
    killed = max(1, round(lost * number))
    state = crash(full_pool(config), killed)
    allowed = -(-killed // max_unacked)
    assert rounds_allowed(state) == allowed
    played = ack_rounds(state, limit=allowed)
    assert played.problems == [] and played.rounds == allowed  # never slower, and max_unacked allows no faster
    if manual:
        assert ("tick",) not in played.actions and played.state.clock == state.clock  # no time passes at all
    else:
        assert played.actions.count(("tick",)) == played.rounds  # each round is one timer ACK
        assert played.state.clock == state.clock + played.rounds * 1.0


@settings(max_examples=20, deadline=None)
@given(number=st.integers(3, 30), max_unacked=st.integers(1, 4))
def test_under_the_interval_the_same_replacement_waits_for_time(number: int, max_unacked: int) -> None:
    """The original rule: one spin-up per interval, so manual ACKs alone cannot replace two workers."""
    config = make_config(number=number, max_unacked=max_unacked, ack_timer=None, pacing=Pacing.INTERVAL)
    played = ack_rounds(crash(full_pool(config), 2), limit=10)
    assert played.problems and "no worker to ACK, no spawn to answer" in played.problems[0]
