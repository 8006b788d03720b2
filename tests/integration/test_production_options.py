"""Production options on a real master (issue 5): -p, -k, -c, --nice, -l and -b flags.

Every test runs `python -m einhorn` with a small Python worker (written to a
fresh temp dir) that reports what it sees into a JSON file: its parent, the
pdeathsig from PR_GET_PDEATHSIG, its nice level, argv, EINHORN_* variables,
open descriptors and socket options. The same file is the preload module
(`einhorn_main`) and the exec'd script. Teardown kills the master and every
worker by pid (checking the start time, so a recycled pid is never hit) and
removes the temp dir, also on failure. Waits poll a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from einhorn.client import Client
from tests.integration.other_user import REPO, as_nobody

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and prctl")

WAIT = 20.0

WORKER = r'''
import atexit, ctypes, fcntl, json, os, random, signal, socket, sys

LOADED_IN = os.getpid()
_VERSION_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "version.txt")
VERSION = open(_VERSION_FILE).read() if os.path.exists(_VERSION_FILE) else None
LOG = open(os.environ["PROD_WORKER_LOG"], "a", buffering=1) if os.environ.get("PROD_WORKER_LOG") else None
if os.environ.get("PROD_WORKER_CRASH_ON_VTALRM"):
    def _crash(signum, frame):
        raise RuntimeError("master crash requested by the test")
    signal.signal(signal.SIGVTALRM, _crash)


def _open_fds():
    listed = [int(name) for name in os.listdir("/proc/self/fd")]
    found = []
    for fd in listed:
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.append(fd)
    return sorted(found)


def _write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def einhorn_main():
    report_dir, flags = sys.argv[1], set(sys.argv[2:])
    pid = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)
    pdeathsig = ctypes.c_int(-1)
    libc.prctl(2, ctypes.byref(pdeathsig), 0, 0, 0)  # PR_GET_PDEATHSIG
    if "clear-pdeathsig" in flags:
        libc.prctl(1, 0, 0, 0, 0)  # so that only the master itself can send USR2
    if "ignore-quit" in flags:
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)

    def on_usr2(signum, frame):
        _write(os.path.join(report_dir, f"{pid}.usr2"), "USR2")
        os._exit(0)

    signal.signal(signal.SIGUSR2, on_usr2)
    sockets = []
    for n in range(int(os.environ.get("EINHORN_FD_COUNT", "0"))):
        fd = int(os.environ[f"EINHORN_FD_{n}"])
        sock = socket.socket(fileno=fd)
        try:
            sockets.append({
                "fd": fd,
                "port": sock.getsockname()[1],
                "reuseaddr": sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
                "listening": sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
                "nonblock": bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK),
            })
        finally:
            sock.detach()
    if LOG is not None:
        LOG.write(f"hello from {pid}\n")
    report = {
        "pid": pid,
        "ppid": os.getppid(),
        "loaded_in": LOADED_IN,
        "version": VERSION,
        "pdeathsig": pdeathsig.value,
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "argv": sys.argv,
        "env": {k: v for k, v in os.environ.items() if k.startswith("EINHORN_")},
        "fds": _open_fds(),
        "log_fd": LOG.fileno() if LOG is not None else None,
        "sockets": sockets,
        "random": random.random(),
        "sigpipe_ignored": signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN,
    }
    if "return-7" in flags:
        atexit.register(_write, os.path.join(report_dir, f"{pid}.atexit"), "atexit ran")
        _write(os.path.join(report_dir, f"{pid}.json"), json.dumps(report))
        return 7
    _write(os.path.join(report_dir, f"{pid}.json"), json.dumps(report))
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(einhorn_main())
'''

NO_MAIN = "VALUE = 1\n"
BROKEN = "def einhorn_main():\n    pass\n\nraise RuntimeError('this preload is broken on purpose')\n"

RECORDING_RENICE = """#!/bin/sh
echo "$@" >> "{record}"
exit {status}
"""


# --- /proc helpers ------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (index 0 is the state), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def nice_of(pid: int) -> int:
    stat = proc_stat(pid)
    assert stat is not None, f"process {pid} is gone"
    return int(stat[16])  # field 19


def start_time(pid: int) -> str | None:
    stat = proc_stat(pid)
    return None if stat is None else stat[19]  # field 22


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode().strip() for part in raw.split(b"\0") if part.strip()]


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return found


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


# --- the fixture ----------------------------------------------------------------


@dataclass
class ProdEinhorn:
    proc: subprocess.Popen[bytes]
    directory: Path
    reports: Path
    log_path: Path
    socket_path: str
    known: dict[int, str | None] = field(default_factory=dict)
    """Worker pid -> start time, for a teardown that never signals a recycled pid."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def reports_now(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.reports.glob("*.json")):
            report: dict[str, Any] = json.loads(path.read_text())
            self.known.setdefault(report["pid"], start_time(report["pid"]))
            found.append(report)
        return found

    def wait_reports(self, count: int) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.reports_now()) >= count or self.proc.poll() is not None, f"{count} worker reports")
        reports = self.reports_now()
        assert len(reports) >= count, f"master exited with {self.proc.returncode}:\n{self.log()}"
        return reports

    def wait_log(self, text: str) -> None:
        wait_for(lambda: text in self.log(), f"{text!r} in the master's log:\n{self.log()}")

    def usr2_received(self, pid: int) -> bool:
        return (self.reports / f"{pid}.usr2").exists()

    def state(self) -> dict[str, Any]:
        with Client.connect(self.socket_path) as client:
            (response,) = client.command("state", ["--json"])
        document: dict[str, Any] = json.loads(str(response["message"]))
        return document

    def remember_children(self) -> None:
        for pid in children_of(self.pid):
            self.known.setdefault(pid, start_time(pid))


