"""Trace capture cost: untraced pytest vs the runner untraced vs in-process vs debugpy tracing.

    OMP_WAIT_POLICY=PASSIVE python tests/benchmarks/bench_trace.py [--repeat 5]

Prints the median wall time of each way to run the same failing pytest test, for a ~50-step and a
~5,000-step test (the runner and the in-process trace fork the warm test worker; the debugpy trace starts
an interpreter under the debugger), and the ratio of the debugpy trace to the plain `python -m pytest` run
of that test; then the runner's throughput on MBPP programs (tests/s through the sandbox and harness).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import debugpy

from nextls.discovery import discover_tests, target_module
from nextls.runner import RunConfig, TargetModule, TestCase, TraceRequest, run_tests
from nextls.splice import find_function

MBPP = Path(__file__).resolve().parents[3] / "shared" / "data" / "mbpp" / "mbpp.jsonl"

MODULE = '''
def checksum(values, rounds):
    total = 0
    for _ in range(rounds):
        for value in values:
            total = (total * 31 + value) % 1000003
    return total
'''

TEST = '''
from work import checksum


def test_small():
    assert checksum([1, 2, 3, 4, 5, 6, 7, 8], 3) == -1       # ~50 steps


def test_large():
    assert checksum(list(range(50)), 50) == -1               # ~5,000 steps
'''


def seconds(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_tracing(repeat: int) -> None:
    """The four ways to run each test, one after the other in each round (so that a busy machine slows all
    of them alike); the ratio is the median of the rounds' debugpy / pytest ratios."""
    workspace = Path(tempfile.mkdtemp(prefix="nextls-bench-"))
    (workspace / "pytest.ini").write_text("[pytest]\n")
    (workspace / "work.py").write_text(MODULE)
    (workspace / "test_work.py").write_text(TEST)
    file = workspace / "work.py"
    source = file.read_text()
    span = find_function(source, "checksum")
    tests = {test.id.rsplit("::", 1)[1]: test for test in discover_tests(file, source, span, root=workspace)}
    module = target_module(file, source, list(tests.values()), root=workspace)
    config = RunConfig(test_timeout=60)
    print(f"{'test':<12}{'steps':>7}  {'pytest':>8}  {'runner':>8}  {'inprocess':>10}  {'debugpy':>9}  "
          f"{'debugpy/pytest':>15}")
    for name in ("test_small", "test_large"):
        test = tests[name]
        pytest_argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"test_work.py::{name}"]
        requests = {backend: TraceRequest(qualname="checksum", test_id=test.id, backend=backend, max_steps=100_000)
                    for backend in ("inprocess", "debugpy")}
        timings: dict[str, list[float]] = {"pytest": [], "runner": [], "inprocess": [], "debugpy": []}
        steps = {}
        for _ in range(repeat):
            timings["pytest"].append(seconds(lambda argv=pytest_argv: subprocess.run(
                argv, cwd=workspace, capture_output=True, check=False)))
            timings["runner"].append(seconds(lambda test=test: run_tests(module, [test], config)))
            for backend, request in requests.items():
                reports: list = []
                timings[backend].append(seconds(lambda test=test, request=request, reports=reports: reports.append(
                    run_tests(module, [test], config, trace=request))))
                steps[backend] = reports[-1].trace.steps
        assert steps["inprocess"] == steps["debugpy"], steps
        rounds = zip(timings["debugpy"], timings["pytest"], strict=True)
        ratio = statistics.median(debugpy / plain for debugpy, plain in rounds)
        medians = {way: statistics.median(values) for way, values in timings.items()}
        print(f"{name:<12}{steps['inprocess']:>7}  {medians['pytest']:>7.3f}s  {medians['runner']:>7.3f}s  "
              f"{medians['inprocess']:>9.3f}s  {medians['debugpy']:>8.3f}s  {ratio:>14.2f}x")


def mbpp_cases(count: int) -> list[tuple[TargetModule, list[TestCase], str]]:
    cases = []
    work = Path(tempfile.mkdtemp(prefix="nextls-mbpp-"))
    for line in MBPP.read_text().splitlines()[:count]:
        task = json.loads(line)
        file = work / f"task_{task['task_id']}.py"
        file.write_text(task["code"] + "\n")
        tests = [TestCase(id=f"assert:{index}", kind="assert", source=source, file="<mbpp>", line=1)
                 for index, source in enumerate(task["test_list"])]
        cases.append((TargetModule(str(file), task["code"] + "\n", str(work)), tests, task["test_setup_code"]))
    return cases


def bench_runner(count: int) -> None:
    cases = mbpp_cases(count)
    total_tests = sum(len(tests) for _, tests, _ in cases)

    def run(case) -> int:
        module, tests, setup = case
        report = run_tests(module, tests, RunConfig(setup_code=setup, test_timeout=5))
        return sum(result.passed for result in report.results)

    for workers in (1, 2):
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            passed = sum(pool.map(run, cases))
        seconds = time.perf_counter() - started
        print(f"runner, {workers} worker(s): {len(cases)} MBPP programs, {total_tests} tests in {seconds:.2f}s = "
              f"{len(cases) / seconds:.1f} programs/s, {total_tests / seconds:.1f} tests/s ({passed} passed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mbpp", type=int, default=100, help="MBPP programs for the runner throughput")
    args = parser.parse_args()
    print(f"# {platform.python_implementation()} {platform.python_version()}, debugpy {debugpy.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"median of {args.repeat}")
    bench_tracing(args.repeat)
    if args.mbpp:
        bench_runner(args.mbpp)


if __name__ == "__main__":
    main()
