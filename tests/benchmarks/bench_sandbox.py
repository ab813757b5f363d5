"""Throughput of nextls.sandbox.run_process on MBPP-size programs, next to plain subprocess.run.

Each run writes one MBPP reference solution, its setup code and its asserts into a fresh directory and runs
``python program.py`` there, as training's filter step does. Prints runs/s, tests/s and pass counts for
the sandbox (with its namespaces, and without them: ``Limits(isolate=False)``) and for the bare
``subprocess.run`` baseline, sequentially and with 2 worker threads. They alternate for ``--rounds``
rounds and the best round of each is shown, so that load from other processes on the machine skews the
comparison less. The last lines give the fixed cost per run, running /bin/true: bare, in the sandbox
without and with namespaces, and (where it is installed) under bubblewrap with the same filesystem view.

    python tests/benchmarks/bench_sandbox.py [--programs 100] [--rounds 3] [--mbpp PATH]
"""

from __future__ import annotations

import os

# Idle OpenMP threads spin by default and would steal the CPUs being measured; set before anything loads.
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nextls.sandbox import Limits, Outcome, child_env, run_process, sandbox_dir

DEFAULT_MBPP = Path("/work/shared/data/mbpp/mbpp.jsonl")
LIMITS = Limits(wall_time=10.0)
UNISOLATED = Limits(wall_time=10.0, isolate=False)
# What the sandbox's namespaces do, as bubblewrap options: a read-only system, private temporary
# folders, no network, no shared IPC, death with the parent.
BWRAP = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp",
         "--unshare-net", "--unshare-ipc", "--die-with-parent"]


@dataclass(frozen=True)
class Program:
    source: str
    tests: int


def load_programs(path: Path, count: int) -> list[Program]:
    programs = []
    with path.open() as lines:
        for line in lines:
            task = json.loads(line)
            source = "\n".join([task["code"], task.get("test_setup_code", ""), *task["test_list"], ""])
            programs.append(Program(source, len(task["test_list"])))
            if len(programs) == count:
                break
    return programs


def run_in_sandbox(program: Program, limits: Limits = LIMITS) -> bool:
    with sandbox_dir() as workdir:
        Path(workdir, "program.py").write_text(program.source)
        result = run_process([sys.executable, "program.py"], cwd=workdir, limits=limits)
    return result.outcome is Outcome.OK


def run_in_sandbox_unisolated(program: Program) -> bool:
    return run_in_sandbox(program, UNISOLATED)


def run_bare(program: Program) -> bool:
    with tempfile.TemporaryDirectory() as workdir:
        Path(workdir, "program.py").write_text(program.source)
        result = subprocess.run(
            [sys.executable, "program.py"],
            cwd=workdir,
            env=child_env(workdir),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=LIMITS.wall_time,
            check=False,
        )
    return result.returncode == 0


@dataclass(frozen=True)
class Measurement:
    seconds: float
    passed: int


def measure(runner: Callable[[Program], bool], programs: list[Program], workers: int) -> Measurement:
    started = time.perf_counter()
    if workers == 1:
        passed = [runner(program) for program in programs]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            passed = list(pool.map(runner, programs))
    return Measurement(time.perf_counter() - started, sum(passed))


def fixed_cost_ms(spawn: Callable[[], object], runs: int = 200) -> float:
    started = time.perf_counter()
    for _ in range(runs):
        spawn()
    return (time.perf_counter() - started) / runs * 1000


def report(name: str, workers: int, best: Measurement, programs: list[Program]) -> None:
    runs_per_s = len(programs) / best.seconds
    tests_per_s = sum(program.tests for program in programs) / best.seconds
    print(
        f"{name:<24} workers={workers}  {runs_per_s:6.1f} runs/s  {tests_per_s:6.1f} tests/s  "
        f"passed {best.passed}/{len(programs)}  ({best.seconds:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mbpp", type=Path, default=DEFAULT_MBPP)
    args = parser.parse_args()
    programs = load_programs(args.mbpp, args.programs)
    print(f"{len(programs)} MBPP programs, {sum(p.tests for p in programs)} asserts; python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, euid {os.geteuid()}")
    run_in_sandbox(programs[0])  # warm up the page cache and the sandbox's one-time setup
    for workers in (1, 2):
        runners = {"subprocess.run": run_bare, "sandbox, no namespaces": run_in_sandbox_unisolated,
                   "sandbox.run_process": run_in_sandbox}
        rounds = [{name: measure(runner, programs, workers) for name, runner in runners.items()}
                  for _ in range(args.rounds)]
        best = {name: min((one[name] for one in rounds), key=lambda m: m.seconds) for name in runners}
        for name, measurement in best.items():
            report(name, workers, measurement, programs)
        ratios = {name: best[name].seconds / best["subprocess.run"].seconds for name in runners}
        print(f"{'':<24} time / subprocess.run time: no namespaces {ratios['sandbox, no namespaces']:.3f}, "
              f"sandbox {ratios['sandbox.run_process']:.3f}")
    costs = {
        "subprocess.run": fixed_cost_ms(lambda: run_bare_argv(["/bin/true"])),
        "sandbox, no namespaces": fixed_cost_ms(lambda: run_process(["/bin/true"], limits=UNISOLATED)),
        "sandbox.run_process": fixed_cost_ms(lambda: run_process(["/bin/true"])),
    }
    if shutil.which("bwrap"):
        costs["bwrap"] = fixed_cost_ms(lambda: run_bare_argv(["bwrap", *BWRAP, "/bin/true"]))
    print("/bin/true per run: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in costs.items()))


def run_bare_argv(argv: list[str]) -> None:
    subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=True)


if __name__ == "__main__":
    main()
