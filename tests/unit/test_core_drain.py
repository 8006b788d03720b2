"""Drain listeners (einhorn/core/drain.py, spec/README.md §9): exact effects, rule by rule.

Every step goes through the fake world of core_world.py, which checks every invariant (D1-D3 included)
after it.
"""

from __future__ import annotations

from einhorn.core import drain
from einhorn.core.effects import Effect, Log, LogLevel, MeasureQueues, SendSignal, Steer
from einhorn.core.events import CommandReceived, QueuesMeasured, Tick
from einhorn.core.step import next_deadline
from tests.unit.fixtures.core_world import World
from tests.unit.test_core_rollout import old_pids, pool, request, upgraded


def steers(effects: list[Effect]) -> list[Steer]:
    return [e for e in effects if isinstance(e, Steer)]


def signalled(effects: list[Effect]) -> list[int]:
    return [e.pid for e in effects if isinstance(e, SendSignal)]


def tick(world: World, to: float) -> list[Effect]:
    world.now = to
    return world.feed(Tick(to))


def new_worker_acked(world: World) -> int:
    world.spawn(min(world.state.pending))
    pid = max(world.state.children)
    world.ack(pid)
    return pid


def test_without_drain_listeners_the_core_never_steers() -> None:
    world = pool(2)
    upgraded(world)
    world.settle(100)
    assert not [e for e in world.history if "Steer" in e or "MeasureQueues" in e]


def test_the_first_pool_is_steered_to_the_first_generation() -> None:
    world = pool(2, drain=True)
    assert world.state.steered == ((0, 2),)


def test_a_smooth_upgrade_stops_an_old_worker_only_after_its_generation_is_drained() -> None:
    world = pool(2, drain=True)
    upgraded(world)
    new = new_worker_acked(world)
    effects = world.last_effects
    assert signalled(effects) == []  # the ACK makes one old worker surplus: it waits
    assert steers(effects) == [Steer(((1, 1),))]  # every new connection to the new worker's generation
    assert world.state.drains[0].version == 0 and world.state.drains[0].since == 0.0
    assert [m.message for m in effects if isinstance(m, Log) and m.message.startswith("Draining")]
    assert next_deadline(world.state) == drain.POLL

    read = tick(world, drain.POLL)
    assert read == [MeasureQueues(0, 0)]
    world.measurements.clear()
    assert world.feed(QueuesMeasured(0, 0, 3, drain.POLL)) == []  # still 3 connections waiting
    assert next_deadline(world.state) == 2 * drain.POLL
    assert tick(world, 2 * drain.POLL) == [MeasureQueues(0, 1)]
    world.measurements.clear()
    assert world.feed(QueuesMeasured(0, 1, 0, 2 * drain.POLL)) == []  # empty: the grace begins
    assert next_deadline(world.state) == 2 * drain.POLL + drain.GRACE

    effects = tick(world, 2 * drain.POLL + drain.GRACE)
    (victim,) = signalled(effects)
    assert victim in old_pids(world) and world.state.children[new].acked
    assert world.state.drains == ()
    # the old generation has a worker stopping: it gets no new connection until that one is gone
    assert world.state.steered == ((1, 1),) and steers(effects) == []
    effects = world.exit(victim)
    assert steers(effects) == [Steer(((0, 1), (1, 1)))]  # the other old worker serves again


def test_a_stale_reading_does_not_end_a_drain() -> None:
    world = pool(2, drain=True)
    upgraded(world)
    new_worker_acked(world)
    tick(world, drain.POLL)
    world.measurements.clear()
    world.feed(QueuesMeasured(0, 7, 0, drain.POLL))  # not the ticket ordered
    assert world.state.drains[0].empty_at is None
    world.feed(QueuesMeasured(1, 0, 0, drain.POLL))  # not a generation being drained
    assert world.state.drains[0].empty_at is None


def test_a_fleet_upgrade_drains_the_old_generation_once_then_stops_all_of_it() -> None:
    world = pool(3, drain=True)
    upgraded(world, name="upgrade_fleet")
    while world.state.pending:
        world.spawn(min(world.state.pending))
    new = sorted(pid for pid in world.state.children if world.state.children[pid].version == 1)
    for pid in new:
        world.ack(pid)
    assert signalled(world.last_effects) == [] and world.state.steered == ((1, 3),)
    tick(world, drain.POLL)
    world.measured(0)
    effects = tick(world, drain.POLL + drain.GRACE)
    assert sorted(signalled(effects)) == old_pids(world)


def test_one_generation_alone_has_nowhere_else_to_send_connections_so_dec_stops_at_once() -> None:
    world = pool(2, drain=True)
    effects = request(world, "dec")
    assert len(signalled(effects)) == 1 and world.state.drains == ()


def test_a_queue_that_never_empties_is_given_up_on_after_the_timeout_with_a_warning() -> None:
    world = pool(2, drain=True)
    upgraded(world)
    new_worker_acked(world)
    t = 0.0
    while next_deadline(world.state) is not None and next_deadline(world.state) < drain.TIMEOUT:  # type: ignore[operator]
        t = next_deadline(world.state)  # type: ignore[assignment]
        tick(world, t)
        world.measured(queued=1)
    effects = tick(world, drain.TIMEOUT)
    assert [e for e in effects if isinstance(e, Log) and e.level is LogLevel.WARN and "still not empty" in e.message]
    assert len(signalled(effects)) == 1


