"""The changed-lines answer shape: written from two versions of a function, applied back by the parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextls.answer import parse_answer
from nextls.fix import verify_answer
from nextls.patch import PatchError, apply_patch, looks_like_patch, write_patch
from nextls.prompt import format_answer
from nextls.runner import TestCase

BUGGY = """def remove_occ(s, ch):
    for i in range(len(s)):
        if s[i] == ch:
            s = s[0:i] + s[i:]
            break
    for i in range(len(s) - 1, -1, -1):
        if s[i] == ch:
            s = s[0:i] + s[i:]
            break
    return s
"""
FIXED = BUGGY.replace("s[i:]", "s[i + 1:]")


def test_a_patch_holds_only_the_changed_lines_and_applies_back() -> None:
    patch = write_patch(BUGGY, FIXED)
    assert patch == ("-            s = s[0:i] + s[i:]\n+            s = s[0:i] + s[i + 1:]\n"
                     "-            s = s[0:i] + s[i:]\n+            s = s[0:i] + s[i + 1:]")
    assert apply_patch(BUGGY, patch) == FIXED


def test_a_hunk_gets_context_when_its_lines_also_appear_earlier() -> None:
    # Only the second loop's line changes: the identical first one must not be the one patched.
    fixed = BUGGY[: BUGGY.rindex("s[i:]")] + "s[i + 1:]" + BUGGY[BUGGY.rindex("s[i:]") + 5:]
    patch = write_patch(BUGGY, fixed)
    assert patch.startswith(" ") and apply_patch(BUGGY, patch) == fixed


def test_insertions_are_anchored_on_the_line_above_and_keep_relative_indentation() -> None:
    fixed = BUGGY.replace("    return s\n", "    s = s.strip()\n    return s\n")
    patch = write_patch(BUGGY, fixed)
    # `break` is in both loops: the context grows upwards until it fits the second loop only.
    assert patch.split("\n")[-2:] == ["             break", "+    s = s.strip()"]
    assert all(line.startswith(" ") for line in patch.split("\n")[:-1])
    assert apply_patch(BUGGY, patch) == fixed
    deleted = BUGGY.replace("            break\n", "", 1)
    assert apply_patch(BUGGY, write_patch(BUGGY, deleted)) == deleted


def test_loose_matching_forgives_indentation_and_copied_trace_comments() -> None:
    patch = ("-        s = s[0:i] + s[i:]  # (4) s='abc'\n+        s = s[0:i] + s[i + 1:]  # (4) s='bc'\n"
             "-  s = s[0:i] + s[i:]\n+  s = s[0:i] + s[i + 1:]")
    assert apply_patch(BUGGY, patch) == FIXED
    tabs = BUGGY.replace("    ", "\t")
    assert apply_patch(tabs, write_patch(tabs, FIXED.replace("    ", "\t"))) == FIXED.replace("    ", "\t")


@pytest.mark.parametrize("patch, message", [
    ("-    return t\n+    return s", "`return t` is not in the function"),
    ("+    return s", "needs the line above it as context"),
    ("x    return s", "must start with"),
])
def test_a_patch_that_does_not_fit_says_why(patch: str, message: str) -> None:
    with pytest.raises(PatchError, match=message):
        apply_patch(BUGGY, patch)
    with pytest.raises(PatchError):
        write_patch(BUGGY, BUGGY)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a = 1", "b = a", "a = 1", "return a", "if a:", "    b = 2", ""]),
                min_size=1, max_size=8),
       st.lists(st.tuples(st.integers(0, 8), st.sampled_from(["replace", "insert", "delete"]),
                          st.sampled_from(["a = 2", "b = 3", "a = 1", "return b"])), max_size=3))
def test_writing_then_applying_gives_the_fixed_function(body: list[str], edits: list) -> None:
    old = ["def f(a):", *("    " + line if line else "" for line in body)]
    new = list(old)
    for position, kind, text in edits:
        at = 1 + position % len(new[1:] or [""])
        if kind == "replace" and at < len(new):
            new[at] = "    " + text
        elif kind == "insert":
            new.insert(at, "    " + text)
        elif kind == "delete" and at < len(new) and len(new) > 2:
            del new[at]
    buggy, fixed = "\n".join(old) + "\n", "\n".join(new) + "\n"
    if buggy.strip() == fixed.strip():
        return
    try:
        patch = write_patch(buggy, fixed)
    except PatchError as error:
        assert "appear earlier" in str(error) or "above the function" in str(error)
        return
    assert looks_like_patch(patch)
    assert apply_patch(buggy, patch).rstrip("\n").split("\n") == fixed.rstrip("\n").split("\n")


def test_the_parser_applies_a_diff_block_to_the_function_it_is_given() -> None:
    answer = format_answer("Step (4) keeps `ch`: the slice should skip it.", FIXED, original=BUGGY)
    assert answer.endswith("```") and "```diff\n-" in answer
    parsed = parse_answer(answer, "remove_occ", original=BUGGY)
    assert parsed.usable and parsed.code == FIXED and parsed.rationale.startswith("Step (4)")
    # Without the original there is nothing to patch; a whole function in a block still parses with it.
    assert not parse_answer(answer, "remove_occ").usable
    whole = parse_answer(format_answer("Why.", FIXED), "remove_occ", original=BUGGY)
    assert whole.usable and whole.code == FIXED
    broken = parse_answer("Why.\n```diff\n-    return t\n+    return s\n```", "remove_occ", original=BUGGY)
    assert not broken.usable and "the patch does not apply" in broken.reject_reason


def test_the_server_verifies_a_diff_answer(tmp_path: Path) -> None:
    module = tmp_path / "occ.py"
    module.write_text(BUGGY)
    tests = [TestCase(id="assert:1", kind="assert", source='assert remove_occ("abcda", "a") == "bcd"',
                      file=str(module), line=11)]
    answer = format_answer("The slice keeps the character.", FIXED, original=BUGGY)
    assert verify_answer(answer, file=module, source=BUGGY, function="remove_occ", tests=tests).verified
    wrong = format_answer("No.", BUGGY.replace("s[i:]", "s[i + 2:]"), original=BUGGY)
    assert not verify_answer(wrong, file=module, source=BUGGY, function="remove_occ", tests=tests).verified
