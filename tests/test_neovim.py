"""nextls with a client no one here wrote: headless Neovim's built-in LSP client (Debian's 0.7.2 works).

`tests/neovim/nextls_client.lua` opens a buggy file, waits for the diagnostic and the background trace,
asks for a hover, inlay hints and the quick fix, resolves it, applies the WorkspaceEdit with Neovim's own
`vim.lsp.util.apply_workspace_edit` and writes the buffer; this test checks what it saw and that the file
Neovim wrote passes its tests. The model's answer is scripted (`NEXTLS_SCRIPTED_ANSWERS`), as in
test_lsp.py's exact-fix test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_lsp import EXAMPLES, GOOD_FIX, RATIONALE

from nextls.prompt import format_answer

SCRIPT = Path(__file__).parent / "neovim" / "nextls_client.lua"
NVIM = shutil.which("nvim")

pytestmark = pytest.mark.skipif(NVIM is None, reason="Neovim is not installed (`apt-get install -y neovim`)")


def test_neovim_builtin_client_gets_diagnostic_hover_hints_and_applies_the_fix(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    file = tmp_path / "remove_occ.py"
    shutil.copy(EXAMPLES / "remove_occ.py", file)
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps([format_answer(RATIONALE, GOOD_FIX)]))
    out = tmp_path / "nvim-result.json"
    env = {**os.environ, "NEXTLS_NVIM_FILE": str(file), "NEXTLS_NVIM_OUT": str(out),
           "NEXTLS_NVIM_PYTHON": sys.executable, "NEXTLS_SCRIPTED_ANSWERS": str(answers),
           "OMP_WAIT_POLICY": "PASSIVE", "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_DATA_HOME": str(tmp_path / "data")}
    done = subprocess.run([NVIM, "--headless", "-u", "NONE", "-i", "NONE", "-n", "-c", f"luafile {SCRIPT}"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    assert out.exists(), f"nvim wrote no result (exit {done.returncode}): {done.stderr[-2000:]}"
    result = json.loads(out.read_text())
    assert result.get("ok"), result.get("error")

    [diagnostic] = result["diagnostics"]
    assert (diagnostic["lnum"], diagnostic["col"], diagnostic["source"]) == (3, 4, "nextls")
    assert diagnostic["message"].startswith("remove_Occ fails 3 of 3 test(s)")
    assert "line 8 ran 1 time(s)" in result["hover"] and "# (7) s='helo'" in result["hover"]
    assert {"line": 7, "label": "(7) s='helo'"} in result["inlay_hints"]
    assert result["actions"] == ["Fix with NExT: search edits of remove_Occ, else sample 2 fix(es), and verify them "
                                 "(3 failing tests)"]
    assert result["resolved_title"].endswith("(passes 3/3 tests)") and result["preferred"]

    assert "s = s[0:i] + s[i + 1:]\n            break\n    return s" in file.read_text()
    run = subprocess.run([sys.executable, str(file)], capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr  # the file Neovim wrote passes its asserts
