"""Stage 1: sample rationale + fix answers for every task, conditioned on its naturalized trace.

NExT (Algorithm 1): each iteration samples from the previous iteration's model (the base model first),
`[sample].samples_per_task` answers per task at temperature > 0. Every answer is appended to
`samples/shard-I-of-N.jsonl` the moment it exists (flushed and fsynced), keyed by (task, index): a run
killed at any point (SIGKILL included) resumes with the missing (task, index) pairs only, so nothing is lost
or sampled twice. `--shard I/N` takes every N-th task from the I-th, so N workers (machines, GPUs) share
the job; the filter reads all shards.

Backends:
* `transformers`: `batch_size` rows (the samples of several tasks) are generated as one left-padded batch; a
  code block closing ends its row. On a GPU a batch of hundreds costs about what one row does.
* `llama.cpp`: the server's `LlamaRuntime` on the GGUF (+ LoRA adapter GGUF), one answer after another,
  reusing the prompt's KV cache. The base GGUF is quantized (Q4_1 for SmolLM2), so its answers follow a
  slightly different distribution than the float HF model's.
An answer ends at the end-of-turn token, at `max_new_tokens`, or (`stop_at_code_end`) once its code block
closes: the parser reads the rationale and the first complete block, so what would follow is never used.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nextls_train.config import RunConfig
from nextls_train.data import TaskRecord
from nextls_train.models import Base, load_model, load_tokenizer, prompt_ids, setup_torch, torch_dtype
from nextls_train.records import AppendLog, Logger, read_log, write_json


@dataclass(frozen=True)
class SampleSettings:
    samples_per_task: int
    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int
    seed: int
    stop_at_code_end: bool = True

    def key(self) -> dict[str, Any]:
        """What must match for a resumed run to continue a samples folder (the count may grow)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
                "seed": self.seed, "stop_at_code_end": self.stop_at_code_end}


@dataclass
class Answer:
    text: str
    tokens: int
    finish: str  # "stop" (end-of-turn), "code-end" (the code block closed), "length"
    seconds: float


@dataclass(frozen=True)
class Row:
    """One answer to draw: sample `index` of `task`, with its own seed (stable across runs and shards)."""

    prompt: str
    task: str
    index: int
    seed: int


class Sampler(Protocol):
    name: str

    def sample(self, rows: Sequence[Row], settings: SampleSettings) -> list[Answer]: ...


def train_settings(config: RunConfig) -> SampleSettings:
    s = config.sample
    return SampleSettings(s.samples_per_task, s.temperature, s.top_p, s.max_new_tokens, s.batch_size, s.seed,
                          s.stop_at_code_end)


def eval_settings(config: RunConfig) -> SampleSettings:
    e = config.eval
    return SampleSettings(e.samples_per_task, e.temperature, config.sample.top_p, e.max_new_tokens,
                          config.sample.batch_size, e.seed, config.sample.stop_at_code_end)


def code_end(text: str) -> int | None:
    """Where the answer's first code block closes (the end of its closing fence line), if it has."""
    opened = False
    position = 0
    for line in text.splitlines(keepends=True):
        position += len(line)
        if line.lstrip().startswith("```"):
            if opened:
                return position if line.endswith("\n") else None
            opened = True
    return None


def _cut(text: str, settings: SampleSettings) -> tuple[str, bool]:
    if settings.stop_at_code_end:
        end = code_end(text)
        if end is not None:
            return text[:end].rstrip("\n"), True
    return text, False


def sample_seed(seed: int, task_id: str, index: int) -> int:
    """Seed of a task's sample `index`: stable across runs and shards. llama.cpp draws each row with its own
    seed; transformers seeds a batch with its first row's."""
    return random.Random(f"{seed}:{task_id}:{index}").randrange(2**31)


class TransformersSampler:
    """Rows of several tasks generate as one left-padded batch: on a GPU a batch of hundreds costs about what
    one row does. torch's RNG is seeded with the batch's first row, so a batch's answers depend on its rows."""

    name = "transformers"

    def __init__(self, base: Base, adapter: Path | None, *, device: str | None = None, dtype: Any = None,
                 threads: int = 2) -> None:
        import torch

        setup_torch(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(base)
        self.model = load_model(base, adapter, dtype=dtype, device=self.device)
        self.eos = self.tokenizer.eos_token_id
        # A code block has closed only after six backticks and a line end: rows are decoded (to look for the
        # closing fence) only when they just made a backtick or a line end and have made six backticks so far.
        pieces = self.tokenizer.batch_decode([[token] for token in range(len(self.tokenizer))])
        self.backticks = torch.tensor([piece.count("`") for piece in pieces], device=self.device)
        self.fence_ends = torch.tensor(["`" in piece or "\n" in piece for piece in pieces], device=self.device)

    def sample(self, rows: Sequence[Row], settings: SampleSettings) -> list[Answer]:
        import torch

        started = time.perf_counter()
        prompts = [prompt_ids(self.tokenizer, row.prompt) for row in rows]
        width = max(len(ids) for ids in prompts)
        ids = torch.tensor([[self.eos] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        torch.manual_seed(rows[0].seed)
        sampling = settings.temperature > 0
        with torch.no_grad():
            output = self.model.generate(
                ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens, do_sample=sampling,
                temperature=settings.temperature if sampling else None, top_p=settings.top_p if sampling else None,
                top_k=None, eos_token_id=self.eos, pad_token_id=self.eos,
                stopping_criteria=[_CodeEnd(self, width, len(rows))] if settings.stop_at_code_end else None)
        seconds = (time.perf_counter() - started) / len(rows)
        answers = []
        for generated in output[:, width:].tolist():
            finish = "length"
            row = generated
            if self.eos in generated:
                row = generated[: generated.index(self.eos)]
                finish = "stop"
            text, closed = _cut(self.tokenizer.decode(row, skip_special_tokens=True), settings)
            answers.append(Answer(text, len(row), "code-end" if closed else finish, seconds))
        return answers


class _CodeEnd:
    """generate()'s stopping criterion: a row is done once its answer's first code block has closed."""

    def __init__(self, sampler: TransformersSampler, prompt_width: int, rows: int) -> None:
        import torch

        self.sampler = sampler
        self.width = prompt_width
        self.done = torch.zeros(rows, dtype=torch.bool, device=sampler.device)
        self.backticks = torch.zeros(rows, dtype=torch.long, device=sampler.device)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        last = input_ids[:, -1]
        self.backticks += self.sampler.backticks[last]
        candidates = self.sampler.fence_ends[last] & (self.backticks >= 6) & ~self.done
        for row in candidates.nonzero().flatten().tolist():
            text = self.sampler.tokenizer.decode(input_ids[row, self.width:], skip_special_tokens=True)
            if code_end(text) is not None:
                self.done[row] = True
        return self.done.clone()


class LlamaCppSampler:
    name = "llama.cpp"
    rows_per_call = 1  # it draws one answer at a time anyway: each is written to disk as soon as it exists

    def __init__(self, gguf: Path, adapter_gguf: Path | None, *, threads: int = 2, n_ctx: int = 4096) -> None:
        from nextls.model import LlamaRuntime

        self.runtime = LlamaRuntime(gguf, lora_path=adapter_gguf, n_ctx=n_ctx, n_threads=threads)

    def sample(self, rows: Sequence[Row], settings: SampleSettings) -> list[Answer]:
        import threading

        answers = []
        for row in rows:  # rows of one task come together: the runtime reuses their prompt's KV cache
            cancel = threading.Event()
            pieces: list[str] = []

            def on_token(piece: str, pieces: list[str] = pieces, cancel: threading.Event = cancel) -> None:
                pieces.append(piece)
                if settings.stop_at_code_end and "`" in piece and code_end("".join(pieces)) is not None:
                    cancel.set()

            generation = self.runtime.generate(row.prompt, max_tokens=settings.max_new_tokens,
                                               temperature=settings.temperature, top_p=settings.top_p,
                                               seed=row.seed, cancel=cancel, on_token=on_token)
            text, closed = _cut(generation.text, settings)
            finish = "code-end" if closed else "stop" if generation.finish_reason == "stop" else "length"
            answers.append(Answer(text, generation.completion_tokens, finish, generation.seconds))
        return answers


def make_sampler(config: RunConfig, base: Base, iteration_model: int, *, backend: str | None = None) -> Sampler:
    """The sampler for the model after `iteration_model` iterations (0: the base)."""
    from nextls_train.train import adapter_dir, adapter_gguf

    backend = backend or config.sample.backend
    adapter = adapter_dir(config, iteration_model) if iteration_model > 0 else None
    if backend == "transformers":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return TransformersSampler(base, adapter, device=device, dtype=torch_dtype(config, device),
                                   threads=config.model.threads)
    if backend in ("llama.cpp", "llamacpp", "llama_cpp"):
        if base.gguf is None:
            raise ValueError("the llama.cpp backend needs a GGUF base model ([model].base)")
        lora = adapter_gguf(config, iteration_model) if iteration_model > 0 else None
        return LlamaCppSampler(base.gguf, lora, threads=config.model.threads)
    raise ValueError(f"unknown sampling backend {backend!r}: transformers or llama.cpp")


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    index, _, count = text.partition("/")
    shard = (int(index), int(count))
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard {text!r}: want I/N with 0 <= I < N")
    return shard


def shard_file(samples_dir: Path, shard: tuple[int, int]) -> Path:
    return Path(samples_dir) / f"shard-{shard[0]}-of-{shard[1]}.jsonl"


def run_sample(tasks: Sequence[TaskRecord], samples_dir: Path, sampler: Sampler | Callable[[], Sampler],
               settings: SampleSettings, prompt: Callable[[TaskRecord], str], *, shard: tuple[int, int] = (0, 1),
               log: Logger | None = None, progress: bool = True,
               on_sample: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Sample `settings.samples_per_task` answers for each task of the shard into `samples_dir`.

    `sampler` may be a factory, called only when something is left to sample (loading a model takes time).
    Returns a summary: samples written now and in all, tokens, seconds, samples per second.
    """
    log = log or Logger()
    samples_dir = Path(samples_dir)
    samples_dir.mkdir(parents=True, exist_ok=True)
    settings_file = samples_dir / "settings.json"
    if settings_file.exists():
        import json

        recorded = json.loads(settings_file.read_text())
        if recorded != settings.key():
            raise ValueError(f"{samples_dir} holds samples drawn with other settings ({recorded}); "
                             f"remove it to sample again with {settings.key()}")
    else:
        write_json(settings_file, settings.key())
    mine = list(tasks)[shard[0]:: shard[1]]
    path = shard_file(samples_dir, shard)
    summary: dict[str, Any] = {"shard": f"{shard[0]}/{shard[1]}", "tasks": len(mine), "new": 0, "tokens": 0,
                               "seconds": 0.0}
    with AppendLog(path, key=lambda item: (item["task"], item["index"])) as out:
        if out.dropped_partial:
            log(f"sample: {path.name}: dropped a cut last line (the previous run was killed mid-write)")
        todo = [(task, [i for i in range(settings.samples_per_task) if (task.id, i) not in out]) for task in mine]
        todo = [(task, missing) for task, missing in todo if missing]
        total = sum(len(missing) for _, missing in todo)
        already = len(mine) * settings.samples_per_task - total
        if already:
            log(f"sample: resuming {path.name}: {already} samples on disk, {total} to go")
        if total:
            if not hasattr(sampler, "sample"):
                sampler = sampler()
            bar = _bar(total, f"sample {shard[0]}/{shard[1]}", progress)
            started = time.perf_counter()
            rows = [Row(text, task.id, index, sample_seed(settings.seed, task.id, index))
                    for task, missing in todo for text in [prompt(task)] for index in missing]
            step = min(settings.batch_size, getattr(sampler, "rows_per_call", settings.batch_size))
            for start in range(0, len(rows), step):
                chunk = rows[start: start + step]
                answers = sampler.sample(chunk, settings)
                for row, answer in zip(chunk, answers, strict=True):
                    item = {"task": row.task, "index": row.index, "text": answer.text, "tokens": answer.tokens,
                            "finish": answer.finish, "seconds": round(answer.seconds, 3), "backend": sampler.name}
                    out.append(item)
                    summary["new"] += 1
                    summary["tokens"] += answer.tokens
                    if on_sample is not None:
                        on_sample(item)
                bar.update(len(chunk))
            bar.close()
            summary["seconds"] = round(time.perf_counter() - started, 2)
        summary["samples"] = len(out)
    if summary["seconds"]:
        summary["samples_per_s"] = round(summary["new"] / summary["seconds"], 3)
        summary["tokens_per_s"] = round(summary["tokens"] / summary["seconds"], 1)
    return summary


def read_samples(samples_dir: Path) -> list[dict[str, Any]]:
    """All shards' samples, each (task, index) once, in a stable order."""
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for path in sorted(Path(samples_dir).glob("shard-*.jsonl")):
        for item in read_log(path):  # read only: another worker may still be writing its shard
            seen.setdefault((item["task"], item["index"]), item)
    return [seen[key] for key in sorted(seen)]


def _bar(total: int, label: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="sample", disable=not enabled, dynamic_ncols=True, mininterval=2.0)
