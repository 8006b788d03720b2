#!/usr/bin/env python3
"""Memory of preloaded (-p) versus exec'd workers (issue 5).

    .venv/bin/python bench/preload_memory.py [--workers 8] [--megabytes 50]

Runs einhorn three times with N workers of an app that imports a module
building about M MB of Python objects (dicts, strings, lists, ints):

  exec              no -p: every worker imports the module itself;
  preload           -p app.py: imported once by the master, workers are forks;
  preload+walk      the same, each worker then reads every object once
                    (reference counts are written, so copy-on-write copies pages).

Once every worker has reported ready, it reads /proc/PID/smaps_rollup of each
worker and of the master and prints sums in MiB: RSS, PSS (each shared page
divided among the processes sharing it: the honest total), shared and private.
Linux only. Everything it starts is stopped (by pid) and its temp dir removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BIG_MODULE = '''
"""About {megabytes} MB of small Python objects, built at import."""
DATA = [
    {{"id": i, "name": "item-%d" % i, "tags": [i, i + 1, "t%d" % (i % 97)], "score": i * 0.5}}
    for i in range({items})
]
'''

APP = '''
import os, signal, sys
import bigmod

def einhorn_main():
    if "walk" in sys.argv[2:]:
        total = 0
        for item in bigmod.DATA:
            total += item["id"] + len(item["name"]) + len(item["tags"])
    ready = os.path.join(sys.argv[1], str(os.getpid()))
    with open(ready + ".tmp", "w") as f:
        f.write("ready")
    os.rename(ready + ".tmp", ready)
    while True:
        signal.pause()

if __name__ == "__main__":
    einhorn_main()
'''

BYTES_PER_ITEM = 520
"""Measured on CPython 3.11: one DATA item (dict, 2 strs, list, float, ints) costs about this much."""

FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")


@dataclass
class Usage:
    rss: int = 0
    pss: int = 0
    shared: int = 0
    private: int = 0

    def add(self, other: Usage) -> None:
        self.rss += other.rss
        self.pss += other.pss
        self.shared += other.shared
        self.private += other.private


def smaps_rollup(pid: int) -> Usage:
    values = dict.fromkeys(FIELDS, 0)
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in values:
            values[key] = int(rest.split()[0])  # kB
    return Usage(
        rss=values["Rss"],
        pss=values["Pss"],
        shared=values["Shared_Clean"] + values["Shared_Dirty"],
        private=values["Private_Clean"] + values["Private_Dirty"],
    )


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def measure(mode: str, workers: int, directory: Path, timeout: float) -> tuple[Usage, Usage]:
    """(sum over the workers, master) for one einhorn run in `mode`."""
    ready = directory / f"ready-{mode}"
    ready.mkdir()
    options = ["-p", str(directory / "app.py")] if mode.startswith("preload") else []
    flags = ["walk"] if mode.endswith("walk") else []
    argv = [
        sys.executable, "-m", "einhorn", "-q", "-n", str(workers),
        "-d", str(directory / f"{mode}.sock"), "-e", str(directory / f"{mode}.pid"), "-f", str(directory / f"{mode}.lock"),
        *options, "--", sys.executable, str(directory / "app.py"), str(ready), *flags,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(directory), str(Path(__file__).resolve().parents[1])])}
    master = subprocess.Popen(argv, cwd=directory, env=env, stdin=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + timeout
        while len(pids) < workers:
            if master.poll() is not None:
                raise SystemExit(f"einhorn ({mode}) exited with {master.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"einhorn ({mode}): only {len(pids)} of {workers} workers ready after {timeout}s")
            time.sleep(0.05)
            pids = [int(p.name) for p in ready.iterdir() if p.name.isdigit()]
        total = Usage()
        for pid in pids:
            total.add(smaps_rollup(pid))
        return total, smaps_rollup(master.pid)
    finally:
        if master.poll() is None:
            master.send_signal(signal.SIGTERM)
            try:
                master.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait()
        for pid in pids:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def mib(kilobytes: int) -> str:
    return f"{kilobytes / 1024:9.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    if not Path("/proc/self/smaps_rollup").exists():
        print("needs Linux >= 4.14 (/proc/PID/smaps_rollup)", file=sys.stderr)
        return 1
    directory = Path(tempfile.mkdtemp(prefix="einhorn-bench-"))
    try:
        items = args.megabytes * 1024 * 1024 // BYTES_PER_ITEM
        (directory / "bigmod.py").write_text(BIG_MODULE.format(megabytes=args.megabytes, items=items))
        (directory / "app.py").write_text(APP)
        rows = [(mode, *measure(mode, args.workers, directory, args.timeout)) for mode in ("exec", "preload", "preload+walk")]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"{args.workers} workers, a module of ~{args.megabytes} MB of Python objects; MiB, from /proc/PID/smaps_rollup")
    print(f"{'':<14}|{'workers (summed)':^45}|{'master':^9}|{'pool':^9}")
    print(f"{'mode':<14}|{'RSS':>9}{'PSS':>9}{'shared':>9}{'private':>9}{'priv/wkr':>9}|{'RSS':>9}|{'PSS':>9}")
    for mode, workers, master in rows:
        cells = [workers.rss, workers.pss, workers.shared, workers.private, workers.private // args.workers]
        print(f"{mode:<14}|{''.join(mib(c) for c in cells)}|{mib(master.rss)}|{mib(workers.pss + master.pss)}")
    print("pool PSS = workers' PSS + master's PSS: what the whole pool really costs.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
