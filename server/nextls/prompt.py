"""The NExT repair prompt: the one format the server sends and the training fine-tunes on.

`build_messages` turns a `RepairTask` into chat messages; `nextls.chat.render_chat` turns those into
the model's text. The server and the training both call these two functions and nothing else, so the
text a checkpoint was trained on is, byte for byte, the text it is served (a test pins it).

The model is asked for a rationale (what the function should do, what the trace shows, where they
diverge) followed by the fix in one fenced block: the lines of the function to remove and the lines to put
in their place (`nextls.patch`), since a small model asked for the whole function mostly copies it back
unchanged. `format_answer` writes that shape for training targets, `nextls.answer.parse_answer` reads it
back (and still accepts a whole fixed function, which untuned models tend to write).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nextls.patch import write_patch

SYSTEM_PROMPT = (
    "You are an expert Python programmer. You find bugs by reading a program's execution trace "
    "and you fix them with small, correct changes."
)

TRACE_EXPLANATION = (
    "The comments in the code show its execution on the failing test: `(k)` is the step number and "
    "`name=value` the values a line changed at that step (`__return__` is a returned value, "
    "`__exception__` an exception raised); `...` elides repeated steps."
)

INSTRUCTIONS = (
    "First explain, in a few sentences, what the function should do, what {evidence} shows it doing "
    "instead, and where the two diverge. Then give the fix of `{name}` in one ```diff code block: each "
    "line to change prefixed with `-`, then its replacement prefixed with `+`."
)


@dataclass(frozen=True)
class RepairTask:
    """Everything the prompt shows about one buggy function."""

    function_name: str
    code: str  # the buggy function's source, without trace comments
    tests: tuple[str, ...]  # the tests' source: assert lines, a doctest docstring, pytest functions
    failures: tuple[str, ...] = ()  # "test: outcome: message", one per failing test
    description: str = ""  # the task in words, when known apart from the code (MBPP's text, an issue)
    trace: str | None = None  # the naturalized trace: the code with execution comments
    hint: str = ""  # proxy-based evaluation only: another model's explanation of the bug (the server sends none)
    extra: dict = field(default_factory=dict, compare=False)


def build_messages(task: RepairTask, *, use_trace: bool = True) -> list[dict[str, str]]:
    """Chat messages for `task`; `use_trace=False` is the no-trace ablation (the plain code)."""
    with_trace = use_trace and task.trace is not None
    parts = [f"Fix the Python function `{task.function_name}`: it fails its tests."]
    if task.description.strip():
        parts.append("## Task\n" + task.description.strip())
    if with_trace:
        parts.append("## Code, with its execution trace\n" + TRACE_EXPLANATION + "\n\n" + _fenced(task.trace))
    else:
        parts.append("## Code\n" + _fenced(task.code))
    if task.tests:
        parts.append("## Tests\n" + _fenced("\n".join(test.rstrip("\n") for test in task.tests)))
    if task.failures:
        parts.append("## Failing\n" + "\n".join(f"- {failure}" for failure in task.failures))
    if task.hint.strip():
        parts.append("## Hint\n" + task.hint.strip())
    evidence = "the trace" if with_trace else "the code"
    parts.append(INSTRUCTIONS.format(evidence=evidence, name=task.function_name))
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


def format_answer(rationale: str, fixed_code: str, original: str | None = None) -> str:
    """The answer shape the model is taught: the rationale, then the patch from `original` (the buggy
    function) to `fixed_code` in a ```diff block; the whole fixed function in a ```python block instead when
    the patch is half again as long (a rewrite) or there is no `original` (the parser reads both shapes)."""
    patch = write_patch(original, fixed_code) if original is not None else None
    if patch is None or len(patch) > 1.5 * len(fixed_code.strip()):
        return f"{rationale.strip()}\n\n```python\n{fixed_code.strip()}\n```"
    return f"{rationale.strip()}\n\n```diff\n{patch}\n```"


def _fenced(code: str) -> str:
    return "```python\n" + code.rstrip("\n") + "\n```"
