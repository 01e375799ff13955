"""The policy contract: the same hostile servers, over real loopback sockets, through every
transport and both endpoints. Each rule (redirects refused, the attempt deadline, the answer size
cap, status errors, key redaction, errors that pickle) is the pipeline's, above the transport
interface, so each must hold on every path."""

from __future__ import annotations

import asyncio
import gzip
import json
import pickle
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from siliconflow_rerank import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncSiliconFlowClient,
    Booking,
    InternalServerError,
    RateLimitError,
    ResponseValidationError,
    SiliconFlowClient,
    SiliconFlowError,
    image_item,
)
from siliconflow_rerank.emulator import RerankEmulator

from ..helpers import ScriptedServer, SleepRecorder, png_file, read_request_head

KEY = "sk-contract-canary-0123456789"

PATHS = ["sync", "sync batched", "sync httpx", "async", "async httpx"]
"""The client's own sync pool (httpcore), a sync call of several requests (on the client's loop
thread, over aiohttp), a caller's `httpx.Client`, the async client's own pool (aiohttp), and a
caller's `httpx.AsyncClient`. The callers' clients follow redirects: the policy still refuses."""
ENDPOINTS = ["rerank", "embed"]
VL = "Qwen/Qwen3-VL-Reranker-8B"


def call(path: str, endpoint: str, base_url: str, query: Any = "apple", **settings: Any) -> Any:
    """One call of `endpoint` through `path` (a rerank of `query`); its answer or its error."""
    settings = {
        "api_key": KEY,
        "base_url": base_url,
        "max_retries": 0,
        "timeout": 5.0,
        "retry_policy": SleepRecorder().policy(),
        **settings,
    }
    if endpoint == "rerank":
        arguments: tuple[Any, ...] = (query, ["apple pie", "a red car"])
        options: dict[str, Any] = {} if isinstance(query, str) else {"model": VL}
        if path == "sync batched":
            settings["max_documents_per_request"] = 1
    else:
        arguments = (["apple pie", "a red car"],)
        options = {"batch_size": 1} if path == "sync batched" else {}
    if path.startswith("sync"):
        http = httpx.Client(follow_redirects=True) if path == "sync httpx" else None
        with SiliconFlowClient(http_client=http, **settings) as client:
            try:
                return getattr(client, endpoint)(*arguments, **options)
            finally:
                if http is not None:
                    http.close()

    async def run() -> Any:
        http = httpx.AsyncClient(follow_redirects=True) if path == "async httpx" else None
        async with AsyncSiliconFlowClient(http_client=http, **settings) as client:
            try:
                return await getattr(client, endpoint)(*arguments, **options)
            finally:
                if http is not None:
                    await http.aclose()

    return asyncio.run(run())


def failure(path: str, endpoint: str, script: Callable[[socket.socket], None], **settings: Any):
    """The error a call through `path` fails with against a server running `script`."""
    with ScriptedServer(script) as server, pytest.raises(SiliconFlowError) as info:
        call(path, endpoint, server.base_url, **settings)
    return info.value


def assert_safe(error: SiliconFlowError) -> None:
    """No trace of the key anywhere in the error, and it crosses a process boundary intact."""
    for text in (str(error), repr(error), repr(error.__cause__), repr(error.__context__)):
        assert KEY not in text
    for name in ("body", "headers", "message"):
        assert KEY not in repr(getattr(error, name, ""))
    pickled = pickle.dumps(error)
    assert KEY.encode() not in pickled
    again = pickle.loads(pickled)
    assert type(again) is type(error)
    assert str(again) == str(error)


