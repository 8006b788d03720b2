"""einhorn.core.serialize: the state document that crosses a master re-exec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from einhorn.core.config import MAX_DURATION, RUNTIME_SETTINGS, Pacing
from einhorn.core.events import MasterStarted
from einhorn.core.record import replace
from einhorn.core.serialize import FORMAT, StateFormatError, from_plain, to_plain
from einhorn.core.state import (
    Child,
    PendingSpawn,
    Reexec,
    ReexecPhase,
    ReexecPurpose,
    State,
    Subscriber,
    UpgradeKind,
    Verdict,
    initial_state,
)
from einhorn.core.step import step
from tests.unit.fixtures.core_world import BASE_CONFIG, make_config, played_states, state_problems

FIXTURES = Path(__file__).parent / "fixtures"


def through_json(document: object) -> object:
    """What the state passer's pipe carries: the document must be plain JSON data."""
    return json.loads(json.dumps(document, allow_nan=False))


def restorable(state: State) -> State:
    """`exit_code` is not carried over: a master that is exiting does not re-exec. Nor what the
    supervisor was told (the new image tells it again) or a worker's notify STATUS."""
    children = {pid: replace(c, status=None) for pid, c in state.children.items()}
    return replace(state, exit_code=None, supervisor_ready=False, watchdog_at=None, children=children)


# --- round trips ----------------------------------------------------------------------------

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
maybe_text = st.none() | st.text(max_size=6)

children = st.builds(
    Child,
    pid=st.integers(1, 2**22),
    version=st.integers(0, 50),
    index=st.integers(0, 2000),
    spinup_at=finite,
    acked=st.booleans(),
    signaled=st.frozensets(st.sampled_from(["USR2", "TERM", "QUIT", "KILL", "HUP"])),
    last_signaled_at=st.none() | finite,
    killed=st.booleans(),
    pinged_at=st.none() | finite,
    pinged_request_id=maybe_text,
    rss_bytes=st.none() | st.integers(0, 2**40),
    measured_at=st.none() | finite,
    verdict=st.none() | st.sampled_from(Verdict),
    verdict_at=st.none() | finite,
)
pendings = st.builds(PendingSpawn, st.integers(0, 10**6), st.integers(0, 2000), st.integers(0, 50), finite)
subscribers = st.tuples(st.builds(Subscriber, st.integers(0, 2**16), maybe_text)).map(tuple) | st.lists(
    st.builds(Subscriber, st.integers(0, 2**16), maybe_text), max_size=3
).map(tuple)
reexecs = st.builds(
    Reexec,
    st.sampled_from(ReexecPurpose),
    subscribers,
    st.integers(0, 10**6),
    finite,
    st.sampled_from(ReexecPhase),
)
runtime_configs = st.builds(
    make_config,
    number=st.integers(1, 1000),
    seconds=st.floats(min_value=1e-6, max_value=MAX_DURATION),
    pacing=st.sampled_from(Pacing),
    max_unacked=st.integers(1, 64),
    max_upgrade_additional=st.none() | st.integers(0, 64),
    signal_timeout=st.none() | st.integers(1, MAX_DURATION),
    ack_timer=st.none() | st.floats(0, 60),
)


@st.composite
def arbitrary_states(draw: st.DrawFn) -> State:
    """Any well-typed state, reachable or not: the document format must not care."""
    kids = draw(st.lists(children, max_size=6, unique_by=lambda c: c.pid))
    pending = draw(st.lists(pendings, max_size=4, unique_by=lambda p: p.spawn_id))
    return State(
        config=draw(runtime_configs),
        version=draw(st.integers(0, 10**6)),
        children={c.pid: c for c in kids},
        pending={p.spawn_id: p for p in pending},
        next_spawn_id=draw(st.integers(0, 10**9)),
        respawn=draw(st.booleans()),
        upgrading=draw(st.none() | st.sampled_from(UpgradeKind)),
        upgrade_subscribers=draw(subscribers),
        reexec=draw(st.none() | reexecs),
        next_check_id=draw(st.integers(0, 10**6)),
        shutdown_signal=draw(st.none() | st.sampled_from(["USR2", "TERM", "QUIT"])),
        deaths_before_ack=draw(st.integers(0, 10**12)),
        last_spinup_at=draw(st.none() | finite),
        clock=draw(finite),
        verbosity=draw(st.integers(0, 2)),
    )


@settings(max_examples=100, deadline=None)
@given(arbitrary_states())
def test_round_trip_of_arbitrary_states(state: State) -> None:
    assert from_plain(through_json(to_plain(state)), state.config) == (state, [])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(played_states())
def test_round_trip_of_reachable_states(state: State) -> None:
    assert from_plain(through_json(to_plain(state)), state.config) == (restorable(state), [])


