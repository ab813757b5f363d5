"""The warm test worker behind every run: fresh state per run, a broken run costs only itself, verdicts that
the code under test cannot forge, per-test line coverage."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest
from processes import is_alive, pids_whose_cmdline_contains

from nextls.discovery import discover_tests, target_module
from nextls.runner import RunCancelled, RunConfig, TargetModule, TestCase, TestOutcome, run_tests
from nextls.sandbox import Limits
from nextls.splice import find_function
from nextls.worker import POOL, WorkerPool


def _assert_tests(file: Path, calls: list[str]) -> list[TestCase]:
    return [TestCase(f"assert:{file.name}:{100 + n}", "assert", call, str(file), 100 + n)
            for n, call in enumerate(calls)]


def _run(tmp_path: Path, source: str, calls: list[str], **options) -> dict[str, object]:
    file = tmp_path / "target.py"
    file.write_text(source)
    tests = _assert_tests(file, calls)
    report = run_tests(TargetModule(str(file), source, str(tmp_path)), tests, **options)
    return {result.id: result for result in report.results}


def _pytest_project(tmp_path: Path, body: str, test_body: str, conftest: str = "") -> tuple[Path, str]:
    (tmp_path / "pyproject.toml").write_text("")
    module = tmp_path / "calc.py"
    module.write_text(body)
    (tmp_path / "test_calc.py").write_text(test_body)
    if conftest:
        (tmp_path / "conftest.py").write_text(conftest)
    return module, body


def _pytest_outcomes(module: Path, source: str) -> dict[str, str]:
    tests = discover_tests(module, source, find_function(source, "add"))
    report = run_tests(target_module(module, source, tests), tests)
    return {result.id.split("::")[-1]: result.outcome.value for result in report.results}


TEST_CALC = "from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n"


def test_pytest_runs_see_each_change_to_the_function_the_tests_and_conftest(tmp_path):
    module, source = _pytest_project(tmp_path, "def add(a, b):\n    return a - b\n", TEST_CALC)
    assert _pytest_outcomes(module, source) == {"test_add": "failed"}
    fixed = "def add(a, b):\n    return a + b\n"
    module.write_text(fixed)
    assert _pytest_outcomes(module, fixed) == {"test_add": "passed"}
    (tmp_path / "test_calc.py").write_text(TEST_CALC.replace("== 3", "== 4"))
    assert _pytest_outcomes(module, fixed) == {"test_add": "failed"}
    # a conftest written after the worker started is loaded by the next run
    (tmp_path / "test_calc.py").write_text(TEST_CALC.replace("assert add(1, 2) == 3", "assert add(1, 2) == OFFSET"))
    (tmp_path / "conftest.py").write_text("import builtins\nbuiltins.OFFSET = 3\n")
    assert _pytest_outcomes(module, fixed) == {"test_add": "passed"}
    (tmp_path / "conftest.py").write_text("import builtins\nbuiltins.OFFSET = 5\n")
    assert _pytest_outcomes(module, fixed) == {"test_add": "failed"}


def test_no_state_leaks_from_one_run_to_the_next(tmp_path):
    source = textwrap.dedent("""\
        import builtins
        def bump():
            builtins.COUNTER = getattr(builtins, "COUNTER", 0) + 1
            return builtins.COUNTER
        """)
    for _ in range(3):
        results = _run(tmp_path, source, ["assert bump() == 1"])
        assert [result.outcome for result in results.values()] == [TestOutcome.PASSED]


@pytest.mark.parametrize("breaker, outcome", [
    ("import ctypes; ctypes.string_at(0)", TestOutcome.CRASHED),  # segfault
    ("import os; os._exit(3)", TestOutcome.CRASHED),
    ("import os\nwhile True:\n    os.fork()", None),  # fork bomb: stopped by the process limit or the time limit
    ("while True: pass", TestOutcome.TIMEOUT),
])
def test_a_test_that_breaks_its_process_costs_that_test_only(tmp_path, breaker, outcome):
    source = "def f(x):\n    return x\n\ndef breaker():\n" + textwrap.indent(breaker, "    ") + "\n"
    config = RunConfig(test_timeout=2.0, limits=Limits(wall_time=4.0, max_processes=32))
    results = _run(tmp_path, source, ["assert f(1) == 1", "assert breaker() is None", "assert f(2) == 2"],
                   config=config)
    ids = list(results)
    assert results[ids[0]].outcome is TestOutcome.PASSED
    assert results[ids[2]].outcome is TestOutcome.PASSED
    assert not results[ids[1]].passed
    if outcome is not None:
        assert results[ids[1]].outcome is outcome, results[ids[1]]
    # and the worker's next run is unaffected
    again = _run(tmp_path, source, ["assert f(5) == 5"])
    assert [result.outcome for result in again.values()] == [TestOutcome.PASSED]


def test_code_under_test_cannot_forge_a_passing_verdict(tmp_path):
    forger = textwrap.dedent("""\
        import glob, json, os
        def f(x):
            for path in glob.glob("*.jsonl") + glob.glob("/tmp/nextls-sandbox-*/*.jsonl"):
                with open(path, "a") as results:
                    for n in range(100, 103):
                        record = {"id": f"assert:target.py:{n}", "outcome": "passed", "message": "",
                                  "duration": 0.0}
                        results.write(json.dumps(record) + "\\n")
                        results.write(json.dumps(dict(record, mac="0" * 64)) + "\\n")
            os._exit(0)
        """)
    results = _run(tmp_path, forger, ["assert f(1) == 2", "assert f(2) == 3"])
    assert results, "no results at all"
    assert not any(result.passed for result in results.values()), results


def test_coverage_lists_the_lines_each_test_ran_in_the_function(tmp_path):
    source = "def f(x):\n    if x > 0:\n        return 1\n    return -1\n"
    results = list(_run(tmp_path, source, ["assert f(1) == 1", "assert f(-1) == 1"], coverage="f").values())
    assert results[0].lines == (2, 3)
    assert results[1].lines == (2, 4)
    assert [result.passed for result in results] == [True, False]


def test_cancelling_a_run_stops_it_promptly(tmp_path):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(RunCancelled):
        _run(tmp_path, "import time\ndef f():\n    time.sleep(30)\n", ["assert f() is None"], cancel=cancel,
             config=RunConfig(test_timeout=30, limits=Limits(wall_time=40)))
    assert time.monotonic() - started < 10
    assert [r.outcome for r in _run(tmp_path, "def g():\n    return 1\n", ["assert g() == 1"]).values()] == [
        TestOutcome.PASSED]


def test_a_cancel_that_crosses_the_answer_of_its_run_leaves_the_worker_serving(tmp_path):
    assert _run(tmp_path, "def g():\n    return 1\n", ["assert g() == 1"])
    idle = [worker for workers in POOL._idle.values() for worker in workers]
    for worker in idle:  # what the server sends when its cancel and the run's answer cross
        worker._send({"cancel": True})
    results = _run(tmp_path, "def g():\n    return 1\n", ["assert g() == 1"])
    assert [result.outcome for result in results.values()] == [TestOutcome.PASSED]
    assert idle and all(worker.alive for worker in idle)


def test_a_killed_worker_is_replaced(tmp_path):
    assert _run(tmp_path, "def g():\n    return 1\n", ["assert g() == 1"])
    for workers in POOL._idle.values():
        for worker in workers:
            os.kill(worker.process.proc.pid, signal.SIGKILL)
            worker.process.proc.wait()
    results = _run(tmp_path, "def g():\n    return 1\n", ["assert g() == 1"])
    assert [result.outcome for result in results.values()] == [TestOutcome.PASSED]


def test_a_run_waits_for_the_worker_being_prestarted_instead_of_starting_a_second_one():
    pool = WorkerPool(size=2)
    limits = Limits()
    pool.prestart(os.sys.executable, limits, pytest=False)
    with pool.worker(os.sys.executable, limits, pytest=False) as worker:
        assert worker.alive and pool._alive == 1
    pool.close()


def test_a_worker_is_retired_when_its_installed_packages_change(tmp_path):
    pool = WorkerPool(size=1)
    site = tmp_path / "site-packages"
    site.mkdir()
    limits = Limits()
    with pool.worker(os.sys.executable, limits) as first:
        first.info["site"] = [str(site)]
        first.site_stamp = (site.stat().st_mtime_ns,)
    with pool.worker(os.sys.executable, limits) as second:
        assert second is first
    (site / "newly_installed").mkdir()
    os.utime(site, (time.time() + 5, time.time() + 5))
    with pool.worker(os.sys.executable, limits) as third:
        assert third is not first and third.alive
    assert not first.alive
    pool.close()


def test_a_worker_outlives_the_thread_that_asked_for_it(tmp_path):
    """The parent-death signal follows the thread that forked the worker: a run from a short-lived thread
    must not leave behind a worker that dies with that thread."""
    pool = WorkerPool(size=1)
    started: list = []

    def first_run() -> None:
        with pool.worker(os.sys.executable, Limits(), pytest=False) as worker:
            started.append(worker)

    thread = threading.Thread(target=first_run)
    thread.start()
    thread.join()
    time.sleep(0.5)
    assert started[0].alive
    with pool.worker(os.sys.executable, Limits(), pytest=False) as again:
        assert again is started[0]
    pool.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="as a normal user the runs are not under a uid of their own to scan")
def test_a_process_that_escapes_the_runs_session_is_killed_with_the_run(tmp_path):
    marker = f"nextls-escapee-{os.getpid()}-{time.monotonic_ns()}"
    source = textwrap.dedent(f"""\
        import os, subprocess, sys
        def escape():
            if os.fork() == 0:
                os.setsid()
                subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "{marker}"],
                                 start_new_session=True)
                os._exit(0)
            os.wait()
            return 1
        """)
    results = _run(tmp_path, source, ["assert escape() == 1"])
    assert [result.outcome for result in results.values()] == [TestOutcome.PASSED]
    time.sleep(0.2)
    survivors = [pid for pid in pids_whose_cmdline_contains(marker) if is_alive(pid)]
    assert not survivors
