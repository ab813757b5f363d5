"""The main job: prompt, sampling, verification, ranking, `nextls fix` / `explain`.

Ranking and verification use a scripted model (answers chosen by the test); the plumbing runs on the
tiny random GGUF and, once, on the real SmolLM2 from the PyPI package.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from example_fixes import remove_occ_fix

from nextls.chat import render_chat
from nextls.cli import apply_fix
from nextls.fix import FixOptions, fix_function, repair_task
from nextls.model import Generation, LlamaRuntime
from nextls.prompt import RepairTask, build_messages, format_answer
from nextls.trace.capture import trace_function
from nextls_train.prompts import training_prompt

EXAMPLES = Path(__file__).parent.parent / "server" / "examples"

GOOD_FIX = remove_occ_fix()

PARTIAL_FIX = '''def remove_Occ(s, ch):
    return s.replace(ch, "") if len(s) > 3 else s'''


@dataclass
class ScriptedRuntime:
    """Stands in for LlamaRuntime where a test is about parsing, verification and ranking."""

    answers: list[str]
    device: str = "scripted"

    def __post_init__(self) -> None:
        self.prompts: list[str] = []

    def format_chat(self, messages: list[dict]) -> str:
        return render_chat(messages, None)

    def sample(self, prompt: str, k: int, *, seed: int, cancel=None, stop_when=None, **options) -> list[Generation]:
        self.prompts.append(prompt)
        samples = []
        for index, text in enumerate(self.answers[:k]):
            sample = Generation(text=text, prompt_tokens=len(prompt) // 4, completion_tokens=len(text) // 4,
                                finish_reason="stop", seconds=0.0, seed=seed + index, reused_prompt_tokens=0)
            samples.append(sample)
            if stop_when is not None and stop_when(sample):
                break
        return samples


@pytest.fixture
def buggy_file(tmp_path: Path) -> Path:
    file = tmp_path / "remove_occ.py"
    shutil.copy(EXAMPLES / "remove_occ.py", file)
    return file


def test_candidates_are_verified_deduplicated_and_ranked(buggy_file: Path) -> None:
    answers = [
        "I am not sure what to do.",
        format_answer("Replacing every occurrence is simpler.", PARTIAL_FIX),
        format_answer("The second loop keeps `s[i]`: the trace shows `s` unchanged at that line.",
                      GOOD_FIX.replace("    return s", "    return s  # (15) __return__='heo'")),
        format_answer("Same fix again.", GOOD_FIX),
    ]
    runtime = ScriptedRuntime(answers)
    report = fix_function(buggy_file, "remove_Occ", runtime, options=FixOptions(k=4, search=False))
    by_index = {candidate.index: candidate for candidate in report.candidates}
    assert by_index[0].status == "rejected" and by_index[0].reason == "no code in the answer"
    assert by_index[1].status == "partial" and by_index[1].passed == 2  # "PHP" stays "PHP"
    assert by_index[2].status == "verified" and by_index[2].passed == len(by_index[2].results) == 3
    assert by_index[3].status == "duplicate" and "sample 3" in by_index[3].reason
    assert [candidate.index for candidate in report.candidates] == [2, 1, 0, 3]
    best = report.best
    assert "(15)" not in best.candidate.code  # trace comments copied by the model are dropped
    assert "-            s = s[0:i] + s[i:]\n+            s = s[0:i] + s[i + 1:]" in best.diff
    assert best.candidate.rationale.startswith("The second loop")
    assert buggy_file.read_text() == (EXAMPLES / "remove_occ.py").read_text()  # verification never writes


def test_prompt_carries_the_trace_unless_asked_not_to(buggy_file: Path) -> None:
    with_trace, without = ScriptedRuntime([format_answer("", GOOD_FIX)]), ScriptedRuntime([format_answer("", GOOD_FIX)])
    fix_function(buggy_file, "remove_Occ", with_trace, options=FixOptions(k=1, search=False))
    fix_function(buggy_file, "remove_Occ", without, options=FixOptions(k=1, use_trace=False, search=False))
    assert "# (7) s='helo'" in with_trace.prompts[0] and "execution trace" in with_trace.prompts[0]
    assert "# (7)" not in without.prompts[0] and "s = s[0:i] + s[i:]" in without.prompts[0]
    for prompt in (with_trace.prompts[0], without.prompts[0]):
        assert "remove_Occ('hello', 'l') returned 'helo', expected 'heo'" in prompt
        assert 'assert remove_Occ("PHP", "P") == "H"' in prompt


def test_stop_at_first_verified(buggy_file: Path) -> None:
    runtime = ScriptedRuntime([format_answer("", GOOD_FIX), format_answer("", PARTIAL_FIX)])
    report = fix_function(buggy_file, "remove_Occ", runtime,
                          options=FixOptions(k=2, stop_at_first_verified=True, search=False))
    assert [candidate.status for candidate in report.candidates] == ["verified"]


def test_missing_import_of_a_fix_is_added(tmp_path: Path) -> None:
    file = tmp_path / "count.py"
    file.write_text('"""Counting."""\n\n\ndef most_common(xs):\n    return xs[0]\n\n\n'
                    "assert most_common([1, 2, 2]) == 2\n")
    answer = format_answer("Count them.", "from collections import Counter\n\n\ndef most_common(xs):\n"
                                          "    return Counter(xs).most_common(1)[0][0]")
    report = fix_function(file, "most_common", ScriptedRuntime([answer]), options=FixOptions(k=1, search=False))
    assert report.best.verified
    assert report.best.new_source.startswith('"""Counting."""\nfrom collections import Counter\n')


def test_nothing_to_fix_asks_no_model(tmp_path: Path) -> None:
    file = tmp_path / "ok.py"
    file.write_text("def double(x):\n    return 2 * x\n\n\nassert double(2) == 4\n")
    runtime = ScriptedRuntime([])
    report = fix_function(file, "double", runtime)
    assert report.candidates == [] and runtime.prompts == [] and not report.trace.failing


def test_the_search_fixes_first_and_the_model_is_not_asked(buggy_file: Path) -> None:
    runtime = ScriptedRuntime([format_answer("", GOOD_FIX)])
    offered = []
    report = fix_function(buggy_file, "remove_Occ", runtime, on_verified=lambda partial: offered.append(
        [candidate.label for candidate in partial.candidates]))
    best = report.best
    assert best.source == "search" and best.verified and best.description == "line 12: `s[i:]` -> `s[i + 1:]`"
    assert best.new_source == (EXAMPLES / "remove_occ.py").read_text().replace("s[0:i] + s[i:]", "s[0:i] + s[i + 1:]")
    assert runtime.prompts == [] and report.device == "" and "generate" not in report.timings
    assert offered and offered[0] == [best.label]  # offered as soon as it was verified
    assert report.search.tried >= 1 and report.search.suspicious[0].line == 12


def test_the_model_is_sampled_when_the_search_finds_nothing(tmp_path: Path) -> None:
    file = tmp_path / "tax.py"
    file.write_text("def with_tax(price):\n    return price\n\n\nassert with_tax(100) == 110\n"
                    "assert with_tax(20) == 22\n")
    answer = format_answer("Add the 10% tax.", "def with_tax(price):\n    return round(price * 1.1)")
    runtime = ScriptedRuntime([answer])
    report = fix_function(file, "with_tax", runtime, options=FixOptions(k=1, search_budget=60))
    assert report.search.stopped == "exhausted" and report.search.tried > 0
    assert report.best.source == "model" and report.best.verified and report.best.description == ""
    assert len(runtime.prompts) == 1 and report.device == "scripted"


def test_one_ranked_list_when_both_are_asked(buggy_file: Path) -> None:
    rewrite = ('def remove_Occ(s, ch):\n    first = s.find(ch)\n    if first != -1:\n'
               '        s = s[:first] + s[first + 1:]\n    last = s.rfind(ch)\n    if last != -1:\n'
               '        s = s[:last] + s[last + 1:]\n    return s\n')
    runtime = ScriptedRuntime([format_answer("Rewritten.", rewrite), format_answer("Other.", PARTIAL_FIX)])
    report = fix_function(buggy_file, "remove_Occ", runtime,
                          options=FixOptions(k=2, sample_after_search=True))
    sources = [(candidate.source, candidate.status) for candidate in report.candidates]
    # verified first, the one-line edit before the model's rewrite; then the partial answer
    assert sources == [("search", "verified"), ("model", "verified"), ("model", "partial")]
    document = json.loads(json.dumps(report.to_json()))
    first = document["candidates"][0]
    assert first["source"] == "search" and first["description"].startswith("line 12: ") and first["seed"] is None
    assert document["search"]["suspicious"][0]["line"] == 12


def test_a_model_answer_equal_to_a_search_fix_is_verified_once(buggy_file: Path) -> None:
    same_as_search = GOOD_FIX.replace("s = s[0:i] + s[i + 1:]", "s = s[0:i]   +   s[i + 1:]  # spaced")
    runtime = ScriptedRuntime([format_answer("Same edit.", same_as_search)])
    report = fix_function(buggy_file, "remove_Occ", runtime,
                          options=FixOptions(k=1, sample_after_search=True))
    [sample] = [candidate for candidate in report.candidates if candidate.source == "model"]
    assert sample.status == "duplicate" and sample.reason.startswith("same code as search ")


def test_apply_fix_is_atomic_and_keeps_a_backup(buggy_file: Path) -> None:
    original = buggy_file.read_text()
    backup = apply_fix(buggy_file, original.replace("s[i:]", "s[i + 1:]"))
    assert backup.read_text() == original
    assert "s[i + 1:]\n            break\n    return s" in buggy_file.read_text()
    assert [p.name for p in buggy_file.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_training_builds_byte_identical_prompts(buggy_file: Path, tiny_gguf: Path, smollm2_gguf: Path) -> None:
    task = repair_task(trace_function(buggy_file, "remove_Occ"))
    assert task.trace and task.failures
    for gguf in (tiny_gguf, smollm2_gguf):
        runtime = LlamaRuntime(gguf, n_ctx=256, n_threads=1)
        try:
            for use_trace in (True, False):
                served = runtime.format_chat(build_messages(task, use_trace=use_trace))
                assert training_prompt(task, gguf, use_trace=use_trace) == served
        finally:
            runtime.close()
    assert "<|im_start|>user" in training_prompt(task, smollm2_gguf)


def test_repair_task_is_the_prompts_whole_input() -> None:
    task = RepairTask(function_name="f", code="def f():\n    return 1\n", tests=("assert f() == 2",),
                      failures=("t: failed: f() returned 1, expected 2",), description="Return two.",
                      trace="def f():\n    return 1  # (1) __return__=1\n")
    user = build_messages(task)[1]["content"]
    for part in ("Return two.", "__return__=1", "assert f() == 2", "f() returned 1, expected 2", "`f`"):
        assert part in user


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nextls", *args], check=False, capture_output=True, text=True,
                          timeout=300,
                          cwd=cwd)


def test_cli_fix_json_with_the_tiny_model(buggy_file: Path, tiny_gguf: Path) -> None:
    done = run_cli("fix", f"{buggy_file}::remove_Occ", "--model", str(tiny_gguf), "-k", "2", "--max-tokens", "24",
                   "--threads", "1", "--json", "--apply", "--no-search")
    assert done.returncode == 1, done.stderr  # random weights: no verified fix
    report = json.loads(done.stdout)
    assert report["device"].startswith("CPU")
    assert Path(report["model"]).name == tiny_gguf.name and report["adapter"] == ""  # no adapter for this model
    assert "<|im_start|>assistant" in report["prompt"] and "# (0) s='hello', ch='l'" in report["trace"]
    assert len(report["candidates"]) == 2
    assert all(candidate["status"] in ("rejected", "failing", "partial", "duplicate")
               for candidate in report["candidates"])
    assert "not applied" in done.stderr and "sampling 2/2" in done.stderr
    assert buggy_file.read_text() == (EXAMPLES / "remove_occ.py").read_text()
    assert not buggy_file.with_name(buggy_file.name + ".nextls.bak").exists()


def test_cli_fix_finds_the_examples_fix_by_search_without_a_model(buggy_file: Path, tmp_path: Path) -> None:
    done = run_cli("fix", f"{buggy_file}::remove_Occ", "--model", str(tmp_path / "never-loaded.gguf"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    best = report["candidates"][0]
    assert best["source"] == "search" and best["status"] == "verified" and report["device"] == ""
    assert best["description"] == "line 12: `s[i:]` -> `s[i + 1:]`" and "s[i + 1:]" in best["rationale"]
    done = run_cli("fix", f"{buggy_file}::remove_Occ", "--search-budget", "0")
    assert done.returncode == 2 and "--search-budget" in done.stderr


def test_cli_fix_with_smollm2_prints_trace_candidates_and_results(buggy_file: Path) -> None:
    done = run_cli("fix", f"{buggy_file}::remove_Occ", "-k", "1", "--max-tokens", "96", "--threads", "2",
                   "--no-search")
    assert done.returncode in (0, 1), done.stderr
    assert "# traced assert:remove_occ.py:17" in done.stdout
    assert "# model: 1 answer(s) from SmolLM2-135M-Instruct on CPU" in done.stdout
    assert "#   sample 1: " in done.stdout


def test_cli_fix_missing_model_is_a_clear_error(buggy_file: Path, tmp_path: Path) -> None:
    done = run_cli("fix", f"{buggy_file}::remove_Occ", "--model", str(tmp_path / "nope.gguf"), "--no-search")
    assert done.returncode == 2 and "nope.gguf" in done.stderr and "Traceback" not in done.stderr
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    done = run_cli("fix", f"{buggy_file}::remove_Occ", "--model", str(not_gguf), "--no-search")
    assert done.returncode == 2 and "model.gguf" in done.stderr and "Traceback" not in done.stderr


def test_cli_explain_prints_only_the_rationale(buggy_file: Path, tiny_gguf: Path) -> None:
    done = run_cli("explain", f"{buggy_file}::remove_Occ", "--model", str(tiny_gguf), "--max-tokens", "16",
                   "--threads", "1", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {"function", "rationale", "failing"} and len(report["failing"]) == 3
