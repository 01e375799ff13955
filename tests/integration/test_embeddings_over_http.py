"""Embeddings in the core over real loopback sockets, against the emulator: its vectors, base64
answers, limits, faults and key check. Every test runs with the sync and the async client."""

from __future__ import annotations

import httpx
import pytest

from siliconflow_rerank import ResponseValidationError, ServiceUnavailableError, image_item
from siliconflow_rerank.emulator import Fault


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
