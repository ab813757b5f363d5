"""Training stage throughput, read from the stage records of finished runs, side by side (one column a run).

Every stage of `nextls-train` writes `<stage>.done.json` with its wall time and counts; this prints, per run:
sampling (samples/s, generated tokens/s, backend), filtering (samples verified/s, sandbox runs/s),
training (examples, steps, tokens/s) and the adapter export. Runs are folders under `training/runs/out/`
(a CPU run, a GPU session, ...), so the figures are the ones those runs measured, on their machines.

    python tests/benchmarks/bench_training.py training/runs/out/smollm2-mbppr-cpu training/runs/out/smollm2-mbppr-gpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def figures(run: Path, iteration: int) -> dict[str, str]:
    folder = run / f"iter-{iteration}"
    sample, filtered, train = (load(folder / "sample-0-of-1.done.json"), load(folder / "filter.done.json"),
                               load(folder / "train.done.json"))
    # Each sample records its share of the generation time (a batch's time over its rows), so the figures
    # hold for a sampling stage cut short by a time limit too (model loading is not counted).
    drawn = [json.loads(line) for path in (folder / "samples").glob("shard-*.jsonl")
             for line in path.read_text().splitlines() if line.strip()]
    generating = sum(item["seconds"] for item in drawn)
    backends = sorted({item.get("backend", "?") for item in drawn})
    rows: dict[str, str] = {"samples drawn (backend)": f"{len(drawn)} ({', '.join(backends)})"}
    if generating:
        rows["sampling samples/s"] = f"{len(drawn) / generating:.2f}"
        rows["sampling tokens/s"] = f"{sum(item['tokens'] for item in drawn) / generating:.0f}"
    if sample.get("wall_seconds"):
        rows["sampling stage seconds"] = f"{sample['wall_seconds']:.0f}"
    if filtered:
        seconds = filtered.get("seconds") or filtered["wall_seconds"]
        rows["filter samples/s"] = f"{filtered['samples'] / seconds:.1f}"
        rows["filter sandbox runs/s"] = f"{filtered['sandbox_runs'] / seconds:.1f}"
        rows["kept / samples"] = f"{filtered['kept']} / {filtered['samples']}"
    if train:
        rows["train examples, steps"] = f"{train['examples']}, {train['steps']}"
        rows["train tokens/s"] = f"{train['tokens'] / train['seconds']:.0f}"
        rows["train seconds"] = f"{train['seconds']:.1f}"
        rows["adapter GGUF seconds"] = f"{train.get('adapter_gguf_seconds', '-')}"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run output folders")
    parser.add_argument("--iteration", type=int, default=1)
    args = parser.parse_args()
    columns = {run.name: figures(run, args.iteration) for run in args.runs}
    names = list(dict.fromkeys(key for rows in columns.values() for key in rows))
    width = max(len(name) for name in names)
    print(f"{'':{width}}  " + "  ".join(f"{run:>28}" for run in columns))
    for name in names:
        print(f"{name:{width}}  " + "  ".join(f"{rows.get(name, '-'):>28}" for rows in columns.values()))


if __name__ == "__main__":
    main()
