"""einhornsh against real masters: exit statuses for scripts, --timeout, ^C, completion, and the
original's Ruby einhornsh, whose output must not change."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pexpect
import pytest

from einhorn.core.commands import COMMANDS
from einhorn.einhornsh import client_help, listed_commands
from tests.integration.harness import EINHORNSH, Harness, Master
from tests.integration.waiting import wait_until
from tests.integration.wire import frame
from tests.unit.test_einhornsh import wait_until_waiting_for_input

FAST = ("-m", "0.1", "-s", "0.1")
NEVER_ACK = ("-m", "manual", "-s", "0.1")
"""`sleep` workers never ACK by hand: an upgrade streams "Launched ..." and never ends."""
RUBY_EINHORN = Path("/tmp/einhorn-ruby")
DETERMINISTIC = "bogus; set_workers abc; inc; dec; signal NOPE; config 'bogus: 1'"
"""Commands whose replies are the same text every time (no pids, no times)."""


def marks_failures(master: Master) -> bool:
    """Whether this master adds `"failed": true` to a failed request's final reply (the convention)."""
    return master.command("bogus")[-1].get("failed") is True


def ruby_einhornsh() -> list[str]:
    ruby = shutil.which("ruby")
    if ruby is None or not (RUBY_EINHORN / "bin" / "einhornsh").exists():
        pytest.skip("the original Einhorn (ruby, /tmp/einhorn-ruby) is not installed")
    return [ruby, "-I", str(RUBY_EINHORN / "lib"), str(RUBY_EINHORN / "bin" / "einhornsh")]


