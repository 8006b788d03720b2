"""The command socket with a real master (issue 3): every command, every request shape, bad input,
the socket file's safety, `-g`, manual ACKs, pings, upgrades, einhornsh and Ruby's YAML loader."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import pwd
import re
import resource
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pexpect
import pytest
import yaml

from einhorn import __version__
from einhorn.framing import encode_message
from einhorn.protocol import request
from tests.integration.harness import EINHORNSH, Harness, Master
from tests.integration.waiting import wait_until
from tests.integration.wire import Connection, decode_reply, escape, frame
from tests.integration.workers import TIME_SERVER, recorder, signals_received, wait_ready

FAST = ("-m", "0.1", "-s", "0.1")
HELP_COMMANDS = [
    "abort_upgrade", "config", "dec", "die", "help", "inc", "louder", "quieter", "reload",
    "set_workers", "signal", "state", "status", "subscribe", "upgrade", "upgrade_fleet",
]  # fmt: skip
PARSE_ERROR = {"message": "Could not parse command"}


def one(master: Master, request: dict[str, object]) -> dict[str, object]:
    [reply] = master.send_raw([frame(request)])
    return reply


def message_of(master: Master, command: str, *args: str) -> str:
    return str(one(master, {"command": command, "args": list(args)})["message"])


def user_name() -> str:
    return os.environ.get("USER") or getpass.getuser()


# --- every command ------------------------------------------------------------


def test_ehlo_greets_the_user_and_names_pid_and_version(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    reply = one(master, {"command": "ehlo", "user": "alice", "id": "e1"})
    assert reply == {
        "message": f"Welcome, alice! You are speaking to Einhorn Master Process {master.pid}.\n"
        f"This is Einhorn {__version__}.\n",
        "request_id": "e1",
    }
    named = harness.start("-c", "shop", "-n", "1", *FAST)
    text = message_of(named, "ehlo")
    assert text.startswith("Welcome, ") and f"Einhorn Master Process {named.pid} (shop).\n" in text


def test_help_lists_the_commands_sorted(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST)
    text = message_of(master, "help")
    head = "You are speaking to the Einhorn command socket. You can run the following commands:\n\n"
    assert text.startswith(head) and text.endswith("\n")
    lines = text[len(head) :].rstrip("\n").split("\n")
    assert [line.split(": ", 1)[0] for line in lines] == HELP_COMMANDS
    assert "help: Print out available commands" in lines
    assert "dec: Decrement the number of Einhorn child processes" in lines


def test_state_is_yaml_with_ruby_symbol_keys_and_json_on_request(harness: Harness) -> None:
    master = harness.start("-n", "2", *FAST, "-b", "127.0.0.1:0", workers=2)
    text = message_of(master, "state")
    assert text.startswith("---\n:state:\n")
    assert re.search(r"^  :children:$", text, re.M) and re.search(r"^      :type: :worker$", text, re.M)
    document = yaml.safe_load(text)[":state"]
    children = document[":children"]
    assert sorted(children) == master.children()  # integer pid keys
    for child in children.values():
        assert child[":type"] == ":worker" and child[":acked"] is True and child[":signaled"] == []
        assert child[":version"] == 0 and child[":index"] in (0, 1)
    assert document[":config"][":number"] == 2
    assert document[":version"] == 0 and document[":upgrading"] is False
    assert document[":bound_ports"] == [master.bound_port()]

    as_json = json.loads(message_of(master, "state", "--json"))["state"]
    assert sorted(int(pid) for pid in as_json["children"]) == master.children()
    assert {c["type"] for c in as_json["children"].values()} == {"worker"}
    assert as_json["config"]["number"] == 2 and as_json["bound_ports"] == [master.bound_port()]


def test_inc_dec_and_dec_refuses_below_one(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    assert message_of(master, "inc") == "Incrementing number of workers from 1 -> 2"
    master.wait_workers(2)
    assert message_of(master, "dec") == "Decrementing number of workers from 2 -> 1"
    master.wait_workers(1)
    assert message_of(master, "dec") == (
        f"Can't decrease number of workers (already at 1).  Run kill {master.pid} if you really want to kill einhorn."
    )
    assert master.state()["config"]["number"] == 1  # type: ignore[index]
    master.wait_workers(1)


def test_set_workers_validates_its_count(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    for bad in ("abc", "0", "5000", "-3", "2.5"):
        assert message_of(master, "set_workers", bad) == f"Invalid count: '{bad}'. Must be an integer in [1,1000)."
    assert message_of(master, "set_workers") == "No args provided"
    assert message_of(master, "set_workers", "3") == "Altering worker count, 1 -> 3. Will spin up additional workers."
    master.wait_workers(3)
    assert message_of(master, "set_workers", "2") == "Altering worker count, 3 -> 2. Will gracefully terminate workers."
    master.wait_workers(2)


def test_quieter_and_louder_change_what_is_logged(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    assert message_of(master, "quieter") == "Verbosity set to 2"
    assert message_of(master, "quieter") == "Verbosity set to 2"
    message_of(master, "inc")
    master.wait_workers(2)
    assert "Incrementing number of workers" not in master.log()  # INFO is silenced at 2
    assert message_of(master, "louder") == "Verbosity set to 1"
    assert message_of(master, "louder") == "Verbosity set to 0"
    assert message_of(master, "louder") == "Verbosity set to 0"
    message_of(master, "dec")
    master.wait_log(r"INFO: Decrementing number of workers from 2 -> 1")
    [pid] = master.wait_workers(1)
    master.send_raw([frame({"command": "worker:ping", "pid": pid, "request_id": "p"})], replies=0)
    master.wait_log(rf"DEBUG: .*{pid}")  # debug lines show at verbosity 0


def test_signal_reaches_every_worker_and_validates_names(harness: Harness) -> None:
    out = harness.directory
    master = harness.start("-n", "2", *FAST, program=recorder(out, stay="USR1"), workers=2)
    pids = master.children()
    wait_ready(out, pids)
    text = message_of(master, "signal", "usr1")
    assert str(pids[0]) in text and str(pids[1]) in text
    wait_until(lambda: all(signals_received(out, pid) == ["USR1"] for pid in pids), 5, "USR1 at the workers")
    message_of(master, "signal", "SIGUSR1")
    wait_until(lambda: all(signals_received(out, pid) == ["USR1", "USR1"] for pid in pids), 5, "SIGUSR1 too")
    assert message_of(master, "signal", "NOPE") == 'Invalid signal: "NOPE"'
    assert message_of(master, "signal") == "No args provided"
    assert master.children() == pids  # `signal` does not mark workers as signaled: nobody is replaced
    assert all(not w["signaled"] for w in master.workers().values())


def test_die_signals_workers_and_the_master_exits(harness: Harness) -> None:
    out = harness.directory
    master = harness.start("-n", "2", *FAST, program=recorder(out), workers=2)
    pids = master.children()
    wait_ready(out, pids)
    assert message_of(master, "die", "NOPE") == 'Invalid signal: "NOPE"'
    assert message_of(master, "die").startswith("Einhorn is going down!")
    assert master.wait_exit() == 0
    assert [signals_received(out, pid) for pid in pids] == [["USR2"], ["USR2"]]
    assert harness.leftovers() == []


def test_die_with_a_signal(harness: Harness) -> None:
    out = harness.directory
    master = harness.start("-n", "1", *FAST, program=recorder(out), workers=1)
    [pid] = master.children()
    wait_ready(out, [pid])
    assert message_of(master, "die", "TERM").startswith("Einhorn is going down!")
    assert master.wait_exit() == 0
    assert signals_received(out, pid) == ["TERM"]


def test_config_merges_known_settings_only(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    reply = message_of(master, "config", '{"seconds": 0.2,', '"number": 2}')  # joined with a space
    assert reply.startswith("Successfully merged in config:")
    assert master.state()["config"]["seconds"] == 0.2  # type: ignore[index]
    master.wait_workers(2)
    assert message_of(master, "config", "max_unacked: 3").startswith("Successfully merged")
    before = master.state()["config"]
    assert message_of(master, "config").startswith("Must pass in a YAML-encoded hash")
    assert message_of(master, "config", "[1, 2]").startswith("Parsed argument is a list, not a hash")
    assert message_of(master, "config", "{unclosed: [").startswith("Could not parse argument")
    assert message_of(master, "config", "{foo: 1}").startswith("Unknown config setting")
    assert message_of(master, "config", "{number: 0}").startswith("Invalid value for number")
    assert message_of(master, "config", "{seconds: fast}").startswith("Invalid value for seconds")
    assert message_of(master, "config", "{a: &x 1, b: *x}").startswith("Could not parse argument")
    assert master.state()["config"] == before  # refused settings changed nothing


def test_manual_ack_from_time_server_is_shown_in_state(harness: Harness) -> None:
    master = harness.start("-n", "2", "-m", "manual", "-b", "127.0.0.1:0", program=[TIME_SERVER], workers=2)
    assert all(w["acked"] for w in master.workers().values())
    assert len(master.timed_lines(r"Up to \d / 2 manual ACKs")) == 2


def test_manual_ack_by_hand_closes_the_connection(harness: Harness) -> None:
    master = harness.start("-n", "1", "-m", "manual", *FAST[2:], workers=1, acked=False)
    [pid] = master.children()
    assert master.workers()[pid]["acked"] is False
    with master.connect() as conn:
        conn.send(frame({"command": "worker:ack", "pid": pid}))
        assert conn.read_line() is None  # no reply: the master closes the connection
    master.wait_workers(1)
    master.wait_log(r"Up to 1 / 1 manual ACKs")
    with master.connect() as conn:  # a repeated ACK and an unknown pid are logged and ignored
        conn.send(frame({"command": "worker:ack", "pid": pid}))
        assert conn.read_line() is None
    with master.connect() as conn:
        conn.send(frame({"command": "worker:ack", "pid": 1}))
        assert conn.read_line() is None
    master.wait_log(rf"Pid {pid} already ACKed; ignoring new ACK")
    master.wait_log(r"Could not find state for PID 1; ignoring ACK")
    assert master.proc.poll() is None


def test_manual_ack_in_timer_mode_is_logged_and_ignored(harness: Harness) -> None:
    master = harness.start("-v", "-n", "1", "-m", "60", "-b", "127.0.0.1:0", program=[TIME_SERVER], workers=1, acked=False)
    [pid] = master.children()
    master.wait_log(rf"DEBUG: .*manual ACK .*{pid}|{pid}.*manual ACK")  # expected in timer mode: debug only
    assert master.workers()[pid]["acked"] is False


def test_worker_ping_is_visible_in_state(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    [pid] = master.children()
    with master.connect() as conn:
        conn.send(frame({"command": "worker:ping", "pid": pid, "request_id": "ping-42"}))
        assert conn.read_line() is None
    wait_until(lambda: master.workers()[pid]["pinged_request_id"] == "ping-42", 5, "the ping")
    assert master.workers()[pid]["pinged_at"] is not None
    yaml_state = yaml.safe_load(message_of(master, "state"))
    assert yaml_state[":state"][":children"][pid][":pinged_request_id"] == "ping-42"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("command", "announcement"),
    [("upgrade", "Upgrading smoothly, as commanded"), ("upgrade_fleet", "Upgrading fleet, as commanded")],
)
def test_upgrade_streams_progress_until_upgrade_done(harness: Harness, command: str, announcement: str) -> None:
    master = harness.start("-n", "2", *FAST, workers=2)
    old = master.children()
    replies = master.command(command, timeout=30)
    request_id = replies[0]["request_id"]
    assert replies[0] == {"message": announcement, "request_id": request_id, "wait": True}
    assert replies[-1] == {"message": "Upgrade done", "request_id": request_id}
    assert all(r["wait"] is True and r["request_id"] == request_id for r in replies[:-1])
    progress = [str(r["message"]) for r in replies[1:-1]]
    assert any("Launched" in line for line in progress), progress
    new = master.wait_workers(2)
    assert not set(new) & set(old)
    assert {w["version"] for w in master.workers().values()} == {1}


def test_reload_answers_and_the_master_keeps_its_workers(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    before = master.children()
    replies = master.command("reload", timeout=30)
    assert replies[0]["message"] == "Reloading, as commanded"
    assert "wait" not in replies[-1]
    wait_until(lambda: "Restored state" in master.log(), 10, "the re-exec'd master")
    assert master.wait_workers(1) == before
    assert master.proc.poll() is None


# --- request shapes -------------------------------------------------------------


def test_request_shapes_real_clients_send(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST)
    welcome = f"Welcome, bob! You are speaking to Einhorn Master Process {master.pid}."
    block = escape("---\ncommand: ehlo\nid: y1\nuser: bob\n").encode() + b"\n"  # the Go and Ruby clients
    spaced = b'{"command": "ehlo", "id": "j1", "user": "bob"}\n'
    compact = b'{"command":"ehlo","id":"c1","user":"bob"}\n'
    for line, request_id in ((block, "y1"), (spaced, "j1"), (compact, "c1")):
        [reply] = master.send_raw([line])
        assert str(reply["message"]).startswith(welcome) and reply["request_id"] == request_id, line
    [reply] = master.send_raw([b'{"command":"ehlo","request_id":"g1","user":"bob"}\n'])  # one Go client
    assert reply["request_id"] == "g1"
    [reply] = master.send_raw([b'{"command":"ehlo","user":"bob"}\n'])  # no id: message only
    assert set(reply) == {"message"}


def test_numeric_request_id_is_echoed_as_given(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST)
    [reply] = master.send_raw([b'{"command":"ehlo","id":7}\n'])
    assert reply["request_id"] == 7  # the original einhornsh sends integer ids


def test_a_request_split_across_writes(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST)
    with master.connect() as conn:
        for piece in (b'{"comm', b'and":"he', b'lp","id":"s', b'plit"}', b"\n"):
            conn.send(piece)
            master.message("ehlo")  # a round trip elsewhere: the master has read the piece by now
        reply = conn.read_reply()
    assert reply["request_id"] == "split" and str(reply["message"]).startswith("You are speaking")


def test_several_requests_in_one_write_are_answered_in_order(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST)
    batch = b"".join(frame({"command": c, "id": str(i)}) for i, c in enumerate(["ehlo", "help", "state", "nope"]))
    replies = master.send_raw([batch], replies=4)
    assert [r["request_id"] for r in replies] == ["0", "1", "2", "3"]
    assert str(replies[3]["message"]).startswith('Unrecognized command: "nope"')
    with master.connect() as conn:  # and the connection stays open for more
        conn.send(frame({"command": "ehlo", "id": "a"}))
        assert conn.read_reply()["request_id"] == "a"
        conn.send(frame({"command": "help", "id": "b"}))
        assert conn.read_reply()["request_id"] == "b"


def test_a_percent_and_a_newline_survive_the_framing(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST)
    [reply] = master.send_raw([frame({"command": "ehlo", "user": "50%\nof bob"})])
    assert str(reply["message"]).startswith("Welcome, 50%\nof bob! ")


# --- bad input --------------------------------------------------------------------


def test_unparseable_and_non_mapping_lines(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    with master.connect() as conn:
        for line in (b"{not yaml: [", b'"just a string"', b"[1, 2]", b"42", b"", b"- a%0A- b", b"\t{:", b"\xff\xfe"):
            conn.send(line + b"\n")
            assert conn.read_reply() == PARSE_ERROR, line
        conn.send(frame({"command": "ehlo", "id": "still-open"}))
        assert conn.read_reply()["request_id"] == "still-open"
    assert master.wait_workers(1)


def test_missing_unknown_and_badly_typed_commands(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    assert one(master, {"id": "x"}) == {
        "message": 'No "command" parameter provided; not sure what you want me to do.',
        "request_id": "x",
        "failed": True,  # (a request with an id: a new client)
    }
    unknown = str(one(master, {"command": "frobnicate"})["message"])
    assert unknown.startswith('Unrecognized command: "frobnicate"\n\nabort_upgrade: ')
    assert [line.split(":")[0] for line in unknown.strip().split("\n")[2:]] == HELP_COMMANDS
    assert str(one(master, {"command": 5})["message"]).startswith("Unrecognized command: 5")
    for odd in ({"a": 1}, [1], [{"a": [1]}]):  # unhashable: these once crashed the master (bench/soak.py's fuzzer)
        assert str(one(master, {"command": odd})["message"]).startswith(f"Unrecognized command: {odd!r}")
        with master.connect() as conn:  # on a later line, once the connection has its role
            conn.send(frame({"command": "ehlo"}) + frame({"command": odd, "id": 1}) + frame({"command": "ehlo", "id": 2}))
            assert str(conn.read_reply()["message"]).startswith("Welcome")
            assert str(conn.read_reply()["message"]).startswith(f"Unrecognized command: {odd!r}")
            assert conn.read_reply()["request_id"] == 2
    assert master.proc.poll() is None and "Bug while" not in master.log()
    assert one(master, {"command": "signal", "args": "USR1"})["message"] == "Args must be an array"
    assert one(master, {"command": "signal", "args": [1]})["message"] == "Argument is a Integer, not a string: 1"
    assert one(master, {"command": "set_workers", "args": [None]})["message"] == (
        "Argument is a NilClass, not a string: nil"
    )
    assert str(one(master, {"command": "set_workers", "args": [{"a": 1}]})["message"]).startswith(
        "Argument is a Hash, not a string"
    )
    with master.connect() as conn:  # worker:ack without a usable pid: logged, connection closed
        conn.send(frame({"command": "worker:ack", "pid": [1]}))
        assert conn.read_line() is None
    assert master.wait_workers(1)


@pytest.mark.timeout(60)
def test_a_10_mb_line_closes_that_connection_only(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    with master.connect() as conn:
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            chunk = b"x" * 65536
            while sent < 10 * 1024 * 1024:
                conn.send(chunk)
                sent += len(chunk)
            conn.send(b"\n")
        lines = []
        with contextlib.suppress(ConnectionResetError):
            while (line := conn.read_line()) is not None:
                lines.append(line)
    assert sent < 10 * 1024 * 1024  # the master stopped reading and closed the connection
    assert all(re.fullmatch(r"Request too long \(limit \d+ bytes\)", json.loads(line)["message"]) for line in lines)
    assert len(lines) <= 1
    master.wait_log(r"longer than \d+ bytes")
    assert master.message("ehlo").startswith("Welcome")
    master.wait_workers(1)


def test_a_yaml_alias_bomb_is_refused_quickly(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, 10):
        prev, name = chr(ord("a") + n - 1), chr(ord("a") + n)
        levels.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    bomb = escape("command: ehlo\n" + "\n".join(levels) + "\n").encode() + b"\n"
    started = time.monotonic()
    [reply] = master.send_raw([bomb])
    assert reply == PARSE_ERROR
    assert time.monotonic() - started < 2
    assert master.message("ehlo").startswith("Welcome")


def test_binary_garbage(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    garbage = bytes(b for b in range(256) if b != 10) * 64
    with master.connect() as conn:
        conn.send(garbage + b"\n")
        assert conn.read_reply() == PARSE_ERROR
        conn.send(b"\x00\x00\x00\n")
        assert conn.read_reply() == PARSE_ERROR
        conn.send(frame({"command": "ehlo", "id": "after"}))
        assert conn.read_reply()["request_id"] == "after"
    master.wait_workers(1)


@pytest.mark.timeout(60)
def test_a_client_that_never_reads_is_dropped_and_others_are_served(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    greedy = master.connect()
    try:
        greedy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        requests = frame({"command": "help"}) * 12000  # ~12 MB of replies, never read
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            greedy.send(requests)
        assert master.message("ehlo").startswith("Welcome")  # served meanwhile
        master.wait_log(r"is not reading its replies", timeout=30)
    finally:
        greedy.close()
    assert master.message("ehlo").startswith("Welcome")
    master.wait_workers(1)


def test_a_client_that_disconnects_mid_message(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    for _ in range(20):
        with master.connect() as conn:
            conn.send(b'{"command":"eh')
    with master.connect() as conn:
        conn.send(frame({"command": "state"}))
        conn.sock.shutdown(socket.SHUT_RDWR)  # gone before the reply
    assert master.message("ehlo").startswith("Welcome")
    assert "Traceback" not in master.log() and "Bug" not in master.log()
    master.wait_workers(1)


@pytest.mark.timeout(60)
def test_500_concurrent_connections_some_refused_master_keeps_serving(harness: Harness) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 700:
        if hard != resource.RLIM_INFINITY and hard < 700:
            pytest.skip(f"needs 700 file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (700, hard))
    try:
        master = harness.start("-n", "1", *FAST, workers=1)
        welcomed = refused = 0
        connections: list[Connection] = []
        try:
            for _ in range(500):
                connections.append(master.connect())
            for conn in connections:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    conn.send(frame({"command": "ehlo"}))
                try:
                    line = conn.read_line()
                except ConnectionResetError:
                    line = None
                text = "" if line is None else str(json.loads(line.decode())["message"])
                if text.startswith("Welcome"):
                    welcomed += 1
                else:
                    assert line is None or text.startswith("Too many connections"), text
                    refused += 1
        finally:
            for conn in connections:
                conn.close()
        assert welcomed >= 100 and refused >= 1 and welcomed + refused == 500, (welcomed, refused)
        master.wait_log(r"Refusing command connections")
        assert master.message("ehlo").startswith("Welcome")
        master.wait_workers(1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- the socket file ------------------------------------------------------------


def test_command_socket_is_mode_0600(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST)
    mode = os.stat(master.socket_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_a_stale_socket_file_is_removed_with_a_log_line(harness: Harness) -> None:
    path = harness.directory / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # the file stays; nobody listens
    master = harness.start("-n", "1", *FAST, "-d", str(path), paths=False, workers=None)
    master.socket_path = str(path)
    master.wait_log(rf"Blowing away old Einhorn command socket at {re.escape(str(path))}")
    wait_until(lambda: _connectable(str(path)), 10, "the new command socket")
    assert master.message("ehlo").startswith("Welcome")


def _connectable(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


@pytest.mark.parametrize("occupant", ["live listener", "regular file"])
def test_an_occupied_socket_path_is_a_clear_error(harness: Harness, occupant: str) -> None:
    path = harness.directory / "taken.sock"
    marker = harness.directory / "started"
    with contextlib.ExitStack() as stack:
        if occupant == "live listener":
            listener = stack.enter_context(socket.socket(socket.AF_UNIX))
            listener.bind(str(path))
            listener.listen(1)
        else:
            path.write_text("not a socket")
        result = harness.run(
            "-d", str(path), "-e", str(harness.directory / "p"), "-f", str(harness.directory / "l"),
            "--", "touch", str(marker),
        )  # fmt: skip
        assert result.returncode != 0
        assert "-d" in result.stderr and str(path) in result.stderr, result.stderr
        assert not marker.exists() and path.exists() and harness.leftovers() == []
        if occupant == "live listener":
            assert _connectable(str(path))  # untouched


def test_a_held_lock_file_is_a_clear_error(harness: Harness) -> None:
    import fcntl

    lock = harness.directory / "l"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = harness.run("-d", str(harness.directory / "s"), "-f", str(lock), "--", "sleep", "30")
    assert result.returncode != 0 and "lock" in result.stderr.lower()
    assert harness.leftovers() == []


def test_another_uid_is_refused_by_peer_credentials(harness: Harness) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to another uid for the client needs root")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user to run the client as")
    master = harness.start("-n", "1", *FAST, workers=1)
    # The 0600 socket file already keeps others out; open it up so that only SO_PEERCRED stands.
    os.chmod(harness.directory, 0o711)
    os.chmod(Path(master.socket_path).parent, 0o711)
    assert _as_user(nobody.pw_uid, nobody.pw_gid, master.socket_path, open_file=False).startswith("refused-by-file")
    os.chmod(master.socket_path, 0o666)
    outcome = _as_user(nobody.pw_uid, nobody.pw_gid, master.socket_path, open_file=True)
    assert outcome.startswith("reply:Permission denied"), outcome
    master.wait_log(rf"Refused a command connection from pid \d+, uid {nobody.pw_uid}")
    assert master.message("ehlo").startswith("Welcome")


def _as_user(uid: int, gid: int, path: str, open_file: bool) -> str:
    """Connect to `path` from a forked child running as `uid`; what happened, as text."""
    read_end, write_end = os.pipe()
    payload = frame({"command": "ehlo"})
    pid = os.fork()
    if pid == 0:  # the child: plain system calls only, then _exit
        outcome = b"error"
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            client = socket.socket(socket.AF_UNIX)
            client.settimeout(5)
            try:
                client.connect(path)
            except PermissionError:
                outcome = b"refused-by-file"
            else:
                try:
                    client.sendall(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # refused at once: the reason is still there to read
                data = b""
                while not data.endswith(b"\n"):
                    chunk = client.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                outcome = b"reply:" + data
        except BaseException as error:  # noqa: BLE001 - report anything
            outcome = b"error:" + repr(error).encode()
        finally:
            os.write(write_end, outcome)
            os._exit(0)
    os.close(write_end)
    try:
        data = b""
        while chunk := os.read(read_end, 65536):
            data += chunk
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    text = data.decode(errors="replace")
    if text.startswith("reply:"):
        return "reply:" + str(json.loads(text[6:])["message"])
    return text


# --- -g and a shell worker ------------------------------------------------------


def test_command_socket_as_fd_lets_a_shell_worker_ack(harness: Harness) -> None:
    script = harness.directory / "ack.sh"
    script.write_text(
        "#!/bin/bash\n"
        "printf '{\"command\":\"worker:ack\",\"pid\":%d}\\n' $$ >&$EINHORN_SOCK_FD\n"
        "exec sleep 30\n"
    )
    script.chmod(0o755)
    master = harness.start("-n", "2", "-m", "manual", "-g", "-s", "0.1", program=[str(script)], workers=2)
    assert all(w["acked"] for w in master.workers().values())
    master.wait_log(r"Up to 2 / 2 manual ACKs")


# --- einhornsh ----------------------------------------------------------------------


def test_einhornsh_runs_every_command_with_e(harness: Harness) -> None:
    out = harness.directory
    master = harness.start("-n", "1", *FAST, program=recorder(out, stay="USR1"), workers=1)
    [pid] = master.children()
    wait_ready(out, [pid])
    result = master.einhornsh("ehlo; help; state; state --json")
    assert result.returncode == 0, result.stderr
    out_text = result.stdout
    assert f"Welcome, {user_name()}! You are speaking to Einhorn Master Process {master.pid}." in out_text
    assert "You are speaking to the Einhorn command socket." in out_text
    assert "\n:state:\n" in out_text and '{"state": {' in out_text

    steps = [
        ("inc", "Incrementing number of workers from 1 -> 2"),
        ("dec", "Decrementing number of workers from 2 -> 1"),
        ("set_workers abc", "Invalid count: 'abc'. Must be an integer in [1,1000)."),
        ("set_workers 1", ""),
        ("quieter", "Verbosity set to 2"),
        ("louder", "Verbosity set to 1"),
        ("signal USR1", f"Successfully sent USR1s to 1 processes: [{pid}]"),
        ("config 'seconds: 0.3'", "Successfully merged in config:"),
        ("bogus", 'Unrecognized command: "bogus"'),
    ]
    failing = {"set_workers abc", "bogus"}  # error replies: einhornsh exits 1 (EXTENSIONS §6)
    for command, expected in steps:
        result = master.einhornsh(command)
        assert result.returncode == (1 if command in failing else 0) and expected in result.stdout, (command, result)
    wait_until(lambda: signals_received(out, pid) == ["USR1"], 5, "USR1 via einhornsh")
    result = master.einhornsh("die")
    assert result.returncode == 0 and "Einhorn is going down!" in result.stdout
    assert master.wait_exit() == 0


def test_einhornsh_streams_an_upgrade(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    result = master.einhornsh("upgrade", timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().split("\n")
    assert lines[0] == "Upgrading smoothly, as commanded" and lines[-1] == "Upgrade done"


def test_einhornsh_without_a_master_gives_a_hint(harness: Harness) -> None:
    result = subprocess.run(
        [*EINHORNSH, "-d", str(harness.directory / "nothing.sock"), "-e", "state"],
        capture_output=True, text=True, timeout=20, env=harness.environment(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2  # could not connect (EXTENSIONS §6; the original exits 1)
    assert "-c" in result.stderr and "-d" in result.stderr


@pytest.mark.timeout(60)
def test_einhornsh_interactive(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    shell = pexpect.spawn(
        EINHORNSH[0], [*EINHORNSH[1:], "-d", master.socket_path],
        env={**master.env, "HOME": str(harness.directory), "TERM": "dumb"},
        encoding="utf-8", timeout=15,
    )  # fmt: skip
    try:
        shell.expect_exact(f"Welcome, {user_name()}! You are speaking to Einhorn Master Process {master.pid}.")
        shell.expect_exact("Enter 'help' if you're not sure what to do.")
        shell.expect_exact('Type "quit" or "exit" to quit at any time')
        shell.expect_exact("> ")
        shell.sendline("help")
        shell.expect_exact("help: Print out available commands")
        shell.expect_exact("> ")
        shell.sendline("inc; state")
        shell.expect_exact("Incrementing number of workers from 1 -> 2")
        shell.expect_exact(":children:")
        shell.expect_exact("> ")
        shell.sendline("quit")
        shell.expect_exact("Goodbye!")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)
    assert shell.exitstatus == 0
    master.wait_workers(2)


# --- Ruby's own YAML loader ---------------------------------------------------------

RUBY_LOADER = r"""
require "yaml"
require "set"
require "json"
doc = YAML.safe_load(STDIN.read, permitted_classes: [Symbol, Set, Time])
state = doc.fetch(:state)
children = state.fetch(:children)
puts JSON.generate({
  "pids" => children.keys.sort,
  "key_classes" => children.keys.map { |k| k.class.name }.uniq,
  "types" => children.values.map { |c| c.fetch(:type).inspect }.uniq,
  "spinup_classes" => children.values.map { |c| c.fetch(:spinup_time).class.name }.uniq,
  "signaled_classes" => children.values.map { |c| c.fetch(:signaled).class.name }.uniq,
  "number" => state.fetch(:config).fetch(:number),
  "version" => state.fetch(:version),
  "upgrading" => state.fetch(:upgrading),
  "bound_ports" => state.fetch(:bound_ports),
})
"""


def test_ruby_loads_state_with_its_safe_loader(harness: Harness) -> None:
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby is not installed (Debian: apt-get install -y ruby)")
    master = harness.start("-n", "2", *FAST, "-b", "127.0.0.1:0", workers=2)
    [ping_target, _] = master.children()
    master.send_raw([frame({"command": "worker:ping", "pid": ping_target, "request_id": "r"})], replies=0)
    wait_until(lambda: master.workers()[ping_target]["pinged_at"] is not None, 5, "the ping")
    text = message_of(master, "state")
    result = subprocess.run(
        [ruby, "-e", RUBY_LOADER], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded == {
        "pids": master.children(),
        "key_classes": ["Integer"],
        "types": [":worker"],
        "spinup_classes": ["Time"],
        "signaled_classes": ["Array"],
        "number": 2,
        "version": 0,
        "upgrading": False,
        "bound_ports": [master.bound_port()],
    }


# What a Ruby client (the original's Transport) reads back: the messages, as JSON.
RUBY_CLIENT_MESSAGES = r"""
require "yaml"; require "json"; require "set"; require "socket"
def serialize_message(message)
  YAML.dump(message).gsub(/%|\n/, "%" => "%25", "\n" => "%0A") + "\n"
