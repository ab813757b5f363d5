"""Test messages a user can read and a prompt can cache: doctests read like asserts, a timeout says how
long, and no temporary folder or memory address survives into a result."""

from __future__ import annotations

import textwrap
from pathlib import Path

from nextls.discovery import discover_tests, target_module
from nextls.messages import readable
from nextls.runner import RunConfig, TestCase, run_tests
from nextls.sandbox import Limits
from nextls.splice import find_function
from nextls.trace.capture import trace_function

DOCTESTS = '''\
def sign(a, b):
    """
    >>> sign(1, 2)
    -1
    >>> sign(2, 1)
    1
    """
    return 1


def show(rows):
    """
    >>> show(2)
    a
    b
    """
    for row in range(rows):
        print("a")


def inverse(x):
    """
    >>> inverse(0)
    0.0
    """
    return 1 / x


def checked(x):
    """
    >>> checked(-1)
    Traceback (most recent call last):
    ValueError: negative
    """
    return x


def spin(x):
    """
    >>> spin(1)
    1
    """
    while True:
        pass
'''


def doctest_messages(tmp_path: Path, source: str, names: list[str], timeout: float = 5.0) -> dict[str, str]:
    file = tmp_path / "funcs.py"
    file.write_text(source)
    tests = [test for name in names for test in discover_tests(file, source, find_function(source, name),
                                                               root=tmp_path)]
    report = run_tests(target_module(file, source, tests, root=tmp_path), tests,
                       RunConfig(test_timeout=timeout, limits=Limits(wall_time=30)))
    return {result.id.split(":", 1)[1]: f"{result.outcome.value}: {result.message}" for result in report.results}


def test_a_failing_doctest_reads_like_an_assert(tmp_path: Path) -> None:
    got = doctest_messages(tmp_path, DOCTESTS, ["sign", "show", "inverse", "checked"])
    assert got["sign"] == "failed: sign(1, 2) returned 1, expected -1"
    assert got["show"] == "failed: show(2) printed 'a\\na', expected 'a\\nb'"
    assert got["inverse"] == ("failed: inverse(0) raised ZeroDivisionError: division by zero "
                              "(line 26, in inverse)")
    assert got["checked"] == "failed: checked(-1) returned -1, expected it to raise ValueError: negative"


def test_a_doctest_that_hangs_is_a_timeout_not_a_failed_example(tmp_path: Path) -> None:
    got = doctest_messages(tmp_path, DOCTESTS, ["spin", "sign"], timeout=0.5)
    assert got["spin"] == "timeout: timed out after 0.5 s"
    assert got["sign"].startswith("failed: sign(1, 2)")  # the next test still has its own time


def test_a_pytest_test_that_hangs_says_how_long_it_ran(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    source = "def spin():\n    while True:\n        pass\n"
    (tmp_path / "work.py").write_text(source)
    (tmp_path / "test_work.py").write_text("from work import spin\n\n\ndef test_spin():\n    spin()\n")
    file = tmp_path / "work.py"
    tests = discover_tests(file, source, find_function(source, "spin"), root=tmp_path)
    report = run_tests(target_module(file, source, tests, root=tmp_path), tests,
                       RunConfig(test_timeout=0.5, limits=Limits(wall_time=60)))
    [result] = report.results
    assert (result.outcome.value, result.message) == ("timeout", "timed out after 0.5 s")


def test_results_name_no_temporary_folder_and_no_address(tmp_path: Path) -> None:
    source = textwrap.dedent('''\
        import os


        class Box:
            pass


        def where():
            return os.path.join(os.getcwd(), "out.txt")


        def box():
            return Box()
        ''')
    file = tmp_path / "paths.py"
    file.write_text(source)
    tests = [TestCase("where", "assert", "assert where() == 'x'", "<tests>", 1),
             TestCase("box", "assert", "assert box() == 1", "<tests>", 2),
             TestCase("open", "assert", "assert open(where()).read() == ''", "<tests>", 3)]
    report = run_tests(target_module(file, source, [], root=tmp_path), tests, RunConfig())
    got = {result.id: result.message for result in report.results}
    assert got["where"] == "where() returned 'out.txt', expected 'x'"
    assert got["box"] == "box() returned <paths.Box object>, expected 1"
    assert got["open"] == "FileNotFoundError: [Errno 2] No such file or directory: 'out.txt'"


def test_readable_rewrites_only_what_changes_from_run_to_run() -> None:
    assert readable("open('/tmp/nextls-sandbox-k2j3h4ab/data/in.txt')") == "open('data/in.txt')"
    assert readable("/tmp/nextls-sandbox-2007.503240-4qyaozvq/run-md8k7_30/out.txt") == "out.txt"
    assert readable("cwd: /var/tmp/nextls-sandbox-k2j3h4ab") == "cwd: ."
    assert readable("<function f at 0x7f3a2c1b9e40> is not <Box object at 0xdeadbeef>") == \
        "<function f> is not <Box object>"
    assert readable("/home/me/nextls-demo-project/src/app.py:3") == "/home/me/nextls-demo-project/src/app.py:3"
    assert readable("f(0x10) returned 16, expected 17") == "f(0x10) returned 16, expected 17"


def test_a_trace_of_a_test_that_timed_out_says_after_how_long(tmp_path: Path) -> None:
    file = tmp_path / "sleepy.py"
    file.write_text("import time\n\n\ndef nap(n):\n    time.sleep(30)\n    return n\n\n\nassert nap(1) == 2\n")
    report = trace_function(file, "nap", config=RunConfig(test_timeout=0.5, limits=Limits(wall_time=30)))
    assert "    time.sleep(30)  # (1) __exception__=TestTimeout('timed out after 0.5 s')" in report.rendered
    assert "assert nap(1) == 2  # timeout: timed out after 0.5 s" in report.rendered
