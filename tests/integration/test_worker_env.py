"""The worker environment on a real master: the user's variables, `EINHORN_*` ones included, reach
every worker (exec'd by posix_spawn, forked with `-k`, preloaded with `-p`, and after an upgrade),
stale einhorn names from an outer einhorn do not, and the legacy `EINHORN_FDS` and the
`EINHORN_FD_FAMILY_<n>` names describe the real listeners.

The worker writes its whole `os.environ` (a preloaded worker's is not in /proc/PID/environ) and the
family of each socket it was given into OUT/PID.env, then waits for a signal.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.harness import Harness, Master
from tests.integration.upgrade_helpers import upgrade
from tests.integration.waiting import wait_until

FAST = ("-m", "0.1", "-s", "0.1")

ENV_DUMP = """
import json, os, signal, socket, sys


def einhorn_main():
    families = {}
    for n in range(int(os.environ.get("EINHORN_FD_COUNT", "0"))):
        fd = int(os.environ[f"EINHORN_FD_{n}"])
        sock = socket.socket(fileno=fd)
        families[fd] = sock.family.name
        sock.detach()
    path = os.path.join(sys.argv[1], f"{os.getpid()}.env")
    with open(path + ".tmp", "w") as f:
        json.dump({"environ": dict(os.environ), "families": families}, f)
    os.rename(path + ".tmp", path)
    while True:
        signal.pause()


if __name__ == "__main__":
    einhorn_main()
"""

USER = {"EINHORN_APP_NAME": "payments", "APP_MODE": "x"}
STALE = {  # as an outer einhorn with -g and four listeners would have left them
    "EINHORN_SOCK_FD": "98",
    "EINHORN_FD_COUNT": "4",
    "EINHORN_FD_3": "99",
    "EINHORN_FD_FAMILY_3": "AF_UNIX",
    "EINHORN_FDS": "96 97 98 99",
    "EINHORN_CHILD_INDEX": "7",
}

MODES = {"plain": (), "-k": ("-k",), "-p": ("-p", "{script}")}


def start(harness: Harness, mode: str, *options: str, workers: int = 1) -> tuple[Master, Path]:
    out = Path(tempfile.mkdtemp(prefix="envs", dir=harness.directory))
    script = harness.directory / "env_dump.py"
    script.write_text(ENV_DUMP)
    mode_options = [option.format(script=script) for option in MODES[mode]]
    master = harness.start(
        "-n", str(workers), *FAST, *mode_options, *options,
        program=[sys.executable, str(script), str(out)], env={**USER, **STALE}, workers=workers, acked=False,
    )
    assert master.state()["preloaded"] is (mode == "-p"), master.log()
    return master, out


def dumps(master: Master, out: Path, count: int) -> list[dict[str, dict[str, str]]]:
    """What each of the `count` unsignaled workers of the current version wrote, once all have."""

    def written() -> list[dict[str, dict[str, str]]] | None:
        state = master.state()
        workers = master.workers()
        pids = [pid for pid, w in workers.items() if w["version"] == state["version"] and not w["signaled"]]
        files = [out / f"{pid}.env" for pid in pids]
        if len(pids) != count or not all(f.exists() for f in files):
            return None
        return [json.loads(f.read_text()) for f in files]

    try:
        return wait_until(written, 20, f"{count} workers' environment dumps")
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- master log ---\n{master.log()}") from None


def assert_user_kept_and_stale_gone(env: dict[str, str], master: Master) -> None:
    assert {k: env.get(k) for k in USER} == USER
    assert "EINHORN_SOCK_FD" not in env and "EINHORN_FD_3" not in env and "EINHORN_FD_FAMILY_3" not in env
    assert env["EINHORN_FD_COUNT"] == "1"
    assert env["EINHORN_FDS"] == env["EINHORN_FD_0"]
    assert env["EINHORN_MASTER_PID"] == str(master.pid)
    assert env["EINHORN_CHILD_INDEX"] in ("0", "1")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_user_variables_reach_workers_and_stale_einhorn_ones_do_not(harness: Harness, mode: str) -> None:
    master, out = start(harness, mode, "-b", "127.0.0.1:0", workers=2)
    for dump in dumps(master, out, 2):
        assert_user_kept_and_stale_gone(dump["environ"], master)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["plain", "-p"])
def test_user_variables_reach_workers_after_an_upgrade(harness: Harness, mode: str) -> None:
    master, out = start(harness, mode, "-b", "127.0.0.1:0")
    dumps(master, out, 1)
    upgrade(master)
    assert master.state()["version"] == 1
    [dump] = dumps(master, out, 1)
    assert_user_kept_and_stale_gone(dump["environ"], master)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.timeout(60)
@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
@pytest.mark.parametrize("upgraded", [False, True], ids=["fresh", "after-upgrade"])
def test_legacy_fd_list_and_families_describe_the_listeners(harness: Harness, upgraded: bool) -> None:
    master, out = start(harness, "plain", "-b", "127.0.0.1:0", "-b", "[::1]:0")
    [dump] = dumps(master, out, 1)
    if upgraded:  # the re-exec'd master restores its listeners from bare fds
        upgrade(master)
        [dump] = dumps(master, out, 1)
    env = dump["environ"]
    fds = [env["EINHORN_FD_0"], env["EINHORN_FD_1"]]
    assert env["EINHORN_FD_COUNT"] == "2"
    assert env["EINHORN_FDS"] == f"{fds[0]} {fds[1]}"
    assert (env["EINHORN_FD_FAMILY_0"], env["EINHORN_FD_FAMILY_1"]) == ("AF_INET", "AF_INET6")
    assert dump["families"] == {fds[0]: "AF_INET", fds[1]: "AF_INET6"}, "as the sockets themselves say"
    assert "EINHORN_FD_FAMILY_3" not in env and "EINHORN_FD_3" not in env


def test_without_listeners_the_legacy_fd_list_is_empty(harness: Harness) -> None:
    master, out = start(harness, "plain")
    [dump] = dumps(master, out, 1)
    env = dump["environ"]
    assert (env["EINHORN_FD_COUNT"], env["EINHORN_FDS"]) == ("0", "")
    assert not any(name.startswith("EINHORN_FD_") and name != "EINHORN_FD_COUNT" for name in env), env
