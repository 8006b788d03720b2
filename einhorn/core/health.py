"""Health rules that act (EXTENSIONS §2, spec/README.md §4 rules 3a-3b): verdicts as pure functions.

Three opt-in rules condemn a worker:

- `--boot-timeout T`: not ACKed T seconds after its spawn (`BOOT_TIMEOUT`, a timer);
- `--ping-timeout T`: pinged at least once (`worker:ping`, or `WATCHDOG=1` under
  `-m notify`), then silent for T seconds (`PING_TIMEOUT`, a timer);
- `--max-worker-rss MB`: measured above MB MiB by the shell (`WorkerMeasured`).

A verdict is recorded on the child (`Child.verdict`) and sticks. From then
on the worker counts as gone for `pool.missing_worker_count` (so its
successor starts), `pool.ack_count` and the surplus; the reconcile pass
stops it (the graceful signal, then `-t` escalates) as soon as the
availability floor allows: at once when it is not ACKed, or when more than
`number` serve without it; otherwise once its successor ACKs. A worker
stopped for its boot timeout counts as a death before ACK.
"""

from __future__ import annotations

from collections.abc import Iterable

from einhorn.core import pool
from einhorn.core.effects import Cause, Effect, Log, LogLevel
from einhorn.core.events import WorkerMeasured
from einhorn.core.record import replace
from einhorn.core.state import Child, State, Verdict

Outcome = tuple[State, list[Effect]]

CAUSES = {
    Verdict.BOOT_TIMEOUT: Cause.BOOT_TIMEOUT,
    Verdict.PING_TIMEOUT: Cause.PING_TIMEOUT,
    Verdict.RSS_LIMIT: Cause.RSS_LIMIT,
}
"""The cause a condemned worker is stopped for."""

MIB = 1024 * 1024


def boot_overdue(state: State, child: Child) -> bool:
    timeout = state.config.boot_timeout
    return timeout is not None and not child.acked and child.spinup_at + timeout <= state.clock


def ping_overdue(state: State, child: Child) -> bool:
    timeout = state.config.ping_timeout
    return timeout is not None and child.pinged_at is not None and child.pinged_at + timeout <= state.clock


def over_rss(state: State, child: Child) -> bool:
    limit = state.config.max_worker_rss_bytes
    return limit is not None and child.rss_bytes is not None and child.rss_bytes > limit


def earned(state: State, child: Child, verdict: Verdict) -> bool:
    """Whether `child` deserves `verdict` by `state`'s clock and settings."""
    match verdict:
        case Verdict.BOOT_TIMEOUT:
            return boot_overdue(state, child)
        case Verdict.PING_TIMEOUT:
            return ping_overdue(state, child)
        case Verdict.RSS_LIMIT:
            return over_rss(state, child)


def booted_out(child: Child) -> bool:
    """Stopped for its boot timeout: its death counts as a death before ACK, even if it ACKed
    once told to go."""
    return child.verdict is Verdict.BOOT_TIMEOUT


def judged(child: Child) -> bool:
    """Past judging: condemned already, or on its way out anyway."""
    return child.verdict is not None or bool(child.signaled)


# --- the timers' deadlines (step.BOOT_TIMEOUT, step.PING_TIMEOUT) ---------------


def boot_due(state: State) -> Iterable[tuple[float, int]]:
    timeout = state.config.boot_timeout
    if timeout is None:
        return ()
    children = state.indexed_children
    return ((spinup_at + timeout, pid) for spinup_at, pid in children.unacked_by_spinup() if not judged(children[pid]))


def ping_due(state: State) -> Iterable[tuple[float, int]]:
    timeout = state.config.ping_timeout
    if timeout is None:
        return ()
    return ((pinged_at + timeout, pid) for pinged_at, pid in state.indexed_children.pinged_by_time())


# --- verdicts ---------------------------------------------------------------------


def condemn(state: State, pid: int, verdict: Verdict) -> Outcome:
    """Record `verdict` on worker `pid` and say so at WARN, with what was measured."""
    child = state.children[pid]
    if judged(child):
        return state, []
    child = replace(child, verdict=verdict, verdict_at=state.clock)
    state = replace(state, children=state.indexed_children.set(child))
    return state, [Log(LogLevel.WARN, f"{describe(child)} {finding(state, child)}; {_plan(child)}")]


def on_measured(state: State, event: WorkerMeasured) -> Outcome:
    child = state.children.get(event.pid)
    if child is None:
        return state, [Log(LogLevel.DEBUG, f"RSS of {event.pid}, which is not a worker (any more); ignoring")]
    child = replace(child, rss_bytes=event.rss_bytes, measured_at=event.now)
    state = replace(state, children=state.indexed_children.set(child))
    if over_rss(state, child) and not judged(child):
        return condemn(state, child.pid, Verdict.RSS_LIMIT)
    return state, []


# --- what is shown ------------------------------------------------------------------


def describe(child: Child) -> str:
    return f"Worker {child.pid} (index {child.index}, version {child.version})"


def finding(state: State, child: Child) -> str:
    """What the rule found, with the measured value (for the WARN lines)."""
    config = state.config
    match child.verdict:
        case Verdict.BOOT_TIMEOUT:
            return f"not ACKed {state.clock - child.spinup_at:.1f}s after its spawn (--boot-timeout {config.boot_timeout:g}s)"
        case Verdict.PING_TIMEOUT:
            silent = "?" if child.pinged_at is None else f"{state.clock - child.pinged_at:.1f}"
            return f"has not pinged for {silent}s (--ping-timeout {config.ping_timeout:g}s)"
        case Verdict.RSS_LIMIT:
            rss = "?" if child.rss_bytes is None else f"{child.rss_bytes / MIB:.1f}"
            return f"uses {rss} MiB of resident memory (--max-worker-rss {config.max_worker_rss_mb} MiB)"
        case None:
            return "is healthy"


def _plan(child: Child) -> str:
    if not child.acked:
        return "stopping it"
    return "replacing it (stopped once the pool serves without it)"


def successor_held(state: State) -> bool:
    """A condemned worker waits for a successor that cannot start: `max_upgrade_additional` N caps
    the pool at `number` + N, the pool is there, nothing is on its way up, and stopping the condemned
    worker first would leave fewer than `number` serving. (`invariants.health_held` is the same rule,
    computed independently.)"""
    extra = state.config.max_upgrade_additional
    if extra is None or not state.respawn or state.pending or pool.unacked_unsignaled_modern_count(state) > 0:
        return False
    number = state.config.number
    return pool.total_worker_count(state) >= number + extra and pool.serving_count(state) <= number and bool(pool.condemned(state))


def held_notice(previous: State, state: State) -> list[Effect]:
    """Said once, when a condemned worker's successor starts being held (`successor_held`)."""
    if not successor_held(state) or successor_held(previous):
        return []
    child = pool.condemned(state)[0]
    number, extra = state.config.number, state.config.max_upgrade_additional
    text = (
        f"Replacing unhealthy {describe(child)[0].lower()}{describe(child)[1:]} held at capacity: number {number} +"
        f" max_upgrade_additional {extra} leaves no room for its successor, and stopping it first would leave"
        f" {pool.serving_count(state) - 1} of {number} serving. Raise max_upgrade_additional (config) to go on."
    )
    return [Log(LogLevel.WARN, text)]


def stop_message(state: State, child: Child) -> str:
    assert child.verdict is not None
    return f"Stopping unhealthy {describe(child)[0].lower()}{describe(child)[1:]} ({child.verdict.value}): {finding(state, child)}"
