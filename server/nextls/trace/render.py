"""NExT's naturalized trace: the execution written into the function's source as comments.

Each executed line that changed something gets `# (k) var=value, ...` where k is the global step; a line
run many times lists its entries in order, the middle elided as `...`; the def line shows the
arguments at step (0); `__return__` and `__exception__` mark how a frame left. The failing test follows
the function, with its result.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, replace

from nextls.trace.model import Trace, TraceEvent


def approximate_tokens(text: str) -> int:
    """About four characters a token for code; good enough to fit a context window."""
    return (len(text) + 3) // 4


@dataclass(frozen=True)
class RenderOptions:
    head: int = 3  # entries kept from the start of a line's run...
    tail: int = 1  # ...and from its end, the middle elided
    max_value_chars: int = 200  # the recorder already cuts strings at 50 + ... + 50
    max_tokens: int | None = None  # trim the rendering to fit this budget
    count_tokens: Callable[[str], int] = approximate_tokens


def shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = max(1, (limit - 3) // 2)
    return text[:half] + "..." + text[-half:]


def _entry(event: TraceEvent, max_value_chars: int) -> str:
    values = ", ".join(f"{name}={shorten(text, max_value_chars)}" for name, text in event.values.items())
    return f"({event.step}) {values}"


def format_entries(events: list[TraceEvent], options: RenderOptions | None = None) -> str:
    """One line's entries as the trace writes them after `# `: `(1) i=0; (3) i=1; ...; (9) i=3`.

    The first `options.head` and last `options.tail` entries are kept and the middle elided as `...`.
    The naturalized trace, the editor's inlay hints and its hovers all write entries through here.
    """
    options = options or RenderOptions()
    if len(events) > options.head + options.tail + 1:
        kept = [_entry(e, options.max_value_chars) for e in events[: options.head]]
        kept.append("...")
        kept.extend(_entry(e, options.max_value_chars) for e in events[len(events) - options.tail:])
    else:
        kept = [_entry(e, options.max_value_chars) for e in events]
    return "; ".join(kept)


def _line_comment(events: list[TraceEvent], options: RenderOptions) -> str:
    return "# " + format_entries(events, options)


def _def_line_of(lines: list[str], index: int) -> int:
    """A call event carries the code's first line, a decorator's when there is one: move it to the def."""
    for candidate in range(index, len(lines)):
        stripped = lines[candidate].lstrip()
        if stripped.startswith(("def ", "async def ")):
            return candidate
    return index


def _events_by_index(source_lines: list[str], first_line: int, trace: Trace) -> dict[int, list[TraceEvent]]:
    by_index: dict[int, list[TraceEvent]] = {}
    for event in trace.events:
        if not event.values:
            continue
        index = event.line - first_line
        if not 0 <= index < len(source_lines):
            continue
        if event.kind == "call":
            index = _def_line_of(source_lines, index)
        by_index.setdefault(index, []).append(event)
    return by_index


def events_by_line(function_source: str, first_line: int, trace: Trace) -> dict[int, list[TraceEvent]]:
    """The events that changed something, by the file line (1-based) the trace writes them on.

    `function_source` is the traced function's text, whose first line is line `first_line` of the file;
    a call's arguments go on its `def` line (below any decorators), as in the naturalized trace.
    """
    source_lines = function_source.rstrip("\n").split("\n")
    return {first_line + index: events
            for index, events in _events_by_index(source_lines, first_line, trace).items()}


def trace_annotations(function_source: str, first_line: int, trace: Trace,
                      options: RenderOptions | None = None) -> dict[int, str]:
    """File line (1-based) -> its entries, exactly as the naturalized trace writes them after `# `."""
    return {line: format_entries(events, options)
            for line, events in events_by_line(function_source, first_line, trace).items()}


def _render_once(source_lines: list[str], first_line: int, trace: Trace, test_source: str | None,
                 test_result: str | None, options: RenderOptions) -> str:
    by_index = _events_by_index(source_lines, first_line, trace)
    out = []
    for index, text in enumerate(source_lines):
        events = by_index.get(index)
        out.append(f"{text}  {_line_comment(events, options)}" if events else text)
    if trace.truncated:
        out.append(f"# (the trace stops after {trace.max_steps} steps)")
    test_lines = test_source.rstrip("\n").split("\n") if test_source else []
    if test_lines or test_result:
        out.append("")
    if test_result and len(test_lines) == 1:
        out.append(f"{test_lines[0]}  # {test_result}")
    else:
        out.extend(test_lines)
        if test_result:
            out.extend("# " + line for line in test_result.split("\n"))
    return "\n".join(out) + "\n"


def render_naturalized(function_source: str, first_line: int, trace: Trace, *, test_source: str | None = None,
                       test_result: str | None = None, options: RenderOptions | None = None) -> str:
    """Render `trace` onto `function_source`, whose first line is line `first_line` of the traced file.

    With `options.max_tokens`, fewer entries per line and then shorter values are kept until it fits.
    """
    options = options or RenderOptions()
    source_lines = function_source.rstrip("\n").split("\n")
    rendered = _render_once(source_lines, first_line, trace, test_source, test_result, options)
    if options.max_tokens is None:
        return rendered
    attempts = [replace(options, head=head) for head in range(options.head - 1, -1, -1)]
    attempts += [replace(options, head=0, max_value_chars=limit) for limit in (40, 16, 6)]
    for attempt in attempts:
        if options.count_tokens(rendered) <= options.max_tokens:
            break
        rendered = _render_once(source_lines, first_line, trace, test_source, test_result, attempt)
    return rendered


_TRACE_COMMENT = re.compile(r"#\s*\(\d+\)")


def strip_trace_comments(code: str) -> str:
    """Remove the naturalized trace's comments from code (models often copy them into their fix)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return code
    lines = code.splitlines(keepends=True)
    for token in reversed(tokens):
        if token.type == tokenize.COMMENT and _TRACE_COMMENT.match(token.string):
            row, column = token.start
            line = lines[row - 1]
            ending = line[len(line.rstrip("\r\n")):]
            lines[row - 1] = line[:column].rstrip() + ending
    return "".join(lines)
