"""Evaluation: a model's fix rate on a repair dataset, measured exactly as the server verifies a fix.

    nextls-train eval --model X.gguf [--lora A.gguf] --dataset mbpp-r-dev|hefix-plus --samples N -k 1,5,10
                      [--no-trace] [--no-greedy] [--proxy] [--backend llama.cpp|transformers] [--limit N]
    nextls-train compare --config training/runs/compare-cpu.toml      (the comparison table, in one run)

Every answer comes from the server's prompt (`build_messages` + `render_chat` with the GGUF's own template,
via `training_prompt`), by default through the server's runtime (`LlamaRuntime`; `--backend transformers`
batches many tasks on a GPU), and is judged by the server's verifier (`nextls.fix.verify_answer`, through the
filter stage): the fix is spliced into the buggy module and every visible test runs in the sandbox.
Each verified answer is then judged on the hidden tests too (`nextls_train.hidden`): HeFix+'s HumanEval+ test,
MBPP+'s extra tests for the Mbpp-R problems that have them. Every rate comes with both verdicts, *verified*
(visible tests) and *correct* (visible + hidden, over the tasks that have hidden tests), and a 95% Wilson
interval over tasks.

* pass@k: N answers per task at temperature T, c of them verified; the unbiased estimator of Chen et al.
  (2021), 1 - C(N-c, k) / C(N, k), averaged over tasks.
* greedy pass@1: one answer per task at temperature 0.
* proxy pass@1 (the paper's rationale-quality measure): each task's greedy rationale, without its code, is
  given as a hint to a fixed proxy model (no trace, greedy); the proxy's verified-fix rate is reported.

Everything lands in the output folder, appended as it is produced, so a rerun resumes: `sampled/`,
`greedy/` and `proxy/` (samples, verdicts, `judged.jsonl`: the hidden-test verdict of each verified answer),
`hidden.jsonl` (each fixed module's run on the hidden tests), then `results.jsonl` (one line per task) and
`summary.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nextls.fix import verify_answer
from nextls.runner import RunConfig
from nextls.sandbox import Limits
from nextls_train.config import FilterConfig, build_section, parse_override, read_toml, resolve_path
from nextls_train.data import DEFAULT_OUT_DIR, HEFIX_FILE, MBPPR_FILES, TaskRecord
from nextls_train.filter import VERDICTS, TaskFiles, run_filter
from nextls_train.hidden import HIDDEN_TIMEOUT, HiddenJudge, source_key, wilson
from nextls_train.prompts import training_prompt
from nextls_train.records import AppendLog, Logger, load_tasks, read_log, repair_task, write_json, write_jsonl
from nextls_train.sample import Sampler, SampleSettings, read_samples, run_sample

DATASETS = {"mbpp-r-dev": MBPPR_FILES["dev"], "hefix-plus": HEFIX_FILE, "mbpp-r-train": MBPPR_FILES["train"]}
SUMMARY = "summary.json"
RESULTS = "results.jsonl"
HIDDEN = "hidden.jsonl"
JUDGED = "judged.jsonl"

# For scale only: the paper's Mbpp-R pass@1 (Ni et al., ICML 2024, Table 1), PaLM 2-L with traces.
PAPER_MBPPR = [("PaLM 2-L, 3-shot (paper)", 23.2), ("PaLM 2-L + NExT (paper)", 49.3)]


@dataclass(frozen=True)
class ModelSpec:
    model: str = "default"  # a GGUF file, or "default": the server's embedded SmolLM2-135M-Instruct
    lora: str = ""  # llama.cpp: a LoRA GGUF adapter; transformers: a peft adapter folder (iter-T/train/adapter)
    name: str = ""

    def label(self) -> str:
        return self.name or Path(self.model).stem + (f" + {Path(self.lora).name}" if self.lora else "")


@dataclass(frozen=True)
class EvalSettings:
    samples: int = 0  # N answers per task for pass@k (0: none, greedy only)
    ks: tuple[int, ...] = (1,)
    greedy: bool = True
    proxy: bool = False  # proxy pass@1 of the greedy rationales (needs greedy)
    proxy_model: ModelSpec = field(default_factory=ModelSpec)
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int = 0
    limit: int = 0  # 0: every task of the dataset; else the first N (problems taken in turn)
    per_problem: int = 0  # 0: every task of a problem; 1: one task per problem (89 of Mbpp-R dev, all of HeFix+)
    backend: str = "llama.cpp"  # the server's runtime; "transformers" batches on a GPU
    batch_size: int = 16  # transformers: rows generated together
    threads: int = 2
    dtype: str = "bfloat16"  # transformers on a GPU
    workers: int = 2  # sandboxed verifications in parallel
    test_timeout: float = 5.0
    hidden_timeout: float = HIDDEN_TIMEOUT
    memory_mb: int = 1024


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate from n samples of which c pass (Chen et al., 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, not {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def dataset_tasks(dataset: str, limit: int = 0, per_problem: int = 0) -> list[TaskRecord]:
    """A named dataset (`DATASETS`) of the committed `training/data`, or a dataset file's path (`load_tasks`)."""
    path = DEFAULT_OUT_DIR / DATASETS[dataset] if dataset in DATASETS else Path(dataset)
    if not path.is_file():
        known = ", ".join(DATASETS)
        raise ValueError(f"no dataset {dataset!r}: name one of {known}, or give a .jsonl.gz file")
    return load_tasks(path, limit=limit, per_problem=per_problem)


