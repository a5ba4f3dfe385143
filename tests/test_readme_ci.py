"""The README's two set-up commands stay true, and CI runs the second one verbatim."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md must open with a ```bash block of set-up commands"
    assert text.index("```bash") < 200, "the set-up commands must open the README"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2
    assert cmds[0].endswith("ragvid demo") and "pip install -e ." in cmds[0]
    assert "pytest" in cmds[1] and "[dev]" in cmds[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    test_cmd = _readme_commands()[1]
    assert test_cmd in ci, f".ci/run must contain the README's test command: {test_cmd}"
    assert (ROOT / ".ci" / "run").stat().st_mode & 0o111, ".ci/run must be executable"


def test_demo_command_is_installed_and_documented():
    exe = Path(sys.executable).with_name("ragvid")
    assert exe.exists(), "the 'ragvid' console script must be installed by pip install -e ."
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout
