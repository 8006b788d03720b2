import io
import json
import platform
import signal
import socketserver
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pexpect
import pytest

from einhorn.einhornsh import default_socket_path, main, split_command_sequence
from einhorn.framing import encode_message
from einhorn.protocol import parse_message
from tests.integration.waiting import wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GREETING = "Welcome fake! You are speaking to a test double.\n"


class FakeMaster(socketserver.ThreadingUnixStreamServer):
    """Speaks the framing and answers a few commands the way the master would."""

    def __init__(self, path: str) -> None:
        super().__init__(path, _FakeMasterConnection)
        self.requests: list[dict[str, object]] = []
        self.connection_count = 0


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
            elif command == "upgrade":
                self.reply(request, "Upgrading, as commanded", wait=True)
                self.reply(request, "Starting smooth upgrade.", wait=True)
                self.reply(request, "Upgrade done")
            elif command == "garbage":
                self.wfile.write(b"{not yaml: [\n")
                self.reply(request, "after garbage")
            elif command == "hangup":
                return
            else:
                self.reply(request, json.dumps({"command": command, "args": args}))

    def reply(self, request: dict[str, object], message: str, wait: bool = False) -> None:
        response: dict[str, object] = {"message": message, "request_id": request.get("id")}
        if wait:
            response["wait"] = True
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
def test_execute_reports_a_shell_syntax_error_and_goes_on(
    fake_master: FakeMaster, socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-d", str(socket_path), "-e", 'signal "TERM; inc') == 0
    output = capsys.readouterr()
    assert "could not parse" in output.err
    assert output.out == ""
    assert fake_master.requests == []


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
def test_cannot_connect_prints_the_path_and_a_hint_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.sock"
    assert run("-d", str(missing), "-e", "inc") == 1
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


WAITING_FOR_INPUT = {"x86_64": {0, 7, 23, 270, 271}, "aarch64": {63, 72, 73}}
"""Syscall numbers of read, poll, select, pselect6 and ppoll, by machine (/proc/PID/syscall)."""


def wait_until_waiting_for_input(pid: int, timeout: float = 10.0) -> None:
    """Until `pid` sleeps in a read, select or poll: readline waiting for the next key (Linux)."""
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
def spawned_einhornsh(socket_path: Path, home: Path) -> Iterator[pexpect.spawn]:
    inputrc = home / "inputrc"
    inputrc.write_text("set enable-bracketed-paste off\n")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "einhorn.einhornsh", "-d", str(socket_path)],
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
