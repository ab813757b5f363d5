import pytest

from nextls.splice import (
    AmbiguousFunctionError,
    FunctionNotFoundError,
    FunctionSpan,
    SourceSyntaxError,
    SpliceError,
    edit_size,
    find_function,
    function_source,
    list_functions,
    replace_function,
    unified_diff,
)

MODULE = """\
import functools


def top(x):
    def inner(y):
        return y
    return inner(x)


class Shape:
    @functools.cache
    @staticmethod
    def area(side):
        return side * side

    async def fetch(self):
        return await self.load()

    class Meta:
        def describe(self):
            return "meta"
    # a comment after the body is not part of describe


if True:
    def conditional():
        return 1
"""


def span(name: str, qualname: str, start: int, def_line: int, end: int, indent: str, is_async: bool = False):
    return FunctionSpan(name, qualname, start, def_line, end, indent, is_async)


def test_list_functions_covers_module_functions_methods_and_nested_classes_but_not_inner_functions():
    assert list_functions(MODULE) == [
        span("top", "top", 4, 4, 7, ""),
        span("area", "Shape.area", 11, 13, 14, "    "),
        span("fetch", "Shape.fetch", 16, 16, 17, "    ", is_async=True),
        span("describe", "Shape.Meta.describe", 20, 20, 21, "        "),
        span("conditional", "conditional", 26, 26, 27, "    "),
    ]


@pytest.mark.parametrize(
    ("target", "qualname"),
    [
        ("top", "top"),
        ("area", "Shape.area"),
        ("Shape.area", "Shape.area"),
        ("Meta.describe", "Shape.Meta.describe"),
        ("Shape.Meta.describe", "Shape.Meta.describe"),
        (11, "Shape.area"),  # first decorator line
        (12, "Shape.area"),  # second decorator line
        (14, "Shape.area"),
        (5, "top"),  # inside the inner function: the enclosing function is what gets fixed
        (17, "Shape.fetch"),
    ],
)
def test_find_function_by_name_qualname_or_line(target: str | int, qualname: str):
    assert find_function(MODULE, target).qualname == qualname


@pytest.mark.parametrize("line", [1, 9, 15, 22, 100])
def test_a_line_outside_every_function_is_not_found(line: int):
    with pytest.raises(FunctionNotFoundError) as raised:
        find_function(MODULE, line)
    assert str(raised.value) == (
        f"line {line} is not inside any function; the source defines: top (lines 4-7), Shape.area (lines 11-14),"
        " Shape.fetch (lines 16-17), Shape.Meta.describe (lines 20-21), conditional (lines 26-27)"
    )
    assert [found.qualname for found in raised.value.available] == [
        "top",
        "Shape.area",
        "Shape.fetch",
        "Shape.Meta.describe",
        "conditional",
    ]


def test_an_unknown_name_lists_the_functions_there_are():
    with pytest.raises(
        FunctionNotFoundError, match=r"^no function named 'inner'; the source defines: top \(lines 4-7\)"
    ):
        find_function(MODULE, "inner")
    with pytest.raises(LookupError, match=r"^no function named 'f'; the source defines no functions$"):
        find_function("x = 1\n", "f")


AMBIGUOUS = """\
class A:
    def f(self):
        return 1


class B:
    def f(self):
        return 2
"""


def test_a_name_shared_by_two_methods_is_ambiguous():
    with pytest.raises(AmbiguousFunctionError) as raised:
        find_function(AMBIGUOUS, "f")
    assert str(raised.value) == "'f' is ambiguous; name one of: A.f (line 2), B.f (line 7)"
    assert [found.qualname for found in raised.value.available] == ["A.f", "B.f"]
    assert isinstance(raised.value, FunctionNotFoundError)
    assert find_function(AMBIGUOUS, "B.f").def_line == 7


def test_a_module_level_function_wins_over_a_method_of_the_same_name():
    source = AMBIGUOUS + "\n\ndef f():\n    return 3\n"
    assert find_function(source, "f") == span("f", "f", 11, 11, 12, "")


def test_source_that_does_not_parse():
    with pytest.raises(SourceSyntaxError) as raised:
        find_function("def f(:\n    pass\n", "f")
    assert (raised.value.line, raised.value.column) == (1, 7)
    assert raised.value.message == "invalid syntax"
    assert str(raised.value) == "the source does not parse: invalid syntax (line 1, column 7)"


def test_replace_a_method_reindents_it_and_keeps_the_decorators_the_model_dropped():
    new = "def area(side):\n    return side ** 2\n"
    assert replace_function(MODULE, find_function(MODULE, "area"), new) == MODULE.replace(
        "        return side * side\n", "        return side ** 2\n"
    )


def test_replace_uses_the_new_decorators_when_it_has_some():
    new = "@functools.lru_cache\ndef area(side):\n    return side ** 2\n"
    assert replace_function(MODULE, find_function(MODULE, "area"), new) == MODULE.replace(
        "    @functools.cache\n    @staticmethod\n    def area(side):\n        return side * side\n",
        "    @functools.lru_cache\n    def area(side):\n        return side ** 2\n",
    )


