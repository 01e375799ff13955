"""The LangChain adapter: unit tests on a fake transport, and real-socket tests on the emulator."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import json
import logging
import pickle
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.load import dumps, loads
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_siliconflow import USAGE_EVENT, RerankResults, SiliconFlowRerank
from siliconflow_rerank import AsyncSiliconFlowClient, InvalidRequestError, SiliconFlowClient
from siliconflow_rerank.emulator import Fault

from ..helpers import CORPUS, ScoringRecorder

KEY = "sk-langchain-canary-0042"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8


class Recorder(ScoringRecorder):
    input_tokens = 9
    trace_id = "tr-lc"


def mocked(recorder: Recorder, max_retries: int = 2, **fields: Any) -> SiliconFlowRerank:
    """A reranker on ready clients over a fake transport (client settings go on the clients)."""
    transport = httpx.MockTransport(recorder)
    return SiliconFlowRerank(
        client=SiliconFlowClient(
            api_key=KEY, max_retries=max_retries, http_client=httpx.Client(transport=transport)
        ),
        async_client=AsyncSiliconFlowClient(
            api_key=KEY, max_retries=max_retries, http_client=httpx.AsyncClient(transport=transport)
        ),
        **fields,
    )


@pytest.fixture(params=["sync", "async"])
def compress(request: pytest.FixtureRequest):
    """Call compress_documents, or acompress_documents on a fresh event loop."""

    def run(reranker: SiliconFlowRerank, documents: list[Document], query: str, **kw: Any):
        if request.param == "sync":
            return reranker.compress_documents(documents, query, **kw)
        return asyncio.run(reranker.acompress_documents(documents, query, **kw))

    return run


@pytest.fixture(params=["sync", "async"])
def rerank(request: pytest.FixtureRequest):
    """Call rerank, or arerank on a fresh event loop."""

    def run(reranker: SiliconFlowRerank, documents: Any, query: Any, **kw: Any):
        if request.param == "sync":
            return reranker.rerank(documents, query, **kw)
        return asyncio.run(reranker.arerank(documents, query, **kw))

    return run


def docs(*texts: str, **metadata: Any) -> list[Document]:
    return [
        Document(page_content=t, metadata={"n": i, **metadata}, id=f"doc-{i}")
        for i, t in enumerate(texts)
    ]


# -- configuration ------------------------------------------------------------------------------


def test_defaults_and_environment(monkeypatch):
    monkeypatch.setenv("SILICONFLOW_API_KEY", KEY)
    reranker = SiliconFlowRerank()
    assert reranker.model == "BAAI/bge-reranker-v2-m3"
    assert reranker.top_n == 3
    # Read from the environment, where LangChain's standard tests look for it; never shown.
    assert reranker.api_key is not None
    assert reranker.api_key.get_secret_value() == KEY
    assert KEY not in repr(reranker)


def test_key_never_shows(caplog):
    reranker = SiliconFlowRerank(api_key=KEY, base_url="https://example.test/v1")
    with caplog.at_level(logging.DEBUG):
        texts = [repr(reranker), str(reranker), dumps(reranker), reranker.model_dump_json()]
    texts.append(str(pickle.dumps(reranker)))
    assert all(KEY not in text for text in texts)
    assert all(KEY not in record.getMessage() for record in caplog.records)


def test_deepcopy_shares_the_clients():
    recorder = Recorder()
    twin = copy.deepcopy(mocked(recorder))
    assert twin.compress_documents(docs("a"), "q")[0].metadata["relevance_score"] == 0.1
    assert len(recorder.bodies) == 1


# -- compress_documents -------------------------------------------------------------------------


def test_compress_returns_scored_copies_best_first(compress):
    recorder = Recorder(0.2, 0.9, 0.5, 0.9)
    reranker = mocked(recorder, top_n=3)
    inputs = docs("a", "b", "c", "d")
    before = [d.model_dump() for d in inputs]
    out = compress(reranker, inputs, "query")
    assert [d.page_content for d in out] == ["b", "d", "c"]  # ties keep input order
    assert [d.id for d in out] == ["doc-1", "doc-3", "doc-2"]
    assert [d.metadata["relevance_score"] for d in out] == [0.9, 0.9, 0.5]
    assert out[0].metadata["n"] == 1
    assert [d.model_dump() for d in inputs] == before
    assert all(o is not i for o in out for i in inputs)
    assert recorder.bodies == [
        {
            "model": "BAAI/bge-reranker-v2-m3",
            "query": "query",
            "documents": ["a", "b", "c", "d"],
            "top_n": 3,
        }
    ]


def test_top_n_none_returns_all_reordered(compress):
    out = compress(mocked(Recorder(0.1, 0.3, 0.2), top_n=None), docs("a", "b", "c"), "q")
    assert [d.page_content for d in out] == ["b", "c", "a"]


def test_settings_are_sent(compress):
    recorder = Recorder(0.5)
    reranker = mocked(
        recorder, model="Qwen/Qwen3-Reranker-8B", instruction="Prefer recent", top_n=None
    )
    compress(reranker, docs("a"), "q")
    assert recorder.bodies[0]["instruction"] == "Prefer recent"
    assert "top_n" not in recorder.bodies[0]


def test_empty_input_makes_no_request(compress, rerank):
    recorder = Recorder()
    reranker = mocked(recorder)
    assert compress(reranker, [], "q") == []
    assert rerank(reranker, [], "q") == []
    assert recorder.bodies == []


def test_blank_query_fails_before_any_request(compress):
    recorder = Recorder()
    with pytest.raises(ValueError, match="query"):
        compress(mocked(recorder), docs("a"), "  ")
    assert recorder.bodies == []


# -- multimodal documents -----------------------------------------------------------------------


def test_media_metadata_becomes_media_items(compress):
    recorder = Recorder()
    inputs = [
        Document(page_content="caption 1", metadata={"image": "https://x.test/cat.jpg"}),
        Document(page_content="caption 2", metadata={"video": "https://x.test/clip.mp4"}),
        Document(page_content="caption 3", metadata={"image": "data:image/png;base64,iVBORw=="}),
        Document(page_content="plain text"),
    ]
    compress(mocked(recorder, model="Qwen/Qwen3-VL-Reranker-8B", top_n=None), inputs, "a cat")
    assert recorder.bodies[0]["documents"] == [
        {"image": "https://x.test/cat.jpg"},
        {"video": "https://x.test/clip.mp4"},
        {"image": "data:image/png;base64,iVBORw=="},
        "plain text",
    ]


def test_local_media_paths_are_refused_without_opt_in(compress, tmp_path: Path):
    path = tmp_path / "secret.png"
    path.write_bytes(PNG)
    recorder = Recorder()
    document = Document(page_content="x", metadata={"image": str(path)})
    reranker = mocked(recorder, model="Qwen/Qwen3-VL-Reranker-8B")
    with pytest.raises(ValueError, match="allow_local_media=True"):
        compress(reranker, [document], "q")
    assert recorder.bodies == []


def test_local_media_paths_are_read_with_opt_in(compress, tmp_path: Path):
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    recorder = Recorder()
    reranker = mocked(recorder, model="Qwen/Qwen3-VL-Reranker-8B", allow_local_media=True)
    compress(reranker, [Document(page_content="x", metadata={"image": str(path)})], "q")
    assert recorder.bodies[0]["documents"] == [
        {"image": "data:image/png;base64,iVBORw0KGgoAAAAAAAAAAA=="}
    ]


def test_media_for_a_text_model_is_refused(compress):
    recorder = Recorder()
    document = Document(page_content="x", metadata={"image": "https://x.test/a.png"})
    with pytest.raises(ValueError, match="text only"):
        compress(mocked(recorder), [document], "q")
    assert recorder.bodies == []


def test_custom_document_mapping(compress):
    recorder = Recorder()
    reranker = mocked(
        recorder, document_to_item=lambda d: f"{d.metadata['title']}: {d.page_content}"
    )
    compress(reranker, [Document(page_content="body", metadata={"title": "T"})], "q")
    assert recorder.bodies[0]["documents"] == ["T: body"]


# -- rerank() -----------------------------------------------------------------------------------


def test_rerank_accepts_strings_documents_and_items(rerank):
    recorder = Recorder(0.3, 0.9, 0.1)
    reranker = mocked(recorder, model="Qwen/Qwen3-VL-Reranker-8B", top_n=None)
    results = rerank(
        reranker,
        ["text", Document(page_content="doc"), {"image": "https://x.test/a.png"}],
        {"image": "https://x.test/query.png"},
    )
    assert results == [
        {"index": 1, "relevance_score": 0.9},
        {"index": 0, "relevance_score": 0.3},
        {"index": 2, "relevance_score": 0.1},
    ]
    assert isinstance(results, RerankResults)
    assert results.usage is not None
    assert results.usage.input_tokens == 9
    assert results.trace_id == "tr-lc"
    assert recorder.bodies[0]["query"] == {"image": "https://x.test/query.png"}


def test_rerank_top_n_override(rerank):
    recorder = Recorder(0.3, 0.9, 0.1)
    reranker = mocked(recorder, top_n=None)
    assert [r["index"] for r in rerank(reranker, ["a", "b", "c"], "q", top_n=1)] == [1]
    assert recorder.bodies[0]["top_n"] == 1


# -- usage reporting ----------------------------------------------------------------------------


class EventCatcher(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append((name, data))


def test_usage_reported_once_per_call(compress, caplog):
    catcher = EventCatcher()
    with caplog.at_level(logging.DEBUG, logger="siliconflow_rerank"):
        out = compress(mocked(Recorder()), docs("a", "b"), "q", callbacks=[catcher])
    assert catcher.events == [
        (
            USAGE_EVENT,
            {
                "usage": {"input_tokens": 9, "output_tokens": 0, "total_tokens": 9},
                "trace_id": "tr-lc",
                "model": "BAAI/bge-reranker-v2-m3",  # the configured one: the server named none
            },
        )
    ]
    assert all(set(d.metadata) == {"n", "relevance_score"} for d in out)
    assert any("input_tokens" in r.getMessage() for r in caplog.records)


def _count_managers(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record each callback manager the adapter configures."""
    import langchain_siliconflow.rerank as module

    configured: list[object] = []
    for name in ("_callback_manager", "_async_callback_manager"):
        original = getattr(module, name)

        def spy(callbacks: Any, original: Any = original) -> Any:
            configured.append(callbacks)
            return original(callbacks)

        monkeypatch.setattr(module, name, spy)
    return configured


