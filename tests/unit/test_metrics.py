"""einhorn.io.metrics and einhorn.io.exposition: HTTP parsing, counters, the collector, and the server on real sockets."""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from einhorn.core.observe import Observation
from einhorn.core.record import replace
from einhorn.core.state import Child, State, UpgradeKind
from einhorn.io import metrics
from einhorn.io.metrics import Counters, HttpError, HttpRequest, MetricsServer, parse_request
from einhorn.io.sockets import SetupError
from tests.unit.fixtures.core_world import make_config
from tests.unit.test_control_server import ExhaustedListener, RecordingLogger

# --- HTTP -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "parsed"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", HttpRequest("GET", "/metrics")),
        (b"HEAD /readyz?verbose=1 HTTP/1.0\r\n\r\n", HttpRequest("HEAD", "/readyz")),
        (b"GET /healthz HTTP/1.1\n\n", HttpRequest("GET", "/healthz")),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", None),
        (b"", None),
        (b"garbage\r\n\r\n", HttpError(400, "Bad Request")),
        (b"GET metrics HTTP/1.1\r\n\r\n", HttpError(400, "Bad Request")),
        (b"GET /metrics SPDY/3\r\n\r\n", HttpError(400, "Bad Request")),
        (b"G\xffT /metrics HTTP/1.1\r\n\r\n", HttpError(400, "Bad Request")),
        (b"get /metrics HTTP/1.1\r\n\r\n", HttpError(400, "Bad Request")),
        (b"GET /" + b"x" * metrics.MAX_REQUEST, HttpError(431, "Request Header Fields Too Large")),
        (b"GET / HTTP/1.1\r\nX: " + b"x" * metrics.MAX_REQUEST + b"\r\n\r\n", HttpError(431, "Request Header Fields Too Large")),
    ],
)
def test_parse_request(data: bytes, parsed: object) -> None:
    assert parse_request(data) == parsed


def test_parse_address() -> None:
    assert metrics.parse_address("127.0.0.1:9100").reuseaddr
    assert metrics.parse_address("[::1]:0").host == "::1"
    assert metrics.parse_address("unix:/tmp/m.sock").path == "/tmp/m.sock"
    for bad in ("systemd", "127.0.0.1:9100,r", "nonsense"):
        with pytest.raises(SetupError):
            metrics.parse_address(bad)


# --- counters ---------------------------------------------------------------------


def test_counters_from_observations() -> None:
    counters = Counters()
    counters.record(
        [
            Observation("spawned", {"pid": 1}),
            Observation("acked", {"pid": 1}),
            Observation("exited", {"pid": 1, "exit_code": None, "signal": 9, "before_ack": False}),
            Observation("exited", {"pid": 2, "exit_code": 3, "signal": None, "before_ack": True}),
            Observation("signaled", {"pid": 1, "signal": "USR2", "cause": "upgrade"}),
            Observation("command", {"command": "inc", "result": "ok"}),
            Observation("upgrade_phase", {"phase": "checking", "purpose": "smooth_upgrade"}),
        ],
        100.0,
    )
    counters.record([Observation("upgrade_phase", {"phase": "done", "purpose": "smooth"})], 107.0)
    assert counters.value("spawns") == 1 and counters.value("acks") == 1
    assert counters.value("deaths", ("signal", "9", "false")) == 1
    assert counters.value("deaths", ("exit", "3", "true")) == 1
    assert counters.value("signals", ("USR2", "upgrade")) == 1
    assert counters.value("commands", ("inc", "ok")) == 1
    assert counters.value("upgrades_started", ("smooth_upgrade",)) == 1
    assert counters.value("upgrades_done", ("smooth",)) == 1
    assert counters.value("events", ("exited",)) == 2
    assert counters.upgrade_durations[2] == 1 and counters.upgrade_duration_sum == 7.0  # the 10 s bucket
    assert counters.upgrade_started_at is None


def test_a_failed_upgrade_is_counted_and_not_timed() -> None:
    counters = Counters()
    counters.record([Observation("upgrade_phase", {"phase": "checking", "purpose": "smooth_upgrade"})], 1.0)
    counters.record([Observation("upgrade_phase", {"phase": "failed", "purpose": "smooth_upgrade"})], 2.0)
    assert counters.value("upgrades_failed", ("smooth_upgrade", "failed")) == 1
    assert (counters.upgrade_started_at, counters.upgrade_durations) == (None, [])


