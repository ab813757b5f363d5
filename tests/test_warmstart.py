"""The warm start: reference fixes with trace-grounded rationales, verified by the server's verifier, capped."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from nextls.answer import parse_answer
from nextls.splice import find_function, function_source
from nextls_train.config import RunConfig
from nextls_train.data import load_split
from nextls_train.warmstart import VERDICTS, read_answers, run_warmstart, task_variant, warmstart_answer


def two_problems() -> list:
    """Every task of the first two train problems (a dozen or so; both have more tasks than the cap)."""
    train = load_split("train")
    problems = list(dict.fromkeys(task.problem_id for task in train))[1:3]
    return [task for task in train if task.problem_id in problems]


def config_for(tmp_path: Path, cap: int) -> RunConfig:
    config = RunConfig(out_dir="out", root=tmp_path)
    return dataclasses.replace(config, warmstart=dataclasses.replace(
        config.warmstart, answers="answers.jsonl.gz", max_per_problem=cap))


def test_an_answer_is_the_reference_fix_in_the_served_shape() -> None:
    for task in two_problems()[:4]:
        answer = warmstart_answer(task, variant=task_variant(task.id, 0))
        buggy = function_source(task.buggy_code, find_function(task.buggy_code, task.function_name))
        reference = function_source(task.fix_code, find_function(task.fix_code, task.function_name))
        # The changed lines only (a ```diff block the server's parser applies to the buggy function), or the
        # whole function when the fix rewrites it.
        block = answer["answer"].split("```", 1)[1]
        assert block.startswith(("diff\n", "python\n"))
        assert len(block) <= 1.5 * len(reference) + len("python\n```")
        parsed = parse_answer(answer["answer"], task.function_name, original=buggy)
        assert parsed.usable and parsed.code.strip() == reference.strip()
        assert parsed.rationale.strip() == answer["rationale"]


def test_kept_answers_are_verified_capped_and_resumed(tmp_path: Path) -> None:
    tasks = two_problems()
    summary = run_warmstart(config_for(tmp_path, 2), tasks, progress=False)
    kept = read_answers(tmp_path / "answers.jsonl.gz")
    assert summary["kept"] == len(kept) == 4
    problems = [row["task"].split("/")[1] for row in kept]
    assert sorted(set(problems)) == sorted({task.problem_id.split("/")[1] for task in tasks})
    assert all(problems.count(problem) == 2 for problem in problems)
    log = tmp_path / "out" / "warmstart" / VERDICTS
    verdicts = [json.loads(line) for line in log.read_text().splitlines()]
    assert {row["task"] for row in kept} <= {v["task"] for v in verdicts if v["status"] == "verified"}
    assert len(verdicts) < len(tasks)  # a problem's tasks stop being verified at its cap

    # Killed mid-write: the cut line is dropped, the rest is reused, the answers come out the same.
    log.write_text("\n".join(log.read_text().splitlines()[:2]) + '\n{"task": "cut')
    again = run_warmstart(config_for(tmp_path, 2), tasks, progress=False)
    assert read_answers(tmp_path / "answers.jsonl.gz") == kept and again["kept"] == 4
    assert len(log.read_text().splitlines()) == len(verdicts)
