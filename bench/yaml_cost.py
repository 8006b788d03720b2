"""What one long request line costs the master: its CPU time from the line to the reply.

    .venv/bin/python bench/yaml_cost.py                   # ours
    .venv/bin/python bench/yaml_cost.py --einhorn PATH    # another einhorn executable

PyYAML's pure-Python loader is the master's most expensive parser: a request
that is not JSON is capped at `einhorn.framing.MAX_YAML` characters before it
runs. Each shape below is sent as one line just under the 64 KiB line limit,
and just under the 4 KiB YAML cap (and, for comparison, as a JSON object of
the same size). A cell is the master's utime + stime over 10 such requests on
one connection, divided by 10 (median of 3).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Master, cpu_seconds, python_impl  # noqa: E402

SIZES = {"64 KiB line": 64 * 1024 - 200, "4 KiB line (the YAML cap)": 4 * 1024 - 10}
REPEAT = 10
SHAPES = {
    "flow mapping {k0: 0, k1: 1, ...}": "{command: ehlo, " + ", ".join(f"k{i}: {i}" for i in range(20_000)),
    "block sequence (- a)": "command: ehlo\nargs:\n" + "".join("- a\n" for _ in range(30_000)),
    "flow sequence [a, a, ...]": "command: ehlo\nargs: [" + ", ".join("a" for _ in range(40_000)),
    "one plain scalar": "command: ehlo\nuser: " + "a" * 70_000,
}


def yaml_line(text: str, size: int) -> bytes:
    return text.replace("%", "%25").replace("\n", "%0A")[:size].encode() + b"\n"


def json_line(size: int) -> bytes:
    """A JSON ehlo of about `size` bytes, within the node limit."""
    return json.dumps({"command": "ehlo", "args": ["abcdefgh"] * max(0, (size - 40) // 12)}).encode() + b"\n"


def cost(master: Master, line: bytes) -> tuple[float, str]:
    """Master CPU seconds per request, and the start of its reply."""
    client = master.client()
    try:
        before = cpu_seconds(master.pid)
        for _ in range(REPEAT):
            client.sock.sendall(line)
            reply, _ = client.read_line()
        time.sleep(0.05)  # the reply is written before the master's wake-up ends: let it end
        return (cpu_seconds(master.pid) - before) / REPEAT, reply.decode(errors="replace")[:48].strip()
    finally:
        client.close()


def cell(master: Master, line: bytes) -> str:
    samples = [cost(master, line) for _ in range(3)]
    return f"{statistics.median(s for s, _ in samples) * 1000:.0f} (`{samples[0][1]}`)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--einhorn", help="einhorn executable (default .venv/bin/einhorn)")
    args = parser.parse_args(argv)
    print(f"# yaml_cost: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; master CPU ms per request (reply)")
    print(f"| request | {' | '.join(SIZES)} |")
    print(f"| --- | {' | '.join('---' for _ in SIZES)} |")
    with Master(python_impl(args.einhorn), 1, "ack") as master:
        master.wait_all_acked(timeout=30)
        for name, text in SHAPES.items():
            print(f"| YAML: {name} | {' | '.join(cell(master, yaml_line(text, size)) for size in SIZES.values())} |")
        print(f"| JSON object | {' | '.join(cell(master, json_line(size)) for size in SIZES.values())} |")
        print(f"| a short JSON ehlo, for reference | {cell(master, json_line(60))} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
