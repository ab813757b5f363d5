"""The repair search: fault localization, edit operators, the verifying driver and its safety."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nextls.search import SearchOptions, run_search, search_fixes
from nextls.search.edits import SourceText, apply_edits, function_edits
from nextls.search.localize import (
    RAISED,
    REACHES_RESULT,
    UNCHANGED,
    Spectrum,
    ochiai,
    rank_lines,
    suspicious_lines,
)
from nextls.trace.capture import trace_function
from nextls.trace.model import Trace, TraceEvent

EXAMPLES = Path(__file__).parent.parent / "server" / "examples"

CLASSIFY = '''def classify(n):
    label = "small"
    if n > 10:
        label = "big"
    return label
'''


def node_of(source: str, name: str) -> ast.FunctionDef:
    return next(node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef) and node.name == name)


def descriptions(source: str, name: str) -> list[str]:
    return [edit.description for edit in function_edits(source, node_of(source, name))]


# -- localization ------------------------------------------------------------------------------------------

def test_ochiai_ranks_lines_run_by_failing_tests_and_few_passing_ones() -> None:
    spectra = [Spectrum(False, frozenset({2, 3, 4, 5})), Spectrum(True, frozenset({2, 3, 5})),
               Spectrum(True, frozenset({2, 3, 5}))]
    ranked = rank_lines(spectra, node_of(CLASSIFY, "classify"))
    assert [line.line for line in ranked] == [4, 2, 3, 5]
    assert ranked[0].ochiai == pytest.approx(1.0) and (ranked[0].failed, ranked[0].passed) == (1, 0)
    assert ranked[1].ochiai == pytest.approx(ochiai(1, 2, 1)) == pytest.approx(1 / 3 ** 0.5)


def test_lines_no_failing_test_ran_are_not_suspicious() -> None:
    spectra = [Spectrum(False, frozenset({2, 3, 5})), Spectrum(True, frozenset({2, 3, 4, 5}))]
    assert 4 not in [line.line for line in rank_lines(spectra, node_of(CLASSIFY, "classify"))]


def test_the_failing_trace_breaks_ties_between_lines_every_test_runs() -> None:
    source = '''def total(xs):
    count = 0
    acc = 0
    for x in xs:
        acc = acc
        count = count + 1
    return acc
'''
    trace = Trace("f.py", "total", [
        TraceEvent(0, 0, 1, "call", {"xs": "[1, 2]"}), TraceEvent(1, 0, 2, "line", {"count": "0"}),
        TraceEvent(2, 0, 3, "line", {"acc": "0"}), TraceEvent(3, 0, 4, "line", {"x": "1"}),
        TraceEvent(4, 0, 5, "line", {}), TraceEvent(5, 0, 6, "line", {"count": "1"}),
        TraceEvent(6, 0, 7, "line", {"__return__": "0"})])
    every_line = frozenset(range(2, 8))
    ranked = rank_lines([Spectrum(False, every_line)], node_of(source, "total"), trace)
    by_line = {line.line: line for line in ranked}
    assert ranked[0].line == 5 and set(by_line[5].reasons) == {REACHES_RESULT, UNCHANGED}
    assert REACHES_RESULT in by_line[3].reasons and REACHES_RESULT in by_line[4].reasons  # `acc` and its loop
    assert by_line[6].reasons == () and by_line[2].reasons == ()  # `count` never reaches the result
    assert by_line[6].score < by_line[5].score


def test_an_if_that_could_have_returned_early_reaches_the_result() -> None:
    source = "def price(n):\n    total = n * 10\n    if n > 10:\n        return total * 0.9\n    return total\n"
    trace = Trace("f.py", "price", [
        TraceEvent(0, 0, 1, "call", {"n": "10"}), TraceEvent(1, 0, 2, "line", {"total": "100"}),
        TraceEvent(2, 0, 3, "line", {}), TraceEvent(3, 0, 5, "line", {"__return__": "100"})])
    ranked = rank_lines([Spectrum(False, frozenset({2, 3, 5}))], node_of(source, "price"), trace)
    assert {line.line: line.reasons for line in ranked}[3] == (REACHES_RESULT,)


def test_the_line_that_raised_is_marked() -> None:
    source = "def first(xs):\n    head = xs[0]\n    return head\n"
    trace = Trace("f.py", "first", [TraceEvent(0, 0, 1, "call", {"xs": "[]"}),
                                    TraceEvent(1, 0, 2, "line", {"__exception__": "IndexError(...)"})])
    ranked = rank_lines([Spectrum(False, frozenset({2}))], node_of(source, "first"), trace)
    assert [(line.line, RAISED in line.reasons) for line in ranked] == [(2, True)]


def test_suspicious_lines_of_the_example_put_the_buggy_line_first(tmp_path: Path) -> None:
    file = tmp_path / "remove_occ.py"
    shutil.copy(EXAMPLES / "remove_occ.py", file)
    ranked = suspicious_lines(trace_function(file, "remove_Occ"))
    assert ranked[0].line == 12 and ranked[0].failed == 3 and UNCHANGED in ranked[0].reasons


def test_cli_trace_suspicious_prints_the_ranking(tmp_path: Path) -> None:
    file = tmp_path / "remove_occ.py"
    shutil.copy(EXAMPLES / "remove_occ.py", file)
    done = subprocess.run([sys.executable, "-m", "nextls", "trace", f"{file}::remove_Occ", "--suspicious", "--json"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    ranking = json.loads(done.stdout)["suspicious"]
    assert ranking[0]["line"] == 12 and ranking[0]["failed"] == 3 and UNCHANGED in ranking[0]["reasons"]
    done = subprocess.run([sys.executable, "-m", "nextls", "trace", f"{file}::remove_Occ", "--suspicious"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert "#   line 12: 1.75 (run by 3 failing and 0 passing test(s)" in done.stdout


# -- edit operators ----------------------------------------------------------------------------------------

MIXED = '''# header comment   kept
def mix(a, b, words):  # the signature's comment
    """Docstring 1 + 1 stays."""
    total = a+b   # tight spacing stays
    if total < 10 and "é" in words:
        total -= 1
    best = max(words, key=len)
    best.upper()
    return sorted(words)[1:total]
'''


@pytest.mark.parametrize("line_ending", ["\n", "\r\n"])
def test_every_edit_changes_only_its_own_segment(line_ending: str) -> None:
    source = MIXED.replace("\n", line_ending)
    edits = function_edits(source, node_of(source, "mix"))
    assert len(edits) > 40
    for edit in edits:
        edited = apply_edits(source, [edit])
        assert edited[:edit.start] == source[:edit.start]
        assert edited[edit.start + len(edit.text):] == source[edit.end:]
        assert "Docstring 1 + 1 stays." in edited and "# header comment   kept" in edited


def test_operators_cover_the_bug_classes() -> None:
    found = descriptions(MIXED, "mix")
    for expected in ["line 4: `a+b` -> `a-b`", "line 5: `total < 10` -> `total <= 10`",
                     "line 5: `total < 10 and \"é\" in words` -> `total < 10 or \"é\" in words`",
                     "line 5: `\"é\" in words` -> `\"é\" not in words`", "line 6: `total -= 1` -> `total += 1`",
                     "line 5: `total < 10` -> `total < 11`", "line 7: `max(words, key=len)` -> `min(words, key=len)`",
                     "line 8: `best.upper()` -> `best.lower()`", "line 9: `sorted(words)[1:total]` -> "
                     "`sorted(words)[1:total + 1]`", "line 9: `sorted(words)` -> `reversed(words)`",
                     "line 9: `return sorted(words)[1:total]` -> `return best`",
                     "line 4: `a+b` -> `b+b`", "line 8: delete `best.upper()`"]:
        assert expected in found, expected


def test_columns_are_bytes_but_edits_are_characters() -> None:
    source = 'def f(s):\n    return "ü" + s[1:]\n'
    text = SourceText(source)
    node = node_of(source, "f").body[0].value.right  # s[1:] after a two-byte character
    assert source[slice(*text.span(node))] == "s[1:]"
    assert "line 2: `s[1:]` -> `s[2:]`" in descriptions(source, "f")


def test_dropping_a_condition_keeps_its_body_one_level_out() -> None:
    source = "def f(x):\n    if x > 0:\n        x = x * 2\n        x += 1  # note\n    return x\n"
    [drop] = [edit for edit in function_edits(source, node_of(source, "f")) if edit.operator == "condition dropped"]
    assert drop.description == "line 2: drop the condition `if x > 0:`"
    assert apply_edits(source, [drop]) == "def f(x):\n    x = x * 2\n    x += 1  # note\n    return x\n"


def test_arguments_swap_and_negation() -> None:
    source = "def f(a, b):\n    while not a:\n        a = pow(b, 2)\n    return a\n"
    found = descriptions(source, "f")
    assert "line 3: `pow(b, 2)` -> `pow(2, b)`" in found
    assert "line 2: `not a` -> `a`" in found  # the unary operator dropped
    assert not any("not (not" in description or "not not" in description for description in found)


# -- the driver ------------------------------------------------------------------------------------------

def write(tmp_path: Path, name: str, text: str) -> Path:
    file = tmp_path / name
    file.write_text(text)
    return file


def test_search_finds_the_examples_fix_with_a_rationale(tmp_path: Path) -> None:
    file = tmp_path / "remove_occ.py"
    shutil.copy(EXAMPLES / "remove_occ.py", file)
    original = file.read_text()
    seen = []
    report = trace_function(file, "remove_Occ")
    fixes = search_fixes(report, options=SearchOptions(max_verified=1), on_candidate=seen.append)
    best = fixes[0]
    assert best.verified and best.source == "search" and best.passed == 3
    assert best.description == "line 12: `s[i:]` -> `s[i + 1:]`"
    assert "s[i + 1:]" in best.candidate.rationale and "'helo'" in best.candidate.rationale
    assert best.new_source == original.replace("s = s[0:i] + s[i:]", "s = s[0:i] + s[i + 1:]")
    assert best in seen and all(candidate.source == "search" for candidate in seen)
    assert len(seen) <= best.index + SearchOptions().workers  # it stopped there (the runs in flight end too)
    assert file.read_text() == original


def test_pairs_are_tried_when_no_single_edit_passes(tmp_path: Path) -> None:
    file = write(tmp_path, "pair.py", "def f(a, b):\n    x = a - b\n    return x * 3\n\n\n"
                                      "assert f(1, 2) == 6\nassert f(0, 0) == 0\nassert f(2, 1) == 6\n")
    outcome = run_search(trace_function(file, "f"), options=SearchOptions(max_verified=1, budget=120))
    [fix] = [candidate for candidate in outcome.candidates if candidate.verified]
    assert fix.description == "line 2: `a - b` -> `a + b`; line 3: `x * 3` -> `x * 2`"
    assert outcome.stopped == "verified"


def test_budget_stops_the_search(tmp_path: Path) -> None:
    file = write(tmp_path, "nofix.py", "def f(a, b):\n    return a\n\n\nassert f(1, 2) == 7\n")
    outcome = run_search(trace_function(file, "f"), options=SearchOptions(budget=0.0))
    assert outcome.stopped == "budget" and outcome.tried == 0 and outcome.candidates == []


BAD_BRANCH = {
    "hang": "while True:\n            pass",
    "crash": "os._exit(3)",
    "flood": "print('x' * 10_000_000)",
    "fork": "while True:\n            try:\n                os.fork()\n            except OSError:\n"
            "                time.sleep(0.001)",
}


@pytest.mark.parametrize("kind", sorted(BAD_BRANCH))
def test_a_candidate_that_misbehaves_costs_only_its_own_time_slot(tmp_path: Path, kind: str) -> None:
    # negating `not flag` (or dropping the `if`) runs the bad branch; the fix is the constant 1 -> 2
    file = write(tmp_path, "bad.py", f"import os\nimport time\n\n\ndef pick(flag):\n    if not flag:\n"
                                     f"        {BAD_BRANCH[kind]}\n    return 1\n\n\nassert pick(True) == 2\n")
    return_line = file.read_text().splitlines().index("    return 1") + 1
    tried = []
    started = time.monotonic()
    outcome = run_search(trace_function(file, "pick"), options=SearchOptions(max_verified=99, test_timeout=1.0),
                         on_candidate=tried.append)
    elapsed = time.monotonic() - started
    assert any(candidate.verified and candidate.description == f"line {return_line}: `return 1` -> `return 2`"
               for candidate in outcome.candidates)
    misbehaving = [candidate for candidate in tried if "`not flag` -> `flag`" in candidate.description]
    assert misbehaving and not misbehaving[0].verified
    assert misbehaving[0].results[0].outcome.value in ("timeout", "crashed", "output-truncated", "failed", "error")
    assert outcome.stopped == "exhausted" and elapsed < 60
