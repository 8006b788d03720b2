"""Two of issue 14's rows for several masters, interleaved round by round (bench/run.py's own measurements).

    .venv/bin/python bench/compare_rows.py cold  [--rounds 10] EINHORN [EINHORN ...]
    .venv/bin/python bench/compare_rows.py fleet [--rounds 8]  EINHORN [EINHORN ...] [ruby]

`cold`: `_cold_start_1000`'s measurement (1000 `sleep` workers, -m 0, exec -> all ACKed) next to
`_direct_spawns(1000)`, the Python script's posix_spawns. `fleet`: `_upgrades_at_boot`'s `upgrade_fleet`
of 16 `serve` workers booting in 0.2 s, under bench/run.py's load. EINHORN is an einhorn executable
(another checkout's .venv/bin/einhorn, say: byte-compile it first, as bench/run.py does for its own),
or `ruby` for the original at /tmp/einhorn-ruby. The order alternates each round, so that no master
always runs right after another's 1000 workers were killed. Prints each round, then the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Impl, Master, python_impl, ruby_impl  # noqa: E402
from run import Load, _direct_spawns, timed_upgrade  # noqa: E402

DIRECT = "direct"


def cold_start(impl: Impl) -> float:
    with Master(impl, 1000, sleep=True, ack="0") as master:
        return master.wait_all_acked(timeout=120) - master.t_exec


def fleet_upgrade(impl: Impl) -> tuple[float, int, int]:
    """(seconds to `Upgrade done`, failed requests, all requests)."""
    with Master(impl, 16, mode="serve", boot=0.2) as master:
        master.wait_all_acked(timeout=60)
        load = Load(master.port())
        load.start()
        time.sleep(0.3)
        _, elapsed = timed_upgrade(master, impl, "upgrade_fleet", timeout=120)
        time.sleep(0.3)
        load.stop()
    failed = sum(load.failures.values())
    return elapsed, failed, failed + load.ok


def impl_of(name: str) -> Impl:
    if name == "ruby":
        return ruby_impl("/tmp/einhorn-ruby/bin/einhorn", shutil.which("ruby") or "ruby")
    return python_impl(os.path.abspath(name))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("row", choices=("cold", "fleet"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("masters", nargs="+", help="einhorn executables, or `ruby`")
    args = parser.parse_args(argv)
    names: list[str] = ([DIRECT] if args.row == "cold" else []) + args.masters
    impls = {name: impl_of(name) for name in args.masters}
    times: dict[str, list[float]] = {name: [] for name in names}
    failed = {name: [0, 0] for name in names}
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            time.sleep(1.0)  # the previous run's workers are gone
            if name == DIRECT:
                times[name].append(_direct_spawns(1000))
            elif args.row == "cold":
                times[name].append(cold_start(impls[name]))
            else:
                elapsed, bad, total = fleet_upgrade(impls[name])
                times[name].append(elapsed)
                failed[name][0] += bad
                failed[name][1] += total
        print(f"round {round_}: " + ", ".join(f"{name} {times[name][-1]:.3f}" for name in names), flush=True)
    reference = DIRECT if args.row == "cold" else "ruby" if "ruby" in names else None
    for name in names:
        line = f"{name}: median {statistics.median(times[name]):.3f} s"
        if reference is not None and name != reference:
            line += f", {statistics.median(times[name]) / statistics.median(times[reference]):.2f} x {reference}'s"
        if args.row == "fleet":
            line += f", failed requests {failed[name][0]} / {failed[name][1]}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
