"""Run untrusted programs (users' tests, model-generated fixes, training's filter step) in a contained
subprocess and report, at the process level, what happened.

Containment, per run:

- The child gets its own session, hence its own process group. That group is SIGKILLed on wall timeout,
  on cancel, and also after the leader exits normally, so no descendant (a stray ``sleep 1000``, a fork
  bomb) outlives the run.
- rlimits (CPU seconds, address space, file size, process count, no core dumps) are set in the child
  between fork and exec: a ``preexec_fn`` of a few syscalls, no wrapper process. The price is a real
  fork() instead of vfork(): about 1 ms for a small runner, but it grows with the runner's anonymous
  memory (about 40 ms for a 2 GB one), so run the bulk of programs from a lean process.
- stdin is /dev/null; stdout and stderr are drained together by one ``poll`` loop, capped, and drained to
  the end so the child never blocks on a full pipe.
- The working directory is a fresh temporary directory, removed afterwards, unless the caller gives one.
- The environment is :func:`child_env`'s unless the caller gives one: PATH, locale, PYTHONPATH and the
  like, HOME and TMPDIR in the working directory, and only an allowlist of the caller's other variables.
- Namespaces (``Limits.isolate``, where the kernel allows them; the log says once when it does not): a
  private copy of the mount table in which the whole system is read-only, /tmp, /var/tmp and /dev/shm are
  empty private tmpfs folders that vanish with the child, and only the working directory is writable;
  a private network namespace with no interface up (``Limits.network=True`` keeps the host's, for a
  debugger on a port) and a private IPC namespace. Not root, a user namespace of the user's own uid gives
  the rights to mount, and its capabilities are dropped before exec. This is what bubblewrap does with
  ``--ro-bind / / --tmpfs /tmp --unshare-net``, done in the child itself: no second process between the
  runner and the program, so exit codes and signals arrive as they are, and it applies to every process
  started through ``_child_setup`` (the warm test worker too).
- Parent death: the child asks the kernel for SIGKILL when the thread that started it dies
  (PR_SET_PDEATHSIG; so start long-lived children from a long-lived thread), so a SIGKILLed server does not
  leave its programs running. :func:`kill_all_children` kills every live group at exit, and
  :func:`remove_stale_sandboxes` removes the folders (and, as root, the processes of sandbox uids) that a
  killed server left behind.
- A global cap (:func:`set_global_limits`) on the programs running at once and on the sum of their memory
  limits: a run waits for room.

Running as root (CI, the training machine): the kernel never applies RLIMIT_NPROC to root, so a fork
bomb would go unchecked. When the runner's euid is 0 the child therefore switches, before exec, to a
dedicated unprivileged uid/gid taken from a pool (60000 + slot, as the IOI ``isolate`` sandbox does). Each
concurrent run gets its own uid (claimed with a lock file, so concurrent runner processes never share
one), because RLIMIT_NPROC counts every process of a uid. That also lets the runner find and kill
processes that escaped the process group with ``setsid()``: after each run it kills whatever that uid
still owns. The child has no supplementary group and no capability in any set (bounding and ambient
included), and no_new_privs so setuid binaries cannot give root back: file permissions apply to it as to
any other user, so root's 0600 files (/etc/shadow) are closed to it. What it must read in root-only places
(an interpreter under ``/root/.pyenv``, a project in a 0700 folder: the interpreter's installation, the
absolute paths of argv and PYTHONPATH, and ``read_paths``) is made reachable in its mount namespace: the
first folder that blocks the uid is covered with an empty read-only tmpfs holding only the path to the
granted folder, bind-mounted; a granted folder closed to the uid shows its entries one by one. Without
namespaces the child keeps one capability instead, CAP_DAC_READ_SEARCH (or, where the container lacks
it, CAP_DAC_OVERRIDE), so that it can still read those places. The runner makes
itself a child subreaper, so that the dead children of a killed fork bomb are reaped by the runner rather
than left as zombies under a container init that does not reap them; unreaped zombies keep counting
against the uid's process limit, and the uid's next run would fail to start. (The flip side: orphans of
the root runner's other subprocesses are handed to it too, and stay zombies unless something reaps them.)
Turn all this off with ``Limits(drop_privileges=False)``; as root, fork bombs are then only bounded by the
wall time.

Not running as root, RLIMIT_NPROC counts every process the user already has (an editor, a browser). The
limit is set to the number of tasks on the whole system plus ``max_processes``: an upper bound on what the
user has now, so existing processes do not eat the budget, while a fork bomb is still stopped.

A program that cannot be started (missing interpreter, no permission) raises ``FileNotFoundError`` or
``PermissionError`` naming it, rather than returning a result: that is a configuration error of the
caller, not a behaviour of the program under test.

Linux is the target (pidfd, /proc, prctl); elsewhere the group kill and the limits still apply.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import functools
import logging
import math
import os
import re
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "Limits",
    "Outcome",
    "ProcessResult",
    "child_env",
    "kill_all_children",
    "process_slot",
    "python_argv",
    "remove_stale_sandboxes",
    "run_process",
    "sandbox_dir",
    "set_global_limits",
]

logger = logging.getLogger(__name__)

# How often a caller's cancel event is checked while the child runs.
_CANCEL_POLL_S = 0.02
# Bytes read from a pipe at a time (the default pipe buffer size).
_READ_CHUNK = 1 << 16
# After the process group is killed, how long to wait for the pipes to reach EOF. Only a process that
# escaped the group (and, not running as root, could not be found by uid) holds them open that long.
_DRAIN_GRACE_S = 1.0
# How long to keep killing before giving up on a process that will not die (uninterruptible sleep).
_KILL_GIVE_UP_S = 2.0
# Bytes of the end of a stream kept (even past the cap): stderr's tells a death by MemoryError.
_TAIL_BYTES = 4096
# Longest single wait in poll(), which takes an int of milliseconds; a very long wall_time just loops.
_MAX_POLL_S = 60.0

_UID_BASE = 60000
_UID_SLOTS = 1000

_PYTHON_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}
# Variables of ours every child gets (besides LC_*): finding programs and code, the locale, the time zone.
_PASSED_VARIABLES = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "PYTHONHOME", "PYTHONUTF8"})

_SANDBOX_PREFIX = "nextls-sandbox-"
# A sandbox folder's name carries its owner: nextls-sandbox-<pid>.<start time in clock ticks>-<random>.
_OWNED_SANDBOX = re.compile(re.escape(_SANDBOX_PREFIX) + r"(\d+)\.(\d+)-")

# Linux constants (linux/prctl.h, linux/capability.h).
_PR_SET_PDEATHSIG = 1
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_CAP_CHOWN = 0
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_CAP_KILL = 5
_CAP_SETGID = 6
_CAP_SETUID = 7
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run. ``None`` means no limit of that kind."""

    wall_time: float = 10.0  # seconds, whole process group, wall clock
    cpu_time: float | None = None  # RLIMIT_CPU seconds per process; None: ceil(wall_time) + 1
    memory_bytes: int | None = 2 << 30  # RLIMIT_AS
    output_bytes: int = 1 << 20  # kept of stdout and of stderr each; the rest is read and discarded
    max_processes: int | None = 64  # RLIMIT_NPROC (counts threads too); see the module docstring
    file_size_bytes: int | None = 64 << 20  # RLIMIT_FSIZE
    drop_privileges: bool = True  # as root only: run the child as a pool uid so max_processes applies
    isolate: bool = True  # private mount, IPC and network namespaces, where the kernel allows them
    network: bool = False  # with isolate: keep the host's network (a debugger that listens on a port)

    @property
    def cpu_seconds(self) -> int:
        """The RLIMIT_CPU soft limit applied (whole seconds); the hard limit is one more."""
        seconds = self.cpu_time if self.cpu_time is not None else math.ceil(self.wall_time) + 1
        return max(1, math.ceil(seconds))


