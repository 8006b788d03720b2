"""`--metrics ADDR`: Prometheus `/metrics`, `/healthz` and `/readyz`, served from the master's own loop.

No thread and no second process: the listener and its connections are
nonblocking sockets on the master's selector, like the command server's.
What keeps a scraper from stalling the master:

- a request is read into at most `MAX_REQUEST` bytes; a longer one gets 431;
- each connection has `TIMEOUT` seconds from accept to its last byte written,
  then it is closed (the loop wakes for the earliest deadline, `next_wakeup`);
- at most `MAX_CONNECTIONS` at once: beyond, the listener is not selected and
  new scrapers wait in its backlog;
- the response is built once, at most `MAX_RESPONSE` bytes, and written as
  the socket takes it; nothing is ever read or written blocking.

The numbers come from two places: a collector over the master's state (the
pool as it is now: `einhorn.io.exposition`) and counters fed by the
observations of every step (`Counters`). The counters, and the listener
itself, cross a re-exec through the hand-off registry, so that a scraper sees
one master whose counters never reset until it really exits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from einhorn.core import pool
from einhorn.core.events import Event
from einhorn.core.observe import Observation
from einhorn.core.record import dataclass, field, replace
from einhorn.core.state import State
from einhorn.io.control import AcceptBackoff
from einhorn.io.handoff import Descriptor, Handoff
from einhorn.io.logs import Logger
from einhorn.io.sockets import BindSpec, SetupError, bind_listener, listener_address, parse_bind

LISTENER = "metrics_listener"
"""The hand-off kind of the metrics listener."""
COUNTERS = "metrics"
"""The hand-off data key of the counters."""

MAX_CONNECTIONS = 16
MAX_REQUEST = 8 * 1024
MAX_RESPONSE = 16 * 1024 * 1024
TIMEOUT = 5.0
"""Seconds a scraper has from accept to its last byte."""
ACCEPTS_PER_WAKEUP = 16
EXEC_GRACE = 0.25
"""Seconds, in all, the image about to exec gives the scrapers it accepted to be answered."""
BACKLOG = 64

UPGRADE_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Upper bounds (seconds) of the upgrade duration histogram's buckets (and +Inf)."""


def parse_address(text: str) -> BindSpec:
    """`HOST:PORT`, `[V6]:PORT` or `unix:PATH` (SetupError otherwise)."""
    spec = parse_bind(text)
    if spec.systemd is not None or "," in text:
        raise SetupError(f'Invalid value for --metrics "{text}": must be HOST:PORT, [V6ADDR]:PORT or unix:PATH')
    return replace(spec, reuseaddr=spec.path is None)


# --- HTTP: just enough of it -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str


@dataclass(frozen=True, slots=True)
class HttpError:
    status: int
    reason: str


