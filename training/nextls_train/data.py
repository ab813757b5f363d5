"""The repair datasets: HeFix+ (evaluation) and Mbpp-R (training and dev), one record format for both.

A *task* is one buggy program with everything the training and the evaluation need: the problem in words,
the buggy module, the visible tests, the reference fix, the buggy program's result on every visible test,
and the NExT naturalized trace of its first failing test, rendered by the same runtime the language server
uses (sandboxed run, in-process trace backend, `nextls.trace.render`). See `training/data/DATASET.md`.

* **HeFix+**: HumanEvalPack's 164 hand-written `buggy_solution`s (HumanEvalFix), with HumanEvalPack's
  tests as the visible tests and the HumanEval+ v0.1.10 tests (base + plus inputs) as one hidden test for
  the final verdict. The known caveats (reference solutions that fail plus inputs, the broken `check()` of
  HumanEval/32 in EvalPlus's OriginFmt file, programs that time out) are decided per task; each decision is
  recorded in the task's `meta["decisions"]` and in the manifest.
* **Mbpp-R**: MBPP problems split as upstream (train 601-974, dev = upstream validation 511-600; the test
  split 11-510 is never touched), with buggy programs from two tagged sources: wrong programs sampled from
  the base model (`model-sample`, how the NExT paper built it) and bugs injected into the reference
  solution (`mutation`, HumanEvalFix's six classes, `nextls_train.mutate`). Every program is verified in the
  sandbox to fail at least one test; duplicates (normalized AST) are dropped; each problem is capped.

Files are JSONL, gzip-compressed with a zeroed header so that a rebuild gives identical bytes. The build
runs in stages; each stage appends every result to a log as soon as it has it, so an interrupted build
resumes where it stopped (`build`).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from nextls.answer import parse_answer
from nextls.runner import RunConfig, TargetModule, TestCase, TestOutcome, TestResult, TraceRequest, run_tests
from nextls.sandbox import Limits
from nextls.splice import find_function

try:
    from nextls.trace.capture import describe_result
except ImportError:  # its name before the rename
    from nextls.trace.capture import test_result_text as describe_result
from nextls.trace.render import RenderOptions, render_naturalized
from nextls_train import mutate

FORMAT = "nextls-repair-tasks"
SCHEMA_VERSION = 1
# Bump when the build's logic changes what it produces: every stage's fingerprint includes it, so a
# resumed build never mixes results of two versions.
BUILD_VERSION = 1
# The rendered trace is trimmed to about this many tokens, as the server does (nextls.fix.FixOptions).
TRACE_TOKENS = 1500
MAX_TRACE_STEPS = 10_000
# HeFix+'s hidden test runs a whole HumanEval+ suite (up to ~1,000 inputs) in one test. Some reference
# solutions need 10-25 s for it on a busy 2-core machine (HumanEval/39, /96, /139); the exponential ones
# (/55, /63, /127) never finish. A generous limit keeps the reference decisions from depending on load.
HEFIX_HIDDEN_TIMEOUT = 60.0

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT_DIR = REPO_ROOT / "training" / "data"

HEFIX_FILE = "hefix_plus.jsonl.gz"
MBPPR_FILES = {"train": "mbppr_train.jsonl.gz", "dev": "mbppr_dev.jsonl.gz"}
SAMPLES_FILE = "mbpp_samples.jsonl.gz"
MANIFEST_FILE = "manifest.json"
SCHEMA_FILE = "schema.json"
WORK_DIR = ".work"

SOURCE_HUMANEVALFIX = "humanevalfix"
SOURCE_MODEL = "model-sample"
SOURCE_MUTATION = "mutation"

INPUT_FILES = {
    "mbpp": "mbpp/mbpp.jsonl",
    "humanevalpack": "humanevalpack/humanevalpack-python.jsonl",
    "humanevalplus": "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz",
    "humanevalplus_originfmt": "humanevalplus/HumanEvalPlus-OriginFmt-v0.1.10.jsonl.gz",
}


# ---------------------------------------------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TaskRecord:
    """One repair task. `tests[failing_test]` is the test the trace shows."""

    id: str  # "hefix+/12", "mbpp-r/601/mutation-3fa2c01d9e"
    dataset: str  # "hefix+" | "mbpp-r"
    split: str  # "test" (HeFix+) | "train" | "dev"
    problem_id: str  # "HumanEval/12", "mbpp/601"
    source: str  # "humanevalfix" | "model-sample" | "mutation"
    bug_class: str | None  # one of HumanEvalFix's six classes; None for model samples (unlabelled)
    function_name: str  # the function to fix (module level)
    problem: str  # the task in words
    buggy_code: str  # the whole buggy module
    fix_code: str  # the whole reference-fix module (passes every test, hidden ones included)
    tests: list[str]  # the visible tests, one statement each (an assert, or a loop of asserts)
    test_setup: str  # code run before each test (imports, shared values); may be ""
    hidden_tests: list[str]  # more tests for the final verdict only (HeFix+: the HumanEval+ inputs)
    results: list[dict[str, str]]  # the buggy program on each visible test: {"outcome", "message"}
    failing_test: int  # index into `tests` of the first failing test: the traced one
    failing_message: str  # its result as the server shows it, e.g. "failed: f(1) returned 2, expected 3"
    trace: str  # the naturalized trace of that test (function source with execution comments + the test)
    trace_steps: int
    trace_truncated: bool
    meta: dict[str, Any] = field(default_factory=dict)  # provenance and decisions, see DATASET.md
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRecord:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"task {data.get('id')!r}: schema version {version}, this code reads {SCHEMA_VERSION}")
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"task {data.get('id')!r}: unknown fields {sorted(unknown)}")
        return cls(**data)

    @property
    def test_ids(self) -> list[str]:
        """The visible tests' ids, as the runner named them when the task was built (`assert:tests.py:LINE`)."""
        return [f"assert:tests.py:{line}" for line in _layout_tests(self.tests)[1]]

    @property
    def failing(self) -> list[str]:
        """`"test id: outcome: message"` for each failing visible test, in test order: the server's shape of
        the prompt's failure list (`nextls.fix.repair_task`)."""
        ids = self.test_ids
        return [f"{ids[i]}: {r['outcome']}" + (f": {r['message']}" if r["message"] else "")
                for i, r in enumerate(self.results) if r["outcome"] not in ("passed", "skipped")]


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) for one line of a task file."""
    string, integer, boolean = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
    strings = {"type": "array", "items": string}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{FORMAT}/v{SCHEMA_VERSION}",
        "title": "nextls repair task",
        "type": "object",
        "additionalProperties": False,
        "required": [f.name for f in fields(TaskRecord)],
        "properties": {
            "id": string, "dataset": {"enum": ["hefix+", "mbpp-r"]}, "split": {"enum": ["train", "dev", "test"]},
            "problem_id": string, "source": {"enum": [SOURCE_HUMANEVALFIX, SOURCE_MODEL, SOURCE_MUTATION]},
            "bug_class": {"enum": [*mutate.BUG_CLASSES, None]}, "function_name": string, "problem": string,
            "buggy_code": string, "fix_code": string, "tests": {**strings, "minItems": 1}, "test_setup": string,
            "hidden_tests": strings,
            "results": {"type": "array", "items": {
                "type": "object", "required": ["outcome", "message"], "additionalProperties": False,
                "properties": {"outcome": {"enum": [o.value for o in TestOutcome]}, "message": string}}},
            "failing_test": {**integer, "minimum": 0}, "failing_message": string, "trace": string,
            "trace_steps": integer, "trace_truncated": boolean, "meta": {"type": "object"},
            "schema_version": {"const": SCHEMA_VERSION},
        },
    }


def validate(record: TaskRecord) -> list[str]:
    """What is wrong with a record (empty when nothing is); the checks JSON Schema cannot express too."""
    problems = []
    if not record.tests:
        problems.append("no tests")
    if len(record.results) != len(record.tests):
        problems.append(f"{len(record.results)} results for {len(record.tests)} tests")
    if not 0 <= record.failing_test < len(record.tests):
        problems.append(f"failing_test {record.failing_test} out of range")
    elif record.results and record.results[record.failing_test]["outcome"] in ("passed", "skipped"):
        problems.append("the traced test passed")
    if record.bug_class is not None and record.bug_class not in mutate.BUG_CLASSES:
        problems.append(f"unknown bug class {record.bug_class!r}")
    if record.source == SOURCE_MODEL and record.bug_class is not None:
        problems.append("a model sample carries a bug class")
    for name, code in (("buggy_code", record.buggy_code), ("fix_code", record.fix_code)):
        error = _defines(code, record.function_name)
        if error:
            problems.append(f"{name}: {error}")
    if not record.trace.strip():
        problems.append("empty trace")
    return problems


@functools.lru_cache(maxsize=4096)
def _defines(code: str, function_name: str) -> str:
    """Why `code` does not define `function_name` ("" when it does); cached: a problem's tasks share a fix."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
            find_function(code, function_name)
    except (LookupError, ValueError) as error:
        return str(error)
    return ""


