"""einhorn.io.preload: loading code in the master, and the forked worker's set-up (-p, BEHAVIOR §7)."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from einhorn.io import preload, signals
from einhorn.io.logs import Logger
from einhorn.io.spawn import WorkerLaunch, wait_for_report

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

APP = """
import os
LOADED_IN = os.getpid()
if __name__ == "__main__":
    raise SystemExit("a preload must not run as __main__")
def einhorn_main():
    return 0
"""


@pytest.fixture
def import_state() -> Iterator[None]:
    """Undo what loading does to this process: new modules, sys.path entries, frozen objects."""
    modules = set(sys.modules)
    path = list(sys.path)
    try:
        yield
    finally:
        for name in set(sys.modules) - modules:
            del sys.modules[name]
        sys.path[:] = path
        gc.unfreeze()


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --- load ---------------------------------------------------------------------


def test_load_a_file(tmp_path: Path, import_state: None, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "preload_helper_mod.py", "ANSWER = 42\n")
    path = write(tmp_path / "preload_app_one.py", APP + "import preload_helper_mod\n")
    loaded = preload.load(path, Logger())
    assert loaded is not None
    assert loaded.main() == 0
    module = sys.modules["preload_app_one"]
    assert module.LOADED_IN == os.getpid()
    assert sys.path[0] == str(tmp_path), "siblings import as with `python app.py`"
    assert loaded.fds == frozenset()
    assert gc.get_freeze_count() > 0
    assert f"Successfully loaded {path}" in capsys.readouterr().err


def test_load_a_file_whose_name_is_taken(tmp_path: Path, import_state: None) -> None:
    path = write(tmp_path / "json.py", APP)
    assert preload.load(path, Logger()) is not None
    assert sys.modules[preload.FALLBACK_MODULE_NAME].__file__ == path
    assert sys.modules["json"] is json


def test_load_a_file_without_py_suffix(tmp_path: Path, import_state: None) -> None:
    loaded = preload.load(write(tmp_path / "server", APP), Logger())
    assert loaded is not None and loaded.main() == 0


def test_load_a_module_name_from_the_current_directory(
    tmp_path: Path, import_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "preload_app_two.py", APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    loaded = preload.load("preload_app_two", Logger())
    assert loaded is not None
    assert sys.modules["preload_app_two"].LOADED_IN == os.getpid()


def test_descriptors_opened_while_loading_are_kept(tmp_path: Path, import_state: None) -> None:
    code = APP + f"LOG = open({str(tmp_path / 'app.log')!r}, 'a')\n"
    loaded = preload.load(write(tmp_path / "preload_app_three.py", code), Logger())
    assert loaded is not None
    log_file = sys.modules["preload_app_three"].LOG
    try:
        assert loaded.fds == frozenset([log_file.fileno()])
    finally:
        log_file.close()


def test_threads_started_while_loading_are_warned_about(
    tmp_path: Path, import_state: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = APP + "import threading\nSTOP = threading.Event()\nT = threading.Thread(target=STOP.wait)\nT.start()\n"
    loaded = preload.load(write(tmp_path / "preload_app_four.py", code), Logger())
    module = sys.modules["preload_app_four"]
    module.STOP.set()
    module.T.join()
    assert loaded is not None
    assert "started 1 thread(s) while loading" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "code", "reason"),
    [
        ("raises.py", APP + "raise ValueError('boom')\n", "boom (ValueError)"),
        ("exits.py", APP + "import sys\nsys.exit(4)\n", "4 (SystemExit)"),
        ("no_main.py", "X = 1\n", "but no einhorn_main function was defined"),
        ("not_callable.py", "einhorn_main = 3\n", "but no einhorn_main function was defined"),
        ("syntax.py", "def einhorn_main(:\n", "(SyntaxError)"),
    ],
)
def test_a_failed_load_is_logged_and_gives_none(
    tmp_path: Path, import_state: None, capsys: pytest.CaptureFixture[str], name: str, code: str, reason: str
) -> None:
    path = write(tmp_path / name, code)
    assert preload.load(path, Logger()) is None
    err = capsys.readouterr().err
    assert "Proceeding with postload -- " in err and reason in err
    if "Traceback" in err:
        assert name.removesuffix(".py") not in sys.modules, "a failed import is not left half-loaded"


def test_missing_file_and_module(tmp_path: Path, import_state: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert preload.load(str(tmp_path / "absent.py"), Logger()) is None
    assert preload.load("no_such_module_for_einhorn", Logger()) is None
    err = capsys.readouterr().err
    assert "(FileNotFoundError)" in err and "(ModuleNotFoundError)" in err and "Traceback" in err


def test_collection_is_restored_after_loading(tmp_path: Path, import_state: None) -> None:
    assert gc.isenabled()
    preload.load(write(tmp_path / "raises_again.py", "raise ValueError\n"), Logger())
    assert gc.isenabled()


# --- pure helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("program", "argv"),
    [
        (["python3", "app.py", "--port", "5"], ["app.py", "--port", "5"]),
        (["/usr/bin/python3.11", "-u", "-X", "dev", "app.py"], ["app.py"]),
        (["python", "-m", "myapp.server", "-v"], ["myapp.server", "-v"]),
        (["python3", "-c", "code", "a"], ["-c", "a"]),
        (["pypy3", "--", "app.py"], ["app.py"]),
        (["python3"], ["python3"]),
        (["./server.py", "--port", "5"], ["./server.py", "--port", "5"]),
        (["/opt/app/bin/serve"], ["/opt/app/bin/serve"]),
    ],
)
def test_worker_argv(program: list[str], argv: list[str]) -> None:
    assert preload.worker_argv(program) == argv


@pytest.mark.parametrize(("value", "code"), [(None, 0), (0, 0), (3, 3), (True, 1), (256, 0), (-1, 255)])
def test_exit_code(value: object, code: int) -> None:
    assert preload.exit_code(value) == code


def test_exit_code_of_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert preload.exit_code("bye") == 1
    assert capsys.readouterr().err == "bye\n"


def _raise(error: BaseException) -> object:
    raise error


@pytest.mark.parametrize(
    ("error", "code", "printed"),
    [
        (SystemExit(), 0, ""),
        (SystemExit(9), 9, ""),
        (SystemExit("gone"), 1, "gone\n"),
        (ValueError("bad"), 1, "ValueError: bad"),
        (KeyboardInterrupt(), 1, "KeyboardInterrupt"),
    ],
)
def test_run_main(error: BaseException, code: int, printed: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert preload.run_main(lambda: _raise(error)) == code
    err = capsys.readouterr().err
    assert printed in err
    if isinstance(error, Exception):
        assert err.startswith("Traceback")


def test_run_main_return_value() -> None:
    assert preload.run_main(lambda: None) == 0
    assert preload.run_main(lambda: 12) == 12


def test_reseed_changes_the_stream() -> None:
    import random

    state = random.getstate()
    try:
        random.seed(1)
        first = random.random()
        random.seed(1)
        preload.reseed()
        assert random.random() != first
    finally:
        random.setstate(state)


# --- the forked worker ----------------------------------------------------------------


def _report_main(path: str) -> Callable[[], object]:
    def main() -> object:
        fds = []
        for name in os.listdir("/proc/self/fd"):
            try:
                os.fstat(int(name))
                fds.append(int(name))
            except OSError:
                pass
        report = {
            "pid": os.getpid(),
            "pgid": os.getpgid(0),
            "argv": sys.argv,
            "env": {k: v for k, v in os.environ.items() if k.startswith("EINHORN_") or k == "KEPT"},
            "fds": sorted(fds),
            "sigpipe": int(signal.getsignal(signal.SIGPIPE)),  # type: ignore[arg-type]
            "sigterm": int(signal.getsignal(signal.SIGTERM)),  # type: ignore[arg-type]
            "not_default": sorted(s.name for s in signals.HANDLED_SIGNALS if signal.getsignal(s) != signal.SIG_DFL),
            "title": Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode().strip(),
        }
        Path(path).write_text(json.dumps(report))
        raise SystemExit(5)

    return main


def _masters_handler(signum: int, frame: object) -> None:
    """Stands for the master's wake-only handler."""


