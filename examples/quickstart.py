"""Quick start: rerank text and images, and embed text, with the core client, LangChain and
LlamaIndex.

Uses the real SiliconFlow API when SILICONFLOW_API_KEY is set. Otherwise it starts the bundled local
emulator (a SiliconFlow-compatible server with lexical scores, not a model) and says so.

    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import math

from _support import real_api_or_emulator

from siliconflow_rerank import AsyncSiliconFlowClient, RerankResponse, SiliconFlowClient, image_item

QUERY = "How do I keep apples fresh?"
DOCUMENTS = [
    "Bananas ripen faster next to other fruit.",
    "Store apples in the fridge crisper drawer to keep them fresh for weeks.",
    "Apple released a new phone this autumn.",
    "Keep cut apples fresh with a squeeze of lemon juice.",
]


def show(title: str, labels: list[str], response: RerankResponse) -> None:
    """Print a ranking."""
    print(title)
    for result in response.results:
        print(f"  {result.relevance_score:.3f}  [{result.index}] {labels[result.index]}")
    print()


def cosine(a: list[float], b: list[float]) -> float:
    """Cosine similarity of two vectors."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def core_client() -> None:
    """The core clients: sync, async, and a multimodal model."""
    with SiliconFlowClient() as client:
        response = client.rerank(QUERY, DOCUMENTS, top_n=3)
        show(f"Core client, top 3 for {QUERY!r}:", DOCUMENTS, response)
        if response.usage is not None:
            print(f"  usage: {response.usage.total_tokens} tokens, trace id {response.trace_id}\n")

    async def rerank_async() -> RerankResponse:
        async with AsyncSiliconFlowClient() as client:
            return await client.rerank(QUERY, DOCUMENTS)

    show("Async core client, all documents:", DOCUMENTS, asyncio.run(rerank_async()))

    pictures = [
        "https://example.com/photos/red-apple-on-table.jpg",
        "https://example.com/photos/city-bus.jpg",
    ]
    with SiliconFlowClient() as client:
        response = client.rerank(
            "a red apple",
            [*(image_item(url) for url in pictures), "A bowl of red apples."],
            model="Qwen/Qwen3-VL-Reranker-8B",
        )
    show("Multimodal (Qwen3-VL), images and text:", [*pictures, "A bowl of red apples."], response)

    with SiliconFlowClient() as client:
        query, *vectors = client.embed([QUERY, *DOCUMENTS]).embeddings
    similarity = [cosine(query, vector) for vector in vectors]
    nearest = max(range(len(DOCUMENTS)), key=similarity.__getitem__)
    print(f"Embeddings (BAAI/bge-m3, {len(query)} dimensions), nearest document to the query:")
    print(f"  {similarity[nearest]:.3f}  [{nearest}] {DOCUMENTS[nearest]}\n")


def langchain_adapter() -> None:
    """LangChain: a document compressor that returns scored copies, best first."""
    try:
        from langchain_core.documents import Document

        from langchain_siliconflow import SiliconFlowRerank
    except ImportError as error:
        print(f"(LangChain part skipped: {error})\n")
        return
    documents = [Document(page_content=text, id=str(i)) for i, text in enumerate(DOCUMENTS)]
    reranker = SiliconFlowRerank(top_n=2)
    print("LangChain SiliconFlowRerank.compress_documents, top 2:")
    for document in reranker.compress_documents(documents, QUERY):
        score = document.metadata["relevance_score"]
        print(f"  {score:.3f}  [id {document.id}] {document.page_content}")
    print()


def llama_index_adapter() -> None:
    """LlamaIndex: a node postprocessor that returns new scored nodes, best first."""
    try:
        from llama_index.core.schema import NodeWithScore, TextNode

        from llama_index_siliconflow import SiliconFlowRerank as LlamaIndexRerank
    except ImportError as error:
        print(f"(LlamaIndex part skipped: {error})\n")
        return
    nodes = [
        NodeWithScore(node=TextNode(text=text, id_=str(i))) for i, text in enumerate(DOCUMENTS)
    ]
    reranker = LlamaIndexRerank(top_n=2)
    print("LlamaIndex SiliconFlowRerank.postprocess_nodes, top 2:")
    for result in reranker.postprocess_nodes(nodes, query_str=QUERY):
        print(f"  {result.score:.3f}  [id {result.node.node_id}] {result.node.get_content()}")
    print()


def main() -> None:
    """Run every part against the real API or the emulator."""
    with real_api_or_emulator():
        core_client()
        langchain_adapter()
        llama_index_adapter()


if __name__ == "__main__":
    main()
