"""Soak and fault suite: real masters pushed for a while, or hurt on purpose, and checked after.

    .venv/bin/python bench/soak.py                 # everything, full sizes (about 10 minutes on 2 cores)
    .venv/bin/python bench/soak.py --short         # the short variants (about 2 minutes; the ordinary suite runs them)
    .venv/bin/python bench/soak.py --only upgrades fuzz    # a subset: upgrades fuzz connections faults pid1 flood

Prints one table (scenario, figure, verdict) and exits 1 if any check failed.
Not part of the default test run: tests/integration/test_soak.py runs `--short`.
See bench/README.md ("Soak and faults") for what each row means and the last
full run. Every process started here is killed by pid at the end (the test
harness's environment tag), and temp dirs are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

from harness import WORKER, cpu_seconds, rss_kib  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from run import Load  # noqa: E402

from tests.integration.harness import EINHORN, Harness, Master  # noqa: E402
from tests.integration.other_user import find_nobody, process_limit  # noqa: E402
from tests.integration.procfs import alive, become_child_subreaper, children_of, descriptor_limit, fds_of, proc_stat  # noqa: E402
from tests.integration.waiting import wait_until  # noqa: E402
from tests.integration.wire import Connection, escape, frame  # noqa: E402

WORKER_PYTHON = os.path.realpath(sys.executable)
SERVE = [WORKER_PYTHON, "-I", "-S", str(WORKER), "serve", "soak"]
"""A worker that ACKs (manual mode) and answers one line per connection on EINHORN_FD_0."""
MANUAL = ("-m", "manual", "-s", "0.05")


# --- the table ----------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    figure: str
    ok: bool | None
    """None: a figure only, no verdict (what another issue fixes, or what is expected to be so)."""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, scenario: str, figure: str, ok: bool | None) -> None:
        self.rows.append(Row(scenario, figure, ok))
        verdict = {True: "ok", False: "FAILED", None: "-"}[ok]
        print(f"  .. {scenario}: {figure} [{verdict}]", file=sys.stderr, flush=True)

    def render(self) -> str:
        header = ("scenario", "figure", "verdict")
        body = [(r.scenario, r.figure, {True: "ok", False: "FAILED", None: "-"}[r.ok]) for r in self.rows]
        widths = [max(len(row[c]) for row in [header, *body]) for c in range(3)]
        lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |" for row in [header, *body]]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)

    @property
    def failed(self) -> bool:
        return any(r.ok is False for r in self.rows)


def crashed(master: Master) -> str | None:
    """Why the master's log says it went wrong (a crash or a core bug), if it does."""
    log = master.log()
    for marker in ("Master crashed", "Bug while handling", "Traceback"):
        if marker in log:
            return marker
    return None


def master_status(master: Master) -> str:
    code = master.proc.poll()
    return "master alive" if code is None else f"master exited with {code}"


def quiescent_fds(master: Master, idle: Connection) -> int:
    """The master's descriptor count once every earlier close is handled (an answer on `idle` proves it)."""
    idle.send(frame({"command": "ehlo"}))
    idle.read_reply()
    return len(fds_of(master.pid))


def settled(master: Master, count: int) -> list[int] | None:
    """The pids once exactly `count` ACKed workers of the current version run, nothing is upgrading, and
    the master has no other child."""
    state = master.state()
    children = state["children"]
    assert isinstance(children, dict)
    version = state["version"]
    pids = sorted(int(p) for p, c in children.items() if c["version"] == version and c["acked"] and not c["signaled"])
    if len(pids) == count == len(children) and not state["upgrading"] and master.children() == pids:
        return pids
    return None


def percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "n/a"


# --- 1. consecutive upgrades under load ------------------------------------------------------------


UPGRADE_KINDS = (
    ("smooth", "upgrade", ()),
    ("fleet", "upgrade_fleet", ()),
    ("canary", "upgrade", ("--canary", "1", "--bake", "0.5", "--timeout", "60")),
)
"""(label, command, args) of the consecutive upgrades, taken in turn."""