def parse_request(data: bytes) -> HttpRequest | HttpError | None:
    """The request in `data`, an error to answer, or None while its head is not complete."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    if end < 0:
        return HttpError(431, "Request Header Fields Too Large") if len(data) >= MAX_REQUEST else None
    if end > MAX_REQUEST:
        return HttpError(431, "Request Header Fields Too Large")
    first = data[:end].split(b"\n", 1)[0].rstrip(b"\r")
    parts = first.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1].startswith(b"/"):
        return HttpError(400, "Bad Request")
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        return HttpError(400, "Bad Request")
    if not method.isalpha() or not method.isupper():
        return HttpError(400, "Bad Request")
    return HttpRequest(method, target.split("?", 1)[0])


def response(status: int, reason: str, body: bytes, content_type: str = "text/plain; charset=utf-8", head: bool = False) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "",
        "",
    ]
    return "\r\n".join(lines).encode("ascii") + (b"" if head else body)


# --- the counters ---------------------------------------------------------------------

Labels = tuple[str, ...]


@dataclass
class Counters:
    """Everything counted from observations, by metric name and label values (all plain, for the hand-off)."""

    counts: dict[str, dict[Labels, float]] = field(default_factory=dict)
    upgrade_durations: list[float] = field(default_factory=list)
    """Bucket counts of `UPGRADE_BUCKETS` and +Inf (cumulative only when shown)."""
    upgrade_duration_sum: float = 0.0
    upgrade_started_at: float | None = None
    """Monotonic time the running upgrade began (the clock is the machine's: it holds across exec)."""

    def add(self, name: str, labels: Labels = (), amount: float = 1.0) -> None:
        by_labels = self.counts.setdefault(name, {})
        by_labels[labels] = by_labels.get(labels, 0.0) + amount

    def value(self, name: str, labels: Labels = ()) -> float:
        return self.counts.get(name, {}).get(labels, 0.0)

    def record(self, observations: Iterable[Observation], now: float) -> None:
        for observation in observations:
            self._record(observation, now)

    def _record(self, observation: Observation, now: float) -> None:
        fields = observation.fields
        self.add("events", (observation.kind,))
        match observation.kind:
            case "spawned":
                self.add("spawns")
            case "spawn_failed":
                self.add("spawn_failures")
            case "acked":
                self.add("acks")
            case "exited":
                how, code = ("signal", fields.get("signal")) if fields.get("signal") is not None else ("exit", fields.get("exit_code"))
                self.add("deaths", (how, str(code), _flag(fields.get("before_ack"))))
            case "signaled":
                self.add("signals", (str(fields.get("signal")), str(fields.get("cause"))))
            case "health":
                self.add("health_actions", (str(fields.get("rule")),))
            case "command":
                self.add("commands", (str(fields.get("command")), str(fields.get("result"))))
            case "reexec":
                self.add("reexecs")
            case "drain" if fields.get("phase") != "draining":
                self.add("drains", (str(fields.get("phase")),))
            case "config_changed":
                self.add("config_changes", (str(fields.get("setting")),))
            case "upgrade_phase":
                self._upgrade(str(fields.get("phase")), str(fields.get("purpose")), now)
            case _:
                pass

    def _upgrade(self, phase: str, purpose: str, now: float) -> None:
        match phase:
            case "checking":
                self.add("upgrades_started", (purpose,))
                if purpose != "reload" and self.upgrade_started_at is None:
                    self.upgrade_started_at = now
            case "done":
                self.add("upgrades_done", (purpose,))
                if self.upgrade_started_at is not None:
                    self._duration(now - self.upgrade_started_at)
                    self.upgrade_started_at = None
            case "failed" | "rolled_back" | "aborted":
                self.add("upgrades_failed", (purpose, phase))
                if purpose != "reload":
                    self.upgrade_started_at = None
            case _:
                pass

    def _duration(self, seconds: float) -> None:
        if not self.upgrade_durations:
            self.upgrade_durations = [0.0] * (len(UPGRADE_BUCKETS) + 1)
        bucket = next((n for n, bound in enumerate(UPGRADE_BUCKETS) if seconds <= bound), len(UPGRADE_BUCKETS))
        self.upgrade_durations[bucket] += 1
        self.upgrade_duration_sum += seconds

    def to_plain(self) -> dict[str, object]:
        return {
            "counts": {name: [[list(labels), value] for labels, value in by.items()] for name, by in self.counts.items()},
            "upgrade_durations": list(self.upgrade_durations),
            "upgrade_duration_sum": self.upgrade_duration_sum,
            "upgrade_started_at": self.upgrade_started_at,
        }

    @classmethod
    def from_plain(cls, data: object) -> Counters:
        """The counters handed over; ValueError if malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("not a mapping")
        counts: dict[str, dict[Labels, float]] = {}
        raw = data.get("counts", {})
        if not isinstance(raw, Mapping):
            raise ValueError("counts: not a mapping")
        for name, items in raw.items():
            if not isinstance(name, str) or not isinstance(items, list):
                raise ValueError(f"counts of {name!r}")
            for item in items:
                labels, value = item
                if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or not _number(value):
                    raise ValueError(f"count {item!r}")
                counts.setdefault(name, {})[tuple(labels)] = float(value)
        durations, total, started = data.get("upgrade_durations", []), data.get("upgrade_duration_sum", 0.0), data.get("upgrade_started_at")
        if not isinstance(durations, list) or not all(_number(x) for x in durations) or not _number(total):
            raise ValueError("upgrade durations")
        if durations and len(durations) != len(UPGRADE_BUCKETS) + 1:
            raise ValueError("upgrade duration buckets")
        if started is not None and not _number(started):
            raise ValueError("upgrade_started_at")
        return cls(counts, [float(x) for x in durations], float(total), None if started is None else float(started))


def _flag(value: object) -> str:
    return "true" if value is True else "false"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- the server -------------------------------------------------------------------


@dataclass(eq=False)
class _Scraper:
    sock: socket.socket
    deadline: float
    received: bytearray = field(default_factory=bytearray)
    output: bytearray = field(default_factory=bytearray)
    answered: bool = False
    interest: int = 0


class MetricsServer:
    def __init__(
        self,
        sock: socket.socket,
        address: BindSpec,
        selector: selectors.BaseSelector,
        state_of: Callable[[], State],
        log: Logger,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = TIMEOUT,
    ) -> None:
        from einhorn.io import exposition  # prometheus_client: only for a master that serves metrics

        self.sock = sock
        self.address = address
        self.selector = selector
        self.state_of = state_of
        self.log = log
        self.counters = counters or Counters()
        self.clock = clock
        self.max_connections = max_connections
        self.timeout = timeout
        self.scrapers: set[_Scraper] = set()
        self._listening = False
        self._accept = AcceptBackoff("metrics connections")
        """Out of descriptors (EMFILE, ...): the listener is not selected for a while, as the command socket's."""
        self._exposition = exposition.Exposition(self)
        sock.setblocking(False)
        sock.set_inheritable(False)
        self._update_listening()

    # --- what the loop calls ------------------------------------------------------

    def record(self, observations: Sequence[Observation]) -> None:
        self.counters.record(observations, self.clock())

    def next_wakeup(self) -> float | None:
        times = [s.deadline for s in self.scrapers]
        if self._accept.resume_at is not None:
            times.append(self._accept.resume_at)
        return min(times, default=None)

    def tick(self) -> None:
        now = self.clock()
        for scraper in list(self.scrapers):
            if now >= scraper.deadline:
                self._close(scraper)
        self._update_listening()

    def descriptors(self) -> list[Descriptor]:
        return [Descriptor(LISTENER, self.sock.fileno(), {"address": self.address.text})]

    def answer_before_exec(self) -> None:
        """Answer the scrapers this image accepted, before the exec: their sockets do not cross it, and one
        closed with its request unread is reset (a failed scrape mid-upgrade). Connections not accepted yet
        wait in the listener's queue, which crosses. Bounded by EXEC_GRACE in all; who is not done is closed."""
        deadline = time.monotonic() + EXEC_GRACE
        for scraper in list(self.scrapers):
            if scraper.interest:
                self.selector.unregister(scraper.sock)
                scraper.interest = 0
            with contextlib.suppress(OSError):  # (a timeout too: the budget is spent)
                self._finish_in_time(scraper, deadline)
            self._close(scraper)

    def _finish_in_time(self, scraper: _Scraper, deadline: float) -> None:
        sock = scraper.sock
        while not scraper.answered:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(MAX_REQUEST)
            if not chunk:
                return
            self._take(scraper, chunk)
        while scraper.output:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            del scraper.output[: sock.send(scraper.output)]
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(MAX_REQUEST):  # to the client's end, so that closing cannot reset the answer
            sock.settimeout(max(deadline - time.monotonic(), 0.001))

    def close(self) -> None:
        for scraper in list(self.scrapers):
            self._close(scraper)
        if self._listening:
            self.selector.unregister(self.sock)
            self._listening = False
        self.sock.close()

    @property
    def where(self) -> str:
        if self.address.path is not None:
            return f"unix:{self.address.path}"
        return f"http://{listener_address(self.sock)}"

    # --- serving --------------------------------------------------------------------

    def _update_listening(self) -> None:
        want = self._accept.may_accept(self.clock()) and len(self.scrapers) < self.max_connections
        if want and not self._listening:
            self.selector.register(self.sock, selectors.EVENT_READ, self._on_acceptable)
        elif self._listening and not want:
            self.selector.unregister(self.sock)
        self._listening = want

    def _on_acceptable(self) -> list[Event]:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if len(self.scrapers) >= self.max_connections:
                break
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                break
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    message = self._accept.failed(self.clock(), error.strerror or str(error))
                    if message is not None:
                        self.log.error(message)
                    break
                raise
            message = self._accept.succeeded(self.clock())
            if message is not None:
                self.log.info(message)
            sock.setblocking(False)
            sock.set_inheritable(False)
            scraper = _Scraper(sock, self.clock() + self.timeout)
            self.scrapers.add(scraper)
            self._watch(scraper, selectors.EVENT_READ)
        self._update_listening()
        return []

    def _watch(self, scraper: _Scraper, interest: int) -> None:
        if interest == scraper.interest:
            return
        if not interest:
            self.selector.unregister(scraper.sock)
        elif not scraper.interest:
            self.selector.register(scraper.sock, interest, lambda: self._on_ready(scraper))
        else:
            self.selector.modify(scraper.sock, interest, lambda: self._on_ready(scraper))
        scraper.interest = interest

    def _on_ready(self, scraper: _Scraper) -> list[Event]:
        if scraper not in self.scrapers:
            return []
        if scraper.answered:
            if scraper.output:
                self._flush(scraper)
            else:
                self._drain(scraper)
            return []
        try:
            chunk = scraper.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            chunk = b""
        if not chunk:
            self._close(scraper)
            return []
        if self._take(scraper, chunk):
            self._flush(scraper)
        return []

    def _take(self, scraper: _Scraper, chunk: bytes) -> bool:
        """Add `chunk` to the request; once it is whole, the answer is queued (True)."""
        scraper.received += chunk
        parsed = parse_request(bytes(scraper.received))
        if parsed is None:
            return False
        scraper.answered = True
        scraper.received.clear()
        scraper.output += self._answer(parsed)
        return True

    def _flush(self, scraper: _Scraper) -> None:
        try:
            while scraper.output:
                del scraper.output[: scraper.sock.send(scraper.output)]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            scraper.output.clear()
        if scraper.output:
            self._watch(scraper, selectors.EVENT_WRITE)
            return
        # Closing with unread input would reset the connection, and the client could lose the
        # answer: say we are done, then read to the client's end (or the deadline) and close.
        try:
            scraper.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(scraper)
            return
        self._watch(scraper, selectors.EVENT_READ)

    def _drain(self, scraper: _Scraper) -> None:
        try:
            chunk = scraper.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(scraper)

    def _close(self, scraper: _Scraper) -> None:
        if scraper not in self.scrapers:
            return
        self.scrapers.discard(scraper)
        if scraper.interest:
            self.selector.unregister(scraper.sock)
        scraper.sock.close()
        self._update_listening()

    def _answer(self, request: HttpRequest | HttpError) -> bytes:
        if isinstance(request, HttpError):
            return response(request.status, request.reason, f"{request.reason}\n".encode())
        head = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return response(405, "Method Not Allowed", b"Method Not Allowed\n")
        state = self.state_of()
        match request.path:
            case "/metrics":
                try:
                    body, content_type = self._exposition.render(state)
                except Exception:  # noqa: BLE001 - a scrape must never take the master down
                    import traceback

                    self.log.error(f"Could not render the metrics:\n{traceback.format_exc()}")
                    return response(500, "Internal Server Error", b"Internal Server Error\n", head=head)
                if len(body) > MAX_RESPONSE:
                    return response(500, "Internal Server Error", b"Response too large\n", head=head)
                return response(200, "OK", body, content_type, head=head)
            case "/healthz":
                return response(200, "OK", b"ok\n", head=head)
            case "/readyz":
                serving, number = pool.serving_count(state), state.config.number
                text = f"{serving}/{number} ACKed workers serving\n".encode()
                return response(200 if serving >= number else 503, "OK" if serving >= number else "Service Unavailable", text, head=head)
            case _:
                return response(404, "Not Found", b"Not Found: try /metrics, /healthz or /readyz\n", head=head)


def master_rss() -> int | None:
    """The master's resident set size in bytes (/proc/self/statm), None where there is no /proc."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# --- start-up and re-exec -----------------------------------------------------------


def open_listener(address: BindSpec, handoff: Handoff, log: Logger) -> socket.socket:
    """The listener the old image handed over if it was at the same address, else a new one (SetupError if it cannot bind)."""
    sock: socket.socket | None = None
    for descriptor in handoff.claim(LISTENER):
        if sock is None and descriptor.data.get("address") == address.text:
            sock = socket.socket(fileno=descriptor.fd)
        else:
            os.close(descriptor.fd)
    if sock is None:
        sock = bind_listener(address, BACKLOG, log)
    sock.set_inheritable(False)  # not for the workers
    return sock


def serve(
    sock: socket.socket,
    address: BindSpec,
    selector: selectors.BaseSelector,
    state_of: Callable[[], State],
    log: Logger,
    handoff: Handoff,
) -> MetricsServer:
    """Serve metrics on `sock`, with the counters the old image handed over; both registered for the next re-exec."""
    counters = None
    handed = handoff.claim_data(COUNTERS)
    if handed is not None:
        try:
            counters = Counters.from_plain(handed)
        except (ValueError, TypeError) as error:
            log.error(f"Could not restore the metrics counters ({error}); they start again from 0")
    server = MetricsServer(sock, address, selector, state_of, log, counters)
    handoff.register(server.descriptors)
    handoff.register_data(COUNTERS, server.counters.to_plain)
    return server
