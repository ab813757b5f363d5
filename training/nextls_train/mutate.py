"""Inject bugs into a correct function: the six bug classes of HumanEvalFix, as small source edits.

HumanEvalFix (Muennighoff et al. 2023) hand-wrote one bug per HumanEval task and labelled it with one of six
classes. This module writes bugs of the same classes mechanically, each as a *text edit* of the original
source located through the AST, so every byte outside the edit stays as it was (comments, quotes, spacing),
and the diff between the buggy program and its reference fix is as small as a human's bug:

* **missing logic**: a statement deleted, an ``if`` guard dropped (its body kept), an ``else`` branch
  deleted, an operand of ``and``/``or`` dropped, a wrapping call dropped (``abs(x)`` -> ``x``,
  ``s.lower()`` -> ``s``);
* **excess logic**: an extra condition (``if c:`` -> ``if c and v:``), a statement that updates state run
  twice (``count += 1``, ``out.append(x)``);
* **value misuse**: a constant changed (``1`` -> ``2``/``0``, ``True`` -> ``False``, ``' '`` -> ``''``), an
  off-by-one bound of ``range`` (``range(n)`` -> ``range(n - 1)``);
* **operator misuse**: an arithmetic, comparison, boolean or augmented-assignment operator swapped for a
  neighbour (``<`` -> ``<=``, ``+`` -> ``-``, ``//`` -> ``/``, ``and`` -> ``or``), a ``not`` dropped;
* **variable misuse**: a variable read replaced by another local variable or parameter defined earlier;
* **function misuse**: a builtin or method swapped for a similar one (``min`` -> ``max``,
  ``append`` -> ``extend``, ``upper`` -> ``lower``, ``startswith`` -> ``endswith``).

Only code inside the target function (nested code included) is mutated: that is what its trace shows.
A mutant is a candidate: whether it really is a bug (fails a test) is decided by running it, not here.
Everything is deterministic: :func:`mutations` lists every candidate in source order, :func:`pick` draws
from them with a seeded RNG, round-robin over the classes.
"""

from __future__ import annotations

import ast
import hashlib
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from nextls.splice import parse_python

MISSING_LOGIC = "missing logic"
EXCESS_LOGIC = "excess logic"
VALUE_MISUSE = "value misuse"
OPERATOR_MISUSE = "operator misuse"
VARIABLE_MISUSE = "variable misuse"
FUNCTION_MISUSE = "function misuse"
# HumanEvalPack's `bug_type` labels, in the order of its README.
BUG_CLASSES = (MISSING_LOGIC, EXCESS_LOGIC, VALUE_MISUSE, OPERATOR_MISUSE, VARIABLE_MISUSE, FUNCTION_MISUSE)

