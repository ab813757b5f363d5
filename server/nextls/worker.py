"""The verification engine: warm test workers that fork a fresh child for every run.

Every test run of nextls (diagnostics, tracing in process, verifying a model's answer, verifying a repair
search candidate, training's filter) goes through `nextls.runner.run_tests`, which hands the run to a
worker from this pool. A worker (`child/nextls_worker.py`) is one sandboxed process per interpreter that
has imported the harness, the recorder and pytest once; each run is a `fork()` of it, so a run starts in a
millisecond or two with pytest loaded, and no state survives from one run to the next. What a run may do
is what `nextls.sandbox` allows a process (the worker carries the rlimits and the sandbox uid; each run
gets the CPU limit, its own session and capped output pipes from the worker). A worker that dies (a run
killed it, or it was killed) costs that run only: the pool starts a new one for the next.

A worker is retired and replaced when the interpreter's installed packages change (the mtime of its
site-packages folders), since it holds pytest and its plugins in memory, and, running as a sandbox uid,
when the project folders it was shown change their entries.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from nextls.sandbox import (
    Limits,
    Outcome,
    ProcessResult,
    SandboxedProcess,
    exit_outcome,
    max_test_processes,
    process_slot,
    python_argv,
)

__all__ = ["POOL", "WorkerError", "WorkerPool", "shutdown"]

logger = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).resolve().parent / "child" / "nextls_worker.py"
# How long a new worker may take to import pytest and say it is ready.
_START_TIMEOUT_S = 60.0
# Beyond a run's wall time: the fork, killing its group and draining its pipes.
_ANSWER_GRACE_S = 5.0
# After a cancel request, how long the worker has to answer before it is killed.
_CANCEL_GRACE_S = 2.0
_CANCEL_POLL_S = 0.02


# Workers are started from this one thread, which lives as long as the server: a child's parent-death
# signal fires when the *thread* that forked it ends, and a job's or a prestart's thread ends early.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nextls-worker-spawner")


class WorkerError(RuntimeError):
    """The worker could not be started (a broken interpreter, a missing file)."""


@dataclass(frozen=True)
class _Key:
    python: str
    pytest: bool
    read_paths: tuple[str, ...]
    limits: Limits  # its wall and CPU time apply per run, so they need no worker of their own

    @classmethod
    def of(cls, python: str, limits: Limits, pytest: bool, read_paths: Sequence[str]) -> _Key:
        return cls(python, pytest, _outermost(read_paths), replace(limits, wall_time=0.0, cpu_time=None))


def _outermost(paths: Sequence[str]) -> tuple[str, ...]:
    """The folders of `paths` not inside another one of them: a worker shown a project's root also reads
    its subfolders, so runs of one project share a worker whichever file they test."""
    folders = sorted({os.path.realpath(path) for path in paths if path})
    outer: list[str] = []
    for folder in folders:  # sorted: a folder comes right after the ones it may be inside
        if not any(folder == kept or folder.startswith(kept.rstrip(os.sep) + os.sep) for kept in outer):
            outer.append(folder)
    return tuple(outer)


class _Lines:
    """Reads newline-terminated messages from a pipe, with a deadline and a cancel check."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def read(self, deadline: float, cancel: threading.Event | None = None) -> bytes | None:
        """One line; None at the deadline, when cancel is set, or at EOF (the worker died)."""
        while (end := self.buffer.find(b"\n")) < 0:
            if cancel is not None and cancel.is_set():
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = min(remaining, _CANCEL_POLL_S if cancel is not None else 1.0)
            if not select.select([self.fd], [], [], wait)[0]:
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 1]
        return line


