"""Batching, concurrency, rate limiting, caching and progress: through both clients."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siliconflow_rerank import (
    InlineMedia,
    InvalidRequestError,
    RerankCache,
    ServiceUnavailableError,
    SiliconFlowClient,
    image_item,
)
from siliconflow_rerank._ratelimit import InMemoryRateLimit
from siliconflow_rerank._wire import MEDIA_TOKENS, estimate_tokens
from siliconflow_rerank.emulator import Fault, RerankEmulator

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
WORDS = ["apple", "pear", "fresh", "fridge", "car", "bus", "pie", "lemon", "green", "red"]


def corpus(n: int) -> list[str]:
    return [f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]} note {i}" for i in range(n)]


class Counting:
    """A MockTransport handler that scores by document length and records every body."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_on_call = fail_on_call
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with self.lock:
            self.bodies.append(body)
            call = len(self.bodies)
        if call == self.fail_on_call:
            return httpx.Response(503, json={"code": 50505, "message": "Model service overloaded."})
        scored = [
            {"index": i, "relevance_score": 1 / (1 + len(d))}
            for i, d in enumerate(body["documents"])
        ]
        scored.sort(key=lambda r: (-r["relevance_score"], r["index"]))
        if "top_n" in body:
            scored = scored[: body["top_n"]]
        meta = {"tokens": {"input_tokens": len(body["documents"]), "output_tokens": 0}}
        return httpx.Response(200, json={"id": f"r{call}", "results": scored, "meta": meta})


# -- batching -----------------------------------------------------------------------------------


def test_long_lists_are_split_and_merged(make_runner):
    handler = Counting()
    runner = make_runner(handler, max_documents_per_request=4, max_concurrency=3)
    documents = ["x" * n for n in (9, 1, 5, 3, 7, 2, 8, 4, 6, 10)]
    response = runner.rerank("q", documents, top_n=3)
    assert sorted(len(b["documents"]) for b in handler.bodies) == [2, 4, 4]
    assert all(b["top_n"] == min(3, len(b["documents"])) for b in handler.bodies)
    assert [r.index for r in response.results] == [1, 5, 3]
    assert response.usage is not None
    assert response.usage.input_tokens == 10


def test_short_lists_are_sent_as_one_request(make_runner):
    handler = Counting()
    make_runner(handler).rerank("q", ["a"] * 128)
    assert len(handler.bodies) == 1


def test_a_failed_batch_fails_the_call_and_is_named(make_runner):
    runner = make_runner(Counting(fail_on_call=2), max_documents_per_request=2, max_retries=0,
                         max_concurrency=1)  # fmt: skip
    with pytest.raises(ServiceUnavailableError, match=r"batch 2 of 3 \(documents 2..3\)") as info:
        runner.rerank("q", ["a", "b", "c", "d", "e"])
    assert info.value.batch == 1
    assert info.value.status_code == 503


def test_progress_is_reported_per_batch(make_runner):
    seen: list[tuple[int, int]] = []
    runner = make_runner(Counting(), max_documents_per_request=3, max_concurrency=1)
    runner.rerank("q", ["a"] * 10, on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_documents_per_request", 0),
        ("max_concurrency", 0),
        ("max_connections", 0),
        ("requests_per_minute", 0),
        ("tokens_per_minute", -5),
    ],
)
def test_bad_scale_settings_fail_at_construction(client_kind, setting, value):
    from siliconflow_rerank import AsyncSiliconFlowClient

    cls = SiliconFlowClient if client_kind == "sync" else AsyncSiliconFlowClient
    with pytest.raises(InvalidRequestError, match=setting):
        cls(api_key="k", **{setting: value})


def test_batches_run_concurrently_over_http(make_runner, emulator):
    emulator.latency = 0.2
    runner = make_runner(base_url=emulator.base_url, max_documents_per_request=10,
                         max_concurrency=4)  # fmt: skip
    runner.rerank("apple", corpus(80))
    stats = emulator.stats
    assert stats.requests == 8
    assert stats.max_in_flight == 4


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    count=st.integers(min_value=1, max_value=60),
    batch=st.integers(min_value=1, max_value=25),
    top_n=st.one_of(st.none(), st.integers(min_value=1, max_value=70)),
    query=st.sampled_from(["apple", "fresh pear", "red bus note", "nothing matches"]),
)
def test_batched_answer_equals_one_request(emulator_for_property, count, batch, top_n, query):
    documents = corpus(count)
    with SiliconFlowClient(api_key="k", base_url=emulator_for_property.base_url,
                           max_documents_per_request=None) as whole, \
         SiliconFlowClient(api_key="k", base_url=emulator_for_property.base_url,
                           max_documents_per_request=batch, max_concurrency=3) as split:  # fmt: skip
        expected = whole.rerank(query, documents, top_n=top_n, return_documents=True)
        got = split.rerank(query, documents, top_n=top_n, return_documents=True)
    assert got.results == expected.results
    assert got.usage is not None
    assert expected.usage is not None
    assert got.usage.input_tokens == expected.usage.input_tokens


