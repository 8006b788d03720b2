"""einhorn.core.health and its rules in step: boot timeout, ping timeout, RSS limit, as exact effect lists."""

from __future__ import annotations

from einhorn.core import pool
from einhorn.core.config import Config
from einhorn.core.effects import Cause, Effect, Log, LogLevel, SendSignal, SpawnWorker
from einhorn.core.events import (
    ChildExited,
    CommandReceived,
    MasterStarted,
    Tick,
    UpgradeCheckPassed,
    WorkerMeasured,
    WorkerNotified,
    WorkerSpawned,
)
from einhorn.core.observe import observe
from einhorn.core.record import replace
from einhorn.core.report import snapshot, status
from einhorn.core.state import State, UpgradeKind, Verdict, initial_state
from einhorn.core.step import next_deadline, step
from tests.unit.fixtures.core_world import command, make_config, run, state_problems

MIB = 1024 * 1024


def warn(message: str) -> Log:
    return Log(LogLevel.WARN, message)


def info(message: str) -> Log:
    return Log(LogLevel.INFO, message)


def up(config: Config) -> State:
    """`number` workers (pids 1000, ...) spawned at 0.0 and ACKed by hand at 0.0."""
    state, _ = run(initial_state(config), MasterStarted(0.0))
    for spawn_id in range(config.number):
        state, _ = step(state, WorkerSpawned(spawn_id, 1000 + spawn_id, 0.0))
        state, _ = step(state, command(99, "worker:ack", pid=1000 + spawn_id))
    assert pool.ack_count(state) == config.number and not state.pending
    return state


def ping(pid: int, now: float) -> CommandReceived:
    return command(99, "worker:ping", pid=pid, now=now)


def signals(effects: list[Effect]) -> list[SendSignal]:
    return [e for e in effects if isinstance(e, SendSignal)]


def spawns(effects: list[Effect]) -> list[SpawnWorker]:
    return [e for e in effects if isinstance(e, SpawnWorker)]


# --- --boot-timeout -----------------------------------------------------------------------


def test_a_worker_not_acked_by_its_boot_timeout_is_stopped_and_its_death_counts() -> None:
    config = make_config(ack_timer=None, boot_timeout=5.0)
    state, _ = run(initial_state(config), MasterStarted(0.0), WorkerSpawned(0, 1000, 0.0))
    assert next_deadline(state) == 5.0
    state, effects = step(state, Tick(4.9))
    assert effects == []
    state, effects = step(state, Tick(5.0))
    assert effects == [
        warn("Worker 1000 (index 0, version 0) not ACKed 5.0s after its spawn (--boot-timeout 5s); stopping it"),
        warn("Stopping unhealthy worker 1000 (index 0, version 0) (boot_timeout): not ACKed 5.0s after its spawn (--boot-timeout 5s)"),
        info("Sending USR2 to [1000]"),
        SendSignal(1000, "USR2", Cause.BOOT_TIMEOUT),
    ]
    assert state.children[1000].verdict is Verdict.BOOT_TIMEOUT and state.children[1000].verdict_at == 5.0
    assert next_deadline(state) is None  # judged: no second verdict, no second signal
    state, effects = step(state, ChildExited(1000, 0, None, 5.5))
    assert state.deaths_before_ack == 1 and state_problems(state) == []
    assert effects[0] == info("===> Exited worker 1000 before it was ACKed (exit status 0)")


def test_a_worker_that_acks_after_its_boot_timeout_still_dies_before_its_ack() -> None:
    config = make_config(ack_timer=None, boot_timeout=5.0)
    state, _ = run(initial_state(config), MasterStarted(0.0), WorkerSpawned(0, 1000, 0.0), Tick(5.0))
    state, _ = step(state, command(99, "worker:ack", pid=1000, now=5.1))  # too late: it was told to go
    assert state.children[1000].acked and state.deaths_before_ack == 0
    state, effects = step(state, ChildExited(1000, 0, None, 5.5))
    assert state.deaths_before_ack == 1
    assert effects[0] == info("===> Exited worker 1000 after its boot timeout (counted as a death before ACK) (exit status 0)")


