"""The main job: trace the failing test, search small edits, sample k rationale+fix answers, verify each,
rank them all in one list.

find tests -> run them traced -> search edits of the suspicious lines (`nextls.search`), each spliced into
the file and run against every test -> when none passes them all: build the prompt -> sample k answers ->
parse each -> splice it into the file -> run every test again in the sandbox -> rank. A fix counts as
verified only when all the tests pass: the ones that failed and the ones that passed before. Search
candidates and model answers share the verifier (a fix both find runs once) and the ranking, and each
says where it came from (`source`).
"""

from __future__ import annotations

import ast
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from nextls.search import SearchOutcome

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
    search: bool = True  # search small edits of the suspicious lines before sampling the model
    search_budget: float = 20.0  # seconds the search may take
    search_verified: int = 1  # the search stops after this many verified fixes (the first: fixes in seconds)
    sample_after_search: bool = False  # sample the model even when the search found a verified fix


@dataclass
class FixCandidate:
    """One candidate fix, from the repair search or a model answer, and what became of it."""

    index: int  # its number within its source, from 0
    generation: Generation | None  # the model's answer; None for a search candidate
    candidate: Candidate  # the rationale and the fixed function
    status: str = "rejected"  # "verified" (all tests pass), "partial", "failing", "rejected", "duplicate"
    reason: str = ""  # why it was rejected, or which candidate it duplicates
    results: list[TestResult] = field(default_factory=list)
    new_source: str = ""
    diff: str = ""
    edit_size: int = 0
    source: str = "model"  # "search" or "model"
    description: str = ""  # a search candidate's edit: "line 9: `s[i:]` -> `s[i + 1:]`"
    suspiciousness: float = 0.0  # of the lines a search candidate edits

    @property
    def passed(self) -> int:
        return sum(result.passed for result in self.results)

    @property
    def verified(self) -> bool:
        return self.status == "verified"

    @property
    def label(self) -> str:
        return f"{'search' if self.source == 'search' else 'sample'} {self.index + 1}"

    def rank_key(self) -> tuple:
        """Verified first, then more tests passing, then the smaller edit, then the more suspicious lines."""
        usable = self.status in ("verified", "partial", "failing")
        return (not self.verified, not usable, -self.passed, self.edit_size, -self.suspiciousness,
                self.source != "search", self.index)

    def to_json(self) -> dict:
        generation = self.generation
        return {"index": self.index, "source": self.source, "description": self.description,
                "status": self.status, "reason": self.reason,
                "rationale": self.candidate.rationale, "code": self.candidate.code, "diff": self.diff,
                "edit_size": self.edit_size, "passed": self.passed, "total": len(self.results),
                "tests": [result.to_json() for result in self.results],
                "seed": generation.seed if generation else None,
                "completion_tokens": generation.completion_tokens if generation else None,
                "finish_reason": generation.finish_reason if generation else None}


