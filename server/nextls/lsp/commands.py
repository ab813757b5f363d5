"""`workspace/executeCommand`: trace, explain, fix a function; run a document's tests; clear the caches.

Each command takes its target as one object, `{"uri": ..., "function": "Class.method"}` or
`{"uri": ..., "line": 12}` (0-based, like an LSP position), or positionally as `uri, function-or-line`.
Long commands run as jobs with `$/progress` reports and stop on `$/cancelRequest`. A bad target (an
unknown URI, a file that is not UTF-8, no such function) is an error response and a message, never a
crash.

| command | result |
|---|---|
| `nextls.traceFunction` | the tests' results and the naturalized trace (also feeds hovers and inlay hints) |
| `nextls.explainFunction` | the model's explanation of the failure (also shown as a message) |
| `nextls.fixFunction` | the best candidate, its rationale and diff; `"apply": true` applies a verified one |
| `nextls.runTests` | runs the document's tests now and publishes the diagnostics (`diagnostics: onDemand`) |
| `nextls.clearCache` | forgets every trace, explanation and fix |
| `nextls.showRationale`, `nextls.showMessage` | show a fix's rationale / a message (run by code actions) |
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInternalError, JsonRpcInvalidParams

from nextls.lsp import diagnostics
from nextls.lsp.code_actions import rationale_payload, summary, workspace_edit
from nextls.lsp.jobs import Cancelled, Job
from nextls.lsp.state import Snapshot, function_at, function_key
from nextls.runner import RunCancelled
from nextls.splice import FunctionNotFoundError, find_function

if TYPE_CHECKING:
    from nextls.lsp.server import NextLanguageServer

logger = logging.getLogger(__name__)

COMMANDS = ("nextls.traceFunction", "nextls.explainFunction", "nextls.fixFunction", "nextls.runTests",
            "nextls.clearCache", "nextls.showRationale", "nextls.showMessage")


class CommandError(JsonRpcInvalidParams):
    pass


def _fail(ls: NextLanguageServer, command: str, message: str) -> CommandError:
    ls.show(f"{command}: {message}")
    return CommandError(f"{command}: {message}")


def _target(ls: NextLanguageServer, command: str, args: tuple, *, needs_function: bool = True
            ) -> tuple[Snapshot, str | None, dict]:
    """(document, function qualname, options) from a command's arguments."""
    first = args[0] if args else None
    options: dict[str, Any] = {}
    function: str | None = None
    line: int | None = None
    if isinstance(first, dict):
        options = first
        uri = first.get("uri")
        function = first.get("function")
        line = first.get("line", (first.get("position") or {}).get("line"))
    else:
        uri = first
        second = args[1] if len(args) > 1 else None
        if isinstance(second, str):
            function = second
        elif isinstance(second, int) and not isinstance(second, bool):
            line = second
        elif isinstance(second, dict):
            line = second.get("line")
    if not isinstance(uri, str) or not uri:
        raise _fail(ls, command, "give the document's URI (arguments: [{\"uri\": ..., \"function\": ...}])")
    try:
        snap = ls.snapshot(uri)
    except Exception as error:
        raise _fail(ls, command, str(error)) from None
    if not needs_function:
        return snap, None, options
    try:
        if function:
            return snap, find_function(snap.source, function).qualname, options
        if isinstance(line, int):
            span = function_at(snap.source, line + 1)
            if span is None:
                raise _fail(ls, command, f"line {line + 1} of {snap.path.name} is not inside a function")
            return snap, span.qualname, options
    except (FunctionNotFoundError, ValueError) as error:  # SourceSyntaxError is a ValueError
        raise _fail(ls, command, str(error)) from None
    raise _fail(ls, command, "name the function (\"function\": \"name\") or a line inside it (\"line\": 0-based)")


async def _await_job(ls: NextLanguageServer, command: str, job: Job) -> Any:
    """The job's result; a $/cancelRequest of this command cancels the job (subprocesses killed).

    A job that fails is an error response; one the client cancelled ends this handler quietly (the
    client already has its "cancelled" response)."""
    cancelled_by_client: list[bool] = []

    def cancel() -> None:
        cancelled_by_client.append(True)
        job.cancel.set()

    ls.on_cancel(cancel)
    try:
        return await asyncio.wrap_future(job.future)
    except asyncio.CancelledError:
        job.cancel.set()
        raise
    except Exception as error:
        if cancelled_by_client:
            raise asyncio.CancelledError() from None
        raise _job_error(ls, command, error) from None


def _job_error(ls: NextLanguageServer, command: str, error: Exception) -> JsonRpcException:
    from nextls.model import ModelError
    from nextls.trace.capture import NoTestsError, SourceError

    if isinstance(error, (RunCancelled, Cancelled)):
        return CommandError(f"{command}: cancelled")
    if isinstance(error, (NoTestsError, SourceError, FunctionNotFoundError, ModelError, ValueError, FileNotFoundError,
                          PermissionError)):
        return _fail(ls, command, str(error))
    logger.error("%s failed", command, exc_info=error)
    ls.show(f"{command} failed: {type(error).__name__}: {error}")
    return JsonRpcInternalError(f"{command} failed: {type(error).__name__}: {error}")