def test_counters_cross_a_reexec_through_json() -> None:
    counters = Counters()
    counters.record([Observation("spawned"), Observation("exited", {"signal": 15, "before_ack": False})], 5.0)
    counters.record([Observation("upgrade_phase", {"phase": "checking", "purpose": "fleet_upgrade"})], 6.0)
    again = Counters.from_plain(json.loads(json.dumps(counters.to_plain())))
    assert again == counters


@pytest.mark.parametrize(
    "plain",
    [[], {"counts": []}, {"counts": {"x": [[["a"], "1"]]}}, {"upgrade_durations": [1.0]}, {"upgrade_started_at": "now"}],
)
def test_malformed_counters_are_refused(plain: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        Counters.from_plain(plain)


# --- the server on real sockets ---------------------------------------------------


def upgrading_state() -> State:
    children = {
        1: Child(pid=1, version=0, index=0, spinup_at=0.0, acked=True, signaled=frozenset({"USR2"})),
        2: Child(pid=2, version=0, index=1, spinup_at=0.0, acked=True, pinged_at=8.0),
        3: Child(pid=3, version=1, index=2, spinup_at=9.0, acked=True),
    }
    return State(config=make_config(number=2), version=1, children=children, upgrading=UpgradeKind.SMOOTH, clock=10.0)


class Served:
    def __init__(self, state: State, **limits: float) -> None:
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.state = state
        self.now = 0.0
        self.log = RecordingLogger()
        address = metrics.parse_address(f"127.0.0.1:{self.port}")
        self.server = MetricsServer(self.listener, address, self.selector, lambda: self.state, self.log, clock=lambda: self.now, **limits)  # type: ignore[arg-type]

    def turn(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            for key, _ in self.selector.select(0.01):
                key.data()
            self.server.tick()

    def client(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return sock

    def get(self, request: bytes) -> tuple[int, bytes]:
        with self.client() as sock:
            sock.sendall(request)
            data = b""
            while True:
                self.turn(2)
                sock.settimeout(0.05)
                try:
                    chunk = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    def close(self) -> None:
        self.server.close()
        self.selector.close()


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served(upgrading_state())
    yield s
    s.close()


def families(body: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_metrics_parse_with_prometheus_clients_own_parser(served: Served) -> None:
    served.server.record([Observation("spawned"), Observation("signaled", {"signal": "USR2", "cause": "upgrade"})])
    status, body = served.get(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == 200
    found = families(body)
    workers = {(labels["version"], labels["state"]): value for labels, value in found["einhorn_workers"]}
    assert workers == {
        ("0", "acked"): 1.0,
        ("0", "unacked"): 0.0,
        ("0", "signaled"): 1.0,
        ("0", "spawning"): 0.0,
        ("1", "acked"): 1.0,
        ("1", "unacked"): 0.0,
        ("1", "signaled"): 0.0,
        ("1", "spawning"): 0.0,
    }
    assert found["einhorn_spawns_total"] == [({}, 1.0)]
    assert found["einhorn_signals_total"] == [({"signal": "USR2", "cause": "upgrade"}, 1.0)]
    assert found["einhorn_upgrade_in_progress"] == [({}, 1.0)]
    assert found["einhorn_ready"] == [({}, 1.0)]
    assert [labels for labels, _ in found["einhorn_worker_ping_age_seconds"]] == [{"index": "1", "version": "0"}]
    assert found["einhorn_upgrade_duration_seconds_count"] == [({}, 0.0)]
    assert found["einhorn_master_rss_bytes"][0][1] > 1e6


def test_readyz_follows_the_serving_workers(served: Served) -> None:
    assert served.get(b"GET /readyz HTTP/1.1\r\n\r\n") == (200, b"2/2 ACKed workers serving\n")
    served.state = replace(served.state, config=make_config(number=3))
    assert served.get(b"GET /readyz HTTP/1.1\r\n\r\n") == (503, b"2/3 ACKed workers serving\n")
    assert served.get(b"GET /healthz HTTP/1.1\r\n\r\n") == (200, b"ok\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\n\r\n", 405),
        (b"GET /" + b"x" * (2 * metrics.MAX_REQUEST), 431),
    ],
)
def test_bad_requests_are_answered_and_the_server_goes_on(served: Served, request_bytes: bytes, status: int) -> None:
    assert served.get(request_bytes)[0] == status
    assert served.get(b"GET /healthz HTTP/1.1\r\n\r\n")[0] == 200
    served.turn()
    assert served.server.scrapers == set()


def test_head_has_no_body(served: Served) -> None:
    with served.client() as sock:
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\n\r\n")
        served.turn()
        data = sock.recv(65536)
    assert data.endswith(b"\r\n\r\n") and b"Content-Length: 3" in data


def test_a_scraper_that_sends_nothing_is_closed_at_its_deadline(served: Served) -> None:
    silent = served.client()
    served.turn()
    assert len(served.server.scrapers) == 1
    assert served.server.next_wakeup() == metrics.TIMEOUT
    served.now = metrics.TIMEOUT
    served.turn(1)
    assert served.server.scrapers == set()
    silent.settimeout(1)
    assert silent.recv(10) == b""
    silent.close()


def test_scrapers_are_capped_and_the_rest_wait_in_the_backlog() -> None:
    s = Served(upgrading_state(), max_connections=2)
    try:
        idle = [s.client() for _ in range(3)]
        s.turn()
        assert len(s.server.scrapers) == 2
        s.now = metrics.TIMEOUT
        s.turn(1)
        s.turn()
        assert len(s.server.scrapers) == 1  # the third, accepted once the others were gone
        for sock in idle:
            sock.close()
    finally:
        s.close()


def test_a_slow_reader_never_blocks_the_server() -> None:
    many = {n: Child(pid=n, version=0, index=n, spinup_at=0.0, acked=True, pinged_at=1.0) for n in range(1, 3001)}
    s = Served(State(config=make_config(number=3000), children=many, clock=2.0))
    try:
        reader = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window stays small
        reader.connect(("127.0.0.1", s.port))
        s.turn()
        (scraper,) = s.server.scrapers
        scraper.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # loopback buffers would take it all
        reader.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        s.turn()
        assert scraper.output  # not all written: waits for the reader, without blocking
        s.now = metrics.TIMEOUT
        s.turn(1)
        assert s.server.scrapers == set()
        reader.close()
    finally:
        s.close()


def test_accept_at_the_descriptor_limit_backs_off_instead_of_spinning_and_resumes() -> None:
    ExhaustedListener.exhausted, ExhaustedListener.attempts = True, 0
    s = Served(upgrading_state())
    s.server.close()
    s.listener = ExhaustedListener(socket.AF_INET, socket.SOCK_STREAM)
    s.listener.bind(("127.0.0.1", 0))
    s.listener.listen(16)
    s.port = s.listener.getsockname()[1]
    address = metrics.parse_address(f"127.0.0.1:{s.port}")
    s.server = MetricsServer(s.listener, address, s.selector, lambda: s.state, s.log, clock=lambda: s.now)
    try:
        waiting = s.client()  # stays in the backlog while accept fails
        for _ in range(300):  # 30 s of wake-ups, every 0.1 s
            s.turn(1)
            s.now += 0.1
        # 0.05, 0.1, 0.2, 0.4, 0.8, then every 1 s: about 33 attempts in 30 s, not one per wake-up
        assert 25 <= ExhaustedListener.attempts <= 40
        logged = [m for _, m in s.log.lines if "accept metrics connections" in m]
        assert logged[0] == "Cannot accept metrics connections: Too many open files; trying again with a backoff of up to 1s"
        assert all(m.startswith("Still cannot accept metrics connections") for m in logged[1:]) and len(logged) < 10
        ExhaustedListener.exhausted = False
        s.now += 1.0
        s.turn(2)
        assert s.get(b"GET /healthz HTTP/1.0\r\n\r\n")[0] == 200
        assert any("Accepting metrics connections again" in m for _, m in s.log.lines)
        waiting.close()
    finally:
        s.close()


def test_a_scraper_accepted_before_an_exec_is_answered_not_reset(served: Served) -> None:
    """Its socket does not cross the exec: the old image answers it first (a reset was a failed scrape mid-upgrade)."""
    with served.client() as sock:
        served.turn(1)
        assert len(served.server.scrapers) == 1  # accepted, its request not read yet
        sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        served.server.answer_before_exec()
        assert served.server.scrapers == set()
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\nok\n")


def test_the_exec_waits_at_most_its_grace_for_a_silent_scraper(served: Served) -> None:
    silent = served.client()
    served.turn(1)
    started = time.monotonic()
    served.server.answer_before_exec()
    assert time.monotonic() - started < metrics.EXEC_GRACE + 1.0 and served.server.scrapers == set()
    silent.settimeout(5)
    assert silent.recv(10) == b""
    silent.close()
