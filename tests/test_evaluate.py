"""Evaluation (`nextls-train eval` / `compare`): pass@k, resumable cells, proxy hints, the comparison table.

Scripted samplers answer with each task's reference fix or with a wrong one, so every score is known in
advance; the answers still go through the real prompt, verifier and sandbox. One test runs the command
line end to end on the tiny GGUF through llama.cpp.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nextls.prompt import format_answer
from nextls.splice import find_function, function_source
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
from nextls_train.records import Logger, read_log
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

    def load(gguf: Path, lora: str) -> Scripted:
        return loader(gguf, Path(lora).name if lora else "")

    cells = run_compare(config, progress=False, loader=load)
    assert [(c["label"], c["use_trace"]) for c in cells] == [("Base", True), ("Proxy as a model", True),
                                                             ("Base", False), ("Proxy as a model", False)]
    table = (tmp_path / "out" / "results.md").read_text()
    base_pass_1 = 100 * sum(pass_at_k(2, min(c, 2), 1) for c in CORRECT.values()) / 3
    base_pass_2 = 100 * sum(pass_at_k(2, min(c, 2), 2) for c in CORRECT.values()) / 3
    assert f"| Base | yes | {66.7:.1f} | {base_pass_1:.1f} | {base_pass_2:.1f} | 3/6 |" in table
    assert "| Proxy as a model | no | 0.0 | 0.0 | 0.0 | 0/6 |" in table  # no hint in its prompt: never right
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
    assert "| model | trace | hefix-plus: greedy pass@1 | hefix-plus: pass@1 (n=2) |" in done.stdout
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
