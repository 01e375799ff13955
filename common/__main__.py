"""`python -m siliconflow_rerank doctor`: check this machine's setup (see `_doctor`)."""

from __future__ import annotations

import sys

from ._doctor import main


def run(argv: list[str]) -> int:
    if not argv or argv[0] != "doctor":
        print("usage: python -m siliconflow_rerank doctor [--base-url URL]", file=sys.stderr)
        return 2
    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