# ---------------------------------------------------------------------------------------------------------------
# Files: deterministic JSONL(.gz)
# ---------------------------------------------------------------------------------------------------------------


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, sort_keys=False, separators=(",", ":"))


def write_jsonl(path: Path, rows: Iterable[dict[str, Any] | TaskRecord]) -> int:
    """Write rows as JSON lines, gzip-compressed when the name ends with `.gz` (mtime 0 and no file name in
    the header, so equal rows give equal bytes). Written to a temporary file, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    count = 0
    with open(temporary, "wb") as raw:
        stream: Any = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) \
            if path.name.endswith(".gz") else raw
        with stream:
            for row in rows:
                data = row.to_json() if isinstance(row, TaskRecord) else row
                stream.write((_dumps(data) + "\n").encode("utf-8"))
                count += 1
    os.replace(temporary, path)
    return count


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                yield json.loads(line)


def read_tasks(path: Path) -> list[TaskRecord]:
    """The tasks of a dataset file (checks the schema version)."""
    return [TaskRecord.from_json(row) for row in read_jsonl(path)]


def load_split(name: str, directory: Path = DEFAULT_OUT_DIR) -> list[TaskRecord]:
    """`"hefix+"`, `"train"` or `"dev"` from a built dataset directory (the committed one by default)."""
    file = HEFIX_FILE if name in ("hefix+", "hefix", "test") else MBPPR_FILES[name]
    return read_tasks(Path(directory) / file)


def sha256_file(path: Path, decompress: bool = False) -> str:
    digest = hashlib.sha256()
    opener = gzip.open if decompress else open
    with opener(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha(text: str, length: int = 10) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:length]


def normalize_code(code: str) -> str:
    """`\\n` line endings, no trailing whitespace, one final newline (MBPP's code uses `\\r\\n`)."""
    lines = code.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n") + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Running and tracing one program (the server's path: sandboxed runner, in-process trace, the renderer)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class RunSettings:
    test_timeout: float = 1.0  # seconds per visible test
    hidden_timeout: float = 20.0  # seconds for each hidden test (a whole HumanEval+ suite)
    memory_bytes: int = 1 << 30
    trace_tokens: int = TRACE_TOKENS
    max_steps: int = MAX_TRACE_STEPS


@dataclass
class Probe:
    """A program run on its visible tests, and the trace of the first failing one."""

    results: list[TestResult]
    failing_index: int | None = None
    failing_message: str = ""
    trace: str = ""
    trace_steps: int = 0
    trace_truncated: bool = False
    hidden: list[TestResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results) and all(result.passed for result in self.hidden)

    @property
    def load_error(self) -> str | None:
        """Why the module could not even be loaded, if so (every test then reports the same error)."""
        messages = {result.message for result in self.results}
        if self.results and len(messages) == 1 and all(r.outcome is TestOutcome.ERROR for r in self.results):
            message = messages.pop()
            if message.startswith("loading "):
                return message
        return None


class Workspace:
    """Real files for the programs under test: the trace recorder matches code by its real path."""

    def __init__(self, root: Path | None = None) -> None:
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="nextls-data-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._counter = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def folder(self) -> Iterator[Path]:
        with self._lock:
            self._counter += 1
            path = self.root / f"p{self._counter}"
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)


def _layout_tests(tests: list[str]) -> tuple[str, list[int]]:
    """The tests file's text (each test on its own lines, a blank line apart) and each test's first line."""
    lines: list[str] = []
    starts = []
    for test in tests:
        starts.append(len(lines) + 1)
        lines.extend(test.rstrip("\n").split("\n"))
        lines.append("")
    return "\n".join(lines) + "\n", starts


def probe(code: str, function_name: str, tests: list[str], *, setup: str = "", hidden: list[str] = (),
          settings: RunSettings | None = None, workspace: Workspace, trace: bool = True) -> Probe:
    """Run `code`'s visible tests (one sandboxed process), then trace the first failing one and render it
    exactly as `nextls.trace.capture.trace_function` does for the server; then run the hidden tests."""
    settings = settings or RunSettings()
    with workspace.folder() as folder:
        solution = (folder / "solution.py").resolve()
        solution.write_text(code, encoding="utf-8")
        tests_text, starts = _layout_tests(tests)
        tests_file = folder / "tests.py"
        tests_file.write_text(tests_text, encoding="utf-8")
        cases = [TestCase(id=f"assert:tests.py:{line}", kind="assert", source=source, file=str(tests_file),
                          line=line) for source, line in zip(tests, starts, strict=True)]
        module = TargetModule(filename=str(solution), source=code, root=str(folder.resolve()),
                              module_name="solution", sys_path=(str(folder.resolve()),))
        limits = Limits(wall_time=settings.test_timeout * len(cases) + 10, memory_bytes=settings.memory_bytes)
        config = RunConfig(test_timeout=settings.test_timeout, setup_code=setup, limits=limits)
        run = run_tests(module, cases, config)
        by_id = {result.id: result for result in run.results}
        results = [by_id.get(case.id) or TestResult(case.id, TestOutcome.CRASHED, "no result") for case in cases]
        found = Probe(results=results)
        failing = next((index for index, result in enumerate(results) if not result.passed), None)
        if failing is not None and trace:
            span = find_function(code, function_name)
            request = TraceRequest(qualname=span.qualname, test_id=cases[failing].id, backend="inprocess",
                                   max_steps=settings.max_steps)
            traced = run_tests(module, [cases[failing]], config, trace=request)
            traced_result = traced.results[0] if traced.results else results[failing]
            found.failing_index = failing
            found.failing_message = describe_result(traced_result)
            if traced.trace is not None:
                lines = code.splitlines()[span.start_line - 1: span.end_line]
                found.trace = render_naturalized(
                    "\n".join(lines), span.start_line, traced.trace, test_source=cases[failing].source,
                    test_result=found.failing_message, options=RenderOptions(max_tokens=settings.trace_tokens))
                found.trace_steps = traced.trace.steps
                found.trace_truncated = traced.trace.truncated
        elif failing is not None:
            found.failing_index = failing
            found.failing_message = describe_result(results[failing])
        if hidden:
            hidden_file = folder / "hidden_tests.py"
            hidden_text, hidden_starts = _layout_tests(list(hidden))
            hidden_file.write_text(hidden_text, encoding="utf-8")
            hidden_cases = [TestCase(id=f"hidden:{index}", kind="assert", source=source, file=str(hidden_file),
                                     line=line)
                            for index, (source, line) in enumerate(zip(hidden, hidden_starts, strict=True))]
            hidden_config = RunConfig(test_timeout=settings.hidden_timeout, setup_code=setup, limits=Limits(
                wall_time=settings.hidden_timeout * len(hidden_cases) + 10, memory_bytes=settings.memory_bytes))
            hidden_run = run_tests(module, hidden_cases, hidden_config)
            by_id = {result.id: result for result in hidden_run.results}
            found.hidden = [by_id.get(case.id) or TestResult(case.id, TestOutcome.CRASHED, "no result")
                            for case in hidden_cases]
        return found


