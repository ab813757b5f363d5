"""The warm test worker: a long-lived process that forks a fresh child for every test run (stdlib only).

Usage: python nextls_worker.py [--pytest]   (started by `nextls.worker`, inside the sandbox)

Starting an interpreter and importing pytest costs far more than running an MBPP-size test. The worker
pays it once: it imports the harness, the recorder and (with --pytest) pytest, then serves runs. Without
pytest it stays small, and a small process forks faster: asserts and doctests get such a worker. Each run forks a child
from this warm parent, so the child starts with everything imported and nothing left over from earlier
runs (the parent never imports user code, never collects tests, never runs a conftest): a changed test
file, conftest.py or function is seen by the next run as it is on disk or in the spec.

Protocol, one JSON object per line: the worker says {"ready": ...} once, then for each request
{"spec": ..., "cwd": ..., "wall_time": s, "cpu_seconds": n, "output_bytes": n, "env": {...}} answers
{"outcome": ..., "returncode": ..., "signal": ..., "stdout": ..., "stderr": ..., ...}. A line {"cancel": true}
sent while a run goes on kills it. The child gets its own session (its group is SIGKILLed when the run
ends), the CPU limit of the run, stdin from /dev/null, capped stdout/stderr pipes, and no other file
descriptor of the worker: it cannot write to the worker's answers. The worker makes itself undumpable,
so a child of the same uid cannot open its descriptors through /proc or ptrace it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import os
import resource
import select
import signal
import sys
import time
import traceback

import nextls_harness
import nextls_recorder  # noqa: F401  (imported here once, so that every forked run has it warm)


def _warm_up_pytest() -> None:
    """Run pytest once on an empty folder: that imports pytest, its built-in plugins, the installed ones
    (entry points `pytest11`) and what they import lazily at the end of a session (hypothesis' takes
    seconds): the bulk of pytest's start-up, paid once here instead of at every run. Each run's
    `pytest.main` still reads the configuration, loads conftest.py and collects, so it sees the disk as
    it is now."""
    import tempfile

    import nextls_pytest_plugin  # noqa: F401
    import pytest

    with tempfile.TemporaryDirectory(prefix="nextls-warmup-") as empty, open(os.devnull, "w") as quiet:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            pytest.main(["-q", "-p", "no:cacheprovider", "--collect-only", "--rootdir", empty, empty])




_READ_CHUNK = 1 << 16
_DRAIN_GRACE_S = 1.0
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
RUN_PROCESS_NAME = b"nextls-run"
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int | bytes) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _answer(channel, message: dict) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


class _Capture:
    """The first `limit` bytes of a stream, and whether there was more."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        self.data += chunk[:max(room, 0)]
        self.truncated = self.truncated or len(chunk) > room
        self.tail = (self.tail + chunk)[-4096:]

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _run_in_child(request: dict, stdout_fd: int, stderr_fd: int) -> None:
    """In the forked child: contain it, then run the harness on the spec; never returns."""
    code = 1
    try:
        os.setsid()
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the worker dies: so does this run
        _prctl(_PR_SET_NAME, RUN_PROCESS_NAME)  # what `ps` and `top` show for a run
        _prctl(_PR_SET_DUMPABLE, 1)  # its own /proc entries, for the user's code that reads them
        cpu = int(request["cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        os.closerange(3, 1 << 16)  # the worker's request and answer pipes among them
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)
        sys.argv = [nextls_harness.__file__]
        nextls_harness.run_spec(request["spec"])
        code = 0
    except SystemExit as exit_request:
        code = exit_request.code if isinstance(exit_request.code, int) else 1
    except BaseException:  # a crash of the harness itself: its report goes to stderr
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_strays() -> None:
    """Processes of this uid that escaped the run's group (setsid) are killed too, as the sandbox's
    dedicated uid runs nothing but this worker and its runs. Only when the worker runs as such a uid."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{name}").st_uid == os.getuid():
                os.kill(int(name), signal.SIGKILL)


def _has_children() -> bool:
    """Whether any process, alive or not yet reaped, is our child. A run's descendants that outlive it are
    handed to us (child subreaper), so with none, nothing escaped the run and /proc need not be scanned."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _reap_all() -> None:
    """Collect every dead child: the run's orphans are handed to us (child subreaper)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def serve_one(request: dict, requests) -> dict:
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _run_in_child(request, stdout_w, stderr_w)
    os.close(stdout_w)
    os.close(stderr_w)
    captures = {stdout_r: _Capture(request["output_bytes"]), stderr_r: _Capture(request["output_bytes"])}
    poller = select.poll()
    for fd in (*captures, requests.fileno()):
        poller.register(fd, select.POLLIN)
    exit_fd = os.pidfd_open(pid)
    poller.register(exit_fd, select.POLLIN)
    deadline = started + float(request["wall_time"])
    stop_reason = None
    exited = False
    open_pipes = set(captures)
    while not exited and stop_reason is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            stop_reason = "timeout"
            break
        for fd, _ in poller.poll(math.ceil(min(remaining, 60.0) * 1000)):
            if fd == exit_fd:
                exited = True
            elif fd == requests.fileno():
                line = requests.readline()
                if not line or json.loads(line).get("cancel"):
                    stop_reason = "cancelled"
            elif fd in open_pipes:
                _read(fd, captures, open_pipes, poller)
    wall_time = time.monotonic() - started
    _kill_group(pid)
    _, status, rusage = os.wait4(pid, 0)
    if request.get("kill_strays") and _has_children():
        _kill_strays()
    give_up = time.monotonic() + _DRAIN_GRACE_S
    while open_pipes and time.monotonic() < give_up:
        for fd, _ in poller.poll(100):
            if fd in open_pipes:
                _read(fd, captures, open_pipes, poller)
    for fd in captures:
        os.close(fd)
    os.close(exit_fd)
    _reap_all()
    stdout, stderr = captures[stdout_r], captures[stderr_r]
    return {
        "stop_reason": stop_reason,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "returncode": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "cpu_time": rusage.ru_utime + rusage.ru_stime,
        "stdout": stdout.text(), "stderr": stderr.text(),
        "stdout_truncated": stdout.truncated, "stderr_truncated": stderr.truncated,
        "stderr_tail": stderr.tail.decode("utf-8", errors="replace"),
        "wall_time": wall_time,
    }


def _read(fd: int, captures: dict, open_pipes: set, poller) -> None:
    data = os.read(fd, _READ_CHUNK)
    if data:
        captures[fd].feed(data)
    else:
        poller.unregister(fd)
        open_pipes.discard(fd)


def main() -> int:
    if "--pytest" in sys.argv[1:]:
        _warm_up_pytest()
    # What is loaded now lives as long as the worker: out of the collector's sight, a run's gc.collect()
    # (pytest calls it twice per session) neither walks it nor touches its pages, which fork would copy.
    gc.freeze()
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the server dies: so does its worker
    _prctl(_PR_SET_DUMPABLE, 0)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    requests = sys.stdin
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    import site

    # the server retires this worker when one of these folders changes (a package installed or removed)
    folders = [*site.getsitepackages(), site.getusersitepackages()]
    _answer(answers, {"ready": True, "pid": os.getpid(), "python": sys.version.split()[0],
                      "pytest": "pytest" in sys.modules, "site": folders})
    while line := requests.readline():
        request = json.loads(line) if line.strip() else {}
        if "spec" in request:  # not a cancel that crossed the answer of the run it was meant for
            _answer(answers, serve_one(request, requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
