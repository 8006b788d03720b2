"""One hypothesis state machine around the pure core, with a fake world of live pids.

The rules are what the world can do to a master: spawns succeed or fail,
workers exit (ACKed or not, signaled or not) or ACK, time passes, operators
send commands and signals, re-execs complete or fail. After every rule the
invariants are checked, and so is liveness: from wherever the machine is, a
cooperative world (spawns succeed, workers ACK, signaled workers exit, timers
fire) must reach exactly `number` ACKed modern workers, or the exit when
respawning is off, within a bounded number of events.

Every rule `note()`s what it did, so a shrunk failure reads as a story.
"""

from __future__ import annotations

from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from einhorn.core import pool
from einhorn.core.config import MAX_SPINUP_INTERVAL, Config, Pacing
from einhorn.core.effects import Cause, CloseConnection, Log, LogLevel, SendSignal, SpawnWorker
from einhorn.core.events import CommandReceived, SignalReceived, SpawnFailed, Tick, WorkerMeasured
from einhorn.core.state import Child, ReexecPhase, RolloutPhase, Verdict
from einhorn.core.step import next_deadline, step
from tests.unit.fixtures.core_world import World, command, converged, make_config

machine_configs = st.builds(
    make_config,
    number=st.integers(1, 4),
    ack_timer=st.sampled_from([None, 0.0, 1.0, 2.5]),
    seconds=st.sampled_from([0.5, 1.0, 3.0]),
    pacing=st.sampled_from(Pacing),
    max_unacked=st.integers(1, 3),
    max_upgrade_additional=st.sampled_from([None, 0, 1, 2]),
    signal_timeout=st.sampled_from([None, 2, 30]),
    boot_timeout=st.sampled_from([None, None, 3.0]),
    ping_timeout=st.sampled_from([None, None, 2.0]),
    max_worker_rss_mb=st.sampled_from([None, None, 64]),
    drain=st.booleans(),
)

CONN = 7


