"""The sync and async clients (rerank and embeddings). Everything but the I/O loops lives in
`_BaseClient`: request building, answer handling and retry decisions."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import SecretStr

from ._batching import Assembly, Batch, Plan, name_batch, plan
from ._cache import EmbeddingCache, RerankCache
from ._config import (
    DEFAULT_EMBEDDING_BATCH_SIZE,
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_KEEPALIVE_EXPIRY,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_DOCUMENTS_PER_REQUEST,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    TimeoutTypes,
    resolve_api_key,
    resolve_base_url,
)
from ._embeddings import (
    EmbeddingInput,
    EmbeddingPlan,
    EmbeddingRequest,
    EmbeddingResponse,
    EncodingFormat,
    assemble_embeddings,
    parse_embeddings,
    plan_embeddings,
)
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ResponseValidationError,
    SiliconFlowError,
    redact_answer,
    redact_in_logs,
    status_error,
)
from ._media import DocumentItem, QueryItem
from ._models import RerankResponse, parse
from ._ratelimit import RateLimiter, estimate_tokens, media_sizes
from ._redis import RedisRateLimit, SharedLimiter
from ._request import RerankRequest, build_request
from ._retry import RetryPolicy, is_retryable, retry_delay
from ._settings import CLIENT_SETTINGS, ClientSettings, check_client_settings, derived_deadline
from ._transport import (
    AsyncPool,
    LoopThread,
    SyncPool,
    is_deadline,
    open_async_pool,
    open_sync_pool,
    translate_transport_errors,
)
from ._version import __version__

__all__ = ["AsyncSiliconFlowClient", "SiliconFlowClient"]

logger = logging.getLogger("siliconflow_rerank")

TRACE_HEADER = "x-siliconcloud-trace-id"


ProgressCallback = Callable[[int, int], object]
"""Called as `on_progress(batches_done, batches_total)` after each request of a call."""

_Answer = TypeVar("_Answer", RerankResponse, EmbeddingResponse)
_Request = RerankRequest | EmbeddingRequest
_Sent = TypeVar("_Sent", RerankRequest, EmbeddingRequest)
_Reader = Callable[[bytes, _Sent, str | None], _Answer]
"""Parses a 2xx answer body to a request (given its trace id) into the call's answer type."""


def _read_rerank(content: bytes, request: RerankRequest, trace_id: str | None) -> RerankResponse:
    return parse(content, request, trace_id=trace_id)


def _read_embeddings(
    content: bytes, request: EmbeddingRequest, trace_id: str | None
) -> EmbeddingResponse:
    return parse_embeddings(content, request, trace_id=trace_id)


def _name_rerank_batch(error: SiliconFlowError, batch: Batch, total: int) -> SiliconFlowError:
    positions = batch.positions
    return name_batch(error, batch.number, positions[0], positions[-1], total, "documents")


def _name_embedding_batch(
    error: SiliconFlowError, request: EmbeddingRequest, total: int
) -> SiliconFlowError:
    return name_batch(error, request.number, request.first, request.last, total, "inputs")


class _BaseClient:
    """Configuration, request building, planning, answer handling and retry decisions, shared."""

    def __init__(self, settings: ClientSettings) -> None:
        self._settings = settings
        self._api_key = resolve_api_key(settings.api_key)
        redact_in_logs(self, self._api_key.get_secret_value())
        self.base_url = resolve_base_url(settings.base_url)
        """The API root, without a trailing `/` or `/rerank`."""
        self.timeout = settings.timeout or httpx.Timeout(None)
        """The timeout applied to every request this client sends."""
        self.attempt_deadline = settings.attempt_deadline or derived_deadline(self.timeout)
        """Seconds one attempt may take in all, or None for no bound beyond the timeout."""
        self.max_response_bytes = settings.max_response_bytes
        """The largest answer body (decoded) this client reads."""
        self.max_retries = settings.max_retries
        """How many times a failed attempt is retried (so `max_retries + 1` attempts at most)."""
        self.retry_policy = settings.retry_policy or RetryPolicy()
        """How long to wait between attempts."""
        self.max_documents_per_request = settings.max_documents_per_request
        """Longer lists are split into requests of this many documents (None: never split)."""
        self.max_concurrency = settings.max_concurrency
        """How many requests of one call may be in flight at once."""
        self.max_connections = settings.max_connections
        """Size of the connection pool this client creates."""
        self.keepalive_expiry = settings.keepalive_expiry
        """Seconds an idle connection of that pool is kept for the next call."""
        self.cache = settings.cache
        """The score cache, if any."""
        self.embedding_cache = settings.embedding_cache
        """The embeddings cache, if any."""
        rpm, tpm = settings.requests_per_minute, settings.tokens_per_minute
        self._limiter: RateLimiter | SharedLimiter | None = None
        if settings.rate_limit is not None:
            key = self._api_key.get_secret_value()
            self._limiter = settings.rate_limit.for_account(key, self.base_url)
        elif rpm or tpm:
            self._limiter = RateLimiter(rpm, tpm)
        # Parsed once: httpx re-parses a string URL and re-normalizes a dict of headers per request.
        self._url = httpx.URL(f"{self.base_url}/rerank")
        self._embeddings_url = httpx.URL(f"{self.base_url}/embeddings")
        self._headers = httpx.Headers(
            {
                "Authorization": f"Bearer {self._api_key.get_secret_value()}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"siliconflow-rerank/{__version__}",
            }
        )
        self._plain_headers = dict(self._headers)  # the same, for aiohttp

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, max_retries={self.max_retries})"

    def __getstate__(self) -> None:
        raise TypeError(f"{type(self).__name__} holds live connections and cannot be pickled")

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        # A client is a shared resource (a thread-safe connection pool), like a lock or a file:
        # deep copies of objects that hold one share it.
        return self

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(
            max_connections=self.max_connections,
            max_keepalive_connections=self.max_connections,
            keepalive_expiry=self.keepalive_expiry,
        )

    def _plan(
        self,
        query: QueryItem,
        documents: str | Sequence[DocumentItem],
        options: dict[str, Any],
    ) -> RerankRequest | Plan:
        """The call's one request, to send as built (the common case), or how it is served in
        parts (batches, cached scores)."""
        request = build_request(query, documents, **options)
        the_plan = plan(
            request,
            batch_size=self.max_documents_per_request,
            cache=self.cache,
            base_url=self.base_url,
        )
        return request if the_plan is None else the_plan

    def _assembly(self, the_plan: Plan) -> Assembly:
        return Assembly(the_plan, self.cache)

    def _body(self, request: _Request, *, asynchronous: bool) -> tuple[Any, int | None]:
        """What to send as `request`'s body, and its length when it goes in pieces (which must be
        stated: not every compatible server takes chunked encoding)."""
        content = request.content
        if not isinstance(content, bytes):
            content.verify()
            body = content.aiter_bytes() if asynchronous else content.iter_bytes()
            return body, request.content_length
        if asynchronous and len(content) > _LARGE_BODY:
            # aiohttp writes a large bytes body in one go (and warns that it may block the loop):
            # in pieces, other tasks run while it is sent.
            return _apieces(content), len(content)
        return content, None

    def _send_kwargs(
        self, url: httpx.URL, request: _Request, *, asynchronous: bool
    ) -> dict[str, Any]:
        """httpx's arguments for sending `request`."""
        body, length = self._body(request, asynchronous=asynchronous)
        headers = self._headers
        if length is not None:
            headers = headers.copy()
            headers["Content-Length"] = str(length)
        return {"url": url, "content": body, "headers": headers, "timeout": self.timeout}

    def _embedding_plan(
        self,
        inputs: str | Sequence[EmbeddingInput],
        model: str,
        dimensions: int | None,
        encoding_format: EncodingFormat,
        batch_size: int,
    ) -> EmbeddingPlan:
        return plan_embeddings(
            inputs,
            model=model,
            dimensions=dimensions,
            encoding_format=encoding_format,
            batch_size=batch_size,
            cache=self.embedding_cache,
            base_url=self.base_url,
        )

    def _reserve(self, request: _Request) -> tuple[float, Any]:
        """Seconds to wait for the rate limiter, and the booking to correct with the usage."""
        if self._limiter is None:
            return 0.0, None
        tokens = estimate_tokens(request.content_length, media_sizes(request.body))
        return self._limiter.book(tokens)

    def _handle(
        self,
        status_code: int,
        headers: Mapping[str, str],
        content: bytes,
        request: _Sent,
        read: _Reader[_Sent, _Answer],
        booked: Any,
    ) -> _Answer:
        # A server or proxy that echoes the request must not put the key into an error, a log line
        # or an answer: the body and headers are redacted before anything reads them.
        content, headers = redact_answer(content, headers, self._api_key.get_secret_value())
        trace_id = headers.get(TRACE_HEADER)
        if not 200 <= status_code < 300:
            raise status_error(
                status_code,
                content,
                trace_id=trace_id,
                headers=headers,
                base_url=self.base_url,
                secret=self._api_key.get_secret_value(),
            )
        parsed = read(content, request, trace_id)
        if self._limiter is not None and parsed.usage is not None:
            used = parsed.usage.total_tokens or parsed.usage.input_tokens
            if used is not None:
                self._limiter.correct(booked, used)
        return parsed

    def _next_delay(self, attempt: int, error: SiliconFlowError) -> float | None:
        """Seconds to wait before retrying after `error`, or None to give up and raise it."""
        # Reranking and embedding are pure functions of their inputs, so repeating a POST that may
        # have reached the server is safe: the worst case is a second bill for the same answer.
        if attempt >= self.max_retries or not is_retryable(error):
            return None
        headers = error.headers if isinstance(error, APIStatusError) else None
        delay = retry_delay(attempt, self.retry_policy, headers=headers)
        status = error.status_code if isinstance(error, APIStatusError) else type(error).__name__
        logger.info(
            "SiliconFlow request attempt %d failed (%s); retrying in %.2fs",
            attempt + 1,
            status,
            delay,
        )
        return delay


