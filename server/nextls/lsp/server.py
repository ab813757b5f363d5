"""The nextls language server: creates the pygls server and registers the features.

Run it with `nextls serve` (stdio; `--stdio` is accepted for vscode-languageclient) or
`nextls serve --tcp HOST:PORT`. Everything slow runs in `jobs`; handlers here only route.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote

from lsprotocol import types
from pygls.capabilities import get_capability
from pygls.exceptions import FeatureRequestError
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import RPCRequest
from pygls.protocol.language_server import lsp_method
from pygls.uris import to_fs_path
from pygls.workspace import TextDocument

from nextls import __version__
from nextls.lsp import code_actions, commands, diagnostics, hover, inlay_hints, transport
from nextls.lsp.config import SECTION, Settings, parse_settings, section_of
from nextls.lsp.jobs import Job, JobRunner, ModelHost
from nextls.lsp.prefetch import Prefetcher, document_highlight
from nextls.lsp.state import ServerState, Snapshot, UnknownDocument, Workbench
from nextls.runner import prestart_worker
from nextls.sandbox import kill_all_children, remove_stale_sandboxes, set_global_limits

logger = logging.getLogger(__name__)

EXIT_GRACE_S = 2.0  # how long cancelled jobs get, on exit, to wind down once their processes are killed
SERVER_NOT_INITIALIZED = -32002
INTERNAL_ERROR = -32603
# notifications about a document that only make sense once it is open
_OPEN_DOCUMENT_NOTIFICATIONS = (types.TEXT_DOCUMENT_DID_CHANGE, types.TEXT_DOCUMENT_DID_SAVE,
                                types.TEXT_DOCUMENT_DID_CLOSE)


class NextProtocol(LanguageServerProtocol):
    """pygls' protocol, plus the LSP lifecycle rules pygls leaves out (one `initialize`, nothing before it,
    no requests after `shutdown`, notifications about documents that are not open dropped), one-line errors
    without tracebacks, `exit` that ends the session, and hooks run on `$/cancelRequest` (pygls alone cannot
    stop a command's work)."""

    _server: NextLanguageServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cancel_hooks: dict[Any, list[Callable[[], None]]] = {}

    def handle_message(self, message: Any) -> None:
        method = getattr(message, "method", None)
        if method is None:  # a response to one of our requests
            super().handle_message(message)
            return
        request_id = message.id if isinstance(message, RPCRequest) else None
        refusal = None
        if self._workspace is None and method not in (types.INITIALIZE, types.EXIT):
            refusal = SERVER_NOT_INITIALIZED, f"{method} before initialize"
        elif method == types.INITIALIZE and self._workspace is not None:
            refusal = transport.INVALID_REQUEST, "initialize was already received: the server is initialized once"
        elif self._shutdown and method != types.EXIT:
            refusal = transport.INVALID_REQUEST, f"{method} after shutdown: only exit is accepted"
        elif method in _OPEN_DOCUMENT_NOTIFICATIONS and not self._is_open(message.params.text_document.uri):
            refusal = None, f"{method} for {message.params.text_document.uri}, which is not open"
        if refusal is None:
            super().handle_message(message)
            return
        code, reason = refusal
        if request_id is not None and code is not None:
            self._send_response(request_id, error=types.ResponseError(code=code, message=reason))
        logger.warning("ignored %s", reason)

    def _is_open(self, uri: str) -> bool:
        return unquote(uri) in self.workspace.text_documents

    @lsp_method(types.EXIT)
    def lsp_exit(self, *args: Any) -> None:
        self._server.stop(0 if self._shutdown else 1)

    def _handle_cancel_notification(self, msg_id: Any) -> None:
        for hook in self.cancel_hooks.pop(msg_id, []):
            try:
                hook()
            except Exception:
                logger.exception("cancel hook failed")
        super()._handle_cancel_notification(msg_id)

    def _send_response(self, msg_id: Any, result: Any | None = None, error: Any = None) -> None:
        self.cancel_hooks.pop(msg_id, None)
        if error is not None:  # the client gets one line; an internal error's traceback stays in the log
            error = types.ResponseError(code=error.code, message=transport.one_line(error.message) or "error",
                                        data=None if error.code == INTERNAL_ERROR else error.data)
        super()._send_response(msg_id, result, error)


class WorkDoneProgress:
    """A job's `$/progress` reports, through a server-initiated (cancellable) work-done token."""

    def __init__(self, ls: NextLanguageServer, job: Job) -> None:
        self.ls = ls
        self.token = f"nextls-{uuid.uuid4().hex[:12]}"
        progress = ls.work_done_progress
        created = asyncio.run_coroutine_threadsafe(progress.create_async(self.token), ls.loop)
        created.result(timeout=5)
        registered = progress.tokens.get(self.token)
        if registered is not None:  # window/workDoneProgress/cancel from the client
            registered.add_done_callback(lambda future: job.cancel.set() if future.cancelled() else None)
        ls.post(progress.begin, self.token, types.WorkDoneProgressBegin(title=job.title, cancellable=True))

    def report(self, message: str, percentage: int | None = None) -> None:
        self.ls.post(self.ls.work_done_progress.report, self.token,
                     types.WorkDoneProgressReport(message=message, percentage=percentage))

    def end(self, message: str) -> None:
        self.ls.post(self._end, message)

    def _end(self, message: str) -> None:
        self.ls.work_done_progress.end(self.token, types.WorkDoneProgressEnd(message=message))
        self.ls.work_done_progress.tokens.pop(self.token, None)


def _expect_cancelled_handlers() -> None:
    """The session is over: asyncio now cancels the handlers still running (a command waiting for its fix),
    and pygls' done-callbacks re-raise each CancelledError into the loop's error log. Expected: not logged."""
    loop = asyncio.get_running_loop()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not isinstance(context.get("exception"), asyncio.CancelledError):
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


class NextLanguageServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("nextls", __version__, text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
                         protocol_cls=NextProtocol)
        self.settings = Settings()
        self.initialization_settings: dict = {}
        self.state = ServerState()
        self.models = ModelHost(on_load=lambda message: self.log(f"nextls: {message}"))
        self.jobs = JobRunner(progress=self._progress_for)
        self.workbench = Workbench(self)
        self.prefetch = Prefetcher(self)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self.debounce_timers: dict[str, asyncio.TimerHandle] = {}
        # documents opened before the client's settings arrived wait for them (the mode may be onDemand)
        self.settings_ready = False
        self.waiting_for_settings: list[tuple[str, str]] = []
        self.analysis_jobs: dict[str, Job] = {}
        self.exit_code: int | None = None  # set by `exit`, a lost client or SIGTERM
        self._stopping: asyncio.Event | None = None

    # -- the connection --------------------------------------------------------------------------------

    def start_io(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        """Serve one client over stdin/stdout until it exits or closes its end."""
        self.protocol.set_writer(transport.QuietWriter(stdout or sys.stdout.buffer, on_lost=lambda: self.stop(1)))

        async def session() -> None:
            chunks = transport.stream_chunks(stdin or sys.stdin.buffer)
            await transport.pump_messages(self.protocol, chunks, self._until_stopped())
            _expect_cancelled_handlers()

        asyncio.run(session())

    def start_tcp(self, host: str, port: int) -> None:
        """Serve clients on a TCP port, one connection after the other, until one sends `exit`."""

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.protocol.set_writer(transport.QuietWriter(writer))
            await transport.pump_messages(self.protocol, transport.socket_chunks(reader), stopping)
            writer.close()

        async def listen() -> None:
            nonlocal stopping
            stopping = self._until_stopped()
            async with await asyncio.start_server(connected, host, port):
                await stopping.wait()
            _expect_cancelled_handlers()

        stopping: asyncio.Event
        asyncio.run(listen())

    def _until_stopped(self) -> asyncio.Event:
        self._stopping = asyncio.Event()
        if hasattr(signal, "SIGTERM"):  # SIGTERM ends the session like `exit`: children are killed on the way out
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.stop, 128 + signal.SIGTERM)
        return self._stopping

    def stop(self, exit_code: int) -> None:
        """On the event loop: end the session; nothing more is read or sent, and `serve` returns `exit_code`."""
        if self.exit_code is None:
            self.exit_code = exit_code
        for timer in self.debounce_timers.values():
            timer.cancel()
        self.jobs.cancel_all()
        self.protocol.writer.close()
        if self._stopping is not None:
            self._stopping.set()

    def report_server_error(self, error: Exception, source: Any) -> None:
        """pygls' hook for errors outside a request's response: one log line, no popup, no traceback sent."""
        details = getattr(error, "data", None)
        traceback_lines = details.get("traceback") if isinstance(details, dict) else None
        logger.error("%s%s", error, "\n" + "".join(traceback_lines) if traceback_lines else "")
        if source is not FeatureRequestError:  # a request's error is in its response already
            self.log(f"nextls: internal error: {transport.one_line(str(error))} (details in the server's log)",
                     types.MessageType.Error)

    # -- thread-safe messaging -------------------------------------------------------------------------

    def post(self, function: Callable[..., Any], *args: Any) -> None:
        """Run `function(*args)` on the event loop (pygls' writers are not thread-safe)."""
        if self.loop is None or threading.get_ident() == self.loop_thread:
            function(*args)
            return
        try:
            self.loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop is closed: the server is exiting
            pass

    def show(self, message: str, kind: types.MessageType = types.MessageType.Error) -> None:
        logger.log(logging.ERROR if kind == types.MessageType.Error else logging.INFO, "%s", message)
        self.post(self.window_show_message, types.ShowMessageParams(type=kind, message=message))

    def log(self, message: str, kind: types.MessageType = types.MessageType.Info) -> None:
        self.post(self.window_log_message, types.LogMessageParams(type=kind, message=message))

    def refresh_inlay_hints(self) -> None:
        if get_capability(self.client_capabilities, "workspace.inlay_hint.refresh_support", False):
            self.post(self.workspace_inlay_hint_refresh, None)

    def _progress_for(self, job: Job) -> WorkDoneProgress | None:
        if self.loop is None or not get_capability(self.client_capabilities, "window.work_done_progress", False):
            return None
        return WorkDoneProgress(self, job)

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Run `hook` if the client cancels the request being handled (call from its handler)."""
        msg_id = self.protocol.msg_id
        if msg_id is not None:
            self.protocol.cancel_hooks.setdefault(msg_id, []).append(hook)

    # -- documents -------------------------------------------------------------------------------------

    def open_documents(self) -> dict[str, TextDocument]:
        try:
            documents = self.workspace.text_documents
        except RuntimeError:  # not initialized
            return {}
        return {document.uri: document for document in documents.values()}

    def snapshot(self, uri: str) -> Snapshot:
        """The document's current text: the editor's buffer when open, else the file on disk."""
        path = to_fs_path(uri) if uri.startswith("file:") else None
        if path is None:
            raise UnknownDocument(f"{uri} is not a local file")
        document = self.open_documents().get(uri)
        if document is not None:
            return Snapshot(uri, Path(path), document.source, document.version)
        from nextls.trace.capture import read_source

        return Snapshot(uri, Path(path), read_source(Path(path)), None)

    # -- settings --------------------------------------------------------------------------------------

    def apply_settings(self, section: dict | None) -> None:
        merged = {**self.initialization_settings, **(section or {})}
        new, warnings = parse_settings(merged, self.settings)
        for warning in warnings:
            self.log(f"nextls: {warning}", types.MessageType.Warning)
        if warnings:
            self.show("nextls: some settings were ignored: " + "; ".join(warnings), types.MessageType.Warning)
        old, self.settings = self.settings, new
        if old.process_limits() != new.process_limits():
            set_global_limits(**new.process_limits())
        if old.model_key() != new.model_key():
            self.state.explanation_errors.clear()
        if old.run_key() != new.run_key() or old.diagnostics != new.diagnostics:
            for uri in self.open_documents():
                if new.diagnostics == "off":
                    diagnostics.clear(self, uri)
                else:
                    diagnostics.schedule(self, uri, "config")
        if old.inlay_hints != new.inlay_hints:
            self.refresh_inlay_hints()

    async def pull_settings(self) -> None:
        if not get_capability(self.client_capabilities, "workspace.configuration", False):
            return
        try:
            result = await self.protocol.send_request_async(
                types.WORKSPACE_CONFIGURATION,
                types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)]))
        except Exception as error:
            self.log(f"nextls: could not read the configuration: {error}", types.MessageType.Warning)
            return
        section = result[0] if result else None
        self.apply_settings(section if isinstance(section, dict) else None)


server = NextLanguageServer()


@server.feature(types.INITIALIZE)
def _initialize(ls: NextLanguageServer, params: types.InitializeParams) -> None:
    ls.loop = asyncio.get_running_loop()
    ls.loop_thread = threading.get_ident()
    ls.initialization_settings = section_of(params.initialization_options) or {}
    ls.apply_settings(None)


@server.feature(types.INITIALIZED)
async def _initialized(ls: NextLanguageServer, params: types.InitializedParams) -> None:
    try:
        await ls.pull_settings()
    finally:
        ls.settings_ready = True
        waiting, ls.waiting_for_settings = ls.waiting_for_settings, []
        for uri, reason in waiting:
            diagnostics.schedule(ls, uri, reason)
    if get_capability(ls.client_capabilities, "workspace.did_change_configuration.dynamic_registration", False):
        try:  # so that pull-model clients (VS Code) tell us when the settings change
            await ls.client_register_capability_async(types.RegistrationParams(registrations=[types.Registration(
                id=f"nextls-configuration-{uuid.uuid4().hex[:8]}", method=types.WORKSPACE_DID_CHANGE_CONFIGURATION,
                register_options={"section": SECTION})]))
        except Exception as error:
            ls.log(f"nextls: could not register for configuration changes: {error}", types.MessageType.Warning)
    # the first diagnostics run then finds a test worker with pytest already loaded
    root = to_fs_path(ls.workspace.root_uri) if ls.workspace.root_uri else None
    prestart_worker(ls.settings.run_config(), read_paths=[root] if root else [])
    if ls.settings.trace_backend == "debugpy":  # and the one the background traces will fork
        prestart_worker(ls.settings.run_config(), read_paths=[root] if root else [], debugger=True)
    ls.log(f"nextls {__version__} ready (python {ls.settings.interpreter}, trace backend {ls.settings.trace_backend})")


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def _did_change_configuration(ls: NextLanguageServer, params: types.DidChangeConfigurationParams) -> None:
    section = section_of(params.settings)
    if section is not None:
        ls.apply_settings(section)
    else:
        await ls.pull_settings()


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def _did_open(ls: NextLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
    diagnostics.schedule(ls, params.text_document.uri, "open")


@server.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))
def _did_save(ls: NextLanguageServer, params: types.DidSaveTextDocumentParams) -> None:
    diagnostics.schedule(ls, params.text_document.uri, "save")


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def _did_change(ls: NextLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
    # typing never starts work (tests run on open/save, debounced, or on demand); where it happens says
    # which failing function to trace first
    ls.prefetch.note_edit(params)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def _did_close(ls: NextLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    timer = ls.debounce_timers.pop(uri, None)
    if timer is not None:
        timer.cancel()
    job = ls.analysis_jobs.pop(uri, None)
    if job is not None:
        job.cancel.set()
    ls.state.forget_document(uri)
    ls.prefetch.forget(uri)
    diagnostics.clear(ls, uri)


@server.feature(types.TEXT_DOCUMENT_HOVER)
async def _hover(ls: NextLanguageServer, params: types.HoverParams) -> types.Hover | None:
    return await hover.hover(ls, params)


@server.feature(types.TEXT_DOCUMENT_DOCUMENT_HIGHLIGHT)
def _document_highlight(ls: NextLanguageServer, params: types.DocumentHighlightParams
                        ) -> list[types.DocumentHighlight] | None:
    return document_highlight(ls, params)


@server.feature(types.TEXT_DOCUMENT_INLAY_HINT)
def _inlay_hints(ls: NextLanguageServer, params: types.InlayHintParams) -> list[types.InlayHint] | None:
    return inlay_hints.inlay_hints(ls, params)


@server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
    code_action_kinds=[types.CodeActionKind.QuickFix, code_actions.UNVERIFIED_KIND], resolve_provider=True))
def _code_actions(ls: NextLanguageServer, params: types.CodeActionParams) -> list[types.CodeAction] | None:
    ls.prefetch.note_cursor(params.text_document.uri, params.range.start.line)  # sent as the selection moves
    return code_actions.code_actions(ls, params)


@server.feature(types.CODE_ACTION_RESOLVE)
async def _resolve_code_action(ls: NextLanguageServer, params: types.CodeAction) -> types.CodeAction:
    return await code_actions.resolve(ls, params)


@server.feature(types.SHUTDOWN)
def _shutdown(ls: NextLanguageServer, params: None) -> None:
    for timer in ls.debounce_timers.values():
        timer.cancel()
    ls.jobs.cancel_all()


def _register_command(name: str, handler: Callable[..., Any]) -> None:
    # pygls resolves the handler's annotations at call time: give it ones this module defines
    if asyncio.iscoroutinefunction(handler):
        async def run(ls: NextLanguageServer, *args: Any) -> Any:
            return await handler(ls, *args)
    else:
        def run(ls: NextLanguageServer, *args: Any) -> Any:
            return handler(ls, *args)
    server.command(name)(run)


for _name, _handler in {
    "nextls.traceFunction": commands.trace_function, "nextls.explainFunction": commands.explain_function,
    "nextls.fixFunction": commands.fix_function, "nextls.runTests": commands.run_tests,
    "nextls.clearCache": commands.clear_cache, "nextls.showRationale": commands.show_rationale,
    "nextls.showMessage": commands.show_message,
}.items():
    _register_command(_name, _handler)


def serve(tcp: tuple[str, int] | None = None, log_level: str = "WARNING") -> int:
    """Run the server until the client sends `exit` or closes its end (stdio), or until `exit` (TCP).

    Returns the process' exit code: 0 after `shutdown` then `exit`, 1 when the session ended without a
    `shutdown` (as LSP says), 128 + 15 on SIGTERM.
    """
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="nextls %(levelname)s %(name)s: %(message)s")
    logging.getLogger("nextls").setLevel(log_level)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>`: every thread's stack on stderr, for a stuck server
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    removed = remove_stale_sandboxes()
    if removed:
        logger.warning("removed %d sandbox folder(s) left behind by a nextls that was killed", len(removed))
    try:
        if tcp is not None:
            server.start_tcp(*tcp)
        else:
            # LSP owns the real stdout; anything else that writes to fd 1 (a stray print, native code) goes to
            # stderr instead of corrupting the protocol stream.
            protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
            os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
            sys.stdout = sys.stderr
            server.start_io(sys.stdin.buffer, protocol_out)
    finally:
        server.jobs.cancel_all()
        kill_all_children()  # now, not when the jobs notice: exit is prompt whatever they are doing
        server.jobs.wait_idle(EXIT_GRACE_S)
    if server.exit_code is not None:
        return server.exit_code
    return 0 if server.protocol._shutdown else 1
