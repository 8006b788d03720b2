"""One client floods the command socket without reading; does anyone else still get an answer?

    .venv/bin/python bench/flood.py                    # 10 s flood of ehlo, then 3 s of recovery
    .venv/bin/python bench/flood.py --command state    # a request with a bigger reply
    .venv/bin/python bench/flood.py --reading          # a client that floods and reads: fairness
    .venv/bin/python bench/flood.py --seconds 3        # shorter
    .venv/bin/python bench/flood.py --einhorn PATH     # another einhorn executable (e.g. an older checkout)

A master with one worker (`bench/ack_worker.py`) runs in a temp dir. A separate
process (so that it does not share this one's GIL) writes `{"command": ...}`
lines to the command socket as fast as the master takes them, never reading a
reply, and reconnects when the master drops it. Meanwhile this process asks
`ehlo` every 10 ms on one connection of its own, and on a new connection every
100 ms, and samples the master's VmRSS. After the flood it goes on probing to
show the recovery. UNIX socket only; everything is bounded in time and killed
by pid at the end (`bench/harness.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Master, python_impl, rss_kib  # noqa: E402

FLOODER = r"""
import json, socket, sys, threading, time
path, command, seconds, reading = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
line = json.dumps({"command": command}).encode() + b"\n"
burst = line * 1000
deadline = time.monotonic() + seconds
sent_bytes = connections = 0

def drain(sock):
    try:
        while sock.recv(1 << 20):
            pass
    except OSError:
        pass

while time.monotonic() < deadline:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        sock.connect(path)
        connections += 1
        if reading:
            threading.Thread(target=drain, args=(sock,), daemon=True).start()
        view = memoryview(burst)
        while time.monotonic() < deadline:
            sent_bytes += sock.send(view)
    except OSError:
        pass  # dropped by the master, or the deadline: again on a new connection, until the deadline
    finally:
        sock.close()
print(json.dumps({"requests": sent_bytes // len(line), "connections": connections}))
"""


class Probe:
    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = self._connect()
        self.buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        sock.connect(self.path)
        return sock

    def ehlo(self, sock: socket.socket | None = None) -> float:
        """Seconds to the answer of one ehlo (inf when it timed out)."""
        own = sock is None
        sock = sock or self.sock
        start = time.monotonic()
        try:
            sock.sendall(b'{"command": "ehlo", "id": "probe"}\n')
            buffer = self.buffer if own else b""
            while b"\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buffer += chunk
            _, _, rest = buffer.partition(b"\n")
            if own:
                self.buffer = rest
            return time.monotonic() - start
        except OSError:
            if own:
                self.sock.close()
                self.sock, self.buffer = self._connect(), b""
            return float("inf")

    def fresh_ehlo(self) -> float:
        """The same on a new connection: connect and accept included."""
        start = time.monotonic()
        try:
            with self._connect() as sock:
                answered = self.ehlo(sock)
        except OSError:
            return float("inf")
        return answered if answered == float("inf") else time.monotonic() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def ms(value: float) -> str:
    return "timeout" if value == float("inf") else f"{value * 1000:.1f}"


def run(command: str, seconds: float, recovery: float, einhorn: str | None, reading: bool = False) -> dict[str, object]:
    with Master(python_impl(einhorn), 1, "ack") as master:
        master.wait_all_acked(timeout=30)
        probe = Probe(master.socket_path)
        probe.ehlo()
        rss_start = rss_kib(master.pid)
        flooder = subprocess.Popen(
            [sys.executable, "-c", FLOODER, master.socket_path, command, str(seconds), "1" if reading else "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        during: list[float] = []
        fresh: list[float] = []
        rss_max = rss_start
        started = time.monotonic()
        next_fresh = started
        try:
            while flooder.poll() is None and time.monotonic() - started < seconds + 10:
                during.append(probe.ehlo())
                if time.monotonic() >= next_fresh:
                    fresh.append(probe.fresh_ehlo())
                    next_fresh += 0.1
                rss_max = max(rss_max, rss_kib(master.pid))
                time.sleep(0.01)
        finally:
            if flooder.poll() is None:
                flooder.kill()
            out, _ = flooder.communicate(timeout=30)
        stopped = time.monotonic()
        first_answer = probe.ehlo()
        after: list[float] = [first_answer]
        while time.monotonic() - stopped < recovery:
            after.append(probe.ehlo())
            rss_max = max(rss_max, rss_kib(master.pid))
            time.sleep(0.01)
        rss_end = rss_kib(master.pid)
        dropped = sum(1 for _, line in master.lines if "is not reading its replies" in line)
        sent = json.loads(out) if out.strip() else {"requests": 0, "connections": 0}
        return {
            "flood": f"{command} for {seconds:g} s, {'reading' if reading else 'never reading'} the replies",
            "requests sent": sent["requests"],
            "flood connections (dropped by the master)": f"{sent['connections']} ({dropped})",
            "master RSS start / max / end (MB)": f"{rss_start / 1024:.1f} / {rss_max / 1024:.1f} / {rss_end / 1024:.1f}",
            "ehlo during the flood, p50 / p99 / max (ms)": f"{ms(percentile(during, 0.5))} / {ms(percentile(during, 0.99))} / {ms(max(during))}",
            "ehlo during the flood, answered / asked": f"{sum(1 for v in during if v != float('inf'))} / {len(during)}",
            "ehlo on a new connection, p50 / p99 / max (ms)": f"{ms(percentile(fresh, 0.5))} / {ms(percentile(fresh, 0.99))} / {ms(max(fresh))}",
            "first ehlo after the flood (ms)": ms(first_answer),
            f"ehlo in the {recovery:g} s after, p99 / max (ms)": f"{ms(percentile(after, 0.99))} / {ms(max(after))}",
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", default="ehlo", help="what the flooder sends (default ehlo)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the flood (default 10)")
    parser.add_argument("--recovery", type=float, default=3.0, help="seconds probed after the flood (default 3)")
    parser.add_argument("--reading", action="store_true", help="the flooder also reads (and discards) its replies")
    parser.add_argument("--einhorn", help="einhorn executable (default .venv/bin/einhorn)")
    args = parser.parse_args(argv)
    print(f"# flood: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    row = run(args.command, args.seconds, args.recovery, args.einhorn, args.reading)
    width = max(len(key) for key in row)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"| {'-' * width} | --- |")
    for key, value in row.items():
        print(f"| {key.ljust(width)} | {value} |")
    print(f"# load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
