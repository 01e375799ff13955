"""The README's Python blocks run as shown, against the emulator, each in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ..helpers import ROOT

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text("utf-8"), re.DOTALL)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_block_runs_against_the_emulator(number, emulator, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SILICONFLOW_")}
    env.update(SILICONFLOW_API_KEY="sk-readme", SILICONFLOW_BASE_URL=emulator.base_url)
    out = subprocess.run(
        [sys.executable, "-c", BLOCKS[number]],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, f"block {number}:\n{BLOCKS[number]}\n{out.stderr}"
    assert "Traceback" not in out.stderr
