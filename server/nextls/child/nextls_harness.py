"""Runs a function's tests in the child process and writes one JSON line per test (stdlib only).

Usage: python nextls_harness.py SPEC.json

The spec (written by `nextls.runner`) names the module to load (its source, which may be a candidate
fix spliced into the user's file, compiled under the file's real path), setup code, and the tests:
plain asserts, doctests, or pytest node ids. Results go to `results_path`, flushed after each test,
so a run that is killed still tells which tests finished. One test can be traced: the in-process
backend installs `nextls_recorder` around it; the debugpy backend stops at a breakpoint before and after
it, and its client injects and collects the recorder through DAP. With `coverage` in the spec, each
test's record lists the lines it executed inside the target function.

The verdict cannot be written by the code under test: every record carries an HMAC keyed by a per-run
secret that the harness takes out of the spec (and the spec file off the disk) before any user code
runs. Code under test that appends `{"outcome": "passed"}` lines to the results file and calls
`os._exit(0)` gets its lines ignored (they carry no valid MAC), and its test, started but never
reported, is blamed for the dead process. (The secret is still in the process's memory: code written to
dig it out of the harness's objects could forge a record; nothing short of that can.)
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import hashlib
import hmac
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


def timed_out(seconds: float) -> str:
    """What a user reads for a test stopped by its time limit (never the exception's class name)."""
    return f"timed out after {seconds:g} s"


def _alarm_after(seconds: float):
    """The SIGALRM handler: a trace that catches the timeout in the function shows this message too."""

    def on_alarm(signum, frame) -> None:
        raise TestTimeout(timed_out(seconds))

    return on_alarm


def printed_too_much(limit: int) -> str:
    return f"printed more than {limit} characters"


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


class _DoctestFailures(doctest.DocTestRunner):
    """Collects each failing example as one line, the way a failing assert reads.

    An example's output is either the value it returned (echoed by `sys.displayhook`) or what it
    printed; the hook is watched to tell which. doctest catches every exception an example raises, the
    harness's own limits too: those are raised again so that the test stops and is reported as timed
    out / truncated, not as a failed example.
    """

    def __init__(self, filename: str) -> None:
        super().__init__(verbose=False, optionflags=doctest.ELLIPSIS)
        self.filename = filename
        self.failed_examples: list[str] = []
        self.returned = False

    def run(self, test, compileflags=None, out=None, clear_globs=True):
        echo = sys.__displayhook__  # doctest installs this one as sys.displayhook while it runs

        def display(value: object) -> None:
            self.returned = self.returned or value is not None
            echo(value)

        sys.__displayhook__ = display
        try:
            return super().run(test, compileflags, out, clear_globs)
        finally:
            sys.__displayhook__ = echo

    def report_start(self, out, test, example) -> None:
        self.returned = False

    def report_failure(self, out, test, example, got) -> None:
        call, output = _doctest_call(example.source), _doctest_output(got)
        if got.lstrip().startswith(_TRACEBACK):
            outcome = f"{call} raised {output}"
        elif self.returned or (not got and _is_expression(example.source)):
            outcome = f"{call} returned {output or 'None'}"
        else:
            outcome = f"{call} printed {output or 'nothing'}"
        self.failed_examples.append(f"{outcome}, expected {_doctest_expectation(example.source, example.want)}")

    def report_unexpected_exception(self, out, test, example, exc_info) -> None:
        error = exc_info[1]
        if isinstance(error, (TestTimeout, OutputLimitExceeded)):
            raise error
        self.failed_examples.append(f"{_doctest_call(example.source)} raised {describe_error(error, self.filename)}")


_TRACEBACK = "Traceback (most recent call last)"


def _doctest_call(source: str) -> str:
    lines = source.strip().splitlines()
    return lines[0] if len(lines) == 1 else lines[0] + " ..."


def _is_expression(source: str) -> bool:
    """Whether the example is an expression whose value doctest would echo (a `print(...)` call is not)."""
    try:
        value = ast.parse(source, mode="eval").body
    except SyntaxError:
        return False
    return not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "print")


def _doctest_output(text: str) -> str:
    """An example's output as one short line: a raised exception by its last line, several lines as a repr."""
    lines = text.strip().splitlines()
    if lines and lines[0].startswith(_TRACEBACK):
        return lines[-1].strip()
    text = lines[0] if len(lines) == 1 else repr("\n".join(lines)) if lines else ""
    return text if len(text) <= 200 else text[:100] + "..." + text[-100:]


