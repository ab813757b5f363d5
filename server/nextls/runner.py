"""Run a function's tests in the sandbox, optionally tracing one of them, and report per test.

A run is a fork of a warm test worker (`nextls.worker`) running `child/nextls_harness.py`, under the
debugger for a debugpy trace (`nextls.trace.debugpy_backend`). A test that kills its process
(timeout, crash, `os._exit`) is blamed from the harness's start markers and the remaining tests run again
in a fresh process. Results count only with the MAC of the run's secret (see the harness).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

from nextls.child.nextls_harness import record_mac
from nextls.messages import readable
from nextls.sandbox import Limits, Outcome, ProcessResult, child_env
from nextls.trace.model import Trace
from nextls.worker import POOL, TestWorker

CHILD_DIR = Path(__file__).resolve().parent / "child"
HARNESS = CHILD_DIR / "nextls_harness.py"


class TestOutcome(str, Enum):
    __test__ = False  # not a pytest test class, despite the name
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    OUTPUT_TRUNCATED = "output-truncated"
    SKIPPED = "skipped"


class RunCancelled(Exception):
    """The caller cancelled the run; its processes are gone."""


@dataclass(frozen=True)
class TestCase:
    """A test of the target function: an assert statement, a docstring's doctest, or a pytest test."""

    __test__ = False

    id: str
    kind: str  # "assert" | "doctest" | "pytest"
    source: str  # the statement, the docstring, or the pytest function's source
    file: str  # where the test is written
    line: int  # its first line there


@dataclass(frozen=True)
class TestResult:
    __test__ = False

    id: str
    outcome: TestOutcome
    message: str = ""
    duration: float = 0.0
    lines: tuple[int, ...] = ()  # with `coverage`: the target's lines this test executed

    @property
    def passed(self) -> bool:
        return self.outcome in (TestOutcome.PASSED, TestOutcome.SKIPPED)

    def to_json(self) -> dict:
        return {"id": self.id, "outcome": self.outcome.value, "message": self.message,
                "duration": round(self.duration, 4)}


@dataclass(frozen=True)
class TargetModule:
    """What the child loads: `source` compiled under the real `filename` (so traces point at it)."""

    filename: str
    source: str
    root: str  # workspace root: pytest's rootdir, and where imports of the user's package resolve
    module_name: str = ""
    sys_path: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunConfig:
    python: str = sys.executable
    test_timeout: float = 5.0
    setup_code: str = ""
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class TraceRequest:
    qualname: str
    test_id: str
    backend: str = "inprocess"  # or "debugpy"
    max_steps: int = 10_000


@dataclass
class RunReport:
    results: list[TestResult]
    processes: list[ProcessResult]
    trace: Trace | None = None

    @property
    def failing(self) -> list[TestResult]:
        return [result for result in self.results if not result.passed]

    def results_for(self, test_id: str) -> list[TestResult]:
        """The results of one test: several for a parametrized pytest test."""
        return [result for result in self.results if _covers(test_id, result.id)]


def run_tests(target: TargetModule, tests: Sequence[TestCase], config: RunConfig = RunConfig(), *,
              trace: TraceRequest | None = None, cancel: threading.Event | None = None,
              coverage: str | None = None) -> RunReport:
    """Run `tests` against `target` in sandboxed child processes. With `coverage` (the target function's
    qualified name), each result lists the lines of that function the test executed."""
    report = RunReport(results=[], processes=[])
    remaining = list(tests)
    while remaining:
        with _run_folder(target, remaining, config, trace) as (work_dir, worker):
            secret = secrets.token_hex(16)
            spec = _spec(target, remaining, config, work_dir, trace, coverage)
            process, trace_data = _run_child(dict(spec, secret=secret), config, work_dir, worker, trace, cancel)
            report.processes.append(process)
            if process.outcome is Outcome.CANCELLED:
                raise RunCancelled("the test run was cancelled")
            finished, started = _read_results(Path(spec["results_path"]), bytes.fromhex(secret))
            if trace_data is not None and report.trace is None:
                report.trace = Trace.from_json(trace_data, backend=trace.backend, test_id=trace.test_id)
                if coverage:
                    finished = _with_traced_lines(finished, trace.test_id, report.trace)
        report.results.extend(finished.values())
        unfinished = [test for test in remaining if not any(_covers(test.id, done) for done in finished)]
        if not unfinished:
            break
        culprit = started - set(finished)
        if not culprit:  # the child died before any test started: every test shares its fate
            reason = _process_failure(process, "before the tests started")
            report.results.extend(TestResult(test.id, _blame(process), reason) for test in unfinished)
            break
        for test_id in sorted(culprit):
            report.results.append(TestResult(test_id, _blame(process), _process_failure(process, "in this test")))
        remaining = [test for test in unfinished if not any(_covers(test.id, dead) for dead in culprit)]
        trace = None if trace is not None and any(_covers(trace.test_id, dead) for dead in culprit) else trace
    return report


def _with_traced_lines(finished: dict[str, TestResult], test_id: str, trace: Trace) -> dict[str, TestResult]:
    """The traced test ran under the recorder instead of the line coverage: its lines are in the trace."""
    lines = tuple(sorted({event.line for event in trace.events if event.kind == "line"}))
    return {reported: replace(result, lines=lines) if _covers(test_id, reported) else result
            for reported, result in finished.items()}


