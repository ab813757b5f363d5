"""Running a function's tests: per-test results survive tests that hang, crash or flood output."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import pytest

from nextls.discovery import discover_tests, find_workspace_root, module_name_for, target_module
from nextls.runner import RunCancelled, RunConfig, TestCase, TestOutcome, run_tests
from nextls.sandbox import Limits
from nextls.splice import find_function
from nextls.trace.model import Trace, TraceEvent
from nextls.trace.render import RenderOptions, render_naturalized, strip_trace_comments

MODULE = '''\
import os
import sys


def probe(mode):
    if mode == "hang":
        while True:
            pass
    if mode == "exit":
        sys.exit(3)
    if mode == "os_exit":
        os._exit(7)
    if mode == "segfault":
        import ctypes
        ctypes.string_at(0)
    if mode == "flood":
        while True:
            print("x" * 1000)
    if mode == "boom":
        raise KeyError(mode)
    return mode
'''


def cases(*modes: str) -> list[TestCase]:
    return [TestCase(id=mode, kind="assert", source=f"assert probe({mode!r}) == 'ok'", file="<tests>", line=1)
            for mode in modes]


@pytest.fixture
def module(tmp_path: Path):
    file = tmp_path / "probe.py"
    file.write_text(MODULE)
    return target_module(file, MODULE, [], root=tmp_path)


def outcomes(report) -> dict[str, tuple[str, str]]:
    return {result.id: (result.outcome.value, result.message) for result in report.results}


def test_each_way_a_test_can_end_is_reported_and_the_rest_still_run(module) -> None:
    config = RunConfig(test_timeout=1.0, limits=Limits(wall_time=20, output_bytes=64 << 10))
    report = run_tests(module, cases("ok", "hang", "exit", "boom", "os_exit", "flood", "segfault", "nope"), config)
    got = outcomes(report)
    assert got["ok"] == ("passed", "")
    assert got["hang"] == ("timeout", "timed out after 1 s")
    assert got["exit"][0] == "error" and got["exit"][1].startswith("SystemExit: 3")
    assert got["boom"][0] == "error" and "KeyError: 'boom'" in got["boom"][1] and "in probe" in got["boom"][1]
    assert got["os_exit"][0] == "crashed" and "exited with code 7" in got["os_exit"][1]
    assert got["flood"][0] == "output-truncated"
    assert got["segfault"][0] == "crashed" and "SIGSEGV" in got["segfault"][1]
    assert got["nope"] == ("failed", "probe('nope') returned 'nope', expected 'ok'")
    assert len(report.processes) == 3  # the two process killers each cost a fresh process for the rest


def test_a_test_that_outlives_the_process_limit_is_a_timeout(module) -> None:
    # the per-test alarm cannot interrupt C code: the process's wall limit must catch it
    sleeper = TestCase(id="sleep", kind="assert", source="assert __import__('time').sleep(30) is None",
                       file="<tests>", line=1)
    started = time.monotonic()
    report = run_tests(module, [sleeper, *cases("ok")], RunConfig(test_timeout=30, limits=Limits(wall_time=2)))
    assert time.monotonic() - started < 10
    got = outcomes(report)
    assert got["sleep"][0] == "timeout" and "time limit" in got["sleep"][1]
    assert got["ok"] == ("passed", "")


def test_a_module_that_fails_to_load_fails_every_test(tmp_path: Path) -> None:
    file = tmp_path / "broken.py"
    source = "import no_such_module_here\n\n\ndef probe(x):\n    return x\n"
    file.write_text(source)
    report = run_tests(target_module(file, source, []), cases("ok", "nope"))
    for outcome, message in outcomes(report).values():
        assert outcome == "error"
        assert "loading broken.py failed: ModuleNotFoundError" in message


def test_cancel_kills_the_run(module) -> None:
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(RunCancelled):
        run_tests(module, cases("hang"), RunConfig(test_timeout=30, limits=Limits(wall_time=30)), cancel=cancel)
    assert time.monotonic() - started < 3


def test_setup_code_runs_before_the_tests(module) -> None:
    test = TestCase(id="setup", kind="assert", source="assert probe(VALUE) == 'ok'", file="<tests>", line=1)
    report = run_tests(module, [test], RunConfig(setup_code="VALUE = 'ok'"))
    assert outcomes(report) == {"setup": ("passed", "")}


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_discovery_finds_doctests_asserts_and_pytest_tests(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", "")
    write(tmp_path, "pkg/__init__.py", "")
    module = write(tmp_path, "pkg/calc.py", '''\
        def half(x):
            """Half of x.

            >>> half(4)
            2
            """
            return x // 2


        def other(x):
            return x


        assert half(6) == 3
        assert other(1) == 1

        if __name__ == "__main__":
            assert half(8) == 4
        ''')
    write(tmp_path, "tests/test_calc.py", '''\
        from pkg.calc import half


        def test_half():
            assert half(2) == 1


        class TestMore:
            def test_odd(self):
                assert half(3) == 1

            def test_unrelated(self):
                assert 1 + 1 == 2
        ''')
    write(tmp_path, "tests/test_elsewhere.py", "from other_package import half\n\n\ndef test_x():\n    half(1)\n")
    source = module.read_text()
    tests = discover_tests(module, source, find_function(source, "half"))
    assert [(test.kind, test.id) for test in tests] == [
        ("doctest", "doctest:half"),
        ("assert", "assert:pkg/calc.py:14"),
        ("assert", "assert:pkg/calc.py:18"),
        ("pytest", "tests/test_calc.py::test_half"),
        ("pytest", "tests/test_calc.py::TestMore::test_odd"),
    ]
    assert find_workspace_root(module) == tmp_path.resolve()
    assert module_name_for(module) == ("pkg.calc", tmp_path.resolve())
    loaded = target_module(module, source, tests)
    assert loaded.source.splitlines()[13] == "pass" and "assert other(1) == 1" in loaded.source
    assert len(loaded.source.splitlines()) == len(source.splitlines())
    report = run_tests(loaded, tests)
    assert {result.id: result.outcome for result in report.results} == {
        "doctest:half": TestOutcome.PASSED, "assert:pkg/calc.py:14": TestOutcome.PASSED,
        "assert:pkg/calc.py:18": TestOutcome.PASSED, "tests/test_calc.py::test_half": TestOutcome.PASSED,
        "tests/test_calc.py::TestMore::test_odd": TestOutcome.PASSED}


def test_a_loop_of_asserts_is_one_test(tmp_path: Path) -> None:
    """HumanEval's style: property checks in a loop at the module's top level."""
    module = write(tmp_path, "shift.py", """\
        def shift(s):
            return "".join(chr(ord(ch) + 2) for ch in s)


        def unshift(s):
            return "".join(chr(ord(ch) - 1) for ch in s)


        for text in ["abc", "xy"]:
            assert unshift(shift(text)) == text
        """)
    source = module.read_text()
    tests = discover_tests(module, source, find_function(source, "unshift"))
    assert [(test.kind, test.id, test.line) for test in tests] == [("assert", "assert:shift.py:9", 9)]
    loaded = target_module(module, source, tests)
    assert len(loaded.source.splitlines()) == len(source.splitlines())
    assert run_tests(loaded, tests).results[0].outcome is TestOutcome.FAILED
    fixed = source.replace("ord(ch) - 1", "ord(ch) - 2")
    assert run_tests(target_module(module, fixed, tests), tests).results[0].outcome is TestOutcome.PASSED


def test_pytest_tests_see_the_source_they_are_given_not_the_disk(tmp_path: Path) -> None:
    write(tmp_path, "pytest.ini", "[pytest]\n")
    module = write(tmp_path, "mod.py", "def inc(x):\n    return x\n")
    write(tmp_path, "test_mod.py", "from mod import inc\n\n\ndef test_inc():\n    assert inc(1) == 2\n")
    source = module.read_text()
    tests = discover_tests(module, source, find_function(source, "inc"))
    assert run_tests(target_module(module, source, tests), tests).results[0].outcome is TestOutcome.FAILED
    fixed = source.replace("return x", "return x + 1")
    assert run_tests(target_module(module, fixed, tests), tests).results[0].outcome is TestOutcome.PASSED


def test_tests_file_of_plain_asserts(tmp_path: Path) -> None:
    module = write(tmp_path, "solution.py", "def add(a, b):\n    return a - b\n")
    tests_file = write(tmp_path, "tests.txt", "assert add(1, 1) == 2\nassert add(0, 0) == 0\n")
    source = module.read_text()
    tests = discover_tests(module, source, find_function(source, "add"), tests_file=tests_file)
    report = run_tests(target_module(module, source, tests), tests)
    assert [result.outcome.value for result in report.results] == ["failed", "passed"]


def trace_of(*events: tuple[int, int, str, dict]) -> Trace:
    return Trace(filename="f.py", qualname="f",
                 events=[TraceEvent(step, 0, line, kind, values) for step, line, kind, values in events])


def test_render_elides_the_middle_of_long_runs_and_fits_a_token_budget() -> None:
    source = "def f(n):\n    for i in range(n):\n        pass\n    return n"
    loop = [(step, 2, "line", {"i": str(step - 1)}) for step in range(1, 9)]
    trace = trace_of((0, 1, "call", {"n": "8"}), *loop, (9, 4, "line", {"__return__": "8"}))
    text = render_naturalized(source, 1, trace, test_source="assert f(8) == 9", test_result="failed: f(8) returned 8")
    assert text.splitlines()[1] == "    for i in range(n):  # (1) i=0; (2) i=1; (3) i=2; ...; (8) i=7"
    assert text.splitlines()[-1] == "assert f(8) == 9  # failed: f(8) returned 8"
    wide = render_naturalized(source, 1, trace, options=RenderOptions(head=10))
    assert "(5) i=4" in wide and "..." not in wide
    budget = render_naturalized(source, 1, trace, options=RenderOptions(max_tokens=28))
    assert len(budget) < len(text) and "(8) i=7" in budget and "(2) i=1" not in budget


def test_trace_comments_can_be_stripped_back_off() -> None:
    source = "def f(n):\n    x = n + 1\n    return x\n"
    trace = trace_of((0, 1, "call", {"n": "1"}), (1, 2, "line", {"x": "2"}), (2, 3, "line", {"__return__": "2"}))
    assert strip_trace_comments(render_naturalized(source, 1, trace)) == source
