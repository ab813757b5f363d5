"""The main job: trace the failing test, sample k rationale+fix answers, verify each, rank them.

find tests -> run them traced -> render the trace -> build the prompt -> sample k answers -> parse
each -> splice it into the file -> run every test again in the sandbox -> rank. A fix counts as
verified only when all the tests pass: the ones that failed and the ones that passed before.
"""

from __future__ import annotations

import ast
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from nextls.answer import Candidate, parse_answer
from nextls.discovery import target_module
from nextls.model import Generation, LlamaRuntime
from nextls.prompt import RepairTask, build_messages
from nextls.runner import RunConfig, TestCase, TestResult, run_tests
from nextls.splice import (
    FunctionSpan,
    SpliceError,
    edit_size,
    find_function,
    function_source,
    parse_python,
    replace_function,
    unified_diff,
)
from nextls.trace.capture import TraceReport, describe_result, trace_function
from nextls.trace.render import RenderOptions, strip_trace_comments

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FixOptions:
    k: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int = 0
    use_trace: bool = True
    stop_at_first_verified: bool = False
    trace_tokens: int = 1500  # the rendered trace is trimmed to about this many tokens
    backend: str = "inprocess"


@dataclass
class FixCandidate:
    """One sampled answer and what became of it."""

    index: int
    generation: Generation
    candidate: Candidate
    status: str = "rejected"  # "verified" (all tests pass), "partial", "failing", "rejected", "duplicate"
    reason: str = ""  # why it was rejected, or which candidate it duplicates
    results: list[TestResult] = field(default_factory=list)
    new_source: str = ""
    diff: str = ""
    edit_size: int = 0

    @property
    def passed(self) -> int:
        return sum(result.passed for result in self.results)

    @property
    def verified(self) -> bool:
        return self.status == "verified"

    def rank_key(self) -> tuple:
        usable = self.status in ("verified", "partial", "failing")
        return (not self.verified, not usable, -self.passed, self.edit_size, self.index)

    def to_json(self) -> dict:
        return {"index": self.index, "status": self.status, "reason": self.reason,
                "rationale": self.candidate.rationale, "code": self.candidate.code, "diff": self.diff,
                "edit_size": self.edit_size, "passed": self.passed, "total": len(self.results),
                "tests": [result.to_json() for result in self.results], "seed": self.generation.seed,
                "completion_tokens": self.generation.completion_tokens,
                "finish_reason": self.generation.finish_reason}


@dataclass
class FixReport:
    trace: TraceReport
    prompt: str = ""
    candidates: list[FixCandidate] = field(default_factory=list)  # ranked, best first
    timings: dict[str, float] = field(default_factory=dict)
    device: str = ""

    @property
    def best(self) -> FixCandidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def verified(self) -> list[FixCandidate]:
        return [candidate for candidate in self.candidates if candidate.verified]

    def to_json(self) -> dict:
        return {"function": self.trace.span.qualname, "file": str(self.trace.file), "device": self.device,
                "tests": [result.to_json() for result in self.trace.results],
                "traced_test": self.trace.traced_test.id if self.trace.traced_test else None,
                "trace": self.trace.rendered, "prompt": self.prompt,
                "candidates": [candidate.to_json() for candidate in self.candidates],
                "timings": {name: round(seconds, 3) for name, seconds in self.timings.items()}}


def repair_task(report: TraceReport) -> RepairTask:
    """The prompt's view of a traced function."""
    function = report.function_text
    description = ""
    try:
        node = parse_python(function).body[0]
        description = ast.get_docstring(node) or ""
    except (SyntaxError, IndexError):
        pass
    tests = tuple(dict.fromkeys(test.source for test in report.tests if test.kind != "doctest"))
    failures = tuple(f"{result.id}: {describe_result(result)}" for result in report.failing)
    return RepairTask(function_name=report.span.name, code=function, tests=tests, failures=failures,
                      description=description, trace=report.rendered or None)


def fix_function(file: Path, target: str | int, runtime: LlamaRuntime, *, source: str | None = None,
                 options: FixOptions = FixOptions(), config: RunConfig = RunConfig(), tests_file: Path | None = None,
                 test_id: str | None = None, cancel: threading.Event | None = None,
                 progress: Progress | None = None) -> FixReport:
    """Sample `options.k` fixes of the function and verify each against all its tests.

    `source` is the file's text when it differs from the disk (an editor's unsaved buffer).
    """
    say = progress or (lambda message: None)
    started = time.perf_counter()
    say("tracing")
    traced = trace_function(file, target, source=source, tests_file=tests_file, test_id=test_id,
                            backend=options.backend, config=config, cancel=cancel,
                            render_options=RenderOptions(max_tokens=options.trace_tokens))
    report = FixReport(trace=traced, device=runtime.device)
    report.timings["trace"] = time.perf_counter() - started
    if not traced.failing:
        return report
    report.prompt = runtime.format_chat(build_messages(repair_task(traced), use_trace=options.use_trace))
    verifier = _Verifier(traced.file, traced.source, traced.span, traced.tests, config, cancel)
    candidates: list[FixCandidate] = []

    def verify(generation: Generation) -> bool:
        say(f"verifying sample {len(candidates) + 1}/{options.k}")
        started_verify = time.perf_counter()
        candidate = verifier.check(len(candidates), generation)
        report.timings["verify"] = report.timings.get("verify", 0.0) + time.perf_counter() - started_verify
        candidates.append(candidate)
        stop = options.stop_at_first_verified and candidate.verified
        if not stop and len(candidates) < options.k:
            say(f"sampling {len(candidates) + 1}/{options.k}")
        return stop

    say(f"sampling 1/{options.k}")
    started = time.perf_counter()
    runtime.sample(report.prompt, options.k, seed=options.seed, cancel=cancel, stop_when=verify,
                   max_tokens=options.max_tokens, temperature=options.temperature, top_p=options.top_p)
    report.timings["generate"] = time.perf_counter() - started - report.timings.get("verify", 0.0)
    report.candidates = sorted(candidates, key=FixCandidate.rank_key)
    return report


def verify_answer(text: str, *, file: Path, source: str, function: str | int, tests: list[TestCase],
                  config: RunConfig = RunConfig(), cancel: threading.Event | None = None) -> FixCandidate:
    """Verify one model answer as `fix_function` does: parse it, splice its fix into `source` (the text of
    `file`, which need not be on disk), run all `tests`; "verified" when every test passes. Each call stands
    alone (no duplicate detection across calls). Training's filter step uses it."""
    span = find_function(source, function)
    generation = Generation(text=text, prompt_tokens=0, completion_tokens=0, finish_reason="stop", seconds=0.0,
                            seed=0, reused_prompt_tokens=0)
    return _Verifier(file, source, span, tests, config, cancel).check(0, generation)


class _Verifier:
    """Splices each candidate into the file and runs all the tests; remembers what it has seen."""

    def __init__(self, file: Path, source: str, span: FunctionSpan, tests: list[TestCase], config: RunConfig,
                 cancel: threading.Event | None) -> None:
        self.file = file
        self.span = span
        self.tests = tests
        self.config = config
        self.cancel = cancel
        self.source = source
        self.old_function = function_source(self.source, span)
        self.seen: dict[str, int] = {}  # normalized code -> index of the first candidate with it

    def check(self, index: int, generation: Generation) -> FixCandidate:
        candidate = parse_answer(generation.text, self.span.name)
        if candidate.usable:
            candidate = replace(candidate, code=strip_trace_comments(candidate.code))
        result = FixCandidate(index=index, generation=generation, candidate=candidate)
        if not candidate.usable:
            result.reason = candidate.reject_reason or "unusable answer"
            return result
        try:
            new_source = replace_function(self.source, self.span, candidate.code)
        except SpliceError as error:
            result.reason = f"cannot splice the fix into the file: {error}"
            return result
        new_source = _with_imports(new_source, candidate.imports)
        key = ast.dump(parse_python(candidate.code))
        if key in self.seen:
            result.status, result.reason = "duplicate", f"same code as sample {self.seen[key] + 1}"
            return result
        self.seen[key] = index
        if new_source == self.source:
            result.reason = "the answer repeats the original function unchanged"
            return result
        module = target_module(self.file, new_source, self.tests)
        run = run_tests(module, self.tests, self.config, cancel=self.cancel)
        result.results = run.results
        result.new_source = new_source
        result.diff = unified_diff(self.source, new_source, str(self.file))
        result.edit_size = edit_size(self.old_function, candidate.code)
        all_passed = bool(run.results) and all(test.passed for test in run.results)
        result.status = "verified" if all_passed else "partial" if result.passed else "failing"
        return result


def _with_imports(source: str, imports: tuple[str, ...]) -> str:
    """Add the fix's imports that the file lacks, after the module docstring and `__future__` imports."""
    present = set(source.splitlines())
    missing = [line for line in imports if line not in present]
    if not missing:
        return source
    tree = parse_python(source)
    insert_after = 0
    for statement in tree.body:
        is_docstring = isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) and isinstance(
            statement.value.value, str)
        is_future = isinstance(statement, ast.ImportFrom) and statement.module == "__future__"
        if not (is_docstring or is_future):
            break
        insert_after = statement.end_lineno
    lines = source.splitlines(keepends=True)
    return "".join(lines[:insert_after] + [line + "\n" for line in missing] + lines[insert_after:])
