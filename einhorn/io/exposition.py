"""The Prometheus text exposition of a master (imported only with `--metrics`: prometheus_client is not light).

A custom collector: at each scrape it reads the master's state (the pool as
it is now) and the counters fed by observations (`metrics.Counters`), and
yields prometheus_client's metric families, which `generate_latest` writes in
the text format. Nothing is registered globally: the registry is this
master's own, and holds only this collector.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from einhorn.core import pool
from einhorn.core.state import State
from einhorn.io.metrics import UPGRADE_BUCKETS, MetricsServer, master_rss

COUNTED = (
    ("spawns", "Workers started", ()),
    ("spawn_failures", "Workers the master could not start (fork/exec errors)", ()),
    ("acks", "Workers that ACKed", ()),
    ("deaths", "Workers that exited, by how (exit or signal), the exit code or signal number, and whether before their ACK", ("reason", "code", "before_ack")),
    ("signals", "Signals the master sent to workers, by signal and cause", ("signal", "cause")),
    ("health_actions", "Workers stopped on a health rule's verdict, by rule", ("rule",)),
    ("commands", "Command-socket requests, by command and result (ok, error, unknown)", ("command", "result")),
    ("upgrades_started", "Re-execs started, by purpose (smooth_upgrade, fleet_upgrade, reload)", ("purpose",)),
    ("upgrades_done", "Upgrades finished, by kind (smooth, fleet)", ("kind",)),
    ("upgrades_failed", "Re-execs or upgrades that failed or were rolled back, by purpose and outcome", ("purpose", "outcome")),
    ("reexecs", "Times the master re-exec'd itself and restored its state", ()),
    ("drains", "Drains of a generation's sockets that ended (drain listeners), by how: drained, timed_out, ended", ("phase",)),
    ("config_changes", "Runtime setting changes (config, inc, dec, set_workers), by setting", ("setting",)),
    ("events", "Observations made (the event stream's events), by event", ("event",)),
)
"""(name without einhorn_ and _total, help, label names) of each counter fed by observations."""


class Exposition:
    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = StateCollector(server)
        self.registry.register(self.collector)

    def render(self, state: State) -> tuple[bytes, str]:
        self.collector.state = state
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class StateCollector(Collector):
    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.state: State | None = None

    def collect(self) -> Iterator[Metric]:
        state = self.state
        if state is None:
            return
        yield from pool_metrics(state, time.monotonic())
        yield from counter_metrics(self.server)
        rss = master_rss()
        if rss is not None:
            yield GaugeMetricFamily("einhorn_master_rss_bytes", "Resident memory of the master process", value=rss)


def pool_metrics(state: State, now: float) -> Iterator[Metric]:
    config = state.config
    info = GaugeMetricFamily("einhorn_info", "This einhorn: its version and master pid", labels=("einhorn_version", "master_pid"))
    info.add_metric((config.einhorn_version, str(config.display.master_pid)), 1)
    yield info
    yield GaugeMetricFamily("einhorn_version", "The version (upgrade count) new workers start at", value=state.version)
    yield GaugeMetricFamily("einhorn_workers_target", "The number of workers wanted (-n, set_workers)", value=config.number)
    workers = GaugeMetricFamily("einhorn_workers", "Workers by version and state (acked, unacked, signaled, spawning)", labels=("version", "state"))
    children = state.indexed_children
    versions = sorted({c.version for c in children.values()} | {p.version for p in state.pending.values()} | {state.version})
    for version in versions:
        label = str(version)
        workers.add_metric((label, "acked"), children.count(version, signaled=False, acked=True))
        workers.add_metric((label, "unacked"), children.count(version, signaled=False, acked=False))
        workers.add_metric((label, "signaled"), children.count(version, signaled=True))
        workers.add_metric((label, "spawning"), state.indexed_pending.count(version))
    yield workers
    serving = pool.serving_count(state)
    yield GaugeMetricFamily("einhorn_workers_serving", "ACKed, unsignaled workers of any version", value=serving)
    yield GaugeMetricFamily("einhorn_ready", "1 when at least the target number of workers serve (/readyz says 200)", value=int(serving >= config.number))
    upgrading = state.upgrading is not None or state.reexec is not None
    yield GaugeMetricFamily("einhorn_upgrade_in_progress", "1 while a re-exec or an upgrade is in progress", value=int(upgrading))
    yield GaugeMetricFamily(
        "einhorn_deaths_before_ack_streak", "Consecutive workers that died before their ACK (3 and more: a crash loop)", value=state.deaths_before_ack
    )
    ping = GaugeMetricFamily("einhorn_worker_ping_age_seconds", "Seconds since each worker's last worker:ping, by index", labels=("index", "version"))
    for child in children.values():
        if child.pinged_at is not None:
            ping.add_metric((str(child.index), str(child.version)), max(0.0, now - child.pinged_at))
    yield ping


def counter_metrics(server: MetricsServer) -> Iterator[Metric]:
    counters = server.counters
    for name, help_text, labels in COUNTED:
        family = CounterMetricFamily(f"einhorn_{name}", help_text, labels=labels)
        by_labels = counters.counts.get(name, {})
        if not labels:
            family.add_metric((), by_labels.get((), 0.0))
        else:
            for values, count in sorted(by_labels.items()):
                family.add_metric(values, count)
        yield family
    buckets = counters.upgrade_durations or [0.0] * (len(UPGRADE_BUCKETS) + 1)
    cumulative, running = [], 0.0
    for bound, count in zip((*(f"{b:g}" for b in UPGRADE_BUCKETS), "+Inf"), buckets, strict=True):
        running += count
        cumulative.append((bound, running))
    yield HistogramMetricFamily(
        "einhorn_upgrade_duration_seconds",
        "Seconds from an upgrade request to the last new worker ACKed",
        buckets=cumulative,
        sum_value=counters.upgrade_duration_sum,
    )
