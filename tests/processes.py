"""Processes as the tests see them, read from /proc: no LSP message says when a test process starts or dies."""

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


def is_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (a dead process not yet reaped by its parent)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat_line[stat_line.rfind(b")") + 2 :].split()[0] != b"Z"


def pids_whose_cmdline_contains(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids
