"""Reliability, round three: hostile answers and settings, over real loopback sockets, through
both clients. Each test names the defect class it holds."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from langchain_siliconflow import SiliconFlowRerank as LangChainRerank
from siliconflow_rerank import (
    AsyncSiliconFlowClient,
    InMemoryRateLimit,
    InternalServerError,
    InvalidRequestError,
    RedisEmbeddingCache,
    RedisRateLimit,
    RedisRerankCache,
    ResponseValidationError,
    RetryPolicy,
    SiliconFlowClient,
)
from siliconflow_rerank.emulator import Fault

from ..helpers import ScriptedServer, read_request_head

KEY = "sk-hostile-answers-0042"


def _respond(connection: socket.socket, status: bytes, body: bytes, *headers: bytes) -> None:
    head = b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
    head += b"".join(header + b"\r\n" for header in headers)
    connection.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def _serving(status: bytes, body: bytes, *headers: bytes):
    def script(connection: socket.socket) -> None:
        while read_request_head(connection):
            _respond(connection, status, body, *headers)

    return script


# -- 3: an answer nested a thousand deep is refused, never a raw RecursionError -----------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("endpoint", ["rerank", "embed"])
def test_a_deeply_nested_answer_is_an_invalid_answer(make_runner, endpoint):
    body = b'{"results": [{"index": 0, "relevance_score": 0.5, "document": ' + DEEP + b"}]}"
    if endpoint == "embed":
        body = b'{"data": [{"index": 0, "embedding": ' + DEEP + b"}]}"
    with ScriptedServer(_serving(b"200 OK", body)) as server:
        runner = make_runner(base_url=server.base_url, max_retries=0)
        call = runner.rerank if endpoint == "rerank" else runner.embed
        arguments = ("apple", ["apple pie"]) if endpoint == "rerank" else (["apple pie"],)
        with pytest.raises(ResponseValidationError):
            call(*arguments)


def test_a_deeply_nested_error_body_is_still_the_status_error(make_runner):
    with ScriptedServer(_serving(b"500 Internal Server Error", b'{"x": ' + DEEP + b"}")) as server:
        runner = make_runner(base_url=server.base_url, max_retries=0)
        with pytest.raises(InternalServerError):
            runner.rerank("apple", ["apple pie"])


def test_passthrough_absorbs_a_deeply_nested_answer():
    body = b'{"results": ' + DEEP + b"}"
    with ScriptedServer(_serving(b"200 OK", body)) as server:
        reranker = LangChainRerank(
            api_key=KEY, base_url=server.base_url, max_retries=0, on_error="passthrough"
        )
        from langchain_core.documents import Document

        kept = reranker.compress_documents([Document(page_content="a")], "apple")
        assert [d.metadata["rerank_status"] for d in kept] == ["failed"]


# -- 4: fewer results than min(top_n, documents) are refused ------------------------------------


@pytest.mark.parametrize("top_n", [None, 3, 2])
def test_an_answer_with_fewer_results_than_asked_for_is_refused(make_runner, emulator, top_n):
    emulator.enqueue(Fault.dropped_results())
    runner = make_runner(base_url=emulator.base_url, max_retries=0)
    with pytest.raises(ResponseValidationError, match="was asked for"):
        runner.rerank("apple", ["apple pie", "a car", "green apple"], top_n=top_n)


def test_an_adapter_never_returns_fewer_documents_than_it_was_answered_for(emulator):
    from langchain_core.documents import Document

    emulator.enqueue(Fault.dropped_results())
    reranker = LangChainRerank(api_key=KEY, base_url=emulator.base_url, max_retries=0, top_n=3)
    documents = [Document(page_content=t) for t in ["apple pie", "a car", "green apple"]]
    with pytest.raises(ResponseValidationError):
        reranker.compress_documents(documents, "apple")


# -- 8: one call's vectors are all of one length ------------------------------------------------


def test_a_call_whose_batches_answer_vectors_of_different_lengths_fails(make_runner):
    answered = [0]

    def script(connection: socket.socket) -> None:
        while read_request_head(connection):
            answered[0] += 1
            length = 3 if answered[0] == 1 else 4
            body = {"data": [{"index": 0, "embedding": [0.5] * length}], "model": "m"}
            _respond(connection, b"200 OK", json.dumps(body).encode())

    with ScriptedServer(script) as server:
        runner = make_runner(base_url=server.base_url, max_retries=0, max_concurrency=1)
        with pytest.raises(ResponseValidationError, match="different lengths"):
            runner.embed(["apple", "pear"], batch_size=1)


# -- 11: a cancelled call gives back what it booked ---------------------------------------------


def test_calls_cancelled_while_waiting_for_the_budget_give_their_bookings_back(emulator):
    waits: list[float] = []

    async def recorded_sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    async def main() -> None:
        client = AsyncSiliconFlowClient(
            api_key=KEY,
            base_url=emulator.base_url,
            requests_per_minute=1,
            retry_policy=RetryPolicy(async_sleep=recorded_sleep),
        )
        await client.rerank("apple", ["apple pie"])  # the budget's one request a minute
        for _ in range(5):  # each waits about a minute for its turn, and is given up on
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.rerank("apple", ["apple pie"]), 0.05)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.rerank("apple", ["apple pie"]), 0.05)
        await client.aclose()

    asyncio.run(main())
    assert len(waits) == 6
    assert all(55 <= wait <= 61 for wait in waits)  # never the cancelled calls' minutes added up
    assert emulator.stats.requests == 1


# -- 9: a cached value that fails a live answer's checks is a miss ------------------------------


@pytest.mark.parametrize("stored", [b"nan", b"inf", b"not a score"])
def test_a_redis_score_that_is_no_finite_score_is_a_miss(redis_server, emulator, stored):
    import math
    import struct

    import redis

    value = struct.pack("<d", float(stored)) if stored in (b"nan", b"inf") else stored
    scores = RedisRerankCache(redis_server.url)
    client = SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, cache=scores)
    first = client.rerank("apple", ["apple pie", "a car"])
    store = redis.Redis.from_url(redis_server.url)
    for key in store.keys("*"):
        store.set(key, b"v2:" + value)
    again = client.rerank("apple", ["apple pie", "a car"])
    assert again.results == first.results
    assert all(math.isfinite(r.relevance_score) for r in again.results)
    assert emulator.stats.requests == 2
    client.close()


@pytest.mark.parametrize("vector", [[float("nan")] * 1024, [0.5] * 1023])
def test_a_redis_vector_of_nan_or_another_length_is_a_miss(redis_server, emulator, vector):
    import array

    import redis

    vectors = RedisEmbeddingCache(redis_server.url)
    client = SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, embedding_cache=vectors)
    first = client.embed(["apple", "pear"]).embeddings
    store = redis.Redis.from_url(redis_server.url)
    (key, _) = store.keys("*")
    store.set(key, b"v2:" + array.array("d", vector).tobytes())
    again = client.embed(["apple", "pear"]).embeddings
    assert again == first
    assert emulator.stats.requests == 2
    client.close()


# -- 18: a base URL with credentials is refused, never echoed -----------------------------------


@pytest.mark.parametrize("client_class", [SiliconFlowClient, AsyncSiliconFlowClient])
def test_a_base_url_with_credentials_is_refused_without_its_password(client_class):
    with pytest.raises(InvalidRequestError, match="credentials") as info:
        client_class(api_key=KEY, base_url="https://user:hunter2-secret@api.example/v1")
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None


def test_an_adapter_refuses_a_base_url_with_credentials():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        LangChainRerank(api_key=KEY, base_url="https://user:hunter2-secret@api.example/v1")
    assert "hunter2" not in str(info.value)
    assert "credentials" in str(info.value)


# -- 19: budget and cache settings are checked --------------------------------------------------


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda url: RedisRateLimit(url, requests_per_minute=-5), "requests_per_minute"),
        (lambda url: RedisRateLimit(url, tokens_per_minute=0), "tokens_per_minute"),
        (lambda url: RedisRateLimit(url, requests_per_minute=5, window_seconds=0), "window"),
        (lambda url: RedisRateLimit(url, requests_per_minute=5, margin_seconds=-1), "margin"),
        (lambda url: RedisRerankCache(url, ttl=0), "ttl"),
        (lambda url: RedisEmbeddingCache(url, ttl=-1.0), "ttl"),
        (lambda url: RedisEmbeddingCache(url, ttl=float("nan")), "ttl"),
        (lambda url: InMemoryRateLimit(requests_per_minute=-5), "requests_per_minute"),
    ],
)
def test_a_bad_budget_or_cache_setting_is_refused(make, named):
    with pytest.raises(InvalidRequestError, match=named):
        make("redis://127.0.0.1:1/0")


# -- 21: a trace id that is not UTF-8 never breaks a dump or a log line -------------------------


def test_a_trace_id_that_is_not_utf8_is_readable_text(make_runner, caplog):
    body = json.dumps({"results": [{"index": 0, "relevance_score": 0.5}]}).encode()
    header = b"x-siliconcloud-trace-id: tr-\xff\xfe-1"
    with ScriptedServer(_serving(b"200 OK", body, header)) as server:
        response = make_runner(base_url=server.base_url).rerank("apple", ["apple pie"])
    assert response.trace_id is not None
    assert response.trace_id.startswith("tr-")
    response.trace_id.encode("utf-8")  # no lone surrogates
    assert json.loads(response.model_dump_json())["trace_id"] == response.trace_id


def test_an_error_whose_trace_id_is_not_utf8_pickles_and_prints(make_runner):
    import pickle

    header = b"x-siliconcloud-trace-id: tr-\xff-2"
    with ScriptedServer(_serving(b"500 Internal Server Error", b"{}", header)) as server:
        runner = make_runner(base_url=server.base_url, max_retries=0)
        with pytest.raises(InternalServerError) as info:
            runner.rerank("apple", ["apple pie"])
    error: Any = info.value
    str(error).encode("utf-8")
    assert type(pickle.loads(pickle.dumps(error))) is InternalServerError


# -- 13: what went wrong with Redis is said as it is --------------------------------------------


@pytest.mark.parametrize("mode", ["local", "raise"])
def test_a_budget_key_redis_cannot_read_is_reported_as_such(redis_server, emulator, mode, caplog):
    import logging

    import redis

    from siliconflow_rerank import APIConnectionError

    budget = RedisRateLimit(
        redis_server.url, requests_per_minute=100, on_redis_error=mode, name=f"broken-{mode}"
    )
    client = SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, rate_limit=budget)
    client.rerank("apple", ["apple pie"])  # books in Redis: the budget's key now exists
    store = redis.Redis.from_url(redis_server.url)
    (key,) = store.keys("siliconflow-rerank:rate:*:log")
    store.delete(key)
    store.set(key, b"not a list")  # data the booking script cannot read
    with caplog.at_level(logging.WARNING, logger="siliconflow_rerank"):
        if mode == "raise":
            with pytest.raises(APIConnectionError, match="answered with an error") as info:
                client.rerank("apple", ["apple pie"])
            assert "WRONGTYPE" in str(info.value)
        else:
            client.rerank("apple", ["apple pie"])
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "Redis answered with an error" in warning
    assert "cannot be reached" not in warning
    expected = "failing calls" if mode == "raise" else "pacing calls in this process"
    assert expected in warning
    client.close()


# -- 10: a booking dated in Redis's future holds the budget a window at most ---------------------


def test_bookings_dated_in_redis_future_never_stall_the_budget(redis_server):
    import threading

    import redis

    budget = RedisRateLimit(
        redis_server.url, requests_per_minute=2, window_seconds=1.0, margin_seconds=0.0
    )
    budget.acquire(1, account="tenant")
    budget.acquire(1, account="tenant")
    store = redis.Redis.from_url(redis_server.url)
    # The bookings dated an hour after Redis's now, as a clock stepped back by an hour leaves them.
    (log,) = store.keys("siliconflow-rerank:rate:*:log")
    (clock,) = store.keys("siliconflow-rerank:rate:*:clock")
    booked: Any = store.lrange(log, 0, -1)
    later = [b"%d:%s" % (int(m.split(b":")[0]) + 3_600_000, m.split(b":")[1]) for m in booked]
    store.delete(log)
    store.rpush(log, *later)
    store.hset(clock, "last", int(later[-1].split(b":")[0]))
    done = threading.Event()

    def book() -> None:
        budget.acquire(1, account="tenant")
        done.set()

    waiter = threading.Thread(target=book)
    waiter.daemon = True
    waiter.start()
    # A window (1 s) at most, not the hour of skew: 30 s is slack for a loaded machine.
    assert done.wait(30)


# -- 16: a bad row of a Ray batch fails clearly, naming the row ---------------------------------


@pytest.mark.parametrize(
    ("batch", "named"),
    [
        ({"query": ["apple"], "candidates": ["apple pie"]}, "row 0 of column 'candidates'"),
        ({"query": [None], "candidates": [["apple pie"]]}, "row 0 of column 'query'"),
        (
            {"query": ["apple", "pear"], "candidates": [["a"], ["b", None]]},
            "candidate 1 of row 1 of column 'candidates'",
        ),
    ],
)
def test_a_bad_rerank_row_is_refused_before_any_request(emulator, batch, named):
    from siliconflow_rerank.ray import RerankBatches

    ranker = RerankBatches(api_key=KEY, base_url=emulator.base_url)
    with pytest.raises(InvalidRequestError, match=named):
        ranker(batch)
    assert emulator.stats.requests == 0


def test_a_bad_embedding_row_is_refused_before_any_request(emulator):
    import numpy as np

    from siliconflow_rerank.ray import EmbedBatches

    embedder = EmbedBatches(api_key=KEY, base_url=emulator.base_url)
    with pytest.raises(InvalidRequestError, match="row 1 of column 'text'"):
        embedder({"text": np.array(["apple", None], dtype=object)})
    assert emulator.stats.requests == 0


# -- 20: an embedding cache is bounded by bytes, not only by entries ----------------------------


def test_an_embedding_cache_is_bounded_by_bytes():
    from siliconflow_rerank import EmbeddingCache

    assert EmbeddingCache().max_bytes == 256 * 1024 * 1024
    cache = EmbeddingCache(max_bytes=100_000)
    vector = b"\0" * 32_768  # 4096 floats of 8 bytes
    cache.set_many([(bytes([n]), vector) for n in range(5)])
    assert len(cache) == 3  # 98,304 bytes: a fourth would pass the bound
    assert cache.get_many([b"\0", b"\1", b"\2", b"\3", b"\4"]) == [
        None,
        None,
        vector,
        vector,
        vector,
    ]
    cache.set_many([(b"big", b"\0" * 200_000)])  # larger than the bound alone: not stored
    assert len(cache) == 3


def test_a_client_embedding_many_large_vectors_keeps_its_cache_within_bytes(make_runner, emulator):
    from siliconflow_rerank import EmbeddingCache

    cache = EmbeddingCache(max_bytes=100_000)
    runner = make_runner(base_url=emulator.base_url, embedding_cache=cache)
    texts = [f"text {n}" for n in range(20)]
    runner.embed(texts, model="Qwen/Qwen3-Embedding-8B")  # 4096 floats each: 32 KB cached
    assert len(cache) == 3
    assert cache.max_bytes is not None


# -- 14: a cache that blocks never blocks the event loop -----------------------------------------


class _LoopCheckingCache:
    """A cache whose reads and writes wait for a task of the event loop: run on the loop's own
    thread, they would wait in vain (the loop cannot run the task while they block it)."""

    def __init__(self) -> None:
        import threading

        self.released = threading.Event()
        self.blocked_the_loop = False
        self.values: dict[bytes, bytes] = {}

    def _wait_for_the_loop(self) -> None:
        if not self.released.wait(10):
            self.blocked_the_loop = True
        self.released.clear()

    def get_many(self, keys: Any) -> list[bytes | None]:
        self._wait_for_the_loop()
        return [self.values.get(key) for key in keys]

    def set_many(self, items: Any) -> None:
        self._wait_for_the_loop()
        self.values.update(items)


@pytest.mark.parametrize("endpoint", ["rerank", "embed"])
def test_an_async_call_asks_its_cache_off_the_event_loop(emulator, endpoint):
    cache = _LoopCheckingCache()

    async def release() -> None:
        while True:
            cache.released.set()
            await asyncio.sleep(0.01)

    async def main() -> None:
        name = "cache" if endpoint == "rerank" else "embedding_cache"
        setting: dict[str, Any] = {name: cache}
        client = AsyncSiliconFlowClient(api_key=KEY, base_url=emulator.base_url, **setting)
        releaser = asyncio.ensure_future(release())
        if endpoint == "rerank":
            await client.rerank("apple", ["apple pie", "a car"])
        else:
            await client.embed(["apple pie", "a car"])
        releaser.cancel()
        await client.aclose()

    asyncio.run(main())
    assert cache.values  # the answers were stored...
    assert not cache.blocked_the_loop  # ... and both cache steps ran while the loop ran


# -- 22: the emulator reads nothing for a caller without the key, and bounds dimensions ----------


def test_the_emulator_refuses_an_unauthenticated_request_before_reading_its_body(emulator):
    emulator.api_key = "sk-the-right-key"
    host, port = emulator.base_url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        # A body of 10 MB is announced and never sent: read, it would hold the handler.
        connection.sendall(
            b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-wrong\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
        )
        answer = connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401")


def test_dimensions_beyond_the_models_length_are_refused_by_client_and_emulator(
    make_runner, emulator
):
    import httpx

    runner = make_runner(base_url=emulator.base_url, max_retries=0)
    with pytest.raises(InvalidRequestError, match="at most 4096"):
        runner.embed(["apple"], model="Qwen/Qwen3-VL-Embedding-8B", dimensions=10**8)
    assert emulator.stats.requests == 0
    body = {"model": "Qwen/Qwen3-VL-Embedding-8B", "input": ["apple"], "dimensions": 10**8}
    answer = httpx.post(
        f"{emulator.base_url}/embeddings", json=body, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert answer.status_code == 400
    assert "more than model" in answer.json()["message"]


# -- 2 (in part): an error keeps a bounded excerpt of a huge error body, never the body ----------


def test_a_huge_error_body_is_kept_as_an_excerpt(make_runner):
    import pickle

    body = b'{"message": "' + b"x" * 5_000_000 + b'"}'
    with ScriptedServer(_serving(b"500 Internal Server Error", body)) as server:
        runner = make_runner(base_url=server.base_url, max_retries=0)
        with pytest.raises(InternalServerError) as info:
            runner.rerank("apple", ["apple pie"])
    error: Any = info.value
    assert "an error body of 5000015 bytes" in str(error)
    assert len(repr(error.body)) < 1_000
    assert len(pickle.dumps(error)) < 10_000  # what crosses a process boundary, or is kept


# -- 2: an answer is held only as what the caller asked for ---------------------------------------


def test_documents_a_server_sends_unasked_are_not_kept(make_runner):
    # A server may echo every document (megabytes) without being asked: the ranking keeps
    # indices and scores only, as asked for. Asked for, the documents are kept.
    results = [
        {"index": i, "relevance_score": 1 - i / 10, "document": {"text": "x" * 100_000}}
        for i in range(3)
    ]
    body = json.dumps({"results": results}).encode()
    with ScriptedServer(_serving(b"200 OK", body)) as server:
        runner = make_runner(base_url=server.base_url, max_retries=0)
        unasked = runner.rerank("apple", ["a", "b", "c"])
        asked = runner.rerank("apple", ["a", "b", "c"], return_documents=True)
    assert [r.index for r in unasked.results] == [0, 1, 2]
    assert all(r.document is None for r in unasked.results)
    assert [r.document.text for r in asked.results if r.document] == ["x" * 100_000] * 3