class Outcome(str, Enum):
    """How the process ended. Output truncation is a separate flag: a run can be OK and truncated."""

    OK = "ok"  # exited with code 0
    EXITED = "exited"  # non-zero exit code (sys.exit(3), os._exit(7), an uncaught exception)
    TIMEOUT = "timeout"  # wall time, or the CPU limit (SIGXCPU, or SIGKILL at the hard limit)
    CRASHED = "crashed"  # killed by a signal (SIGSEGV, SIGABRT...), or died of MemoryError (memory limit)
    CANCELLED = "cancelled"  # the caller's cancel event was set


@dataclass
class ProcessResult:
    outcome: Outcome
    returncode: int | None  # exit code; None when killed by a signal
    signal: int | None  # the signal that killed the leader, if any
    stdout: str  # utf-8 with errors="replace", at most Limits.output_bytes bytes before decoding
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    wall_time: float  # seconds from start to the leader's exit (or to the kill)

    @property
    def output_truncated(self) -> bool:
        return self.stdout_truncated or self.stderr_truncated


def child_env(work_dir: str | os.PathLike[str], allow: Iterable[str] = ()) -> dict[str, str]:
    """The environment of a sandboxed program: PATH, the locale (LANG, LANGUAGE, LC_*), TZ, the Python
    variables that locate code (PYTHONPATH, PYTHONHOME, PYTHONUTF8), HOME and TMPDIR set to ``work_dir``,
    reproducible Python settings, and those of our variables that ``allow`` names (exact names or shell
    patterns such as ``MYAPP_*``). Nothing else of ours (an API key, a token) reaches the program."""
    if isinstance(allow, str):
        raise TypeError("allow is a list of variable names or patterns, not one string")
    patterns = tuple(allow)
    env = {
        name: value
        for name, value in os.environ.items()
        if name in _PASSED_VARIABLES
        or name.startswith("LC_")
        or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    }
    env.setdefault("PATH", os.defpath)
    folder = os.fspath(work_dir)
    env.update(HOME=folder, TMPDIR=folder, **_PYTHON_ENV)
    return env


def python_argv(python: str, *args: str) -> list[str]:
    """argv running ``python`` unbuffered (output printed before a timeout is not lost in the child's
    buffer) and without writing bytecode caches, even when the caller's env does not say so."""
    return [python, "-u", "-B", *args]


# Directories made by sandbox_dir(): run_process may hand them over to the sandbox uid.
_SANDBOX_DIRS: set[str] = set()


@contextlib.contextmanager
def sandbox_dir() -> Iterator[str]:
    """A fresh temporary directory for a run, removed on exit. Put the program's files in it, then pass
    it as ``cwd``; when the child runs as a sandbox uid, the directory and its files are given to that
    uid first, so the child can read and write them. Its name records this process (pid and start
    time), so that :func:`remove_stale_sandboxes` can tell when it was left behind by a killed server."""
    path = tempfile.mkdtemp(prefix=f"{_SANDBOX_PREFIX}{os.getpid()}.{_start_ticks(os.getpid()) or 0}-")
    _SANDBOX_DIRS.add(path)
    try:
        yield path
    finally:
        _SANDBOX_DIRS.discard(path)
        _remove_tree(path)


