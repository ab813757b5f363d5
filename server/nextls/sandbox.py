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

Running as root (CI, the training machine): the kernel never applies RLIMIT_NPROC to root, so a fork
bomb would go unchecked. When the runner's euid is 0 the child therefore switches, before exec, to a
dedicated unprivileged uid/gid taken from a pool (60000 + slot, as the IOI ``isolate`` sandbox does). Each
concurrent run gets its own uid (claimed with a lock file, so concurrent runner processes never share
one), because RLIMIT_NPROC counts every process of a uid. That also lets the runner find and kill
processes that escaped the process group with ``setsid()``: after each run it kills whatever that uid
still owns. The child keeps one capability, CAP_DAC_READ_SEARCH (or, where the container lacks it,
CAP_DAC_OVERRIDE), so it can still read the interpreter and libraries in root-only places such as
``/root/.pyenv``, and it gets no_new_privs so setuid binaries cannot give root back. The runner makes
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

import contextlib
import ctypes
import fcntl
import functools
import logging
import math
import os
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "Limits",
    "Outcome",
    "ProcessResult",
    "default_env",
    "python_argv",
    "run_process",
    "sandbox_dir",
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

# Linux constants (linux/prctl.h, linux/capability.h).
_PR_SET_KEEPCAPS = 8
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


