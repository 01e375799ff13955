"""`SiliconFlowEmbeddings` (LangChain) against the emulator over a real socket."""

from __future__ import annotations

import asyncio
import pickle

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ValidationError

from langchain_siliconflow import SiliconFlowEmbeddings, SiliconFlowRerank
from siliconflow_rerank import EmbeddingCache, InvalidRequestError, SiliconFlowClient, image_item

from ..helpers import png_file

KEY = "sk-embeddings-canary-8080"
NOTES = [
    "Store apples in the fridge; they stay fresh for weeks.",
    "The city bus timetable changes in winter.",
    "Apple pie is best with sour apples.",
    "Bike tyres lose pressure in the cold.",
    "Keep cut apples fresh with lemon juice.",
]


def test_documents_and_query_match_the_core_clients_vectors(emulator):
    embeddings = SiliconFlowEmbeddings(api_key=KEY, base_url=emulator.base_url)
    with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url) as client:
        expected = client.embed([*NOTES, "fresh apples"]).embeddings
    assert embeddings.embed_documents(NOTES) == expected[:-1]
    assert embeddings.embed_query("fresh apples") == expected[-1]
    assert emulator.stats.last_request_body["model"] == "BAAI/bge-m3"


async def test_async_twins_give_the_same_vectors(emulator):
    embeddings = SiliconFlowEmbeddings(api_key=KEY, base_url=emulator.base_url)
    assert await embeddings.aembed_documents(NOTES) == embeddings.embed_documents(NOTES)
    assert await embeddings.aembed_query("apples") == embeddings.embed_query("apples")
    await embeddings.aclose()
    embeddings.close()


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_long_lists_go_out_in_requests_of_at_most_32(emulator, asynchronous):
    embeddings = SiliconFlowEmbeddings(api_key=KEY, base_url=emulator.base_url)
    texts = [f"note {i} on apples" for i in range(100)]
    if asynchronous:
        vectors = await embeddings.aembed_documents(texts)
    else:
        vectors = embeddings.embed_documents(texts)
    assert len(vectors) == 100
    assert emulator.stats.by_status == {200: 4}
    assert vectors[57] == embeddings.embed_query(texts[57])


def test_the_vendors_constructor_arguments_work(emulator):
    embeddings = SiliconFlowEmbeddings(
        model="Qwen/Qwen3-Embedding-0.6B",
        siliconflow_api_key=KEY,
        base_url=emulator.base_url,
        timeout=30,
        max_retries=1,
        dimensions=128,
    )
    assert len(embeddings.embed_query("apples")) == 128
    assert emulator.stats.last_request_headers["authorization"] == f"Bearer {KEY}"
    assert emulator.stats.last_request_body["dimensions"] == 128


def test_no_texts_send_no_request(emulator):
    embeddings = SiliconFlowEmbeddings(api_key=KEY, base_url=emulator.base_url)
    assert embeddings.embed_documents([]) == []
    assert emulator.stats.requests == 0


def test_unknown_arguments_are_refused():
    with pytest.raises(ValidationError, match="model_name"):
        SiliconFlowEmbeddings(model_name="BAAI/bge-m3")


def test_missing_key_fails_on_first_use_naming_the_variable():
    embeddings = SiliconFlowEmbeddings()
    with pytest.raises(InvalidRequestError, match="SILICONFLOW_API_KEY"):
        embeddings.embed_query("apples")


def test_bad_input_fails_before_any_request(emulator):
    embeddings = SiliconFlowEmbeddings(api_key=KEY, base_url=emulator.base_url, dimensions=100)
    with pytest.raises(InvalidRequestError, match="does not take dimensions"):
        embeddings.embed_query("apples")
    with pytest.raises(InvalidRequestError, match="empty"):
        SiliconFlowEmbeddings(api_key=KEY, base_url=emulator.base_url).embed_documents(["a", ""])
    assert emulator.stats.requests == 0


def test_the_key_stays_out_of_repr_and_pickles(emulator, monkeypatch):
    embeddings = SiliconFlowEmbeddings(api_key=KEY, base_url=emulator.base_url)
    embeddings.embed_query("apples")
    assert KEY not in repr(embeddings)
    assert KEY not in str(embeddings)
    data = pickle.dumps(embeddings)
    assert KEY.encode() not in data
    monkeypatch.setenv("SILICONFLOW_API_KEY", "sk-from-env")
    restored = pickle.loads(data)
    assert restored.embed_query("apples") == embeddings.embed_query("apples")
    restored.embed_query("apples")
    assert emulator.stats.last_request_headers["authorization"] == "Bearer sk-from-env"


def test_a_vector_store_retriever_then_the_reranker_find_the_right_notes(emulator):
    embeddings = SiliconFlowEmbeddings(api_key=KEY, base_url=emulator.base_url)
    store = InMemoryVectorStore(embeddings)
    store.add_documents([Document(page_content=note) for note in NOTES])
    reranker = SiliconFlowRerank(api_key=KEY, base_url=emulator.base_url, top_n=2)
    retriever = ContextualCompressionRetriever(
        base_compressor=reranker, base_retriever=store.as_retriever(search_kwargs={"k": 4})
    )
    query = "how to keep apples fresh"
    found = retriever.invoke(query)

    # What the emulator says: the 4 nearest notes by cosine, then its rerank order of those.
    with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url) as client:
        query_vector, *vectors = client.embed([query, *NOTES]).embeddings
        nearest = sorted(
            range(len(NOTES)),
            key=lambda i: -sum(a * b for a, b in zip(query_vector, vectors[i], strict=True)),
        )[:4]
        ranked = client.rerank(query, [NOTES[i] for i in nearest], top_n=2).results
    assert [d.page_content for d in found] == [NOTES[nearest[r.index]] for r in ranked]
    assert "apples" in found[0].page_content


def test_images_embed_with_the_multimodal_model_sync_and_async(emulator, tmp_path):
    apple = png_file(tmp_path / "apple.png", "red apple", 100)
    embeddings = SiliconFlowEmbeddings(
        model="Qwen/Qwen3-VL-Embedding-8B", api_key=KEY, base_url=emulator.base_url
    )
    vectors = embeddings.embed_image([str(apple), "https://x.test/bus.jpg"])
    with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url) as client:
        expected = client.embed(
            [image_item(apple), image_item("https://x.test/bus.jpg")],
            model="Qwen/Qwen3-VL-Embedding-8B",
        ).embeddings
    assert vectors == expected
    assert asyncio.run(embeddings.aembed_image([str(apple)])) == expected[:1]
    query = embeddings.embed_query("a red apple")
    assert sum(a * b for a, b in zip(query, vectors[0], strict=True)) > 0.9
    assert embeddings.embed_image([]) == []


def test_a_text_only_model_refuses_images_before_any_request(emulator, tmp_path):
    apple = png_file(tmp_path / "apple.png", "red apple", 100)
    embeddings = SiliconFlowEmbeddings(api_key=KEY, base_url=emulator.base_url)
    with pytest.raises(InvalidRequestError, match="image"):
        embeddings.embed_image([str(apple)])
    assert emulator.stats.requests == 0


def test_an_embedding_cache_serves_repeated_texts(emulator):
    cache = EmbeddingCache()
    embeddings = SiliconFlowEmbeddings(
        api_key=KEY, base_url=emulator.base_url, embedding_cache=cache
    )
    first = embeddings.embed_documents(NOTES)
    assert embeddings.embed_documents(NOTES) == first
    assert embeddings.embed_query(NOTES[2]) == first[2]
    assert emulator.stats.requests == 1
    assert cache.hits == len(NOTES) + 1