def _result_dicts(results: list[TestResult]) -> list[dict[str, str]]:
    return [{"outcome": result.outcome.value, "message": result.message} for result in results]


@contextlib.contextmanager
def reproducible_children() -> Iterator[None]:
    """Child processes get PYTHONHASHSEED=0 (the runner passes our environment on), so set and dict-of-str
    iteration orders, hence traces, are the same on every build."""
    old = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = old


# ---------------------------------------------------------------------------------------------------------------
# Source data
# ---------------------------------------------------------------------------------------------------------------


def _read_any(path: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(path))


def input_hashes(data_dir: Path, names: Iterable[str]) -> dict[str, str]:
    return {name: sha256_file(Path(data_dir) / INPUT_FILES[name]) for name in names}


@dataclass(frozen=True)
class MbppProblem:
    task_id: int
    split: str  # "prompt" | "test" | "dev" | "train"
    text: str
    code: str  # normalized reference solution
    tests: tuple[str, ...]
    setup: str
    function_name: str

    @property
    def problem_id(self) -> str:
        return f"mbpp/{self.task_id}"


def mbpp_split(task_id: int) -> str:
    """Upstream MBPP's split by task id (the README of google-research/mbpp): validation is our dev."""
    if 1 <= task_id <= 10:
        return "prompt"
    if 11 <= task_id <= 510:
        return "test"
    if 511 <= task_id <= 600:
        return "dev"
    return "train"


def entry_point(code: str, tests: Iterable[str]) -> str | None:
    """The function the tests call: the first called name that the code defines as a function."""
    try:
        defined = [node.name for node in ast.walk(mutate.parse(code))
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except SyntaxError:
        return None
    for test in tests:
        try:
            tree = mutate.parse(test)
        except SyntaxError:
            continue
        calls = sorted((node for node in ast.walk(tree) if isinstance(node, ast.Call)
                        and isinstance(node.func, ast.Name)), key=lambda node: (node.lineno, node.col_offset))
        for call in calls:
            if call.func.id in defined:
                return call.func.id
    return None


def load_mbpp(data_dir: Path = DEFAULT_DATA_DIR) -> list[MbppProblem]:
    problems = []
    for row in _read_any(Path(data_dir) / INPUT_FILES["mbpp"]):
        tests = tuple(normalize_code(test).strip() for test in row["test_list"])
        code = normalize_code(row["code"])
        problems.append(MbppProblem(task_id=row["task_id"], split=mbpp_split(row["task_id"]), text=row["text"].strip(),
                                    code=code, tests=tests, setup=normalize_code(row["test_setup_code"]).strip(),
                                    function_name=entry_point(code, tests) or ""))
    return problems


def structure_key(code: str) -> str | None:
    """Equal for programs that differ only in names, formatting, comments and docstrings."""
    try:
        tree = mutate.parse(code)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            node.name = "_"
        elif isinstance(node, ast.Name):
            node.id = "_"
        elif isinstance(node, ast.arg):
            node.arg = "_"
        elif isinstance(node, ast.Attribute):
            pass
    return mutate.normalized_ast(ast.unparse(tree))


@functools.lru_cache(maxsize=4096)
def _structure_key_cached(code: str) -> str | None:
    return structure_key(code)


def dev_leaks(problems: list[MbppProblem]) -> dict[int, str]:
    """Train problems that duplicate a dev problem (MBPP has some across its upstream splits): the same
    code up to names, or a test in common. Mapped to the reason; the build leaves them out of train."""
    dev = [p for p in problems if p.split == "dev"]
    dev_code = {structure_key(p.code): p.task_id for p in dev}
    dev_tests = {re.sub(r"\s+", "", test): p.task_id for p in dev for test in p.tests}
    leaks = {}
    for problem in problems:
        if problem.split != "train":
            continue
        twin = dev_code.get(structure_key(problem.code))
        if twin is not None:
            leaks[problem.task_id] = f"same code as dev problem mbpp/{twin} up to names"
            continue
        shared = [dev_tests[key] for key in (re.sub(r"\s+", "", t) for t in problem.tests) if key in dev_tests]
        if shared:
            leaks[problem.task_id] = f"shares a test with dev problem mbpp/{shared[0]}"
    return leaks


# ---------------------------------------------------------------------------------------------------------------
# HeFix+
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HefixSource:
    index: int
    pack: dict[str, Any]  # HumanEvalPack python row
    plus: dict[str, Any]  # HumanEval+ v0.1.10 row
    origin: dict[str, Any]  # HumanEval+ OriginFmt v0.1.10 row


def load_hefix_sources(data_dir: Path = DEFAULT_DATA_DIR) -> list[HefixSource]:
    pack = {row["task_id"]: row for row in _read_any(Path(data_dir) / INPUT_FILES["humanevalpack"])}
    plus = {row["task_id"]: row for row in _read_any(Path(data_dir) / INPUT_FILES["humanevalplus"])}
    origin = {row["task_id"]: row for row in _read_any(Path(data_dir) / INPUT_FILES["humanevalplus_originfmt"])}
    joined = []
    for task_id, row in pack.items():
        index = int(task_id.split("/")[1])
        other = f"HumanEval/{index}"
        if other not in plus or other not in origin:
            raise ValueError(f"{task_id} has no HumanEval+ counterpart {other}")
        if plus[other]["entry_point"] != row["entry_point"]:
            raise ValueError(f"{task_id}: entry point {row['entry_point']!r} vs {plus[other]['entry_point']!r}")
        joined.append(HefixSource(index, row, plus[other], origin[other]))
    return sorted(joined, key=lambda source: source.index)


def split_check(test_source: str, entry: str) -> tuple[list[str], str, list[str]]:
    """HumanEvalPack's `def check(<entry>): ...` + `check(<entry>)` as (tests, setup, notes): each assert (or
    loop/branch holding asserts) becomes one test; imports and assignments become the setup code."""
    tree = mutate.parse(test_source)
    checks = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "check"]
    if len(checks) != 1:
        raise ValueError("expected exactly one check() function")
    check = checks[0]
    params = [arg.arg for arg in check.args.args]
    renamed = params and params[0] != entry
    tests, setup, notes = [], [], []
    for statement in check.body:
        text = textwrap.dedent(ast.get_source_segment(test_source, statement, padded=True) or ast.unparse(statement))
        if renamed:
            text = re.sub(rf"\b{re.escape(params[0])}\b", entry, text)
        if isinstance(statement, ast.Assert) or any(isinstance(n, ast.Assert) for n in ast.walk(statement)):
            tests.append(text.strip("\n"))
        elif isinstance(statement, (ast.Import, ast.ImportFrom, ast.Assign)):
            setup.append(text.strip("\n"))
        elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Name):
            notes.append(f"dropped the no-op statement `{text.strip()}` from check()")
        else:
            raise ValueError(f"unexpected statement in check(): {text.strip()[:80]}")
    for statement in tree.body:
        if statement is check or (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)
                                  and isinstance(statement.value.func, ast.Name)
                                  and statement.value.func.id == "check"):
            continue
        if isinstance(statement, ast.Assign) and ast.unparse(statement).startswith("METADATA"):
            continue
        setup.insert(0, ast.get_source_segment(test_source, statement) or ast.unparse(statement))
    return tests, "\n".join(setup), notes


_PLUS_FAILURE_HELPER = '''
def _nextls_failure(index, inp, out, exp):
    import reprlib
    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = 80
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 8
    args = ", ".join(short.repr(value) for value in inp)
    return "%s(%s) returned %s, expected %s (HumanEval+ input #%d)" % (
        ENTRY, args, short.repr(out), exp if isinstance(exp, str) and exp.startswith("<") else short.repr(exp),
        index)
'''


