"""A canary key must never appear in any text or bytes the package produces, on any path."""

from __future__ import annotations

import asyncio
import logging
import pickle

import pytest
from langchain_core.documents import Document
from langchain_core.load import dumps
from llama_index.core.schema import NodeWithScore, TextNode

from langchain_siliconflow import SiliconFlowRerank as LangChainRerank
from llama_index_siliconflow import SiliconFlowRerank as LlamaRerank
from siliconflow_rerank import AsyncSiliconFlowClient, SiliconFlowClient, SiliconFlowError
from siliconflow_rerank.emulator import Fault, RerankEmulator

from ..helpers import SleepRecorder, free_port

CANARY = "sk-canary-7f3a9c2e5b1d4f60"


@pytest.fixture(scope="module")
def server():
    with RerankEmulator() as emulator:
        yield emulator


def every_object(base_url: str, *, share_clients: bool = False) -> list[object]:
    """Both clients and both adapters holding the canary (adapters through their own fields, or
    through the clients, whose retry waits are recorded instead of slept)."""
    policy = SleepRecorder().policy()
    sync = SiliconFlowClient(api_key=CANARY, base_url=base_url, retry_policy=policy)
    async_ = AsyncSiliconFlowClient(api_key=CANARY, base_url=base_url, retry_policy=policy)
    if share_clients:
        adapters: list[object] = [
            LangChainRerank(client=sync, async_client=async_),
            LlamaRerank(client=sync, async_client=async_),
        ]
    else:
        adapters = [
            LangChainRerank(api_key=CANARY, base_url=base_url),
            LlamaRerank(api_key=CANARY, base_url=base_url),
        ]
    return [sync, async_, *adapters]


def test_no_canary_in_reprs_dumps_and_pickles(server):
    texts: list[str] = []
    blobs: list[bytes] = []
    for thing in every_object(server.base_url):
        texts += [repr(thing), str(thing)]
    langchain, llama = every_object(server.base_url)[2:]
    assert isinstance(langchain, LangChainRerank)
    assert isinstance(llama, LlamaRerank)
    texts += [
        dumps(langchain),
        langchain.model_dump_json(),
        str(langchain.model_dump()),
        llama.to_json(),
        str(llama.to_dict()),
        llama.model_dump_json(),
    ]
    blobs += [pickle.dumps(langchain), pickle.dumps(llama)]
    assert not [t for t in texts if CANARY in t]
    assert not [b for b in blobs if CANARY.encode() in b]


FAILURES = [
    None,  # success
    Fault.http_status(401, "Invalid token"),
    Fault.http_status(400, {"code": 20012, "message": f"bad header Bearer {CANARY}"}),
    Fault.http_status(
        502, f"<html><title>echo {CANARY}</title></html>".encode(), content_type="text/html"
    ),
    Fault.overloaded(),
    Fault.rate_limited(retry_after="0"),
    Fault.disconnect(),
    Fault.truncated_json(),
    Fault.index_out_of_range(),
    # Echoes of the request: in a 200 that is no answer, and as a JSON key.
    Fault.http_status(200, {"echo": f"Authorization: Bearer {CANARY}", "results": "none"}),
    Fault.http_status(400, {CANARY: "the key as a JSON key", "message": "bad request"}),
    # ... and in a response header, which httpcore's own DEBUG line of the answer shows.
    Fault.http_status(400, "bad", headers={"x-echo": f"Bearer {CANARY}"}),
]


@pytest.mark.parametrize(
    "fault", FAILURES, ids=lambda f: "success" if f is None else f"{f.kind}-{f.status}"
)
def test_no_canary_in_errors_or_debug_logs(server, fault, caplog):
    server.reset()
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        for thing in every_object(server.base_url, share_clients=True):
            if fault is not None:
                server.enqueue(fault, fault, fault)
            try:
                if isinstance(thing, SiliconFlowClient):
                    thing.rerank("apple", ["apple", "car"])
                elif isinstance(thing, AsyncSiliconFlowClient):
                    asyncio.run(thing.rerank("apple", ["apple", "car"]))
                elif isinstance(thing, LangChainRerank):
                    thing.compress_documents([Document(page_content="apple")], "apple")
                else:
                    assert isinstance(thing, LlamaRerank)
                    thing.postprocess_nodes(
                        [NodeWithScore(node=TextNode(text="apple"))], query_str="apple"
                    )
            except SiliconFlowError as error:
                seen += [str(error), repr(error), repr(error.args), str(getattr(error, "body", ""))]
                seen += [
                    str(getattr(error, "body_excerpt", "")),
                    str(getattr(error, "headers", "")),
                ]
                cause = error.__cause__
                while cause is not None:
                    seen += [str(cause), repr(cause)]
                    cause = cause.__cause__
            server.reset()
    seen += [record.getMessage() for record in caplog.records]
    seen += [str(record.args) for record in caplog.records]
    assert caplog.records, "expected some log records to check"
    assert not [text for text in seen if CANARY in text]