def test_no_callback_manager_is_configured_when_nothing_listens(compress, monkeypatch):
    configured = _count_managers(monkeypatch)
    out = compress(mocked(Recorder()), docs("a", "b"), "q")
    assert [d.page_content for d in out] == ["b", "a"]
    assert configured == []


def test_usage_event_reaches_a_handler_that_a_configure_hook_adds(compress, monkeypatch):
    from langchain_core.tracers import context

    catcher = EventCatcher()
    hook: contextvars.ContextVar[EventCatcher | None] = contextvars.ContextVar(
        "sf_test_hook", default=None
    )
    context.register_configure_hook(hook, inheritable=True)
    token = hook.set(catcher)
    try:
        compress(mocked(Recorder()), docs("a", "b"), "q")
    finally:
        hook.reset(token)
        context._configure_hooks[:] = [h for h in context._configure_hooks if h[0] is not hook]
    assert [name for name, _ in catcher.events] == [USAGE_EVENT]


def test_langchain_debug_still_configures_a_manager(compress, monkeypatch):
    from langchain_core.globals import set_debug

    configured = _count_managers(monkeypatch)
    set_debug(True)
    try:
        compress(mocked(Recorder()), docs("a", "b"), "q")
    finally:
        set_debug(False)
    assert configured == [None]  # configured as LangChain would: its debug handler listens


