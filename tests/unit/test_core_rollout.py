"""Generations, canaries, rollbacks (einhorn/core/rollout.py, spec/README.md §4, "Generations, canaries and rollbacks"): exact effects, rule by rule.

Every step goes through the fake world of core_world.py, which checks every
invariant after it; each image has its own launch spec (`release(n)`).
"""

from __future__ import annotations

import pytest

from einhorn.core import rollout
from einhorn.core.commands import upgrade_options
from einhorn.core.effects import Cause, Effect, Log, LogLevel, Reply, SendSignal, SpawnWorker, StopUpgradeCheck
from einhorn.core.events import ChildExited, CommandReceived, Event, SignalReceived, Tick
from einhorn.core.observe import observe
from einhorn.core.record import replace
from einhorn.core.report import Timestamp, snapshot, status
from einhorn.core.state import Generation, RolloutPhase, UpgradeKind, UpgradeOptions
from einhorn.core.step import next_deadline
from einhorn.io.loop import _envelope
from tests.unit.fixtures.core_world import World, command, make_config, release

CONN = 7


def pool(number: int = 2, **config: object) -> World:
    """A master with `number` ACKed workers of generation 0 (manual ACKs)."""
    world = World.start(make_config(number=number, ack_timer=None, **config))
    world.settle(100)
    return world


def request(world: World, name: str, *args: str, conn: int = CONN, id: str | None = "u") -> list[Effect]:
    return world.feed(command(conn, name, *args, now=world.now, id=id))


def upgraded(world: World, *args: str, name: str = "upgrade") -> list[Effect]:
    """`upgrade ARGS` through its check and re-exec: the new image's effects."""
    request(world, name, *args)
    return world.restore()


def spawns(effects: list[Effect]) -> list[SpawnWorker]:
    return [e for e in effects if isinstance(e, SpawnWorker)]


def signals(effects: list[Effect]) -> list[SendSignal]:
    return [e for e in effects if isinstance(e, SendSignal)]


def replies(effects: list[Effect], conn: int = CONN) -> list[Reply]:
    return [e for e in effects if isinstance(e, Reply) and e.conn == conn]


def final(effects: list[Effect], conn: int = CONN) -> list[Reply]:
    """The replies that end a request (no progress lines)."""
    return [r for r in replies(effects, conn) if not r.wait]


def canary_pid(world: World) -> int:
    assert world.state.rollout is not None
    (pid,) = [c.pid for c in world.state.children.values() if c.version == world.state.rollout.version]
    return pid


def old_pids(world: World, version: int = 0) -> list[int]:
    return sorted(c.pid for c in world.state.children.values() if c.version == version)


# --- generations --------------------------------------------------------------------------------


def test_the_first_start_records_generation_0_and_spawns_from_its_spec() -> None:
    world = World.start(make_config(number=2, ack_timer=None))
    assert world.state.generations == (Generation(0, release(0)),)
    assert [s.launch for s in spawns(world.last_effects)] == [release(0), release(0)]


def test_an_upgrade_records_a_generation_from_the_new_image_and_spawns_from_it() -> None:
    world = pool()
    effects = upgraded(world)
    assert world.state.generations == (Generation(0, release(0)), Generation(1, release(1)))
    assert [(s.version, s.launch) for s in spawns(effects)] == [(1, release(1))]
    assert world.state.rollout is not None and world.state.rollout.phase is RolloutPhase.FINISHING
    world.settle(100)
    done = world.state
    assert done.rollout is None and done.version == 1
    assert done.generations == (Generation(0, release(0)), Generation(1, release(1)))  # the newest two
    upgraded(world)
    world.settle(100)
    assert [g.version for g in world.state.generations] == [1, 2]  # generation 0: no worker, not current, not newest


def test_a_reload_keeps_the_generation() -> None:
    world = pool()
    request(world, "reload")
    world.restore()
    assert world.state.generations == (Generation(0, release(0)),)


