"""Every example runs as a user runs it: offline, against the bundled emulator it starts itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ..helpers import ROOT

EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
SMALL = {"ray_rerank.py": ["--queries", "40", "--candidates", "8"]}
"""Arguments that make an example's run test-sized (the Ray one runs once, below)."""
WRITES = {"evaluate_reranking.py"}
"""Examples that write a report, run below with its folder in a temporary directory."""

# What each extra does not bring in; blocking them proves an example needs only its own extra.
NOT_IN_LANGCHAIN_EXTRA = ("numpy", "llama_index", "langchain_openai", "openai", "langchain_classic")


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run Python from the repository root with no SILICONFLOW_* variable; it must succeed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SILICONFLOW_")}
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e not in SMALL and e not in WRITES])
def test_example_runs_on_the_emulator(example: str):
    out = _python(str(ROOT / "examples" / example))
    assert "using the bundled local emulator" in out.stdout


@pytest.mark.parametrize(
    ("example", "heading", "expected"),
    [
        ("langchain_rerank.py", "Top 3 notes for 'how to keep apples fresh':", "apples fresh"),
        (
            "multimodal_rag_langchain.py",
            "'how do I keep red apples fresh?', kept after reranking:",
            "Red apples keep",
        ),
    ],
)
def test_langchain_examples_need_only_the_langchain_extra(example, heading, expected):
    code = (
        "import runpy, sys\n"
        f"for name in {NOT_IN_LANGCHAIN_EXTRA!r}:\n"
        "    sys.modules[name] = None\n"
        "sys.path.insert(0, 'examples')\n"
        f"runpy.run_path('examples/{example}', run_name='__main__')\n"
    )
    lines = _python("-c", code).stdout.splitlines()
    top = lines[lines.index(heading) + 1]
    assert expected in top


def test_the_llama_index_multimodal_rag_keeps_a_note_and_a_picture_for_each_question():
    lines = _python(str(ROOT / "examples" / "multimodal_rag_llama_index.py")).stdout.splitlines()
    apples = lines.index("'how do I keep red apples fresh?': retrieved 4, kept after reranking:")
    assert "Red apples keep" in lines[apples + 1]
    assert "[picture red-apple.png]" in lines[apples + 2]
    bus = lines.index("'which bus goes downtown?': retrieved 4, kept after reranking:")
    assert "[picture bus.png]" in lines[bus + 1]
    assert "number 42 bus" in lines[bus + 2]


def test_the_ray_example_writes_every_query_ranked(tmp_path):
    out = tmp_path / "ranked"
    lines = _python(
        str(ROOT / "examples" / "ray_rerank.py"), *SMALL["ray_rerank.py"], "--out", str(out)
    ).stdout.splitlines()
    assert "using the bundled local emulator" in lines[0]
    assert any(line.startswith("Reranked 40 queries x 8 candidates") for line in lines)
    assert "Query 'apple apple': best candidate 'passage 0 about apple and apple'" in lines
    assert list(out.glob("*.parquet"))


def test_the_evaluation_example_writes_its_report_and_a_calibration(tmp_path):
    out = tmp_path / "report"
    done = _python(str(ROOT / "examples" / "evaluate_reranking.py"), "--out", str(out))
    assert "using the bundled local emulator" in done.stdout
    assert {p.name for p in out.iterdir()} == {
        "results.json",
        "report.md",
        "report.png",
        "calibration.json",
    }
    assert "nDCG@10" in done.stdout
    assert "documents pass it" in done.stdout