def model_file(spec: ModelSpec) -> Path:
    from nextls.model import resolve_model

    return resolve_model(None if spec.model == "default" else spec.model).resolve()


class Models:
    """Samplers by (model, lora), loaded once and shared by every evaluation of a run (the proxy too)."""

    def __init__(self, settings: EvalSettings, base_cache: Path, log: Logger,
                 loader: Callable[[Path, str], Sampler] | None = None) -> None:
        self.settings = settings
        self.base_cache = Path(base_cache)
        self.log = log
        self.loader = loader or self._load  # tests pass a loader of scripted samplers
        self._samplers: dict[tuple[str, str], Sampler] = {}

    def sampler(self, spec: ModelSpec) -> Sampler:
        gguf = model_file(spec)
        key = (str(gguf), spec.lora)
        if key not in self._samplers:
            started = time.perf_counter()
            self._samplers[key] = self.loader(gguf, spec.lora)
            self.log(f"eval: loaded {spec.label()} ({self.settings.backend}) in {time.perf_counter() - started:.1f}s")
        return self._samplers[key]

    def _load(self, gguf: Path, lora_path: str) -> Sampler:
        from nextls_train.sample import LlamaCppSampler, TransformersSampler

        settings = self.settings
        lora = Path(lora_path) if lora_path else None
        if settings.backend in ("llama.cpp", "llamacpp"):
            if lora is not None and lora.is_dir():
                raise ValueError(f"{lora} is a peft folder: llama.cpp needs the LoRA as a GGUF (nextls-train export)")
            return LlamaCppSampler(gguf, lora, threads=settings.threads)
        if settings.backend == "transformers":
            import torch

            from nextls_train.models import convert_base

            if lora is not None and not lora.is_dir():
                raise ValueError(f"{lora}: the transformers backend needs a peft adapter folder (iter-T/train/adapter)")
            device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = getattr(torch, settings.dtype) if device == "cuda" else torch.float32
            base = convert_base(gguf, self.base_cache / gguf.stem, self.log)
            return TransformersSampler(base, lora, device=device, dtype=dtype, threads=settings.threads)
        raise ValueError(f"unknown backend {settings.backend!r}: llama.cpp or transformers")


