"""Traces before the user asks: the function under the cursor or edited last is traced first, a hover on
one not traced yet starts it at once, and the traces reuse the diagnostics' test results."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lsprotocol import types
from test_lsp import TIMEOUT, session, workspace

from nextls.discovery import discover_tests
from nextls.lsp.prefetch import Prefetcher
from nextls.lsp.state import FunctionStatus, functions_of
from nextls.runner import TestOutcome, TestResult
from nextls.splice import find_function
from nextls.trace.capture import trace_function

FOUR_FAILING = '''\
def add(a, b):
    return a - b


def double(x):
    return x + x + 1


def negate(x):
    return x


def square(x):
    return x * 2


assert add(1, 2) == 3
assert double(2) == 4
assert negate(3) == -3
assert square(3) == 9
'''
SQUARE_LINE = 13  # 0-based line of `square`'s body


def statuses(source: str) -> list[FunctionStatus]:
    return [FunctionStatus(span, [], [TestResult(span.name, TestOutcome.FAILED)], span.name)
            for span in functions_of(source)]


def names(ordered: list[FunctionStatus]) -> list[str]:
    return [status.span.name for status in ordered]


def test_the_cursor_comes_first_then_the_last_edit_then_file_order() -> None:
    prefetch = Prefetcher(ls=None)
    failing = statuses(FOUR_FAILING)
    assert names(prefetch.order("file:///a.py", failing)) == ["add", "double", "negate", "square"]
    prefetch.note_edit(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri="file:///a.py", version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(9, 4), types.Position(9, 4)), text="# why?\n    ")]))
    assert names(prefetch.order("file:///a.py", failing)) == ["negate", "add", "double", "square"]
    prefetch.note_cursor("file:///a.py", SQUARE_LINE)
    assert names(prefetch.order("file:///a.py", failing)) == ["square", "negate", "add", "double"]
    assert names(prefetch.order("file:///other.py", failing)) == ["add", "double", "negate", "square"]
    prefetch.forget("file:///a.py")
    assert names(prefetch.order("file:///a.py", failing)) == ["add", "double", "negate", "square"]


def test_a_trace_given_the_results_runs_only_the_traced_test(tmp_path: Path) -> None:
    file = tmp_path / "four.py"
    file.write_text(FOUR_FAILING)
    [test] = discover_tests(file, FOUR_FAILING, find_function(FOUR_FAILING, "square"), root=tmp_path)
    known = [TestResult(test.id, TestOutcome.FAILED, "as the diagnostics ran it")]
    report = trace_function(file, "square", results=known)
    assert report.results == known  # not run again
    assert report.traced_result.message == "square(3) returned 6, expected 9"  # the traced run
    assert report.trace is not None and report.trace.events


def tracing_titles(s) -> list[str]:
    return [reports[0].title for reports in s.progress("NExT: tracing")]


@pytest.mark.asyncio
async def test_the_function_under_the_cursor_is_traced_first(tmp_path: Path) -> None:
    root = workspace(tmp_path)
    file = root / "four.py"
    file.write_text(FOUR_FAILING)
    async with session(root, {"traceFailing": 1, "traceBackend": "inprocess"}) as s:
        uri = s.open(file)
        highlights = await asyncio.wait_for(s.client.text_document_document_highlight_async(
            types.DocumentHighlightParams(text_document=types.TextDocumentIdentifier(uri=uri),
                                          position=types.Position(SQUARE_LINE - 1, 6))), TIMEOUT)
        # what an editor shows without a provider: the word under the cursor (`square`) wherever it occurs
        assert [(h.range.start.line, h.range.start.character, h.range.end.character) for h in highlights] == [
            (SQUARE_LINE - 1, 4, 10), (19, 7, 13)]
        assert len(await s.diagnostics(uri)) == 4
        await s.traced("square")
        assert tracing_titles(s) == ["NExT: tracing square"]  # and only it: traceFailing is 1


@pytest.mark.asyncio
async def test_the_function_edited_last_is_traced_first(tmp_path: Path) -> None:
    root = workspace(tmp_path)
    file = root / "four.py"
    file.write_text(FOUR_FAILING)
    async with session(root, {"traceFailing": 1, "traceBackend": "inprocess"}) as s:
        uri = s.open(file)
        await s.traced("add")
        s.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(9, 4), types.Position(9, 4)), text="# why?\n    ")]))
        s.client.text_document_did_save(types.DidSaveTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=uri)))
        await s.traced("negate")
        assert tracing_titles(s) == ["NExT: tracing add", "NExT: tracing negate"]


@pytest.mark.asyncio
async def test_a_hover_starts_the_trace_it_needs_and_the_next_hover_has_it(tmp_path: Path) -> None:
    root = workspace(tmp_path)
    file = root / "four.py"
    file.write_text(FOUR_FAILING)
    async with session(root, {"traceFailing": 0, "traceBackend": "inprocess", "hoverBudgetMs": 0,
                              "explainOnHover": False}) as s:
        uri = s.open(file)
        await s.diagnostics(uri)
        assert await s.hover(uri, SQUARE_LINE, 12) == (
            "**NExT**: tracing `square` on its failing test; hover again in a moment.")
        await s.traced("square")
        text = await s.hover(uri, SQUARE_LINE, 12)
        assert "**NExT trace** of `square`" in text and "(0) x=3   # argument" in text
        assert tracing_titles(s) == ["NExT: tracing square"]


@pytest.mark.asyncio
async def test_a_hover_stops_a_slow_background_trace_and_gets_its_own_first(tmp_path: Path) -> None:
    root = workspace(tmp_path)
    file = root / "four.py"
    slow_add = FOUR_FAILING.replace("    return a - b", "    time.sleep(4)\n    return a - b")
    file.write_text("import time\n\n\n" + slow_add)
    square_line = SQUARE_LINE + 4
    async with session(root, {"traceFailing": 4, "traceBackend": "inprocess", "hoverBudgetMs": 60_000,
                              "explainOnHover": False}) as s:
        uri = s.open(file)
        await s.diagnostics(uri)
        await s.wait(lambda: s.progress("NExT: tracing add"), "the background trace of add to start")
        text = await s.hover(uri, square_line, 12)  # waits for square's trace, not for add's 4 s
        assert "**NExT trace** of `square`" in text
        await s.wait(lambda: len(s.ended("NExT: tracing")) == 5, "every function traced")
        ends = [(reports[0].title, reports[-1].message) for reports in s.progress("NExT: tracing")]
        assert ends[:2] == [("NExT: tracing add", "cancelled"), ("NExT: tracing square", "done")]
        assert sorted(ends[2:]) == [("NExT: tracing add", "done"), ("NExT: tracing double", "done"),
                                    ("NExT: tracing negate", "done")]
