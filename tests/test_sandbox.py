"""The sandbox against real misbehaving programs: each must be contained and reported as the right kind."""

from __future__ import annotations

import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from processes import is_alive, pids_whose_cmdline_contains

from nextls.sandbox import (
    Limits,
    Outcome,
    ProcessResult,
    python_argv,
    run_process,
    sandbox_dir,
    set_global_limits,
)

IS_ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not IS_ROOT, reason="the sandbox drops privileges only when run as root")
DEFAULT_LIMITS = Limits()


def run_python(code: str, *, limits: Limits = DEFAULT_LIMITS, **options) -> ProcessResult:
    """`code` run by this interpreter through `run_process` (options: cancel, env, pass_fds, read_paths)."""
    return run_process(python_argv(sys.executable, "-c", code), limits=limits, **options)


def timed(call: Callable[[], ProcessResult]) -> tuple[ProcessResult, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started




def test_normal_exit_is_ok_with_stdout_and_stderr() -> None:
    result = run_python("import sys; print('hello'); print('warn', file=sys.stderr)")
    assert result.outcome is Outcome.OK
    assert (result.returncode, result.signal) == (0, None)
    assert result.stdout == "hello\n"
    assert result.stderr == "warn\n"
    assert not result.output_truncated
    assert 0 < result.wall_time < 5


@pytest.mark.parametrize(
    ("code", "returncode"),
    [("import sys; sys.exit(3)", 3), ("import os; os._exit(7)", 7), ("raise ValueError('boom')", 1)],
)
def test_nonzero_exit_is_exited(code: str, returncode: int) -> None:
    result = run_python(code)
    assert result.outcome is Outcome.EXITED
    assert (result.returncode, result.signal) == (returncode, None)


def test_uncaught_exception_traceback_is_in_stderr() -> None:
    result = run_python("raise ValueError('boom')")
    assert "ValueError: boom" in result.stderr


@pytest.mark.parametrize("code", ["import time; time.sleep(100)", "while True: pass"])
def test_endless_program_times_out_on_wall_time(code: str) -> None:
    result, elapsed = timed(lambda: run_python(code, limits=Limits(wall_time=1.0)))
    assert result.outcome is Outcome.TIMEOUT
    assert result.signal == signal.SIGKILL
    assert 1.0 <= result.wall_time < 1.5
    assert elapsed < 2.0


def test_cpu_limit_times_out_before_wall_time() -> None:
    result, elapsed = timed(lambda: run_python("while True: pass", limits=Limits(wall_time=10, cpu_time=1)))
    assert result.outcome is Outcome.TIMEOUT
    assert result.signal == signal.SIGXCPU
    assert elapsed < 4.0


def test_cpu_limit_defaults_from_wall_time() -> None:
    assert Limits(wall_time=2.5).cpu_seconds == 4
    assert Limits(wall_time=2.5, cpu_time=0.5).cpu_seconds == 1


@pytest.mark.parametrize(
    "code",
    ["x = bytearray(10**10)", "chunks = []\nwhile True:\n    chunks.append(b'x' * 100_000 + bytes(len(chunks)))"],
    ids=["one-huge-allocation", "growing-list"],
)
def test_memory_bomb_is_crashed(code: str) -> None:
    """The memory limit surfaces as Python's MemoryError (exit code 1), which the sandbox reports as
    CRASHED; a program dying of it by a signal (a C allocation failing badly) is CRASHED too."""
    result, elapsed = timed(lambda: run_python(code, limits=Limits(wall_time=10, memory_bytes=256 << 20)))
    assert result.outcome is Outcome.CRASHED
    assert "MemoryError" in result.stderr or result.signal is not None
    assert elapsed < 8.0


@pytest.mark.parametrize(
    "code",
    [
        "import sys; print('MemoryError', file=sys.stderr); print('later', file=sys.stderr); sys.exit(1)",
        "import sys; print('MemoryError', file=sys.stderr); sys.exit(2)",
    ],
    ids=["not-the-last-line", "not-an-uncaught-exception"],
)
def test_memory_error_text_alone_is_not_a_crash(code: str) -> None:
    assert run_python(code).outcome is Outcome.EXITED


COUNT_FORKS = """
import os, time
forks = 0
while True:
    try:
        if os.fork() == 0:
            time.sleep(100)
    except OSError:
        break
    forks += 1
print(forks)
"""


FORK_BOMB = """
# fork-bomb-{marker}
import os, time
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.001)
"""


def test_fork_bomb_is_contained_and_nothing_of_it_survives() -> None:
    marker = f"{os.getpid()}-{time.monotonic_ns()}"
    limits = Limits(wall_time=2.0, max_processes=32)
    result, elapsed = timed(lambda: run_python(FORK_BOMB.format(marker=marker), limits=limits))
    assert result.outcome in (Outcome.TIMEOUT, Outcome.EXITED)
    assert elapsed < 5.0
    survivors = [pid for pid in pids_whose_cmdline_contains(f"fork-bomb-{marker}") if is_alive(pid)]
    assert survivors == []
    if IS_ROOT:  # its dead processes were reaped too: they no longer count against the next run's limit
        after = run_python(COUNT_FORKS, limits=Limits(wall_time=5.0, max_processes=16))
        assert after.stdout == "15\n", after.stderr


@root_only
def test_process_limit_applies_although_we_are_root() -> None:
    result = run_python(COUNT_FORKS, limits=Limits(wall_time=5.0, max_processes=16))
    assert result.outcome is Outcome.OK, result.stderr
    assert int(result.stdout) == 15  # the leader counts as one of the 16


def test_huge_output_is_capped_and_fast() -> None:
    code = "import sys; sys.stdout.write('o' * 100_000_000); sys.stderr.write('e' * 3_000_000)"
    limits = Limits(output_bytes=1 << 20)
    result, elapsed = timed(lambda: run_python(code, limits=limits))
    assert result.outcome is Outcome.OK
    assert result.stdout == "o" * (1 << 20)
    assert result.stderr == "e" * (1 << 20)
    assert result.stdout_truncated and result.stderr_truncated and result.output_truncated
    assert elapsed < 5.0


def test_output_at_the_cap_is_not_truncated() -> None:
    result = run_python("print('x' * 99)", limits=Limits(output_bytes=100))
    assert result.stdout == "x" * 99 + "\n"
    assert not result.stdout_truncated


def test_invalid_utf8_is_replaced() -> None:
    result = run_python("import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe')")
    assert result.stdout == "ok \ufffd\ufffd"


def test_segfault_is_crashed_with_sigsegv() -> None:
    result = run_python("import ctypes; ctypes.string_at(0)")
    assert result.outcome is Outcome.CRASHED
    assert result.signal == signal.SIGSEGV
    assert result.returncode is None


def test_abort_is_crashed_with_sigabrt() -> None:
    result = run_python("import os; os.abort()")
    assert (result.outcome, result.signal) == (Outcome.CRASHED, signal.SIGABRT)


def test_background_child_is_killed_when_the_program_exits() -> None:
    code = "import subprocess; print(subprocess.Popen(['sleep', '1000']).pid)"
    result, elapsed = timed(lambda: run_python(code))
    assert result.outcome is Outcome.OK
    assert elapsed < 2.0  # the sleeper holds the output pipes: returning at all shows it was killed
    assert not is_alive(int(result.stdout))


@root_only
def test_process_that_left_the_group_is_killed_too() -> None:
    code = "import os, time\npid = os.fork()\nif pid == 0:\n    os.setsid(); time.sleep(1000)\nprint(pid)"
    result, elapsed = timed(lambda: run_python(code))
    assert result.outcome is Outcome.OK
    assert elapsed < 2.0
    assert not is_alive(int(result.stdout))


def test_cancel_from_another_thread_is_prompt() -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    result, elapsed = timed(lambda: run_python("while True: pass", cancel=cancel, limits=Limits(wall_time=10)))
    assert result.outcome is Outcome.CANCELLED
    assert elapsed < 0.3 + 0.5


def test_cancel_already_set_does_not_run_to_completion() -> None:
    cancel = threading.Event()
    cancel.set()
    result = run_python("import time; time.sleep(5); print('finished')", cancel=cancel)
    assert result.outcome is Outcome.CANCELLED
    assert result.stdout == ""


def test_stdin_is_closed() -> None:
    result = run_python("try:\n    input()\nexcept EOFError:\n    print('eof')")
    assert (result.outcome, result.stdout) == (Outcome.OK, "eof\n")


def test_default_cwd_is_a_fresh_writable_directory_removed_afterwards() -> None:
    code = "import os; open('scratch.txt', 'w').write('x'); print(os.getcwd()); print(os.listdir('.'))"
    first, second = run_python(code), run_python(code)
    for result in (first, second):
        assert result.outcome is Outcome.OK, result.stderr
        assert result.stdout.splitlines()[1] == "['scratch.txt']"
    first_dir, second_dir = first.stdout.splitlines()[0], second.stdout.splitlines()[0]
    assert first_dir != second_dir
    assert not os.path.exists(first_dir) and not os.path.exists(second_dir)


def test_sandbox_dir_files_reach_the_child_and_back() -> None:
    with sandbox_dir() as workdir:
        program = Path(workdir, "program.py")
        program.write_text("print(open('input.txt').read()); open('output.txt', 'w').write('from child')")
        secret_input = Path(workdir, "input.txt")
        secret_input.write_text("from caller")
        secret_input.chmod(stat.S_IRUSR)  # readable by the owner only: the child must still read it
        result = run_process(python_argv(sys.executable, "program.py"), cwd=workdir)
        assert result.outcome is Outcome.OK, result.stderr
        assert result.stdout == "from caller\n"
        assert Path(workdir, "output.txt").read_text() == "from child"
    assert not os.path.exists(workdir)


def test_read_only_directories_left_by_the_child_are_removed() -> None:
    code = "import os; os.makedirs('locked/inner'); open('locked/inner/f', 'w').close(); os.chmod('locked', 0o500)"
    with sandbox_dir() as workdir:
        assert run_process(python_argv(sys.executable, "-c", code), cwd=workdir).outcome is Outcome.OK
    assert not os.path.exists(workdir)


def test_missing_executable_raises_naming_it() -> None:
    with pytest.raises(FileNotFoundError, match=r"no-such-python-3\.99"):
        run_process(["no-such-python-3.99", "-c", "pass"])


def test_default_env_is_reproducible_and_given_env_is_passed_through() -> None:
    code = "import os; print(os.environ.get('PYTHONHASHSEED'), os.environ.get('SANDBOX_TEST'))"
    assert run_python(code).stdout == "0 None\n"
    assert run_python(code, env={"SANDBOX_TEST": "yes"}).stdout == "None yes\n"


def test_pass_fds_reach_the_child() -> None:
    read_fd, write_fd = os.pipe()
    try:
        result = run_python(f"import os; os.write({write_fd}, b'through')", pass_fds=[write_fd])
        assert result.outcome is Outcome.OK, result.stderr
        assert os.read(read_fd, 100) == b"through"
    finally:
        os.close(read_fd)
        os.close(write_fd)


@root_only
def test_child_runs_as_an_unprivileged_sandbox_user() -> None:
    code = (
        "import os\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), status['NoNewPrivs'].strip())"
    )
    result = run_python(code)
    uid, euid, gid, groups, no_new_privs = result.stdout.split(maxsplit=4)
    assert int(uid) != 0 and uid == euid == gid
    assert groups.strip() == "[]"
    assert no_new_privs.strip() == "1"


@root_only
def test_concurrent_runs_get_distinct_sandbox_users() -> None:
    code = "import os, time; time.sleep(0.5); print(os.getuid())"
    set_global_limits(max_processes=3)  # the default follows the core count
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(lambda _: run_python(code), range(3)))
    finally:
        set_global_limits()
    assert all(result.outcome is Outcome.OK for result in results)
    assert len({result.stdout for result in results}) == 3


def test_privileges_are_kept_when_asked() -> None:
    result = run_python("import os; print(os.getuid())", limits=Limits(drop_privileges=False))
    assert result.stdout == f"{os.getuid()}\n"


def test_works_without_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels before 5.3 and other systems have no pidfd: a waiting thread stands in."""
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    assert run_python("print('ok')").stdout == "ok\n"
    result, elapsed = timed(lambda: run_python("import time; time.sleep(100)", limits=Limits(wall_time=0.5)))
    assert result.outcome is Outcome.TIMEOUT
    assert elapsed < 1.5