def set_global_limits(*, max_processes: int | None = None, max_memory_bytes: int | None = None) -> None:
    """Cap, across all threads of this process, the sandboxed programs running at once and the sum of
    their memory limits (``Limits.memory_bytes``; a run without one counts as the whole budget). A run
    beyond either cap waits for a running one to finish; its wall time starts when it starts. ``None``
    restores the default: the number of CPU cores, half of the physical memory."""
    for name, value in (("max_processes", max_processes), ("max_memory_bytes", max_memory_bytes)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, not {value!r}")
    _GATE.configure(max_processes or _default_max_processes(), max_memory_bytes or _default_max_memory())


def max_test_processes() -> int:
    """The global cap on sandboxed programs running at once (:func:`set_global_limits`)."""
    return _GATE.max_processes


@contextlib.contextmanager
def process_slot(memory_bytes: int | None, cancel: threading.Event | None = None) -> Iterator[bool]:
    """One place under the global caps of :func:`set_global_limits`, held for the block: for a sandboxed
    program started some other way than :func:`run_process` (a warm worker's fork). Waits for room;
    yields False, holding nothing, if ``cancel`` is set first."""
    reserved = _GATE.acquire(memory_bytes, cancel)
    if reserved is None:
        yield False
        return
    try:
        yield True
    finally:
        _GATE.release(reserved)


def run_process(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    limits: Limits = Limits(),
    cancel: threading.Event | None = None,
    pass_fds: Sequence[int] = (),
    read_paths: Sequence[str | os.PathLike[str]] = (),
) -> ProcessResult:
    """Run ``argv`` contained (see the module docstring) and report how it ended.

    ``cwd=None`` runs in a fresh temporary directory, removed afterwards. A ``cwd`` from
    :func:`sandbox_dir` is handed to the sandbox uid (when there is one); any other ``cwd`` is left as it
    is, so the sandbox uid can read it but may not be able to write there. ``env=None`` uses
    :func:`child_env` of the working directory. ``read_paths`` are folders the program must read (a
    project's code) that the isolation would otherwise hide or a sandbox uid could not reach; the
    interpreter, the absolute paths in ``argv`` and in PYTHONPATH are added to them. Waits while the
    global caps (:func:`set_global_limits`) are reached. Raises ``FileNotFoundError``/``PermissionError``
    naming ``argv[0]`` when it cannot be started. Thread-safe; nothing the child started is alive when
    this returns.
    """
    if not argv:
        raise ValueError("argv is empty")
    argv = [os.fspath(arg) for arg in argv]
    with contextlib.ExitStack() as stack:
        if not stack.enter_context(process_slot(limits.memory_bytes, cancel)):
            return ProcessResult(Outcome.CANCELLED, None, None, "", "", False, False, 0.0)
        uid = stack.enter_context(_UID_POOL.claim()) if _should_drop_privileges(limits) else None
        workdir = stack.enter_context(sandbox_dir()) if cwd is None else os.path.abspath(cwd)
        if uid is not None and workdir in _SANDBOX_DIRS:
            _chown_tree(workdir, uid)
        env = child_env(workdir) if env is None else dict(env)
        # Looked up here, as we see PATH: the sandbox uid may not be allowed to search all of it.
        executable = argv[0] if os.sep in argv[0] else shutil.which(argv[0], path=env.get("PATH", os.defpath))
        if executable is None:
            raise FileNotFoundError(errno.ENOENT, f"cannot start {argv[0]!r}: not found on PATH", argv[0])
        isolation = _isolation_for(executable, argv, workdir, env, read_paths, limits, uid)
        return _run(executable, argv, workdir, env, limits, cancel, pass_fds, uid, isolation)


def _run(
    executable: str,
    argv: list[str],
    workdir: str,
    env: dict[str, str],
    limits: Limits,
    cancel: threading.Event | None,
    pass_fds: Sequence[int],
    uid: int | None,
    isolation: _Isolation | None,
) -> ProcessResult:
    child_setup = _child_setup(_rlimits(limits, dropping=uid is not None), uid, isolation)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            executable=executable,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            # Safe with threads here: it only makes syscalls through functions resolved beforehand
            # (no imports, no dlsym, no locks), which is what the warning is about.
            preexec_fn=child_setup,  # noqa: PLW1509
        )
    except (FileNotFoundError, PermissionError) as exc:
        as_who = f" as sandbox uid {uid}" if uid is not None else ""
        message = f"cannot start {argv[0]!r} in the sandbox{as_who}: {exc.strerror}"
        raise type(exc)(exc.errno, message, exc.filename) from exc
    assert proc.stdout is not None and proc.stderr is not None
    _LIVE_GROUPS.add(proc.pid, uid)
    pipes = _Pipes(proc.stdout.fileno(), proc.stderr.fileno(), limits.output_bytes)
    try:
        with _exit_notifier(proc.pid) as exit_fd:
            stop_reason = pipes.pump(exit_fd, started + limits.wall_time, cancel)
        wall_time = time.monotonic() - started
    finally:
        _LIVE_GROUPS.discard(proc.pid)  # _kill_and_reap kills it anyway
        status, rusage = _kill_and_reap(proc, uid)
        pipes.drain(time.monotonic() + _DRAIN_GRACE_S)
        proc.stdout.close()
        proc.stderr.close()
    return _result(stop_reason, status, rusage, limits, pipes, wall_time)


def _result(
    stop_reason: Outcome | None,
    status: int,
    rusage: resource.struct_rusage,
    limits: Limits,
    pipes: _Pipes,
    wall_time: float,
) -> ProcessResult:
    killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    returncode = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    return ProcessResult(
        outcome=exit_outcome(stop_reason, killed_by, returncode, rusage.ru_utime + rusage.ru_stime, limits,
                             pipes.stderr.tail),
        returncode=returncode,
        signal=killed_by,
        stdout=pipes.stdout.text(),
        stderr=pipes.stderr.text(),
        stdout_truncated=pipes.stdout.truncated,
        stderr_truncated=pipes.stderr.truncated,
        wall_time=wall_time,
    )


def exit_outcome(stop_reason: Outcome | None, killed_by: int | None, returncode: int | None, cpu_used: float,
                 limits: Limits, stderr_tail: bytes) -> Outcome:
    """How a contained process ended, from how it was stopped (None: by itself), its wait status, the CPU
    it used and the end of its stderr; also for the runs a warm worker forks, which it reports this way."""
    if stop_reason is not None:
        return stop_reason
    if killed_by is not None:
        # SIGXCPU at the soft CPU limit; SIGKILL at the hard one if the program caught SIGXCPU.
        hit_cpu_limit = killed_by == signal.SIGXCPU or (killed_by == signal.SIGKILL and cpu_used >= limits.cpu_seconds)
        return Outcome.TIMEOUT if hit_cpu_limit else Outcome.CRASHED
    if returncode == 0:
        return Outcome.OK
    if returncode == 1 and _ends_with_memory_error(stderr_tail):  # 1: an uncaught exception
        return Outcome.CRASHED
    return Outcome.EXITED


def _ends_with_memory_error(stderr_tail: bytes) -> bool:
    """Whether the last line of stderr is Python's report of an uncaught MemoryError (the memory limit)."""
    lines = stderr_tail.rstrip().splitlines()
    return bool(lines) and lines[-1].startswith(b"MemoryError")


# --- output -------------------------------------------------------------------------------------------