def test_the_boot_timeout_escalates_with_t() -> None:
    config = make_config(ack_timer=None, boot_timeout=5.0, signal_timeout=2)
    state, _ = run(initial_state(config), MasterStarted(0.0), WorkerSpawned(0, 1000, 0.0), Tick(5.0))
    assert next_deadline(state) == 7.0
    state, effects = step(state, Tick(7.0))
    assert signals(effects) == [SendSignal(1000, "KILL", Cause.ESCALATION)]


def test_an_acked_worker_has_no_boot_deadline() -> None:
    state = up(make_config(ack_timer=None, boot_timeout=5.0))
    assert next_deadline(state) is None
    state, effects = step(state, Tick(100.0))
    assert signals(effects) == []


# --- --ping-timeout -------------------------------------------------------------------------


def test_a_wedged_worker_is_replaced_successor_first() -> None:
    state = up(make_config(number=2, ack_timer=None, ping_timeout=3.0, max_unacked=2))
    assert next_deadline(state) is None  # no ping yet: the rule does not apply
    state, _ = step(state, ping(1000, 1.0))
    assert next_deadline(state) == 4.0
    state, effects = step(state, Tick(4.0))
    assert effects == [
        warn("Worker 1000 (index 0, version 0) has not pinged for 3.0s (--ping-timeout 3s); replacing it (stopped once the pool serves without it)"),
        info("Launching a new process since there are 0 unacked new workers and max_unacked is 2 (paced by ACKs)"),
        SpawnWorker(2, 2, 0),
    ]
    assert pool.ack_count(state) == 1 and pool.serving_count(state) == 2 and state_problems(state) == []
    state, effects = step(state, WorkerSpawned(2, 1002, 4.1))
    assert signals(effects) == []  # un-ACKed, the successor serves nothing yet
    state, effects = step(state, ping(1000, 4.2))  # a late ping does not undo the verdict
    assert signals(effects) == [] and state.children[1000].verdict is Verdict.PING_TIMEOUT
    state, effects = step(state, command(99, "worker:ack", pid=1002, now=4.5))
    assert [e for e in effects if not (isinstance(e, Log) and e.level is LogLevel.INFO and e.message.startswith("Up to"))][1:] == [
        warn("Stopping unhealthy worker 1000 (index 0, version 0) (ping_timeout): has not pinged for 0.3s (--ping-timeout 3s)"),
        info("Sending USR2 to [1000]"),
        SendSignal(1000, "USR2", Cause.PING_TIMEOUT),
    ]
    assert pool.serving_count(state) == 2 and pool.ack_count(state) == 2 and state_problems(state) == []


def test_watchdog_under_notify_counts_as_a_ping() -> None:
    config = make_config(ack_timer=None, notify_acks=True, ping_timeout=3.0)
    state, _ = run(initial_state(config), MasterStarted(0.0), WorkerSpawned(0, 1000, 0.0))
    state, _ = step(state, WorkerNotified(1000, {"READY": "1", "WATCHDOG": "1"}, 1.0))
    assert next_deadline(state) == 4.0
    state, _ = step(state, WorkerNotified(1000, {"WATCHDOG": "1"}, 3.5))
    assert next_deadline(state) == 6.5


def test_an_unacked_worker_that_stops_pinging_is_stopped_at_once() -> None:
    config = make_config(ack_timer=None, ping_timeout=3.0)
    state, _ = run(initial_state(config), MasterStarted(0.0), WorkerSpawned(0, 1000, 0.0), ping(1000, 0.5))
    state, effects = step(state, Tick(3.5))
    assert signals(effects) == [SendSignal(1000, "USR2", Cause.PING_TIMEOUT)]
    assert effects[0] == warn("Worker 1000 (index 0, version 0) has not pinged for 3.0s (--ping-timeout 3s); stopping it")


