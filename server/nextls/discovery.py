"""Find the tests that exercise a function: doctests, plain asserts, pytest tests in the workspace.

Discovery is static (it reads source, it runs nothing), so it is cheap enough to repeat on every save.
A test counts when it names the function: an assert that calls it, a pytest test whose body mentions it
in a file that imports the function's module (or lives in the same file).
"""

from __future__ import annotations

import ast
import functools
import io
import os
import re
import tokenize
from collections.abc import Iterable, Iterator
from pathlib import Path

from nextls.runner import TargetModule, TestCase
from nextls.splice import FunctionSpan, parse_python

ROOT_MARKERS = ("pyproject.toml", "setup.cfg", "setup.py", "pytest.ini", "tox.ini", ".git")
SKIPPED_DIRS = {".git", ".hg", ".venv", "venv", "env", "node_modules", "__pycache__", "site-packages", "build",
                "dist", ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
MAX_TEST_FILES = 2000
_FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")  # Python's line breaks, kept (as the ast module splits)


def find_workspace_root(path: Path) -> Path:
    """The nearest folder above `path` that looks like a project root, else the file's folder."""
    path = path.resolve()
    for folder in [path.parent, *path.parent.parents]:
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    return path.parent


def module_name_for(path: Path) -> tuple[str, Path]:
    """The dotted name the file is imported as, and the folder that must be on sys.path for it."""
    path = path.resolve()
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").exists():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts), folder


class _Segments:
    """`ast.get_source_segment` for many nodes of one source: the stdlib splits the whole source into lines
    on every call, which made discovery quadratic in the file's size; here they are split once."""

    def __init__(self, source: str) -> None:
        self.lines = _LINE.findall(source)

    def __call__(self, node: ast.AST) -> str:
        first, last = node.lineno - 1, node.end_lineno - 1  # column offsets count UTF-8 bytes
        if first == last:
            return self.lines[first].encode()[node.col_offset: node.end_col_offset].decode()
        return "".join([self.lines[first].encode()[node.col_offset:].decode(), *self.lines[first + 1: last],
                        self.lines[last].encode()[: node.end_col_offset].decode()])


def _names_in(node: ast.AST) -> set[str]:
    """Every name and attribute a test mentions: a test counts for each function whose name is among them."""
    return {child.id if isinstance(child, ast.Name) else child.attr for child in ast.walk(node)
            if isinstance(child, (ast.Name, ast.Attribute))}


def _module_level_asserts(tree: ast.Module) -> Iterator[ast.stmt]:
    """Asserts at the top of the module or inside its `if __name__ == "__main__":` block, and loops of
    asserts there (`for case in cases: assert f(case) == ...`, HumanEval's style), each loop one test."""
    for statement in tree.body:
        if isinstance(statement, ast.If) and "__main__" in ast.unparse(statement.test):
            yield from (inner for inner in statement.body if _is_assert_test(inner))
        elif _is_assert_test(statement):
            yield statement


def _is_assert_test(statement: ast.stmt) -> bool:
    if isinstance(statement, ast.Assert):
        return True
    return isinstance(statement, (ast.For, ast.While)) and any(
        isinstance(node, ast.Assert) for node in ast.walk(statement))


def _assert_cases(source: str, tree: ast.Module, file: Path, root: Path) -> Iterator[tuple[TestCase, set[str]]]:
    """The file's module-level asserts, each with the names it mentions."""
    label, segment = _relative(file, root), _Segments(source)
    for node in _module_level_asserts(tree):
        yield (TestCase(id=f"assert:{label}:{node.lineno}", kind="assert", source=segment(node), file=str(file),
                        line=node.lineno), _names_in(node))


def _relative(file: Path, root: Path) -> str:
    try:
        return file.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return file.name


def _doctest(function: ast.AST | None, span: FunctionSpan, file: Path) -> list[TestCase]:
    docstring = ast.get_docstring(function, clean=False) if function else None
    if not docstring or ">>>" not in docstring:
        return []
    first = function.body[0]
    return [TestCase(id=f"doctest:{span.qualname}", kind="doctest", source=docstring, file=str(file),
                     line=first.lineno)]


def _imports_module(tree: ast.Module, module_name: str) -> bool:
    stem = module_name.rsplit(".", 1)[-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(alias.name.rsplit(".", 1)[-1] == stem or alias.name == module_name
                                                for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom):
            if node.module and (node.module == module_name or node.module.rsplit(".", 1)[-1] == stem):
                return True
            if any(alias.name == stem for alias in node.names):  # from package import module
                return True
    return False


def _pytest_functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(node-id suffix, function) for the tests pytest would collect by its default rules."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for inner in node.body:
                if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)) and inner.name.startswith("test"):
                    yield f"{node.name}::{inner.name}", inner


def _pytest_cases(source: str, tree: ast.Module, file: Path, root: Path) -> Iterator[tuple[TestCase, set[str]]]:
    """The file's pytest tests, each with the names it mentions."""
    label, segment = _relative(file, root), _Segments(source)
    for suffix, node in _pytest_functions(tree):
        yield (TestCase(id=f"{label}::{suffix}", kind="pytest", source=segment(node), file=str(file),
                        line=node.lineno), _names_in(node))


