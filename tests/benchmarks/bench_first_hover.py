"""First hover with trace values after the diagnostics, in a real client: headless Neovim (as
tests/test_neovim.py drives it) on a file with 4 failing functions.

    OMP_WAIT_POLICY=PASSIVE python tests/benchmarks/bench_first_hover.py [--repeat 3]
                                  [--tests pytest,assert] [--backends debugpy,inprocess]

For each kind of test (pytest tests in a separate file, or asserts in the file) and trace backend, Neovim
opens the file, waits for the diagnostics, then hovers on the last failing function (the one the
background traces would reach last in file order) every 50 ms until the hover shows its trace. Prints
the median time from opening to the diagnostics and from the diagnostics to that hover. Needs `nvim`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "neovim" / "first_hover.lua"

MODULE = '''\
def mean(values):
    return sum(values) / (len(values) + 1)


def clamp(x, low, high):
    return max(low, min(x, low))


def word_count(text):
    return len(text.split(" ")) - 1


def last_index(items, target):
    for index in range(len(items)):
        if items[index] == target:
            return index
    return -1
'''
HOVER = (14, 12)  # 0-based: `if items[index] == target:` in last_index

PYTEST_TESTS = '''\
from textstats import clamp, last_index, mean, word_count


def test_mean():
    assert mean([1, 2, 3]) == 2


def test_clamp():
    assert clamp(5, 0, 3) == 3


def test_word_count():
    assert word_count("a b c") == 3


def test_last_index():
    assert last_index([1, 2, 1], 1) == 2
'''
ASSERTS = '''

assert mean([1, 2, 3]) == 2
assert clamp(5, 0, 3) == 3
assert word_count("a b c") == 3
assert last_index([1, 2, 1], 1) == 2
'''


def workspace(tests: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix="nextls-bench-hover-"))
    (root / "pytest.ini").write_text("[pytest]\n")
    if tests == "pytest":
        (root / "textstats.py").write_text(MODULE)
        (root / "test_textstats.py").write_text(PYTEST_TESTS)
    else:
        (root / "textstats.py").write_text(MODULE + ASSERTS)
    return root


def first_hover(nvim: str, tests: str, backend: str) -> dict:
    root = workspace(tests)
    try:
        out = root / "result.json"
        env = {**os.environ, "NEXTLS_NVIM_FILE": str(root / "textstats.py"), "NEXTLS_NVIM_OUT": str(out),
               "NEXTLS_NVIM_PYTHON": sys.executable, "NEXTLS_NVIM_HOVER": "{},{}".format(*HOVER),
               "NEXTLS_NVIM_SETTINGS": json.dumps({"traceBackend": backend, "debounceMs": 0,
                                                   "explainOnHover": False}),
               "OMP_WAIT_POLICY": "PASSIVE", "XDG_STATE_HOME": str(root / "state"),
               "XDG_DATA_HOME": str(root / "data")}
        subprocess.run([nvim, "--headless", "-u", "NONE", "-i", "NONE", "-n", "-c", f"luafile {SCRIPT}"],
                       env=env, cwd=root, capture_output=True, timeout=300, check=False)
        result = json.loads(out.read_text())
        if not result.get("ok"):
            raise RuntimeError(f"{tests}/{backend}: {result.get('error')} (last hover: {result.get('last_hover')!r})")
        if result["diagnostics"] != 4:
            raise RuntimeError(f"{tests}/{backend}: {result['diagnostics']} diagnostics, expected 4")
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tests", default="pytest,assert", help="pytest (a separate test file) and/or assert")
    parser.add_argument("--backends", default="debugpy,inprocess")
    args = parser.parse_args()
    nvim = shutil.which("nvim")
    if nvim is None:
        sys.exit("bench_first_hover.py needs Neovim (`apt-get install -y neovim`)")
    version = subprocess.run([nvim, "--version"], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    print(f"# {version}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; 4 failing functions, hover on the last; median of {args.repeat}")
    print(f"{'tests':<8}{'backend':<11}{'open -> diagnostics':>21}{'diagnostics -> hover with trace':>34}")
    started = time.perf_counter()
    for tests in args.tests.split(","):
        for backend in args.backends.split(","):
            runs = [first_hover(nvim, tests, backend) for _ in range(args.repeat)]
            diagnostics = statistics.median(run["diagnostics_ms"] for run in runs) / 1000
            hover = statistics.median(run["hover_ms"] - run["diagnostics_ms"] for run in runs) / 1000
            each = ", ".join(f"{(run['hover_ms'] - run['diagnostics_ms']) / 1000:.2f}" for run in runs)
            print(f"{tests:<8}{backend:<11}{diagnostics:>19.2f} s{hover:>32.2f} s   ({each})")
    print(f"wall {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
