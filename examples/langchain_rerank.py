"""LangChain: retrieve with a vector store, then rerank with SiliconFlow.

Runs offline against the bundled emulator unless SILICONFLOW_API_KEY is set. Needs only the
`langchain` extra.

    python examples/langchain_rerank.py
"""

from __future__ import annotations

import asyncio
import zlib

from _support import real_api_or_emulator
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_siliconflow import SiliconFlowRerank

NOTES = [
    "Store apples in the fridge crisper drawer; they stay fresh for weeks.",
    "The city bus timetable changes in winter.",
    "Apple pie is best with sour apples and cinnamon.",
    "Keep cut apples fresh with a squeeze of lemon juice.",
    "Bananas ripen faster next to apples.",
    "Bike tyres lose pressure in the cold.",
]


class ToyEmbeddings(Embeddings):
    """A deterministic stand-in for a real embedding model (hashed bag of words)."""

    def _embed(self, text: str) -> list[float]:
        vector = [0.0] * 64
        for word in text.lower().split():
            vector[zlib.crc32(word.strip(".,;").encode()) % 64] += 1.0
        return vector

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._embed(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._embed(text)


def main() -> None:
    """Build a retriever, wrap it with the reranker, and query it sync and async."""
    with real_api_or_emulator():
        store = InMemoryVectorStore(ToyEmbeddings())
        store.add_documents(
            [
                Document(page_content=text, metadata={"source": f"note-{i}"})
                for i, text in enumerate(NOTES)
            ]
        )
        reranker = SiliconFlowRerank(top_n=3)
        # Retrieve 6 candidates, then let the reranker pick and order the best 3. (With
        # langchain-classic installed, ContextualCompressionRetriever(base_compressor=reranker,
        # base_retriever=...) does the same.)
        retriever = RunnableParallel(
            documents=store.as_retriever(search_kwargs={"k": 6}), query=RunnablePassthrough()
        ) | RunnableLambda(
            lambda x: reranker.compress_documents(x["documents"], x["query"]),
            afunc=lambda x: reranker.acompress_documents(x["documents"], x["query"]),
        )
        query = "how to keep apples fresh"
        print(f"Top 3 notes for {query!r}:")
        for document in retriever.invoke(query):
            print(f"  {document.metadata['relevance_score']:.3f}  {document.page_content}")

        async def ask() -> None:
            documents = await retriever.ainvoke("apple pie")
            print(f"\nAsync, best note for 'apple pie': {documents[0].page_content}")

        asyncio.run(ask())


if __name__ == "__main__":
    main()
