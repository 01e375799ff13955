"""Contracts both adapters share, written once and run over both (and the embeddings adapter
where it applies): settings from the core, lazy clients, borrowed clients, argument names, errors
that cross process boundaries."""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
from typing import Any

import httpx
import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode
from pydantic import ValidationError

import siliconflow_rerank
from langchain_siliconflow import SiliconFlowEmbeddings
from langchain_siliconflow import SiliconFlowRerank as LangChainRerank
from llama_index_siliconflow import SiliconFlowEmbedding as LlamaEmbedding
from llama_index_siliconflow import SiliconFlowRerank as LlamaRerank
from siliconflow_rerank import (
    AsyncSiliconFlowClient,
    ClientSettings,
    InvalidRequestError,
    SiliconFlowClient,
    SiliconFlowError,
)
from siliconflow_rerank._exceptions import status_error
from siliconflow_rerank.emulator import Fault

from ..helpers import CORPUS, wait_until

KEY = "sk-contracts-canary-3131"
ADAPTERS = [LangChainRerank, LlamaRerank, SiliconFlowEmbeddings, LlamaEmbedding]
RERANKERS = [LangChainRerank, LlamaRerank]


def use(adapter: Any, *, asynchronous: bool = False) -> Any:
    """One call through the adapter's main sync or async entry point."""
    if isinstance(adapter, LangChainRerank):
        documents = [Document(page_content="apple pie")]
        if asynchronous:
            return asyncio.run(adapter.acompress_documents(documents, "apple"))
        return adapter.compress_documents(documents, "apple")
    if isinstance(adapter, LlamaRerank):
        nodes = [NodeWithScore(node=TextNode(text="apple pie"))]
        if asynchronous:
            return asyncio.run(adapter.apostprocess_nodes(nodes, query_str="apple"))
        return adapter.postprocess_nodes(nodes, query_str="apple")
    if isinstance(adapter, LlamaEmbedding):
        if asynchronous:
            return asyncio.run(adapter.aget_query_embedding("apple"))
        return adapter.get_query_embedding("apple")
    if asynchronous:
        return asyncio.run(adapter.aembed_query("apple"))
    return adapter.embed_query("apple")


async def arank(reranker: Any, texts: list[str], query: str) -> list[tuple[str, float | None]]:
    """(id, score) of each result, through the reranker's native async entry point."""
    if isinstance(reranker, LangChainRerank):
        documents = [Document(page_content=t, id=f"d{i}") for i, t in enumerate(texts)]
        out = await reranker.acompress_documents(documents, query)
        return [(d.id or "", d.metadata["relevance_score"]) for d in out]
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"d{i}")) for i, t in enumerate(texts)]
    scored = await reranker.apostprocess_nodes(nodes, query_str=query)
    return [(n.node.node_id, n.score) for n in scored]


def rank(reranker: Any, texts: list[str], query: str, asynchronous: bool) -> list[Any]:
    """(id, score) of each result, through the sync or async entry point."""
    if asynchronous:
        return asyncio.run(arank(reranker, texts, query))
    if isinstance(reranker, LangChainRerank):
        documents = [Document(page_content=t, id=f"d{i}") for i, t in enumerate(texts)]
        out = reranker.compress_documents(documents, query)
        return [(d.id, d.metadata["relevance_score"]) for d in out]
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"d{i}")) for i, t in enumerate(texts)]
    return [(n.node.node_id, n.score) for n in reranker.postprocess_nodes(nodes, query_str=query)]


@pytest.mark.parametrize("adapter_class", RERANKERS)
async def test_hundred_concurrent_calls_overlap(adapter_class, emulator):
    # Each answer waits long enough for all 100 requests to arrive, even on a loaded machine
    # (with 0.3 s, one run with two suites on two cores saw 95 at once).
    emulator.latency = 1.0
    reranker = adapter_class(api_key=KEY, base_url=emulator.base_url)
    results = await asyncio.gather(*(arank(reranker, CORPUS, f"apple {i}") for i in range(100)))
    await reranker.aclose()
    assert len(results) == 100
    assert emulator.stats.max_in_flight == 100


