"""Batched sampling throughput of the transformers backend (training's sample stage, `eval --backend
transformers`): generated tokens/s by batch size, with transformers' dynamic KV cache (grows by one token a
step) beside its static one (allocated once per batch), side by side in one run.

The model has SmolLM2-135M's shape with random weights unless --model names an HF folder (throughput does
not depend on the weights: every row generates exactly --new tokens). Prompts are left-padded to the
longest, their lengths spread around --prompt as Mbpp-R prompts are.

    python tests/benchmarks/bench_sampling.py [--model HF_DIR] [--batch 64,256,768] [--prompt 1000] [--new 128]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import platform
import random
import time


def smollm2_shaped(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def generate(model, ids, mask, new: int, cache: str) -> None:
    """Exactly `new` sampled tokens for every row."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=True,
                       temperature=0.8, top_p=0.95, top_k=None, pad_token_id=0, eos_token_id=None,
                       cache_implementation=None if cache == "dynamic" else cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an HF model folder (default: SmolLM2-135M's shape, random weights)")
    parser.add_argument("--layers", type=int, default=30, help="layers of the random model (SmolLM2-135M: 30)")
    parser.add_argument("--batch", default="64,256,768", help="comma-separated batch sizes (rows)")
    parser.add_argument("--prompt", type=int, default=1000, help="mean prompt length in tokens")
    parser.add_argument("--new", type=int, default=128, help="tokens generated per row")
    parser.add_argument("--caches", default="dynamic,static")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.model:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    else:
        torch.manual_seed(0)
        model = smollm2_shaped(args.layers).to(dtype)
    model = model.to(device).eval()
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{dtype}, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")
    print(f"prompts ~{args.prompt} tokens (left-padded), {args.new} new tokens a row, sampling T=0.8 top-p 0.95")
    caches = args.caches.split(",")
    header = " ".join(f"{cache + ' tok/s':>18}" for cache in caches)
    print(f"{'rows':>6} {header}   ratio   warm-up s (first call)")
    rng = random.Random(0)
    vocab = model.config.vocab_size
    for rows in (int(b) for b in args.batch.split(",")):
        lengths = [max(8, int(args.prompt * rng.uniform(0.7, 1.3))) for _ in range(rows)]
        width = max(lengths)
        ids = torch.tensor([[0] * (width - n) + [rng.randrange(1, vocab) for _ in range(n)] for n in lengths],
                           device=device)
        mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=device)
        rates, warmups = [], []
        for cache in caches:
            started = time.perf_counter()
            generate(model, ids, mask, 2, cache)  # warm-up: kernels, allocator, compilation if any
            if device == "cuda":
                torch.cuda.synchronize()
            warmups.append(time.perf_counter() - started)
            started = time.perf_counter()
            generate(model, ids, mask, args.new, cache)
            if device == "cuda":
                torch.cuda.synchronize()
            rates.append(rows * args.new / (time.perf_counter() - started))
        ratio = f"{rates[-1] / rates[0]:.2f}x" if len(rates) > 1 else ""
        print(f"{rows:>6} " + " ".join(f"{rate:>18,.0f}" for rate in rates) + f"   {ratio:>5}   "
              + " ".join(f"{w:.1f}" for w in warmups), flush=True)


if __name__ == "__main__":
    main()
