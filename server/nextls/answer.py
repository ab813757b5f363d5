"""Turn a model's answer (a rationale, then the fixed function in a fenced code block) into a Candidate.

Decisions:

* Code blocks are chosen by what they define, not by their language tag (```python, ```py, ``` ...).
  Without any fence, the answer's code is either the whole answer (when it parses and defines a function)
  or each bare ``def`` with its indented body, together with the decorators above it, the functions right
  after it (blank lines apart) and the imports just above it.
* Among the blocks, the last one defining the function wins (at module level or as a method of a class in
  it); else the last one defining exactly one module-level function, which is then renamed back. Blocks
  that define nothing (tests, usage examples) are never chosen.
* ``Candidate.code`` holds the function (decorators included, dedented, ``\\n`` line endings) preceded by
  the module-level functions of its block that it uses, directly or through each other, in block order:
  a model that factors a helper out means it to be part of the fix. Module-level constants and classes
  are left out. A method taken out of a class comes alone.
* ``Candidate.imports`` holds the block's module-level imports that the code uses, one statement each,
  trimmed to the names used (``from m import a``, ``import os``), for the verifier to add to the file if
  missing. ``from __future__`` imports are dropped: they are only legal at the top of a file.
* An unterminated fence (the answer hit max_tokens) is used when what is there parses.
"""

from __future__ import annotations

import ast
import keyword
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from nextls.patch import PatchError, apply_patch, looks_like_patch
from nextls.splice import dedent_code, parse_python

_FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)
_LINE_BREAK_RE = re.compile(r"\r\n|\r")
_FENCE_OPEN_RE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[^`]*$")
_DEF_RE = re.compile(r"^(?P<indent>[ \t]*)(?:async[ \t]+)?def[ \t]+(?P<name>[^\W\d]\w*)[ \t]*\(")
_DECORATOR_RE = re.compile(r"^[ \t]*@[ \t]*[^\W\d]")
_IMPORT_START_RE = re.compile(r"^[ \t]*(?:import|from)[ \t]")
CUT_OFF = "answer cut off inside the code block"
NO_CODE = "no code in the answer"


@dataclass(frozen=True)
class Candidate:
    """A proposed fix, or why the answer holds none (``reject_reason``)."""

    rationale: str
    code: str | None
    reject_reason: str | None
    renamed_from: str | None = None
    imports: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return self.code is not None and self.reject_reason is None


@dataclass(frozen=True)
class _Block:
    code: str  # dedented
    first_line: int  # 0-based line of the answer where the block (its opening fence) starts
    truncated: bool
    raw: str = ""  # a fenced block's lines as written (a patch's prefixes are its first column)


@dataclass(frozen=True)
class _ParsedBlock:
    block: _Block
    tree: ast.Module | None
    syntax_error: str | None
    top_level_functions: tuple[str, ...]
    all_functions: tuple[str, ...]  # module-level functions and methods


def parse_answer(text: str, function_name: str, original: str | None = None) -> Candidate:
    """The fix for ``function_name`` (a name, or a qualname whose last part is used) proposed by ``text``.

    With ``original`` (the buggy function's source), an answer whose last code block is a patch
    (``nextls.patch``: the lines to remove and to add) gives ``original`` patched.
    Never raises: every answer gives either a usable candidate or a reject reason.
    """
    lines = _LINE_BREAK_RE.sub("\n", text).split("\n")
    name = function_name.rsplit(".", 1)[-1]
    if not name.isidentifier() or keyword.iskeyword(name):
        return _rejected(lines, 0, f"{function_name!r} is not a valid function name")
    blocks = [_parse_block(block) for block in _code_blocks(lines)]
    if not blocks:
        return _rejected(lines, len(lines), NO_CODE)
    if original is not None and looks_like_patch(blocks[-1].block.raw):
        return _patched(blocks[-1].block, original, lines)
    defining = _last(blocks, lambda parsed: name in parsed.all_functions)
    if defining is not None:
        return _candidate(defining, name, lines)
    single_function = _last(blocks, lambda parsed: len(parsed.top_level_functions) == 1)
    if single_function is not None:
        return _candidate(single_function, name, lines)
    cut_off = _last(blocks, lambda parsed: parsed.block.truncated)
    if cut_off is not None:
        return _rejected(lines, cut_off.block.first_line, CUT_OFF)
    broken = _last(blocks, lambda parsed: parsed.tree is None)
    if broken is not None:
        return _rejected(
            lines, broken.block.first_line, f"syntax error in the proposed fix: {broken.syntax_error}"
        )
    defined = sorted({function for parsed in blocks for function in parsed.top_level_functions})
    also = f" (it defines {', '.join(defined)})" if defined else ""
    return _rejected(
        lines, blocks[0].block.first_line, f"the code in the answer does not define {name}{also}"
    )


def split_rationale(text: str) -> str:
    """The prose before the answer's first code block (all of it when there is no code), stripped."""
    lines = _LINE_BREAK_RE.sub("\n", text).split("\n")
    blocks = _code_blocks(lines)
    return _prose_before(lines, blocks[0].first_line if blocks else len(lines))


def _candidate(parsed: _ParsedBlock, name: str, lines: list[str]) -> Candidate:
    rationale = _prose_before(lines, parsed.block.first_line)
    if parsed.tree is None:
        reason = (
            CUT_OFF if parsed.block.truncated else f"syntax error in the proposed fix: {parsed.syntax_error}"
        )
        return Candidate(rationale, code=None, reject_reason=reason)
    renamed_from = None
    if name not in parsed.all_functions:
        renamed_from = parsed.top_level_functions[0]
        parsed = _parse_block(
            replace(parsed.block, code=_renamed(parsed.block.code, parsed.tree, renamed_from, name))
        )
        # Renaming can miss a name split from its "def" by a backslash.
        if parsed.tree is None or name not in parsed.all_functions:
            return Candidate(rationale, code=None, reject_reason=f"could not rename {renamed_from} to {name}")
    function_code, imports = _extract(parsed.block.code, parsed.tree, name)
    return Candidate(rationale, function_code, reject_reason=None, renamed_from=renamed_from, imports=imports)


def _patched(block: _Block, original: str, lines: list[str]) -> Candidate:
    rationale = _prose_before(lines, block.first_line)
    try:
        code = apply_patch(dedent_code(original), block.raw)
    except PatchError as error:
        reason = CUT_OFF if block.truncated else f"the patch does not apply: {error}"
        return Candidate(rationale, code=None, reject_reason=reason)
    tree = _parse(code)
    if isinstance(tree, str):
        return Candidate(rationale, code=None, reject_reason=f"syntax error in the patched function: {tree}")
    return Candidate(rationale, code, reject_reason=None)


def _rejected(lines: list[str], first_code_line: int, reason: str) -> Candidate:
    return Candidate(_prose_before(lines, first_code_line), code=None, reject_reason=reason)


def _prose_before(lines: list[str], line: int) -> str:
    return "\n".join(lines[:line]).strip()


def _last(blocks: list[_ParsedBlock], wanted: Callable[[_ParsedBlock], bool]) -> _ParsedBlock | None:
    return next((parsed for parsed in reversed(blocks) if wanted(parsed)), None)


def _code_blocks(lines: list[str]) -> list[_Block]:
    return _fenced_blocks(lines) or _unfenced_blocks(lines)


def _fenced_blocks(lines: list[str]) -> list[_Block]:
    blocks = []
    index = 0
    while index < len(lines):
        opening = _FENCE_OPEN_RE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        closing_re = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = next((row for row in range(index + 1, len(lines)) if closing_re.match(lines[row])), len(lines))
        raw = "\n".join(lines[index + 1 : end])
        blocks.append(_Block(dedent_code(raw), index, truncated=end == len(lines), raw=raw))
        index = end + 1
    return blocks


def _unfenced_blocks(lines: list[str]) -> list[_Block]:
    whole = _parse_block(_Block(dedent_code("\n".join(lines)), 0, truncated=False))
    if whole.tree is not None and whole.all_functions:
        return [whole.block]
    blocks = []
    index = 0
    while index < len(lines):
        if _DEF_RE.match(lines[index]) is None:
            index += 1
            continue
        start, end = _region_start(lines, index), _region_end(lines, index)
        blocks.append(_Block(dedent_code("\n".join(lines[start:end])), start, truncated=False))
        index = end
    return blocks


def _region_start(lines: list[str], def_index: int) -> int:
    """The first line of the decorators and imports right above a bare ``def``."""
    width = _indent_width(lines[def_index])
    start = def_index
    while start > 0 and _DECORATOR_RE.match(lines[start - 1]) and _indent_width(lines[start - 1]) == width:
        start -= 1
    index = start
    while index > 0:  # imports sit above the function, blank lines apart at most
        previous = lines[index - 1]
        if previous.strip() and not (_is_import(previous) and _indent_width(previous) == width):
            break
        index -= 1
        start = index if previous.strip() else start
    return start


def _region_end(lines: list[str], def_index: int) -> int:
    """The line after a bare ``def``'s body and the decorated functions that follow it, blank lines apart."""
    width = _indent_width(lines[def_index])
    end = index = def_index
    while index < len(lines):
        while (
            index < len(lines) and _DECORATOR_RE.match(lines[index]) and _indent_width(lines[index]) == width
        ):
            index += 1
        if index == len(lines) or _DEF_RE.match(lines[index]) is None or _indent_width(lines[index]) != width:
            break
        index = end = _definition_end(lines, index, width)
        while index < len(lines) and not lines[index].strip():
            index += 1
    return end


def _definition_end(lines: list[str], def_index: int, width: int) -> int:
    index, depth = def_index, 0
    while index < len(lines):  # the signature may go on over several lines inside brackets
        depth += sum(map(lines[index].count, "([{")) - sum(map(lines[index].count, ")]}"))
        index += 1
        if depth <= 0:
            break
    end = index
    while index < len(lines) and (not lines[index].strip() or _indent_width(lines[index]) > width):
        index += 1
        end = index if lines[index - 1].strip() else end
    return end


def _is_import(line: str) -> bool:
    if _IMPORT_START_RE.match(line) is None:
        return False
    tree = _parse(line.strip())
    return not isinstance(tree, str) and isinstance(tree.body[0], (ast.Import, ast.ImportFrom))


def _indent_width(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _parse_block(block: _Block) -> _ParsedBlock:
    tree = _parse(block.code)
    if isinstance(tree, str):
        # Still say what it tries to define, to pick the block whose error to report.
        definitions = [match for match in map(_DEF_RE.match, block.code.split("\n")) if match is not None]
        top_level = tuple(match["name"] for match in definitions if not match["indent"])
        return _ParsedBlock(block, None, tree, top_level, tuple(match["name"] for match in definitions))
    top_level = tuple(statement.name for statement in tree.body if isinstance(statement, _FUNCTION_NODES))
    methods = tuple(method.name for method in _methods(tree.body))
    return _ParsedBlock(block, tree, None, top_level, top_level + methods)


def _parse(code: str) -> ast.Module | str:
    """The module, or the error that keeps it from parsing, as ``<message> (line N)``."""
    try:
        return parse_python(code)
    except SyntaxError as error:
        return f"{error.msg} (line {error.lineno})" if error.lineno else error.msg
    except (ValueError, MemoryError, RecursionError) as error:  # unencodable text, absurd nesting
        return str(error) or type(error).__name__


def _methods(statements: list[ast.stmt]) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The methods of the classes among ``statements``, nested classes included, in source order."""
    for statement in statements:
        if isinstance(statement, ast.ClassDef):
            for member in statement.body:
                if isinstance(member, _FUNCTION_NODES):
                    yield member
            yield from _methods(statement.body)


def _renamed(code: str, tree: ast.Module, old_name: str, new_name: str) -> str:
    """``code`` with its one module-level function and the names referring to it inside renamed."""
    function = next(statement for statement in tree.body if isinstance(statement, _FUNCTION_NODES))
    lines = code.split("\n")
    references = [node for node in ast.walk(function) if isinstance(node, ast.Name) and node.id == old_name]
    # Right to left, so that earlier columns on the same line stay valid.
    for node in sorted(references, key=lambda node: (node.lineno, node.col_offset), reverse=True):
        line = lines[node.lineno - 1]
        # ast columns count UTF-8 bytes; names inside f-strings may be misplaced before Python 3.12.
        column = len(line.encode()[: node.col_offset].decode(errors="replace"))
        if line[column : column + len(old_name)] == old_name:
            lines[node.lineno - 1] = line[:column] + new_name + line[column + len(old_name) :]
    def_line = function.lineno - 1
    lines[def_line] = re.sub(
        rf"^([ \t]*(?:async[ \t]+)?def[ \t]+){re.escape(old_name)}\b",
        lambda match: match[1] + new_name,
        lines[def_line],
    )
    return "\n".join(lines)


def _extract(code: str, tree: ast.Module, name: str) -> tuple[str, tuple[str, ...]]:
    """The function ``name`` with the module-level helpers it uses, and the imports they all need."""
    lines = code.split("\n")
    module_functions = {
        statement.name: statement for statement in tree.body if isinstance(statement, _FUNCTION_NODES)
    }
    target = module_functions.get(name)
    if target is None:
        parts = [next(method for method in reversed(list(_methods(tree.body))) if method.name == name)]
    else:
        parts = [*_helpers_used(target, module_functions), target]
    function_code = "\n\n".join(
        dedent_code("\n".join(lines[_first_line(part) - 1 : part.end_lineno])) for part in parts
    )
    used = {used_name for part in parts for used_name in _names_used(part)}
    return function_code, tuple(_needed_imports(tree, used))


def _helpers_used(
    target: ast.FunctionDef | ast.AsyncFunctionDef,
    module_functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef],
) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    helpers: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    pending = [target]
    while pending:
        for used in _names_used(pending.pop()):
            helper = module_functions.get(used)
            if helper is not None and helper is not target and used not in helpers:
                helpers[used] = helper
                pending.append(helper)
    return sorted(helpers.values(), key=_first_line)


def _needed_imports(tree: ast.Module, used: set[str]) -> Iterator[str]:
    for statement in tree.body:
        if isinstance(statement, ast.Import):
            aliases = [
                alias for alias in statement.names if (alias.asname or alias.name.split(".")[0]) in used
            ]
            if aliases:
                yield ast.unparse(ast.Import(names=aliases))
        elif isinstance(statement, ast.ImportFrom) and statement.module != "__future__":
            aliases = [
                alias
                for alias in statement.names
                if alias.name == "*" or (alias.asname or alias.name) in used
            ]
            if aliases:
                yield ast.unparse(
                    ast.ImportFrom(module=statement.module, names=aliases, level=statement.level)
                )


def _names_used(node: ast.AST) -> set[str]:
    return {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}


def _first_line(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    return min([decorator.lineno for decorator in function.decorator_list], default=function.lineno)