@dataclass
class FixReport:
    trace: TraceReport
    prompt: str = ""
    candidates: list[FixCandidate] = field(default_factory=list)  # ranked, best first
    timings: dict[str, float] = field(default_factory=dict)
    device: str = ""  # where the model ran; "" when it was not sampled
    model: str = ""  # the GGUF model file that was sampled, and the LoRA adapter applied on it ("": none)
    adapter: str = ""
    adapter_merged: bool = False  # merged into the model once (nextls.merge), not applied at every token
    search: SearchOutcome | None = None

    @property
    def best(self) -> FixCandidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def verified(self) -> list[FixCandidate]:
        return [candidate for candidate in self.candidates if candidate.verified]

    def to_json(self) -> dict:
        return {"function": self.trace.span.qualname, "file": str(self.trace.file), "device": self.device,
                "model": self.model, "adapter": self.adapter, "adapter_merged": self.adapter_merged,
                "tests": [result.to_json() for result in self.trace.results],
                "traced_test": self.trace.traced_test.id if self.trace.traced_test else None,
                "trace": self.trace.rendered, "prompt": self.prompt,
                "candidates": [candidate.to_json() for candidate in self.candidates],
                "search": self.search.to_json() if self.search else None,
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


def fix_function(file: Path, target: str | int, runtime: LlamaRuntime | None = None, *,
                 load_runtime: Callable[[], LlamaRuntime] | None = None, source: str | None = None,
                 options: FixOptions = FixOptions(), config: RunConfig = RunConfig(), tests_file: Path | None = None,
                 test_id: str | None = None, cancel: threading.Event | None = None,
                 progress: Progress | None = None,
                 on_verified: Callable[[FixReport], None] | None = None) -> FixReport:
    """Search for small verified edits, then (when the search found none, or `options.sample_after_search`)
    sample `options.k` fixes from the model; every candidate is verified against all the tests, and all
    are ranked in one list.

    The model is `runtime`, or the one `load_runtime()` returns, called only when the model is sampled.
    `source` is the file's text when it differs from the disk (an editor's unsaved buffer). `on_verified`
    gets the report each time a candidate passes every test, its `candidates` then holding the verified ones
    so far (ranked): an editor can offer the first fix while the rest of the work goes on.
    """
    say = progress or (lambda message: None)
    started = time.perf_counter()
    say("tracing")
    traced = trace_function(file, target, source=source, tests_file=tests_file, test_id=test_id,
                            backend=options.backend, config=config, cancel=cancel,
                            render_options=RenderOptions(max_tokens=options.trace_tokens))
    report = FixReport(trace=traced)
    report.timings["trace"] = time.perf_counter() - started
    if not traced.failing:
        return report
    verifier = Verifier(traced.file, traced.source, traced.span, traced.tests, config, cancel)
    candidates: list[FixCandidate] = []  # the search's best, then every model answer
    verified: list[FixCandidate] = []

    def offer(candidate: FixCandidate) -> None:
        if candidate.verified and on_verified is not None:
            verified.append(candidate)
            report.candidates = sorted(verified, key=FixCandidate.rank_key)
            on_verified(report)

    if options.search:
        from nextls.search import SearchOptions, run_search

        say("searching")
        started = time.perf_counter()
        search_options = SearchOptions(budget=options.search_budget,
                                       max_verified=1 if options.stop_at_first_verified else options.search_verified)
        report.search = run_search(traced, options=search_options, config=config, cancel=cancel,
                                   verifier=verifier, on_candidate=offer, progress=say)
        report.timings["search"] = time.perf_counter() - started
        candidates += report.search.candidates
    if any(candidate.verified for candidate in candidates) and not options.sample_after_search:
        report.candidates = sorted(candidates, key=FixCandidate.rank_key)
        return report
    if runtime is None:
        if load_runtime is None:
            raise ValueError("no model to sample fixes from: pass `runtime` or `load_runtime`")
        runtime = load_runtime()
    report.device = runtime.device
    report.model = str(getattr(runtime, "model_path", "") or "")
    report.adapter = str(getattr(runtime, "lora_path", "") or "")
    report.adapter_merged = bool(getattr(runtime, "merged", False))
    report.prompt = runtime.format_chat(build_messages(repair_task(traced), use_trace=options.use_trace))
    samples: list[FixCandidate] = []

    def verify(generation: Generation) -> bool:
        say(f"verifying sample {len(samples) + 1}/{options.k}")
        started_verify = time.perf_counter()
        candidate = verifier.check(len(samples), generation)
        report.timings["verify"] = report.timings.get("verify", 0.0) + time.perf_counter() - started_verify
        samples.append(candidate)
        candidates.append(candidate)
        offer(candidate)
        stop = options.stop_at_first_verified and candidate.verified
        if not stop and len(samples) < options.k:
            say(f"sampling {len(samples) + 1}/{options.k}")
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
    return Verifier(file, source, span, tests, config, cancel).check(0, generation)


class Verifier:
    """Splices each candidate into the file and runs all the tests; remembers the code it has seen, so that a
    fix found twice (by the search and the model, or by two samples) runs once."""

    def __init__(self, file: Path, source: str, span: FunctionSpan, tests: list[TestCase], config: RunConfig,
                 cancel: threading.Event | None) -> None:
        self.file = file
        self.span = span
        self.tests = tests
        self.config = config
        self.cancel = cancel
        self.source = source
        self.old_function = function_source(self.source, span)
        self.seen: dict[str, str] = {normalized(self.old_function): "the original function"}  # code -> its label

    def check(self, index: int, generation: Generation) -> FixCandidate:
        """Verify a model answer."""
        candidate = parse_answer(generation.text, self.span.name, original=self.old_function)
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
        if self.seen.get(normalized(candidate.code)) == "the original function":
            result.reason = "the answer repeats the original function unchanged"
            return result
        return self.verify(result, _with_imports(new_source, candidate.imports))

    def is_new(self, code: str) -> bool:
        return normalized(code) not in self.seen

    def verify(self, result: FixCandidate, new_source: str, config: RunConfig | None = None) -> FixCandidate:
        """Run every test on `new_source`, which holds `result`'s code in place of the function; a duplicate
        of code seen before is marked so and not run."""
        key = normalized(result.candidate.code)
        if key in self.seen:
            result.status, result.reason = "duplicate", f"same code as {self.seen[key]}"
            return result
        self.seen[key] = result.label
        module = target_module(self.file, new_source, self.tests)
        run = run_tests(module, self.tests, config or self.config, cancel=self.cancel)
        result.results = run.results
        result.new_source = new_source
        result.diff = unified_diff(self.source, new_source, str(self.file))
        result.edit_size = edit_size(self.old_function, result.candidate.code)
        all_passed = bool(run.results) and all(test.passed for test in run.results)
        result.status = "verified" if all_passed else "partial" if result.passed else "failing"
        return result


@functools.lru_cache(maxsize=1024)  # the search asks twice per candidate: is it new, then when verifying it
def normalized(code: str) -> str:
    """Code compared by its AST: formatting and comments do not make two fixes different."""
    return ast.dump(parse_python(code))


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
