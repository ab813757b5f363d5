"""What the server knows, per document and function, and the jobs that find it out.

* `Analysis`: the last test run of a document, by function (diagnostics come from it).
* Traces: `TraceReport`s keyed by (uri, function qualname, hash of the code + tests + run settings);
  for display, the latest trace of a function is used as long as the function's text is unchanged
  (its lines are shifted when the code above it moved).
* Explanations: the model's account of a failure, keyed by a hash of the function's code and tests.
* Fixes: `FixReport`s keyed like traces, with the exact text they were computed on.

`Workbench` starts the trace / explain / fix jobs that fill these caches; the feature modules only
read the caches and wait on jobs (never longer than they may).
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol.types import MessageType

from nextls.runner import RunCancelled, TestCase, TestResult
from nextls.splice import FunctionSpan, SourceSyntaxError, function_source, list_functions

if TYPE_CHECKING:
    from nextls.fix import FixReport
    from nextls.lsp.jobs import Job
    from nextls.lsp.server import NextLanguageServer
    from nextls.trace.capture import TraceReport

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
EXPLANATION_TOKENS = 256


class UnknownDocument(LookupError):
    """A URI the server cannot read: not open and not a local file."""


def split_lines(source: str) -> list[str]:
    """LSP's (and Python's) lines: only \\n, \\r\\n and \\r end one; the endings are dropped."""
    return _LINE_BREAK.split(source)


def digest(*parts: Any) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(str(part).encode("utf-8", errors="surrogatepass"))
        hasher.update(b"\0")
    return hasher.hexdigest()[:24]


@functools.lru_cache(maxsize=32)
def _functions(source: str) -> tuple[FunctionSpan, ...] | SourceSyntaxError:
    try:
        return tuple(list_functions(source))
    except SourceSyntaxError as error:
        return error


def functions_of(source: str) -> tuple[FunctionSpan, ...]:
    """The document's functions (cached by text); raises SourceSyntaxError when it does not parse."""
    found = _functions(source)
    if isinstance(found, SourceSyntaxError):
        raise found
    return found


def function_at(source: str, line: int) -> FunctionSpan | None:
    """The function whose lines (1-based, decorators included) hold `line`, if the source parses."""
    try:
        spans = functions_of(source)
    except SourceSyntaxError:
        return None
    return next((span for span in spans if span.start_line <= line <= span.end_line), None)


def function_named(source: str, qualname: str) -> FunctionSpan | None:
    try:
        spans = functions_of(source)
    except SourceSyntaxError:
        return None
    return next((span for span in spans if span.qualname == qualname), None)


@dataclass(frozen=True)
class Snapshot:
    """A document's text at one moment: what a job runs on."""

    uri: str
    path: Path
    source: str
    version: int | None


@dataclass
class FunctionStatus:
    span: FunctionSpan
    tests: list[TestCase]
    results: list[TestResult]
    digest: str

    @property
    def failing(self) -> list[TestResult]:
        return [result for result in self.results if not result.passed]

    def test_for(self, result: TestResult) -> TestCase | None:
        return next((test for test in self.tests
                     if result.id == test.id or result.id.startswith(test.id + "[")), None)


@dataclass
class Analysis:
    """One test run of a whole document."""

    snapshot: Snapshot
    functions: dict[str, FunctionStatus] = field(default_factory=dict)
    error: str | None = None  # why nothing could run (syntax error, missing interpreter...)
    error_line: int | None = None
    seconds: float = 0.0


@dataclass
class TracedFunction:
    uri: str
    report: TraceReport
    digest: str

    def function_lines_text(self) -> str:
        """The traced function's lines as they were in the file (not dedented)."""
        span = self.report.span
        return "\n".join(split_lines(self.report.source)[span.start_line - 1: span.end_line])


@dataclass
class Explanation:
    text: str
    origin: str  # which model, and whether it comes with a verified fix


@dataclass
class FixOutcome:
    snapshot: Snapshot
    qualname: str
    report: FixReport