def test_two_wedged_workers_go_one_by_one_as_their_successors_ack() -> None:
    """Two rules at once leave the pool serving `number` at every step."""
    state = up(make_config(number=2, ack_timer=None, ping_timeout=3.0, max_unacked=2))
    state, _ = run(state, ping(1000, 1.0), ping(1001, 1.0))
    state, effects = step(state, Tick(4.0))
    assert [(s.index, s.spawn_id) for s in spawns(effects)] == [(2, 2), (3, 3)] and signals(effects) == []
    state, _ = run(state, WorkerSpawned(2, 1002, 4.1), WorkerSpawned(3, 1003, 4.1))
    state, effects = step(state, command(99, "worker:ack", pid=1002, now=4.2))
    assert signals(effects) == [SendSignal(1000, "USR2", Cause.PING_TIMEOUT)]  # the oldest first
    assert pool.serving_count(state) == 2
    state, effects = step(state, command(99, "worker:ack", pid=1003, now=4.3))
    assert signals(effects) == [SendSignal(1001, "USR2", Cause.PING_TIMEOUT)]
    assert pool.serving_count(state) == 2 and state_problems(state) == []


# --- --max-worker-rss -----------------------------------------------------------------------


def test_a_worker_over_the_rss_limit_is_replaced_successor_first() -> None:
    state = up(make_config(number=1, ack_timer=None, max_worker_rss_mb=100))
    state, effects = step(state, WorkerMeasured(1000, 99 * MIB, 2.0))
    assert effects == [] and state.children[1000].rss_bytes == 99 * MIB and state.children[1000].measured_at == 2.0
    state, effects = step(state, WorkerMeasured(1000, 150 * MIB, 4.0))
    assert effects == [
        warn("Worker 1000 (index 0, version 0) uses 150.0 MiB of resident memory (--max-worker-rss 100 MiB); replacing it (stopped once the pool serves without it)"),
        info("Launching a new process since there are 0 unacked new workers and max_unacked is 1 (paced by ACKs)"),
        SpawnWorker(1, 1, 0),
    ]
    state, _ = step(state, WorkerSpawned(1, 1001, 4.1))
    state, effects = step(state, WorkerMeasured(1000, 160 * MIB, 6.0))  # still over: nothing new
    assert effects == []
    state, effects = step(state, command(99, "worker:ack", pid=1001, now=6.5))
    assert signals(effects) == [SendSignal(1000, "USR2", Cause.RSS_LIMIT)]
    assert warn(
        "Stopping unhealthy worker 1000 (index 0, version 0) (rss_limit): uses 160.0 MiB of resident memory (--max-worker-rss 100 MiB)"
    ) in effects


def test_an_rss_breach_of_an_old_worker_during_an_upgrade_goes_before_the_healthy_ones() -> None:
    state = up(make_config(number=2, ack_timer=None, max_worker_rss_mb=100, max_unacked=1))
    state, _ = step(state, command(5, "upgrade", now=1.0))
    assert state.reexec is not None
    state, _ = run(state, UpgradeCheckPassed(state.reexec.check_id, 1.0), MasterStarted(1.0, restored=True))
    assert state.upgrading is UpgradeKind.SMOOTH
    (new_spawn,) = state.pending
    state, _ = step(state, WorkerSpawned(new_spawn, 1002, 1.1))
    state, effects = step(state, WorkerMeasured(1001, 200 * MIB, 1.2))  # the younger old worker breaches
    assert signals(effects) == [] and state.children[1001].verdict is Verdict.RSS_LIMIT
    state, effects = step(state, command(99, "worker:ack", pid=1002, now=1.5))
    # the unhealthy one goes, not the oldest (1000) that the smooth cull would have picked
    assert signals(effects) == [SendSignal(1001, "USR2", Cause.RSS_LIMIT)]
    assert state_problems(state) == []


