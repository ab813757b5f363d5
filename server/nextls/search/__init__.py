"""Trace-guided repair search: small edits at the most suspicious lines, each verified by every test.

`localize` ranks the function's lines (Ochiai over every test's coverage, refined by the failing trace);
`edits` proposes rewrites of those lines that keep the rest of the file byte for byte. `search_fixes` tries
them most suspicious line first (then by operator prior), skipping edits that do not compile or give code
already tried (compared by AST), and runs every test on each in the sandbox, two candidates at a time
(`workers`; the warm worker pool runs them side by side): one candidate's hang, fork,
crash or flood of output costs its own time slot (a per-test limit drawn from the original run) and the
search goes on. Single edits first; pairs of the most promising single edits only when the singles run out
without a verified fix and time remains. It stops after the first `max_verified` verified fixes, or when
the budget is spent.

Each verified fix gets a rationale at once from the trace (`nextls.rationale.write_rationale`).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

from nextls.answer import Candidate
from nextls.fix import FixCandidate, Verifier
from nextls.rationale import write_rationale
from nextls.runner import RunCancelled, RunConfig
from nextls.search.edits import Edit, SourceText, apply_edits, function_edits, overlap
from nextls.search.localize import SuspiciousLine, function_node, suspicious_lines
from nextls.splice import dedent_code, parse_python
from nextls.trace.capture import TraceReport

__all__ = ["SearchOptions", "SearchOutcome", "run_search", "search_fixes", "suspicious_lines"]

PROGRESS_EVERY = 1.0  # seconds between progress reports
PAIR_POOL = 12  # the single edits combined into pairs: the ones that passed the most tests


@dataclass(frozen=True)
class SearchOptions:
    budget: float = 20.0  # seconds for the whole search, localization included
    max_verified: int = 3  # stop after this many verified fixes
    pairs: bool = True  # try pairs of edits when the single edits run out and time remains
    test_timeout: float | None = None  # seconds per test of a candidate; None: from the original run
    keep_unverified: int = 2  # unverified candidates returned: those passing more tests than the original
    workers: int = 2  # candidates verified at once (the warm worker pool runs them side by side)


@dataclass
class SearchOutcome:
    candidates: list[FixCandidate] = field(default_factory=list)  # ranked: the verified, then a few others
    suspicious: list[SuspiciousLine] = field(default_factory=list)
    tried: int = 0  # candidates run against the tests
    skipped: int = 0  # edits that did not compile or repeated code already tried
    seconds: float = 0.0
    first_verified_seconds: float | None = None
    stopped: str = ""  # "verified", "budget", "exhausted" or "nothing fails"

    def to_json(self) -> dict:
        return {"tried": self.tried, "skipped": self.skipped, "seconds": round(self.seconds, 3),
                "first_verified_seconds": None if self.first_verified_seconds is None
                else round(self.first_verified_seconds, 3), "stopped": self.stopped,
                "suspicious": [line.to_json() for line in self.suspicious]}


def search_fixes(report: TraceReport, *, options: SearchOptions = SearchOptions(), config: RunConfig = RunConfig(),
                 cancel: threading.Event | None = None,
                 on_candidate: Callable[[FixCandidate], None] | None = None) -> list[FixCandidate]:
    """The ranked fixes the search found for `report`'s failing function (`run_search`'s candidates)."""
    return run_search(report, options=options, config=config, cancel=cancel, on_candidate=on_candidate).candidates


def run_search(report: TraceReport, *, options: SearchOptions = SearchOptions(), config: RunConfig = RunConfig(),
               cancel: threading.Event | None = None, on_candidate: Callable[[FixCandidate], None] | None = None,
               verifier: Verifier | None = None, progress: Callable[[str], None] | None = None) -> SearchOutcome:
    """Search edits of `report`'s function; `on_candidate` sees every candidate run, as soon as it is verified.

    `verifier` (shared with the model's answers) remembers the code already tried. Raises `RunCancelled`
    when `cancel` is set.
    """
    started = time.perf_counter()
    deadline = started + options.budget
    outcome = SearchOutcome()
    if not report.failing:
        outcome.stopped = "nothing fails"
        return outcome
    verifier = verifier or Verifier(report.file, report.source, report.span, report.tests, config, cancel)
    outcome.suspicious = suspicious_lines(report, config, cancel)
    scores = {line.line: line.score for line in outcome.suspicious}
    function = function_node(report.source, report.span.def_line, report.span.name)
    singles = sorted(function_edits(report.source, function),
                     key=lambda edit: (-scores.get(edit.line, 0.0), -edit.prior, edit.start))
    region = _FunctionRegion(report)
    candidate_config = candidate_run_config(report, config, options.test_timeout)
    baseline = sum(result.passed for result in report.results)
    tried: list[tuple[FixCandidate, tuple[Edit, ...]]] = []
    running: dict[Future, tuple[FixCandidate, tuple[Edit, ...]]] = {}
    outcome.stopped = "exhausted"
    reported = started

    def collect(everything: bool) -> None:
        """Take in the candidates whose runs ended (all of them when `everything`), in the order tried."""
        nonlocal reported
        if not running:
            return
        done, _ = wait(running, return_when=ALL_COMPLETED if everything else FIRST_COMPLETED)
        for future in sorted(done, key=lambda future: running[future][0].index):
            result, edits = running.pop(future)
            future.result()  # a cancelled run raises RunCancelled here
            tried.append((result, edits))
            if result.verified:
                result.candidate = replace(result.candidate, rationale=_rationale(report, result))
                if outcome.first_verified_seconds is None:
                    outcome.first_verified_seconds = time.perf_counter() - started
            if on_candidate is not None:
                on_candidate(result)
            if progress is not None and time.perf_counter() - reported >= PROGRESS_EVERY:
                reported = time.perf_counter()
                progress(f"searching: {len(tried)} candidate(s) tried, the last {result.description}")

    def enough() -> bool:
        return sum(candidate.verified for candidate, _ in tried) >= options.max_verified

    def search(groups: Iterable[tuple[Edit, ...]], pool: ThreadPoolExecutor) -> bool:
        """Verify `groups` of edits, `options.workers` at a time; True when the search should stop."""
        for edits in groups:
            if cancel is not None and cancel.is_set():
                raise RunCancelled("the repair search was cancelled")
            if time.perf_counter() >= deadline:
                outcome.stopped = "budget"
                break
            code, new_source = region.apply(edits)
            if code is None or not verifier.is_new(code):
                outcome.skipped += 1
                continue
            result = FixCandidate(index=outcome.tried, generation=None,
                                  candidate=Candidate(rationale="", code=code, reject_reason=None), source="search",
                                  description="; ".join(edit.description for edit in edits),
                                  suspiciousness=max(scores.get(edit.line, 0.0) for edit in edits))
            outcome.tried += 1
            running[pool.submit(verifier.verify, result, new_source, candidate_config)] = (result, edits)
            if len(running) >= options.workers:
                collect(everything=False)
            if enough():
                break
        collect(everything=True)
        if enough():
            outcome.stopped = "verified"
        return outcome.stopped != "exhausted"

    with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="nextls-search") as pool:
        stop = search(((edit,) for edit in singles), pool)
        if not stop and options.pairs and not any(candidate.verified for candidate, _ in tried):
            search(_pairs(tried), pool)
    outcome.seconds = time.perf_counter() - started
    ranked = sorted((candidate for candidate, _ in tried), key=FixCandidate.rank_key)
    improved = [candidate for candidate in ranked if not candidate.verified and candidate.passed > baseline]
    outcome.candidates = [candidate for candidate in ranked if candidate.verified] + improved[:options.keep_unverified]
    return outcome


def candidate_run_config(report: TraceReport, config: RunConfig, test_timeout: float | None) -> RunConfig:
    """A candidate's time slot: each test gets ten times the slowest original test (at least a second, at
    most the configured limit), and the process that many seconds per test plus start-up."""
    slowest = max((result.duration for result in report.results), default=0.0)
    per_test = test_timeout or min(config.test_timeout, max(1.0, 10 * slowest))
    wall_time = min(config.limits.wall_time, per_test * len(report.tests) + 10.0)
    return replace(config, test_timeout=per_test, limits=replace(config.limits, wall_time=wall_time))


def _rationale(report: TraceReport, result: FixCandidate) -> str:
    """The trace-grounded rationale; the edit's description when no failing test was traced."""
    if report.traced_result is None:
        return f"The tests pass after this edit: {result.description}."
    return write_rationale(report, result.candidate.code)


