"""Known-good fixes of the shipped examples, derived from the example files so they cannot drift."""

from __future__ import annotations

from pathlib import Path

from nextls.splice import find_function, function_source

EXAMPLES = Path(__file__).resolve().parent.parent / "server" / "examples"


def remove_occ_fix() -> str:
    """`remove_Occ` with its one bug fixed: the second loop drops the character it found."""
    source = (EXAMPLES / "remove_occ.py").read_text(encoding="utf-8")
    function = function_source(source, find_function(source, "remove_Occ"))
    assert function.count("s[0:i] + s[i:]") == 1
    return function.replace("s[0:i] + s[i:]", "s[0:i] + s[i + 1:]").rstrip("\n")