# --- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), None),
        (("--canary", "1", "--bake", "30"), UpgradeOptions(1, 30.0, None)),
        (("--canary=2", "--bake=0.5", "--timeout=60"), UpgradeOptions(2, 0.5, 60.0)),
        (("--timeout", "5"), UpgradeOptions(0, 0.0, 5.0)),
        (("--canary", "x"), "--canary must be an integer in [0, 1000], not 'x'"),
        (("--canary",), "--canary needs a value"),
        (("--bake", "5"), "--bake needs --canary"),
        (("--canary", "1", "--bake", "-1"), "--bake must be a number of seconds >= 0 and at most 604800 (one week), not '-1'"),
        (("--canary", "1", "--bake", "nan"), "--bake must be a number of seconds >= 0 and at most 604800 (one week), not 'nan'"),
        (("--timeout", "0"), "--timeout must be a number of seconds > 0 and at most 604800 (one week), not '0'"),
        (("--canary", "1", "--bake", "10", "--timeout", "10"), "--timeout 10 must be longer than --bake 10"),
        (("--fast",), "unknown argument '--fast' (usage: upgrade [--canary K] [--bake SECONDS] [--timeout SECONDS] [--env K=V]...)"),
    ],
)
def test_upgrade_options(args: tuple[str, ...], expected: object) -> None:
    assert upgrade_options(args, None) == expected


def test_a_canary_must_fit_within_max_upgrade_additional() -> None:
    assert upgrade_options(["--canary", "2"], 1) == "--canary 2 is more than max_upgrade_additional 1 allows beside the pool"
    assert upgrade_options(["--canary", "1"], 1) == UpgradeOptions(1)


def test_invalid_upgrade_arguments_are_a_failed_reply_and_start_nothing() -> None:
    world = pool()
    before = world.state
    effects = request(world, "upgrade_fleet", "--canary", "-1")
    assert effects == [Reply(CONN, "Invalid upgrade arguments: --canary must be an integer in [0, 1000], not '-1'", "u", failed=True)]
    assert world.state.reexec is None and world.state.children == before.children


# --- canary ---------------------------------------------------------------------------------------


def test_a_canary_starts_beside_the_old_pool_from_the_new_spec() -> None:
    world = pool()
    old = old_pids(world)
    effects = upgraded(world, "--canary", "1", "--bake", "5")
    assert [(s.version, s.index, s.launch) for s in spawns(effects)] == [(1, 2, release(1))]
    assert signals(effects) == []
    assert world.state.version == 0 and world.state.upgrading is None
    assert world.state.rollout is not None and world.state.rollout.phase is RolloutPhase.CANARY
    assert [r.message for r in replies(effects)][-1] == (
        "Starting smooth upgrade from version 0... Starting 1 canary worker of version 1 beside the pool;"
        " they must ACK and stay up 5s"
    )
    world.spawn(min(world.state.pending))
    assert old_pids(world) == old


def test_the_canarys_ack_streams_progress_and_starts_the_bake() -> None:
    world = pool()
    upgraded(world, "--canary", "1", "--bake", "5")
    world.spawn(min(world.state.pending))
    world.now = 3.0
    effects = world.ack(canary_pid(world))
    assert Reply(CONN, "Canary 1/1 ACKed; baking 5s", "u", wait=True) in effects
    assert next_deadline(world.state) == 8.0
    assert signals(effects) == []


def test_the_bake_ends_in_a_normal_upgrade_to_the_new_generation() -> None:
    world = pool()
    upgraded(world, "--canary", "1", "--bake", "5")
    world.spawn(min(world.state.pending))
    world.ack(canary_pid(world))
    effects = world.tick_at_deadline()
    assert Reply(CONN, "Canary baked 5s; finishing the smooth upgrade to version 1", "u", wait=True) in effects
    assert world.state.version == 1 and world.state.upgrading is UpgradeKind.SMOOTH
    # Smooth: the canary is one of the new pool, so one old worker goes at once, the other once a second new one ACKs.
    assert [s.signal for s in signals(effects)] == ["USR2"] and [s.cause for s in signals(effects)] == [Cause.UPGRADE]
    assert [(s.version, s.launch) for s in spawns(effects)] == [(1, release(1))]
    world.settle(100)
    assert world.state.rollout is None and old_pids(world) == [] and len(old_pids(world, 1)) == 2
    assert any(repr(Reply(CONN, "Upgrade done", "u")) in line for line in world.history)


def test_a_canary_that_exits_before_its_ack_rolls_back_and_spares_the_old_pool() -> None:
    world = pool()
    old = old_pids(world)
    upgraded(world, "--canary", "1", "--bake", "5")
    world.spawn(min(world.state.pending))
    pid = canary_pid(world)
    world.live.discard(pid)
    effects = world.feed(_exited(world, pid, 1))
    why = f"canary worker {pid} exited before ACK (exit status 1)"
    assert Log(LogLevel.WARN, f"Upgrade to version 1 rolled back: {why}; version 0 is current again") in effects
    assert final(effects) == [Reply(CONN, f"Upgrade rolled back: {why}", "u", failed=True)]
    assert signals(effects) == [] and spawns(effects) == []
    assert world.state.version == 0 and world.state.rollout is None and old_pids(world) == old
    assert world.state.generation(1) == Generation(1, release(1), why)