@pytest.fixture
def prod_einhorn() -> Iterator[Callable[..., ProdEinhorn]]:
    started: list[ProdEinhorn] = []
    directories: list[str] = []

    def start(
        options: Sequence[str],
        flags: Sequence[str] = (),
        env: dict[str, str] | None = None,
        files: dict[str, str] | None = None,
        wrap: Sequence[str] = (),
        cwd: Path | None = None,
        python: str = sys.executable,
        shared: bool = False,
        pythonpath: str = str(REPO),
    ) -> ProdEinhorn:
        directory = Path(tempfile.mkdtemp(prefix="einhorn-prod-"))
        directories.append(str(directory))
        reports = directory / "reports"
        reports.mkdir()
        (directory / "prod_worker.py").write_text(WORKER)
        if shared:  # an unprivileged master and workers write here too
            os.chmod(directory, 0o777)
            os.chmod(reports, 0o777)
        for name, text in (files or {}).items():
            (directory / name).write_text(text.format(dir=directory))
        log_path = directory / "master.log"
        socket_path = str(directory / "cmd.sock")
        argv = [
            *wrap, python, "-m", "einhorn",
            "-d", socket_path, "-e", str(directory / "einhorn.pid"), "-f", str(directory / "einhorn.lock"),
            *[option.format(dir=directory) for option in options],
            "--", python, str(directory / "prod_worker.py"), str(reports), *flags,
        ]
        environ = {**os.environ, "TMPDIR": str(directory), **{k: v.format(dir=directory) for k, v in (env or {}).items()}}
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, environ.get("PYTHONPATH")]))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=environ, cwd=cwd or directory)
        einhorn = ProdEinhorn(proc, directory, reports, log_path, socket_path)
        started.append(einhorn)
        return einhorn

    try:
        yield start
    finally:
        for einhorn in started:
            einhorn.remember_children()
            with_reports = einhorn.reports.exists()
            if with_reports:
                einhorn.reports_now()
            if einhorn.proc.poll() is None:
                einhorn.proc.kill()
            einhorn.proc.wait()
            for pid, started_at in einhorn.known.items():
                if started_at is not None and start_time(pid) == started_at and alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            wait_for(lambda: not any(alive(p) and start_time(p) == t for p, t in einhorn.known.items()), "workers to die")  # noqa: B023 - called at once
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)