def default_env() -> dict[str, str]:
    """The child's environment when the caller gives none: ours, plus reproducible Python settings."""
    return {**os.environ, **_PYTHON_ENV}


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
    uid first, so the child can read and write them."""
    path = tempfile.mkdtemp(prefix="nextls-sandbox-")
    _SANDBOX_DIRS.add(path)
    try:
        yield path
    finally:
        _SANDBOX_DIRS.discard(path)
        _remove_tree(path)


def run_process(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    limits: Limits = Limits(),
    cancel: threading.Event | None = None,
    pass_fds: Sequence[int] = (),
) -> ProcessResult:
    """Run ``argv`` contained (see the module docstring) and report how it ended.

    ``cwd=None`` runs in a fresh temporary directory, removed afterwards. A ``cwd`` from
    :func:`sandbox_dir` is handed to the sandbox uid (when there is one); any other ``cwd`` is left as it
    is, so the sandbox uid can read it but may not be able to write there. ``env=None`` uses
    :func:`default_env`. Raises ``FileNotFoundError``/``PermissionError`` naming ``argv[0]`` when it
    cannot be started. Thread-safe; nothing the child started is alive when this returns.
    """
    if not argv:
        raise ValueError("argv is empty")
    argv = [os.fspath(arg) for arg in argv]
    with contextlib.ExitStack() as stack:
        uid = stack.enter_context(_UID_POOL.claim()) if _should_drop_privileges(limits) else None
        workdir = stack.enter_context(sandbox_dir()) if cwd is None else os.path.abspath(cwd)
        if uid is not None and workdir in _SANDBOX_DIRS:
            _chown_tree(workdir, uid)
        return _run(argv, workdir, default_env() if env is None else dict(env), limits, cancel, pass_fds, uid)


def _run(
    argv: list[str],
    workdir: str,
    env: dict[str, str],
    limits: Limits,
    cancel: threading.Event | None,
    pass_fds: Sequence[int],
    uid: int | None,
) -> ProcessResult:
    child_setup = _child_setup(_rlimits(limits, dropping=uid is not None), uid)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
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
    pipes = _Pipes(proc.stdout.fileno(), proc.stderr.fileno(), limits.output_bytes)
    try:
        with _exit_notifier(proc.pid) as exit_fd:
            stop_reason = pipes.pump(exit_fd, started + limits.wall_time, cancel)
        wall_time = time.monotonic() - started
    finally:
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
    if stop_reason is not None:
        outcome = stop_reason
    elif killed_by is not None:
        cpu_used = rusage.ru_utime + rusage.ru_stime
        # SIGXCPU at the soft CPU limit; SIGKILL at the hard one if the program caught SIGXCPU.
        hit_cpu_limit = killed_by == signal.SIGXCPU or (
            killed_by == signal.SIGKILL and cpu_used >= limits.cpu_seconds
        )
        outcome = Outcome.TIMEOUT if hit_cpu_limit else Outcome.CRASHED
    elif returncode == 0:
        outcome = Outcome.OK
    elif returncode == 1 and _ends_with_memory_error(pipes.stderr.tail):  # 1: an uncaught exception
        outcome = Outcome.CRASHED
    else:
        outcome = Outcome.EXITED
    return ProcessResult(
        outcome=outcome,
        returncode=returncode,
        signal=killed_by,
        stdout=pipes.stdout.text(),
        stderr=pipes.stderr.text(),
        stdout_truncated=pipes.stdout.truncated,
        stderr_truncated=pipes.stderr.truncated,
        wall_time=wall_time,
    )


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


def _child_setup(rlimits: list[tuple[int, tuple[int, int]]], uid: int | None) -> Callable[[], None]:
    """The preexec_fn: runs in the forked child, so it only makes syscalls prepared beforehand."""
    setrlimit = resource.setrlimit
    become_sandbox_user = _SandboxUser(uid, _read_access_capability()).assume if uid is not None else None

    def setup() -> None:
        for which, values in rlimits:
            setrlimit(which, values)
        if become_sandbox_user is not None:
            become_sandbox_user()

    return setup


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class _SandboxUser:
    """Switches the (forked) calling process to the sandbox uid/gid, keeping one read capability."""

    def __init__(self, uid: int, keep_capability: int | None) -> None:
        self._uid = uid
        self._capset = _libc_function("capset")
        _libc_function("prctl")  # resolved here, in the parent, for _prctl in the child
        self._keep = keep_capability
        self._header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        self._data = (_CapData * 2)()
        if keep_capability is not None:
            bit = 1 << keep_capability  # capabilities below 32 live in the first word
            self._data[0] = _CapData(bit, bit, bit)

    def assume(self) -> None:
        _prctl(_PR_SET_KEEPCAPS, 1)  # keep the permitted set across setresuid, to keep one capability
        os.setgroups([])
        os.setresgid(self._uid, self._uid, self._uid)
        os.setresuid(self._uid, self._uid, self._uid)
        if self._keep is not None:
            # Ambient capabilities survive execve of ordinary programs, and are inherited by children.
            _checked(self._capset(ctypes.byref(self._header), self._data))
            _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, self._keep)
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)


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
        uid, lock_fd = self._acquire()
        try:
            yield uid
        finally:
            os.close(lock_fd)  # releases the flock
            with self._lock:
                self._in_use.discard(uid)

    def _acquire(self) -> tuple[int, int]:
        lock_dir = _private_dir(os.path.join(tempfile.gettempdir(), "nextls-sandbox-uids"))
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        with self._lock:
            for uid in range(_UID_BASE, _UID_BASE + _UID_SLOTS):
                if uid in self._in_use:
                    continue
                lock_fd = os.open(os.path.join(lock_dir, str(uid)), flags, 0o600)
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another runner process has it
                    os.close(lock_fd)
                    continue
                self._in_use.add(uid)
                return uid, lock_fd
        raise RuntimeError(f"all {_UID_SLOTS} sandbox uids from {_UID_BASE} are in use")


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
    the rlimits of ``limits`` (the CPU limit left to whoever it forks per run), the sandbox uid as root, a
    fresh working folder of its own. Talk to it through ``stdin`` / ``stdout``; its stderr goes to
    ``stderr_path`` in that folder. ``close()`` kills its group and whatever its uid still runs, and removes
    the folder."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], limits: Limits) -> None:
        self._stack = contextlib.ExitStack()
        try:
            self.uid = self._stack.enter_context(_UID_POOL.claim()) if _should_drop_privileges(limits) else None
            self.workdir = self._stack.enter_context(sandbox_dir())
            if self.uid is not None:
                _chown_tree(self.workdir, self.uid)
            self.stderr_path = os.path.join(self.workdir, "worker.stderr")
            rlimits = [(which, values) for which, values in _rlimits(limits, dropping=self.uid is not None)
                       if which != resource.RLIMIT_CPU]
            with open(self.stderr_path, "wb") as stderr:
                self.proc = subprocess.Popen(
                    [os.fspath(arg) for arg in argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=stderr, cwd=self.workdir, env=dict(env), start_new_session=True,
                    preexec_fn=_child_setup(rlimits, self.uid))  # noqa: PLW1509 (see _run)
        except BaseException:
            self._stack.close()
            raise
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.stdout = self.proc.stdout

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()
        if self.proc.returncode is None:
            _kill_and_reap(self.proc, self.uid)
        elif self.uid is not None:
            _kill_user_processes(self.uid)
        self.stdout.close()
        self._stack.close()
