"""Trace a function end to end: find its tests, run them, trace the first failing one, render it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from nextls.discovery import discover_all_tests, discover_tests, find_workspace_root, target_module
from nextls.runner import RunConfig, RunReport, TestCase, TestResult, TraceRequest, run_tests
from nextls.splice import FunctionSpan, find_function, function_source, list_functions
from nextls.trace.model import Trace
from nextls.trace.render import RenderOptions, render_naturalized

BACKENDS = ("inprocess", "debugpy")


class NoTestsError(LookupError):
    """The function has no tests we can run (or not the one asked for)."""


class SourceError(ValueError):
    """The file cannot be read as Python source."""


@dataclass
class TraceReport:
    file: Path
    span: FunctionSpan
    tests: list[TestCase]
    results: list[TestResult]
    traced_test: TestCase | None = None
    traced_result: TestResult | None = None
    trace: Trace | None = None
    rendered: str = ""
    source: str = ""  # the file's text the tests ran against
    function_text: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def failing(self) -> list[TestResult]:
        return [result for result in self.results if not result.passed]

    def to_json(self) -> dict:
        return {
            "file": str(self.file), "function": self.span.qualname,
            "lines": [self.span.start_line, self.span.end_line],
            "tests": [result.to_json() for result in self.results],
            "traced_test": self.traced_test.id if self.traced_test else None,
            "trace": self.trace.to_json() if self.trace else None,
            "rendered": self.rendered,
        }


def read_source(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError(f"{file}: no such file") from None
    except UnicodeDecodeError as error:
        raise SourceError(f"{file}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise SourceError(f"{file}: cannot read it ({error.strerror})") from None


def describe_result(result: TestResult) -> str:
    return f"{result.outcome.value}: {result.message}" if result.message else result.outcome.value


def trace_function(file: Path, target: str | int, *, source: str | None = None, tests_file: Path | None = None,
                   test_id: str | None = None, backend: str = "inprocess", config: RunConfig = RunConfig(),
                   max_steps: int = 10_000, render_options: RenderOptions | None = None,
                   cancel: threading.Event | None = None, results: list[TestResult] | None = None) -> TraceReport:
    """Run the function's tests, then trace the chosen test (`test_id`, else the first failing one).

    `source` is the file's text when it differs from the disk (an editor's unsaved buffer). `results` are
    the results of these very tests on this very source, when a caller has them already (the language
    server's diagnostics): the tests are then not run again before the traced run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown trace backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    source = read_source(file) if source is None else source
    span = find_function(source, target)
    root = find_workspace_root(file)
    tests = discover_tests(file, source, span, root=root, tests_file=tests_file)
    # the asserts of every function in the file are blanked, those of unselected tests and of other functions
    # too: left in, importing the module would fail on the first failing one
    every = discover_all_tests(file, source, list_functions(source), root=root)
    module = target_module(file, source, [test for found in every.values() for test in found], root=root)
    if test_id is not None:
        tests = [test for test in tests if test.id == test_id] or _no_such_test(test_id, tests)
    if not tests:
        raise NoTestsError(f"no tests found for {span.qualname} in {file}: add a doctest, an `assert "
                           f"{span.name}(...) == ...` line, a pytest test, or pass a tests file")
    started = time.perf_counter()
    run = RunReport(results, []) if results is not None else run_tests(module, tests, config, cancel=cancel)
    report = TraceReport(file=file, span=span, tests=tests, results=run.results, source=source,
                         function_text=function_source(source, span))
    report.timings["run"] = time.perf_counter() - started
    chosen = next((t for t in tests if test_id is not None or not all(r.passed for r in run.results_for(t.id))),
                  None)
    if chosen is None:
        return report
    request = TraceRequest(qualname=span.qualname, test_id=chosen.id, backend=backend, max_steps=max_steps)
    started = time.perf_counter()
    traced_run = run_tests(module, [chosen], config, trace=request, cancel=cancel)
    report.timings["trace"] = time.perf_counter() - started
    report.traced_test = chosen
    report.traced_result = traced_run.results[0] if traced_run.results else None
    report.trace = traced_run.trace
    if report.trace is not None:
        lines = source.splitlines()[span.start_line - 1: span.end_line]
        report.rendered = render_naturalized(
            "\n".join(lines), span.start_line, report.trace,
            test_source=None if chosen.kind == "doctest" else chosen.source,
            test_result=describe_result(report.traced_result) if report.traced_result else None,
            options=render_options)
    return report


def _no_such_test(test_id: str, tests: list[TestCase]) -> list[TestCase]:
    available = ", ".join(test.id for test in tests) or "none"
    raise NoTestsError(f"no test {test_id!r} for this function; its tests: {available}")
