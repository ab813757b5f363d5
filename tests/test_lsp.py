"""The language server end to end: a real `nextls serve --stdio` subprocess driven by pytest-lsp.

The client announces VS Code's capabilities (pytest-lsp's recorded VS Code 1.65 set, plus inlay-hint
refresh). Tests run and trace for real (sandbox, debugpy backend). The exact-fix assertion uses scripted
model answers (`NEXTLS_SCRIPTED_ANSWERS`, the server's documented test seam); the model plumbing,
garbage answers and cancellation of generation use the tiny random-weight GGUF.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Union

import pytest
from example_fixes import remove_occ_fix
from lsprotocol import types
from processes import descendants
from pygls.exceptions import JsonRpcException
from pytest_lsp import client_capabilities
from pytest_lsp.client import LanguageClient, make_test_lsp_client

from nextls.prompt import format_answer

EXAMPLES = Path(__file__).parent.parent / "server" / "examples"
SERVER = [sys.executable, "-m", "nextls", "serve", "--stdio"]
TIMEOUT = 90  # seconds any single wait may take before the test fails

GOOD_FIX = remove_occ_fix()
RATIONALE = ("The second loop keeps `s[i]`: the trace shows `s` unchanged at that line. "
             "It must drop the character, like the first loop.")

# -- helpers ---------------------------------------------------------------------------------------------

def capabilities() -> types.ClientCapabilities:
    caps = client_capabilities("visual-studio-code")
    caps.workspace.inlay_hint = types.InlayHintWorkspaceClientCapabilities(refresh_support=True)
    return caps


class Session:
    """A client plus what the server sent it that the tests wait for."""

    def __init__(self, client: LanguageClient) -> None:
        self.client = client
        self.inlay_refreshes = 0
        self.applied_edits: list[types.WorkspaceEdit] = []
        self.refreshed = asyncio.Event()
        self.changed = asyncio.Event()  # any notification at all

    async def wait(self, condition, what: str, timeout: float = TIMEOUT):
        """Wait until `condition()` is truthy, waking on each message the server sends."""
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; {self.summary()}")
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return value

    def summary(self) -> str:
        """What the server said so far, for failure messages."""
        progress = [[getattr(value, "title", None) or getattr(value, "message", None) for value in reports]
                    for reports in self.client.progress_reports.values()]
        logs = [message.message for message in self.client.log_messages]
        return f"progress: {progress}; logs: {logs}; inlay refreshes: {self.inlay_refreshes}"

    async def wait_inlay_refresh(self, count: int = 1) -> None:
        await self.wait(lambda: self.inlay_refreshes >= count, f"{count} inlay-hint refresh(es)")

    async def traced(self, function: str) -> None:
        """Wait until a background trace of `function` has finished."""
        await self.wait(lambda: self.ended(f"NExT: tracing {function}"), f"a trace of {function}")

    async def diagnostics(self, uri: str, predicate=bool) -> list[types.Diagnostic]:
        return await self.wait(lambda: (found := self.client.diagnostics.get(uri)) is not None
                               and predicate(found) and list(found), f"diagnostics of {uri}")

    def progress(self, title_prefix: str) -> list[list]:
        """The reports of every progress whose begin title starts with `title_prefix`."""
        found = []
        for reports in self.client.progress_reports.values():
            if reports and isinstance(reports[0], types.WorkDoneProgressBegin) and \
                    reports[0].title.startswith(title_prefix):
                found.append(reports)
        return found

    def ended(self, title_prefix: str) -> list[types.WorkDoneProgressEnd]:
        return [reports[-1] for reports in self.progress(title_prefix)
                if isinstance(reports[-1], types.WorkDoneProgressEnd)]

    def open(self, path: Path) -> str:
        uri = path.resolve().as_uri()
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=uri, language_id="python", version=1, text=path.read_text())))
        return uri

    async def hover(self, uri: str, line: int, character: int) -> str | None:
        result = await asyncio.wait_for(self.client.text_document_hover_async(types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line, character))), TIMEOUT)
        return result.contents.value if result else None

    async def command(self, name: str, *arguments, msg_id: str | None = None):
        return await asyncio.wait_for(self.client.protocol.send_request_async(
            types.WORKSPACE_EXECUTE_COMMAND, types.ExecuteCommandParams(command=name, arguments=list(arguments)),
            msg_id=msg_id), TIMEOUT)

    async def code_actions(self, uri: str, diagnostic: types.Diagnostic | None = None, line: int = 0
                           ) -> list[types.CodeAction]:
        where = diagnostic.range if diagnostic else types.Range(types.Position(line, 4), types.Position(line, 4))
        return await asyncio.wait_for(self.client.text_document_code_action_async(types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), range=where,
            context=types.CodeActionContext(diagnostics=[diagnostic] if diagnostic else []))), TIMEOUT)

    async def inlay_hints(self, uri: str, lines: int = 200) -> list[types.InlayHint]:
        return await asyncio.wait_for(self.client.text_document_inlay_hint_async(types.InlayHintParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=types.Range(types.Position(0, 0), types.Position(lines, 0)))), TIMEOUT) or []

    def messages(self, needle: str) -> list[str]:
        return [m.message for m in self.client.messages if needle in m.message]

    def logs(self, needle: str) -> list[str]:
        return [m.message for m in self.client.log_messages if needle in m.message]

    @property
    def pid(self) -> int:
        return self.client._server.pid


@contextlib.asynccontextmanager
async def session(root: Path, settings: dict | None = None, env: dict | None = None,
                  initialization_options: dict | None = None) -> AsyncIterator[Session]:
    client = make_test_lsp_client()
    state = Session(client)
    client.set_configuration({"nextls": {"debounceMs": 0, **(settings or {})}})
    original = client.protocol.handle_message

    def handle_message(message):  # wake `Session.wait` on every message from the server
        try:
            return original(message)
        finally:
            state.changed.set()

    client.protocol.handle_message = handle_message
    # lsprotocol takes any object with a "command" key for a Command; a CodeAction may carry a command
    # object too (ours do: the rationale). VS Code tells them apart as the spec says: a Command's is a string.
    converter = client.protocol._converter
    converter.register_structure_hook(
        Union[types.Command, types.CodeAction],  # noqa: UP007 (the type lsprotocol registers)
        lambda obj, _: converter.structure(obj, types.Command if isinstance(obj.get("command"), str)
                                           else types.CodeAction))

    @client.feature(types.WORKSPACE_INLAY_HINT_REFRESH)
    def _refresh(params) -> None:
        state.inlay_refreshes += 1

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def _apply(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        state.applied_edits.append(params.edit)
        return types.ApplyWorkspaceEditResult(applied=True)

    @client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def _register(params) -> None:
        return None

    server_env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    await client.start_io(*SERVER, env=server_env)
    try:
        await asyncio.wait_for(client.initialize_session(types.InitializeParams(
            capabilities=capabilities(), root_uri=root.as_uri(),
            workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name=root.name)],
            initialization_options=initialization_options)), TIMEOUT)
        yield state
        await asyncio.wait_for(client.shutdown_session(), TIMEOUT)
    finally:
        if client._server is not None and client._server.returncode is None:  # a test failed midway
            client._server.kill()
        await client.stop()


def workspace(tmp_path: Path, *names: str) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "pytest.ini").write_text("[pytest]\n")
    for name in names:
        source = EXAMPLES / name
        target = root / name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    return root


def scripted(tmp_path: Path, *answers: str, delay_s: float = 0.0) -> dict:
    path = tmp_path / "answers.json"
    path.write_text(json.dumps({"answers": list(answers), "delay_s": delay_s}))
    return {"NEXTLS_SCRIPTED_ANSWERS": str(path)}


def offset(text: str, position: types.Position) -> int:
    lines = text.splitlines(keepends=True)
    return sum(len(line) for line in lines[: position.line]) + position.character


def apply_edit(text: str, edit: types.WorkspaceEdit, uri: str) -> str:
    if edit.document_changes:
        edits = [e for change in edit.document_changes if change.text_document.uri == uri for e in change.edits]
    else:
        edits = edit.changes[uri]
    for text_edit in sorted(edits, key=lambda e: offset(text, e.range.start), reverse=True):
        start, end = offset(text, text_edit.range.start), offset(text, text_edit.range.end)
        text = text[:start] + text_edit.new_text + text[end:]
    return text


async def poll_processes(root_pid: int, wanted, what: str, timeout: float = 30) -> list[int]:
    """Poll the server's test processes until `wanted(pids)`: no LSP message says a process started or died."""
    deadline = time.monotonic() + timeout
    while not wanted(pids := harness_processes(root_pid)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return pids


def harness_processes(root_pid: int) -> list[int]:
    """The test runs below the server process: forks of its warm worker, named `nextls-run`."""
    found = []
    for pid in descendants(root_pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "nextls-run":
                found.append(pid)
    return found


# -- tests -----------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_failing_function_gets_a_diagnostic_and_a_verified_quick_fix(tmp_path: Path) -> None:
    root = workspace(tmp_path, "remove_occ.py")
    file = root / "remove_occ.py"
    original = file.read_text()
    env = scripted(tmp_path, "No idea.", format_answer(RATIONALE, GOOD_FIX))
    async with session(root, {"k": 3, "stopAtFirstVerified": True, "search": False}, env) as s:
        uri = s.open(file)
        [diagnostic] = await s.diagnostics(uri)
        assert diagnostic.source == "nextls" and diagnostic.severity == types.DiagnosticSeverity.Error
        assert diagnostic.message.startswith("remove_Occ fails 3 of 3 test(s)")
        assert "assert:remove_occ.py:17: failed: remove_Occ('hello', 'l') returned 'helo', expected 'heo'" \
            in diagnostic.message
        assert (diagnostic.range.start.line, diagnostic.range.start.character, diagnostic.range.end.character) == \
            (3, 4, 14)  # the name in `def remove_Occ(s, ch):`
        assert [(info.location.uri, info.location.range.start.line) for info in diagnostic.related_information] == \
            [(uri, 16), (uri, 17), (uri, 18)]  # the three asserts

        [lazy] = await s.code_actions(uri, diagnostic)
        assert lazy.kind == types.CodeActionKind.QuickFix and lazy.edit is None
        assert list(lazy.diagnostics) == [diagnostic]
        assert lazy.title.startswith("Fix with NExT: sample 3 fix(es) of remove_Occ")
        # the same action is offered on a cursor inside the function, without the diagnostic
        assert [action.title for action in await s.code_actions(uri, line=9)] == [lazy.title]

        resolved = await asyncio.wait_for(s.client.code_action_resolve_async(lazy), TIMEOUT)
        assert resolved.title == "Fix with NExT (model): The second loop keeps `s[i]`: the trace shows `s` " \
                                 "unchanged at that… (passes 3/3 tests)"
        assert resolved.is_preferred is True
        [change] = resolved.edit.document_changes
        assert change.text_document.version == 1
        [edit] = change.edits  # exactly the function's lines: 4..14, ends before the newline
        assert (edit.range.start.line, edit.range.start.character, edit.range.end.line) == (3, 0, 13)
        assert edit.range.end.character == len("    return s")
        assert resolved.command.command == "nextls.showRationale"
        assert resolved.data["rationale"] == RATIONALE and resolved.data["status"] == "verified"
        assert set(resolved.data["timings"]) >= {"trace", "generate", "verify"}

        fixed = apply_edit(original, resolved.edit, uri)
        assert file.read_text() == original  # the server never writes the user's file
        file.write_text(fixed)
        run = subprocess.run([sys.executable, str(file)], capture_output=True, text=True, timeout=30, check=False)
        assert run.returncode == 0, run.stderr  # the file's own asserts pass

        [fix_progress] = s.progress("NExT: fixing remove_Occ")
        messages = [report.message for report in fix_progress[1:-1]]
        for expected in ("tracing", "sampling 1/3", "verifying sample 1/3", "sampling 2/3", "verifying sample 2/3"):
            assert expected in messages
        assert resolved.data["candidates"] == 2  # stopped at the first verified fix
        assert fix_progress[-1].message == "done"

        # now known: offered with its summary, the edit attached, preferred
        [cached] = await s.code_actions(uri, diagnostic)
        assert cached.title == resolved.title and cached.is_preferred and cached.edit == resolved.edit

        shown = await s.command("nextls.showRationale", resolved.command.arguments[0])
        assert shown is None and s.messages(RATIONALE)

        # the command the editor's "fix at cursor" runs: the same (cached) fix, applied by the client
        result = await s.command("nextls.fixFunction", {"uri": uri, "line": 9, "apply": True})
        assert result["applied"] is True and result["status"] == "verified" and result["rationale"] == RATIONALE
        assert s.applied_edits == [resolved.edit]


@pytest.mark.asyncio
async def test_the_search_offers_its_verified_fix_without_waiting_for_the_model(tmp_path: Path) -> None:
    root = workspace(tmp_path, "remove_occ.py")
    file = root / "remove_occ.py"
    env = scripted(tmp_path, format_answer(RATIONALE, GOOD_FIX), delay_s=60.0)  # a model far too slow to wait for
    async with session(root, {"k": 2, "traceBackend": "inprocess"}, env) as s:
        uri = s.open(file)
        [diagnostic] = await s.diagnostics(uri)
        [lazy] = await s.code_actions(uri, diagnostic)
        assert lazy.title == ("Fix with NExT: search edits of remove_Occ, else sample 2 fix(es), and verify them "
                              "(3 failing tests)")
        resolved = await asyncio.wait_for(s.client.code_action_resolve_async(lazy), TIMEOUT)
        assert resolved.title == "Fix with NExT (search): line 12: `s[i:]` -> `s[i + 1:]` (passes 3/3 tests)"
        assert resolved.is_preferred and resolved.data["source"] == "search"
        assert "s[i + 1:]" in resolved.data["rationale"] and "'helo'" in resolved.data["rationale"]
        fixed = apply_edit(file.read_text(), resolved.edit, uri)
        assert fixed == file.read_text().replace("s = s[0:i] + s[i:]", "s = s[0:i] + s[i + 1:]")
        [fix_progress] = await s.wait(lambda: s.ended("NExT: fixing remove_Occ") and s.progress("NExT: fixing"),
                                      "the fix job to end")
        messages = [report.message or "" for report in fix_progress]
        assert "searching" in messages and not [message for message in messages if message.startswith("sampling")]


@pytest.mark.asyncio
async def test_hover_shows_trace_values_then_the_explanation_within_its_budget(tmp_path: Path) -> None:
    root = workspace(tmp_path, "remove_occ.py")
    file = root / "remove_occ.py"
    env = scripted(tmp_path, format_answer(RATIONALE, GOOD_FIX), delay_s=1.5)
    async with session(root, {"hoverBudgetMs": 200}, env) as s:
        uri = s.open(file)
        await s.diagnostics(uri)
        await s.wait_inlay_refresh()  # the failing function was traced in the background

        hints = {hint.position.line: hint for hint in await s.inlay_hints(uri)}
        lines = file.read_text().splitlines()
        assert hints[3].label == "(0) s='hello', ch='l'"  # the def line: the arguments
        assert hints[5].label == "(1) i=0; (3) i=1; (5) i=2"
        assert hints[7].label == "(7) s='helo'"
        assert hints[13].label == "(15) __return__='helo'"
        assert 11 not in hints  # `s = s[0:i] + s[i:]` changed nothing: the bug
        assert all(hint.position.character == len(lines[line]) for line, hint in hints.items())
        assert not [hint for hint in await s.inlay_hints(uri, lines=3)]  # only the requested range

        started = time.monotonic()
        text = await s.hover(uri, 11, 12)  # on `s` in `s = s[0:i] + s[i:]`
        assert time.monotonic() - started < 1.2  # the budget (0.2 s), not the model (1.5 s)
        assert "`s` during the test" in text
        assert "(0) s='hello'   # argument" in text and "(7) s='helo'   # line 8" in text
        assert "being computed" in text

        text = await s.hover(uri, 11, 14)  # on `=`: the line
        assert "line 12 ran 1 time(s) (steps 13) and changed nothing" in text

        await s.wait(lambda: s.ended("NExT: explaining remove_Occ"), "the explanation")
        text = await s.hover(uri, 7, 14)  # on the `=` of line 8
        assert "line 8 ran 1 time(s)" in text and "# (7) s='helo'" in text
        assert "**Why it fails**" in text and "> The second loop keeps `s[i]`" in text

        # not a traced function, not a function: no hover
        assert await s.hover(uri, 0, 5) is None


@pytest.mark.asyncio
async def test_pytest_tests_in_the_workspace_traced_with_debugpy(tmp_path: Path) -> None:
    root = workspace(tmp_path, "shop")
    file = root / "shop" / "pricing.py"
    async with session(root, {"traceBackend": "debugpy"}) as s:
        uri = s.open(file)
        [diagnostic] = await s.diagnostics(uri)
        assert diagnostic.message.startswith("bulk_discount fails 2 of 4 test(s)")
        assert "shop/test_pricing.py::test_discount_thresholds[10-90.0]: failed: assert 100 == 90.0" \
            in diagnostic.message
        test_uri = (root / "shop" / "test_pricing.py").resolve().as_uri()
        assert {(info.location.uri, info.location.range.start.line) for info in diagnostic.related_information} \
            == {(test_uri, 10)}  # the parametrized test's def line
        await s.traced("bulk_discount")
        hints = {hint.position.line: hint.label for hint in await s.inlay_hints(uri)}
        assert hints[3] == "(0) quantity=10, unit_price=10"
        assert hints[10] == "(4) __return__=100"  # `return total`: no discount at exactly 10
        traced = await s.command("nextls.traceFunction", {"uri": uri, "line": 8})
        assert traced["function"] == "bulk_discount"
        assert traced["traced_test"] == "shop/test_pricing.py::test_discount_thresholds"
        assert "# (0) quantity=10, unit_price=10" in traced["rendered"]


@pytest.mark.asyncio
async def test_tiny_model_plumbing_garbage_answers_are_not_offered_as_fixes(tmp_path: Path, tiny_gguf: Path) -> None:
    root = workspace(tmp_path, "remove_occ.py")
    file = root / "remove_occ.py"
    settings = {"modelPath": str(tiny_gguf), "k": 2, "maxTokens": 24, "threads": 1, "contextSize": 2048,
                "traceBackend": "inprocess", "search": False}
    async with session(root, settings) as s:
        uri = s.open(file)
        [diagnostic] = await s.diagnostics(uri)
        [lazy] = await s.code_actions(uri, diagnostic)
        resolved = await asyncio.wait_for(s.client.code_action_resolve_async(lazy), TIMEOUT)
        assert resolved.title.startswith("Fix with NExT: no verified fix (")  # random weights
        assert resolved.edit is None and not resolved.is_preferred
        assert resolved.data["device"].startswith("CPU") and resolved.data["candidates"] == 2
        [fix_progress] = s.progress("NExT: fixing remove_Occ")
        assert "sampling 2/2" in [report.message for report in fix_progress[1:-1]]
        # afterwards: no quick fix claims to fix it, the disabled entry says why
        actions = await s.code_actions(uri, diagnostic)
        assert all(action.edit is None or action.kind != types.CodeActionKind.QuickFix for action in actions)
        assert any(action.disabled for action in actions)

        explained = await s.command("nextls.explainFunction", {"uri": uri, "function": "remove_Occ"})
        assert explained["function"] == "remove_Occ" and isinstance(explained["explanation"], str)
        assert "tiny-llama.gguf" in explained["origin"]
        assert len(s.logs("nextls: loaded tiny-llama.gguf on CPU")) == 1  # loaded once, lazily, reused


@pytest.mark.asyncio
async def test_cancelling_a_resolve_stops_generation(tmp_path: Path, tiny_gguf: Path) -> None:
    root = workspace(tmp_path, "remove_occ.py")
    file = root / "remove_occ.py"
    # ~8 samples of ~1,200 tokens: tens of seconds if generation went on after the cancel
    settings = {"modelPath": str(tiny_gguf), "k": 8, "maxTokens": 1200, "threads": 1, "contextSize": 2048,
                "temperature": 1.0, "traceBackend": "inprocess", "search": False}
    async with session(root, settings) as s:
        uri = s.open(file)
        [diagnostic] = await s.diagnostics(uri)
        [lazy] = await s.code_actions(uri, diagnostic)
        request = asyncio.ensure_future(s.client.protocol.send_request_async(
            types.CODE_ACTION_RESOLVE, lazy, msg_id="resolve-to-cancel"))
        await s.wait(lambda: any(report.message == "sampling 1/8" for reports in s.progress("NExT: fixing")
                                 for report in reports[1:]), "sampling to start")
        cancelled_at = time.monotonic()
        s.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="resolve-to-cancel"))
        with pytest.raises(JsonRpcException) as error:
            await asyncio.wait_for(request, TIMEOUT)
        assert error.value.code == -32800  # RequestCancelled
        [end] = await s.wait(lambda: s.ended("NExT: fixing remove_Occ"), "the fix job to stop")
        assert end.message == "cancelled" and time.monotonic() - cancelled_at < 8
        [fix_progress] = s.progress("NExT: fixing remove_Occ")
        assert "sampling 8/8" not in [report.message for report in fix_progress[1:]]
        await s.wait(lambda: s.logs("fixing remove_Occ cancelled"), "the cancel log line")
        # the server still answers
        await s.traced("remove_Occ")
        assert "line 8 ran 1 time(s)" in await s.hover(uri, 7, 14)