@settings(max_examples=40, deadline=None)
@given(arbitrary_states())
def test_runtime_settings_travel_in_the_document_and_override_the_command_line(state: State) -> None:
    restored, notes = from_plain(to_plain(state), BASE_CONFIG)
    assert notes == []
    for name in RUNTIME_SETTINGS:
        assert getattr(restored.config, name) == getattr(state.config, name)
    # Everything else comes from the new command line.
    assert restored.config.ack_timer == BASE_CONFIG.ack_timer
    assert restored.config.display.master_pid == BASE_CONFIG.display.master_pid


def test_document_shape() -> None:
    state = replace(
        initial_state(make_config(number=2)),
        version=1,
        children={7: Child(7, version=1, index=0, spinup_at=1.5, acked=True, signaled=frozenset({"USR2"}))},
        pending={3: PendingSpawn(3, 1, 1, 2.0)},
        next_spawn_id=4,
        upgrade_subscribers=(Subscriber(9, "u"),),
        upgrading=UpgradeKind.FLEET,
        clock=2.5,
    )
    assert to_plain(state) == {
        "format": FORMAT,
        "version": 1,
        "children": [
            {
                "pid": 7,
                "version": 1,
                "index": 0,
                "spinup_at": 1.5,
                "acked": True,
                "signaled": ["USR2"],
                "last_signaled_at": None,
                "killed": False,
                "pinged_at": None,
                "pinged_request_id": None,
                "rss_bytes": None,
                "measured_at": None,
                "verdict": None,
                "verdict_at": None,
            }
        ],
        "pending": [[3, 1, 1, 2.0]],
        "next_spawn_id": 4,
        "respawn": True,
        "upgrading": "fleet",
        "upgrade_subscribers": [[9, "u"]],
        "reexec": None,
        "next_check_id": 0,
        "shutdown_signal": None,
        "deaths_before_ack": 0,
        "last_spinup_at": None,
        "clock": 2.5,
        "verbosity": 1,
        "settings": {
            "number": 2,
            "seconds": 1.0,
            "max_unacked": 1,
            "max_upgrade_additional": None,
            "signal_timeout": None,
            "pacing": "ack",
        },
        "generations": [],
        "rollout": None,
    }


@pytest.mark.parametrize("pacing", list(Pacing))
def test_the_pacing_travels_across_a_re_exec_and_a_restored_seconds_does_not_change_it(pacing: Pacing) -> None:
    """Restoring `seconds` is not an operator choosing the interval (as `config {seconds: N}` is)."""
    state = initial_state(make_config(seconds=2.0, pacing=pacing))
    restored, notes = from_plain(to_plain(state), make_config(pacing=Pacing.ACK if pacing is Pacing.INTERVAL else Pacing.INTERVAL))
    assert notes == [] and restored.config.pacing is pacing and restored.config.seconds == 2.0


@pytest.mark.parametrize("pacing", list(Pacing))
def test_a_document_from_before_the_pacing_keeps_the_command_lines(pacing: Pacing) -> None:
    document = to_plain(initial_state(make_config(seconds=3.0)))
    settings = document["settings"]
    assert isinstance(settings, dict)
    del settings["pacing"]
    restored, notes = from_plain(document, make_config(pacing=pacing))
    assert notes == [] and restored.config.pacing is pacing and restored.config.seconds == 3.0


def test_an_unknown_pacing_in_the_document_is_ignored_with_a_note() -> None:
    document = to_plain(initial_state(make_config()))
    settings = document["settings"]
    assert isinstance(settings, dict)
    settings["pacing"] = "fast"
    restored, notes = from_plain(document, make_config(pacing=Pacing.INTERVAL))
    assert notes == ["ignored setting 'pacing'='fast': must be one of ack, interval"]
    assert restored.config.pacing is Pacing.INTERVAL


# --- older documents ------------------------------------------------------------------------


def load_fixture(name: str) -> object:
    document: object = json.loads((FIXTURES / name).read_text())
    return document


def test_restore_from_format_0_fills_defaults_and_drops_unknown_keys() -> None:
    state, notes = from_plain(load_fixture("state_format_0.json"), make_config(number=5))
    assert "state: added default values for ['shutdown_signal']" in notes  # no re-exec was in progress: none is restored
    assert "state: deleted unknown values for ['generation']" in notes
    assert "child: added default values for ['killed', 'pinged_at', 'pinged_request_id']" in notes
    assert "child: deleted unknown values for ['spinup_time_wall']" in notes
    assert any("gc_before_fork" in note for note in notes)
    assert state.version == 3 and state.upgrading is UpgradeKind.SMOOTH
    assert state.reexec_purpose is None and state.reexec_subscribers == () and state.shutdown_signal is None
    assert state.upgrade_subscribers == (Subscriber(5, "12"),)
    assert state.config.number == 2 and state.config.seconds == 1.5  # from the document, not the command line
    assert sorted(state.children) == [4100, 4101, 4102]
    assert state.children[4101] == Child(
        4101, version=2, index=1, spinup_at=3.0, acked=True, signaled=frozenset({"USR2"}), last_signaled_at=14.0
    )
    assert state.children[4100].killed is False and state.children[4100].pinged_at is None
    assert state.pending == {6: PendingSpawn(6, 3, 3, 19.5)} and state.next_spawn_id == 7
    # The restored master carries on with the smooth upgrade where the old one left it.
    after, effects = step(state, MasterStarted(20.5, restored=True))
    assert state_problems(after) == []
    assert after.upgrading is UpgradeKind.SMOOTH and after.version == 3


