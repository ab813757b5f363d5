"""Trace capture through debugpy: the test runs under the debugger, driven over DAP.

Technique (the fastest of those measured, see README "Tracing"): the harness stops at a breakpoint
just before the traced test; the client injects `nextls_recorder`'s source into the debuggee with one
`evaluate` and starts it; at a second breakpoint just after the test it stops the recorder, which
writes the trace to a file. Stepping costs ~5 ms a line and logpoints ~0.3 ms a line, each a DAP
round trip; the injected recorder costs microseconds a line and no traffic at all. Because the
in-process backend runs the very same recorder, both render byte-identical traces.

Where the time went, and what was cut (tests/benchmarks/bench_trace.py):
* a fresh interpreter for every trace, importing pytest again: the debuggee is a fork of a warm test
  worker like every other run (a worker of its own, which keeps the host's network for the debugger's
  port), so only debugpy is imported and started per trace;
* pydevd's own tracing of every frame once attached, during the test and through pytest's reporting and
  teardown after it: the first `evaluate` turns it off for the test's thread before it starts the
  recorder, and the second leaves it off, so only the recorder traces;
* delayed ACKs: debugpy writes a message's header and body as two small writes, and with Nagle's
  algorithm on its side each message waited ~40 ms for our ACK; the client acknowledges at once
  (`TCP_QUICKACK`, see `nextls.trace.dap`), and debugpy (>= 1.8.1) speaks DAP from inside the
  debuggee, so there is no adapter process and no second connection.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import debugpy

from nextls.sandbox import Limits, Outcome, ProcessResult
from nextls.trace.dap import DapClient, DapError

if TYPE_CHECKING:
    from nextls.worker import TestWorker

RECORDER_SOURCE_PATH = Path(__file__).resolve().parent.parent / "child" / "nextls_recorder.py"
_DEBUGPY_DIR = Path(debugpy.__file__).resolve().parent
# pydevd warns on stderr about frozen stdlib modules (they only hide breakpoints in the stdlib)
DEBUGGEE_ENV = {"PYDEVD_DISABLE_FILE_VALIDATION": "1"}

_EXIT_GRACE_S = 2.0  # how long a debuggee that dropped the DAP connection gets to finish on its own
_shim_lock = threading.Lock()
_shim: Path | None = None


def shim_dir() -> Path:
    """A folder holding only debugpy (the server's, linked), for the debuggee's path."""
    global _shim
    with _shim_lock:
        if _shim is None:
            folder = Path(tempfile.mkdtemp(prefix="nextls-debugpy-"))
            os.chmod(folder, 0o755)  # a sandboxed child may run as another user
            (folder / "debugpy").symlink_to(_DEBUGPY_DIR)
            atexit.register(shutil.rmtree, folder, True)
            _shim = folder
        return _shim


def _no_debugger_tracing() -> str:
    return "__import__('debugpy').trace_this_thread(False)"


def _inject_and_start(trace_spec: dict) -> str:
    """One expression that turns pydevd's tracing off for this thread, then loads the recorder from
    source inside the debuggee and starts it."""
    source = RECORDER_SOURCE_PATH.read_text(encoding="utf-8")
    start = f"module.start({trace_spec['filename']!r}, {trace_spec['qualname']!r}, {trace_spec['max_steps']:d})"
    return (f"(lambda sys, types: ({_no_debugger_tracing()}, (lambda module: ("
            "sys.modules.__setitem__('nextls_recorder', module), "
            f"exec(compile({source!r}, 'nextls_recorder.py', 'exec'), module.__dict__), {start})[-1])"
            "(types.ModuleType('nextls_recorder')))[-1])(__import__('sys'), __import__('types'))")


def _stop_and_write(trace_spec: dict) -> str:
    """Stop the recorder (it writes the trace) and leave pydevd's tracing off for the rest of the run."""
    return f"(__import__('sys').modules['nextls_recorder'].stop({trace_spec['out']!r}), {_no_debugger_tracing()})"


def debug_worker(limits: Limits, read_paths: list[str]) -> tuple[Limits, list[str]]:
    """The limits and read paths of the warm test worker whose forks run under the debugger: it keeps the
    host's network (the client connects to the debuggee's port) and reads debugpy (see `shim_dir`)."""
    return replace(limits, network=True), [*read_paths, str(shim_dir()), str(_DEBUGPY_DIR)]


def run_traced(worker: TestWorker, spec: dict, work_dir: Path, env: dict[str, str], limits: Limits,
               cancel: threading.Event | None) -> tuple[ProcessResult, dict | None]:
    """Run the harness on `spec` in a fork of `worker` (one made with `debug_worker`) under debugpy, and
    drive it; return the process result and the recorded trace."""
    spec = dict(spec, sys_path=[*spec["sys_path"], str(shim_dir())])  # the user's own paths first
    env = dict(env, **DEBUGGEE_ENV)
    abort = threading.Event()
    outcome: list[ProcessResult] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(worker.run(spec, cwd=work_dir, env=env, limits=limits, cancel=abort))
        except BaseException as error:  # raised again in the caller's thread below
            failure.append(error)

    child = threading.Thread(target=run, name="nextls-debuggee", daemon=True)
    child.start()
    watcher = _CancelWatcher(cancel, abort)
    lost: DapError | None = None
    try:
        _drive(spec["trace"], child, limits.wall_time)
    except DapError as error:
        # the debuggee often closes the connection as it exits; one still alive after a grace period
        # would sit stopped until its time limit
        child.join(_EXIT_GRACE_S)
        if child.is_alive():
            lost = error
            abort.set()
    finally:
        watcher.stop()
        child.join()
    if failure:
        raise failure[0]
    result = outcome[0]
    if lost is not None and not (cancel is not None and cancel.is_set()):
        # our abort, not the caller's cancel: report a failed run, not a cancelled one
        result = replace(result, outcome=Outcome.CRASHED, stderr=f"{result.stderr}\ndebug session lost: {lost}")
    out = Path(spec["trace"]["out"])
    return result, (json.loads(out.read_text("utf-8")) if out.exists() else None)


def _drive(trace_spec: dict, child: threading.Thread, timeout: float) -> None:
    port_file = Path(trace_spec["port_file"])
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if not child.is_alive() or time.monotonic() > deadline:
            raise DapError("the debuggee never started listening")
        time.sleep(0.005)
    client = DapClient.connect(int(port_file.read_text()))
    try:
        client.request("initialize", {"clientID": "nextls", "adapterID": "python", "linesStartAt1": True,
                                      "columnsStartAt1": True, "pathFormat": "path"})
        # debugpy answers `attach` only after configurationDone
        attach = client.send("attach", {"justMyCode": False, "subProcess": False, "showReturnValue": True,
                                        "redirectOutput": False})
        client.wait_event("initialized", timeout, child.is_alive)
        client.request("setExceptionBreakpoints", {"filters": []})
        client.request("configurationDone")
        client.wait_response(attach, timeout)
        for last, expression in enumerate((_inject_and_start(trace_spec), _stop_and_write(trace_spec))):
            thread_id = client.wait_event("stopped", max(0.1, deadline - time.monotonic()), child.is_alive)["threadId"]
            frames = client.request("stackTrace", {"threadId": thread_id, "levels": 1})["stackFrames"]
            client.request("evaluate", {"expression": expression, "frameId": frames[0]["id"], "context": "repl"})
            if last:
                # no waiting for answers: the harness exits right after the traced test, often before replying
                client.send("continue", {"threadId": thread_id})
                client.send("disconnect", {"terminateDebuggee": False})
            else:
                client.request("continue", {"threadId": thread_id})
        child.join(max(0.0, deadline - time.monotonic()))
    finally:
        client.close()


class _CancelWatcher:
    """Forwards the caller's cancel to the debuggee's process group."""

    def __init__(self, cancel: threading.Event | None, abort: threading.Event) -> None:
        self._done = threading.Event()
        self._thread = None
        if cancel is not None:
            def watch() -> None:
                while not self._done.wait(0.02):
                    if cancel.is_set():
                        abort.set()
                        return
            self._thread = threading.Thread(target=watch, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._done.set()
