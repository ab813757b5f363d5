"""What a user (and the model's prompt) reads about a test: the same text for the same failure, every run.

A test runs in a fresh temporary folder and its objects live at new addresses each time, so a message
that quotes them (`No such file: '/tmp/nextls-sandbox-k2j3h4/out.txt'`, `<Point object at 0x7f3a...>`)
differs run to run: noise for the reader, and a prompt that never hits a cache. `readable` rewrites
those parts: a path inside a folder nextls made becomes relative to it (the test's working folder),
pytest's and `tempfile`'s numbered folders become `<tmp>`, and ` at 0x...` goes.
"""

from __future__ import annotations

import re
import tempfile

# a folder nextls made with mkdtemp (prefix "nextls-<what>-", maybe the server's pid.start-time, then 8
# random characters: a sandbox, the debugpy shim), and the run folders made inside it ("run-" + 8)
_NEXTLS_FOLDER = re.compile(r"(?:/[^\s'\"/:]+)*/nextls-[a-z]+-(?:[0-9.]+-)?[a-z0-9_]{8}(?![^\s'\"/])"
                            r"(?:/run-[a-z0-9_]{8}(?![^\s'\"/]))*(?P<slash>/?)")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _temporary_folders(root: str) -> re.Pattern[str]:
    """pytest's `pytest-of-USER/pytest-N` base folder, and `tempfile.mkdtemp()`'s `tmpXXXXXXXX` ones."""
    root = re.escape(root.rstrip("/"))
    return re.compile(rf"(?:/private)?{root}/(?:pytest-of-[^\s'\"/]+/pytest-\d+|tmp[a-z0-9_]{{8}})(?=/|\b)")


_TEMPORARY = _temporary_folders(tempfile.gettempdir())


def readable(message: str) -> str:
    """`message` without temporary folder paths and memory addresses."""
    if "/" not in message and " at 0x" not in message:  # most messages and trace values: nothing to do
        return message
    message = _NEXTLS_FOLDER.sub(lambda match: "" if match.group("slash") else ".", message)
    message = _TEMPORARY.sub("<tmp>", message)
    return _ADDRESS.sub("", message)
