"""The base model in HF form, its prompts, and loading it (plus a LoRA adapter) for sampling and training.

The base can be a GGUF (the server's model; transformers loads it with `gguf_file=`, dequantized) or an HF
folder. transformers cannot `save_pretrained` a GGUF-loaded model, so `prepare_base` rebuilds the model from
its config, copies the state dict in, and saves that (plus the tokenizer) once under `<out>/base/`; every
stage then loads that folder, in seconds.

Prompts: with a GGUF base, `nextls_train.prompts.training_prompt` renders the exact bytes the server sends
to that GGUF. With an HF base, the same `build_messages` + `render_chat` run with the tokenizer's template.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nextls.chat import render_chat
from nextls.prompt import RepairTask, build_messages
from nextls_train.config import RunConfig
from nextls_train.prompts import training_prompt
from nextls_train.records import Logger, write_json

BASE_DIR = "base"
BASE_INFO = "nextls_base.json"


@dataclass(frozen=True)
class Base:
    hf_dir: Path  # the base as an HF folder (config, safetensors, tokenizer)
    gguf: Path | None  # the GGUF it came from, if any: prompts are rendered with its template and tokens
    chat_template: str | None
    bos_token: str
    eos_token: str

    def prompt(self, task: RepairTask, *, use_trace: bool = True) -> str:
        if self.gguf is not None:
            return training_prompt(task, self.gguf, use_trace=use_trace)
        return render_chat(build_messages(task, use_trace=use_trace), self.chat_template,
                           bos_token=self.bos_token, eos_token=self.eos_token)


def setup_torch(threads: int) -> None:
    """Few threads and passive OpenMP waiting: CPU machines here are small and shared."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def base_source(config: RunConfig) -> Path:
    """The base model named by [model].base: "default" is the server's default GGUF."""
    if config.model.base == "default":
        from nextls.model import resolve_model

        return resolve_model(None).resolve()
    return config.resolve(config.model.base)


def prepare_base(config: RunConfig, log: Logger | None = None) -> Base:
    """The run's base under `<out>/base/`, converted once from the GGUF (or used in place when it is an HF folder)."""
    return convert_base(base_source(config), config.out / BASE_DIR, log)


def convert_base(source: Path, out: Path, log: Logger | None = None) -> Base:
    """`source` (a GGUF, or an HF folder used in place) as an HF folder, converted into `out` once."""
    log = log or Logger()
    if source.is_dir():
        tokenizer = _tokenizer(source)
        return Base(source, None, tokenizer.chat_template, tokenizer.bos_token or "", tokenizer.eos_token or "")
    info_path = out / BASE_INFO
    stat = source.stat()
    identity = {"gguf": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if int(os.environ.get("RANK", "0")) != 0:  # `accelerate launch`: the main process converts it
        while not (info_path.exists() and json.loads(info_path.read_text()).get("source") == identity):
            time.sleep(2)
    if not (info_path.exists() and json.loads(info_path.read_text()).get("source") == identity):
        started = time.perf_counter()
        log(f"base: converting {source.name} to an HF folder ({out})")
        _convert_gguf_base(source, out)
        write_json(info_path, {"source": identity, "seconds": round(time.perf_counter() - started, 1)})
    tokenizer = _tokenizer(out)
    return Base(out, source, None, tokenizer.bos_token or "", tokenizer.eos_token or "")


def _convert_gguf_base(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from its config and copy the weights.
    model_config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [key for key in missing if not (key == "lm_head.weight" and model_config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"rebuilding {gguf.name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if model_config.tie_word_embeddings:
        model.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(base: Base) -> Any:
    return _tokenizer(base.hf_dir)


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt: special-token text (`<|im_start|>`) becomes those tokens, and no BOS is
    added beyond what the template wrote, as llama.cpp tokenizes it for the server (a test compares them)."""
    return tokenizer(text, add_special_tokens=False).input_ids


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    """The target: the answer's tokens, then the end-of-turn token the model must learn to stop with."""
    return [*tokenizer(answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id]


def torch_dtype(config: RunConfig, device: str) -> Any:
    import torch

    if device == "cpu":
        return torch.float32
    return getattr(torch, config.model.dtype)


def load_model(base: Base, adapter: Path | None = None, *, merge: bool = True, dtype: Any = None,
               device: str = "cpu") -> Any:
    """The base model, with a trained LoRA adapter folder applied (merged into the weights by default)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base.hf_dir), dtype=dtype or torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        if merge:
            model = model.merge_and_unload()
    return model.to(device).eval()
