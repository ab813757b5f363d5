"""Held-out problems must not reach training: Mbpp-R dev and HumanEval (HeFix+), by problem id and by code.

The code check compares functions normalized up to formatting, comments, docstrings, annotations and the
names of the function, its arguments and its local variables (the names it calls are kept, so
`return len(x)` and `return sum(x)` differ). Mbpp-R train has a few tasks whose buggy or fixed function
equals an evaluation problem's reference: MBPP repeats a few problems across its splits, a mutation can turn
one problem's code into its sibling's (`== 0` -> `!= 0`), and one-line functions (`return a + b`) recur in
HumanEval. `held_out_train_tasks` names them; the warm start and the train stage leave them out.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from pathlib import Path

from nextls_train.data import DEFAULT_OUT_DIR, TaskRecord, load_split

EVALUATION_SPLITS = ("dev", "hefix+")


def normalized_functions(code: str) -> set[str]:
    """Each top-level function of `code`, normalized (see the module docstring); unparsable code: none."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    return {_normalized(node) for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _normalized(function: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    names: dict[str, str] = {}

    def local(name: str) -> str:
        return names.setdefault(name, f"v{len(names)}")

    arguments = function.args
    for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, arguments.vararg,
                     arguments.kwarg]:
        if argument is not None:
            argument.arg, argument.annotation = local(argument.arg), None
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            local(node.id)
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and node.id in names:
            node.id = names[node.id]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _has_docstring(node):
            node.body = node.body[1:] or [ast.Pass()]
    function.name, function.returns, function.decorator_list = "_", None, []
    return ast.unparse(function)


def _has_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    first = node.body[0] if node.body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


@functools.lru_cache(maxsize=2)
def held_out(directory: Path = DEFAULT_OUT_DIR) -> tuple[frozenset[str], dict[str, str]]:
    """The evaluation problems' ids, and their reference functions (normalized) -> an evaluation task id."""
    tasks = [task for split in EVALUATION_SPLITS for task in load_split(split, directory)]
    functions: dict[str, str] = {}
    for task in tasks:
        for function in normalized_functions(task.fix_code):
            functions.setdefault(function, task.id)
    return frozenset(task.problem_id for task in tasks), functions


def leak_reason(task: TaskRecord, directory: Path = DEFAULT_OUT_DIR) -> str | None:
    """Why a training task must stay out of training (an evaluation problem's id or code), else None."""
    problem_ids, functions = held_out(directory)
    if task.problem_id in problem_ids:
        return f"problem {task.problem_id} is an evaluation problem"
    for code in (task.buggy_code, task.fix_code):
        for function in normalized_functions(code):
            if function in functions:
                return f"its code equals the reference of {functions[function]}"
    return None


def held_out_train_tasks(tasks: Iterable[TaskRecord], directory: Path = DEFAULT_OUT_DIR) -> dict[str, str]:
    """Training task id -> why it must stay out of training."""
    reasons = {task.id: leak_reason(task, directory) for task in tasks}
    return {task_id: reason for task_id, reason in reasons.items() if reason}