def _answer(connection: socket.socket, head: bytes, body: bytes = b"") -> None:
    connection.sendall(head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def _echoing(status: bytes) -> Callable[[socket.socket], None]:
    """Answer `status` with the request's head (its key among it) in the body and a header."""

    def script(connection: socket.socket) -> None:
        head = read_request_head(connection)
        body = json.dumps({"code": 50001, "message": head.decode("latin-1")}).encode()
        _answer(connection, b"HTTP/1.1 " + status + b"\r\nX-Echo: Bearer " + KEY.encode(), body)

    return script


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("path", PATHS)
def test_a_redirect_to_another_origin_is_refused(path, endpoint):
    with RerankEmulator() as elsewhere:
        location = f"{elsewhere.base_url}/{'rerank' if endpoint == 'rerank' else 'embeddings'}"

        def redirect(connection: socket.socket) -> None:
            read_request_head(connection)
            _answer(
                connection, b"HTTP/1.1 307 Temporary Redirect\r\nLocation: " + location.encode()
            )

        error = failure(path, endpoint, redirect)
        assert isinstance(error, APIStatusError)
        assert error.status_code == 307
        assert "redirects are never followed" in str(error)
        assert elsewhere.stats.requests == 0  # the documents never went to the other origin
    assert_safe(error)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("path", PATHS)
def test_an_answer_trickling_past_the_deadline_ends_there(path, endpoint):
    def trickle(connection: socket.socket) -> None:
        read_request_head(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            connection.sendall(b" ")
            time.sleep(0.1)

    error = failure(path, endpoint, trickle, attempt_deadline=0.6)
    assert isinstance(error, APITimeoutError)
    assert "0.6 s deadline" in str(error)
    assert_safe(error)


def _stated_too_large(connection: socket.socket) -> None:
    read_request_head(connection)
    _answer(connection, b"HTTP/1.1 200 OK", b" " * 5000)


def _chunked_too_large(connection: socket.socket) -> None:
    read_request_head(connection)
    connection.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(10):
        connection.sendall(b"200\r\n" + b" " * 512 + b"\r\n")
    connection.sendall(b"0\r\n\r\n")


def _inflating_too_large(connection: socket.socket) -> None:
    read_request_head(connection)
    _answer(connection, b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip", gzip.compress(b" " * 100_000))


@pytest.mark.parametrize(
    "script",
    [_stated_too_large, _chunked_too_large, _inflating_too_large],
    ids=lambda s: s.__name__,
)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("path", PATHS)
def test_an_answer_over_the_size_cap_is_refused(path, endpoint, script):
    error = failure(path, endpoint, script, max_response_bytes=1000)
    assert isinstance(error, ResponseValidationError)
    assert "max_response_bytes" in str(error)
    assert_safe(error)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (b"500 Internal Server Error", InternalServerError),
        (b"429 Too Many Requests", RateLimitError),
    ],
)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("path", PATHS)
def test_a_status_error_echoing_the_key_is_mapped_redacted_and_pickles(
    path, endpoint, status, kind
):
    error = failure(path, endpoint, _echoing(status))
    assert type(error) is kind
    assert "[redacted]" in str(error)  # the echoed key was there, and was replaced
    assert error.headers["x-echo"] == "Bearer [redacted]"
    assert_safe(error)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("path", PATHS)
def test_a_connection_cut_mid_answer_is_a_connection_error(path, endpoint):
    def cut(connection: socket.socket) -> None:
        read_request_head(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        connection.shutdown(socket.SHUT_RDWR)

    error = failure(path, endpoint, cut)
    assert isinstance(error, APIConnectionError)
    assert_safe(error)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("path", PATHS)
def test_an_invalid_answer_echoing_the_key_is_refused_redacted(path, endpoint):
    error = failure(path, endpoint, _echoing(b"200 OK"))
    assert isinstance(error, ResponseValidationError)
    assert "[redacted]" in str(error)
    assert_safe(error)


class _WireBudget:
    """A budget that books everything and records when it is told a request went on the wire."""

    def __init__(self) -> None:
        self.told = threading.Condition()
        self.booked = self.sent_count = 0

    def acquire(self, tokens: int, *, account: str, model: str | None = None) -> Booking:
        with self.told:
            self.booked += 1
        return Booking(0.0, tokens, self.booked)

    async def aacquire(self, tokens: int, *, account: str, model: str | None = None) -> Booking:
        return self.acquire(tokens, account=account, model=model)

    def sent(self, booking: Booking) -> None:
        with self.told:
            self.sent_count += 1
            self.told.notify_all()

    def settle(self, booking: Booking, used: int) -> None:
        pass

    def cancel(self, booking: Booking) -> None:
        pass


def _read_request(connection: socket.socket) -> dict[str, Any] | None:
    head = read_request_head(connection)
    if b"\r\n\r\n" not in head:
        return None
    head, _, body = head.partition(b"\r\n\r\n")
    length = int(next(v for n, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])
                      if n.strip().lower() == b"content-length"))  # fmt: skip
    while len(body) < length:
        body += connection.recv(65536)
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def _valid_answer(request: dict[str, Any]) -> bytes:
    if "documents" in request:
        results = [{"index": i, "relevance_score": 0.5} for i in range(len(request["documents"]))]
        return json.dumps({"id": "x", "results": results}).encode()
    data = [{"object": "embedding", "index": i, "embedding": [0.5] * 4}
            for i in range(len(request["input"]))]  # fmt: skip
    return json.dumps({"object": "list", "model": request["model"], "data": data}).encode()


def _told_before_answering(
    budget: _WireBudget, fail_first: bool
) -> tuple[Any, list[bool], list[int]]:
    """A server that answers each request only once the budget has been told it was sent (or
    after 10 s), noting whether it was; the first request fails with 500 when `fail_first`."""
    read, told_in_time = [0], []

    def serve(connection: socket.socket) -> None:
        while (request := _read_request(connection)) is not None:
            with budget.told:
                read[0] += 1
                number = read[0]
                told = budget.told.wait_for(lambda n=number: budget.sent_count >= n, 10)  # type: ignore[misc]
                told_in_time.append(told)
            if number == 1 and fail_first:  # the first attempt fails, and is retried
                _answer(connection, b"HTTP/1.1 500 Internal Server Error", b"{}")
            else:
                _answer(connection, b"HTTP/1.1 200 OK\r\nContent-Type: application/json",
                        _valid_answer(request))  # fmt: skip

    return serve, told_in_time, read


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("path", PATHS)
def test_the_budget_is_told_each_attempt_is_on_the_wire_before_its_answer(path, endpoint):
    # A shared budget counts a request from when it went on the wire: every transport tells
    # it once per attempt, when the request is written, before any answer (the server below
    # answers only once the budget has been told, and notes whether it was).
    budget = _WireBudget()
    serve, told_in_time, read = _told_before_answering(budget, fail_first=True)
    with ScriptedServer(serve) as server:
        call(path, endpoint, server.base_url, rate_limit=budget, max_retries=1)
    assert told_in_time
    assert all(told_in_time)
    assert budget.booked == budget.sent_count == read[0]


@pytest.mark.parametrize("path", PATHS)
def test_a_body_sent_in_pieces_is_told_once_whole(path, tmp_path):
    # A file's body goes in pieces (the async pools: 1 MiB each): told once the last is written.
    budget = _WireBudget()
    serve, told_in_time, read = _told_before_answering(budget, fail_first=False)
    image = png_file(tmp_path / "apple.png", "red apple", 3 * 1024 * 1024)
    with ScriptedServer(serve) as server:
        call(path, "rerank", server.base_url, image_item(image), rate_limit=budget)
    assert told_in_time
    assert all(told_in_time)
    assert budget.booked == budget.sent_count == read[0]
