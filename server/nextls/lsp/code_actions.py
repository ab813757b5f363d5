"""Code actions: "Fix with NExT", computed only when the user picks it (`codeAction/resolve`).

`textDocument/codeAction` answers at once, from the caches: on a failing function (the cursor inside it,
or one of our diagnostics in the context) it offers a quick fix whose costly part -- trace, the repair
search, k samples from the model when the search verified nothing, verification of each against every
test -- runs in `codeAction/resolve`, with `$/progress` reports, and stops (subprocesses killed, generation
stopped) on `$/cancelRequest`. The resolve answers with the first verified fix as soon as there is one
(the rest of the work goes on and fills the cache). Once a function's fixes are known (cached by its
document text and tests), the actions say what they do and where they come from: "Fix with NExT (search):
line 12: `s[i:]` -> `s[i + 1:]` (passes N/N tests)", or "(model): <first sentence of its rationale>", the
best one `isPreferred`. Only fixes that pass every test are quick fixes; the best unverified edit, if any,
is offered as a `refactor.rewrite` that says so in its title.

The edit is a WorkspaceEdit that replaces exactly the function's lines (plus any import the fix needs),
versioned when the client supports it; the server itself never writes a file. The rationale travels with
the action, in `data` and as the `nextls.showRationale` command run after the edit.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.capabilities import get_capability

from nextls.lsp.jobs import Cancelled, Job
from nextls.lsp.state import FixOutcome, Snapshot, function_at, function_key, function_named, split_lines
from nextls.runner import RunCancelled

if TYPE_CHECKING:
    from nextls.fix import FixCandidate
    from nextls.lsp.server import NextLanguageServer

logger = logging.getLogger(__name__)

UNVERIFIED_KIND = types.CodeActionKind.RefactorRewrite
FIX_TITLE = "Fix with NExT"
MAX_OFFERED = 3
FIRST_FIX_POLL_S = 0.05  # how often a resolve waiting on a fix job looks for its first verified fix
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def summary(candidate: FixCandidate, limit: int = 72) -> str:
    """A one-line summary of a fix: a search edit's description, else the first sentence of its rationale."""
    text = " ".join((candidate.description or candidate.candidate.rationale).split())
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0] if text else ""
    if not sentence:
        sentence = f"change {candidate.edit_size} line(s)"
    if len(sentence) <= limit:
        return sentence
    cut = sentence[: limit - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(" ,;:") + "…"


def _lines_keep_ends(text: str) -> list[str]:
    return _LINE.findall(text)


def _without_ending(line: str) -> str:
    return line.rstrip("\r\n")


Edit = tuple[tuple[int, int], tuple[int, int], str]


def function_edits(old_source: str, new_source: str, qualname: str) -> list[Edit]:
    """Edits, in (0-based line, Python character) positions of `old_source`, turning it into `new_source`:
    one replacing exactly the function's lines, plus line edits outside it (imports a fix added)."""
    old_span, new_span = function_named(old_source, qualname), function_named(new_source, qualname)
    if old_span is None or new_span is None:
        raise ValueError(f"{qualname} is not in both versions of the document")
    old, new = _lines_keep_ends(old_source), _lines_keep_ends(new_source)
    edits: list[Edit] = []
    head_old, head_new = old[: old_span.start_line - 1], new[: new_span.start_line - 1]
    matcher = difflib.SequenceMatcher(None, head_old, head_new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            edits.append(((i1, 0), (i2, 0), "".join(head_new[j1:j2])))
    body = "".join(new[new_span.start_line - 1: new_span.end_line])
    last_new = new[new_span.end_line - 1]
    body = body[: len(body) - (len(last_new) - len(_without_ending(last_new)))]
    last_old = old[old_span.end_line - 1]
    edits.append(((old_span.start_line - 1, 0), (old_span.end_line - 1, len(_without_ending(last_old))), body))
    tail_old, tail_new = old[old_span.end_line:], new[new_span.end_line:]
    if tail_old != tail_new:  # never expected (splicing keeps the rest byte for byte), but stay exact
        edits.append(((old_span.end_line, 0), (len(old), 0), "".join(tail_new)))
    return edits


def workspace_edit(ls: NextLanguageServer, snap: Snapshot, qualname: str, new_source: str) -> types.WorkspaceEdit:
    lines = split_lines(snap.source)
    codec = ls.workspace.position_codec

    def position(line: int, character: int) -> types.Position:
        if line >= len(lines):
            return types.Position(line=line, character=0)
        return codec.position_to_client_units(lines, types.Position(line=line, character=character))

    edits = [types.TextEdit(range=types.Range(start=position(*start), end=position(*end)), new_text=text)
             for start, end, text in function_edits(snap.source, new_source, qualname)]
    if get_capability(ls.client_capabilities, "workspace.workspace_edit.document_changes", False):
        return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(
            text_document=types.OptionalVersionedTextDocumentIdentifier(uri=snap.uri, version=snap.version),
            edits=edits)])
    return types.WorkspaceEdit(changes={snap.uri: edits})


