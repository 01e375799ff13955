"""Budgets and caches shared through a real redis-server (started per test on a free loopback
port), across real processes, against the emulator over real sockets."""

from __future__ import annotations

import logging
import multiprocessing
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import cast

import pytest
import redis

from siliconflow_rerank import (
    APIConnectionError,
    Cache,
    InvalidRequestError,
    RateLimitError,
    RedisEmbeddingCache,
    RedisRateLimit,
    RedisRerankCache,
    SiliconFlowClient,
)
from siliconflow_rerank.emulator import RerankEmulator

from ..helpers import ROOT

KEY = "sk-redis-canary-5151"
TEXTS = ["fresh apple pie", "a red car", "green apples", "a city bus"]
BUDGET = 10  # requests per window
WINDOW = 1.5  # seconds
SECONDS = 4.0  # each worker's run


def _worker(base_url: str, redis_url: str | None, tokens: int | None) -> tuple[int, int]:
    """Two clients in one process calling as fast as their budget allows for SECONDS; returns
    (answers, 429s)."""
    if redis_url is not None:
        budget = RedisRateLimit(
            redis_url,
            requests_per_minute=None if tokens else BUDGET,
            tokens_per_minute=tokens,
            name="shared",
            window_seconds=WINDOW,
        )
        settings: dict[str, object] = {"rate_limit": budget}
    else:  # the same rate, counted by each client alone
        settings = {"requests_per_minute": round(BUDGET * 60 / WINDOW)}
    clients = [
        SiliconFlowClient(api_key=KEY, base_url=base_url, max_retries=0, **settings)  # type: ignore[arg-type]
        for _ in range(2)
    ]
    counts = [0, 0]
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS

    def run(client: SiliconFlowClient) -> None:
        while time.monotonic() < deadline:
            try:
                client.rerank("apple", TEXTS)
                outcome = 0
            except RateLimitError:
                outcome = 1
            with lock:
                counts[outcome] += 1

    threads = [threading.Thread(target=run, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts[0], counts[1]


def _run_workers(base_url: str, redis_url: str | None, tokens: int | None = None) -> list[int]:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(4, mp_context=spawn) as pool:
        results = list(pool.map(_worker, [base_url] * 4, [redis_url] * 4, [tokens] * 4))
    return [sum(r[0] for r in results), sum(r[1] for r in results)]


def _everything(store: redis.Redis) -> bytes:
    """Every key and value in Redis, as bytes."""
    dump = []
    for key in cast(list[bytes], store.keys("*")):
        dump.append(key)
        kind = store.type(key)
        if kind == b"list":
            dump += cast(list[bytes], store.lrange(key, 0, -1))
        elif kind == b"hash":
            for field, value in cast(dict[bytes, bytes], store.hgetall(key)).items():
                dump += [field, value]
        elif kind == b"zset":
            dump += cast(list[bytes], store.zrange(key, 0, -1))
        else:
            dump.append(cast(bytes, store.get(key)))
    return b"".join(dump)


@pytest.fixture
def limited_emulator():
    with RerankEmulator(requests_per_minute=BUDGET, window_seconds=WINDOW) as emulator:
        yield emulator


def test_one_budget_holds_across_processes_where_per_process_limits_overshoot(
    redis_server, limited_emulator
):
    started = time.monotonic()
    answered, refused = _run_workers(limited_emulator.base_url, redis_server.url)
    elapsed = time.monotonic() - started
    # The server, counting every window of its own, never had to say no: the rate it saw stayed
    # within the budget. And the budget was used: more than two windows' worth got through,
    # never more than the run's windows allow (plus one of slack).
    assert refused == 0
    assert BUDGET * 2 <= answered <= BUDGET * (elapsed / WINDOW + 1)

    limited_emulator.reset()
    time.sleep(WINDOW)
    _, overshoot = _run_workers(limited_emulator.base_url, None)
    assert overshoot > answered  # 8 clients counting alone blow through the same budget


def test_a_token_budget_holds_across_processes(redis_server):
    with RerankEmulator() as emulator:  # what one call costs, as the emulator counts it
        usage = SiliconFlowClient(api_key=KEY, base_url=emulator.base_url).rerank("apple", TEXTS)
    assert usage.usage is not None
    assert usage.usage.input_tokens
    per_call = usage.usage.input_tokens
    tokens = per_call * 8  # per window: eight calls' worth
    with RerankEmulator(tokens_per_minute=tokens, window_seconds=WINDOW) as emulator:
        started = time.monotonic()
        answered, refused = _run_workers(emulator.base_url, redis_server.url, tokens=tokens)
        elapsed = time.monotonic() - started
    assert refused == 0  # the server's token count never went past the budget
    assert answered >= 8 * 2  # more than two windows' worth of calls fitted
    assert answered * per_call <= tokens * (elapsed / WINDOW + 1)


def test_two_keys_never_share_a_budget_and_no_key_reaches_redis(redis_server, emulator):
    budget = RedisRateLimit(redis_server.url, requests_per_minute=2, window_seconds=30)
    first = SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, rate_limit=budget)
    other = SiliconFlowClient(
        api_key="sk-other-9999", base_url=emulator.base_url, rate_limit=budget
    )
    for _ in range(2):
        first.rerank("apple", TEXTS)
        other.rerank("apple", TEXTS)  # its own budget: not slowed by the first key's two calls
    assert emulator.stats.requests == 4
    store = redis.Redis.from_url(redis_server.url)
    logs = cast(list[bytes], store.keys("*:log"))
    assert len(logs) == 2  # one budget per key
    dump = _everything(store)
    assert KEY.encode() not in dump
    assert b"sk-other" not in dump


def test_a_full_budget_makes_the_next_call_wait_for_the_window(redis_server, emulator):
    budget = RedisRateLimit(redis_server.url, requests_per_minute=2, window_seconds=1.0)
    client = SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, rate_limit=budget)
    started = time.monotonic()
    for _ in range(3):
        client.rerank("apple", TEXTS)
    assert time.monotonic() - started >= 1.0  # the third waited until the first left the window


