import collections
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml

from einhorn import worker
from einhorn.framing import unescape
from einhorn.protocol import parse_message


@pytest.fixture(autouse=True)
def worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a worker whose master is our parent, and nothing else."""
    for name in list(os.environ):
        if name.startswith("EINHORN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EINHORN_MASTER_PID", str(os.getppid()))


RESET = b"<reset>"
REFUSAL = b'{"message": "Too many connections (256 open); try again later"}\n'


class FakeMaster:
    """A command socket that treats each connection as a master treats an ACK, or as told.

    Each connection gets the next of `answers`: None (the default once they run
    out) reads one line and closes without a reply, as every master does;
    `RESET` closes with the line unread; other bytes are written, and the
    connection closed without reading, as a master at its connection limit did.
    """

    def __init__(self, path: str, answers: Sequence[bytes | None] = ()) -> None:
        self.path = path
        self.answers = collections.deque(answers)
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.connections = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(8)
        self.listener.settimeout(0.05)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                self.connections += 1
                answer = self.answers.popleft() if self.answers else None
                if answer is None:
                    self.lines.put(receive_lines(connection, 1)[0])
                elif answer == RESET:
                    select.select([connection], [], [], 5)  # the line is there, unread
                else:
                    connection.sendall(answer)

    def next_line(self) -> bytes:
        return self.lines.get(timeout=5)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def command_socket(tmp_path: Path) -> Iterator[tuple[str, FakeMaster]]:
    """A command socket that takes ACKs as a master does."""
    master = FakeMaster(str(tmp_path / "einhorn.sock"))
    yield master.path, master
    master.close()


def receive_one_connection(master: FakeMaster) -> bytes:
    return master.next_line()


def receive_until_closed(connection: socket.socket) -> bytes:
    received = b""
    while data := connection.recv(4096):
        received += data
    return received


def receive_lines(connection: socket.socket, count: int) -> list[bytes]:
    received = b""
    while received.count(b"\n") < count:
        received += connection.recv(4096)
    return received.splitlines(keepends=True)


ACK = {"command": "worker:ack", "pid": os.getpid()}


# ack and ping


def test_ack_to_an_explicit_path_sends_the_documented_line(
    command_socket: tuple[str, FakeMaster],
) -> None:
    path, listener = command_socket
    worker.ack(path)
    assert receive_one_connection(listener) == (
        b'{"command":"worker:ack","pid":%d}\n' % os.getpid()
    )


def test_ack_uses_einhorn_sock_path(
    command_socket: tuple[str, FakeMaster], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, listener = command_socket
    monkeypatch.setenv("EINHORN_SOCK_PATH", path)
    worker.ack()
    assert parse_message(receive_one_connection(listener)) == ACK


def test_ack_and_ping_reuse_einhorn_sock_fd_without_closing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker_end, master_end = socket.socketpair()
    with worker_end, master_end:
        monkeypatch.setenv("EINHORN_SOCK_FD", str(worker_end.fileno()))
        monkeypatch.setenv("EINHORN_SOCK_PATH", "/nonexistent/einhorn.sock")
        worker.ack()
        worker.ping("health-1")
        lines = receive_lines(master_end, 2)
    assert [parse_message(line) for line in lines] == [
        ACK,
        {"command": "worker:ping", "pid": os.getpid(), "request_id": "health-1"},
    ]


def test_an_explicit_path_wins_over_einhorn_sock_fd(
    command_socket: tuple[str, FakeMaster], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, listener = command_socket
    monkeypatch.setenv("EINHORN_SOCK_FD", "-1")
    worker.ack(path)
    assert parse_message(receive_one_connection(listener)) == ACK


def test_ping_sends_the_request_id(command_socket: tuple[str, FakeMaster]) -> None:
    path, listener = command_socket
    worker.ping("100% up\n", path)
    assert parse_message(receive_one_connection(listener)) == {
        "command": "worker:ping",
        "pid": os.getpid(),
        "request_id": "100% up\n",
    }


def test_ping_writes_what_yaml_loaders_read_back_exactly(command_socket: tuple[str, FakeMaster]) -> None:
    # The original master reads requests with Ruby's YAML, which refuses JSON's \\u surrogate pairs.
    path, listener = command_socket
    worker.ping("\U0001f600 \x7f\u2028", path)
    line = receive_one_connection(listener)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert yaml.safe_load(unescape(line.decode("utf-8"))) == {
        "command": "worker:ping",
        "pid": os.getpid(),
        "request_id": "\U0001f600 \x7f\u2028",
    }


def test_ack_returns_as_soon_as_the_master_closes_without_a_reply(command_socket: tuple[str, FakeMaster]) -> None:
    path, master = command_socket
    start = time.monotonic()
    worker.ack(path)
    assert time.monotonic() - start < 1.0 and master.connections == 1  # what the original master does


@pytest.mark.parametrize("turned_away", [[REFUSAL], [REFUSAL, REFUSAL, REFUSAL], [RESET], [REFUSAL, RESET]], ids=["refused", "refused-3x", "reset", "both"])
def test_ack_tries_again_when_the_master_says_try_again_later_or_resets(tmp_path: Path, turned_away: list[bytes]) -> None:
    master = FakeMaster(str(tmp_path / "s"), turned_away)
    try:
        worker.ack(master.path)
        assert parse_message(master.next_line()) == ACK
        assert master.connections == len(turned_away) + 1
    finally:
        master.close()


def test_ack_gives_up_on_a_master_that_keeps_turning_it_away(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "RETRY_FOR", 0.5)
    master = FakeMaster(str(tmp_path / "s"), [REFUSAL] * 100)
    try:
        start = time.monotonic()
        with pytest.raises(ConnectionRefusedError, match="kept turning this away: Too many connections"):
            worker.ack(master.path)
        assert time.monotonic() - start < 2.0 and 2 <= master.connections < 20
    finally:
        master.close()


def test_ack_refused_for_good_raises_with_the_masters_reason(tmp_path: Path) -> None:
    denied = b'{"message": "Permission denied: only uid 0 (the master\'s user) or root may command this Einhorn"}\n'
    master = FakeMaster(str(tmp_path / "s"), [denied])
    try:
        with pytest.raises(ConnectionRefusedError, match="refused this: Permission denied"):
            worker.ack(master.path)
        assert master.connections == 1
    finally:
        master.close()


def test_ack_without_a_command_socket_is_a_clear_error() -> None:
    with pytest.raises(worker.NotRunningUnderEinhorn, match="EINHORN_SOCK_PATH is set"):
        worker.ack()


def test_ack_without_a_master_pid_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EINHORN_MASTER_PID")
    with pytest.raises(worker.NotRunningUnderEinhorn, match="EINHORN_MASTER_PID is not set"):
        worker.ack("/unused")


def test_ack_from_a_grandchild_of_the_master_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EINHORN_MASTER_PID", str(os.getppid() + 1))
    with pytest.raises(worker.NotRunningUnderEinhorn, match="parent pid"):
        worker.ack("/unused")


def test_ack_to_a_closed_sock_fd_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    monkeypatch.setenv("EINHORN_SOCK_FD", str(write_end))
    with pytest.raises(worker.NotRunningUnderEinhorn, match="EINHORN_SOCK_FD=.* is not open"):
        worker.ack()


def test_ack_to_a_non_socket_sock_fd_is_a_clear_error_and_leaks_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_end, write_end = os.pipe()
    try:
        monkeypatch.setenv("EINHORN_SOCK_FD", str(write_end))
        open_fds = set(os.listdir("/proc/self/fd"))
        with pytest.raises(worker.NotRunningUnderEinhorn, match="is not a socket"):
            worker.ack()
        assert set(os.listdir("/proc/self/fd")) == open_fds
    finally:
        os.close(read_end)
        os.close(write_end)


def test_ack_to_a_dead_master_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        worker.ack(str(tmp_path / "gone.sock"))


# Inherited listening sockets


def set_listener_env(monkeypatch: pytest.MonkeyPatch, *listeners: socket.socket) -> list[int]:
    fds = [os.dup(listener.fileno()) for listener in listeners]
    monkeypatch.setenv("EINHORN_FD_COUNT", str(len(fds)))
    for n, fd in enumerate(fds):
        monkeypatch.setenv(f"EINHORN_FD_{n}", str(fd))
    return fds


def test_socket_returns_the_inherited_listener_with_its_family(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as tcp_listener,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix_listener,
    ):
        unix_listener.bind(str(tmp_path / "app.sock"))
        unix_listener.listen()
        set_listener_env(monkeypatch, tcp_listener, unix_listener)
        with worker.socket() as first, worker.socket(1) as second:
            assert (first.family, first.type) == (socket.AF_INET, socket.SOCK_STREAM)
            assert first.getsockname() == tcp_listener.getsockname()
            assert second.family == socket.AF_UNIX
            assert second.getsockname() == str(tmp_path / "app.sock")


@pytest.mark.parametrize("n", [1, -1])
def test_socket_out_of_range_is_an_index_error(
    monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        fds = set_listener_env(monkeypatch, listener)
        try:
            with pytest.raises(IndexError, match="einhorn passed 1"):
                worker.socket(n)
        finally:
            os.close(fds[0])


def test_socket_without_listeners_is_a_clear_error() -> None:
    with pytest.raises(worker.NotRunningUnderEinhorn, match="EINHORN_FD_COUNT is not set"):
        worker.socket()


def test_socket_on_a_closed_fd_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    monkeypatch.setenv("EINHORN_FD_COUNT", "1")
    monkeypatch.setenv("EINHORN_FD_0", str(read_end))
    with pytest.raises(worker.NotRunningUnderEinhorn, match="not an open socket"):
        worker.socket()


def test_socket_fds_lists_the_fds_in_bind_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EINHORN_FD_COUNT", "2")
    monkeypatch.setenv("EINHORN_FD_0", "7")
    monkeypatch.setenv("EINHORN_FD_1", "4")
    assert worker.socket_fds() == [7, 4]


# Environment queries


def test_child_index_and_master_pid_read_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EINHORN_CHILD_INDEX", "3")
    assert worker.child_index() == 3
    assert worker.master_pid() == os.getppid()


def test_a_malformed_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EINHORN_CHILD_INDEX", "three")
    with pytest.raises(worker.NotRunningUnderEinhorn, match="'three' is not an integer"):
        worker.child_index()


def test_is_worker_when_the_master_is_the_parent() -> None:
    assert worker.is_worker()


@pytest.mark.parametrize("master_pid", [None, "1x", str(os.getpid())])
def test_is_not_worker_otherwise(monkeypatch: pytest.MonkeyPatch, master_pid: str | None) -> None:
    if master_pid is None:
        monkeypatch.delenv("EINHORN_MASTER_PID")
    else:
        monkeypatch.setenv("EINHORN_MASTER_PID", master_pid)
    assert not worker.is_worker()


# Graceful shutdown


def test_graceful_shutdown_calls_the_handler_on_sigusr2() -> None:
    previous = signal.getsignal(signal.SIGUSR2)
    calls: list[str] = []
    try:
        worker.graceful_shutdown(lambda: calls.append("stop"))
        signal.raise_signal(signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert calls == ["stop"]


def test_the_module_imports_without_pyyaml_or_the_rest_of_einhorn() -> None:
    probe = (
        "import sys; sys.modules['yaml'] = None; import einhorn.worker;"
        " print(sorted(name for name in sys.modules if name.startswith('einhorn')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["['einhorn',", "'einhorn.framing',", "'einhorn.worker']"]


# Graceful shutdown of a real process: the handler may wait for the main thread

SOCKETSERVER_WORKER = """
import socketserver, sys, time
from einhorn import worker

