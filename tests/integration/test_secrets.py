"""A canary key must never appear in any text or bytes the package produces, on any path."""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket

import pytest
from langchain_core.documents import Document
from langchain_core.load import dumps
from llama_index.core.schema import NodeWithScore, TextNode

from langchain_siliconflow import SiliconFlowRerank as LangChainRerank
from llama_index_siliconflow import SiliconFlowRerank as LlamaRerank
from siliconflow_rerank import AsyncSiliconFlowClient, SiliconFlowClient, SiliconFlowError
from siliconflow_rerank.emulator import Fault, RerankEmulator

from ..helpers import SleepRecorder

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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = SiliconFlowClient(
        api_key=CANARY,
        base_url=f"http://127.0.0.1:{port}/v1",
        retry_policy=SleepRecorder().policy(),
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(SiliconFlowError) as info:
        client.rerank("apple", ["apple"])
    texts = [str(info.value), repr(info.value), *(r.getMessage() for r in caplog.records)]
    assert not [t for t in texts if CANARY in t]
