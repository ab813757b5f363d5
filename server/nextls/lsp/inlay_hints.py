"""Inlay hints: the naturalized trace's entries at the end of each executed line, `(k) var=value; ...`.

The text of each hint is the trace's own comment for that line (`nextls.trace.render.trace_annotations`:
the same entries, the same eliding), shown for every traced function of the document whose code is
unchanged since it was traced. Turned off by the `inlayHints` setting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lsprotocol import types

from nextls.lsp.state import function_named, split_lines
from nextls.trace.render import RenderOptions, trace_annotations

if TYPE_CHECKING:
    from nextls.lsp.server import NextLanguageServer

HINT_OPTIONS = RenderOptions(max_value_chars=80)


def inlay_hints(ls: NextLanguageServer, params: types.InlayHintParams) -> list[types.InlayHint] | None:
    if not ls.settings.inlay_hints:
        return []
    document = ls.open_documents().get(params.text_document.uri)
    if document is None:
        return None
    source = document.source
    lines = split_lines(source)
    codec = ls.workspace.position_codec
    first, last = params.range.start, params.range.end
    hints: list[types.InlayHint] = []
    for latest in ls.state.traces_of(document.uri):
        span = function_named(source, latest.report.span.qualname)
        shown = ls.state.displayable_trace(document.uri, span, source) if span else None
        if shown is None:
            continue
        entry, offset = shown
        report = entry.report
        test = report.traced_test.id if report.traced_test else report.trace.test_id
        annotations = trace_annotations(entry.function_lines_text(), report.span.start_line, report.trace, HINT_OPTIONS)
        for traced_line, label in sorted(annotations.items()):
            line = traced_line + offset - 1
            if line >= len(lines):
                continue
            end = codec.position_to_client_units(lines, types.Position(line, len(lines[line])))
            if not (first.line, first.character) <= (end.line, end.character) <= (last.line, last.character):
                continue
            hints.append(types.InlayHint(position=end, label=label, padding_left=True,
                                         tooltip=f"NExT trace of {report.span.qualname} on test {test}"))
    return hints
