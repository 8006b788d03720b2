"""einhorn.core.commands: every command-socket request and its exact reply.

The texts scripts match on are the original Einhorn's (see BEHAVIOR §6); the
requests are fed through `step`, as the shell does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from einhorn.core import pool
from einhorn.core.commands import COMMANDS, ConfigDocumentError, help_text
from einhorn.core.config import Pacing
from einhorn.core.effects import (
    Cause,
    CloseConnection,
    CompareImage,
    Effect,
    Log,
    LogLevel,
    Reply,
    ReplyData,
    SendSignal,
    SpawnWorker,
    StartUpgradeCheck,
)
from einhorn.core.events import CommandReceived, MasterStarted, Tick, WorkerSpawned
from einhorn.core.indexed import Children
from einhorn.core.observe import observe
from einhorn.core.record import replace
from einhorn.core.report import Symbol, Timestamp
from einhorn.core.state import ReexecPurpose, State, Subscriber, initial_state
from einhorn.core.step import next_deadline, step
from tests.unit.fixtures.core_world import make_config, run

CONN = 3
WHOLE_SECONDS = "(must be an integer number of seconds >= 1 and at most 604800 (one week), or null)"


def info(message: str) -> Log:
    return Log(LogLevel.INFO, message)


def up(**changes: Any) -> State:
    """Two ACKed workers, 1000 and 1001, unless `number` says otherwise."""
    config = make_config(**{"number": 2, **changes})
    state, _ = run(initial_state(config), MasterStarted(0.0))
    for spawn_id in range(config.number):
        state, _ = step(state, WorkerSpawned(spawn_id, 1000 + spawn_id, 0.0))
    if config.ack_timer is None:
        for pid in range(1000, 1000 + config.number):
            state, _ = step(state, CommandReceived(99, {"command": "worker:ack", "pid": pid}, 1.0))
    else:
        state, _ = step(state, Tick(1.0))
    assert pool.ack_count(state) == config.number
    return state


def send(state: State, request: dict[str, object], document: object = None) -> tuple[State, list[Effect]]:
    return step(state, CommandReceived(CONN, request, 2.0, wall=1_700_000_000.0, document=document))


def replies(effects: list[Effect]) -> list[Reply]:
    return [e for e in effects if isinstance(e, Reply)]


def answer(state: State, request: dict[str, object], document: object = None) -> str:
    """The one reply a simple command gets."""
    _, effects = send(state, request, document)
    (reply,) = replies(effects)
    assert reply.conn == CONN and not reply.wait
    return reply.message


DESCRIBED = [
    "abort_upgrade",
    "config",
    "dec",
    "die",
    "help",
    "inc",
    "louder",
    "quieter",
    "reload",
    "set_workers",
    "signal",
    "state",
    "status",
    "subscribe",
    "upgrade",
    "upgrade_fleet",
]


# --- ehlo, help, unknown ---------------------------------------------------------------


def test_ehlo_names_user_pid_command_name_and_version() -> None:
    state = up(command_name="web")
    assert answer(state, {"command": "ehlo", "user": "alice"}) == (
        "Welcome, alice! You are speaking to Einhorn Master Process 100 (web).\nThis is Einhorn 1.1.0.\n"
    )


def test_ehlo_without_command_name_or_user() -> None:
    assert answer(up(), {"command": "ehlo", "user": "bob"}) == (
        "Welcome, bob! You are speaking to Einhorn Master Process 100.\nThis is Einhorn 1.1.0.\n"
    )
    assert answer(up(), {"command": "ehlo"}).startswith("Welcome, ! ")  # as the original, with no user


def test_help_lists_described_commands_sorted_and_hides_ehlo_and_worker_commands() -> None:
    text = answer(up(), {"command": "help"})
    assert text == help_text()
    head = "You are speaking to the Einhorn command socket. You can run the following commands:\n\n"
    assert text.startswith(head) and text.endswith("\n")
    lines = text[len(head) : -1].split("\n")
    assert [line.split(": ", 1)[0] for line in lines] == DESCRIBED
    assert "help: Print out available commands" in lines
    assert "dec: Decrement the number of Einhorn child processes" in lines
    assert (
        "upgrade: Upgrade all Einhorn workers smoothly. This causes Einhorn to reload its own code as well."
    ) in lines
    assert not any(line.startswith(("ehlo", "worker:")) for line in lines)
    assert {"ehlo", "worker:ack", "worker:ping"} | set(DESCRIBED) == set(COMMANDS)


def test_unrecognized_command_lists_the_commands() -> None:
    listing = help_text().split("\n\n", 1)[1]
    assert answer(up(), {"command": "frobnicate"}) == f'Unrecognized command: "frobnicate"\n\n{listing}'
    assert answer(up(), {"command": 5}).startswith("Unrecognized command: 5\n\n")
    assert answer(up(), {"command": 'say "hi"'}).startswith('Unrecognized command: "say \\"hi\\""\n\n')


def test_missing_command() -> None:
    text = 'No "command" parameter provided; not sure what you want me to do.'
    assert answer(up(), {}) == text
    assert answer(up(), {"command": None, "args": ["x"]}) == text
    _, effects = send(up(), {"id": "7"})
    assert effects == [Reply(CONN, text, "7", failed=True)]


# --- request ids and argument validation --------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "request_id"),
    [
        ({"command": "help", "id": "abc"}, "abc"),
        ({"command": "help", "id": 12}, 12),
        ({"command": "help", "request_id": "r"}, "r"),
        ({"command": "help", "id": "a", "request_id": "b"}, "a"),
        ({"command": "help", "id": True}, None),
        ({"command": "help", "id": [1]}, None),
        ({"command": "help"}, None),
    ],
)
def test_request_id_comes_from_id_or_request_id(request_: dict[str, object], request_id: str | int | None) -> None:
    _, effects = send(up(), request_)
    assert [r.request_id for r in replies(effects)] == [request_id]


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ("5", "Args must be an array"),
        ({"a": 1}, "Args must be an array"),
        ([5], "Argument is a Integer, not a string: 5"),
        (["ok", 1.5], "Argument is a Float, not a string: 1.5"),
        ([None], "Argument is a NilClass, not a string: nil"),
        ([True], "Argument is a TrueClass, not a string: true"),
        ([False], "Argument is a FalseClass, not a string: false"),
    ],
)
def test_args_validation(args: object, text: str) -> None:
    state = up()
    after, effects = send(state, {"command": "set_workers", "args": args, "id": 1})
    assert effects == [Reply(CONN, text, 1, failed=True)]
    assert after == replace(state, clock=2.0)


# --- inc, dec, set_workers ------------------------------------------------------------------


def test_inc_raises_number_and_spins_up() -> None:
    state, effects = send(up(), {"command": "inc", "id": "i"})
    text = "Incrementing number of workers from 2 -> 3"
    assert effects[:2] == [info(text), Reply(CONN, text, "i")]
    assert state.config.number == 3 and len(state.pending) == 1


def test_inc_stops_at_1000() -> None:
    state = replace(up(), config=make_config(number=1000))
    assert answer(state, {"command": "inc"}) == "Can't increase number of workers (already at 1000)."


def test_dec_lowers_number() -> None:
    state, effects = send(up(), {"command": "dec"})
    text = "Decrementing number of workers from 2 -> 1"
    assert effects[:2] == [info(text), Reply(CONN, text)]
    assert state.config.number == 1


def test_dec_refuses_to_go_below_one() -> None:
    state = up(number=1)
    after, effects = send(state, {"command": "dec"})
    assert effects == [
        Reply(CONN, "Can't decrease number of workers (already at 1).  Run kill 100 if you really want to kill einhorn.", failed=True)
    ]
    assert after == replace(state, clock=2.0)


def test_set_workers_up_and_down() -> None:
    state, effects = send(up(), {"command": "set_workers", "args": ["5"]})
    text = "Altering worker count, 2 -> 5. Will spin up additional workers."
    assert effects[:2] == [info(text), Reply(CONN, text)]
    assert state.config.number == 5
    state, effects = send(up(), {"command": "set_workers", "args": ["1"]})
    assert replies(effects) == [Reply(CONN, "Altering worker count, 2 -> 1. Will gracefully terminate workers.")]
    assert [e for e in effects if isinstance(e, SendSignal)] == [SendSignal(1001, "USR2", Cause.SURPLUS)]


def test_set_workers_accepts_1000_although_the_text_says_otherwise() -> None:
    state, effects = send(up(), {"command": "set_workers", "args": ["1000"]})
    assert replies(effects)[0].message == "Altering worker count, 2 -> 1000. Will spin up additional workers."
    assert state.config.number == 1000


@pytest.mark.parametrize("arg", ["abc", "0", "-3", "1001", "5000", "", "2.5", "٣"])
def test_set_workers_rejects_bad_counts(arg: str) -> None:
    state = up()
    after, effects = send(state, {"command": "set_workers", "args": [arg]})
    assert effects == [Reply(CONN, f"Invalid count: '{arg}'. Must be an integer in [1,1000).", failed=True)]
    assert after == replace(state, clock=2.0)


def test_set_workers_without_args() -> None:
    assert answer(up(), {"command": "set_workers"}) == "No args provided"
    assert answer(up(), {"command": "set_workers", "args": []}) == "No args provided"


def test_set_workers_to_the_current_number() -> None:
    assert answer(up(), {"command": "set_workers", "args": ["2"]}) == "Number of workers is already 2"


# --- verbosity ----------------------------------------------------------------------------


def test_quieter_and_louder_stay_within_0_and_2() -> None:
    state = up()
    assert state.verbosity == 1
    state, effects = send(state, {"command": "quieter"})
    assert effects == [info("Verbosity set to 2"), Reply(CONN, "Verbosity set to 2")]
    state, effects = send(state, {"command": "quieter"})
    assert state.verbosity == 2 and replies(effects)[0].message == "Verbosity set to 2"
    for expected in (1, 0, 0):
        state, effects = send(state, {"command": "louder"})
        assert state.verbosity == expected and replies(effects)[0].message == f"Verbosity set to {expected}"


# --- signal and die ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["USR1", "usr1", "SIGUSR1", "sigusr1", "SigUsr1", " USR1 "])
def test_signal_accepts_names_with_or_without_sig_in_any_case(name: str) -> None:
    state = up()
    after, effects = send(state, {"command": "signal", "args": [name], "id": "s"})
    assert effects == [
        info("Sending USR1 to [1000, 1001]"),
        SendSignal(1000, "USR1", Cause.OPERATOR),
        SendSignal(1001, "USR1", Cause.OPERATOR),
        Reply(CONN, "Successfully sent USR1s to 2 processes: [1000, 1001]", "s"),
    ]
    # Not recorded: `signal` is a message to the workers, not a request to stop them.
    assert after == replace(state, clock=2.0)


def test_signal_several() -> None:
    _, effects = send(up(), {"command": "signal", "args": ["HUP", "SIGTTIN"]})
    assert [(e.pid, e.signal) for e in effects if isinstance(e, SendSignal)] == [
        (1000, "HUP"),
        (1001, "HUP"),
        (1000, "TTIN"),
        (1001, "TTIN"),
    ]
    assert replies(effects)[0].message == (
        "Successfully sent HUPs to 2 processes: [1000, 1001]\nSuccessfully sent TTINs to 2 processes: [1000, 1001]"
    )


@pytest.mark.parametrize(("args", "text"), [(["NOPE"], 'Invalid signal: "NOPE"'), (["sigwat"], 'Invalid signal: "WAT"')])
def test_signal_validates_every_name_before_sending_any(args: list[str], text: str) -> None:
    state = up()
    after, effects = send(state, {"command": "signal", "args": ["USR1", *args]})
    assert effects == [Reply(CONN, text, failed=True)]
    assert after == replace(state, clock=2.0)


def test_signal_without_args() -> None:
    assert answer(up(), {"command": "signal"}) == "No args provided"


def test_die_defaults_to_usr2_and_stops_respawning() -> None:
    state, effects = send(up(), {"command": "die", "id": "d"})
    text = "Einhorn is going down! Successfully sent USR2s to 2 processes: [1000, 1001]"
    assert effects == [
        info(text),
        info("Sending USR2 to [1000, 1001]"),
        SendSignal(1000, "USR2", Cause.OPERATOR),
        SendSignal(1001, "USR2", Cause.OPERATOR),
        Reply(CONN, text, "d"),
    ]
    assert state.respawn is False and state.shutdown_signal == "USR2"  # `is`: the state report shows `:respawn: false`
    assert state.children[1000].signaled == frozenset({"USR2"})


def test_die_with_a_signal() -> None:
    state, effects = send(up(), {"command": "die", "args": ["sigterm"]})
    assert [e for e in effects if isinstance(e, SendSignal)] == [SendSignal(1000, "TERM", Cause.OPERATOR), SendSignal(1001, "TERM", Cause.OPERATOR)]
    assert state.shutdown_signal == "TERM" and state.respawn is False


def test_die_with_an_invalid_signal_changes_nothing() -> None:
    state = up()
    after, effects = send(state, {"command": "die", "args": ["NOPE"]})
    assert effects == [Reply(CONN, 'Invalid signal: "NOPE"', failed=True)]
    assert after == replace(state, clock=2.0)


# --- config ------------------------------------------------------------------------------------


def config_request() -> dict[str, object]:
    return {"command": "config", "args": ["{number: 3, seconds: 2.5}"]}


def test_config_merges_a_valid_mapping() -> None:
    state, effects = send(up(), config_request(), document={"number": 3, "seconds": 2.5})
    text = "Successfully merged in config: {number: 3, seconds: 2.5}"
    assert effects[:2] == [info(text), Reply(CONN, text)]
    assert state.config.number == 3 and state.config.seconds == 2.5
    assert next_deadline(state) == 2.5  # one worker missing; the next spin-up paced by the new seconds


def test_config_seconds_chooses_the_interval_and_pacing_ack_goes_back() -> None:
    """Setting `seconds` at run time is an explicit choice of the interval, as `-s` is (EXTENSIONS §4)."""
    state = up(number=2, max_unacked=2)
    assert state.config.pacing is Pacing.ACK
    state, _ = send(state, config_request(), document={"seconds": 4})
    assert state.config.pacing is Pacing.INTERVAL and state.config.seconds == 4.0
    grown, effects = send(state, {"command": "set_workers", "args": ["4"]})
    assert not [e for e in effects if isinstance(e, SpawnWorker)] and next_deadline(grown) == 4.0  # last spin-up at 0 + 4 s
    state, effects = send(state, config_request(), document={"pacing": "ack"})
    assert effects[0] == info("Successfully merged in config: {pacing: 'ack'}")
    assert state.config.pacing is Pacing.ACK and state.config.seconds == 4.0
    grown, effects = send(state, {"command": "set_workers", "args": ["4"]})
    assert len([e for e in effects if isinstance(e, SpawnWorker)]) == 2 and next_deadline(grown) is None  # both slots at once


def test_config_accepts_null_for_optional_settings() -> None:
    state = up(max_upgrade_additional=2, signal_timeout=5)
    state, _ = send(state, config_request(), document={"max_upgrade_additional": None, "signal_timeout": None})
    assert state.config.max_upgrade_additional is None and state.config.signal_timeout is None


@pytest.mark.parametrize(
    ("document", "text"),
    [
        (
            {"bogus": 1},
            "Unknown config setting: 'bogus'. Known settings: number, seconds, max_unacked, "
            "max_upgrade_additional, signal_timeout, pacing",
        ),
        ({"ack_mode": "manual"}, None),
        ({"number": 0}, "Invalid value for number: 0 (must be an integer in [1, 1000])"),
        ({"number": "3"}, "Invalid value for number: '3' (must be an integer in [1, 1000])"),
        ({"seconds": 2, "number": True}, "Invalid value for number: True (must be an integer in [1, 1000])"),
        ({"seconds": 0}, "Invalid value for seconds: 0 (must be a number of seconds > 0 and at most 604800 (one week))"),
        ({"seconds": 1e10}, "Invalid value for seconds: 10000000000.0 (must be a number of seconds > 0 and at most 604800 (one week))"),
        ({"max_unacked": 0}, "Invalid value for max_unacked: 0 (must be an integer >= 1)"),
        ({"signal_timeout": 0}, f"Invalid value for signal_timeout: 0 {WHOLE_SECONDS}"),
        ({"signal_timeout": 3000000}, f"Invalid value for signal_timeout: 3000000 {WHOLE_SECONDS}"),
        ({"signal_timeout": 10**400}, None),
        ({"max_upgrade_additional": -1}, "Invalid value for max_upgrade_additional: -1 (must be an integer >= 0 or null)"),
        ([1, 2], "Parsed argument is a list, not a hash"),
        ("just a string", "Parsed argument is a str, not a hash"),
        (ConfigDocumentError("line 1: mapping values are not allowed here"), None),
    ],
)
def test_config_refuses_bad_documents_and_changes_nothing(document: object, text: str | None) -> None:
    state = up()
    after, effects = send(state, config_request(), document=document)
    (reply,) = replies(effects)
    if text is not None:
        assert reply.message == text
    assert after == replace(state, clock=2.0)


def test_config_unparseable_document_text() -> None:
    document = ConfigDocumentError("line 1: mapping values are not allowed here")
    assert answer(up(), config_request(), document) == (
        "Could not parse argument. Must be a YAML-encoded hash (line 1: mapping values are not allowed here)"
    )


def test_config_without_args() -> None:
    assert answer(up(), {"command": "config"}, document={"number": 3}) == "Must pass in a YAML-encoded hash"
    assert answer(up(), {"command": "config", "args": []}) == "Must pass in a YAML-encoded hash"


# --- upgrade, upgrade_fleet, reload ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "purpose"),
    [
        ("upgrade", "Upgrading smoothly, as commanded", ReexecPurpose.SMOOTH_UPGRADE),
        ("upgrade_fleet", "Upgrading fleet, as commanded", ReexecPurpose.FLEET_UPGRADE),
        ("reload", "Reloading, as commanded", ReexecPurpose.RELOAD),
    ],
)
def test_reexec_commands_with_an_id_subscribe(name: str, text: str, purpose: ReexecPurpose) -> None:
    state, effects = send(up(), {"command": name, "id": "9"})
    progress = f"Reloading einhorn master ({purpose.value})..."
    assert effects == [Reply(CONN, text, "9", wait=True), info(progress), Reply(CONN, progress, "9", wait=True), CompareImage(0)]
    assert state.reexec_purpose is purpose and state.reexec_subscribers == (Subscriber(CONN, "9"),)


@pytest.mark.parametrize("name", ["upgrade", "upgrade_fleet", "reload"])
def test_reexec_commands_without_an_id_do_not_subscribe_or_wait(name: str) -> None:
    state, effects = send(up(), {"command": name})
    assert [type(e) for e in effects] == [Reply, Log, CompareImage]
    assert replies(effects)[0].wait is False and replies(effects)[0].request_id is None
    assert state.reexec_subscribers == () and state.reexec_purpose is not None


@pytest.mark.parametrize("name", ["upgrade", "upgrade_fleet", "reload"])
def test_reexec_commands_are_refused_while_shutting_down(name: str) -> None:
    state, _ = send(up(), {"command": "die"})
    after, effects = send(state, {"command": name, "id": "x"})
    assert not any(isinstance(e, (CompareImage, StartUpgradeCheck)) for e in effects)
    assert after.reexec_purpose is None and after.reexec_subscribers == ()
    final = replies(effects)[-1]
    assert final.request_id == "x" and not final.wait


# --- state -----------------------------------------------------------------------------------


def test_state_replies_with_the_report() -> None:
    state, effects = send(up(command_name="web"), {"command": "state", "id": 4})
    (reply,) = effects
    assert isinstance(reply, ReplyData)
    assert (reply.conn, reply.as_json, reply.request_id) == (CONN, False, 4)
    assert list(reply.data) == ["state"]
    report = reply.data["state"]
    assert isinstance(report, dict)
    assert {"children", "config", "version", "respawn", "upgrading", "ack_mode", "cmd_name", "verbosity"} <= set(report)
    assert report["cmd_name"] == "web" and report["version"] == 0 and report["respawn"] is True
    assert report["ack_mode"] == {"type": Symbol("timer"), "timeout": 1.0}
    assert report["config"] == {
        "number": 2,
        "backlog": 100,
        "seconds": 1.0,
        "pacing": "ack",
        "max_unacked": 1,
        "max_upgrade_additional": None,
        "boot_timeout": None,
        "ping_timeout": None,
        "max_worker_rss_mb": None,
    }
    children = report["children"]
    assert isinstance(children, Mapping) and sorted(children) == [1000, 1001]
    assert children[1000] == {
        "type": Symbol("worker"),
        "version": 0,
        "acked": True,
        "signaled": [],
        "last_signaled_at": None,
        "index": 0,
        "spinup_time": Timestamp(1_700_000_000.0 - 2.0),  # spawned at 0.0, asked at 2.0
        "pinged_at": None,
        "pinged_request_id": None,
        "status": None,
        "ping_age": None,
        "rss_bytes": None,
        "health": None,
    }
    assert state == replace(up(command_name="web"), clock=2.0)


def test_state_json_flag() -> None:
    _, effects = send(up(), {"command": "state", "args": ["--json"]})
    (reply,) = effects
    assert isinstance(reply, ReplyData) and reply.as_json and reply.request_id is None


def test_state_reports_manual_ack_mode() -> None:
    config = make_config(ack_timer=None)
    state, _ = run(initial_state(config), MasterStarted(0.0))
    _, effects = send(state, {"command": "state"})
    (reply,) = effects
    assert isinstance(reply, ReplyData)
    report = reply.data["state"]
    assert isinstance(report, dict)
    assert report["ack_mode"] == {"type": Symbol("manual")} and report["pending_spawns"] == 1


# --- worker:ack / worker:ping never answer ---------------------------------------------------


@pytest.mark.parametrize("name", ["worker:ack", "worker:ping"])
def test_worker_commands_close_the_connection_without_a_reply(name: str) -> None:
    _, effects = send(up(ack_timer=None), {"command": name, "pid": 1000, "id": "5"})
    assert effects[-1] == CloseConnection(CONN)
    assert replies(effects) == []


# --- numbers too long for int() (over 4,300 digits) ---------------------------------------------

HUGE_DIGITS = "1" * 5000


def test_set_workers_with_a_5000_digit_count_is_an_invalid_count() -> None:
    state = up()
    after, effects = send(state, {"command": "set_workers", "args": [HUGE_DIGITS]})
    assert effects == [Reply(CONN, f"Invalid count: '{HUGE_DIGITS}'. Must be an integer in [1,1000).", failed=True)]
    assert after == replace(state, clock=2.0)


@pytest.mark.parametrize("pid", [HUGE_DIGITS, 10**5000], ids=["string", "int"])
def test_a_worker_ack_with_a_5000_digit_pid_is_logged_and_its_connection_closed(pid: object) -> None:
    state = up(ack_timer=None)
    after, effects = send(state, {"command": "worker:ack", "pid": pid})
    (log,) = [e for e in effects if isinstance(e, Log)]
    assert log.level is LogLevel.ERROR and log.message.startswith("Invalid worker:ack (no pid)")
    assert effects[-1] == CloseConnection(CONN)
    assert after == replace(state, clock=2.0)


@pytest.mark.parametrize("pid", [HUGE_DIGITS, 10**5000], ids=["string", "int"])
def test_a_worker_ping_with_a_5000_digit_pid_is_logged_and_its_connection_closed(pid: object) -> None:
    state = up(ack_timer=None)
    after, effects = send(state, {"command": "worker:ping", "pid": pid, "request_id": "r"})
    (log,) = [e for e in effects if isinstance(e, Log)]
    assert log.level is LogLevel.ERROR and log.message.startswith("Ping from unknown pid")
    assert effects[-1] == CloseConnection(CONN)
    assert after == replace(state, clock=2.0)


def test_a_pid_may_have_up_to_18_digits() -> None:
    state = up(ack_timer=None)
    for pid in ("9" * 18, 10**18 - 1):
        _, effects = send(state, {"command": "worker:ack", "pid": pid})
        assert effects[0] == Log(LogLevel.ERROR, f"Could not find state for PID {10**18 - 1}; ignoring ACK.")
    for pid in ("1" * 19, 10**18):
        _, effects = send(state, {"command": "worker:ack", "pid": pid})
        assert isinstance(effects[0], Log) and effects[0].message.startswith("Invalid worker:ack (no pid)")


def test_a_config_value_too_long_to_write_is_refused_with_a_reply() -> None:
    state = up()
    after, effects = send(state, {"command": "config", "args": ["..."]}, {"number": 10**5000})
    (reply,) = replies(effects)
    assert reply.message == "Invalid value for number: <int too large to show> (must be an integer in [1, 1000])"
    assert after == replace(state, clock=2.0)


# --- who sent an ACK --------------------------------------------------------------------------


def ack_from(state: State, pid: int, peer_pid: int | None, ancestors: tuple[int, ...] | None, command: str = "worker:ack") -> list[Effect]:
    request = {"command": command, "pid": pid, "request_id": "r"}
    _, effects = step(state, CommandReceived(CONN, request, 2.0, peer_pid=peer_pid, peer_ancestors=ancestors))
    return effects


def unacked() -> State:
    config = make_config(number=2, ack_timer=None)
    state, _ = run(initial_state(config), MasterStarted(0.0), WorkerSpawned(0, 1000, 0.0), WorkerSpawned(1, 1001, 0.0))
    return state


def warnings(effects: list[Effect]) -> list[str]:
    return [e.message for e in effects if isinstance(e, Log) and e.level is LogLevel.WARN]


@pytest.mark.parametrize(
    ("peer_pid", "ancestors"),
    [(1000, ()), (5555, (1000,)), (5555, (4444, 1000)), (None, None), (5555, None)],
    ids=["the-worker", "its-child", "its-grandchild", "peer-unknown", "ancestry-unknown"],
)
@pytest.mark.parametrize("command", ["worker:ack", "worker:ping"])
def test_an_ack_from_the_worker_or_its_descendant_or_an_unknown_peer_is_taken_quietly(
    command: str, peer_pid: int | None, ancestors: tuple[int, ...] | None
) -> None:
    effects = ack_from(unacked(), 1000, peer_pid, ancestors, command)
    assert warnings(effects) == []
    assert effects[-1] == CloseConnection(CONN)


@pytest.mark.parametrize("command", ["worker:ack", "worker:ping"])
def test_an_ack_for_another_workers_pid_is_taken_with_a_warning(command: str) -> None:
    state = unacked()
    _, effects = step(state, CommandReceived(CONN, {"command": command, "pid": 1000}, 2.0, peer_pid=1001, peer_ancestors=()))
    what = "ACK" if command == "worker:ack" else "Ping"
    assert warnings(effects) == [f"{what} for worker 1000 was sent by process 1001, which is neither that worker nor one of its descendants"]
    after, _ = step(state, CommandReceived(CONN, {"command": command, "pid": 1000}, 2.0, peer_pid=1001, peer_ancestors=()))
    assert after.children[1000].acked is (command == "worker:ack")


# --- property: every request is answered -----------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2000) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
requests = st.dictionaries(
    st.sampled_from(["command", "args", "id", "request_id", "pid", "user"]) | st.text(max_size=5),
    values,
    max_size=5,
) | st.fixed_dictionaries(
    {
        "command": st.sampled_from(sorted(COMMANDS)),
        "args": st.lists(st.sampled_from(["1", "3", "0", "TERM", "sigusr1", "--json", "x", "1000", HUGE_DIGITS]), max_size=2),
    },
    optional={
        "id": st.text(max_size=3) | st.integers(),
        "pid": st.sampled_from([1000, 1001, 7, "1000", HUGE_DIGITS, 10**5000]),
    },
)


UP = {None: up(ack_timer=None), 1.0: up(ack_timer=1.0)}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([None, 1.0]), requests, values)
def test_every_request_gets_an_answer_and_never_raises(
    ack_timer: float | None, request: dict[str, object], document: object
) -> None:
    """The client never hangs: a reply (the last without `wait`) or a closed connection."""
    state = UP[ack_timer]
    event = CommandReceived(CONN, request, 2.0, wall=1_700_000_000.0, document=document)
    after, effects = step(state, event)
    observe(state, event, after, effects)  # what is shown of it never raises either
    mine = [e for e in effects if isinstance(e, (Reply, ReplyData, CloseConnection)) and e.conn == CONN]
    assert mine, effects
    last = mine[-1]
    assert isinstance(last, (ReplyData, CloseConnection)) or (isinstance(last, Reply) and (last.wait is False or last.request_id is not None))


def test_a_ping_changes_its_worker_without_copying_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker's ping costs the same at any pool size (issue 14): no copy of the children and no re-index."""
    state = up(ack_timer=None, number=40)

    def reindexed(cls: object, children: object) -> None:
        raise AssertionError("the whole pool was copied and indexed again for one ping")

    monkeypatch.setattr(Children, "of", classmethod(reindexed))
    after, _ = send(state, {"command": "worker:ping", "pid": 1007, "request_id": "r"})
    assert after.children[1007].pinged_at == 2.0 and after.children[1007].pinged_request_id == "r"
    assert after.children[1008] is state.children[1008]