def test_a_canary_that_exits_during_the_bake_rolls_back() -> None:
    world = pool()
    upgraded(world, "--canary", "1", "--bake", "5")
    world.spawn(min(world.state.pending))
    pid = canary_pid(world)
    world.ack(pid)
    world.live.discard(pid)
    effects = world.feed(_exited(world, pid, None, 9))
    assert final(effects) == [Reply(CONN, f"Upgrade rolled back: canary worker {pid} exited during the bake (killed by signal 9)", "u", failed=True)]


def test_the_timeout_rolls_back_and_stops_the_unacked_canary() -> None:
    world = pool()
    upgraded(world, "--canary", "1", "--bake", "2", "--timeout", "6")
    world.spawn(min(world.state.pending))
    pid = canary_pid(world)
    assert next_deadline(world.state) == 6.0
    effects = world.tick_at_deadline()
    assert replies(effects) == [Reply(CONN, "Upgrade rolled back: not done within --timeout 6s", "u", failed=True)]
    assert signals(effects) == [SendSignal(pid, "USR2", Cause.ROLLBACK)]


def test_an_old_worker_that_dies_during_the_canary_is_respawned_from_the_old_generation() -> None:
    world = pool()
    upgraded(world, "--canary", "1", "--bake", "5")
    world.spawn(min(world.state.pending))
    victim = old_pids(world)[0]
    world.now += 5.0  # not young: no death streak, so no back-off
    world.live.discard(victim)
    effects = world.feed(_exited(world, victim, None, 9))
    assert [(s.version, s.launch) for s in spawns(effects)] == [(0, release(0))]
    assert world.state.rollout is not None  # an old worker's death is not the canary's


# --- crash loops, and after a rollback ------------------------------------------------------------


def test_a_new_generation_that_crash_loops_is_rolled_back() -> None:
    world = pool()
    old = old_pids(world)
    upgraded(world, "--timeout", "600")
    effects: list[Effect] = []
    for _ in range(rollout.CRASH_LOOP_DEATHS):
        if not world.state.pending:
            world.tick_at_deadline()
        world.spawn(min(world.state.pending))
        (pid,) = old_pids(world, 1)
        world.live.discard(pid)
        effects = world.feed(_exited(world, pid, 1))
    assert final(effects) == [Reply(CONN, "Upgrade rolled back: 3 new workers exited before ACK (last: exit status 1)", "u", failed=True)]
    assert world.state.version == 0 and old_pids(world) == old
    assert all(not c.signaled for c in world.state.children.values())


def test_a_plain_upgrade_retries_a_crashing_version_as_the_original() -> None:
    world = pool()
    upgraded(world)
    for _ in range(rollout.CRASH_LOOP_DEATHS + 2):
        if not world.state.pending:
            world.tick_at_deadline()
        world.spawn(min(world.state.pending))
        (pid,) = old_pids(world, 1)
        world.live.discard(pid)
        world.feed(_exited(world, pid, 1))
    assert world.state.version == 1 and world.state.upgrading is UpgradeKind.SMOOTH


def test_after_a_rollback_a_lost_old_worker_is_respawned_from_the_previous_spec_and_the_floor_holds() -> None:
    world = pool()
    upgraded(world, "--timeout", "20")
    world.spawn(min(world.state.pending))
    (new,) = old_pids(world, 1)
    effects = world.ack(new)
    (stopped,) = [s.pid for s in signals(effects)]  # the smooth upgrade stops one old worker
    world.exit(stopped)
    (kept,) = old_pids(world)
    effects = world.tick_at_deadline()  # past --timeout 20: the new worker never got a partner
    assert replies(effects) == [Reply(CONN, "Upgrade rolled back: not done within --timeout 20s", "u", failed=True)]
    # The new worker serves: stopping it now would leave 1 of 2. The previous generation refills, from its own spec.
    assert signals(effects) == []
    assert [(s.version, s.launch) for s in spawns(effects)] == [(0, release(0))]
    for spawn_id in sorted(world.state.pending):  # the smooth upgrade's second new worker (then stopped), the refill
        world.spawn(spawn_id)
    (refill,) = [c.pid for c in world.state.children.values() if c.version == 0 and not c.acked]
    effects = world.ack(refill)
    assert signals(effects) == [SendSignal(new, "USR2", Cause.ROLLBACK)]
    assert kept in world.state.children and not world.state.children[kept].signaled


