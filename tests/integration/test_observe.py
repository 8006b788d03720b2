"""Observing a real master: the event stream (`subscribe`), `status`, `/metrics` and the JSON logs (issue 15)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable

from tests.integration.harness import Harness, Master
from tests.integration.upgrade_helpers import upgrade
from tests.integration.waiting import wait_until
from tests.integration.wire import decode_reply, frame
from tests.integration.workers import recorder

FAST = ("-m", "0.1", "-s", "0.1")


class Subscriber:
    """A `subscribe` connection, read line by line in the test's own time."""

    def __init__(self, master: Master, request_id: str | None = "sub") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10.0)
        self.sock.connect(master.socket_path)
        request: dict[str, object] = {"command": "subscribe"}
        if request_id is not None:
            request["id"] = request_id
        self.sock.sendall(frame(request))
        self.buffer = b""
        self.events: list[dict[str, object]] = []
        self.first = self._line()
        assert self.first is not None and str(self.first["message"]).startswith("Subscribed"), self.first

    def _line(self, timeout: float = 10.0) -> dict[str, object] | None:
        self.sock.settimeout(timeout)
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise AssertionError(f"the master closed the event stream after {len(self.events)} events")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return decode_reply(line)

    def wait_for(self, predicate: Callable[[dict[str, object]], bool], timeout: float = 20.0, what: str = "") -> dict[str, object]:
        """Read events until one matches (every event read is kept in `events`)."""
        for event in self.events:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._line(max(0.01, deadline - time.monotonic()))
            if line is None:
                break
            self.events.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no event {what} within {timeout}s; got {[e.get('message') for e in self.events]}")

    def close(self) -> None:
        self.sock.close()


def kind(name: str, **fields: object) -> Callable[[dict[str, object]], bool]:
    return lambda event: event.get("event") == name and all(event.get(k) == v for k, v in fields.items())


def test_subscribe_across_three_upgrades_loses_no_event_and_sees_each_reexec(harness: Harness) -> None:
    master = harness.start("-n", "2", *FAST, workers=2)
    subscriber = Subscriber(master)
    try:
        for version in (1, 2, 3):
            upgrade(master)
            subscriber.wait_for(kind("upgrade_phase", phase="done", version=version), what=f"upgrade {version} done")
        master.wait_workers(2)
        events = subscriber.events
        sequence = [e["seq"] for e in events]
        assert sequence == list(range(int(str(sequence[0])), int(str(sequence[0])) + len(sequence))), sequence
        assert all(e.get("request_id") == "sub" and e.get("wait") is True for e in events)
        assert [e["version"] for e in events if e["event"] == "reexec"] == [0, 1, 2]
        assert len([e for e in events if e["event"] == "spawned"]) == 6
        assert len([e for e in events if e["event"] == "acked"]) == 6
        signaled = [e for e in events if e["event"] == "signaled"]
        assert len(signaled) == 6 and {e["cause"] for e in signaled} == {"upgrade"}
        assert len([e for e in events if e["event"] == "exited"]) >= 4  # the last two may still be on their way out
        phases = [e["phase"] for e in events if e["event"] == "upgrade_phase"]
        assert phases == ["checking", "executing", "upgrading", "done"] * 3
        times = [float(str(e["time"])) for e in events]
        assert times == sorted(times) and abs(times[-1] - time.time()) < 60
    finally:
        subscriber.close()


def test_a_subscriber_that_never_reads_does_not_slow_the_master(harness: Harness) -> None:
    out = harness.directory / "signals"
    out.mkdir()
    master = harness.start("-n", "16", *FAST, program=recorder(out, stay="USR1"), workers=16, timeout=30.0)
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(master.socket_path)
    stuck.sendall(frame({"command": "subscribe", "id": "stuck"}))
    try:
        # Each `signal USR1` is 17 observations (16 signals and the command) for the stuck subscriber.
        slowest, sent, reply = 0.0, 0, ""
        while sent < 2000 and "is not reading the event stream" not in master.log():
            before = time.monotonic()
            reply = master.message("signal", "USR1")
            slowest = max(slowest, time.monotonic() - before)
            sent += 1
        print(f"{sent} requests sent; the last reply: {reply!r}")  # shown if the wait below fails
        master.wait_log(r"\[client \d+\] is not reading the event stream \(\d+ bytes unsent\); dropping it")
        assert slowest < 2.0, slowest
        with master.connect() as other:  # the master serves others as before
            other.send(frame({"command": "ehlo", "id": "1"}))
            assert "Welcome" in str(other.read_reply()["message"])
        assert len(master.wait_workers(16)) == 16
    finally:
        stuck.close()


