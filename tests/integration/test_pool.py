"""The worker pool with real processes (issue 2): keep N alive, back off, signals, what a worker sees."""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import einhorn as einhorn_package
from einhorn import __version__
from tests.integration.harness import Harness, Master
from tests.integration.procfs import alive, children_of, cpu_seconds, environ_of, fds_of, proc_stat
from tests.integration.waiting import wait_until
from tests.integration.workers import TIME_SERVER, recorder, signals_received, wait_ready

FAST = ("-m", "0.1", "-s", "0.1")
"""Timer ACK after 0.1 s and a 0.1 s base spin-up interval: tests need not wait for the defaults."""


@pytest.fixture(scope="module", autouse=True)
def capped_crash_loop() -> Iterator[Master]:
    """A crash-looping master started before this module's first test and checked by its last one.

    Seeing the 30 s cap on the spin-up interval takes 30 s: this way it costs no extra time.
    """
    with Harness() as harness:
        yield harness.start("-n", "1", "-s", "25", "-m", "5", program=["false"])


def test_keeps_the_requested_number_of_workers(harness: Harness) -> None:
    master = harness.start("-n", "3", *FAST, workers=3)
    workers = master.workers()
    assert sorted(w["index"] for w in workers.values()) == [0, 1, 2]  # type: ignore[type-var]
    assert all(w["version"] == 0 for w in workers.values())
    assert master.log().count("===> Launched") == 3


def test_a_killed_worker_is_replaced_with_its_index(harness: Harness) -> None:
    master = harness.start("-n", "3", *FAST, workers=3)
    before = master.workers()
    victim = sorted(before)[1]
    os.kill(victim, signal.SIGKILL)
    master.wait_log(rf"===> Exited worker {victim} \(killed by signal 9\)")
    after = master.wait_workers(3)
    assert victim not in after
    [replacement] = set(after) - set(before)
    assert master.workers()[replacement]["index"] == before[victim]["index"]


@pytest.mark.timeout(40)
def test_a_crash_loop_backs_off_and_costs_little_cpu(harness: Harness) -> None:
    master = harness.start("-n", "1", "-s", "0.25", "-m", "5", program=["false"])
    cpu_before, wall_before = cpu_seconds(master.pid), time.monotonic()
    master.wait_log(r"===> Launched", count=7, timeout=20)  # ~7.8 s: 0.25 * 1.5**d, d = 1..6
    cpu, wall = cpu_seconds(master.pid) - cpu_before, time.monotonic() - wall_before

    launches = [t for t, _ in master.timed_lines(r"===> Launched")]
    gaps = [b - a for a, b in zip(launches, launches[1:], strict=False)]
    expected = [0.25 * 1.5**d for d in range(1, len(gaps) + 1)]
    # Each launch is logged a little after it was decided, so single gaps jitter by that delay;
    # the launches' distance from the first one may not fall short of the schedule.
    for k, (gap, want) in enumerate(zip(gaps, expected, strict=False)):
        assert want - 0.2 <= gap <= want + 0.6, (gaps, expected)
        assert launches[k + 1] - launches[0] >= sum(expected[: k + 1]) - 0.1, (gaps, expected)
    assert gaps[-1] > 2 * gaps[0], gaps
    logged = [float(m.group(1)) for _, m in master.timed_lines(r"spin-up interval ([\d.]+)s")]
    assert logged == pytest.approx(expected[: len(logged)], rel=1e-3)
    assert master.state()["consecutive_deaths_before_ack"] >= 6  # type: ignore[operator]
    assert cpu < 0.1 * wall, f"the master used {cpu:.2f}s of CPU in {wall:.1f}s while its worker crash-looped"


