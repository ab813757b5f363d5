"""A rationale for a verified fix, written from the trace and the code alone (no model).

`write_rationale(report, fixed_function)` explains any fix of a traced failure in 2-4 sentences: what the
traced test expected and what happened, what the trace shows on (or next to) the lines the fix changes, and
the change itself (the buggy line -> the fixed line, found by diffing the two functions). Every fact comes
from the rendered trace or the code: each step `(k)` and `name=value` it cites is in the trace, each line
it quotes is in one of the two functions; everything quoted goes between backticks, so it can be checked.
`variant` picks one of several phrasings (training data varies them; the server uses 0).

`explain_fix` is the same writer on plain strings, for callers holding a stored trace (training data).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from nextls.trace.capture import TraceReport, describe_result
from nextls.trace.model import EXCEPTION_KEY, RETURN_KEY

MAX_VALUE_CHARS = 60  # longer values are named, not quoted: a rationale is a few sentences
REWRITE_FRACTION = 0.5  # more changed lines than this (and more than 3): the fix is a rewrite

_ENTRY_SPLIT = re.compile(r"; (?=\(\d+\) |\.\.\.(?:;|$))")
_VALUE_SPLIT = re.compile(r", (?=[A-Za-z_][A-Za-z_0-9]*=)")
_ENTRY = re.compile(r"\((\d+)\) (.*)", re.DOTALL)
_COMPARISON = re.compile(r"(.*) returned (.*), expected (.*)", re.DOTALL)


@dataclass(frozen=True)
class TraceEntry:
    """One `(k) name=value, ...` entry of a line's trace comment."""

    step: int
    values: tuple[str, ...]  # "name=value" pieces, each exactly as the trace writes it

    def value(self, name: str) -> str | None:
        return next((piece for piece in self.values if piece.startswith(name + "=")), None)


@dataclass(frozen=True)
class LineChange:
    """One hunk of the diff between the buggy and the fixed function (0-based line indexes)."""

    old_start: int
    old: tuple[str, ...]
    new: tuple[str, ...]


def parse_trace_comments(function_code: str, rendered_trace: str) -> dict[int, list[TraceEntry]]:
    """The trace entries on each line of the function (0-based index), read back from the rendered trace.

    The rendered trace starts with the function's lines, each followed by `  # ` and its entries when the
    line changed something; lines that do not match the function's (another rendering) are skipped.
    """
    entries: dict[int, list[TraceEntry]] = {}
    rendered = rendered_trace.split("\n")
    for index, code_line in enumerate(function_code.rstrip("\n").split("\n")):
        if index >= len(rendered) or not rendered[index].startswith(code_line + "  # ("):
            continue
        comment = rendered[index][len(code_line) + len("  # "):]
        parsed = [_ENTRY.fullmatch(piece) for piece in _ENTRY_SPLIT.split(comment)]
        line_entries = [TraceEntry(int(match[1]), tuple(_VALUE_SPLIT.split(match[2]))) for match in parsed if match]
        if line_entries:
            entries[index] = line_entries
    return entries


def changed_lines(buggy_function: str, fixed_function: str) -> list[LineChange]:
    """The hunks that turn the buggy function into the fixed one.

    Lines are matched on their text without indentation first, so wrapping lines in a new block reads as
    one added line; only when that finds nothing do indentation changes count (a `return` moved out of a
    loop). Tabs are expanded and trailing spaces ignored throughout.
    """
    raw_old = buggy_function.rstrip("\n").split("\n")
    raw_new = fixed_function.rstrip("\n").split("\n")
    for normalize in (str.strip, lambda line: line.expandtabs(4).rstrip()):
        matcher = difflib.SequenceMatcher(a=[normalize(line) for line in raw_old],
                                          b=[normalize(line) for line in raw_new], autojunk=False)
        changes = [LineChange(i1, tuple(raw_old[i1:i2]), tuple(raw_new[j1:j2]))
                   for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]
        if changes:
            return changes
    return []