def _doctest_expectation(source: str, want: str) -> str:
    output = _doctest_output(want)
    if want.lstrip().startswith(_TRACEBACK):
        return f"it to raise {output}"
    return output or ("None" if _is_expression(source) else "no output")


def run_doctest(source: str, namespace: dict, name: str, filename: str, lineno: int) -> None:
    """Run a docstring's examples; a failure reads like an assert's (`f(1, 2) returned 1, expected -1`)."""
    test = doctest.DocTestParser().get_doctest(source, dict(namespace), name, filename, lineno)
    runner = _DoctestFailures(filename)
    runner.run(test, out=lambda text: None, clear_globs=False)
    if runner.failed_examples:
        more = len(runner.failed_examples) - 1
        raise AssertionError(runner.failed_examples[0] + (f" (and {more} more failing example(s))" if more else ""))


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


def record_mac(secret: bytes, record: dict) -> str:
    """The MAC of a result record (without its `mac` key); `nextls.runner` checks it the same way."""
    payload = json.dumps({key: value for key, value in record.items() if key != "mac"}, sort_keys=True)
    return hmac.new(secret, payload.encode("utf-8"), hashlib.sha256).hexdigest()


class ResultWriter:
    """Appends MAC-signed JSON records to the results file, flushed one by one."""

    def __init__(self, path: str, secret: str) -> None:
        self._out = open(path, "a", encoding="utf-8")
        self._secret = bytes.fromhex(secret)

    def write(self, record: dict) -> None:
        record["mac"] = record_mac(self._secret, record)
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()


class Harness:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.filename = os.path.realpath(spec["filename"])
        self.results = ResultWriter(spec["results_path"], spec.pop("secret"))
        self.test_timeout = float(spec.get("test_timeout", 5.0))
        self.output_limit = int(spec.get("output_limit", 1 << 20))
        self.trace = TraceControl(spec.get("trace"))
        self.coverage = spec.get("coverage")
        self.lines: dict[str, list[int]] = {}  # test id -> lines it executed in the target

    def report_start(self, test_id: str) -> None:
        """Mark a test as started: if the process dies now, the runner knows which test killed it."""
        self.results.write({"id": test_id, "event": "start"})

    def report(self, test_id: str, outcome: str, message: str = "", duration: float = 0.0) -> None:
        record = {"id": test_id, "outcome": outcome, "message": message, "duration": round(duration, 6)}
        if test_id in self.lines:
            record["lines"] = self.lines.pop(test_id)
        self.results.write(record)

    @contextlib.contextmanager
    def covering(self, test_id: str, traced: bool):
        """Record the lines `test_id` runs in the target (the traced test's lines come from its trace)."""
        if not self.coverage or traced:
            yield
            return
        import nextls_recorder

        with nextls_recorder.LineCoverage(self.coverage["filename"], self.coverage["qualname"]) as coverage:
            try:
                yield
            finally:
                self.lines[test_id] = sorted(coverage.lines)

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
        signal.signal(signal.SIGALRM, _alarm_after(self.test_timeout))
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
                message = f"loading {os.path.basename(self.filename)} {timed_out(self.test_timeout)}"
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
            with self.covering(test["id"], traced):
                if test["kind"] == "assert":
                    run_assert(test["source"], namespace, test.get("file", "<test>"), test.get("line", 1))
                else:
                    run_doctest(test["source"], namespace, test["id"], self.filename, test.get("line", 1))
        except AssertionError as error:
            outcome, message = OUTCOME_FAILED, str(error) or describe_error(error, self.filename)
        except TestTimeout:
            outcome, message = OUTCOME_TIMEOUT, timed_out(self.test_timeout)
        except OutputLimitExceeded:
            outcome, message = OUTCOME_OUTPUT_TRUNCATED, printed_too_much(self.output_limit)
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


def run_spec(spec: dict) -> None:
    Harness(spec).run()


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as spec_file:
        spec = json.load(spec_file)
    os.unlink(argv[1])  # it holds the run's secret; user code runs next
    run_spec(spec)
    sys.stdout.flush()
    sys.stderr.flush()
    if spec.get("trace") and spec["trace"]["backend"] == "debugpy":
        # every result is on disk; pydevd's shutdown would otherwise spend ~0.7 s joining its threads
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
