"""Tests written to kill the mutants that survived the rest of the suite (spec/README.md §8).

Each pins down an observable detail that no other test looked at closely:
the exact `state` document, the exact effects of small commands, edge values.
"""

from __future__ import annotations

from einhorn.core import commands, pool, step
from einhorn.core.config import Config, Display, ListenerInfo, Pacing
from einhorn.core.effects import Cause, CompareImage, Log, LogLevel, Reply
from einhorn.core.events import CommandReceived, ConnectionClosed
from einhorn.core.record import replace
from einhorn.core.report import Symbol, Timestamp, snapshot
from einhorn.core.state import Child, PendingSpawn, Reexec, ReexecPhase, ReexecPurpose, State, Subscriber, UpgradeKind, Verdict


def _request(name: str, *args: str, request_id: str | None = None, conn: int = 5) -> commands.Request:
    return commands.Request(
        conn=conn,
        command=name,
        args=args or None,
        request_id=request_id,
        raw={"command": name},
        document=None,
        now=0.0,
        wall=0.0,
    )


# --- report.snapshot ------------------------------------------------------------------


def _rich_state() -> State:
    config = Config(
        number=3,
        ack_timer=None,
        seconds=2.0,
        max_unacked=2,
        max_upgrade_additional=1,
        signal_timeout=5,
        graceful_signal="TERM",
        boot_timeout=30.0,
        ping_timeout=10.0,
        max_worker_rss_mb=512,
        einhorn_version="1.1.0",
        display=Display(
            command_name="web",
            master_pid=42,
            socket_path="/s",
            program=("app", "-x"),
            binds=("0.0.0.0:80,r",),
            bound_ports=(80, None),
            listeners=(ListenerInfo("AF_INET", "0.0.0.0:80"), ListenerInfo("AF_UNIX", "/run/web.sock", "web")),
            stopped_listeners=frozenset({0}),
            backlog=7,
            command_socket_as_fd=True,
            kill_children_on_exit=True,
            pidfile="/p",
            lockfile="/l",
            preloaded=True,
        ),
    )
    signaled = Child(
        10,
        2,
        0,
        5.0,
        acked=True,
        signaled=frozenset({"USR2", "TERM"}),
        last_signaled_at=6.0,
        pinged_at=7.0,
        pinged_request_id="r1",
    )
    return State(
        config=config,
        version=2,
        children={
            10: signaled,
            11: Child(11, 1, 1, 1.0, verdict=Verdict.BOOT_TIMEOUT, verdict_at=8.0),
            12: Child(12, 2, 3, 2.0, acked=True, rss_bytes=1 << 20, measured_at=7.5),
        },
        pending={3: PendingSpawn(3, 2, 2, 4.0)},
        next_spawn_id=4,
        upgrading=UpgradeKind.SMOOTH,
        reexec=Reexec(ReexecPurpose.FLEET_UPGRADE, (), 0, 0.0, ReexecPhase.EXECUTING),
        deaths_before_ack=2,
        last_spinup_at=4.0,
        clock=8.0,
        verbosity=0,
    )