def evaluate(spec: ModelSpec, dataset: str, use_trace: bool, settings: EvalSettings, out: Path, models: Models, *,
             log: Logger | None = None, progress: bool = True,
             tasks: Sequence[TaskRecord] | None = None) -> dict[str, Any]:
    """Sample, verify and score one (model, dataset, trace) cell; returns (and writes) its summary.
    `tasks`: these tasks of the dataset instead of its first `settings.limit`."""
    log = log or Logger()
    out = Path(out)
    tasks = dataset_tasks(dataset, settings.limit, settings.per_problem) if tasks is None else list(tasks)
    gguf = model_file(spec)
    identity = {"model": str(gguf), "lora": spec.lora, "dataset": dataset, "use_trace": use_trace,
                "backend": settings.backend, "max_new_tokens": settings.max_new_tokens}
    _check_identity(out, identity)
    log(f"eval: {spec.label()} on {dataset} ({len(tasks)} tasks, {'trace' if use_trace else 'no trace'}) -> {out}")
    seconds: dict[str, float] = {}
    checks = FilterConfig(workers=settings.workers, test_timeout=settings.test_timeout, memory_mb=settings.memory_mb)

    def prompt(task: TaskRecord) -> str:
        return training_prompt(repair_task(task), gguf, use_trace=use_trace)

    def stage(name: str, n: int, temperature: float, prompt: Callable[[TaskRecord], str], model: ModelSpec) -> None:
        sample_settings = SampleSettings(n, temperature, settings.top_p, settings.max_new_tokens, settings.batch_size,
                                         settings.seed)
        started = time.perf_counter()
        sampled = run_sample(tasks, out / name / "samples", functools.partial(models.sampler, model), sample_settings,
                             prompt, log=log, progress=progress)
        seconds[f"{name}_sample"] = round(time.perf_counter() - started, 2)
        if sampled.get("tokens_per_s"):
            seconds[f"{name}_tokens_per_s"] = sampled["tokens_per_s"]
        started = time.perf_counter()
        run_filter(tasks, out / name / "samples", out / name, checks, log=log, progress=progress)
        seconds[f"{name}_verify"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        judge_answers(tasks, out, name, settings)
        seconds[f"{name}_hidden"] = round(time.perf_counter() - started, 2)

    if settings.samples:
        stage("sampled", settings.samples, settings.temperature, prompt, spec)
    if settings.greedy:
        stage("greedy", 1, 0.0, prompt, spec)
    if settings.proxy:
        if not settings.greedy:
            raise ValueError("the proxy evaluation reads the greedy rationales: it needs greedy on")
        hints = {v["task"]: v.get("rationale") or "" for v in read_log(out / "greedy" / VERDICTS)}
        proxy_gguf = model_file(settings.proxy_model)

        def proxy_prompt(task: TaskRecord) -> str:
            return training_prompt(replace(repair_task(task), hint=hints.get(task.id, "")), proxy_gguf,
                                   use_trace=False)

        stage("proxy", 1, 0.0, proxy_prompt, settings.proxy_model)
    summary = summarize(out, tasks, settings)
    summary.update(identity, label=spec.label(), seconds=seconds)
    write_json(out / SUMMARY, summary)
    return summary


def _check_identity(out: Path, identity: dict[str, Any]) -> None:
    path = out / "eval.json"
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded != identity:
            raise ValueError(f"{out} holds an evaluation of {recorded}; remove it or choose another --out")
    else:
        write_json(path, identity)


def open_judge(out: Path, settings: EvalSettings) -> HiddenJudge:
    return HiddenJudge(Path(out) / HIDDEN, test_timeout=settings.test_timeout, hidden_timeout=settings.hidden_timeout,
                       memory_mb=settings.memory_mb)


def judge_answers(tasks: Sequence[TaskRecord], out: Path, stage: str, settings: EvalSettings) -> dict[tuple, dict]:
    """Each verified answer of a stage judged on all the visible and the hidden tests, in `stage/judged.jsonl`
    ({"visible", "correct" (None: the task has no hidden tests), "edit_size", "source"}), keyed by (task, index)."""
    by_id = {task.id: task for task in tasks}
    todo = [v for v in read_log(Path(out) / stage / VERDICTS) if v["status"] == "verified" and v["task"] in by_id]
    texts = {(item["task"], item["index"]): item["text"] for item in read_samples(Path(out) / stage / "samples")}
    files = TaskFiles(tasks)
    judge = open_judge(out, settings)
    try:
        with AppendLog(Path(out) / stage / JUDGED, key=lambda item: (item["task"], item["index"])) as judged:
            for verdict in todo:
                key = (verdict["task"], verdict["index"])
                if key in judged:
                    continue
                task = by_id[verdict["task"]]
                solution, cases = files.get(task.id)
                limits = Limits(wall_time=settings.test_timeout * len(cases) + 10,
                                memory_bytes=settings.memory_mb << 20)
                fixed = verify_answer(texts[key], file=solution, source=task.buggy_code, function=task.function_name,
                                      tests=cases, config=RunConfig(test_timeout=settings.test_timeout,
                                                                    setup_code=task.test_setup, limits=limits))
                visible, correct = judge.judge(task, fixed.new_source) if fixed.new_source else (False, None)
                judged.append({"task": key[0], "index": key[1], "visible": visible, "correct": correct,
                               "edit_size": fixed.edit_size, "source": source_key(fixed.new_source)})
            return dict(judged.items)
    finally:
        judge.close()
        files.close()


def summarize(out: Path, tasks: Sequence[TaskRecord], settings: EvalSettings) -> dict[str, Any]:
    """Scores from the verdicts on disk (a run cut short is scored over the tasks it finished)."""
    def verdicts(name: str) -> dict[str, list[dict[str, Any]]]:
        by_task: dict[str, list[dict[str, Any]]] = {}
        for item in read_log(out / name / VERDICTS):
            by_task.setdefault(item["task"], []).append(item)
        return by_task

    def judged(name: str) -> dict[tuple, dict[str, Any]]:
        return {(item["task"], item["index"]): item for item in read_log(out / name / JUDGED)}

    def verified(item: dict[str, Any]) -> bool:
        return item["status"] == "verified"

    def correct(item: dict[str, Any], hidden: dict[tuple, dict[str, Any]]) -> bool:
        return verified(item) and bool(hidden.get((item["task"], item["index"]), {}).get("correct"))

    sampled, greedy, proxy = verdicts("sampled"), verdicts("greedy"), verdicts("proxy")
    hidden = {name: judged(name) for name in ("sampled", "greedy", "proxy")}
    judge = open_judge(out, settings)
    try:
        with_hidden = {task.id for task in tasks if judge.tests(task)}
    finally:
        judge.close()
    rows = []
    for task in tasks:
        row: dict[str, Any] = {"task": task.id, "problem": task.problem_id, "hidden_tests": task.id in with_hidden}
        if settings.samples and len(sampled.get(task.id, ())) >= settings.samples:
            first_n = sampled[task.id][: settings.samples]
            row.update(n=settings.samples, c=sum(map(verified, first_n)))
            if task.id in with_hidden:
                row["c_correct"] = sum(correct(item, hidden["sampled"]) for item in first_n)
        if task.id in greedy:
            first = greedy[task.id][0]
            row.update(greedy=verified(first), rationale=bool((first.get("rationale") or "").strip()))
            if task.id in with_hidden:
                row["greedy_correct"] = correct(first, hidden["greedy"])
        if task.id in proxy:
            row["proxy"] = verified(proxy[task.id][0])
        rows.append(row)
    write_jsonl(out / RESULTS, rows)

    intervals: dict[str, Any] = {}

    def mean(values: list[float], name: str) -> float | None:
        """The mean over tasks, its 95% Wilson interval (n = tasks) recorded under `name`."""
        if not values:
            return None
        value = sum(values) / len(values)
        intervals[name] = [round(bound, 4) for bound in wilson(value * len(values), len(values))]
        return round(value, 4)

    scored = [row for row in rows if "c" in row]
    judged_rows = [row for row in scored if "c_correct" in row]
    summary: dict[str, Any] = {"tasks": len(tasks), "tasks_sampled": len(scored), "samples": settings.samples,
                               "verified_answers": sum(row["c"] for row in scored),
                               "answers": sum(row["n"] for row in scored), "pass_at_k": {},
                               "tasks_hidden": len(with_hidden), "tasks_sampled_hidden": len(judged_rows),
                               "correct_answers": sum(row["c_correct"] for row in judged_rows),
                               "verified_answers_hidden": sum(row["c"] for row in judged_rows),
                               "pass_at_k_correct": {}}
    for k in settings.ks:
        if settings.samples >= k:
            summary["pass_at_k"][str(k)] = mean([pass_at_k(row["n"], row["c"], k) for row in scored], f"pass@{k}")
            summary["pass_at_k_correct"][str(k)] = mean(
                [pass_at_k(row["n"], row["c_correct"], k) for row in judged_rows], f"pass@{k} correct")
    greedy_rows = [row for row in rows if "greedy" in row]
    summary["greedy_pass_at_1"] = mean([float(row["greedy"]) for row in greedy_rows], "greedy pass@1")
    summary["greedy_correct_pass_at_1"] = mean([float(row["greedy_correct"]) for row in greedy_rows
                                                if "greedy_correct" in row], "greedy pass@1 correct")
    summary["tasks_greedy"] = len(greedy_rows)
    summary["tasks_greedy_hidden"] = sum(1 for row in greedy_rows if "greedy_correct" in row)
    summary["greedy_with_rationale"] = mean([float(row["rationale"]) for row in greedy_rows], "greedy rationale")
    summary["proxy_pass_at_1"] = mean([float(row["proxy"]) for row in rows if "proxy" in row], "proxy pass@1")
    summary["tasks_proxy"] = sum(1 for row in rows if "proxy" in row)
    summary["intervals"] = intervals
    return summary


# -- the comparison table ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareConfig:
    name: str = "compare"
    out_dir: str = "out/compare"  # relative to the config file
    datasets: tuple[str, ...] = ("mbpp-r-dev", "hefix-plus")
    traces: tuple[bool, ...] = (True, False)
    models: tuple[ModelSpec, ...] = ()
    settings: EvalSettings = field(default_factory=EvalSettings)
    root: Path = Path(".")

    def resolve(self, path: str) -> str:
        return path if path in ("", "default") else str(resolve_path(self.root, path))


def load_compare(path: Path, overrides: Sequence[str] = ()) -> CompareConfig:
    data = read_toml(path, dict(parse_override(item) for item in overrides))
    root = Path(path).resolve().parent
    settings = dict(data.pop("settings", {}))
    if "ks" in settings:
        settings["ks"] = tuple(settings["ks"])
    proxy = build_section(ModelSpec, settings.pop("proxy_model", {}), "[settings.proxy_model]")
    models = tuple(build_section(ModelSpec, item, "[[models]]") for item in data.pop("models", []))
    for key in ("datasets", "traces"):
        if key in data:
            data[key] = tuple(data[key])
    config = build_section(CompareConfig, data, "config")
    config = replace(config, root=root)
    fix = functools.partial(_resolved_spec, config)
    return replace(config, models=tuple(map(fix, models)),
                   settings=build_section(EvalSettings, {**settings, "proxy_model": fix(proxy)}, "[settings]"))


def _resolved_spec(config: CompareConfig, spec: ModelSpec) -> ModelSpec:
    return replace(spec, model=config.resolve(spec.model), lora=config.resolve(spec.lora))


def cell_dir(out: Path, spec: ModelSpec, dataset: str, use_trace: bool) -> Path:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", spec.label()).strip("-").lower()
    return out / slug / f"{dataset}-{'trace' if use_trace else 'notrace'}"


def run_compare(config: CompareConfig, *, report_only: bool = False, log: Logger | None = None,
                progress: bool = True, loader: Callable[[Path, str], Sampler] | None = None) -> list[dict[str, Any]]:
    """Every trace x dataset x model cell (each resumable), then the table (`results.md`) and the plot.

    Cells run trace first, then dataset, then model, so a run cut short has compared the models on the
    first datasets. `report_only` samples nothing: it scores what is on disk (after a time limit, say)."""
    out = config.root / config.out_dir
    log = log or Logger(out / "log.txt")
    if not config.models:
        raise ValueError("the compare config names no [[models]]")
    models = Models(config.settings, out / "bases", log, loader)
    started = time.perf_counter()
    summaries = []
    for use_trace in config.traces:
        for dataset in config.datasets:
            for spec in config.models:
                folder = cell_dir(out, spec, dataset, use_trace)
                if report_only:
                    if not (folder / "eval.json").exists():
                        continue
                    tasks = dataset_tasks(dataset, config.settings.limit, config.settings.per_problem)
                    cell = summarize(folder, tasks, config.settings)
                    cell.update(json.loads((folder / "eval.json").read_text()), label=spec.label())
                else:
                    cell = evaluate(spec, dataset, use_trace, config.settings, folder, models, log=log,
                                    progress=progress)
                summaries.append(cell)
                log(f"eval: {cell['label']} {dataset} {'trace' if use_trace else 'no trace'}: greedy pass@1 "
                    f"{cell['greedy_pass_at_1']}, pass@k {cell['pass_at_k']}, proxy {cell['proxy_pass_at_1']}")
    write_json(out / "results.json", {"config": _config_dict(config), "cells": summaries,
                                      "wall_seconds": round(time.perf_counter() - started, 1)})
    (out / "results.md").write_text(results_table(summaries, config.settings), encoding="utf-8")
    plot = plot_pass_at_k(summaries, out / "pass_at_k.png")
    log(f"compare: table in {out / 'results.md'}" + (f", plot in {plot}" if plot else " (no plot)"))
    return summaries


def _config_dict(config: CompareConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["root"] = str(config.root)
    return data


def _percent(value: float | None, interval: Sequence[float] | None = None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" + (f" [{100 * interval[0]:.1f}-{100 * interval[1]:.1f}]" if interval else "")


def results_table(summaries: Sequence[dict[str, Any]], settings: EvalSettings) -> str:
    """A markdown table: one row per (model, trace), per dataset greedy pass@1, pass@k and proxy pass@1 (%), each
    with its 95% Wilson interval; "correct" columns (visible + hidden tests) for datasets with hidden tests."""
    datasets = list(dict.fromkeys(s["dataset"] for s in summaries))
    ks = [k for k in settings.ks if settings.samples >= k]
    hidden = {d for d in datasets if any(s.get("tasks_hidden") for s in summaries if s["dataset"] == d)}

    def columns(dataset: str) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
        def rate(key: str, name: str, k: str | None = None) -> Callable[[dict[str, Any]], str]:
            def cell(s: dict[str, Any]) -> str:
                value = s.get(key, {}).get(k) if k else s.get(key)
                return _percent(value, s.get("intervals", {}).get(name))
            return cell

        found: list[tuple[str, Callable[[dict[str, Any]], str]]] = []
        if settings.greedy:
            found.append(("greedy pass@1", rate("greedy_pass_at_1", "greedy pass@1")))
            if dataset in hidden:
                found.append(("greedy pass@1 correct", rate("greedy_correct_pass_at_1", "greedy pass@1 correct")))
        for k in ks:
            found.append((f"pass@{k} (n={settings.samples})", rate("pass_at_k", f"pass@{k}", str(k))))
            if dataset in hidden:
                found.append((f"pass@{k} correct", rate("pass_at_k_correct", f"pass@{k} correct", str(k))))
        if ks:
            found.append(("verified answers", lambda s: f"{s.get('verified_answers', 0)}/{s.get('answers', 0)}"))
            if dataset in hidden:
                found.append(("correct / verified answers", lambda s: f"{s.get('correct_answers', 0)}/"
                                                                      f"{s.get('verified_answers_hidden', 0)}"))
        if settings.proxy:
            found.append(("proxy pass@1", rate("proxy_pass_at_1", "proxy pass@1")))
        return found

    header = ["model", "trace"] + [f"{d}: {title}" for d in datasets for title, _ in columns(d)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows: dict[tuple[str, bool], dict[str, dict[str, Any]]] = {}
    for s in summaries:
        rows.setdefault((s["label"], s["use_trace"]), {})[s["dataset"]] = s
    for (label, use_trace), cells in rows.items():
        values = [cell(cells.get(d, {})) for d in datasets for _, cell in columns(d)]
        lines.append("| " + " | ".join([label, "yes" if use_trace else "no", *values]) + " |")
    counts = "; ".join(f"{d}: {max(max(s['tasks_greedy'], s['tasks_sampled']) for s in summaries if s['dataset'] == d)}"
                       " tasks" + (f" ({max(s['tasks_hidden'] for s in summaries if s['dataset'] == d)} with hidden "
                                   "tests)" if d in hidden else "") for d in datasets)
    lines += ["", f"Verified-fix rates in % with 95% Wilson intervals over tasks, {settings.backend} backend, max "
              f"{settings.max_new_tokens} new tokens, "
              + ", ".join(["greedy pass@1 at T=0"] * settings.greedy + [
                  f"pass@k sampled at T={settings.temperature}, top-p {settings.top_p}"] * bool(settings.samples))
              + ". "
              f"Tasks: {counts}. \"correct\": the fix passes the visible and the hidden tests (over the tasks that "
              "have hidden tests)."]
    if "mbpp-r-dev" in datasets:
        lines.append("For scale, the paper's Mbpp-R pass@1: " + ", ".join(f"{n} {v}" for n, v in PAPER_MBPPR) +
                     " (a different Mbpp-R, built by the authors, and models 1000x larger).")
    return "\n".join(lines) + "\n"


def plot_pass_at_k(summaries: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """pass@k curves per (model, trace), one panel per dataset; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    datasets = list(dict.fromkeys(s["dataset"] for s in summaries))
    figure, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        for s in summaries:
            if s["dataset"] != dataset or not s["pass_at_k"]:
                continue
            ks = sorted(int(k) for k, v in s["pass_at_k"].items() if v is not None)
            axis.plot(ks, [100 * s["pass_at_k"][str(k)] for k in ks], marker="o",
                      linestyle="-" if s["use_trace"] else "--",
                      label=f"{s['label']} ({'trace' if s['use_trace'] else 'no trace'})")
        axis.set(title=dataset, xlabel="k", ylabel="pass@k (%)", xscale="log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
