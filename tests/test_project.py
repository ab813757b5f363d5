"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_command(heading: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index(heading):]
    return re.search(r"```bash\n(.+?)\n```", section, re.DOTALL).group(1).strip()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    command = readme_command("**Run all tests**")
    assert "pytest" in command
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_the_main_job_command_fixes_a_shipped_example() -> None:
    command = readme_command("**Run the main job**")
    target = re.search(r"nextls fix (\S+)::(\w+)$", command)
    assert target is not None
    assert (ROOT / target.group(1)).read_text(encoding="utf-8").count(f"def {target.group(2)}(") == 1
