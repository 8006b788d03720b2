"""Mutation testing of einhorn/core with mutmut, in one command (spec/README.md §8).

    .venv/bin/python -m spec.mutation            # full run, then the score
    .venv/bin/python -m spec.mutation --report   # the score of the last run only

It runs `mutmut run` (configured by `[tool.mutmut]` in pyproject.toml), then
runs once more, by name, every mutant the full run did not kill: mutmut 3.8 marks some mutants "no tests" or "survived" in a fresh full
run although tests cover them, and gives the right verdict when they are named.
It prints the score (killed + timed out, over all mutants, as mutmut counts it)
and the surviving mutants, and exits 1 below `--min-score` (default 90).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

MUTMUT = str(Path(sys.executable).with_name("mutmut"))
EMOJI = {"🎉": "killed", "🙁": "survived", "⏰": "timeout", "🫥": "no tests", "🤔": "suspicious", "🔇": "skipped", "🧙": "caught by type check", "🛑": "segfault"}
KILLED = {"killed", "timeout", "caught by type check"}


def results() -> dict[str, str]:
    """Every mutant's verdict as mutmut recorded it."""
    out = subprocess.run([MUTMUT, "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    verdicts: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, status = line.strip().partition(": ")
        if sep and "__mutmut_" in name:
            verdicts[name] = status
    return verdicts


def rerun(names: Sequence[str], jobs: int) -> dict[str, str]:
    """Run the named mutants again; their verdicts, from mutmut's closing list."""
    if not names:
        return {}
    proc = subprocess.run([MUTMUT, "run", "--max-children", str(jobs), *names], capture_output=True, text=True)
    verdicts: dict[str, str] = {}
    for line in proc.stdout.replace("\r", "\n").splitlines():
        match = re.match(r"^(\S+) (einhorn\.\S+__mutmut_\d+)$", line.strip())
        if match and match.group(1) in EMOJI:
            verdicts[match.group(2)] = EMOJI[match.group(1)]
    return verdicts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spec.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--min-score", type=float, default=90.0)
    parser.add_argument("--report", action="store_true", help="do not run mutmut; report the last run")
    args = parser.parse_args(argv)
    if not args.report:
        print("mutmut run ...", flush=True)
        subprocess.run([MUTMUT, "run", "--max-children", str(args.jobs)], stdout=subprocess.DEVNULL, check=False)
    verdicts = results()
    if not verdicts:
        print("no mutants: run without --report first")
        return 1
    if not args.report:
        again = sorted(name for name, status in verdicts.items() if status not in KILLED)
        print(f"running the {len(again)} mutants not killed again, by name ...", flush=True)
        verdicts.update(rerun(again, args.jobs))
        Path("mutants/final-verdicts.txt").write_text("".join(f"{n}: {s}\n" for n, s in sorted(verdicts.items())))
    else:
        saved = Path("mutants/final-verdicts.txt")
        if saved.exists():
            for line in saved.read_text().splitlines():
                name, _, status = line.partition(": ")
                verdicts[name] = status
    counts = Counter(verdicts.values())
    total = len(verdicts) - counts["skipped"]
    killed = sum(counts[s] for s in KILLED)
    score = 100.0 * killed / total if total else 0.0
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for name in sorted(n for n, s in verdicts.items() if s not in KILLED | {"skipped"}):
        print(f"  {verdicts[name]}: {name}")
    print(f"mutation score: {killed} / {total} = {score:.1f}% killed")
    return 0 if score >= args.min_score else 1


if __name__ == "__main__":
    sys.exit(main())