def plus_test(origin: dict[str, Any], entry: str) -> tuple[str, list[str]]:
    """One test that runs all HumanEval+ v0.1.10 inputs (base + plus) through EvalPlus's own comparison
    (`assertion()`: exact, or `np.allclose` for floats), and names the first failing input in its message.

    Built from the OriginFmt file's `check()`: its helpers and its `inputs`/`results` literals are kept as
    they are; the loop is rewritten to report the input. HumanEval/32's loop, which calls
    `_poly(*candidate(*inp), inp)` and so raises TypeError for every candidate, is replaced by EvalPlus's
    evaluator's own check for `find_zero`: `abs(_poly(*inp, out)) <= atol`."""
    source = origin["test"]
    tree = mutate.parse(source)
    notes = []
    header = [ast.get_source_segment(source, node) for node in tree.body
              if not (isinstance(node, ast.FunctionDef) and node.name == "check")]
    check = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "check")
    assigned = {node.targets[0].id: ast.get_source_segment(source, node.value)
                for node in check.body if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    loops = [node for node in check.body if isinstance(node, ast.For)]
    if len(loops) != 1 or "inputs" not in assigned:
        raise ValueError(f"{origin['task_id']}: unexpected check() layout")
    body = ast.unparse(loops[0].body[0])
    lines = ["def check(candidate):", f"    inputs = {assigned['inputs']}"]
    call = re.fullmatch(r"assertion\(candidate\(\*inp\), (exp|ref_func\(\*inp\)), ([0-9.e-]+)\)", body)
    if call and "results" in assigned and call.group(1) == "exp":
        lines += [f"    results = {assigned['results']}",
                  "    for i, (inp, exp) in enumerate(zip(inputs, results)):",
                  "        out = candidate(*inp)",
                  "        try:",
                  f"            assertion(out, exp, {call.group(2)})",
                  "        except AssertionError:",
                  "            raise AssertionError(_nextls_failure(i, inp, out, exp)) from None"]
    elif call and call.group(1) == "ref_func(*inp)":
        lines += ["    for i, inp in enumerate(inputs):",
                  "        out = candidate(*inp)",
                  "        exp = ref_func(*inp)",
                  "        try:",
                  f"            assertion(out, exp, {call.group(2)})",
                  "        except AssertionError:",
                  "            raise AssertionError(_nextls_failure(i, inp, out, exp)) from None"]
    elif body == "assert _poly(*candidate(*inp), inp) <= 0.0001":
        lines += ["    for i, inp in enumerate(inputs):",
                  "        out = candidate(*inp)",
                  "        if not abs(_poly(*inp, out)) <= 0.0001:",
                  "            raise AssertionError(_nextls_failure(i, inp, out, '<a zero of the polynomial>'))"]
        notes.append("HumanEval+ check(): OriginFmt's `_poly(*candidate(*inp), inp) <= 0.0001` raises TypeError for "
                     "every candidate; replaced by EvalPlus's evaluator check `abs(_poly(*inp, out)) <= 0.0001`")
    else:
        raise ValueError(f"{origin['task_id']}: unexpected check() loop: {body}")
    program = "\n\n".join([*header, _PLUS_FAILURE_HELPER.replace("ENTRY", repr(entry)).strip(), "\n".join(lines),
                           f"check({entry})"])
    return program + "\n", notes


def hefix_task(source: HefixSource, settings: RunSettings, workspace: Workspace) -> TaskRecord:
    """Assemble, run and trace one HeFix+ task, deciding its caveats (recorded in meta["decisions"])."""
    pack, entry = source.pack, source.pack["entry_point"]
    decisions: list[str] = []
    tests, setup, notes = split_check(pack["test"], entry)
    decisions += notes
    if "random.randint" in "\n".join(tests) and "Random(" not in setup:
        setup = (setup + "\n" if setup else "") + "import random\nrandom.seed(0)"
        decisions.append("visible tests draw unseeded random numbers: seeded with random.seed(0) in the setup so "
                         "runs and traces repeat")
    hidden, plus_notes = plus_test(source.origin, entry)
    decisions += plus_notes
    buggy = pack["prompt"] + pack["buggy_solution"]
    humaneval_fix = pack["prompt"] + pack["canonical_solution"]
    reference = probe(humaneval_fix, entry, tests, setup=setup, hidden=[hidden], settings=settings,
                      workspace=workspace, trace=False)
    fix, fix_source = humaneval_fix, "humaneval"
    if not reference.passed:
        why = _why_failed(reference)
        evalplus_fix = pack["prompt"] + source.plus["canonical_solution"]
        alternative = probe(evalplus_fix, entry, tests, setup=setup, hidden=[hidden], settings=settings,
                            workspace=workspace, trace=False)
        if alternative.passed:
            fix, fix_source = evalplus_fix, "evalplus"
            decisions.append(f"reference fix: HumanEval's canonical solution fails ({why}); EvalPlus's canonical "
                             "solution, which passes every test, is the reference fix")
        else:
            fix_source = "humaneval-failing"
            decisions.append(f"reference fix: HumanEval's canonical solution fails ({why}) and so does EvalPlus's "
                             f"({_why_failed(alternative)}); kept HumanEval's, flagged: the hidden test is not "
                             "reliable for this task")
    buggy_run = probe(buggy, entry, tests, setup=setup, hidden=[hidden], settings=settings, workspace=workspace)
    if buggy_run.failing_index is None:
        raise ValueError(f"HumanEval/{source.index}: buggy solution passes the visible tests")
    timeouts = [i for i, r in enumerate(buggy_run.results) if r.outcome is TestOutcome.TIMEOUT]
    if timeouts:
        decisions.append(f"the buggy program times out on {len(timeouts)} of {len(tests)} visible tests (symptom: "
                         f"{pack['failure_symptoms']}); kept, its trace stops at the step limit or the timeout")
    if buggy_run.hidden and buggy_run.hidden[0].outcome is TestOutcome.TIMEOUT:
        decisions.append(f"the buggy program times out on the hidden HumanEval+ test ({settings.hidden_timeout:g}s); "
                         "kept: a timeout is a failure")
    if buggy_run.hidden and buggy_run.hidden[0].passed:
        decisions.append("the buggy program passes the hidden HumanEval+ test: only the visible tests catch its bug")
    return TaskRecord(
        id=f"hefix+/{source.index}", dataset="hefix+", split="test", problem_id=f"HumanEval/{source.index}",
        source=SOURCE_HUMANEVALFIX, bug_class=pack["bug_type"], function_name=entry,
        problem=pack["docstring"].strip(), buggy_code=buggy, fix_code=fix, tests=tests, test_setup=setup,
        hidden_tests=[hidden], results=_result_dicts(buggy_run.results), failing_test=buggy_run.failing_index,
        failing_message=buggy_run.failing_message, trace=buggy_run.trace, trace_steps=buggy_run.trace_steps,
        trace_truncated=buggy_run.trace_truncated,
        meta={"humanevalpack_task_id": pack["task_id"], "failure_symptoms": pack["failure_symptoms"],
              "reference_fix": fix_source, "decisions": decisions,
              "hidden_results": _result_dicts(buggy_run.hidden)})


def _why_failed(found: Probe) -> str:
    failing = [r for r in [*found.results, *found.hidden] if not r.passed]
    if not failing:
        return "no failure"
    first = failing[0]
    where = "a visible test" if first in found.results else "the HumanEval+ test"
    return f"{where}: {describe_result(first)[:160]}"


# ---------------------------------------------------------------------------------------------------------------
# Model samples for Mbpp-R
# ---------------------------------------------------------------------------------------------------------------

SAMPLE_PROMPT_VERSION = 1


def mbpp_messages(problem: MbppProblem) -> list[dict[str, str]]:
    """The prompt the base model is sampled with: MBPP's own (the task, then the tests to pass)."""
    tests = "\n".join(problem.tests)
    return [{"role": "user", "content": (
        f"You are an expert Python programmer, and here is your task: {problem.text}\n"
        f"Your code should pass these tests:\n\n```python\n{tests}\n```\n\n"
        f"Write the function `{problem.function_name}` in one ```python code block.")}]


def sample_seed(task_id: int, index: int, seed: int) -> int:
    return (seed * 1_000_003 + task_id * 1_000 + index) % (2**31)


@dataclass
class SampleSettings:
    per_problem: int = 2
    max_tokens: int = 384
    temperature: float = 0.8
    top_p: float = 0.95
    model: str | None = None  # a GGUF path; None: the default model (SmolLM2-135M-Instruct)
    threads: int | None = None


def _fence_closed(text: str) -> bool:
    """True once the answer holds an opened and a closed code fence (complete lines): the rest is prose."""
    return sum(1 for line in text.split("\n")[:-1] if line.strip().startswith("```")) >= 2


def sample_programs(runtime: Any, problem: MbppProblem, indexes: Iterable[int], settings: SampleSettings,
                    seed: int) -> Iterator[dict[str, Any]]:
    """Sample the model once per index (seed derived from the problem and index), each stopped as soon as
    its code block closes."""
    prompt = runtime.format_chat(mbpp_messages(problem))
    for index in indexes:
        cancel = threading.Event()
        pieces: list[str] = []

        def on_token(piece: str, pieces: list[str] = pieces, cancel: threading.Event = cancel) -> None:
            pieces.append(piece)
            if "\n" in piece and _fence_closed("".join(pieces)):
                cancel.set()

        generation = runtime.generate(prompt, max_tokens=settings.max_tokens, temperature=settings.temperature,
                                      top_p=settings.top_p, seed=sample_seed(problem.task_id, index, seed),
                                      cancel=cancel, on_token=on_token)
        yield {"problem": problem.task_id, "index": index, "seed": generation.seed, "text": generation.text,
               "finish_reason": "stop" if generation.finish_reason == "cancelled" else generation.finish_reason,
               "completion_tokens": generation.completion_tokens}


def _is_stub(code: str, name: str) -> bool:
    """A function whose body does nothing (`pass`, `...`, a docstring only)."""
    try:
        tree = mutate.parse(code)
    except SyntaxError:
        return True
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            return all(isinstance(s, ast.Pass) for s in body)
    return True


def sampled_program(text: str, function_name: str) -> tuple[str | None, str]:
    """The program a sample proposes (its imports, helpers and the function), or None and why not."""
    candidate = parse_answer(text, function_name)
    if not candidate.usable:
        return None, f"unusable answer: {candidate.reject_reason}"
    code = "\n".join(candidate.imports) + ("\n\n\n" if candidate.imports else "") + candidate.code
    code = normalize_code(code)
    if _is_stub(code, function_name):
        return None, "the function does nothing"
    if mutate.normalized_ast(code) is None:
        return None, "does not parse"
    return code, "renamed" if candidate.renamed_from else ""


# ---------------------------------------------------------------------------------------------------------------
# Mbpp-R
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class MbpprSettings:
    cap: int = 16  # tasks per problem, all sources together (model samples first)
    attempts: int = 48  # mutants tried per problem at most (most equivalent mutants pass the tests)
    seed: int = 0


@dataclass
class Candidate:
    source: str
    rank: int  # order of preference within the problem
    code: str
    bug_class: str | None
    meta: dict[str, Any]


def mbppr_candidates(problem: MbppProblem, samples: list[dict[str, Any]], settings: MbpprSettings,
                     rejected: Counter) -> Iterator[Candidate]:
    """The problem's candidate buggy programs in preference order: its model samples (by index), then at
    most `settings.attempts` of its mutants, in a seeded order that takes the bug classes in turn.
    Unusable samples are counted in `rejected` and skipped."""
    for sample in sorted(samples, key=lambda s: s["index"]):
        code, note = sampled_program(sample["text"], problem.function_name)
        if code is None:
            rejected[f"{SOURCE_MODEL}: {note.split(':')[0]}"] += 1
            continue
        meta = {"sample_index": sample["index"], "sample_seed": sample["seed"],
                "finish_reason": sample["finish_reason"]}
        if note == "renamed":
            meta["renamed"] = True
        yield Candidate(SOURCE_MODEL, sample["index"], code, None, meta)
    mutants = mutate.pick(mutate.mutations(problem.code, problem.function_name),
                          count=settings.attempts, seed=f"{settings.seed}:{problem.task_id}")
    for position, mutant in enumerate(mutants):
        yield Candidate(SOURCE_MUTATION, 1000 + position, mutant.code, mutant.bug_class,
                        {"mutation": mutant.description, "mutation_line": mutant.line})


def verify_program(problem: MbppProblem, code: str, run_settings: RunSettings, workspace: Workspace) -> dict[str, Any]:
    """Whether `code` is a real bug for the problem (it defines the function, loads, and fails a test, which
    calls the function), with its run and trace; as a dict, the form the run cache stores."""
    try:
        find_function(code, problem.function_name)
    except (LookupError, ValueError) as error:
        return {"kept": False, "reason": f"does not define the function ({type(error).__name__})"}
    found = probe(code, problem.function_name, list(problem.tests), setup=problem.setup, settings=run_settings,
                  workspace=workspace)
    if found.load_error:
        return {"kept": False, "reason": "does not run (the module fails to load)"}
    if found.failing_index is None:
        return {"kept": False, "reason": "passes every test"}
    if not found.trace:
        return {"kept": False, "reason": "the failing test never calls the function (no trace)"}
    return {"kept": True, "reason": "", "results": _result_dicts(found.results), "failing_test": found.failing_index,
            "failing_message": found.failing_message, "trace": found.trace, "trace_steps": found.trace_steps,
            "trace_truncated": found.trace_truncated}


def mbppr_record(problem: MbppProblem, candidate: Candidate, verdict: dict[str, Any]) -> TaskRecord:
    return TaskRecord(
        id=f"mbpp-r/{problem.task_id}/{candidate.source}-{_sha(candidate.code)}", dataset="mbpp-r",
        split=problem.split, problem_id=problem.problem_id, source=candidate.source, bug_class=candidate.bug_class,
        function_name=problem.function_name, problem=problem.text, buggy_code=candidate.code, fix_code=problem.code,
        tests=list(problem.tests), test_setup=problem.setup, hidden_tests=[], results=verdict["results"],
        failing_test=verdict["failing_test"], failing_message=verdict["failing_message"], trace=verdict["trace"],
        trace_steps=verdict["trace_steps"], trace_truncated=verdict["trace_truncated"],
        meta={**candidate.meta, "rank": candidate.rank})


# ---------------------------------------------------------------------------------------------------------------
# Resumable stages
# ---------------------------------------------------------------------------------------------------------------


class StageLog:
    """An append-only JSONL log of one stage. Its first line holds the stage's fingerprint (the inputs and
    settings that determine its results); an existing log with another fingerprint is started over. Each
    entry is written and flushed as soon as it is known, so a killed build loses at most a line, and a cut
    last line is dropped on reopening."""

    def __init__(self, path: Path, fingerprint: dict[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            if not data.endswith(b"\n"):
                data = data[: data.rfind(b"\n") + 1]
            lines = data.decode("utf-8").splitlines()
            header = json.loads(lines[0]) if lines else None
            if header == {"fingerprint": fingerprint}:
                self.entries = [json.loads(line) for line in lines[1:]]
                with open(self.path, "wb") as out:
                    out.write(data)
            else:
                self.path.unlink()
        if not self.path.exists():
            with open(self.path, "w", encoding="utf-8") as out:
                out.write(_dumps({"fingerprint": fingerprint}) + "\n")
        self._out = open(self.path, "a", encoding="utf-8")

    @property
    def resumed(self) -> int:
        return len(self.entries)

    def append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._out.write(_dumps(entry) + "\n")
            self._out.flush()
            self.entries.append(entry)

    def close(self) -> None:
        self._out.close()


def fingerprint_of(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:16]


class Progress:
    """A small progress bar on stderr (a line every few seconds when stderr is not a terminal)."""

    def __init__(self, label: str, total: int, stream: Any = None, enabled: bool = True) -> None:
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.started = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.note = ""
        self._drawn = -1
        self._draw(force=True)

    def update(self, count: int = 1, note: str = "") -> None:
        with self._lock:
            self.done += count
            self.note = note or self.note
            self._draw(force=self.done >= self.total)

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self.tty else 10.0):
            return
        self._last = now
        self._drawn = self.done
        elapsed = now - self.started
        fraction = self.done / self.total if self.total else 1.0
        eta = f"{elapsed / fraction - elapsed:5.0f}s left" if 0 < fraction < 1 else f"{elapsed:5.0f}s"
        width = 28
        bar = "#" * int(width * fraction) + "-" * (width - int(width * fraction))
        line = f"{self.label:<18} [{bar}] {self.done}/{self.total} {eta} {self.note}"[:110]
        if self.tty:
            self.stream.write("\r" + line.ljust(110))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            if self._drawn != self.done:
                self._draw(force=True)
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()


@dataclass
class BuildConfig:
    out: Path = DEFAULT_OUT_DIR
    data_dir: Path = DEFAULT_DATA_DIR
    only: tuple[str, ...] = ("hefix", "mbppr")
    limit: int | None = None  # problems per split (and HeFix+ tasks): a small build for tests
    use_model: bool = True
    workers: int = 2
    run: RunSettings = field(default_factory=RunSettings)
    samples: SampleSettings = field(default_factory=SampleSettings)
    mbppr: MbpprSettings = field(default_factory=MbpprSettings)
    progress: bool = True
    log: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr, flush=True))


