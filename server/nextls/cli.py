"""The `nextls` command line."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from nextls import __version__
from nextls.runner import RunConfig
from nextls.sandbox import Limits

TARGET_HELP = "FILE.py::FUNCTION, FILE.py::Class.method, or FILE.py:LINE"
SUSPICIOUS_SHOWN = 3  # lines `nextls fix` lists; `nextls trace --suspicious` lists them all


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def parse_target(text: str) -> tuple[Path, str | int]:
    """`file.py::func`, `file.py::Class.method`, `file.py::12` or `file.py:12` -> (path, name or line)."""
    if "::" in text:
        path, _, function = text.partition("::")
    else:
        match = re.fullmatch(r"(.+\.py):(\d+)", text)
        if not match:
            raise UsageError(f"{text!r}: name the function as FILE.py::FUNCTION or FILE.py:LINE")
        path, function = match.groups()
    if not function:
        raise UsageError(f"{text!r}: the function name after '::' is missing")
    return Path(path), int(function) if function.isdigit() else function


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tests", type=Path, metavar="FILE",
                        help="a file of tests to use instead of discovering them (asserts or pytest tests)")
    parser.add_argument("--test", metavar="ID", help="the test to trace (default: the first failing one)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs the tests (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per test (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print structured JSON instead of text")


def run_config(args: argparse.Namespace) -> RunConfig:
    # the whole process gets room for the module load, the harness, and every test
    return RunConfig(python=args.python, test_timeout=args.timeout,
                     limits=Limits(wall_time=max(30.0, args.timeout * 6)))


def print_results(results, indent: str = "#   ") -> None:
    for result in results:
        first_line = result.message.splitlines()[0] if result.message else ""
        print(f"{indent}{result.outcome.value:>8}  {result.id}" + (f"  -- {first_line}" if first_line else ""))


def print_trace_report(report, path: Path, backend: str) -> bool:
    """The tests and the naturalized trace, as `nextls trace` prints them; False when nothing was traced."""
    failing = report.failing
    print(f"# {report.span.qualname} in {path}: {len(report.results)} test result(s), {len(failing)} failing")
    print_results(report.results)
    if report.trace is None:
        print("# every test passes: nothing to trace (use --test ID to trace a passing one)"
              if not failing else "# no trace was recorded (the traced test's process did not finish)")
        return False
    steps = f"{report.trace.steps} steps" + (", cut short" if report.trace.truncated else "")
    print(f"# traced {report.traced_test.id} with the {backend} backend ({steps})")
    print()
    sys.stdout.write(report.rendered)
    return True


def command_trace(args: argparse.Namespace) -> int:
    from nextls.trace.capture import trace_function
    from nextls.trace.render import RenderOptions

    path, function = parse_target(args.target)
    options = RenderOptions(head=args.head, tail=args.tail, max_tokens=args.max_tokens)
    config = run_config(args)
    report = trace_function(path, function, tests_file=args.tests, test_id=args.test, backend=args.backend,
                            config=config, max_steps=args.max_steps, render_options=options)
    suspicious = None
    if args.suspicious:
        from nextls.search.localize import suspicious_lines

        suspicious = suspicious_lines(report, config)
    if args.json:
        document = report.to_json()
        if suspicious is not None:
            document["suspicious"] = [line.to_json() for line in suspicious]
        print(json.dumps(document, indent=2))
        return 0
    print_trace_report(report, path, args.backend)
    if suspicious is not None:
        print()
        print("# suspicious lines, most suspicious first (Ochiai over the tests' coverage, refined by the trace):"
              if suspicious else "# no suspicious lines: no test fails")
        for line in suspicious:
            print(f"#   {line.describe()}")
    return 0


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="X.gguf", help="GGUF model (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--lora", metavar="A.gguf", help="LoRA adapter GGUF applied on top of the model "
                        "(default: the bundled NExT checkpoint on the default model, when one ships; "
                        "`none`: no adapter)")
    parser.add_argument("--gpu-layers", type=int, default=-1, help="layers to offload to the GPU (-1: all)")
    parser.add_argument("--threads", type=int, help="CPU threads for llama.cpp (default: llama.cpp's choice)")
    parser.add_argument("--ctx", type=int, default=4096, help="context window in tokens (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=512, help="tokens per answer (default: %(default)s)")
    parser.add_argument("--no-trace", action="store_true", help="leave the execution trace out of the prompt")
    parser.add_argument("--backend", choices=("inprocess", "debugpy"), default="inprocess",
                        help="how to capture the trace (default: %(default)s)")


def load_runtime(args: argparse.Namespace):
    from nextls.model import LlamaRuntime, default_lora, resolve_model

    model = resolve_model(args.model)
    lora = None if args.lora == "none" else args.lora or default_lora(model)
    say(f"loading {model.name}" + (f" + {Path(lora).name}" if lora else ""))
    runtime = LlamaRuntime(model, lora_path=lora, n_ctx=args.ctx, n_threads=args.threads,
                           n_gpu_layers=args.gpu_layers, seed=args.seed)
    merged = f" (adapter merged: {runtime.weights_path})" if runtime.merged else ""
    say(f"model on {runtime.device}{merged}")
    return runtime


def say(message: str) -> None:
    """Progress goes to stderr, so stdout stays the report (and valid JSON with --json)."""
    print(f"nextls: {message}", file=sys.stderr, flush=True)


def fix_options(args: argparse.Namespace):
    from nextls.fix import FixOptions

    return FixOptions(k=args.k, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                      seed=args.seed, use_trace=not args.no_trace, backend=args.backend,
                      stop_at_first_verified=args.first, search=args.search, search_budget=args.search_budget,
                      sample_after_search=args.also_sample)


def command_fix(args: argparse.Namespace) -> int:
    from nextls.fix import fix_function

    path, function = parse_target(args.target)
    if args.k < 1:
        raise UsageError("-k must be at least 1")
    if args.search_budget <= 0:
        raise UsageError("--search-budget must be a positive number of seconds")
    report = fix_function(path, function, load_runtime=lambda: load_runtime(args), options=fix_options(args),
                          config=run_config(args), tests_file=args.tests, test_id=args.test, progress=say)
    best = report.best
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_fix_report(report, path, args)
    if best is not None and best.verified and args.apply:
        backup = apply_fix(path, best.new_source)
        say(f"applied {best.label} to {path} (the original is in {backup})")
    elif args.apply:
        say(f"not applied: no candidate passes all the tests, {path} is unchanged")
    if not report.trace.failing:
        return 0
    return 0 if best is not None and best.verified else 1


def print_fix_report(report, path: Path, args: argparse.Namespace) -> None:
    if not print_trace_report(report.trace, path, args.backend) and not report.trace.failing:
        return
    print()
    search = report.search
    if search is not None:
        found = sum(candidate.source == "search" and candidate.verified for candidate in report.candidates)
        first = (f", the first after {search.first_verified_seconds:.1f}s" if search.first_verified_seconds is not None
                 else "")
        print(f"# search: {search.tried} edit(s) of the suspicious lines tried in {search.seconds:.1f}s, "
              f"{found} verified{first}")
        for line in search.suspicious[:SUSPICIOUS_SHOWN]:
            print(f"#   suspicious {line.describe()}")
    if report.device:
        model = Path(args.model).name if args.model else "SmolLM2-135M-Instruct"
        sampled = sum(candidate.source == "model" for candidate in report.candidates)
        print(f"# model: {sampled} answer(s) from {model} on {report.device}")
    elif search is not None:
        print("# model: not sampled, the search found a verified fix (--also-sample asks it too)")
    print(f"# {len(report.candidates)} candidate(s), {len(report.verified)} verified; "
          + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in report.timings.items()))
    for candidate in report.candidates:
        detail = (f"passes {candidate.passed}/{len(candidate.results)} tests" if candidate.results
                  else candidate.reason)
        edit = f"  {candidate.description}" if candidate.description else ""
        print(f"#   {candidate.label}: {candidate.status:<9} {detail}{edit}")
    best = report.best
    if best is None:
        return
    print()
    print(f"## Rationale ({best.label})")
    print(best.candidate.rationale or "(the model gave no rationale)")
    if best.diff:
        print()
        print(f"## Fix ({best.label}, {best.status}: passes {best.passed}/{len(best.results)} tests)")
        sys.stdout.write(best.diff)
        print()
        print_results(best.results, indent="    ")


def apply_fix(path: Path, new_source: str) -> Path:
    """Write atomically, keeping the original beside it."""
    import os
    import shutil
    import tempfile

    backup = path.with_name(path.name + ".nextls.bak")
    shutil.copy2(path, backup)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
        out.write(new_source)
    shutil.copymode(path, temporary)
    os.replace(temporary, path)
    return backup


def command_explain(args: argparse.Namespace) -> int:
    from nextls.fix import fix_function

    path, function = parse_target(args.target)
    runtime = load_runtime(args)
    report = fix_function(path, function, runtime, options=fix_options(args), config=run_config(args),
                          tests_file=args.tests, test_id=args.test, progress=say)
    if not report.trace.failing:
        print(f"{report.trace.span.qualname}: every test passes ({len(report.trace.results)} run); nothing to explain")
        return 0
    rationale = report.best.candidate.rationale if report.best else ""
    if args.json:
        print(json.dumps({"function": report.trace.span.qualname, "rationale": rationale,
                          "failing": [result.to_json() for result in report.trace.failing]}, indent=2))
    else:
        print(rationale or "(the model gave no explanation)")
    return 0


def command_serve(args: argparse.Namespace) -> int:
    from nextls.lsp.server import serve

    tcp = None
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--tcp {args.tcp!r}: give HOST:PORT, e.g. 127.0.0.1:2087")
        tcp = (host, int(port))
    return serve(tcp=tcp, log_level=args.log_level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nextls", description=(
        "Explain why a Python function fails its tests, from its execution trace, and offer a verified fix."))
    parser.add_argument("--version", action="version", version=f"nextls {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    trace = commands.add_parser("trace", help="run a function's tests and print the naturalized trace of a failing one",
                                description="Run the tests of FILE.py::FUNCTION and print the first failing "
                                            "test's execution written into the code (NExT's naturalized trace).")
    trace.add_argument("target", help=TARGET_HELP)
    add_run_options(trace)
    trace.add_argument("--backend", choices=("inprocess", "debugpy"), default="inprocess",
                       help="how to capture the trace (default: %(default)s)")
    trace.add_argument("--max-steps", type=int, default=10_000, help="stop recording after this many steps")
    trace.add_argument("--head", type=int, default=3, help="entries kept at the start of a repeated line")
    trace.add_argument("--tail", type=int, default=1, help="entries kept at the end of a repeated line")
    trace.add_argument("--max-tokens", type=int, help="trim the rendered trace to about this many tokens")
    trace.add_argument("--suspicious", action="store_true",
                       help="also rank the function's lines by how suspicious they are (runs every test once more)")
    trace.set_defaults(handler=command_trace)

    fix = commands.add_parser("fix", help="sample fixes from the model and verify each against the tests",
                              description="Trace FILE.py::FUNCTION's failing test, ask the model for k rationale+fix "
                                          "answers, run every test on each fix, and print the best one as a diff.")
    fix.add_argument("target", help=TARGET_HELP)
    add_run_options(fix)
    add_model_options(fix)
    fix.add_argument("-k", type=int, default=4, help="answers to sample (default: %(default)s)")
    fix.add_argument("--first", action="store_true", help="stop at the first fix that passes every test")
    fix.add_argument("--search", action=argparse.BooleanOptionalAction, default=True,
                     help="search small edits of the suspicious lines before asking the model (default: on)")
    fix.add_argument("--search-budget", type=float, default=20.0, metavar="SECONDS",
                     help="time the search may take (default: %(default)s)")
    fix.add_argument("--also-sample", action="store_true",
                     help="sample the model's k answers even when the search found a verified fix")
    fix.add_argument("--apply", action="store_true",
                     help="write the best fix into the file if it passes every test (keeps FILE.nextls.bak)")
    fix.set_defaults(handler=command_fix)

    explain = commands.add_parser("explain", help="print the model's explanation of why the function fails",
                                  description="Trace FILE.py::FUNCTION's failing test and print the model's rationale "
                                              "(what the hover shows).")
    explain.add_argument("target", help=TARGET_HELP)
    add_run_options(explain)
    add_model_options(explain)
    # one greedy answer: its rationale is the explanation
    explain.set_defaults(handler=command_explain, temperature=0.0, k=1, first=False, search=False, search_budget=0.0,
                         also_sample=False)

    serve = commands.add_parser("serve", help="run the language server (LSP over stdio, or TCP)",
                                description="Run the nextls language server: failing-test diagnostics, verified "
                                            "quick fixes, hovers and inlay hints from execution traces.")
    serve.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    serve.add_argument("--tcp", metavar="HOST:PORT", help="listen on a TCP port instead of stdio")
    serve.add_argument("--clientProcessId", dest="client_process_id", help=argparse.SUPPRESS)
    serve.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                       help="what the server logs to stderr (default: %(default)s)")
    serve.set_defaults(handler=command_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nextls.model import ModelError
    from nextls.splice import FunctionNotFoundError, SourceSyntaxError
    from nextls.trace.capture import NoTestsError, SourceError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, NoTestsError, SourceError, FunctionNotFoundError, SourceSyntaxError, ModelError,
            ValueError) as error:
        print(f"nextls {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nextls {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
