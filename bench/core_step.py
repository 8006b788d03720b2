"""Microbenchmark of the pure core: events per second of the real `step` at 16, 256 and 1000 workers.

    .venv/bin/python bench/core_step.py [--sizes 16 256 1000] [--seconds 1.0]

Each size starts from a pool of N ACKed workers (manual ACKs, default pacing)
and replays the cycle of the three events that touch one worker: a worker
exits (the core orders its replacement), the spawn succeeds, the new worker
ACKs. The shell calls `next_deadline` after every wake-up, so the second
column counts it with each event. Rates are per second of CPU time, the best
of a few runs. Not part of the test suite.

    .venv/bin/python bench/core_step.py --cold 1000

instead times the core's part of a cold start of 1000 workers with `-m 0` (bench/run.py's
`_cold_start_1000`): `MasterStarted`, then the 1000 `WorkerSpawned` the shell feeds back.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from einhorn.core.config import Config
from einhorn.core.effects import SpawnWorker
from einhorn.core.events import ChildExited, CommandReceived, Event, MasterStarted, WorkerSpawned
from einhorn.core.state import LaunchSpec, State, initial_state
from einhorn.core.step import next_deadline, step

SIZES = (16, 256, 1000)


def full_pool(number: int) -> State:
    """N workers (pids 1..N), spawned and ACKed at t=0."""
    config = Config(number=number, ack_timer=None, max_unacked=2, einhorn_version="bench")
    state, _ = step(initial_state(config), MasterStarted(0.0))
    for spawn_id in sorted(state.pending):
        state, _ = step(state, WorkerSpawned(spawn_id, spawn_id + 1, 0.0))
    for pid in sorted(state.children):
        state, _ = step(state, CommandReceived(1, {"command": "worker:ack", "pid": pid}, 0.0))
    assert len(state.children) == number and not state.pending
    return state


@dataclass(frozen=True)
class Rate:
    number: int
    events: int
    step_only: float
    """Events per second of `step` alone."""
    with_deadline: float
    """Events per second of `step` followed by `next_deadline`, as the shell does."""


def measure(number: int, seconds: float = 1.0, repeat: int = 3) -> Rate:
    """The best of `repeat` runs of `seconds` each (the machine is shared: the best run is the least disturbed)."""
    runs = [_measure_once(number, seconds / repeat) for _ in range(repeat)]
    return Rate(number, sum(r.events for r in runs), max(r.step_only for r in runs), max(r.with_deadline for r in runs))


def _measure_once(number: int, seconds: float) -> Rate:
    rates = []
    for with_deadline in (False, True):
        state = full_pool(number)
        next_pid = number + 1
        now = 10.0  # past `seconds` of every worker's start: exits are not deaths before ACK
        events = 0
        started = time.process_time()  # CPU time: the machine is shared, and the core does no I/O
        deadline = started + seconds
        while time.process_time() < deadline:
            for _ in range(50):
                victim = next(iter(state.children))
                cycle: list[Event] = [ChildExited(victim, None, 9, now)]
                state, effects = step(state, cycle[0])
                if with_deadline:
                    next_deadline(state)
                (order,) = [e for e in effects if isinstance(e, SpawnWorker)]
                for event in (
                    WorkerSpawned(order.spawn_id, next_pid, now),
                    CommandReceived(1, {"command": "worker:ack", "pid": next_pid}, now),
                ):
                    state, _ = step(state, event)
                    if with_deadline:
                        next_deadline(state)
                next_pid += 1
                now += 1.0
                events += 3
        rates.append((events, events / (time.process_time() - started)))
    return Rate(number, rates[0][0] + rates[1][0], rates[0][1], rates[1][1])


def cold_start(number: int, runs: int = 15) -> tuple[float, float]:
    """CPU seconds of the core's part of a cold start with timer ACKs at 0 s (`-m 0`), as the shell feeds
    it: `MasterStarted`, then one `WorkerSpawned` per order. (best, median) of `runs` runs."""
    config = Config(number=number, ack_timer=0.0, einhorn_version="bench")
    launch = LaunchSpec(("/bin/sleep", "100000"), "/bin/sleep", "/", (("PATH", "/bin"),), "USR2")
    times = []
    for _ in range(runs):
        started = time.process_time()
        state, effects = step(initial_state(config), MasterStarted(1.0, launch=launch))
        for order in [e for e in effects if isinstance(e, SpawnWorker)]:
            state, _ = step(state, WorkerSpawned(order.spawn_id, order.spawn_id + 100, 1.0 + order.spawn_id * 1e-6))
        next_deadline(state)
        times.append(time.process_time() - started)
        assert len(state.children) == number and not state.pending
    return min(times), statistics.median(times)


def table(rates: Sequence[Rate]) -> str:
    lines = [
        "| workers | events/s, `step` | events/s, `step` + `next_deadline` | µs per event |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for rate in rates:
        lines.append(f"| {rate.number} | {rate.step_only:,.0f} | {rate.with_deadline:,.0f} | {1e6 / rate.step_only:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--seconds", type=float, default=2.0, help="per size and column (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=4, help="runs per size, the best one counts (default %(default)s)")
    parser.add_argument("--cold", type=int, metavar="N", help="instead: the core's CPU time for a cold start of N workers with -m 0")
    args = parser.parse_args(argv)
    if args.cold is not None:
        best, median = cold_start(args.cold)
        print(f"Core part of a cold start of {args.cold} (-m 0): best {best * 1000:.1f} ms, median {median * 1000:.1f} ms of CPU")
        return 0
    print("Core step: a worker exits, its replacement spawns, it ACKs (3 events touching one worker each)")
    print(table([measure(n, args.seconds, args.repeat) for n in args.sizes]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
