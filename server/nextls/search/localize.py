"""Fault localization: which lines of a failing function are most likely wrong.

Two sources of evidence, combined per line:

* **Spectra** (Ochiai): every test is run once with line coverage of the target function
  (`run_tests(..., coverage=QUALNAME)`); a line run by many failing and few passing tests is suspicious:
  ``failed(l) / sqrt(total_failed * (failed(l) + passed(l)))``. With every test failing, all executed
  lines tie at 1.0, so
* **the failing trace** refines the ranking: the line where the exception was raised, the lines whose
  values reach the wrong result (a backward slice from the line the traced call left on, through the names
  each line reads and the executed lines that write them, the conditions and loops they sit in, and the
  executed `if`s before it that could have returned early), and
  assignments that ran without changing their target (the trace shows nothing for them: often the bug).

A line's score is its Ochiai value times ``1 + the weights of its trace reasons``; a line no failing test
ran scores 0.
"""

from __future__ import annotations

import ast
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nextls.discovery import target_module
from nextls.runner import RunConfig, run_tests
from nextls.splice import parse_python
from nextls.trace.capture import TraceReport
from nextls.trace.model import EXCEPTION_KEY, RETURN_KEY, Trace

RAISED = "raised the exception"
REACHES_RESULT = "its values reach the result"
UNCHANGED = "an assignment that ran and changed nothing"
REASON_WEIGHTS = {RAISED: 0.5, REACHES_RESULT: 0.5, UNCHANGED: 0.25}


@dataclass(frozen=True)
class Spectrum:
    """One test's outcome and the lines of the target function it executed."""

    passed: bool
    lines: frozenset[int]


@dataclass(frozen=True)
class SuspiciousLine:
    line: int  # 1-based line of the file
    score: float
    ochiai: float
    failed: int  # failing tests that ran the line
    passed: int  # passing tests that ran the line
    reasons: tuple[str, ...] = ()  # what the failing trace says about the line

    def to_json(self) -> dict:
        return {"line": self.line, "score": round(self.score, 3), "ochiai": round(self.ochiai, 3),
                "failed": self.failed, "passed": self.passed, "reasons": list(self.reasons)}

    def describe(self) -> str:
        ran = f"run by {self.failed} failing and {self.passed} passing test(s)"
        return f"line {self.line}: {self.score:.2f} ({ran}" + "".join(f"; {r}" for r in self.reasons) + ")"


def ochiai(failed: int, passed: int, total_failed: int) -> float:
    if failed == 0 or total_failed == 0:
        return 0.0
    return failed / math.sqrt(total_failed * (failed + passed))


def rank_lines(spectra: Sequence[Spectrum], function: ast.FunctionDef | ast.AsyncFunctionDef,
               trace: Trace | None = None) -> list[SuspiciousLine]:
    """The function's statement lines that a failing test ran, most suspicious first (ties: in file order)."""
    total_failed = sum(not spectrum.passed for spectrum in spectra)
    reasons = trace_reasons(function, trace) if trace is not None else {}
    ranked = []
    for line in sorted(statement_lines(function)):
        failed = sum(not spectrum.passed and line in spectrum.lines for spectrum in spectra)
        passed = sum(spectrum.passed and line in spectrum.lines for spectrum in spectra)
        if failed == 0:
            continue
        base = ochiai(failed, passed, total_failed)
        why = tuple(reasons.get(line, ()))
        score = base * (1 + sum(REASON_WEIGHTS[reason] for reason in why))
        ranked.append(SuspiciousLine(line, score, base, failed, passed, why))
    return sorted(ranked, key=lambda suspect: -suspect.score)


def statement_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[int]:
    """The first line of each statement in the function's body (where a line event is reported)."""
    return {node.lineno for node in ast.walk(function) if isinstance(node, ast.stmt) and node is not function}


def trace_reasons(function: ast.FunctionDef | ast.AsyncFunctionDef, trace: Trace) -> dict[int, list[str]]:
    """What the failing trace says about each line: where it raised, what reaches the result, no-op assignments."""
    reasons: dict[int, list[str]] = {}
    executed = {event.line for event in trace.events if event.kind == "line"}
    raised = next((event.line for event in trace.events if EXCEPTION_KEY in event.values), None)
    if raised is not None:
        reasons.setdefault(raised, []).append(RAISED)
    for line in sorted(_result_slice(function, trace, executed)):
        reasons.setdefault(line, []).append(REACHES_RESULT)
    for line in sorted(_unchanged_assignments(function, trace)):
        reasons.setdefault(line, []).append(UNCHANGED)
    return reasons