class Server(socketserver.TCPServer):
    announced = False
    def service_actions(self):  # called by serve_forever on each round: it is serving
        if not self.announced:
            self.announced = True
            print("serving", flush=True)

class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        pass

server = Server(("127.0.0.1", 0), Handler)
def stop():
    server.shutdown()  # waits for serve_forever, on the main thread, to return
    time.sleep(0.3)    # and goes on after the main thread is done
    open(sys.argv[1], "w").write("stopped")
worker.graceful_shutdown(stop)
server.serve_forever(poll_interval=0.05)
print("returned", flush=True)
"""

FLAG_WORKER = """
import selectors, signal, socket, sys, time
from einhorn import worker

stopping = False
def stop():
    global stopping
    time.sleep(float(sys.argv[1]))  # slower than the signal handler's grace, or not
    stopping = True
    if sys.argv[2] != "-":
        sys.exit(int(sys.argv[2]))
reader, writer = socket.socketpair()
reader.setblocking(False)
writer.setblocking(False)
signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
worker.graceful_shutdown(stop)
print("serving", flush=True)
with selectors.DefaultSelector() as selector:  # the loop of example/time_server: woken by signals only
    selector.register(reader, selectors.EVENT_READ)
    while not stopping:
        selector.select()
        while True:
            try:
                reader.recv(512)
            except BlockingIOError:
                break