def test_a_rolled_back_generation_is_never_spawned_again() -> None:
    world = pool()
    upgraded(world, "--canary", "1", "--bake", "5")
    world.spawn(min(world.state.pending))
    pid = canary_pid(world)
    world.live.discard(pid)
    world.feed(_exited(world, pid, 1))
    effects = request(world, "inc")
    assert [s.version for s in spawns(effects)] == [0]
    effects = upgraded(world, "--canary", "1")
    assert [s.version for s in spawns(effects)] == [2]


# --- abort_upgrade, and a new upgrade during a bake -------------------------------------------


def test_abort_upgrade_during_the_bake_rolls_back_by_hand() -> None:
    world = pool()
    upgraded(world, "--canary", "1", "--bake", "30")
    world.spawn(min(world.state.pending))
    pid = canary_pid(world)
    world.ack(pid)
    effects = request(world, "abort_upgrade", conn=8, id="a")
    assert replies(effects) == [Reply(CONN, "Upgrade rolled back: aborted by abort_upgrade", "u", failed=True)]
    assert replies(effects, conn=8) == [Reply(8, "Rolling back the upgrade to version 1: version 0 is current again", "a")]
    assert signals(effects) == [SendSignal(pid, "USR2", Cause.ROLLBACK)]  # 3 serve: the canary may go


def test_abort_upgrade_without_an_upgrade_is_a_failed_reply() -> None:
    world = pool()
    assert request(world, "abort_upgrade") == [Reply(CONN, "No upgrade in progress to abort", "u", failed=True)]


def test_abort_upgrade_during_the_check_stops_it() -> None:
    world = pool()
    request(world, "upgrade", "--canary", "1")
    effects = request(world, "abort_upgrade", conn=8, id="a")
    assert effects[0] == StopUpgradeCheck(0)
    message = "Can not initiate einhorn master upgrade safely, aborting: aborted by abort_upgrade"
    assert replies(effects) == [Reply(CONN, f"ERROR: {message}", "u", failed=True)]
    assert replies(effects, conn=8) == [Reply(8, "Upgrade aborted before its re-exec", "a")]
    assert world.state.reexec is None


def test_a_new_upgrade_during_the_bake_supersedes_the_canary() -> None:
    world = pool()
    upgraded(world, "--canary", "1", "--bake", "30")
    world.spawn(min(world.state.pending))
    pid = canary_pid(world)
    world.ack(pid)
    effects = upgraded(world, "--canary", "1", "--bake", "30")
    assert world.state.generation(1) == Generation(1, release(1), "superseded by the upgrade to version 2")
    assert world.state.rollout is not None and world.state.rollout.version == 2 and world.state.rollout.previous == 0
    assert signals(effects) == [SendSignal(pid, "USR2", Cause.ROLLBACK)]
    assert [(s.version, s.launch) for s in spawns(effects)] == [(2, release(2))]


# --- the envelope ---------------------------------------------------------------------------------


def test_failed_is_in_the_envelope_only_for_requests_with_an_id() -> None:
    assert _envelope("No upgrade in progress to abort", "7", False, True) == {
        "message": "No upgrade in progress to abort",
        "request_id": "7",
        "failed": True,
    }
    assert _envelope("No upgrade in progress to abort", None, False, True) == {"message": "No upgrade in progress to abort"}
    assert _envelope("Upgrade done", "7", False, False) == {"message": "Upgrade done", "request_id": "7"}


def _exited(world: World, pid: int, code: int | None, signal: int | None = None) -> ChildExited:
    return ChildExited(pid, code, signal, world.now)



