"""The Python blocks of the README and of docs/ run as shown, against the emulator, each in a
fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..helpers import ROOT

_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
BLOCKS = _BLOCK.findall((ROOT / "README.md").read_text("utf-8"))
DOC_BLOCKS = {
    f"{page.name}:{number}": block
    for page in sorted((ROOT / "docs").glob("*.md"))
    for number, block in enumerate(_BLOCK.findall(page.read_text("utf-8")))
}


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_block_runs_against_the_emulator(number, emulator, tmp_path):
    out = _run(BLOCKS[number], emulator.base_url, tmp_path)
    assert out.returncode == 0, f"block {number}:\n{BLOCKS[number]}\n{out.stderr}"
    assert "Traceback" not in out.stderr


def test_the_docs_have_python_blocks():
    assert {name.split(":")[0] for name in DOC_BLOCKS} >= {"emulator.md", "scaling.md"}


@pytest.mark.parametrize("name", sorted(DOC_BLOCKS))
def test_docs_block_runs_against_the_emulator(name, emulator, tmp_path):
    out = _run(DOC_BLOCKS[name], emulator.base_url, tmp_path)
    assert out.returncode == 0, f"{name}:\n{DOC_BLOCKS[name]}\n{out.stderr}"
    assert "Traceback" not in out.stderr


def _run(block: str, base_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SILICONFLOW_")}
    env.update(SILICONFLOW_API_KEY="sk-readme", SILICONFLOW_BASE_URL=base_url)
    return subprocess.run(
        [sys.executable, "-c", block],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
