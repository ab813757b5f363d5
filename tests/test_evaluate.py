"""Evaluation (`nextls-train eval` / `compare`): pass@k, resumable cells, proxy hints, the comparison table,
hidden-test verdicts, Wilson intervals, and the search / model / both comparison of `nextls fix`.

Scripted samplers (and a scripted search) answer with known fixes, right, wrong or fitting the visible tests
only, so every score is known in advance; the answers still go through the real prompt, verifier and sandbox.
One test runs the command line end to end on the tiny GGUF through llama.cpp.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nextls.prompt import format_answer
from nextls.splice import find_function, function_source
from nextls_train.data import TaskRecord, write_jsonl
from nextls_train.evaluate import (
    EvalSettings,
    Models,
    ModelSpec,
    dataset_tasks,
    evaluate,
    load_compare,
    pass_at_k,
    run_compare,
)
from nextls_train.hidden import HiddenJudge, mbpp_plus_tests, wilson
from nextls_train.records import Logger, read_log
from nextls_train.repair_eval import RepairSettings, evaluate_repair, load_repair_compare, run_repair_compare
from nextls_train.sample import Answer, Row, SampleSettings

DATASET = "hefix-plus"
TASKS = dataset_tasks(DATASET, 3)
# Task i has CORRECT[i] verified answers among its first samples (index < CORRECT[i]).
CORRECT = {task.id: count for task, count in zip(TASKS, (0, 1, 3), strict=True)}
WRONG = "The function is fine.\n\n```python\ndef nothing():\n    return None\n```"


def reference_answer(task_id: str, rationale: str = "The loop stops one step early.") -> str:
    task = next(task for task in TASKS if task.id == task_id)
    fix = function_source(task.fix_code, find_function(task.fix_code, task.function_name))
    return format_answer(rationale, fix)


class Scripted:
    """The model: sample `index` of a task is correct when index < CORRECT[task]. As the proxy (hinted=True),
    it is correct exactly when its prompt carries a hint naming the bug's place ("one step early")."""

    name = "scripted"

    def __init__(self, hinted: bool = False) -> None:
        self.hinted = hinted
        self.prompts: list[str] = []

    def sample(self, rows: list[Row], settings: SampleSettings) -> list[Answer]:
        self.prompts += [row.prompt for row in rows]
        answers = []
        for row in rows:
            if self.hinted:
                good = "## Hint\nThe loop stops one step early." in row.prompt
            else:
                good = row.index < CORRECT[row.task]
            answers.append(Answer(reference_answer(row.task) if good else WRONG, 10, "stop", 0.0))
        return answers


def cell(value: float, n: int) -> str:
    """A rate as the tables print it: percent and its 95% Wilson interval over n tasks (stored to 4 places)."""
    low, high = (round(bound, 4) for bound in wilson(value * n, n))
    return f"{100 * value:.1f} [{100 * low:.1f}-{100 * high:.1f}]"


def test_wilson_interval() -> None:
    # Reference values (Wilson 1927; e.g. statsmodels' proportion_confint(method="wilson")).
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(1, 3) == pytest.approx((0.0615, 0.7923), abs=1e-4)
    for n in (1, 7, 40):
        for k in range(n + 1):
            low, high = wilson(k, n)
            assert low <= k / n <= high
            assert (low, high) == pytest.approx((1 - wilson(n - k, n)[1], 1 - wilson(n - k, n)[0]))
    assert wilson(0, 0) is None


def test_pass_at_k_is_the_chance_that_k_of_n_samples_hold_a_pass() -> None:
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                expected = sum(any(i < c for i in subset) for subset in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least 3"):
        pass_at_k(2, 1, 3)


@pytest.fixture
def loader(tiny_gguf: Path):
    models = {"": Scripted(), "proxy": Scripted(hinted=True)}
    calls: list[tuple[Path, str]] = []

    def load(gguf: Path, lora: str) -> Scripted:
        calls.append((gguf, lora))
        return models[lora]

    load.calls = calls
    load.models = models
    return load


def test_eval_scores_known_answers_and_resumes(tiny_gguf: Path, tmp_path: Path, loader) -> None:
    settings = EvalSettings(samples=4, ks=(1, 2, 4), greedy=True, proxy=True,
                            proxy_model=ModelSpec(str(tiny_gguf), "proxy"), limit=3, workers=2)
    out = tmp_path / "cell"
    models = Models(settings, tmp_path / "bases", Logger(), loader)
    summary = evaluate(ModelSpec(str(tiny_gguf)), DATASET, True, settings, out, models, progress=False)

    n = settings.samples
    for k in settings.ks:
        expected = sum(pass_at_k(n, c, k) for c in CORRECT.values()) / len(CORRECT)
        assert summary["pass_at_k"][str(k)] == pytest.approx(expected, abs=1e-4)
    assert summary["greedy_pass_at_1"] == pytest.approx(2 / 3, abs=1e-4)  # greedy is sample 0 of its own
    # The proxy saw each greedy rationale as a hint: the two correct greedy answers named the bug.
    assert summary["proxy_pass_at_1"] == pytest.approx(2 / 3, abs=1e-4)
    proxy_prompts = loader.models["proxy"].prompts
    assert len(proxy_prompts) == 3 and sum("## Hint\n" in prompt for prompt in proxy_prompts) == 3
    assert all("## Code\n" in prompt for prompt in proxy_prompts)  # the proxy gets no trace
    model_prompts = loader.models[""].prompts
    assert all("## Code, with its execution trace" in prompt and "## Hint" not in prompt for prompt in model_prompts)
    results = {row["task"]: row for row in read_log(out / "results.jsonl")}
    assert {task: row["c"] for task, row in results.items()} == CORRECT
    # Every verified answer is the reference fix, which passes HumanEval+ too: correct = verified.
    assert summary["tasks_hidden"] == 3 and summary["pass_at_k_correct"] == summary["pass_at_k"]
    assert summary["greedy_correct_pass_at_1"] == summary["greedy_pass_at_1"]
    assert {task: row["c_correct"] for task, row in results.items()} == CORRECT
    assert summary["intervals"]["pass@4"] == pytest.approx(wilson(summary["pass_at_k"]["4"] * 3, 3), abs=1e-4)
    assert json.loads((out / "summary.json").read_text())["pass_at_k"] == summary["pass_at_k"]

    # A rerun finds every answer on disk: no model is asked again, the scores are the same.
    calls = len(loader.calls)
    again = evaluate(ModelSpec(str(tiny_gguf)), DATASET, True, settings, out,
                     Models(settings, tmp_path / "bases", Logger(), loader), progress=False)
    assert len(loader.calls) == calls
    assert again["pass_at_k"] == summary["pass_at_k"] and again["proxy_pass_at_1"] == summary["proxy_pass_at_1"]
    # Another model in the same folder is refused instead of mixed in.
    with pytest.raises(ValueError, match="holds an evaluation"):
        evaluate(ModelSpec(str(tiny_gguf), "proxy"), DATASET, True, settings, out, models, progress=False)


def test_compare_writes_the_table_and_reports_from_disk(tiny_gguf: Path, tmp_path: Path, loader) -> None:
    config_file = tmp_path / "compare.toml"
    config_file.write_text(f"""
name = "t"
out_dir = "out"
datasets = ["{DATASET}"]
traces = [true, false]
[settings]
limit = 3
samples = 2
ks = [1, 2]
proxy = false
workers = 2
[[models]]
name = "Base"
model = "{tiny_gguf}"
[[models]]
name = "Proxy as a model"
model = "{tiny_gguf}"
lora = "proxy"
""")
    config = load_compare(config_file)
    assert config.models[1].lora == str(tmp_path / "proxy")  # paths are relative to the config file
    one_each = load_compare(config_file, ["settings.per_problem=1", "settings.limit=0"]).settings
    assert len(dataset_tasks("mbpp-r-dev", one_each.limit, one_each.per_problem)) == 89  # one per dev problem

    def load(gguf: Path, lora: str) -> Scripted:
        return loader(gguf, Path(lora).name if lora else "")

    cells = run_compare(config, progress=False, loader=load)
    assert [(c["label"], c["use_trace"]) for c in cells] == [("Base", True), ("Proxy as a model", True),
                                                             ("Base", False), ("Proxy as a model", False)]
    table = (tmp_path / "out" / "results.md").read_text()
    base_pass_1 = 100 * sum(pass_at_k(2, min(c, 2), 1) for c in CORRECT.values()) / 3
    base_pass_2 = 100 * sum(pass_at_k(2, min(c, 2), 2) for c in CORRECT.values()) / 3
    greedy, p1, p2 = cell(2 / 3, 3), cell(base_pass_1 / 100, 3), cell(base_pass_2 / 100, 3)
    # The reference fixes pass HumanEval+ too: every "correct" column equals its "verified" one.
    assert f"| Base | yes | {greedy} | {greedy} | {p1} | {p1} | {p2} | {p2} | 3/6 | 3/3 |" in table
    zero = cell(0.0, 3)
    assert f"| Proxy as a model | no | {zero} | {zero} | {zero} | {zero} | {zero} | {zero} | 0/6 | 0/0 |" in table
    # Both cells were sampled, so the plot has pass@k curves (matplotlib comes with the [train] extra).
    assert (tmp_path / "out" / "pass_at_k.png").read_bytes().startswith(b"\x89PNG")
    report = run_compare(config, report_only=True, progress=False, loader=None)
    assert [c["pass_at_k"] for c in report] == [c["pass_at_k"] for c in cells]
    assert (tmp_path / "out" / "results.md").read_text() == table


def test_eval_command_line(tiny_gguf: Path, tmp_path: Path) -> None:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nextls_train.cli", "eval", *args], check=False,
                              capture_output=True, text=True, env=env, timeout=300)

    out = tmp_path / "eval"
    done = cli("--model", str(tiny_gguf), "--dataset", DATASET, "--limit", "2", "--samples", "2", "-k", "1,2",
               "--max-new-tokens", "8", "--proxy", str(tiny_gguf), "--quiet", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("| model | trace | hefix-plus: greedy pass@1 | hefix-plus: greedy pass@1 correct | hefix-plus: pass@1 "
            "(n=2) | hefix-plus: pass@1 correct |") in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks_sampled"] == summary["tasks_greedy"] == summary["tasks_proxy"] == 2
    assert set(summary["pass_at_k"]) == {"1", "2"} and summary["backend"] == "llama.cpp"
    assert len(list(read_log(out / "sampled" / "verdicts.jsonl"))) == 4

    bad_k = cli("--model", str(tiny_gguf), "--samples", "2", "-k", "1,5")
    assert bad_k.returncode == 2 and "pass@5 needs --samples >= 5" in bad_k.stderr
    bad_data = cli("--model", str(tiny_gguf), "--dataset", "mbpp-r-test", "--out", str(tmp_path / "x"))
    assert bad_data.returncode == 2 and "no dataset 'mbpp-r-test'" in bad_data.stderr
    no_model = cli("--dataset", DATASET)
    assert no_model.returncode == 2 and "--model" in no_model.stderr
    missing = cli("--model", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "y"))
    assert missing.returncode == 2 and "nope.gguf (given explicitly) does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr + bad_data.stderr


def test_compare_command_line_reports_bad_configs(tmp_path: Path) -> None:
    def compare(config: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nextls_train.cli", "compare", "--config", str(config)],
                              check=False, capture_output=True, text=True, timeout=120)

    missing = compare(tmp_path / "missing.toml")
    assert missing.returncode == 2 and "missing.toml" in missing.stderr and "Traceback" not in missing.stderr
    typo = tmp_path / "typo.toml"
    typo.write_text("[settings]\nlimt = 3\n")
    wrong = compare(typo)
    assert wrong.returncode == 2 and "unknown keys ['limt']" in wrong.stderr and "Traceback" not in wrong.stderr


# -- hidden tests and the search / model / both comparison ---------------------------------------------------------


def toy_task(name: str, buggy: str, fixed: str, test: str, hidden: str, bug_class: str) -> TaskRecord:
    def module(body: str) -> str:
        return f"def {name}(x):\n    return {body}\n"

    return TaskRecord(id=f"toy/{name}", dataset="toy", split="test", problem_id=f"toy/{name}", source="mutation",
                      bug_class=bug_class, function_name=name, problem=f"{name} of x.", buggy_code=module(buggy),
                      fix_code=module(fixed), tests=[test], test_setup="", hidden_tests=[hidden],
                      results=[{"outcome": "failed", "message": ""}], failing_test=0, failing_message="", trace="",
                      trace_steps=0, trace_truncated=False)


