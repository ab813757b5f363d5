"""Iteration 0 of NExT, a warm start from what the dataset already knows (STaR-style rationalization).

Each Mbpp-R train task already has its answer: the reference fix. `warmstart_answer` pairs it with a
rationale written from that task's stored trace by `nextls.rationale.explain_fix` (the failing test, the
trace entries on or around the changed lines, the buggy line -> the fixed line) and shapes both as the server
parses answers (`nextls.prompt.format_answer`). `run_warmstart` verifies each answer with the server's own
verifier (`nextls.fix.verify_answer`, through the filter stage) and keeps the verified ones, at most
`[warmstart].max_per_problem` of each MBPP problem: problems are visited in a seeded order of their tasks,
and a problem's tasks stop being verified once its cap is reached. Tasks whose code equals an evaluation
problem's are left out (`nextls_train.leaks`). Verdicts are appended to
`<out>/warmstart/verdicts.jsonl` as they come (a killed run resumes); the kept answers go to
`[warmstart].answers` (gzipped JSONL, rows shaped as the filter's `kept.jsonl`), which the train stage reads
as iteration 0's kept answers.
"""

from __future__ import annotations

import gzip
import json
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nextls.patch import PatchError
from nextls.prompt import format_answer
from nextls.rationale import explain_fix
from nextls.splice import SpliceError, find_function, function_source
from nextls_train.config import RunConfig
from nextls_train.data import TaskRecord
from nextls_train.filter import TaskFiles, verify_sample
from nextls_train.leaks import held_out_train_tasks
from nextls_train.records import AppendLog, Logger

VERSION = 3  # of the stage's choices (which tasks, which answers): a change redoes the stage, verdicts included
VERDICTS = f"verdicts-v{VERSION}.jsonl"
VARIANTS = 27  # explain_fix's phrasings: three choices for each of its three sentences


def warmstart_answer(task: TaskRecord, variant: int) -> dict[str, str]:
    """The task's reference fix as an answer, with a rationale written from its trace.

    Raises ValueError when the reference module has no function of the task's name, or it equals the bug.
    """
    try:
        buggy = function_source(task.buggy_code, find_function(task.buggy_code, task.function_name))
        fixed = function_source(task.fix_code, find_function(task.fix_code, task.function_name))
    except (SpliceError, LookupError, SyntaxError) as error:
        raise ValueError(f"cannot read the function from the task's code: {error}") from None
    rationale = explain_fix(buggy, fixed, task.trace, test=task.tests[task.failing_test],
                            failure=task.failing_message, variant=variant)
    code = fixed.strip()
    try:
        answer = format_answer(rationale, code, original=buggy)
    except PatchError as error:
        raise ValueError(f"cannot write the fix as a patch: {error}") from None
    return {"rationale": rationale, "code": code, "answer": answer}


def task_variant(task_id: str, seed: int) -> int:
    """A phrasing per task, fixed by the seed, so the warm-start answers vary without a shared counter."""
    return random.Random(f"{seed}:{task_id}").randrange(VARIANTS)


def visiting_order(tasks: Sequence[TaskRecord], seed: int) -> dict[str, list[TaskRecord]]:
    """Each problem's tasks in a seeded order (the first `max_per_problem` verified ones are kept)."""
    by_problem: dict[str, list[TaskRecord]] = {}
    for task in tasks:
        by_problem.setdefault(task.problem_id, []).append(task)
    for problem, group in by_problem.items():
        random.Random(f"{seed}:{problem}").shuffle(group)
    return by_problem


def run_warmstart(config: RunConfig, tasks: Sequence[TaskRecord], *, log: Logger | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Verify the warm-start answers, problem by problem up to the cap; write the kept ones (see module doc)."""
    log = log or Logger()
    settings = config.warmstart
    if not settings.answers:
        raise ValueError("[warmstart].answers names no output file")
    out = config.resolve(settings.answers)
    started = time.perf_counter()
    held_out = held_out_train_tasks(tasks)
    tasks = [task for task in tasks if task.id not in held_out]
    files = TaskFiles(tasks)
    groups = visiting_order(tasks, settings.seed)
    try:
        with AppendLog(config.out / "warmstart" / VERDICTS, key=lambda item: item["task"]) as verdicts:
            if len(verdicts):
                log(f"warmstart: resuming, {len(verdicts)} verdicts on disk")

            lock = threading.Lock()

            def one_problem(group: list[TaskRecord]) -> None:
                for task in group:
                    with lock:
                        kept = sum(verdicts.items.get(t.id, {}).get("status") == "verified" for t in group)
                        done = task.id in verdicts
                    if settings.max_per_problem and kept >= settings.max_per_problem:
                        return
                    if not done:
                        verdict = _verdict(task, settings.seed, files, config)
                        with lock:
                            verdicts.append(verdict)

            bar = _bar(len(groups), progress)
            with ThreadPoolExecutor(max_workers=max(1, config.filter.workers)) as pool:
                for _ in pool.map(one_problem, groups.values()):
                    bar.update(1)
            bar.close()
            ordered = [verdicts.items[task.id] for group in groups.values() for task in group
                       if task.id in verdicts.items]
    finally:
        files.close()
    kept = _cap([item for item in ordered if item["status"] == "verified"], settings.max_per_problem)
    _write_gzip_jsonl(out, ({key: item[key] for key in ("task", "index", "rationale", "code", "answer")}
                            for item in kept))
    statuses: dict[str, int] = {}
    for item in ordered:
        statuses[item["status"]] = statuses.get(item["status"], 0) + 1
    summary = {"held_out": len(held_out), "verdicts": len(ordered), "statuses": statuses, "kept": len(kept),
               "problems": len({item["problem"] for item in kept}), "answers": str(out),
               "seconds": round(time.perf_counter() - started, 2)}
    log(f"warmstart: {summary}")
    return summary


def _verdict(task: TaskRecord, seed: int, files: TaskFiles, config: RunConfig) -> dict[str, Any]:
    item: dict[str, Any] = {"task": task.id, "problem": task.problem_id, "index": 0}
    try:
        answer = warmstart_answer(task, task_variant(task.id, seed))
    except ValueError as error:
        return item | {"status": "rejected", "reason": str(error)}
    verdict = verify_sample(task, answer["answer"], files, config.filter)
    # Keep the answer exactly as written (the verifier's parse of it is the same code, without the fence).
    return item | {"status": verdict["status"], "reason": verdict["reason"], "passed": verdict["passed"],
                   "total": verdict["total"], **answer}


def _cap(items: list[dict[str, Any]], per_problem: int) -> list[dict[str, Any]]:
    counts: dict[str, int] = {}
    chosen = []
    for item in items:
        counts[item["problem"]] = counts.get(item["problem"], 0) + 1
        if not per_problem or counts[item["problem"]] <= per_problem:
            chosen.append(item)
    return chosen


def _write_gzip_jsonl(path: Path, rows: Any) -> int:
    """gzip with mtime 0: the same answers give the same bytes (the file is committed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    count = 0
    with open(temporary, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as file:
        for row in rows:
            file.write((json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
            count += 1
    temporary.replace(path)
    return count


def read_answers(path: Path) -> list[dict[str, Any]]:
    """The kept warm-start answers of a `[warmstart].answers` file."""
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def _bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="warmstart", unit="problem", disable=not enabled, dynamic_ncols=True,
                mininterval=2.0)