async def _traced(ls: NextLanguageServer, command: str, snap: Snapshot, qualname: str):
    status = ls.state.status(snap.uri, qualname)
    tests = status.tests if status else []
    key = function_key(ls.settings.run_key(), snap.source, qualname, tests)
    entry = ls.state.trace(snap.uri, qualname, key)
    if entry is None:
        entry = await _await_job(ls, command, ls.workbench.trace(snap, qualname, key=key))
    return entry


async def trace_function(ls: NextLanguageServer, *args: Any) -> dict:
    command = "nextls.traceFunction"
    snap, qualname, _ = _target(ls, command, args)
    entry = await _traced(ls, command, snap, qualname)
    report = entry.report
    return {"function": qualname, "file": str(snap.path),
            "tests": [result.to_json() for result in report.results],
            "traced_test": report.traced_test.id if report.traced_test else None,
            "steps": report.trace.steps if report.trace else 0, "rendered": report.rendered}


async def explain_function(ls: NextLanguageServer, *args: Any) -> dict:
    command = "nextls.explainFunction"
    snap, qualname, _ = _target(ls, command, args)
    entry = await _traced(ls, command, snap, qualname)
    if not entry.report.failing:
        message = f"{qualname}: every test passes ({len(entry.report.results)} run); nothing to explain"
        ls.show(message, types.MessageType.Info)
        return {"function": qualname, "explanation": None, "message": message}
    status = ls.state.status(snap.uri, qualname)
    job = ls.workbench.explain(entry, status)
    if job is not None:
        await _await_job(ls, command, job)
    explanation, error = ls.workbench.explanation(entry, status)
    if explanation is None:
        raise _fail(ls, command, error or "no explanation")
    ls.show(f"Why {qualname} fails ({explanation.origin}):\n{explanation.text}", types.MessageType.Info)
    return {"function": qualname, "explanation": explanation.text, "origin": explanation.origin}


async def fix_function(ls: NextLanguageServer, *args: Any) -> dict:
    command = "nextls.fixFunction"
    snap, qualname, options = _target(ls, command, args)
    status = ls.state.status(snap.uri, qualname)
    key = function_key(ls.settings.run_key(), snap.source, qualname, status.tests if status else [])
    outcome = ls.state.fix(snap.uri, qualname, key)
    if outcome is None:
        outcome = await _await_job(ls, command, ls.workbench.fix(snap, qualname, key))
    report = outcome.report
    result: dict[str, Any] = {"function": qualname, "failing": len(report.trace.failing),
                              "candidates": [{"status": c.status, "passed": c.passed, "total": len(c.results),
                                              "reason": c.reason} for c in report.candidates],
                              "timings": {name: round(seconds, 3) for name, seconds in report.timings.items()},
                              "device": report.device, "applied": False}
    best = report.best
    if best is not None:  # the best candidate's status, pass count, summary, rationale and diff
        result.update(rationale_payload(qualname, best))
    if options.get("apply") and best is not None and best.verified:
        edit = workspace_edit(ls, outcome.snapshot, qualname, best.new_source)
        applied = await ls.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(
            edit=edit, label=f"NExT: {summary(best)}"))
        result["applied"] = bool(applied and applied.applied)
    elif options.get("apply") and report.trace.failing:
        ls.show(f"{command}: no verified fix for {qualname}; nothing applied", types.MessageType.Warning)
    return result


async def run_tests(ls: NextLanguageServer, *args: Any) -> dict:
    command = "nextls.runTests"
    snap, _, _ = _target(ls, command, args, needs_function=False)
    job = diagnostics.run_now(ls, snap.uri)
    if job is None:
        raise _fail(ls, command, f"cannot run the tests of {snap.uri}")
    analysis = await _await_job(ls, command, job)
    return {"uri": snap.uri, "error": analysis.error,
            "functions": {name: [result.to_json() for result in status.results]
                          for name, status in analysis.functions.items()}}


def clear_cache(ls: NextLanguageServer, *args: Any) -> dict:
    counts = ls.state.clear()
    ls.refresh_inlay_hints()
    ls.log(f"nextls: cache cleared ({counts})")
    return counts


def show_rationale(ls: NextLanguageServer, *args: Any) -> None:
    payload = args[0] if args and isinstance(args[0], dict) else {}
    verdict = ("passes every test" if payload.get("status") == "verified"
               else f"NOT verified: passes {payload.get('passed', 0)}/{payload.get('total', 0)} tests")
    ls.show(f"NExT fix of {payload.get('function', '?')} ({verdict}): "
            f"{payload.get('rationale') or '(the model gave no rationale)'}", types.MessageType.Info)


def show_message(ls: NextLanguageServer, *args: Any) -> None:
    ls.show(str(args[0]) if args else "", types.MessageType.Info)
