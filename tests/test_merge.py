"""A LoRA adapter merged into its base once: same answers as llama.cpp applying it, cached, never half-written."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
from gguf.quants import dequantize
from tiny_gguf import build_tiny_llama_gguf, build_tiny_lora_gguf

from nextls import merge
from nextls.merge import merged_model
from nextls.model import LlamaRuntime, ModelLoadError

PROMPT = "def add(a, b):\n    return a - b\n# The bug is"


def greedy(runtime: LlamaRuntime) -> str:
    return runtime.generate(PROMPT, max_tokens=24, temperature=0.0).text


def test_the_merged_model_answers_as_the_adapter_applied_at_run_time(tiny_gguf: Path, tmp_path: Path) -> None:
    adapter = build_tiny_lora_gguf(tiny_gguf, tmp_path / "adapter.gguf", rank=4)
    base = greedy(LlamaRuntime(tiny_gguf, n_gpu_layers=0))
    applied = LlamaRuntime(tiny_gguf, lora_path=adapter, merge_lora=False, n_gpu_layers=0)
    merged = LlamaRuntime(tiny_gguf, lora_path=adapter, n_gpu_layers=0)
    assert not applied.merged and applied.weights_path == tiny_gguf
    assert merged.merged and merged.weights_path != tiny_gguf and merged.lora_path == adapter
    assert greedy(merged) == greedy(applied) != base
    # Metadata (tokenizer, chat template) comes across unchanged; only the adapted weights differ.
    original, written = gguf.GGUFReader(tiny_gguf), gguf.GGUFReader(merged.weights_path)
    assert original.fields["tokenizer.chat_template"].contents() == written.fields["tokenizer.chat_template"].contents()
    changed = {t.name for t, u in zip(original.tensors, written.tensors, strict=True) if (t.data != u.data).any()}
    assert changed and all(name.endswith((".attn_q.weight", ".attn_v.weight")) for name in changed)


def test_a_merge_is_made_once_per_base_and_adapter(tiny_gguf: Path, tmp_path: Path) -> None:
    first = build_tiny_lora_gguf(tiny_gguf, tmp_path / "first.gguf", seed=1)
    second = build_tiny_lora_gguf(tiny_gguf, tmp_path / "second.gguf", seed=2)
    out = merged_model(tiny_gguf, first, tmp_path / "cache")
    stamp = out.stat().st_mtime_ns
    assert merged_model(tiny_gguf, first, tmp_path / "cache") == out and out.stat().st_mtime_ns == stamp
    assert merged_model(tiny_gguf, second, tmp_path / "cache") != out


def test_a_failed_merge_leaves_nothing_behind(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = build_tiny_lora_gguf(tiny_gguf, tmp_path / "adapter.gguf")

    def killed(base: Path, adapter: Path, out: Path) -> None:
        out.write_bytes(b"GGUF half")
        raise KeyboardInterrupt

    monkeypatch.setattr(merge, "write_merged", killed)
    with pytest.raises(KeyboardInterrupt):
        merged_model(tiny_gguf, adapter, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_adapter_that_does_not_fit_is_a_load_error_naming_it(tiny_gguf: Path, tmp_path: Path) -> None:
    other = build_tiny_llama_gguf(tmp_path / "other.gguf", n_embd=32, n_head=2, n_ff=64)
    adapter = build_tiny_lora_gguf(other, tmp_path / "other-adapter.gguf")
    with pytest.raises(ModelLoadError, match="cannot merge") as raised:
        LlamaRuntime(tiny_gguf, lora_path=adapter, n_gpu_layers=0)
    assert raised.value.path == adapter
    with pytest.raises(ModelLoadError, match="not a LoRA adapter") as raised:
        LlamaRuntime(tiny_gguf, lora_path=tiny_gguf, n_gpu_layers=0)
    assert raised.value.path == tiny_gguf


def test_nextls_fix_names_the_adapter_it_merged(tiny_gguf: Path, tmp_path: Path) -> None:
    adapter = build_tiny_lora_gguf(tiny_gguf, tmp_path / "adapter.gguf")
    module = tmp_path / "occ.py"
    module.write_text("def twice(x):\n    return x + 1\n\n\nassert twice(2) == 4\n")

    def fix(*lora: str) -> tuple[dict, str]:
        done = subprocess.run([sys.executable, "-m", "nextls", "fix", f"{module}::twice", "--model", str(tiny_gguf),
                               *lora, "-k", "1", "--max-tokens", "8", "--threads", "1", "--json", "--no-search"],
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 1, done.stderr  # random weights: no verified fix
        return json.loads(done.stdout), done.stderr

    report, stderr = fix("--lora", str(adapter))
    assert report["adapter"] == str(adapter) and report["adapter_merged"] and Path(report["model"]) == tiny_gguf
    assert "adapter merged" in stderr
    report, stderr = fix("--lora", "none")
    assert report["adapter"] == "" and not report["adapter_merged"] and "adapter merged" not in stderr


def test_a_delta_smaller_than_a_4_bit_step_survives_the_merge(tiny_gguf: Path, tmp_path: Path) -> None:
    # SmolLM2 ships as Q4_1. A trained LoRA's delta is mostly below a 4-bit step: requantizing the merged
    # weight to Q4_1 rounded it away (the merged model answered like the base). Adapted weights go to Q8_0.
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1, 1
    base = tmp_path / "tiny-q4_1.gguf"
    assert llama_cpp.llama_model_quantize(str(tiny_gguf).encode(), str(base).encode(), ctypes.byref(params)) == 0
    adapter = build_tiny_lora_gguf(base, tmp_path / "adapter.gguf", rank=4, alpha=0.004)
    merged = gguf.GGUFReader(merged_model(base, adapter, tmp_path / "cache"))
    original = {tensor.name: tensor for tensor in gguf.GGUFReader(base).tensors}
    alpha, pairs = merge.read_adapter(adapter)
    for tensor in merged.tensors:
        if tensor.name not in pairs:
            continue
        assert original[tensor.name].tensor_type == gguf.GGMLQuantizationType.Q4_1
        assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0
        lora_a, lora_b = pairs[tensor.name]
        wanted = (alpha / lora_a.shape[0]) * (lora_b @ lora_a)
        got = dequantize(tensor.data, tensor.tensor_type) - dequantize(original[tensor.name].data,
                                                                      original[tensor.name].tensor_type)
        assert np.abs(wanted).mean() < 0.01  # well under a Q4_1 step of these weights
        assert np.corrcoef(got.ravel(), wanted.ravel())[0, 1] > 0.9
