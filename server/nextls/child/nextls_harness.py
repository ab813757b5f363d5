"""Runs a function's tests in the child process and writes one JSON line per test (stdlib only).

Usage: python nextls_harness.py SPEC.json

The spec (written by `nextls.runner`) names the module to load (its source, which may be a candidate
fix spliced into the user's file, compiled under the file's real path), setup code, and the tests:
plain asserts, doctests, or pytest node ids. Results go to `results_path`, flushed after each test,
so a run that is killed still tells which tests finished. One test can be traced: the in-process
backend installs `nextls_recorder` around it; the debugpy backend stops at a breakpoint before and after
it, and its client injects and collects the recorder through DAP.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import io
import json
import operator
import os
import signal
import sys
import time
import traceback
import types

OUTCOME_PASSED = "passed"
OUTCOME_FAILED = "failed"
OUTCOME_ERROR = "error"
OUTCOME_TIMEOUT = "timeout"
OUTCOME_OUTPUT_TRUNCATED = "output-truncated"


class TestTimeout(BaseException):
    """Raised by the per-test alarm; a BaseException so that `except Exception` in user code cannot eat it."""


class OutputLimitExceeded(BaseException):
    """Raised when a test writes more than its share of output."""


class CappedStream(io.TextIOBase):
    """Counts what a test prints and stops the test once it passes the cap."""

    def __init__(self, inner, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.written = 0

    def write(self, text: str) -> int:
        self.written += len(text)
        if self.written > self.limit:
            raise OutputLimitExceeded()
        return self.inner.write(text)

    def flush(self) -> None:
        self.inner.flush()

    @property
    def encoding(self) -> str:
        return getattr(self.inner, "encoding", "utf-8")


def _on_alarm(signum, frame) -> None:
    raise TestTimeout()


_COMPARISONS = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not,
}


def short_repr(value: object, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception as error:
        return f"<{type(value).__name__} (repr raised {type(error).__name__})>"
    return text if len(text) <= limit else text[: limit // 2] + "..." + text[-limit // 2:]


def run_assert(source: str, namespace: dict, filename: str, lineno: int) -> None:
    """Run an assert statement; a failing `assert a <op> b` says what each side was."""
    tree = ast.parse(source, filename)
    ast.increment_lineno(tree, lineno - 1)
    statement = tree.body[0] if len(tree.body) == 1 else None
    if not (isinstance(statement, ast.Assert) and isinstance(statement.test, ast.Compare)
            and len(statement.test.ops) == 1 and type(statement.test.ops[0]) in _COMPARISONS):
        exec(compile(tree, filename, "exec"), namespace)
        return
    test = statement.test
    left = eval(compile(ast.Expression(test.left), filename, "eval"), namespace)
    right = eval(compile(ast.Expression(test.comparators[0]), filename, "eval"), namespace)
    if _COMPARISONS[type(test.ops[0])](left, right):
        return
    if isinstance(test.ops[0], ast.Eq):
        message = f"{ast.unparse(test.left)} returned {short_repr(left)}, expected {short_repr(right)}"
    else:
        right_source = ast.unparse(test.comparators[0])
        message = f"{ast.unparse(test.left)} is {short_repr(left)}, {right_source} is {short_repr(right)}"
    raise AssertionError(message)


def run_doctest(source: str, namespace: dict, name: str, filename: str, lineno: int) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(source, dict(namespace), name, filename, lineno)
    report: list[str] = []
    runner = doctest.DocTestRunner(verbose=False, optionflags=doctest.ELLIPSIS)
    result = runner.run(test, out=report.append, clear_globs=False)
    if result.failed:
        raise AssertionError("".join(report).strip())


def describe_error(error: BaseException, filename: str) -> str:
    """`Type: message`, plus where in the user's file it was raised."""
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if frame.filename == filename]
    if frames:
        text += f" (line {frames[-1].lineno}, in {frames[-1].name})"
    return text


class TraceControl:
    """Starts and stops the recording around the traced test, the way the backend asks for."""

    def __init__(self, spec: dict | None) -> None:
        self.spec = spec
        self.debugpy = None

    def _attach_debugger(self):
        """Start debugpy and wait for the client, just before the traced test: the module load and
        pytest's collection run before that without the debugger's tracing overhead."""
        import debugpy  # the debugpy backend puts it on the path

        try:  # pydevd speaking DAP itself saves starting the adapter process (debugpy >= 1.8.1)
            _, port = debugpy.listen(("127.0.0.1", 0), in_process_debug_adapter=True)
        except TypeError:
            _, port = debugpy.listen(("127.0.0.1", 0))
        with open(self.spec["port_file"] + ".tmp", "w") as out:
            out.write(str(port))
        os.replace(self.spec["port_file"] + ".tmp", self.spec["port_file"])
        debugpy.wait_for_client()
        return debugpy

    def wants(self, test_id: str) -> bool:
        return bool(self.spec) and self.spec["test_id"] == test_id

    def begin(self) -> None:
        if self.spec["backend"] == "debugpy":
            self.debugpy = self.debugpy or self._attach_debugger()
            self.debugpy.breakpoint()  # the client injects the recorder here
        else:
            import nextls_recorder

            nextls_recorder.start(self.spec["filename"], self.spec["qualname"], self.spec["max_steps"])

    def end(self) -> None:
        if self.spec["backend"] == "debugpy":
            self.debugpy.breakpoint()  # the client collects the recording here
        else:
            import nextls_recorder

            nextls_recorder.stop(self.spec["out"])


