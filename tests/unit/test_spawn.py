"""The worker environment (BEHAVIOR §2) as the shell builds it."""

from __future__ import annotations

from einhorn.io.spawn import WorkerLaunch, worker_environment


def launch(environ: dict[str, str]) -> WorkerLaunch:
    return WorkerLaunch(path="/bin/true", argv=["true"], environ=environ, listener_fds=[5, 6], socket_path="/s", master_pid=42)


def test_worker_environment_sets_the_einhorn_variables_and_replaces_inherited_ones() -> None:
    env = worker_environment(launch({"PATH": "/bin", "EINHORN_FD_9": "stale", "EINHORN_SOCK_FD": "7"}), 3, None)
    assert env == {
        "PATH": "/bin",
        "EINHORN_MASTER_PID": "42",
        "EINHORN_SOCK_PATH": "/s",
        "EINHORN_FD_COUNT": "2",
        "EINHORN_FD_0": "5",
        "EINHORN_FD_1": "6",
        "EINHORN_CHILD_INDEX": "3",
    }
    assert worker_environment(launch({}), 0, 11)["EINHORN_SOCK_FD"] == "11"


def test_names_no_program_could_receive_are_left_out() -> None:
    # Such entries reach einhorn from a parent that built its environment by hand; posix_spawn
    # would refuse the whole environment (and the fork path's execve would fail) because of them.
    env = worker_environment(launch({"": "empty", "A=B": "c", "KEEP": "1"}), 0, None)
    assert "" not in env and "A=B" not in env and env["KEEP"] == "1"
