"""Repair search: time to the first verified fix, and candidates verified per second, on this machine.

    OMP_WAIT_POLICY=PASSIVE python tests/benchmarks/bench_search.py [--repeat 5] [--budget 30] [--search-budget 20]

Three examples of server/examples, copied to a temporary folder: remove_occ.py (MBPP task 11, 3 assert
tests), running_mean.py (one doctest) and shop/pricing.py (a pytest test file, 4 results; its fix needs two
edits, so the search reaches its pairs). For each, the time to the first verified fix as `nextls fix` gets
it (trace + localization + search; p50 and p90 over --repeat runs) and the search's share of it; then the
throughput: the search made to go on through every single edit and pair (no stop at a verified fix) for at
most --budget seconds, each candidate run against every test in the sandbox, one candidate at a time and
two at a time (`SearchOptions.workers`, the default).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from nextls.search import SearchOptions, run_search
from nextls.trace.capture import trace_function

EXAMPLES = Path(__file__).resolve().parents[2] / "server" / "examples"
WORKERS = (1, 2)  # candidates verified at once in the throughput runs, side by side
CASES = [("remove_occ.py", "remove_Occ", "3 asserts"), ("running_mean.py", "running_mean", "1 doctest"),
         ("shop/pricing.py", "bulk_discount", "pytest file")]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per example for the time to the first fix")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of the throughput run per example")
    parser.add_argument("--search-budget", type=float, default=SearchOptions().budget,
                        help="seconds each first-fix search may take (default: nextls fix's, %(default)s)")
    args = parser.parse_args()
    print(f"# Python {platform.python_version()}, {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}; "
          f"first fix: p50/p90 of {args.repeat} runs; throughput: one search of at most {args.budget:.0f}s that "
          f"never stops at a verified fix")
    print(f"{'example':<30} {'tests':<12} {'first fix p50':>13} {'p90':>6} {'search p50':>10}  "
          + "  ".join(f"{'tried':>6} {f'cand/s {workers}w':>9}" for workers in WORKERS) + "  fix")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "examples"
        shutil.copytree(EXAMPLES, root)
        for name, function, tests in CASES:
            file = root / name
            totals, searches, description = [], [], "none"
            for _ in range(args.repeat):
                started = time.perf_counter()
                outcome = run_search(trace_function(file, function),
                                     options=SearchOptions(max_verified=1, budget=args.search_budget))
                totals.append(time.perf_counter() - started)
                if outcome.first_verified_seconds is not None:
                    searches.append(outcome.first_verified_seconds)
                verified = [candidate for candidate in outcome.candidates if candidate.verified]
                description = verified[0].description if verified else "none"
            report = trace_function(file, function)
            rates = []
            for workers in WORKERS:
                everything = run_search(report, options=SearchOptions(max_verified=10**9, budget=args.budget,
                                                                       workers=workers))
                rates.append(f"{everything.tried:>6} {everything.tried / everything.seconds:>9.1f}")
            if len(searches) == args.repeat:
                first = (f"{statistics.median(totals):>12.2f}s {percentile(totals, 0.9):>5.2f}s "
                         f"{statistics.median(searches):>9.2f}s")
            else:  # a time to the first fix only when every run found one
                first = f"{f'found in {len(searches)}/{args.repeat} runs of {args.search_budget:.0f}s':>31}"
            print(f"{name + '::' + function:<30} {tests:<12} {first}  {'  '.join(rates)}  {description}")
    print(f"# load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