class _Capture:
    """One output stream: the first ``limit`` bytes, a flag for the rest, and the stream's last bytes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._kept = 0
        self.truncated = False
        self.tail = b""

    def feed(self, data: bytes) -> None:
        room = self._limit - self._kept
        if room > 0:
            kept = data[:room]
            self._chunks.append(kept)
            self._kept += len(kept)
        if len(data) > room:
            self.truncated = True
        self.tail = data[-_TAIL_BYTES:] if len(data) >= _TAIL_BYTES else (self.tail + data)[-_TAIL_BYTES:]

    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", errors="replace")


class _Pipes:
    """Reads the child's stdout and stderr with one poll loop, so neither pipe can fill up and block it."""

    def __init__(self, stdout_fd: int, stderr_fd: int, limit: int) -> None:
        self.stdout = _Capture(limit)
        self.stderr = _Capture(limit)
        self._open = {stdout_fd: self.stdout, stderr_fd: self.stderr}
        self._poller = select.poll()
        for fd in self._open:
            self._poller.register(fd, select.POLLIN)

    def pump(self, exit_fd: int, deadline: float, cancel: threading.Event | None) -> Outcome | None:
        """Read output until the leader exits (None), the deadline passes (TIMEOUT) or cancel is set."""
        self._poller.register(exit_fd, select.POLLIN)
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    return Outcome.CANCELLED
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Outcome.TIMEOUT
                wait = min(remaining, _MAX_POLL_S if cancel is None else _CANCEL_POLL_S)
                for fd, _ in self._poller.poll(math.ceil(wait * 1000)):
                    if fd == exit_fd:
                        return None
                    self._read(fd)
        finally:
            self._poller.unregister(exit_fd)

    def drain(self, give_up_at: float) -> None:
        """Read what is left until both pipes reach EOF (their writers are dead by now), bounded in time."""
        while self._open:
            remaining = give_up_at - time.monotonic()
            if remaining <= 0:
                return
            for fd, _ in self._poller.poll(math.ceil(min(remaining, _MAX_POLL_S) * 1000)):
                self._read(fd)

    def _read(self, fd: int) -> None:
        data = os.read(fd, _READ_CHUNK)
        if data:
            self._open[fd].feed(data)
        else:
            self._poller.unregister(fd)
            del self._open[fd]