def _pairs(tried: Sequence[tuple[FixCandidate, tuple[Edit, ...]]]) -> Iterator[tuple[Edit, ...]]:
    """Pairs of the unverified single edits that passed the most tests, not overlapping: first the pairs
    whose two edits together pass the most different tests (each may fix what the other does not), then by
    their search order."""
    singles = [(candidate, edits[0]) for candidate, edits in tried if len(edits) == 1 and not candidate.verified]
    # by search order among equals, not by which run happened to finish first (two run at a time)
    pool = sorted(singles, key=lambda item: (-item[0].passed, item[0].index))[:PAIR_POOL]
    passing = [{result.id for result in candidate.results if result.passed} for candidate, _ in pool]
    pairs = [(len(passing[i] | passing[j]), i + j, pool[i][1], pool[j][1])
             for i, j in itertools.combinations(range(len(pool)), 2) if not overlap(pool[i][1], pool[j][1])]
    pairs.sort(key=lambda pair: (-pair[0], pair[1]))
    yield from ((first, second) for _, _, first, second in pairs)


class _FunctionRegion:
    """Applies edits to the file and returns the function's new code, when it compiles."""

    def __init__(self, report: TraceReport) -> None:
        self.source = report.source
        text = SourceText(report.source)
        self.start = text.line_start(report.span.start_line)
        self.end = text.line_end(report.span.end_line)
        self.filename = str(report.file)

    def apply(self, edits: Sequence[Edit]) -> tuple[str | None, str]:
        new_source = apply_edits(self.source, edits)
        shift = sum(len(edit.text) - (edit.end - edit.start) for edit in edits)
        code = dedent_code(new_source[self.start:self.end + shift])
        try:
            compile(parse_python(code, self.filename), self.filename, "exec")
        except (SyntaxError, ValueError):
            return None, new_source
        return code, new_source
