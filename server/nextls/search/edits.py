"""Edit operators: small rewrites of one function, each replacing one exact segment of the file's text.

Every edit is found on the AST and applied to the source text at the node's own positions (AST columns are
UTF-8 byte offsets; they are turned into character offsets per line), so everything outside the edited
segment stays byte for byte: comments, formatting, the rest of the file. The operators follow the classes
of HumanEvalFix (value, operator, variable and function misuse, excess and missing logic):

* operator replacement: arithmetic (`/` and `//` included), comparison, `and`/`or`, augmented assignment,
  dropping a unary `not` or `-`;
* values: an integer constant +-1 or replaced by 0 / 1, `True`/`False` swapped, a slice bound, index or
  `range` argument +-1;
* a variable read replaced by another name of the function's scope, a different in-scope name returned;
* a call replaced within its family (`min`/`max`, `any`/`all`, `sorted`/`reversed`, `int`/`float`/`round`,
  `.append`/`.extend`, `.lower`/`.upper`, `.startswith`/`.endswith`, ...), two adjacent arguments swapped;
* a condition negated, an `if` condition dropped (its body kept), an operand of `and`/`or` dropped, a
  statement deleted.

`prior` orders operators at equally suspicious lines: the edits that fix most small bugs come first.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
DESCRIBED_CHARS = 60  # longer contexts are described by the edited segment alone


@dataclass(frozen=True)
class Edit:
    start: int  # character offsets into the file's source
    end: int
    text: str  # what replaces source[start:end]
    line: int  # the file line the edit is on (its first line)
    operator: str  # the operator's name, e.g. "comparison"
    prior: float  # how often this operator fixes a bug, relative to the others (higher first)
    description: str  # one line: "line 9: `s[i:]` -> `s[i + 1:]`"


@dataclass(frozen=True)
class _Operator:
    name: str
    prior: float


BINARY = _Operator("arithmetic operator", 0.9)
COMPARISON = _Operator("comparison", 1.0)
BOOLEAN = _Operator("boolean operator", 0.8)
AUGMENTED = _Operator("augmented assignment", 0.8)
UNARY = _Operator("unary operator dropped", 0.6)
CONSTANT = _Operator("constant", 0.9)
BOUND = _Operator("bound +-1", 0.95)
INDEX = _Operator("index +-1", 0.6)
CALL = _Operator("call family", 0.8)
NEGATE = _Operator("condition negated", 0.7)
DROP_CONDITION = _Operator("condition dropped", 0.4)
DROP_OPERAND = _Operator("operand dropped", 0.5)
VARIABLE = _Operator("variable replaced", 0.45)
RETURN = _Operator("return value replaced", 0.5)
SWAP = _Operator("arguments swapped", 0.5)
DELETE = _Operator("statement deleted", 0.3)

_BINARY_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
                   ast.Pow: "**", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<",
                   ast.RShift: ">>"}
_BINARY_FAMILY = {ast.Add: (ast.Sub, ast.Mult), ast.Sub: (ast.Add,),
                  ast.Mult: (ast.Div, ast.FloorDiv, ast.Add, ast.Pow), ast.Div: (ast.FloorDiv, ast.Mult),
                  ast.FloorDiv: (ast.Div, ast.Mod, ast.Mult), ast.Mod: (ast.FloorDiv,), ast.Pow: (ast.Mult,),
                  ast.BitAnd: (ast.BitOr,), ast.BitOr: (ast.BitAnd, ast.BitXor), ast.BitXor: (ast.BitOr,),
                  ast.LShift: (ast.RShift,), ast.RShift: (ast.LShift,)}
_COMPARE_SYMBOLS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
                    ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}
_COMPARE_PATTERNS = {ast.Is: r"\bis\b(?!\s+not\b)", ast.IsNot: r"\bis\s+not\b", ast.In: r"(?<!not )\bin\b",
                     ast.NotIn: r"\bnot\s+in\b"}
_COMPARE_FAMILY = {ast.Lt: (ast.LtE, ast.Gt, ast.GtE), ast.LtE: (ast.Lt, ast.GtE, ast.Gt),
                   ast.Gt: (ast.GtE, ast.Lt, ast.LtE), ast.GtE: (ast.Gt, ast.LtE, ast.Lt), ast.Eq: (ast.NotEq,),
                   ast.NotEq: (ast.Eq,), ast.Is: (ast.IsNot,), ast.IsNot: (ast.Is,), ast.In: (ast.NotIn,),
                   ast.NotIn: (ast.In,)}
_FUNCTION_FAMILIES = (("min", "max"), ("any", "all"), ("sorted", "reversed"), ("int", "float", "round"),
                      ("abs", "len"), ("list", "set", "sorted"))
_METHOD_FAMILIES = (("append", "extend"), ("lower", "upper"), ("startswith", "endswith"), ("find", "rfind"),
                    ("index", "rindex"), ("strip", "lstrip", "rstrip"), ("split", "rsplit"),
                    ("keys", "values", "items"), ("pop", "remove"), ("isdigit", "isalpha", "isalnum"),
                    ("islower", "isupper"))
# an expression of these needs no parentheses around it before `+ 1`
_ADDITIVE_SAFE = (ast.Name, ast.Attribute, ast.Subscript, ast.Call, ast.Constant, ast.List, ast.Tuple, ast.Dict,
                  ast.Set, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.JoinedStr)


class SourceText:
    """The file's text with AST positions (1-based line, UTF-8 byte column) turned into character offsets."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.line_starts = [0] + [match.end() for match in _LINE_BREAK.finditer(source)]

    def offset(self, line: int, byte_column: int) -> int:
        start = self.line_starts[line - 1]
        end = self.line_starts[line] if line < len(self.line_starts) else len(self.source)
        prefix = self.source[start:end].encode("utf-8")[:byte_column]
        return start + len(prefix.decode("utf-8", errors="replace"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset))

    def text(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.source[start:end]

    def line_start(self, line: int) -> int:
        return self.line_starts[line - 1]

    def line_end(self, line: int) -> int:
        """The offset just past the line's line ending."""
        return self.line_starts[line] if line < len(self.line_starts) else len(self.source)

    def parenthesized(self, node: ast.AST) -> tuple[int, int]:
        """The node's span with the parentheses written right around it, when there are."""
        start, end = self.span(node)
        while True:
            before = self.source[:start].rstrip()
            after_start = len(self.source[end:]) - len(self.source[end:].lstrip())
            if before.endswith("(") and self.source[end + after_start:end + after_start + 1] == ")":
                start, end = len(before) - 1, end + after_start + 1
            else:
                return start, end


def function_edits(source: str, function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[Edit]:
    """Every single edit of the operators above in the body of `function` (a node of `source`'s AST)."""
    return list(_Finder(SourceText(source), function).edits())


def apply_edits(source: str, edits: Sequence[Edit]) -> str:
    """`source` with non-overlapping `edits` applied."""
    for edit in sorted(edits, key=lambda edit: edit.start, reverse=True):
        source = source[:edit.start] + edit.text + source[edit.end:]
    return source


def overlap(first: Edit, second: Edit) -> bool:
    return first.start < second.end and second.start < first.end


class _Finder:
    def __init__(self, text: SourceText, function: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.text = text
        self.function = function
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(function):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
        arguments = function.args
        parameters = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                      *(a for a in (arguments.vararg, arguments.kwarg) if a is not None)]
        stored = [node.id for node in ast.walk(function)
                  if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)]
        self.scope = list(dict.fromkeys([parameter.arg for parameter in parameters] + stored))
        self.docstring = function.body[0] if ast.get_docstring(function) is not None else None

    # -- helpers ----------------------------------------------------------------------------------------

    def edit(self, operator: _Operator, start: int, end: int, replacement: str, context: ast.AST | None,
             line: int, description: str | None = None) -> Edit:
        if description is None:
            description = self.describe(start, end, replacement, context)
        return Edit(start, end, replacement, line, operator.name, operator.prior, f"line {line}: {description}")

    def describe(self, start: int, end: int, replacement: str, context: ast.AST | None) -> str:
        source = self.text.source
        if context is not None:
            context_start, context_end = self.text.span(context)
            before = source[context_start:context_end]
            if context_start <= start and end <= context_end and "\n" not in before and len(before) <= DESCRIBED_CHARS:
                after = source[context_start:start] + replacement + source[end:context_end]
                return f"`{before}` -> `{after}`"
        return f"`{source[start:end]}` -> `{replacement}`"

    def replace_node(self, operator: _Operator, node: ast.AST, replacement: str, context: ast.AST | None = None
                     ) -> Edit:
        start, end = self.text.span(node)
        return self.edit(operator, start, end, replacement, context if context is not None else node, node.lineno)

    def context_of(self, node: ast.AST) -> ast.AST:
        """The expression or simple statement around `node` that a description shows."""
        parent = self.parents.get(node)
        while isinstance(parent, ast.Slice):  # `0:i` alone reads badly: show the subscript
            parent = self.parents.get(parent)
        simple_statement = isinstance(parent, ast.stmt) and not hasattr(parent, "body")
        return parent if isinstance(parent, ast.expr) or simple_statement else node

    def gap_symbol(self, left: ast.AST, right: ast.AST, pattern: str) -> tuple[int, int] | None:
        """Where the operator matching `pattern` is, between the end of `left` and the start of `right`."""
        gap_start, gap_end = self.text.span(left)[1], self.text.span(right)[0]
        gap = self.text.source[gap_start:gap_end].split("#", 1)[0]
        match = re.search(pattern, gap)
        return (gap_start + match.start(), gap_start + match.end()) if match else None

    def plus_minus(self, node: ast.expr) -> Iterator[str]:
        """`node + 1` and `node - 1`, parenthesized when needed; nothing for `x +- constant` (the constant
        operator covers it)."""
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)) and _is_int(node.right):
            return
        if _is_int(node):
            return
        text = self.text.text(node)
        safe = isinstance(node, _ADDITIVE_SAFE) or (isinstance(node, ast.BinOp) and not isinstance(
            node.op, (ast.LShift, ast.RShift, ast.BitAnd, ast.BitOr, ast.BitXor)))
        operand = text if safe else f"({text})"
        yield f"{operand} + 1"
        yield f"{operand} - 1"

    # -- operators --------------------------------------------------------------------------------------

    def edits(self) -> Iterator[Edit]:
        for node in (node for statement in self.function.body for node in ast.walk(statement)):
            if node is self.docstring:
                continue
            if isinstance(node, ast.BinOp):
                yield from self.binary(node)
            elif isinstance(node, ast.Compare):
                yield from self.comparison(node)
            elif isinstance(node, ast.BoolOp):
                yield from self.boolean(node)
            elif isinstance(node, ast.AugAssign):
                yield from self.augmented(node)
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
                start, end = self.text.parenthesized(node.operand)
                yield self.edit(UNARY, *self.text.span(node), self.text.source[start:end], node, node.lineno)
            elif isinstance(node, ast.Constant):
                yield from self.constant(node)
            elif isinstance(node, ast.Subscript):
                yield from self.subscript(node)
            elif isinstance(node, ast.Call):
                yield from self.call(node)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                yield from self.variable(node)
            if isinstance(node, (ast.If, ast.While, ast.IfExp)):
                yield from self.negate(node.test)
            if isinstance(node, ast.comprehension):
                for test in node.ifs:
                    yield from self.negate(test)
            if isinstance(node, ast.If):
                yield from self.drop_condition(node)
            if isinstance(node, ast.Return) and node.value is not None:
                yield from self.return_value(node)
            if isinstance(node, ast.stmt):
                yield from self.delete(node)

    def binary(self, node: ast.BinOp) -> Iterator[Edit]:
        op = type(node.op)
        if op not in _BINARY_FAMILY:
            return
        where = self.gap_symbol(node.left, node.right, re.escape(_BINARY_SYMBOLS[op]))
        if where is None:
            return
        for other in _BINARY_FAMILY.get(op, ()):
            yield self.edit(BINARY, *where, _BINARY_SYMBOLS[other], node, node.lineno)

    def augmented(self, node: ast.AugAssign) -> Iterator[Edit]:
        op = type(node.op)
        if op not in _BINARY_FAMILY:
            return
        where = self.gap_symbol(node.target, node.value, re.escape(_BINARY_SYMBOLS[op] + "="))
        if where is None:
            return
        for other in _BINARY_FAMILY.get(op, ()):
            yield self.edit(AUGMENTED, *where, _BINARY_SYMBOLS[other] + "=", node, node.lineno)

    def comparison(self, node: ast.Compare) -> Iterator[Edit]:
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            kind = type(op)
            pattern = _COMPARE_PATTERNS.get(kind, re.escape(_COMPARE_SYMBOLS[kind]) + r"(?!=)")
            where = self.gap_symbol(left, right, pattern)
            if where is not None:
                for other in _COMPARE_FAMILY[kind]:
                    yield self.edit(COMPARISON, *where, _COMPARE_SYMBOLS[other], node, node.lineno)
            left = right

    def boolean(self, node: ast.BoolOp) -> Iterator[Edit]:
        symbol, other = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
        values = node.values
        for left, right in itertools.pairwise(values):
            where = self.gap_symbol(left, right, rf"\b{symbol}\b")
            if where is not None:
                yield self.edit(BOOLEAN, *where, other, node, node.lineno)
        spans = [self.text.parenthesized(value) for value in values]
        for index in range(len(values)):  # drop one operand together with the operator before (or after) it
            start, end = (spans[index - 1][1], spans[index][1]) if index else (spans[0][0], spans[1][0])
            yield self.edit(DROP_OPERAND, start, end, "", node, node.lineno)

    def constant(self, node: ast.Constant) -> Iterator[Edit]:
        if isinstance(node.value, bool):
            yield self.replace_node(CONSTANT, node, str(not node.value), self.context_of(node))
        elif isinstance(node.value, int):
            options = dict.fromkeys([node.value + 1, node.value - 1, 0, 1])
            options.pop(node.value, None)
            for value in options:
                yield self.replace_node(CONSTANT, node, str(value), self.context_of(node))

    def subscript(self, node: ast.Subscript) -> Iterator[Edit]:
        index = node.slice
        if isinstance(index, ast.Slice):
            for bound in (index.lower, index.upper):
                if bound is not None:
                    for replacement in self.plus_minus(bound):
                        yield self.replace_node(BOUND, bound, replacement, node)
        elif isinstance(node.ctx, ast.Load) and not isinstance(index, ast.Tuple):
            for replacement in self.plus_minus(index):
                yield self.replace_node(INDEX, index, replacement, node)

    def call(self, node: ast.Call) -> Iterator[Edit]:
        func = node.func
        if isinstance(func, ast.Name):
            for family in _FUNCTION_FAMILIES:
                if func.id in family:
                    for other in family:
                        if other != func.id:
                            yield self.replace_node(CALL, func, other, node)
            if func.id == "range":
                for argument in node.args:
                    for replacement in self.plus_minus(argument):
                        yield self.replace_node(BOUND, argument, replacement, node)
        elif isinstance(func, ast.Attribute):
            _, end = self.text.span(func)
            start = end - len(func.attr)
            if self.text.source[start:end] == func.attr:
                for family in _METHOD_FAMILIES:
                    if func.attr in family:
                        for other in family:
                            if other != func.attr:
                                yield self.edit(CALL, start, end, other, node, node.lineno)
        arguments = node.args
        for first, second in itertools.pairwise(arguments):
            if isinstance(first, ast.Starred) or isinstance(second, ast.Starred):
                continue
            first_start, first_end = self.text.span(first)
            second_start, second_end = self.text.span(second)
            swapped = (self.text.text(second) + self.text.source[first_end:second_start] + self.text.text(first))
            yield self.edit(SWAP, first_start, second_end, swapped, node, node.lineno)

    def variable(self, node: ast.Name) -> Iterator[Edit]:
        parent = self.parents.get(node)
        if node.id not in self.scope or (isinstance(parent, ast.Call) and parent.func is node):
            return
        for other in self.scope:
            if other != node.id:
                yield self.replace_node(VARIABLE, node, other, self.context_of(node))

    def return_value(self, node: ast.Return) -> Iterator[Edit]:
        current = self.text.text(node.value)
        for name in self.scope:
            if name != current:
                yield self.replace_node(RETURN, node.value, name, node)

    def negate(self, test: ast.expr) -> Iterator[Edit]:
        if isinstance(test, ast.Constant) or (isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)):
            return  # `True` -> `False` is the constant's edit, dropping a `not` the unary operator's
        text = self.text.text(test)
        atomic = isinstance(test, (ast.Name, ast.Attribute, ast.Subscript, ast.Call))
        yield self.replace_node(NEGATE, test, f"not {text}" if atomic else f"not ({text})", test)

    def drop_condition(self, node: ast.If) -> Iterator[Edit]:
        """`if c:` + body -> the body, one level out (no `else`, the body on its own lines, no multi-line strings)."""
        if node.orelse or node.body[0].lineno == node.lineno or self._has_multiline_string(node):
            return
        source = self.text.source
        header_start = self.text.offset(node.lineno, node.col_offset)
        if source[self.text.line_start(node.lineno):header_start].strip():
            return  # `if` shares its line with something before it
        body_line = node.body[0].lineno
        body_indent = self.text.offset(body_line, node.body[0].col_offset) - self.text.line_start(body_line)
        extra = body_indent - (header_start - self.text.line_start(node.lineno))
        lines = source[self.text.line_start(body_line):self.text.line_end(node.end_lineno)].splitlines(keepends=True)
        dedented = "".join(line[extra:] if line[:extra].isspace() else line.lstrip(" \t") if line.strip() else line
                           for line in lines)
        condition = self.text.text(node.test)
        start, end = self.text.line_start(node.lineno), self.text.line_end(node.end_lineno)
        yield self.edit(DROP_CONDITION, start, end, dedented, None, node.lineno,
                        f"drop the condition `if {condition}:`" if len(condition) <= DESCRIBED_CHARS
                        else "drop the `if` condition")

    def delete(self, node: ast.stmt) -> Iterator[Edit]:
        if isinstance(node, ast.Pass) or self._has_multiline_string(node):
            return
        parent = self.parents.get(node)
        block = next((body for body in _blocks(parent) if node in body), None) if parent is not None else None
        if block is None:
            return
        source = self.text.source
        start, end = self.text.span(node)
        alone = (not source[self.text.line_start(node.lineno):start].strip()
                 and not source[end:self.text.line_end(node.end_lineno)].split("#", 1)[0].strip())
        first_line = source[start:self.text.line_end(node.lineno)].rstrip("\r\n")
        shown = first_line if len(first_line) <= DESCRIBED_CHARS and node.lineno == node.end_lineno else None
        description = f"delete `{shown}`" if shown else f"delete the statement on lines {node.lineno}-{node.end_lineno}"
        if alone and len(block) > 1:
            yield self.edit(DELETE, self.text.line_start(node.lineno), self.text.line_end(node.end_lineno), "",
                            None, node.lineno, description)
        else:
            yield self.edit(DELETE, start, end, "pass", None, node.lineno, description)

    def _has_multiline_string(self, node: ast.AST) -> bool:
        return any(isinstance(inner, (ast.Constant, ast.JoinedStr)) and inner.lineno != inner.end_lineno
                   for inner in ast.walk(node))


def _blocks(node: ast.AST) -> Iterator[list[ast.stmt]]:
    for field in ("body", "orelse", "finalbody"):
        value = getattr(node, field, None)
        if isinstance(value, list):
            yield value
    for handler in getattr(node, "handlers", None) or []:
        yield handler.body
    for case in getattr(node, "cases", None) or []:
        yield case.body


def _is_int(node: ast.AST) -> bool:
    """An integer literal, negative ones (`-1`) included."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool)