# double: the search offers `x + 2` first (right for the visible test, wrong for the hidden one), then `x * 2`;
# square: the search claims `x` (wrong even on the visible test: the evaluation re-runs it) and `x ** 2`;
# triple: the search finds nothing, the model's third answer is right.
TOYS = [toy_task("double", "x + 1", "x * 2", "assert double(2) == 4", "assert double(5) == 10", "value misuse"),
        toy_task("square", "x * 2", "x ** 2", "assert square(3) == 9", "assert square(4) == 16", "operator misuse"),
        toy_task("triple", "x * 2", "x * 3", "assert triple(2) == 6", "assert triple(4) == 12", "operator misuse")]
SEARCH_OFFERS = {"double": ["x + 2", "x * 2"], "square": ["x", "x ** 2"], "triple": []}
MODEL_RIGHT = {"toy/double": None, "toy/square": 0, "toy/triple": 2}  # the index of the model's right answer
ANSWER_SECONDS = 1.5


@dataclasses.dataclass
class ScriptedFix:
    """What the evaluation reads of a search candidate (`nextls.fix.FixCandidate`)."""

    new_source: str
    edit_size: int
    verified: bool = True
    source: str = "search"
    description: str = ""


class ScriptedSearch:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, report, config, on_candidate) -> list[ScriptedFix]:
        name = report.span.name
        self.calls.append(name)
        assert report.failing and report.traced_test is not None  # the real trace of the toy's failing test
        fixes = [ScriptedFix(f"def {name}(x):\n    return {body}\n", len(body), description=f"return {body}")
                 for body in SEARCH_OFFERS[name]]
        for fix in fixes:
            on_candidate(fix)
        return fixes


class ScriptedModel:
    name = "scripted"

    def sample(self, rows: list[Row], settings: SampleSettings) -> list[Answer]:
        answers = []
        for row in rows:
            task = next(task for task in TOYS if task.id == row.task)
            wrong = f"def {task.function_name}(x):\n    return x - 1\n"
            code = task.fix_code if row.index == MODEL_RIGHT[row.task] else wrong
            answers.append(Answer(format_answer("Scripted.", code), 10, "stop", ANSWER_SECONDS))
        return answers


def test_hidden_judge_tells_verified_from_correct(tmp_path: Path) -> None:
    double = TOYS[0]
    judge = HiddenJudge(tmp_path / "hidden.jsonl", data_dir=tmp_path)
    assert judge.judge(double, double.fix_code) == (True, True)
    assert judge.judge(double, "def double(x):\n    return x + 2\n") == (True, False)  # fits the visible test only
    assert judge.judge(double, double.buggy_code) == (False, False)
    judge.close()
    assert len(list(read_log(tmp_path / "hidden.jsonl"))) == 3  # one sandbox run per module, kept for a rerun