@contextlib.contextmanager
def _exit_notifier(pid: int) -> Iterator[int]:
    """A file descriptor that becomes readable when ``pid`` exits; the process is left to be reaped."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3, other systems): a thread waits instead
        read_fd, write_fd = os.pipe()
        threading.Thread(target=_signal_exit, args=(pid, write_fd), daemon=True).start()
        try:
            yield read_fd
        finally:
            os.close(read_fd)
    else:
        try:
            yield pidfd
        finally:
            os.close(pidfd)


def _signal_exit(pid: int, write_fd: int) -> None:
    try:
        with contextlib.suppress(ChildProcessError):  # already reaped: the run is over anyway
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(OSError):  # the reader may be gone
            os.write(write_fd, b"x")
    finally:
        os.close(write_fd)


# --- the child's side: limits and identity, between fork and exec ---------------------------------------


def _rlimits(limits: Limits, *, dropping: bool) -> list[tuple[int, tuple[int, int]]]:
    cpu = limits.cpu_seconds
    wanted = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # the hard limit SIGKILLs a program that ignores SIGXCPU
        (resource.RLIMIT_CORE, 0, 0),  # core dumps of crashing programs are slow and of no use here
    ]
    if limits.memory_bytes is not None:
        wanted.append((resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes))
    if limits.file_size_bytes is not None:
        wanted.append((resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes))
    if limits.max_processes is not None:
        processes = limits.max_processes
        if not dropping and os.geteuid() != 0:
            processes += _tasks_on_system()  # see the module docstring
        wanted.append((resource.RLIMIT_NPROC, processes, processes))
    return [(which, _within_hard_limit(which, soft, hard)) for which, soft, hard in wanted]


def _within_hard_limit(which: int, soft: int, hard: int) -> tuple[int, int]:
    """(soft, hard) lowered to our own hard limit: an unprivileged child could not raise it."""
    current_hard = resource.getrlimit(which)[1]
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
    return min(soft, hard), hard


def _tasks_on_system() -> int:
    """Processes and threads on the whole system (4th field of /proc/loadavg: running/total)."""
    try:
        with open("/proc/loadavg", "rb") as loadavg:
            return int(loadavg.read().split()[3].split(b"/")[1])
    except (OSError, IndexError, ValueError):
        return 4096  # no /proc: a generous bound still stops a runaway fork bomb


def _child_setup(
    rlimits: list[tuple[int, tuple[int, int]]], uid: int | None, isolation: _Isolation | None = None
) -> Callable[[], None]:
    """The preexec_fn: runs in the forked child, so it only makes syscalls prepared beforehand. In order:
    the rlimits; the namespaces of ``isolation`` (while still root, to mount); the sandbox uid with no
    capability left (or, without isolation, one read capability, see the module docstring); no new
    privileges; death with the parent."""
    setrlimit = resource.setrlimit
    parent = os.getpid()
    enter_namespaces = _Namespaces(isolation).enter if isolation is not None else None
    keep = _read_access_capability() if isolation is None else None
    become_sandbox_user = _SandboxUser(uid, keep).assume if uid is not None else None
    # Not root, a new user namespace gave the child every capability inside it: they are dropped too.
    drop_capabilities = (_drop_capabilities_function()
                         if isolation is not None and uid is None and os.geteuid() != 0 else None)

    def setup() -> None:
        for which, values in rlimits:
            setrlimit(which, values)
        if enter_namespaces is not None:
            enter_namespaces()
        if become_sandbox_user is not None:
            become_sandbox_user()
        elif drop_capabilities is not None:
            drop_capabilities()
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries cannot give privileges back
        # After the uid switch, which clears it. If the parent died before this line, no signal would
        # come: the changed parent pid tells.
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class _SandboxUser:
    """Switches the (forked) calling process to the sandbox uid/gid with no supplementary group and no
    capability, in any set (bounding included), except ``keep_capability`` when one is given."""

    def __init__(self, uid: int, keep_capability: int | None) -> None:
        self._uid = uid
        self._capset = _libc_function("capset")
        _libc_function("prctl")  # resolved here, in the parent, for _prctl in the child
        self._keep = keep_capability
        self._dropped = [cap for cap in range(_last_capability() + 1) if cap != keep_capability]
        self._header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        self._data = (_CapData * 2)()
        if keep_capability is not None:
            bit = 1 << keep_capability  # capabilities below 32 live in the first word
            self._data[0] = _CapData(bit, bit, bit)

    def assume(self) -> None:
        for capability in self._dropped:  # the bounding set needs CAP_SETPCAP: before the uid switch
            _prctl(_PR_CAPBSET_DROP, capability)
        if self._keep is not None:
            _prctl(_PR_SET_KEEPCAPS, 1)  # keep the permitted set across setresuid, to keep one capability
        os.setgroups([])
        os.setresgid(self._uid, self._uid, self._uid)
        os.setresuid(self._uid, self._uid, self._uid)
        # Leaves only the kept capability (or none): the switch cleared the others but the inheritable set.
        _checked(self._capset(ctypes.byref(self._header), self._data))
        if self._keep is not None:
            # Ambient capabilities survive execve of ordinary programs, and are inherited by children.
            _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, self._keep)


def _drop_capabilities_function() -> Callable[[], None]:
    capset = _libc_function("capset")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    empty = (_CapData * 2)()
    capabilities = range(_last_capability() + 1)

    def drop() -> None:
        for capability in capabilities:
            _prctl(_PR_CAPBSET_DROP, capability)
        _checked(capset(ctypes.byref(header), empty))

    return drop


@functools.cache
def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as last:
            return int(last.read())
    except (OSError, ValueError):
        return 40  # CAP_CHECKPOINT_RESTORE, the last one as of Linux 6.x


# --- the child's view of the system: namespaces -------------------------------------------------------

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 1
_SYS_MOUNT_SETATTR = 442  # the same number on x86-64 and arm64
# Shared temporary folders: the child gets empty private ones instead, gone with it.
_PRIVATE_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
_PRIVATE_TEMP_BYTES = 256 << 20  # per folder; tmpfs pages are not counted by RLIMIT_AS


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


@dataclass(frozen=True)
class _Isolation:
    """The child's namespaces and mounts, planned in the parent: the child only replays the steps.

    Steps: ("tmpfs", path, options) mounts an empty tmpfs; ("dir", path) and ("file", path) make a mount
    point in one; ("link", path, target) copies a symlink; ("bind", source index, path, writable) mounts
    a folder or file opened before anything was covered; ("seal", path) makes a mount read-only."""

    flags: int  # for unshare()
    id_maps: tuple[tuple[str, bytes], ...]  # written in a new user namespace (not root)
    sources: tuple[str, ...]
    steps: tuple[tuple, ...]
    cwd: str


class _Namespaces:
    """Replays an :class:`_Isolation` in the forked child: a private copy of the mount table with
    everything read-only, private temporary folders, the granted folders reachable, no network."""

    def __init__(self, plan: _Isolation) -> None:
        self._plan = plan
        self._unshare = _libc_function("unshare")
        self._mount = _libc_function("mount")
        self._syscall = _libc_function("syscall")
        self._read_only = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
        self._writable = _MountAttr(0, _MOUNT_ATTR_RDONLY, 0, 0)

    def enter(self) -> None:
        plan = self._plan
        _checked(self._unshare(plan.flags))
        for path, content in plan.id_maps:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, content)
            finally:
                os.close(fd)
        # No mount of ours may propagate back to the host's mount table.
        _checked(self._mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None))
        sources = [os.open(path, os.O_PATH | os.O_CLOEXEC) for path in plan.sources]
        self._set_attr(b"/", _AT_RECURSIVE, self._read_only)
        for step in plan.steps:
            kind, path = step[0], os.fsencode(step[1])
            if kind == "tmpfs":
                _checked(self._mount(b"tmpfs", path, b"tmpfs", _MS_NOSUID | _MS_NODEV, step[2].encode()))
            elif kind == "dir":
                os.mkdir(path, 0o755)
            elif kind == "file":
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            elif kind == "link":
                os.symlink(step[2], path)
            elif kind == "bind":
                source = b"/proc/self/fd/%d" % sources[step[2]]
                _checked(self._mount(source, path, None, _MS_BIND | _MS_REC, None))
                if step[3]:
                    self._set_attr(path, 0, self._writable)
            else:  # "seal"
                self._set_attr(path, 0, self._read_only)
        for fd in sources:
            os.close(fd)
        os.chdir(plan.cwd)  # the old cwd is the covered, read-only copy of the folder

    def _set_attr(self, path: bytes, flags: int, attr: _MountAttr) -> None:
        _checked(self._syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, path, flags,
                               ctypes.byref(attr), ctypes.sizeof(attr)))


def _isolation_for(
    executable: str,
    argv: Sequence[str],
    workdir: str,
    env: Mapping[str, str],
    read_paths: Iterable[str | os.PathLike[str]],
    limits: Limits,
    uid: int | None,
) -> _Isolation | None:
    """The namespaces of a child running ``argv`` in ``workdir`` (writable), or None when ``limits`` ask
    for none or the kernel cannot make them (said once in the log)."""
    if not (limits.isolate and _namespaces_available()):
        return None
    planner = _MountPlanner(uid)
    needed = _needed_paths(executable, argv, env, read_paths)
    for path in sorted({os.path.realpath(path) for path in needed}, key=len):
        planner.grant(path, writable=False)
    planner.grant(os.path.realpath(workdir), writable=True)
    return planner.plan(network=limits.network, cwd=workdir)


def _needed_paths(executable: str, argv: Sequence[str], env: Mapping[str, str],
                  read_paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Folders the child reads: the interpreter's installation (as named and as resolved: a virtual
    environment and its base), the absolute paths in argv and PYTHONPATH, and the caller's."""
    paths = [os.fspath(path) for path in read_paths]
    for program in (os.path.abspath(executable), os.path.realpath(executable)):
        folder = os.path.dirname(program)
        paths.append(os.path.dirname(folder) if os.path.basename(folder) == "bin" else folder)
    paths += [arg for arg in argv[1:] if os.path.isabs(arg)]
    paths += [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if os.path.isabs(entry)]
    return [path for path in paths if os.path.exists(path)]


