"""LlamaIndex, multimodal RAG on SiliconFlow alone: embed notes and pictures with
Qwen3-VL-Embedding, retrieve both by a text question, rerank them together with Qwen3-VL-Reranker,
and answer from the best sources.

Writes three small pictures (one colour each, with a caption in a PNG text chunk that the offline
emulator reads in place of vision). Runs offline against the bundled emulator unless
SILICONFLOW_API_KEY is set; the answering LLM is LlamaIndex's MockLLM either way, which shows the
prompt it was given.

    python examples/multimodal_rag_llama_index.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from _support import NOTES, real_api_or_emulator, write_pictures
from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.schema import ImageNode, NodeWithScore, TextNode

from llama_index_siliconflow import SiliconFlowEmbedding, SiliconFlowRerank


def label(result: NodeWithScore) -> str:
    node = result.node
    if isinstance(node, ImageNode) and node.image_path:
        return f"[picture {Path(node.image_path).name}]"
    return node.get_content()


async def answer(
    question: str, index: MultiModalVectorStoreIndex, reranker: SiliconFlowRerank
) -> str:
    retriever = index.as_retriever(similarity_top_k=2, image_similarity_top_k=2)
    found = await retriever.aretrieve(question)  # two notes and two pictures, by cosine
    best = await reranker.apostprocess_nodes(found, query_str=question)
    print(f"\n{question!r}: retrieved {len(found)}, kept after reranking:")
    for result in best:
        print(f"  {result.score:.3f}  {label(result)}")
    sources = "\n".join(f"- {label(result)}" for result in best)
    prompt = f"Answer from these sources:\n{sources}\nQuestion: {question}\nAnswer:"
    reply = await MockLLM().acomplete(prompt)  # a real LLM would answer; MockLLM echoes
    return str(reply.text)


def main() -> None:
    with real_api_or_emulator(), tempfile.TemporaryDirectory() as folder:
        nodes: list[TextNode] = [TextNode(text=note) for note in NOTES]
        for path in write_pictures(folder):
            # As a directory reader loads a picture: its file name is the metadata to index.
            nodes.append(ImageNode(image_path=str(path), metadata={"file_name": path.name}))

        # One multimodal model embeds both the notes and the pictures, so one question finds both.
        embedding = SiliconFlowEmbedding(model="Qwen/Qwen3-VL-Embedding-8B")
        index = MultiModalVectorStoreIndex(
            nodes, embed_model=embedding, image_embed_model=embedding
        )
        # The pictures are files this example wrote itself, so reading them is allowed.
        reranker = SiliconFlowRerank(
            model="Qwen/Qwen3-VL-Reranker-8B", top_n=2, allow_local_media=True
        )
        for question in ["how do I keep red apples fresh?", "which bus goes downtown?"]:
            reply = asyncio.run(answer(question, index, reranker))
            print("  The LLM's prompt (MockLLM echoes it):")
            print("    " + reply.replace("\n", "\n    "))


if __name__ == "__main__":
    main()
