"""einhorn.core.listeners: a listener that stopped accepting is logged once and shown in `state`."""

from __future__ import annotations

from einhorn.core.config import ListenerInfo
from einhorn.core.effects import Log, LogLevel
from einhorn.core.events import ListenerHealthChanged, MasterStarted
from einhorn.core.report import snapshot, status
from einhorn.core.state import State, initial_state
from tests.unit.fixtures.core_world import make_config, run

ADDRESSES = ("127.0.0.1:8080", "[::1]:8081")


def serving() -> State:
    config = make_config(
        number=1, binds=("127.0.0.1:8080", "[::1]:8081"), bound_ports=(8080, 8081),
        listeners=(ListenerInfo("AF_INET", ADDRESSES[0]), ListenerInfo("AF_INET6", ADDRESSES[1])),
    )  # fmt: skip
    state, _ = run(initial_state(config), MasterStarted(0.0))
    return state


def listeners_shown(state: State) -> object:
    report = snapshot(state, wall_offset=0.0)["state"]
    assert isinstance(report, dict)
    return report["listeners"]


def test_state_shows_every_listener_accepting_at_first() -> None:
    assert listeners_shown(serving()) == [
        {"address": "127.0.0.1:8080", "family": "AF_INET", "name": None, "accepting": True},
        {"address": "[::1]:8081", "family": "AF_INET6", "name": None, "accepting": True},
    ]


def test_a_stopped_listener_is_warned_about_once_and_shown() -> None:
    state, effects = run(serving(), ListenerHealthChanged(1, False, 5.0))
    (warning,) = [e for e in effects if isinstance(e, Log)]
    assert warning.level is LogLevel.ERROR
    assert warning.message.startswith("WARNING: Listener 1 ([::1]:8081) stopped accepting connections")
    assert "shutdown()" in warning.message and "docs/production.md" in warning.message
    assert listeners_shown(state) == [
        {"address": "127.0.0.1:8080", "family": "AF_INET", "name": None, "accepting": True},
        {"address": "[::1]:8081", "family": "AF_INET6", "name": None, "accepting": False},
    ]
    again, effects = run(state, ListenerHealthChanged(1, False, 7.0))
    assert not [e for e in effects if isinstance(e, Log)] and listeners_shown(again) == listeners_shown(state)


def test_a_listener_that_accepts_again_is_noted_and_shown() -> None:
    stopped, _ = run(serving(), ListenerHealthChanged(0, False, 5.0))
    state, effects = run(stopped, ListenerHealthChanged(0, True, 7.0))
    assert Log(LogLevel.INFO, "Listener 0 (127.0.0.1:8080) accepts connections again") in effects
    assert listeners_shown(state) == listeners_shown(serving())


def test_the_report_of_a_master_without_listeners_has_an_empty_list() -> None:
    state, _ = run(initial_state(make_config()), MasterStarted(0.0))
    assert listeners_shown(state) == []


def test_state_says_which_listeners_drain() -> None:
    config = make_config(
        number=1, binds=("127.0.0.1:8080,drain", "[::1]:8081"), bound_ports=(8080, 8081),
        listeners=(ListenerInfo("AF_INET", ADDRESSES[0], drain=True), ListenerInfo("AF_INET6", ADDRESSES[1])),
    )  # fmt: skip
    state, _ = run(initial_state(config), MasterStarted(0.0))
    assert listeners_shown(state) == [
        {"address": "127.0.0.1:8080", "family": "AF_INET", "name": None, "accepting": True, "drain": True},
        {"address": "[::1]:8081", "family": "AF_INET6", "name": None, "accepting": True},
    ]
    assert "listeners: 127.0.0.1:8080 (drain), [::1]:8081\n" in status(state)
