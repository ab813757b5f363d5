import ast

from hypothesis import given, settings
from hypothesis import strategies as st

from nextls.answer import Candidate, parse_answer, split_rationale

FIXED = "def f(x):\n    return x + 1\n"


def fix(code: str = FIXED, rationale: str = "", **others: object) -> Candidate:
    return Candidate(rationale=rationale, code=code, reject_reason=None, **others)


def reject(reason: str, rationale: str = "") -> Candidate:
    return Candidate(rationale=rationale, code=None, reject_reason=reason)


def test_prose_then_a_python_block():
    answer = (
        "The loop stops one short.\nAdd one.\n\n```python\ndef f(x):\n    return x + 1\n```\n\nThat's it."
    )
    candidate = parse_answer(answer, "f")
    assert candidate == fix(rationale="The loop stops one short.\nAdd one.")
    assert candidate.usable


def test_language_tags_crlf_tabs_and_indented_blocks():
    assert parse_answer("Why.\r\n```py\r\ndef f(x):\r\n    return x + 1\r\n```\r\n", "f") == fix(
        rationale="Why."
    )
    assert parse_answer("```Python\n\tdef f(x):\n\t\treturn x\n```", "f") == fix("def f(x):\n\treturn x\n")
    assert parse_answer("1. Fix:\n   ```\n   def f(x):\n       return x + 1\n   ```", "f") == fix(
        rationale="1. Fix:"
    )
    assert parse_answer("~~~~\ndef f(x):\n    return x + 1\n~~~~", "f") == fix()


def test_a_bare_def_without_fences_runs_to_the_end_of_its_body():
    answer = (
        "Prose first.\n"
        "\n"
        "import math\n"
        "\n"
        "@cache\n"
        "def f(x,\n"
        "      y):\n"
        "    if x:\n"
        "\n"
        "        return math.floor(y)\n"
        "    return y\n"
        "\n"
        "That fixes it."
    )
    assert parse_answer(answer, "f") == fix(
        "@cache\ndef f(x,\n      y):\n    if x:\n\n        return math.floor(y)\n    return y\n",
        rationale="Prose first.",
        imports=("import math",),
    )


def test_an_answer_that_is_only_code():
    assert parse_answer("def f(x):\n    return x + 1\n\nprint(f(1))\n", "f") == fix()


def test_an_unterminated_fence_is_used_when_what_is_there_parses():
    assert parse_answer("Why.\n```python\ndef f(x):\n    return x + 1\n", "f") == fix(rationale="Why.")


def test_an_answer_cut_off_inside_the_function_is_rejected():
    assert parse_answer("Why.\n```python\ndef f(x):\n    return (x +", "f") == reject(
        "answer cut off inside the code block", rationale="Why."
    )
    assert parse_answer("Why.\n```python\n", "f") == reject(
        "answer cut off inside the code block", rationale="Why."
    )


def test_the_last_block_defining_the_function_wins_and_usage_blocks_are_ignored():
    answer = (
        "The original:\n```python\ndef f(x):\n    return x\n```\n"
        "The fix:\n```python\ndef f(x):\n    return x + 1\n```\n"
        "Check:\n```python\nassert f(1) == 2\nprint(f(2))\n```\n"
    )
    assert parse_answer(answer, "f") == fix(
        rationale="The original:\n```python\ndef f(x):\n    return x\n```\nThe fix:"
    )


def test_without_the_name_the_last_block_with_a_single_function_wins():
    answer = "```python\ndef g(x):\n    return x\n```\n```python\ndef f_fixed(x):\n    return x + 1\n```"
    assert parse_answer(answer, "f") == fix(
        rationale="```python\ndef g(x):\n    return x\n```", renamed_from="f_fixed"
    )


def test_a_renamed_function_is_renamed_back_with_its_recursive_calls_but_not_lookalike_names():
    answer = (
        "```python\n"
        "def remove_occ_fixed(s, ch):\n"
        "    remove_occ = 'remove_occ_fixed'  # a lookalike local and a string\n"
        "    return remove_occ_fixed(s[1:], ch) if s else remove_occ\n"
        "```"
    )
    assert parse_answer(answer, "remove_Occ") == fix(
        "def remove_Occ(s, ch):\n"
        "    remove_occ = 'remove_occ_fixed'  # a lookalike local and a string\n"
        "    return remove_Occ(s[1:], ch) if s else remove_occ\n",
        renamed_from="remove_occ_fixed",
    )


def test_renaming_respects_non_ascii_columns():
    answer = "```python\ndef g(ß):\n    return 'é' + g(ß[1:])\n```"
    assert parse_answer(answer, "f") == fix("def f(ß):\n    return 'é' + f(ß[1:])\n", renamed_from="g")


def test_a_rename_that_cannot_be_done_is_a_reject():
    answer = "```python\ndef \\\n  g(x):\n    return g(x)\n```"
    assert parse_answer(answer, "f") == reject("could not rename g to f")