def _launch(listener: socket.socket, prepare_child: Callable[[], None] | None = None) -> WorkerLaunch:
    return WorkerLaunch(
        path="/bin/false",
        argv=["python3", "app.py", "x"],
        environ={"KEPT": "yes", "EINHORN_USER_SETTING": "1", "EINHORN_FD_4": "stale"},
        listener_fds=(listener.fileno(),),
        listener_families=(listener.family.name,),
        socket_path="/tmp/einhorn-test.sock",
        master_pid=os.getpid(),
        prepare_child=prepare_child,
    )


def test_spawn_runs_einhorn_main_in_a_set_up_child(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.set_inheritable(True)
    leaked_r, leaked_w = os.pipe()  # stands for the master's own descriptors
    spawner = preload.Preloader(
        preload.Preloaded("app.py", _report_main(str(report_path)), frozenset()), ["python3", "app.py", "x"], "unit", Logger()
    )
    pid = None
    masters = {s: signal.signal(s, _masters_handler) for s in signals.HANDLED_SIGNALS}  # as `signals.install` does
    try:
        spawned = spawner.spawn(_launch(listener), 3, None)
        pid = spawned.pid
        assert wait_for_report(spawned) is None
        _, status = os.waitpid(pid, 0)
        pid = None
        assert os.waitstatus_to_exitcode(status) == 5
    finally:
        for signum, handler in masters.items():
            signal.signal(signum, handler)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        listener_fd = listener.fileno()
        listener.close()
        os.close(leaked_r)
        os.close(leaked_w)
    report = json.loads(report_path.read_text())
    assert report["pgid"] == report["pid"], "each worker in its own process group"
    assert report["argv"] == ["app.py", "x"]
    assert report["env"] == {
        "KEPT": "yes",
        "EINHORN_USER_SETTING": "1",
        "EINHORN_MASTER_PID": str(os.getpid()),
        "EINHORN_SOCK_PATH": "/tmp/einhorn-test.sock",
        "EINHORN_FD_COUNT": "1",
        "EINHORN_FD_0": str(listener_fd),
        "EINHORN_FD_FAMILY_0": "AF_INET",
        "EINHORN_FDS": str(listener_fd),
        "EINHORN_CHILD_INDEX": "3",
    }
    assert report["fds"] == sorted({0, 1, 2, listener_fd})
    assert report["sigpipe"] == int(signal.SIG_IGN)
    assert report["sigterm"] == int(signal.SIG_DFL)
    assert report["not_default"] == [], "the master's handlers are not the worker's"
    assert report["title"] == "einhorn worker: unit"


def test_spawn_reports_a_failed_set_up(tmp_path: Path) -> None:
    def broken() -> None:
        raise PermissionError(13, "no renice for you")

    listener = socket.socket()
    spawner = preload.Preloader(preload.Preloaded("app.py", lambda: None, frozenset()), ["app"], None, Logger())
    try:
        spawned = spawner.spawn(_launch(listener, prepare_child=broken), 0, None)
        error = wait_for_report(spawned)
        _, status = os.waitpid(spawned.pid, 0)
    finally:
        listener.close()
    assert error is not None and error.errno == 13
    assert "preloaded worker set-up failed" in str(error.strerror)
    assert os.waitstatus_to_exitcode(status) == 127