class TestWorker:
    """One warm worker process. Not thread-safe: the pool lends it to one run at a time."""

    __test__ = False

    def __init__(self, python: str, limits: Limits, *, pytest: bool = True,
                 read_paths: Sequence[str] = ()) -> None:
        argv = python_argv(python, str(WORKER_SCRIPT), *(["--pytest"] if pytest else []))
        try:
            self.process = _SPAWNER.submit(SandboxedProcess, argv, limits=limits,
                                           read_paths=read_paths).result()
        except (FileNotFoundError, PermissionError) as error:
            raise WorkerError(f"cannot start the test worker with {python!r}: {error.strerror}") from error
        self.lines = _Lines(self.process.stdout.fileno())
        ready = self.lines.read(time.monotonic() + _START_TIMEOUT_S)
        if ready is None:
            detail = self._stderr_tail()
            self.close()
            raise WorkerError(f"the test worker for {python!r} did not start" + (f": {detail}" if detail else ""))
        self.info = json.loads(ready)
        self.site_stamp = _folder_stamps(self.info.get("site", []))
        # As a sandbox uid, a project folder the uid may not list is shown to it entry by entry, as the
        # entries were when the worker started (see nextls.sandbox): a file added or replaced (an editor's
        # atomic save) since then would be invisible, so such a change retires the worker.
        self.read_paths = tuple(read_paths) if self.uid is not None else ()
        self.read_stamp = _folder_stamps(self.read_paths)

    @property
    def uid(self) -> int | None:
        return self.process.uid

    @property
    def alive(self) -> bool:
        return self.process.alive

    def stale(self) -> bool:
        return (_folder_stamps(self.info.get("site", [])) != self.site_stamp
                or _folder_stamps(self.read_paths) != self.read_stamp)

    def run_folder(self) -> contextlib.AbstractContextManager[str]:
        """A fresh folder for one run, the only place the run can write; removed afterwards."""
        return self.process.subfolder()

    def run(self, spec: dict, *, cwd: str | os.PathLike[str], env: Mapping[str, str], limits: Limits,
            cancel: threading.Event | None = None) -> ProcessResult:
        """One run, forked from this worker, once the global caps on test processes leave room for it."""
        with process_slot(limits.memory_bytes, cancel) as admitted:
            if not admitted:
                return ProcessResult(Outcome.CANCELLED, None, None, "", "", False, False, 0.0)
            return self._run(spec, cwd, env, limits, cancel)

    def _run(self, spec: dict, cwd: str | os.PathLike[str], env: Mapping[str, str], limits: Limits,
             cancel: threading.Event | None) -> ProcessResult:
        request = {"spec": spec, "cwd": os.fspath(cwd), "env": dict(env), "wall_time": limits.wall_time,
                   "cpu_seconds": limits.cpu_seconds, "output_bytes": limits.output_bytes,
                   "kill_strays": self.uid is not None}
        started = time.monotonic()
        try:
            self._send(request)
        except OSError:  # died between runs
            return self._lost(started, "the test worker had died")
        deadline = started + limits.wall_time + _ANSWER_GRACE_S
        line = self.lines.read(deadline, cancel)
        if line is None and cancel is not None and cancel.is_set():
            with contextlib.suppress(OSError):
                self._send({"cancel": True})
            if self.lines.read(time.monotonic() + _CANCEL_GRACE_S) is None:
                self.close()
            return ProcessResult(Outcome.CANCELLED, None, None, "", "", False, False, time.monotonic() - started)
        if line is None:
            hung = self.alive
            self.close()
            if hung:
                return ProcessResult(Outcome.TIMEOUT, None, signal.SIGKILL, "", "", False, False,
                                     time.monotonic() - started)
            return self._lost(started, "the test worker died during the run")
        return _process_result(json.loads(line), limits)

    def _send(self, message: dict) -> None:
        self.process.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
        self.process.stdin.flush()

    def _lost(self, started: float, what: str) -> ProcessResult:
        detail = self._stderr_tail()
        self.close()
        return ProcessResult(Outcome.CRASHED, None, signal.SIGKILL, "", f"{what}: {detail}".rstrip(": "),
                             False, False, time.monotonic() - started)

    def _stderr_tail(self) -> str:
        with contextlib.suppress(OSError):
            with open(self.process.stderr_path, "rb") as stderr:
                stderr.seek(0, os.SEEK_END)
                stderr.seek(max(0, stderr.tell() - 2000))
                return " | ".join(stderr.read().decode("utf-8", "replace").strip().splitlines()[-3:])
        return ""

    def close(self) -> None:
        self.process.close()


def _process_result(answer: dict, limits: Limits) -> ProcessResult:
    """The worker's account of a run, as the sandbox would have reported the process."""
    stop_reason = {"timeout": Outcome.TIMEOUT, "cancelled": Outcome.CANCELLED}.get(answer["stop_reason"])
    outcome = exit_outcome(stop_reason, answer["signal"], answer["returncode"], answer["cpu_time"], limits,
                           answer["stderr_tail"].encode("utf-8"))
    return ProcessResult(outcome, answer["returncode"], answer["signal"], answer["stdout"], answer["stderr"],
                         answer["stdout_truncated"], answer["stderr_truncated"], answer["wall_time"])


