"""Rerank 5,000 documents at once: batched, concurrent, with a progress bar and a score cache.

Runs offline against the bundled emulator unless SILICONFLOW_API_KEY is set.

    python examples/large_list.py
"""

from __future__ import annotations

import sys
import time

from _support import real_api_or_emulator

from siliconflow_rerank import RerankCache, SiliconFlowClient

TOPICS = ["apples", "trains", "cheese", "bicycles", "rain", "tea", "violins", "glaciers"]


def progress_bar(done: int, total: int) -> None:
    """Draw a one-line progress bar on stderr."""
    width = 40
    filled = width * done // total
    sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} requests")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def main() -> None:
    """Rerank a long list twice: the second time from the cache."""
    documents = [f"Note {i} about {TOPICS[i % 8]} and {TOPICS[(i * 5) % 8]}." for i in range(5000)]
    cache = RerankCache()
    with (
        real_api_or_emulator(),
        SiliconFlowClient(max_documents_per_request=128, max_concurrency=8, cache=cache) as client,
    ):
        started = time.perf_counter()
        response = client.rerank(
            "fresh apples with tea", documents, top_n=3, on_progress=progress_bar
        )
        print(f"5,000 documents in {time.perf_counter() - started:.2f} s; best three:")
        for result in response.results:
            print(f"  {result.relevance_score:.3f}  {documents[result.index]}")
        started = time.perf_counter()
        client.rerank("fresh apples with tea", documents, top_n=3)
        print(
            f"Again, from the cache: {time.perf_counter() - started:.3f} s "
            f"({cache.hits} hits, {cache.misses} misses)"
        )


if __name__ == "__main__":
    main()
