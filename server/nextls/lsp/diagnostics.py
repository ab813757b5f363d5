"""Diagnostics: run the document's tests and mark each function whose tests fail.

On open and/or save (the `diagnostics` setting; `onDemand` waits for the `nextls.runTests` command), a
debounced job finds every function's tests (static discovery, one pass), runs all of them in one sandboxed
run (untraced: that is the fast part; a big file's in growing batches, published as each ends) and
publishes one diagnostic per failing function, on its name, with the failing tests as related information.
A newer save cancels the older run (its processes are killed).
Then, still in the background, the failing functions are traced (the `traceBackend`, debugpy by
default; the function under the cursor first, see `prefetch`), so that hovers and inlay hints are there
by the time the user looks; nothing here ever runs on the event loop, so typing is never blocked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from lsprotocol import types

from nextls.discovery import discover_all_tests, find_workspace_root, target_module
from nextls.lsp.config import Settings
from nextls.lsp.jobs import Cancelled, Job
from nextls.lsp.state import Analysis, FunctionStatus, Snapshot, function_key, functions_of, split_lines
from nextls.runner import RunCancelled, TestCase, TestResult, run_tests
from nextls.splice import SourceSyntaxError
from nextls.trace.capture import describe_result

if TYPE_CHECKING:
    from nextls.lsp.server import NextLanguageServer

logger = logging.getLogger(__name__)

SOURCE = "nextls"
MAX_RELATED = 20
MAX_MESSAGE_LINES = 3
FIRST_BATCH_TESTS = 100  # a file with more tests than this gets its diagnostics batch by batch


def _kept(test: TestCase, mode: str, path: Path) -> bool:
    if mode == "file":
        return Path(test.file).resolve() == path.resolve()
    if mode == "pytest":
        return test.kind == "pytest"
    return True


def _batches(found: dict[str, tuple]) -> Iterator[list[tuple[str, tuple]]]:
    """The tested functions in file order, in runs of about FIRST_BATCH_TESTS tests, then twice as many each
    time: a big file's first diagnostics come after a short run, and the number of runs stays logarithmic."""
    batch: list[tuple[str, tuple]] = []
    size, limit = 0, FIRST_BATCH_TESTS
    for item in found.items():
        batch.append(item)
        size += len(item[1][1])
        if size >= limit:
            yield batch
            batch, size, limit = [], 0, limit * 2
    if batch:
        yield batch


def _results_by_test(results: list[TestResult], test_ids: set[str]) -> dict[str, list[TestResult]]:
    """Each test's results (a parametrized pytest test has several, `id[param]`), in one pass."""
    by_test: dict[str, list[TestResult]] = {}
    for result in results:
        owner = result.id if result.id in test_ids else next(
            (result.id[:at] for at, char in enumerate(result.id) if char == "[" and result.id[:at] in test_ids), None)
        if owner is not None:
            by_test.setdefault(owner, []).append(result)
    return by_test