@pytest.mark.asyncio
async def test_cancelling_a_command_kills_the_test_processes(tmp_path: Path) -> None:
    root = workspace(tmp_path)
    file = root / "slow.py"
    file.write_text("import time\n\n\ndef slow(x):\n    time.sleep(60)\n    return x\n\n\nassert slow(1) == 2\n")
    async with session(root, {"diagnostics": "onDemand", "testTimeout": 120}) as s:
        uri = s.open(file)
        request = asyncio.ensure_future(s.command("nextls.traceFunction", {"uri": uri, "function": "slow"},
                                                  msg_id="trace-to-cancel"))
        await poll_processes(s.pid, bool, "the test process to start")
        s.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="trace-to-cancel"))
        with pytest.raises(JsonRpcException) as error:
            await request
        assert error.value.code == -32800
        await poll_processes(s.pid, lambda pids: not pids, "the test process to be killed", timeout=10)
        [end] = await s.wait(lambda: s.ended("NExT: tracing slow"), "the trace job to end")
        assert end.message == "cancelled"
        assert not s.progress("NExT: running the tests")  # onDemand: opening the file ran nothing
        assert await s.command("nextls.clearCache") is not None  # still serving


@pytest.mark.asyncio
async def test_a_hanging_test_is_a_timeout_diagnostic_and_the_server_keeps_answering(tmp_path: Path) -> None:
    root = workspace(tmp_path)
    file = root / "hang.py"
    file.write_text(
        "import os\nimport time\n\n\ndef spin(n):\n    while n > 0:\n        pass\n    return n\n\n\n"
        "def forks(x):\n    if os.fork() == 0:\n        time.sleep(100)\n    return x\n\n\n"
        "assert spin(1) == 1\nassert forks(1) == 2\n")
    async with session(root, {"testTimeout": 1.0, "traceFailing": 0}) as s:
        uri = s.open(file)
        await s.wait(lambda: s.progress("NExT: running the tests"), "the test run to start")
        started = time.monotonic()
        assert await s.hover(uri, 5, 10) is None
        assert await s.inlay_hints(uri) == []
        assert time.monotonic() - started < 1.0
        assert uri not in s.client.diagnostics  # answered while the tests were still hanging
        diagnostics = await s.diagnostics(uri)
        by_name = {d.data["qualname"]: d for d in diagnostics}
        assert by_name["spin"].code == "timeout" and "timeout" in by_name["spin"].message
        assert by_name["forks"].code == "failed" and "forks(1) returned 1, expected 2" in by_name["forks"].message
        assert await s.hover(uri, 5, 10) is not None  # spin is known to fail: tracing (or traced)