_BINOP_SWAPS: dict[type, tuple[type, ...]] = {
    ast.Add: (ast.Sub,), ast.Sub: (ast.Add,), ast.Mult: (ast.Add, ast.FloorDiv), ast.Div: (ast.FloorDiv, ast.Mult),
    ast.FloorDiv: (ast.Div, ast.Mod), ast.Mod: (ast.FloorDiv,), ast.Pow: (ast.Mult,), ast.LShift: (ast.RShift,),
    ast.RShift: (ast.LShift,), ast.BitAnd: (ast.BitOr,), ast.BitOr: (ast.BitAnd,), ast.BitXor: (ast.BitOr,),
}
_CMPOP_SWAPS: dict[type, tuple[type, ...]] = {
    ast.Lt: (ast.LtE, ast.Gt), ast.LtE: (ast.Lt,), ast.Gt: (ast.GtE, ast.Lt), ast.GtE: (ast.Gt,),
    ast.Eq: (ast.NotEq,), ast.NotEq: (ast.Eq,), ast.In: (ast.NotIn,), ast.NotIn: (ast.In,),
    ast.Is: (ast.IsNot,), ast.IsNot: (ast.Is,),
}
_SYMBOLS: dict[type, str] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
    ast.LShift: "<<", ast.RShift: ">>", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.Lt: "<",
    ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.In: "in", ast.NotIn: "not in",
    ast.Is: "is", ast.IsNot: "is not", ast.And: "and", ast.Or: "or",
}
# Builtins called by name, and methods, each with the similar functions a programmer might confuse it with.
_BUILTIN_SWAPS = {
    "min": ("max",), "max": ("min",), "any": ("all",), "all": ("any",), "sorted": ("reversed",),
    "reversed": ("sorted",), "int": ("round",), "round": ("int",), "float": ("int",), "sum": ("max", "len"),
    "len": ("sum",), "set": ("list",), "list": ("set",), "tuple": ("list",), "abs": ("int",), "ord": ("len",),
    "filter": ("map",), "map": ("filter",), "enumerate": ("zip",), "zip": ("enumerate",), "str": ("repr",),
    "bin": ("hex",), "hex": ("oct",), "divmod": ("pow",), "pow": ("divmod",),
}
_METHOD_SWAPS = {
    "append": ("extend",), "extend": ("append",), "upper": ("lower",), "lower": ("upper",),
    "isupper": ("islower",), "islower": ("isupper",), "isdigit": ("isalpha",), "isalpha": ("isdigit",),
    "isalnum": ("isalpha",), "isnumeric": ("isalpha",), "isspace": ("isalpha",), "startswith": ("endswith",),
    "endswith": ("startswith",), "strip": ("lstrip", "rstrip"), "lstrip": ("rstrip",), "rstrip": ("lstrip",),
    "find": ("rfind",), "rfind": ("find",), "index": ("count",), "count": ("index",), "sort": ("reverse",),
    "reverse": ("sort",), "keys": ("values",), "values": ("keys",), "title": ("capitalize",),
    "capitalize": ("title",), "swapcase": ("upper",), "split": ("rsplit",), "add": ("discard",),
    "remove": ("discard",), "floor": ("ceil",), "ceil": ("floor",), "sqrt": ("exp",), "log": ("log10",),
    "log10": ("log",), "log2": ("log10",), "sin": ("cos",), "cos": ("sin",), "bisect_left": ("bisect_right",),
    "bisect_right": ("bisect_left",), "search": ("match",), "match": ("search",), "findall": ("split",),
    "pop": ("popleft",), "popleft": ("pop",), "heappop": ("heappush",), "most_common": ("elements",),
    "union": ("intersection",), "intersection": ("union",), "difference": ("intersection",),
    "insert": ("append",), "get": ("setdefault",), "replace": ("split",), "join": ("split",),
}
# Calls that wrap a value and can be dropped ("missing logic"): f(x) -> x, and x.m() -> x.
_DROPPABLE_CALLS = {"abs", "int", "str", "sorted", "set", "list", "float", "round", "tuple", "reversed", "len"}
_DROPPABLE_METHODS = {"strip", "lstrip", "rstrip", "lower", "upper", "copy", "title", "capitalize", "split",
                      "swapcase", "keys", "values", "items"}
_SIMPLE_STATEMENTS = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Return, ast.If, ast.For,
                      ast.While, ast.Break, ast.Continue, ast.Pass)


@dataclass(frozen=True)
class Mutation:
    """One candidate bug: the whole mutated source and what was changed."""

    bug_class: str
    description: str  # e.g. "operator misuse: `<` -> `<=` on line 3"
    line: int  # the first line of the edit in the original source
    code: str

    @property
    def key(self) -> str:
        return hashlib.sha1(self.code.encode("utf-8")).hexdigest()[:10]


@dataclass(frozen=True)
class _Edit:
    start: int  # character offsets into the source
    end: int
    text: str