@pytest.mark.parametrize("adapter_class", RERANKERS)
@pytest.mark.parametrize("asynchronous", [False, True])
def test_scale_settings_reach_the_core(adapter_class, asynchronous, emulator):
    cache = siliconflow_rerank.RerankCache()
    seen: list[tuple[int, int]] = []
    batched = adapter_class(
        api_key=KEY,
        base_url=emulator.base_url,
        top_n=None,
        max_documents_per_request=2,
        max_concurrency=2,
        requests_per_minute=1000,
        cache=cache,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    whole = adapter_class(api_key=KEY, base_url=emulator.base_url, top_n=None)
    out = rank(batched, CORPUS, "apple", asynchronous)
    assert emulator.stats.requests == 3
    assert seen[-1] == (3, 3)
    expected = rank(whole, CORPUS, "apple", asynchronous)
    assert out == expected
    rank(batched, CORPUS, "apple", asynchronous)
    assert cache.hits == len(CORPUS)
    assert emulator.stats.requests == 4  # the cached call sent nothing


@pytest.mark.parametrize("adapter_class", ADAPTERS)
def test_every_client_setting_is_a_field_declared_once(adapter_class):
    for name, info in ClientSettings.model_fields.items():
        field = adapter_class.model_fields[name]
        assert field.default == info.default, name
        assert info.description, name
        assert field.description == info.description, name


@pytest.mark.parametrize("adapter_class", ADAPTERS)
@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_missing_key_fails_at_first_use_the_same_way(adapter_class, asynchronous):
    adapter = adapter_class()  # built, copied and pickled without a key
    copy.deepcopy(adapter)
    pickle.loads(pickle.dumps(adapter))
    with pytest.raises(InvalidRequestError, match="SILICONFLOW_API_KEY") as info:
        use(adapter, asynchronous=asynchronous)
    assert "api_key=" in str(info.value)


@pytest.mark.parametrize("adapter_class", ADAPTERS)
@pytest.mark.parametrize("setting", ["max_retries", "timeout", "base_url", "api_key"])
def test_a_client_with_settings_it_already_fixes_is_refused(adapter_class, setting):
    values = {"max_retries": 0, "timeout": 5.0, "base_url": "https://x.test/v1", "api_key": KEY}
    client = SiliconFlowClient(api_key=KEY)
    with pytest.raises(ValidationError, match=f"{setting} cannot be set together with client="):
        adapter_class(client=client, **{setting: values[setting]})
    async_client = AsyncSiliconFlowClient(api_key=KEY)
    with pytest.raises(ValidationError, match=setting):
        adapter_class(async_client=async_client, **{setting: values[setting]})


@pytest.mark.parametrize("adapter_class", ADAPTERS)
def test_a_passed_client_needs_no_key_in_the_environment(adapter_class, emulator):
    client = SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, max_retries=0)
    use(adapter_class(client=client))
    assert emulator.stats.last_request_headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("adapter_class", ADAPTERS)
def test_settings_reach_the_clients_built_from_them(adapter_class, emulator):
    emulator.enqueue(Fault.overloaded())
    adapter = adapter_class(api_key=KEY, base_url=emulator.base_url, max_retries=0)
    with pytest.raises(siliconflow_rerank.ServiceUnavailableError):
        use(adapter)
    assert emulator.stats.requests == 1  # max_retries=0: one attempt, no backoff
    adapter.close()


@pytest.mark.parametrize("adapter_class", ADAPTERS)
def test_close_closes_built_clients_and_never_borrowed_ones(adapter_class, emulator):
    owned = adapter_class(api_key=KEY, base_url=emulator.base_url)
    use(owned)
    use(owned, asynchronous=True)
    owned.close()
    asyncio.run(owned.aclose())
    # The server sees a close a moment after it happens (later still on a busy machine).
    wait_until(lambda: emulator.stats.open_connections <= 1)
    assert emulator.stats.open_connections <= 1  # the async pool closed with its loop already

    http = httpx.Client()
    borrowed = adapter_class(
        client=SiliconFlowClient(api_key=KEY, base_url=emulator.base_url, http_client=http)
    )
    use(borrowed)
    borrowed.close()
    assert not http.is_closed
    http.close()


