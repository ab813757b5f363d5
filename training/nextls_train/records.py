"""What the training stages share: the tasks they read, the append-only logs they write, stage markers.

Tasks are `nextls_train.data.TaskRecord`s (the Mbpp-R / HeFix+ files); `repair_task` gives the prompt's
view of one, as the server builds it from a traced function (`nextls.fix.repair_task`).

`AppendLog` is how every stage writes what it produces: one JSON line per item, flushed (and fsynced)
as soon as the item exists, keyed so that a resumed stage skips what is on disk. A process killed with
SIGKILL loses at most the line it was writing: a cut last line is dropped when the log is reopened, and
repeated keys (which a correct writer never produces) are read once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nextls.prompt import RepairTask
from nextls.splice import find_function, function_source
from nextls_train.data import TaskRecord, read_tasks


def load_tasks(path: Path, *, limit: int = 0, per_problem: int = 0,
               ids: Iterable[str] | None = None) -> list[TaskRecord]:
    """Tasks of a dataset file. `per_problem` keeps at most that many tasks of each problem; `limit` then takes
    the first N tasks going round the problems (one task of each problem, then a second, ...), so a small
    subset still covers as many problems as it can. `ids` keeps only those tasks."""
    tasks = read_tasks(Path(path))
    if ids is not None:
        wanted = set(ids)
        tasks = [task for task in tasks if task.id in wanted]
    by_problem: dict[str, list[TaskRecord]] = {}
    for task in tasks:
        by_problem.setdefault(task.problem_id, []).append(task)
    if per_problem:
        by_problem = {key: group[:per_problem] for key, group in by_problem.items()}
    if not limit:
        return [task for group in by_problem.values() for task in group]
    chosen: list[TaskRecord] = []
    depth = 0
    while len(chosen) < limit and any(len(group) > depth for group in by_problem.values()):
        for group in by_problem.values():
            if depth < len(group) and len(chosen) < limit:
                chosen.append(group[depth])
        depth += 1
    return chosen


def repair_task(task: TaskRecord) -> RepairTask:
    """The prompt's view of a task: the function, the tests, the failures, the problem text, the trace."""
    span = find_function(task.buggy_code, task.function_name)
    return RepairTask(function_name=task.function_name, code=function_source(task.buggy_code, span).rstrip("\n"),
                      tests=tuple(task.tests), failures=tuple(task.failing), description=task.problem,
                      trace=task.trace or None)


class AppendLog:
    """An append-only JSONL file of items identified by `key(item)`; see the module docstring."""

    def __init__(self, path: Path, key: Callable[[dict[str, Any]], Any], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.key = key
        self.fsync = fsync
        self.items: dict[Any, dict[str, Any]] = {}
        self.dropped_partial = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):  # killed mid-write: drop the cut line, then append after it
                data = data[: data.rfind(b"\n") + 1]
                with open(self.path, "r+b") as file:
                    file.truncate(len(data))
                self.dropped_partial = True
            for line in data.decode("utf-8").splitlines():
                if line.strip():
                    item = json.loads(line)
                    self.items.setdefault(key(item), item)
        self._file = open(self.path, "a", encoding="utf-8")

    def __contains__(self, key: Any) -> bool:
        return key in self.items

    def __len__(self) -> int:
        return len(self.items)

    def append(self, item: dict[str, Any]) -> bool:
        """Write `item` unless its key is already there; True when it was written."""
        key = self.key(item)
        if key in self.items:
            return False
        self._file.write(json.dumps(item, ensure_ascii=False) + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self.items[key] = item
        return True

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_log(path: Path) -> Iterator[dict[str, Any]]:
    """The complete lines of a JSONL log (a cut last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as file:
        for line in file:
            if line.endswith("\n") and line.strip():
                yield json.loads(line)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    count = 0
    with open(temporary, "w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    os.replace(temporary, path)
    return count


# A stage's marker: `<dir>/<stage>.done.json` holds the fingerprint of its settings and its summary
# (wall time included). A stage whose marker matches is skipped; any other state reruns (resuming from its log).


def stage_done(directory: Path, stage: str, fingerprint: str) -> dict[str, Any] | None:
    marker = Path(directory) / f"{stage}.done.json"
    if not marker.exists():
        return None
    data = json.loads(marker.read_text(encoding="utf-8"))
    return data if data.get("fingerprint") == fingerprint else None


def mark_done(directory: Path, stage: str, fingerprint: str, summary: dict[str, Any]) -> dict[str, Any]:
    data = {"fingerprint": fingerprint, **summary}
    write_json(Path(directory) / f"{stage}.done.json", data)
    return data


@contextmanager
def timed(summary: dict[str, Any], key: str = "seconds") -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        summary[key] = round(summary.get(key, 0.0) + time.perf_counter() - started, 3)


class Logger:
    """Prints a line to stderr and appends it, timestamped, to a log file (one per iteration)."""

    def __init__(self, path: Path | None = None, *, quiet: bool = False) -> None:
        self.path = Path(path) if path else None
        self.quiet = quiet
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        import sys

        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(f"{stamp} {message}\n")

    def to(self, path: Path) -> Logger:
        return Logger(path, quiet=self.quiet)