def test_an_unsubscribed_connection_gets_no_events_and_a_closed_subscriber_is_forgotten(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    subscriber = Subscriber(master)
    subscriber.close()
    with master.connect() as plain:
        plain.send(frame({"command": "inc", "id": "1"}))
        assert plain.read_reply()["message"] == "Incrementing number of workers from 1 -> 2"
        plain.sock.settimeout(1.0)
        master.wait_workers(2)
        try:
            extra = plain.sock.recv(65536)
        except TimeoutError:
            extra = b""
        assert extra == b""
    second = Subscriber(master, request_id=None)
    try:
        master.message("dec")
        changed = second.wait_for(kind("config_changed", setting="number", old=2, new=1))
        assert "request_id" not in changed and "wait" not in changed
        assert str(changed["message"]).endswith("config_changed setting=number old=2 new=1")
    finally:
        second.close()


def test_a_worker_killed_by_a_signal_is_an_exit_with_its_cause(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    subscriber = Subscriber(master)
    try:
        (pid,) = master.wait_workers(1)
        os.kill(pid, signal.SIGKILL)
        exited = subscriber.wait_for(kind("exited", pid=pid))
        assert (exited["cause"], exited["signal"], exited["before_ack"]) == ("signal 9", 9, False)
        spawned = subscriber.wait_for(kind("spawned"))
        subscriber.wait_for(kind("acked", pid=spawned["pid"]))
        assert json.loads(json.dumps(exited)) == exited
    finally:
        subscriber.close()


def test_status_agrees_with_state_json(harness: Harness) -> None:
    master = harness.start("-n", "3", *FAST, "-b", "127.0.0.1:0", workers=3)
    text = master.message("status")
    state = master.state()
    lines = text.splitlines()
    assert len(lines) < 25
    assert lines[0].startswith("Einhorn ") and f"master {master.pid}" in lines[0]
    assert f"version {state['version']}, {state['ack_count']}/{state['config']['number']} ACKed" in lines[0]  # type: ignore[index]
    port = state["bound_ports"][0]  # type: ignore[index]
    assert any(line == f"listeners: 127.0.0.1:{port}" for line in lines), lines
    header = lines.index(next(line for line in lines if line.split()[:2] == ["index", "pid"]))
    shown = {int(cols[1]): (int(cols[0]), int(cols[2]), cols[4] == "yes") for cols in (line.split() for line in lines[header + 1 :])}
    children = state["children"]
    assert isinstance(children, dict)
    assert shown == {int(pid): (c["index"], c["version"], c["acked"]) for pid, c in children.items()}


# --- /metrics, /healthz, /readyz ------------------------------------------------------


def http_get(where: str, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET `path` from `where` (HOST:PORT, [V6]:PORT or unix:PATH) with a bare socket: status and body."""
    if where.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(where[5:])
    else:
        host, _, port = where.rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: einhorn\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def served_at(master: Master) -> str:
    match = master.wait_log(r"Serving metrics at (?:http://)?(\S+)/metrics")[0]
    return match.group(1)


def scrape(where: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(where, "/metrics")
    assert status == 200, body
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def events_by_kind(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> dict[str, float]:
    return {dict(labels)["event"]: value for labels, value in metrics.get("einhorn_events_total", {}).items()}


def test_metrics_during_an_upgrade_agree_with_the_event_stream(harness: Harness) -> None:
    master = harness.start("-n", "3", "-m", "0.5", "-s", "0.1", "--metrics", "127.0.0.1:0", workers=3)
    where = served_at(master)
    subscriber = Subscriber(master)
    try:
        before = scrape(where)
        since = int(sum(events_by_kind(before).values()))  # the sequence number of the last observation so far
        with master.connect(timeout=30.0) as requester:
            requester.send(frame({"command": "upgrade", "id": "up"}))
            during = wait_until(lambda: in_progress(scrape(where)), 20.0, "a scrape mid-upgrade")
            assert during["einhorn_version"][()] == 1.0
            replies = requester.read_until_last()
        assert replies[-1]["message"] == "Upgrade done", replies
        master.wait_workers(3)
        after = scrape(where)
        last = int(sum(events_by_kind(after).values()))
        subscriber.wait_for(lambda e: e["seq"] == last, what=f"the event numbered {last}")
        streamed: dict[str, float] = {}
        for event in subscriber.events:
            if since < int(str(event["seq"])) <= last:
                streamed[str(event["event"])] = streamed.get(str(event["event"]), 0) + 1
        counted = {k: v - events_by_kind(before).get(k, 0) for k, v in events_by_kind(after).items()}
        assert {k: v for k, v in counted.items() if v} == streamed
        assert after["einhorn_spawns_total"][()] - before["einhorn_spawns_total"][()] == streamed["spawned"] == 3
        assert after["einhorn_reexecs_total"][()] - before["einhorn_reexecs_total"][()] == 1
        signals = after["einhorn_signals_total"][(("cause", "upgrade"), ("signal", "USR2"))]
        assert signals == streamed["signaled"] == 3
        deaths = sum(v for labels, v in after.get("einhorn_deaths_total", {}).items())
        assert deaths == streamed["exited"] == 3
        assert after["einhorn_upgrades_done_total"][(("kind", "smooth"),)] == 1
        assert after["einhorn_upgrade_duration_seconds_count"][()] == 1
        assert after["einhorn_workers"][(("state", "acked"), ("version", "1"))] == 3
        assert after["einhorn_upgrade_in_progress"][()] == 0
    finally:
        subscriber.close()


Scraped = dict[str, dict[tuple[tuple[str, str], ...], float]]


def in_progress(metrics: Scraped) -> Scraped | None:
    """The scrape, if it shows the upgrade to version 1 under way."""
    return metrics if metrics["einhorn_upgrade_in_progress"][()] == 1.0 and metrics["einhorn_version"][()] == 1.0 else None


def test_readyz_flips_to_503_when_workers_are_killed_and_back(harness: Harness) -> None:
    master = harness.start("-n", "2", "-m", "1.5", "-s", "0.1", "--metrics", "127.0.0.1:0", workers=2, timeout=20.0)
    where = served_at(master)
    assert http_get(where, "/readyz") == (200, "2/2 ACKed workers serving\n")
    for pid in master.wait_workers(2):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: http_get(where, "/readyz")[0] == 503, 10.0, "/readyz 503")
    assert http_get(where, "/healthz") == (200, "ok\n")
    wait_until(lambda: http_get(where, "/readyz") == (200, "2/2 ACKed workers serving\n"), 20.0, "/readyz 200 again")
    metrics = scrape(where)
    deaths = {dict(labels)["code"]: v for labels, v in metrics["einhorn_deaths_total"].items()}
    assert deaths == {"9": 2.0}
    assert http_get(where, "/nope")[0] == 404


def test_metrics_on_ipv6_and_unix_sockets_survive_a_reexec(harness: Harness) -> None:
    if not socket.has_ipv6:
        import pytest

        pytest.skip("no IPv6")
    path = harness.directory / "metrics.sock"
    master = harness.start("-n", "1", *FAST, "--metrics", f"unix:{path}", workers=1)
    assert http_get(f"unix:{path}", "/healthz") == (200, "ok\n")
    spawns = scrape(f"unix:{path}")["einhorn_spawns_total"][()]
    inode = path.stat().st_ino
    upgrade(master)
    master.wait_workers(1)
    assert path.stat().st_ino == inode  # the same listener, handed over
    assert scrape(f"unix:{path}")["einhorn_spawns_total"][()] == spawns + 1
    master.send_signal(signal.SIGTERM)
    master.wait_exit()
    assert not path.exists()

    v6 = harness.start("-n", "1", *FAST, "--metrics", "[::1]:0", workers=1)
    where = served_at(v6)
    assert where.startswith("[::1]:")
    assert http_get(where, "/healthz") == (200, "ok\n")


def test_a_bad_metrics_address_is_a_usage_error(harness: Harness) -> None:
    result = harness.run("--metrics", "systemd", "--", "sleep", "1")
    assert result.returncode != 0 and "--metrics" in result.stderr


# --- logs -----------------------------------------------------------------------------


def test_json_logs_parse_and_a_crash_loop_is_a_warning_with_its_facts(harness: Harness) -> None:
    master = harness.start("--log-format", "json", "-n", "1", "-m", "manual", "-s", "0.05", program=("sh", "-c", "exit 3"))
    master.wait_log(r'"level": "WARN", .*"message": "Crash loop: 3 workers in a row died before their ACK')
    master.send_signal(signal.SIGTERM)
    master.wait_exit()
    lines = [json.loads(line) for line in master.log().splitlines()]
    assert all({"time", "level", "role", "master_pid", "message"} <= set(line) for line in lines)
    assert {line["master_pid"] for line in lines} == {master.pid}
    warning = next(line for line in lines if line["message"].startswith("Crash loop"))
    assert (warning["cause"], warning["before_ack"], warning["streak"]) == ("exit code 3", True, 3)
    launched = next(line for line in lines if line["message"].startswith("===> Launched"))
    assert isinstance(launched["pid"], int) and launched["index"] == 0 and launched["version"] == 0
    assert not any(line["message"].endswith(" to []") for line in lines)


def test_text_logs_stay_as_the_original_writes_them(harness: Harness) -> None:
    master = harness.start("-n", "1", *FAST, workers=1)
    master.send_signal(signal.SIGTERM)
    master.wait_exit()
    for line in master.log().splitlines():
        assert line.startswith(("[MASTER ", "[WORKER ")) or not line.startswith("{"), line
    assert f"[MASTER {master.pid}] INFO: Sending TERM to [" in master.log()