class _MountPlanner:
    """Plans the mounts that give the child a read-only system, empty private temporary folders, and
    the granted folders. A granted folder that the sandbox uid cannot reach (under /root, or a 0700
    folder of root's) is made reachable by covering the first blocking folder with an empty read-only
    tmpfs in which only the path to the granted folder exists; a granted folder that is itself closed
    to the uid shows its entries one by one. Nothing else under a covering tmpfs is visible."""

    def __init__(self, uid: int | None) -> None:
        self._uid = uid
        self._covered: set[str] = set()
        self._made: set[str] = set()
        self._granted: list[str] = []
        self._sources: list[str] = []
        self._steps: list[tuple] = []
        self._seals: list[tuple] = []
        for folder in _PRIVATE_TEMP_DIRS:
            real = os.path.realpath(folder)
            if os.path.isdir(real) and real not in self._covered:
                self._covered.add(real)
                self._steps.append(("tmpfs", real, f"mode=1777,size={_PRIVATE_TEMP_BYTES}"))

    def grant(self, path: str, *, writable: bool) -> None:
        if not os.path.isdir(path):
            path = os.path.dirname(path)
        if path in self._covered:
            return
        if any(_is_within(path, granted) for granted in self._granted):
            if writable:  # inside a read-only grant: visible, only its writability changes
                self._bind(path, path, writable=True)
            return
        chain = _path_chain(path)
        first = next((i for i, folder in enumerate(chain) if folder in self._covered or self._blocked(folder)),
                     None)
        if first is None:
            if writable:  # the system is read-only; this folder is not
                self._bind(path, path, writable=True)
            return
        if chain[first] not in self._covered:
            self._covered.add(chain[first])
            self._steps.append(("tmpfs", chain[first], "mode=0755,size=1m"))
            self._seals.append(("seal", chain[first]))
        for folder in chain[first + 1:]:
            self._make("dir", folder)
        if path == chain[first] or self._blocked(path, listing=True):
            self._bind_entries(path, writable)
        else:
            self._bind(path, path, writable)
        self._granted.append(path)

    def plan(self, *, network: bool, cwd: str) -> _Isolation:
        flags = _CLONE_NEWNS | _CLONE_NEWIPC | (0 if network else _CLONE_NEWNET)
        id_maps: tuple[tuple[str, bytes], ...] = ()
        if os.geteuid() != 0:  # the rights to mount come from a user namespace of our own
            flags |= _CLONE_NEWUSER
            id_maps = (("/proc/self/setgroups", b"deny"),
                       ("/proc/self/uid_map", b"%d %d 1" % (os.geteuid(), os.geteuid())),
                       ("/proc/self/gid_map", b"%d %d 1" % (os.getegid(), os.getegid())))
        return _Isolation(flags, id_maps, tuple(self._sources), tuple(self._steps + self._seals), cwd)

    def _blocked(self, folder: str, *, listing: bool = False) -> bool:
        """Whether the sandbox uid cannot search ``folder`` (or list it). Only root has such a uid; a
        user's children run as the user, who can reach whatever we can."""
        if self._uid is None:
            return False
        info = os.stat(folder)
        need = (stat.S_IROTH | stat.S_IXOTH) if listing else stat.S_IXOTH
        if info.st_uid == self._uid:
            need <<= 6
        elif info.st_gid == self._uid:
            need <<= 3
        return info.st_mode & need != need

    def _bind_entries(self, folder: str, writable: bool) -> None:
        for entry in os.scandir(folder):
            if entry.is_symlink():
                self._steps.append(("link", entry.path, os.readlink(entry.path)))
            elif entry.is_dir(follow_symlinks=False):
                self._make("dir", entry.path)
                self._bind(entry.path, entry.path, writable)
            elif entry.is_file(follow_symlinks=False):
                self._make("file", entry.path)
                self._bind(entry.path, entry.path, writable)

    def _make(self, kind: str, path: str) -> None:
        if path not in self._made and path not in self._covered:
            self._made.add(path)
            self._steps.append((kind, path))

    def _bind(self, source: str, target: str, writable: bool) -> None:
        self._sources.append(source)
        self._steps.append(("bind", target, len(self._sources) - 1, writable))