def test_no_canary_when_the_connection_is_refused(caplog):
    client = SiliconFlowClient(
        api_key=CANARY,
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        retry_policy=SleepRecorder().policy(),
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(SiliconFlowError) as info:
        client.rerank("apple", ["apple"])
    texts = [str(info.value), repr(info.value), *(r.getMessage() for r in caplog.records)]
    assert not [t for t in texts if CANARY in t]


@pytest.mark.parametrize("adapter_class", [LangChainRerank, LlamaRerank])
def test_no_canary_in_the_passthrough_warning_of_an_echoing_answer(server, adapter_class, caplog):
    server.reset()
    server.enqueue(Fault.http_status(200, {"echo": f"Bearer {CANARY}", "results": "none"}))
    adapter = adapter_class(api_key=CANARY, base_url=server.base_url, on_error="passthrough")
    with caplog.at_level(logging.WARNING, logger="siliconflow_rerank"):
        if isinstance(adapter, LangChainRerank):
            out: list[object] = list(
                adapter.compress_documents([Document(page_content="apple")], "apple")
            )
        else:
            out = list(
                adapter.postprocess_nodes(
                    [NodeWithScore(node=TextNode(text="apple"))], query_str="apple"
                )
            )
    assert len(out) == 1
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "[redacted]" in warning.getMessage()
    assert CANARY not in warning.getMessage()


@pytest.mark.parametrize(
    "key",
    [
        CANARY[:10] + "\u200b" + CANARY[10:],  # zero-width space
        CANARY[:10] + "\u00a0" + CANARY[10:],  # non-breaking space
        CANARY[:10] + "\n" + CANARY[10:],
        CANARY[:10] + "\x00" + CANARY[10:],
        CANARY[:10] + "é" + CANARY[10:],
    ],
    ids=["zero-width", "nbsp", "newline", "nul", "non-ascii"],
)
@pytest.mark.parametrize("entry", ["sync", "async", "langchain", "llama_index"])
def test_a_key_that_cannot_be_sent_is_refused_without_showing_it(server, key, entry, caplog):
    server.reset()
    with caplog.at_level(logging.DEBUG), pytest.raises(SiliconFlowError) as info:
        _call_with_key(entry, key, server.base_url)
    _assert_unseen(info.value, caplog)
    assert server.stats.requests == 0


def _call_with_key(entry: str, key: str, base_url: str) -> None:
    if entry == "sync":
        SiliconFlowClient(api_key=key, base_url=base_url).rerank("a", ["a"])
    elif entry == "async":
        asyncio.run(AsyncSiliconFlowClient(api_key=key, base_url=base_url).rerank("a", ["a"]))
    elif entry == "langchain":
        LangChainRerank(api_key=key, base_url=base_url).compress_documents(
            [Document(page_content="a")], "a"
        )
    else:
        LlamaRerank(api_key=key, base_url=base_url).postprocess_nodes(
            [NodeWithScore(node=TextNode(text="a"))], query_str="a"
        )


def _assert_unseen(error: SiliconFlowError, caplog: pytest.LogCaptureFixture) -> None:
    assert "cannot be sent in a header" in str(error)
    texts = [str(error), repr(error), *(r.getMessage() for r in caplog.records)]
    assert not [t for t in texts if CANARY[:10] in t or CANARY[10:] in t]


def test_no_canary_in_the_headers_kept_on_an_error(server):
    server.reset()
    server.enqueue(Fault.http_status(400, "bad", headers={"x-echo": f"Bearer {CANARY}"}))
    client = SiliconFlowClient(api_key=CANARY, base_url=server.base_url)
    with pytest.raises(SiliconFlowError) as info:
        client.rerank("apple", ["apple"])
    headers = getattr(info.value, "headers", {})
    assert headers["x-echo"] == "Bearer [redacted]"
    assert CANARY not in str(dict(headers))
    assert CANARY.encode() not in pickle.dumps(info.value)