def _done_marker(config: BuildConfig, stage: str) -> Path:
    return config.out / WORK_DIR / f"{stage}.done"


def _stage_done(config: BuildConfig, stage: str, fingerprint: dict[str, Any], outputs: list[Path]) -> bool:
    marker = _done_marker(config, stage)
    if not marker.exists() or not all(path.exists() for path in outputs):
        return False
    recorded = json.loads(marker.read_text())
    return recorded.get("fingerprint") == fingerprint and all(
        recorded.get("sha256", {}).get(path.name) == sha256_file(path) for path in outputs)


def _mark_done(config: BuildConfig, stage: str, fingerprint: dict[str, Any], outputs: list[Path],
               summary: dict[str, Any]) -> None:
    marker = _done_marker(config, stage)
    marker.write_text(json.dumps({"fingerprint": fingerprint, "sha256": {p.name: sha256_file(p) for p in outputs},
                                  "summary": summary}, indent=1, sort_keys=True) + "\n")


def _read_done_summary(config: BuildConfig, stage: str) -> dict[str, Any]:
    marker = _done_marker(config, stage)
    return json.loads(marker.read_text()).get("summary", {}) if marker.exists() else {}


def _parallel(items: list[Any], work: Callable[[Any], None], workers: int) -> None:
    if workers <= 1:
        for item in items:
            work(item)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(work, items):
            pass