def rationale_payload(qualname: str, candidate: FixCandidate) -> dict[str, Any]:
    return {"function": qualname, "status": candidate.status, "passed": candidate.passed,
            "total": len(candidate.results), "summary": summary(candidate), "source": candidate.source,
            "description": candidate.description, "rationale": candidate.candidate.rationale, "diff": candidate.diff}


def fix_title(candidate: FixCandidate, payload: dict[str, Any]) -> str:
    """"Fix with NExT (search): ..." -- where the fix came from, what it does, how many tests it passes."""
    passes = f"{candidate.passed}/{len(candidate.results)}"
    return f"{FIX_TITLE} ({candidate.source}): {payload['summary']} (passes {passes} tests)"


def _rationale_command(payload: dict[str, Any]) -> types.Command:
    return types.Command(title="Show NExT's rationale", command="nextls.showRationale", arguments=[payload])


def _message_command(message: str) -> types.Command:
    return types.Command(title="Show NExT's message", command="nextls.showMessage", arguments=[message])


def _supports_resolve(ls: NextLanguageServer) -> bool:
    properties = get_capability(ls.client_capabilities, "text_document.code_action.resolve_support.properties", [])
    return "edit" in (properties or [])


def _wanted(only: list[str] | None, kind: str) -> bool:
    return not only or any(kind == wanted or kind.startswith(wanted + ".") for wanted in only)


def fill_from_outcome(ls: NextLanguageServer, action: types.CodeAction, outcome: FixOutcome) -> types.CodeAction:
    """Turn a lazy "Fix with NExT" action into the computed one (the resolve result)."""
    report = outcome.report
    qualname = outcome.qualname
    data = dict(action.data or {})
    data.update(resolved=True, timings={name: round(seconds, 3) for name, seconds in report.timings.items()},
                device=report.device, candidates=len(report.candidates))
    best = report.best
    if not report.trace.failing:
        action.title = f"{FIX_TITLE}: nothing to fix, all {len(report.trace.results)} tests of {qualname} pass"
        action.command = _message_command(action.title)
    elif best is not None and best.verified:
        payload = rationale_payload(qualname, best)
        action.title = fix_title(best, payload)
        action.edit = workspace_edit(ls, outcome.snapshot, qualname, best.new_source)
        action.is_preferred = True
        action.command = _rationale_command(payload)
        data.update(payload)
    else:
        tried = [candidate for candidate in report.candidates if candidate.results]
        count = len(report.candidates)
        detail = (f"best of {count} candidate(s) passes {tried[0].passed}/{len(tried[0].results)} tests"
                  if tried else f"none of {count} candidate(s) was usable code")
        action.title = f"{FIX_TITLE}: no verified fix ({detail})"
        action.is_preferred = False
        if best is not None:
            payload = rationale_payload(qualname, best)
            action.command = _rationale_command(payload)
            data.update(payload)
        else:
            action.command = _message_command(action.title)
    action.data = data
    return action


def _outcome_actions(ls: NextLanguageServer, outcome: FixOutcome, diagnostics: list[types.Diagnostic],
                     only: list[str] | None) -> list[types.CodeAction]:
    report = outcome.report
    qualname = outcome.qualname
    base = {"uri": outcome.snapshot.uri, "function": qualname, "resolved": True}
    actions = []
    if _wanted(only, types.CodeActionKind.QuickFix):
        for rank, candidate in enumerate(report.verified[:MAX_OFFERED]):
            payload = rationale_payload(qualname, candidate)
            actions.append(types.CodeAction(
                title=fix_title(candidate, payload),
                kind=types.CodeActionKind.QuickFix, diagnostics=diagnostics or None, is_preferred=rank == 0,
                edit=workspace_edit(ls, outcome.snapshot, qualname, candidate.new_source),
                command=_rationale_command(payload), data={**base, **payload}))
    unverified = [candidate for candidate in report.candidates
                  if candidate.status in ("partial", "failing") and candidate.new_source]
    if not report.verified and unverified and _wanted(only, UNVERIFIED_KIND):
        candidate = unverified[0]
        payload = rationale_payload(qualname, candidate)
        actions.append(types.CodeAction(
            title=f"Unverified NExT edit ({candidate.source}): {payload['summary']} (passes only "
                  f"{candidate.passed}/{len(candidate.results)} tests)",
            kind=UNVERIFIED_KIND, is_preferred=False,
            edit=workspace_edit(ls, outcome.snapshot, qualname, candidate.new_source),
            command=_rationale_command(payload), data={**base, **payload}))
    if (not report.verified and report.trace.failing and _wanted(only, types.CodeActionKind.QuickFix)
            and get_capability(ls.client_capabilities, "text_document.code_action.disabled_support", False)):
        actions.append(types.CodeAction(
            title=f"{FIX_TITLE}: no verified fix among {len(report.candidates)} candidate(s)",
            kind=types.CodeActionKind.QuickFix, diagnostics=diagnostics or None,
            disabled=types.CodeActionDisabled(reason="no searched or sampled fix passes every test")))
    return actions


def code_actions(ls: NextLanguageServer, params: types.CodeActionParams) -> list[types.CodeAction] | None:
    settings = ls.settings
    if not settings.code_actions:
        return []
    document = ls.open_documents().get(params.text_document.uri)
    if document is None:
        return None
    source = document.source
    only = params.context.only
    attached: dict[str, list[types.Diagnostic]] = {}
    for diagnostic in params.context.diagnostics:
        if diagnostic.source == "nextls" and isinstance(diagnostic.data, dict) and diagnostic.data.get("qualname"):
            attached.setdefault(diagnostic.data["qualname"], []).append(diagnostic)
    lines = split_lines(source)
    start_line = ls.workspace.position_codec.position_from_client_units(lines, params.range.start).line + 1
    here = function_at(source, start_line)
    qualnames = list(attached) + ([here.qualname] if here and here.qualname not in attached else [])
    actions: list[types.CodeAction] = []
    for qualname in qualnames:
        status = ls.state.status(document.uri, qualname)
        if status is None or not status.failing or function_named(source, qualname) is None:
            continue
        key = function_key(settings.run_key(), source, qualname, status.tests)
        outcome = ls.state.fix(document.uri, qualname, key)
        diagnostics = attached.get(qualname, [])
        if outcome is not None:
            actions += _outcome_actions(ls, outcome, diagnostics, only)
            continue
        if not _wanted(only, types.CodeActionKind.QuickFix):
            continue
        failing = len(status.failing)
        work = (f"search edits of {status.span.name}, else sample {settings.k} fix(es)," if settings.search
                else f"sample {settings.k} fix(es) of {status.span.name}")
        action = types.CodeAction(
            title=f"{FIX_TITLE}: {work} and verify them ({failing} failing test{'s' if failing != 1 else ''})",
            kind=types.CodeActionKind.QuickFix, diagnostics=diagnostics or None,
            data={"uri": document.uri, "function": qualname, "version": document.version})
        if not _supports_resolve(ls):  # compute and apply through the command instead
            action.command = types.Command(title=action.title, command="nextls.fixFunction",
                                           arguments=[{"uri": document.uri, "function": qualname, "apply": True}])
        actions.append(action)
    return actions


async def resolve(ls: NextLanguageServer, action: types.CodeAction) -> types.CodeAction:
    data = action.data if isinstance(action.data, dict) else None
    if not data or data.get("resolved") or action.edit is not None or "function" not in data or "uri" not in data:
        return action
    uri, qualname = data["uri"], data["function"]
    try:
        snap = ls.snapshot(uri)
    except Exception as error:
        ls.show(f"nextls: cannot fix {qualname}: {error}")
        action.command = _message_command(str(error))
        return action
    if function_named(snap.source, qualname) is None:
        message = f"nextls: {qualname} is no longer in {snap.path.name}"
        ls.show(message, types.MessageType.Warning)
        action.command = _message_command(message)
        return action
    status = ls.state.status(uri, qualname)
    key = function_key(ls.settings.run_key(), snap.source, qualname, status.tests if status else [])
    outcome = ls.state.fix(uri, qualname, key)
    if outcome is None:
        from nextls.model import ModelError

        job = ls.workbench.fix(snap, qualname, key)
        ls.on_cancel(job.cancel.set)
        try:
            outcome = await _first_verified_or_done(ls, job, uri, qualname, key)
        except asyncio.CancelledError:  # $/cancelRequest: kill the test processes, stop the model
            job.cancel.set()
            ls.log(f"nextls: fixing {qualname} cancelled ({job.last_message or 'starting'})")
            raise
        except (RunCancelled, Cancelled):
            if job.cancel.is_set():  # cancelled elsewhere (shutdown, a newer request): so is this request
                raise asyncio.CancelledError() from None
            ls.show(f"nextls: fixing {qualname} stopped: its test run was killed")
            action.command = _message_command(f"fixing {qualname} stopped: its test run was killed")
            return action
        except ModelError as error:
            ls.show(f"nextls: no model for fixing {qualname}: {error}")
            action.command = _message_command(str(error))
            return action
        except Exception as error:
            logger.exception("fixing %s failed", qualname)
            ls.show(f"nextls: fixing {qualname} failed: {type(error).__name__}: {error}")
            action.command = _message_command(str(error))
            return action
    return fill_from_outcome(ls, action, outcome)


async def _first_verified_or_done(ls: NextLanguageServer, job: Job, uri: str, qualname: str, key: str) -> FixOutcome:
    """The job's outcome, or sooner the cached outcome holding its first verified fix (the job goes on)."""
    future = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({future}, timeout=FIRST_FIX_POLL_S)
        if done:
            return future.result()
        outcome = ls.state.fix(uri, qualname, key)
        if outcome is not None and outcome.report.verified:
            return outcome