def test_state_shows_each_generation_its_workers_and_the_rollout() -> None:
    world = pool()
    upgraded(world, "--canary", "1", "--bake", "5", "--timeout", "60")
    world.spawn(min(world.state.pending))
    document = snapshot(world.state, wall_offset=1000.0)["state"]
    assert isinstance(document, dict)
    old, new = document["generations"]
    assert old == {
        "version": 0, "current": True, "argv": ["./server"], "path": "/srv/releases/0/server", "cwd": "/srv/releases/0",
        "environment_variables": 1, "graceful_signal": "USR2", "rolled_back_because": None,
        "workers": old_pids(world), "pending_spawns": 0,
    }  # fmt: skip
    assert new["cwd"] == "/srv/releases/1" and new["current"] is False and new["workers"] == [canary_pid(world)]
    assert document["rollout"] == {
        "version": 1, "previous": 0, "kind": "smooth", "phase": "canary", "canary": 1, "bake": 5.0, "timeout": 60.0,
        "started_at": Timestamp(1000.0), "deadline": Timestamp(1060.0), "canaries_started": 1, "canaries_acked": 0,
        "bake_until": None, "new_deaths_before_ack": 0, "last_death": None,
    }  # fmt: skip


def test_a_canary_spawn_lost_across_a_reload_fails_the_canary_instead_of_leaving_it_in_progress_for_ever() -> None:
    """Found by the hypothesis state machine: the new image failed the lost spawn but the rollout never heard
    of it, so no canary ran and none was started again; without --timeout the upgrade was in progress for good."""
    world = pool()
    upgraded(world, "--canary", "1")
    assert [p.version for p in world.state.pending.values()] == [1]  # the canary's spawn, in flight
    request(world, "reload", conn=8, id="r")
    effects = world.restore()
    assert world.state.rollout is None and world.state.version == 0
    why = "a canary spawn failed (in flight across the master's re-exec)"
    assert Reply(CONN, f"Upgrade rolled back: {why}", "u", failed=True) in effects
    assert Reply(8, "Reload done", "r") in effects
    world.settle(100)
    assert world.state.rollout is None and sorted(c.version for c in world.state.children.values()) == [0, 0]


def test_a_rollback_the_floor_holds_at_max_upgrade_additional_0_says_so() -> None:
    world = World.start(make_config(number=1, ack_timer=0.0, max_upgrade_additional=0))
    request(world, "upgrade", "--timeout", "60")  # the old worker's spawn is lost across the re-exec
    world.restore()
    request(world, "abort_upgrade", conn=8, id="a")  # the new worker's spawn is still in flight
    effects = world.spawn(min(world.state.pending))  # it starts, ACKed at once (timer ACK 0)
    # The only serving worker is the rolled-back one, and no slot is free for the previous generation's.
    assert signals(effects) == [] and spawns(effects) == []
    held = [e for e in effects if isinstance(e, Log) and e.level is LogLevel.ERROR]
    assert len(held) == 1 and held[0].message.startswith("Rollback held at capacity: number 1 + max_upgrade_additional 0")
    world.settle(100)  # (a cooperative world ends here: the floor holds it, L2)


# --- what observers hear of a rollout (einhorn/core/observe.py) ---------------------------------


def _phases(world: World, event: Event) -> list[dict[str, object]]:
    before = world.state
    effects = world.feed(event)
    return [dict(o.fields) for o in observe(before, event, world.state, effects) if o.kind == "upgrade_phase"]


def test_observers_hear_the_bake_begin_and_the_canary_promoted() -> None:
    world = pool()
    upgraded(world, "--canary", "1", "--bake", "5")
    world.spawn(min(world.state.pending))
    baking = _phases(world, CommandReceived(99, {"command": "worker:ack", "pid": canary_pid(world)}, world.now))
    assert baking == [{"phase": "baking", "purpose": "smooth", "version": 1, "bake": 5.0}]
    deadline = next_deadline(world.state)
    assert deadline is not None
    world.now = deadline
    promoted = _phases(world, Tick(world.now))
    assert promoted[0] == {"phase": "promoted", "purpose": "smooth", "version": 1}
    assert [p["phase"] for p in promoted] == ["promoted", "upgrading"]


def test_observers_hear_a_rollback_with_its_reason_and_no_done() -> None:
    world = pool()
    upgraded(world, "--canary", "1", "--bake", "5")
    world.spawn(min(world.state.pending))
    pid = canary_pid(world)
    world.live.discard(pid)
    found = _phases(world, _exited(world, pid, 1))
    why = f"canary worker {pid} exited before ACK (exit status 1)"
    assert found == [{"phase": "rolled_back", "purpose": "smooth", "version": 1, "current": 0, "reason": why}]


def test_observers_hear_an_abort_as_aborted() -> None:
    world = pool()
    upgraded(world, "--canary", "1", "--bake", "30")
    world.spawn(min(world.state.pending))
    world.ack(canary_pid(world))
    found = _phases(world, command(8, "abort_upgrade", now=world.now, id="a"))
    assert [(p["phase"], p["version"], p["reason"]) for p in found] == [("aborted", 1, "aborted by abort_upgrade")]