@pytest.mark.timeout(40)
def test_by_default_a_crash_loop_backs_off_as_with_s(harness: Harness) -> None:
    """No `-s`: spin-ups are paced by ACKs, but workers that die before their ACK bring back
    the interval min(1 s x 1.5^d, 30) (EXTENSIONS §4), exactly as the original rule."""
    master = harness.start("-n", "1", "-m", "5", program=["false"])
    master.wait_log(r"===> Launched", count=4, timeout=20)  # 0, 1.5, 3.75, 7.1 s
    launches = [t for t, _ in master.timed_lines(r"===> Launched")]
    gaps = [b - a for a, b in zip(launches, launches[1:], strict=False)]
    expected = [1.5, 2.25, 3.375][: len(gaps)]
    for k, want in enumerate(expected):
        assert gaps[k] >= want - 0.2 and launches[k + 1] - launches[0] >= sum(expected[: k + 1]) - 0.1, (gaps, expected)
    logged = [float(m.group(1)) for _, m in master.timed_lines(r"spin-up interval ([\d.]+)s")]
    assert logged[:3] == pytest.approx([1.5, 2.25, 3.375], rel=1e-3)
    assert "paced by ACKs" not in master.log()
    assert master.state()["config"]["pacing"] == "ack"  # type: ignore[index]


def test_by_default_killed_workers_are_all_replaced_at_once_within_max_unacked(harness: Harness) -> None:
    """Paced by ACKs: three workers killed together are replaced without waiting for one another's ACKs."""
    master = harness.start("-n", "4", "-m", "manual", "--max-unacked", "3", "-b", "127.0.0.1:0", program=[TIME_SERVER], workers=4)
    up_at = time.monotonic()  # every worker started before this
    # Older than `seconds`: a worker killed younger counts as a death before ACK (a crash loop's guard).
    wait_until(lambda: time.monotonic() - up_at > 1.0, 5, "the workers to be older than 1 s")
    victims = sorted(master.children())[:3]
    mark = len(master.log().splitlines())
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    after = master.wait_workers(4)
    assert not set(victims) & set(after)
    lines = master.log().splitlines()[mark:]
    launched = [i for i, line in enumerate(lines) if "===> Launched" in line]
    acked = [i for i, line in enumerate(lines) if "manual ACKs" in line]
    assert len(launched) == 3 and len(acked) == 3
    assert max(launched) < min(acked), "\n".join(lines)  # all three start before the first of them ACKs
    assert sum("(paced by ACKs)" in line for line in lines) >= 1 and "spin-up interval" not in "\n".join(lines)
    assert "counted as a death" not in "\n".join(lines)


def test_a_worker_that_cannot_be_exec_ed_is_logged_and_retried(harness: Harness) -> None:
    # Executable, so it passes the start-up check, but exec fails (ENOENT: no such interpreter).
    program = harness.directory / "broken"
    program.write_text("#!/nonexistent/interpreter\n")
    program.chmod(0o755)
    master = harness.start("-n", "1", "-s", "0.1", program=[str(program)])
    master.wait_log(r"(?i)could not (start|spawn) worker.*No such file or directory", count=3)
    assert master.proc.poll() is None
    assert master.state()["consecutive_deaths_before_ack"] >= 3  # type: ignore[operator]


def test_time_server_answers_from_every_worker(harness: Harness) -> None:
    master = harness.start("-n", "3", "-m", "manual", "-b", "127.0.0.1:0", program=[TIME_SERVER], workers=3)
    port = master.bound_port()
    assert master.state()["bound_ports"] == [port]
    pids = set(master.children())
    seen: dict[int, tuple[str, str]] = {}
    for _ in range(100):  # bursts of concurrent connections spread over the workers
        connections = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(10)]
        for conn in connections:
            with conn:
                line = _read_all(conn).decode()
            fields = dict(item.split("=", 1) for item in line.split())
            assert line.endswith("\n") and set(fields) == {"time", "pid", "version", "index"}, line
            seen[int(fields["pid"])] = (fields["version"], fields["index"])
        if set(seen) == pids:
            break
    assert set(seen) == pids
    assert sorted(index for _, index in seen.values()) == ["0", "1", "2"]
    assert {version for version, _ in seen.values()} == {"1"}


def test_time_server_exits_gracefully_on_sigint_to_the_master(harness: Harness) -> None:
    master = harness.start("-n", "2", "-m", "manual", "-b", "127.0.0.1:0", program=[TIME_SERVER], workers=2)
    pids = master.children()
    master.send_signal(signal.SIGINT)
    assert master.wait_exit() == 0
    for pid in pids:
        assert f"===> Exited worker {pid} (exit status 0)" in master.log()
    assert harness.leftovers() == []