@contextmanager
def einhornsh_process(master: Master, *argv: str) -> Iterator[subprocess.Popen[str]]:
    """einhornsh as a deploy script runs it (no terminal), its output read line by line."""
    proc = subprocess.Popen(
        [*EINHORNSH, "-d", master.socket_path, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=master.env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # whatever the test run inherited
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


# --- exit statuses ------------------------------------------------------------------


def test_an_unknown_command_prints_the_masters_reply_and_exits_1_once_the_master_marks_failures(
    harness: Harness,
) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    [reply] = master.command("bogus")
    result = master.einhornsh("bogus")
    assert result.stdout == str(reply["message"])  # it ends in a newline: no second one
    assert result.stdout.startswith('Unrecognized command: "bogus"\n')
    assert result.returncode == (1 if marks_failures(master) else 0), result


def test_commands_that_succeed_exit_0(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    result = master.einhornsh("inc; dec; state --json")
    assert result.returncode == 0, result
    assert result.stdout.startswith("Incrementing number of workers from 1 -> 2\nDecrementing")


def test_a_socket_without_a_master_exits_2_with_the_hint(harness: Harness) -> None:
    stale = harness.directory / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left_behind:
        left_behind.bind(str(stale))  # a socket file whose master is gone: connection refused
    for path, reason in [(harness.directory / "nothing.sock", "No such file or directory"), (stale, "Connection refused")]:
        result = subprocess.run(
            [*EINHORNSH, "-d", str(path), "-e", "state"],
            capture_output=True, text=True, timeout=20, env=harness.environment(), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 2, result
        assert f"Could not connect to Einhorn master process at {path} ({reason})." in result.stderr
        assert "(-c argument)" in result.stderr and "(-d argument)" in result.stderr


# --- --timeout and ^C during an upgrade that never ends ----------------------------


@pytest.mark.timeout(60)
def test_timeout_returns_from_an_upgrade_whose_workers_never_ack(harness: Harness) -> None:
    master = harness.start("-n", "1", *NEVER_ACK, workers=1, acked=False)
    started = time.monotonic()
    result = master.einhornsh("upgrade", "--timeout", "3", timeout=30)
    took = time.monotonic() - started
    assert result.returncode == 1, result
    assert 3 <= took < 3 + 5, took  # the bound, plus a Python start-up under load
    assert result.stdout.startswith("Upgrading smoothly, as commanded\n")
    assert "Upgrade done" not in result.stdout
    assert (
        "einhornsh: timed out after 3s (--timeout) waiting for 'upgrade': the upgrade goes on in the master"
        in result.stderr
    )
    assert master.proc.poll() is None and master.state()["upgrading"] is True


@pytest.mark.timeout(60)
def test_ctrl_c_during_a_streamed_upgrade_says_it_goes_on_in_the_master(harness: Harness) -> None:
    master = harness.start("-n", "1", *NEVER_ACK, workers=1, acked=False)
    with einhornsh_process(master, "-e", "upgrade") as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "Upgrading smoothly, as commanded\n"
        wait_until(lambda: master.state()["upgrading"] is True, 10, "the upgrade")
        wait_until_waiting_for_input(proc.pid)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert "einhornsh: interrupted; the upgrade goes on in the master" in err
    assert "Traceback" not in err
    assert master.proc.poll() is None and master.state()["upgrading"] is True


# --- help, completion, events -------------------------------------------------------


def test_help_lists_every_command_of_the_master_and_of_einhornsh(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    result = master.einhornsh("help")
    assert result.returncode == 0, result
    listed = listed_commands(result.stdout)
    described = sorted(name for name, command in COMMANDS.items() if command.description)
    assert set(described) | {"ehlo", "events", "quit", "exit"} <= set(listed), listed
    assert len(listed) == len(set(listed))


@pytest.mark.timeout(60)
def test_tab_completes_command_names_against_a_real_master(harness: Harness) -> None:
    pytest.importorskip("readline")
    master = harness.start("-n", "1", *FAST, workers=1)
    inputrc = harness.directory / "inputrc"
    inputrc.write_text("set enable-bracketed-paste off\n")
    shell = pexpect.spawn(
        EINHORNSH[0], [*EINHORNSH[1:], "-d", master.socket_path],
        env={**master.env, "HOME": str(harness.directory), "TERM": "dumb", "INPUTRC": str(inputrc)},
        encoding="utf-8", timeout=15,
    )  # fmt: skip
    try:
        shell.expect_exact("> ")
        shell.send("set_w\t")
        shell.expect_exact("set_workers ")
        shell.sendline("2")
        shell.expect_exact("Altering worker count, 1 -> 2")
        shell.expect_exact("> ")
        shell.sendline("quit")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)
    assert shell.exitstatus == 0


@pytest.mark.timeout(60)
def test_events_prints_the_masters_events_until_ctrl_c(harness: Harness) -> None:
    if "subscribe" not in COMMANDS:
        pytest.skip("this master has no `subscribe` yet (issue 15, item 3)")
    master = harness.start("-n", "1", *FAST, workers=1)
    with einhornsh_process(master, "--timeout", "30", "events", "--json") as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stderr.readline().startswith("Subscribed")  # the master's answer before the stream
        master.message("inc")
        events: list[dict[str, object]] = []
        while not any(event.get("kind", event.get("event")) == "acked" for event in events):
            events.append(json.loads(proc.stdout.readline()))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    sequence = [event["seq"] for event in events]
    first = sequence[0]
    assert isinstance(first, int)
    assert sequence == list(range(first, first + len(sequence)))  # contiguous
    assert all("time" in event for event in events)


# --- old clients --------------------------------------------------------------------


def test_a_request_without_an_id_gets_the_single_reply_it_always_got(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    for command in ("bogus", "set_workers"):
        [reply] = master.send_raw([frame({"command": command, "args": ["abc"]})])
        assert set(reply) == {"message"}, reply


@pytest.mark.timeout(90)
def test_the_ruby_einhornsh_prints_what_it_always_did(harness: Harness) -> None:
    ruby = ruby_einhornsh()
    master = harness.start("-n", "1", *FAST, workers=1)

    def run_ruby(execute: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ruby, "-d", master.socket_path, "-e", execute],
            capture_output=True, text=True, timeout=60, env=master.env, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    old = run_ruby(DETERMINISTIC)
    ours = master.einhornsh(DETERMINISTIC)
    assert old.returncode == 0 and old.stderr == "", old
    assert old.stdout.startswith('Unrecognized command: "bogus"\n')
    assert "Invalid count: 'abc'. Must be an integer in [1,1000).\n" in old.stdout
    assert old.stdout == ours.stdout  # the same lines, whatever `failed` the replies carry

    old_help, our_help = run_ruby("help"), master.einhornsh("help")
    assert old_help.returncode == 0 and our_help.returncode == 0
    assert our_help.stdout == old_help.stdout + client_help(old_help.stdout)

    upgrade = run_ruby("upgrade")
    lines = upgrade.stdout.splitlines()
    assert upgrade.returncode == 0, upgrade
    assert lines[0] == "Upgrading smoothly, as commanded" and lines[-1] == "Upgrade done", lines
