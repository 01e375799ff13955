"""Malformed input through every public entry point: a clear error before any request, or the
documented clamp; never a raw KeyError, IndexError, TypeError or AttributeError."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode

from langchain_siliconflow import SiliconFlowRerank as LangChainRerank
from llama_index_siliconflow import SiliconFlowRerank as LlamaRerank
from siliconflow_rerank import (
    AsyncSiliconFlowClient,
    InvalidRequestError,
    SiliconFlowClient,
    image_item,
    video_item,
)
from siliconflow_rerank.emulator import RerankEmulator

KEY = "sk-bad-input-000"
VL = "Qwen/Qwen3-VL-Reranker-8B"


@pytest.fixture(scope="module")
def server():
    with RerankEmulator() as emulator:
        yield emulator


def as_documents(items: Any) -> Any:
    if not isinstance(items, list):
        return items
    return [Document(page_content=i) if isinstance(i, str) else i for i in items]


def as_nodes(items: Any) -> Any:
    if not isinstance(items, list):
        return items
    return [NodeWithScore(node=TextNode(text=i)) if isinstance(i, str) else i for i in items]


def entry_points(base_url: str) -> dict[str, Callable[..., Any]]:
    """Every public way to rerank, as f(query, documents, model=..., top_n=...)."""

    def core_sync(query: Any, documents: Any, **kw: Any) -> Any:
        with SiliconFlowClient(api_key=KEY, base_url=base_url) as client:
            return client.rerank(query, documents, **kw)

    def core_async(query: Any, documents: Any, **kw: Any) -> Any:
        async def run() -> Any:
            async with AsyncSiliconFlowClient(api_key=KEY, base_url=base_url) as client:
                return await client.rerank(query, documents, **kw)

        return asyncio.run(run())

    def langchain(method: str) -> Callable[..., Any]:
        def call(query: Any, documents: Any, model: str = "BAAI/bge-reranker-v2-m3", **kw: Any):
            reranker = LangChainRerank(api_key=KEY, base_url=base_url, model=model, top_n=None)
            if method == "compress_documents":
                return reranker.compress_documents(as_documents(documents), query)
            if method == "acompress_documents":
                return asyncio.run(reranker.acompress_documents(as_documents(documents), query))
            if method == "rerank":
                return reranker.rerank(documents, query, **kw)
            return asyncio.run(reranker.arerank(documents, query, **kw))

        return call

    def llama(asynchronous: bool) -> Callable[..., Any]:
        def call(query: Any, documents: Any, model: str = "BAAI/bge-reranker-v2-m3", **kw: Any):
            reranker = LlamaRerank(api_key=KEY, base_url=base_url, model=model, top_n=None)
            bundle = query if isinstance(query, QueryBundle) else QueryBundle(query_str=query)
            if asynchronous:
                return asyncio.run(reranker.apostprocess_nodes(as_nodes(documents), bundle))
            return reranker.postprocess_nodes(as_nodes(documents), bundle)

        return call

    return {
        "core sync": core_sync,
        "core async": core_async,
        "langchain compress_documents": langchain("compress_documents"),
        "langchain acompress_documents": langchain("acompress_documents"),
        "langchain rerank": langchain("rerank"),
        "langchain arerank": langchain("arerank"),
        "llama-index postprocess_nodes": llama(False),
        "llama-index apostprocess_nodes": llama(True),
    }


ENTRIES = list(entry_points("http://unused/v1"))

# (case, query, documents, keyword arguments, expected message fragment)
BAD: list[tuple[str, Any, Any, dict[str, Any], str]] = [
    ("empty query", "", ["a"], {}, "query"),
    ("whitespace query", " \t\n", ["a"], {}, "query"),
    ("None query", None, ["a"], {}, "query"),
    ("number as query", 42, ["a"], {}, "query"),
    ("bytes as query", b"\xff\xfe", ["a"], {}, "query"),
    ("lone surrogate", "\ud800 apple", ["a"], {}, "not valid text"),
    ("None in the documents", "q", ["a", None], {}, "1"),
    ("number in the documents", "q", ["a", 7], {}, "1"),
    ("non-UTF-8 bytes as a document", "q", ["a", b"\xff\xfe"], {}, "1"),
    ("documents not a list", "q", 12345, {}, "must be a"),
    ("media for a text model", "q", ["a", {"image": "https://x.test/a.png"}], {}, "text only"),
]

# Entry points where a case does not apply as written (LlamaIndex queries are QueryBundles).
SKIP = {
    ("None query", "llama-index postprocess_nodes"),
    ("None query", "llama-index apostprocess_nodes"),
    ("number as query", "llama-index postprocess_nodes"),
    ("number as query", "llama-index apostprocess_nodes"),
    ("bytes as query", "llama-index postprocess_nodes"),
    ("bytes as query", "llama-index apostprocess_nodes"),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize(
    ("case", "query", "documents", "kwargs", "fragment"), BAD, ids=[b[0] for b in BAD]
)
def test_bad_input_fails_clearly_before_any_request(
    server, entry, case, query, documents, kwargs, fragment
):
    if (case, entry) in SKIP:
        query = QueryBundle(query_str=query)
    server.reset()
    call = entry_points(server.base_url)[entry]
    if case == "media for a text model" and entry.startswith("langchain") and "compress" in entry:
        documents = [
            Document(page_content="a"),
            Document(page_content="b", metadata={"image": "https://x.test/a.png"}),
        ]
    if case == "media for a text model" and entry.startswith("llama"):
        documents = ["a", NodeWithScore(node=ImageNode(image_url="https://x.test/a.png"))]
    with pytest.raises(InvalidRequestError, match=fragment):
        call(query, documents, **kwargs)
    assert server.stats.requests == 0


@pytest.mark.parametrize("entry", ENTRIES)
def test_empty_document_list(server, entry):
    server.reset()
    call = entry_points(server.base_url)[entry]
    if entry.startswith("core"):
        with pytest.raises(InvalidRequestError, match="at least one document"):
            call("q", [])
    else:
        assert list(call("q", [])) == []  # adapters: nothing to rerank, no request
    assert server.stats.requests == 0


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.startswith("core") or "rerank" in e])
def test_huge_top_n_is_clamped(server, entry):
    server.reset()
    call = entry_points(server.base_url)[entry]
    result = call("apple", ["apple", "car"], top_n=10**9)
    assert len(getattr(result, "results", result)) == 2
    assert server.stats.last_request_body["top_n"] == 2


@pytest.mark.parametrize("top_n", [0, -5, 2.5, "3", True])
def test_bad_top_n_everywhere(server, top_n):
    server.reset()
    for entry in ("core sync", "core async"):
        with pytest.raises(InvalidRequestError, match="top_n"):
            entry_points(server.base_url)[entry]("q", ["a"], top_n=top_n)
    for adapter in (LangChainRerank, LlamaRerank):
        with pytest.raises(ValueError, match="top_n"):
            adapter(api_key=KEY, top_n=top_n)
    assert server.stats.requests == 0


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"instruction": "be brief"}, "instruction"),
        ({"model": "Qwen/Qwen3-Reranker-8B", "overlap_tokens": 3}, "overlap_tokens"),
        ({"overlap_tokens": -1}, "overlap_tokens"),
        ({"max_chunks_per_doc": -2}, "max_chunks_per_doc"),
        ({"model": "  "}, "model"),
    ],
)
def test_unsupported_or_invalid_fields_everywhere(server, fields, fragment):
    server.reset()
    for entry in ("core sync", "core async"):
        with pytest.raises(InvalidRequestError, match=fragment):
            entry_points(server.base_url)[entry]("q", ["a"], **fields)
    for adapter in (LangChainRerank, LlamaRerank):
        with pytest.raises(ValueError, match=fragment):
            adapter(api_key=KEY, **fields)
    assert server.stats.requests == 0


def test_media_sources(server, tmp_path: Path):
    huge = tmp_path / "huge.png"
    with huge.open("wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.truncate(50 * 1024 * 1024)
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: image_item(huge), "over the"),
        (lambda: image_item(tmp_path / "missing.png"), "cannot read"),
        (lambda: image_item(tmp_path), "cannot read"),
        (lambda: video_item("clip.mp4"), "pathlib.Path"),
        (lambda: image_item(b""), "empty"),
    ]
    for make, fragment in cases:
        with pytest.raises(InvalidRequestError, match=fragment):
            make()


def test_adapters_refuse_unreadable_or_unallowed_local_media(server, tmp_path: Path):
    server.reset()
    secret = tmp_path / "id_rsa.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n0000")
    langchain = LangChainRerank(api_key=KEY, base_url=server.base_url, model=VL)
    with pytest.raises(InvalidRequestError, match="allow_local_media"):
        langchain.compress_documents(
            [Document(page_content="x", metadata={"image": str(secret)})], "q"
        )
    llama = LlamaRerank(api_key=KEY, base_url=server.base_url, model=VL)
    for node in (
        ImageNode(image_path=str(tmp_path)),
        ImageNode(image_path=str(tmp_path / "none.png")),
        ImageNode(image="not base64!"),
    ):
        with pytest.raises(InvalidRequestError):
            llama.postprocess_nodes([NodeWithScore(node=node)], query_str="q")
    assert server.stats.requests == 0