def build_hefix(config: BuildConfig, workspace: Workspace) -> dict[str, Any]:
    sources = load_hefix_sources(config.data_dir)
    if config.limit is not None:
        sources = sources[: config.limit]
    inputs = input_hashes(config.data_dir, ["humanevalpack", "humanevalplus", "humanevalplus_originfmt"])
    settings = replace(config.run, hidden_timeout=HEFIX_HIDDEN_TIMEOUT)
    fingerprint = {"stage": "hefix", "build": BUILD_VERSION, "schema": SCHEMA_VERSION, "limit": config.limit,
                   "inputs": inputs, "run": asdict(settings)}
    output = config.out / HEFIX_FILE
    if _stage_done(config, "hefix", fingerprint, [output]):
        config.log(f"hefix: up to date ({output})")
        return _read_done_summary(config, "hefix")
    log = StageLog(config.out / WORK_DIR / "hefix.log.jsonl", fingerprint)
    done = {entry["index"]: entry for entry in log.entries if entry.get("kind") == "task"}
    todo = [source for source in sources if source.index not in done]
    if done:
        config.log(f"hefix: resuming, {len(done)} of {len(sources)} tasks already built")
    bar = Progress("HeFix+ tasks", len(sources), enabled=config.progress)
    bar.update(len(done))

    def work(source: HefixSource) -> None:
        record = hefix_task(source, settings, workspace)
        log.append({"kind": "task", "index": source.index, "record": record.to_json()})
        bar.update(1, record.id)

    try:
        _parallel(todo, work, config.workers)
    finally:
        bar.close()
        log.close()
    records = {entry["index"]: entry["record"] for entry in log.entries if entry.get("kind") == "task"}
    ordered = [TaskRecord.from_json(records[source.index]) for source in sources]
    write_jsonl(output, ordered)
    summary = {"tasks": len(ordered),
               "reference_fix": dict(Counter(r.meta["reference_fix"] for r in ordered)),
               "decisions": {r.problem_id: r.meta["decisions"] for r in ordered if r.meta["decisions"]},
               "buggy_fails_hidden": sum(1 for r in ordered if r.meta["hidden_results"]
                                         and r.meta["hidden_results"][0]["outcome"] != "passed")}
    _mark_done(config, "hefix", fingerprint, [output], summary)
    return summary


def mbppr_problems(config: BuildConfig) -> tuple[list[MbppProblem], dict[str, str]]:
    """The train and dev problems to build (after `--limit`), and the ones left out, with why."""
    problems = load_mbpp(config.data_dir)
    leaks = dev_leaks(problems)
    chosen, excluded = [], {}
    for split in ("train", "dev"):
        in_split = [p for p in problems if p.split == split]
        if config.limit is not None:
            in_split = in_split[: config.limit]
        for problem in in_split:
            if problem.task_id in leaks:
                excluded[problem.problem_id] = leaks[problem.task_id]
            elif not problem.function_name:
                excluded[problem.problem_id] = "no function called by the tests is defined in the reference code"
            else:
                chosen.append(problem)
    return chosen, excluded


def build_samples(config: BuildConfig, problems: list[MbppProblem]) -> dict[str, Any]:
    """Sample the base model on each problem; the samples (raw answers) go to `mbpp_samples.jsonl.gz`.

    Already recorded samples are kept (a larger `per_problem` only adds samples). Without the model
    (`use_model=False`), nothing new is sampled and the recorded samples are used as they are."""
    output = config.out / SAMPLES_FILE
    settings = config.samples
    model_path = _model_path(settings.model) if config.use_model else None
    fingerprint = {"stage": "samples", "prompt": SAMPLE_PROMPT_VERSION, "seed": config.mbppr.seed,
                   "max_tokens": settings.max_tokens, "temperature": settings.temperature, "top_p": settings.top_p,
                   "inputs": input_hashes(config.data_dir, ["mbpp"])}
    if model_path is not None:
        fingerprint["model_sha256"] = sha256_file(model_path)
    recorded: dict[tuple[int, int], dict[str, Any]] = {}
    if output.exists():
        for row in read_jsonl(output):
            recorded[(row["problem"], row["index"])] = row
    if model_path is None:
        header, logged = _logged_samples(config.out / WORK_DIR / "samples.log.jsonl")
        if any(not row.get("settings") for key, row in recorded.items() if key in logged):
            _write_samples(output, recorded, logged, header)
        config.log(f"samples: no model; using the {len(recorded)} recorded samples")
        return {"recorded": len(recorded), "new": 0}
    log = StageLog(config.out / WORK_DIR / "samples.log.jsonl", fingerprint)
    logged = {(entry["problem"], entry["index"]): entry for entry in log.entries}
    recorded.update(logged)
    # Sample index 0 of every problem before any index 1, and the splits interleaved in proportion, so
    # that a run stopped early still covers train and dev alike (each sample's seed is its own: the order
    # changes nothing in what is sampled).
    position = {}
    for split in ("train", "dev"):
        in_split = [p for p in problems if p.split == split]
        position.update({p.task_id: (n + 0.5) / len(in_split) for n, p in enumerate(in_split)})
    wanted = sorted(((p, i) for p in problems for i in range(settings.per_problem) if (p.task_id, i) not in recorded),
                    key=lambda item: (item[1], position[item[0].task_id], item[0].task_id))
    if not wanted:
        log.close()
        config.log(f"samples: all {len(problems) * settings.per_problem} samples recorded")
        _write_samples(output, recorded, logged, fingerprint)
        return {"recorded": len(recorded), "new": 0}
    from nextls.model import LlamaRuntime

    config.log(f"samples: sampling {len(wanted)} programs from {model_path.name} "
               f"({len(recorded)} already recorded)")
    runtime = LlamaRuntime(model_path, n_ctx=2048, n_threads=settings.threads, seed=config.mbppr.seed)
    bar = Progress("model samples", len(wanted), enabled=config.progress)
    tokens = 0
    started = time.monotonic()
    try:
        for problem, index in wanted:
            for row in sample_programs(runtime, problem, [index], settings, config.mbppr.seed):
                log.append(row)
                recorded[(row["problem"], row["index"])] = logged[(row["problem"], row["index"])] = row
                tokens += row["completion_tokens"]
                bar.update(1, f"{problem.problem_id} {tokens / max(time.monotonic() - started, 1e-9):.0f} tok/s")
    finally:
        bar.close()
        log.close()
        runtime.close()
        _write_samples(output, recorded, logged, fingerprint)
    return {"recorded": len(recorded), "new": len(wanted), "tokens": tokens,
            "seconds": round(time.monotonic() - started, 1)}


SAMPLE_SETTING_KEYS = ("prompt", "max_tokens", "temperature", "top_p", "model_sha256")


def _write_samples(output: Path, recorded: dict[tuple[int, int], dict[str, Any]],
                   logged: dict[tuple[int, int], dict[str, Any]], fingerprint: dict[str, Any]) -> None:
    """The samples file: each row with the settings it was sampled with (those of the log's fingerprint for
    the samples in the log, else whatever the row already carries)."""
    keys = ("problem", "index", "seed", "text", "finish_reason", "completion_tokens")
    settings = {key: fingerprint[key] for key in SAMPLE_SETTING_KEYS if key in fingerprint}

    def row(key: tuple[int, int]) -> dict[str, Any]:
        entry = recorded[key]
        out = {name: entry[name] for name in keys}
        out["settings"] = entry.get("settings") or (settings if key in logged else {})
        return out

    write_jsonl(output, (row(key) for key in sorted(recorded)))


def _logged_samples(path: Path) -> tuple[dict[str, Any], dict[tuple[int, int], dict[str, Any]]]:
    """The samples log's fingerprint and entries, read without checking the fingerprint (no model needed)."""
    if not path.exists():
        return {}, {}
    lines = path.read_bytes().decode("utf-8").split("\n")[:-1]
    header = json.loads(lines[0])["fingerprint"] if lines else {}
    entries = {}
    for line in lines[1:]:
        entry = json.loads(line)
        entries[(entry["problem"], entry["index"])] = entry
    return header, entries


def _model_path(explicit: str | None) -> Path | None:
    from nextls.model import ModelError, resolve_model

    try:
        return Path(resolve_model(explicit))
    except ModelError:
        return None


def build_mbppr(config: BuildConfig, workspace: Workspace, problems: list[MbppProblem],
                excluded: dict[str, str]) -> dict[str, Any]:
    """Verify and trace each problem's candidates until its cap, and write the train and dev files.

    Every run's verdict goes to a cache log (keyed by problem and program, valid as long as the run
    settings and the MBPP file are the same), appended as soon as it is known: an interrupted build, or a
    rebuild with more model samples or another cap, runs only the programs it has not run yet."""
    samples_file = config.out / SAMPLES_FILE
    samples: dict[int, list[dict[str, Any]]] = {}
    if samples_file.exists():
        for row in read_jsonl(samples_file):
            if row["index"] < config.samples.per_problem:
                samples.setdefault(row["problem"], []).append(row)
    runs_fingerprint = {"stage": "mbppr-runs", "build": BUILD_VERSION, "run": asdict(config.run),
                        "inputs": input_hashes(config.data_dir, ["mbpp"])}
    fingerprint = {**runs_fingerprint, "stage": "mbppr", "schema": SCHEMA_VERSION, "limit": config.limit,
                   "mbppr": asdict(config.mbppr), "samples_per_problem": config.samples.per_problem,
                   "samples": fingerprint_of({str(k): v for k, v in sorted(samples.items())})}
    outputs = [config.out / name for name in MBPPR_FILES.values()]
    if _stage_done(config, "mbppr", fingerprint, outputs):
        config.log("mbppr: up to date")
        return _read_done_summary(config, "mbppr")
    runs = StageLog(config.out / WORK_DIR / "mbppr-runs.log.jsonl", runs_fingerprint)
    cache = {(entry["problem"], entry["key"]): entry for entry in runs.entries}
    if cache:
        config.log(f"mbppr: {len(cache)} program runs cached from an earlier build")
    built: dict[int, tuple[list[TaskRecord], Counter, str | None]] = {}
    bar = Progress("Mbpp-R problems", len(problems), enabled=config.progress)

    def work(problem: MbppProblem) -> None:
        built[problem.task_id] = _build_problem(problem, samples.get(problem.task_id, []), config, workspace,
                                                runs, cache)
        bar.update(1, problem.problem_id)

    try:
        _parallel(problems, work, config.workers)
    finally:
        bar.close()
        runs.close()
    records: dict[str, list[TaskRecord]] = {"train": [], "dev": []}
    rejected: Counter = Counter()
    for problem in problems:
        kept, problem_rejected, reason = built[problem.task_id]
        rejected.update(problem_rejected)
        if reason:
            excluded[problem.problem_id] = reason
        records[problem.split].extend(kept)
    for split, name in MBPPR_FILES.items():
        write_jsonl(config.out / name, records[split])
    summary = {"problems": {split: len({r.problem_id for r in rows}) for split, rows in records.items()},
               "tasks": {split: len(rows) for split, rows in records.items()},
               "excluded": dict(sorted(excluded.items(), key=lambda kv: int(kv[0].split("/")[1]))),
               "rejected": dict(sorted(rejected.items()))}
    _mark_done(config, "mbppr", fingerprint, outputs, summary)
    return summary


