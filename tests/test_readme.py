"""Every Python snippet in README.md runs, so a snippet cannot drift from the code.

Each fenced ```python block is executed in a fresh namespace, in a temporary working directory,
with HF_HUB_OFFLINE=1. A block that needs something the test cannot provide (a dataset, a
config file, minutes of compute) says so in a comment line ``# needs: WHAT`` and is skipped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
NEEDS = re.compile(r"^\s*#\s*needs:\s*(.+)$", re.MULTILINE)

# Blocks that need a `# needs:` marker or a rewrite the README does not have yet, keyed by a
# line they contain. Remove an entry once README.md is corrected (the block then runs here).
PENDING: dict[str, str] = {}  # snippet text -> why it is skipped until the README is fixed


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each fenced python block."""
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in BLOCK.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8")) if README.is_file() else []


def test_readme_has_python_blocks() -> None:
    assert BLOCKS, "README.md has no ```python blocks (or is missing)"


def test_blocks_are_found_with_their_markers() -> None:
    text = "x\n```python\n# needs: data/loveda\nimport os\n```\n```bash\nls\n```\n"
    ((line, code),) = python_blocks(text)
    assert line == 2 and NEEDS.search(code).group(1) == "data/loveda"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line{n}" for n, _ in BLOCKS])
def test_readme_snippet_runs(line: int, code: str, tmp_path, monkeypatch) -> None:
    needs = NEEDS.search(code)
    if needs:
        pytest.skip(f"README.md line {line} needs {needs.group(1).strip()}")
    pending = next((why for key, why in PENDING.items() if key in code), None)
    if pending:
        pytest.skip(f"README.md line {line}: pending README fix: {pending}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102
    assert os.getcwd() == str(tmp_path)
