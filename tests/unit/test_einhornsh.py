import io
import json
import platform
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pexpect
import pytest

from einhorn import __version__
from einhorn.client import Client
from einhorn.einhornsh import (
    client_help,
    completions,
    default_socket_path,
    format_event,
    listed_commands,
    main,
    split_command_sequence,
)
from einhorn.framing import encode_message
from einhorn.protocol import parse_message
from tests.integration.waiting import wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GREETING = "Welcome fake! You are speaking to a test double.\n"
FAKE_HELP = (
    "You are speaking to the Einhorn command socket. You can run the following commands:\n\n"
    "frobnicate: Frobnicate the workers\nhelp: Print out available commands\ninc: Increment\n"
    "status: A short summary\nupgrade: Upgrade\nupgrade_fleet: Upgrade a fleet at a time\n"
)
EVENTS: list[dict[str, object]] = [
    {"seq": 1, "time": 1764590000.5, "kind": "spawned", "pid": 101, "index": 0, "generation": None},
    {"seq": 2, "time": "2026-12-01T13:20:01Z", "kind": "exited", "pid": 101, "cause": "exit status 1", "new": [1, 2]},
    {"event": "acked", "seq": 3, "time": 1764590002.0, "pid": 102, "acked": True, "message": "#3 acked pid=102"},
]
"""What a master's `subscribe` streams: `kind` (or feat-obs's `event`), other fields, some unknown to einhornsh."""


class FakeMaster(socketserver.ThreadingUnixStreamServer):
    """Speaks the framing and answers a few commands the way the master would."""

    def __init__(self, path: str) -> None:
        super().__init__(path, _FakeMasterConnection)
        self.requests: list[dict[str, object]] = []
        self.connection_count = 0
        self.upgrade_ends = True
        """Whether `upgrade` ends with "Upgrade done"; else it streams one line and then nothing."""
        self.events = EVENTS
        self.stream_stays_open = False
        """Whether `subscribe` keeps the connection open after the events; else it closes it."""
        self.knows_subscribe = True
        """Whether `subscribe` streams; else it is an unknown command, as for masters before it."""


class _FakeMasterConnection(socketserver.StreamRequestHandler):
    server: FakeMaster

    def handle(self) -> None:
        self.server.connection_count += 1
        for line in self.rfile:
            request = parse_message(line)
            self.server.requests.append(request)
            command, args = request["command"], request.get("args", [])
            if command == "ehlo":
                self.reply(request, GREETING)
            elif command == "help":
                self.reply(request, FAKE_HELP)
            elif command == "upgrade" and not self.server.upgrade_ends:
                self.reply(request, "Upgrading, as commanded", wait=True)
            elif command == "upgrade":
                self.reply(request, "Upgrading, as commanded", wait=True)
                self.reply(request, "Starting smooth upgrade.", wait=True)
                self.reply(request, "Upgrade done")
            elif command == "doomed_upgrade":
                self.reply(request, "Upgrading, as commanded", wait=True)
                self.reply(request, "Upgrade rolled back: 3 new workers exited before ACK", failed=True)
            elif command == "bogus":
                self.reply(request, 'Unrecognized command: "bogus"', failed=True)
            elif command == "status":
                self.reply(request, "einhorn 1.1.0, generation 1: 2/2 ACKed")
            elif command == "slow":
                time.sleep(0.4)
                self.reply(request, "slowly")
            elif command == "subscribe" and not self.server.knows_subscribe:
                self.reply(request, 'Unrecognized command: "subscribe"', failed=True)
            elif command == "subscribe":
                self.reply(request, "Subscribed to the event stream", wait=True)
                for event in self.server.events:
                    self.wfile.write(encode_message({**event, "request_id": request.get("id"), "wait": True}))
                self.wfile.flush()
                if not self.server.stream_stays_open:
                    return
            elif command == "garbage":
                self.wfile.write(b"{not yaml: [\n")
                self.reply(request, "after garbage")
            elif command == "hangup":
                return
            else:
                self.reply(request, json.dumps({"command": command, "args": args}))

    def reply(self, request: dict[str, object], message: str, wait: bool = False, failed: bool = False) -> None:
        response: dict[str, object] = {"message": message, "request_id": request.get("id")}
        if wait:
            response["wait"] = True
        if failed and request.get("id") is not None:  # the convention: only requests with an id hear it
            response["failed"] = True
        self.wfile.write(encode_message(response))