def soak_upgrades(report: Report, count: int) -> None:
    """`count` smooth, `count` fleet and `count` canary upgrades, in turn, of one master with 4 serving workers."""
    with Harness() as h:
        master = h.start("-n", "4", *MANUAL, "-b", "127.0.0.1:0", program=SERVE, workers=4, timeout=30)
        port = master.bound_port()
        idle = master.connect(timeout=60)
        fresh_fds, fresh_rss = quiescent_fds(master, idle), rss_kib(master.pid)
        load = Load(port, threads=2, pause=0.005, max_per_thread=1_000_000)
        load.start()
        times: dict[str, list[float]] = {kind: [] for kind, _, _ in UPGRADE_KINDS}
        warm: tuple[int, int] | None = None
        lost = 0
        try:
            for n in range(len(UPGRADE_KINDS) * count):
                kind, command, args = UPGRADE_KINDS[n % len(UPGRADE_KINDS)]
                started = time.monotonic()
                final = master.command(command, *args, timeout=120)[-1]["message"]
                if final != "Upgrade done":
                    report.add(f"upgrades: {kind} #{n + 1}", f"ended with {final!r}", False)
                    return
                times[kind].append(time.monotonic() - started)
                wait_until(lambda: settled(master, 4), 60, "the upgraded pool")
                if n == len(UPGRADE_KINDS) - 1:  # one of each: the steady state
                    warm = (quiescent_fds(master, idle), rss_kib(master.pid))
        finally:
            load.stop()
        last_fds, last_rss = quiescent_fds(master, idle), rss_kib(master.pid)
        idle.close()
        lost = 4 - len(master.children())
        total = load.ok + sum(load.failures.values())
        for kind, _, _ in UPGRADE_KINDS:
            ts, label = times[kind], kind
            report.add(
                f"upgrades: {len(ts)} {label}, 4 workers",
                f"median {statistics.median(ts):.2f} s, max {max(ts):.2f} s per upgrade",
                None,
            )
        failures = ", ".join(f"{k}: {v}" for k, v in sorted(load.failures.items())) or "none"
        report.add("upgrades: client requests failed", f"{total - load.ok} of {total:,} ({failures})", total > 0 and load.ok == total)
        report.add("upgrades: workers lost", str(lost), lost == 0 and crashed(master) is None)
        assert warm is not None
        report.add(
            "upgrades: master fds fresh / after 3 / after all",
            f"{fresh_fds} / {warm[0]} / {last_fds}",
            last_fds == warm[0],
        )
        report.add(
            "upgrades: master RSS fresh / after 3 / after all",
            f"{fresh_rss / 1024:.1f} / {warm[1] / 1024:.1f} / {last_rss / 1024:.1f} MiB",
            last_rss - warm[1] < 2048,
        )


# --- 2. the command-socket fuzzer ------------------------------------------------------------------

HARMLESS = ("ehlo", "help", "state", "worker:ack", "worker:ping")
"""Commands the fuzzer may name: none of them changes the pool (an ACK of an ACKed worker is ignored)."""

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["1" * 5000, "-0", "1e400", "0x1f", "١٢٣", "NaN", "\ud800"])
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6), max_leaves=25)

YAML_ODDITIES = [
    "--- !ruby/object:Einhorn::Command {command: ehlo}",
    "!!python/object/apply:os.system ['true']",
    "{command: !!python/name:os.system ehlo}",
    "a: &a [x, x, x, x, x, x, x, x]%0Ab: &b [*a, *a, *a, *a, *a, *a, *a, *a]%0Ac: &c [*b, *b, *b, *b, *b, *b, *b, *b]%0Acommand: ehlo",
    "{command: ehlo, <<: {pid: 1}}",
    "--- {command: ehlo}%0A--- {command: state}",
    "command: ehlo%0Aargs:%0A  - x%0A  -  - y",
    "[" * 5000 + "]" * 5000,
    "{" * 3000 + "}" * 3000,
    "{command: ehlo, id: !!binary aGVsbG8=}",
    "{command: ehlo, id: 2001-01-01}",
    "%",
    "%0",
    "%zz%0A%25%",
    "\x00\x01{command: ehlo}",
    '{"command": "ehlo", "command": "state"}',
]


@st.composite
def request_line(draw: st.DrawFn, pids: Sequence[int]) -> bytes:
    """One request as a client library would send it, with odd values everywhere."""
    command = draw(
        st.sampled_from(HARMLESS)
        | st.text(max_size=12).map(lambda t: "x-" + t)
        | json_values.filter(lambda v: not isinstance(v, str))  # a mapping or a list once crashed the master
    )
    request: dict[str, object] = {"command": command}
    for key in ("args", "id", "pid", "request_id", "user", draw(st.text(max_size=8))):
        if draw(st.booleans()):
            request[key] = draw(json_values | st.sampled_from(list(pids)))
    text = json.dumps(request, ensure_ascii=draw(st.booleans()))
    return escape(text).encode("utf-8", "surrogatepass") + b"\n"


def line_of(data: bytes) -> bytes:
    return data.replace(b"\n", b" ") + b"\n"


