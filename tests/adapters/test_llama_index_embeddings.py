"""`SiliconFlowEmbedding` (LlamaIndex) against the emulator over a real socket."""

from __future__ import annotations

import base64
import pickle
from io import BytesIO
from pathlib import Path

import pytest
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.schema import ImageNode, TextNode

from llama_index_siliconflow import SiliconFlowEmbedding, SiliconFlowRerank
from siliconflow_rerank import EmbeddingCache, InvalidRequestError, SiliconFlowClient, image_item

from ..helpers import png_file

KEY = "sk-llama-embeddings-7070"
VL = "Qwen/Qwen3-VL-Embedding-8B"
NOTES = [
    "Store apples in the fridge; they stay fresh for weeks.",
    "The city bus timetable changes in winter.",
    "Apple pie is best with sour apples.",
    "Bike tyres lose pressure in the cold.",
    "Keep cut apples fresh with lemon juice.",
]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_texts_and_query_match_the_core_clients_vectors(emulator):
    embedding = SiliconFlowEmbedding(api_key=KEY, base_url=emulator.base_url)
    with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url) as client:
        expected = client.embed([*NOTES, "fresh apples"]).embeddings
    assert embedding.get_text_embedding_batch(NOTES) == expected[:-1]
    assert embedding.get_text_embedding(NOTES[0]) == expected[0]
    assert embedding.get_query_embedding("fresh apples") == expected[-1]
    assert embedding.model_name == "BAAI/bge-m3"


async def test_async_twins_give_the_same_vectors(emulator):
    embedding = SiliconFlowEmbedding(api_key=KEY, base_url=emulator.base_url)
    assert await embedding.aget_text_embedding_batch(NOTES) == embedding.get_text_embedding_batch(
        NOTES
    )
    assert await embedding.aget_query_embedding("apples") == embedding.get_query_embedding("apples")
    assert await embedding.aget_text_embedding("pie") == embedding.get_text_embedding("pie")
    await embedding.aclose()
    embedding.close()


def test_the_llama_index_classs_arguments_work(emulator):
    # LlamaIndex's own SiliconFlow embedding takes the endpoint's full URL as base_url.
    embedding = SiliconFlowEmbedding(
        model="Qwen/Qwen3-Embedding-0.6B",
        api_key=KEY,
        base_url=f"{emulator.base_url}/embeddings",
        encoding_format="base64",
        embed_batch_size=10,
        max_retries=1,
        dimensions=128,
    )
    vectors = embedding.get_text_embedding_batch([f"note {i}" for i in range(25)])
    assert [len(v) for v in vectors] == [128] * 25
    assert emulator.stats.by_status == {200: 3}  # groups of 10 as LlamaIndex hands them over
    body = emulator.stats.last_request_body
    assert body["encoding_format"] == "base64"
    assert body["dimensions"] == 128
    assert emulator.stats.last_request_headers["authorization"] == f"Bearer {KEY}"
    floats = SiliconFlowEmbedding(
        model="Qwen/Qwen3-Embedding-0.6B", api_key=KEY, base_url=emulator.base_url, dimensions=128
    )
    assert floats.get_text_embedding("note 3") == pytest.approx(vectors[3], abs=1e-6)


def test_long_lists_go_out_in_concurrent_requests_of_at_most_32(emulator):
    embedding = SiliconFlowEmbedding(api_key=KEY, base_url=emulator.base_url)
    texts = [f"note {i} on apples" for i in range(100)]
    vectors = embedding.get_text_embedding_batch(texts)
    assert len(vectors) == 100
    assert emulator.stats.by_status == {200: 4}
    assert vectors[57] == embedding.get_text_embedding(texts[57])


def test_images_from_a_path_bytes_a_url_or_a_data_uri(emulator, tmp_path: Path):
    apple = png_file(tmp_path / "apple.png", "red apple", 100)
    embedding = SiliconFlowEmbedding(model=VL, api_key=KEY, base_url=emulator.base_url)
    data_uri = "data:image/png;base64," + base64.b64encode(apple.read_bytes()).decode()
    from_path = embedding.get_image_embedding(str(apple))
    assert embedding.get_image_embedding(BytesIO(apple.read_bytes())) == from_path
    assert embedding.get_image_embedding(data_uri) == from_path
    assert emulator.stats.last_request_body["input"] == [{"image": data_uri}]
    with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url) as client:
        expected = client.embed([image_item(apple)], model=VL).embeddings[0]
    assert from_path == expected
    by_url = embedding.get_image_embedding_batch(
        ["https://x.test/red-apple.png", "https://x.test/bus.jpg"]
    )
    text = embedding.get_query_embedding("red apple")
    assert dot(text, by_url[0]) > 0.9 > dot(text, by_url[1])


async def test_async_images(emulator, tmp_path: Path):
    apple = png_file(tmp_path / "apple.png", "red apple", 100)
    embedding = SiliconFlowEmbedding(model=VL, api_key=KEY, base_url=emulator.base_url)
    assert await embedding.aget_image_embedding(str(apple)) == embedding.get_image_embedding(
        str(apple)
    )
    batch = await embedding.aget_image_embedding_batch([str(apple), BytesIO(apple.read_bytes())])
    assert batch[0] == batch[1]
    await embedding.aclose()


