"""LlamaIndex: a query engine that retrieves 5 nodes and lets SiliconFlow keep the best 2.

Runs offline against the bundled emulator unless SILICONFLOW_API_KEY is set. The embedding model
and LLM are LlamaIndex's mock ones, so that only the reranker decides what comes back.

    python examples/llama_index_query_engine.py
"""

from __future__ import annotations

import asyncio

from _support import real_api_or_emulator
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM

from llama_index_siliconflow import SiliconFlowRerank

NOTES = [
    "Store apples in the fridge crisper drawer; they stay fresh for weeks.",
    "The city bus timetable changes in winter.",
    "Apple pie is best with sour apples and cinnamon.",
    "Keep cut apples fresh with a squeeze of lemon juice.",
    "Bike tyres lose pressure in the cold.",
]


def main() -> None:
    """Build an index, attach the reranker, and query sync and async."""
    with real_api_or_emulator():
        index = VectorStoreIndex.from_documents(
            [Document(text=text) for text in NOTES], embed_model=MockEmbedding(embed_dim=8)
        )
        engine = index.as_query_engine(
            similarity_top_k=5,
            node_postprocessors=[SiliconFlowRerank(top_n=2)],
            llm=MockLLM(),
        )
        response = engine.query("how to keep apples fresh")
        print("Source nodes after reranking, for 'how to keep apples fresh':")
        for node in response.source_nodes:
            print(f"  {node.score:.3f}  {node.node.get_content()}")

        response = asyncio.run(engine.aquery("apple pie"))
        print(
            f"\nAsync, best source for 'apple pie': {response.source_nodes[0].node.get_content()}"
        )


if __name__ == "__main__":
    main()
