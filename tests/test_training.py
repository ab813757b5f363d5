"""NExT self-training (nextls_train): the loop end to end on a tiny model and a handful of Mbpp-R tasks.

The tiny model is the random-weight llama GGUF of `tiny_gguf` (SmolLM2's tokenizer and chat template):
transformers loads it, the loop converts it to an HF folder, samples from it, trains a LoRA on it and
exports GGUFs that llama.cpp loads. A random model never writes a passing fix, so where a test needs kept
samples a scripted sampler answers instead (its answers are chosen per task: the reference fix, the bug
unchanged, a wrong fix, prose...), mixed with the real model's answers in the loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from nextls.answer import parse_answer
from nextls.model import LlamaRuntime
from nextls.prompt import format_answer
from nextls.splice import find_function, function_source
from nextls_train import data
from nextls_train.config import load_config, parse_override
from nextls_train.filter import run_filter
from nextls_train.loop import Run
from nextls_train.records import AppendLog, read_log
from nextls_train.sample import (
    Answer,
    LlamaCppSampler,
    Row,
    SampleSettings,
    TransformersSampler,
    code_end,
    run_sample,
    sample_seed,
    shard_file,
)

RUNS = Path(__file__).resolve().parent.parent / "training" / "runs"
TINY_CONFIG = RUNS / "tiny-ci.toml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A handful of Mbpp-R tasks (injected bugs, no model samples), built by the dataset builder."""
    out = tmp_path_factory.mktemp("mbppr")
    config = data.BuildConfig(out=out, only=("mbppr",), limit=4, use_model=False, workers=2, progress=False,
                              mbppr=data.MbpprSettings(cap=2, attempts=10), log=lambda message: None)
    data.build(config)
    return out


