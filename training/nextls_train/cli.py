"""`nextls-train`: the offline training pipeline's command line.

    nextls-train data build [--out DIR] [--only hefix|mbppr] [--limit N] [--samples-per-problem N] [--no-model]
    nextls-train data check [--dir DIR] [--sample N]
    nextls-train data stats [--dir DIR]
    nextls-train run --config RUN.toml [--set SECTION.KEY=VALUE ...] [--no-export]
    nextls-train warmstart --config RUN.toml
    nextls-train sample|filter --config RUN.toml --iteration T [--split train|dev] [--shard I/N]
    nextls-train train|eval|export --config RUN.toml --iteration T
    nextls-train eval --model X.gguf [--lora A.gguf] --dataset mbpp-r-dev|hefix-plus --samples N -k 1,5,10 [...]
    nextls-train eval --method search|model|both --dataset mbpp-r-dev|hefix-plus [--model-tasks N] [...]
    nextls-train compare --config COMPARE.toml [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

# llama.cpp's idle OpenMP threads spin by default, starving the sandboxed test processes on small machines;
# this must be set before its shared library loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _data_parser(commands: argparse._SubParsersAction) -> None:
    from nextls_train import data

    parser = commands.add_parser("data", help="build and check the repair datasets (HeFix+, Mbpp-R)")
    actions = parser.add_subparsers(dest="action", required=True)

    build = actions.add_parser("build", help="build the datasets (resumes an interrupted build)",
                               description="Build HeFix+ and Mbpp-R into DIR. Stages that are up to date are "
                                           "skipped; an interrupted stage resumes from its log.")
    build.add_argument("--out", type=Path, default=data.DEFAULT_OUT_DIR, help="output folder (default: %(default)s)")
    build.add_argument("--data", type=Path, default=data.DEFAULT_DATA_DIR,
                       help="the raw data (default: %(default)s); see SOURCES.md there")
    build.add_argument("--only", choices=("hefix", "mbppr"), help="build one dataset only")
    build.add_argument("--limit", type=int, help="only the first N problems of each split (and N HeFix+ tasks)")
    build.add_argument("--samples-per-problem", type=int, default=data.SampleSettings.per_problem,
                       help="programs sampled from the base model per MBPP problem (default: %(default)s)")
    build.add_argument("--no-model", action="store_true",
                       help="sample nothing new: use only the samples already recorded in DIR")
    build.add_argument("--model", help="GGUF model to sample from (default: the bundled SmolLM2-135M-Instruct)")
    build.add_argument("--threads", type=int, help="llama.cpp threads for sampling")
    build.add_argument("--cap", type=int, default=data.MbpprSettings.cap,
                       help="Mbpp-R tasks per problem, all sources together (default: %(default)s)")
    build.add_argument("--seed", type=int, default=data.MbpprSettings.seed, help="seed (default: %(default)s)")
    build.add_argument("--workers", type=int, default=2, help="programs run in parallel (default: %(default)s)")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(handler=_build)

    check = actions.add_parser("check", help="check a built dataset; with --sample, re-run tasks in the sandbox")
    check.add_argument("--dir", type=Path, default=data.DEFAULT_OUT_DIR, help="dataset folder (default: %(default)s)")
    check.add_argument("--sample", type=int, default=0,
                       help="re-run N random tasks of each file (fix passes, bug fails, same trace); -1: all")
    check.add_argument("--workers", type=int, default=2)
    check.set_defaults(handler=_check)

    stats = actions.add_parser("stats", help="print the summary table of a built dataset")
    stats.add_argument("--dir", type=Path, default=data.DEFAULT_OUT_DIR, help="dataset folder (default: %(default)s)")
    stats.set_defaults(handler=_stats)


def _build(args: argparse.Namespace) -> int:
    from nextls_train import data

    if not (args.data / data.INPUT_FILES["mbpp"]).exists():
        print(f"nextls-train: no raw data in {args.data} (pass --data DIR)", file=sys.stderr)
        return 2
    config = data.BuildConfig(
        out=args.out, data_dir=args.data, only=(args.only,) if args.only else ("hefix", "mbppr"), limit=args.limit,
        use_model=not args.no_model, workers=args.workers, progress=not args.quiet,
        samples=data.SampleSettings(per_problem=args.samples_per_problem, model=args.model, threads=args.threads),
        mbppr=data.MbpprSettings(cap=args.cap, seed=args.seed))
    started = time.monotonic()
    manifest = data.build(config)
    print(data.format_table(manifest["counts"]))
    hefix = manifest.get("hefix", {})
    if hefix:
        print(f"\nHeFix+: reference fix by source {hefix.get('reference_fix')}; {len(hefix.get('decisions', {}))} "
              f"tasks with recorded decisions; the buggy program fails the hidden HumanEval+ test in "
              f"{hefix.get('buggy_fails_hidden')} of {hefix.get('tasks')}")
    mbppr = manifest.get("mbppr", {})
    if mbppr:
        print(f"Mbpp-R: problems {mbppr.get('problems')}, tasks {mbppr.get('tasks')}, "
              f"{len(mbppr.get('excluded', {}))} problems left out (see manifest.json)")
        rejected = mbppr.get("rejected", {})
        if rejected:
            print("Mbpp-R candidates rejected: " + "; ".join(f"{k} {v}" for k, v in rejected.items()))
    samples = manifest.get("files", {}).get(data.SAMPLES_FILE)
    if samples:
        print(f"model samples recorded: {samples['samples']} over {samples['problems']} problems")
    timings = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in manifest["timings"].items())
    print(f"built in {time.monotonic() - started:.0f}s ({timings}) into {args.out}")
    if manifest["check_failures"]:
        print(f"{len(manifest['check_failures'])} check(s) failed", file=sys.stderr)
        return 1
    print("checks passed: schema, unique ids, traced tests fail, no dev problem in train")
    return 0


def _check(args: argparse.Namespace) -> int:
    from nextls_train import data

    failures = data.check_files(args.dir)
    checked = 0
    if args.sample:
        rng = random.Random(0)
        for name, path in data.dataset_files(args.dir).items():
            tasks = data.read_tasks(path)
            chosen = tasks if args.sample < 0 else rng.sample(tasks, min(args.sample, len(tasks)))
            failures += [f"{name}: {line}" for line in data.check_tasks(chosen, workers=args.workers)]
            checked += len(chosen)
    for line in failures:
        print(f"FAILED: {line}")
    print(f"{len(failures)} failure(s); {checked} task(s) re-run in the sandbox")
    return 1 if failures else 0


def _stats(args: argparse.Namespace) -> int:
    from nextls_train import data

    tasks = [task for path in data.dataset_files(args.dir).values() for task in data.read_tasks(path)]
    print(data.format_table(data.summary_rows(tasks)))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Self-training (issue 7): run, sample, filter, train, export. See nextls_train.loop.
# ---------------------------------------------------------------------------------------------------------------


def _training_parsers(commands: argparse._SubParsersAction) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", required=True, type=Path, help="the run config (TOML), e.g. "
                            "training/runs/smollm2-mbppr.toml")
        parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                            help="override a config value (repeatable), e.g. --set sample.samples_per_task=8")
        parser.add_argument("--quiet", action="store_true", help="no progress bars")

    run = commands.add_parser("run", help="the whole NExT loop from a config: sample, filter, train, eval, export")
    common(run)
    run.add_argument("--no-export", action="store_true", help="stop after the last iteration's evaluation")
    run.set_defaults(handler=_run)

    warmstart = commands.add_parser("warmstart", help="iteration 0: each train task's reference fix with a "
                                    "rationale written from its trace, verified, capped per problem (resumable)")
    common(warmstart)
    warmstart.set_defaults(handler=_warmstart)

    sample = commands.add_parser("sample", help="stage 1: sample rationale+fix answers (sharded, resumable)")
    common(sample)
    sample.add_argument("--iteration", type=int, required=True,
                        help="train split: sampled from iteration-1's model; dev split: iteration's model")
    sample.add_argument("--split", choices=("train", "dev"), default="train")
    sample.add_argument("--shard", default="0/1", help="I/N: this worker takes every N-th task from the I-th")
    sample.add_argument("--backend", choices=("transformers", "llama.cpp"), help="override [sample].backend")
    sample.set_defaults(handler=_sample)

    filter_ = commands.add_parser("filter", help="stage 2: keep the samples whose fix passes all tests")
    common(filter_)
    filter_.add_argument("--iteration", type=int, required=True)
    filter_.add_argument("--split", choices=("train", "dev"), default="train")
    filter_.set_defaults(handler=_filter)

    train = commands.add_parser("train", help="stage 3: LoRA fine-tune from the base on the kept samples so far "
                                "(for several GPUs: accelerate launch -m nextls_train.train --config C --iteration T)")
    common(train)
    train.add_argument("--iteration", type=int, required=True)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "eval", help="fix rate of a model: pass@k, greedy pass@1, proxy (or, with --config, a run's dev pass@1)",
        description="Evaluate a GGUF model (+ LoRA) on a repair dataset through the server's prompt, runtime and "
                    "verifier; results are appended under --out as they come (a rerun resumes). With --config "
                    "and --iteration: the self-training loop's dev pass@1 of that iteration instead.")
    evaluate.add_argument("--model", help='GGUF model, or "default" (the server\'s embedded model)')
    evaluate.add_argument("--lora", default="", help="LoRA adapter: a GGUF (llama.cpp) or a peft folder "
                          "(transformers)")
    evaluate.add_argument("--dataset", default="mbpp-r-dev", help="mbpp-r-dev, hefix-plus, mbpp-r-train or a "
                          ".jsonl.gz file (default: %(default)s)")
    evaluate.add_argument("--samples", type=int, default=0, help="answers per task for pass@k (default: none)")
    evaluate.add_argument("-k", default="1", help="comma-separated k for pass@k, each <= --samples (default: 1)")
    evaluate.add_argument("--no-trace", action="store_true", help="the ablation: plain code, no execution trace")
    evaluate.add_argument("--no-greedy", action="store_true", help="skip the greedy pass@1")
    evaluate.add_argument("--proxy", nargs="?", const="default", metavar="GGUF",
                          help="proxy pass@1: give each greedy rationale to this model (default: the embedded "
                               "model) as a hint, no trace, greedy")
    evaluate.add_argument("--backend", choices=("llama.cpp", "transformers"), default="llama.cpp",
                          help="llama.cpp: the server's runtime (default); transformers: batched, for a GPU")
    evaluate.add_argument("--limit", type=int, default=0, help="the first N tasks only (problems taken in turn)")
    evaluate.add_argument("--per-problem", type=int,
                          help="at most N tasks per problem (default: 1 with --method, else all); --limit after it")
    evaluate.add_argument("--temperature", type=float, default=0.8)
    evaluate.add_argument("--max-new-tokens", type=int, default=512)
    evaluate.add_argument("--batch-size", type=int, default=16, help="transformers: rows per batch")
    evaluate.add_argument("--threads", type=int, default=2)
    evaluate.add_argument("--workers", type=int, default=2, help="sandboxed verifications in parallel")
    evaluate.add_argument("--out", type=Path, help="output folder (default: training/runs/out/eval/<model>/<dataset>-"
                          "<trace|notrace>)")
    evaluate.add_argument("--config", type=Path, help="a run config: evaluate the loop's iteration --iteration")
    evaluate.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    evaluate.add_argument("--iteration", type=int, help="with --config: 0 is the base")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    repair = evaluate.add_argument_group(
        "what `nextls fix` offers (--method): verified and correct (hidden tests too) rates, overfitting share, time "
        "to the first verified fix, per bug class")
    repair.add_argument("--method", choices=("search", "model", "both"),
                        help="search: the repair search alone; model: k=4 answers of the server's model; both: the "
                             "search, then the model when the search verified nothing (nextls fix's defaults)")
    repair.add_argument("--model-tasks", type=int, default=0,
                        help="model and both: only the first N tasks of the selection (default: all)")
    repair.add_argument("--search-budget", type=float, default=20.0, help="seconds per task (default: %(default)s)")
    repair.add_argument("--report-only", action="store_true", help="run nothing: score what is on disk")
    evaluate.set_defaults(handler=_eval)

    compare = commands.add_parser("compare", help="the comparison table: models x trace/no trace x datasets",
                                  description="Run every cell of a compare config (each resumable), then write "
                                              "results.md, results.json and pass_at_k.png in its out_dir.")
    compare.add_argument("--config", required=True, type=Path, help="e.g. training/runs/compare-cpu.toml")
    compare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a value, e.g. --set settings.limit=20")
    compare.add_argument("--report-only", action="store_true",
                         help="sample nothing: score the cells on disk and write the table and the plot")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    compare.set_defaults(handler=_compare)

    export = commands.add_parser("export", help="stage 4: merge, GGUF, quantize, LoRA GGUF, logits check, card")
    common(export)
    export.add_argument("--iteration", type=int, help="default: the best iteration by dev pass@1")
    export.set_defaults(handler=_export)


def _open_run(args: argparse.Namespace):
    from nextls_train.config import load_config, parse_override
    from nextls_train.loop import Run

    config = load_config(args.config, dict(parse_override(item) for item in args.set))
    return Run(config, progress=not args.quiet)


def _print_json(data: object) -> None:
    import json

    print(json.dumps(data, indent=1, default=str))


def _run(args: argparse.Namespace) -> int:
    summary = _open_run(args).run(export=not args.no_export)
    _print_json({key: value for key, value in summary.items() if key != "export"})
    return 0


def _warmstart(args: argparse.Namespace) -> int:
    _print_json(_open_run(args).warmstart())
    return 0


def _sample(args: argparse.Namespace) -> int:
    from nextls_train.sample import parse_shard

    _print_json(_open_run(args).sample(args.iteration, args.split, parse_shard(args.shard), backend=args.backend))
    return 0


def _filter(args: argparse.Namespace) -> int:
    summary = _open_run(args).filter(args.iteration, args.split)
    _print_json({key: value for key, value in summary.items() if key != "per_task_pass"})
    return 0


def _train(args: argparse.Namespace) -> int:
    _print_json(_open_run(args).train(args.iteration))
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.config is not None:
        if args.iteration is None:
            print("nextls-train eval: --config needs --iteration", file=sys.stderr)
            return 2
        _print_json(_open_run(args).evaluate(args.iteration))
        return 0
    from nextls_train import evaluate
    from nextls_train.records import Logger

    if args.method:
        return _eval_repair(args)
    if not args.model:
        print("nextls-train eval: give --model GGUF (or --config RUN.toml --iteration T)", file=sys.stderr)
        return 2
    try:
        ks = tuple(int(k) for k in args.k.split(","))
    except ValueError:
        print(f"nextls-train eval: -k {args.k!r}: want comma-separated integers", file=sys.stderr)
        return 2
    if args.samples and max(ks) > args.samples:
        print(f"nextls-train eval: pass@{max(ks)} needs --samples >= {max(ks)}", file=sys.stderr)
        return 2
    settings = evaluate.EvalSettings(
        samples=args.samples, ks=ks, greedy=not args.no_greedy, proxy=args.proxy is not None,
        proxy_model=evaluate.ModelSpec(args.proxy or "default"), temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, limit=args.limit, per_problem=args.per_problem or 0, backend=args.backend,
        batch_size=args.batch_size, threads=args.threads, workers=args.workers)
    spec = evaluate.ModelSpec(args.model, args.lora)
    out = args.out or evaluate.cell_dir(Path("training/runs/out/eval"), spec, args.dataset, not args.no_trace)
    summary = evaluate.evaluate(spec, args.dataset, not args.no_trace, settings, out,
                                evaluate.Models(settings, out / "base", Logger()), progress=not args.quiet)
    print(evaluate.results_table([summary], settings), end="")
    print(f"per-task results in {out / evaluate.RESULTS}, summary in {out / evaluate.SUMMARY}")
    return 0


def _eval_repair(args: argparse.Namespace) -> int:
    from nextls_train import repair_eval

    if args.model not in (None, "default") or args.lora:
        print("nextls-train eval --method: the model is the server's default one", file=sys.stderr)
        return 2
    methods = ("search", "model", "both") if args.method == "both" else (args.method,)
    settings = repair_eval.RepairSettings(
        methods=methods, per_problem=1 if args.per_problem is None else args.per_problem, limit=args.limit,
        model_tasks=args.model_tasks,
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, threads=args.threads, workers=args.workers,
        search_budget=args.search_budget)
    out = args.out or Path("training/runs/out/repair") / args.dataset
    summary = repair_eval.evaluate_repair(args.dataset, out, settings, progress=not args.quiet,
                                          report_only=args.report_only)
    print(repair_eval.repair_table([summary]), end="")
    print(f"per-task results in {out / 'results.jsonl'}, summary in {out / 'summary.json'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from nextls_train import evaluate, repair_eval

    if repair_eval.is_repair_config(args.config, args.set):
        repair = repair_eval.load_repair_compare(args.config, args.set)
        repair_eval.run_repair_compare(repair, report_only=args.report_only, progress=not args.quiet)
        print((repair.root / repair.out_dir / "results.md").read_text(), end="")
        return 0
    config = evaluate.load_compare(args.config, args.set)
    evaluate.run_compare(config, report_only=args.report_only, progress=not args.quiet)
    print((config.root / config.out_dir / "results.md").read_text(), end="")
    return 0


def _export(args: argparse.Namespace) -> int:
    _print_json(_open_run(args).export(args.iteration))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nextls-train", description="The nextls offline training pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    _data_parser(commands)
    _training_parsers(commands)
    args = parser.parse_args(argv)
    from nextls.model import ModelError

    try:
        return args.handler(args)
    except (OSError, ValueError, ModelError) as error:  # bad input: a missing file, an unknown config key...
        print(f"nextls-train {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