def write_rationale(report: TraceReport, fixed_function: str, *, variant: int = 0) -> str:
    """2-4 sentences explaining why `fixed_function` fixes the traced failure of `report`'s function."""
    if report.traced_result is None:
        raise ValueError("the report has no traced failing test to explain")
    test = report.traced_test.source if report.traced_test and report.traced_test.kind != "doctest" else ""
    return explain_fix(report.function_text, fixed_function, report.rendered, test=test,
                       failure=describe_result(report.traced_result), variant=variant)


def explain_fix(buggy_function: str, fixed_function: str, rendered_trace: str, *, test: str, failure: str,
                variant: int = 0) -> str:
    """`write_rationale` on plain strings: the buggy and fixed function, the rendered trace, the traced test's
    source and its result as the trace writes it (`failed: f(1) returned 2, expected 3`)."""
    entries = parse_trace_comments(buggy_function, rendered_trace)
    changes = changed_lines(buggy_function, fixed_function)
    if not changes:
        raise ValueError("the fixed function is the buggy function: there is no fix to explain")
    test_line = test.strip() if test.strip() and "\n" not in test.strip() and test.strip() in rendered_trace else ""
    sentences = [_failure_sentence(test_line, failure, variant)]
    evidence = _evidence_sentence(buggy_function, changes, entries, variant // 3)
    if evidence:
        sentences.append(evidence)
    sentences.append(_change_sentence(buggy_function, changes, variant // 9))
    return " ".join(sentences)


def _quote(text: str) -> str | None:
    """`text` between backticks, or None when it cannot be quoted faithfully (empty, has a backtick)."""
    text = text.strip()
    return f"`{text}`" if text and "`" not in text else None


def _line_ref(line: str, index: int) -> str:
    """A code line, quoted, or named by its position in the function when it cannot be quoted."""
    return _quote(line) or f"line {index + 1} of the function"


def _cited_values(entry: TraceEntry) -> str:
    pieces = [_quote(piece) for piece in entry.values if len(piece) <= MAX_VALUE_CHARS]
    pieces = [piece for piece in pieces if piece][:2]
    if pieces:
        return " and ".join(pieces)
    names = [_quote(piece.partition("=")[0]) for piece in entry.values]
    return "a new value for " + " and ".join(name for name in names if name)


def _failure_sentence(test_line: str, failure: str, variant: int) -> str:
    outcome, _, message = failure.partition(": ")
    subject = f"The test {_quote(test_line)}" if test_line and _quote(test_line) else "The traced test"
    comparison = _COMPARISON.fullmatch(message)
    if outcome == "failed" and comparison and all(_quote(part) for part in comparison.groups()):
        call, got, expected = (_quote(part) for part in comparison.groups())
        return (f"{subject} expects {expected}, but {call} returns {got}.",
                f"{subject} fails: {call} should give {expected}, yet it gives {got}.",
                f"{subject} wants {expected} from {call} and gets {got} instead.")[variant % 3]
    quoted = _quote(message) if message and len(message) <= 2 * MAX_VALUE_CHARS else None
    if outcome == "error" and quoted:
        return (f"{subject} fails with {quoted}.", f"{subject} raises {quoted}.",
                f"{subject} does not pass: it stops with {quoted}.")[variant % 3]
    what = f"{outcome} ({quoted})" if quoted else outcome
    return (f"{subject} ends with: {what}.", f"{subject} does not pass: {what}.",
            f"The result of {subject[4:]} is: {what}.")[variant % 3]


def _evidence_sentence(buggy_function: str, changes: list[LineChange], entries: dict[int, list[TraceEntry]],
                       variant: int) -> str:
    """What the trace shows on the first changed line (or the traced line just above it), and how it ended."""
    if not entries:
        return ""
    lines = buggy_function.rstrip("\n").split("\n")
    changed = [change.old_start + offset for change in changes for offset in range(len(change.old))]
    traced = next((index for index in changed if index in entries), None)
    if traced is not None:
        first = entries[traced][0]
        line = _line_ref(lines[traced], traced)
        clause = (f"at step ({first.step}) the line {line} sets {_cited_values(first)}",
                  f"{line} sets {_cited_values(first)} at step ({first.step})",
                  f"step ({first.step}) runs {line} and records {_cited_values(first)}")[variant % 3]
        cited = {first.step}
        last = entries[traced][-1]
        if last.step != first.step and not _is_ending(last):
            clause += f", then {_cited_values(last)} at step ({last.step})"
            cited.add(last.step)
    else:
        anchor = changes[0].old_start
        above = next((index for index in range(anchor - 1, -1, -1) if index in entries), None)
        if changed:
            clause = (f"nothing is recorded on {_line_ref(lines[anchor], anchor)}: that line never ran "
                      "or changed no value")
        else:
            clause = "no traced line does what the missing code would do"
        cited = set()
        if above is not None:
            last = entries[above][-1]
            clause += f"; the traced line above it, {_line_ref(lines[above], above)}, records " \
                      f"{_cited_values(last)} at step ({last.step})"
            cited.add(last.step)
    ending = _ending(entries)
    if ending is not None and ending.step not in cited:
        piece = ending.value(RETURN_KEY)
        verb = "returns" if piece else "raises"
        piece = piece or ending.value(EXCEPTION_KEY)
        if piece and len(piece) <= MAX_VALUE_CHARS and _quote(piece):
            clause += f", and the function {verb} {_quote(piece)} at step ({ending.step})"
    opening = ("In the trace, ", "Reading the trace: ", "Looking at the trace, ")[variant % 3]
    return opening + clause + "."


def _ending(entries: dict[int, list[TraceEntry]]) -> TraceEntry | None:
    """The last traced entry where the function returned or raised."""
    endings = [entry for line_entries in entries.values() for entry in line_entries if _is_ending(entry)]
    return max(endings, key=lambda entry: entry.step, default=None)


def _is_ending(entry: TraceEntry) -> bool:
    return bool(entry.value(RETURN_KEY) or entry.value(EXCEPTION_KEY))


def _change_sentence(buggy_function: str, changes: list[LineChange], variant: int) -> str:
    old_count = sum(max(len(change.old), len(change.new)) for change in changes)
    total = len(buggy_function.rstrip("\n").split("\n"))
    first = changes[0]
    old_line = next((line for line in first.old if line.strip()), "")
    new_line = next((line for line in first.new if line.strip()), "")
    if old_count > 3 and old_count > REWRITE_FRACTION * total:
        start = _edit(old_line, new_line, first.old_start, 0)
        return f"The fix rewrites most of the function ({old_count} changed lines), starting where {start}."
    sentence = _edit(old_line, new_line, first.old_start, variant)
    more = old_count - max(len(first.old), len(first.new))
    if more > 0:
        sentence += f" ({more} more changed line{'s' if more > 1 else ''})"
    return sentence[0].upper() + sentence[1:] + "."


def _edit(old_line: str, new_line: str, index: int, variant: int) -> str:
    """One edit in words: a replaced, added or removed line."""
    if old_line and new_line:
        old, new = _line_ref(old_line, index), _quote(new_line) or "the fixed line"
        return (f"the fix changes {old} to {new}", f"{old} should read {new}",
                f"replacing {old} with {new} fixes it")[variant % 3]
    if new_line:
        added = _quote(new_line) or "a line"
        return (f"the fix adds the missing line {added}", f"the function lacks {added}, which the fix adds",
                f"adding {added} fixes it")[variant % 3]
    removed = _line_ref(old_line, index) if old_line else "a blank line"
    return (f"the fix removes {removed}", f"{removed} should not be there, so the fix removes it",
            f"deleting {removed} fixes it")[variant % 3]
