"""Issue 14, the sandbox half: nothing a sandboxed program starts outlives the server, the program gets
a minimal environment, no capability, a read-only system with private temporary folders and no network,
and a global cap bounds how many such programs run at once."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from processes import is_alive
from test_sandbox import IS_ROOT, root_only, run_python

from nextls import sandbox
from nextls.sandbox import (
    Limits,
    Outcome,
    ProcessResult,
    child_env,
    kill_all_children,
    process_slot,
    remove_stale_sandboxes,
    sandbox_dir,
    set_global_limits,
)

needs_namespaces = pytest.mark.skipif(
    not sandbox._namespaces_available(), reason="this kernel refuses private mount/network namespaces")


def wait_for(condition, timeout: float) -> bool:
    give_up_at = time.monotonic() + timeout
    while time.monotonic() < give_up_at:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# --- environment ----------------------------------------------------------------------------------------


def test_child_env_has_the_basics_and_none_of_our_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("API_KEY", "sk-secret")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("MYAPP_MODE", "fast")
    env = child_env(tmp_path, allow=["MYAPP_*"])
    assert "API_KEY" not in env
    assert (env["LC_TIME"], env["MYAPP_MODE"]) == ("C", "fast")
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path)
    assert env["PATH"] == os.environ.get("PATH", os.defpath)
    assert env["PYTHONHASHSEED"] == "0"
    assert "MYAPP_MODE" not in child_env(tmp_path)


def test_child_env_refuses_a_single_string_as_allow_list(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not one string"):
        child_env(tmp_path, allow="MYAPP_MODE")


def test_the_server_environment_does_not_reach_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "sk-secret")
    result = run_python("import os; print(os.environ.get('API_KEY'), os.environ['HOME'] == os.getcwd())")
    assert result.stdout == "None True\n", result.stderr


@pytest.mark.skipif(not (IS_ROOT or sandbox._namespaces_available()),
                    reason="without namespaces a user's program runs as the user, who may read the server's /proc")
def test_the_server_environment_cannot_be_read_from_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "sk-secret")
    result = run_python(f"open('/proc/{os.getpid()}/environ', 'rb').read()")
    assert "PermissionError" in result.stderr, result.stderr


# --- nothing outlives the server ------------------------------------------------------------------------

# A stand-in for the server: runs a sandboxed program that ignores SIGTERM and records its pid in its
# working folder, then waits to be killed.
SERVER = textwrap.dedent("""
    import sys
    from nextls.sandbox import Limits, python_argv, run_process
    program = "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \\
              "open('pid', 'w').write(str(os.getpid())); time.sleep(1000)"
    run_process(python_argv(sys.executable, "-c", program), limits=Limits(wall_time=600))
""")


def test_a_killed_servers_program_dies_and_its_folder_goes_at_the_next_start() -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER])
    try:
        pattern = os.path.join(tempfile.gettempdir(), f"nextls-sandbox-{server.pid}.*", "pid")
        assert wait_for(lambda: any(Path(path).stat().st_size for path in glob.glob(pattern)), 30)
        folder = os.path.dirname(glob.glob(pattern)[0])
        program = int(Path(folder, "pid").read_text())
        assert is_alive(program)
    finally:
        server.kill()
        server.wait()
    assert wait_for(lambda: not is_alive(program), 5), "the program outlived the server"
    assert os.path.isdir(folder)  # the server had no chance to clean up
    with sandbox_dir() as live:
        removed = remove_stale_sandboxes()
        assert folder in removed
        assert not os.path.exists(folder)
        assert os.path.isdir(live)  # ours: we are alive


def test_kill_all_children_ends_every_running_program() -> None:
    read_fd, write_fd = os.pipe()
    code = f"import os, time; os.write({write_fd}, b'up'); time.sleep(100)"
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = [pool.submit(run_python, code, limits=Limits(wall_time=60), pass_fds=[write_fd]) for _ in range(2)]
            assert os.read(read_fd, 2) == b"up" and os.read(read_fd, 2) == b"up"
            started = time.monotonic()
            kill_all_children()
            results = [run.result(timeout=10) for run in runs]
        assert time.monotonic() - started < 5
        assert all((result.outcome, result.signal) == (Outcome.CRASHED, signal.SIGKILL) for result in results)
    finally:
        os.close(read_fd)
        os.close(write_fd)


# --- privileges -----------------------------------------------------------------------------------------

CAPABILITIES = (
    "import os\n"
    "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
    "print([status[name].strip() for name in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')], os.getgroups())"
)


@pytest.mark.skipif(not (IS_ROOT or sandbox._namespaces_available()),
                    reason="a user's program keeps the user's bounding set when there are no namespaces")
def test_program_has_no_capability_in_any_set_and_no_supplementary_group() -> None:
    result = run_python(CAPABILITIES)
    assert result.stdout == f"{['0000000000000000'] * 5} []\n", result.stderr


@root_only
def test_root_only_files_stay_unreadable(tmp_path: Path) -> None:
    """The folder is granted (the program must read the project), its 0600 file is still root's."""
    (tmp_path / "public.txt").write_text("public")
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$hash")
    secret.chmod(0o600)
    code = textwrap.dedent(f"""
        print(open({str(tmp_path / 'public.txt')!r}).read())
        for path in ({str(secret)!r}, '/etc/shadow'):
            try:
                open(path).read()
                print('read', path)
            except PermissionError:
                print('denied')
            except FileNotFoundError:
                print('denied')  # a system without /etc/shadow
    """)
    result = run_python(code, read_paths=[tmp_path])
    assert result.stdout == "public\ndenied\ndenied\n", result.stderr


