"""The core clients against the emulator over real loopback sockets, sync and async."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from siliconflow_rerank import (
    DEFAULT_KEEPALIVE_EXPIRY,
    APIConnectionError,
    APITimeoutError,
    AsyncSiliconFlowClient,
    AuthenticationError,
    BadRequestError,
    InlineMedia,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    RerankCache,
    ResponseValidationError,
    ServiceUnavailableError,
    SiliconFlowClient,
    image_item,
)
from siliconflow_rerank.emulator import Fault

from ..helpers import ScriptedServer, free_port, ok_body, png_file, read_request_head

DOCUMENTS = ["a red car", "apple pie", "green apple", "a bicycle"]


def test_rerank_over_http(make_runner, emulator):
    runner = make_runner(base_url=emulator.base_url)
    response = runner.rerank("apple", DOCUMENTS, top_n=2, return_documents=True)
    truth = emulator.rank({"model": "BAAI/bge-reranker-v2-m3", "query": "apple",
                           "documents": DOCUMENTS, "top_n": 2})  # fmt: skip
    assert [(r.index, r.relevance_score) for r in response.results] == [
        (r["index"], r["relevance_score"]) for r in truth["results"]
    ]
    assert [r.document.text for r in response.results if r.document] == [
        DOCUMENTS[r.index] for r in response.results
    ]
    assert response.trace_id
    assert response.usage is not None
    assert response.usage.input_tokens
    assert emulator.stats.last_request_headers["authorization"] == "Bearer sk-test-key-123456"


def test_multimodal_over_http(make_runner, emulator, tmp_path: Path):
    png = tmp_path / "banana.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"tEXtComment\x00ripe banana")
    response = make_runner(base_url=emulator.base_url).rerank(
        "banana",
        [image_item("https://img.example.com/car.jpg"), image_item(png), "an orange"],
        model="Qwen/Qwen3-VL-Reranker-8B",
    )
    assert response.results[0].index == 1
    assert response.usage is not None
    assert response.usage.image_tokens


def test_connections_are_opened_lazily_and_kept_alive(make_runner, emulator):
    runner = make_runner(base_url=emulator.base_url)
    assert emulator.stats.connections == 0
    for _ in range(4):
        runner.rerank("apple", DOCUMENTS)
    stats = emulator.stats
    assert stats.requests == 4
    assert stats.connections == 1


@pytest.mark.parametrize(("expiry", "connections"), [(0.05, 2), (None, 1)])
def test_idle_connections_are_kept_for_keepalive_expiry(make_runner, emulator, expiry, connections):
    settings = {} if expiry is None else {"keepalive_expiry": expiry}
    runner = make_runner(base_url=emulator.base_url, **settings)
    assert runner.client.settings.keepalive_expiry == (
        DEFAULT_KEEPALIVE_EXPIRY if expiry is None else expiry
    )
    runner.rerank("apple", DOCUMENTS)
    time.sleep(0.3)  # longer than the short expiry, far shorter than the default
    runner.rerank("apple", DOCUMENTS)
    assert emulator.stats.connections == connections


def test_both_clients_go_through_the_proxy_the_environment_names(
    make_runner, emulator, monkeypatch: pytest.MonkeyPatch
):
    # The emulator stands in for the proxy: the API host below does not exist, so only a request
    # sent through the proxy can be answered.
    monkeypatch.setenv("HTTP_PROXY", emulator.base_url.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    runner = make_runner(base_url="http://rerank.example.invalid/v1", max_retries=0)
    response = runner.rerank("apple", DOCUMENTS)
    assert response.results[0].index in (1, 2)
    assert emulator.stats.requests == 1


def test_a_batched_sync_call_goes_through_the_proxy_too(emulator, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HTTP_PROXY", emulator.base_url.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = SiliconFlowClient(
        api_key="sk-test-key-123456",
        base_url="http://rerank.example.invalid/v1",
        max_retries=0,
        max_documents_per_request=1,
    )
    response = client.rerank("apple", DOCUMENTS)
    assert sorted(r.index for r in response.results) == [0, 1, 2, 3]
    assert emulator.stats.requests == 4
    assert client._looped is None  # httpx's proxy transport, on threads: no loop thread
    client.close()


def test_no_proxy_exempts_the_api_host(make_runner, emulator, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    runner = make_runner(base_url=emulator.base_url, max_retries=0)
    assert runner.rerank("apple", DOCUMENTS).results
    assert emulator.stats.requests == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault.rate_limited(),
        Fault.rate_limited(retry_after="0"),
        Fault.overloaded(),
        Fault.server_error(),
        Fault.bad_gateway_html(),
        Fault.gateway_timeout(),
        Fault.disconnect(),
    ],
    ids=lambda f: f"{f.kind}-{f.status}",
)
def test_transient_faults_are_retried_over_http(make_runner, emulator, fault):
    emulator.enqueue(fault, fault)
    runner = make_runner(base_url=emulator.base_url, max_retries=2)
    response = runner.rerank("apple", DOCUMENTS)
    assert response.results[0].index in (1, 2)
    assert emulator.stats.requests == 3
    assert len(runner.sleeps.delays) == 2


@pytest.mark.parametrize(
    ("fault", "error_class", "fragment"),
    [
        (Fault.rate_limited(), RateLimitError, "rate limiting"),
        (Fault.overloaded(), ServiceUnavailableError, "50505"),
        (Fault.server_error(), InternalServerError, "50507"),
        (Fault.bad_gateway_html(), InternalServerError, "502 Bad Gateway"),
        (Fault.gateway_timeout(), InternalServerError, "Gateway Timeout"),
        (Fault.disconnect(), APIConnectionError, "connection failed"),
        (Fault.truncated_json(), ResponseValidationError, "not valid JSON"),
        (Fault.not_json(), ResponseValidationError, "not valid JSON"),
        (Fault.index_out_of_range(), ResponseValidationError, "out of range"),
        (Fault.duplicate_index(), ResponseValidationError, "appears twice"),
        (Fault.missing_results(), ResponseValidationError, "results"),
        (Fault.dropped_results(), ResponseValidationError, "ranks 3 of the 4 documents"),
        (Fault.non_finite_score(), ResponseValidationError, "relevance_score"),
    ],
    ids=lambda v: v.kind if isinstance(v, Fault) else None,
)
def test_faults_map_to_the_right_error_over_http(
    make_runner, emulator, fault, error_class, fragment
):
    emulator.enqueue(fault)
    runner = make_runner(base_url=emulator.base_url, max_retries=0)
    with pytest.raises(error_class, match=fragment) as info:
        runner.rerank("apple", DOCUMENTS)
    if fault.kind != "disconnect":
        assert getattr(info.value, "trace_id", None)
    assert emulator.stats.requests == 1


def test_timeout_fires_and_is_retried(make_runner, emulator):
    emulator.enqueue(Fault.slow(2.0), Fault.slow(2.0))
    runner = make_runner(base_url=emulator.base_url, timeout=0.2, max_retries=1)
    with pytest.raises(APITimeoutError):
        runner.rerank("apple", DOCUMENTS)
    assert emulator.stats.requests == 2


def test_timeout_then_recovery(make_runner, emulator):
    emulator.enqueue(Fault.slow(2.0))
    runner = make_runner(base_url=emulator.base_url, timeout=0.3, max_retries=1)
    assert runner.rerank("apple", DOCUMENTS).results


def test_vendor_errors_over_http(make_runner, emulator):
    runner = make_runner(base_url=emulator.base_url)
    with pytest.raises(BadRequestError) as info:
        runner.rerank("apple", DOCUMENTS, model="nobody/missing-model")
    assert info.value.code == 20012
    with pytest.raises(NotFoundError):
        make_runner(base_url=emulator.base_url + "/v1").rerank("apple", DOCUMENTS)
    emulator.api_key = "sk-the-right-one"
    with pytest.raises(AuthenticationError) as auth:
        runner.rerank("apple", DOCUMENTS)
    assert auth.value.body == "Invalid token"
    assert emulator.stats.requests == 3


def test_connection_refused_is_retried_then_raised(make_runner):
    runner = make_runner(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=2)
    with pytest.raises(APIConnectionError, match="connection failed") as info:
        runner.rerank("apple", DOCUMENTS)
    assert not isinstance(info.value, APITimeoutError)  # refused is not a timeout
    assert len(runner.sleeps.delays) == 2


def test_async_client_survives_a_new_event_loop_per_call(emulator):
    client = AsyncSiliconFlowClient(api_key="sk-any-key-000", base_url=emulator.base_url)
    first = asyncio.run(client.rerank("apple", DOCUMENTS))
    second = asyncio.run(client.rerank("apple", DOCUMENTS))
    assert first.results == second.results

    async def close() -> None:
        await client.aclose()

    asyncio.run(close())


async def test_async_calls_run_concurrently(emulator):
    emulator.latency = 0.2
    async with AsyncSiliconFlowClient(api_key="sk-any-key-000", base_url=emulator.base_url) as c:
        responses = await asyncio.gather(*(c.rerank("apple", DOCUMENTS) for _ in range(20)))
    assert len(responses) == 20
    assert emulator.stats.max_in_flight == 20


def test_sync_client_is_shared_safely_across_threads(emulator):
    from concurrent.futures import ThreadPoolExecutor

    emulator.latency = 0.05
    client = SiliconFlowClient(api_key="sk-any-key-000", base_url=emulator.base_url)
    with client, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda q: client.rerank(q, DOCUMENTS), ["apple"] * 16))
    assert {r.results[0].index for r in results} <= {1, 2}
    assert emulator.stats.max_in_flight > 1


def test_injected_http_client_over_http(emulator):
    with httpx.Client() as http:
        client = SiliconFlowClient(api_key="sk-any-key-000", base_url=emulator.base_url,
                                   http_client=http)  # fmt: skip
        client.rerank("apple", DOCUMENTS)
        client.close()
        assert not http.is_closed
        client.rerank("apple", DOCUMENTS)
    assert emulator.stats.requests == 2


# -- inline media streamed from files ------------------------------------------------------------

VL = "Qwen/Qwen3-VL-Reranker-8B"


def test_media_files_are_streamed_with_a_stated_length(make_runner, emulator, tmp_path: Path):
    banana = png_file(tmp_path / "banana.png", "ripe banana", 2 * 1024 * 1024)
    response = make_runner(base_url=emulator.base_url).rerank(
        "banana", ["an orange", image_item(banana)], model=VL
    )
    assert response.results[0].index == 1
    sent = emulator.stats.last_request_body["documents"][1]["image"]
    assert sent == "data:image/png;base64," + base64.b64encode(banana.read_bytes()).decode()
    headers = emulator.stats.last_request_headers
    assert "transfer-encoding" not in headers
    assert int(headers["content-length"]) > len(sent)


def test_a_changed_media_file_is_refused_before_sending(make_runner, emulator, tmp_path: Path):
    banana = png_file(tmp_path / "banana.png", "ripe banana", 100)
    item = image_item(banana)
    banana.write_bytes(banana.read_bytes() + b"appended")
    with pytest.raises(InvalidRequestError, match="changed size"):
        make_runner(base_url=emulator.base_url).rerank("banana", ["x", item], model=VL)
    assert emulator.stats.requests == 0


def test_a_media_file_that_shrinks_while_sent_fails_without_retry(
    make_runner, emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    big = png_file(tmp_path / "big.png", "ripe banana", 3 * 1024 * 1024)
    item = image_item(big)
    real_read = InlineMedia._read

    def read_then_shrink(self: InlineMedia, file: Any, start: int) -> bytes:
        piece = real_read(self, file, start)
        if start == 0:  # the file is cut short right after its first piece went out
            with big.open("r+b") as handle:
                handle.truncate(1000)
        return piece

    monkeypatch.setattr(InlineMedia, "_read", read_then_shrink)
    runner = make_runner(base_url=emulator.base_url, max_retries=2)
    with pytest.raises(InvalidRequestError, match="shrank while being sent"):
        runner.rerank("banana", ["an orange", item], model=VL)
    assert emulator.stats.requests == 0  # the half-sent attempt is no request; and no retry
    assert runner.sleeps.delays == []


def test_a_streamed_body_is_sent_again_on_retry(make_runner, emulator, tmp_path: Path):
    banana = png_file(tmp_path / "banana.png", "ripe banana", 1024 * 1024)
    emulator.enqueue(Fault.server_error())
    runner = make_runner(base_url=emulator.base_url, max_retries=1)
    response = runner.rerank("banana", ["an orange", image_item(banana)], model=VL)
    assert emulator.stats.requests == 2
    assert response.results[0].index == 1
    sent = emulator.stats.last_request_body["documents"][1]["image"]
    assert base64.b64decode(sent.split(",", 1)[1]) == banana.read_bytes()


def test_media_files_in_batches_and_the_cache(make_runner, emulator, tmp_path: Path):
    files = [
        png_file(tmp_path / f"{name}.png", words, 1000)
        for name, words in [
            ("car", "red car"),
            ("banana", "ripe banana"),
            ("bread", "banana bread"),
        ]
    ]
    documents = [image_item(f) for f in files]
    whole = make_runner(base_url=emulator.base_url).rerank("banana", documents, model=VL)
    cache = RerankCache()
    runner = make_runner(base_url=emulator.base_url, max_documents_per_request=1, cache=cache)
    emulator.reset()
    batched = runner.rerank("banana", documents, model=VL)
    assert emulator.stats.requests == 3
    assert batched.results == whole.results
    again = runner.rerank("banana", [image_item(f) for f in files], model=VL)
    assert emulator.stats.requests == 3  # every score came from the cache
    assert again.results == whole.results
    # Same size, new content: the cache keys on content, so this one is asked for again.
    files[0].write_bytes(files[0].read_bytes().replace(b"red car", b"old car"))
    runner.rerank("banana", [image_item(f) for f in files], model=VL)
    assert emulator.stats.requests == 4
    assert cache.hits == 5


@pytest.mark.parametrize("value", ["nan", "inf", "1e300"])
def test_a_meaningless_retry_after_is_retried_with_backoff(make_runner, emulator, value):
    emulator.enqueue(Fault.rate_limited(retry_after=value))
    runner = make_runner(base_url=emulator.base_url)
    assert runner.rerank("apple", ["apple pie", "car"]).results[0].index == 0
    assert len(runner.sleeps.delays) == 1
    assert 0 < runner.sleeps.delays[0] <= 0.5  # the backoff, not NaN or a sleep for ever


MALFORMED_ANSWERS = {
    "bad status line": b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\n{}",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}",
    "negative length": b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n{}",
    "oversized header": b"HTTP/1.1 200 OK\r\nX-Big: "
    + b"a" * 200_000
    + b"\r\nContent-Length: 2\r\n\r\n{}",
}


@pytest.mark.parametrize("answer", MALFORMED_ANSWERS.values(), ids=MALFORMED_ANSWERS.keys())
def test_malformed_http_is_a_connection_error_and_retried(make_runner, answer):
    def script(connection: socket.socket) -> None:
        read_request_head(connection)
        connection.sendall(answer)
        connection.close()

    with ScriptedServer(script) as server:
        runner = make_runner(base_url=server.base_url, max_retries=1, timeout=2.0)
        with pytest.raises(APIConnectionError, match="connection failed"):
            runner.rerank("apple", ["apple pie"])
        assert len(server.connections) == 2  # the first attempt and one retry
        assert len(runner.sleeps.delays) == 1


def _name_proxy(monkeypatch: pytest.MonkeyPatch, proxy: str) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


@pytest.mark.parametrize("proxy", ["ftp://proxy.invalid:1", "socks4://127.0.0.1:1"])
def test_an_unusable_proxy_variable_is_a_configuration_error(make_runner, monkeypatch, proxy):
    _name_proxy(monkeypatch, proxy)
    runner = make_runner(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    with pytest.raises(InvalidRequestError, match=r"proxy settings .*cannot be used"):
        runner.rerank("apple", ["apple pie"])


def test_a_socks_proxy_without_its_package_is_a_configuration_error(make_runner, monkeypatch):
    monkeypatch.setitem(sys.modules, "socksio", None)  # as if httpx's `socks` extra were missing
    _name_proxy(monkeypatch, "socks5://127.0.0.1:1")
    runner = make_runner(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    with pytest.raises(InvalidRequestError, match=r"proxy settings .*socksio"):
        runner.rerank("apple", ["apple pie"])


def test_both_clients_go_through_a_socks_proxy(make_runner, emulator, socks_proxy, monkeypatch):
    # aiohttp speaks only HTTP to a proxy: the async client sends through httpx here, as the sync
    # client does, rather than speak HTTP to a SOCKS server.
    _name_proxy(monkeypatch, socks_proxy.url)
    runner = make_runner(base_url=emulator.base_url, max_retries=0)
    for _ in range(2):
        response = runner.rerank("apple", DOCUMENTS, top_n=2)
        assert response.results[0].index in (1, 2)
    assert emulator.stats.requests == 2
    target = emulator.base_url.removeprefix("http://").removesuffix("/v1")
    assert socks_proxy.relayed() == [target]  # one kept-alive connection, through the proxy


def test_a_socks_proxy_that_refuses_is_a_connection_error(make_runner, monkeypatch, emulator):
    _name_proxy(monkeypatch, f"socks5://127.0.0.1:{free_port()}")
    runner = make_runner(base_url=emulator.base_url, max_retries=0)
    with pytest.raises(APIConnectionError):
        runner.rerank("apple", ["apple pie"])
    assert emulator.stats.requests == 0


def _answer_with(head: bytes, body: bytes) -> ScriptedServer:
    def script(connection: socket.socket) -> None:
        read_request_head(connection)
        connection.sendall(head + body)
        time.sleep(1)  # hold the connection: the client must not wait for the rest

    return ScriptedServer(script)


def test_an_answer_that_inflates_past_the_cap_is_refused(make_runner):
    bomb = gzip.compress(b"[" + b" " * 20_000_000 + b"]")  # 20 kB of gzip, 20 MB decoded
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
    with _answer_with(head, bomb) as server:
        runner = make_runner(base_url=server.base_url, max_response_bytes=1_000_000)
        with pytest.raises(ResponseValidationError, match="max_response_bytes"):
            runner.rerank("apple", ["apple pie"])
        assert len(server.connections) == 1  # not retried


def _asks_for_compression(head: bytes, body: bytes) -> ScriptedServer:
    def script(connection: socket.socket) -> None:
        request = read_request_head(connection)
        if b"gzip" not in request.lower().split(b"accept-encoding:")[-1].split(b"\r\n")[0]:
            head_sent = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
            connection.sendall(head_sent)
            return
        connection.sendall(head + body)
        time.sleep(1)

    return ScriptedServer(script)


ANSWER = json.dumps(ok_body(0.25, 0.75)).encode()


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(ANSWER)),
        ("deflate", zlib.compress(ANSWER)),
        ("GZIP", gzip.compress(ANSWER)),
    ],
)
def test_a_compressed_answer_is_asked_for_and_inflated(make_runner, encoding, body):
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n" % (
        encoding.encode(),
        len(body),
    )
    with _asks_for_compression(head, body) as server:
        runner = make_runner(base_url=server.base_url, max_retries=0)
        response = runner.rerank("apple", ["apple pie", "car"])
    assert list(response.results.pairs()) == [(1, 0.75), (0, 0.25)]


def test_a_corrupt_compressed_answer_is_a_connection_error(make_runner):
    body = gzip.compress(ANSWER)[:-12] + b"not gzip at all"
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
    with _answer_with(head, body) as server:
        runner = make_runner(base_url=server.base_url, max_retries=0)
        with pytest.raises(APIConnectionError, match=r"decompress|decod"):
            runner.rerank("apple", ["apple pie", "car"])


def test_a_stated_length_past_the_cap_is_refused_before_reading(make_runner):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 400000000\r\n\r\n"
    with _answer_with(head, b"{") as server:
        runner = make_runner(base_url=server.base_url, max_response_bytes=1_000_000, timeout=5.0)
        with pytest.raises(ResponseValidationError, match=r"max_response_bytes \(1000000 bytes\)"):
            runner.rerank("apple", ["apple pie"])