end
def deserialize_message(line)
  YAML.safe_load(line.gsub(/%(25|0A)/, "%25" => "%", "%0A" => "\n"), permitted_classes: [Set, Symbol, Time], aliases: true)
end
sock = UNIXSocket.open(ARGV[0])
messages = [["set_workers", ["\u{1F600}"]], ["\u{1F600}", []], ["ehlo", []]].map do |command, args|
  sock.write(serialize_message({"command" => command, "args" => args}))
  deserialize_message(sock.readline).fetch("message")
end
STDIN.each_line { |line| messages << deserialize_message(line).fetch("message") }
puts JSON.generate(messages)
"""


def test_replies_with_characters_outside_the_bmp_are_utf8_that_yaml_loaders_read(harness: Harness) -> None:
    # JSON's \\u surrogate pairs are no YAML escape: PyYAML read two halves, Psych and yaml.v2 refuse them.
    master = harness.start("-n", "1", *FAST, workers=1)
    with master.connect() as conn:
        conn.send(frame({"command": "set_workers", "args": ["\U0001f600"]}))
        line = conn.read_line()
    assert line is not None and "'\U0001f600'".encode() in line
    assert str(decode_reply(line)["message"]).startswith("Invalid count: '\U0001f600'.")


def test_ruby_client_reads_replies_with_characters_outside_the_bmp(harness: Harness) -> None:
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby is not installed (Debian: apt-get install -y ruby)")
    # A cmd name that is not UTF-8, as a shell can pass it: the master's replies show U+FFFD.
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    master = harness.start("-c", name, "-n", "1", *FAST, workers=1)
    with master.connect() as conn:  # and a raw reply to a request einhornsh sends
        conn.send(encode_message(request("\U0001f600dance")))
        line = conn.read_line()
    assert line is not None
    result = subprocess.run(
        # -E UTF-8: the client's locale (in a US-ASCII one Ruby's gsub refuses any non-ASCII line)
        [ruby, "-E", "UTF-8", "-e", RUBY_CLIENT_MESSAGES, master.socket_path],
        input=line + b"\n",
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    invalid_count, unrecognized, welcome, unrecognized_raw = json.loads(result.stdout)
    assert invalid_count == "Invalid count: '\U0001f600'. Must be an integer in [1,1000)."
    assert unrecognized.startswith('Unrecognized command: "\U0001f600"\n')
    assert f"Einhorn Master Process {master.pid} (caf\ufffd).\n" in welcome
    assert unrecognized_raw.startswith('Unrecognized command: "\U0001f600dance"\n')


def test_ruby_client_round_trip(harness: Harness) -> None:
    """The original's Transport code, verbatim, talking to our master."""
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby is not installed (Debian: apt-get install -y ruby)")
    master = harness.start("-n", "1", *FAST, workers=1)
    script = r"""
require "yaml"; require "set"; require "socket"
def serialize_message(message)
  YAML.dump(message).gsub(/%|\n/, "%" => "%25", "\n" => "%0A") + "\n"
end
def deserialize_message(line)
  YAML.safe_load(line.gsub(/%(25|0A)/, "%25" => "%", "%0A" => "\n"), permitted_classes: [Set, Symbol, Time], aliases: true)
end
sock = UNIXSocket.open(ARGV[0])
sock.write(serialize_message({"id" => 1, "command" => "ehlo", "user" => "ruby"}))
puts deserialize_message(sock.readline)["message"]
sock.write(serialize_message({"id" => 2, "command" => "state", "args" => []}))
state = YAML.safe_load(deserialize_message(sock.readline)["message"], permitted_classes: [Set, Symbol, Time])
puts state[:state][:children].values.first[:type].inspect
"""
    result = subprocess.run([ruby, "-e", script, master.socket_path], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Welcome, ruby! You are speaking to Einhorn Master Process {master.pid}.")
    assert result.stdout.rstrip().endswith(":worker")
