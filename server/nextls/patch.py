"""The changed-lines answer shape: a fix written as the function's lines to remove and their replacements.

A small model rewriting a whole function mostly copies it back unchanged; writing only the lines it changes
puts every answer token on the fix. The shape is unified diff's body without headers or line numbers:

    -        if x > 2:
    +        if x > 1:

A patch is a series of hunks; each hunk is context lines (`' '`), then removed lines (`'-'`), then added
lines (`'+'`). A `' '` or `'-'` line after a `'+'` line starts the next hunk. A hunk's context and removed
lines must appear, in that order and consecutively, in the function after the previous hunk; they are
matched exactly, else ignoring indentation and trailing trace comments (models copy them from the prompt).
Added lines keep their indentation relative to the hunk's first line, re-based on where it matched.

`write_patch` writes the patch from the buggy to the fixed function (training targets); it adds the line
above as context for an insertion, and more lines above while the hunk would match an earlier place.
`apply_patch` applies one (serving and training alike, through `nextls.answer.parse_answer`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from nextls.trace.render import strip_trace_comments

_PREFIXES = (" ", "-", "+")


class PatchError(ValueError):
    """The patch does not apply to the function."""


@dataclass(frozen=True)
class Hunk:
    context: tuple[str, ...]
    removed: tuple[str, ...]
    added: tuple[str, ...]

    @property
    def old(self) -> tuple[str, ...]:
        return self.context + self.removed


def looks_like_patch(block: str) -> bool:
    """Every non-blank line starts with `' '`, `'-'` or `'+'`, and some line adds or removes one."""
    lines = [line for line in block.split("\n") if line.strip()]
    return (bool(lines) and all(line.startswith(_PREFIXES) for line in lines)
            and any(line.startswith(("-", "+")) for line in lines))


def parse_patch(block: str) -> list[Hunk]:
    hunks: list[Hunk] = []
    parts: dict[str, list[str]] = {" ": [], "-": [], "+": []}
    for line in block.split("\n"):
        if not line:  # a blank line of the function is written " " (context) or "-"
            continue
        kind, text = line[0], line[1:]
        if kind not in parts:
            raise PatchError(f"a patch line must start with ' ', '-' or '+': {line!r}")
        if (kind in " -" and parts["+"]) or (kind == " " and parts["-"]):
            hunks.append(_hunk(parts))
            parts = {" ": [], "-": [], "+": []}
        parts[kind].append(text.rstrip())
    if any(parts.values()):
        hunks.append(_hunk(parts))
    if not hunks:
        raise PatchError("the patch changes nothing")
    return hunks


def _hunk(parts: dict[str, list[str]]) -> Hunk:
    hunk = Hunk(tuple(parts[" "]), tuple(parts["-"]), tuple(parts["+"]))
    if not hunk.old:
        raise PatchError("a hunk that only adds lines needs the line above it as context (' ' prefix)")
    return hunk


def apply_patch(function: str, patch: str) -> str:
    """`function` with `patch` applied; raises PatchError when a hunk's lines are not in the function."""
    lines = function.rstrip("\n").split("\n")
    start = 0
    for hunk in parse_patch(patch):
        at = _find(lines, hunk.old, start)
        if at is None:
            shown = next((line.strip() for line in hunk.old if line.strip()), "")
            raise PatchError(f"the patch's line `{shown}` is not in the function (from line {start + 1} on)")
        replacement = list(hunk.context) + list(hunk.added)
        base_written, base_real = _indent(hunk.old[0]), _indent(lines[at])
        new = [lines[at + i] for i in range(len(hunk.context))]
        new += [_rebase(line, base_written, base_real) for line in replacement[len(hunk.context):]]
        lines[at: at + len(hunk.old)] = new
        start = at + len(new)
    return "\n".join(lines) + "\n"


def _find(lines: list[str], old: tuple[str, ...], start: int) -> int | None:
    for same in (_exact, _loose):
        for at in range(start, len(lines) - len(old) + 1):
            if all(same(lines[at + i], line) for i, line in enumerate(old)):
                return at
    return None


def _exact(real: str, written: str) -> bool:
    return real.rstrip() == written


def _loose(real: str, written: str) -> bool:
    return _bare(real) == _bare(written)


def _bare(line: str) -> str:
    return " ".join(strip_trace_comments(line.strip() + "\n").split())


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _rebase(line: str, written: str, real: str) -> str:
    """Move `line` from the hunk's written indentation to the function's own."""
    line = strip_trace_comments(line + "\n").rstrip("\n") if "#" in line else line
    if not line.strip():
        return ""
    if line.startswith(written):
        return real + line[len(written):]
    # Less indented than the hunk's first line (a line added after a block's end): keep the difference.
    outdent = len(written) - len(_indent(line))
    return real[: max(0, len(real) - outdent)] + line.lstrip(" \t")


def write_patch(buggy: str, fixed: str) -> str:
    """The patch from `buggy` to `fixed` (two versions of one function); raises PatchError if they are equal."""
    old, new = buggy.rstrip("\n").split("\n"), fixed.rstrip("\n").split("\n")
    out: list[str] = []
    start, previous_added = 0, True
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        # An insertion is anchored on the line above it; so is a hunk right after a pure deletion, which
        # would otherwise read as part of it.
        context = i1 - 1 if i1 == i2 or not previous_added else i1
        if context < 0:
            raise PatchError("cannot anchor lines added above the function's first line")
        while context > start and _find(old, tuple(old[context:i2]), start) != context:
            context -= 1
        if _find(old, tuple(old[context:i2]), start) != context:
            raise PatchError("the changed lines also appear earlier in the function")
        out += [" " + line for line in old[context:i1]]
        out += ["-" + line for line in old[i1:i2]]
        out += ["+" + line for line in new[j1:j2]]
        start, previous_added = i2, j2 > j1
    if not out:
        raise PatchError("the two functions are the same")
    return "\n".join(out)