def test_a_health_record_travels_across_a_re_exec() -> None:
    child = Child(7, version=1, index=0, spinup_at=1.0, acked=True, rss_bytes=3 << 20, measured_at=2.0, verdict=Verdict.RSS_LIMIT, verdict_at=2.0)
    state = replace(initial_state(make_config()), version=1, children={7: child}, clock=2.5)
    restored, notes = from_plain(through_json(to_plain(state)), state.config)
    assert notes == [] and restored.children[7] == child


def test_restore_from_format_2_gives_every_child_an_empty_health_record_and_keeps_its_pings() -> None:
    """Format 2 (before the health rules) had monotonic pings and no health keys: only the format is noted."""
    document = to_plain(replace(initial_state(make_config()), children={7: Child(7, version=0, index=0, spinup_at=1.0, pinged_at=1.5)}))
    children = document["children"]
    assert isinstance(children, list)
    for child in children:
        for key in ("rss_bytes", "measured_at", "verdict", "verdict_at"):
            del child[key]
    document["format"] = 2
    restored, notes = from_plain(through_json(document), make_config())
    assert notes == ["format 2 restored by format 3"]
    assert restored.children[7] == Child(7, version=0, index=0, spinup_at=1.0, pinged_at=1.5)


def test_restore_of_a_minimal_document_uses_defaults_for_everything() -> None:
    state, notes = from_plain({}, make_config(number=3))
    assert state == initial_state(make_config(number=3))
    assert any("added default values" in note for note in notes)


def test_unacceptable_settings_are_ignored_with_a_note() -> None:
    document = to_plain(initial_state(make_config(number=4)))
    document["settings"] = {"number": 0, "max_unacked": 2}
    state, notes = from_plain(document, make_config(number=4))
    assert state.config.number == 4 and state.config.max_unacked == 2
    assert notes == ["ignored setting 'number'=0: must be an integer in [1, 1000]"]


# --- malformed documents --------------------------------------------------------------------


def valid_document() -> dict[str, object]:
    state = replace(
        initial_state(make_config()),
        children={7: Child(7, version=0, index=0, spinup_at=1.0)},
        pending={1: PendingSpawn(1, 1, 0, 1.0)},
        next_spawn_id=2,
        upgrade_subscribers=(Subscriber(3, "x"),),
        upgrading=UpgradeKind.SMOOTH,
    )
    return to_plain(state)


def child_with(**changes: object) -> dict[str, object]:
    document = valid_document()
    children = document["children"]
    assert isinstance(children, list) and isinstance(children[0], dict)
    return {**document, "children": [{**children[0], **changes}]}


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        "state",
        42,
        {**valid_document(), "children": {"7": {}}},
        {**valid_document(), "children": ["not a mapping"]},
        {**valid_document(), "pending": [[1, 1]]},
        {**valid_document(), "pending": "none"},
        {**valid_document(), "upgrading": "sideways"},
        {**valid_document(), "reexec": {"purpose": "vacation", "subscribers": [], "check_id": 0, "deadline": 0.0, "phase": "checking"}},
        {**valid_document(), "reexec": {"purpose": "reload", "subscribers": [], "check_id": 0, "deadline": 0.0, "phase": "napping"}},
        {**valid_document(), "reexec": {"purpose": "reload"}},
        {**valid_document(), "format": 1, "reexec_purpose": "vacation"},
        {**valid_document(), "format": 1, "children": [{"pid": 7, "kind": "worker", "version": 0, "index": 0, "spinup_at": None}]},
        {**valid_document(), "upgrade_subscribers": [[3]]},
        {**valid_document(), "upgrade_subscribers": [[3, "x", "extra"]]},
        {**valid_document(), "version": "3"},
        {**valid_document(), "version": True},
        {**valid_document(), "clock": None},
        {**valid_document(), "settings": ["number", 3]},
        child_with(pid="7"),
        child_with(signaled="USR2"),
        child_with(spinup_at=None),
    ],
)
def test_malformed_documents_raise_state_format_error(document: object) -> None:
    with pytest.raises(StateFormatError):
        from_plain(document, make_config())


def test_the_valid_document_used_above_is_valid() -> None:
    state, notes = from_plain(valid_document(), make_config())
    assert notes == [] and list(state.children) == [7]
