"""Traces before the user asks: which failing function to trace next, and a hover's jump to the front.

After a document's tests ran (diagnostics), its failing functions are traced in the background in the
order the user is likely to look at them: the function under the cursor first (the last position a
hover, a `textDocument/documentHighlight` or a code-action request named: editors send the latter two
as the cursor or the selection moves), then the most recently edited failing function, then the rest
in file order. The order is taken again before each trace, so moving the cursor reorders what is left.
The traces reuse the diagnostics' test results: only the traced test runs again.

A hover on a failing function whose trace is not ready starts that trace at once: a background trace of
another function under way is stopped (and traced again later), and the background queue starts nothing
new until the urgent trace is done, so it has the project's warm test worker and the CPU to itself.
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lsprotocol import types

from nextls.lsp.hover import word_at
from nextls.lsp.state import split_lines

if TYPE_CHECKING:
    from nextls.lsp.jobs import Job
    from nextls.lsp.server import NextLanguageServer
    from nextls.lsp.state import Analysis, FunctionStatus

_POLL_S = 0.05
_PREEMPT_WAIT_S = 5.0  # how long an urgent trace waits for a stopped background trace to release its worker


@dataclass
class Focus:
    """Where the user is in a document (1-based lines of the current text)."""

    cursor: int | None = None
    edited: int | None = None


def _holds(status: FunctionStatus, line: int | None) -> bool:
    return line is not None and status.span.start_line <= line <= status.span.end_line


class Prefetcher:
    """Orders and runs the background traces of each document; safe from the event loop and job threads."""

    def __init__(self, ls: NextLanguageServer) -> None:
        self.ls = ls
        self._lock = threading.Lock()
        self._focus: dict[str, Focus] = {}
        self._urgent: set[Job] = set()  # traces a hover waits for
        self._background: set[Job] = set()  # traces started by `trace_in_background`
        self._preempted: set[Job] = set()  # background traces stopped for an urgent one

    # -- where the user is ---------------------------------------------------------------------------

    def note_cursor(self, uri: str, line: int) -> None:
        """The cursor (or the start of the selection) is on 0-based `line`."""
        with self._lock:
            self._focus.setdefault(uri, Focus()).cursor = line + 1

    def note_edit(self, params: types.DidChangeTextDocumentParams) -> None:
        """Remember the last line a change touched (a whole-text change says nothing about where)."""
        ranged = [change for change in params.content_changes
                  if isinstance(change, types.TextDocumentContentChangePartial)]
        if ranged:
            with self._lock:
                self._focus.setdefault(params.text_document.uri, Focus()).edited = ranged[-1].range.start.line + 1

    def forget(self, uri: str) -> None:
        with self._lock:
            self._focus.pop(uri, None)

    def order(self, uri: str, failing: list[FunctionStatus]) -> list[FunctionStatus]:
        """`failing` by interest: the one under the cursor, the one edited last, then file order."""
        with self._lock:
            focus = self._focus.get(uri, Focus())
        return sorted(failing, key=lambda status: (not _holds(status, focus.cursor), not _holds(status, focus.edited),
                                                   status.span.start_line))

    # -- tracing ---------------------------------------------------------------------------------------

    def trace(self, analysis: Analysis, status: FunctionStatus) -> Job:
        """The trace job of a failing function of `analysis` (started, or the one already running)."""
        return self.ls.workbench.trace(analysis.snapshot, status.span.qualname, key=status.digest,
                                       results=status.results)

    def urgent(self, analysis: Analysis, status: FunctionStatus) -> Job:
        """Trace this function now, ahead of the background traces (a hover is waiting for it).

        A background trace of another function is stopped first, and traced again later: this one then
        has the project's warm test worker and the CPU to itself (running beside it would start a second,
        cold worker, or share two cores between two interpreters)."""
        wanted = ("trace", analysis.snapshot.uri, status.span.qualname, status.digest)
        with self._lock:
            others = [job for job in self._background if job.key != wanted and not job.done]
            self._preempted.update(others)
        if not others:
            return self._mark_urgent(self.trace(analysis, status))
        for job in others:
            job.cancel.set()

        def work(job: Job) -> object:
            concurrent.futures.wait([other.future for other in others], timeout=_PREEMPT_WAIT_S)
            tracing = self.trace(analysis, status)
            while not tracing.done:
                if job.cancel.wait(_POLL_S):
                    tracing.cancel.set()
            return tracing.future.result()

        return self._mark_urgent(self.ls.jobs.submit(f"NExT: tracing {status.span.qualname} first", work,
                                                     progress=False))

    def _mark_urgent(self, job: Job) -> Job:
        with self._lock:
            self._urgent.add(job)
        job.future.add_done_callback(lambda _: self._done_urgent(job))
        return job

    def _done_urgent(self, job: Job) -> None:
        with self._lock:
            self._urgent.discard(job)

    def _urgent_running(self) -> bool:
        with self._lock:
            return bool(self._urgent)

    def _is_urgent(self, job: Job) -> bool:
        with self._lock:
            return job in self._urgent

    def trace_in_background(self, analysis: Analysis, limit: int, cancel: threading.Event) -> None:
        """Trace up to `limit` failing functions of `analysis`, most interesting first; stop on `cancel`."""
        uri = analysis.snapshot.uri
        pending = [status for status in analysis.functions.values() if status.failing]
        started = 0
        while pending and started < limit:
            while self._urgent_running():
                if cancel.wait(_POLL_S):
                    return
            if cancel.is_set():
                return
            status = self.order(uri, pending)[0]
            pending.remove(status)
            if self.ls.state.trace(uri, status.span.qualname, status.digest) is not None:
                continue
            with self._lock:  # started and registered at once, so that an urgent trace sees it to stop it
                tracing = self.trace(analysis, status)
                self._background.add(tracing)
            try:
                while not tracing.done:
                    if cancel.wait(_POLL_S):
                        if not self._is_urgent(tracing):  # a hover may still wait for it
                            tracing.cancel.set()
                        return
            finally:
                with self._lock:
                    self._background.discard(tracing)
                    preempted = tracing in self._preempted
                    self._preempted.discard(tracing)
            if preempted:  # stopped for a hover's trace: its turn comes again
                pending.append(status)
                continue
            started += 1
            error = tracing.future.exception()
            if error is not None and not tracing.cancel.is_set():
                self.ls.log(f"nextls: tracing {status.span.qualname} failed: {error}", types.MessageType.Warning)


_MAX_HIGHLIGHTS = 1000


def document_highlight(ls: NextLanguageServer, params: types.DocumentHighlightParams
                       ) -> list[types.DocumentHighlight] | None:
    """Editors ask as the cursor moves: the position is the cursor for the trace order. The answer is what
    an editor shows without a highlight provider: the word under the cursor wherever it occurs."""
    uri = params.text_document.uri
    document = ls.open_documents().get(uri)
    if document is None:
        return None
    lines = split_lines(document.source)
    if params.position.line >= len(lines):
        return None
    codec = ls.workspace.position_codec
    position = codec.position_from_client_units(lines, params.position)
    ls.prefetch.note_cursor(uri, position.line)
    word = word_at(lines[position.line], position.character)
    if word is None:
        return None
    pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)")
    found = []
    for number, text in enumerate(lines):
        for match in pattern.finditer(text):
            start = codec.position_to_client_units(lines, types.Position(number, match.start()))
            end = codec.position_to_client_units(lines, types.Position(number, match.end()))
            found.append(types.DocumentHighlight(range=types.Range(start, end), kind=types.DocumentHighlightKind.Text))
            if len(found) >= _MAX_HIGHLIGHTS:
                return found
    return found