# --- -p: preload ------------------------------------------------------------------


def test_preload_runs_einhorn_main_in_forked_workers(prod_einhorn: Callable[..., ProdEinhorn]) -> None:
    einhorn = prod_einhorn(
        ["-n", "2", "-c", "prodtest", "-g", "-b", "127.0.0.1:0", "-p", "{dir}/prod_worker.py"],
        env={"PROD_WORKER_LOG": "{dir}/app.log"},
    )
    reports = einhorn.wait_reports(2)
    assert einhorn.state()["state"]["preloaded"] is True
    for report in reports:
        assert report["loaded_in"] == einhorn.pid != report["pid"], "einhorn_main must run in a fork of the master"
        assert report["ppid"] == einhorn.pid
        assert report["argv"] == [str(einhorn.directory / "prod_worker.py"), str(einhorn.reports)]
        env = report["env"]
        assert env["EINHORN_MASTER_PID"] == str(einhorn.pid)
        assert env["EINHORN_SOCK_PATH"] == einhorn.socket_path
        assert env["EINHORN_FD_COUNT"] == "1"
        listener = int(env["EINHORN_FD_0"])
        sock_fd = int(env["EINHORN_SOCK_FD"])
        # stdio, the listener, the -g socket and what the preload opened itself: nothing else of the master
        assert report["fds"] == sorted({0, 1, 2, listener, sock_fd, report["log_fd"]})
        assert report["sockets"][0]["listening"]
        assert report["sigpipe_ignored"], "a Python worker keeps Python's SIGPIPE disposition"
        assert report["pdeathsig"] == 0
        assert cmdline(report["pid"])[0] == "einhorn worker: prodtest"
    assert sorted(r["env"]["EINHORN_CHILD_INDEX"] for r in reports) == ["0", "1"]
    assert reports[0]["random"] != reports[1]["random"], "random must be re-seeded in each worker"
    assert cmdline(einhorn.pid)[0] == "einhorn: prodtest"
    app_log = (einhorn.directory / "app.log").read_text()
    assert sorted(app_log.split("\n")[:-1]) == sorted(f"hello from {r['pid']}" for r in reports)


IMMUTABLES_APP = r'''
import collections.abc, json, os, pickle, signal, sys
import immutables

FACTS = dict(  # here, in the master, as it loads the app (no braces: the test formats this text with the directory)
    file=immutables.__file__,
    complete=[name for name in ("Map", "MapKeys", "MapValues", "MapItems", "MapMutation", "__version__") if hasattr(immutables, name)],
    protocols="immutables._protocols" in sys.modules,
    one_map_type=sys.modules["einhorn.core.indexed"].Map is immutables.Map is sys.modules["immutables._map"].Map,
    mapping=isinstance(immutables.Map(), collections.abc.Mapping),
    pickled=pickle.loads(pickle.dumps(immutables.Map(a=1))) == immutables.Map(a=1),
)


def einhorn_main():
    path = os.path.join(sys.argv[1], str(os.getpid()))
    with open(path + ".tmp", "w") as report:
        json.dump(dict(FACTS, pid=os.getpid()), report)
    os.rename(path + ".tmp", path + ".json")  # whole, or not there yet
    while True:
        signal.pause()
'''


def test_a_preloaded_app_imports_the_real_immutables(prod_einhorn: Callable[..., ProdEinhorn]) -> None:
    """The master holds immutables' C module without the package (einhorn/extension.py, issue 14): an app
    that imports the package gets it whole, with the master's own `Map` type."""
    import immutables

    einhorn = prod_einhorn(["-p", "{dir}/immutables_app.py"], files={"immutables_app.py": IMMUTABLES_APP})
    (report,) = einhorn.wait_reports(1)
    assert {key: report[key] for key in report if key != "pid"} == {
        "file": immutables.__file__,
        "complete": ["Map", "MapKeys", "MapValues", "MapItems", "MapMutation", "__version__"],
        "protocols": True,
        "one_map_type": True,
        "mapping": True,
        "pickled": True,
    }