@contextmanager
def running_fake_master(path: Path) -> Iterator[FakeMaster]:
    with FakeMaster(str(path)) as master:
        thread = threading.Thread(target=master.serve_forever, kwargs={"poll_interval": 0.01})
        thread.start()
        try:
            yield master
        finally:
            master.shutdown()
            thread.join()


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "einhorn.sock"


@pytest.fixture
def fake_master(socket_path: Path) -> Iterator[FakeMaster]:
    with running_fake_master(socket_path) as master:
        yield master


@pytest.fixture
def non_tty_stdin(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    stdin = io.StringIO()
    monkeypatch.setattr(sys, "stdin", stdin)
    return stdin


def echoed(*words: str) -> str:
    command, *args = words
    return json.dumps({"command": command, "args": args})


def run(*argv: str) -> int:
    return main(list(argv))


# -e


@pytest.mark.usefixtures("non_tty_stdin")
def test_execute_runs_commands_in_order_over_one_connection(
    fake_master: FakeMaster, socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "-e", "inc; set_workers 3") == 0
    assert capsys.readouterr().out.splitlines() == [echoed("inc"), echoed("set_workers", "3")]
    assert fake_master.connection_count == 1
    request_ids = [request["id"] for request in fake_master.requests]
    assert len(set(request_ids)) == 2
    assert all(isinstance(request_id, str) for request_id in request_ids)


@pytest.mark.usefixtures("fake_master", "non_tty_stdin")
def test_execute_prints_every_message_until_one_without_wait(
    socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "-e", "upgrade; state") == 0
    assert capsys.readouterr().out.splitlines() == [
        "Upgrading, as commanded",
        "Starting smooth upgrade.",
        "Upgrade done",
        echoed("state"),
    ]


@pytest.mark.usefixtures("fake_master", "non_tty_stdin")
def test_execute_shell_splits_arguments(
    socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "-e", """config "a: 1" 'b;c' d\\ e""") == 0
    assert capsys.readouterr().out == echoed("config", "a: 1", "b;c", "d e") + "\n"


@pytest.mark.usefixtures("non_tty_stdin")
def test_execute_skips_empty_commands(
    fake_master: FakeMaster, socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "-e", " ;; inc ; ") == 0
    assert capsys.readouterr().out == echoed("inc") + "\n"
    assert len(fake_master.requests) == 1


@pytest.mark.usefixtures("non_tty_stdin")
def test_execute_reports_a_shell_syntax_error_goes_on_and_exits_2(
    fake_master: FakeMaster, socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "-e", 'signal "TERM; inc') == 2
    output = capsys.readouterr()
    assert "could not parse" in output.err
    assert output.out == ""
    assert fake_master.requests == []
    assert run("-d", str(socket_path), "-e", 'inc; signal "TERM') == 2
    assert capsys.readouterr().out == echoed("inc") + "\n"


@pytest.mark.usefixtures("non_tty_stdin")
def test_execute_stops_at_quit(
    fake_master: FakeMaster, socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "-e", "inc; quit; dec") == 0
    assert capsys.readouterr().out == echoed("inc") + "\n"


@pytest.mark.usefixtures("fake_master", "non_tty_stdin")
def test_a_message_ending_in_a_newline_gets_no_second_one(
    socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "-e", "ehlo") == 0
    assert capsys.readouterr().out == GREETING


@pytest.mark.usefixtures("fake_master", "non_tty_stdin")
def test_an_unparseable_line_goes_raw_to_stderr(
    socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "-e", "garbage") == 0
    output = capsys.readouterr()
    assert output.err == "{not yaml: [\n"
    assert output.out == "after garbage\n"


@pytest.mark.usefixtures("fake_master", "non_tty_stdin")
def test_a_closed_connection_exits_1(
    socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "-e", "hangup; inc") == 1
    output = capsys.readouterr()
    assert "connection closed by the master" in output.err
    assert output.out == ""


# Connecting


@pytest.mark.usefixtures("non_tty_stdin")
def test_cannot_connect_prints_the_path_and_a_hint_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.sock"
    assert run("-d", str(missing), "-e", "inc") == 2
    error = capsys.readouterr().err
    assert f"Could not connect to Einhorn master process at {missing}" in error
    assert "No such file or directory" in error
    assert "(-c argument)" in error and "(-d argument)" in error


@pytest.fixture
def tmpdir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    # gettempdir() caches its answer; forget it so that TMPDIR is read again.
    monkeypatch.setattr(tempfile, "tempdir", None)
    return tmp_path


def test_default_socket_path_follows_tmpdir_and_the_command_name(tmpdir_env: Path) -> None:
    assert default_socket_path(None) == str(tmpdir_env / "einhorn.sock")
    assert default_socket_path("web") == str(tmpdir_env / "einhorn-web.sock")


@pytest.mark.parametrize(
    "argv",
    [["-c", "web"], ["--command-name", "web"], ["web"], ["-c", "web", "api"]],
    ids=["short", "long", "positional", "option-beats-positional"],
)
@pytest.mark.usefixtures("non_tty_stdin")
def test_the_command_name_selects_the_default_socket(
    tmpdir_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with running_fake_master(tmpdir_env / "einhorn-web.sock"):
        assert run(*argv, "-e", "inc") == 0
    assert capsys.readouterr().out == echoed("inc") + "\n"


@pytest.mark.usefixtures("fake_master", "non_tty_stdin")
def test_a_socket_path_beats_the_command_name(
    tmpdir_env: Path, socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-c", "web", "-d", str(socket_path), "-e", "inc") == 0
    assert capsys.readouterr().out == echoed("inc") + "\n"


def test_help_goes_to_stderr_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("-h") == 1
    assert "--socket-path" in capsys.readouterr().err


# Commands from a pipe


def test_commands_from_a_pipe_run_silently_one_per_line(
    fake_master: FakeMaster,
    socket_path: Path,
    non_tty_stdin: io.StringIO,
    capsys: pytest.CaptureFixture[str],
) -> None:
    non_tty_stdin.write("inc\n\nsignal TERM; dec\n")
    non_tty_stdin.seek(0)
    assert run("-d", str(socket_path)) == 0
    output = capsys.readouterr()
    assert output.out.splitlines() == [echoed("inc"), echoed("signal", "TERM"), echoed("dec")]
    assert output.err == ""
    assert [request["command"] for request in fake_master.requests] == ["inc", "signal", "dec"]


def test_split_command_sequence_ignores_quoted_and_escaped_semicolons() -> None:
    assert split_command_sequence("""a; b 'c;d' "e;f" g\\;h;""") == [
        "a",
        """ b 'c;d' "e;f" g\\;h""",
        "",
    ]


# Interactive


WAITING_FOR_INPUT = {"x86_64": {0, 7, 23, 45, 270, 271}, "aarch64": {63, 72, 73, 207}}
"""Syscall numbers of read, poll, select, recvfrom, pselect6 and ppoll, by machine (/proc/PID/syscall)."""


def wait_until_waiting_for_input(pid: int, timeout: float = 10.0) -> None:
    """Until `pid` sleeps in a read, recv, select or poll: readline waiting for the next key, or a
    reply awaited from the master (Linux)."""
    waiting = WAITING_FOR_INPUT.get(platform.machine())
    if waiting is None or not sys.platform.startswith("linux"):
        return  # nothing to look at: the ^C may come early, as it always could

    def blocked() -> bool:
        try:
            with open(f"/proc/{pid}/syscall") as f:
                first = f.read().split()[0]
        except (OSError, IndexError):
            return False
        return first.isdigit() and int(first) in waiting

    wait_until(blocked, timeout, f"einhornsh {pid} to wait for input", interval=0.005)


def _default_sigint() -> None:
    """A ^C must reach einhornsh as KeyboardInterrupt, whatever the test run inherited: a shell
    script's background job (`pytest &`, CI) starts with SIGINT ignored, Python keeps it so, and
    the ^C test then timed out every time."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def spawned_einhornsh(socket_path: Path, home: Path, *options: str) -> Iterator[pexpect.spawn]:
    inputrc = home / "inputrc"
    inputrc.write_text("set enable-bracketed-paste off\n")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "einhorn.einhornsh", "-d", str(socket_path), *options],
        cwd=str(PROJECT_ROOT),
        env={"HOME": str(home), "TERM": "dumb", "INPUTRC": str(inputrc), "USER": "alice"},
        encoding="utf-8",
        timeout=10,
        preexec_fn=_default_sigint,
    )
    try:
        yield child
    finally:
        child.close(force=True)


def test_interactive_session_greets_prompts_and_quits(
    fake_master: FakeMaster, socket_path: Path, tmp_path: Path
) -> None:
    with spawned_einhornsh(socket_path, tmp_path) as child:
        child.expect_exact(GREETING.strip())
        child.expect_exact("> ")
        child.sendline("set_workers 2")
        child.expect_exact(echoed("set_workers", "2"))
        child.expect_exact("> ")
        child.sendline("quit")
        child.expect_exact("Goodbye!")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    assert fake_master.requests[0]["user"] == "alice"
    assert "set_workers 2" in (tmp_path / ".einhornsh_history").read_text()


def test_interactive_ctrl_c_clears_the_line_and_ctrl_d_leaves(
    fake_master: FakeMaster, socket_path: Path, tmp_path: Path
) -> None:
    with spawned_einhornsh(socket_path, tmp_path) as child:
        child.expect_exact("> ")
        child.send("dec")
        child.expect_exact("dec")
        # Only a ^C that comes while readline waits in select() interrupts it; one that
        # lands after the echo but before that select stays pending until the next key.
        wait_until_waiting_for_input(child.pid)
        child.sendintr()
        child.expect_exact("> ")
        child.sendline("inc")
        child.expect_exact(echoed("inc"))
        child.expect_exact("> ")
        child.sendeof()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    assert [request["command"] for request in fake_master.requests] == ["ehlo", "inc"]


# Exit statuses for scripts


@pytest.mark.usefixtures("fake_master", "non_tty_stdin")
def test_a_final_reply_marked_failed_exits_1_after_running_every_command(
    socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "-e", "inc; bogus; dec") == 1
    assert capsys.readouterr().out.splitlines() == [echoed("inc"), 'Unrecognized command: "bogus"', echoed("dec")]


@pytest.mark.usefixtures("fake_master", "non_tty_stdin")
def test_a_rolled_back_upgrade_streams_to_its_end_and_exits_1(
    socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "-e", "doomed_upgrade") == 1
    assert capsys.readouterr().out.splitlines() == [
        "Upgrading, as commanded",
        "Upgrade rolled back: 3 new workers exited before ACK",
    ]


def test_a_failed_command_from_a_pipe_exits_1(
    fake_master: FakeMaster, socket_path: Path, non_tty_stdin: io.StringIO
) -> None:
    non_tty_stdin.write("bogus\ninc\n")
    non_tty_stdin.seek(0)
    assert run("-d", str(socket_path)) == 1
    assert [request["command"] for request in fake_master.requests] == ["bogus", "inc"]


def test_an_interactive_session_ends_0_whatever_failed(fake_master: FakeMaster, socket_path: Path, tmp_path: Path) -> None:
    with spawned_einhornsh(socket_path, tmp_path) as child:
        child.expect_exact("> ")
        child.sendline("bogus")
        child.expect_exact('Unrecognized command: "bogus"')
        child.expect_exact("> ")
        child.sendline("quit")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"],
        ["web", "api"],
        ["web", "status", "more"],
        ["--json"],
        ["status", "--json"],
        ["status", "-e", "inc"],
        ["--timeout", "0"],
        ["--timeout", "-1"],
        ["--timeout", "soon"],
        ["-e"],
    ],
)
def test_misuse_prints_the_usage_and_exits_2(
    fake_master: FakeMaster, socket_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert run("-d", str(socket_path), *argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("usage: einhornsh [options] [NAME] [status | events [--json]]\n")
    assert "einhornsh: error: " in error
    assert fake_master.connection_count == 0


def test_help_shows_the_positional_name_and_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--help") == 1
    text = capsys.readouterr().err
    assert "[NAME]" in text.splitlines()[0]
    assert "NAME " in text and "--timeout SECONDS" in text and "--version" in text
    assert "Exit status: 0 when every command succeeded; 1 when" in " ".join(text.split())


def test_version_prints_the_version_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--version") == 0
    assert capsys.readouterr().out == f"{__version__}\n"


# --timeout


@pytest.mark.usefixtures("non_tty_stdin")
def test_timeout_gives_up_on_a_stream_that_never_ends_and_exits_1(
    fake_master: FakeMaster, socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_master.upgrade_ends = False
    started = time.monotonic()
    assert run("-d", str(socket_path), "--timeout", "0.5", "-e", "upgrade; inc") == 1
    assert 0.5 <= time.monotonic() - started < 5
    output = capsys.readouterr()
    assert output.out == "Upgrading, as commanded\n"
    assert "timed out after 0.5s (--timeout) waiting for 'upgrade': the upgrade goes on in the master" in output.err
    assert [request["command"] for request in fake_master.requests] == ["upgrade"]


@pytest.mark.usefixtures("fake_master", "non_tty_stdin")
def test_timeout_bounds_a_whole_sequence(socket_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Each `slow` takes 0.4 s: with 1 s for each command all three would be done; 1 s in all
    # cannot see the third (done at 1.2 s at the earliest).
    assert run("-d", str(socket_path), "--timeout", "1", "-e", "slow; slow; slow") == 1
    output = capsys.readouterr()
    assert output.out in ("", "slowly\n", "slowly\nslowly\n")
    assert "waiting for 'slow': 'slow' goes on in the master" in output.err


@pytest.mark.usefixtures("fake_master", "non_tty_stdin")
def test_a_command_done_within_the_timeout_exits_0(socket_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("-d", str(socket_path), "--timeout", "5", "-e", "upgrade") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "Upgrade done"


@pytest.mark.usefixtures("non_tty_stdin")
def test_timeout_bounds_the_connection_to_a_master_that_accepts_nothing(
    socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(socket_path))
        listener.listen(0)
        waiting = _fill_backlog(str(socket_path))
        try:
            started = time.monotonic()
            assert run("-d", str(socket_path), "--timeout", "0.3", "-e", "inc") == 2
            assert time.monotonic() - started < 5
        finally:
            for connection in waiting:
                connection.close()
    assert "(no answer within 0.3s)" in capsys.readouterr().err


def _fill_backlog(path: str) -> list[socket.socket]:
    """Connections that fill a listen backlog nobody accepts from, until the next one would wait."""
    connections: list[socket.socket] = []
    for _ in range(16):
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.setblocking(False)
        try:
            connection.connect(path)
        except BlockingIOError:
            connection.close()
            return connections
        connections.append(connection)
    raise AssertionError("the backlog never filled")


def test_client_deadline_raises_timeout_error_on_a_silent_master(fake_master: FakeMaster, socket_path: Path) -> None:
    fake_master.upgrade_ends = False
    with Client.connect(str(socket_path), time.monotonic() + 0.3) as client:
        responses = client.command("upgrade")
        assert next(responses)["message"] == "Upgrading, as commanded"
        with pytest.raises(TimeoutError):
            next(responses)


# help


@pytest.mark.usefixtures("fake_master", "non_tty_stdin")
def test_help_adds_the_commands_the_masters_list_leaves_out(
    socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "-e", "help") == 0
    out = capsys.readouterr().out
    assert out.startswith(FAKE_HELP)
    assert listed_commands(out) == [*listed_commands(FAKE_HELP), "ehlo", "events", "quit", "exit"]


def test_client_help_leaves_out_what_the_master_lists() -> None:
    assert listed_commands(client_help("ehlo: Hello\nevents: Watch\n")) == ["quit", "exit"]
    assert listed_commands(client_help("")) == ["ehlo", "events", "quit", "exit"]


def test_listed_commands_reads_name_colon_lines_only() -> None:
    text = "You can run the following commands:\n\nconfig: Merge (Known settings: number)\nset_workers: Set\n"
    assert listed_commands(text) == ["config", "set_workers"]


# status


@pytest.mark.parametrize("argv", [["status"], ["web", "status"], ["-c", "web", "status"]])
@pytest.mark.usefixtures("non_tty_stdin")
def test_status_sends_status_and_prints_the_reply(
    tmpdir_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    path = tmpdir_env / ("einhorn.sock" if argv == ["status"] else "einhorn-web.sock")
    with running_fake_master(path) as master:
        assert run(*argv) == 0
    assert capsys.readouterr().out == "einhorn 1.1.0, generation 1: 2/2 ACKed\n"
    assert [(request["command"], request["args"]) for request in master.requests] == [("status", [])]


# events


@pytest.mark.usefixtures("non_tty_stdin")
def test_events_prints_a_readable_line_per_event_until_the_master_closes(
    fake_master: FakeMaster, socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "events") == 0
    output = capsys.readouterr()
    assert output.out.splitlines() == [
        "2025-12-01T11:53:20.500Z #1 spawned pid=101 index=0",
        '2026-12-01T13:20:01Z #2 exited pid=101 cause="exit status 1" new=[1, 2]',
        "2025-12-01T11:53:22.000Z #3 acked pid=102 acked=true",
    ]
    assert output.err == "Subscribed to the event stream\n"
    assert [request["command"] for request in fake_master.requests] == ["subscribe"]


@pytest.mark.usefixtures("non_tty_stdin")
def test_events_json_prints_each_event_whole_without_the_envelope(
    fake_master: FakeMaster, socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "events", "--json") == 0
    output = capsys.readouterr()
    assert [json.loads(line) for line in output.out.splitlines()] == EVENTS
    assert output.err == "Subscribed to the event stream\n"


@pytest.mark.usefixtures("non_tty_stdin")
def test_events_ends_when_the_stream_closes_and_the_sequence_goes_on(
    fake_master: FakeMaster, socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_master.events = []
    assert run("-d", str(socket_path), "-e", "events --json; inc; events --bogus") == 2
    output = capsys.readouterr()
    assert output.out == echoed("inc") + "\n"
    assert "events takes only --json, not '--bogus'" in output.err
    assert [request["command"] for request in fake_master.requests] == ["subscribe", "inc"]
    assert fake_master.connection_count == 2  # the stream has a connection of its own


@pytest.mark.usefixtures("non_tty_stdin")
def test_events_from_a_master_without_subscribe_exits_1(
    fake_master: FakeMaster, socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_master.knows_subscribe = False
    assert run("-d", str(socket_path), "events") == 1
    output = capsys.readouterr()
    assert output.out == ""
    assert output.err == 'Unrecognized command: "subscribe"\n'


def test_format_event_shows_time_sequence_kind_and_the_other_fields() -> None:
    assert format_event({"seq": 7, "time": 0.25, "kind": "signaled", "pid": 5, "signal": "USR2", "why": "a b"}) == (
        '1970-01-01T00:00:00.250Z #7 signaled pid=5 signal=USR2 why="a b"'
    )
    assert format_event({"seq": 8, "kind": "reexec", "message": "re-exec done"}) == "- #8 reexec message=\"re-exec done\""
    both = {"seq": 9, "time": "t", "kind": "x", "event": "y", "empty": "", "ok": False, "gone": None}
    assert format_event(both) == 't #9 x event=y empty="" ok=false'


# Tab completion


def test_completions_are_command_names_where_a_command_begins() -> None:
    names = ["upgrade_fleet", "upgrade", "inc", "upgrade"]
    assert completions(names, "", "upg") == ["upgrade ", "upgrade_fleet "]
    assert completions(names, "inc; ", "i") == ["inc "]
    assert completions(names, "  ", "") == ["inc ", "upgrade ", "upgrade_fleet "]
    assert completions(names, "signal ", "i") == []
    assert completions(names, "inc; set_workers ", "") == []


def test_tab_completes_command_names_from_the_masters_help(
    fake_master: FakeMaster, socket_path: Path, tmp_path: Path
) -> None:
    pytest.importorskip("readline")
    with spawned_einhornsh(socket_path, tmp_path) as child:
        child.expect_exact("> ")
        child.send("frob\t")  # only the master's `help` knows this one
        child.expect_exact("frobnicate ")
        child.send("\r")
        child.expect_exact(echoed("frobnicate"))
        child.expect_exact("> ")
        child.send("inc; upgrade_f\t")
        child.expect_exact("upgrade_fleet ")
        child.send("\r")
        child.expect_exact(echoed("upgrade_fleet"))
        child.expect_exact("> ")
        child.send("ev\t")  # einhornsh's own, which the master's help does not list
        child.expect_exact("events ")
        child.sendline("--bogus")
        child.expect_exact("events takes only --json")
        child.expect_exact("> ")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    commands = [request["command"] for request in fake_master.requests]
    assert commands == ["ehlo", "help", "frobnicate", "inc", "upgrade_fleet"]
    assert fake_master.connection_count == 2  # `help` for the completion has a connection of its own


# ^C


@contextmanager
def einhornsh_process(*argv: str) -> Iterator[subprocess.Popen[str]]:
    """einhornsh run as a script runs it: no terminal, output read line by line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "einhorn.einhornsh", *argv],
        cwd=str(PROJECT_ROOT),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_ctrl_c_during_a_streamed_upgrade_says_that_it_goes_on_and_exits_130(
    fake_master: FakeMaster, socket_path: Path
) -> None:
    fake_master.upgrade_ends = False
    with einhornsh_process("-d", str(socket_path), "-e", "upgrade") as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "Upgrading, as commanded\n"
        wait_until_waiting_for_input(proc.pid)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert out == ""
    assert "einhornsh: interrupted; the upgrade goes on in the master" in err
    assert "Traceback" not in err


def test_ctrl_c_ends_the_event_stream_with_0(fake_master: FakeMaster, socket_path: Path) -> None:
    fake_master.stream_stays_open = True
    with einhornsh_process("-d", str(socket_path), "events", "--json") as proc:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in EVENTS]
        wait_until_waiting_for_input(proc.pid)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert lines == EVENTS and out == ""
    assert proc.returncode == 0
    assert "Traceback" not in err


def test_interactive_ctrl_c_ends_the_event_stream_and_the_session_goes_on(
    fake_master: FakeMaster, socket_path: Path, tmp_path: Path
) -> None:
    fake_master.stream_stays_open = True
    with spawned_einhornsh(socket_path, tmp_path) as child:
        child.expect_exact("> ")
        child.sendline("events")
        child.expect_exact("#3 acked pid=102 acked=true")
        wait_until_waiting_for_input(child.pid)
        child.sendintr()
        child.expect_exact("> ")
        child.sendline("inc")
        child.expect_exact(echoed("inc"))
        child.expect_exact("> ")
        child.sendline("quit")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    assert [request["command"] for request in fake_master.requests] == ["ehlo", "subscribe", "inc"]