def test_a_whole_file_answer_yields_the_function_its_helpers_and_the_imports_they_use():
    answer = (
        "Whole file:\n"
        "```python\n"
        "from __future__ import annotations\n"
        "import math\n"
        "import os.path\n"
        "from collections import Counter, deque as queue\n"
        "\n"
        "LIMIT = 3\n"
        "\n"
        "\n"
        "def unused():\n"
        "    return os.path.sep\n"
        "\n"
        "\n"
        "def f(items):\n"
        "    return _count(items) + _root(len(items)) + f(items[1:])\n"
        "\n"
        "\n"
        "def _count(items):\n"
        "    return len(Counter(items)) + len(queue())\n"
        "\n"
        "\n"
        "def _root(n):\n"
        "    return math.isqrt(n)\n"
        "\n"
        "\n"
        "if __name__ == '__main__':\n"
        "    assert f([1]) == 2\n"
        "```"
    )
    assert parse_answer(answer, "f") == fix(
        "def _count(items):\n"
        "    return len(Counter(items)) + len(queue())\n"
        "\n"
        "\n"
        "def _root(n):\n"
        "    return math.isqrt(n)\n"
        "\n"
        "\n"
        "def f(items):\n"
        "    return _count(items) + _root(len(items)) + f(items[1:])\n",
        rationale="Whole file:",
        imports=("import math", "from collections import Counter, deque as queue"),
    )


def test_future_imports_are_never_handed_on_even_when_a_name_matches():
    answer = (
        "```python\nfrom __future__ import annotations\n\ndef f(annotations):\n    return annotations\n```"
    )
    assert parse_answer(answer, "f") == fix("def f(annotations):\n    return annotations\n")


def test_a_method_is_taken_out_of_the_class_the_model_wrapped_it_in():
    answer = (
        "```python\n"
        "import math\n"
        "\n"
        "class Solution:\n"
        "    def helper(self):\n"
        "        return 0\n"
        "\n"
        "    @staticmethod\n"
        "    def f(x):\n"
        "        return math.floor(x)\n"
        "```"
    )
    assert parse_answer(answer, "Solution.f") == fix(
        "@staticmethod\ndef f(x):\n    return math.floor(x)\n", imports=("import math",)
    )


def test_async_functions_are_functions_too():
    answer = "```python\nasync def g(x):\n    return await x\n```"
    assert parse_answer(answer, "f") == fix("async def f(x):\n    return await x\n", renamed_from="g")


def test_a_syntax_error_in_the_fix():
    answer = "Why.\n```python\ndef f(x):\n    return x +\n```\nDone."
    assert parse_answer(answer, "f") == reject(
        "syntax error in the proposed fix: invalid syntax (line 2)", rationale="Why."
    )


def test_a_broken_block_that_defines_the_function_is_reported_even_after_a_good_one():
    answer = "```python\ndef f(x):\n    return x\n```\n```python\ndef f(x)\n    return x + 1\n```"
    assert parse_answer(answer, "f") == reject(
        "syntax error in the proposed fix: expected ':' (line 1)",
        rationale="```python\ndef f(x):\n    return x\n```",
    )


def test_an_answer_without_code():
    assert parse_answer("  The test itself is wrong.\n", "f") == reject(
        "no code in the answer", rationale="The test itself is wrong."
    )
    assert parse_answer("", "f") == reject("no code in the answer")


def test_blocks_that_do_not_define_the_function():
    answer = "Try:\n```python\nassert f(1) == 2\n```"
    assert parse_answer(answer, "f") == reject("the code in the answer does not define f", rationale="Try:")
    answer = "```python\ndef g():\n    pass\n\ndef h():\n    pass\n```"
    assert parse_answer(answer, "f") == reject("the code in the answer does not define f (it defines g, h)")


def test_an_invalid_function_name_is_a_reject_not_a_crash():
    assert parse_answer(FIXED, "class") == reject("'class' is not a valid function name")


def test_split_rationale():
    assert split_rationale("Because.\n\n```python\ndef f():\n    pass\n```\nMore.") == "Because."
    assert split_rationale("Because.\ndef f():\n    pass\n") == "Because."
    assert split_rationale("Only prose.\n") == "Only prose."


# Pieces of answers, so that random answers often hit fences, definitions and indentation.
ANSWER_PIECES = st.sampled_from(
    [
        "```", "```python", "~~~", "\n", "\r\n", "def f(x):", "def g(", "async ", "    ", "\t", "return f(x)",
        "@dec", "import os", "from a import b", "class A:", "'''", '"', "(", ")", ":", "é", "#", "pass",
        "if __name__ == '__main__':", "assert f(1)", "\x00",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.text(), st.lists(ANSWER_PIECES, max_size=40).map("".join)),
    st.sampled_from(["f", "A.f", "", "1x"]),
)
def test_parse_answer_never_raises_and_usable_code_defines_the_function(text: str, function_name: str):
    candidate = parse_answer(text, function_name)
    assert isinstance(candidate, Candidate)
    assert (candidate.code is None) != (candidate.reject_reason is None)
    if candidate.usable:
        definitions = ast.parse(candidate.code).body
        assert all(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in definitions)
        assert definitions[-1].name == function_name.rsplit(".", 1)[-1]