@pytest.fixture(scope="module")
def emulator_for_property():
    with RerankEmulator() as emulator:
        yield emulator


# -- cache --------------------------------------------------------------------------------------


def test_cache_serves_repeats_and_sends_only_misses(make_runner, emulator):
    cache = RerankCache()
    runner = make_runner(base_url=emulator.base_url, cache=cache)
    plain = make_runner(base_url=emulator.base_url)
    first = runner.rerank("apple", corpus(6), top_n=3)
    assert (cache.hits, cache.misses) == (0, 6)
    again = runner.rerank("apple", corpus(6), top_n=3)
    assert again.results == first.results
    assert emulator.stats.requests == 1
    assert (cache.hits, cache.misses) == (6, 6)

    more = runner.rerank("apple", corpus(9), top_n=4, return_documents=True)
    assert emulator.stats.last_request_body["documents"] == corpus(9)[6:]
    assert "top_n" not in emulator.stats.last_request_body  # every score is wanted, to cache it
    assert more.results == plain.rerank("apple", corpus(9), top_n=4, return_documents=True).results
    assert (cache.hits, cache.misses) == (12, 9)


@pytest.mark.parametrize(
    "change",
    [
        {"query": "pear"},
        {"model": "Pro/BAAI/bge-reranker-v2-m3"},
        {"max_chunks_per_doc": 2},
        {"overlap_tokens": 5},
    ],
)
def test_cache_key_covers_everything_that_decides_a_score(make_runner, emulator, change):
    cache = RerankCache()
    runner = make_runner(base_url=emulator.base_url, cache=cache)
    call: dict[str, Any] = {"query": "apple", "documents": corpus(3)}
    runner.rerank(**call)
    runner.rerank(**{**call, **change})
    assert cache.hits == 0
    assert emulator.stats.requests == 2


def test_cache_is_keyed_by_server(make_runner, emulator):
    cache = RerankCache()
    with RerankEmulator() as other:
        make_runner(base_url=emulator.base_url, cache=cache).rerank("apple", corpus(3))
        make_runner(base_url=other.base_url, cache=cache).rerank("apple", corpus(3))
    assert cache.hits == 0


def test_cache_keys_each_document_once_per_call(make_runner, emulator, monkeypatch):
    # Keying an inline media item hashes its whole content: a call does it once per document,
    # for the lookup and the store alike.
    hashed: list[InlineMedia] = []
    real = InlineMedia.fingerprint

    def counted(self: InlineMedia) -> str:
        hashed.append(self)
        return real(self)

    monkeypatch.setattr(InlineMedia, "fingerprint", counted)
    pictures = [image_item(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 64) for i in range(3)]
    runner = make_runner(base_url=emulator.base_url, cache=RerankCache())
    runner.rerank("banana", pictures, model="Qwen/Qwen3-VL-Reranker-8B")
    assert len(hashed) == 3
    runner.rerank("banana", pictures, model="Qwen/Qwen3-VL-Reranker-8B")
    assert len(hashed) == 6
    assert emulator.stats.requests == 1  # the second call came from the cache


def test_cache_evicts_least_recently_used():
    cache = RerankCache(maxsize=2)
    cache.set_many([(b"a", b"0.1"), (b"b", b"0.2")])
    assert cache.get_many([b"a"]) == [b"0.1"]
    cache.set_many([(b"c", b"0.3")])
    assert cache.get_many([b"a", b"b", b"c"]) == [b"0.1", None, b"0.3"]
    assert len(cache) == 2
    cache.clear()
    assert (len(cache), cache.hits, cache.misses) == (0, 0, 0)


# -- rate limiting ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_window():
    clock = Clock()
    limiter = InMemoryRateLimit(requests_per_minute=2, margin_seconds=0, clock=clock)
    assert [limiter.reserve(0), limiter.reserve(0)] == [0.0, 0.0]
    # The third fits once the first two have left the window, whatever time has passed.
    assert limiter.reserve(0) == pytest.approx(60.0)
    clock.now = 30.0
    assert limiter.reserve(0) == pytest.approx(30.0)  # beside the third, at 60
    assert limiter.reserve(0) == pytest.approx(90.0)  # the window (60, 120] holds two already
    clock.now = 200.0
    assert limiter.reserve(0) == 0.0


def test_the_window_has_a_margin_for_the_requests_way_to_the_server():
    clock = Clock()
    limiter = InMemoryRateLimit(requests_per_minute=1, clock=clock)
    assert limiter.reserve(0) == 0.0
    assert limiter.reserve(0) == pytest.approx(60.5)