@pytest.mark.asyncio
async def test_bad_input_never_kills_the_server(tmp_path: Path) -> None:
    root = workspace(tmp_path, "remove_occ.py")
    broken = root / "broken.py"
    broken.write_text("def f(x:\n    return x\n")
    latin1 = root / "latin1.py"
    latin1.write_bytes("def f():\n    return 'caf\xe9'\n\n\nassert f() == 1\n".encode("latin-1"))
    settings = {"modelPath": str(tmp_path / "missing.gguf"), "hoverBudgetMs": 5000,
                "search": False}  # no search: the quick fix must reach the missing model
    async with session(root, settings) as s:
        uri = s.open(broken)
        [diagnostic] = await s.diagnostics(uri)
        assert diagnostic.code == "not-run" and "does not parse" in diagnostic.message
        assert await s.hover(uri, 1, 8) is None

        with pytest.raises(JsonRpcException, match="not UTF-8"):
            await s.command("nextls.traceFunction", {"uri": latin1.as_uri(), "function": "f"})
        assert s.messages("not UTF-8")
        with pytest.raises(JsonRpcException, match="not a local file"):
            await s.command("nextls.traceFunction", {"uri": "untitled:Untitled-1", "function": "f"})
        with pytest.raises(JsonRpcException, match="no function named 'nope'"):
            await s.command("nextls.fixFunction", {"uri": broken.as_uri().replace("broken", "remove_occ"),
                                                   "function": "nope"})
        assert await s.hover("file:///no/such/file.py", 0, 0) is None

        good = s.open(root / "remove_occ.py")
        [diagnostic] = await s.diagnostics(good)
        [lazy] = await s.code_actions(good, diagnostic)
        resolved = await asyncio.wait_for(s.client.code_action_resolve_async(lazy), TIMEOUT)
        assert resolved.edit is None
        [missing] = s.messages("missing.gguf")
        assert "does not exist" in missing
        await s.traced("remove_Occ")
        text = await s.hover(good, 7, 14)  # the next request works
        assert "(7) s='helo'" in text and "_No explanation: model file" in text