class ServerState:
    """The caches; safe to use from the event loop and the job threads."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.analyses: dict[str, Analysis] = {}
        self.traces: dict[tuple[str, str, str], TracedFunction] = {}
        self.latest_traces: dict[tuple[str, str], TracedFunction] = {}
        self.trace_errors: dict[tuple[str, str, str], str] = {}
        self.explanations: dict[str, Explanation] = {}
        self.explanation_errors: dict[str, str] = {}
        self.fixes: dict[tuple[str, str, str], FixOutcome] = {}

    def set_analysis(self, uri: str, analysis: Analysis) -> None:
        with self._lock:
            self.analyses[uri] = analysis

    def analysis(self, uri: str) -> Analysis | None:
        with self._lock:
            return self.analyses.get(uri)

    def status(self, uri: str, qualname: str) -> FunctionStatus | None:
        analysis = self.analysis(uri)
        return analysis.functions.get(qualname) if analysis else None

    def store_trace(self, uri: str, report: TraceReport, key: str) -> TracedFunction:
        entry = TracedFunction(uri, report, key)
        with self._lock:
            self.traces[uri, report.span.qualname, key] = entry
            self.latest_traces[uri, report.span.qualname] = entry
        return entry

    def trace(self, uri: str, qualname: str, key: str) -> TracedFunction | None:
        with self._lock:
            return self.traces.get((uri, qualname, key))

    def traces_of(self, uri: str) -> list[TracedFunction]:
        with self._lock:
            return [entry for (entry_uri, _), entry in self.latest_traces.items() if entry_uri == uri]

    def displayable_trace(self, uri: str, span: FunctionSpan, source: str) -> tuple[TracedFunction, int] | None:
        """The latest trace of the function at `span` in `source`, and the shift of its line numbers,
        when the function's text is still the one traced."""
        with self._lock:
            entry = self.latest_traces.get((uri, span.qualname))
        if entry is None or entry.report.trace is None:
            return None
        if function_source(source, span) != entry.report.function_text:
            return None
        return entry, span.start_line - entry.report.span.start_line

    def store_fix(self, uri: str, key: str, outcome: FixOutcome) -> None:
        with self._lock:
            self.fixes[uri, outcome.qualname, key] = outcome

    def fix(self, uri: str, qualname: str, key: str) -> FixOutcome | None:
        with self._lock:
            return self.fixes.get((uri, qualname, key))

    def forget_document(self, uri: str) -> None:
        with self._lock:
            self.analyses.pop(uri, None)
            for cache in (self.traces, self.fixes, self.trace_errors):
                for key in [key for key in cache if key[0] == uri]:
                    del cache[key]
            for key in [key for key in self.latest_traces if key[0] == uri]:
                del self.latest_traces[key]

    def clear(self) -> dict[str, int]:
        """Forget traces, explanations and fixes (the last test runs stay: they back the diagnostics shown)."""
        with self._lock:
            counts = {"traces": len(self.traces), "explanations": len(self.explanations), "fixes": len(self.fixes)}
            self.traces.clear()
            self.latest_traces.clear()
            self.trace_errors.clear()
            self.explanations.clear()
            self.explanation_errors.clear()
            self.fixes.clear()
        _functions.cache_clear()
        return counts


def function_key(settings_key: tuple, source: str, qualname: str, tests: list[TestCase]) -> str:
    """The cache key of a function's trace or fix: its document's text, its tests, the run settings."""
    return digest(settings_key, qualname, source, *sorted((test.id, test.source) for test in tests))


def explanation_key(function_text: str, tests: list[TestCase]) -> str:
    return digest("explain", function_text, *sorted((test.id, test.source) for test in tests))


FIX_PHASES = re.compile(r"(sampling|verifying sample) (\d+)/(\d+)")


def fix_percentage(message: str) -> int | None:
    """A progress percentage from `fix_function`'s messages ("tracing", "sampling i/k", "verifying sample i/k")."""
    if message == "tracing":
        return 5
    match = FIX_PHASES.match(message)
    if not match:
        return None
    phase, index, total = match.group(1), int(match.group(2)), max(1, int(match.group(3)))
    done = index - 1 + (0.5 if phase.startswith("verifying") else 0.0)
    return int(10 + 85 * done / total)


