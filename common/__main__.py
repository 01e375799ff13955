"""`python -m siliconflow_rerank COMMAND`: each command's module is imported only when run (the
doctor needs none of the evaluation's libraries)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "doctor": ("._doctor", "check this machine's setup"),
    "evaluate": ("._evaluate", "does reranking help on a labelled set (BEIR layout)?"),
}


def run(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:<10} {about}" for name, (_, about) in COMMANDS.items()]
        print(
            "usage: python -m siliconflow_rerank COMMAND ...\n" + "\n".join(lines), file=sys.stderr
        )
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0], __package__)
    code: int = module.main(argv[1:])
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
