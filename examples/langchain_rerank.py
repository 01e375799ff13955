"""LangChain: a cheap first-stage retriever, then SiliconFlow's reranker picks the best.

Runs offline against the bundled emulator unless SILICONFLOW_API_KEY is set. Needs only the
`langchain` extra.

    python examples/langchain_rerank.py
"""

from __future__ import annotations

import asyncio

from _support import real_api_or_emulator
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough

from langchain_siliconflow import SiliconFlowRerank

NOTES = [
    "Store apples in the fridge crisper drawer; they stay fresh for weeks.",
    "The city bus timetable changes in winter.",
    "Apple pie is best with sour apples and cinnamon.",
    "Keep cut apples fresh with a squeeze of lemon juice.",
    "Bananas ripen faster next to apples.",
    "Bike tyres lose pressure in the cold.",
]


def _words(text: str) -> set[str]:
    return {word.strip(".,;?!").lower() for word in text.split()}


class KeywordRetriever(BaseRetriever):
    """A stand-in for a vector store: the `k` documents sharing the most words with the query."""

    documents: list[Document]
    k: int = 6

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        words = _words(query)
        ranked = sorted(self.documents, key=lambda d: -len(words & _words(d.page_content)))
        return ranked[: self.k]


def main() -> None:
    """Build a retriever, wrap it with the reranker, and query it sync and async."""
    with real_api_or_emulator():
        documents = [
            Document(page_content=text, metadata={"source": f"note-{i}"})
            for i, text in enumerate(NOTES)
        ]
        reranker = SiliconFlowRerank(top_n=3)
        # Retrieve 6 candidates, then let the reranker pick and order the best 3. (With
        # langchain-classic installed, ContextualCompressionRetriever(base_compressor=reranker,
        # base_retriever=...) does the same.)
        retriever = RunnableParallel(
            documents=KeywordRetriever(documents=documents, k=6), query=RunnablePassthrough()
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
