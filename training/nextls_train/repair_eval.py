"""What `nextls fix` offers, by method: the repair search, the model, or both in one ranked list.

    nextls-train eval --method search|model|both --dataset hefix-plus|mbpp-r-dev [--per-problem 1]
                      [--model-tasks N] [--search-budget S] [--out DIR]
    nextls-train compare --config training/runs/repair-cpu.toml          (both datasets, the results table)

* **search**: each task's buggy module and tests are written to real files, traced as the server traces them
  (`nextls.trace.capture.trace_function`), and `nextls.search.search_fixes` runs on that report; its verified
  candidates, in its ranking, are what it offers. Time to the first verified fix counts from the start of the
  trace (the server has to trace first); `on_candidate` times each candidate.
* **model**: k answers (the server's defaults: k=4, T=0.8, top-p 0.95, 512 tokens) from the server's prompt and
  runtime, verified by the server's verifier (`nextls_train.evaluate.evaluate`'s sampled stage, resumable). Its
  time to the first verified fix is the generation time of the answers up to and including the first verified
  one (the prompt's evaluation is in the first answer's time; verification, ~0.1-0.5 s, is not counted).
* **both**: `nextls fix` with its defaults: the search, then, only when it verified nothing, the model's k
  answers (`FixOptions.sample_after_search` is off). Its first verified fix comes from the search when the
  search found one, else after the whole search, from the model. Computed from the two runs above on the same
  tasks.

Every offered fix is judged again by `nextls_train.hidden.HiddenJudge`: *verified* (all visible tests pass) and
*correct* (the hidden tests pass too). Per task, the first offered fix decides; the share of verified tasks whose
first fix is not correct is the overfitting share. Everything is appended as it comes (`search/attempts.jsonl`,
`model/`, `hidden.jsonl`), so a rerun resumes; `results.jsonl` (one line per task and method) and
`summary.json` are rewritten at the end.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nextls.runner import RunConfig
from nextls.sandbox import Limits
from nextls.trace.capture import trace_function
from nextls_train.data import TaskRecord, _layout_tests
from nextls_train.evaluate import DATASETS, JUDGED, EvalSettings, Models, ModelSpec, dataset_tasks, evaluate
from nextls_train.filter import VERDICTS
from nextls_train.hidden import HiddenJudge, wilson
from nextls_train.records import AppendLog, Logger, read_log, write_json, write_jsonl
from nextls_train.sample import read_samples

METHODS = ("search", "model", "both")
ATTEMPTS = "attempts.jsonl"
HIDDEN = "hidden.jsonl"
SERVER_MODEL = ModelSpec()  # the server's default model
MAX_OFFERED = 4  # verified fixes judged per task and method (the first decides; the rest feed the offered share)

# A search: (trace report, run config, on_candidate callback) -> ranked candidates (`nextls.fix.FixCandidate`).
Search = Callable[[Any, RunConfig, Callable[[Any], None]], list[Any]]


@dataclass(frozen=True)
class RepairSettings:
    methods: tuple[str, ...] = METHODS
    per_problem: int = 1  # tasks per problem (HeFix+ has one per problem; Mbpp-R dev 89 problems)
    limit: int = 0  # 0: the whole selection; else its first N tasks (problems taken in turn)
    model_tasks: int = 0  # model and both: the first N tasks of the selection (0: all); ~80 s a task on 2 cores
    k: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int = 0
    threads: int = 2
    workers: int = 2
    search_budget: float = 20.0  # seconds per task (`nextls fix`'s default)
    test_timeout: float = 5.0
    hidden_timeout: float = 60.0
    memory_mb: int = 1024

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown or not self.methods:
            raise ValueError(f"unknown method(s) {sorted(unknown)}: choose from {', '.join(METHODS)}")


def dataset_folder(dataset: str) -> str:
    """A dataset's folder in a comparison: its name, or its file's name without the suffixes."""
    return dataset if dataset in DATASETS else Path(dataset).name.split(".")[0]


def task_group(task: TaskRecord) -> str:
    """The row a task is counted in beside "all": its bug class, or where its unlabelled bug came from."""
    return task.bug_class or f"unlabelled ({task.source})"


def default_search(settings: RepairSettings) -> Search:
    from nextls.search import SearchOptions, search_fixes

    options = SearchOptions(budget=settings.search_budget)

    def search(report: Any, config: RunConfig, on_candidate: Callable[[Any], None]) -> list[Any]:
        return search_fixes(report, options=options, config=config, on_candidate=on_candidate)

    return search


def run_config(task: TaskRecord, settings: RepairSettings) -> RunConfig:
    limits = Limits(wall_time=settings.test_timeout * len(task.tests) + 10, memory_bytes=settings.memory_mb << 20)
    return RunConfig(test_timeout=settings.test_timeout, setup_code=task.test_setup, limits=limits)


def run_search(tasks: Sequence[TaskRecord], out: Path, settings: RepairSettings, judge: HiddenJudge, search: Search,
               *, log: Logger, progress: bool = True) -> None:
    """One attempt per task into `out/attempts.jsonl` (tasks on disk are skipped)."""
    root = Path(tempfile.mkdtemp(prefix="nextls-search-eval-"))
    try:
        with AppendLog(Path(out) / ATTEMPTS, key=lambda item: item["task"]) as attempts:
            todo = [task for task in tasks if task.id not in attempts]
            if len(todo) < len(tasks):
                log(f"search: resuming, {len(tasks) - len(todo)} of {len(tasks)} tasks on disk")
            for number, task in enumerate(todo, 1):
                attempt = search_attempt(task, root / f"t{number}", settings, judge, search)
                attempts.append(attempt)
                if progress:
                    found = f"verified in {attempt['first_verified_s']:.1f}s" if attempt["verified"] else \
                        attempt.get("error", "no fix")
                    log(f"search {number}/{len(todo)} {task.id}: {found}, {attempt['tried']} candidates, "
                        f"{attempt['seconds']:.1f}s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def search_attempt(task: TaskRecord, folder: Path, settings: RepairSettings, judge: HiddenJudge,
                   search: Search) -> dict[str, Any]:
    folder.mkdir(parents=True)
    solution = folder / "solution.py"
    solution.write_text(task.buggy_code, encoding="utf-8")
    tests_file = folder / "tests.py"
    tests_file.write_text(_layout_tests(task.tests)[0], encoding="utf-8")
    config = run_config(task, settings)
    started = time.perf_counter()
    events: list[tuple[float, bool]] = []
    try:
        report = trace_function(solution, task.function_name, tests_file=tests_file, config=config)
        traced = time.perf_counter() - started
        candidates = search(report, config, lambda candidate: events.append(
            (time.perf_counter() - started, bool(candidate.verified))))
    except Exception as error:  # one task's failure (say, tests the server cannot find) is that task's alone
        seconds = time.perf_counter() - started
        return {"task": task.id, "method": "search", "verified": False, "first_verified_s": None,
                "seconds": round(seconds, 3), "trace_s": None, "tried": len(events), "offered": [],
                "error": f"{type(error).__name__}: {error}"}
    seconds = time.perf_counter() - started
    offered = []
    for candidate in [c for c in candidates if c.verified][:MAX_OFFERED]:
        visible, correct = judge.judge(task, candidate.new_source)
        offered.append({"source": getattr(candidate, "source", "search"),
                        "description": getattr(candidate, "description", ""), "edit_size": candidate.edit_size,
                        "visible": visible, "correct": correct})
    offered.sort(key=lambda fix: not fix["visible"])  # the search's ranking, re-checked fixes first
    first = next((at for at, verified in events if verified), None)
    return {"task": task.id, "method": "search", "verified": any(o["visible"] for o in offered),
            "first_verified_s": round(first if first is not None else seconds, 3) if offered else None,
            "seconds": round(seconds, 3), "trace_s": round(traced, 3), "tried": max(len(events), len(candidates)),
            "offered": offered}


def run_model(tasks: Sequence[TaskRecord], dataset: str, out: Path, settings: RepairSettings, models: Models,
              model: ModelSpec, *, log: Logger, progress: bool = True) -> None:
    """k answers per task through the server's prompt, runtime and verifier (`evaluate`'s sampled stage)."""
    evaluate(model, dataset, True, model_eval_settings(settings), Path(out), models, log=log, progress=progress,
             tasks=tasks)


def model_eval_settings(settings: RepairSettings) -> EvalSettings:
    return EvalSettings(samples=settings.k, ks=(1, settings.k), greedy=False, temperature=settings.temperature,
                        top_p=settings.top_p, max_new_tokens=settings.max_new_tokens, seed=settings.seed,
                        threads=settings.threads, workers=settings.workers, test_timeout=settings.test_timeout,
                        memory_mb=settings.memory_mb)


def model_attempts(tasks: Sequence[TaskRecord], out: Path, settings: RepairSettings) -> dict[str, dict[str, Any]]:
    """Per task with all k answers verified and judged on disk: its attempt, in the shape of a search attempt."""
    samples = {(item["task"], item["index"]): item for item in read_samples(Path(out) / "sampled" / "samples")}
    verdicts = {(item["task"], item["index"]): item for item in read_log(Path(out) / "sampled" / VERDICTS)}
    judged = {(item["task"], item["index"]): item for item in read_log(Path(out) / "sampled" / JUDGED)}
    attempts = {}
    for task in tasks:
        keys = [(task.id, index) for index in range(settings.k)]
        if not all(key in samples and key in verdicts for key in keys):
            continue
        verified = [key for key in keys if verdicts[key]["status"] == "verified"]
        if not all(key in judged for key in verified):
            continue
        offered = sorted(({"source": "model", "description": f"answer {key[1] + 1}",
                           "edit_size": judged[key]["edit_size"], "visible": judged[key]["visible"],
                           "correct": judged[key]["correct"]} for key in verified[:MAX_OFFERED]),
                         key=lambda fix: (not fix["visible"], fix["edit_size"]))
        # Answers come one after another: the first verified one is there after the answers before it.
        first = sum(samples[key]["seconds"] for key in keys[: keys.index(verified[0]) + 1]) if verified else None
        attempts[task.id] = {"task": task.id, "method": "model", "verified": any(o["visible"] for o in offered),
                             "first_verified_s": round(first, 3) if first is not None else None,
                             "seconds": round(sum(samples[key]["seconds"] for key in keys), 3), "tried": settings.k,
                             "offered": offered}
    return attempts


def combine(search: dict[str, Any], model: dict[str, Any] | None) -> dict[str, Any] | None:
    """`nextls fix` with its defaults: the search; the model's k answers only when the search verified nothing
    (`sample_after_search` off). None when the model's attempt is needed and missing."""
    if search["verified"]:
        return {**search, "method": "both"}
    if model is None:
        return None
    first = search["seconds"] + model["first_verified_s"] if model["verified"] else None
    return {"task": search["task"], "method": "both", "verified": model["verified"],
            "first_verified_s": round(first, 3) if first is not None else None,
            "seconds": round(search["seconds"] + model["seconds"], 3), "tried": search["tried"] + model["tried"],
            "offered": model["offered"]}