def test_preload_by_module_name(prod_einhorn: Callable[..., ProdEinhorn]) -> None:
    einhorn = prod_einhorn(["-p", "prod_worker"])
    (report,) = einhorn.wait_reports(1)
    assert report["loaded_in"] == einhorn.pid
    assert "Successfully loaded prod_worker" in einhorn.log()
    # without -c a preloaded worker shows what an exec'd one would
    assert cmdline(report["pid"])[0] == f"{sys.executable} {einhorn.directory}/prod_worker.py {einhorn.reports}"


@pytest.mark.parametrize(
    ("env", "files", "preload", "reason"),
    [
        ({}, {"broken.py": BROKEN}, "{dir}/broken.py", "this preload is broken on purpose (RuntimeError)"),
        ({}, {"exits.py": "import sys\nsys.exit(3)\n"}, "{dir}/exits.py", "3 (SystemExit)"),
        ({}, {"no_main.py": NO_MAIN}, "{dir}/no_main.py", "but no einhorn_main function was defined"),
        ({}, {}, "{dir}/missing.py", "(FileNotFoundError)"),
        ({}, {}, "no_such_module_here", "(ModuleNotFoundError)"),
    ],
    ids=["raises", "exits", "no-einhorn_main", "missing-file", "missing-module"],
)
def test_failed_preload_falls_back_to_exec(
    prod_einhorn: Callable[..., ProdEinhorn], env: dict[str, str], files: dict[str, str], preload: str, reason: str
) -> None:
    einhorn = prod_einhorn(["-p", preload], env=env, files=files)
    (report,) = einhorn.wait_reports(1)
    assert report["loaded_in"] == report["pid"], "the program must have been exec'd"
    assert report["argv"] == [str(einhorn.directory / "prod_worker.py"), str(einhorn.reports)]
    log = einhorn.log()
    assert "Proceeding with postload" in log and reason in log
    assert ("Traceback" in log) != ("no einhorn_main" in log), "a failed load is logged with its traceback"
    assert einhorn.state()["state"]["preloaded"] is False


def test_preloaded_worker_exit_status_and_atexit(prod_einhorn: Callable[..., ProdEinhorn]) -> None:
    einhorn = prod_einhorn(["-p", "{dir}/prod_worker.py", "-m", "manual"], flags=["return-7"])
    report = einhorn.wait_reports(1)[0]
    wait_for(lambda: (einhorn.reports / f"{report['pid']}.atexit").exists(), "the worker's atexit handler")
    einhorn.wait_log("exit status 7")


@pytest.mark.timeout(90)
def test_upgrade_loads_the_new_code_again(prod_einhorn: Callable[..., ProdEinhorn]) -> None:
    einhorn = prod_einhorn(["-p", "{dir}/prod_worker.py", "-m", "0.2"], files={"version.txt": "one"})
    (old,) = einhorn.wait_reports(1)
    assert old["version"] == "one"
    (einhorn.directory / "version.txt").write_text("two")
    einhorn.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(r["version"] == "two" for r in einhorn.reports_now()), "a worker of the new code")
    (new,) = [r for r in einhorn.reports_now() if r["version"] == "two"]
    assert new["loaded_in"] == einhorn.pid, "re-exec'd in place, preloaded again"
    wait_for(lambda: einhorn.usr2_received(old["pid"]) and not alive(old["pid"]), "the old worker to be retired")
    assert einhorn.log().count(f"Successfully loaded {einhorn.directory}/prod_worker.py") == 2


def test_reexec_does_not_fire_the_parent_death_signal(prod_einhorn: Callable[..., ProdEinhorn]) -> None:
    einhorn = prod_einhorn(["-k", "-p", "{dir}/prod_worker.py"])
    (report,) = einhorn.wait_reports(1)
    with Client.connect(einhorn.socket_path) as client:
        list(client.command("reload"))
    wait_for(lambda: einhorn.log().count("Successfully loaded") == 2, "the re-exec'd master to preload again")
    children = einhorn.state()["state"]["children"]  # JSON: pids as strings
    assert list(children) == [str(report["pid"])]
    assert alive(report["pid"]) and not einhorn.usr2_received(report["pid"])