def test_a_text_only_model_given_an_image_fails_before_any_request(emulator, tmp_path: Path):
    apple = png_file(tmp_path / "apple.png", "red apple", 100)
    embedding = SiliconFlowEmbedding(api_key=KEY, base_url=emulator.base_url)
    with pytest.raises(InvalidRequestError, match="image"):
        embedding.get_image_embedding(str(apple))
    assert emulator.stats.requests == 0


def test_no_texts_send_no_request(emulator):
    embedding = SiliconFlowEmbedding(api_key=KEY, base_url=emulator.base_url)
    assert embedding.get_text_embedding_batch([]) == []
    assert emulator.stats.requests == 0


def test_missing_key_fails_on_first_use_naming_the_variable():
    with pytest.raises(InvalidRequestError, match="SILICONFLOW_API_KEY"):
        SiliconFlowEmbedding().get_query_embedding("apples")


def test_the_key_stays_out_of_repr_and_pickles(emulator, monkeypatch):
    embedding = SiliconFlowEmbedding(api_key=KEY, base_url=emulator.base_url)
    embedding.get_query_embedding("apples")
    assert KEY not in repr(embedding)
    assert KEY not in str(embedding.to_dict())
    data = pickle.dumps(embedding)
    assert KEY.encode() not in data
    monkeypatch.setenv("SILICONFLOW_API_KEY", "sk-from-env")
    restored = pickle.loads(data)
    expected = embedding.get_query_embedding("apples")
    assert restored.get_query_embedding("apples") == expected
    assert emulator.stats.last_request_headers["authorization"] == "Bearer sk-from-env"


def test_a_vector_store_index_then_the_reranker_find_the_right_notes(emulator):
    embedding = SiliconFlowEmbedding(api_key=KEY, base_url=emulator.base_url)
    nodes = [TextNode(text=note, id_=f"n{i}") for i, note in enumerate(NOTES)]
    index = VectorStoreIndex(nodes, embed_model=embedding)
    reranker = SiliconFlowRerank(api_key=KEY, base_url=emulator.base_url, top_n=2)
    query = "how to keep apples fresh"
    retriever = index.as_retriever(similarity_top_k=4)
    found = reranker.postprocess_nodes(retriever.retrieve(query), query_str=query)

    # What the emulator says: the 4 nearest notes by cosine, then its rerank order of those.
    with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url) as client:
        query_vector, *vectors = client.embed([query, *NOTES]).embeddings
        nearest = sorted(range(len(NOTES)), key=lambda i: -dot(query_vector, vectors[i]))[:4]
        ranked = client.rerank(query, [NOTES[i] for i in nearest], top_n=2).results
    assert [n.node.get_content() for n in found] == [NOTES[nearest[r.index]] for r in ranked]


def test_a_multimodal_index_retrieves_images_by_text(emulator, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(Settings, "_embed_model", None)
    embedding = SiliconFlowEmbedding(model=VL, api_key=KEY, base_url=emulator.base_url)
    words = ["red apple", "city bus", "green pear"]
    images = [png_file(tmp_path / f"{w.replace(' ', '-')}.png", w, 100) for w in words]
    nodes = [
        TextNode(text="Apples keep in the fridge."),
        # As a directory reader loads them: with the file's name as metadata (content to index).
        *(
            ImageNode(image_path=str(path), id_=path.stem, metadata={"file_name": path.name})
            for path in images
        ),
    ]
    index = MultiModalVectorStoreIndex(nodes, embed_model=embedding, image_embed_model=embedding)
    retriever = index.as_retriever(similarity_top_k=1, image_similarity_top_k=1)
    found = retriever.text_to_image_retrieve("a red apple")
    assert [n.node.node_id for n in found] == ["red-apple"]
    texts = retriever.text_retrieve("apples in the fridge")
    assert texts[0].node.get_content() == "Apples keep in the fridge."

    # Then the VL reranker orders the notes and pictures retrieved together.
    everything = index.as_retriever(similarity_top_k=1, image_similarity_top_k=3).retrieve(
        "a red apple"
    )
    assert len(everything) == 4
    reranker = SiliconFlowRerank(
        model="Qwen/Qwen3-VL-Reranker-8B",
        api_key=KEY,
        base_url=emulator.base_url,
        top_n=2,
        allow_local_media=True,
    )
    best = reranker.postprocess_nodes(everything, query_str="a red apple")
    assert [n.node.node_id for n in best] == ["red-apple", texts[0].node.node_id]


def test_an_embedding_cache_serves_repeated_texts_and_images(emulator, tmp_path: Path):
    apple = png_file(tmp_path / "apple.png", "red apple", 100)
    cache = EmbeddingCache()
    embedding = SiliconFlowEmbedding(
        model=VL, api_key=KEY, base_url=emulator.base_url, embedding_cache=cache
    )
    texts = embedding.get_text_embedding_batch(NOTES)
    image = embedding.get_image_embedding(str(apple))
    assert embedding.get_text_embedding_batch(NOTES) == texts
    assert embedding.get_image_embedding(BytesIO(apple.read_bytes())) == image
    assert emulator.stats.requests == 2
