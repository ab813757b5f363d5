"""Hover: what a line or a name did during the failing test, and then why the function fails.

On a traced function (see `diagnostics` and `prefetch`: failing functions are traced in the background,
the one under the cursor first) the hover shows, straight from the cached trace, the values a line
changed at each step it ran, or every value a variable took; then the model's explanation of the failure
once it has been computed (in the background, cached by the function's code and tests). A hover on a
failing function not traced yet starts its trace ahead of the others. A hover waits for neither longer
than `hoverBudgetMs`: it says "being computed" instead, and the next hover has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import TYPE_CHECKING

from lsprotocol import types

from nextls.lsp.state import Explanation, FunctionStatus, TracedFunction, function_at, split_lines
from nextls.trace.capture import describe_result
from nextls.trace.model import Trace, TraceEvent
from nextls.trace.render import RenderOptions, events_by_line, format_entries, shorten

if TYPE_CHECKING:
    from nextls.lsp.jobs import Job
    from nextls.lsp.server import NextLanguageServer

_IDENTIFIER = re.compile(r"[^\W\d]\w*")
LINE_OPTIONS = RenderOptions(head=8, tail=2, max_value_chars=120)
MAX_NAME_VALUES = 12


def word_at(line: str, column: int) -> str | None:
    for match in _IDENTIFIER.finditer(line):
        if match.start() <= column <= match.end():
            return match.group()
    return None


def _elided(items: list[str], head: int = MAX_NAME_VALUES - 2, tail: int = 2) -> list[str]:
    return items if len(items) <= head + tail + 1 else [*items[:head], "...", *items[-tail:]]


def name_values(trace: Trace, name: str, offset: int) -> list[str]:
    """Each value `name` took, with its step and the (current) line that set it."""
    found = []
    for event in trace.events:
        if name in event.values:
            where = "argument" if event.kind == "call" else f"line {event.line + offset}"
            found.append(f"({event.step}) {name}={shorten(event.values[name], 120)}   # {where}")
    return _elided(found)


def line_values(entry: TracedFunction, line: int, offset: int) -> tuple[list[TraceEvent], list[int]]:
    """The events that changed something on (current, 1-based) `line`, and the steps at which it ran."""
    trace = entry.report.trace
    traced_line = line - offset
    changed = events_by_line(entry.function_lines_text(), entry.report.span.start_line, trace).get(traced_line, [])
    steps = [event.step for event in trace.events if event.line == traced_line and event.kind == "line"]
    if changed and changed[0].kind == "call":  # the def line: its calls
        steps = [event.step for event in changed]
    return changed, steps


def _steps_text(steps: list[int]) -> str:
    shown = _elided([str(step) for step in steps], head=10, tail=2)
    return ", ".join(shown)


def trace_markdown(entry: TracedFunction, line: int, word: str | None, offset: int) -> str:
    report = entry.report
    trace = report.trace
    test = report.traced_test.id if report.traced_test else trace.test_id
    header = f"**NExT trace** of `{report.span.qualname}` on test `{test}` ({trace.steps} steps" + (
        ", cut short)" if trace.truncated else ")")
    parts = [header]
    values = name_values(trace, word, offset) if word else []
    if values:
        parts.append(f"`{word}` during the test:\n```python\n" + "\n".join(values) + "\n```")
    else:
        changed, steps = line_values(entry, line, offset)
        if changed:
            parts.append(f"line {line} ran {len(steps)} time(s):\n```python\n# "
                         + format_entries(changed, LINE_OPTIONS) + "\n```")
        elif steps:
            parts.append(f"line {line} ran {len(steps)} time(s) (steps {_steps_text(steps)}) and changed nothing")
        else:
            parts.append(f"line {line} did not run during this test")
    if report.traced_result is not None:
        parts.append(f"Test result: {describe_result(report.traced_result)}")
    return "\n\n".join(parts)


def explanation_markdown(explanation: Explanation | None, error: str | None, pending: bool,
                         enabled: bool) -> str | None:
    if explanation is not None:
        quoted = "\n".join("> " + line for line in explanation.text.splitlines())
        return f"**Why it fails** ({explanation.origin}):\n\n{quoted}"
    if error is not None:
        return f"_No explanation: {error}_"
    if pending:
        return "_The model's explanation is being computed; hover again in a moment._"
    return None if not enabled else "_No explanation yet._"


async def _wait(job: Job | None, seconds: float) -> bool:
    """Whether the job ended within `seconds`; never cancels it (other hovers and features may share it)."""
    if job is None or job.done:
        return job is not None
    if seconds <= 0:
        return False
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()

    def wake(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is exiting
            loop.call_soon_threadsafe(ended.set)

    job.future.add_done_callback(wake)
    try:
        await asyncio.wait_for(ended.wait(), seconds)
    except asyncio.TimeoutError:
        return False
    return True


async def hover(ls: NextLanguageServer, params: types.HoverParams) -> types.Hover | None:
    settings = ls.settings
    if not settings.hover:
        return None
    document = ls.open_documents().get(params.text_document.uri)
    if document is None:
        return None
    deadline = time.monotonic() + settings.hover_budget_ms / 1000
    uri, source = document.uri, document.source
    lines = split_lines(source)
    if params.position.line >= len(lines):
        return None
    position = ls.workspace.position_codec.position_from_client_units(lines, params.position)
    line = position.line + 1
    ls.prefetch.note_cursor(uri, position.line)
    span = function_at(source, line)
    if span is None:
        return None
    status: FunctionStatus | None = ls.state.status(uri, span.qualname)
    shown = ls.state.displayable_trace(uri, span, source)
    if shown is None:
        if status is None or not status.failing or status.span != span:
            return None  # not known to fail (or edited since the run): nothing to say
        error = ls.state.trace_errors.get((uri, span.qualname, status.digest))
        if error is not None:
            return _markdown(f"**NExT** could not trace `{span.qualname}`: {error}")
        traced = ls.state.trace(uri, span.qualname, status.digest)
        if traced is not None:  # its traced run recorded nothing
            result = traced.report.traced_result
            why = f"{result.id}: {describe_result(result)}" if result is not None else "no test failed this time"
            return _markdown(f"**NExT** has no trace of `{span.qualname}` ({why})")
        analysis = ls.state.analysis(uri)
        if analysis is None:
            return None  # forgotten meanwhile (the document was closed)
        await _wait(ls.prefetch.urgent(analysis, status), deadline - time.monotonic())
        shown = ls.state.displayable_trace(uri, span, source)
        if shown is None:
            return _markdown(f"**NExT**: tracing `{span.qualname}` on its failing test; hover again in a moment.")
    entry, offset = shown
    parts = [trace_markdown(entry, line, word_at(lines[position.line], position.character), offset)]
    if entry.report.failing or (status is not None and status.failing):
        pending = False
        if settings.explain_on_hover:
            explaining = ls.workbench.explain(entry, status)
            pending = explaining is not None and not await _wait(explaining, deadline - time.monotonic())
        explanation, error = ls.workbench.explanation(entry, status)
        text = explanation_markdown(explanation, error, pending, settings.explain_on_hover)
        if text:
            parts.append(text)
    return _markdown("\n\n---\n\n".join(parts))


def _markdown(text: str) -> types.Hover:
    return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=text))