def analyze(snap: Snapshot, settings: Settings, cancel=None,
            on_progress: Callable[[Analysis], None] | None = None) -> Analysis:
    """Run every test of every function of the document once, untraced, in sandboxed runs: one for a
    small file; for a big one, growing batches of functions, with `on_progress` called with the
    functions done so far after each batch but the last."""
    started = time.perf_counter()
    try:
        spans = functions_of(snap.source)
    except SourceSyntaxError as error:
        return Analysis(snap, error=f"nextls: tests not run, {error}", error_line=error.line)
    root = find_workspace_root(snap.path)
    found: dict[str, tuple] = {}
    tests_by_id: dict[str, TestCase] = {}
    discovered = discover_all_tests(snap.path, snap.source, spans, root=root)
    if cancel is not None and cancel.is_set():
        raise Cancelled("analysis cancelled")
    for span in spans:
        tests = [test for test in discovered[span.qualname] if _kept(test, settings.test_discovery, snap.path)]
        if tests:
            found[span.qualname] = (span, tests)
            tests_by_id.update((test.id, test) for test in tests)
    analysis = Analysis(snap)
    if not tests_by_id:
        analysis.seconds = time.perf_counter() - started
        return analysis
    # every test of the file is blanked out of the module, whichever batch runs: an assert left in would run
    # (and fail) at import
    module = target_module(snap.path, snap.source, list(tests_by_id.values()), root=root)
    batches = list(_batches(found))
    for number, batch in enumerate(batches, 1):
        tests = list({test.id: test for _, (_, function_tests) in batch for test in function_tests}.values())
        try:
            run = run_tests(module, tests, settings.run_config(), cancel=cancel)
        except (FileNotFoundError, PermissionError) as error:
            analysis.error = (f"nextls: cannot start the Python interpreter {settings.interpreter!r} "
                              f"to run the tests ({error.strerror or error}); set nextls.python")
            return analysis
        by_test = _results_by_test(run.results, {test.id for test in tests})
        for qualname, (span, function_tests) in batch:
            results = list({result.id: result for test in function_tests
                            for result in by_test.get(test.id, [])}.values())
            analysis.functions[qualname] = FunctionStatus(
                span, function_tests, results, function_key(settings.run_key(), snap.source, qualname,
                                                             function_tests))
        analysis.seconds = time.perf_counter() - started
        if on_progress is not None and number < len(batches):
            on_progress(replace(analysis, functions=dict(analysis.functions)))
    return analysis


def _first_line(text: str, limit: int = 200) -> str:
    """One line for a test's result (pytest's reports can run to many lines)."""
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.lstrip().startswith('File "')]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _line_range(ls: NextLanguageServer, lines: list[str], line: int, start: int = 0, end: int | None = None
                ) -> types.Range:
    """A range on 0-based `line` from character `start` to `end` (Python indices), in the client's units."""
    codec = ls.workspace.position_codec
    text = lines[line] if 0 <= line < len(lines) else ""
    end = len(text) if end is None else end
    return types.Range(start=codec.position_to_client_units(lines, types.Position(line, start)),
                       end=codec.position_to_client_units(lines, types.Position(line, end)))


def _file_lines(path: Path, snap: Snapshot) -> list[str]:
    if path.resolve() == snap.path.resolve():
        return split_lines(snap.source)
    try:
        return split_lines(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []


def function_diagnostic(ls: NextLanguageServer, snap: Snapshot, status: FunctionStatus) -> types.Diagnostic | None:
    failing = status.failing
    if not failing:
        return None
    lines = split_lines(snap.source)
    span = status.span
    def_text = lines[span.def_line - 1]
    name_at = def_text.find(span.name, def_text.find("def"))
    name_range = _line_range(ls, lines, span.def_line - 1, max(0, name_at),
                             name_at + len(span.name) if name_at >= 0 else None)
    shown = [f"{result.id}: {_first_line(describe_result(result))}" for result in failing[:MAX_MESSAGE_LINES]]
    more = len(failing) - len(shown)
    message = "\n".join([f"{span.qualname} fails {len(failing)} of {len(status.results)} test(s)", *shown]
                        + ([f"(+{more} more)"] if more > 0 else []))
    related = []
    for result in failing[:MAX_RELATED]:
        test = status.test_for(result)
        if test is None:
            continue
        test_path = Path(test.file)
        related.append(types.DiagnosticRelatedInformation(
            location=types.Location(uri=test_path.resolve().as_uri(),
                                    range=_line_range(ls, _file_lines(test_path, snap), test.line - 1)),
            message=f"{result.id}: {_first_line(describe_result(result))}"))
    return types.Diagnostic(range=name_range, message=message, severity=types.DiagnosticSeverity.Error,
                            source=SOURCE, code=failing[0].outcome.value, related_information=related or None,
                            data={"qualname": span.qualname, "digest": status.digest})


def diagnostics_of(ls: NextLanguageServer, analysis: Analysis) -> list[types.Diagnostic]:
    snap = analysis.snapshot
    if analysis.error:
        lines = split_lines(snap.source)
        line = max(0, (analysis.error_line or 1) - 1)
        return [types.Diagnostic(range=_line_range(ls, lines, min(line, len(lines) - 1)), message=analysis.error,
                                 severity=types.DiagnosticSeverity.Warning, source=SOURCE, code="not-run")]
    found = (function_diagnostic(ls, snap, status) for status in analysis.functions.values())
    return [diagnostic for diagnostic in found if diagnostic is not None]


def publish(ls: NextLanguageServer, analysis: Analysis) -> None:
    """On the event loop: send the analysis' diagnostics (unless the document was closed meanwhile)."""
    uri = analysis.snapshot.uri
    if uri not in ls.open_documents():
        return
    ls.text_document_publish_diagnostics(types.PublishDiagnosticsParams(
        uri=uri, diagnostics=diagnostics_of(ls, analysis), version=analysis.snapshot.version))


def clear(ls: NextLanguageServer, uri: str) -> None:
    ls.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=uri, diagnostics=[]))


