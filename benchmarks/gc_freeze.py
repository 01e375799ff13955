"""How long one full garbage collection takes with both frameworks loaded, before and after
`gc.freeze()` (which moves every object alive after the imports out of the collector's sight).

    python benchmarks/gc_freeze.py
"""

from __future__ import annotations

import gc
import statistics
import time


def full_collection_ms(runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    import langchain_core.documents  # noqa: F401
    import llama_index.core  # noqa: F401

    import langchain_siliconflow  # noqa: F401
    import llama_index_siliconflow  # noqa: F401

    before = full_collection_ms()
    gc.freeze()
    after = full_collection_ms()
    print(f"{gc.get_freeze_count()} objects frozen")
    print(f"full collection: {before:.1f} ms before gc.freeze(), {after:.1f} ms after")


if __name__ == "__main__":
    main()
