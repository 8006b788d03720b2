"""Einhorn master benchmarks: cold start, upgrades, command latency, idle resources, respawn, the pool (issue 14).

    .venv/bin/python bench/run.py [--impl python|ruby|both] [--quick] [--only NAME ...]
                                  [--ruby-einhorn /tmp/einhorn-ruby/bin/einhorn] [--einhorn PATH]

Prints one table per benchmark. Not part of the test suite. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import CommandClient, Impl, Master, cpu_seconds, decode, python_impl, rss_kib, ruby_impl  # noqa: E402

# --- results ----------------------------------------------------------------


@dataclass
class Table:
    title: str
    note: str = ""
    rows: dict[str, dict[str, str]] = field(default_factory=dict)
    numeric: dict[str, dict[str, float]] = field(default_factory=dict)
    lower_is_better: dict[str, bool] = field(default_factory=dict)
    ours_over_theirs: bool = False
    """The ratio column as python/ruby (the issue's way: below 1 means we are faster) rather than ruby/python."""

    def put(self, metric: str, impl: str, value: float | None, fmt: str = "{:.3f}", text: str | None = None, lower_better: bool = True) -> None:
        self.rows.setdefault(metric, {})[impl] = text if text is not None else ("n/a" if value is None else fmt.format(value))
        if value is not None:
            self.numeric.setdefault(metric, {})[impl] = value
        self.lower_is_better[metric] = lower_better

    def render(self, impls: Sequence[str]) -> str:
        header = ["metric", *impls]
        both = "python" in impls and "ruby" in impls
        if both:
            header.append("python/ruby" if self.ours_over_theirs else "ruby/python")
        body = []
        for metric, values in self.rows.items():
            row: list[str] = [metric, *(values.get(i, "-") for i in impls)]
            if both:
                nums = self.numeric.get(metric, {})
                p, r = nums.get("python"), nums.get("ruby")
                ratio = ""
                if p and r and self.lower_is_better[metric]:
                    ratio = f"{p / r:.2f}" if self.ours_over_theirs else f"{r / p:.2f}x"
                row.append(ratio)
            body.append(row)
        widths = [max(len(str(r[c])) for r in [header, *body]) for c in range(len(header))]

        def line(r: Sequence[str]) -> str:
            return "| " + " | ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths, strict=True))) + " |"

        out = [f"\n### {self.title}", *([self.note] if self.note else []), line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(r) for r in body]
        return "\n".join(out)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def p99(xs: Sequence[float]) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def log(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


# --- 1. cold start ----------------------------------------------------------


def bench_cold_start(impls: Sequence[Impl], quick: bool) -> Table:
    sizes = (1, 8) if quick else (1, 8, 32)
    repeat = 1 if quick else 3
    table = Table("1. Cold start: exec of the master -> all N workers ACKed", f"seconds, median of {repeat}; master CPU = its utime+stime at that moment; N Launched logged = when the master has logged all N forks")
    for n in sizes:
        times: dict[str, list[float]] = {i.name: [] for i in impls}
        cpu: dict[str, list[float]] = {i.name: [] for i in impls}
        first: dict[str, list[float]] = {i.name: [] for i in impls}
        for _ in range(repeat):
            for impl in impls:
                with Master(impl, n) as master:
                    acked = master.wait_all_acked()
                    cpu[impl.name].append(cpu_seconds(master.pid))
                    times[impl.name].append(acked - master.t_exec)
                    first[impl.name].append(master.launched_all() - master.t_exec)
                log(f"cold start {impl.name} N={n}: {times[impl.name][-1]:.3f}s")
        for impl in impls:
            table.put(f"N={n} wall (s)", impl.name, median(times[impl.name]))
            table.put(f"N={n} exec -> N `Launched` logged (s)", impl.name, median(first[impl.name]))
            table.put(f"N={n} master CPU (s)", impl.name, median(cpu[impl.name]))
    return table


# --- 2. upgrades under load -------------------------------------------------


class Load:
    """Bounded loopback load: `threads` clients doing connect / read one line / close, paced."""

    def __init__(self, port: int, threads: int = 2, pause: float = 0.002, max_per_thread: int = 50_000) -> None:
        self.port = port
        self.pause = pause
        self.max_per_thread = max_per_thread
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: dict[str, int] = {}
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        for _ in range(self.max_per_thread):
            if self.stop_flag.is_set():
                return
            error = None
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
                    data = b""
                    while not data.endswith(b"\n"):
                        chunk = conn.recv(256)
                        if not chunk:
                            break
                        data += chunk
                    if not data.endswith(b"\n"):
                        error = "short read"
            except OSError as exc:
                error = type(exc).__name__
            with self.lock:
                if error is None:
                    self.ok += 1
                else:
                    self.failures[error] = self.failures.get(error, 0) + 1
            time.sleep(self.pause)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=10)


def timed_upgrade(master: Master, impl: Impl, command: str, timeout: float) -> tuple[float | None, float]:
    """Send `command` on a new connection; (seconds to `Starting ... upgrade`, seconds to `Upgrade done`).

    Then wait until the master is back to its number of workers (the old ones drained).
    """
    client = master.client()
    client.sock.settimeout(timeout)
    t0 = time.monotonic()
    client.send(command)
    reexeced = None
    while True:
        line, final = client.read_line()
        if reexeced is None and b"Starting " in line and b" upgrade from version" in line:
            reexeced = time.monotonic() - t0
        if final:
            elapsed = time.monotonic() - t0
            break
    client.close()
    message = decode(line).get("message")
    if message != "Upgrade done":
        raise RuntimeError(f"{impl.name}: upgrade ended with {message!r}")
    deadline = time.monotonic() + 10
    while len(master.live_workers()) > master.number and time.monotonic() < deadline:
        time.sleep(0.02)
    return reexeced, elapsed


def bench_upgrade(impls: Sequence[Impl], quick: bool) -> Table:
    sizes = (8,) if quick else (8, 32)
    table = Table(
        "2. Upgrade: send `upgrade` / `upgrade_fleet` -> `Upgrade done`",
        "seconds (1 run each; default flags: the original spins up one new worker per -s interval = 1 s,\n"
        "einhorn as fast as they ACK, max_unacked = CPUs at a time);\n"
        "re-exec phase = until the re-exec'd master says `Starting ... upgrade` (upgrade check + state passing + exec + restore);\n"
        "failed = client connections that failed during the upgrade (2 threads connect/read/close on the bound port)",
    )
    for command in ("upgrade", "upgrade_fleet"):
        for n in sizes:
            for impl in impls:
                with Master(impl, n, mode="serve") as master:
                    master.wait_all_acked()
                    port = master.port()
                    load = Load(port)
                    load.start()
                    time.sleep(0.3)
                    reexeced, elapsed = timed_upgrade(master, impl, command, timeout=120)  # the load stays on while old workers drain
                    time.sleep(0.3)
                    load.stop()
                failed = sum(load.failures.values())
                kinds = ", ".join(f"{k}:{v}" for k, v in sorted(load.failures.items()))
                log(f"{command} {impl.name} N={n}: {elapsed:.3f}s, {load.ok} ok, {failed} failed {kinds}")
                label = "smooth" if command == "upgrade" else "fleet"
                table.put(f"{label} N={n} (s)", impl.name, elapsed)
                table.put(f"{label} N={n} re-exec phase (s)", impl.name, reexeced)
                table.put(f"{label} N={n} failed / total conns", impl.name, failed, text=f"{failed} / {failed + load.ok}", lower_better=False)
    return table


def bench_reexec(impls: Sequence[Impl], quick: bool) -> Table:
    """The part of an upgrade the implementation controls, measured often enough to see through noise."""
    rounds = 5 if quick else 11
    n = 4
    table = Table(
        "2b. Re-exec phase, repeated: `upgrade_fleet` -> the re-exec'd master's `Starting fleet upgrade`",
        f"seconds over {rounds} consecutive fleet upgrades of one master with {n} idle workers per implementation,\n"
        "the implementations taking turns (upgrade check + state passing + exec + restore)",
    )
    phases: dict[str, list[float]] = {impl.name: [] for impl in impls}
    with contextlib.ExitStack() as stack:
        masters = {impl.name: stack.enter_context(Master(impl, n, mode="ack")) for impl in impls}
        for master in masters.values():
            master.wait_all_acked()
        for _ in range(rounds):
            for impl in impls:
                reexeced, _ = timed_upgrade(masters[impl.name], impl, "upgrade_fleet", timeout=60)
                if reexeced is None:
                    raise RuntimeError(f"{impl.name}: no `Starting fleet upgrade` before `Upgrade done`")
                phases[impl.name].append(reexeced)
    for name, values in phases.items():
        log(f"re-exec phase {name}: {', '.join(f'{v:.3f}' for v in values)}")
        table.put("median (s)", name, median(values))
        table.put("fastest (s)", name, min(values))
        table.put("slowest (s)", name, max(values))
    return table


# --- 3. command latency -----------------------------------------------------


def bench_latency(impls: Sequence[Impl], quick: bool) -> Table:
    same, fresh = (200, 50) if quick else (1000, 200)
    table = Table(
        "3. Command round trip with 32 workers (milliseconds)",
        f"{same} requests on one connection; {fresh} requests on a new connection each (connect+request+close)",
    )
    for impl in impls:
        with Master(impl, 32) as master:
            master.wait_all_acked()
            time.sleep(0.5)
            for command in ("ehlo", "state"):
                client = master.client()
                for _ in range(10):
                    client.request(command)
                samples = []
                for _ in range(same):
                    t = time.perf_counter()
                    client.request(command)
                    samples.append(time.perf_counter() - t)
                client.close()
                new_samples = []
                for _ in range(fresh):
                    t = time.perf_counter()
                    c = CommandClient(master.socket_path)
                    c.request(command)
                    c.close()
                    new_samples.append(time.perf_counter() - t)
                for label, xs in (("1 conn", samples), ("new conn", new_samples)):
                    table.put(f"{command} {label} median", impl.name, median(xs) * 1000)
                    table.put(f"{command} {label} p99", impl.name, p99(xs) * 1000)
                log(f"latency {impl.name} {command}: {median(samples) * 1000:.3f} ms / {median(new_samples) * 1000:.3f} ms")
            size = len(CommandClient(master.socket_path).request("state")[0])
            table.put("state reply size (bytes)", impl.name, size, fmt="{:.0f}", lower_better=False)
    return table


# --- 4. idle master resources -------------------------------------------------


def bench_resources(impls: Sequence[Impl], quick: bool) -> Table:
    window = 2.0 if quick else 5.0
    table = Table("4. Idle master with 32 workers", f"RSS from /proc/<pid>/status VmRSS; CPU = utime+stime over {window:.0f} s idle")
    for impl in impls:
        with Master(impl, 32) as master:
            master.wait_all_acked()
            time.sleep(1.0)
            c0 = cpu_seconds(master.pid)
            time.sleep(window)
            c1 = cpu_seconds(master.pid)
            rss = rss_kib(master.pid)
        table.put("master RSS (MiB)", impl.name, rss / 1024, fmt="{:.1f}")
        table.put(f"master CPU over {window:.0f}s idle (ms)", impl.name, (c1 - c0) * 1000, fmt="{:.0f}")
        log(f"resources {impl.name}: {rss / 1024:.1f} MiB, {(c1 - c0) * 1000:.0f} ms CPU")
    return table


# --- 5. respawn ---------------------------------------------------------------


def bench_respawn(impls: Sequence[Impl], quick: bool) -> Table:
    repeat = 3 if quick else 7
    table = Table("5. Respawn: SIGKILL a worker -> replacement ACKed (N=8)", f"milliseconds over {repeat} kills (1.2 s apart: the spin-up interval is 1 s)")
    for impl in impls:
        samples = []
        with Master(impl, 8) as master:
            master.wait_all_acked()
            time.sleep(1.2)
            for _ in range(repeat):
                victim = min(master.live_workers())
                mark = master.mark()
                t0 = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                samples.append(master.wait_all_acked(start=mark, timeout=30) - t0)
                time.sleep(1.2)
        table.put("median (ms)", impl.name, median(samples) * 1000, fmt="{:.1f}")
        table.put("max (ms)", impl.name, max(samples) * 1000, fmt="{:.1f}")
        log(f"respawn {impl.name}: {[round(s * 1000, 1) for s in samples]}")
    return table


# --- 6. the pool at the speed of the workers (issue 14) ---------------------------------------


def bench_pool(impls: Sequence[Impl], quick: bool) -> Table:
    """Every row of issue 14's table, each measured for every implementation in turn, with default flags."""
    table = Table(
        "6. The pool at the speed of the workers (issue 14): default flags unless said",
        "seconds unless said; `python/ruby` below 1 means einhorn is faster. Workers: bench/ack_worker.py (manual ACK,\n"
        "after BOOT seconds), or `sleep` with timer ACKs. The master's own pacing is all that differs.",
        ours_over_theirs=True,
    )
    _upgrades_at_boot(impls, table, 16, 0.2)
    _killed_at_once(impls, table, quick)
    _killed_among_1000(impls, table, quick)
    _cold_start_1000(impls, table, quick)
    _state_with_1000(impls, table, quick)
    _idle_16(impls, table, quick)
    _core_step(impls, table, quick)
    return table


CHANGED = "EINHORN_BENCH_CHANGED"
"""Set in a master's environment and dropped from its re-exec's (`--drop-env-var`): the new image is then not
the running one, and einhorn runs its upgrade check, as after an upgrade of einhorn itself (the original
always runs it)."""


def _upgrades_at_boot(impls: Sequence[Impl], table: Table, n: int, boot: float) -> None:
    variants = (
        ("upgrade", "smooth upgrade", ()),
        ("upgrade_fleet", "fleet upgrade", ()),
        ("upgrade_fleet", "fleet upgrade, einhorn changed on disk (its check runs)", ("--drop-env-var", CHANGED)),
    )
    for command, label, options in variants:
        for impl in impls:
            if options:
                os.environ[CHANGED] = "1"  # the master copies its environment at its start
            try:
                master = Master(impl, n, mode="serve", boot=boot, options=options)
            finally:
                os.environ.pop(CHANGED, None)
            with master:
                master.wait_all_acked(timeout=60)
                load = Load(master.port())
                load.start()
                time.sleep(0.3)
                _, elapsed = timed_upgrade(master, impl, command, timeout=120)
                time.sleep(0.3)
                load.stop()
            failed = sum(load.failures.values())
            log(f"{label} N={n} boot {boot:g}s {impl.name}: {elapsed:.2f}s, {failed} of {failed + load.ok} failed")
            table.put(f"{label}, N={n}, worker boot {boot:g} s", impl.name, elapsed, fmt="{:.2f}")
            table.put(f"{label}: failed / total requests", impl.name, failed, text=f"{failed} / {failed + load.ok}", lower_better=False)


def _killed_at_once(impls: Sequence[Impl], table: Table, quick: bool) -> None:
    n, killed, repeat = 8, 4, 1 if quick else 3
    samples: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for _ in range(repeat):
        for impl in impls:
            with Master(impl, n) as master:
                master.wait_all_acked()
                time.sleep(1.2)  # older than -s (1 s): a worker killed younger counts as a crash (EXTENSIONS §4)
                victims = sorted(master.live_workers())[:killed]
                mark = master.mark()
                t0 = time.monotonic()
                for pid in victims:
                    os.kill(pid, signal.SIGKILL)
                samples[impl.name].append(master.wait_all_acked(start=mark, timeout=60) - t0)
            log(f"{killed} of {n} killed at once, {impl.name}: {samples[impl.name][-1]:.3f}s")
    for impl in impls:
        table.put(f"{killed} of {n} workers killed at once -> all replaced and ACKed (median of {repeat})", impl.name, median(samples[impl.name]))


def _killed_among_1000(impls: Sequence[Impl], table: Table, quick: bool) -> None:
    n, killed = (1000, 20) if quick else (1000, 100)
    for impl in impls:
        with Master(impl, n, sleep=True, ack="1") as master:
            master.wait_all_acked(timeout=120)
            time.sleep(1.2)
            victims = sorted(master.live_workers())[:killed]
            mark = master.mark()
            t0 = time.monotonic()
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            elapsed = master.wait_all_acked(start=mark, timeout=600) - t0
        log(f"{killed} of {n} sleep workers killed, {impl.name}: {elapsed:.1f}s")
        table.put(f"{n} `sleep` workers (-m 1), {killed} killed at once -> all replaced", impl.name, elapsed, fmt="{:.1f}")


def _direct_spawns(n: int) -> float:
    """Exec of a Python script to its exit, after it posix_spawned `n` `sleep`s (then killed here)."""
    directory = tempfile.mkdtemp(prefix="einhorn-bench-")
    try:
        sleeper = os.path.join(directory, "sleep")
        os.symlink(shutil.which("sleep") or "/bin/sleep", sleeper)
        pids_file = os.path.join(directory, "pids")
        script = (
            f"import os\npids = [os.posix_spawn({sleeper!r}, [{sleeper!r}, '100000'], os.environ) for _ in range({n})]\n"
            f"open({pids_file!r}, 'w').write(' '.join(map(str, pids)))"
        )
        t0 = time.monotonic()
        try:
            # The sleeps inherit no pipe of ours (they would hold it open): output goes nowhere, the pids to a file.
            subprocess.run([sys.executable, "-I", "-S", "-c", script], stdout=subprocess.DEVNULL, check=True, timeout=120)
            return time.monotonic() - t0
        finally:
            _kill_by_command_line(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _kill_by_command_line(directory: str) -> None:
    """SIGKILL every process whose command line names `directory` (this run's own temp dir)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if directory.encode() in command:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)


def _cold_start_1000(impls: Sequence[Impl], table: Table, quick: bool) -> None:
    # Seven rounds: one start of 1000 processes varies by up to 30 % on a small VM (the script's own too).
    # The order alternates, so that none always runs right after another's 1000 processes were killed.
    n, repeat = 1000, 1 if quick else 7
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    direct: list[float] = []
    for round_ in range(repeat):
        runners: list[Impl | None] = [None, *impls]  # None: the script
        for impl in runners if round_ % 2 == 0 else reversed(runners):
            if impl is None:
                direct.append(_direct_spawns(n))
                continue
            with Master(impl, n, sleep=True, ack="0") as master:
                times[impl.name].append(master.wait_all_acked(timeout=120) - master.t_exec)
            log(f"cold start {n} sleep workers, {impl.name}: {times[impl.name][-1]:.3f}s")
        log(f"cold start {n} sleep workers, the script: {direct[-1]:.3f}s")
    for impl in impls:
        table.put(f"cold start, {n} `sleep` workers (-m 0): exec -> all ACKed (median of {repeat})", impl.name, median(times[impl.name]))
        table.put(f"  the same / a Python script's {n} posix_spawns ({median(direct):.3f} s)", impl.name, median(times[impl.name]) / median(direct), fmt="{:.2f}", lower_better=False)


def _state_with_1000(impls: Sequence[Impl], table: Table, quick: bool) -> None:
    """Timed from the request to the last byte of the reply (its line's `\n`), read as it comes: the client parses nothing."""
    n, count = 1000, 50 if quick else 200
    for impl in impls:
        with Master(impl, n, sleep=True, ack="0") as master:
            master.wait_all_acked(timeout=120)
            time.sleep(0.5)
            forms = [("YAML", None), ("JSON", ["--json"])] if impl.name == "python" else [("YAML", None)]
            for form, args in forms:
                client = master.client()
                for _ in range(5):
                    client.request("state", args)
                samples = [_to_last_byte(client, "state", args) for _ in range(count)]
                client.close()
                log(f"state {form} with {n} workers, {impl.name}: median {median(samples) * 1000:.2f} ms, p99 {p99(samples) * 1000:.2f} ms")
                table.put(f"`state` ({form}) with {n} workers, request to last byte, median (ms)", impl.name, median(samples) * 1000, fmt="{:.2f}")
                table.put(f"`state` ({form}) with {n} workers, request to last byte, p99 (ms)", impl.name, p99(samples) * 1000, fmt="{:.2f}")
    if any(impl.name == "python" for impl in impls):
        for label, ms in _state_in_process(n, 20 if quick else 100):
            table.put(f"`state` reply made in-process (snapshot, render, framing), {n} workers, {label}, median (ms)", "python", ms, fmt="{:.2f}")


def _to_last_byte(client: CommandClient, command: str, args: Sequence[str] | None) -> float:
    """Seconds from sending a request to receiving the last byte of its one-line reply."""
    t = time.perf_counter()
    client.send(command, args)
    received = bytearray()
    while not received.endswith(b"\n"):  # the framing escapes every other newline
        chunk = client.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("command socket closed")
        received += chunk
    return time.perf_counter() - t


def _state_in_process(n: int, count: int) -> list[tuple[str, float]]:
    """The master's own work for a `state` of `n` workers (bench/core_step.py's pool): as it was, and with every worker new."""
    import core_step

    from einhorn.core.effects import ReplyData
    from einhorn.core.events import CommandReceived
    from einhorn.core.record import replace
    from einhorn.core.state import State
    from einhorn.core.step import step
    from einhorn.io import render
    from einhorn.io.loop import _envelope

    def reply(state: State) -> float:
        t = time.perf_counter()
        _, effects = step(state, CommandReceived(1, {"command": "state", "id": "1"}, 1.0, 1e9))
        (data,) = [e for e in effects if isinstance(e, ReplyData)]
        render.state_reply(data.data, False, lambda text: _envelope(text, "1", False))
        return time.perf_counter() - t

    state = core_step.full_pool(n)
    unchanged = [reply(state) for _ in range(count)]
    renewed = []
    for i in range(count // 10 or 1):
        state = replace(state, children={pid: replace(child, index=child.index + i) for pid, child in state.children.items()})
        renewed.append(reply(state))
    return [("pool unchanged", median(unchanged) * 1000), ("every worker changed", median(renewed) * 1000)]


def _idle_16(impls: Sequence[Impl], table: Table, quick: bool) -> None:
    window = 2.0 if quick else 5.0
    for impl in impls:
        with Master(impl, 16) as master:
            master.wait_all_acked()
            time.sleep(1.0)
            c0 = cpu_seconds(master.pid)
            time.sleep(window)
            cpu = cpu_seconds(master.pid) - c0
            rss = rss_kib(master.pid)
        log(f"idle 16 workers, {impl.name}: {rss / 1024:.2f} MiB, {cpu * 1000:.0f} ms CPU")
        table.put("master RSS idle, N=16 (MiB)", impl.name, rss / 1024, fmt="{:.2f}")
        table.put(f"master CPU idle over {window:g} s, N=16 (ms)", impl.name, cpu * 1000, fmt="{:.0f}", lower_better=False)


def _core_step(impls: Sequence[Impl], table: Table, quick: bool) -> None:
    """bench/core_step.py: the real `step` of this repository (so only for the python column)."""
    if not any(impl.name == "python" for impl in impls):
        return
    import core_step

    for rate in (core_step.measure(n, 0.5 if quick else 2.0) for n in core_step.SIZES):
        table.put(f"core `step`, {rate.number} workers: events/s (CPU)", "python", rate.step_only, fmt="{:,.0f}", lower_better=False)


BENCHMARKS: dict[str, Callable[[Sequence[Impl], bool], Table]] = {
    "cold": bench_cold_start,
    "upgrade": bench_upgrade,
    "reexec": bench_reexec,
    "latency": bench_latency,
    "resources": bench_resources,
    "respawn": bench_respawn,
    "pool": bench_pool,
}


def compile_bytecode() -> None:
    """Byte-compile einhorn as `pip install` of a wheel does. An editable install compiles
    nothing, and with PYTHONDONTWRITEBYTECODE set every master would parse its source
    again at each start and re-exec, which no installed einhorn does."""
    import compileall

    import einhorn

    compileall.compile_dir(os.path.dirname(einhorn.__file__), quiet=1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=("python", "ruby", "both"), default="python")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (about a minute per implementation)")
    parser.add_argument("--only", nargs="+", choices=tuple(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--einhorn", help="our einhorn executable (default: .venv/bin/einhorn of this repo)")
    parser.add_argument("--ruby-einhorn", default="/tmp/einhorn-ruby/bin/einhorn", help="the original's bin/einhorn (run as ruby -I<its lib>)")
    parser.add_argument("--ruby", default="ruby", help="ruby interpreter")
    args = parser.parse_args(argv)

    impls: list[Impl] = []
    if args.impl in ("python", "both"):
        impls.append(python_impl(args.einhorn))
        compile_bytecode()
    if args.impl in ("ruby", "both"):
        if not os.path.exists(args.ruby_einhorn) or shutil.which(args.ruby) is None:
            parser.error(f"--impl {args.impl} needs {args.ruby_einhorn} and a `{args.ruby}` on PATH (see bench/README.md)")
        impls.append(ruby_impl(args.ruby_einhorn, shutil.which(args.ruby) or args.ruby))

    versions = []
    for impl in impls:
        out = subprocess.run([*impl.argv, "--version"], capture_output=True, text=True, env={**os.environ, **impl.env}, timeout=30)
        versions.append(f"{impl.name} {out.stdout.strip() or out.stderr.strip()[:60]}")
    print(f"# einhorn benchmarks ({'quick' if args.quick else 'full'})")
    print(f"host: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    print(f"masters: {'; '.join(versions)}; worker: {os.path.realpath(sys.executable)} -I -S bench/ack_worker.py")

    names = args.only or list(BENCHMARKS)
    for name in names:
        table = BENCHMARKS[name](impls, args.quick)
        print(table.render([i.name for i in impls]), flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
