"""Quick start: rerank text and images with siliconflow-rerank.

Uses the real SiliconFlow API when SILICONFLOW_API_KEY is set. Otherwise it starts the bundled local
emulator (a SiliconFlow-compatible server with lexical scores, not a model) and says so.

    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from typing import TypedDict

from common import AsyncSiliconFlowClient, RerankResponse, SiliconFlowClient, image_item
from common.emulator import RerankEmulator

QUERY = "How do I keep apples fresh?"
DOCUMENTS = [
    "Bananas ripen faster next to other fruit.",
    "Store apples in the fridge crisper drawer to keep them fresh for weeks.",
    "Apple released a new phone this autumn.",
    "Keep cut apples fresh with a squeeze of lemon juice.",
]


class Settings(TypedDict, total=False):
    """Where the clients connect."""

    api_key: str
    base_url: str


@contextlib.contextmanager
def api_settings() -> Iterator[Settings]:
    """Client settings for the real API if a key is set, else for a local emulator."""
    if os.environ.get("SILICONFLOW_API_KEY"):
        print("Using the SiliconFlow API (SILICONFLOW_API_KEY is set).\n")
        yield {}  # the clients read SILICONFLOW_API_KEY and SILICONFLOW_BASE_URL themselves
        return
    with RerankEmulator() as emulator:
        print(
            "SILICONFLOW_API_KEY is not set: using the bundled local emulator at "
            f"{emulator.base_url}.\nIts scores are lexical stand-ins, not a model's.\n"
        )
        yield {"api_key": "emulator", "base_url": emulator.base_url}


def show(title: str, documents: list[str], response: RerankResponse) -> None:
    """Print a ranking."""
    print(title)
    for result in response.results:
        print(f"  {result.relevance_score:.3f}  [{result.index}] {documents[result.index]}")
    print()


def main() -> None:
    """Rerank with the sync client, the async client, and a multimodal model."""
    with api_settings() as settings:
        with SiliconFlowClient(**settings) as client:
            response = client.rerank(QUERY, DOCUMENTS, top_n=3)
            show(f"Sync client, top 3 for {QUERY!r}:", DOCUMENTS, response)
            if response.usage is not None:
                print(
                    f"  usage: {response.usage.total_tokens} tokens, trace id {response.trace_id}\n"
                )

        async def rerank_async() -> None:
            async with AsyncSiliconFlowClient(**settings) as client:
                response = await client.rerank(QUERY, DOCUMENTS)
                show("Async client, all documents:", DOCUMENTS, response)

        asyncio.run(rerank_async())

        pictures = [
            "https://example.com/photos/red-apple-on-table.jpg",
            "https://example.com/photos/city-bus.jpg",
        ]
        with SiliconFlowClient(**settings) as client:
            response = client.rerank(
                "a red apple",
                [*(image_item(url) for url in pictures), "A bowl of red apples."],
                model="Qwen/Qwen3-VL-Reranker-8B",
            )
            labels = [*pictures, "A bowl of red apples."]
            show("Multimodal (Qwen3-VL), images and text:", labels, response)


if __name__ == "__main__":
    main()