@dataclass(frozen=True)
class _LineUse:
    reads: frozenset[str]
    writes: frozenset[str]
    enclosing: tuple[int, ...]  # header lines of the compound statements around it, innermost first


def _line_uses(function: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[int, _LineUse]:
    """Names each statement line reads and writes (a compound statement: its header only)."""
    uses: dict[int, _LineUse] = {}

    def header_parts(node: ast.stmt) -> Iterable[ast.AST]:
        if isinstance(node, (ast.If, ast.While)):
            return [node.test]
        if isinstance(node, (ast.For, ast.AsyncFor)):
            return [node.target, node.iter]
        if isinstance(node, (ast.With, ast.AsyncWith)):
            return node.items
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Try)):
            return []
        return [node]

    def visit(body: Iterable[ast.stmt], enclosing: tuple[int, ...]) -> None:
        for node in body:
            reads: set[str] = set()
            writes: set[str] = set()
            for part in header_parts(node):
                for name in ast.walk(part):
                    if isinstance(name, ast.Name):
                        (writes if isinstance(name.ctx, (ast.Store, ast.Del)) else reads).add(name.id)
            if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                reads.add(node.target.id)
            uses[node.lineno] = _LineUse(frozenset(reads), frozenset(writes), enclosing)
            inner = (node.lineno, *enclosing)
            for field in ("body", "orelse", "finalbody"):
                visit(getattr(node, field, []) or [], inner)
            for handler in getattr(node, "handlers", []) or []:
                visit(handler.body, inner)

    visit(function.body, ())
    return uses


def _result_slice(function: ast.FunctionDef | ast.AsyncFunctionDef, trace: Trace, executed: set[int]) -> set[int]:
    """Executed lines whose values flow into the line the traced call left on (return or raise)."""
    outer = min((event.frame for event in trace.events), default=0)
    leaving = [event.line for event in trace.events
               if event.frame == outer and (RETURN_KEY in event.values or EXCEPTION_KEY in event.values)]
    uses = _line_uses(function)
    if not leaving or leaving[-1] not in uses:
        return set()
    in_slice: set[int] = set()
    # an executed `if` that could have left early (a `return` or `raise` inside) decided that the call
    # went on to the line it left on
    guards = {node.lineno for node in ast.walk(function) if isinstance(node, ast.If) and node.lineno in executed
              and node.lineno < leaving[-1] and any(isinstance(inner, (ast.Return, ast.Raise))
                                                    for inner in ast.walk(node))}
    pending = [leaving[-1], *sorted(guards)]
    while pending:
        line = pending.pop()
        if line in in_slice or line not in uses:
            continue
        in_slice.add(line)
        use = uses[line]
        pending.extend(header for header in use.enclosing if header in executed)
        pending.extend(other for other, other_use in uses.items()
                       if other in executed and other_use.writes & use.reads)
    return in_slice


def _unchanged_assignments(function: ast.FunctionDef | ast.AsyncFunctionDef, trace: Trace) -> set[int]:
    """Plain assignments to a name that ran at least once without changing it."""
    assigned = {node.lineno: node.targets[0].id for node in ast.walk(function)
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)}
    return {event.line for event in trace.events
            if event.kind == "line" and event.line in assigned and assigned[event.line] not in event.values}


def function_node(source: str, def_line: int, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    for node in ast.walk(parse_python(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno == def_line and node.name == name:
            return node
    raise LookupError(f"no function {name} defined on line {def_line}")


def suspicious_lines(report: TraceReport, config: RunConfig = RunConfig(),
                     cancel: threading.Event | None = None) -> list[SuspiciousLine]:
    """Rank the traced function's lines: run every test once with coverage of the function (in the sandbox),
    then Ochiai, refined by `report`'s failing trace. Empty when no test fails."""
    if not report.failing:
        return []
    module = target_module(report.file, report.source, report.tests)
    run = run_tests(module, report.tests, config, cancel=cancel, coverage=report.span.qualname)
    spectra = [Spectrum(result.passed, frozenset(result.lines)) for result in run.results]
    function = function_node(report.source, report.span.def_line, report.span.name)
    return rank_lines(spectra, function, report.trace)