print("returned", flush=True)
"""

SERVE_FOREVER_WORKER = """
import socket, socketserver, sys, time
from einhorn import worker

class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        print("handling", flush=True)
        time.sleep(0.5)  # in flight when SIGUSR2 comes
        self.wfile.write(b"done\\n")

server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
worker.serve_forever(server, poll_interval=0.05)
print("returned", flush=True)
"""


def start_python(script: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EINHORN_")}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def stop_and_wait(proc: subprocess.Popen[str], timeout: float = 10.0) -> tuple[int, str, str]:
    """SIGUSR2 to a process that printed its first line; its exit code and output, within `timeout`."""
    proc.send_signal(signal.SIGUSR2)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {timeout:g}s after SIGUSR2: the graceful shutdown hangs") from None
    return proc.returncode, out, err


def test_a_handler_that_calls_socketserver_shutdown_stops_serve_forever_and_finishes(
    processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    marker = tmp_path / "stopped"
    proc = start_python(SOCKETSERVER_WORKER, str(marker))
    processes.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "serving\n"
    code, out, err = stop_and_wait(proc)
    assert (code, out) == (0, "returned\n"), err
    # The main thread ended first; the helper thread is no daemon, so the handler got to finish.
    assert marker.read_text() == "stopped"


@pytest.mark.parametrize("delay", ["0", "0.5"], ids=["quick", "slower than the grace"])
def test_a_handler_that_sets_a_flag_wakes_a_loop_woken_by_signals(processes: list[subprocess.Popen[str]], delay: str) -> None:
    proc = start_python(FLAG_WORKER, delay, "-")
    processes.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "serving\n"
    code, out, err = stop_and_wait(proc)
    assert (code, out) == (0, "returned\n"), err


@pytest.mark.parametrize("delay", ["0", "0.5"], ids=["quick", "slower than the grace"])
def test_a_handler_that_calls_sys_exit_exits_the_process_with_its_code(processes: list[subprocess.Popen[str]], delay: str) -> None:
    proc = start_python(FLAG_WORKER, delay, "3")
    processes.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "serving\n"
    code, out, err = stop_and_wait(proc)
    assert (code, out) == (3, ""), err
    assert "Traceback" not in err


def test_serve_forever_stops_on_sigusr2_after_the_request_in_flight(processes: list[subprocess.Popen[str]]) -> None:
    proc = start_python(SERVE_FOREVER_WORKER)
    processes.append(proc)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"go\n")
        assert proc.stdout.readline() == "handling\n"
        code, out, err = stop_and_wait(proc)
        assert client.recv(100) == b"done\n"
    assert (code, out) == (0, "returned\n"), err