def test_replace_an_indented_model_answer_in_a_nested_class():
    new = "    def describe(self):\n        return 'META'\n"
    assert replace_function(MODULE, find_function(MODULE, "describe"), new) == MODULE.replace(
        '            return "meta"\n', "            return 'META'\n"
    )


def test_replace_keeps_crlf_and_the_missing_newline_at_the_end():
    source = "import os\r\n\r\n\r\ndef f(x):\r\n    return x\r\n\r\n\r\ndef g():\r\n    return 1"
    first = replace_function(source, find_function(source, "f"), "def f(x):\n    y = x + 1\n    return y\n")
    assert (
        first
        == "import os\r\n\r\n\r\ndef f(x):\r\n    y = x + 1\r\n    return y\r\n\r\n\r\ndef g():\r\n    return 1"
    )
    second = replace_function(first, find_function(first, "g"), "def g():\r\n    return 2\r\n")
    assert (
        second
        == "import os\r\n\r\n\r\ndef f(x):\r\n    y = x + 1\r\n    return y\r\n\r\n\r\ndef g():\r\n    return 2"
    )


def test_replace_in_a_tab_indented_file():
    source = "class A:\n\tdef f(self):\n\t\treturn 1\n\n\tdef g(self):\n\t\treturn 2\n"
    result = replace_function(source, find_function(source, "A.f"), "def f(self):\n    return 3\n")
    assert result == "class A:\n\tdef f(self):\n\t    return 3\n\n\tdef g(self):\n\t\treturn 2\n"


def test_replace_an_async_one_line_function():
    source = "async def f(): return 1\nx = 2\n"
    new = "async def f():\n    return 2\n"
    assert replace_function(source, find_function(source, 1), new) == "async def f():\n    return 2\nx = 2\n"


def test_lines_inside_multiline_strings_are_neither_dedented_nor_reindented():
    source = 'class A:\n    def f(self):\n        return """x\n  y"""\n'
    new = '    def f(self):\n        return """x\n  z"""\n'
    assert replace_function(source, find_function(source, "f"), new) == source.replace("  y", "  z")


def test_replace_inserts_helpers_that_come_with_the_function():
    source = "def f(x):\n    return x\n\n\ndef g():\n    pass\n"
    new = "def _double(x):\n    return 2 * x\n\n\ndef f(x):\n    return _double(x)\n"
    assert replace_function(source, find_function(source, "f"), new) == new + "\n\ndef g():\n    pass\n"


@pytest.mark.parametrize(
    ("new", "message"),
    [
        ("def g(x):\n    return x\n", "the replacement does not define f"),
        ("import os\n\ndef f(x):\n    return os\n", "the replacement may only contain function definitions"),
        ("def f(x):\n    return x +\n", r"the new function does not parse: invalid syntax \(line 2\)$"),
    ],
)
def test_replacements_that_cannot_go_in(new: str, message: str):
    source = "def f(x):\n    return x\n"
    with pytest.raises(SpliceError, match=f"^{message}"):
        replace_function(source, find_function(source, "f"), new)


def test_a_stale_span_is_refused():
    source = "def f(x):\n    return x\n"
    stale = find_function(source, "f")
    edited = "# header\n" + source
    with pytest.raises(SpliceError, match=r"^f \(lines 1-2\) is not a function of this source"):
        replace_function(edited, stale, "def f(x):\n    return 1\n")


def test_function_source_is_dedented_with_decorators():
    assert function_source(MODULE, find_function(MODULE, "area")) == (
        "@functools.cache\n@staticmethod\ndef area(side):\n    return side * side\n"
    )
    crlf = "class A:\r\n    def f(self):\r\n        return 1"
    assert function_source(crlf, find_function(crlf, "f")) == "def f(self):\n    return 1\n"


def test_unified_diff():
    old = "a\nb\nc"
    new = "a\nB\nc"
    assert unified_diff(old, new, "pkg/m.py") == (
        "--- a/pkg/m.py\n+++ b/pkg/m.py\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n\\ No newline at end of file\n"
    )
    assert unified_diff(old, old, "pkg/m.py") == ""


@pytest.mark.parametrize(
    ("new", "size"),
    [
        ("def f(x):\n    y = x\n    return y\n", 0),
        # Indenting the whole function, blank lines and trailing spaces change nothing.
        ("    def f(x):\n\n        y = x   \n        return y\n", 0),
        ("def f(x):\n    y = x + 1\n    return y\n", 1),
        ("def f(x):\n    y = x\n    y += 1\n    return y\n", 1),
        ("def f(x):\n    return x\n", 2),
        ("def f(x):\n    z = x * 2\n    z -= 1\n    return z\n", 3),
    ],
)
def test_edit_size_counts_changed_lines(new: str, size: int):
    assert edit_size("def f(x):\n    y = x\n    return y\n", new) == size