_AsyncPool = tuple[AsyncPool | httpx.AsyncClient, AsyncGenerator[None, None]]

_POOL_OWNERS: weakref.WeakSet[SiliconFlowClient | AsyncSiliconFlowClient] = weakref.WeakSet()
"""Clients that opened a pool: a forked child makes each of them start afresh."""


def _forget_pools_after_fork() -> None:
    for client in list(_POOL_OWNERS):
        client._forget_pool()
    _POOL_OWNERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)

_LARGE_BODY = 1 << 20
"""Async bodies larger than this (1 MiB) are sent in pieces of this size."""


async def _apieces(content: bytes) -> AsyncIterator[bytes]:
    view = memoryview(content)
    for start in range(0, len(view), _LARGE_BODY):
        yield bytes(view[start : start + _LARGE_BODY])


def _past_deadline(deadline: float) -> APITimeoutError:
    return APITimeoutError(
        f"the attempt took longer than its {deadline:g} s deadline (attempt_deadline)"
    )


class _Body:
    """An answer's body, gathered piece by piece against a size cap and a deadline."""

    __slots__ = ("deadline", "ends", "limit", "pieces", "size")

    def __init__(self, limit: int, deadline: float | None) -> None:
        self.limit = limit
        self.deadline = deadline
        self.ends = None if deadline is None else time.monotonic() + deadline
        self.pieces: list[bytes] = []
        self.size = 0

    def expect(self, headers: Mapping[str, str]) -> None:
        """Refuse at once an answer whose stated (encoded) length is already over the cap."""
        stated = headers.get("content-length")
        if stated is not None and stated.isdigit() and int(stated) > self.limit:
            raise _too_large(self.limit)

    def whole(self, headers: Mapping[str, str]) -> bool:
        """Whether the answer can be read in one go: its stated length is its size in memory
        (nothing to inflate) and within the cap, and no deadline is checked per piece."""
        return (
            self.ends is None
            and "content-length" in headers
            and "content-encoding" not in headers
            and headers["content-length"].isdigit()
        )

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.limit:  # counted decoded: a small gzip can inflate without bound
            raise _too_large(self.limit)
        self.pieces.append(piece)
        if self.ends is not None and time.monotonic() > self.ends:
            raise _past_deadline(self.deadline or 0.0)

    def content(self) -> bytes:
        return self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)

    def read(self, headers: Mapping[str, str], pieces: Iterable[bytes]) -> bytes:
        """The whole body from its (decoded) `pieces`, checked as they come."""
        self.expect(headers)
        for piece in pieces:
            self.add(piece)
        return self.content()


def _closed_in_flight(error: SiliconFlowError) -> APIConnectionError:
    """A call whose pool was closed under it: not retried (that would open a new pool)."""
    return APIConnectionError(f"the client was closed while this call was in flight: {error}")


def _too_large(limit: int) -> ResponseValidationError:
    return ResponseValidationError(
        f"the answer is larger than max_response_bytes ({limit} bytes); raise it if this server's "
        "answers really are that large"
    )


async def _within(
    seconds: float, work: Awaitable[tuple[int, Mapping[str, str], bytes]]
) -> tuple[int, Mapping[str, str], bytes]:
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):  # no extra task, unlike wait_for
            return await work
    return await asyncio.wait_for(work, seconds)


def _off_the_loop(sleep: Callable[[float], None]) -> Callable[[float], Awaitable[None]]:
    """`sleep` for a coroutine: run in a worker thread, so that the loop's other tasks go on."""

    async def waits(seconds: float) -> None:
        await asyncio.to_thread(sleep, seconds)

    return waits


def _settings_among(arguments: dict[str, Any]) -> dict[str, Any]:
    return {name: arguments[name] for name in CLIENT_SETTINGS}


def _options(
    model: str,
    top_n: int | None,
    return_documents: bool | None,
    instruction: str | None,
    max_chunks_per_doc: int | None,
    overlap_tokens: int | None,
) -> dict[str, Any]:
    return {
        "model": model,
        "top_n": top_n,
        "return_documents": return_documents,
        "instruction": instruction,
        "max_chunks_per_doc": max_chunks_per_doc,
        "overlap_tokens": overlap_tokens,
    }