class _Source:
    """The source with (line, utf-8 column) <-> character offset conversions."""

    def __init__(self, source: str) -> None:
        self.text = source
        self.lines = source.split("\n")
        self.starts = [0]
        for line in self.lines[:-1]:
            self.starts.append(self.starts[-1] + len(line) + 1)

    def offset(self, line: int, col: int) -> int:
        text = self.lines[line - 1]
        return self.starts[line - 1] + len(text.encode("utf-8")[:col].decode("utf-8", errors="replace"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def segment(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.text[start:end]

    def line_start(self, line: int) -> int:
        return self.starts[line - 1]

    def line_end(self, line: int) -> int:
        """Offset just past the line's newline (or the end of the text)."""
        return self.starts[line] if line < len(self.starts) else len(self.text)

    def indent(self, line: int) -> str:
        text = self.lines[line - 1]
        return text[: len(text) - len(text.lstrip(" \t"))]

    def owns_lines(self, node: ast.stmt) -> bool:
        """The statement alone on its lines (no `a = 1; b = 2`, no `if x: y`)."""
        first, last = self.lines[node.lineno - 1], self.lines[node.end_lineno - 1]
        start, end = self.span(node)
        before = self.text[self.line_start(node.lineno):start]
        after = self.text[end:self.line_end(node.end_lineno)].strip()
        return (not before.strip() and (not after or after.startswith("#"))
                and len(first) - len(first.lstrip()) == len(before) and bool(last))


def _function_node(tree: ast.Module, name: str | None) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    functions = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if name is None:
        return functions[0] if len(functions) == 1 else None
    for node in functions:
        if node.name == name:
            return node
    for node in ast.walk(tree):  # a method, or a function defined under `if`/`try`
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    return None


def _parents(root: ast.AST) -> dict[ast.AST, ast.AST]:
    parents = {}
    for node in ast.walk(root):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    return parents


def _in_fstring(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.JoinedStr):
            return True
    return False


def _is_docstring(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    parent = parents.get(node)
    if not isinstance(parent, ast.Expr):
        return False
    holder = parents.get(parent)
    body = getattr(holder, "body", None)
    return isinstance(holder, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body and body[0] is parent


def _bodies(node: ast.AST) -> Iterator[list[ast.stmt]]:
    for name in ("body", "orelse", "finalbody"):
        body = getattr(node, name, None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            yield body
    for handler in getattr(node, "handlers", []) or []:
        yield handler.body


def _local_names(function: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, int]:
    """Parameters and variables assigned in the function's own scope, with the line each is first bound on
    (comprehension variables and nested functions' locals are not the function's)."""
    names: dict[str, int] = {}
    arguments = function.args
    for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                *([arguments.vararg] if arguments.vararg else []), *([arguments.kwarg] if arguments.kwarg else [])]:
        names.setdefault(arg.arg, function.lineno)
    nested: list[ast.AST] = list(function.body)
    while nested:
        node = nested.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp,
                             ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names[node.id] = min(names.get(node.id, node.lineno), node.lineno)
        nested.extend(ast.iter_child_nodes(node))
    return names


class _Mutator:
    def __init__(self, source: str, function_name: str | None) -> None:
        self.src = _Source(source)
        self.tree = parse(source)
        self.function = _function_node(self.tree, function_name)
        self.parents = _parents(self.tree)

    def nodes(self) -> list[ast.AST]:
        if self.function is None:
            return []
        # the function's body (nested code included), not its decorators, defaults or annotations
        found = []
        for statement in self.function.body:
            found.extend(ast.walk(statement))
        return sorted(found, key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0), type(n).__name__))

    def statements(self) -> list[ast.stmt]:
        return [node for node in self.nodes() if isinstance(node, ast.stmt)]

    # -- helpers -------------------------------------------------------------------------------------------------

    def _gap_edit(self, left: ast.AST, right: ast.AST, old: str, new: str) -> _Edit | None:
        """Replace the operator `old` written between two operands by `new`."""
        start = self.src.offset(left.end_lineno, left.end_col_offset)
        end = self.src.offset(right.lineno, right.col_offset)
        gap = self.src.text[start:end]
        core = gap.strip(" \t\n()\\")
        if " ".join(core.split()) != old:
            return None
        index = gap.index(core)
        return _Edit(start + index, start + index + len(core), new)

    def _node_edit(self, node: ast.AST, text: str) -> _Edit:
        start, end = self.src.span(node)
        return _Edit(start, end, text)

    def _where(self, node: ast.AST) -> str:
        return f"line {node.lineno}"

    # -- the classes ---------------------------------------------------------------------------------------------

    def operator_misuse(self) -> Iterator[tuple[_Edit, str, int]]:
        for node in self.nodes():
            if _in_fstring(node, self.parents):
                continue
            if isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAPS:
                old = _SYMBOLS[type(node.op)]
                for new_op in _BINOP_SWAPS[type(node.op)]:
                    edit = self._gap_edit(node.left, node.right, old, _SYMBOLS[new_op])
                    if edit:
                        yield edit, f"`{old}` -> `{_SYMBOLS[new_op]}`", node.lineno
            elif isinstance(node, ast.AugAssign) and type(node.op) in _BINOP_SWAPS:
                old = _SYMBOLS[type(node.op)] + "="
                for new_op in _BINOP_SWAPS[type(node.op)]:
                    edit = self._gap_edit(node.target, node.value, old, _SYMBOLS[new_op] + "=")
                    if edit:
                        yield edit, f"`{old}` -> `{_SYMBOLS[new_op]}=`", node.lineno
            elif isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                for index, op in enumerate(node.ops):
                    old = _SYMBOLS[type(op)]
                    for new_op in _CMPOP_SWAPS.get(type(op), ()):
                        edit = self._gap_edit(operands[index], operands[index + 1], old, _SYMBOLS[new_op])
                        if edit:
                            yield edit, f"`{old}` -> `{_SYMBOLS[new_op]}`", node.lineno
            elif isinstance(node, ast.BoolOp):
                old = _SYMBOLS[type(node.op)]
                new = "or" if old == "and" else "and"
                if len(node.values) == 2:
                    edit = self._gap_edit(node.values[0], node.values[1], old, new)
                    if edit:
                        yield edit, f"`{old}` -> `{new}`", node.lineno
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
                start, _ = self.src.span(node)
                operand_start, _ = self.src.span(node.operand)
                if self.src.text[start:operand_start].strip() == "not":
                    yield _Edit(start, operand_start, ""), "`not` dropped", node.lineno

    def value_misuse(self) -> Iterator[tuple[_Edit, str, int]]:
        for node in self.nodes():
            value = _constant_value(node)
            if value is not _NO_VALUE and not _in_fstring(node, self.parents) \
                    and not _is_docstring(node, self.parents) and _constant_value(self.parents.get(node)) is _NO_VALUE:
                for new in _other_values(value):
                    old_text = self.src.segment(node)
                    new_text = repr(new)
                    if old_text != new_text:
                        yield self._node_edit(node, new_text), f"`{_short(old_text)}` -> `{_short(new_text)}`", \
                            node.lineno
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
                    and 1 <= len(node.args) <= 2 and not isinstance(node.args[-1], ast.Constant):
                bound = node.args[-1]
                text = self.src.segment(bound)
                if "\n" in text:
                    continue
                wrapped = f"({text})" if isinstance(bound, (ast.BoolOp, ast.IfExp, ast.Lambda, ast.NamedExpr,
                                                              ast.Compare)) else text
                for delta in (" + 1", " - 1"):
                    yield self._node_edit(bound, wrapped + delta), \
                        f"`range(..., {_short(text)})` -> `range(..., {_short(wrapped + delta)})`", node.lineno

    def variable_misuse(self) -> Iterator[tuple[_Edit, str, int]]:
        if self.function is None:
            return
        local = _local_names(self.function)
        for node in self.nodes():
            if not isinstance(node, ast.Name) or not isinstance(node.ctx, ast.Load) or _in_fstring(node, self.parents):
                continue
            if isinstance(self.parents.get(node), ast.Call) and self.parents[node].func is node:
                continue  # calling a function: swapping that is function misuse
            visible = {name: line for name, line in local.items() if line < node.lineno}
            visible.update((name, 0) for name in self._comprehension_names(node))
            if node.id not in visible and node.id not in local:
                continue  # a global or a builtin
            for other in sorted(visible):
                if other != node.id:
                    yield self._node_edit(node, other), f"`{node.id}` -> `{other}`", node.lineno

    def _comprehension_names(self, node: ast.AST) -> set[str]:
        """Variables bound by the comprehensions around `node`."""
        names: set[str] = set()
        start = child = node
        while child in self.parents:
            node = self.parents[child]
            if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)) \
                    and not any(inner is start for inner in ast.walk(node.generators[0].iter)):
                # (the first iterable is evaluated outside the comprehension)
                for generator in node.generators:
                    names |= {n.id for n in ast.walk(generator.target) if isinstance(n, ast.Name)}
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                break
            child = node
        return names

    def function_misuse(self) -> Iterator[tuple[_Edit, str, int]]:
        for node in self.nodes():
            if not isinstance(node, ast.Call) or _in_fstring(node, self.parents):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in _BUILTIN_SWAPS:
                for new in _BUILTIN_SWAPS[func.id]:
                    yield self._node_edit(func, new), f"`{func.id}()` -> `{new}()`", node.lineno
            elif isinstance(func, ast.Attribute) and func.attr in _METHOD_SWAPS:
                start, end = self.src.span(func)
                if not self.src.text[start:end].endswith(func.attr):
                    continue
                for new in _METHOD_SWAPS[func.attr]:
                    yield _Edit(end - len(func.attr), end, new), f"`.{func.attr}()` -> `.{new}()`", node.lineno

    def missing_logic(self) -> Iterator[tuple[_Edit, str, int]]:
        for node in self.nodes():
            if isinstance(node, ast.stmt):
                for body in _bodies(node):
                    yield from self._deletions(body)
            if isinstance(node, ast.If):
                yield from self._drop_guard(node)
                yield from self._drop_else(node)
            if isinstance(node, ast.BoolOp) and not _in_fstring(node, self.parents):
                for index, value in enumerate(node.values):
                    rest = [v for i, v in enumerate(node.values) if i != index]
                    start, end = self.src.span(node)
                    if len(rest) == 1:
                        kept = self.src.segment(rest[0])
                        if isinstance(rest[0], (ast.BoolOp, ast.IfExp, ast.Lambda, ast.NamedExpr)):
                            kept = f"({kept})"
                    else:
                        keep_start, _ = self.src.span(rest[0])
                        _, keep_end = self.src.span(rest[-1])
                        if index not in (0, len(node.values) - 1):
                            continue
                        kept = self.src.text[keep_start:keep_end]
                    yield _Edit(start, end, kept), \
                        f"condition `{_short(self.src.segment(value))}` dropped from `{_SYMBOLS[type(node.op)]}`", \
                        node.lineno
            if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords \
                    and isinstance(node.func, ast.Name) and node.func.id in _DROPPABLE_CALLS \
                    and not isinstance(node.args[0], ast.Starred) and not _in_fstring(node, self.parents):
                inner = self.src.segment(node.args[0])
                yield self._node_edit(node, inner), f"`{node.func.id}(...)` dropped", node.lineno
            if isinstance(node, ast.Call) and not node.args and not node.keywords \
                    and isinstance(node.func, ast.Attribute) and node.func.attr in _DROPPABLE_METHODS \
                    and not _in_fstring(node, self.parents):
                inner = self.src.segment(node.func.value)
                yield self._node_edit(node, inner), f"`.{node.func.attr}()` dropped", node.lineno

    def _deletions(self, body: list[ast.stmt]) -> Iterator[tuple[_Edit, str, int]]:
        if len(body) < 2:
            return
        for statement in body:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Pass)) \
                    or _is_docstring_statement(statement, body) or not self.src.owns_lines(statement):
                continue
            if isinstance(statement, ast.Return) and statement is body[-1]:
                continue  # falling off the end returns None: too blunt to be an interesting bug
            start = self.src.line_start(statement.lineno)
            end = self.src.line_end(statement.end_lineno)
            first = self.src.lines[statement.lineno - 1].strip()
            yield _Edit(start, end, ""), f"statement `{_short(first)}` deleted", statement.lineno

    def _drop_guard(self, node: ast.If) -> Iterator[tuple[_Edit, str, int]]:
        """`if c:\\n    body` -> `body`, dedented (no else, the test on the `if` line)."""
        if node.orelse or not self.src.owns_lines(node) or node.body[0].lineno <= node.test.end_lineno \
                or node.test.end_lineno != node.lineno or self._is_elif(node):
            return
        if_indent = self.src.indent(node.lineno)
        body_indent = self.src.indent(node.body[0].lineno)
        if not body_indent.startswith(if_indent) or len(body_indent) <= len(if_indent):
            return
        lines = []
        for number in range(node.body[0].lineno, node.end_lineno + 1):
            text = self.src.lines[number - 1]
            if not text.strip():
                lines.append(text)
            elif text.startswith(body_indent):
                lines.append(if_indent + text[len(body_indent):])
            else:
                return  # a comment or string line at another indent: leave this guard alone
        start = self.src.line_start(node.lineno)
        end = self.src.line_end(node.end_lineno)
        trailer = "\n" if self.src.text[end - 1:end] == "\n" else ""
        yield _Edit(start, end, "\n".join(lines) + trailer), \
            f"guard `{_short(self.src.lines[node.lineno - 1].strip())}` dropped", node.lineno

    def _is_elif(self, node: ast.If) -> bool:
        return self.src.lines[node.lineno - 1].lstrip().startswith("elif")

    def _drop_else(self, node: ast.If) -> Iterator[tuple[_Edit, str, int]]:
        if not node.orelse:
            return
        first = node.orelse[0]
        if isinstance(first, ast.If) and self._is_elif(first):
            if first.orelse:
                return  # dropping an inner elif of a chain would orphan its own else
            start = self.src.line_start(first.lineno)
            end = self.src.line_end(first.end_lineno)
            yield _Edit(start, end, ""), f"branch `{_short(self.src.lines[first.lineno - 1].strip())}` deleted", \
                first.lineno
            return
        else_line = next((number for number in range(first.lineno - 1, node.body[-1].end_lineno, -1)
                          if self.src.lines[number - 1].strip().startswith("else")), None)
        if else_line is None or self.src.lines[else_line - 1].strip() != "else:":
            return
        if not self.src.owns_lines(node.orelse[-1]):
            return
        start = self.src.line_start(else_line)
        end = self.src.line_end(node.orelse[-1].end_lineno)
        yield _Edit(start, end, ""), f"`else` branch (line {else_line}) deleted", else_line

    def excess_logic(self) -> Iterator[tuple[_Edit, str, int]]:
        local = _local_names(self.function) if self.function else {}
        for node in self.nodes():
            if isinstance(node, (ast.If, ast.While)) and node.test.end_lineno == node.test.lineno:
                test_text = self.src.segment(node.test)
                wrapped = f"({test_text})" if isinstance(node.test, (ast.BoolOp, ast.IfExp, ast.NamedExpr,
                                                                      ast.Lambda)) else test_text
                defined = sorted(name for name, line in local.items() if line < node.lineno
                                 and name not in _names(node.test))
                for name in defined[:4]:
                    for extra in (f"{name}", f"not {name}"):
                        yield self._node_edit(node.test, f"{wrapped} and {extra}"), \
                            f"extra condition `and {extra}`", node.lineno
            if isinstance(node, ast.stmt):
                for body in _bodies(node):
                    yield from self._duplicates(body)

    def _duplicates(self, body: list[ast.stmt]) -> Iterator[tuple[_Edit, str, int]]:
        for statement in body:
            updates = isinstance(statement, ast.AugAssign) or (
                isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)
                and isinstance(statement.value.func, ast.Attribute)) or (
                isinstance(statement, ast.Assign) and any(name in _names(statement.value) for target in
                                                          statement.targets for name in _names(target)))
            if not updates or not self.src.owns_lines(statement):
                continue
            start = self.src.line_start(statement.lineno)
            end = self.src.line_end(statement.end_lineno)
            text = self.src.text[start:end]
            if not text.endswith("\n"):
                text = "\n" + text
            yield _Edit(end, end, text), f"statement `{_short(self.src.lines[statement.lineno - 1].strip())}` " \
                                         f"repeated", statement.lineno


