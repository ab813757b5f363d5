"""The process tree below a server, read from /proc: no LSP message says when a test process starts or dies."""

from __future__ import annotations

import contextlib
from pathlib import Path


def descendants(root_pid: int) -> set[int]:
    """Every process below `root_pid`, however deep."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    below, frontier = set(), {root_pid}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
        below |= frontier
    return below