_CLIENT_ARGS = """
        Args:
            api_key: The API key; defaults to `SILICONFLOW_API_KEY`.
            base_url: The API root; defaults to `SILICONFLOW_BASE_URL`, then
                `https://api.siliconflow.cn/v1`. A trailing `/` or `/rerank` is accepted.
            timeout: Seconds for each phase, an `httpx.Timeout`, or None for no limit.
            max_retries: Retries after a connection error, timeout, 408, 429 or 5xx.
            http_client: An httpx client to send through; it is borrowed, never closed here.
            retry_policy: Backoff settings; the defaults suit the hosted API.
            attempt_deadline: Seconds one attempt may take in all; None adds up the timeout's
                connect, write and read limits (250 s by default).
            max_response_bytes: The largest answer body (decoded) to read; larger answers fail
                with ResponseValidationError.
            max_documents_per_request: Split longer lists into requests of this many documents
                (merged exactly: scores are per query-document pair). None never splits.
            max_concurrency: How many requests of one call run at once.
            max_connections: Size of the connection pool this client creates.
            keepalive_expiry: Seconds an idle pooled connection is kept (httpx's default is 5).
            requests_per_minute: Client-side limit, shared by every call on this client.
            tokens_per_minute: Client-side limit on (estimated) tokens, shared likewise.
            cache: A `RerankCache` to reuse scores across calls (off by default).
            embedding_cache: An `EmbeddingCache` to reuse vectors across calls (off by default).
            rate_limit: A `RedisRateLimit` shared with every process that names it (instead of
                requests_per_minute / tokens_per_minute, which count in this client alone).

        Raises:
            InvalidRequestError: No API key, or an invalid setting.
"""