def schedule(ls: NextLanguageServer, uri: str, reason: str) -> bool:
    """On the event loop: run the document's tests after the debounce delay, if the mode says so.

    `reason` is "open", "save" or "config" (settings changed).
    """
    if not ls.settings_ready:
        ls.waiting_for_settings.append((uri, reason))
        return True
    mode = ls.settings.diagnostics
    wanted = {"open": mode == "onOpenAndSave", "save": mode in ("onOpenAndSave", "onSave"),
              "config": mode in ("onOpenAndSave", "onSave")}
    if not wanted.get(reason, False):
        return False
    timers = ls.debounce_timers
    if uri in timers:
        timers.pop(uri).cancel()
    timers[uri] = ls.loop.call_later(ls.settings.debounce_ms / 1000, start, ls, uri)
    return True


def run_now(ls: NextLanguageServer, uri: str) -> Job | None:
    """On the event loop: run the document's tests now, whatever the mode (the `nextls.runTests` command)."""
    timer = ls.debounce_timers.pop(uri, None)
    if timer is not None:
        timer.cancel()
    return start(ls, uri)


def start(ls: NextLanguageServer, uri: str) -> Job | None:
    """On the event loop: cancel the document's running analysis and start a new one on its current text."""
    ls.debounce_timers.pop(uri, None)
    try:
        snap = ls.snapshot(uri)
    except Exception as error:  # not a file, unreadable: say so once, keep serving
        ls.log(f"nextls: not running tests of {uri}: {error}", types.MessageType.Warning)
        return None
    previous = ls.analysis_jobs.pop(uri, None)
    if previous is not None:
        previous.cancel.set()
    settings = ls.settings
    job = ls.jobs.submit(f"NExT: running the tests of {snap.path.name}",
                         lambda job: _analysis_job(ls, snap, settings, job))
    ls.analysis_jobs[uri] = job
    return job


def _analysis_job(ls: NextLanguageServer, snap: Snapshot, settings: Settings, job: Job) -> Analysis:
    job.report("discovering and running tests")

    def publish_so_far(partial: Analysis) -> None:  # a big file's first functions, while the rest run
        if not job.cancel.is_set():
            ls.state.set_analysis(snap.uri, partial)
            ls.post(publish, ls, partial)

    try:
        analysis = analyze(snap, settings, job.cancel, publish_so_far)
    except (RunCancelled, Cancelled):
        raise
    except Exception as error:  # a bug or a broken environment: one clear message, the server lives on
        logger.exception("running the tests of %s failed", snap.uri)
        analysis = Analysis(snap, error=f"nextls: running the tests failed: {type(error).__name__}: {error}")
    if job.cancel.is_set():
        raise Cancelled("superseded")
    ls.state.set_analysis(snap.uri, analysis)
    ls.post(publish, ls, analysis)
    if analysis.error:
        ls.post(ls.show, analysis.error, types.MessageType.Warning)
    failing = [status for status in analysis.functions.values() if status.failing]
    ls.log(f"nextls: ran the tests of {snap.path.name} in {analysis.seconds:.2f}s: "
           f"{len(failing)} function(s) failing of {len(analysis.functions)} tested")
    ls.prefetch.trace_in_background(analysis, settings.trace_failing, job.cancel)
    return analysis