# --- -c: ps names -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["prodname", None])
def test_master_title_and_exec_worker_names(prod_einhorn: Callable[..., ProdEinhorn], name: str | None) -> None:
    einhorn = prod_einhorn(["-c", name] if name else [])
    (report,) = einhorn.wait_reports(1)
    program = [sys.executable, str(einhorn.directory / "prod_worker.py"), str(einhorn.reports)]
    expected = f"einhorn: {name}" if name else "einhorn: " + " ".join(program)
    assert cmdline(einhorn.pid)[0] == expected
    assert cmdline(report["pid"]) == program, "exec'd workers keep their own names"


# --- -k: parent-death signal and USR2 on exit -----------------------------------------


@pytest.mark.parametrize("preload", [False, True], ids=["exec", "preload"])
def test_kill_children_on_exit_when_master_is_sigkilled(prod_einhorn: Callable[..., ProdEinhorn], preload: bool) -> None:
    einhorn = prod_einhorn(["-k", "-n", "3", *(["-p", "{dir}/prod_worker.py"] if preload else [])])
    reports = einhorn.wait_reports(3)
    assert [r["pdeathsig"] for r in reports] == [signal.SIGUSR2] * 3
    assert all(r["loaded_in"] == (einhorn.pid if preload else r["pid"]) for r in reports)
    einhorn.proc.kill()
    einhorn.proc.wait()
    pids = [r["pid"] for r in reports]
    wait_for(lambda: all(einhorn.usr2_received(p) and not alive(p) for p in pids), "every worker to get USR2 and exit")


def test_kill_children_on_exit_on_normal_exit(prod_einhorn: Callable[..., ProdEinhorn]) -> None:
    """SIGQUIT: the master exits at once; its clean-up (not the kernel) sends USR2."""
    einhorn = prod_einhorn(["-k", "-n", "2"], flags=["clear-pdeathsig", "ignore-quit"])
    reports = einhorn.wait_reports(2)
    einhorn.proc.send_signal(signal.SIGQUIT)
    assert einhorn.proc.wait(timeout=WAIT) != 0
    pids = [r["pid"] for r in reports]
    wait_for(lambda: all(einhorn.usr2_received(p) and not alive(p) for p in pids), "every worker to get USR2 and exit")


def test_kill_children_on_exit_on_master_crash(prod_einhorn: Callable[..., ProdEinhorn]) -> None:
    """An unhandled exception in the master (raised by a signal handler the preload installed)."""
    einhorn = prod_einhorn(
        ["-k", "-n", "2", "-p", "{dir}/prod_worker.py"], flags=["clear-pdeathsig"], env={"PROD_WORKER_CRASH_ON_VTALRM": "1"}
    )
    reports = einhorn.wait_reports(2)
    einhorn.proc.send_signal(signal.SIGVTALRM)
    assert einhorn.proc.wait(timeout=WAIT) == 1
    assert "master crash requested by the test" in einhorn.log()
    pids = [r["pid"] for r in reports]
    wait_for(lambda: all(einhorn.usr2_received(p) and not alive(p) for p in pids), "every worker to get USR2 and exit")


def test_without_kill_children_on_exit_no_pdeathsig(prod_einhorn: Callable[..., ProdEinhorn]) -> None:
    einhorn = prod_einhorn([])
    (report,) = einhorn.wait_reports(1)
    assert report["pdeathsig"] == 0


# --- --nice -----------------------------------------------------------------------


@pytest.mark.parametrize("preload", [False, True], ids=["exec", "preload"])
def test_nice_levels_for_master_and_workers(prod_einhorn: Callable[..., ProdEinhorn], preload: bool) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    master_level, worker_level = max(base, 3), max(base, 7)
    options = ["--nice", f"{master_level}:{worker_level}", "-n", "2", *(["-p", "{dir}/prod_worker.py"] if preload else [])]
    einhorn = prod_einhorn(options)
    reports = einhorn.wait_reports(2)
    assert nice_of(einhorn.pid) == master_level
    for report in reports:
        assert report["nice"] == worker_level, "the worker runs at its level from its first instruction"
        assert nice_of(report["pid"]) == worker_level