@pytest.fixture(scope="module")
def run_config(tiny_gguf: Path, tasks_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run")
    return load_config(TINY_CONFIG, {"model.base": str(tiny_gguf), "out_dir": str(out),
                                     "data.train": str(tasks_dir / "mbppr_train.jsonl.gz"),
                                     "data.dev": str(tasks_dir / "mbppr_dev.jsonl.gz")})


@pytest.fixture(scope="module")
def run(run_config) -> Run:
    return Run(run_config, progress=False)


def _function(code: str, name: str) -> str:
    return function_source(code, find_function(code, name))


def scripted_answers(task: data.TaskRecord) -> dict[str, str]:
    """Answers of every kind, by what the filter must make of them."""
    fix = _function(task.fix_code, task.function_name)
    bug = _function(task.buggy_code, task.function_name)
    header = fix.split("\n", 1)[0]
    return {
        "fix": format_answer("The trace shows where the value goes wrong; the reference logic fixes it.", fix),
        "fix-with-trace-comments": format_answer("Same fix, written over the trace.",
                                                 fix.replace("\n", "  # (1) x=1\n", 1)),
        "bug-unchanged": format_answer("Looks fine to me.", bug),
        "wrong-fix": format_answer("Return nothing.", f"{header}\n    return None"),
        "prose": "I cannot tell what is wrong here.",
        "syntax-error": format_answer("Broken.", f"{header}\n    return (("),
    }


PASSING = {"fix", "fix-with-trace-comments"}


class ScriptedSampler:
    """Answers by task and index: kinds[(seed + i) % len(kinds)]. `real` (optional) writes index 0."""

    name = "scripted"

    def __init__(self, run: Run, real=None) -> None:
        self.tasks = {run.prompt(task): task for split in ("train", "dev") for task in run.tasks(split)}
        self.real = real
        self.kinds = list(scripted_answers(next(iter(self.tasks.values()))))

    def kind(self, task: str, index: int) -> str:
        return self.kinds[(sample_seed(0, task, 0) + index) % len(self.kinds)]

    def sample(self, rows: list[Row], settings: SampleSettings) -> list[Answer]:
        out = [Answer(scripted_answers(self.tasks[row.prompt])[self.kind(row.task, row.index)], 20, "stop", 0.0)
               for row in rows]
        if self.real is not None:  # the real model writes each task's sample 0
            firsts = [i for i, row in enumerate(rows) if row.index == 0]
            for i, answer in zip(firsts, self.real.sample([rows[i] for i in firsts], settings), strict=True):
                out[i] = answer
        return out


# -- config, prompts -------------------------------------------------------------------------------------------


def test_run_configs_load_and_reject_unknown_keys(tmp_path: Path) -> None:
    real = load_config(RUNS / "smollm2-mbppr.toml")
    assert real.model.base == "default" and real.sample.samples_per_task == 32
    assert real.out == (RUNS / "out" / "smollm2-mbppr").resolve()
    tiny = load_config(TINY_CONFIG, dict([parse_override("sample.samples_per_task=3")]))
    assert tiny.sample.samples_per_task == 3
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlora_rnak = 4\n")
    with pytest.raises(ValueError, match="lora_rnak"):
        load_config(bad)


def test_training_prompt_tokens_are_the_servers(run: Run, tiny_gguf: Path) -> None:
    """HF tokenization of the training prompt == llama.cpp's tokenization of the prompt the server sends."""
    from nextls_train.models import load_tokenizer, prompt_ids

    tokenizer = load_tokenizer(run.base)
    runtime = LlamaRuntime(tiny_gguf, n_ctx=4096)
    try:
        for task in run.tasks("train")[:2]:
            prompt = run.prompt(task)
            assert prompt.startswith("<|im_start|>system\n") and task.trace.splitlines()[0] in prompt
            assert prompt_ids(tokenizer, prompt) == runtime.tokenize(prompt)
    finally:
        runtime.close()


# -- sampling ----------------------------------------------------------------------------------------------------

_SAMPLE_SCRIPT = """
import sys, time
from nextls_train.config import load_config
from nextls_train.loop import Run
from nextls_train.sample import SampleSettings, TransformersSampler, run_sample

config = load_config(sys.argv[1], {"model.base": sys.argv[2], "out_dir": sys.argv[3], "data.train": sys.argv[4],
                                   "data.dev": sys.argv[4]})
run = Run(config, progress=False)
real = TransformersSampler(run.base, None, device="cpu", threads=1)

class Slow:
    name = "transformers"
    def sample(self, rows, settings):
        time.sleep(0.3)  # give the test time to kill us mid-run
        return real.sample(rows, settings)

settings = SampleSettings(samples_per_task=6, temperature=1.0, top_p=0.95, max_new_tokens=8, batch_size=2, seed=0)
run_sample(run.tasks("train"), sys.argv[5], Slow(), settings, run.prompt, progress=False)
"""


def test_samples_are_written_as_produced_and_resume_after_kill(run: Run, run_config, tiny_gguf: Path,
                                                               tmp_path: Path) -> None:
    samples_dir = tmp_path / "samples"
    path = shard_file(samples_dir, (0, 1))
    tasks = run.tasks("train")
    settings = SampleSettings(samples_per_task=6, temperature=1.0, top_p=0.95, max_new_tokens=8, batch_size=2, seed=0)
    total = len(tasks) * settings.samples_per_task
    run.base  # noqa: B018  (the HF base folder, converted once, shared with the child)
    script = tmp_path / "sample_child.py"
    script.write_text(_SAMPLE_SCRIPT)
    child = subprocess.Popen([sys.executable, str(script), str(TINY_CONFIG), str(tiny_gguf), str(run_config.out),
                              str(run_config.resolve(run_config.data.train)), str(samples_dir)],
                             env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if path.exists() and len(path.read_bytes().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert child.poll() is None, child.stderr.read().decode()[-2000:]
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = path.read_bytes()
    written = before.splitlines()
    assert 4 <= len(written) < total  # samples reached the disk one batch at a time, before the end
    with open(path, "ab") as file:  # as if killed in the middle of writing a line
        file.write(b'{"task": "cut', )

    real = TransformersSampler(run.base, None, device="cpu", threads=1)
    summary = run_sample(tasks, samples_dir, real, settings, run.prompt, progress=False)
    after = path.read_bytes()
    assert after.startswith(before)  # nothing written before the kill was lost or rewritten
    items = [json.loads(line) for line in after.splitlines()]
    keys = [(item["task"], item["index"]) for item in items]
    assert len(keys) == len(set(keys)) == total  # nothing missing, nothing twice
    assert summary["new"] == total - len(written) and summary["samples"] == total
    assert all(item["backend"] == "transformers" and item["tokens"] <= 8 for item in items)
    # A finished shard has nothing left to do.
    assert run_sample(tasks, samples_dir, real, settings, run.prompt, progress=False)["new"] == 0


def test_llama_cpp_sampler_is_seeded(run: Run, tiny_gguf: Path) -> None:
    sampler = LlamaCppSampler(tiny_gguf, None, threads=1)
    settings = SampleSettings(samples_per_task=2, temperature=0.8, top_p=0.95, max_new_tokens=12, batch_size=2, seed=0)
    task = run.tasks("train")[0]
    rows = [Row(run.prompt(task), task.id, index, 7 + index) for index in range(2)]
    first = sampler.sample(rows, settings)
    again = sampler.sample(rows[::-1], settings)[::-1]  # each row has its own seed: order does not matter
    assert [a.text for a in first] == [a.text for a in again]
    assert all(0 < a.tokens <= 12 for a in first)


def test_code_end() -> None:
    assert code_end("Because.\n```python\ndef f():\n    return 1\n```\nmore") == len(
        "Because.\n```python\ndef f():\n    return 1\n```\n")
    assert code_end("Because.\n```python\ndef f():\n") is None


def test_generation_stops_each_row_when_its_code_block_closes(run: Run) -> None:
    """The transformers sampler's stopping rule, token by token: a row is done at the line end after its
    closing fence, not at inline backticks before it; rows of one batch stop independently."""
    import torch

    from nextls_train.sample import _CodeEnd

    sampler = TransformersSampler(run.base, None, device="cpu", threads=1)
    texts = ["Use `n` and `m`, not ``k``.\n```python\ndef f(n):\n    return n + 1\n```\nMore text after.",
             "No code here, only `inline` ticks ``` and words\nover lines\n"]
    rows = [sampler.tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    length = max(map(len, rows))
    rows = [row + [sampler.eos] * (length - len(row)) for row in rows]
    prompt = [[7, 8, 9]] * 2  # the criterion must look past the prompt
    criterion = _CodeEnd(sampler, prompt_width=3, rows=2)
    stopped_at = [None, None]
    for step in range(1, length + 1):
        done = criterion(torch.tensor([p + r[:step] for p, r in zip(prompt, rows, strict=True)]), None)
        for i in range(2):
            if done[i] and stopped_at[i] is None:
                stopped_at[i] = step
    decoded = sampler.tokenizer.decode(rows[0][: stopped_at[0]])
    assert decoded.endswith("```\n") and code_end(decoded) == len(decoded)
    assert code_end(sampler.tokenizer.decode(rows[0][: stopped_at[0] - 1])) is None
    assert stopped_at[1] is None


# -- filter ------------------------------------------------------------------------------------------------------


def test_filter_keeps_exactly_the_passing_samples(run: Run, tmp_path: Path) -> None:
    tasks = run.tasks("train")
    sampler = ScriptedSampler(run)
    settings = SampleSettings(samples_per_task=len(sampler.kinds), temperature=1.0, top_p=1.0, max_new_tokens=8,
                              batch_size=len(sampler.kinds), seed=0)
    run_sample(tasks, tmp_path / "samples", sampler, settings, run.prompt, progress=False)
    summary = run_filter(tasks, tmp_path / "samples", tmp_path, run.config.filter, progress=False)

    samples = list(read_log(shard_file(tmp_path / "samples", (0, 1))))

    def kind(item: dict) -> str:
        return sampler.kind(item["task"], item["index"])

    expected = {(item["task"], item["index"]) for item in samples if kind(item) in PASSING}
    kept = list(read_log(tmp_path / "kept.jsonl"))
    assert {(row["task"], row["index"]) for row in kept} == expected
    assert summary["kept"] == len(expected) == 2 * len(tasks)
    verdicts = {(v["task"], v["index"]): v for v in read_log(tmp_path / "verdicts.jsonl")}
    by_kind = {}
    for item in samples:
        by_kind.setdefault(kind(item), set()).add(verdicts[(item["task"], item["index"])]["status"])
    assert by_kind == {"fix": {"verified"}, "fix-with-trace-comments": {"verified"}, "bug-unchanged": {"rejected"},
                       "wrong-fix": {"failing"}, "prose": {"rejected"}, "syntax-error": {"rejected"}}
    # A kept example is in the answer shape the server parses (the patch of the buggy function), with the
    # trace comments gone.
    by_id = {task.id: task for task in tasks}
    for row in kept:
        task = by_id[row["task"]]
        assert "```diff\n" in row["answer"]
        buggy = _function(task.buggy_code, task.function_name)
        parsed = parse_answer(row["answer"], task.function_name, original=buggy)
        assert parsed.usable and "# (1)" not in parsed.code
        assert parsed.code.strip() == _function(task.fix_code, task.function_name).strip()
    assert summary["pass_at_1"] == pytest.approx(len(PASSING) / len(sampler.kinds), abs=1e-3)
    # Resuming a finished filter runs nothing again.
    assert run_filter(tasks, tmp_path / "samples", tmp_path, run.config.filter, progress=False)["verified_now"] == 0


def test_append_log_drops_a_cut_line_and_never_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with AppendLog(path, key=lambda item: item["k"]) as log:
        assert log.append({"k": 1}) and not log.append({"k": 1})
    path.write_bytes(path.read_bytes() + b'{"k": 2, "cut')
    with AppendLog(path, key=lambda item: item["k"]) as log:
        assert log.dropped_partial and len(log) == 1
        log.append({"k": 2})
    assert [json.loads(line)["k"] for line in path.read_text().splitlines()] == [1, 2]


_TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
from nextls_train.config import load_config
from nextls_train.models import prepare_base
from nextls_train.train import train_lora

config = load_config(sys.argv[1], {"model.base": sys.argv[2], "out_dir": sys.argv[3], "train.save_every": 2,
                                   "train.epochs": 4, "train.batch_size": 1})
examples = json.loads(Path(sys.argv[4]).read_text())
work = Path(sys.argv[5])
print(json.dumps(train_lora(config, prepare_base(config), examples, work, work / "adapter", progress=False)))
"""


def test_training_resumes_from_its_checkpoint_after_kill(run: Run, run_config, tiny_gguf: Path,
                                                         tmp_path: Path) -> None:
    tasks = run.tasks("train")[:2]
    examples = [{"prompt": run.prompt(task), "answer": scripted_answers(task)["fix"]} for task in tasks]
    (tmp_path / "examples.json").write_text(json.dumps(examples))
    (tmp_path / "train.py").write_text(_TRAIN_SCRIPT)
    work = tmp_path / "work"
    argv = [sys.executable, str(tmp_path / "train.py"), str(TINY_CONFIG), str(tiny_gguf), str(run_config.out),
            str(tmp_path / "examples.json"), str(work)]
    run.base  # noqa: B018  (converted once, before the children)
    child = subprocess.Popen(argv, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if (work / "checkpoint.pt").exists() and len(list(read_log(work / "log.jsonl"))) >= 3:
            break
        time.sleep(0.05)
    assert child.poll() is None, child.stderr.read().decode()[-2000:]
    child.send_signal(signal.SIGKILL)
    child.wait()
    logged = len(list(read_log(work / "log.jsonl")))
    assert 3 <= logged < 8
    done = subprocess.run(argv, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"), capture_output=True, text=True,
                          check=True)
    assert "train: resuming at step" in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    steps = [item["step"] for item in read_log(work / "log.jsonl")]
    assert steps == list(range(1, summary["steps"] + 1)) == list(range(1, 9))
    assert (work / "adapter" / "adapter_model.safetensors").exists() and not (work / "checkpoint.pt").exists()


# -- the whole loop ----------------------------------------------------------------------------------------------


def test_loop_end_to_end(run: Run, run_config, tiny_gguf: Path) -> None:
    """sample -> filter -> train -> eval, twice; export the best iteration; the server loads the results."""
    real = TransformersSampler(run.base, None, device="cpu", threads=1)
    loop = Run(run_config, progress=False, sampler_factory=lambda r, iteration: ScriptedSampler(r, real))
    started = time.monotonic()
    summary = loop.run()
    elapsed = time.monotonic() - started
    out = run_config.out
    config = run_config
    n_train = len(loop.tasks("train"))
    rows = {row["iteration"]: row for row in summary["iterations"]}
    assert set(rows) == {0, 1, 2} and "dev_pass_at_1" in rows[0]
    for iteration in (1, 2):
        samples = list(read_log(out / f"iter-{iteration}" / "samples" / "shard-0-of-1.jsonl"))
        assert len(samples) == n_train * config.sample.samples_per_task
        assert any(s["finish"] in ("length", "stop", "code-end") and s["tokens"] <= config.sample.max_new_tokens
                   for s in samples)
        kept = list(read_log(out / f"iter-{iteration}" / "kept.jsonl"))
        assert kept and rows[iteration]["kept"] == len(kept)
        # The loss goes down.
        losses = [item["loss"] for item in read_log(out / f"iter-{iteration}" / "train" / "log.jsonl")]
        assert len(losses) >= 8
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses
        examples = list(read_log(out / f"iter-{iteration}" / "train" / "examples.jsonl"))
        per_task: dict[str, int] = {}
        for example in examples:
            per_task[example["task"]] = per_task.get(example["task"], 0) + 1
        assert max(per_task.values()) <= config.train.max_per_task
        assert (out / f"iter-{iteration}" / "adapter" / "adapter_model.safetensors").exists()
        assert (out / f"iter-{iteration}" / "adapter.gguf").exists()
        assert "dev_pass_at_1" in rows[iteration]
        assert (out / f"iter-{iteration}" / "log.txt").read_text().count("sample:") >= 2
    assert summary["best_iteration"] in (1, 2)

    export = out / "export"
    check = json.loads((export / "check.json").read_text())
    assert check["model-f32.gguf"]["max_abs_diff"] < 1e-2 and check["model-f32.gguf"]["top1_agreement"] > 0.99
    assert check["model-Q8_0.gguf"]["top1_agreement"] > 0.9
    lora_check = next(value for key, value in check.items() if key.endswith("+ nextls-lora.gguf"))
    assert lora_check["max_abs_diff"] < 1e-2
    assert not (export / "model-Q4_K_M.gguf").exists()  # 64-wide rows: no 256-wide k-quant blocks
    card = (export / "README.md").read_text()
    assert "dev pass@1" in card and "tiny-llama.gguf" in card
    # The server's runtime loads the merged GGUFs, and the adapter on the base, and generates.
    prompt = loop.prompt(loop.tasks("dev")[0])
    for name in ("model-f32.gguf", "model-Q8_0.gguf", "model-Q4_1.gguf"):
        runtime = LlamaRuntime(export / name, n_ctx=4096)
        try:
            assert runtime.generate(prompt, max_tokens=4, seed=0).completion_tokens >= 1
        finally:
            runtime.close()
    adapted = LlamaRuntime(tiny_gguf, lora_path=export / "nextls-lora.gguf", n_ctx=4096)
    try:
        assert adapted.generate(prompt, max_tokens=4, seed=0).completion_tokens >= 1
    finally:
        adapted.close()
    # llama.cpp: base + adapter GGUF == the merged GGUF, and both differ from the base.
    from nextls_train.export import llama_logits
    from nextls_train.models import load_tokenizer, prompt_ids

    tokens = [prompt_ids(load_tokenizer(loop.base), prompt)]
    base_logits = llama_logits(tiny_gguf, tokens)[0]
    adapted_logits = llama_logits(tiny_gguf, tokens, lora=export / "nextls-lora.gguf")[0]
    merged_logits = llama_logits(export / "model-f32.gguf", tokens)[0]
    assert abs(adapted_logits - merged_logits).max() < 1e-2
    assert abs(adapted_logits - base_logits).max() > 10 * abs(adapted_logits - merged_logits).max()

    # Everything is on disk: running the loop again redoes nothing.
    started = time.monotonic()
    loop_again = Run(run_config, progress=False, sampler_factory=lambda r, iteration: pytest.fail("sampled again"))
    assert loop_again.run(export=False)["best_iteration"] == summary["best_iteration"]
    assert time.monotonic() - started < max(30.0, elapsed / 4)