def _read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
    return data


@pytest.mark.parametrize(
    ("signum", "forwarded"),
    [(signal.SIGTERM, "TERM"), (signal.SIGINT, "USR2"), (signal.SIGUSR2, "USR2")],
    ids=["TERM", "INT", "USR2"],
)
def test_master_signal_is_forwarded_and_the_master_exits_when_workers_are_gone(
    harness: Harness, signum: int, forwarded: str
) -> None:
    out = harness.directory
    master = harness.start("-n", "2", *FAST, program=recorder(out), workers=2)
    pids = master.children()
    wait_ready(out, pids)
    master.send_signal(signum)
    assert master.wait_exit() == 0
    assert [signals_received(out, pid) for pid in pids] == [[forwarded], [forwarded]]
    assert "All workers gone; exiting" in master.log()
    assert harness.leftovers() == []
    assert not os.path.exists(master.pidfile) and not os.path.exists(master.socket_path)


def test_sigquit_exits_1_at_once_without_waiting_for_workers(harness: Harness) -> None:
    out = harness.directory
    master = harness.start("-n", "2", *FAST, program=recorder(out, stay="QUIT"), workers=2)
    pids = master.children()
    wait_ready(out, pids)
    master.send_signal(signal.SIGQUIT)
    assert master.wait_exit(5) == 1
    wait_until(lambda: all(signals_received(out, pid) == ["QUIT"] for pid in pids), 5, "QUIT at the workers")
    assert all(alive(pid) for pid in pids)  # these workers survive QUIT: the master did not wait for them


def test_sigquit_leaves_no_process_behind(harness: Harness) -> None:
    master = harness.start("-n", "3", *FAST, workers=3)
    pids = master.children()
    master.send_signal(signal.SIGQUIT)
    assert master.wait_exit(5) == 1
    wait_until(lambda: not any(alive(pid) for pid in pids), 5, "the workers to die of SIGQUIT")
    assert harness.leftovers() == []


def test_signal_timeout_kills_a_worker_that_ignores_usr2(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, "-t", "1", program=["sh", "-c", "trap '' USR2; exec sleep 30"], workers=1)
    [pid] = master.children()
    wait_until(lambda: _ignores(pid, signal.SIGUSR2) and _comm(pid) == "sleep", 5, "USR2 ignored by the worker")
    signaled_at = time.monotonic()
    master.send_signal(signal.SIGINT)
    master.wait_log(rf"Child {pid} is still active after 1s\. Sending SIGKILL")
    assert master.wait_exit(5) == 0
    assert time.monotonic() - signaled_at >= 1.0
    assert f"===> Exited worker {pid} (killed by signal 9)" in master.log()
    assert harness.leftovers() == []