class Workbench:
    """Starts the jobs that fill the caches: traces, explanations, fixes. Shared by every feature."""

    def __init__(self, ls: NextLanguageServer) -> None:
        self.ls = ls

    @property
    def state(self) -> ServerState:
        return self.ls.state

    def trace(self, snap: Snapshot, qualname: str, *, key: str, results: list[TestResult] | None = None) -> Job:
        """Trace `qualname` in `snap`: run its tests (unless `results` has them, from a run on `snap`),
        trace the first failing one; one job per key.

        (Always the first failing one: `trace_function(test_id=...)` leaves the file's other asserts in the
        module it loads, so tracing one assert of several fails at import.)"""
        from nextls.trace.capture import trace_function

        settings = self.ls.settings

        def work(job: Job) -> TracedFunction:
            job.report("running the tests, tracing the first failing one")
            try:
                report = self._with_fallback(job, qualname, settings.trace_backend, lambda backend: trace_function(
                    snap.path, qualname, source=snap.source, backend=backend, config=settings.run_config(),
                    cancel=job.cancel, results=results))
            except Exception as error:
                if not job.cancel.is_set():  # remembered, so that hovers do not run it again and again
                    self.state.trace_errors[snap.uri, qualname, key] = f"{type(error).__name__}: {error}"
                raise
            entry = self.state.store_trace(snap.uri, report, key)
            self.ls.refresh_inlay_hints()
            return entry

        return self.ls.jobs.submit(f"NExT: tracing {qualname}", work, key=("trace", snap.uri, qualname, key))

    def _with_fallback(self, job: Job, qualname: str, backend: str, run: Callable[[str], Any]) -> Any:
        """`run(backend)`; if a debugpy run stops without being cancelled (debugpy's adapter can drop the
        connection as the debuggee exits, and the run is then killed as if cancelled), once more with the
        in-process backend, which records the very same trace."""
        try:
            return run(backend)
        except RunCancelled as error:
            if job.cancel.is_set() or backend != "debugpy":
                raise
            self.ls.log(f"nextls: the debugpy trace of {qualname} stopped early ({error}); tracing it again "
                        "with the inprocess backend", MessageType.Warning)
            return run("inprocess")

    def explain(self, entry: TracedFunction, status: FunctionStatus | None) -> Job | None:
        """The model's explanation of the failure traced in `entry` (cached; None once computed or failed)."""
        from nextls.answer import split_rationale
        from nextls.fix import repair_task
        from nextls.prompt import build_messages
        from nextls.trace.capture import describe_result

        report = entry.report
        tests = status.tests if status else report.tests
        key = explanation_key(report.function_text, tests)
        if key in self.state.explanations or key in self.state.explanation_errors:
            return None
        settings = self.ls.settings
        models = self.ls.models

        def work(job: Job) -> Explanation:
            try:
                runtime = models.session(settings, job.cancel, job)
                task = repair_task(report)
                if status is not None:  # the whole picture: every test and failure, not just the traced one
                    sources = tuple(dict.fromkeys(test.source for test in status.tests if test.kind != "doctest"))
                    failures = tuple(f"{result.id}: {describe_result(result)}" for result in status.failing)
                    task = replace(task, tests=sources or task.tests, failures=failures or task.failures)
                prompt = runtime.format_chat(build_messages(task, use_trace=True))
                job.report("generating")
                # the explanation is the answer's prose: stop at its code block, and keep it short
                generation = runtime.generate(prompt, max_tokens=min(settings.max_tokens, EXPLANATION_TOKENS),
                                              temperature=0.0, seed=settings.seed, stop=["```"], cancel=job.cancel)
            except Exception as error:
                if not job.cancel.is_set():
                    self.state.explanation_errors[key] = str(error)
                raise
            if generation.finish_reason == "cancelled":
                from nextls.lsp.jobs import Cancelled

                raise Cancelled("explanation cancelled")
            text = split_rationale(generation.text) or "(the model gave no explanation)"
            explanation = Explanation(text, f"{models.description or runtime.device}, unverified")
            self.state.explanations[key] = explanation
            return explanation

        return self.ls.jobs.submit(f"NExT: explaining {report.span.qualname}", work, key=("explain", key))

    def explanation(self, entry: TracedFunction, status: FunctionStatus | None
                    ) -> tuple[Explanation | None, str | None]:
        report = entry.report
        key = explanation_key(report.function_text, status.tests if status else report.tests)
        return self.state.explanations.get(key), self.state.explanation_errors.get(key)

    def fix(self, snap: Snapshot, qualname: str, key: str) -> Job:
        """Trace, search small edits, sample k fixes when the search verified none, verify them (one job per
        function text). Each verified fix is cached as soon as it is found, so a waiting quick fix can offer it."""
        from nextls.fix import FixOptions, fix_function

        settings = self.ls.settings
        models = self.ls.models

        def work(job: Job) -> FixOutcome:
            def load_model() -> Any:
                job.report("loading the model")
                return models.session(settings, job.cancel, job)

            def offer(partial: FixReport) -> None:
                self.state.store_fix(snap.uri, key, FixOutcome(snap, qualname, partial))

            options = FixOptions(k=settings.k, temperature=settings.temperature, top_p=settings.top_p,
                                 max_tokens=settings.max_tokens, seed=settings.seed,
                                 stop_at_first_verified=settings.stop_at_first_verified, search=settings.search,
                                 search_budget=settings.search_budget)
            report = self._with_fallback(job, qualname, settings.trace_backend, lambda backend: fix_function(
                snap.path, qualname, load_runtime=load_model, source=snap.source,
                options=replace(options, backend=backend), config=settings.run_config(), cancel=job.cancel,
                progress=lambda message: job.report(message, fix_percentage(message)),
                on_verified=offer))
            if job.cancel.is_set():
                from nextls.lsp.jobs import Cancelled

                raise Cancelled(f"fixing {qualname} was cancelled")
            outcome = FixOutcome(snap, qualname, report)
            self.state.store_fix(snap.uri, key, outcome)
            if report.trace.trace is not None:
                self.state.store_trace(snap.uri, report.trace, key)
                self.ls.refresh_inlay_hints()
            best = report.best
            if best is not None and best.verified and best.candidate.rationale:
                ekey = explanation_key(report.trace.function_text, report.trace.tests)
                origin = "the repair search" if best.source == "search" else models.description or report.device
                passes = f"{best.passed}/{len(best.results)}"
                self.state.explanations[ekey] = Explanation(
                    best.candidate.rationale, f"{origin}, with a fix that passes {passes} tests")
            return outcome

        return self.ls.jobs.submit(f"NExT: fixing {qualname}", work, key=("fix", snap.uri, qualname, key))