def _is_docstring_statement(statement: ast.stmt, body: list[ast.stmt]) -> bool:
    return statement is body[0] and isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
        and isinstance(statement.value.value, str)


_NO_VALUE = object()


def _constant_value(node: ast.AST | None) -> object:
    """The value of a literal, a negative number included (`-1` is `UnaryOp(USub, 1)`)."""
    if isinstance(node, ast.Constant) and not isinstance(node.value, (bytes, type(...))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and type(node.operand.value) in (int, float):
        return -node.operand.value
    return _NO_VALUE


def _names(node: ast.AST) -> set[str]:
    return {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}


def _other_values(value: object) -> list[object]:
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1] if value not in (0, 1) else ([1] if value == 0 else [0, 2])
    if isinstance(value, float):
        return [value + 1.0] if value != 0 else [1.0]
    if isinstance(value, str):
        if value == "":
            return [" "]
        if value == " ":
            return [""]
        if len(value) == 1:
            return ["" if not value.isalnum() else chr(ord(value) + 1) if value not in "zZ9" else value.swapcase()]
        return [value[:-1]]
    return []


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CLASS_METHODS = {
    MISSING_LOGIC: _Mutator.missing_logic, EXCESS_LOGIC: _Mutator.excess_logic, VALUE_MISUSE: _Mutator.value_misuse,
    OPERATOR_MISUSE: _Mutator.operator_misuse, VARIABLE_MISUSE: _Mutator.variable_misuse,
    FUNCTION_MISUSE: _Mutator.function_misuse,
}


