"""systemd's conventions with systemd's own tools (Debian's `systemd` package): socket activation in
both directions (`-b systemd`, `--listen-fds`)."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from tests.integration.harness import BIN, TAG_VARIABLE, Harness
from tests.integration.procfs import environ_of, fds_of
from tests.integration.supervisor import Supervisor
from tests.integration.upgrade_helpers import upgrade
from tests.integration.waiting import wait_until
from tests.integration.workers import REPO

HTTP_SERVER = [sys.executable, str(REPO / "example" / "http_server")]
ACTIVATED_SERVER = [sys.executable, str(REPO / "example" / "activated_server")]
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian's systemd package; .ci/run installs it as root)")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.0 200"), data
    return data.partition(b"\r\n\r\n")[2].decode()


def _get_once_listening(port: int) -> str | None:
    try:
        return get(port)
    except ConnectionRefusedError:
        return None


def test_socket_activated_by_systemd_socket_activate_serves_and_upgrades(harness: Harness) -> None:
    activate = tool("systemd-socket-activate")
    port = free_port()
    # It execs einhorn in place on the first connection, passing only the variables named by -E.
    prefix = [activate, "-l", f"127.0.0.1:{port}", "--fdname=web", "-E", TAG_VARIABLE, "-E", "TMPDIR", "-E", "PYTHONPATH"]
    master = harness.start("-n", "2", "-m", "manual", "-b", "systemd:web", program=HTTP_SERVER, prefix=prefix, wait=False)
    first = wait_until(lambda: _get_once_listening(port), 10, "systemd-socket-activate listening")
    master.wait_up()  # the connection that started einhorn was served too
    assert first.startswith("pid=")
    shown = master.state()["listeners"]
    assert shown == [{"family": "AF_INET", "address": f"127.0.0.1:{port}", "name": "web", "accepting": True}]
    workers = master.wait_workers(2)
    master.wait_log(r"Adopted web \(fd 3\) from systemd: AF_INET 127.0.0.1:")
    for pid in workers:
        env = environ_of(pid)
        assert not set(LISTEN_VARIABLES) & set(env), env  # taken out: not the workers' to read
        assert env["EINHORN_FD_0"] == "3"
    upgrade(master)
    new = master.wait_workers(2)
    assert not set(new) & set(workers)
    assert not set(LISTEN_VARIABLES) & set(environ_of(master.pid))  # the re-exec'd image never saw them
    assert fds_of(master.pid)[3].startswith("socket:")  # the same fd, through the hand-off registry
    assert {int(get(port).split()[0].removeprefix("pid=")) for _ in range(20)} <= set(new)
    os.kill(master.pid, 2)
    assert master.wait_exit() == 0


def test_b_systemd_name_adopts_only_that_socket_and_closes_the_others(harness: Harness) -> None:
    activate = tool("systemd-socket-activate")
    web, admin = free_port(), free_port()
    prefix = [activate, "-l", f"127.0.0.1:{web}", "-l", f"127.0.0.1:{admin}", "--fdname=web:admin", "-E", TAG_VARIABLE, "-E", "TMPDIR"]
    master = harness.start("-n", "1", "-m", "0.1", "-b", "systemd:admin", program=["sleep", "60"], prefix=prefix, wait=False)
    wait_until(lambda: _connects(admin), 10, "systemd-socket-activate listening")  # starts einhorn
    master.wait_up()
    assert master.state()["listeners"] == [{"family": "AF_INET", "address": f"127.0.0.1:{admin}", "name": "admin", "accepting": True}]
    master.wait_log(r"Closing fd 3 \(web\) passed by systemd: no -b systemd adopts it")
    (pid,) = master.wait_workers(1)
    assert environ_of(pid)["EINHORN_FD_0"] == "4" and 3 not in fds_of(pid)
    assert not _connects(web)  # closed: nobody holds `web` any more


def _connects(port: int) -> bool:
    with socket.socket() as client:
        client.settimeout(2)
        return client.connect_ex(("127.0.0.1", port)) == 0


def test_b_systemd_without_activation_says_why(harness: Harness) -> None:
    result = harness.run("-d", str(harness.directory / "s"), "-b", "systemd", "--", "sleep", "30")
    assert result.returncode == 1
    assert "-b systemd: systemd passed no sockets (LISTEN_PID and LISTEN_FDS are not set" in result.stderr


def test_listen_fds_hands_workers_the_systemd_convention(harness: Harness) -> None:
    master = harness.start(
        "-n", "2", "-m", "0.2", "--listen-fds", "--graceful-signal", "TERM", "-b", "127.0.0.1:0", "-b", f"unix:{harness.directory}/a.sock",
        program=ACTIVATED_SERVER, env={"LISTEN_PID": "1", "LISTEN_FDS": "9"}, workers=2,
    )  # fmt: skip
    port = master.bound_port()
    workers = master.wait_workers(2)
    for pid in workers:
        env = environ_of(pid)
        # LISTEN_* are removed by the server as sd_listen_fds(unset_environment) does, but /proc shows what exec got:
        assert (env["LISTEN_PID"], env["LISTEN_FDS"], env["LISTEN_FDNAMES"]) == (str(pid), "2", "unknown:unknown")
        assert (env["EINHORN_FD_0"], env["EINHORN_FD_1"], env["EINHORN_FDS"]) == ("3", "4", "3 4")
        fds = fds_of(pid)
        assert fds[3].startswith("socket:") and fds[4].startswith("socket:")
    assert {int(get(port).split()[0].removeprefix("pid=")) for _ in range(40)} <= set(workers)
    upgrade(master)
    new = master.wait_workers(2)
    assert environ_of(new[0])["LISTEN_PID"] == str(new[0])
    get(port)


# --- the documented units (docs/systemd/), run as systemd would run them ------------------------------

UNITS = REPO / "docs" / "systemd"
EXAMPLE = REPO / "example"


def unit(name: str, port: int | None = None) -> dict[str, dict[str, str]]:
    """The unit file as sections of settings, with the documentation's paths made this machine's."""
    text = (UNITS / name).read_text()
    text = text.replace("/usr/local/bin/einhorn", str(BIN / "einhorn")).replace("/srv/app/venv/bin/gunicorn", str(BIN / "gunicorn"))
    text = text.replace("/srv/app", str(EXAMPLE))
    if port is not None:
        text = text.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {section: dict(parser[section]) for section in parser.sections()}


def unit_text(name: str) -> str:
    return "\n".join(f"[{section}]\n" + "".join(f"{k}={v}\n" for k, v in settings.items()) for section, settings in unit(name).items())


def test_the_documented_units_pass_systemd_analyze_verify(harness: Harness) -> None:
    analyze = tool("systemd-analyze")
    if not (BIN / "gunicorn").exists():
        pytest.skip("gunicorn is not installed (the test extra has it)")
    for name in ("app.socket", "app.service"):
        (harness.directory / name).write_text(unit_text(name))
    result = subprocess.run(
        [analyze, "verify", "./app.socket", "./app.service"], cwd=harness.directory, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.timeout(180)
def test_the_documented_service_starts_reloads_and_stops_as_under_systemd(harness: Harness) -> None:
    """What systemd does with app.socket + app.service, step by step, with systemd's own socket-activate:
    the socket passed as `web`, NOTIFY_SOCKET and WATCHDOG_USEC set, ExecReload run with $MAINPID,
    KillSignal sent to the main process only (KillMode=mixed)."""
    activate = tool("systemd-socket-activate")
    if not (BIN / "gunicorn").exists():
        pytest.skip("gunicorn is not installed (the test extra has it)")
    port = free_port()
    socket_unit, service = unit("app.socket", port)["Socket"], unit("app.service")["Service"]
    assert (service["Type"], service["NotifyAccess"], service["KillMode"]) == ("notify", "main", "mixed")
    supervisor = Supervisor(harness.directory / "notify")
    try:
        words = shlex.split(service["ExecStart"])
        split = words.index("--")
        options, program = words[1:split], words[split + 1 :]
        prefix = [
            activate, "-l", socket_unit["ListenStream"], f"--fdname={socket_unit['FileDescriptorName']}",
            "-E", TAG_VARIABLE, "-E", "TMPDIR", "-E", f"NOTIFY_SOCKET={supervisor.path}",
            "-E", f"WATCHDOG_USEC={int(service['WatchdogSec']) * 1_000_000}",
        ]  # fmt: skip
        master = harness.start(*options, program=program, prefix=prefix, wait=False)
        wait_until(lambda: _get_once_listening(port), 10, "the socket unit listening")
        master.wait_up(30)
        wait_until(lambda: supervisor.heard("READY"), 30, "READY=1: all 4 workers ACKed")
        main_pid = master.pid  # systemd-socket-activate exec'd einhorn in place: MAINPID
        assert len(master.workers()) == 4

        reload = service["ExecReload"].replace("/bin/kill", shutil.which("kill") or "/bin/kill")
        subprocess.run(["sh", "-c", reload], env={**os.environ, "MAINPID": str(main_pid)}, check=True, timeout=10)
        wait_until(lambda: supervisor.heard("READY", 2), 60, "READY=1 after the reload")
        assert master.state()["version"] == 1 and master.pid == main_pid
        get(port)

        os.kill(main_pid, signal.Signals[service["KillSignal"]])
        assert master.wait_exit(int(service["TimeoutStopSec"])) == 0
        wait_until(lambda: supervisor.heard("STOPPING"), 5, "STOPPING=1")
        said = [next(k for k in ("READY", "RELOADING", "STOPPING") if k in f) for _, _, f in supervisor.got if {"READY", "RELOADING", "STOPPING"} & set(f)]
        assert said == ["READY", "RELOADING", "READY", "STOPPING"]
        assert {pid for _, pid, _ in supervisor.got} == {main_pid}
    finally:
        supervisor.close()
