"""Stage 2: keep only the samples whose fix passes all the task's tests, verified as the server verifies.

Each sample goes through `nextls.fix.verify_answer`, the server's own check: parse the answer, splice its
function into the buggy module, run every visible test in the sandbox (`nextls.runner`). "verified" (all
tests pass) is kept. Verdicts are appended to `verdicts.jsonl` as they come (resumable, keyed by (task,
index)); samples of one task with the same code (normalized AST) share one sandbox run. `workers` runs go
in parallel. At the end `kept.jsonl` holds the kept samples as training examples: the rationale and the
fixed code, re-assembled into the answer shape the server parses (`nextls.prompt.format_answer`).

The same stage scores an evaluation: pass@1 is the mean over tasks of (passing samples / samples).
"""

from __future__ import annotations

import ast
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from nextls.answer import parse_answer
from nextls.fix import verify_answer
from nextls.patch import PatchError
from nextls.prompt import format_answer
from nextls.runner import RunConfig, TestCase
from nextls.sandbox import Limits
from nextls.splice import parse_python
from nextls.trace.render import strip_trace_comments
from nextls_train.config import FilterConfig
from nextls_train.data import TaskRecord
from nextls_train.records import AppendLog, Logger, repair_task, write_jsonl
from nextls_train.sample import read_samples

VERDICTS = "verdicts.jsonl"
KEPT = "kept.jsonl"


class TaskFiles:
    """Each task's buggy module and tests written once to real files (traces and tracebacks name them)."""

    def __init__(self, tasks: Sequence[TaskRecord]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="nextls-filter-"))
        self.tasks = {task.id: task for task in tasks}
        self._made: dict[str, tuple[Path, list[TestCase]]] = {}
        self._lock = threading.Lock()

    def get(self, task_id: str) -> tuple[Path, list[TestCase]]:
        with self._lock:
            if task_id not in self._made:
                task = self.tasks[task_id]
                folder = self.root / f"t{len(self._made)}"
                folder.mkdir()
                solution = folder / "solution.py"
                solution.write_text(task.buggy_code, encoding="utf-8")
                tests_file = folder / "tests.py"
                lines: list[str] = []
                cases = []
                for test in task.tests:
                    line = len(lines) + 1
                    lines.extend([*test.rstrip("\n").split("\n"), ""])
                    cases.append(TestCase(id=f"assert:tests.py:{line}", kind="assert", source=test,
                                          file=str(tests_file), line=line))
                tests_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
                self._made[task_id] = (solution, cases)
            return self._made[task_id]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def code_key(code: str | None) -> str | None:
    if code is None:
        return None
    try:
        return ast.dump(parse_python(code))
    except SyntaxError:
        return code


def training_answer(rationale: str, code: str, task: TaskRecord) -> str:
    """A kept answer in the shape the model is taught: its patch of the buggy function, or the whole function
    when the fix needs imports above it (a patch changes the function only)."""
    try:
        return format_answer(rationale, code, original=repair_task(task).code).lstrip()
    except PatchError:
        return format_answer(rationale, code).lstrip()


def verify_sample(task: TaskRecord, text: str, files: TaskFiles, config: FilterConfig) -> dict[str, Any]:
    """The verdict on one answer: status ("verified", "partial", "failing", "rejected"), why, the fix."""
    solution, cases = files.get(task.id)
    limits = Limits(wall_time=config.test_timeout * len(cases) + 10, memory_bytes=config.memory_mb << 20)
    run_config = RunConfig(test_timeout=config.test_timeout, setup_code=task.test_setup, limits=limits)
    checked = verify_answer(text, file=solution, source=task.buggy_code, function=task.function_name,
                            tests=cases, config=run_config)
    candidate = checked.candidate
    code = candidate.code
    if code is not None and candidate.imports:
        code = "\n".join(candidate.imports) + "\n\n\n" + code
    return {"status": checked.status, "reason": checked.reason, "passed": checked.passed,
            "total": len(checked.results), "rationale": candidate.rationale, "code": code}


