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
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the tests (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per test (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print structured JSON instead of text")


def run_config(args: argparse.Namespace) -> RunConfig:
    # the whole process gets room for the module load, the harness, and every test
    return RunConfig(python=args.python, test_timeout=args.timeout,
                     limits=Limits(wall_time=max(30.0, args.timeout * 6)))


def command_trace(args: argparse.Namespace) -> int:
    from nextls.trace.capture import trace_function
    from nextls.trace.render import RenderOptions

    path, function = parse_target(args.target)
    options = RenderOptions(head=args.head, tail=args.tail, max_tokens=args.max_tokens)
    report = trace_function(path, function, tests_file=args.tests, test_id=args.test, backend=args.backend,
                            config=run_config(args), max_steps=args.max_steps, render_options=options)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    failing = report.failing
    print(f"# {report.span.qualname} in {path}: {len(report.results)} test result(s), {len(failing)} failing")
    for result in report.results:
        print(f"#   {result.outcome.value:>8}  {result.id}" + (f"  -- {result.message.splitlines()[0]}"
                                                               if result.message else ""))
    if report.trace is None:
        print("# every test passes: nothing to trace (use --test ID to trace a passing one)"
              if not failing else "# no trace was recorded (the traced test's process did not finish)")
        return 0
    steps = f"{report.trace.steps} steps" + (", cut short" if report.trace.truncated else "")
    print(f"# traced {report.traced_test.id} with the {args.backend} backend ({steps})")
    print()
    sys.stdout.write(report.rendered)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nextls", description=(
        "Explain why a Python function fails its tests, from its execution trace, and offer a verified fix."))
    parser.add_argument("--version", action="version", version=f"nextls {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    trace = commands.add_parser("trace", help="run a function's tests and print the naturalized trace of a failing one",
                                description="Run the tests of FILE.py::FUNCTION and print the first failing "
                                            "test's execution written into the code (NExT's naturalized trace).")
    trace.add_argument("target", help="FILE.py::FUNCTION, FILE.py::Class.method, or FILE.py:LINE")
    add_run_options(trace)
    trace.add_argument("--backend", choices=("inprocess", "debugpy"), default="inprocess",
                       help="how to capture the trace (default: %(default)s)")
    trace.add_argument("--max-steps", type=int, default=10_000, help="stop recording after this many steps")
    trace.add_argument("--head", type=int, default=3, help="entries kept at the start of a repeated line")
    trace.add_argument("--tail", type=int, default=1, help="entries kept at the end of a repeated line")
    trace.add_argument("--max-tokens", type=int, help="trim the rendered trace to about this many tokens")
    trace.set_defaults(handler=command_trace)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nextls.splice import FunctionNotFoundError, SourceSyntaxError
    from nextls.trace.capture import NoTestsError, SourceError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, NoTestsError, SourceError, FunctionNotFoundError, SourceSyntaxError, ValueError) as error:
        print(f"nextls {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nextls {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