def test_the_budget_takes_the_corrected_token_count(redis_server, emulator):
    budget = RedisRateLimit(redis_server.url, tokens_per_minute=10_000, window_seconds=30)
    client = SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, rate_limit=budget)
    first = client.rerank("apple", TEXTS).usage
    store = redis.Redis.from_url(redis_server.url)
    (key,) = store.keys("*:tokens")
    entries = cast(dict[bytes, bytes], store.hgetall(key))
    (booked,) = [value for field, value in entries.items() if not field.endswith(b"@")]
    assert first is not None
    assert int(booked.split(b":")[0]) == first.total_tokens  # the estimate, replaced by the usage
    (total,) = store.keys("*:sum")
    assert int(cast(bytes, store.get(total))) == first.total_tokens


def test_redis_down_calls_go_on_with_one_warning_then_recovery(redis_server, emulator, caplog):
    budget = RedisRateLimit(redis_server.url, requests_per_minute=100, timeout=0.2)
    cache = RedisRerankCache(redis_server.url, timeout=0.2)
    client = SiliconFlowClient(
        api_key=KEY, base_url=emulator.base_url, rate_limit=budget, cache=cache
    )
    client.rerank("apple", TEXTS)
    redis_server.stop()
    with caplog.at_level(logging.INFO, logger="siliconflow_rerank"):
        for _ in range(3):
            assert len(client.rerank("pear", TEXTS).results) == len(TEXTS)  # no error
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2  # one per outage: the budget's and the cache's
        redis_server.start()
        budget._link._down_until = cache._redis._link._down_until = 0.0  # skip the pause
        client.rerank("plum", TEXTS)
        assert sum("reachable again" in r.getMessage() for r in caplog.records) == 2
    # The results were right throughout, and the budget is booked in Redis again.
    plain = SiliconFlowClient(api_key=KEY, base_url=emulator.base_url)
    assert client.rerank("pear", TEXTS).results == plain.rerank("pear", TEXTS).results
    store = redis.Redis.from_url(redis_server.url)
    assert any(
        store.llen(k) for k in cast(list[bytes], store.keys("siliconflow-rerank:rate:*:log"))
    )
    client.close()
    plain.close()


def test_fail_closed_raises_when_redis_is_down(redis_server, emulator):
    budget = RedisRateLimit(
        redis_server.url, requests_per_minute=100, on_redis_error="raise", timeout=0.2
    )
    client = SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, rate_limit=budget)
    redis_server.stop()
    with pytest.raises(APIConnectionError, match="cannot use Redis: Redis cannot be reached"):
        client.rerank("apple", TEXTS)
    assert emulator.stats.requests == 0