class SiliconFlowClient(_BaseClient):
    """Synchronous SiliconFlow rerank client; thread-safe, one connection pool per client.

    A call split into several requests (a long list, an embeddings call over `batch_size`)
    runs its requests as tasks on an event loop thread the client starts when first needed,
    over a second pool of its own (up to `max_connections` more); `close()` stops both.

    Example:
        >>> with SiliconFlowClient() as client:  # doctest: +SKIP
        ...     response = client.rerank("apple", ["apple pie", "banana bread"], top_n=1)
    """

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
        attempt_deadline: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_documents_per_request: int | None = DEFAULT_MAX_DOCUMENTS_PER_REQUEST,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        cache: RerankCache | None = None,
        embedding_cache: EmbeddingCache | None = None,
        rate_limit: RedisRateLimit | None = None,
    ) -> None:
        # Every argument but http_client is a setting, checked in one place.
        super().__init__(check_client_settings(**_settings_among(locals())))
        self._borrowed = http_client
        self._owned: httpx.Client | SyncPool | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._looped: tuple[AsyncSiliconFlowClient, LoopThread] | None = None
        self._loop_finalizer: weakref.finalize[Any, Any] | None = None
        self._lock = threading.Lock()

    __init__.__doc__ = (
        "Create a client. No connection is opened until the first call.\n" + _CLIENT_ARGS
    )

    def _http(self) -> httpx.Client | SyncPool:
        if self._borrowed is not None:
            return self._borrowed
        owned = self._owned
        if owned is not None:  # every call after the first: no lock on the hot path
            return owned
        with self._lock:
            if self._owned is None:
                self._owned = open_sync_pool(
                    self._url, self._plain_headers, self.timeout, self._limits()
                )
                # Framework objects that hold a client are rarely closed by their users: close the
                # pool when this client is garbage-collected instead of leaking its sockets.
                self._finalizer = weakref.finalize(self, self._owned.close)
                _POOL_OWNERS.add(self)
            return self._owned

    def _forget_pool(self) -> None:
        # In a forked child: the inherited pool's sockets are the parent's. Drop it unclosed (the
        # parent still uses it) and start afresh; the lock may have been held by a parent thread.
        self._lock = threading.Lock()
        if self._finalizer is not None:
            self._finalizer.detach()
        self._owned = self._finalizer = None
        self._threads = None  # the parent's threads do not exist here
        if self._loop_finalizer is not None:
            self._loop_finalizer.detach()
        self._looped = self._loop_finalizer = None

    def _send(self, url: httpx.URL, request: _Sent, read: _Reader[_Sent, _Answer]) -> _Answer:
        attempt = 0
        while True:
            wait_for, booked = self._reserve(request)
            if wait_for > 0:
                self.retry_policy.sleep(wait_for)
            http = self._http()
            try:
                with translate_transport_errors():
                    status, headers, content = self._exchange(http, url, request)
                return self._handle(status, headers, content, request, read, booked)
            except SiliconFlowError as error:
                if http.is_closed:
                    raise _closed_in_flight(error) from error
                delay = self._next_delay(attempt, error)
                if delay is None:
                    raise
                self.retry_policy.sleep(delay)
                attempt += 1

    def _exchange(
        self, http: httpx.Client | SyncPool, url: httpx.URL, request: _Request
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One attempt: the answer's status, headers and body, within the attempt deadline."""
        # httpx bounds each phase, not their sum (a server trickling its answer a byte at a time
        # would keep the call alive for ever), nor the size of an answer: it is read in pieces,
        # against the deadline and the size cap.
        answer = _Body(self.max_response_bytes, self.attempt_deadline)
        if isinstance(http, SyncPool):
            body, length = self._body(request, asynchronous=False)
            with http.post(url, body, length) as (status, headers, pieces):
                return status, headers, answer.read(headers, pieces)
        kwargs = self._send_kwargs(url, request, asynchronous=False)
        with http.stream("POST", **kwargs) as response:
            return (
                response.status_code,
                response.headers,
                answer.read(response.headers, response.iter_bytes()),
            )

    def rerank(
        self,
        query: QueryItem,
        documents: str | Sequence[DocumentItem],
        *,
        model: str = DEFAULT_MODEL,
        top_n: int | None = None,
        return_documents: bool | None = None,
        instruction: str | None = None,
        max_chunks_per_doc: int | None = None,
        overlap_tokens: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> RerankResponse:
        """Rank `documents` by relevance to `query`.

        Args:
            query: A non-empty string, or a text, image or video item.
            documents: One string, or a sequence of strings and text, image or video items.
            model: The rerank model.
            top_n: Return only the best `top_n` (clamped to the number of documents).
            return_documents: Ask for each document in its result.
            instruction: Task instruction (Qwen3-Reranker models only).
            max_chunks_per_doc: Chunk limit for long documents (bge, bce, Qwen3-VL).
            overlap_tokens: Token overlap between chunks, 0 to 80 (bge, bce, Qwen3-VL).
            on_progress: Called with (requests done, requests in all) as a long call proceeds.

        Returns:
            The results, best first, each with the `index` of its document in `documents`.

        Raises:
            InvalidRequestError: Bad input, before any request is sent.
            APIStatusError: The server answered with an error status (a subclass per status).
            APIConnectionError: No answer, after the retries (`APITimeoutError` for timeouts).
            ResponseValidationError: The server's answer is not a valid rerank response.
        """
        options = _options(
            model, top_n, return_documents, instruction, max_chunks_per_doc, overlap_tokens
        )
        planned = self._plan(query, documents, options)
        if isinstance(planned, RerankRequest):  # one request, no thread hop, nothing to merge
            response = self._send(self._url, planned, _read_rerank)
            if on_progress is not None:
                on_progress(1, 1)
            return response
        looped = self._on_loop()
        if looped is not None:
            twin, loop = looped
            return self._awaited(loop, functools.partial(twin._assembled, planned), on_progress)
        batches, total = planned.batches, len(planned.batches)
        jobs = [functools.partial(self._send_batch, batch, total) for batch in batches]
        assembly = self._assembly(planned)
        self._fan_out(jobs, on_progress, assembly.add)
        return assembly.answer()

    def embed(
        self,
        inputs: str | Sequence[EmbeddingInput],
        *,
        model: str = DEFAULT_EMBEDDING_MODEL,
        dimensions: int | None = None,
        encoding_format: EncodingFormat = "base64",
        batch_size: int = DEFAULT_EMBEDDING_BATCH_SIZE,
        on_progress: ProgressCallback | None = None,
    ) -> EmbeddingResponse:
        """Embed `inputs`: one vector per input, in input order.

        Args:
            inputs: One string, or a sequence of strings, text items and image items (images
                for `Qwen/Qwen3-VL-Embedding-8B`; build them with `image_item`).
            model: The embedding model.
            dimensions: The vector length, for the models that take it (Qwen3 embeddings).
            encoding_format: How vectors travel: `"base64"` (float32 bytes: a quarter of the
                size of JSON numbers, and faster to decode) or `"float"` (JSON numbers); either
                way they are returned as floats.
            batch_size: Longer lists are split into concurrent requests of this many inputs
                (the service takes at most 32), answered in one response.
            on_progress: Called with (requests done, requests in all) as a long call proceeds.

        Returns:
            The vectors, `embeddings[i]` for `inputs[i]`, with the usage summed.

        Raises:
            InvalidRequestError: Bad input, before any request is sent.
            APIStatusError: The server answered with an error status (a subclass per status).
            APIConnectionError: No answer, after the retries (`APITimeoutError` for timeouts).
            ResponseValidationError: An answer is not a valid embeddings response (an input
                without its vector, vectors of different lengths, a value that is not finite).
        """
        the_plan = self._embedding_plan(inputs, model, dimensions, encoding_format, batch_size)
        total = len(the_plan.requests)
        looped = self._on_loop() if total > 1 else None
        if looped is not None:
            twin, loop = looped
            embedded = functools.partial(twin._embedded, the_plan, model)
            return self._awaited(loop, embedded, on_progress)
        jobs = [functools.partial(self._send_embedding, r, total) for r in the_plan.requests]
        answers: dict[int, EmbeddingResponse] = {}
        self._fan_out(jobs, on_progress, answers.__setitem__)
        in_order = [answers[i] for i in range(total)]
        return assemble_embeddings(the_plan, in_order, model=model, cache=self.embedding_cache)

    def _send_batch(self, batch: Batch, total: int) -> RerankResponse:
        try:
            request = batch.request()
            return self._send(self._url, request, _read_rerank)
        except SiliconFlowError as error:
            raise _name_rerank_batch(error, batch, total) from error.__cause__

    def _send_embedding(self, request: EmbeddingRequest, total: int) -> EmbeddingResponse:
        try:
            return self._send(self._embeddings_url, request, _read_embeddings)
        except SiliconFlowError as error:
            raise _name_embedding_batch(error, request, total) from error.__cause__

    def _fan_out(
        self,
        jobs: Sequence[Callable[[], _Answer]],
        on_progress: ProgressCallback | None,
        collect: Callable[[int, _Answer], object],
    ) -> None:
        """Run `jobs`, at most max_concurrency at once; each answer goes to `collect` with the
        job's position as it comes. The first failure fails the call."""
        if len(jobs) <= 1:  # the common case: no pool, no thread hop
            for position, job in enumerate(jobs):
                collect(position, job())
                if on_progress is not None:
                    on_progress(1, 1)
            return
        # Threads over the one pooled client: the sync path gets the same concurrency as async.
        # The threads are the client's (starting eight per call cost about 1 ms); each call keeps
        # at most max_concurrency of its requests in flight.
        executor = self._executor()
        waiting = iter(enumerate(jobs))
        running: dict[Future[_Answer], int] = {}

        def start_next() -> None:
            position, job = next(waiting, (-1, None))
            if job is not None:
                running[executor.submit(job)] = position

        for _ in range(min(self.max_concurrency, len(jobs))):
            start_next()
        finished = 0
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                position = running.pop(future)
                if future.exception() is not None:
                    wait(running)  # the others in flight end before the call fails
                    future.result()
                collect(position, future.result())
                finished += 1
                if on_progress is not None:
                    on_progress(finished, len(jobs))
                start_next()

    def _on_loop(self) -> tuple[AsyncSiliconFlowClient, LoopThread] | None:
        """Where a call of several requests goes when the client's own pool serves it (not a
        caller's `http_client`, nor a proxy: those stay on httpx, and on threads): an async
        client of the same settings and rate limiter, and the event loop thread it runs on."""
        looped = self._looped
        if looped is not None:  # every call after the first: no lock on the hot path
            return looped
        if not isinstance(self._http(), SyncPool):
            return None
        with self._lock:
            if self._looped is None:
                policy = self.retry_policy
                if policy.sleep is not time.sleep:  # the caller's own way for sync calls to wait
                    policy = dataclasses.replace(policy, async_sleep=_off_the_loop(policy.sleep))
                twin = AsyncSiliconFlowClient(
                    **{
                        **dict(self._settings),
                        "api_key": self._api_key,
                        "base_url": self.base_url,
                        "retry_policy": policy,
                    }
                )
                twin._limiter = self._limiter  # one budget for both
                loop = LoopThread()
                # Held by the finalizer, the async client's pool stays reachable until the loop
                # closes it, even when this client is collected as part of a reference cycle.
                self._loop_finalizer = weakref.finalize(self, loop.close, twin.aclose)
                self._looped = twin, loop
            return self._looped

    @staticmethod
    def _awaited(
        loop: LoopThread,
        call: Callable[[ProgressCallback | None], Coroutine[Any, Any, _Answer]],
        on_progress: ProgressCallback | None,
    ) -> _Answer:
        """Run `call` on the loop thread and wait for its answer; progress is reported here, on
        the caller's thread, as the call goes."""
        steps: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()

        def report(done: int, total: int) -> None:
            steps.put((done, total))

        future = loop.submit(call(None if on_progress is None else report))
        future.add_done_callback(lambda _: steps.put(None))
        try:
            while (step := steps.get()) is not None:
                if on_progress is not None:
                    on_progress(*step)
            return future.result()
        except CancelledError:  # close() stopped the loop under the call
            raise APIConnectionError(
                "the client was closed while this call was in flight"
            ) from None
        except BaseException:
            future.cancel()  # the caller gave up (an interrupt, or on_progress raised)
            raise

    def _executor(self) -> ThreadPoolExecutor:
        executor = self._threads
        if executor is None:
            with self._lock:
                if self._threads is None:
                    self._threads = ThreadPoolExecutor(
                        4 * self.max_concurrency, thread_name_prefix="siliconflow-rerank"
                    )
                executor = self._threads
        return executor

    def close(self) -> None:
        """Close the connection pool this client created (a borrowed `http_client` stays open).

        The client stays usable: the next call opens a new pool.
        """
        with self._lock:
            finalizer, self._finalizer = self._finalizer, None
            self._owned = None
            threads, self._threads = self._threads, None
            loop_finalizer, self._loop_finalizer = self._loop_finalizer, None
            self._looped = None
        if threads is not None:
            threads.shutdown(wait=False)
        if finalizer is not None:
            finalizer()  # closes the pool, once, and lets it go (a kept finalizer would hold it)
        if loop_finalizer is not None:
            loop_finalizer()  # stops the loop thread, and closes the pool opened on it

    def __enter__(self) -> SiliconFlowClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncSiliconFlowClient(_BaseClient):
    """Asynchronous SiliconFlow rerank client: native asyncio I/O, one connection pool per loop.

    Its own pool runs on aiohttp under the httpx API (see the README's benchmark): several times
    faster than httpx's default transport at hundreds of concurrent requests.

    Example:
        >>> async with AsyncSiliconFlowClient() as client:  # doctest: +SKIP
        ...     response = await client.rerank("apple", ["apple pie", "banana bread"])
    """

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
        attempt_deadline: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_documents_per_request: int | None = DEFAULT_MAX_DOCUMENTS_PER_REQUEST,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        cache: RerankCache | None = None,
        embedding_cache: EmbeddingCache | None = None,
        rate_limit: RedisRateLimit | None = None,
    ) -> None:
        # Every argument but http_client is a setting, checked in one place.
        super().__init__(check_client_settings(**_settings_among(locals())))
        self._borrowed = http_client
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncPool] = (
            weakref.WeakKeyDictionary()
        )
        self._pools_lock = threading.Lock()

    __init__.__doc__ = (
        "Create a client. No connection is opened until the first call.\n" + _CLIENT_ARGS
    )

    async def _http(self) -> httpx.AsyncClient | AsyncPool:
        if self._borrowed is not None:
            return self._borrowed
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is not None:
            return pool[0]
        # Pooled connections belong to the loop that opened them, so each loop gets its own pool
        # (threads that each call asyncio.run() share a client safely), and a pool closes when
        # its loop shuts down.
        client, guard = await open_async_pool(
            self._url, self._plain_headers, self.timeout, self.attempt_deadline, self._limits()
        )
        with self._pools_lock:
            pool = self._pools.setdefault(loop, (client, guard))
        _POOL_OWNERS.add(self)
        if pool[0] is not client:  # another task of this loop opened one first
            await guard.aclose()
        return pool[0]

    def _forget_pool(self) -> None:
        # In a forked child: the inherited pools' sockets are the parent's; start afresh.
        self._pools_lock = threading.Lock()
        self._pools = weakref.WeakKeyDictionary()

    async def _send(self, url: httpx.URL, request: _Sent, read: _Reader[_Sent, _Answer]) -> _Answer:
        attempt = 0
        while True:
            if self._limiter is not None and self._limiter.blocking:  # ask it off the loop
                wait_for, booked = await asyncio.to_thread(self._reserve, request)
            else:
                wait_for, booked = self._reserve(request)
            if wait_for > 0:
                await self.retry_policy.async_sleep(wait_for)
            http = await self._http()
            try:
                with translate_transport_errors():
                    status, headers, content = await self._exchange(http, url, request)
                return self._handle(status, headers, content, request, read, booked)
            except SiliconFlowError as error:
                if http.is_closed:
                    raise _closed_in_flight(error) from error
                delay = self._next_delay(attempt, error)
                if delay is None:
                    raise
                await self.retry_policy.async_sleep(delay)
                attempt += 1

    async def _exchange(
        self, http: httpx.AsyncClient | AsyncPool, url: httpx.URL, request: _Request
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One attempt: the answer's status, headers and body, within the attempt deadline (which
        also bounds an upload the server stopped reading)."""
        deadline = self.attempt_deadline
        try:
            if not isinstance(http, AsyncPool):
                if deadline is None:
                    return await self._exchange_on_httpx(http, url, request)
                return await _within(deadline, self._exchange_on_httpx(http, url, request))
            # The own pool, here rather than in a coroutine of its own (one object less per call
            # for the collector): the deadline is the pool's own total timeout.
            body, length = self._body(request, asynchronous=True)
            async with http.post(url, body, length) as response:
                answer = _Body(self.max_response_bytes, None)  # not kept while the call waits
                answer.expect(response.headers)
                if answer.whole(response.headers):  # stated, within the cap, not compressed
                    return response.status, response.headers, await response.read()
                async for piece in response.content.iter_any():
                    answer.add(piece)
                return response.status, response.headers, answer.content()
        except (TimeoutError, asyncio.TimeoutError) as error:  # distinct classes before 3.11
            if not is_deadline(error):
                raise  # one phase's timeout: the caller makes it ours
            raise _past_deadline(deadline or 0.0) from None

    async def _exchange_on_httpx(
        self, http: httpx.AsyncClient, url: httpx.URL, request: _Request
    ) -> tuple[int, Mapping[str, str], bytes]:
        answer = _Body(self.max_response_bytes, None)
        async with http.stream(
            "POST", **self._send_kwargs(url, request, asynchronous=True)
        ) as response:
            answer.expect(response.headers)
            async for piece in response.aiter_bytes():
                answer.add(piece)
            return response.status_code, response.headers, answer.content()

    async def rerank(
        self,
        query: QueryItem,
        documents: str | Sequence[DocumentItem],
        *,
        model: str = DEFAULT_MODEL,
        top_n: int | None = None,
        return_documents: bool | None = None,
        instruction: str | None = None,
        max_chunks_per_doc: int | None = None,
        overlap_tokens: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> RerankResponse:
        """Rank `documents` by relevance to `query`; see `SiliconFlowClient.rerank`."""
        options = _options(
            model, top_n, return_documents, instruction, max_chunks_per_doc, overlap_tokens
        )
        planned = self._plan(query, documents, options)
        if isinstance(planned, RerankRequest):  # one request, no task, nothing to merge
            response = await self._send(self._url, planned, _read_rerank)
            if on_progress is not None:
                on_progress(1, 1)
            return response
        return await self._assembled(planned, on_progress)

    async def _assembled(
        self, the_plan: Plan, on_progress: ProgressCallback | None
    ) -> RerankResponse:
        """The answer to a call of several requests (or of cached scores), sent as tasks."""
        batches, total = the_plan.batches, len(the_plan.batches)
        jobs = [functools.partial(self._send_batch, batch, total) for batch in batches]
        assembly = self._assembly(the_plan)
        await self._fan_out(jobs, on_progress, assembly.add)
        return assembly.answer()

    async def embed(
        self,
        inputs: str | Sequence[EmbeddingInput],
        *,
        model: str = DEFAULT_EMBEDDING_MODEL,
        dimensions: int | None = None,
        encoding_format: EncodingFormat = "base64",
        batch_size: int = DEFAULT_EMBEDDING_BATCH_SIZE,
        on_progress: ProgressCallback | None = None,
    ) -> EmbeddingResponse:
        """Embed `inputs`: one vector per input, in input order; see `SiliconFlowClient.embed`."""
        the_plan = self._embedding_plan(inputs, model, dimensions, encoding_format, batch_size)
        return await self._embedded(the_plan, model, on_progress)

    async def _embedded(
        self, the_plan: EmbeddingPlan, model: str, on_progress: ProgressCallback | None
    ) -> EmbeddingResponse:
        """The answer to an embeddings call, its requests sent as tasks."""
        total = len(the_plan.requests)
        jobs = [functools.partial(self._send_embedding, r, total) for r in the_plan.requests]
        answers: dict[int, EmbeddingResponse] = {}
        await self._fan_out(jobs, on_progress, answers.__setitem__)
        in_order = [answers[i] for i in range(total)]
        return assemble_embeddings(the_plan, in_order, model=model, cache=self.embedding_cache)

    async def _send_batch(self, batch: Batch, total: int) -> RerankResponse:
        try:
            request = batch.request()
            return await self._send(self._url, request, _read_rerank)
        except SiliconFlowError as error:
            raise _name_rerank_batch(error, batch, total) from error.__cause__

    async def _send_embedding(self, request: EmbeddingRequest, total: int) -> EmbeddingResponse:
        try:
            return await self._send(self._embeddings_url, request, _read_embeddings)
        except SiliconFlowError as error:
            raise _name_embedding_batch(error, request, total) from error.__cause__

    async def _fan_out(
        self,
        jobs: Sequence[Callable[[], Awaitable[_Answer]]],
        on_progress: ProgressCallback | None,
        collect: Callable[[int, _Answer], object],
    ) -> None:
        """Run `jobs` as in `SiliconFlowClient._fan_out`, as tasks."""
        if len(jobs) <= 1:  # the common case: no task
            for position, job in enumerate(jobs):
                collect(position, await job())
                if on_progress is not None:
                    on_progress(1, 1)
            return
        # A sliding window of tasks, as the sync client keeps one of threads: at most
        # max_concurrency tasks exist at once, and each is dropped once its answer is collected
        # (a task per request up front cost O(n) callbacks per completion).
        waiting = iter(enumerate(jobs))
        running: dict[asyncio.Future[_Answer], int] = {}

        def start_next() -> None:
            position, job = next(waiting, (-1, None))
            if job is not None:
                running[asyncio.ensure_future(job())] = position

        for _ in range(min(self.max_concurrency, len(jobs))):
            start_next()
        finished = 0
        try:
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                ended = sorted((running.pop(task), task) for task in done)
                for _, task in ended:
                    task.exception()  # each failure is seen (the first one is raised below)
                for position, task in ended:
                    collect(position, task.result())  # the first failure fails the call
                    finished += 1
                    if on_progress is not None:
                        on_progress(finished, len(jobs))
                    start_next()
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def aclose(self) -> None:
        """Close the connection pool this client created on the running event loop (a borrowed
        `http_client` stays open). Pools of other loops close when those loops shut down."""
        with self._pools_lock:
            pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool[1].aclose()

    async def __aenter__(self) -> AsyncSiliconFlowClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
