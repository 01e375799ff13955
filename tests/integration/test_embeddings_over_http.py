"""Embeddings in the core over real loopback sockets, against the emulator: its vectors, base64
answers, limits, faults and key check. Every test runs with the sync and the async client."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from siliconflow_rerank import (
    BadRequestError,
    EmbeddingCache,
    ResponseValidationError,
    ServiceUnavailableError,
    SiliconFlowClient,
    image_item,
)
from siliconflow_rerank.emulator import Fault, RerankEmulator

from ..helpers import png_file

VL = "Qwen/Qwen3-VL-Embedding-8B"


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_emulator_vectors_rank_obvious_matches_first(make_runner, emulator):
    documents = ["Apple released a phone.", "Bananas ripen fast.", "Store apples in the fridge."]
    runner = make_runner(base_url=emulator.base_url)
    response = runner.embed(["How do I keep apples fresh?", *documents])
    query, *vectors = response.embeddings
    order = sorted(range(3), key=lambda i: -cosine(query, vectors[i]))
    assert order == [2, 0, 1]
    assert all(len(v) == 1024 for v in response.embeddings)
    assert emulator.embed({"model": "BAAI/bge-m3", "input": documents})["data"][2][
        "embedding"
    ] == pytest.approx(vectors[2])


def test_emulator_base64_equals_floats_and_dimensions_hold(make_runner, emulator):
    runner = make_runner(base_url=emulator.base_url)
    texts = [f"note {i} about apples" for i in range(40)]
    options = {"model": "Qwen/Qwen3-Embedding-4B", "dimensions": 256}
    floats = runner.embed(texts, **options)
    packed = runner.embed(texts, encoding_format="base64", **options)
    assert emulator.stats.by_status == {200: 4}
    assert len(packed.embeddings) == 40
    for a, b in zip(floats.embeddings, packed.embeddings, strict=True):
        assert len(a) == len(b) == 256
        assert b == pytest.approx(a, abs=1e-6)


def test_emulator_images_embed_from_the_words_they_carry(make_runner, emulator):
    runner = make_runner(base_url=emulator.base_url)
    response = runner.embed(
        [
            "red apple",
            image_item("https://x.test/red-apple.png"),
            image_item("https://x.test/bus.jpg"),
        ],
        model="Qwen/Qwen3-VL-Embedding-8B",
    )
    text, apple, bus = response.embeddings
    assert cosine(text, apple) > 0.9 > cosine(text, bus)


def test_emulator_refuses_more_than_32_inputs_in_one_request(emulator):
    answer = httpx.post(
        f"{emulator.base_url}/embeddings",
        json={"model": "BAAI/bge-m3", "input": ["a"] * 33},
        headers={"Authorization": "Bearer any"},
    )
    assert answer.status_code == 400
    assert "at most 32" in answer.json()["message"]


def test_emulator_faults_reach_embeddings_and_are_retried_or_rejected(make_runner, emulator):
    runner = make_runner(base_url=emulator.base_url)
    emulator.enqueue(Fault.overloaded())
    assert len(runner.embed(["apple"]).embeddings) == 1
    assert runner.sleeps.delays  # the 503 was retried
    emulator.enqueue(Fault.duplicate_index())
    with pytest.raises(ResponseValidationError, match="appears twice"):
        runner.embed(["apple", "pear"])
    emulator.enqueue(Fault.non_finite_score())
    with pytest.raises(ResponseValidationError, match="finite"):
        runner.embed(["apple", "pear"], encoding_format="base64")
    emulator.enqueue(*[Fault.overloaded()] * 3)
    with pytest.raises(ServiceUnavailableError):
        runner.embed(["apple"])


def test_emulator_checks_the_key_and_counts_tokens(make_runner, emulator):
    emulator.api_key = "sk-right"
    with pytest.raises(Exception, match="401"):
        make_runner(base_url=emulator.base_url, api_key="sk-wrong").embed(["apple"])
    response = make_runner(base_url=emulator.base_url, api_key="sk-right").embed(
        ["apple pie", "pear"]
    )
    assert response.usage is not None
    assert response.usage.total_tokens == 3
    assert emulator.stats.last_request_headers["authorization"] == "Bearer sk-right"


# -- the embeddings cache -------------------------------------------------------------------------


def test_cache_serves_repeats_and_sends_only_misses(make_runner, emulator):
    cache = EmbeddingCache()
    runner = make_runner(base_url=emulator.base_url, embedding_cache=cache)
    first = runner.embed(["apple pie", "red car", "green pear"])
    assert emulator.stats.requests == 1
    again = runner.embed(["apple pie", "red car", "green pear"])
    assert emulator.stats.requests == 1  # all cached: no request
    assert again.embeddings == first.embeddings
    assert again.usage is None
    mixed = runner.embed(["blue bus", "red car", "yellow lemon", "apple pie"])
    assert emulator.stats.requests == 2
    assert emulator.stats.last_request_body["input"] == ["blue bus", "yellow lemon"]
    uncached = make_runner(base_url=emulator.base_url).embed(
        ["blue bus", "red car", "yellow lemon", "apple pie"]
    )
    assert mixed.embeddings == uncached.embeddings  # in input order, equal to an uncached call
    assert (cache.hits, cache.misses) == (5, 5)


def test_a_failing_batch_is_named_by_the_calls_own_positions(make_runner, emulator):
    # With some inputs cached, the batches hold the others: the error names where they stand
    # in the call, not in the list of inputs sent.
    inputs = [f"fruit number {i}" for i in range(10)]
    runner = make_runner(
        base_url=emulator.base_url, embedding_cache=EmbeddingCache(), max_retries=0
    )
    runner.embed([inputs[i] for i in (0, 1, 2, 5)])
    emulator.reset()
    emulator.enqueue(Fault.http_status(400, {"code": 20015, "message": "no"}))
    with pytest.raises(BadRequestError) as info:
        runner.embed(inputs, batch_size=3)  # sent: inputs 3, 4, 6 and inputs 7, 8, 9
    ranges = {0: "inputs 3..6", 1: "inputs 7..9"}
    assert info.value.batch in ranges
    assert f"batch {info.value.batch + 1} of 2 ({ranges[info.value.batch]}) failed" in str(
        info.value
    )


@pytest.mark.parametrize(
    "change",
    [
        {"model": "Qwen/Qwen3-Embedding-0.6B"},
        {"model": "Qwen/Qwen3-Embedding-0.6B", "dimensions": 64},
        {"encoding_format": "float"},
    ],
    ids=["model", "dimensions", "encoding"],
)
def test_cache_key_covers_everything_that_decides_a_vector(make_runner, emulator, change):
    runner = make_runner(base_url=emulator.base_url, embedding_cache=EmbeddingCache())
    runner.embed(["apple pie"], model="Qwen/Qwen3-Embedding-0.6B")
    runner.embed(["apple pie"], **{"model": "Qwen/Qwen3-Embedding-0.6B", **change})
    expected = 1 if change == {"model": "Qwen/Qwen3-Embedding-0.6B"} else 2
    assert emulator.stats.requests == expected


def test_cache_is_keyed_by_server_and_shared_between_clients(make_runner, emulator):
    cache = EmbeddingCache()
    make_runner(base_url=emulator.base_url, embedding_cache=cache).embed(["apple"])
    with RerankEmulator() as other:
        make_runner(base_url=other.base_url, embedding_cache=cache).embed(["apple"])
        assert other.stats.requests == 1  # another server: a miss
    sibling = SiliconFlowClient(
        api_key="sk-test-key-123456", base_url=emulator.base_url, embedding_cache=cache
    )
    sibling.embed(["apple"])
    assert emulator.stats.requests == 1  # the sync or async sibling of the same key hit it
    sibling.close()


def test_a_cache_is_partitioned_by_api_key_unless_shared(make_runner, emulator):
    cache = EmbeddingCache()
    make_runner(base_url=emulator.base_url, embedding_cache=cache).embed(["apple"])
    other_key = SiliconFlowClient(
        api_key="sk-other-tenant-99", base_url=emulator.base_url, embedding_cache=cache
    )
    other_key.embed(["apple"])
    assert emulator.stats.requests == 2  # another account: a request of its own
    shared: dict[str, Any] = {"embedding_cache": cache, "share_cache_across_keys": True}
    make_runner(base_url=emulator.base_url, **shared).embed(["pear"])
    third = SiliconFlowClient(api_key="sk-third-tenant-7", base_url=emulator.base_url, **shared)
    third.embed(["pear"])
    assert emulator.stats.requests == 3  # shared on purpose: the second key's call hit
    other_key.close()
    third.close()


def test_cache_keys_images_by_their_content(make_runner, emulator, tmp_path):
    apple = png_file(tmp_path / "apple.png", "red apple", 100)
    copy = png_file(tmp_path / "copy.png", "red apple", 100)
    runner = make_runner(base_url=emulator.base_url, embedding_cache=EmbeddingCache())
    first = runner.embed([image_item(apple)], model=VL)
    second = runner.embed([image_item(copy)], model=VL)
    assert emulator.stats.requests == 1
    assert first.embeddings == second.embeddings
    png_file(tmp_path / "apple.png", "green pear", 100)
    runner.embed([image_item(apple)], model=VL)
    assert emulator.stats.requests == 2  # changed content, new key


def test_long_lists_with_a_partial_hit_keep_order_across_batches(make_runner, emulator):
    cache = EmbeddingCache()
    runner = make_runner(base_url=emulator.base_url, embedding_cache=cache)
    texts = [f"note {i} about apples" for i in range(80)]
    runner.embed(texts[::3])  # 27 inputs: one request
    response = runner.embed(texts)  # the 53 others: requests of 32 and 21
    assert emulator.stats.requests == 3
    assert emulator.stats.last_request_body["input"][0] in texts
    expected = make_runner(base_url=emulator.base_url).embed(texts)
    assert response.embeddings == expected.embeddings