def test_status_names_the_canary_and_the_rolled_back_generation() -> None:
    world = pool()
    upgraded(world, "--canary", "1", "--bake", "5", "--timeout", "60")
    world.spawn(min(world.state.pending))
    text = status(world.state)
    assert "version 1 (canary): 0 ACKed, 1 un-ACKed, 0 signaled" in text
    assert "canary of version 1: 0/1 ACKed" in text and "rolled back if not done in" in text
    pid = canary_pid(world)
    world.live.discard(pid)
    world.feed(_exited(world, pid, 1))
    world.settle(100)
    assert "upgrade: none" in status(world.state)


def test_a_canary_condemned_by_a_health_rule_during_the_bake_rolls_back() -> None:
    world = pool(ping_timeout=2.0)
    old = old_pids(world)
    upgraded(world, "--canary", "1", "--bake", "30")
    world.spawn(min(world.state.pending))
    pid = canary_pid(world)
    world.ack(pid)
    world.feed(command(99, "worker:ping", now=world.now, pid=pid))
    world.now += 2.5
    effects = world.feed(Tick(world.now))
    why = f"canary worker {pid} failed a health rule (ping_timeout)"
    assert final(effects) == [Reply(CONN, f"Upgrade rolled back: {why}", "u", failed=True)]
    assert world.state.version == 0 and world.state.generation(1) == Generation(1, release(1), why)
    assert SendSignal(pid, "USR2", Cause.PING_TIMEOUT) in signals(effects) and old_pids(world) == old


def test_each_worker_is_stopped_with_its_own_generations_graceful_signal() -> None:
    """A release that stops on TERM (its master ran with --graceful-signal TERM) is stopped with TERM after an
    upgrade to one that stops on USR2, by the cull and by a shutdown."""
    world = pool()
    (first,) = world.state.generations
    world.state = replace(world.state, generations=(replace(first, launch=replace(first.launch, graceful_signal="TERM")),))
    old = old_pids(world)
    upgraded(world)
    effects: list[Effect] = []
    while world.state.upgrading is not None:
        for spawn_id in sorted(world.state.pending):
            effects += world.spawn(spawn_id)
        for pid in [c.pid for c in world.state.children.values() if c.version == 1 and not c.acked]:
            effects += world.ack(pid)
    assert sorted(s.pid for s in signals(effects) if s.signal == "TERM" and s.cause is Cause.UPGRADE) == old
    assert not [s for s in signals(effects) if s.signal == "USR2"]
    shutdown = world.feed(SignalReceived("INT", world.now))
    assert {(s.pid in old, s.signal) for s in signals(shutdown)} == {(True, "TERM"), (False, "USR2")}


def test_upgrade_env_sets_the_new_generations_environment_only() -> None:
    world = pool()
    effects = upgraded(world, "--env", "APP_RELEASE=2", "--env=FEATURE=on", "--env", "APP_RELEASE=3")
    new = world.state.generation(world.state.version)
    assert new is not None and dict(new.launch.environ) == {"PATH": "/bin", "APP_RELEASE": "3", "FEATURE": "on"}
    assert [s.launch for s in spawns(effects)] == [new.launch] * len(spawns(effects)) and spawns(effects)
    assert world.state.generation(0) == Generation(0, release(0))  # the old generation keeps its own


@pytest.mark.parametrize(
    ("arg", "problem"),
    [
        ("NOEQUALS", "--env needs NAME=VALUE"),
        ("1X=y", "--env needs NAME=VALUE"),
        ("EINHORN_FD_0=9", "--env cannot set EINHORN_FD_0: einhorn sets it for each worker"),
        ("LISTEN_FDS=1", "--env cannot set LISTEN_FDS"),
        ("K=a\0b", "--env K: the value must have no NUL byte"),
    ],
)
def test_a_bad_upgrade_env_is_a_failed_reply_and_starts_nothing(arg: str, problem: str) -> None:
    world = pool()
    effects = request(world, "upgrade", "--env", arg)
    (reply,) = final(effects)
    assert reply.failed and problem in reply.message and world.state.reexec is None


def test_a_user_einhorn_variable_may_be_set_by_upgrade_env() -> None:
    assert upgrade_options(["--env", "EINHORN_APP_NAME=web"], None) == UpgradeOptions(env=(("EINHORN_APP_NAME", "web"),))
