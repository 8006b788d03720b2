"""Canary upgrades and rollbacks with real processes (issue 12; EXTENSIONS §3, spec/README.md §4, "Generations, canaries and rollbacks").

A deploy in the symlinked-release layout: `releases/<name>/release` says what a
worker started in that directory does (`RELEASE_WORKER`): `good` is
example/time_server answering `version=<name>`, `bad` exits 1 after 0.3 s,
`slow` ACKs after 5 s. `current` points at one release. The master starts in
`current/` and re-execs through a `--reexec-as` wrapper that `cd`s into
`current/` first, so each image's physical working directory pins a release:
the generation an upgrade records. The requests go through the command socket
with an id (what einhornsh sends), so each final reply says whether it failed.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tests.integration.harness import Harness, Master
from tests.integration.procfs import alive
from tests.integration.upgrade_helpers import Load, bound_port, failures, integer, write_wrapper
from tests.integration.waiting import wait_until
from tests.integration.wire import frame
from tests.integration.workers import TIME_SERVER

RELEASE_WORKER = f"""
import os, sys, time
name, mode = open("release").read().split()
os.environ["APP_VERSION"] = name
if mode == "bad":
    time.sleep(0.3)
    sys.exit(1)
if mode == "slow":
    time.sleep(5)
os.execv(sys.executable, [sys.executable, {TIME_SERVER!r}])
"""


class Deploy:
    """The release directories, the `current` symlink, and a master started in it."""

    def __init__(self, harness: Harness, releases: dict[str, str]) -> None:
        self.root = harness.directory / "app"
        for name, mode in releases.items():
            directory = self.root / "releases" / name
            directory.mkdir(parents=True)
            (directory / "release").write_text(f"{name} {mode}\n")
        self.harness = harness

    def point_at(self, name: str) -> None:
        """`ln -sfn releases/NAME current`, atomically (as a deploy script does)."""
        link, staged = self.root / "current", self.root / "current.new"
        staged.unlink(missing_ok=True)
        staged.symlink_to(Path("releases") / name)
        os.replace(staged, link)

    def start(self, name: str, number: int = 2) -> Master:
        self.point_at(name)
        wrapper = write_wrapper(self.root, "deploy", on_exec='cd "$here/current" || exit 1')
        return self.harness.start(
            "-n", str(number), "-m", "manual", "-b", "127.0.0.1:0", "--reexec-as", wrapper,
            program=[sys.executable, "-c", RELEASE_WORKER],
            prefix=["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(self.root / "current")],
            workers=number,
        )


def final(replies: list[dict[str, object]]) -> dict[str, object]:
    assert replies and "wait" not in replies[-1], replies
    return replies[-1]


def messages(replies: list[dict[str, object]]) -> list[str]:
    return [str(r["message"]) for r in replies]


def acked_pids(master: Master, version: int | None = None) -> list[int]:
    return sorted(
        pid for pid, child in master.workers().items() if child["acked"] and (version is None or child["version"] == version)
    )


def answers_name(load: Load, release: str, count: int = 20) -> bool:
    """The next `count` requests all answered by `release`."""
    return all(load.one_request().version == release for _ in range(count))


def test_a_canary_to_a_bad_release_is_rolled_back_and_the_old_workers_stay(harness: Harness) -> None:
    deploy = Deploy(harness, {"A": "good", "B": "bad"})
    master = deploy.start("A")
    old = acked_pids(master)
    load = Load(bound_port(master), threads=3, limit_seconds=20.0)
    load.start()
    try:
        deploy.point_at("B")
        replies = master.command("upgrade", "--canary", "1", "--bake", "2", "--timeout", "20", timeout=30)
    finally:
        load.stop()
    answer = final(replies)
    assert answer["failed"] is True, replies
    assert str(answer["message"]).startswith("Upgrade rolled back: canary worker "), replies
    assert str(answer["message"]).endswith(" exited before ACK (exit status 1)"), replies
    assert any(m.endswith("Starting 1 canary worker of version 1 beside the pool; they must ACK and stay up 2s") for m in messages(replies))
    assert acked_pids(master) == old and all(alive(pid) for pid in old)
    state = master.state()
    assert integer(state, "version") == 0 and state["rollout"] is None
    generations = state["generations"]
    assert isinstance(generations, list) and [g["version"] for g in generations] == [0, 1]
    assert generations[0]["cwd"] == str((deploy.root / "releases" / "A").resolve()) and generations[0]["workers"] == old
    assert generations[1]["cwd"] == str((deploy.root / "releases" / "B").resolve())
    assert str(generations[1]["rolled_back_because"]).endswith("exited before ACK (exit status 1)")
    master.wait_log(r"WARN.*Upgrade to version 1 rolled back: canary worker \d+ exited before ACK")
    answers = load.snapshot()
    print(f"\ncanary to a bad release under load: {len(answers)} requests, {len(failures(answers))} failed")
    assert answers and failures(answers) == [], failures(answers)[:5]
    assert {a.version for a in answers} == {"A"}


def test_a_canary_to_a_good_release_finishes_the_upgrade(harness: Harness) -> None:
    deploy = Deploy(harness, {"A": "good", "B": "good"})
    master = deploy.start("A")
    deploy.point_at("B")
    replies = master.command("upgrade", "--canary", "1", "--bake", "0.5", "--timeout", "30", timeout=30)
    assert final(replies) == {"message": "Upgrade done", "request_id": str(master.request_number)}
    said = messages(replies)
    assert "Canary 1/1 ACKed; baking 0.5s" in said and "Canary baked 0.5s; finishing the smooth upgrade to version 1" in said
    wait_until(lambda: len(acked_pids(master, 1)) == 2 and len(master.workers()) == 2, what="two workers of release B only")
    load = Load(bound_port(master))
    assert answers_name(load, "B")
    state = master.state()
    generations = state["generations"]
    assert isinstance(generations, list) and generations[-1]["version"] == 1 and generations[-1]["current"] is True
    assert generations[-1]["workers"] == acked_pids(master, 1)


def test_a_release_that_is_not_up_within_the_timeout_is_rolled_back(harness: Harness) -> None:
    deploy = Deploy(harness, {"A": "good", "S": "slow"})
    master = deploy.start("A")
    old = acked_pids(master)
    deploy.point_at("S")
    replies = master.command("upgrade_fleet", "--canary", "1", "--bake", "1", "--timeout", "3", timeout=30)
    answer = final(replies)
    assert answer["message"] == "Upgrade rolled back: not done within --timeout 3s" and answer["failed"] is True, replies
    assert not any(m.startswith("Canary 1/1 ACKed") for m in messages(replies))  # rolled back before its ACK at 5 s
    assert acked_pids(master) == old
    wait_until(lambda: sorted(master.workers()) == old, what="the slow canary stopped")


def test_an_old_worker_killed_during_a_failing_canary_comes_back_from_the_old_release(harness: Harness) -> None:
    deploy = Deploy(harness, {"A": "good", "B": "bad"})
    master = deploy.start("A")
    victim, survivor = acked_pids(master)
    deploy.point_at("B")
    with master.connect(timeout=30) as conn:
        conn.send(frame({"id": "c", "command": "upgrade", "args": ["--canary", "1", "--timeout", "20"]}))
        master.wait_log("Starting 1 canary worker of version 1", timeout=20)
        os.kill(victim, signal.SIGKILL)
        replies = conn.read_until_last()
    assert final(replies)["failed"] is True
    # Respawned from generation 0: started in releases/A although `current` points at B.
    refill = wait_until(lambda: [p for p in acked_pids(master, 0) if p not in (victim, survivor)] or None, what="a replacement")
    assert os.readlink(f"/proc/{refill[0]}/cwd") == str((deploy.root / "releases" / "A").resolve())
    assert os.path.realpath(deploy.root / "current") == str((deploy.root / "releases" / "B").resolve())
    assert answers_name(Load(bound_port(master)), "A")
    assert survivor in acked_pids(master)


def test_abort_upgrade_during_the_bake(harness: Harness) -> None:
    deploy = Deploy(harness, {"A": "good", "B": "good"})
    master = deploy.start("A")
    old = acked_pids(master)
    deploy.point_at("B")
    with master.connect(timeout=30) as conn:
        conn.send(frame({"id": "c", "command": "upgrade", "args": ["--canary", "1", "--bake", "60"]}))
        seen = []
        while "Canary 1/1 ACKed; baking 60s" not in seen:
            seen.append(str(conn.read_reply()["message"]))
        aborted = master.command("abort_upgrade")
        replies = conn.read_until_last()
    assert final(aborted) == {
        "message": "Rolling back the upgrade to version 1: version 0 is current again",
        "request_id": str(master.request_number),
    }
    assert final(replies) == {"message": "Upgrade rolled back: aborted by abort_upgrade", "request_id": "c", "failed": True}
    wait_until(lambda: sorted(master.workers()) == old, what="the canary stopped")
    assert acked_pids(master) == old
    assert final(master.command("abort_upgrade"))["failed"] is True  # nothing left to abort


def test_five_canary_upgrades_in_a_row_under_load(harness: Harness) -> None:
    names = ["R1", "R2", "R3", "R4", "R5", "R6"]
    deploy = Deploy(harness, dict.fromkeys(names, "good"))
    master = deploy.start("R1", number=3)
    load = Load(bound_port(master), threads=3, limit_seconds=40.0)
    load.start()
    try:
        for name in names[1:]:
            deploy.point_at(name)
            replies = master.command("upgrade", "--canary", "1", "--bake", "0.3", "--timeout", "30", timeout=40)
            assert final(replies)["message"] == "Upgrade done" and "failed" not in final(replies), replies
            wait_until(lambda: len(master.workers()) == 3 and len(acked_pids(master, integer(master.state(), "version"))) == 3, what="3 new workers")
    finally:
        load.stop()
    answers = load.snapshot()
    by_release = {v: sum(1 for a in answers if a.version == v) for v in sorted({str(a.version) for a in answers})}
    print(f"\nfive canary upgrades under load: {len(answers)} requests, {len(failures(answers))} failed, by release: {by_release}")
    assert failures(answers) == [], failures(answers)[:5]
    assert answers_name(Load(bound_port(master)), "R6")