@st.composite
def message(draw: st.DrawFn, pids: Sequence[int], big: Sequence[int]) -> bytes:
    kind = draw(st.sampled_from(["bytes", "text", "request", "request", "yaml", "big", "crlf"]))
    if kind == "bytes":
        return line_of(draw(st.binary(max_size=300)))
    if kind == "text":
        return line_of(draw(st.text(max_size=200)).encode("utf-8", "surrogatepass"))
    if kind == "yaml":
        return line_of(draw(st.sampled_from(YAML_ODDITIES)).encode("utf-8", "surrogatepass"))
    if kind == "crlf":
        return draw(request_line(pids))[:-1] + b"\r\n"
    if kind == "big":
        size = draw(st.sampled_from(list(big)))
        unit = draw(st.sampled_from([b"a", b"[", b"{command: ehlo, x: ", b"\xff", b"%0A"]))
        return line_of((unit * (size // len(unit) + 1))[:size])
    return draw(request_line(pids))


@dataclass
class Sent:
    lines: int = 0
    bytes: int = 0
    dropped: int = 0
    """Connections the master closed on us mid-batch (a line over the limit): the batch goes on on a new one."""


def send_batch(master: Master, chunks: Sequence[bytes], sent: Sent) -> None:
    """Write `chunks` in order, reading (and discarding) replies meanwhile; reconnect if the master drops us."""
    conn = _Drained(master.socket_path)
    try:
        for chunk in chunks:
            try:
                conn.sock.sendall(chunk)
            except OSError:
                sent.dropped += 1
                conn.close()
                conn = _Drained(master.socket_path)
                continue
            sent.lines += chunk.count(b"\n")
            sent.bytes += len(chunk)
    finally:
        conn.close()


class _Drained:
    """A connection whose replies a thread reads and throws away, so that nothing piles up on either side."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.sock.recv(1 << 16):
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self.reader.join(timeout=30)
        self.sock.close()


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    """`data` split at `points` (mod its length): the framing a slow or chunking client produces."""
    marks = sorted({p % len(data) for p in points} - {0}) if data else []
    return [data[a:b] for a, b in zip([0, *marks], [*marks, len(data)], strict=True)]


def mutated(rng: random.Random, drawn: Sequence[bytes]) -> bytes:
    """One more line derived from the drawn ones: cut, flipped, spliced, doubled or split in two."""
    line = rng.choice(drawn).rstrip(b"\n")
    how = rng.randrange(5)
    if how == 0 and line:
        line = line[: rng.randrange(len(line))]
    elif how == 1 and line:
        data = bytearray(line)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        line = bytes(data)
    elif how == 2:
        other = rng.choice(drawn).rstrip(b"\n")
        line = line[: rng.randrange(len(line) + 1)] + other[rng.randrange(len(other) + 1) :]
    elif how == 3 and line:
        at = rng.randrange(len(line))
        line = line[:at] + line[at : at + rng.randrange(1, 64)] * rng.randrange(2, 5) + line[at:]
    else:
        at = rng.randrange(len(line) + 1)
        line = line[:at] + rng.choice([b"\n", b"%0A", b"%25", b"%", b"\r\n"]) + line[at:]
    return line.replace(b"\n", b" ") + b"\n" if how != 4 else line + b"\n"


def soak_fuzz(report: Report, lines_wanted: int, big: Sequence[int], huge_lines: int) -> None:
    """Hypothesis draws structures, byte strings and framings; each example's lines are sent with as many
    cheap mutations of them (cut, flipped, spliced, split) again, in one batch, and the master is checked."""
    drawn_per_batch, batch = 20, 250
    with Harness() as h:
        master = h.start("-n", "2", "-m", "0.1", program=["sleep", "3600"], workers=2, timeout=30)
        pids = master.wait_workers(2)
        sent = Sent()
        problems: list[str] = []
        batches = 0

        @settings(
            max_examples=(lines_wanted + batch - 1) // batch,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(
            messages=st.lists(message(pids, big), min_size=drawn_per_batch, max_size=drawn_per_batch),
            splits=st.lists(st.lists(st.integers(0, 1 << 30), max_size=6), min_size=drawn_per_batch, max_size=drawn_per_batch),
            byte_by_byte=st.integers(0, drawn_per_batch - 1),
            seed=st.integers(0, 1 << 32),
        )
        def one_batch(messages: list[bytes], splits: list[list[int]], byte_by_byte: int, seed: int) -> None:
            nonlocal batches
            rng = random.Random(seed)
            chunks: list[bytes] = []
            for n, (data, points) in enumerate(zip(messages, splits, strict=True)):
                if n == byte_by_byte and len(data) < 400:
                    chunks += [data[i : i + 1] for i in range(len(data))]
                else:
                    chunks += cut(data, points)
            small = [m for m in messages if len(m) < 4096] or [b"{}\n"]
            extra = [mutated(rng, small) for _ in range(batch - drawn_per_batch)]
            chunks += [b"".join(extra[i : i + 10]) for i in range(0, len(extra), 10)]
            try:
                send_batch(master, chunks, sent)
            except OSError as error:
                problems.append(f"{type(error).__name__} sending batch {batches + 1}: {error}; {master_status(master)}")
                raise AssertionError(problems[-1]) from None
            batches += 1
            if master.proc.poll() is not None:
                problems.append(f"master exited with {master.proc.returncode} after batch {batches}")
            elif not str(master.message("ehlo")).startswith("Welcome"):
                problems.append(f"no ehlo after batch {batches}")
            elif master.children() != pids:
                problems.append(f"workers {master.children()} instead of {pids} after batch {batches}")
            if problems:
                raise AssertionError(problems[-1])

        started = time.monotonic()
        try:
            one_batch()
        except AssertionError:
            pass
        for n in range(huge_lines):  # 10 MB lines, whole or in 4 KiB writes: too big to draw
            if problems:
                break
            line = b"{command: ehlo, x: " + b"9" * (10 << 20) + b"}\n"
            try:
                send_batch(master, [line] if n % 2 else [line[i : i + 4096] for i in range(0, len(line), 4096)], sent)
            except OSError as error:
                problems.append(f"{type(error).__name__} sending 10 MB line #{n + 1}: {error}; {master_status(master)}")
                break
            if master.proc.poll() is not None or not str(master.message("ehlo")).startswith("Welcome") or master.children() != pids:
                problems.append(f"master or workers changed after a 10 MB line (#{n + 1})")
        elapsed = time.monotonic() - started
        bug = crashed(master)
        if problems or bug:
            print(f"--- the fuzzed master's log (end) ---\n{master.log()[-8000:]}", file=sys.stderr, flush=True)
        report.add(
            "fuzz: command socket (hypothesis)",
            f"{sent.lines:,} lines, {sent.bytes / 1e6:.1f} MB in {batches} batches and {huge_lines} 10 MB lines, {elapsed:.0f} s; "
            f"{sent.dropped} connections dropped by the master (over-long lines)",
            sent.lines >= lines_wanted and not problems,
        )
        report.add(
            "fuzz: after every batch: alive, ehlo, same 2 workers",
            problems[0] if problems else f"yes ({batches} checks)",
            not problems,
        )
        report.add("fuzz: no crash or core bug in the log", bug or "none", bug is None)


# --- 3. many connections, slow readers, the flood --------------------------------------------------


def ehlo_times(conn: Connection, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.monotonic()
        conn.send(frame({"command": "ehlo"}))
        conn.read_reply()
        times.append(time.monotonic() - started)
    return times


def p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def soak_connections(report: Report, idle_count: int, slow_count: int) -> None:
    with Harness() as h:
        master = h.start("-n", "2", "-m", "0.1", program=["sleep", "3600"], workers=2, timeout=30)
        pids = master.wait_workers(2)
        probe = master.connect()
        before = quiescent_fds(master, probe)
        held: list[socket.socket] = []
        refused = 0
        try:
            for _ in range(idle_count):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(master.socket_path)  # blocking: waits for room in the backlog (EAGAIN otherwise)
                held.append(sock)

            def all_answered() -> bool:
                """Every connection is either held by the master or refused (past its connection cap)."""
                nonlocal refused, held
                poller = select.poll()
                for sock in held:
                    poller.register(sock, select.POLLIN)
                ready = {fd for fd, _ in poller.poll(0)}
                still = []
                for sock in held:
                    if sock.fileno() in ready:
                        refused += b"Too many connections" in sock.recv(4096)
                        sock.close()
                    else:
                        still.append(sock)
                held = still
                return len(fds_of(master.pid)) - before == len(held)

            wait_until(all_answered, 30, f"{idle_count} connections accepted or refused")
            times = ehlo_times(probe, 200)
        finally:
            for sock in held:
                sock.close()
        wait_until(lambda: quiescent_fds(master, probe) == before, 30, "the connections closed")
        report.add(
            f"connections: {idle_count} idle at once",
            f"{len(held)} held, {refused} refused with 'Too many connections' (the cap); ehlo on an earlier one: median "
            f"{statistics.median(times) * 1e3:.2f} ms, p99 {p99(times) * 1e3:.2f} ms; fds back to {before}",
            master.proc.poll() is None and master.children() == pids and len(held) + refused == idle_count,
        )

        # Slow readers: each asks for `state` 200 times and reads nothing for a while.
        rss_before = rss_kib(master.pid)
        slow: list[socket.socket] = []
        peak = rss_before
        try:
            request = frame({"command": "state"}) * 200
            for _ in range(slow_count):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(master.socket_path)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.send(request)
                slow.append(sock)
            times = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                times += ehlo_times(probe, 10)
                peak = max(peak, rss_kib(master.pid))
        finally:
            for sock in slow:
                sock.close()
        report.add(
            f"slow readers: {slow_count} clients leave 200 `state` replies unread",
            f"ehlo p99 {p99(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms; master RSS {rss_before / 1024:.1f} -> peak "
            f"{peak / 1024:.1f} MiB (bounding output is the control-plane part of issue 16)",
            None,
        )
        report.add("connections: master alive, same workers", "yes" if master.children() == pids else "no", master.children() == pids)
        probe.close()


def soak_flood(report: Report, short: bool) -> None:
    """The control-plane part of issue 16 adds bench/flood.py; it is run here as one row when present."""
    flood = BENCH / "flood.py"
    if not flood.exists():
        report.add("flood: one client writing without reading", "bench/flood.py not in this tree (the control-plane branch adds it)", None)
        return
    argv = [sys.executable, str(flood), *(["--seconds", "3"] if short else [])]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    report.add("flood: bench/flood.py" + (" --seconds 3" if short else ""), f"exit {result.returncode}: {last}", result.returncode == 0)


# --- 4. faults --------------------------------------------------------------------------------------


def cpu_share(pid: int, seconds: float) -> float:
    """The share of one CPU `pid` used over the next `seconds` (a measurement window, not a wait on a condition)."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def fault_descriptor_limit(report: Report) -> None:
    """RLIMIT_NOFILE reached with clients waiting, an upgrade tried meanwhile, then the limit raised."""
    with Harness() as h:
        master = h.start("-n", "2", *MANUAL, "-b", "127.0.0.1:0", program=SERVE, workers=2, timeout=30)
        pids = master.wait_workers(2)
        held = [master.connect(timeout=30) for _ in range(4)]
        waiting: list[Connection] = []
        try:
            # Each held connection answers: the master has accepted it. (Counting the master's descriptors
            # instead raced with a connection of the harness's own that the master had not closed yet.)
            for conn in held:
                conn.send(frame({"command": "ehlo"}))
                assert str(conn.read_reply()["message"]).startswith("Welcome")
            with descriptor_limit(master.pid, max(fds_of(master.pid)) + 1):
                waiting = [master.connect(timeout=30) for _ in range(20)]  # queued in the backlog, not accepted
                marker = len(master.lines)
                share = cpu_share(master.pid, 3.0)
                spam = sum(1 for _, line in master.lines[marker:] if "Cannot accept" in line)
                held[0].send(frame({"command": "upgrade", "id": "u"}))
                final = str(held[0].read_until_last()[-1]["message"])
                held[1].send(frame({"command": "ehlo"}))
                answered = str(held[1].read_reply()["message"]).startswith("Welcome")
            report.add(
                "RLIMIT_NOFILE reached: master CPU, log lines about accept in 3 s",
                f"{share * 100:.0f} % of a CPU, {spam:,} lines (the EMFILE backoff is the control-plane part of issue 16)",
                None,
            )
            report.add(
                "RLIMIT_NOFILE reached: upgrade, ehlo on a held connection",
                f"upgrade: ...{final[-60:]}; ehlo answered: {answered}",
                final.startswith("ERROR: Can not initiate einhorn master upgrade safely") and answered and master.children() == pids,
            )
            for conn in waiting:
                conn.send(frame({"command": "ehlo"}))
            served = sum(1 for conn in waiting if str(conn.read_reply()["message"]).startswith("Welcome"))
            upgraded = master.command("upgrade", timeout=60)[-1]["message"] == "Upgrade done"
            report.add(
                "RLIMIT_NOFILE raised again: queued clients served, upgrade",
                f"{served} of {len(waiting)} served; upgrade done: {upgraded}",
                served == len(waiting) and upgraded and crashed(master) is None,
            )
        finally:
            for conn in [*held, *waiting]:
                conn.close()


def fault_process_limit(report: Report) -> None:
    """`ulimit -u` reached by an unprivileged master (nobody): no fork at all, then the limit raised."""
    scratch = Path(tempfile.mkdtemp(prefix="einhorn-soak-nobody-", dir="/tmp" if os.path.isdir("/tmp") else None))
    try:
        scratch.chmod(0o755)
        user = find_nobody(scratch)
        if isinstance(user, str):
            report.add("ulimit -u reached (as nobody)", f"skipped: {user}", None)
            return
        with Harness() as h:
            master = h.start("-n", "2", "-m", "0.1", einhorn=user.einhorn(), env=user.environment({}), shared=True, workers=2, timeout=30)
            pids = master.wait_workers(2)
            process_limit(user, master.pid, 1)
            final = str(master.command("upgrade", timeout=30)[-1]["message"])
            os.kill(pids[0], signal.SIGKILL)
            master.wait_log(r"Could not spawn worker")
            share = cpu_share(master.pid, 3.0)
            attempts = len(master.timed_lines(r"Could not spawn worker"))
            report.add(
                "ulimit -u reached (as nobody): upgrade, respawn",
                f"upgrade: ...{final[-70:]}; {attempts} spawn attempts in ~3 s, master at {share * 100:.0f} % CPU",
                # the state passer's fork when einhorn is unchanged (no check), the check's otherwise
                re.search("could not fork the (state passer|upgrade check)", final) is not None and master.proc.poll() is None and share < 0.2,
            )
            process_limit(user, master.pid, -1)
            recovered = wait_until(lambda: settled(master, 2), 30, "the pool refilled")
            upgraded = master.command("upgrade", timeout=60)[-1]["message"] == "Upgrade done"
            report.add(
                "ulimit -u raised again: pool refilled, upgrade",
                f"workers {len(recovered)}; upgrade done: {upgraded}",
                upgraded and crashed(master) is None,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fault_sigstop(report: Report) -> None:
    """SIGSTOP/SIGCONT of the master, three times, while it runs a smooth upgrade under load."""
    with Harness() as h:
        master = h.start("-n", "4", *MANUAL, "-b", "127.0.0.1:0", program=SERVE, workers=4, timeout=30)
        load = Load(master.bound_port(), threads=2, pause=0.005, max_per_thread=100_000)
        load.start()
        try:
            with master.connect(timeout=60) as conn:
                started = time.monotonic()
                conn.send(frame({"command": "upgrade", "id": "u"}))
                conn.read_reply()
                for _ in range(3):
                    master.send_signal(signal.SIGSTOP)
                    time.sleep(1.0)  # the fault: the master frozen for a second
                    master.send_signal(signal.SIGCONT)
                    time.sleep(0.2)
                final = conn.read_until_last()[-1]["message"]
                elapsed = time.monotonic() - started
            pool = wait_until(lambda: settled(master, 4), 30, "the upgraded pool")
        finally:
            load.stop()
        total = load.ok + sum(load.failures.values())
        report.add(
            "SIGSTOP/SIGCONT x3 during a smooth upgrade",
            f"{final}, {elapsed:.1f} s; {total - load.ok} of {total:,} requests failed; {len(pool)} workers",
            final == "Upgrade done" and load.ok == total and crashed(master) is None,
        )


def fault_sigkill(report: Report, workers: int) -> None:
    """SIGKILL of the master, with and without -k: how many workers are gone within 1 s."""
    for kill_children in (False, True):
        with Harness() as h:
            options = ["-n", str(workers), "-m", "0.1", *(["-k"] if kill_children else [])]
            master = h.start(*options, program=["sleep", "3600"], workers=workers, timeout=60)
            pids = master.wait_workers(workers, timeout=60)
            os.kill(master.pid, signal.SIGKILL)
            master.proc.wait()
            killed_at = time.monotonic()
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not any(alive(p) for p in pids), 1.0, "the workers gone")  # noqa: B023 - called at once
            gone = sum(1 for p in pids if not alive(p))
            within = time.monotonic() - killed_at <= 1.0 + 0.05
            label = "with -k" if kill_children else "without -k"
            report.add(
                f"SIGKILL of the master {label}: workers gone within 1 s",
                f"{gone} of {workers} ({percent(gone, workers)})" + ("" if kill_children else "; they keep serving, as documented"),
                (gone == workers and within) if kill_children else None,
            )


MISBEHAVING = r"""
import json, os, signal, socket, sys
what = sys.argv[1]
listener = socket.socket(fileno=int(os.environ["EINHORN_FD_0"]))
def misbehave(signum, frame):
    if what == "close":
        listener.close()
    else:
        listener.shutdown(socket.SHUT_RDWR)
signal.signal(signal.SIGUSR1, misbehave)
ack = socket.socket(socket.AF_UNIX)
ack.connect(os.environ["EINHORN_SOCK_PATH"])
ack.sendall((json.dumps({"command": "worker:ack", "pid": os.getpid()}) + "\n").encode())
ack.close()
listener.settimeout(0.2)
while True:
    try:
        conn, _ = listener.accept()
    except (TimeoutError, BlockingIOError, InterruptedError):
        continue
    except OSError:
        signal.pause()
        continue
    with conn:
        conn.sendall(b"hello\n")
"""
"""A serving worker that closes, or shuts down, its copy of the shared listener on SIGUSR1."""


def fault_listener(report: Report) -> None:
    for what in ("close", "shutdown"):
        with Harness() as h:
            program = [WORKER_PYTHON, "-c", MISBEHAVING, what]
            master = h.start("-n", "2", *MANUAL, "-b", "127.0.0.1:0", program=program, workers=2, timeout=30)
            port = master.bound_port()
            pids = master.wait_workers(2)
            load = Load(port, threads=1, pause=0.01, max_per_thread=100_000)
            load.start()
            os.kill(pids[0], signal.SIGUSR1)
            signaled = time.monotonic()
            if what == "close":
                time.sleep(3.0)  # a window in which clients keep coming
                load.stop()
                total = load.ok + sum(load.failures.values())
                shown = json.dumps(master.state()["listeners"])
                report.add(
                    "a worker closes its copy of the listener",
                    f"{total - load.ok} of {total:,} requests failed in the next 3 s; state: {shown}",
                    load.ok == total and '"accepting": true' in shown,
                )
                continue
            try:
                master.wait_log(r"WARNING: Listener 0 .* stopped accepting")
                detected = time.monotonic() - signaled
            except AssertionError:
                detected = None
            load.stop()
            shown = json.dumps(master.state()["listeners"])
            warnings = len(master.timed_lines(r"stopped accepting"))
            figure = "not detected"
            if detected is not None:
                figure = f"warned after {detected:.1f} s ({warnings} line); state: {shown}; service down until restarted"
            report.add(
                "a worker shuts the listener down: detected, warned, in state",
                figure,
                detected is not None and detected < 5 and warnings == 1 and '"accepting": false' in shown,
            )


GARBAGE_WRITER = r"""
import json, os, random, signal, socket
fd = int(os.environ["EINHORN_SOCK_FD"])
channel = socket.socket(fileno=fd)
channel.sendall((json.dumps({"command": "worker:ack", "pid": os.getpid()}) + "\n").encode())
rng = random.Random(os.getpid())
try:
    for n in range(2000):
        kind = n % 5
        if kind == 0:
            channel.sendall(bytes(rng.getrandbits(8) for _ in range(200)) + b"\n")
        elif kind == 1:
            channel.sendall(b"{command: ehlo, pid: " + b"9" * 5000 + b"}\n")
        elif kind == 2:
            channel.sendall(b"!!python/object/apply:os.system ['echo pwned']\n")
        elif kind == 3:
            channel.sendall(b"{not: [closed\n")
        else:
            channel.sendall(b"x" * 70000 + b"\n")
except OSError:
    pass
signal.pause()
"""
"""A -g worker that ACKs on EINHORN_SOCK_FD, then writes garbage to it until the master drops it."""


def fault_sock_fd_garbage(report: Report) -> None:
    with Harness() as h:
        program = [WORKER_PYTHON, "-c", GARBAGE_WRITER]
        master = h.start("-n", "3", "-g", *MANUAL, program=program, workers=3, timeout=30)
        pids = master.wait_workers(3)
        time.sleep(2.0)  # let the garbage flow
        ok = master.proc.poll() is None and str(master.message("ehlo")).startswith("Welcome") and master.wait_workers(3) == pids
        report.add("workers write garbage to EINHORN_SOCK_FD (-g)", f"master alive, same 3 ACKed workers: {ok}; bug in log: {crashed(master)}", ok and crashed(master) is None)


ACK_FOR_A_SIBLING = r"""
import json, os, signal, socket, time
master = int(os.environ["EINHORN_MASTER_PID"])
if os.environ["EINHORN_CHILD_INDEX"] == "0":
    me = os.getpid()
    for _ in range(200):
        with open(f"/proc/{master}/task/{master}/children") as f:
            others = [int(p) for p in f.read().split() if int(p) != me]
        if others:
            break
        time.sleep(0.05)
    for pid in others:
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(os.environ["EINHORN_SOCK_PATH"])
        conn.sendall((json.dumps({"command": "worker:ack", "pid": pid}) + "\n").encode())
        conn.close()
while True:
    signal.pause()
"""
"""Worker 0 ACKs for its siblings (never for itself); they never ACK."""


def fault_ack_for_another(report: Report) -> None:
    with Harness() as h:
        master = h.start("-n", "2", "-m", "manual", program=[WORKER_PYTHON, "-c", ACK_FOR_A_SIBLING], workers=2, acked=False, timeout=30)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: sum(1 for w in master.workers().values() if w["acked"]) >= 1, 10, "the sibling ACK")
        acked = sorted(pid for pid, w in master.workers().items() if w["acked"])
        warned = bool(master.timed_lines(r"(?i)warn.*(ack|pid)"))
        report.add(
            "a worker ACKs for another pid",
            f"ACKed by someone else: {acked}; warned: {warned} (the peer check is the control-plane part of issue 16)",
            None if master.proc.poll() is None else False,
        )


def _sighups_under_load(report: Report, scenario: str, send: Callable[[int], tuple[int, str]], complete: Callable[[int], bool]) -> None:
    """A master with 2 serving workers under load gets SIGHUPs from `send(master_pid)` (-> how many, what to
    say); then the pool must settle with no failed request and the same fds."""
    with Harness() as h:
        master = h.start("-n", "2", *MANUAL, "-b", "127.0.0.1:0", program=SERVE, workers=2, timeout=30)
        idle = master.connect(timeout=60)
        fds_before = quiescent_fds(master, idle)
        load = Load(master.bound_port(), threads=2, pause=0.005, max_per_thread=100_000)
        load.start()
        try:
            sent, how = send(master.pid)
            stopped = time.monotonic()
            pool = wait_until(lambda: settled(master, 2), 120, "the pool after the SIGHUPs")
        finally:
            load.stop()
        version = master.state()["version"]
        fds_after = quiescent_fds(master, idle)
        idle.close()
        total = load.ok + sum(load.failures.values())
        report.add(
            scenario,
            f"{how}; settled {time.monotonic() - stopped:.1f} s after the last at version {version}, {len(pool)} workers; "
            f"fds {fds_before} -> {fds_after}; {total - load.ok} of {total:,} requests failed",
            complete(sent) and load.ok == total and fds_after == fds_before and crashed(master) is None,
        )


def fault_sighup_burst(report: Report, count: int) -> None:
    def send(pid: int) -> tuple[int, str]:
        started, sent = time.monotonic(), 0
        for _ in range(count):
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                break
            sent += 1
        return sent, f"{sent:,} sent in {time.monotonic() - started:.2f} s"

    _sighups_under_load(report, f"{count:,} SIGHUPs in a burst", send, lambda sent: sent == count)


def fault_sighup_storm(report: Report, seconds: float) -> None:
    """A SIGHUP every 2 ms for a while: many land while the master checks, execs or restores."""

    def send(pid: int) -> tuple[int, str]:
        sent, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            os.kill(pid, signal.SIGHUP)
            sent += 1
            time.sleep(0.002)
        return sent, f"{sent:,} sent"

    _sighups_under_load(report, f"a SIGHUP every 2 ms for {seconds:.0f} s", send, lambda sent: sent > 0)


ORPHANER = "while :; do (sleep 0.2 &); sleep 0.02; done"
"""A worker that keeps leaving orphans behind (each subshell exits at once; its sleep is re-parented)."""


def zombies_of(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = proc_stat(int(name))
            if stat is not None and stat.ppid == pid and stat.state == "Z":
                found.append(stat.pid)
    return found


def fault_pid1(report: Report, seconds: float) -> None:
    if shutil.which("unshare") is None:
        report.add("PID 1 of a new PID namespace", "skipped: unshare (util-linux) is not installed", None)
        return
    probe = subprocess.run(["unshare", "--fork", "--pid", "--mount-proc", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        report.add("PID 1 of a new PID namespace", f"skipped: unshare fails here: {probe.stderr.strip()}", None)
        return
    with Harness() as h:
        wrap = ["unshare", "--fork", "--pid", "--mount-proc", "--kill-child", *EINHORN]
        master = h.start("-v", "-n", "2", "-m", "0.1", einhorn=wrap, program=["sh", "-c", ORPHANER], timeout=30)
        (einhorn,) = children_of(master.pid)  # unshare's child: PID 1 in the namespace (pids in `state` are the namespace's)
        wait_until(lambda: sum(1 for w in master.workers().values() if w["acked"]) == 2, 10, "2 ACKed workers")
        assert master.state()["master_pid"] == 1
        time.sleep(seconds)  # the orphans pile up meanwhile: this is the soak
        reaped = len(master.timed_lines(r"Reaped (?:unknown|orphaned) process"))  # as PID 1: orphans, at DEBUG
        try:
            wait_until(lambda: not zombies_of(einhorn), 2.0, "no zombie under PID 1")
            left = 0
        except AssertionError:
            left = len(zombies_of(einhorn))
        ok = master.message("ehlo").startswith("Welcome") and left == 0 and crashed(master) is None
        report.add(
            "PID 1 of a new PID namespace, workers orphaning children",
            f"{reaped:,} orphans reaped in {seconds:.0f} s; zombies left: {left}",
            ok and reaped > 0,
        )


# --- main ----------------------------------------------------------------------------------------------

SCENARIOS = ("upgrades", "fuzz", "connections", "faults", "pid1", "flood")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the short variants (for CI)")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    args = parser.parse_args(argv)
    short: bool = args.short
    if not sys.platform.startswith("linux"):
        print("bench/soak.py reads /proc and uses Linux-only limits: Linux only", file=sys.stderr)
        return 2
    become_child_subreaper()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))  # ours and the masters': 1,000 clients
    started = time.monotonic()
    load = os.getloadavg()[0]
    print(
        f"# bench/soak.py{' --short' if short else ''} on {platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, "
        f"Linux {platform.release()}, Python {platform.python_version()}, load {load:.2f}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}",
        flush=True,
    )
    report = Report()
    steps: dict[str, Callable[[], None]] = {
        "upgrades": lambda: soak_upgrades(report, 5 if short else 100),
        "fuzz": lambda: soak_fuzz(report, 5_000 if short else 100_000, (70_000,) if short else (70_000, 70_000, 1 << 20), 2 if short else 20),
        "connections": lambda: soak_connections(report, 200 if short else 1000, 10 if short else 50),
        "faults": lambda: run_faults(report, short),
        "pid1": lambda: fault_pid1(report, 2.0 if short else 10.0),
        "flood": lambda: soak_flood(report, short),
    }
    for name in args.only:
        try:
            steps[name]()
        except Exception as error:  # noqa: BLE001 - one broken scenario is a failed row, the others still run
            report.add(name, failure(error), False)
    print(report.render())
    print(f"# {time.monotonic() - started:.0f} s; load {os.getloadavg()[0]:.2f} at the end", flush=True)
    return 1 if report.failed else 0


def failure(error: Exception) -> str:
    """What went wrong and where (the innermost frame in bench/ or tests/)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "/bench/" in f.filename or "/tests/" in f.filename]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{where}: {str(error)[:300]}"


def run_faults(report: Report, short: bool) -> None:
    for fault in (
        fault_descriptor_limit,
        fault_process_limit,
        fault_sigstop,
        lambda r: fault_sigkill(r, 20 if short else 100),
        fault_listener,
        fault_sock_fd_garbage,
        fault_ack_for_another,
        lambda r: fault_sighup_burst(r, 1_000 if short else 10_000),
        lambda r: fault_sighup_storm(r, 2.0 if short else 10.0),
    ):
        try:
            fault(report)
        except Exception as error:  # noqa: BLE001 - see main
            report.add(getattr(fault, "__name__", "fault"), failure(error), False)


if __name__ == "__main__":
    sys.exit(main())