def _path_chain(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b", "/a/b/c"]``."""
    parts = [part for part in path.split(os.sep) if part]
    return [os.sep + os.sep.join(parts[: i + 1]) for i in range(len(parts))]


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@functools.cache
def _namespaces_available() -> bool:
    """Whether this kernel lets us make the child's namespaces: tried once, on a child that does
    nothing. When it does not (no user namespaces for unprivileged users, a seccomp filter), the log
    says so once and children see the system as we do."""
    if not sys.platform.startswith("linux"):
        return False
    with sandbox_dir() as workdir:
        planner = _MountPlanner(None)
        # the interpreter may live under a folder the namespace covers (a venv in /tmp): grant it as runs do
        for path in sorted({os.path.realpath(path) for path in _needed_paths(sys.executable, [], {}, [])}, key=len):
            planner.grant(path, writable=False)
        planner.grant(workdir, writable=True)
        probe = _child_setup([], None, planner.plan(network=False, cwd=workdir))
        try:
            subprocess.run([sys.executable, "-S", "-c", ""], cwd=workdir, preexec_fn=probe,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as error:
            logger.warning("sandboxed programs are not isolated from the filesystem and network (%s: the "
                           "kernel refused private mount/network namespaces; unprivileged user namespaces "
                           "may be disabled): they can write wherever their uid can, and reach the network",
                           type(error).__name__)
            return False
    return True


@functools.cache
def _libc_function(name: str) -> Callable[..., int]:
    """A libc function, looked up once in the parent: dlopen/dlsym take a lock in the forked child."""
    return getattr(ctypes.CDLL(None, use_errno=True), name)


def _prctl(option: int, arg2: int, arg3: int = 0) -> None:
    zero = ctypes.c_ulong(0)
    _checked(_libc_function("prctl")(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), zero, zero))


def _checked(result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@functools.cache
def _effective_capabilities() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


@functools.cache
def _read_access_capability() -> int | None:
    """The capability the sandbox user keeps to read root-only paths: read/search if we have it (it
    grants no writes), else override (default Docker has only that one), else none."""
    for capability in (_CAP_DAC_READ_SEARCH, _CAP_DAC_OVERRIDE):
        if _effective_capabilities() >> capability & 1:
            return capability
    return None


def _should_drop_privileges(limits: Limits) -> bool:
    return limits.drop_privileges and os.geteuid() == 0 and _prepare_privilege_drop()


@functools.cache
def _prepare_privilege_drop() -> bool:
    """Whether this root process can run children as sandbox uids; the first time, if it can, it becomes
    a child subreaper (see the module docstring)."""
    needed = (_CAP_SETUID, _CAP_SETGID, _CAP_CHOWN, _CAP_KILL)
    if not (sys.platform.startswith("linux") and all(_effective_capabilities() >> cap & 1 for cap in needed)):
        logger.warning("running as root without the capabilities to drop privileges: a fork bomb in a "
                       "sandboxed program is bounded only by the wall time")
        return False
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    return True


class _UidPool:
    """Hands out sandbox uids, one per concurrent run: a set across threads, a flock across processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use: set[int] = set()

    @contextlib.contextmanager
    def claim(self) -> Iterator[int]:
        with self._lock:
            for uid in range(_UID_BASE, _UID_BASE + _UID_SLOTS):
                lock_fd = self._try(uid)
                if lock_fd is not None:
                    break
            else:
                raise RuntimeError(f"all {_UID_SLOTS} sandbox uids from {_UID_BASE} are in use")
        try:
            yield uid
        finally:
            self._release(uid, lock_fd)

    @contextlib.contextmanager
    def claim_if_free(self, uid: int) -> Iterator[bool]:
        """Claim this uid if no runner (in any process) holds it; yields whether it did."""
        with self._lock:
            lock_fd = self._try(uid)
        try:
            yield lock_fd is not None
        finally:
            if lock_fd is not None:
                self._release(uid, lock_fd)

    def _try(self, uid: int) -> int | None:
        """The held lock file of ``uid``, or None if a runner has it. Called with ``_lock`` held."""
        if uid in self._in_use:
            return None
        lock_dir = _private_dir(os.path.join(tempfile.gettempdir(), "nextls-sandbox-uids"))
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        lock_fd = os.open(os.path.join(lock_dir, str(uid)), flags, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another runner process has it
            os.close(lock_fd)
            return None
        self._in_use.add(uid)
        return lock_fd

    def _release(self, uid: int, lock_fd: int) -> None:
        os.close(lock_fd)  # releases the flock
        with self._lock:
            self._in_use.discard(uid)


_UID_POOL = _UidPool()


def _private_dir(path: str) -> str:
    """``path`` as a directory only we can write: sandboxed programs can write the temp dir too, and must
    not be able to plant the uid lock files."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise RuntimeError(f"{path} must be a directory owned by uid {os.geteuid()} with mode 0700")
    return path


def _chown_tree(path: str, uid: int) -> None:
    os.chown(path, uid, uid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)


def _remove_tree(path: str) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError:
        # The program may have left directories without write permission; we own them, so restore it.
        for root, dirs, _ in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
        shutil.rmtree(path, ignore_errors=True)


# --- what runs at once, what outlives us ---------------------------------------------------------------


def _default_max_processes() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 2


def _default_max_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (AttributeError, OSError, ValueError):
        return 8 << 30


class _ProcessGate:
    """The global caps of :func:`set_global_limits`. A run that needs more memory than the whole budget
    still runs, alone, rather than never."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._running = 0
        self._memory = 0
        self.max_processes = _default_max_processes()
        self.max_memory_bytes = _default_max_memory()

    def configure(self, max_processes: int, max_memory_bytes: int) -> None:
        with self._condition:
            self.max_processes, self.max_memory_bytes = max_processes, max_memory_bytes
            self._condition.notify_all()

    def acquire(self, memory_bytes: int | None, cancel: threading.Event | None) -> int | None:
        """Wait for room; the memory reserved, or None if ``cancel`` was set first."""
        with self._condition:
            while True:
                need = self.max_memory_bytes if memory_bytes is None else min(memory_bytes, self.max_memory_bytes)
                if self._running == 0 or (self._running < self.max_processes
                                          and self._memory + need <= self.max_memory_bytes):
                    self._running += 1
                    self._memory += need
                    return need
                if cancel is not None and cancel.is_set():
                    return None
                self._condition.wait(_CANCEL_POLL_S if cancel is not None else None)

    def release(self, reserved: int) -> None:
        with self._condition:
            self._running -= 1
            self._memory -= reserved
            self._condition.notify_all()


_GATE = _ProcessGate()


class _LiveGroups:
    """The process groups of the runs alive now, with their sandbox uid, for :func:`kill_all_children`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[int, int | None] = {}

    def add(self, pgid: int, uid: int | None) -> None:
        with self._lock:
            self._groups[pgid] = uid

    def discard(self, pgid: int) -> None:
        with self._lock:
            self._groups.pop(pgid, None)

    def snapshot(self) -> list[tuple[int, int | None]]:
        with self._lock:
            return list(self._groups.items())


_LIVE_GROUPS = _LiveGroups()


def kill_all_children() -> None:
    """SIGKILL every sandboxed process group running now, and as root whatever their sandbox uids run;
    their runs then end as killed. For the server's exit (also registered with atexit); a child that
    outlives a server killed outright dies of its parent-death signal instead."""
    for pgid, uid in _LIVE_GROUPS.snapshot():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        for pid in _pids_owned_by(uid) if uid is not None else ():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


atexit.register(kill_all_children)


def remove_stale_sandboxes() -> list[str]:
    """Remove the sandbox folders that a nextls process left behind when it was killed (their owner,
    recorded in the name, is gone) and, as root, kill what sandbox uids held by no live runner still
    run (a grandchild that left its group). For the server's start; returns the folders removed."""
    removed = []
    temp = tempfile.gettempdir()
    ours = {os.geteuid(), *range(_UID_BASE, _UID_BASE + _UID_SLOTS)}
    with os.scandir(temp) as entries:
        for entry in entries:
            owner = _OWNED_SANDBOX.match(entry.name)
            if (owner and entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid in ours
                    and _start_ticks(int(owner[1])) != int(owner[2])):
                _remove_tree(entry.path)
                removed.append(entry.path)
    if os.geteuid() == 0:
        _kill_unclaimed_sandbox_users()
    return removed


def _kill_unclaimed_sandbox_users() -> None:
    owners = set()
    for pid in _all_pids():
        uid = _owner(pid)
        if uid is not None and _UID_BASE <= uid < _UID_BASE + _UID_SLOTS:
            owners.add(uid)
    for uid in sorted(owners):
        with _UID_POOL.claim_if_free(uid) as free:
            if free:
                _kill_user_processes(uid)


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (field 22 of /proc/PID/stat); None if it is gone.
    With the pid, it names a process: a pid alone may have been reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            raw = stat_file.read()
    except OSError:
        return None
    return int(raw[raw.rfind(b")") + 2 :].split()[19])


def _all_pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


# --- cleanup ------------------------------------------------------------------------------------------


def _kill_and_reap(proc: subprocess.Popen[bytes], uid: int | None) -> tuple[int, resource.struct_rusage]:
    """Kill everything the run started and reap the leader; returns the leader's wait status and usage."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    # Kill while the unreaped leader still pins the group id, so it cannot be reused by another group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # tells Popen it is reaped
    _kill_process_group(pgid)
    if uid is not None:
        _kill_user_processes(uid)
    return status, rusage


def _kill_process_group(pgid: int) -> None:
    """SIGKILL the group until no live member is left (its zombies may wait for a non-reaping init)."""
    give_up_at = time.monotonic() + _KILL_GIVE_UP_S
    pause = 0.0005
    while True:
        _reap_group_children(pgid)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if not _group_has_live_member(pgid):
            return
        if time.monotonic() >= give_up_at:
            logger.warning("process group %d survived SIGKILL for %.0f s", pgid, _KILL_GIVE_UP_S)
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _reap_group_children(pgid: int) -> None:
    """Reap dead members of the group that became our children (we are their subreaper)."""
    while True:
        try:
            if os.waitid(os.P_PGID, pgid, os.WEXITED | os.WNOHANG) is None:
                return
        except ChildProcessError:
            return


def _kill_user_processes(uid: int) -> None:
    """Kill and reap whatever the sandbox uid still owns, including processes that left the group."""
    me = os.getpid()
    give_up_at = time.monotonic() + _KILL_GIVE_UP_S
    pause = 0.0005
    while True:
        pending = False
        for pid in _pids_owned_by(uid):
            info = _process_info(pid)
            if info is None:
                continue
            if info.state != "Z":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                pending = True
            elif info.ppid == me:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            elif _owner(info.ppid) == uid:  # its parent is dying; it will be handed to us to reap
                pending = True
        if not pending:
            return
        if time.monotonic() >= give_up_at:
            logger.warning("processes of sandbox uid %d survived SIGKILL for %.0f s", uid, _KILL_GIVE_UP_S)
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


@dataclass(frozen=True)
class _ProcessInfo:
    state: str
    ppid: int
    pgrp: int


def _process_info(pid: int) -> _ProcessInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            raw = stat_file.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    return _ProcessInfo(state=fields[0].decode(), ppid=int(fields[1]), pgrp=int(fields[2]))


def _group_has_live_member(pgid: int) -> bool:
    try:
        names = os.listdir("/proc")
    except OSError:  # no /proc: assume so, and let killpg's ESRCH tell when the group is gone
        return True
    for name in names:
        if name.isdigit():
            info = _process_info(int(name))
            if info is not None and info.pgrp == pgid and info.state != "Z":
                return True
    return False


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _pids_owned_by(uid: int) -> list[int]:
    # stat() of /proc/<pid> gives the owner without opening a file: cheap enough to scan after every run.
    # (A process made non-dumpable shows as root's here; hiding that way takes intent, not a bug.)
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return []
    pids = []
    for entry in entries:
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
    return pids


# --- long-lived processes -----------------------------------------------------------------------------


class SandboxedProcess:
    """A long-lived process under the same containment as a run (the warm test worker): its own session,
    the rlimits of ``limits`` (the CPU limit left to whoever it forks per run), the sandbox uid as root,
    the same namespaces (``read_paths`` readable), a fresh working folder of its own, the only writable
    folder it has: what it forks per run works in subfolders of it. ``env=None`` gives it :func:`child_env`
    of that folder, as :func:`run_process` does. Talk to it through ``stdin`` /
    ``stdout``; its stderr goes to ``stderr_path`` in that folder. ``close()`` kills its group and whatever
    its uid still runs, and removes the folder."""

    def __init__(self, argv: Sequence[str], *, limits: Limits, env: Mapping[str, str] | None = None,
                 read_paths: Sequence[str | os.PathLike[str]] = ()) -> None:
        argv = [os.fspath(arg) for arg in argv]
        self._stack = contextlib.ExitStack()
        try:
            self.uid = self._stack.enter_context(_UID_POOL.claim()) if _should_drop_privileges(limits) else None
            self.workdir = self._stack.enter_context(sandbox_dir())
            if self.uid is not None:
                _chown_tree(self.workdir, self.uid)
            env = child_env(self.workdir) if env is None else env
            self.stderr_path = os.path.join(self.workdir, "worker.stderr")
            rlimits = [(which, values) for which, values in _rlimits(limits, dropping=self.uid is not None)
                       if which != resource.RLIMIT_CPU]
            isolation = _isolation_for(argv[0], argv, self.workdir, env, read_paths, limits, self.uid)
            with open(self.stderr_path, "wb") as stderr:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=self.workdir,
                    env=dict(env), start_new_session=True,
                    preexec_fn=_child_setup(rlimits, self.uid, isolation))  # noqa: PLW1509 (see _run)
        except BaseException:
            self._stack.close()
            raise
        _LIVE_GROUPS.add(self.proc.pid, self.uid)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.stdout = self.proc.stdout

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @contextlib.contextmanager
    def subfolder(self) -> Iterator[str]:
        """A fresh folder inside the process's own, writable by it (and by what it forks), removed after."""
        path = tempfile.mkdtemp(prefix="run-", dir=self.workdir)
        try:
            if self.uid is not None:
                _chown_tree(path, self.uid)
            yield path
        finally:
            _remove_tree(path)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()
        _LIVE_GROUPS.discard(self.proc.pid)
        if self.proc.returncode is None:
            _kill_and_reap(self.proc, self.uid)
        elif self.uid is not None:
            _kill_user_processes(self.uid)
        self.stdout.close()
        self._stack.close()