def _folder_stamps(folders: Sequence[str]) -> tuple[int, ...]:
    """The folders' modification times: one changes when an entry is added, removed or replaced."""
    stamps = []
    for folder in folders:
        try:
            stamps.append(os.stat(folder).st_mtime_ns)
        except OSError:
            stamps.append(-1)
    return tuple(stamps)


class WorkerPool:
    """Idle workers by interpreter and limits; at most `size` alive at once (runs wait for a free one)."""

    def __init__(self, size: int | None = None) -> None:
        self._size = size
        self._idle: dict[_Key, list[TestWorker]] = {}
        self._alive = 0
        self._prestarting: set[_Key] = set()  # a run for one of these waits for that worker, not starts one
        self._condition = threading.Condition()
        self._closed = False

    @contextlib.contextmanager
    def worker(self, python: str, limits: Limits, *, pytest: bool = True,
               read_paths: Sequence[str] = ()) -> Iterator[TestWorker]:
        """A worker for runs under `limits` with `python` that may read `read_paths` (the project);
        `pytest=False` for runs without pytest tests."""
        key = _Key.of(python, limits, pytest, read_paths)
        worker = self._acquire(key)
        if worker is None:
            try:
                worker = TestWorker(python, limits, pytest=pytest, read_paths=key.read_paths)
            except BaseException:
                self._release(key, None)
                raise
        try:
            yield worker
        finally:
            self._release(key, worker)

    def _acquire(self, key: _Key) -> TestWorker | None:
        """An idle, healthy worker for `key`, or None after reserving room to start one."""
        with self._condition:
            while True:
                idle = self._idle.get(key, [])
                while idle:
                    worker = idle.pop()
                    if worker.alive and not worker.stale():
                        return worker
                    self._alive -= 1
                    worker.close()
                if key in self._prestarting:
                    self._condition.wait()
                    continue
                if self._alive < self.size:
                    self._alive += 1
                    return None
                if not self._evict_one_idle():
                    self._condition.wait()

    def _evict_one_idle(self) -> bool:
        """Close an idle worker of another interpreter or limits, to make room."""
        for workers in self._idle.values():
            if workers:
                workers.pop().close()
                self._alive -= 1
                return True
        return False

    def _release(self, key: _Key, worker: TestWorker | None) -> None:
        with self._condition:
            if worker is not None and worker.alive and not self._closed:
                self._idle.setdefault(key, []).append(worker)
            else:
                self._alive -= 1
                if worker is not None:
                    worker.close()
            self._condition.notify_all()

    @property
    def size(self) -> int:
        """By default as many workers as test processes may run at once (the sandbox's global cap, a server
        setting): a worker started beyond that would only wait for a turn; an idle one of another kind
        (pytest, the debugger's) makes room."""
        return self._size or max_test_processes()

    def prestart(self, python: str, limits: Limits, *, pytest: bool = True,
                 read_paths: Sequence[str] = ()) -> None:
        """Start a worker in the background, so that the first run finds it warm (a server calls this when
        a client connects): a run that needs it meanwhile waits for it instead of starting a second, cold one
        (which, on a small machine, could also evict the other warm workers). A failure to start is logged,
        and the first run will report it. Nothing is started when such a worker is idle or on its way, or
        when every worker is busy."""
        key = _Key.of(python, limits, pytest, read_paths)
        with self._condition:
            if self._idle.get(key) or key in self._prestarting:
                return
            if self._alive >= self.size and not self._evict_one_idle():
                return
            self._alive += 1
            self._prestarting.add(key)

        def start() -> None:
            worker = None
            try:
                worker = TestWorker(python, limits, pytest=pytest, read_paths=key.read_paths)
            except WorkerError as error:
                logger.warning("%s", error)
            finally:
                with self._condition:
                    self._prestarting.discard(key)
                self._release(key, worker)

        threading.Thread(target=start, name="nextls-worker-prestart", daemon=True).start()

    def close(self) -> None:
        """Kill every idle worker (busy ones are closed when their run returns)."""
        with self._condition:
            self._closed = True
            for workers in self._idle.values():
                for worker in workers:
                    worker.close()
                    self._alive -= 1
            self._idle.clear()
            self._condition.notify_all()


POOL = WorkerPool()
atexit.register(POOL.close)  # the workers would die with us (PDEATHSIG), but their folders would stay


def shutdown() -> None:
    """Kill the workers; the server calls this on exit (they would die with it anyway: PDEATHSIG)."""
    POOL.close()
