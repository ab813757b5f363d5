"""The trace-grounded rationale writer: facts only from the rendered trace and the code, on every train task."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from example_fixes import remove_occ_fix

from nextls.rationale import changed_lines, explain_fix, parse_trace_comments, write_rationale
from nextls.splice import find_function, function_source
from nextls.trace.capture import trace_function
from nextls.trace.model import Trace, TraceEvent
from nextls.trace.render import render_naturalized
from nextls_train.data import load_split

EXAMPLES = Path(__file__).resolve().parents[1] / "server" / "examples"
QUOTED = re.compile(r"`([^`]+)`")
STEP = re.compile(r"\((\d+)\)")


def sentence_count(text: str) -> int:
    """Sentences outside the quoted spans (quoted code and values may hold periods)."""
    return len(re.findall(r"[.!?](?:\s|$)", QUOTED.sub("Q", text)))


def unsupported_facts(rationale: str, buggy: str, fixed: str, rendered: str) -> list[str]:
    """What the rationale cites that is in neither the rendered trace nor the two functions."""
    steps_in_trace = set(re.findall(r"[#;] \((\d+)\) ", rendered))
    bad = [f"step ({step})" for step in STEP.findall(QUOTED.sub("", rationale)) if step not in steps_in_trace]
    bad += [span for span in QUOTED.findall(rationale) if not any(span in text for text in (rendered, buggy, fixed))]
    return bad


def functions(task) -> tuple[str, str]:
    return (function_source(task.buggy_code, find_function(task.buggy_code, task.function_name)),
            function_source(task.fix_code, find_function(task.fix_code, task.function_name)))


def test_every_train_task_gets_a_grounded_rationale() -> None:
    explained = 0
    failures = []
    for task in load_split("train"):
        buggy, fixed = functions(task)
        if not parse_trace_comments(buggy, task.trace) and task.trace_steps:
            failures.append(f"{task.id}: the trace's comments were not read back")
            continue
        for variant in (0, 13, 26):
            rationale = explain_fix(buggy, fixed, task.trace, test=task.tests[task.failing_test],
                                    failure=task.failing_message, variant=variant)
            if not 2 <= sentence_count(rationale) <= 4:
                failures.append(f"{task.id}: {sentence_count(rationale)} sentences: {rationale}")
            bad = unsupported_facts(rationale, buggy, fixed, task.trace)
            if bad:
                failures.append(f"{task.id}: cites {bad}: {rationale}")
        explained += 1
    assert not failures, f"{len(failures)} problems, first: " + "\n".join(failures[:5])
    assert explained == 4299


def test_a_one_line_fix_is_named_with_its_trace_entries() -> None:
    task = _one_line_mutation()
    buggy, fixed = functions(task)
    (change,) = changed_lines(buggy, fixed)
    rationale = explain_fix(buggy, fixed, task.trace, test=task.tests[task.failing_test],
                            failure=task.failing_message)
    assert f"`{change.old[0].strip()}`" in rationale and f"`{change.new[0].strip()}`" in rationale
    entries = parse_trace_comments(buggy, task.trace)[change.old_start]
    assert f"({entries[0].step})" in rationale


def _one_line_mutation():
    """The first train task whose fix changes one traced line (mutations are mostly such)."""
    for task in load_split("train"):
        buggy, fixed = functions(task)
        changes = changed_lines(buggy, fixed)
        if len(changes) == 1 and len(changes[0].old) == len(changes[0].new) == 1 and \
                changes[0].old_start in parse_trace_comments(buggy, task.trace):
            return task
    raise AssertionError("no one-line traced mutation in the train split")


def test_variants_are_different_phrasings_of_the_same_facts() -> None:
    task = _one_line_mutation()
    buggy, fixed = functions(task)
    texts = {explain_fix(buggy, fixed, task.trace, test=task.tests[task.failing_test], failure=task.failing_message,
                         variant=variant) for variant in range(27)}
    assert len(texts) >= 9
    assert len({frozenset(QUOTED.findall(text)) for text in texts}) == 1


BUGGY = "def total(xs):\n    s = 0\n    for x in xs:\n        s = x\n    return s\n"


def rendered(code: str, events: list[TraceEvent]) -> str:
    trace = Trace(filename="m.py", qualname="total", events=events)
    return render_naturalized(code, 1, trace, test_source="assert total([1, 2]) == 3",
                              test_result="failed: total([1, 2]) returned 2, expected 3")


EVENTS = [TraceEvent(0, 0, 1, "call", {"xs": "[1, 2]"}), TraceEvent(1, 0, 2, "line", {"s": "0"}),
          TraceEvent(2, 0, 3, "line", {"x": "1"}), TraceEvent(3, 0, 4, "line", {"s": "1"}),
          TraceEvent(4, 0, 3, "line", {"x": "2"}), TraceEvent(5, 0, 4, "line", {"s": "2"}),
          TraceEvent(6, 0, 5, "line", {"__return__": "2"})]


def test_a_replaced_line_cites_its_first_and_last_values_and_the_return() -> None:
    trace = rendered(BUGGY, EVENTS)
    text = explain_fix(BUGGY, BUGGY.replace("s = x", "s += x"), trace, test="assert total([1, 2]) == 3",
                       failure="failed: total([1, 2]) returned 2, expected 3")
    assert text == ("The test `assert total([1, 2]) == 3` expects `3`, but `total([1, 2])` returns `2`. "
                    "In the trace, at step (3) the line `s = x` sets `s=1`, then `s=2` at step (5), and the function "
                    "returns `__return__=2` at step (6). The fix changes `s = x` to `s += x`.")


def test_added_removed_and_moved_lines() -> None:
    trace = rendered(BUGGY, EVENTS)
    failure = "failed: total([1, 2]) returned 2, expected 3"
    added = explain_fix(BUGGY, BUGGY.replace("    return s", "    s = s\n    return s"), trace, test="",
                        failure=failure)
    assert "The traced test" in added and "the missing line `s = s`" in added
    assert "the traced line above it, `s = x`, records `s=2` at step (5)" in added
    removed = explain_fix(BUGGY, BUGGY.replace("    s = 0\n", ""), trace, test="", failure=failure, variant=0)
    assert "The fix removes `s = 0`." in removed
    moved = explain_fix(BUGGY, BUGGY.replace("    return s", "        return s"), trace, test="", failure=failure)
    assert "`return s`" in moved and sentence_count(moved) == 3
    for text in (added, removed, moved):
        assert not unsupported_facts(text, BUGGY, BUGGY, trace + added + removed + moved)


def test_no_change_is_an_error() -> None:
    with pytest.raises(ValueError, match="no fix to explain"):
        explain_fix(BUGGY, BUGGY + "\n", rendered(BUGGY, EVENTS), test="", failure="failed: x")


def test_write_rationale_explains_a_traced_report(tmp_path: Path) -> None:
    file = tmp_path / "remove_occ.py"
    shutil.copy(EXAMPLES / "remove_occ.py", file)
    report = trace_function(file, "remove_Occ")
    text = write_rationale(report, remove_occ_fix())
    assert text.startswith("The test `assert remove_Occ(\"hello\", \"l\") == \"heo\"` expects `'heo'`")
    assert "`s = s[0:i] + s[i:]`" in text and "`s = s[0:i] + s[i + 1:]`" in text
    assert not unsupported_facts(text, report.function_text, remove_occ_fix(), report.rendered)
    assert 2 <= sentence_count(text) <= 4