def decode_source(data: bytes) -> str:
    """A Python file's text: its coding cookie or BOM honoured, UTF-8 otherwise.

    Undecodable bytes become U+FFFD rather than hiding the file's tests: they still run, and Python's
    own error about the file is then what the user sees.
    """
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError:  # an unknown or contradictory coding cookie
        encoding = "utf-8"
    return data.decode(encoding, errors="replace")


@functools.lru_cache(maxsize=8)
def module_tree(source: str, filename: str) -> ast.Module:
    """`source` parsed once per text (discovery and `target_module` share it; callers must not change it)."""
    return parse_python(source, filename)


@functools.lru_cache(maxsize=256)
def _parsed_test_file(path: str, mtime_ns: int, size: int) -> tuple[str, ast.Module] | None:
    """A workspace test file's text and tree, parsed once per version on disk (keyed by mtime and size)."""
    try:
        source = decode_source(Path(path).read_bytes())
        return source, parse_python(source, path)
    except (OSError, SyntaxError, ValueError):
        return None  # an unreadable or broken test file is pytest's to report, not ours


def _test_files(root: Path) -> Iterator[Path]:
    count = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        for file in sorted(files):
            if file.endswith(".py") and (file.startswith("test_") or file.endswith("_test.py")):
                count += 1
                if count > MAX_TEST_FILES:
                    return
                yield Path(folder) / file


def _workspace_test_cases(file: Path, root: Path, module_name: str) -> Iterator[tuple[TestCase, set[str]]]:
    """The pytest tests of the workspace's other test files that import the function's module."""
    for test_file in _test_files(root):
        if test_file.resolve() == file.resolve():
            continue
        try:
            stat = test_file.stat()
        except OSError:
            continue
        parsed = _parsed_test_file(str(test_file), stat.st_mtime_ns, stat.st_size)
        if parsed is not None and _imports_module(parsed[1], module_name):
            yield from _pytest_cases(*parsed, test_file, root)


def discover_all_tests(file: Path, source: str, spans: Iterable[FunctionSpan], *, root: Path | None = None
                       ) -> dict[str, list[TestCase]]:
    """The tests of each function at `spans` in `file` (whose text is `source`), by qualname, in one pass.

    The file and each workspace test file are parsed once, and each test's names are collected once: the
    work grows with the size of the code, not with the number of functions times its size. A function's
    tests come in this order: its doctest, the file's asserts, the file's pytest tests, the workspace's.
    """
    spans = list(spans)
    root = root or find_workspace_root(file)
    tree = module_tree(source, str(file))
    module_name, _ = module_name_for(file)
    found: dict[str, list[TestCase]] = {span.qualname: [] for span in spans}
    by_name: dict[str, list[FunctionSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    functions = {node.lineno: node for node in ast.walk(tree) if isinstance(node, _FUNCTION_NODES)}
    for span in spans:
        found[span.qualname] += _doctest(functions.get(span.def_line), span, file)
    sources = (_assert_cases(source, tree, file, root), _pytest_cases(source, tree, file, root),
               _workspace_test_cases(file, root, module_name))
    for cases in sources:
        for test, names in cases:
            for name in names & by_name.keys():
                for span in by_name[name]:
                    found[span.qualname].append(test)
    return found


def discover_tests(file: Path, source: str, span: FunctionSpan, *, root: Path | None = None,
                   tests_file: Path | None = None) -> list[TestCase]:
    """All tests of the function at `span` in `file` (whose text is `source`).

    With `tests_file`, only that file's tests count: its pytest tests, or else its asserts (those
    naming the function, or all of them when none does, as in MBPP's test lists).
    """
    root = root or find_workspace_root(file)
    if tests_file is None:
        return discover_all_tests(file, source, [span], root=root)[span.qualname]
    tests_source = decode_source(tests_file.read_bytes())
    tests_tree = parse_python(tests_source, str(tests_file))
    found = [test for test, names in _pytest_cases(tests_source, tests_tree, tests_file, root) if span.name in names]
    if found:
        return found
    asserts = list(_assert_cases(tests_source, tests_tree, tests_file, root))
    return [test for test, names in asserts if span.name in names] or [test for test, _ in asserts]


def target_module(file: Path, source: str, tests: list[TestCase], *, root: Path | None = None) -> TargetModule:
    """The module the child loads: `source` with the file's own test asserts blanked out.

    The asserts are the tests; left in, importing the module would run (and fail on) them all at once.
    They are found again in `source` by their text, since a spliced-in fix can move them; blanking keeps
    every other line where it was, so traces and tracebacks keep their line numbers.
    """
    own_asserts = {test.source for test in tests
                   if test.kind == "assert" and Path(test.file).resolve() == file.resolve()}
    lines = source.splitlines(keepends=True)
    if own_asserts:
        segment = _Segments(source)
        for node in _module_level_asserts(module_tree(source, str(file))):
            if segment(node) in own_asserts:
                first = lines[node.lineno - 1]
                lines[node.lineno - 1] = first[: len(first) - len(first.lstrip())] + "pass\n"
                for index in range(node.lineno, node.end_lineno):
                    lines[index] = "\n"
    module_name, import_root = module_name_for(file)
    return TargetModule(filename=str(file.resolve()), source="".join(lines),
                        root=str((root or find_workspace_root(file)).resolve()), module_name=module_name,
                        sys_path=(str(import_root),))
