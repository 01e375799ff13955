"""`python -m siliconflow_rerank COMMAND`: each command's module is imported only when run (the
doctor needs none of the evaluation's libraries)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "doctor": ("._doctor", "check this machine's setup", {}),
    "evaluate": ("._evaluate", "does reranking help on a labelled set (BEIR layout)?", {}),
    "embed": (
        "._job_command",
        "embed a JSONL or Parquet column into Parquet, resumably",
        {"kind": "embed"},
    ),
    "rerank": (
        "._job_command",
        "rerank each row's candidates into Parquet, resumably",
        {"kind": "rerank"},
    ),
}


def run(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:<10} {about}" for name, (_, about, _) in COMMANDS.items()]
        print(
            "usage: python -m siliconflow_rerank COMMAND ...\n" + "\n".join(lines), file=sys.stderr
        )
        return 2
    name, _, extra = COMMANDS[argv[0]]
    module = importlib.import_module(name, __package__)
    code: int = module.main(argv[1:], **extra)
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