def _build_problem(problem: MbppProblem, samples: list[dict[str, Any]], config: BuildConfig, workspace: Workspace,
                   runs: StageLog, cache: dict[tuple[int, str], dict[str, Any]]
                   ) -> tuple[list[TaskRecord], Counter, str | None]:
    """Check the reference, then take candidates in preference order until the cap: (tasks, rejections by
    reason, why the problem is left out or None)."""
    rejected: Counter = Counter()

    def verdict(key: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        entry = cache.get((problem.task_id, key))
        if entry is None:
            entry = {"problem": problem.task_id, "key": key, **run()}
            cache[(problem.task_id, key)] = entry
            runs.append(entry)
        return entry

    def run_reference() -> dict[str, Any]:
        found = probe(problem.code, problem.function_name, list(problem.tests), setup=problem.setup,
                      settings=config.run, workspace=workspace, trace=False)
        return {"kept": found.passed, "reason": "" if found.passed else _why_failed(found)}

    reference = verdict("reference", run_reference)
    if not reference["kept"]:
        return [], rejected, f"the reference solution fails its own tests in the sandbox ({reference['reason']})"
    seen = {mutate.normalized_ast(problem.code)}
    kept: list[TaskRecord] = []
    for candidate in mbppr_candidates(problem, samples, config.mbppr, rejected):
        if len(kept) >= config.mbppr.cap:
            break
        key = mutate.normalized_ast(candidate.code)
        if key in seen:
            rejected[f"{candidate.source}: duplicate"] += 1
            continue
        seen.add(key)
        result = verdict(_sha(candidate.code, 16),
                         lambda code=candidate.code: verify_program(problem, code, config.run, workspace))
        if result["kept"]:
            kept.append(mbppr_record(problem, candidate, result))
        else:
            rejected[f"{candidate.source}: {result['reason']}"] += 1
    if not kept:
        if not rejected:
            return kept, rejected, "no candidate program: no mutation applies to the reference, no model sample"
        tried = ", ".join(f"{reason} {count}" for reason, count in sorted(rejected.items()))
        return kept, rejected, f"no buggy program: no candidate fails a test ({tried})"
    return kept, rejected, None


# ---------------------------------------------------------------------------------------------------------------
# The whole build, the manifest, the checks, the summary table
# ---------------------------------------------------------------------------------------------------------------


def build(config: BuildConfig) -> dict[str, Any]:
    """Build the stages in `config.only` into `config.out`, then write the manifest and check the files.

    Each stage is skipped when its outputs are up to date (same inputs and settings) and resumes from its
    log when it was interrupted. Returns the manifest."""
    config.out = Path(config.out)
    work = config.out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    (work / ".gitignore").write_text("*\n")
    (config.out / SCHEMA_FILE).write_text(json.dumps(json_schema(), indent=2) + "\n")
    timings: dict[str, float] = {}
    with reproducible_children():
        workspace = Workspace(work / "programs")
        try:
            if "hefix" in config.only:
                started = time.monotonic()
                build_hefix(config, workspace)
                timings["hefix"] = time.monotonic() - started
            if "mbppr" in config.only:
                problems, excluded = mbppr_problems(config)
                started = time.monotonic()
                sampled = build_samples(config, problems)
                timings["samples"] = time.monotonic() - started
                if sampled.get("new"):
                    config.log(f"samples: {sampled['new']} new samples, {sampled.get('tokens', 0)} tokens")
                started = time.monotonic()
                build_mbppr(config, workspace, problems, excluded)
                timings["mbppr"] = time.monotonic() - started
        finally:
            workspace.close()
            shutil.rmtree(work / "programs", ignore_errors=True)
    manifest = write_manifest(config)
    problems_found = check_files(config.out)
    for line in problems_found:
        config.log(f"CHECK FAILED: {line}")
    manifest["timings"] = {name: round(seconds, 1) for name, seconds in timings.items()}
    manifest["check_failures"] = problems_found
    return manifest


def dataset_files(directory: Path) -> dict[str, Path]:
    names = [HEFIX_FILE, *MBPPR_FILES.values()]
    return {name: Path(directory) / name for name in names if (Path(directory) / name).exists()}


def write_manifest(config: BuildConfig) -> dict[str, Any]:
    """manifest.json: format and versions, the inputs and outputs with their sha256, the counts, the
    settings and the per-stage decisions. Nothing in it depends on when or how fast it was built."""
    out = Path(config.out)
    files = dataset_files(out)
    tasks = {name: read_tasks(path) for name, path in files.items()}
    manifest: dict[str, Any] = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "build_version": BUILD_VERSION,
        "inputs": {name: {"path": INPUT_FILES[name], "sha256": sha256_file(Path(config.data_dir) / INPUT_FILES[name])}
                   for name in INPUT_FILES if (Path(config.data_dir) / INPUT_FILES[name]).exists()},
        "files": {name: {"sha256": sha256_file(path), "tasks": len(tasks[name])} for name, path in files.items()},
        "counts": summary_rows([task for rows in tasks.values() for task in rows]),
    }
    for stage in ("hefix", "mbppr"):
        marker = _done_marker(config, stage)
        if marker.exists():
            settings = json.loads(marker.read_text())["fingerprint"]
            manifest.setdefault("settings", {})[stage] = {k: v for k, v in settings.items() if k != "inputs"}
    if (out / SAMPLES_FILE).exists():
        samples = list(read_jsonl(out / SAMPLES_FILE))
        settings = sorted({json.dumps(s.get("settings", {}), sort_keys=True) for s in samples})
        manifest["files"][SAMPLES_FILE] = {"sha256": sha256_file(out / SAMPLES_FILE), "samples": len(samples),
                                           "problems": len({s["problem"] for s in samples}),
                                           "settings": [json.loads(text) for text in settings]}
    for stage in ("hefix", "mbppr"):
        summary = _read_done_summary(config, stage)
        if summary:
            manifest[stage] = summary
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def summary_rows(tasks: list[TaskRecord]) -> list[dict[str, Any]]:
    """Tasks and problems per dataset, split, source and bug class."""
    groups: dict[tuple[str, str, str, str], set[str]] = {}
    counts: Counter = Counter()
    for task in tasks:
        key = (task.dataset, task.split, task.source, task.bug_class or "-")
        counts[key] += 1
        groups.setdefault(key, set()).add(task.problem_id)
    order = {"hefix+": 0, "mbpp-r": 1, "train": 0, "dev": 1, "test": 2}
    return [{"dataset": d, "split": s, "source": src, "bug_class": b, "tasks": counts[(d, s, src, b)],
             "problems": len(groups[(d, s, src, b)])}
            for d, s, src, b in sorted(counts, key=lambda k: (order.get(k[0], 9), order.get(k[1], 9), k[2], k[3]))]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The summary table, with a total line per dataset split."""
    lines = [f"{'dataset':<8} {'split':<6} {'source':<13} {'bug class':<16} {'tasks':>6} {'problems':>8}"]
    lines.append("-" * len(lines[0]))
    totals: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        lines.append(f"{row['dataset']:<8} {row['split']:<6} {row['source']:<13} {row['bug_class']:<16} "
                     f"{row['tasks']:>6} {row['problems']:>8}")
        totals.setdefault((row["dataset"], row["split"]), []).append(row["tasks"])
    lines.append("-" * len(lines[0]))
    for (dataset, split), values in totals.items():
        lines.append(f"{dataset:<8} {split:<6} {'all':<13} {'all':<16} {sum(values):>6}")
    return "\n".join(lines)


def check_files(directory: Path) -> list[str]:
    """Static checks of a built dataset: the schema, unique ids, every traced test failing, and no dev
    problem in train (by id, nor by the same code up to names)."""
    failures = []
    files = dataset_files(directory)
    seen_ids: set[str] = set()
    by_split: dict[str, list[TaskRecord]] = {}
    for name, path in files.items():
        for task in read_tasks(path):
            for problem in validate(task):
                failures.append(f"{name}: {task.id}: {problem}")
            if task.id in seen_ids:
                failures.append(f"{name}: duplicate id {task.id}")
            seen_ids.add(task.id)
            by_split.setdefault(task.split, []).append(task)
    train, dev = by_split.get("train", []), by_split.get("dev", [])
    overlap = {t.problem_id for t in train} & {t.problem_id for t in dev}
    if overlap:
        failures.append(f"problems in both train and dev: {sorted(overlap)[:10]}")
    dev_keys = {structure_key(code) for code in {t.fix_code for t in dev}}
    leaked = sorted({t.problem_id for t in train if _structure_key_cached(t.fix_code) in dev_keys})
    if leaked:
        failures.append(f"train problems with the code of a dev problem: {leaked[:10]}")
    return failures


def check_tasks(tasks: list[TaskRecord], settings: RunSettings | None = None, workers: int = 2,
                progress: bool = True) -> list[str]:
    """Run the tasks again in the sandbox: each reference fix passes its tests (hidden ones too), each
    buggy program fails the same tests as recorded, and its trace renders the same."""
    settings = settings or RunSettings(hidden_timeout=HEFIX_HIDDEN_TIMEOUT)
    failures: list[str] = []
    lock = threading.Lock()
    bar = Progress("checking tasks", len(tasks), enabled=progress)

    def one(task: TaskRecord) -> None:
        found_fix = probe(task.fix_code, task.function_name, task.tests, setup=task.test_setup,
                          hidden=task.hidden_tests, settings=settings, workspace=workspace, trace=False)
        found_bug = probe(task.buggy_code, task.function_name, task.tests, setup=task.test_setup,
                          settings=settings, workspace=workspace)
        problems = []
        if not found_fix.passed:
            problems.append(f"the reference fix fails: {_why_failed(found_fix)}")
        if found_bug.failing_index is None:
            problems.append("the buggy program passes every test")
        elif _result_dicts(found_bug.results) != task.results:
            problems.append("the buggy program's results differ from the recorded ones")
        elif found_bug.trace != task.trace:
            problems.append("the trace renders differently")
        with lock:
            failures.extend(f"{task.id}: {problem}" for problem in problems)
        bar.update(1, task.id)

    with reproducible_children():
        workspace = Workspace()
        try:
            _parallel(tasks, one, workers)
        finally:
            workspace.close()
            bar.close()
    return failures
