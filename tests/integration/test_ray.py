"""Ray Datasets reranked and embedded by actors on a local Ray instance, against the emulator over
real sockets, with one Redis budget shared by every actor."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from siliconflow_rerank import RedisRateLimit, RedisRerankCache, SiliconFlowClient  # noqa: E402
from siliconflow_rerank.ray import EmbedBatches, RerankBatches  # noqa: E402

# Ray Data's own internals warn about its own deprecated settings.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = "sk-ray-canary-6161"
SESSION: list[str] = []
"""The local Ray instance's session folder (its logs among it)."""
WORDS = ["apple", "pear", "bus", "car", "fridge", "pie", "lemon", "bike"]


def rows(count: int, candidates: int) -> list[dict[str, object]]:
    return [
        {
            "id": i,
            "query": f"{WORDS[i % 8]} {WORDS[(i * 3) % 8]}",
            "candidates": [
                f"note {j}: {WORDS[(i + j) % 8]} and {WORDS[j % 8]}" for j in range(candidates)
            ],
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def local_ray():
    # Loopback only, no dashboard. The key reaches the actors through the environment Ray's
    # processes start with (never runtime_env, whose values Ray writes to its logs).
    saved = os.environ.get("SILICONFLOW_API_KEY")
    os.environ["SILICONFLOW_API_KEY"] = KEY
    try:
        context = ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )
    finally:
        if saved is None:
            del os.environ["SILICONFLOW_API_KEY"]
        else:
            os.environ["SILICONFLOW_API_KEY"] = saved
    SESSION[:] = [context.address_info["session_dir"]]
    yield ray
    ray.shutdown()


def test_a_dataset_is_reranked_by_actors_sharing_one_budget(local_ray, emulator, redis_server):
    data = rows(60, 6)
    # A budget that binds (20 requests per 1.5 s, held by the emulator too, and no retries): the
    # two actors together must stay within it, or a 429 fails the job.
    emulator.requests_per_minute, emulator.window_seconds = 20, 1.5
    budget = RedisRateLimit(
        redis_server.url, requests_per_minute=20, window_seconds=1.5, name="ray"
    )
    settings = {"base_url": emulator.base_url, "rate_limit": budget, "max_retries": 0}
    ranked = (
        ray.data.from_items(data)
        .map_batches(
            RerankBatches,
            fn_constructor_kwargs=settings,
            compute=ray.data.ActorPoolStrategy(size=2),
            batch_size=16,
        )
        .take_all()
    )
    assert emulator.stats.by_status == {200: 60}
    emulator.requests_per_minute = None
    assert sorted(row["id"] for row in ranked) == list(range(60))
    assert emulator.stats.requests == 60  # one request per row, nothing lost or repeated
    with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url) as client:
        for row in ranked[:10]:
            expected = client.rerank(row["query"], list(row["candidates"])).results
            scores = {r.index: r.relevance_score for r in expected}
            assert list(row["scores"]) == [scores[i] for i in range(6)]
            assert sorted(row["ranks"]) == list(range(1, 7))
            assert row["ranks"][expected[0].index] == 1
    # Both actors booked their requests in the one budget, which holds at most its 20.
    import redis

    store = redis.Redis.from_url(redis_server.url)
    (key,) = store.keys("siliconflow-rerank:rate:{ray:*:log")
    assert 0 < store.llen(key) <= 20


def test_a_dataset_is_embedded_and_written_to_parquet(local_ray, emulator, tmp_path):
    texts = [{"text": f"note {i} on {WORDS[i % 8]}"} for i in range(70)]
    out = tmp_path / "embedded"
    (
        ray.data.from_items(texts)
        .map_batches(
            EmbedBatches,
            fn_constructor_kwargs={"base_url": emulator.base_url, "dimensions": None},
            compute=ray.data.ActorPoolStrategy(size=1),
            batch_size=40,
        )
        .write_parquet(str(out))
    )
    table = ray.data.read_parquet(str(out)).take_all()
    assert len(table) == 70
    with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url) as client:
        first = client.embed([table[0]["text"]]).embeddings[0]
    assert list(table[0]["embedding"]) == pytest.approx(first, abs=1e-6)


def test_budgets_and_caches_pickle_as_their_description(redis_server):
    budget = RedisRateLimit(redis_server.url, requests_per_minute=5, name="x", window_seconds=2)
    copy = pickle.loads(pickle.dumps(budget))
    assert (copy.requests_per_minute, copy.name, copy.window_seconds) == (5, "x", 2)
    cache = pickle.loads(pickle.dumps(RedisRerankCache(redis_server.url, ttl=9)))
    assert cache._redis._ttl_ms == 9000


def test_a_key_from_a_file_reaches_the_actors_and_no_key_reaches_rays_files(
    local_ray, emulator, tmp_path
):
    secret = tmp_path / "siliconflow-key"
    secret.write_text("sk-ray-file-canary-4242\n", encoding="utf-8")
    settings = {"base_url": emulator.base_url, "api_key_file": str(secret)}
    ranked = (
        ray.data.from_items(rows(4, 3))
        .map_batches(
            RerankBatches,
            fn_constructor_kwargs=settings,
            compute=ray.data.ActorPoolStrategy(size=1),
            batch_size=4,
        )
        .take_all()
    )
    assert len(ranked) == 4
    assert emulator.stats.last_request_headers["authorization"] == "Bearer sk-ray-file-canary-4242"
    # Neither key, the file's nor the environment's, is in any file Ray wrote.
    for path in Path(SESSION[0]).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"sk-ray-file-canary-4242" not in data, path
            assert KEY.encode() not in data, path


def test_an_unreadable_key_file_is_a_clear_error(tmp_path):
    from siliconflow_rerank import InvalidRequestError

    with pytest.raises(InvalidRequestError, match=r"api_key_file .* cannot be read"):
        RerankBatches(api_key_file=str(tmp_path / "missing"))
    with pytest.raises(InvalidRequestError, match="not both"):
        EmbedBatches(api_key="k", api_key_file=str(tmp_path / "missing"))
