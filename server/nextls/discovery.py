"""Find the tests that exercise a function: doctests, plain asserts, pytest tests in the workspace.

Discovery is static (it reads source, it runs nothing), so it is cheap enough to repeat on every save.
A test counts when it names the function: an assert that calls it, a pytest test whose body mentions it
in a file that imports the function's module (or lives in the same file).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

from nextls.runner import TargetModule, TestCase
from nextls.splice import FunctionSpan, parse_python

ROOT_MARKERS = ("pyproject.toml", "setup.cfg", "setup.py", "pytest.ini", "tox.ini", ".git")
SKIPPED_DIRS = {".git", ".hg", ".venv", "venv", "env", "node_modules", "__pycache__", "site-packages", "build",
                "dist", ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
MAX_TEST_FILES = 2000


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


def _mentions(node: ast.AST, name: str) -> bool:
    return any((isinstance(child, ast.Name) and child.id == name)
               or (isinstance(child, ast.Attribute) and child.attr == name) for child in ast.walk(node))


def _module_level_asserts(tree: ast.Module) -> Iterator[ast.Assert]:
    """Asserts at the top of the module or inside its `if __name__ == "__main__":` block."""
    for statement in tree.body:
        if isinstance(statement, ast.Assert):
            yield statement
        elif isinstance(statement, ast.If) and "__main__" in ast.unparse(statement.test):
            yield from (inner for inner in statement.body if isinstance(inner, ast.Assert))


def _assert_tests(source: str, tree: ast.Module, file: Path, name: str, root: Path,
                  keep_all_when_none: bool = False) -> list[TestCase]:
    asserts = list(_module_level_asserts(tree))
    chosen = [node for node in asserts if _mentions(node, name)] or (asserts if keep_all_when_none else [])
    label = _relative(file, root)
    return [TestCase(id=f"assert:{label}:{node.lineno}", kind="assert",
                     source=ast.get_source_segment(source, node) or ast.unparse(node), file=str(file),
                     line=node.lineno) for node in chosen]


def _relative(file: Path, root: Path) -> str:
    try:
        return file.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return file.name


def _doctest(tree: ast.Module, span: FunctionSpan, file: Path) -> list[TestCase]:
    function = _function_node(tree, span)
    docstring = ast.get_docstring(function, clean=False) if function else None
    if not docstring or ">>>" not in docstring:
        return []
    first = function.body[0]
    return [TestCase(id=f"doctest:{span.qualname}", kind="doctest", source=docstring, file=str(file),
                     line=first.lineno)]


def _function_node(tree: ast.Module, span: FunctionSpan) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno == span.def_line:
            return node
    return None


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


def _pytest_tests_in(file: Path, root: Path, name: str, module_name: str, same_file: bool,
                     source: str | None = None) -> list[TestCase]:
    try:
        source = source if source is not None else file.read_text(encoding="utf-8")
        tree = parse_python(source, str(file))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return []  # an unreadable or broken test file is pytest's to report, not ours
    if not same_file and not _imports_module(tree, module_name):
        return []
    label = _relative(file, root)
    return [TestCase(id=f"{label}::{suffix}", kind="pytest",
                     source=ast.get_source_segment(source, node) or ast.unparse(node), file=str(file),
                     line=node.lineno)
            for suffix, node in _pytest_functions(tree) if _mentions(node, name)]


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


def discover_tests(file: Path, source: str, span: FunctionSpan, *, root: Path | None = None,
                   tests_file: Path | None = None) -> list[TestCase]:
    """All tests of the function at `span` in `file` (whose text is `source`).

    With `tests_file`, only that file's tests count: its pytest tests, or else its asserts (those
    naming the function, or all of them when none does, as in MBPP's test lists).
    """
    root = root or find_workspace_root(file)
    tree = parse_python(source, str(file))
    module_name, _ = module_name_for(file)
    if tests_file is not None:
        tests_source = tests_file.read_text(encoding="utf-8")
        tests_tree = parse_python(tests_source, str(tests_file))
        found = _pytest_tests_in(tests_file, root, span.name, module_name, same_file=True, source=tests_source)
        return found or _assert_tests(tests_source, tests_tree, tests_file, span.name, root, keep_all_when_none=True)
    tests = _doctest(tree, span, file) + _assert_tests(source, tree, file, span.name, root)
    tests += _pytest_tests_in(file, root, span.name, module_name, same_file=True, source=source)
    for test_file in _test_files(root):
        if test_file.resolve() != file.resolve():
            tests += _pytest_tests_in(test_file, root, span.name, module_name, same_file=False)
    return tests


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
        for node in _module_level_asserts(parse_python(source, str(file))):
            if ast.get_source_segment(source, node) in own_asserts:
                first = lines[node.lineno - 1]
                lines[node.lineno - 1] = first[: len(first) - len(first.lstrip())] + "pass\n"
                for index in range(node.lineno, node.end_lineno):
                    lines[index] = "\n"
    module_name, import_root = module_name_for(file)
    return TargetModule(filename=str(file.resolve()), source="".join(lines),
                        root=str((root or find_workspace_root(file)).resolve()), module_name=module_name,
                        sys_path=(str(import_root),))