class Harness:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.filename = os.path.realpath(spec["filename"])
        self.results = open(spec["results_path"], "a", encoding="utf-8")
        self.test_timeout = float(spec.get("test_timeout", 5.0))
        self.output_limit = int(spec.get("output_limit", 1 << 20))
        self.trace = TraceControl(spec.get("trace"))

    def report_start(self, test_id: str) -> None:
        """Mark a test as started: if the process dies now, the runner knows which test killed it."""
        self.results.write(json.dumps({"id": test_id, "event": "start"}) + "\n")
        self.results.flush()

    def report(self, test_id: str, outcome: str, message: str = "", duration: float = 0.0) -> None:
        self.results.write(json.dumps({"id": test_id, "outcome": outcome, "message": message,
                                       "duration": round(duration, 6)}) + "\n")
        self.results.flush()

    def load_module(self) -> types.ModuleType:
        """Compile the given source under the file's real path, so traces and tracebacks point at it."""
        name = self.spec.get("module_name") or os.path.splitext(os.path.basename(self.filename))[0]
        package, _, stem = name.rpartition(".")
        module = types.ModuleType(name)
        module.__file__ = self.filename
        module.__package__ = package
        if package:  # relative imports inside the module need its package imported first
            setattr(importlib.import_module(package), stem, module)
        # registered before pytest imports the tests, so they see this source (a candidate fix, say)
        sys.modules[name] = module
        code = compile(self.spec["source"], self.filename, "exec")
        signal.setitimer(signal.ITIMER_REAL, self.test_timeout)  # an import can hang too
        try:
            exec(code, module.__dict__)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return module

    def run(self) -> None:
        sys.path[:0] = self.spec.get("sys_path", [])
        signal.signal(signal.SIGALRM, _on_alarm)
        sys.stdout = CappedStream(sys.stdout, self.output_limit)
        sys.stderr = CappedStream(sys.stderr, self.output_limit)
        tests = self.spec["tests"]
        try:
            module = self.load_module()
            namespace = dict(module.__dict__)
            if self.spec.get("setup_code"):
                exec(compile(self.spec["setup_code"], "<test setup>", "exec"), namespace)
        except BaseException as error:
            message = f"loading {os.path.basename(self.filename)} failed: {describe_error(error, self.filename)}"
            if isinstance(error, TestTimeout):
                message = f"loading {os.path.basename(self.filename)} timed out"
            for test in tests:
                self.report(test["id"], OUTCOME_ERROR, message)
            return
        pytest_tests = [test for test in tests if test["kind"] == "pytest"]
        for test in tests:
            if test["kind"] != "pytest":
                self.run_one(test, namespace)
        if pytest_tests:
            self.run_pytest(pytest_tests)

    def run_one(self, test: dict, namespace: dict) -> None:
        traced = self.trace.wants(test["id"])
        namespace = dict(namespace)  # a test must not see another test's globals
        self.report_start(test["id"])
        started = time.perf_counter()
        outcome, message = OUTCOME_PASSED, ""
        if traced:
            self.trace.begin()
        signal.setitimer(signal.ITIMER_REAL, self.test_timeout)
        try:
            if test["kind"] == "assert":
                run_assert(test["source"], namespace, test.get("file", "<test>"), test.get("line", 1))
            else:
                run_doctest(test["source"], namespace, test["id"], self.filename, test.get("line", 1))
        except AssertionError as error:
            outcome, message = OUTCOME_FAILED, str(error) or describe_error(error, self.filename)
        except TestTimeout:
            outcome, message = OUTCOME_TIMEOUT, f"timed out after {self.test_timeout:g}s"
        except OutputLimitExceeded:
            outcome, message = OUTCOME_OUTPUT_TRUNCATED, f"printed more than {self.output_limit} characters"
        except BaseException as error:
            outcome, message = OUTCOME_ERROR, describe_error(error, self.filename)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        duration = time.perf_counter() - started
        if traced:
            self.trace.end()
        self.report(test["id"], outcome, message, duration)

    def run_pytest(self, tests: list[dict]) -> None:
        import nextls_pytest_plugin
        import pytest

        plugin = nextls_pytest_plugin.ReportPlugin(self, {test["id"] for test in tests})
        args = [test["id"] for test in tests] + [
            "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--rootdir", self.spec["root"],
            "-W", "ignore::pytest.PytestAssertRewriteWarning"]
        # run from the workspace root, as a user would, so node ids and relative paths resolve
        os.chdir(self.spec["root"])
        pytest.main(args, plugins=[plugin])
        plugin.report_missing()


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as spec_file:
        spec = json.load(spec_file)
    Harness(spec).run()
    sys.stdout.flush()
    sys.stderr.flush()
    if spec.get("trace") and spec["trace"]["backend"] == "debugpy":
        # every result is on disk; pydevd's shutdown would otherwise spend ~0.7 s joining its threads
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
