"""Test discovery on a file with many tested functions: one function at a time against one pass.

    python tests/benchmarks/bench_discovery.py [--functions 250 500 1000] [--repeat 3]

Writes a module with N functions, each with a plain assert below it and a pytest test in a test file
next to it, and prints, per N, the median seconds of `discover_tests` called for every function (what
the server's diagnostics did before) and of one `discover_all_tests` call, and their ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nextls.discovery import discover_all_tests, discover_tests
from nextls.splice import list_functions


def write_workspace(root: Path, count: int) -> tuple[Path, str]:
    (root / "pytest.ini").write_text("[pytest]\n")
    module = "\n\n".join(f"def f{i}(x):\n    return x + {i}\n\n\nassert f{i}(1) == {i + 1}\n" for i in range(count))
    tests = "from mod import *\n\n" + "\n".join(f"def test_f{i}():\n    assert f{i}(0) == {i}\n" for i in range(count))
    (root / "mod.py").write_text(module)
    (root / "test_mod.py").write_text(tests)
    return root / "mod.py", module


def median_seconds(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"# CPython {platform.python_version()}, {platform.machine()}, median of {args.repeat}")
    print(f"{'functions':>9}  {'per function (s)':>16}  {'one pass (s)':>12}  {'ratio':>7}")
    for count in args.functions:
        with tempfile.TemporaryDirectory() as folder:
            file, source = write_workspace(Path(folder), count)
            spans = list_functions(source)

            def per_function(file=file, source=source, spans=spans, root=Path(folder)) -> None:
                for span in spans:
                    assert len(discover_tests(file, source, span, root=root)) == 2

            def one_pass(file=file, source=source, spans=spans, root=Path(folder)) -> None:
                assert all(len(tests) == 2 for tests in discover_all_tests(file, source, spans, root=root).values())

            slow = median_seconds(per_function, args.repeat)
            fast = median_seconds(one_pass, args.repeat)
            print(f"{count:>9}  {slow:>16.3f}  {fast:>12.4f}  {slow / fast:>6.0f}x")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