# -- over real sockets --------------------------------------------------------------------------


class WordHashEmbeddings(Embeddings):
    """A deterministic toy embedding: hashed bag of words."""

    def _embed(self, text: str) -> list[float]:
        vector = [0.0] * 32
        for word in text.lower().split():
            vector[zlib.crc32(word.encode()) % 32] += 1.0
        return vector

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._embed(text)


def emulator_truth(emulator, query: str, texts: list[str], top_n: int) -> list[tuple[str, float]]:
    body = {"model": "BAAI/bge-reranker-v2-m3", "query": query, "documents": texts, "top_n": top_n}
    return [(texts[r["index"]], r["relevance_score"]) for r in emulator.rank(body)["results"]]


def test_compress_over_http(emulator, compress):
    reranker = SiliconFlowRerank(api_key=KEY, base_url=emulator.base_url, top_n=2)
    out = compress(reranker, docs(*CORPUS), "apple")
    assert [(d.page_content, d.metadata["relevance_score"]) for d in out] == emulator_truth(
        emulator, "apple", CORPUS, 2
    )
    assert emulator.stats.last_request_headers["authorization"] == f"Bearer {KEY}"


def test_image_documents_over_http(emulator, compress):
    inputs = [
        Document(page_content="photo", metadata={"image": "https://img.test/blue-bus.jpg"}),
        Document(page_content="photo", metadata={"image": "https://img.test/red-apple.jpg"}),
    ]
    reranker = SiliconFlowRerank(
        api_key=KEY, base_url=emulator.base_url, model="Qwen/Qwen3-VL-Reranker-8B"
    )
    out = compress(reranker, inputs, "red apple")
    assert out[0].metadata["image"] == "https://img.test/red-apple.jpg"


def test_retries_over_http(emulator, compress):
    emulator.enqueue(Fault.overloaded())
    reranker = SiliconFlowRerank(api_key=KEY, base_url=emulator.base_url)
    assert compress(reranker, docs("apple"), "apple")
    assert emulator.stats.by_status == {503: 1, 200: 1}


