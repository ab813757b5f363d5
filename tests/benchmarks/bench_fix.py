"""End-to-end `fix` latency on an MBPP-size function, split into trace / generate / verify.

    OMP_WAIT_POLICY=PASSIVE python tests/benchmarks/bench_fix.py [--model X.gguf] [-k 4] [--repeat 3]

Runs the same pipeline as `nextls fix` (the model loaded once, as the server does) and prints the
median seconds of each stage, the tokens generated, and what became of the candidates.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import llama_cpp

from nextls.fix import FixOptions, fix_function
from nextls.model import LlamaRuntime, resolve_model

EXAMPLE = Path(__file__).resolve().parents[2] / "server" / "examples" / "remove_occ.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    model = resolve_model(args.model)
    started = time.perf_counter()
    runtime = LlamaRuntime(model, n_threads=args.threads)
    load = time.perf_counter() - started
    print(f"# {model.name} on {runtime.device}, llama-cpp-python {llama_cpp.__version__}, "
          f"Python {platform.python_version()}, {args.threads} threads; model load {load:.2f}s")
    print(f"# {EXAMPLE.name}::remove_Occ, k={args.k}, max_tokens={args.max_tokens}, median of {args.repeat}")
    stages: dict[str, list[float]] = {"trace": [], "generate": [], "verify": [], "total": []}
    tokens = []
    for repeat in range(args.repeat):
        started = time.perf_counter()
        report = fix_function(EXAMPLE, "remove_Occ", runtime,
                              options=FixOptions(k=args.k, max_tokens=args.max_tokens, seed=repeat * args.k,
                                                 search=False))  # the model's stages: bench_search.py times the search
        stages["total"].append(time.perf_counter() - started)
        for name in ("trace", "generate", "verify"):
            stages[name].append(report.timings.get(name, 0.0))
        tokens.append(sum(candidate.generation.completion_tokens for candidate in report.candidates))
        statuses = ", ".join(candidate.status for candidate in sorted(report.candidates, key=lambda c: c.index))
        print(f"run {repeat + 1}: {stages['total'][-1]:.1f}s, {tokens[-1]} tokens; candidates: {statuses}")
    medians = {name: statistics.median(values) for name, values in stages.items()}
    print("stage      median s   share")
    for name, seconds in medians.items():
        print(f"{name:<10} {seconds:>8.2f}   {seconds / medians['total']:>5.0%}")
    print(f"generate: {statistics.median(tokens) / medians['generate']:.1f} tokens/s over the k samples")


if __name__ == "__main__":
    main()
