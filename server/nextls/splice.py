"""Locate a function in Python source and splice a replacement in, leaving every other byte alone.

Decisions:

* Line numbers are 1-based and only ``\\n``, ``\\r\\n`` and ``\\r`` end a line, as in Python's own parser
  (``str.splitlines`` also splits on form feeds and other separators, which would shift every number).
* The functions we know about are module-level functions and methods of classes (at any class nesting:
  ``A.B.f``), including those under ``if``/``try``/``with`` at those levels. A function nested inside
  another function is part of its enclosing function: a fix replaces the whole enclosing function. So the
  spans never overlap, and a line number picks at most one of them.
* A span ends at the last line of the function's last statement: blank lines and comments after the body
  are not part of the function, so a replacement never swallows them.
* Code that crosses module boundaries (dedented snippets, ``function_source``) uses ``\\n`` line endings;
  only ``replace_function`` writes into a file, and it writes the file's own line ending.
"""

from __future__ import annotations

import ast
import difflib
import io
import re
import threading
import tokenize
from dataclasses import dataclass

_PARSE_LOCK = threading.Lock()


def parse_python(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse`, one thread at a time: CPython 3.11-3.12 can fail parses running in several threads at once
    with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905); the filter and the
    server verify answers in threads."""
    with _PARSE_LOCK:
        return ast.parse(source, filename)


_LINE_RE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_LINE_ENDING_RE = re.compile(r"(?:\r\n|\r|\n)\Z")
_FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)
# Statements that may hold definitions still belonging to the module or class around them.
_BLOCK_NODES = (ast.stmt, ast.excepthandler, ast.match_case)
# Python 3.12+ tokenizes f-strings (3.14+: t-strings) in parts; their literal middles can span lines too.
_STRING_TOKEN_TYPES = frozenset(
    getattr(tokenize, name)
    for name in ("STRING", "FSTRING_MIDDLE", "TSTRING_MIDDLE")
    if hasattr(tokenize, name)
)


@dataclass(frozen=True)
class FunctionSpan:
    """Where a function sits in a source file.

    ``start_line`` is the first decorator line (the ``def`` line when undecorated), ``end_line`` the last
    line of the last statement of the body (inclusive), ``indent`` the whitespace before ``def``.
    """

    name: str
    qualname: str
    start_line: int
    def_line: int
    end_line: int
    indent: str
    is_async: bool


class FunctionNotFoundError(LookupError):
    """No function matches the target; ``available`` holds the functions there are."""

    def __init__(self, message: str, available: tuple[FunctionSpan, ...]) -> None:
        super().__init__(message)
        self.available = available


class AmbiguousFunctionError(FunctionNotFoundError):
    """A name matches several functions; ``available`` holds just those."""


class SourceSyntaxError(ValueError):
    """The source does not parse; ``line`` and ``column`` (1-based) say where, when Python knows."""

    def __init__(self, message: str, line: int | None, column: int | None) -> None:
        location = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"the source does not parse: {message}{location}")
        self.message = message
        self.line = line
        self.column = column


class SpliceError(ValueError):
    """The replacement cannot go in: it does not define the function, or the result would not parse."""


def list_functions(source: str) -> list[FunctionSpan]:
    """All module-level functions and class methods of ``source``, in source order."""
    tree = _parse_source(source)
    lines = _split_lines(source)
    spans: list[FunctionSpan] = []
    _collect_spans(tree, (), lines, spans)
    return sorted(spans, key=lambda span: span.start_line)


def find_function(source: str, target: str | int) -> FunctionSpan:
    """The function named by ``target``: a line number inside it (decorator lines count), its qualname
    (``"Cls.f"``, ``"A.B.f"``) or a trailing part of its qualname (``"f"``, ``"B.f"``).

    An exact qualname wins over a trailing part, so ``"f"`` means the module-level ``f`` even when some
    class also has an ``f``; two classes with an ``f`` and no module-level one make ``"f"`` ambiguous.
    """
    spans = list_functions(source)
    if isinstance(target, int):
        containing = [span for span in spans if span.start_line <= target <= span.end_line]
        if not containing:
            raise FunctionNotFoundError(
                f"line {target} is not inside any function; {_describe(spans)}", tuple(spans)
            )
        return containing[0]
    matches = [span for span in spans if span.qualname == target] or [
        span for span in spans if span.qualname.endswith(f".{target}")
    ]
    if not matches:
        raise FunctionNotFoundError(f"no function named {target!r}; {_describe(spans)}", tuple(spans))
    if len(matches) > 1:
        choices = ", ".join(f"{span.qualname} (line {span.def_line})" for span in matches)
        raise AmbiguousFunctionError(f"{target!r} is ambiguous; name one of: {choices}", tuple(matches))
    return matches[0]


def function_source(source: str, span: FunctionSpan) -> str:
    """The function's text, decorators included, dedented, with ``\\n`` line endings."""
    return dedent_code("".join(_split_lines(source)[span.start_line - 1 : span.end_line]))


def replace_function(source: str, span: FunctionSpan, new_function_source: str) -> str:
    """``source`` with lines ``span.start_line..span.end_line`` replaced by ``new_function_source``.

    The replacement may hold helper functions besides the function itself (all are inserted, in its
    order) but nothing else. It is re-indented to ``span.indent`` and written with the file's line
    ending; everything outside the span stays byte-for-byte. When the new function has no decorators
    but the old one had, the old ones are kept: models usually leave them out. Raises ``SpliceError``
    when the replacement does not define ``span.name`` or the result would not parse.
    """
    lines = _split_lines(source)
    if span not in list_functions(source):
        raise SpliceError(
            f"{span.qualname} (lines {span.start_line}-{span.end_line}) is not a function of this source;"
            " was the file edited after the span was found?"
        )
    old_decorators = [
        _without_ending(line).removeprefix(span.indent)
        for line in lines[span.start_line - 1 : span.def_line - 1]
    ]
    new_lines = _indent_lines(_replacement_lines(new_function_source, span.name, old_decorators), span.indent)
    newline = _line_ending(lines[span.def_line - 1]) or _first_line_ending(lines) or "\n"
    replacement = newline.join(new_lines) + _line_ending(lines[span.end_line - 1])
    result = "".join(lines[: span.start_line - 1]) + replacement + "".join(lines[span.end_line :])
    try:
        parse_python(result)
    except (SyntaxError, ValueError) as error:
        raise SpliceError(
            f"the source with the new {span.qualname} does not parse: {_error_text(error)}"
        ) from error
    return result


def unified_diff(old: str, new: str, path: str) -> str:
    """A ``git apply``-able unified diff from ``a/<path>`` to ``b/<path>``; ``""`` when nothing changed."""
    diff_lines = difflib.unified_diff(_split_lines(old), _split_lines(new), f"a/{path}", f"b/{path}")
    # difflib would glue a last line without a newline onto the next diff line.
    return "".join(
        line if _line_ending(line) else f"{line}\n\\ No newline at end of file\n" for line in diff_lines
    )


def edit_size(old_func: str, new_func: str) -> int:
    """How many lines a fix changes: a modified line counts once, as does each added or removed line.

    Indentation of the whole function, blank lines and trailing whitespace do not count.
    """
    matcher = difflib.SequenceMatcher(
        None, _significant_lines(old_func), _significant_lines(new_func), autojunk=False
    )
    return sum(
        max(old_end - old_start, new_end - new_start)
        for tag, old_start, old_end, new_start, new_end in matcher.get_opcodes()
        if tag != "equal"
    )


def dedent_code(code: str) -> str:
    """``code`` with ``\\n`` line endings, without blank lines around it, and with the indentation of its
    first statement removed from every line that has it; ends with ``\\n`` unless empty.

    Lines inside multi-line strings are left alone, since their leading whitespace is part of the string.
    """
    lines = [_without_ending(line) for line in _split_lines(code)]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    inside_strings = _string_continuation_rows("\n".join(lines))
    statement_indents = (
        _leading_whitespace(line)
        for row, line in enumerate(lines, start=1)
        if row not in inside_strings and not line.lstrip().startswith("#")
    )
    margin = next(statement_indents, "")
    dedented = [
        line if row in inside_strings else line.removeprefix(margin) if line.strip() else ""
        for row, line in enumerate(lines, start=1)
    ]
    return "".join(f"{line}\n" for line in dedented)


def _parse_source(source: str) -> ast.Module:
    try:
        return parse_python(source)
    except SyntaxError as error:
        raise SourceSyntaxError(error.msg, error.lineno, error.offset) from error
    except (ValueError, MemoryError, RecursionError) as error:  # unencodable text, absurd nesting
        raise SourceSyntaxError(str(error) or type(error).__name__, None, None) from error


def _error_text(error: Exception) -> str:
    if isinstance(error, SyntaxError):
        return f"{error.msg} (line {error.lineno})"
    return str(error) or type(error).__name__


def _collect_spans(
    node: ast.AST, class_path: tuple[str, ...], lines: list[str], spans: list[FunctionSpan]
) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _FUNCTION_NODES):
            spans.append(_span_of(child, class_path, lines))
        elif isinstance(child, ast.ClassDef):
            _collect_spans(child, (*class_path, child.name), lines, spans)
        elif isinstance(child, _BLOCK_NODES):
            _collect_spans(child, class_path, lines, spans)


def _span_of(
    node: ast.FunctionDef | ast.AsyncFunctionDef, class_path: tuple[str, ...], lines: list[str]
) -> FunctionSpan:
    return FunctionSpan(
        name=node.name,
        qualname=".".join((*class_path, node.name)),
        start_line=min([decorator.lineno for decorator in node.decorator_list], default=node.lineno),
        def_line=node.lineno,
        end_line=node.end_lineno or node.lineno,
        # Only whitespace precedes a def, so the byte offset is also the character offset.
        indent=lines[node.lineno - 1][: node.col_offset],
        is_async=isinstance(node, ast.AsyncFunctionDef),
    )


def _describe(spans: list[FunctionSpan]) -> str:
    if not spans:
        return "the source defines no functions"
    return "the source defines: " + ", ".join(
        f"{span.qualname} (lines {span.start_line}-{span.end_line})" for span in spans
    )


def _replacement_lines(new_function_source: str, name: str, old_decorators: list[str]) -> list[str]:
    """The replacement's dedented lines, with the old decorators put back when it has none of its own."""
    code = dedent_code(new_function_source)
    try:
        tree = parse_python(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as error:
        raise SpliceError(f"the new function does not parse: {_error_text(error)}") from error
    if not all(isinstance(statement, _FUNCTION_NODES) for statement in tree.body):
        raise SpliceError("the replacement may only contain function definitions")
    definitions = [
        statement
        for statement in tree.body
        if isinstance(statement, _FUNCTION_NODES) and statement.name == name
    ]
    if not definitions:
        raise SpliceError(f"the replacement does not define {name}")
    new_lines = code.split("\n")[:-1]
    target = definitions[-1]  # a later definition wins, as at import time
    if not target.decorator_list:
        new_lines[target.lineno - 1 : target.lineno - 1] = old_decorators
    return new_lines


def _indent_lines(lines: list[str], indent: str) -> list[str]:
    inside_strings = _string_continuation_rows("\n".join(lines))
    return [
        line if row in inside_strings or not line else f"{indent}{line}"
        for row, line in enumerate(lines, start=1)
    ]


def _string_continuation_rows(code: str) -> set[int]:
    """1-based rows that begin inside a string literal started on an earlier row."""
    rows: set[int] = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(code).readline):
            if token.type in _STRING_TOKEN_TYPES and token.end[0] > token.start[0]:
                rows.update(range(token.start[0] + 1, token.end[0] + 1))
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass  # broken code: the rows found so far are the best guess; the parse afterwards reports the error
    return rows


def _significant_lines(code: str) -> list[str]:
    return [line.rstrip() for line in dedent_code(code).split("\n") if line.strip()]


def _split_lines(text: str) -> list[str]:
    """Lines with their endings kept, splitting only where Python's parser does."""
    return _LINE_RE.findall(text)


def _line_ending(line: str) -> str:
    match = _LINE_ENDING_RE.search(line)
    return match.group() if match else ""


def _first_line_ending(lines: list[str]) -> str:
    return next((ending for ending in map(_line_ending, lines) if ending), "")


def _without_ending(line: str) -> str:
    return line[: len(line) - len(_line_ending(line))]


def _leading_whitespace(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t\f"))]