def test_mbpp_plus_tests_are_joined_by_problem_and_kept_only_when_the_reference_passes(tmp_path: Path) -> None:
    plus = tmp_path / "mbppplus"
    plus.mkdir()
    program = ("inputs = [[2], [7]]\nresults = [4, 14]\nfor i, (inp, exp) in enumerate(zip(inputs, results)):\n"
               "    assertion(double(*inp), exp, 0)\n")
    helper = "def assertion(out, exp, atol):\n    assert out == exp, f'out: {out}, exp: {exp}'\n\n"
    rows = [{"task_id": 1, "test": helper + program}, {"task_id": 2, "test": helper + program.replace("14", "15")},
            {"task_id": 3, "test": helper + program.replace("double", "twice")}]
    write_jsonl(plus / "MbppPlus-OriginFmt-v0.2.0.jsonl.gz", rows)
    tasks = [dataclasses.replace(TOYS[0], id=f"mbpp-r/{i}/x", problem_id=f"mbpp/{i}", hidden_tests=[])
             for i in (1, 2, 3, 4)]
    assert mbpp_plus_tests(tmp_path)["mbpp/1"] == ("double", helper + program)
    judge = HiddenJudge(tmp_path / "hidden.jsonl", data_dir=tmp_path)
    assert judge.tests(tasks[0]) == [helper + program]
    assert judge.judge(tasks[0], "def double(x):\n    return x + 2\n") == (True, False)  # 7 + 2 != 14
    assert judge.tests(tasks[1]) == [] and "the reference fix fails them" in judge.excluded(tasks[1])
    assert "out: 14, exp: 15" in judge.excluded(tasks[1])
    assert judge.tests(tasks[2]) == [] and judge.excluded(tasks[2]) is None  # MBPP+ names another function
    assert judge.tests(tasks[3]) == [] and judge.judge(tasks[3], tasks[3].fix_code) == (True, None)  # no MBPP+
    judge.close()


@pytest.mark.skipif(not mbpp_plus_tests(), reason="no ../shared/data")
def test_mbpp_plus_covers_the_dev_problems_it_has() -> None:
    dev = dataset_tasks("mbpp-r-dev")
    joined = {task.problem_id for task in dev if task.problem_id in mbpp_plus_tests()}
    assert len(joined) == 38  # MBPP+ v0.2.0 has 39 of MBPP 511-600; 596 has no Mbpp-R task
    assert all(mbpp_plus_tests()[task.problem_id][0] == task.function_name for task in dev if task.problem_id in joined)