def _ignores(pid: int, signum: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        ignored = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(ignored & (1 << (signum - 1)))


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


@pytest.mark.parametrize("command_socket_as_fd", [False, True], ids=["plain", "-g"])
def test_worker_holds_only_stdio_and_the_listeners(harness: Harness, command_socket_as_fd: bool) -> None:
    options = ["-n", "1", *FAST, "-b", "127.0.0.1:0", "-b", "127.0.0.1:0,r"]
    master = harness.start(*options, *(["-g"] if command_socket_as_fd else []), workers=1)
    with master.connect():  # a client connection is open while the next worker is forked
        assert master.message("inc").startswith("Incrementing number of workers from 1 -> 2")
        pids = master.wait_workers(2)
    master_sockets = {target for target in fds_of(master.pid).values() if target.startswith("socket:")}
    for pid in pids:
        env = environ_of(pid)
        listeners = {int(env["EINHORN_FD_0"]), int(env["EINHORN_FD_1"])}
        expected = {0, 1, 2} | listeners
        if command_socket_as_fd:
            expected.add(int(env["EINHORN_SOCK_FD"]))
        else:
            assert "EINHORN_SOCK_FD" not in env
        fds = fds_of(pid)
        assert set(fds) == expected, fds
        for fd in listeners:
            assert fds[fd].startswith("socket:") and fds[fd] in master_sockets


def test_worker_environment(harness: Harness) -> None:
    master = harness.start("-n", "3", *FAST, "-b", "127.0.0.1:0", workers=3)
    envs = [environ_of(pid) for pid in master.children()]
    for env in envs:
        assert env["EINHORN_FD_COUNT"] == "1"
        assert env["EINHORN_FD_0"].isdigit()
        assert env["EINHORN_SOCK_PATH"] == master.socket_path
        assert env["EINHORN_MASTER_PID"] == str(master.pid)
        assert "EINHORN_SOCK_FD" not in env
    assert sorted(env["EINHORN_CHILD_INDEX"] for env in envs) == ["0", "1", "2"]


def test_worker_environment_without_binds(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    [env] = [environ_of(pid) for pid in master.children()]
    assert env["EINHORN_FD_COUNT"] == "0"
    assert not any(key.startswith("EINHORN_FD_") and key != "EINHORN_FD_COUNT" for key in env)


def test_each_worker_runs_in_its_own_process_group(harness: Harness) -> None:
    master = harness.start("-n", "2", *FAST, workers=2)
    master_group = os.getpgid(master.pid)
    for pid in master.children():
        assert os.getpgid(pid) == pid != master_group


@pytest.mark.parametrize(
    ("options", "program", "needle"),
    [
        (["-n", "0"], None, "'0'"),
        (["-m", "fast"], None, "'fast'"),
        (["-s", "0"], None, "'0'"),
        (["-b", "nohost"], None, "nohost"),
        (["-b", "127.0.0.1:99999"], None, "127.0.0.1:99999"),
        ([], ["/nonexistent/einhorn-test-program"], "/nonexistent/einhorn-test-program"),
        ([], ["no-such-einhorn-test-program"], "no-such-einhorn-test-program"),
    ],
    ids=["-n 0", "-m fast", "-s 0", "-b nohost", "-b bad port", "missing program", "unknown program"],
)
def test_invalid_command_line_is_one_clear_line_and_starts_nothing(
    harness: Harness, options: list[str], program: list[str] | None, needle: str
) -> None:
    marker = harness.directory / "started"
    sock, pidfile = harness.directory / "s", harness.directory / "p"
    argv = ["-d", str(sock), "-e", str(pidfile), "-f", str(harness.directory / "l"), *options]
    result = harness.run(*argv, "--", *(program or ["touch", str(marker)]))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not marker.exists()
    assert not sock.exists() and not pidfile.exists()
    assert harness.leftovers() == []


def test_no_program_prints_the_usage_and_exits_1(harness: Harness) -> None:
    result = harness.run("-n", "2")
    assert result.returncode == 1
    assert result.stdout.startswith("## Usage")
    assert "### Options" in result.stdout


def test_help_prints_the_long_usage_and_exits_1(harness: Harness) -> None:
    result = harness.run("-h")
    assert result.returncode == 1
    assert result.stdout.startswith("## Usage\n")
    assert "## Overview" in result.stdout and "### Options" in result.stdout


def test_version_exits_0(harness: Harness) -> None:
    result = harness.run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == __version__


def test_pidfile_is_written_and_removed(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    assert Path(master.pidfile).read_text() == str(master.pid)
    assert stat.S_ISSOCK(os.stat(master.socket_path).st_mode)
    master.send_signal(signal.SIGTERM)
    assert master.wait_exit() == 0
    assert not os.path.exists(master.pidfile)
    assert not os.path.exists(master.socket_path)


def accepts_connections(path: str) -> bool:
    """The socket file exists from bind() on, but takes connections only from listen() on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def test_command_name_names_the_default_files(harness: Harness) -> None:
    master = harness.start("-c", "demo", "-n", "1", *FAST, paths=False)
    tmp = harness.directory  # the master's $TMPDIR
    master.socket_path = str(tmp / "einhorn-demo.sock")
    wait_until(lambda: accepts_connections(master.socket_path), 10, "the default command socket")  # bound, then listening
    master.wait_workers(1)
    assert (tmp / "einhorn-demo.pid").read_text() == str(master.pid)
    assert (tmp / "einhorn-demo.lock").exists()
    assert "(demo)" in master.message("ehlo")
    result = master.einhornsh("state", "-c", "demo")  # found by name through $TMPDIR
    assert result.returncode == 0 and ":children:" in result.stdout


def test_idle_master_uses_no_cpu(harness: Harness) -> None:
    master = harness.start("-n", "2", *FAST, workers=2)
    before = cpu_seconds(master.pid)
    time.sleep(2.0)  # a measurement window, not a synchronisation
    used = cpu_seconds(master.pid) - before
    assert used <= 0.03, f"idle master used {used:.2f}s of CPU in 2s"
    stat_now = proc_stat(master.pid)
    assert stat_now is not None and stat_now.state == "S"
    assert len(children_of(master.pid)) == 2


def test_kill_children_on_exit_gives_workers_a_parent_death_signal(harness: Harness) -> None:
    out = harness.directory
    master = harness.start("-n", "1", *FAST, "-k", program=recorder(out), workers=1)
    [pid] = master.children()
    wait_ready(out, [pid])
    master.proc.kill()  # SIGKILL: no chance to signal anyone itself
    master.proc.wait()
    wait_until(lambda: signals_received(out, pid) == ["USR2"], 5, "USR2 from PR_SET_PDEATHSIG")
    wait_until(lambda: not alive(pid), 5, "the worker to exit")


@pytest.mark.timeout(60)
def test_the_spin_up_interval_is_capped_at_30s(capped_crash_loop: Master) -> None:
    """Last in this module on purpose: its master has been crash-looping since the first test."""
    master = capped_crash_loop
    # One death before an ACK: min(25 * 1.5, 30) = 30, so the second launch comes 30 s after the first.
    master.wait_log(r"===> Launched", count=2, timeout=45)
    first, second = (t for t, _ in master.timed_lines(r"===> Launched")[:2])
    assert 29.5 <= second - first <= 32, second - first
    master.wait_log(r"spin-up interval 30s\)")
    assert master.state()["consecutive_deaths_before_ack"] >= 1  # type: ignore[operator]


STARTUP_ONLY = ("logging", "threading", "argparse", "gettext", "locale", "contextlib", "struct", "heapq", "einhorn.cli.usage", "typing", "immutables", "immutables._protocols", "shlex", "einhorn.io.nice", "einhorn.io.reexec", "einhorn.core.serialize", "einhorn.core.report", "shutil", "tempfile", "random", "bz2", "lzma", "traceback", "datetime", "yaml", "einhorn.io.render", "prometheus_client", "einhorn.io.metrics")
"""Modules an idle master has no use for (issue 14: each costs it memory for its whole life)."""


def imported(log: str) -> set[str]:
    """The modules `python -X importtime` (PYTHONPROFILEIMPORTTIME) reported in `log`."""
    return {line.rsplit("|", 1)[1].strip() for line in log.splitlines() if line.startswith("import time:") and "|" in line}


def test_an_idle_master_loads_only_what_it_uses(harness: Harness) -> None:
    """As installed from a wheel: without `site`, whose `.pth` of an editable install imports
    `contextlib` and `importlib.util` for its own import finder."""
    einhorn = [sys.executable, "-S", "-c", "import sys; from einhorn.cli import main; sys.exit(main())"]  # (the console script)
    path = os.pathsep.join([str(Path(einhorn_package.__file__).parent.parent), sysconfig.get_paths()["purelib"]])
    env = {"PYTHONPROFILEIMPORTTIME": "1", "PYTHONPATH": path}
    master = harness.start("-n", "2", *FAST, env=env, einhorn=einhorn)  # no `state` to wait for them
    master.wait_log(r"Up to 2 / 2 timer ACKs")
    loaded = imported(master.log())
    assert {"einhorn.io.loop", "einhorn.core.step", "einhorn.core.indexed"} <= loaded  # the report is read right
    assert not loaded & set(STARTUP_ONLY), sorted(loaded & set(STARTUP_ONLY))
    assert master.state()["respawn"] is True  # the first `state` brings in its renderer, and only then
    master.wait_log(r"\| +einhorn\.io\.render$")
