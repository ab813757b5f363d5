"""Decoding speed of the shipped NExT checkpoint: base, base + LoRA applied by llama.cpp, base with it merged.

    python tests/benchmarks/bench_adapter.py --lora A.gguf [--threads 2] [--tokens 128] [--rounds 3]
                                             [--agreement 20]

One run, same prompt (a Mbpp-R dev task's served prompt, with its trace) and threads for all three:
  * decode tokens/s (after the first token) through LlamaRuntime.generate, greedy, rounds interleaved
    (base, adapter, merged, base, ...), the median of each, and each one's ratio to the base;
  * how often the merged model's greedy answer equals the run-time adapter's, token for token, on the first
    `--agreement` dev tasks (the merge requantizes the adapted weights to the base's Q4_1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP workers would steal the measured cores

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "training"))

from nextls.model import BUNDLED_LORA_FILENAME, BUNDLED_MODELS_DIR, LlamaRuntime, resolve_model  # noqa: E402
from nextls_train.data import load_split  # noqa: E402
from nextls_train.prompts import training_prompt  # noqa: E402
from nextls_train.records import repair_task  # noqa: E402


def decode_rate(runtime: LlamaRuntime, prompt: str, tokens: int) -> float:
    generation = runtime.generate(prompt, max_tokens=tokens, temperature=0.0)
    decoding = generation.seconds - (generation.first_token_seconds or 0.0)
    return (generation.completion_tokens - 1) / decoding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bundled = BUNDLED_MODELS_DIR / BUNDLED_LORA_FILENAME
    parser.add_argument("--lora", type=Path, default=bundled if bundled.is_file() else None,
                        required=not bundled.is_file(), help="adapter GGUF (default: the shipped checkpoint)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--agreement", type=int, default=20, help="dev tasks whose greedy answers are compared")
    args = parser.parse_args()

    model = resolve_model()
    runtimes = {
        "base": LlamaRuntime(model, n_threads=args.threads, n_gpu_layers=0),
        "base + adapter (run time)": LlamaRuntime(model, lora_path=args.lora, merge_lora=False,
                                                  n_threads=args.threads, n_gpu_layers=0),
        "merged": LlamaRuntime(model, lora_path=args.lora, n_threads=args.threads, n_gpu_layers=0),
    }
    seen: set[str] = set()
    tasks = [t for t in load_split("dev") if not (t.problem_id in seen or seen.add(t.problem_id))]
    prompts = [training_prompt(repair_task(task), model) for task in tasks]
    rates: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(args.rounds):
        for name, runtime in runtimes.items():
            rates[name].append(decode_rate(runtime, prompts[0], args.tokens))
    base = statistics.median(rates["base"])
    print(f"model {model.name}, adapter {args.lora.name}, merged into {runtimes['merged'].weights_path.name}")
    print(f"decode, {args.tokens} greedy tokens after the first, {args.threads} threads, median of {args.rounds}:")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:<28} {median:6.1f} tokens/s  ({median / base:.2f}x base)  runs: "
              + ", ".join(f"{value:.1f}" for value in values))
    same = 0
    for prompt in prompts[: args.agreement]:
        texts = [runtimes[name].generate(prompt, max_tokens=400, temperature=0.0).text
                 for name in ("base + adapter (run time)", "merged")]
        same += texts[0] == texts[1]
    print(f"greedy answers identical, merged vs run-time adapter: {same}/{min(args.agreement, len(prompts))} dev tasks")


if __name__ == "__main__":
    main()
