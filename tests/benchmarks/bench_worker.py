"""The verification engine: warm test worker (fork per run) against a fresh interpreter per run.

    OMP_WAIT_POLICY=PASSIVE python tests/benchmarks/bench_worker.py [--candidates 200] [--repeat 5]

Prints, side by side in one run:
1. candidate verifications per second for an MBPP-size function with three assert tests, through
   `run_tests` (the warm worker), with 1 and 2 threads, next to a fresh interpreter per run (the harness
   under `sandbox.run_process`, which is what every run cost before the worker);
2. one candidate verification against a pytest test file, warm, next to `python -m pytest FILE` per candidate;
3. `trace_function` of a pytest-hosted function (run every test, then trace the failing one), warm, next to
   one plain `python -m pytest FILE` run: the ratio is what a user waits in the editor compared with pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from timing import median_seconds

from nextls.discovery import discover_tests, target_module
from nextls.runner import HARNESS, RunConfig, TargetModule, TestCase, run_tests
from nextls.sandbox import Limits, run_process, sandbox_dir
from nextls.splice import find_function
from nextls.trace.capture import trace_function

FUNCTION = '''def remove_Occ(s, ch):
    for i in range(len(s)):
        if s[i] == ch:
            s = s[0:i] + s[i + {shift}:]
            break
    for i in range(len(s) - 1, -1, -1):
        if s[i] == ch:
            s = s[0:i] + s[i + 1:]
            break
    return s
'''
ASSERTS = ['assert remove_Occ("hello", "l") == "heo"', 'assert remove_Occ("abcda", "a") == "bcd"',
           'assert remove_Occ("PHP", "P") == "H"']

PYTEST_MODULE = "def add(a, b):\n    return a - b\n"
PYTEST_FILE = '''from calc import add
import pytest


def test_small():
    assert add(1, 2) == 3


@pytest.mark.parametrize("a, b", [(0, 0), (2, 2), (5, -5)])
def test_cases(a, b):
    assert add(a, b) == a + b
'''
LIMITS = Limits(wall_time=10.0)


def candidate_sources(count: int) -> list[str]:
    """Distinct candidates (the first slice shift varies; only shift 1 passes)."""
    return [FUNCTION.format(shift=shift) for shift in range(count)]


def assert_tests(file: Path) -> list[TestCase]:
    return [TestCase(f"assert:{file.name}:{20 + n}", "assert", test, str(file), 20 + n)
            for n, test in enumerate(ASSERTS)]


def verify_warm(file: Path, source: str) -> bool:
    report = run_tests(TargetModule(str(file), source, str(file.parent)), assert_tests(file),
                       RunConfig(limits=LIMITS))
    return all(result.passed for result in report.results)


def verify_fresh_interpreter(file: Path, source: str) -> bool:
    """What a verification cost before the worker: a new interpreter running the harness."""
    with sandbox_dir() as work_dir:
        spec = {"filename": str(file), "source": source, "module_name": "", "root": str(file.parent),
                "sys_path": [str(file.parent)], "setup_code": "", "test_timeout": 5.0, "output_limit": 1 << 20,
                "results_path": os.path.join(work_dir, "results.jsonl"), "trace": None, "coverage": None,
                "secret": secrets.token_hex(16),
                "tests": [{"id": t.id, "kind": t.kind, "source": t.source, "file": t.file, "line": t.line}
                          for t in assert_tests(file)]}
        spec_path = Path(work_dir) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        result = run_process([sys.executable, str(HARNESS), str(spec_path)], cwd=work_dir, limits=LIMITS)
        return result.returncode == 0


def throughput(verify, file: Path, sources: list[str], threads: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda source: verify(file, source), sources))
    return len(sources) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "pyproject.toml").write_text("")
        file = root / "remove_occ.py"
        file.write_text(FUNCTION.format(shift=0))
        sources = candidate_sources(args.candidates)
        assert verify_warm(file, FUNCTION.format(shift=1)) and not verify_warm(file, sources[0])

        print("\n## 1. candidate verifications per second (MBPP-size function, 3 assert tests)")
        fresh = throughput(verify_fresh_interpreter, file, sources[: max(10, args.candidates // 10)], 2)
        for threads in (1, 2):
            warm = throughput(verify_warm, file, sources, threads)
            print(f"warm worker, {threads} thread(s): {warm:7.1f} candidates/s")
        print(f"fresh interpreter per run, 2 threads: {fresh:7.1f} candidates/s")

        print("\n## 2. one candidate verified against a pytest test file (4 tests), median of", args.repeat)
        module = root / "calc.py"
        module.write_text(PYTEST_MODULE)
        (root / "test_calc.py").write_text(PYTEST_FILE)
        tests = discover_tests(module, PYTEST_MODULE, find_function(PYTEST_MODULE, "add"))
        fixed = PYTEST_MODULE.replace("a - b", "a + b")
        run_tests(target_module(module, fixed, tests), tests)  # the worker is warm from here on
        warm = median_seconds(lambda: run_tests(target_module(module, fixed, tests), tests), args.repeat)
        pytest_argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_calc.py"]
        plain = median_seconds(lambda: subprocess.run(pytest_argv, cwd=root, capture_output=True, check=False),
                               args.repeat)
        print(f"warm worker: {warm:.3f} s ({1 / warm:.1f} candidates/s); python -m pytest: {plain:.3f} s; "
              f"ratio {warm / plain:.2f}")

        print("\n## 3. nextls trace of a pytest-hosted function (all tests, then the traced one), warm")
        traced = median_seconds(lambda: trace_function(module, "add"), args.repeat)
        print(f"trace_function: {traced:.3f} s; python -m pytest: {plain:.3f} s; ratio {traced / plain:.2f}")


if __name__ == "__main__":
    main()