def test_snapshot_is_the_whole_document() -> None:
    assert snapshot(_rich_state(), 1000.0) == {
        "state": {
            "ack_count": 1,
            "ack_mode": {"type": Symbol("manual")},
            "ack_target": 3,
            "bind": ["0.0.0.0:80,r"],
            "bound_ports": [80, None],
            "listeners": [
                {"family": "AF_INET", "address": "0.0.0.0:80", "name": None, "accepting": False},
                {"family": "AF_UNIX", "address": "/run/web.sock", "name": "web", "accepting": True},
            ],
            "children": {
                10: {
                    "acked": True,
                    "index": 0,
                    "last_signaled_at": Timestamp(1006.0),
                    "pinged_at": Timestamp(1007.0),
                    "pinged_request_id": "r1",
                    "status": None,
                    "ping_age": 1.0,
                    "rss_bytes": None,
                    "health": None,
                    "signaled": ["TERM", "USR2"],
                    "spinup_time": Timestamp(1005.0),
                    "type": Symbol("worker"),
                    "version": 2,
                },
                11: {
                    "acked": False,
                    "index": 1,
                    "last_signaled_at": None,
                    "pinged_at": None,
                    "pinged_request_id": None,
                    "status": None,
                    "ping_age": None,
                    "rss_bytes": None,
                    "health": "boot_timeout",
                    "signaled": [],
                    "spinup_time": Timestamp(1001.0),
                    "type": Symbol("worker"),
                    "version": 1,
                },
                12: {
                    "acked": True,
                    "index": 3,
                    "last_signaled_at": None,
                    "pinged_at": None,
                    "pinged_request_id": None,
                    "status": None,
                    "ping_age": None,
                    "rss_bytes": 1 << 20,
                    "health": None,
                    "signaled": [],
                    "spinup_time": Timestamp(1002.0),
                    "type": Symbol("worker"),
                    "version": 2,
                },
            },
            "cmd": ["app", "-x"],
            "cmd_name": "web",
            "command_socket_as_fd": True,
            "config": {
                "backlog": 7,
                "max_unacked": 2,
                "max_upgrade_additional": 1,
                "number": 3,
                "seconds": 2.0,
                "pacing": "ack",
                "boot_timeout": 30.0,
                "ping_timeout": 10.0,
                "max_worker_rss_mb": 512,
            },
            "consecutive_deaths_before_ack": 2,
            "graceful_signal": "TERM",
            "kill_children_on_exit": True,
            "last_spinup": Timestamp(1004.0),
            "lockfile": "/l",
            "master_pid": 42,
            "missing": 0,
            "pending_spawns": 1,
            "generations": [],
            "rollout": None,
            "pidfile": "/p",
            "preloaded": True,
            "reloading_for_upgrade": True,
            "respawn": True,
            "signal_timeout": 5,
            "smooth_upgrade": True,
            "socket_path": "/s",
            "upgrading": True,
            "verbosity": 0,
            "version": 2,
        }
    }


def test_snapshot_of_a_quiet_timer_master() -> None:
    state = State(config=Config(ack_timer=2.5, number=2), reexec=Reexec(ReexecPurpose.RELOAD, (), 0, 0.0, ReexecPhase.EXECUTING), upgrading=UpgradeKind.FLEET)
    document = snapshot(state, 0.0)["state"]
    assert isinstance(document, dict)
    assert document["ack_mode"] == {"type": Symbol("timer"), "timeout": 2.5}
    assert document["missing"] == 2 and document["last_spinup"] is None
    assert document["upgrading"] is True and document["smooth_upgrade"] is False
    assert document["reloading_for_upgrade"] is False
    assert snapshot(State(config=Config()), 0.0)["state"]["upgrading"] is False  # type: ignore[index]
    assert snapshot(State(config=Config()), 0.0)["state"]["smooth_upgrade"] is False  # type: ignore[index]
    assert snapshot(State(config=Config()), 0.0)["state"]["reloading_for_upgrade"] is False  # type: ignore[index]


def test_snapshot_never_reports_negative_missing() -> None:
    state = State(config=Config(number=1), children={i: Child(i, 0, i, 0.0) for i in (1, 2)})
    assert snapshot(state, 0.0)["state"]["missing"] == 0  # type: ignore[index]


# --- commands ------------------------------------------------------------------------------


def test_upgrade_handlers_built_at_call_time() -> None:
    """`_upgrade` builds each handler once at import; build them again here, so that the
    handler's own behaviour is what is tested."""
    state = State(config=Config())
    smooth = commands._upgrade(ReexecPurpose.SMOOTH_UPGRADE, "Upgrading smoothly, as commanded")
    after, effects = smooth(state, _request("upgrade", request_id="7"))
    assert after.reexec_purpose is ReexecPurpose.SMOOTH_UPGRADE
    assert after.reexec_subscribers == (Subscriber(5, "7"),)
    assert effects[0] == Reply(5, "Upgrading smoothly, as commanded", "7", wait=True)
    assert effects[-1] == CompareImage(0)
    fleet = commands._upgrade(ReexecPurpose.FLEET_UPGRADE, "Upgrading fleet, as commanded")
    after, effects = fleet(state, _request("upgrade_fleet"))
    assert after.reexec_purpose is ReexecPurpose.FLEET_UPGRADE and after.reexec_subscribers == ()
    assert effects[0] == Reply(5, "Upgrading fleet, as commanded", None, wait=False)


def test_quieter_and_louder_move_by_one_and_answer_the_request() -> None:
    state = State(config=Config(), verbosity=0)
    state, effects = commands._quieter(state, _request("quieter", request_id="q"))
    assert state.verbosity == 1
    assert effects == [Log(LogLevel.INFO, "Verbosity set to 1"), Reply(5, "Verbosity set to 1", "q")]
    state, effects = commands._louder(replace(state, verbosity=2), _request("louder", request_id="l"))
    assert state.verbosity == 1
    assert effects == [Log(LogLevel.INFO, "Verbosity set to 1"), Reply(5, "Verbosity set to 1", "l")]


def test_inspect_escapes_backslashes_and_quotes_like_ruby() -> None:
    assert commands._inspect('a\\b"c') == '"a\\\\b\\"c"'


# --- step -------------------------------------------------------------------------------------


def test_connection_closed_drops_both_kinds_of_subscription() -> None:
    state = State(
        config=Config(),
        upgrading=UpgradeKind.SMOOTH,
        upgrade_subscribers=(Subscriber(1, "a"), Subscriber(2, "b")),
        reexec=Reexec(ReexecPurpose.RELOAD, (Subscriber(1, "c"), Subscriber(3, "d")), 0, 0.0, ReexecPhase.EXECUTING),
    )
    after, _ = step._on_connection_closed(state, ConnectionClosed(1, 0.0))
    assert after.upgrade_subscribers == (Subscriber(2, "b"),)
    assert after.reexec_subscribers == (Subscriber(3, "d"),)


def test_pool_helpers_on_edge_values() -> None:
    assert pool.lowest_free_index([]) == 0
    assert pool.lowest_free_index([0, 1, 3]) == 2
    state = State(config=Config(seconds=20.0), deaths_before_ack=1)
    assert pool.spinup_interval(state) == 30.0
    assert pool.spinup_interval(replace(state, deaths_before_ack=0)) == 20.0
    assert pool.spinup_interval(replace(state, deaths_before_ack=10_000)) == 30.0


def test_worker_ack_command_round_trip() -> None:
    child = Child(9, 0, 0, 0.0)
    state = State(config=Config(ack_timer=None), children={9: child}, deaths_before_ack=3, last_spinup_at=0.0)
    after, effects = step.step(state, CommandReceived(4, {"command": "worker:ack", "pid": "9"}, 0.0))
    assert after.children[9].acked and after.deaths_before_ack == 0
    assert any(isinstance(e, Log) and "breaking the streak of 3" in e.message for e in effects)


def test_parse_int_signs_and_junk() -> None:
    assert commands._parse_int(" +5 ") == 5
    assert commands._parse_int("-5") == -5
    assert commands._parse_int("+-5") is None
    assert commands._parse_int("X5") is None
    assert commands._parse_int("") is None
    assert commands._parse_int("٣") is None


def test_set_workers_answers_the_request() -> None:
    state = State(config=Config(number=2))
    after, effects = commands._set_workers(state, _request("set_workers", "3", request_id="s"))
    text = "Altering worker count, 2 -> 3. Will spin up additional workers."
    assert after.config.number == 3
    assert effects == [Log(LogLevel.INFO, text), Reply(5, text, "s")]
    after, effects = commands._set_workers(state, _request("set_workers", "1"))
    assert effects[-1] == Reply(5, "Altering worker count, 2 -> 1. Will gracefully terminate workers.", None)


# --- pool, state, config -------------------------------------------------------------------


def test_initial_state_keeps_the_verbosity() -> None:
    from einhorn.core.state import initial_state

    assert initial_state(Config(), verbosity=0).verbosity == 0


def test_runtime_setting_bounds() -> None:
    from einhorn.core.config import MAX_DURATION, apply_setting

    base = Config()
    assert isinstance(apply_setting(base, "number", 1001), str)
    assert apply_setting(base, "number", 1000) == replace(base, number=1000)
    assert apply_setting(base, "max_unacked", 1) == replace(base, max_unacked=1)
    assert isinstance(apply_setting(base, "seconds", True), str)
    assert isinstance(apply_setting(base, "seconds", "2"), str)
    assert isinstance(apply_setting(base, "seconds", MAX_DURATION + 0.5), str)
    assert apply_setting(base, "seconds", MAX_DURATION) == replace(base, seconds=float(MAX_DURATION), pacing=Pacing.INTERVAL)
    assert isinstance(apply_setting(base, "signal_timeout", MAX_DURATION + 1), str)
    assert apply_setting(base, "signal_timeout", MAX_DURATION) == replace(base, signal_timeout=MAX_DURATION)
    assert apply_setting(base, "pacing", "interval") == replace(base, pacing=Pacing.INTERVAL)
    assert apply_setting(replace(base, pacing=Pacing.INTERVAL), "pacing", "ack") == base
    for bad in ("fast", "ACK", None, 1, ["ack"]):
        assert apply_setting(base, "pacing", bad) == "must be one of ack, interval"
    assert apply_setting(base, "nope", 1) == (
        "unknown setting; known settings: number, seconds, max_unacked, max_upgrade_additional, signal_timeout, pacing"
    )


# --- actions ---------------------------------------------------------------------------------


def test_announce_marks_errors_for_subscribers() -> None:
    from einhorn.core.actions import announce

    state = State(config=Config(), upgrade_subscribers=(Subscriber(3, "u"),))
    assert announce(state, LogLevel.ERROR, "bad") == [Log(LogLevel.ERROR, "bad"), Reply(3, "ERROR: bad", "u", wait=True)]
    assert announce(state, LogLevel.INFO, "fine")[1] == Reply(3, "fine", "u", wait=True)


def test_signal_children_skips_the_dead_and_notes_repeats() -> None:
    from einhorn.core.actions import signal_children
    from einhorn.core.effects import Cause, SendSignal

    child = Child(2, 0, 0, 0.0, signaled=frozenset({"USR2"}))
    state = State(config=Config(), children={2: child}, clock=4.0)
    after, effects = signal_children(state, "USR2", [99, 2], Cause.UPGRADE)
    assert effects[1:] == [
        Log(LogLevel.ERROR, "Trying to send USR2 to dead child 99. The fact we tried this probably indicates a bug in Einhorn."),
        Log(
            LogLevel.ERROR,
            "Re-sending USR2 to already-signaled child 2. It may be slow to spin down, or it may be swallowing USR2s.",
        ),
        SendSignal(2, "USR2", Cause.UPGRADE),
    ]
    assert after.children[2].last_signaled_at == 4.0


def test_reexec_refused_while_shutting_down_answers_the_subscriber() -> None:
    from einhorn.core.upgrade import start_reexec

    state = State(config=Config(), respawn=False, shutdown_signal="USR2")
    after, effects = start_reexec(state, ReexecPurpose.RELOAD, Subscriber(8, "r"))
    message = "Not reloading einhorn because we're exiting"
    assert after == state
    assert effects == [Log(LogLevel.INFO, message), Reply(8, message, "r", failed=True)]


# --- commands --------------------------------------------------------------------------------


def test_false_command_and_unknown_command_answer_with_the_request_id() -> None:
    state = State(config=Config())
    _, effects = commands.handle_command(state, CommandReceived(1, {"command": False, "id": "f"}, 0.0))
    assert effects == [Reply(1, 'No "command" parameter provided; not sure what you want me to do.', "f", failed=True)]
    _, effects = commands.handle_command(state, CommandReceived(1, {"command": True, "id": "t"}, 0.0))
    assert isinstance(effects[0], Reply) and effects[0].message.startswith("Unrecognized command: true")
    assert effects[0].request_id == "t" and effects[0].failed


def test_worker_requests_never_echo_an_id() -> None:
    state = State(config=Config())
    for name in ("worker:ack", "worker:ping"):
        _, effects = commands.handle_command(state, CommandReceived(1, {"command": name, "args": 5, "id": "x"}, 0.0))
        assert effects == [Reply(1, "Args must be an array", None, failed=True)]
    _, effects = commands.handle_command(state, CommandReceived(1, {"command": "ehlo", "args": 5, "id": "x"}, 0.0))
    assert effects == [Reply(1, "Args must be an array", "x", failed=True)]


def test_args_of_an_unexpected_type_are_named_by_python_type() -> None:
    assert commands._args_problem([frozenset()]) == "Argument is a frozenset, not a string: frozenset()"


def test_dec_and_config_answer_the_request() -> None:
    state = State(config=Config(number=2))
    _, effects = commands._dec(state, _request("dec", request_id="d"))
    assert effects[-1] == Reply(5, "Decrementing number of workers from 2 -> 1", "d")
    request = replace(_request("config", "x", request_id="c"), document={"number": 3})
    after, effects = commands._config(state, request)
    assert after.config.number == 3
    assert effects[-1] == Reply(5, "Successfully merged in config: {number: 3}", "c")


def test_ping_without_a_request_id() -> None:
    child = Child(9, 0, 0, 0.0)
    state = State(config=Config(), children={9: child})
    after, _ = commands.handle_command(state, CommandReceived(1, {"command": "worker:ping", "pid": 9}, 3.0, wall=12.0))
    assert after.children[9].pinged_at == 3.0 and after.children[9].pinged_request_id is None


# --- serialize ---------------------------------------------------------------------------------


def test_restore_errors_say_what_was_wrong() -> None:
    import pytest

    from einhorn.core.serialize import StateFormatError, _request_id, from_plain, to_plain

    with pytest.raises(StateFormatError, match="^state document is a int, not a mapping$"):
        from_plain(5, Config())
    for key, value, expected in [
        ("children", "x", "expected a list, got str"),
        ("settings", [], "expected a mapping, got list"),
        ("version", "1", "expected a number, got '1'"),
        ("respawn", 1, "expected a boolean, got 1"),
    ]:
        document = {**to_plain(State(config=Config())), key: value}
        with pytest.raises(StateFormatError, match=f"^malformed state document: {expected}$"):
            from_plain(document, Config())
    assert _request_id(True) == "True" and _request_id(5) == 5 and _request_id("a") == "a" and _request_id(None) is None


def test_killed_survives_the_round_trip() -> None:
    from einhorn.core.serialize import from_plain, to_plain

    child = Child(3, 0, 0, 0.0, signaled=frozenset({"USR2"}), last_signaled_at=1.0, killed=True)
    state = State(config=Config(), children={3: child})
    assert from_plain(to_plain(state), Config())[0].children[3].killed


# --- step ----------------------------------------------------------------------------------------


def test_next_deadline_ignores_the_present() -> None:
    manual = Child(5, 0, 0, 0.0)
    assert step.next_deadline(State(config=Config(ack_timer=None), children={5: manual})) is None
    blocked = State(config=Config(number=2, max_unacked=1), children={5: manual}, last_spinup_at=0.0, clock=1.0)
    assert step.next_deadline(blocked) is None