def test_contextual_compression_retriever_pipeline(emulator):
    store = InMemoryVectorStore(WordHashEmbeddings())
    store.add_documents(docs(*CORPUS))
    base = store.as_retriever(search_kwargs={"k": 6})
    reranker = SiliconFlowRerank(api_key=KEY, base_url=emulator.base_url, top_n=3)
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=base)

    retrieved = [d.page_content for d in base.invoke("fresh apple")]
    expected = emulator_truth(emulator, "fresh apple", retrieved, 3)  # ties keep retrieval order
    for result in (
        retriever.invoke("fresh apple"),
        asyncio.run(retriever.ainvoke("fresh apple")),
    ):
        assert [(d.page_content, d.metadata["relevance_score"]) for d in result] == expected
    # The retriever's own order is not the answer: the reranker decided it.
    assert retrieved[:3] != [t for t, _ in expected]


def test_lcel_chain_pipeline(emulator):
    store = InMemoryVectorStore(WordHashEmbeddings())
    store.add_documents(docs(*CORPUS))
    reranker = SiliconFlowRerank(api_key=KEY, base_url=emulator.base_url, top_n=2)
    chain = RunnableParallel(
        documents=store.as_retriever(search_kwargs={"k": 6}), query=RunnablePassthrough()
    ) | RunnableLambda(
        lambda x: reranker.compress_documents(x["documents"], x["query"]),
        afunc=lambda x: reranker.acompress_documents(x["documents"], x["query"]),
    )
    retrieved = [
        d.page_content for d in store.as_retriever(search_kwargs={"k": 6}).invoke("apple pie")
    ]
    expected = emulator_truth(emulator, "apple pie", retrieved, 2)
    for result in (chain.invoke("apple pie"), asyncio.run(chain.ainvoke("apple pie"))):
        assert [(d.page_content, d.metadata["relevance_score"]) for d in result] == expected


# -- framework contracts: events of the surrounding run, serialization --------------------------


def _chain(reranker: SiliconFlowRerank) -> Any:
    documents = docs("apple pie", "a red car")
    return RunnableLambda(
        lambda query: reranker.compress_documents(documents, query),
        afunc=lambda query: reranker.acompress_documents(documents, query),
    )


async def test_usage_event_reaches_astream_events_of_the_surrounding_run(emulator):
    reranker = SiliconFlowRerank(api_key=KEY, base_url=emulator.base_url)
    for chain in (_chain(reranker), RunnableLambda(lambda q: _chain(reranker).invoke(q))):
        events = [
            event
            async for event in chain.astream_events("apple", version="v2")
            if event["event"] == "on_custom_event"
        ]
        assert [event["name"] for event in events] == [USAGE_EVENT]
        data: Any = events[0]["data"]  # a custom event's data is ours
        assert data["model"] == "BAAI/bge-reranker-v2-m3"
        assert data["usage"]["input_tokens"] > 0


@pytest.mark.parametrize("asynchronous", [False, True])
def test_usage_event_reaches_config_callbacks_without_explicit_callbacks(emulator, asynchronous):
    catcher = EventCatcher()
    chain = _chain(SiliconFlowRerank(api_key=KEY, base_url=emulator.base_url))
    config: Any = {"callbacks": [catcher]}
    if asynchronous:
        asyncio.run(chain.ainvoke("apple", config=config))
    else:
        chain.invoke("apple", config=config)
    assert [name for name, _ in catcher.events] == [USAGE_EVENT]


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
def test_dumps_and_loads_round_trip_with_the_key_as_a_secret_reference(emulator):
    reranker = SiliconFlowRerank(
        api_key=KEY, base_url=emulator.base_url, top_n=2, timeout=30, instruction=None
    )
    text = dumps(reranker)
    assert KEY not in text
    assert json.loads(text)["kwargs"]["api_key"] == {
        "lc": 1,
        "type": "secret",
        "id": ["SILICONFLOW_API_KEY"],
    }
    loaded = loads(
        text,
        secrets_map={"SILICONFLOW_API_KEY": KEY},
        valid_namespaces=["langchain_siliconflow"],
        allowed_objects=[SiliconFlowRerank],
    )
    assert isinstance(loaded, SiliconFlowRerank)
    assert loaded == reranker
    assert loaded.timeout == httpx.Timeout(30.0)
    assert (
        loaded.compress_documents(docs("apple pie", "car"), "apple")[0].page_content == "apple pie"
    )
    assert emulator.stats.last_request_headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("bad", ["just a string", {"text": "an item"}, 42])
def test_compressing_anything_but_documents_fails_before_the_request(compress, bad):
    recorder = Recorder()
    with pytest.raises(InvalidRequestError, match=r"documents\[1\] must be a Document"):
        compress(mocked(recorder), [Document(page_content="a"), bad], "q")
    assert recorder.bodies == []