def describe(child: Child, version: int) -> str:
    facts = ["acked" if child.acked else "un-ACKed", "modern" if child.version == version else "old"]
    if child.signaled:
        facts.append("signaled " + "+".join(sorted(child.signaled)))
    return f"worker {child.pid} ({', '.join(facts)})"


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = World.start(make_config())
        self.requests = 0

    # --- helpers ------------------------------------------------------------------

    def running(self) -> bool:
        return self.world.exited is None

    def request_id(self, with_id: bool) -> str | None:
        self.requests += 1
        return str(self.requests) if with_id else None

    def say(self, story: str) -> None:
        note(f"t={self.world.now:g}: {story}")

    # --- the world's moves ----------------------------------------------------------

    @initialize(config=machine_configs)
    def start(self, config: Config) -> None:
        note(
            f"start: number={config.number} ack={'manual' if config.ack_timer is None else config.ack_timer}"
            f" seconds={config.seconds} max_unacked={config.max_unacked}"
            f" max_upgrade_additional={config.max_upgrade_additional} signal_timeout={config.signal_timeout}"
            f" boot_timeout={config.boot_timeout} ping_timeout={config.ping_timeout} max_worker_rss={config.max_worker_rss_mb}"
        )
        self.world = World.start(config)

    @precondition(lambda self: self.running() and self.world.state.pending)
    @rule(data=st.data())
    def spawn_succeeds(self, data: st.DataObject) -> None:
        spawn_id = data.draw(st.sampled_from(sorted(self.world.state.pending)), label="spawn_id")
        self.say(f"spawn {spawn_id} starts as pid {self.world.next_pid}")
        self.world.spawn(spawn_id)

    @precondition(lambda self: self.running() and self.world.state.pending)
    @rule(data=st.data())
    def spawn_fails(self, data: st.DataObject) -> None:
        spawn_id = data.draw(st.sampled_from(sorted(self.world.state.pending)), label="spawn_id")
        self.say(f"spawn {spawn_id} fails")
        self.world.feed(SpawnFailed(spawn_id, "Resource temporarily unavailable", self.world.now))

    @precondition(lambda self: self.running() and self.world.live)
    @rule(data=st.data(), how=st.sampled_from(["status 0", "status 1", "signal 9"]))
    def worker_exits(self, data: st.DataObject, how: str) -> None:
        pid = data.draw(st.sampled_from(sorted(self.world.live)), label="pid")
        self.say(f"{describe(self.world.state.children[pid], self.world.state.version)} exits with {how}")
        self.world.exit(pid, 9 if how == "signal 9" else None)

    @precondition(lambda self: self.running() and any(c.signaled for c in self.world.state.children.values()))
    @rule(data=st.data())
    def signaled_worker_obeys(self, data: st.DataObject) -> None:
        signaled = sorted(c.pid for c in self.world.state.children.values() if c.signaled)
        pid = data.draw(st.sampled_from(signaled), label="pid")
        self.say(f"{describe(self.world.state.children[pid], self.world.state.version)} exits as told")
        self.world.exit(pid)

    @precondition(
        lambda self: self.running()
        and self.world.state.config.ack_timer is None
        and any(not c.acked for c in pool.workers(self.world.state))
    )
    @rule(data=st.data())
    def worker_acks(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(sorted(c.pid for c in pool.workers(self.world.state) if not c.acked)), label="pid")
        self.say(f"{describe(self.world.state.children[pid], self.world.state.version)} ACKs")
        self.world.ack(pid)
        assert self.world.state.deaths_before_ack == 0
        assert pid not in self.world.state.children or self.world.state.children[pid].acked

    @precondition(lambda self: self.running())
    @rule(data=st.data())
    def stray_ack(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from([*sorted(self.world.state.children), 4242]), label="pid")
        self.say(f"a (possibly repeated, unknown or timer-mode) ACK for {pid}")
        before = self.world.state
        as_tick = step(before, Tick(self.world.now))
        effects = self.world.ack(pid)
        child = before.children.get(pid)
        if child is None or child.acked or before.config.ack_timer is not None:
            # Logged and ignored: otherwise exactly what a Tick at this time does.
            log, close, *rest = effects
            expected = LogLevel.DEBUG if before.config.ack_timer is not None else LogLevel.ERROR  # timer mode: expected
            assert isinstance(log, Log) and log.level is expected and close == CloseConnection(99)
            assert (self.world.state, rest) == as_tick

    @precondition(lambda self: self.running() and bool(self.world.live))
    @rule(data=st.data())
    def worker_pings(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(sorted(self.world.live)), label="pid")
        self.say(f"worker {pid} pings")
        self.world.feed(CommandReceived(CONN, {"command": "worker:ping", "pid": pid, "request_id": "p"}, self.world.now, wall=1e9))
        assert self.world.state.children[pid].pinged_request_id == "p"

    @precondition(lambda self: self.running() and bool(self.world.live))
    @rule(data=st.data(), mib=st.sampled_from([10, 64, 65, 200]))
    def worker_measured(self, data: st.DataObject, mib: int) -> None:
        pid = data.draw(st.sampled_from(sorted(self.world.live)), label="pid")
        before = self.world.state.children[pid]
        self.say(f"{describe(before, self.world.state.version)} measured at {mib} MiB")
        self.world.feed(WorkerMeasured(pid, mib * 1024 * 1024, self.world.now))
        after = self.world.state.children[pid]
        limit = self.world.state.config.max_worker_rss_mb
        if limit is not None and mib > limit and not before.signaled:
            assert after.verdict is not None  # condemned now, or before for another rule
        if before.verdict is None and (limit is None or mib <= limit):
            assert after.verdict is None

    @precondition(lambda self: self.running() and bool(self.world.measurements))
    @rule(queued=st.sampled_from([0, 0, 2]))
    def queues_read(self, queued: int) -> None:
        order = self.world.measurements[0]
        self.say(f"the queues of version {order.version} hold {queued} connections")
        self.world.measured(queued)

    @precondition(lambda self: self.running() and next_deadline(self.world.state) is not None)
    @rule()
    def deadline_passes(self) -> None:
        self.say(f"the deadline {next_deadline(self.world.state):g} passes")
        self.world.tick_at_deadline()

    @precondition(lambda self: self.running())
    @rule(dt=st.sampled_from([0.1, 0.5, 1.0, 5.0, 40.0]))
    def time_passes(self, dt: float) -> None:
        self.world.now += dt
        self.say(f"{dt:g}s pass")
        self.world.feed(Tick(self.world.now))

    # --- the operator's moves -------------------------------------------------------

    @precondition(lambda self: self.running())
    @rule(name=st.sampled_from(["inc", "dec"]))
    def inc_or_dec(self, name: str) -> None:
        self.say(f"operator: {name} (number was {self.world.state.config.number})")
        self.world.feed(command(CONN, name, now=self.world.now))

    @precondition(lambda self: self.running())
    @rule(count=st.integers(1, 5))
    def set_workers(self, count: int) -> None:
        self.say(f"operator: set_workers {count}")
        self.world.feed(command(CONN, "set_workers", str(count), now=self.world.now))
        assert self.world.state.config.number == count

    @precondition(lambda self: self.running())
    @rule(how=st.sampled_from(["upgrade", "upgrade_fleet", "reload", "SIGHUP"]), with_id=st.booleans(), unchanged=st.booleans())
    def upgrade(self, how: str, with_id: bool, unchanged: bool) -> None:
        self.say(f"operator: {how}{' with an id' if with_id else ''}, einhorn {'unchanged' if unchanged else 'changed'} on disk")
        self.world.image_unchanged = unchanged
        if how == "SIGHUP":
            self.world.feed(SignalReceived("HUP", self.world.now))
        else:
            self.world.feed(command(CONN, how, now=self.world.now, id=self.request_id(with_id)))

    @precondition(lambda self: self.running())
    @rule(
        name=st.sampled_from(["upgrade", "upgrade_fleet"]),
        canary=st.integers(0, 2),
        bake=st.sampled_from(["0", "1.5", "5"]),
        timeout=st.sampled_from([None, "4", "30"]),
    )
    def canary_upgrade(self, name: str, canary: int, bake: str, timeout: str | None) -> None:
        args = ["--canary", str(canary), *(["--bake", bake] if canary else []), *(["--timeout", timeout] if timeout else [])]
        self.say(f"operator: {name} {' '.join(args)}")
        self.world.feed(command(CONN, name, *args, now=self.world.now, id=self.request_id(True)))

    @precondition(lambda self: self.running())
    @rule()
    def abort_upgrade(self) -> None:
        before = self.world.state
        self.say("operator: abort_upgrade")
        self.world.feed(command(CONN, "abort_upgrade", now=self.world.now, id=self.request_id(True)))
        after = self.world.state
        if before.rollout is not None and before.reexec is None:
            assert after.rollout is None and after.version == before.rollout.previous
            assert before.rollout.version in {g.version for g in after.generations if g.rolled_back_because}

    @precondition(lambda self: self.running() and self.world.reexec_outstanding)
    @rule()
    def reexec_completes(self) -> None:
        self.say(f"the re-exec ({self.world.state.reexec_purpose}) completes; the new master restores the state")
        version = self.world.state.version
        upgrading = self.world.state.reexec_purpose is not None and self.world.state.reexec_purpose.value != "reload"
        self.world.restore()
        state = self.world.state
        assert state.reexec_purpose is None
        if not upgrading:
            assert state.version == version
            return
        # The new image's generation: current at once, or (a canary) beside the pool until its bake ends.
        assert state.rollout is not None and state.rollout.version > version
        assert state.generation(state.rollout.version) is not None
        assert state.version == (version if state.rollout.phase is RolloutPhase.CANARY else state.rollout.version)

    @precondition(lambda self: self.running() and self.world.reexec_outstanding)
    @rule()
    def reexec_fails(self) -> None:
        self.say("the upgrade check fails, or the exec after it")
        self.world.fail_reexec("upgrade check exited 1")
        assert self.world.state.reexec_purpose is None

    @precondition(lambda self: self.running() and self.world.reexec_outstanding and self.world.state.reexec is not None and self.world.state.reexec.phase is ReexecPhase.CHECKING)
    @rule()
    def upgrade_check_passes(self) -> None:
        self.say("the upgrade check passes; the exec is ordered")
        self.world.pass_check()
        assert self.world.state.reexec is not None and self.world.state.reexec.phase is ReexecPhase.EXECUTING

    @precondition(lambda self: self.running())
    @rule(signal=st.sampled_from([None, "TERM", "sigusr2", "KILL"]))
    def die(self, signal: str | None) -> None:
        self.say(f"operator: die {signal or ''}")
        self.world.feed(command(CONN, "die", *([signal] if signal else []), now=self.world.now))
        assert not self.world.state.respawn

    @precondition(lambda self: self.running())
    @rule(signal=st.sampled_from(["INT", "USR2", "TERM", "QUIT", "HUP", "WINCH"]))
    def master_signal(self, signal: str) -> None:
        self.say(f"the master gets SIG{signal}")
        self.world.feed(SignalReceived(signal, self.world.now))
        if signal in ("INT", "USR2", "TERM", "QUIT"):
            assert not self.world.state.respawn
        if signal == "QUIT":
            assert self.world.exited == 1

    @precondition(lambda self: self.running())
    @rule(
        setting=st.sampled_from(["max_unacked", "max_upgrade_additional", "seconds", "signal_timeout", "pacing"]),
        value=st.integers(0, 3),
    )
    def config(self, setting: str, value: int) -> None:
        document: dict[str, object] = {setting: None if value == 0 and setting != "max_unacked" else value}
        if setting == "seconds":
            document = {"seconds": 0.5 * (value + 1)}
        pacing = list(Pacing)[value % 2]
        if setting == "pacing":
            document = {"pacing": pacing.value}
        self.say(f"operator: config {document}")
        self.world.feed(CommandReceived(CONN, {"command": "config", "args": ["..."]}, self.world.now, document=document))
        if setting in ("seconds", "pacing"):  # setting the interval chooses it
            assert self.world.state.config.pacing is (Pacing.INTERVAL if setting == "seconds" else pacing)

    @precondition(lambda self: not self.running())
    @rule()
    def master_has_exited(self) -> None:
        self.say(f"the master has exited with {self.world.exited}")

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def never_more_than_number_unsignaled_modern_workers(self) -> None:
        """(Besides those a health rule condemned, which stay until their successors serve.)"""
        state = self.world.state
        assert len([c for c in pool.unsignaled_modern_workers(state) if c.verdict is None]) <= state.config.number

    @invariant()
    def a_worker_signaled_for_its_health_was_condemned_for_it(self) -> None:
        causes = {Cause.BOOT_TIMEOUT: Verdict.BOOT_TIMEOUT, Cause.PING_TIMEOUT: Verdict.PING_TIMEOUT, Cause.RSS_LIMIT: Verdict.RSS_LIMIT}
        for effect in self.world.last_effects:
            if isinstance(effect, SendSignal) and effect.cause in causes:
                assert self.world.state.children[effect.pid].verdict is causes[effect.cause], effect

    @invariant()
    def every_signal_targets_a_live_child(self) -> None:
        for effect in self.world.last_effects:
            if isinstance(effect, SendSignal):
                assert effect.pid in self.world.live_at_last_step, effect

    @invariant()
    def the_world_and_the_core_agree_on_who_lives(self) -> None:
        assert set(self.world.state.children) == self.world.live

    @invariant()
    def indexes_are_distinct(self) -> None:
        state = self.world.state
        indexes = [c.index for c in pool.workers(state)] + [p.index for p in state.pending.values()]
        assert len(indexes) == len(set(indexes)), indexes

    @invariant()
    def no_spin_up_while_respawn_is_off(self) -> None:
        if not self.world.state.respawn:
            assert not any(isinstance(e, SpawnWorker) for e in self.world.last_effects)

    @invariant()
    def spinup_interval_is_at_most_30_seconds(self) -> None:
        assert pool.spinup_interval(self.world.state) <= MAX_SPINUP_INTERVAL

    @invariant()
    def a_cooperative_world_converges(self) -> None:
        trial = self.world.copy()
        state = trial.state
        limit = 60 + 12 * (state.config.number + len(state.children) + len(state.pending))
        taken = trial.settle(limit)
        problem = converged(trial)
        assert problem is None, f"after {taken} cooperative events: {problem}"


CoreMachine.TestCase.settings = settings(
    max_examples=75,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCoreMachine = CoreMachine.TestCase