@pytest.mark.parametrize("adapter_class", RERANKERS)
@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"top_n": 0}, "top_n"),
        ({"model": ""}, "model"),
        ({"overlap_tokens": 99}, "overlap_tokens"),
        ({"instruction": "be brief"}, "does not take 'instruction'"),
        ({"model": "Qwen/Qwen3-Reranker-8B", "max_chunks_per_doc": 3}, "max_chunks_per_doc"),
        ({"model": "Qwen/Qwen3-Reranker-4B", "overlap_tokens": 4}, "overlap_tokens"),
        ({"max_chunks_per_doc": 0}, "max_chunks_per_doc"),
        ({"base_url": "ftp://nowhere"}, "base_url"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout": 0}, "timeout"),
        ({"max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_misconfiguration_fails_at_construction(adapter_class, fields, fragment):
    with pytest.raises(ValueError, match=fragment):
        adapter_class(**fields)


@pytest.mark.parametrize("adapter_class", ADAPTERS)
def test_a_pickle_drops_the_key_and_reads_the_environment_again(
    adapter_class, monkeypatch, emulator
):
    adapter = adapter_class(api_key=KEY, base_url=emulator.base_url, max_concurrency=3)
    use(adapter)
    clone = pickle.loads(pickle.dumps(adapter))
    assert clone.api_key is None
    assert (clone.max_concurrency, clone.base_url) == (3, emulator.base_url)
    with pytest.raises(InvalidRequestError, match="SILICONFLOW_API_KEY"):
        use(clone)
    monkeypatch.setenv("SILICONFLOW_API_KEY", "sk-from-env-777")
    use(clone)
    assert emulator.stats.last_request_headers["authorization"] == "Bearer sk-from-env-777"


@pytest.mark.parametrize("adapter_class", RERANKERS)
@pytest.mark.parametrize(("wrong", "right"), [("top_k", "top_n"), ("model_name", "model")])
def test_common_wrong_names_are_refused_with_the_right_one(adapter_class, wrong, right):
    with pytest.raises(ValidationError, match=f"did you mean '{right}'"):
        adapter_class(**{wrong: 5 if wrong == "top_k" else "BAAI/bge-reranker-v2-m3"})


@pytest.mark.parametrize("adapter_class", ADAPTERS)
def test_unknown_arguments_are_refused(adapter_class):
    with pytest.raises(ValidationError, match="no_such_setting"):
        adapter_class(no_such_setting=1)


@pytest.mark.parametrize("adapter_class", ADAPTERS)
@pytest.mark.parametrize("fields", [{"max_retries": -1}, {"timeout": 0}, {"top_n": 0}])
def test_a_bad_setting_never_shows_the_key(adapter_class, fields):
    if "top_n" in fields and adapter_class is SiliconFlowEmbeddings:
        fields = {"max_concurrency": 0}
    with pytest.raises(ValidationError) as info:
        adapter_class(api_key=KEY, **fields)
    error = info.value
    assert next(iter(fields)) in str(error)
    for text in (str(error), repr(error), error.json(), json.dumps(error.errors(), default=str)):
        assert KEY not in text


ERRORS = [
    InvalidRequestError("bad input"),
    siliconflow_rerank.APIConnectionError("refused"),
    siliconflow_rerank.APITimeoutError("read timeout"),
    siliconflow_rerank.ResponseValidationError("bad", trace_id="tr-1", body_excerpt="{}"),
    *(
        status_error(
            status,
            b'{"code": 50505, "message": "busy"}',
            trace_id="tr-2",
            headers=httpx.Headers({"retry-after": "1"}),
            base_url="https://api.siliconflow.cn/v1",
            secret=KEY,
        )
        for status in (400, 401, 403, 404, 408, 413, 429, 500, 503)
    ),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_survives_pickle_and_copy(error):
    error.batch = 3
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert clone.batch == 3
        assert vars(clone).keys() == vars(error).keys()
        for name in ("status_code", "code", "message", "trace_id", "body_excerpt"):
            assert getattr(clone, name, None) == getattr(error, name, None)


def test_errors_cross_a_process_pool():
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1) as pool:
        future = pool.submit(_raise_rate_limit)
        with pytest.raises(siliconflow_rerank.RateLimitError) as info:
            future.result(timeout=60)
    assert info.value.status_code == 429
    assert info.value.trace_id == "tr-pool"


def _raise_rate_limit() -> None:
    raise status_error(
        429,
        b'{"message": "slow down"}',
        trace_id="tr-pool",
        headers=httpx.Headers(),
        base_url="",
        secret=KEY,
    )


def test_the_error_tree_is_one_tree():
    for error in ERRORS:
        assert isinstance(error, SiliconFlowError)
