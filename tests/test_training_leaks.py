"""No evaluation problem is in any training data: not Mbpp-R dev, not HumanEval (HeFix+).

Training data: the Mbpp-R train split the stages draw from, and every committed set of training answers
(`training/runs/*.kept.jsonl`, `training/runs/*.answers.jsonl.gz`). Checked by problem id, and by code
normalized up to formatting, docstrings and local names (`nextls_train.leaks`), function by function.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

from nextls_train.config import RunConfig
from nextls_train.data import load_split
from nextls_train.leaks import held_out, held_out_train_tasks, leak_reason, normalized_functions
from nextls_train.train import collect_examples
from nextls_train.warmstart import read_answers

RUNS = Path(__file__).resolve().parents[1] / "training" / "runs"


def committed_answers() -> list[dict]:
    rows = [json.loads(line) for path in sorted(RUNS.glob("*.kept.jsonl")) for line in path.read_text().splitlines()
            if line.strip()]
    return rows + [row for path in sorted(RUNS.glob("*.answers.jsonl.gz")) for row in read_answers(path)]


def test_no_evaluation_problem_id_in_training_data() -> None:
    problem_ids, _ = held_out()
    train = load_split("train")
    assert len(problem_ids) == 89 + 164
    assert {task.problem_id for task in train} & problem_ids == set()
    answers = committed_answers()
    assert len(answers) >= 363
    answer_problems = {"mbpp/" + row["task"].split("/")[1] for row in answers}
    assert answer_problems <= {task.problem_id for task in train}


def test_no_evaluation_code_in_the_committed_answers() -> None:
    _, functions = held_out()
    by_id = {task.id: task for task in load_split("train")}
    leaks = [row["task"] for row in committed_answers()
             if normalized_functions(row["code"]) & functions.keys() or leak_reason(by_id[row["task"]])]
    assert leaks == []


def test_train_tasks_repeating_evaluation_code_are_named() -> None:
    held = held_out_train_tasks(load_split("train"))
    # MBPP repeats a few problems, mutations can land on a sibling's code, one-liners recur in HumanEval.
    assert "mbpp-r/792/mutation-47b1dbd247" in held  # `return len(string)`: HumanEval/23 (strlen)
    assert "mbpp-r/881/mutation-08dd1783e1" in held  # the reference of dev problem 594, renamed
    assert len(held) < 20


def test_normalization_sees_renames_not_different_calls() -> None:
    _, functions = held_out()
    dev = load_split("dev")[0]
    renamed = dev.fix_code.replace(dev.function_name, "renamed_function")
    assert normalized_functions(renamed) & functions.keys()
    assert normalized_functions("def f(s):\n    '''Doc.'''\n    return len(s)\n") == \
        normalized_functions("def g(text: str) -> int:\n    return len(text)  # the length\n")
    assert normalized_functions("def f(s):\n    return len(s)\n") != \
        normalized_functions("def f(s):\n    return sum(s)\n")


class PromptOnly:
    """What collect_examples needs of the base model: the prompt text."""

    def prompt(self, task, *, use_trace: bool = True) -> str:
        return f"prompt of {task.function_name}"


def test_the_train_stage_leaves_out_leaking_tasks(tmp_path: Path) -> None:
    train = load_split("train")
    leaking = next(task for task in train if leak_reason(task))
    clean = next(task for task in train if not leak_reason(task))
    answers = tmp_path / "answers.jsonl.gz"
    with gzip.open(answers, "wt") as file:
        for task in (leaking, clean):
            file.write(json.dumps({"task": task.id, "index": 0, "rationale": "r", "code": "def f(): pass",
                                   "answer": "r\n\n```python\ndef f(): pass\n```"}) + "\n")
    config = RunConfig(out_dir=str(tmp_path / "out"), root=tmp_path)
    config = dataclasses.replace(config, warmstart=dataclasses.replace(config.warmstart, answers=str(answers)))
    examples, stats = collect_examples(config, 1, {task.id: task for task in train}, PromptOnly())
    assert [example["task"] for example in examples] == [clean.id]
    assert stats["held_out"] == 1
