"""einhorn.cli.settings: each part's view of the one settings record."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator

import pytest

from einhorn import __version__
from einhorn.cli.args import UsageError, parse
from einhorn.cli.settings import Settings, core_config, self_command, shell_options, worker_launch
from einhorn.core.config import Config, Display, Pacing
from einhorn.io.spawn import spawn_worker

ENV = {"PATH": os.defpath, "KEEP": "1", "DROP": "2"}


def settings(*argv: str) -> Settings:
    result = parse([*argv, sys.executable, "app.py"], ENV)
    assert isinstance(result, Settings)
    return result


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as sock:
        yield sock


def test_the_core_gets_the_policy_and_what_it_shows() -> None:
    given = settings(
        "-n", "3", "-m", "manual", "-s", "2", "--max-unacked", "2", "--max-upgrade-additional", "1", "-t", "5",
        "-c", "web", "-d", "/s", "-e", "/p", "-f", "/l", "-b", "0.0.0.0:80,r", "-l", "7", "-g", "-k",
    )  # fmt: skip
    assert core_config(given, master_pid=42, preloaded=True) == Config(
        number=3,
        ack_timer=None,
        seconds=2.0,
        pacing=Pacing.INTERVAL,  # -s given
        max_unacked=2,
        max_upgrade_additional=1,
        signal_timeout=5,
        einhorn_version=__version__,
        display=Display(
            master_pid=42,
            command_name="web",
            program=(sys.executable, "app.py"),
            socket_path="/s",
            pidfile="/p",
            lockfile="/l",
            binds=("0.0.0.0:80,r",),
            bound_ports=(),  # the shell fills them in once bound
            backlog=7,
            command_socket_as_fd=True,
            kill_children_on_exit=True,
            preloaded=True,
        ),
    )


def test_a_worker_launch_has_each_listener_with_its_family(listener: socket.socket) -> None:
    def hook() -> None:
        pass

    launch = worker_launch(settings("-d", "/s"), ENV, master_pid=42, listeners=[listener], prepare_child=hook)
    assert (launch.path, tuple(launch.argv), launch.environ) == (os.path.abspath(sys.executable), (sys.executable, "app.py"), ENV)
    assert tuple(launch.listener_fds) == (listener.fileno(),)
    assert tuple(launch.listener_families) == (listener.family.name,)
    assert (launch.socket_path, launch.master_pid, launch.prepare_child) == ("/s", 42, hook)
    assert not launch.pdeathsig  # only with -k


def test_the_shell_options_reexec_with_the_original_flags_and_environment_less_the_dropped() -> None:
    given = settings("-n", "2", "-g", "--drop-env-var", "DROP", "-e", "/p", "-d", "/s", "--with-state-fd", "9")
    launch = worker_launch(given, ENV, master_pid=42, listeners=[], prepare_child=None)
    options = shell_options(given, ENV, launch, spawn_worker)
    assert options.launch is launch and options.spawn is spawn_worker
    assert tuple(options.reexec_command) == (*self_command(), "-n", "2", "-g", "--drop-env-var", "DROP", "-e", "/p", "-d", "/s")
    assert options.reexec_environ == {"PATH": os.defpath, "KEEP": "1"}
    assert tuple(options.owned_paths) == ("/p", "/s")
    assert options.command_socket_as_fd and not options.kill_children_on_exit


def test_reexec_as_replaces_the_einhorn_command_only() -> None:
    given = settings("--reexec-as", "/opt/wrapper --flag", "-k")
    options = shell_options(given, ENV, worker_launch(given, ENV, master_pid=1, listeners=[], prepare_child=None), spawn_worker)
    assert tuple(options.reexec_command) == ("/opt/wrapper", "--flag", "--reexec-as", "/opt/wrapper --flag", "-k")
    assert options.kill_children_on_exit


def test_listen_fds_and_the_listener_names_reach_the_worker_launch(listener: socket.socket) -> None:
    launch = worker_launch(settings("--listen-fds"), ENV, master_pid=42, listeners=[listener], prepare_child=None, listener_names=["web"])
    assert launch.listen_fds and tuple(launch.listener_names) == ("web",)
    plain = worker_launch(settings(), ENV, master_pid=42, listeners=[listener], prepare_child=None)
    assert not plain.listen_fds and tuple(plain.listener_names) == ("",)


def test_listen_fds_does_not_apply_to_preloaded_workers() -> None:
    with pytest.raises(UsageError, match="--listen-fds does not apply to preloaded"):
        settings("--listen-fds", "-p", "app.py")


def test_unix_listeners_are_owned_paths() -> None:
    assert settings("-e", "/p", "-d", "/s", "-b", "unix:/run/a.sock", "-b", "127.0.0.1:0").owned_paths == ("/p", "/s", "/run/a.sock")


def test_a_drain_listener_makes_a_drain_config() -> None:
    assert core_config(settings("-b", "127.0.0.1:0,drain", "-b", "127.0.0.1:0"), master_pid=1, preloaded=False).drain
    assert not core_config(settings("-b", "127.0.0.1:0,reuseport"), master_pid=1, preloaded=False).drain