def run_filter(tasks: Sequence[TaskRecord], samples_dir: Path, out_dir: Path, config: FilterConfig, *,
               log: Logger | None = None, progress: bool = True) -> dict[str, Any]:
    """Verify every sample in `samples_dir`; write `verdicts.jsonl` and `kept.jsonl` to `out_dir`."""
    log = log or Logger()
    out_dir = Path(out_dir)
    by_id = {task.id: task for task in tasks}
    samples = [s for s in read_samples(samples_dir) if s["task"] in by_id]
    files = TaskFiles(tasks)
    started = time.perf_counter()
    summary: dict[str, Any] = {"samples": len(samples), "verified_now": 0, "sandbox_runs": 0}
    try:
        with AppendLog(out_dir / VERDICTS, key=lambda item: (item["task"], item["index"])) as verdicts:
            todo = [s for s in samples if (s["task"], s["index"]) not in verdicts]
            if len(todo) < len(samples):
                log(f"filter: resuming, {len(samples) - len(todo)} of {len(samples)} verdicts on disk")
            # Same task and same code: one sandbox run. Seed the cache with the verdicts on disk.
            cache: dict[tuple[str, str], dict[str, Any]] = {}
            for item in verdicts.items.values():
                if item.get("code") is not None:
                    cache.setdefault((item["task"], code_key(item["code"])), item)
            lock = threading.Lock()

            def check(sample: dict[str, Any]) -> dict[str, Any]:
                task = by_id[sample["task"]]
                verdict = verify_sample(task, sample["text"], files, config)
                with lock:
                    summary["sandbox_runs"] += 1
                return verdict

            def record(sample: dict[str, Any], verdict: dict[str, Any]) -> None:
                item = {"task": sample["task"], "index": sample["index"], **verdict}
                with lock:
                    verdicts.append(item)
                    summary["verified_now"] += 1
                    if item.get("code") is not None:
                        cache.setdefault((item["task"], code_key(item["code"])), item)

            bar = _bar(len(todo), progress)
            # Answers whose code was already judged reuse that verdict; the rest run in the pool.
            with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
                futures = {pool.submit(_check_cached, sample, by_id, cache, lock, check): sample for sample in todo}
                for future in as_completed(futures):
                    record(futures[future], future.result())
                    bar.update(1)
            bar.close()
            all_verdicts = [verdicts.items[(s["task"], s["index"])] for s in samples]
    finally:
        files.close()
    summary["seconds"] = round(time.perf_counter() - started, 2)
    kept = [v for v in all_verdicts if v["status"] == "verified"
            and (v["rationale"].strip() or not config.require_rationale)]
    rows = [{"task": v["task"], "index": v["index"], "rationale": v["rationale"], "code": v["code"],
             "answer": training_answer(v["rationale"], v["code"], by_id[v["task"]])} for v in kept]
    write_jsonl(out_dir / KEPT, rows)
    per_task: dict[str, list[int]] = {}
    for verdict in all_verdicts:
        counts = per_task.setdefault(verdict["task"], [0, 0])
        counts[0] += verdict["status"] == "verified"
        counts[1] += 1
    statuses: dict[str, int] = {}
    for verdict in all_verdicts:
        statuses[verdict["status"]] = statuses.get(verdict["status"], 0) + 1
    summary.update({
        "kept": len(kept), "verified_without_rationale": sum(
            1 for v in all_verdicts if v["status"] == "verified" and not v["rationale"].strip()),
        "statuses": statuses, "tasks": len(per_task),
        "tasks_solved": sum(1 for passed, _ in per_task.values() if passed),
        "pass_at_1": round(sum(p / n for p, n in per_task.values()) / len(per_task), 4) if per_task else 0.0,
        "per_task_pass": {task: round(p / n, 4) for task, (p, n) in per_task.items()},
    })
    return summary


def _check_cached(sample: dict[str, Any], by_id: dict[str, TaskRecord], cache: dict, lock: threading.Lock,
                  check: Any) -> dict[str, Any]:
    task = by_id[sample["task"]]
    parsed = parse_answer(sample["text"], task.function_name, original=repair_task(task).code)
    if parsed.usable:
        code = strip_trace_comments(parsed.code)
        if parsed.imports:
            code = "\n".join(parsed.imports) + "\n\n\n" + code
        with lock:
            hit = cache.get((task.id, code_key(code)))
        # Same code (up to formatting), same verdict; the rationale and the code are this sample's own.
        if hit is not None:
            return {key: hit[key] for key in ("status", "reason", "passed", "total")} | {
                "rationale": parsed.rationale, "code": code, "cached": True}
    return check(sample)


def _bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="filter", unit="sample", disable=not enabled, dynamic_ncols=True, mininterval=2.0)