def mutations(source: str, function_name: str | None = None, classes: tuple[str, ...] = BUG_CLASSES) -> list[Mutation]:
    """Every candidate mutant of `function_name` in `source` (the only function when None), in a fixed
    order: by class (as in `classes`), then by position. Mutants that do not parse, or that leave the code's
    AST unchanged, are left out; so are duplicates (the first is kept)."""
    mutator = _Mutator(source, function_name)
    if mutator.function is None:
        return []
    original = normalized_ast(source)
    seen = {original}
    found = []
    for bug_class in classes:
        for edit, what, line in _CLASS_METHODS[bug_class](mutator):
            code = source[:edit.start] + edit.text + source[edit.end:]
            key = normalized_ast(code)
            if key is None or key in seen:
                continue
            seen.add(key)
            found.append(Mutation(bug_class, f"{bug_class}: {what} on line {line}", line, code))
    return found


def pick(candidates: list[Mutation], count: int, seed: int | str) -> list[Mutation]:
    """Up to `count` of `candidates` in a seeded random order that takes the classes in turn, so that each
    class is represented before any repeats. The order of the rest follows, so callers that reject some
    (mutants that pass the tests) can keep drawing: `pick(..., len(candidates), seed)` is the full order."""
    rng = random.Random(f"nextls-mutate:{seed}")
    by_class: dict[str, list[Mutation]] = {}
    for mutation in candidates:
        by_class.setdefault(mutation.bug_class, []).append(mutation)
    for group in by_class.values():
        rng.shuffle(group)
    order = [bug_class for bug_class in BUG_CLASSES if bug_class in by_class]
    rng.shuffle(order)
    picked: list[Mutation] = []
    while len(picked) < count and any(by_class.values()):
        for bug_class in order:
            if by_class[bug_class] and len(picked) < count:
                picked.append(by_class[bug_class].pop(0))
    return picked


def parse(code: str) -> ast.Module:
    """`ast.parse`, quiet about MBPP's invalid escape sequences (a SyntaxWarning since Python 3.12)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
        return parse_python(code)


def normalized_ast(code: str) -> str | None:
    """A key equal for programs that differ only in formatting, comments and docstrings; None if unparsable."""
    try:
        tree = parse(code)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body \
                and _is_docstring_statement(body[0], body):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)