def test_a_rate_limit_is_one_setting_not_two(redis_server):
    budget = RedisRateLimit(redis_server.url, requests_per_minute=10)
    with pytest.raises(InvalidRequestError, match="rate_limit"):
        SiliconFlowClient(api_key=KEY, rate_limit=budget, requests_per_minute=5)
    with pytest.raises(InvalidRequestError, match="requests_per_minute or tokens_per_minute"):
        RedisRateLimit(redis_server.url)


async def test_the_async_client_shares_the_budget(redis_server, emulator):
    from siliconflow_rerank import AsyncSiliconFlowClient

    budget = RedisRateLimit(redis_server.url, requests_per_minute=3, window_seconds=1.0)
    client = AsyncSiliconFlowClient(api_key=KEY, base_url=emulator.base_url, rate_limit=budget)
    started = time.monotonic()
    import asyncio

    await asyncio.gather(*(client.rerank("apple", TEXTS) for _ in range(4)))
    assert time.monotonic() - started >= 1.0
    assert emulator.stats.requests == 4
    await client.aclose()


# -- the shared caches ----------------------------------------------------------------------------

_FIRST_PROCESS = """
import sys
from siliconflow_rerank import RedisRerankCache, RedisEmbeddingCache, SiliconFlowClient
client = SiliconFlowClient(
    api_key=sys.argv[3], base_url=sys.argv[1], cache=RedisRerankCache(sys.argv[2]),
    embedding_cache=RedisEmbeddingCache(sys.argv[2]),
)
client.rerank("apple", ["fresh apple pie", "a red car", "green apples"], instruction=None)
client.embed(["fresh apple pie", "a red car"])
"""


def test_a_second_process_reuses_what_the_first_scored(redis_server, emulator):
    subprocess.run(
        # The same key: a cache is kept apart per account unless shared on purpose.
        [sys.executable, "-c", _FIRST_PROCESS, emulator.base_url, redis_server.url, KEY],
        check=True,
        cwd=ROOT,
    )
    assert emulator.stats.requests == 2
    cache, vectors = RedisRerankCache(redis_server.url), RedisEmbeddingCache(redis_server.url)
    client = SiliconFlowClient(
        api_key=KEY, base_url=emulator.base_url, cache=cache, embedding_cache=vectors
    )
    ranked = client.rerank("apple", ["fresh apple pie", "a red car", "green apples"])
    embedded = client.embed(["fresh apple pie", "a red car"])
    assert emulator.stats.requests == 2  # both answered from Redis
    assert (cache.hits, vectors.hits) == (3, 2)
    plain = SiliconFlowClient(api_key=KEY, base_url=emulator.base_url)
    expected = plain.rerank("apple", ["fresh apple pie", "a red car", "green apples"])
    assert ranked.results == expected.results
    assert embedded.embeddings == plain.embed(["fresh apple pie", "a red car"]).embeddings
    # A setting that decides the score misses: another model, or chunking.
    client.rerank(
        "apple", ["fresh apple pie"], model="BAAI/bge-reranker-v2-m3", max_chunks_per_doc=2
    )
    client.rerank("apple", ["fresh apple pie"], model="Qwen/Qwen3-Reranker-8B", instruction="Rank.")
    assert emulator.stats.requests == 6  # 2 + the plain client's 2 + the 2 misses


def test_values_of_another_format_or_broken_are_never_served(redis_server, emulator):
    cache = RedisRerankCache(redis_server.url, ttl=60)
    client = SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, cache=cache)
    client.rerank("apple", TEXTS)
    store = redis.Redis.from_url(redis_server.url)
    keys = store.keys("*")
    assert len(keys) == len(TEXTS)
    assert all(0 < store.pttl(k) <= 60_000 for k in keys)  # expiring
    store.set(keys[0], b"v0:0.5")  # an older format
    store.set(keys[1], b"v2:not-a-number")  # a broken value
    client.rerank("apple", TEXTS)
    assert emulator.stats.requests == 2
    assert emulator.stats.last_request_body["documents"].__len__() == 2  # only those two again


def test_an_embedding_cache_in_redis_refuses_a_vector_of_the_wrong_shape(redis_server, emulator):
    vectors = RedisEmbeddingCache(redis_server.url)
    client = SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, embedding_cache=vectors)
    first = client.embed(["apple"]).embeddings
    store = redis.Redis.from_url(redis_server.url)
    (key,) = store.keys("*")
    store.set(key, b"v2:" + b"\0" * 13)  # not a whole number of floats
    assert client.embed(["apple"]).embeddings == first
    assert emulator.stats.requests == 2
    assert isinstance(vectors, Cache)
