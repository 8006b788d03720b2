"""The worker environment (BEHAVIOR §2) as the shell builds it."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from einhorn.core.record import replace
from einhorn.core.state import LaunchSpec
from einhorn.io.spawn import (
    WorkerLaunch,
    generation_launch,
    is_einhorn_variable,
    launch_spec,
    place_listen_fds,
    spawn_worker,
    wait_for_report,
    worker_environment,
    worker_fds,
)


def launch(environ: dict[str, str], fds: tuple[int, ...] = (5, 6), families: tuple[str, ...] = ("AF_INET", "AF_INET6")) -> WorkerLaunch:
    return WorkerLaunch(
        path="/bin/true", argv=["true"], environ=environ, listener_fds=fds, listener_families=families, socket_path="/s", master_pid=42
    )


def test_worker_environment_sets_the_einhorn_variables_and_replaces_inherited_ones() -> None:
    env = worker_environment(launch({"PATH": "/bin", "EINHORN_FD_9": "stale", "EINHORN_SOCK_FD": "7"}), 3, None)
    assert env == {
        "PATH": "/bin",
        "EINHORN_MASTER_PID": "42",
        "EINHORN_SOCK_PATH": "/s",
        "EINHORN_FD_COUNT": "2",
        "EINHORN_FD_0": "5",
        "EINHORN_FD_FAMILY_0": "AF_INET",
        "EINHORN_FD_1": "6",
        "EINHORN_FD_FAMILY_1": "AF_INET6",
        "EINHORN_FDS": "5 6",
        "EINHORN_CHILD_INDEX": "3",
    }
    assert worker_environment(launch({}), 0, 11)["EINHORN_SOCK_FD"] == "11"


def test_user_einhorn_variables_pass_through_and_stale_einhorn_ones_do_not() -> None:
    outer = {  # what an outer einhorn gave the master, with one listener more and -g
        "EINHORN_MASTER_PID": "1", "EINHORN_SOCK_PATH": "/outer", "EINHORN_SOCK_FD": "9", "EINHORN_CHILD_INDEX": "4",
        "EINHORN_FD_COUNT": "2", "EINHORN_FD_0": "7", "EINHORN_FD_1": "8", "EINHORN_FD_FAMILY_0": "AF_UNIX",
        "EINHORN_FD_FAMILY_1": "AF_UNIX", "EINHORN_FDS": "7 8", "EINHORN_FD_12": "stale",
    }
    user = {"EINHORN_APP_NAME": "payments", "EINHORN_RUBY_LIB": "/lib", "EINHORN_FD_EXTRA": "mine", "EINHORN_FD_": "", "APP_MODE": "x"}
    env = worker_environment(launch({**outer, **user}, fds=(3,), families=("AF_INET",)), 0, None)
    assert env == {
        **user,
        "EINHORN_MASTER_PID": "42",
        "EINHORN_SOCK_PATH": "/s",
        "EINHORN_FD_COUNT": "1",
        "EINHORN_FD_0": "3",
        "EINHORN_FD_FAMILY_0": "AF_INET",
        "EINHORN_FDS": "3",
        "EINHORN_CHILD_INDEX": "0",
    }


def test_without_listeners_einhorn_fds_is_empty() -> None:
    env = worker_environment(launch({"EINHORN_FDS": "3 4", "EINHORN_FD_FAMILY_0": "AF_INET"}, fds=(), families=()), 0, None)
    assert (env["EINHORN_FD_COUNT"], env["EINHORN_FDS"]) == ("0", "")
    assert not any(name.startswith("EINHORN_FD_") and name != "EINHORN_FD_COUNT" for name in env)


def test_every_name_einhorn_sets_is_one_it_replaces() -> None:
    # The one list of einhorn's names must cover all it sets, or an outer einhorn's value could leak.
    env = worker_environment(launch({}), 1, 11)
    assert all(is_einhorn_variable(name) for name in env)
    assert not is_einhorn_variable("EINHORN_FD_1x") and not is_einhorn_variable("EINHORN_FD_FAMILY_")


def test_names_no_program_could_receive_are_left_out() -> None:
    # Such entries reach einhorn from a parent that built its environment by hand; posix_spawn
    # would refuse the whole environment (and the fork path's execve would fail) because of them.
    env = worker_environment(launch({"": "empty", "A=B": "c", "KEEP": "1"}), 0, None)
    assert "" not in env and "A=B" not in env and env["KEEP"] == "1"


SUPERVISOR = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"}


def test_what_systemd_told_the_master_never_reaches_a_worker() -> None:
    env = worker_environment(launch({**SUPERVISOR, "KEEP": "1"}), 0, None)
    assert not set(SUPERVISOR) & set(env) and env["KEEP"] == "1"


def test_listen_fds_puts_the_listeners_at_3_and_the_command_socket_after_them() -> None:
    given = replace(launch(SUPERVISOR, fds=(9, 4)), listen_fds=True, listener_names=("web", ""))
    env = worker_environment(given, 0, 12)
    assert {k: env[k] for k in ("EINHORN_FD_0", "EINHORN_FD_1", "EINHORN_FDS", "EINHORN_SOCK_FD")} == {
        "EINHORN_FD_0": "3", "EINHORN_FD_1": "4", "EINHORN_FDS": "3 4", "EINHORN_SOCK_FD": "5",
    }  # fmt: skip
    assert (env["LISTEN_FDS"], env["LISTEN_FDNAMES"]) == ("2", "web:unknown")
    assert "LISTEN_PID" not in env  # the worker's own pid: set in the child
    assert worker_fds(given, None) == ([3, 4], None)


def test_notify_mode_gives_workers_the_masters_notify_socket() -> None:
    env = worker_environment(replace(launch(SUPERVISOR), notify_socket="/tmp/e.notify"), 0, None)
    assert env["NOTIFY_SOCKET"] == "/tmp/e.notify" and "WATCHDOG_USEC" not in env


def test_place_listen_fds_copes_with_sources_inside_the_target_range() -> None:
    """In a forked child: 4 -> 3 and 3 -> 4 (a swap), 10 -> 5, and the report pipe, at 5, moved out of the way."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
            for sock, name in zip(socks, "abc", strict=True):
                sock.bind(f"\0einhorn-test-{os.getpid()}-{name}")
            high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 200) for s in socks]
            pipe = fcntl.fcntl(write_end, fcntl.F_DUPFD_CLOEXEC, 300)
            os.closerange(3, 200)
            for fd, target in zip(high, (4, 3, 10), strict=True):
                os.dup2(fd, target)
                os.close(fd)
            os.dup2(pipe, 5, inheritable=False)
            os.close(pipe)
            report = place_listen_fds([4, 3, 10], 5)
            got = [socket.socket(fileno=os.dup(fd)).getsockname() for fd in (3, 4, 5)]
            expected = [f"\0einhorn-test-{os.getpid()}-{name}".encode() for name in "abc"]
            inheritable = [os.get_inheritable(fd) for fd in (3, 4, 5, report)]
            closed = [fd for fd in (10,) if not _is_open(fd)]
            os.write(report, repr((got == expected, inheritable, report >= 6, closed)).encode())
        except BaseException as error:  # noqa: BLE001
            os.write(write_end, repr(error).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe_reader:
        said = pipe_reader.read()
    os.waitpid(pid, 0)
    assert said == repr((True, [True, True, True, False], True, [10])).encode()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_generations_launch_starts_the_worker_in_its_directory_with_its_environment(tmp_path: Path) -> None:
    own = launch({"PATH": "/bin", "APP": "current"}, fds=(), families=())
    spec = LaunchSpec(("sh", "-c", 'pwd -P > where; echo "$APP" > app'), "/bin/sh", str(tmp_path), (("APP", "old"), ("PATH", "/bin")), "USR2")
    generation = generation_launch(own, spec, own_cwd=os.getcwd())
    assert generation.cwd == str(tmp_path) and generation.argv == spec.argv and generation.path == "/bin/sh"
    assert generation.shared_environ["APP"] == "old" and own.shared_environ["APP"] == "current"  # built once per generation
    spawned = spawn_worker(generation, 0, None)
    assert wait_for_report(spawned) is None
    _, status = os.waitpid(spawned.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "where").read_text().strip() == str(tmp_path.resolve())
    assert (tmp_path / "app").read_text().strip() == "old"


def test_the_current_images_own_directory_needs_no_chdir() -> None:
    own = launch({"PATH": "/bin"})
    assert generation_launch(own, launch_spec(own, os.getcwd()), own_cwd=os.getcwd()).cwd is None
    assert launch_spec(own, "/srv/a") == LaunchSpec(("true",), "/bin/true", "/srv/a", (("PATH", "/bin"),), "USR2")


def test_a_generation_whose_directory_is_gone_fails_to_start(tmp_path: Path) -> None:
    spec = LaunchSpec(("true",), "/bin/true", str(tmp_path / "deleted"), (), "USR2")
    spawned = spawn_worker(generation_launch(launch({}, fds=(), families=()), spec, own_cwd=os.getcwd()), 0, None)
    error = wait_for_report(spawned)
    os.waitpid(spawned.pid, 0)
    assert error is not None and error.errno == 2  # ENOENT, reported as the exec's failure: a death before ACK
