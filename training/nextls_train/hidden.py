"""Hidden tests: the second verdict on a fix that passed the visible tests, and 95% Wilson intervals.

A fix that passes the visible tests (*verified*) may still be wrong: it may fit those few asserts only
(overfitting, the known weakness of edit search). A fix is *correct* when it passes the visible tests and
the task's hidden tests:

* HeFix+: the record's `hidden_tests` (one test running every HumanEval+ v0.1.10 input, see DATASET.md).
* Mbpp-R: MBPP+ v0.2.0's extra tests, joined by MBPP problem id at evaluation time from `../shared/data`
  (`mbppplus/MbppPlus-OriginFmt-v0.2.0.jsonl.gz`: a self-contained test over all base + plus inputs). MBPP+
  covers 39 of the 90 dev problems. MBPP+ fixed some MBPP reference solutions, so its tests are used for a
  task only when the task's own reference fix passes them (checked once per fix, recorded with the reason).

`HiddenJudge` runs each fix once in the sandbox (visible + hidden tests, `nextls_train.data.probe`) and appends
the verdict to a JSONL log keyed by (task, sha256 of the module; the problem for a reference check), so a
rerun resumes.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import re
import threading
from pathlib import Path
from typing import Any

from nextls_train.data import DEFAULT_DATA_DIR, RunSettings, TaskRecord, Workspace, probe
from nextls_train.records import AppendLog

MBPP_PLUS_FILE = "mbppplus/MbppPlus-OriginFmt-v0.2.0.jsonl.gz"
HIDDEN_TIMEOUT = 60.0  # some HeFix+ reference fixes need 10-25 s for the HumanEval+ inputs on a busy 2-core machine
_ENTRY = re.compile(r"assertion\((\w+)\(\*inp\)")


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion `successes / n` (None when n is 0)."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@functools.cache
def mbpp_plus_tests(data_dir: Path = DEFAULT_DATA_DIR) -> dict[str, tuple[str, str]]:
    """MBPP+ problem id ("mbpp/554") -> (entry point, test program); empty when the file is not there."""
    path = Path(data_dir) / MBPP_PLUS_FILE
    if not path.is_file():
        return {}
    tests = {}
    with gzip.open(path, "rt", encoding="utf-8") as file:
        for line in file:
            row = json.loads(line)
            entries = _ENTRY.findall(row["test"])
            if entries:
                tests[f"mbpp/{row['task_id']}"] = (entries[-1], row["test"])
    return tests


def source_key(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


class HiddenJudge:
    """Verdicts of whole fixed modules on a task's visible and hidden tests, each module run once."""

    def __init__(self, log_path: Path, *, data_dir: Path = DEFAULT_DATA_DIR, test_timeout: float = 5.0,
                 hidden_timeout: float = HIDDEN_TIMEOUT, memory_mb: int = 1024) -> None:
        self.data_dir = Path(data_dir)
        self.settings = RunSettings(test_timeout=test_timeout, hidden_timeout=hidden_timeout,
                                    memory_bytes=memory_mb << 20)
        self._log = AppendLog(Path(log_path), key=lambda item: (item["task"], item["source"]))
        self._lock = threading.Lock()
        self._workspace = Workspace()

    def candidate_tests(self, task: TaskRecord) -> list[str]:
        """The task's hidden tests before the reference check: its own, else MBPP+'s for its problem."""
        if task.hidden_tests:
            return list(task.hidden_tests)
        entry, program = mbpp_plus_tests(self.data_dir).get(task.problem_id, ("", ""))
        return [program] if entry == task.function_name else []

    def tests(self, task: TaskRecord) -> list[str]:
        """The hidden tests a fix of `task` is judged by: none when there are none or when the task's own
        reference fix fails them (`excluded` says why)."""
        return self.candidate_tests(task) if self.excluded(task) is None else []

    def excluded(self, task: TaskRecord) -> str | None:
        """Why the task's hidden tests are not used (its reference fix fails them), or None."""
        if task.hidden_tests or not self.candidate_tests(task):
            return None  # a record's own hidden tests were checked against its reference fix when it was built
        # Tasks of one problem share MBPP's reference solution: it runs once per problem.
        reference = self._run(task.problem_id, task, task.fix_code, self.candidate_tests(task))
        if reference["visible"] and reference["hidden"]:
            return None
        return f"the reference fix fails them: {reference['message']}"

    def judge(self, task: TaskRecord, source: str) -> tuple[bool, bool | None]:
        """(verified, correct) for the module `source` (the task's file with a fix): verified when every visible
        test passes, correct when the hidden tests pass too; correct is None when the task has no usable hidden
        tests. The visible tests run again here, all of them, whatever the method under test ran."""
        hidden = self.tests(task)
        verdict = self._run(task.id, task, source, hidden)
        return verdict["visible"], (verdict["visible"] and verdict["hidden"]) if hidden else None

    def _run(self, name: str, task: TaskRecord, source: str, hidden: list[str]) -> dict[str, Any]:
        key = (name, source_key(source))
        with self._lock:
            if key in self._log:
                return self._log.items[key]
        found = probe(source, task.function_name, task.tests, setup=task.test_setup, hidden=hidden,
                      settings=self.settings, workspace=self._workspace, trace=False)
        failing = [result for result in [*found.results, *found.hidden] if not result.passed]
        verdict = {"task": name, "source": key[1], "visible": all(r.passed for r in found.results),
                   "hidden": all(r.passed for r in found.hidden),
                   "message": f"{failing[0].outcome.value}: {failing[0].message[:300]}" if failing else ""}
        with self._lock:
            self._log.append(verdict)
        return verdict

    def close(self) -> None:
        self._log.close()
        self._workspace.close()
