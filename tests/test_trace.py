"""Trace capture: both backends record the same events and render byte-identical traces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nextls.runner import RunConfig
from nextls.trace.capture import trace_function

PROGRAMS = Path(__file__).parent / "programs"
EXAMPLES = Path(__file__).parent.parent / "server" / "examples"

CASES = [
    ("loops.py", "count_vowels"),
    ("recursion.py", "fib"),
    ("exceptions.py", "safe_ratio"),
    ("early_return.py", "first_negative"),
    ("comprehension.py", "squares_of_odds"),
    ("nested.py", "apply_twice"),
    ("odd_values.py", "odd_values"),
]


@pytest.fixture(scope="module")
def traces() -> dict[tuple[str, str], object]:
    """Each program traced once per backend (the debugpy ones take ~1 s each)."""
    return {(name, backend): trace_function(PROGRAMS / name, function, backend=backend)
            for name, function in CASES for backend in ("inprocess", "debugpy")}


@pytest.mark.parametrize("name, function", CASES)
def test_both_backends_render_identically(traces, name: str, function: str) -> None:
    inprocess, debugpy = traces[name, "inprocess"], traces[name, "debugpy"]
    assert inprocess.trace is not None and debugpy.trace is not None
    assert inprocess.trace.events == debugpy.trace.events
    assert inprocess.rendered == debugpy.rendered
    assert "# (0) " in inprocess.rendered  # the def line carries the arguments at step 0


def rendered(traces, name: str) -> str:
    return traces[name, "inprocess"].rendered


def line_of(text: str, code: str) -> str:
    return next(line for line in text.splitlines() if line.lstrip().startswith(code))


def test_loop_entries_are_elided_in_the_middle(traces) -> None:
    text = rendered(traces, "loops.py")
    loop = line_of(text, "for char in text:")
    assert loop.count("char=") == 4 and "; ...; " in loop  # 3 first + the last, of 6 iterations
    assert "char='b'" in loop and "char='a'" in loop
    assert "count=1" in line_of(text, "count += 1")
    assert line_of(text, 'if char in "aeiou":').rstrip().endswith(":")  # a condition changes nothing
    assert "__return__=4" in line_of(text, "return count + 1")


def test_recursion_lists_each_call_on_the_def_line(traces) -> None:
    text = rendered(traces, "recursion.py")
    assert "n=4" in line_of(text, "def fib(n):") and "n=3" in line_of(text, "def fib(n):")
    assert "__return__=4" in line_of(text, "return fib(n - 1)")
    assert line_of(text, "assert fib(4) == 3").endswith("# failed: fib(4) returned 4, expected 3")


def test_exception_leaving_the_frame_is_shown_where_it_was_raised(traces) -> None:
    text = rendered(traces, "exceptions.py")
    assert "value=2.0" in line_of(text, "value = a / b")
    assert "__exception__=ZeroDivisionError('integer division or modulo by zero')" in line_of(
        text, "scale = 10 // (a - 2)")
    assert "error: ZeroDivisionError" in text.splitlines()[-1]


def test_caught_exception_is_not_an_exit(tmp_path: Path) -> None:
    program = tmp_path / "caught.py"
    program.write_text("def f(b):\n    try:\n        x = 1 / b\n    except ZeroDivisionError:\n        x = -1\n"
                       "    return x\n\n\nassert f(0) == 0\n")
    text = trace_function(program, "f").rendered
    assert "__exception__" not in text
    assert "x=-1" in line_of(text, "x = -1") and "__return__=-1" in line_of(text, "return x")


def test_early_return(traces) -> None:
    text = rendered(traces, "early_return.py")
    assert "__return__=0" in line_of(text, "return index")
    assert "index=0, value=3" in line_of(text, "for index, value in enumerate(values):")


def test_comprehensions_and_nested_functions(traces) -> None:
    comprehension = rendered(traces, "comprehension.py")
    assert "odds=[2]" in line_of(comprehension, "odds = [v for v in values")
    assert ".0" not in comprehension  # the comprehension's hidden iterator is no user variable
    nested = rendered(traces, "nested.py")
    assert "x=1, step=3" in line_of(nested, "def bump(x):")
    assert "result=4" in line_of(nested, "result = x + step")
    assert "out=[6]" in line_of(nested, "out.append(")


def test_values_that_fight_repr_stay_short_and_safe(traces) -> None:
    text = rendered(traces, "odd_values.py")
    assert "items=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...]" in text
    assert "text='" + "x" * 49 + "..." + "x" * 49 + "'" in text  # LDB's 50 + ... + 50 characters
    assert "blob=b'\\x00\\x01" in text
    assert "loop=[<recursion>]" in text
    assert "big=<int of 14037 bits>" in text
    assert "loud=<Loud object (repr raised RuntimeError)>" in text
    assert "slow=<Slow object (repr timed out)>" in text


def test_step_limit_cuts_the_trace(tmp_path: Path) -> None:
    program = tmp_path / "spin.py"
    program.write_text("def spin(n):\n    total = 0\n    while True:\n        total += n\n\n\nassert spin(1) == 0\n")
    report = trace_function(program, "spin", max_steps=50, config=RunConfig(test_timeout=1.0))
    assert report.traced_result.outcome.value == "timeout"
    assert report.trace.truncated and report.trace.steps == 50
    assert "# (the trace stops after 50 steps)" in report.rendered


def test_doctest_and_pytest_traces_match_across_backends() -> None:
    for target, function in ((EXAMPLES / "running_mean.py", "running_mean"),
                             (EXAMPLES / "shop" / "pricing.py", "bulk_discount")):
        inprocess = trace_function(target, function, backend="inprocess")
        debugpy = trace_function(target, function, backend="debugpy")
        assert inprocess.rendered and inprocess.rendered == debugpy.rendered


def test_pytest_trace_shows_the_failing_parametrized_case() -> None:
    report = trace_function(EXAMPLES / "shop" / "pricing.py", "bulk_discount")
    failing = {result.id for result in report.failing}
    assert failing == {"shop/test_pricing.py::test_discount_thresholds[10-90.0]",
                       "shop/test_pricing.py::test_discount_thresholds[100-800.0]"}
    assert "quantity=10, unit_price=10" in report.rendered
    assert "__return__=100" in line_of(report.rendered, "return total")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nextls", *args], check=False, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("target", [f"{EXAMPLES}/remove_occ.py::remove_Occ",
                                    f"{EXAMPLES}/running_mean.py::running_mean",
                                    f"{EXAMPLES}/shop/pricing.py::bulk_discount"])
def test_cli_trace_prints_the_same_trace_with_both_backends(target: str) -> None:
    outputs = {}
    for backend in ("inprocess", "debugpy"):
        done = run_cli("trace", target, "--backend", backend)
        assert done.returncode == 0, done.stderr
        header, _, body = done.stdout.partition("\n\n")
        assert "failing" in header and f"with the {backend} backend" in header
        outputs[backend] = body
    assert outputs["inprocess"] == outputs["debugpy"]
    assert "# (0) " in outputs["inprocess"]


def test_cli_trace_by_line_number_and_json() -> None:
    done = run_cli("trace", f"{EXAMPLES}/remove_occ.py:12", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["function"] == "remove_Occ"
    assert [t["outcome"] for t in report["tests"]] == ["failed", "failed", "failed"]
    assert report["trace"]["events"][0] == {"step": 0, "frame": 0, "line": 4, "kind": "call",
                                            "values": {"s": "'hello'", "ch": "'l'"}}


@pytest.mark.parametrize("args, message", [
    (["missing.py::f"], "no such file"),
    (["{examples}/remove_occ.py::nope"], "nope"),
    (["{examples}/remove_occ.py"], "FILE.py::FUNCTION"),
    (["{examples}/remove_occ.py::remove_Occ", "--test", "assert:zzz"], "no test 'assert:zzz'"),
    (["{programs}/latin1.py::f"], "not UTF-8"),
    (["{programs}/no_tests.py::lonely"], "no tests found for lonely"),
])
def test_cli_trace_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "latin1.py").write_bytes("def f():\n    return 'caf\xe9'\n".encode("latin-1"))
    (tmp_path / "no_tests.py").write_text("def lonely():\n    return 1\n")
    args = [arg.format(examples=EXAMPLES, programs=tmp_path) for arg in args]
    done = run_cli("trace", *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
