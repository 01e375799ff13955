"""Every example runs as a user runs it: offline, against the bundled emulator it starts itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))

# What each extra does not bring in; blocking them proves an example needs only its own extra.
NOT_IN_LANGCHAIN_EXTRA = ("numpy", "llama_index", "langchain_openai", "openai", "langchain_classic")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SILICONFLOW_")}


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs_on_the_emulator(example: str):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "using the bundled local emulator" in out.stdout


def test_langchain_example_needs_only_the_langchain_extra():
    code = (
        "import runpy, sys\n"
        f"for name in {NOT_IN_LANGCHAIN_EXTRA!r}:\n"
        "    sys.modules[name] = None\n"
        "sys.path.insert(0, 'examples')\n"
        "runpy.run_path('examples/langchain_rerank.py', run_name='__main__')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    top = lines[lines.index("Top 3 notes for 'how to keep apples fresh':") + 1]
    assert "apples fresh" in top
