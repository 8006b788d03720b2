"""The state document that crosses a re-exec: its format version, restoring other formats, the pipe.

The fixtures in fixtures/reexec/ are whole documents as the state passer
writes them (`core`: the serialized core state, `shell`: the descriptors that
survive the exec). `format_3.json` is the current format, byte for byte what
`to_plain` produces: if this test fails because the document changed, bump
`serialize.FORMAT` and keep the old file as a fixture of an older format.
(`settings` is open: each key is validated on its own and an unknown one is
ignored with a note, so a new runtime setting, like `pacing`, joins the
fixture without a new format.)
`format_2.json`, `format_1.json` and `format_0.json` are older formats (format 2: no generations, no
rollout, no upgrade options, no health record per child; format 1: child kinds
with the state passer among the children, wall-clock ping times, the re-exec
as two flat keys, a fixed shell document; format 0: no `format` key and fewer
fields), `format_4.json` a newer one (unknown fields at every level).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from einhorn.core import serialize
from einhorn.core.config import Config, Display
from einhorn.core.record import replace
from einhorn.core.state import (
    Child,
    LaunchSpec,
    Reexec,
    ReexecPhase,
    ReexecPurpose,
    Rollout,
    RolloutPhase,
    State,
    Subscriber,
    UpgradeKind,
    UpgradeOptions,
    Verdict,
    initial_state,
)
from einhorn.io import handoff, reexec
from einhorn.io.control import RestoredConnection
from einhorn.io.handoff import Descriptor

FIXTURES = Path(__file__).parent / "fixtures" / "reexec"
COMMAND_LINE = Config(number=1, seconds=1.0, max_unacked=8, signal_timeout=None, display=Display(socket_path="/tmp/x.sock"))
"""The new master's own configuration, from its command line: the document's settings override it."""


def fixture(name: str) -> dict[str, object]:
    document = json.loads((FIXTURES / name).read_text())
    assert isinstance(document, dict)
    return document


def core_of(document: dict[str, object]) -> dict[str, object]:
    core = document["core"]
    assert isinstance(core, dict)
    return core


def listener_fds(restored: reexec.Restored) -> list[int]:
    return [d.fd for d in restored.descriptors if d.kind == "listener"]


def server_fd(restored: reexec.Restored) -> int:
    (server,) = [d.fd for d in restored.descriptors if d.kind == "command_server"]
    return server


def connections(restored: reexec.Restored) -> list[RestoredConnection]:
    return [RestoredConnection.of(d) for d in restored.descriptors if d.kind == "connection"]


def through_pipe(payload: bytes, config: Config = COMMAND_LINE) -> reexec.Restored:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, payload)  # the fixtures are far below the pipe buffer
    finally:
        os.close(write_end)
    return reexec.read_state(read_end, config)  # closes read_end


# --- the current format ---------------------------------------------------------------------------


def test_the_document_carries_its_format_version() -> None:
    assert serialize.to_plain(initial_state(COMMAND_LINE))["format"] == serialize.FORMAT == 3


def test_the_current_format_is_exactly_the_format_3_fixture() -> None:
    core = core_of(fixture("format_3.json"))
    state, notes = serialize.from_plain(core, COMMAND_LINE)
    assert notes == [] and reexec.restore_note(notes) is None
    assert serialize.to_plain(state) == core


def test_format_3_restores_generations_rollout_and_upgrade_options() -> None:
    state = through_pipe((FIXTURES / "format_3.json").read_bytes()).state
    assert [g.version for g in state.generations] == [3, 4, 5]
    old, new, rolled_back = state.generations
    assert old.launch == LaunchSpec(
        ("python3", "server.py"), "/usr/bin/python3", "/srv/app/releases/2026-11-30",
        (("APP_ENV", "production"), ("PATH", "/usr/bin:/bin")), "USR2",
    )
    assert new.launch.cwd == "/srv/app/releases/2026-12-01" and new.rolled_back_because is None
    assert rolled_back.launch.graceful_signal == "TERM"
    assert rolled_back.rolled_back_because == "canary worker 2005 exited before ACK (exit status 1)"
    options = UpgradeOptions(canary=1, bake=30.0, timeout=120.0)
    assert state.rollout == Rollout(4, 3, UpgradeKind.SMOOTH, options, 60.0, RolloutPhase.FINISHING, 1, 1, None, 1, "exit status 1")
    assert state.reexec is not None and state.reexec.options == replace(options, env=(("APP_RELEASE", "2026-12-01"),))


def test_format_3_restores_the_health_record() -> None:
    state = through_pipe((FIXTURES / "format_3.json").read_bytes()).state
    assert state.children[2001] == Child(
        2001, 4, 0, 100.5, acked=True, pinged_at=99.25, pinged_request_id="r-7",
        rss_bytes=50 << 20, measured_at=102.5, verdict=Verdict.PING_TIMEOUT, verdict_at=102.0,
    )
    assert all(c.verdict is None and c.rss_bytes is None for pid, c in state.children.items() if pid != 2001)


def test_format_2_restores_every_field() -> None:
    restored = through_pipe((FIXTURES / "format_2.json").read_bytes())
    state = restored.state
    assert restored.notes == ["format 2 restored by format 3"]
    assert state.generations == () and state.rollout is None
    assert state.version == 4 and state.next_spawn_id == 12 and state.deaths_before_ack == 1
    assert state.upgrading is UpgradeKind.SMOOTH
    assert state.reexec == Reexec(
        ReexecPurpose.FLEET_UPGRADE, (Subscriber(5, "f-2"), Subscriber(6, None)), 2, 131.5, ReexecPhase.EXECUTING
    )
    assert state.next_check_id == 3
    assert state.upgrade_subscribers == (Subscriber(3, "u-1"),)
    assert state.verbosity == 0 and state.clock == 103.0 and state.last_spinup_at == 102.0
    assert state.children[2001] == Child(2001, 4, 0, 100.5, acked=True, pinged_at=99.25, pinged_request_id="r-7")
    assert state.children[2002].signaled == frozenset({"USR2"}) and state.children[2002].last_signaled_at == 101.0
    assert not state.children[2003].acked  # its timer ACK is still due: spinup_at + ack_timer
    assert sorted(state.children) == [2001, 2002, 2003] and restored.helpers == [2004]
    # Runtime settings (inc, set_workers, config) override the new master's command line.
    assert (state.config.number, state.config.seconds, state.config.max_unacked, state.config.signal_timeout) == (3, 0.5, 2, 9)
    assert state.config.display.socket_path == "/tmp/x.sock"  # not a runtime setting: from the command line
    assert listener_fds(restored) == [3] and server_fd(restored) == 4
    assert connections(restored) == [
        RestoredConnection(3, 8, b'{"command": "eh', b"---%0Amessage: hi\n"),
        RestoredConnection(5, 9, b"", b""),
        RestoredConnection(6, 10, b"", b""),
    ]


def test_format_1_is_translated_and_its_state_passer_becomes_a_helper() -> None:
    restored = through_pipe((FIXTURES / "format_1.json").read_bytes())
    state = restored.state
    assert restored.notes == [
        "format 1 restored by format 3",
        "dropped 1 state passer(s) from the children",
        "dropped 1 wall-clock ping time(s)",
    ]
    assert sorted(state.children) == [2001, 2002, 2003] and restored.helpers == [2004]
    assert state.children[2001] == Child(2001, 4, 0, 100.5, acked=True, pinged_at=None, pinged_request_id="r-7")
    # A format 1 master exec'd only once its check had passed.
    assert state.reexec == Reexec(
        ReexecPurpose.FLEET_UPGRADE, (Subscriber(5, "f-2"), Subscriber(6, None)), 0, 0.0, ReexecPhase.EXECUTING
    )
    assert (state.config.number, state.config.seconds, state.config.max_unacked, state.config.signal_timeout) == (3, 0.5, 2, 9)
    # Its fixed shell document becomes the hand-off registry's list, in the same order.
    assert listener_fds(restored) == [3] and server_fd(restored) == 4
    assert connections(restored) == [
        RestoredConnection(3, 8, b'{"command": "eh', b"---%0Amessage: hi\n"),
        RestoredConnection(5, 9, b"", b""),
        RestoredConnection(6, 10, b"", b""),
    ]


# --- other formats ----------------------------------------------------------------------------------


def test_an_older_format_gets_defaults_and_one_log_line() -> None:
    restored = through_pipe((FIXTURES / "format_0.json").read_bytes())
    state = restored.state
    assert state.version == 2 and state.upgrading is UpgradeKind.FLEET and state.next_spawn_id == 9
    assert state.upgrade_subscribers == (Subscriber(4, "7"),)
    # Missing keys: the defaults of a fresh master (settings: the command line's).
    assert state.pending == {} and state.reexec_purpose is None and state.reexec_subscribers == ()
    assert state.shutdown_signal is None and state.verbosity == 1
    assert state.config == COMMAND_LINE
    assert all(not c.killed and c.pinged_at is None and c.pinged_request_id is None for c in state.children.values())
    assert sorted(state.children) == [3101, 3102, 3103] and not state.children[3102].acked
    assert state.children[3103].signaled == frozenset({"USR2"})
    # One note per kind of change, not one per child; and one log line for all of them.
    assert restored.notes == [
        "format None restored by format 3",
        "state: added default values for ['format', 'pending', 'settings', 'shutdown_signal', 'verbosity']",
        "child: added default values for ['killed', 'pinged_at', 'pinged_request_id']",
    ]
    note = reexec.restore_note(restored.notes)
    assert note is not None and "\n" not in note
    assert note.startswith("State format for einhorn has changed: format None restored by format 3; state: added")


def test_a_newer_format_loses_unknown_keys_with_one_log_line() -> None:
    restored = through_pipe((FIXTURES / "format_4.json").read_bytes())
    state = restored.state
    assert state.version == 7 and state.reexec_purpose is ReexecPurpose.RELOAD and state.verbosity == 2
    assert state.reexec_subscribers == (Subscriber(8, "r1"),)
    assert state.config.max_unacked == 4 and state.config.max_upgrade_additional == 1 and state.config.number == 2
    assert sorted(state.children) == [4201, 4202] and all(c.acked for c in state.children.values())
    assert restored.notes == [
        "format 4 restored by format 3",
        "state: added default values for ['generations', 'rollout']",
        "state: deleted unknown values for ['last_upgraded_at', 'worker_groups']",
        "child: added default values for ['measured_at', 'verdict', 'verdict_at']",
        "child: deleted unknown values for ['cgroup']",
    ]
    assert listener_fds(restored) == [3, 4] and server_fd(restored) == 5  # unknown shell keys are ignored
    assert connections(restored) == [RestoredConnection(8, 6, b"", b"")]
    note = reexec.restore_note(restored.notes)
    assert note is not None and note.count("deleted unknown values") == 2 and "\n" not in note


def test_a_setting_this_version_does_not_know_is_noted_and_ignored() -> None:
    core = core_of(fixture("format_3.json"))
    core["settings"] = {**core["settings"], "gc_before_fork": True}  # type: ignore[dict-item]
    state, notes = serialize.from_plain(core, COMMAND_LINE)
    assert state.config.number == 3
    assert len(notes) == 1 and notes[0].startswith("ignored setting 'gc_before_fork'=True: unknown setting")


def test_many_children_with_the_same_gap_make_one_note() -> None:
    children = [{"pid": 10 + n, "version": 0, "index": n, "spinup_at": 1.0} for n in range(50)]
    document = {**serialize.to_plain(initial_state(COMMAND_LINE)), "children": children}
    state, notes = serialize.from_plain(document, COMMAND_LINE)
    assert len(state.children) == 50
    assert notes == [
        "child: added default values for ['acked', 'killed', 'last_signaled_at', 'measured_at', 'pinged_at',"
        " 'pinged_request_id', 'rss_bytes', 'signaled', 'verdict', 'verdict_at']"
    ]


# --- the pipe and the state passer ------------------------------------------------------------------


def test_a_state_larger_than_the_pipe_buffer_crosses_through_the_state_passer() -> None:
    children = {pid: Child(pid, 1, pid - 100_000, float(pid), acked=pid % 2 == 0) for pid in range(100_000, 102_000)}
    state = replace(initial_state(COMMAND_LINE), children=children, version=1)
    conn = RestoredConnection(9, 11, b"partial", b"x" * 100_000)
    shell = reexec.shell_document([Descriptor("listener", 3, {"index": 0}), Descriptor("command_server", 4), conn.descriptor()])
    read_end, write_end = os.pipe()
    passer = reexec.fork_state_passer(state, shell, write_end)
    os.close(write_end)
    try:
        restored = reexec.read_state(read_end, COMMAND_LINE)
    finally:
        _, status = os.waitpid(passer, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(json.dumps(serialize.to_plain(state))) > 2**16
    # The passer names itself a helper (not a child), so that the new shell reaps it knowingly.
    assert restored.helpers == [passer]
    assert restored.state.children == children
    assert connections(restored) == [conn]
    assert restored.notes == []


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not a state",
        b"[]",
        b'{"core": {}}',
        b'{"shell": {"listener_fds": [], "server_fd": 3, "connections": []}}',
        b'{"core": [], "shell": {"listener_fds": [], "server_fd": 3, "connections": []}}',
        b'{"core": {"children": "none"}, "shell": {"listener_fds": [], "server_fd": 3, "connections": []}}',
        b'{"core": {}, "shell": {"listener_fds": ["three"], "server_fd": 3, "connections": []}}',
        b'{"core": {}, "shell": {"listener_fds": [], "server_fd": 3, "connections": [{"id": 1}]}}',
        b'{"core": {}, "shell": {"descriptors": [{"kind": "listener"}]}}',
        b'{"core": {}, "shell": {"descriptors": [{"kind": "listener", "fd": "3"}]}}',
        b'{"core": {}, "shell": {"descriptors": [], "helpers": ["passer"]}}',
        b"\xff\xfe",
    ],
)
def test_an_unreadable_document_is_reported_as_such(payload: bytes) -> None:
    with pytest.raises(reexec.StateUnreadable, match="could not read the state from fd"):
        through_pipe(payload)


def test_a_closed_state_fd_is_unreadable() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(reexec.StateUnreadable):
        reexec.read_state(read_end, COMMAND_LINE)


def test_restore_note_is_none_without_notes() -> None:
    assert reexec.restore_note([]) is None
    assert reexec.restore_note(["a", "b"]) == "State format for einhorn has changed: a; b"


def test_the_shell_document_round_trips_binary_buffers() -> None:
    raw = bytes(range(256))
    conn = RestoredConnection(2, 12, raw, raw[::-1])
    listeners = [Descriptor("listener", 7, {"index": 0}), Descriptor("listener", 8, {"index": 1})]
    shell = reexec.shell_document([*listeners, Descriptor("command_server", 9), conn.descriptor()])
    document = {"core": serialize.to_plain(State(config=COMMAND_LINE)), "shell": shell}
    restored = through_pipe(json.dumps(document).encode())
    assert connections(restored) == [conn]
    assert listener_fds(restored) == [7, 8] and server_fd(restored) == 9


def test_format_1_children_without_a_kind_are_workers_and_every_passer_and_ping_is_counted() -> None:
    core = core_of(fixture("format_1.json"))
    children = core["children"]
    assert isinstance(children, list)
    passer = {**children[3], "pid": 2005}
    kindless = {k: v for k, v in children[2].items() if k != "kind"}
    pinged = {**children[1], "pinged_at": 1700000200.0}
    # A passer before a worker: the workers after it are kept.
    core = {**core, "children": [children[3], passer, children[0], pinged, kindless]}
    state, notes = serialize.from_plain(core, COMMAND_LINE)
    assert sorted(state.children) == [2001, 2002, 2003]
    assert "dropped 2 state passer(s) from the children" in notes
    assert "dropped 2 wall-clock ping time(s)" in notes
    assert all(c.pinged_at is None for c in state.children.values())


def test_format_1_reexec_without_subscribers_restores_with_none() -> None:
    core = {k: v for k, v in core_of(fixture("format_1.json")).items() if k != "reexec_subscribers"}
    state, _ = serialize.from_plain(core, COMMAND_LINE)
    assert state.reexec == Reexec(ReexecPurpose.FLEET_UPGRADE, (), 0, 0.0, ReexecPhase.EXECUTING)
    idle = {k: v for k, v in core.items() if k != "reexec_purpose"}
    assert serialize.from_plain(idle, COMMAND_LINE)[0].reexec is None


def test_hand_off_data_crosses_the_state_passer_and_is_claimed_once() -> None:
    state = initial_state(COMMAND_LINE)
    data = {"event_stream": {"sequence": 41, "subscribers": [[3, "sub"]]}, "metrics": {"spawns": 7}}
    shell = reexec.shell_document([Descriptor("command_server", 4)], [], data)
    read_end, write_end = os.pipe()
    passer = reexec.fork_state_passer(state, shell, write_end)
    os.close(write_end)
    try:
        restored = reexec.read_state(read_end, COMMAND_LINE)
    finally:
        os.waitpid(passer, 0)
    registry = handoff.Handoff(restored.descriptors, restored.data)
    assert registry.claim_data("event_stream") == {"sequence": 41, "subscribers": [[3, "sub"]]}
    assert registry.claim_data("event_stream") is None
    assert registry.claim_data("metrics") == {"spawns": 7}


def test_a_shell_document_without_data_has_no_data_key() -> None:
    assert "data" not in reexec.shell_document([Descriptor("command_server", 4)])