def test_no_minute_holds_more_than_the_budget():
    clock = Clock()
    limiter = InMemoryRateLimit(
        requests_per_minute=10, tokens_per_minute=1000, margin_seconds=0, clock=clock
    )
    sent: list[tuple[float, int]] = []
    for number in range(200):
        clock.now += (number * 7919 % 13) / 10  # irregular arrivals
        tokens = 50 + number * 31 % 200
        sent.append((clock.now + limiter.reserve(tokens), tokens))
    for end, _ in sent:  # every window that ends at a request, as the service counts: (end-60, end]
        inside = [t for at, t in sent if end - 60 + 1e-9 < at <= end]  # (clock sums round)
        assert len(inside) <= 10
        assert sum(inside) <= 1000
    busy = sent[-1][0] - sent[0][0]
    assert len(sent) >= 10 * busy / 60 * 0.9 or sum(t for _, t in sent) >= 1000 * busy / 60 * 0.9


def test_tokens_per_minute_window_and_settlement():
    clock = Clock()
    limiter = InMemoryRateLimit(tokens_per_minute=600, margin_seconds=0, clock=clock)
    first = limiter.acquire(500)
    assert first.wait == 0.0
    limiter.settle(first, 100)  # the answer reported 100
    assert limiter.reserve(500) == 0.0  # 600 in the window
    assert limiter.reserve(200) == pytest.approx(60.0)  # until the first two leave


def test_a_cancelled_booking_gives_back_its_place():
    clock = Clock()
    limiter = InMemoryRateLimit(requests_per_minute=1, margin_seconds=0, clock=clock)
    assert limiter.reserve(0) == 0.0
    waiting = limiter.acquire(0)
    assert waiting.wait == pytest.approx(60.0)
    limiter.cancel(waiting)
    assert limiter.acquire(0).wait == pytest.approx(60.0)  # not 120


def test_token_estimate_is_generous():
    assert estimate_tokens(["苹果"]).total >= 2
    assert estimate_tokens(["four words of text"]).total >= 4
    assert estimate_tokens(["a", "b", "c"]).total >= 3  # every text counts at least one token


def test_token_estimate_counts_the_texts_not_the_json_around_them():
    # Keys, quotes and the model name are not billed; a text is counted by its UTF-8 bytes.
    assert estimate_tokens(["x" * 300]) == (101, 0)
    assert estimate_tokens(["é" * 150]) == (101, 0)  # 300 bytes in UTF-8


def test_one_answer_cannot_poison_the_budget():
    clock = Clock()
    limiter = InMemoryRateLimit(tokens_per_minute=600, margin_seconds=0, clock=clock)
    booking = limiter.acquire(100)
    limiter.settle(booking, 10**15)  # a broken or hostile usage report counts one window
    assert limiter.reserve(100) == pytest.approx(60.0)
    limiter.settle(booking, -5)  # nonsense is ignored
    assert limiter.reserve(10**12) <= 120.0  # a request beyond the budget waits one window


def test_media_are_estimated_as_media_tokens_not_base64_length():
    image = image_item(PNG + b"\x00" * 5_000_000)
    video = {"video": "https://x.test/a.mp4"}
    estimate = estimate_tokens(["a", image, {"image": "https://x.test/a.png"}, video])
    assert estimate == (1, 2 * MEDIA_TOKENS["image"] + MEDIA_TOKENS["video"])


def test_a_large_image_does_not_stall_a_token_budget(make_runner, emulator):
    runner = make_runner(base_url=emulator.base_url, tokens_per_minute=1_000_000)
    image = image_item(PNG + b"\x00" * 5_000_000)
    for _ in range(3):
        runner.rerank("apple", [image, "apple pie"], model="Qwen/Qwen3-VL-Reranker-8B")
    assert runner.sleeps.delays == []  # it waited 73 s before every call when counted as base64


def test_client_spaces_requests_to_its_budget(make_runner, emulator):
    runner = make_runner(base_url=emulator.base_url, requests_per_minute=3)
    for _ in range(5):
        runner.rerank("apple", corpus(2))
    # Three fit the first minute; the next two wait for the first three to leave it, as booked
    # (the recorded sleeps do not pass real time).
    assert runner.sleeps.delays == [pytest.approx(60.0, abs=2), pytest.approx(60.0, abs=2)]
    assert emulator.stats.by_status == {200: 5}


def test_rate_limit_is_shared_by_batches(make_runner):
    runner = make_runner(Counting(), requests_per_minute=2, max_documents_per_request=1,
                         max_concurrency=1)  # fmt: skip
    runner.rerank("q", ["a", "b", "c", "d"])
    assert len(runner.sleeps.delays) == 2


def test_rate_limited_server_answers_still_retry(make_runner, emulator):
    emulator.enqueue(Fault.rate_limited(retry_after="1"))
    runner = make_runner(base_url=emulator.base_url)
    assert runner.rerank("apple", corpus(2)).results
    assert runner.sleeps.delays == [1.0]