def test_nice_master_only_workers_inherit(prod_einhorn: Callable[..., ProdEinhorn]) -> None:
    level = max(os.getpriority(os.PRIO_PROCESS, 0), 4)
    einhorn = prod_einhorn(["--nice", str(level)])
    (report,) = einhorn.wait_reports(1)
    assert nice_of(einhorn.pid) == level == report["nice"]


def test_nice_with_a_custom_renice_command(prod_einhorn: Callable[..., ProdEinhorn]) -> None:
    files = {"renice.sh": RECORDING_RENICE.format(record="{dir}/renice.record", status=0)}
    einhorn = prod_einhorn(["--nice", "2:5:sh {dir}/renice.sh", "-n", "2"], files=files)
    reports = einhorn.wait_reports(2)
    record = (einhorn.directory / "renice.record").read_text().splitlines()
    assert record[0] == f"2 -p {einhorn.pid}"
    assert sorted(record[1:]) == sorted(f"5 -p {r['pid']}" for r in reports)
    assert nice_of(einhorn.pid) == os.getpriority(os.PRIO_PROCESS, 0), "the command, not einhorn, renices"


def test_nice_failure_is_logged_not_fatal(prod_einhorn: Callable[..., ProdEinhorn]) -> None:
    files = {"renice.sh": RECORDING_RENICE.format(record="{dir}/renice.record", status=3)}
    einhorn = prod_einhorn(["--nice", "1:2:sh {dir}/renice.sh"], files=files)
    einhorn.wait_reports(1)
    assert "Renice command exited with status 3, but continuing on anyway." in einhorn.log()


def _nobody_may_lower_nice() -> bool:
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or soft > 20


@pytest.mark.skipif(_nobody_may_lower_nice(), reason="RLIMIT_NICE lets anyone lower the nice level here")
def test_negative_nice_as_non_root_warns_and_continues(prod_einhorn: Callable[..., ProdEinhorn]) -> None:
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:  # as root, the master runs as nobody, from what nobody can reach (maybe a copy)
            user = stack.enter_context(as_nobody())
            einhorn = prod_einhorn(["--nice", "-5:-6"], wrap=user.wrap(), python=user.python, pythonpath=user.pythonpath, shared=True)
        else:
            einhorn = prod_einhorn(["--nice", "-5:-6"], shared=True)
        (report,) = einhorn.wait_reports(1)
    log = einhorn.log()
    assert "WARNING: --nice asks for level -5 for the master" in log
    assert "WARNING: --nice asks for level -6 for the workers" in log
    assert "Could not renice process" in log
    assert report["nice"] == os.getpriority(os.PRIO_PROCESS, 0)


# --- -b flags and -l on the real socket -----------------------------------------------


def _ss_backlog(port: int) -> int:
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True, timeout=WAIT
    ).stdout.split()
    # State Recv-Q Send-Q Local Peer: for a listening socket Send-Q is its backlog.
    assert out and out[0] == "LISTEN", out
    return int(out[2])


@pytest.mark.parametrize("backlog", [None, 7])
def test_bind_flags_and_backlog_on_the_real_socket(prod_einhorn: Callable[..., ProdEinhorn], backlog: int | None) -> None:
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    options = ["-b", "127.0.0.1:0,r,n", "-b", "127.0.0.1:0", *(["-l", str(backlog)] if backlog else [])]
    einhorn = prod_einhorn(options)
    (report,) = einhorn.wait_reports(1)
    flagged, plain = report["sockets"]
    assert flagged["reuseaddr"] != 0 and flagged["nonblock"] and flagged["listening"]
    assert plain["reuseaddr"] == 0 and not plain["nonblock"] and plain["listening"]
    for sock in (flagged, plain):
        assert _ss_backlog(sock["port"]) == (backlog or 100)