def test_an_abort_drains_the_new_generation_toward_the_old_one() -> None:
    world = pool(2, drain=True)
    upgraded(world)
    newest = new_worker_acked(world)  # one new worker serves; an old one waits for the old generation's drain
    assert [d.version for d in world.state.drains] == [0]
    effects = request(world, "abort_upgrade", id="abort")
    assert signalled(effects) == []  # the new worker goes only once its generation is drained
    assert [d.version for d in world.state.drains] == [1]
    assert world.state.steered == ((0, 2),)  # both old workers serve again
    tick(world, drain.POLL)
    world.measured(0)
    effects = tick(world, drain.POLL + drain.GRACE)
    assert signalled(effects) == [newest]
    world.settle(200)
    assert {c.version for c in world.state.children.values()} == {0}


def test_the_sockets_of_a_generation_are_released_when_its_last_worker_is_gone() -> None:
    world = pool(2, drain=True)
    upgraded(world)
    world.settle(200)
    released = [line for line in world.history if "ReleaseListeners(version=0)" in line]
    assert len(released) == 1 and "ChildExited" in released[0]
    assert {c.version for c in world.state.children.values()} == {1}


def test_a_re_exec_forgets_the_drains_and_steers_again_before_stopping_anyone() -> None:
    world = pool(2, drain=True)
    upgraded(world)
    new_worker_acked(world)
    assert world.state.drains
    request(world, "upgrade")
    effects = world.restore()
    assert signalled(effects) == []  # the old image's drain is not the new image's: it drains again
    assert world.state.drains and world.state.drains[0].since == world.now
    assert steers(effects) and world.state.steered
    world.settle(200)
    assert {c.version for c in world.state.children.values()} == {2}


def test_release_is_said_once_per_generation_and_never_for_the_current_one() -> None:
    world = pool(1, drain=True)
    for _ in range(3):
        upgraded(world)
        world.settle(100)
    released = [line.count("ReleaseListeners(version=") for line in world.history]
    assert sum(released) == 3
    assert "ReleaseListeners(version=3)" not in "".join(world.history)


def test_state_and_status_show_the_steering_and_the_drains_only_with_drain_listeners() -> None:
    from einhorn.core.report import snapshot, status

    assert "drain" not in snapshot(pool(2).state, 0.0)["state"]  # type: ignore[operator]
    assert "connections:" not in status(pool(2).state)
    world = pool(2, drain=True)
    upgraded(world)
    new_worker_acked(world)
    shown = snapshot(world.state, 1000.0)["state"]["drain"]  # type: ignore[index]
    assert shown["steered"] == [{"version": 1, "weight": 1}]
    assert [(d["version"], d["queue"]) for d in shown["draining"]] == [(0, "waiting")]
    assert "connections: version 1 100%; draining version 0 (queue not empty yet" in status(world.state)


def test_the_event_stream_hears_of_each_drain_and_each_new_steering() -> None:
    from einhorn.core.observe import observe

    world = pool(2, drain=True)
    upgraded(world)
    world.spawn(min(world.state.pending))
    before = world.state
    ack = CommandReceived(99, {"command": "worker:ack", "pid": max(world.state.children)}, world.now)
    effects = world.feed(ack)
    seen = [(o.kind, dict(o.fields)) for o in observe(before, ack, world.state, effects)]
    assert ("drain", {"version": 0, "phase": "draining"}) in seen
    assert ("steered", {"weights": "1:1"}) in seen
    tick(world, drain.POLL)
    world.measured(0)
    before = world.state
    effects = tick(world, drain.POLL + drain.GRACE)
    seen = [(o.kind, dict(o.fields)) for o in observe(before, Tick(world.now), world.state, effects)]
    assert ("drain", {"version": 0, "phase": "drained"}) in seen


def test_a_generation_never_steered_to_needs_no_drain_one_dropped_from_the_steering_does() -> None:
    world = pool(2, drain=True, boot_timeout=3.0)
    upgraded(world)
    world.spawn(min(world.state.pending))  # a new worker that never ACKs: its generation got no connection
    assert 1 not in world.state.exposed
    effects = tick(world, 3.0)  # its boot timeout
    assert len(signalled(effects)) == 1 and world.state.drains == ()
    # after a re-exec the new image knows nothing of the old steering: every live generation is exposed
    request(world, "upgrade")
    world.restore()
    assert 0 in world.state.exposed and world.state.steered


def test_a_drained_generation_is_exposed_again_once_steered_to() -> None:
    world = pool(2, drain=True)
    upgraded(world)
    new_worker_acked(world)
    tick(world, drain.POLL)
    world.measured(0)
    (victim,) = signalled(tick(world, drain.POLL + drain.GRACE))
    assert 0 not in world.state.exposed  # drained, and not steered to while its worker stops
    world.exit(victim)
    assert 0 in dict(world.state.steered) and 0 in world.state.exposed
