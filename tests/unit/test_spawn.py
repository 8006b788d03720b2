"""The worker environment (BEHAVIOR §2) as the shell builds it."""

from __future__ import annotations

from einhorn.io.spawn import WorkerLaunch, is_einhorn_variable, worker_environment


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