def test_search_model_and_both(tiny_gguf: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "toys.jsonl.gz"
    write_jsonl(dataset, TOYS)
    config_file = tmp_path / "repair.toml"
    config_file.write_text(f"""
kind = "repair"
out_dir = "out"
datasets = ["{dataset}"]
[settings]
methods = ["search", "model", "both"]
k = 3
workers = 1
""")
    config = load_repair_compare(config_file)
    assert config.settings == RepairSettings(methods=("search", "model", "both"), k=3, workers=1)
    search = ScriptedSearch()
    settings = config.settings
    models = Models(EvalSettings(), tmp_path / "bases", Logger(), lambda gguf, lora: ScriptedModel())
    [summary] = run_repair_compare(config, progress=False, search=search, model=ModelSpec(str(tiny_gguf)),
                                   models=models)
    assert search.calls == ["double", "square", "triple"]
    out = tmp_path / "out" / "toys"
    rows = {(row["method"], row["task"]): row for row in read_log(out / "results.jsonl")}

    double, square, triple = (rows["search", task.id] for task in TOYS)
    assert [(fix["visible"], fix["correct"]) for fix in double["offered"]] == [(True, False), (True, True)]
    assert [(fix["visible"], fix["correct"]) for fix in square["offered"]] == [(True, True), (False, False)]
    assert not triple["verified"] and triple["first_verified_s"] is None and triple["tried"] == 0
    assert double["tried"] == square["tried"] == 2 and double["first_verified_s"] <= double["seconds"]
    assert rows["model", "toy/triple"]["first_verified_s"] == pytest.approx(3 * ANSWER_SECONDS)
    assert rows["model", "toy/square"]["first_verified_s"] == pytest.approx(ANSWER_SECONDS)
    # both: the search's fixes where it found one (the model is not asked), else the model's after the search.
    assert rows["both", "toy/double"]["offered"] == double["offered"]
    assert rows["both", "toy/triple"]["first_verified_s"] == pytest.approx(triple["seconds"] + 3 * ANSWER_SECONDS,
                                                                           abs=2e-3)
    assert rows["both", "toy/triple"]["tried"] == settings.k

    def overall(method: str) -> dict:
        return summary["methods"][method]["all"]["all"]

    # search: double verified but overfitting, square correct; model: square and triple; both: all three.
    assert [(overall(m)["verified"], overall(m)["correct"], overall(m)["overfitting"]) for m in settings.methods] == [
        (2, 1, 1), (2, 2, 0), (3, 2, 1)]
    assert overall("both")["verified_rate"] == {"value": 1.0, "low": round(wilson(3, 3)[0], 4), "high": 1.0}
    assert overall("model")["first_verified_p50_s"] == pytest.approx(2 * ANSWER_SECONDS)
    assert summary["methods"]["search"]["all"]["operator misuse"]["tasks"] == 2
    table = (tmp_path / "out" / "results.md").read_text()
    assert f"| {dataset} | search | all 3 | all | 66.7 [21-94] (2/3) | 33.3 [6-79] (1/3) | 50.0 [9-91] (1/2) |" \
           in table
    assert f"| {dataset} | both | all 3 | operator misuse | 100.0 [34-100] (2/2) |" in table

    # A rerun finds everything on disk: no search, no model; the same table.
    models_again = Models(EvalSettings(), tmp_path / "bases", Logger(), lambda gguf, lora: pytest.fail("sampled"))
    run_repair_compare(config, progress=False, search=ScriptedSearch(), model=ModelSpec(str(tiny_gguf)),
                       models=models_again)
    assert (tmp_path / "out" / "results.md").read_text() == table
    assert evaluate_repair(str(dataset), out, settings, report_only=True)["methods"] == summary["methods"]


def test_eval_method_search_command_line(tmp_path: Path) -> None:
    """The real repair search (`nextls.search`) through `nextls-train eval --method search`."""
    dataset = tmp_path / "toys.jsonl.gz"
    write_jsonl(dataset, TOYS)
    out = tmp_path / "search"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nextls_train.cli", "eval", *args], check=False,
                              capture_output=True, text=True, timeout=600)

    done = cli("--method", "search", "--dataset", str(dataset), "--search-budget", "10", "--quiet", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| dataset | method | tasks | bug class | verified % [95% CI] (n) | correct % [95% CI] (n) |" in done.stdout
    rows = {row["task"]: row for row in read_log(out / "results.jsonl")}
    assert set(rows) == {task.id for task in TOYS} and {row["method"] for row in rows.values()} == {"search"}
    # triple: `x * 2` -> `x * 3` is one constant edit, and it passes the hidden test too.
    assert rows["toy/triple"]["verified"] and rows["toy/triple"]["offered"][0]["correct"]
    assert all(row["tried"] > 0 and row["seconds"] <= 60 for row in rows.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["search"]["all"]["all"]["tasks"] == 3

    with_adapter = cli("--method", "model", "--lora", "a.gguf", "--dataset", str(dataset), "--out", str(out))
    assert with_adapter.returncode == 2 and "the server's default one" in with_adapter.stderr