def _covers(test_id: str, reported_id: str) -> bool:
    """A pytest id asked for without parameters covers its parametrized cases."""
    return reported_id == test_id or reported_id.startswith(test_id + "[")


def _blame(process: ProcessResult) -> TestOutcome:
    if process.outcome is Outcome.TIMEOUT:
        return TestOutcome.TIMEOUT
    return TestOutcome.CRASHED


def _process_failure(process: ProcessResult, where: str) -> str:
    if process.outcome is Outcome.TIMEOUT:
        what = f"the test process timed out after {process.wall_time:.1f} s (its time limit) and was killed"
    elif process.signal is not None:
        what = f"the test process died from signal {process.signal} ({_signal_name(process.signal)})"
    else:
        what = f"the test process exited with code {process.returncode}"
    tail = process.stderr.strip().splitlines()[-3:]
    return readable(f"{what} {where}" + (": " + " | ".join(tail) if tail else ""))


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _spec(target: TargetModule, tests: Sequence[TestCase], config: RunConfig, work_dir: Path,
          trace: TraceRequest | None, coverage: str | None) -> dict:
    spec = {
        "filename": target.filename,
        "source": target.source,
        "module_name": target.module_name,
        "root": target.root,
        "sys_path": list(target.sys_path) or [str(Path(target.filename).parent)],
        "setup_code": config.setup_code,
        "test_timeout": config.test_timeout,
        "output_limit": config.limits.output_bytes,
        "results_path": str(work_dir / "results.jsonl"),
        "tests": [{"id": t.id, "kind": t.kind, "source": t.source, "file": t.file, "line": t.line} for t in tests],
        "trace": None,
        "coverage": {"filename": target.filename, "qualname": coverage} if coverage else None,
    }
    if trace is not None:
        spec["trace"] = {"backend": trace.backend, "test_id": trace.test_id, "qualname": trace.qualname,
                         "filename": target.filename, "max_steps": trace.max_steps,
                         "out": str(work_dir / "trace.json"), "port_file": str(work_dir / "debugpy.port")}
    return spec


@contextlib.contextmanager
def _run_folder(target: TargetModule, tests: Sequence[TestCase], config: RunConfig,
                trace: TraceRequest | None) -> Iterator[tuple[Path, TestWorker]]:
    """The folder a run works in, and the warm worker that will fork it (for a debugpy trace, a worker
    made for the debugger)."""
    limits, read_paths = config.limits, _read_paths(target)
    if trace is not None and trace.backend == "debugpy":
        from nextls.trace import debugpy_backend

        limits, read_paths = debugpy_backend.debug_worker(limits, read_paths)
    pytest = any(test.kind == "pytest" for test in tests)
    with POOL.worker(config.python, limits, pytest=pytest,
                     read_paths=read_paths) as worker, worker.run_folder() as work_dir:
        yield Path(work_dir), worker


def _read_paths(target: TargetModule) -> list[str]:
    """The project folders a run reads: its root, its import paths, the file's folder."""
    return [target.root, *target.sys_path, str(Path(target.filename).parent)]


def _run_child(spec: dict, config: RunConfig, work_dir: Path, worker: TestWorker, trace: TraceRequest | None,
               cancel: threading.Event | None) -> tuple[ProcessResult, dict | None]:
    env = child_env(work_dir)  # HOME and TMPDIR in the run's own folder
    if trace is not None and trace.backend == "debugpy":
        from nextls.trace import debugpy_backend

        return debugpy_backend.run_traced(worker, spec, work_dir, env, config.limits, cancel)
    process = worker.run(spec, cwd=work_dir, env=env, limits=config.limits, cancel=cancel)
    trace_path = Path(spec["trace"]["out"]) if trace is not None else None
    trace_data = json.loads(trace_path.read_text("utf-8")) if trace_path and trace_path.exists() else None
    return process, trace_data


def prestart_worker(config: RunConfig = RunConfig(), read_paths: Sequence[str] = (), *,
                    debugger: bool = False) -> None:
    """Warm a test worker for `config` in the background (pytest loaded), before the first run needs it;
    with `debugger`, the one that debugpy traces fork."""
    limits, read_paths = config.limits, list(read_paths)
    if debugger:
        from nextls.trace import debugpy_backend

        limits, read_paths = debugpy_backend.debug_worker(limits, read_paths)
    POOL.prestart(config.python, limits, pytest=True, read_paths=read_paths)


def _read_results(path: Path, secret: bytes) -> tuple[dict[str, TestResult], set[str]]:
    """Finished results by id, and the ids that started: only the records signed with the run's secret
    (code under test can write to the file, not sign)."""
    finished: dict[str, TestResult] = {}
    started: set[str] = set()
    if not path.exists():
        return finished, started
    for line in path.read_text("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            signed = isinstance(record, dict) and hmac.compare_digest(str(record.get("mac", "")),
                                                                      record_mac(secret, record))
        except (json.JSONDecodeError, TypeError, ValueError):  # the last line of a killed child can be cut short
            continue
        if not signed:
            continue
        if record.get("event") == "start":
            started.add(record["id"])
        else:
            finished[record["id"]] = TestResult(record["id"], TestOutcome(record["outcome"]),
                                                readable(record["message"]), record.get("duration", 0.0),
                                                tuple(record.get("lines", ())))
    return finished, started
