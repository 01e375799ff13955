"""LangChain, multimodal RAG on SiliconFlow alone: embed notes and pictures with
Qwen3-VL-Embedding, retrieve both by a text question, rerank them together with Qwen3-VL-Reranker,
and answer from the best sources, all in one LCEL chain (needs only the `langchain` extra).

Writes three small pictures (one colour each, with a caption in a PNG text chunk that the offline
emulator reads in place of vision). Runs offline against the bundled emulator unless
SILICONFLOW_API_KEY is set; the chat model is LangChain's fake one either way, so the example
prints the prompt a real model would answer.

    python examples/multimodal_rag_langchain.py
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

from _support import NOTES, real_api_or_emulator, write_pictures
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import FakeListChatModel
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from langchain_siliconflow import SiliconFlowEmbeddings, SiliconFlowRerank


class NearestRetriever(BaseRetriever):
    """The `k` documents (notes or pictures) whose vectors are nearest the question's."""

    embeddings: SiliconFlowEmbeddings
    documents: list[Document]
    vectors: list[list[float]]
    k: int = 4

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        question = self.embeddings.embed_query(query)

        def cosine(vector: list[float]) -> float:
            dot = sum(a * b for a, b in zip(question, vector, strict=True))
            return dot / (math.hypot(*question) * math.hypot(*vector))

        ranked = sorted(zip(self.documents, self.vectors, strict=True), key=lambda p: -cosine(p[1]))
        return [document for document, _ in ranked[: self.k]]


def listed(found: Sequence[Document]) -> str:
    return "\n".join(f"- {label(document)}" for document in found)


def label(document: Document) -> str:
    image = document.metadata.get("image")
    return f"[picture {Path(image).name}]" if image else document.page_content


def main() -> None:
    with real_api_or_emulator(), tempfile.TemporaryDirectory() as folder:
        paths = write_pictures(folder)

        # One multimodal model embeds both the notes and the pictures, so one question finds both.
        embeddings = SiliconFlowEmbeddings(model="Qwen/Qwen3-VL-Embedding-8B")
        documents = [Document(page_content=note) for note in NOTES] + [
            Document(page_content=path.name, metadata={"image": str(path)}) for path in paths
        ]
        vectors = embeddings.embed_documents(NOTES) + embeddings.embed_image(
            [str(path) for path in paths]
        )
        nearest = NearestRetriever(embeddings=embeddings, documents=documents, vectors=vectors)
        # A Document whose metadata names an image is reranked as that image; the pictures are
        # files this example wrote itself, so reading them is allowed.
        reranker = SiliconFlowRerank(
            model="Qwen/Qwen3-VL-Reranker-8B", top_n=2, allow_local_media=True
        )
        best = {"found": nearest, "question": RunnablePassthrough()} | RunnableLambda(
            lambda step: reranker.compress_documents(step["found"], step["question"])
        )
        prompt = ChatPromptTemplate.from_template(
            "Answer from these sources:\n{sources}\nQuestion: {question}\nAnswer:"
        )
        fake_llm = FakeListChatModel(responses=["(a real chat model answers here)"])
        chain = {
            "sources": best | RunnableLambda(listed),
            "question": RunnablePassthrough(),
        } | prompt

        for question in ["how do I keep red apples fresh?", "which bus goes downtown?"]:
            print(f"\n{question!r}, kept after reranking:")
            for document in best.invoke(question):
                print(f"  {document.metadata['relevance_score']:.3f}  {label(document)}")
            filled = chain.invoke(question)
            print("  The chat model's prompt:")
            print("    " + filled.to_string().replace("\n", "\n    "))
            print(f"  Its answer: {fake_llm.invoke(filled).content}")


if __name__ == "__main__":
    main()