def test_two_timer_acks_and_two_kills_in_one_step() -> None:
    from einhorn.core.effects import SendSignal
    from einhorn.core.events import Tick

    fresh = {p: Child(p, 0, p, 0.0) for p in (1, 2)}
    state = State(config=Config(number=2, ack_timer=1.0), children=fresh, last_spinup_at=0.0)
    _, effects = step.step(state, Tick(1.0))
    assert sum(1 for e in effects if isinstance(e, Log) and e.message.startswith("Up to")) == 2
    signaled = {
        1: Child(1, 0, 0, 0.0, acked=True),
        2: Child(2, 0, 1, 0.0, acked=True, signaled=frozenset({"USR2"}), last_signaled_at=0.0),
        3: Child(3, 0, 2, 0.0, acked=True, signaled=frozenset({"USR2"}), last_signaled_at=0.0),
    }
    state = State(config=Config(number=1, signal_timeout=2), children=signaled, last_spinup_at=0.0)
    _, effects = step.step(state, Tick(2.0))
    assert [e for e in effects if isinstance(e, SendSignal)] == [SendSignal(2, "KILL", Cause.ESCALATION), SendSignal(3, "KILL", Cause.ESCALATION)]


def test_fleet_upgrade_without_room_spawns_nothing_and_keeps_the_spinup_time() -> None:
    from einhorn.core.events import MasterStarted

    old = {p: Child(p, 0, p, 0.0, acked=True) for p in (1, 2)}
    state = State(
        config=Config(number=2, max_upgrade_additional=0),
        children=old,
        last_spinup_at=0.0,
        clock=5.0,
        reexec=Reexec(ReexecPurpose.FLEET_UPGRADE, (), 0, 0.0, ReexecPhase.EXECUTING),
    )
    after, effects = step._on_started(state, MasterStarted(5.0, restored=True))
    assert after.pending == {} and after.last_spinup_at == 0.0


def test_smooth_cull_and_make_room_in_the_same_pass() -> None:
    # Un-ACKed old workers go first, and the availability floor keeps the one that serves.
    old = {p: Child(p, 0, p, float(p), acked=p == 1) for p in (1, 2, 3)}
    state = State(
        config=Config(number=2, max_upgrade_additional=0),
        version=1,
        children=old,
        upgrading=UpgradeKind.SMOOTH,
        last_spinup_at=0.0,
    )
    after, effects = step._cull(state)
    messages = [e.message for e in effects if isinstance(e, Log)]
    assert "Smooth upgrade: killing off 1 old workers." in messages
    assert "At upgrade capacity: killing off 1 old workers to make room." in messages
    assert [p for p, c in after.children.items() if c.signaled] == [2, 3]


def test_room_to_make_only_during_a_live_capped_upgrade_or_for_old_workers_left() -> None:
    old = {p: Child(p, 0, p, 0.0, acked=True) for p in (1, 2)}
    base = State(config=Config(number=2, max_upgrade_additional=0), version=1, children=old, upgrading=UpgradeKind.FLEET)
    assert step._room_to_make(base) == 1
    assert step._room_to_make(replace(base, respawn=False, shutdown_signal="USR2")) == 0
    # No upgrade: room is made only for old workers the floor keeps (after a rollback), as in an upgrade.
    assert step._room_to_make(replace(base, upgrading=None)) == 1
    leaving = {p: replace(c, signaled=frozenset({"USR2"})) for p, c in old.items()}
    assert step._room_to_make(replace(base, upgrading=None, children=leaving)) == 0
    assert step._room_to_make(replace(base, config=replace(base.config, max_upgrade_additional=None))) == 0
    done = {**old, 3: Child(3, 1, 3, 0.0, signaled=frozenset({"USR2"})), 4: Child(4, 1, 4, 0.0, signaled=frozenset({"USR2"}))}
    assert step._room_to_make(replace(base, children=done)) == 0  # missing is 0
    old_spawn = replace(base, pending={0: PendingSpawn(0, 5, 0, 0.0)}, next_spawn_id=1)
    assert step._room_to_make(old_spawn) == 2