# --- filesystem and network -----------------------------------------------------------------------------


@needs_namespaces
def test_writes_to_shared_temporary_folders_stay_private_and_vanish() -> None:
    name = f"nextls-probe-{os.getpid()}-{time.monotonic_ns()}"
    code = textwrap.dedent(f"""
        for folder in ('/tmp', '/var/tmp', '/dev/shm'):
            open(folder + '/{name}', 'w').write('x')
        print('written')
    """)
    result = run_python(code)
    assert result.stdout == "written\n", result.stderr
    for folder in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not os.path.exists(os.path.join(folder, name))


@needs_namespaces
def test_system_is_read_only_even_where_permissions_allow_writing(tmp_path: Path) -> None:
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    code = f"open({str(open_to_all / 'planted')!r}, 'w')"
    result = run_python(code, read_paths=[open_to_all])
    assert "Read-only file system" in result.stderr
    assert not (open_to_all / "planted").exists()
    assert run_python("open('mine', 'w').write('x')").outcome is Outcome.OK  # its own folder is writable


@needs_namespaces
def test_folders_outside_the_grants_are_hidden_under_private_tmp(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("project")
    code = f"print(open({str(tmp_path / 'data.txt')!r}).read())"
    assert run_python(code, read_paths=[tmp_path]).stdout == "project\n"
    if str(tmp_path).startswith(os.path.realpath(tempfile.gettempdir()) + os.sep):
        assert "FileNotFoundError" in run_python(code).stderr


@needs_namespaces
def test_no_network_unless_asked() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')"
        cut_off = run_python(code)
        assert cut_off.outcome is Outcome.EXITED and "connected" not in cut_off.stdout
        assert run_python(code, limits=Limits(network=True)).stdout == "connected\n"


# --- the global cap -------------------------------------------------------------------------------------


@pytest.fixture
def global_limits() -> Iterator[None]:
    yield
    set_global_limits()  # back to the defaults


SPAN = "import time; start = time.time(); time.sleep(0.4); print(start, time.time())"


def most_at_once(results: list[ProcessResult]) -> int:
    spans = [tuple(map(float, result.stdout.split())) for result in results]
    return max(sum(start <= at < end for start, end in spans) for at, _ in spans)


def run_together(count: int, limits: Limits) -> list[ProcessResult]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(lambda _: run_python(SPAN, limits=limits), range(count)))
    assert all(result.outcome is Outcome.OK for result in results), [result.stderr for result in results]
    return results


def test_global_cap_on_programs_running_at_once(global_limits: None) -> None:
    set_global_limits(max_processes=2)
    assert most_at_once(run_together(5, Limits())) == 2


def test_global_cap_on_their_total_memory(global_limits: None) -> None:
    set_global_limits(max_processes=8, max_memory_bytes=700 << 20)
    assert most_at_once(run_together(4, Limits(memory_bytes=300 << 20))) == 2


def test_a_run_waiting_for_room_can_be_cancelled(global_limits: None) -> None:
    set_global_limits(max_processes=1)
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(run_python, "import time; time.sleep(3)")
        time.sleep(0.5)
        threading.Timer(0.2, cancel.set).start()
        started = time.monotonic()
        waiting = run_python("print('ran')", cancel=cancel)
        assert time.monotonic() - started < 2
        assert (waiting.outcome, waiting.stdout) == (Outcome.CANCELLED, "")
        busy.cancel()


def test_programs_started_elsewhere_count_against_the_cap(global_limits: None) -> None:
    set_global_limits(max_processes=1)
    with process_slot(memory_bytes=None) as held:
        assert held
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        assert run_python("print('ran')", cancel=cancel).outcome is Outcome.CANCELLED
    assert run_python("print('ran')").stdout == "ran\n"


@pytest.mark.parametrize("bad", [{"max_processes": 0}, {"max_memory_bytes": -1}, {"max_processes": 2.5}])
def test_global_limits_refuse_nonsense(bad: dict) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        set_global_limits(**bad)


@needs_namespaces
def test_an_interpreter_under_tmp_is_isolated_too(tmp_path):
    """A venv in /tmp (a fresh clone there, CI's checkout) sits under the folder the namespace replaces with a
    private one: the probe must grant the interpreter as the runs do, or isolation is switched off."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    server = Path(sandbox.__file__).resolve().parents[1]
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "from nextls import sandbox; print(sandbox._namespaces_available())"],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(server)}, capture_output=True, text=True,
        check=True, timeout=120)
    assert probe.stdout.strip() == "True", probe.stderr