def test_a_successor_held_by_max_upgrade_additional_is_said_once_and_goes_on_when_the_cap_is_raised() -> None:
    state = up(make_config(number=1, ack_timer=None, max_worker_rss_mb=100, max_upgrade_additional=0))
    state, effects = step(state, WorkerMeasured(1000, 150 * MIB, 4.0))
    assert spawns(effects) == [] and signals(effects) == []  # no room for its successor, and it serves alone
    assert effects[-1] == warn(
        "Replacing unhealthy worker 1000 (index 0, version 0) held at capacity: number 1 + max_upgrade_additional 0"
        " leaves no room for its successor, and stopping it first would leave 0 of 1 serving."
        " Raise max_upgrade_additional (config) to go on."
    )
    state, effects = run(state, WorkerMeasured(1000, 160 * MIB, 6.0), Tick(7.0))
    assert effects == []  # still held: said once
    raise_cap = CommandReceived(1, {"command": "config", "args": ["..."]}, 8.0, document={"max_upgrade_additional": 1})
    state, effects = step(state, raise_cap)
    assert spawns(effects) == [SpawnWorker(1, 1, 0)]
    state, effects = run(state, WorkerSpawned(1, 1001, 8.1), command(99, "worker:ack", pid=1001, now=8.5))
    assert signals(effects) == [SendSignal(1000, "USR2", Cause.RSS_LIMIT)]
    assert state_problems(state) == []


def test_a_measurement_of_an_unknown_pid_is_ignored() -> None:
    state = up(make_config(max_worker_rss_mb=100, ack_timer=None))
    after, effects = step(state, WorkerMeasured(4242, 500 * MIB, 1.0))
    assert effects == [Log(LogLevel.DEBUG, "RSS of 4242, which is not a worker (any more); ignoring")]
    assert after == replace(state, clock=1.0)


def test_without_the_limit_a_measurement_is_only_recorded() -> None:
    state = up(make_config(ack_timer=None))
    state, effects = step(state, WorkerMeasured(1000, 500 * MIB, 1.0))
    assert effects == [] and state.children[1000].verdict is None and state.children[1000].rss_bytes == 500 * MIB


# --- what state shows ------------------------------------------------------------------------


def test_state_shows_ping_age_rss_and_the_pending_verdict() -> None:
    state = up(make_config(number=1, ack_timer=None, ping_timeout=3.0, max_worker_rss_mb=100))
    state, _ = run(state, ping(1000, 1.0), WorkerMeasured(1000, 150 * MIB, 2.5))
    document = snapshot(state, 0.0)["state"]
    assert isinstance(document, dict)
    child = document["children"][1000]
    assert (child["ping_age"], child["rss_bytes"], child["health"]) == (1.5, 150 * MIB, "rss_limit")
    config = document["config"]
    assert (config["boot_timeout"], config["ping_timeout"], config["max_worker_rss_mb"]) == (None, 3.0, 100)


def test_status_shows_the_rules_in_force_and_the_condemned_worker() -> None:
    state = up(make_config(number=1, ack_timer=None, ping_timeout=3.0, boot_timeout=60.0, max_worker_rss_mb=512))
    state, _ = step(state, ping(1000, 1.0))
    state, _ = step(state, Tick(4.0))
    text = status(state)
    assert "health rules: --boot-timeout 60, --ping-timeout 3, --max-worker-rss 512" in text
    assert "(condemned: ping_timeout)" in text


def test_observers_hear_a_health_action_with_its_rule() -> None:
    state = up(make_config(number=1, ack_timer=None, boot_timeout=5.0))
    state, _ = step(state, command(99, "inc"))
    state, _ = step(state, WorkerSpawned(1, 1001, 1.0))
    event = Tick(6.0)
    after, effects = step(state, event)
    found = [o for o in observe(state, event, after, effects) if o.kind == "health"]
    assert [(o.fields["rule"], o.fields["pid"]) for o in found] == [("boot_timeout", 1001)]
