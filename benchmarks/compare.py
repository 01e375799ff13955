"""Tabulate `benchmarks/compare.sh`'s runs: every figure of both versions, side by side.

For each figure: the median of each version's runs, new over old, and the spread between the
repeated runs of the same version (the largest difference between two runs of one version, over
the median of all runs). A change larger than that spread is marked: it is more than the noise
of this machine during this run.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

SKIPPED = ("machine",)


def flatten(tree: Any, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a results tree, by their path."""
    if isinstance(tree, dict):
        leaves: dict[str, float] = {}
        for key, value in tree.items():
            if prefix == "" and key in SKIPPED:
                continue
            leaves.update(flatten(value, f"{prefix} / {key}" if prefix else str(key)))
        return leaves
    if isinstance(tree, int | float) and not isinstance(tree, bool):
        return {prefix: float(tree)}
    return {}


def main() -> None:
    old_name, new_name, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for path in sorted(folder.glob("*.json")):
        side = path.stem.split("-")[0]
        runs[side].append(flatten(json.loads(path.read_text("utf-8"))))
    names = [name for name in runs["new"][0] if all(name in run for run in runs["old"])]
    print(f"# Benchmarks: {new_name} against {old_name}, in one run\n")
    print(
        f"{len(runs['old'])} runs of each, in turns, by `bash benchmarks/compare.sh`. Spread: the "
        "largest difference between two runs of the same version, over the median of all runs. "
        "Marked: new and old differ by more than that spread.\n"
    )
    print(f"| figure | {old_name} (old) | {new_name} (new) | new / old | spread | marked |")
    print("|---|---:|---:|---:|---:|:---:|")
    for name in names:
        old = [run[name] for run in runs["old"] if name in run]
        new = [run[name] for run in runs["new"] if name in run]
        everything = statistics.median(old + new)
        spread = max(max(old) - min(old), max(new) - min(new))
        relative = spread / abs(everything) if everything else 0.0
        old_median, new_median = statistics.median(old), statistics.median(new)
        ratio = new_median / old_median if old_median else float("nan")
        marked = "yes" if abs(new_median - old_median) > spread else ""
        print(
            f"| {name} | {old_median:.4g} | {new_median:.4g} | {ratio:.2f} | {relative:.0%} "
            f"| {marked} |"
        )


if __name__ == "__main__":
    main()