@pytest.mark.asyncio
async def test_configuration_changes_apply(tmp_path: Path) -> None:
    root = workspace(tmp_path, "remove_occ.py", "running_mean.py")
    async with session(root, {"inlayHints": False, "k": "many"}, initialization_options={"nextls": {"k": 2}}) as s:
        await s.wait(lambda: s.messages("nextls.k must be a whole number"), "the warning about k")
        uri = s.open(root / "running_mean.py")
        [diagnostic] = await s.diagnostics(uri)
        assert ("doctest:running_mean: failed: running_mean([2, 4, 6]) returned [1.0, 2.0, 3.0], "
                "expected [2.0, 3.0, 4.0]") in diagnostic.message
        await s.traced("running_mean")
        assert await s.inlay_hints(uri) == []  # off

        s.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"nextls": {"inlayHints": True, "diagnostics": "off"}}))
        await s.wait(lambda: s.client.diagnostics.get(uri) is not None and len(s.client.diagnostics[uri]) == 0,
                     "diagnostics cleared")
        await s.wait_inlay_refresh(3)  # the trace's and the two toggles'
        labels = {hint.position.line: hint.label for hint in await s.inlay_hints(uri)}
        assert labels[12] == "(4) total=2; (7) total=6; (10) total=12"
        assert labels[13] == "(5) means=[1.0]; (8) means=[1.0, 2.0]; (11) means=[1.0, 2.0, 3.0]"

        other = s.open(root / "remove_occ.py")
        [lazy] = await s.code_actions(uri, diagnostic)
        assert "sample 2 fix(es)" in lazy.title  # k from the initialization options
        result = await s.command("nextls.runTests", {"uri": other})  # on demand still works
        assert [r["outcome"] for r in result["functions"]["remove_Occ"]] == ["failed"] * 3


@pytest.mark.asyncio
async def test_serve_over_tcp(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "nextls", "serve", "--tcp", f"127.0.0.1:{port}"],
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:  # not listening yet
                assert time.monotonic() < deadline and server.poll() is None, "the TCP server did not start"
                await asyncio.sleep(0.1)
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                           "params": {"processId": None, "rootUri": None, "capabilities": {}}}).encode()
        writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        length = int(headers.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        response = json.loads(await reader.readexactly(length))
        assert response["result"]["serverInfo"]["name"] == "nextls"
        assert response["result"]["capabilities"]["codeActionProvider"]["resolveProvider"] is True
        writer.close()
    finally:
        server.kill()
        server.wait(10)


@pytest.mark.asyncio
async def test_hover_answers_while_a_fix_is_being_sampled(tmp_path: Path) -> None:
    root = workspace(tmp_path, "remove_occ.py")
    env = scripted(tmp_path, format_answer(RATIONALE, GOOD_FIX), delay_s=3.0)
    async with session(root, {"k": 1, "explainOnHover": False, "traceBackend": "inprocess", "search": False}, env) as s:
        uri = s.open(root / "remove_occ.py")
        [diagnostic] = await s.diagnostics(uri)
        await s.traced("remove_Occ")
        [lazy] = await s.code_actions(uri, diagnostic)
        resolving = asyncio.ensure_future(s.client.code_action_resolve_async(lazy))
        await s.wait(lambda: any(report.message == "sampling 1/1" for reports in s.progress("NExT: fixing")
                                 for report in reports[1:]), "sampling to start")
        started = time.monotonic()
        text = await s.hover(uri, 7, 14)
        assert time.monotonic() - started < 1.0 and "(7) s='helo'" in text
        assert not resolving.done()  # the model is still "generating"
        resolved = await asyncio.wait_for(resolving, TIMEOUT)
        assert "(passes 3/3 tests)" in resolved.title


# -- the pieces, without a server ---------------------------------------------------------------------

def test_model_queue_serves_in_arrival_order_and_drops_cancelled_waiters() -> None:
    import threading

    from nextls.lsp.jobs import Cancelled, ModelQueue

    queue = ModelQueue()
    order: list[str] = []
    holding, release, quitter_left = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        with queue.turn():
            holding.set()
            release.wait(10)
            order.append("first")

    def waiter(name: str, queued: threading.Event, cancel: threading.Event | None = None) -> None:
        try:
            with queue.turn(cancel, on_wait=lambda ahead: queued.set()):
                order.append(name)
        except Cancelled:
            order.append(f"{name} left")
            quitter_left.set()

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    assert holding.wait(10)
    gone = threading.Event()
    for name, cancel in (("second", None), ("quitter", gone), ("third", None)):
        queued = threading.Event()
        threads.append(threading.Thread(target=waiter, args=(name, queued, cancel)))
        threads[-1].start()
        assert queued.wait(10)  # in the queue before the next one arrives
    gone.set()
    assert quitter_left.wait(10)
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == ["quitter left", "first", "second", "third"]


def test_settings_mapping_keeps_defaults_for_bad_values() -> None:
    from nextls.lsp.config import Settings, parse_settings, section_of

    settings, warnings = parse_settings(section_of({"nextls": {
        "k": 2, "temperature": 0, "modelPath": "", "diagnostics": "sometimes", "testTimeout": -1,
        "inlayHints": "yes", "python": "/usr/bin/python3", "colour": "blue"}}))
    assert settings.k == 2 and settings.temperature == 0.0 and settings.model_path is None
    assert settings.diagnostics == "onOpenAndSave" and settings.test_timeout == 5.0 and settings.inlay_hints
    assert settings.run_config().python == "/usr/bin/python3"
    assert len(warnings) == 4 and any("colour" in warning for warning in warnings)
    assert parse_settings(None)[0] == Settings()


def test_fix_edits_replace_exactly_the_function_and_add_imports_above() -> None:
    from nextls.lsp.code_actions import function_edits

    old = '"""Doc."""\n\n\ndef f(xs):\n    return xs[0]\n\n\nassert f([1, 2, 2]) == 2\n'
    new = ('"""Doc."""\nfrom collections import Counter\n\n\ndef f(xs):\n'
           '    return Counter(xs).most_common(1)[0][0]\n\n\nassert f([1, 2, 2]) == 2\n')
    assert function_edits(old, new, "f") == [
        ((1, 0), (1, 0), "from collections import Counter\n"),
        ((3, 0), (4, len("    return xs[0]")), "def f(xs):\n    return Counter(xs).most_common(1)[0][0]"),
    ]