def score(attempts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rates (with 95% Wilson intervals) over a group of attempts. The first offered fix decides a task."""
    n = len(attempts)
    verified = [a for a in attempts if a["verified"]]
    firsts = [a["offered"][0] for a in verified]
    hidden_tested = [a for a in attempts if _has_hidden(a)]
    correct = [a for a in hidden_tested if a["verified"] and a["offered"][0]["correct"]]
    judged = [fix for fix in firsts if fix["correct"] is not None]
    overfit = [fix for fix in judged if not fix["correct"]]
    all_offered = [fix for a in attempts for fix in a["offered"] if fix["visible"] and fix["correct"] is not None]
    times = sorted(a["first_verified_s"] for a in verified)
    return {
        "tasks": n, "verified": len(verified), "verified_rate": _rate(len(verified), n),
        "hidden_tasks": len(hidden_tested), "correct": len(correct), "correct_rate": _rate(len(correct),
                                                                                            len(hidden_tested)),
        "verified_judged": len(judged), "overfitting": len(overfit), "overfitting_share": _rate(len(overfit),
                                                                                              len(judged)),
        "offered_judged": len(all_offered), "offered_correct": sum(fix["correct"] for fix in all_offered),
        "first_verified_p50_s": _quantile(times, 0.5), "first_verified_p90_s": _quantile(times, 0.9),
        "candidates_tried_mean": round(statistics.fmean(a["tried"] for a in attempts), 1) if attempts else None,
        "candidates_tried": sum(a["tried"] for a in attempts),
    }


def _has_hidden(attempt: dict[str, Any]) -> bool:
    return bool(attempt.get("hidden_tests"))


def _rate(successes: int, n: int) -> dict[str, Any] | None:
    interval = wilson(successes, n)
    if interval is None:
        return None
    return {"value": round(successes / n, 4), "low": round(interval[0], 4), "high": round(interval[1], 4)}


def _quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by linear interpolation (numpy's default); None for no values."""
    if not values:
        return None
    position = q * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return round(values[low] + (values[high] - values[low]) * (position - low), 2)


def evaluate_repair(dataset: str, out: Path, settings: RepairSettings, *, model: ModelSpec = SERVER_MODEL,
                    models: Models | None = None, search: Search | None = None, log: Logger | None = None,
                    progress: bool = True, report_only: bool = False) -> dict[str, Any]:
    """Run (or, `report_only`, only score) the methods on one dataset; write results.jsonl and summary.json.
    `model`: the server's default model unless given; `search`: `nextls.search.search_fixes` unless given."""
    out = Path(out)
    log = log or Logger(out / "log.txt")
    tasks = dataset_tasks(dataset, settings.limit, settings.per_problem)
    model_tasks = tasks[: settings.model_tasks] if settings.model_tasks else tasks
    model_ids = {task.id for task in model_tasks}
    wants_search = {"search", "both"} & set(settings.methods)
    wants_model = {"model", "both"} & set(settings.methods)
    judge = HiddenJudge(out / HIDDEN, test_timeout=settings.test_timeout, hidden_timeout=settings.hidden_timeout,
                        memory_mb=settings.memory_mb)
    try:
        if not report_only:
            log(f"repair eval: {dataset}, {len(tasks)} tasks ({len(model_tasks)} for the model), methods "
                f"{', '.join(settings.methods)} -> {out}")
            if wants_search:
                run_search(tasks, out / "search", settings, judge, search or default_search(settings), log=log,
                           progress=progress)
            if wants_model:
                run_model(model_tasks, dataset, out / "model", settings,
                          models or Models(model_eval_settings(settings), out / "bases", log), model, log=log,
                          progress=progress)
        searched = {item["task"]: item for item in read_log(out / "search" / ATTEMPTS)} if wants_search else {}
        sampled = model_attempts(model_tasks, out / "model", settings) if wants_model else {}
        rows = []
        for task in tasks:
            attempts = {"search": searched.get(task.id), "model": sampled.get(task.id)}
            if attempts["search"] and task.id in model_ids:
                attempts["both"] = combine(attempts["search"], attempts["model"])
            hidden = bool(judge.tests(task))
            for method in settings.methods:
                if attempts.get(method):
                    rows.append({**attempts[method], "problem": task.problem_id, "group": task_group(task),
                                 "hidden_tests": hidden, "model_subset": task.id in model_ids})
        excluded = {task.problem_id: why for task in tasks if (why := judge.excluded(task))}
    finally:
        judge.close()
    write_jsonl(out / "results.jsonl", rows)
    summary = summarize_rows(rows, settings)
    summary.update(dataset=dataset, tasks=len(tasks), model_tasks=len(model_tasks), settings=asdict(settings),
                   hidden_excluded=excluded)
    write_json(out / "summary.json", summary)
    return summary


def summarize_rows(rows: Sequence[dict[str, Any]], settings: RepairSettings) -> dict[str, Any]:
    """Scores per method, over every task each ran ("all") and over the model's subset, per group."""
    summary: dict[str, Any] = {"methods": {}}
    for method in settings.methods:
        mine = [row for row in rows if row["method"] == method]
        if not mine:
            continue
        scopes = {"all": mine, "model_subset": [row for row in mine if row["model_subset"]]}
        summary["methods"][method] = {
            scope: {"all": score(chosen),
                    **{group: score([r for r in chosen if r["group"] == group])
                       for group in sorted({r["group"] for r in chosen})}}
            for scope, chosen in scopes.items()}
    return summary


def _cell(rate: dict[str, Any] | None, count: int, n: int) -> str:
    if rate is None:
        return "–"
    return f"{100 * rate['value']:.1f} [{100 * rate['low']:.0f}-{100 * rate['high']:.0f}] ({count}/{n})"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def repair_table(summaries: Sequence[dict[str, Any]], *, by_group: bool = True) -> str:
    """The markdown table: per dataset, method and task set, per bug class, both verdicts with intervals."""
    header = ["dataset", "method", "tasks", "bug class", "verified % [95% CI] (n)", "correct % [95% CI] (n)",
              "overfitting % [95% CI] (n)", "first fix p50 / p90 (s)", "candidates / task"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for summary in summaries:
        for method, scopes in summary["methods"].items():
            sets = [("all", f"all {summary['tasks']}")]
            if summary["model_tasks"] < summary["tasks"] and scopes["model_subset"]["all"]["tasks"]:
                sets.append(("model_subset", f"first {summary['model_tasks']}"))
            for scope, label in sets:
                if method != "search" and scope == "all" and summary["model_tasks"] < summary["tasks"]:
                    continue  # the model ran on the subset only: its "all" is that subset, shown once
                groups = scopes[scope] if by_group else {"all": scopes[scope]["all"]}
                for group, s in groups.items():
                    lines.append("| " + " | ".join([
                        summary["dataset"], method, label, group,
                        _cell(s["verified_rate"], s["verified"], s["tasks"]),
                        _cell(s["correct_rate"], s["correct"], s["hidden_tasks"]),
                        _cell(s["overfitting_share"], s["overfitting"], s["verified_judged"]),
                        f"{_seconds(s['first_verified_p50_s'])} / {_seconds(s['first_verified_p90_s'])}",
                        "–" if s["candidates_tried_mean"] is None else f"{s['candidates_tried_mean']:g}"]) + " |")
    return "\n".join(lines) + "\n"


# -- the comparison over datasets (`nextls-train compare` with a `kind = "repair"` config) -------------------------


@dataclass(frozen=True)
class RepairCompare:
    name: str = "repair"
    kind: str = "repair"
    out_dir: str = "out/repair"  # relative to the config file
    datasets: tuple[str, ...] = ("hefix-plus", "mbpp-r-dev")
    settings: RepairSettings = RepairSettings()
    root: Path = Path(".")


def is_repair_config(path: Path, overrides: Sequence[str] = ()) -> bool:
    return load_toml(path, overrides).get("kind") == "repair"


def load_toml(path: Path, overrides: Sequence[str]) -> dict[str, Any]:
    from nextls_train.config import parse_override, read_toml

    return read_toml(path, dict(parse_override(item) for item in overrides))


def load_repair_compare(path: Path, overrides: Sequence[str] = ()) -> RepairCompare:
    from nextls_train.config import build_section

    data = load_toml(path, overrides)
    settings = dict(data.pop("settings", {}))
    if "methods" in settings:
        settings["methods"] = tuple(settings["methods"])
    if "datasets" in data:
        data["datasets"] = tuple(data["datasets"])
    config = build_section(RepairCompare, data, "config")
    return RepairCompare(**{**config.__dict__, "settings": build_section(RepairSettings, settings, "[settings]"),
                            "root": Path(path).resolve().parent})


def run_repair_compare(config: RepairCompare, *, report_only: bool = False, progress: bool = True,
                       search: Search | None = None, model: ModelSpec = SERVER_MODEL,
                       models: Models | None = None) -> list[dict[str, Any]]:
    """Every dataset (each resumable), then `results.md` (overall and per bug class) and `results.json`."""
    out = config.root / config.out_dir
    log = Logger(out / "log.txt")
    models = models or Models(model_eval_settings(config.settings), out / "bases", log)
    summaries = [evaluate_repair(dataset, out / dataset_folder(dataset), config.settings, model=model, models=models,
                                 search=search, log=log, progress=progress, report_only=report_only)
                 for dataset in config.datasets]
    write_json(out / "results.json", {"config": {**asdict(config), "root": str(config.root)}, "datasets": summaries})
    s = config.settings
    notes = (f"Rates in % with 95% Wilson intervals (n in brackets). verified: every visible test passes; correct: the "
             f"hidden tests pass too (over the tasks that have hidden tests); overfitting: verified tasks whose first "
             f"offered fix fails the hidden tests. Search budget {s.search_budget:g} s a task; model: k={s.k} answers "
             f"at T={s.temperature}, top-p {s.top_p}, at most {s.max_new_tokens} new tokens (the server's defaults).")
    text = (f"{repair_table(summaries, by_group=False)}\n{notes}\n\nPer bug class:\n\n"
            f"{repair_table(summaries, by_group=True)}")
    (out / "results.md").write_text(text, encoding="utf-8")
    log(f"compare: table in {out / 'results.md'}")
    return summaries
