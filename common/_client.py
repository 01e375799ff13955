"""The sync and async rerank clients. Everything but the send line lives in `_BaseClient`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import AsyncGenerator, Iterator, Sequence
from types import TracebackType
from typing import Any

import httpx
from pydantic import SecretStr

from ._config import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    TimeoutTypes,
    resolve_api_key,
    resolve_base_url,
    resolve_timeout,
)
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    InvalidRequestError,
    SiliconFlowError,
    status_error,
)
from ._media import DocumentItem, QueryItem
from ._models import RerankResponse, parse
from ._request import RerankRequest, build_request
from ._retry import RetryPolicy, is_retryable, retry_delay
from ._version import __version__

__all__ = ["AsyncSiliconFlowClient", "SiliconFlowClient"]

logger = logging.getLogger("siliconflow_rerank")

TRACE_HEADER = "x-siliconcloud-trace-id"


@contextlib.contextmanager
def _translate_transport_errors() -> Iterator[None]:
    """The one place where httpx's exceptions become ours."""
    try:
        yield
    except httpx.TimeoutException as error:
        raise APITimeoutError(f"request timed out ({type(error).__name__}): {error}") from error
    except httpx.RequestError as error:
        raise APIConnectionError(
            f"connection failed ({type(error).__name__}): {error or 'no details'}"
        ) from error


class _BaseClient:
    """Configuration, request building, answer handling and the retry decision, shared by both."""

    def __init__(
        self,
        *,
        api_key: str | SecretStr | None,
        base_url: str | None,
        timeout: TimeoutTypes,
        max_retries: int,
        retry_policy: RetryPolicy | None,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidRequestError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self._api_key = resolve_api_key(api_key)
        self.base_url = resolve_base_url(base_url)
        """The API root, without a trailing `/` or `/rerank`."""
        self.timeout = resolve_timeout(timeout)
        """The timeout applied to every request this client sends."""
        self.max_retries = max_retries
        """How many times a failed attempt is retried (so `max_retries + 1` attempts at most)."""
        self.retry_policy = retry_policy or RetryPolicy()
        """How long to wait between attempts."""
        self._url = f"{self.base_url}/rerank"
        self._headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"siliconflow-rerank/{__version__}",
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, max_retries={self.max_retries})"

    def __getstate__(self) -> None:
        raise TypeError(f"{type(self).__name__} holds live connections and cannot be pickled")

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        # A client is a shared resource (a thread-safe connection pool), like a lock or a file:
        # deep copies of objects that hold one share it.
        return self

    def _build(
        self,
        query: QueryItem,
        documents: str | Sequence[DocumentItem],
        model: str,
        top_n: int | None,
        return_documents: bool | None,
        instruction: str | None,
        max_chunks_per_doc: int | None,
        overlap_tokens: int | None,
    ) -> RerankRequest:
        return build_request(
            query,
            documents,
            model=model,
            top_n=top_n,
            return_documents=return_documents,
            instruction=instruction,
            max_chunks_per_doc=max_chunks_per_doc,
            overlap_tokens=overlap_tokens,
        )

    def _send_kwargs(self, request: RerankRequest) -> dict[str, Any]:
        return {
            "url": self._url,
            "content": request.content,
            "headers": self._headers,
            "timeout": self.timeout,
        }

    def _handle(self, response: httpx.Response, request: RerankRequest) -> RerankResponse:
        trace_id = response.headers.get(TRACE_HEADER)
        if not response.is_success:
            raise status_error(
                response.status_code,
                response.content,
                trace_id=trace_id,
                headers=response.headers,
                base_url=self.base_url,
                secret=self._api_key.get_secret_value(),
            )
        return parse(response.content, request, trace_id=trace_id)

    def _next_delay(self, attempt: int, error: SiliconFlowError) -> float | None:
        """Seconds to wait before retrying after `error`, or None to give up and raise it."""
        # Reranking is a pure function of its inputs, so repeating a POST that may have reached the
        # server is safe: the worst case is a second bill for the same answer.
        if attempt >= self.max_retries or not is_retryable(error):
            return None
        headers = error.headers if isinstance(error, APIStatusError) else None
        delay = retry_delay(attempt, self.retry_policy, headers=headers)
        status = error.status_code if isinstance(error, APIStatusError) else type(error).__name__
        logger.info(
            "SiliconFlow rerank attempt %d failed (%s); retrying in %.2fs",
            attempt + 1,
            status,
            delay,
        )
        return delay


class SiliconFlowClient(_BaseClient):
    """Synchronous SiliconFlow rerank client; thread-safe, one connection pool per client.

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
    ) -> None:
        """Create a client. No connection is opened until the first call.

        Args:
            api_key: The API key; defaults to `SILICONFLOW_API_KEY`.
            base_url: The API root; defaults to `SILICONFLOW_BASE_URL`, then
                `https://api.siliconflow.cn/v1`. A trailing `/` or `/rerank` is accepted.
            timeout: Seconds for each phase, an `httpx.Timeout`, or None for no limit.
            max_retries: Retries after a connection error, timeout, 408, 429 or 5xx.
            http_client: An `httpx.Client` to send through; it is borrowed, never closed here.
            retry_policy: Backoff settings; the defaults suit the hosted API.

        Raises:
            InvalidRequestError: No API key, or an invalid base URL, timeout or max_retries.
        """
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
        )
        self._borrowed = http_client
        self._owned: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        if self._borrowed is not None:
            return self._borrowed
        with self._lock:
            if self._owned is None:
                self._owned = httpx.Client(timeout=self.timeout, limits=DEFAULT_LIMITS)
                # Framework objects that hold a client are rarely closed by their users: close the
                # pool when this client is garbage-collected instead of leaking its sockets.
                weakref.finalize(self, self._owned.close)
            return self._owned

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

        Returns:
            The results, best first, each with the `index` of its document in `documents`.

        Raises:
            InvalidRequestError: Bad input, before any request is sent.
            APIStatusError: The server answered with an error status (a subclass per status).
            APIConnectionError: No answer, after the retries (`APITimeoutError` for timeouts).
            ResponseValidationError: The server's answer is not a valid rerank response.
        """
        request = self._build(
            query, documents, model, top_n, return_documents, instruction,
            max_chunks_per_doc, overlap_tokens,
        )  # fmt: skip
        attempt = 0
        while True:
            try:
                with _translate_transport_errors():
                    response = self._http().post(**self._send_kwargs(request))
                return self._handle(response, request)
            except SiliconFlowError as error:
                delay = self._next_delay(attempt, error)
                if delay is None:
                    raise
                self.retry_policy.sleep(delay)
                attempt += 1

    def close(self) -> None:
        """Close the connection pool this client created (a borrowed `http_client` stays open)."""
        with self._lock:
            owned, self._owned = self._owned, None
        if owned is not None:
            owned.close()

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
    ) -> None:
        """Create a client. No connection is opened until the first call.

        Takes the same arguments as `SiliconFlowClient`, with an `httpx.AsyncClient` to borrow.
        """
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
        )
        self._borrowed = http_client
        self._owned: httpx.AsyncClient | None = None
        self._owned_loop: asyncio.AbstractEventLoop | None = None
        self._guard: AsyncGenerator[None, None] | None = None

    async def _http(self) -> httpx.AsyncClient:
        if self._borrowed is not None:
            return self._borrowed
        loop = asyncio.get_running_loop()
        if self._owned is None or self._owned_loop is not loop:
            # Pooled connections belong to the loop that opened them, so each loop gets its own
            # pool (code that calls asyncio.run() per request must not hit "Event loop is
            # closed"), and the pool closes when its loop shuts down (see _close_with_loop).
            client = httpx.AsyncClient(timeout=self.timeout, limits=DEFAULT_LIMITS)
            guard = _close_with_loop(client)
            await guard.__anext__()
            self._owned, self._owned_loop, self._guard = client, loop, guard
        return self._owned

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
    ) -> RerankResponse:
        """Rank `documents` by relevance to `query`; see `SiliconFlowClient.rerank`."""
        request = self._build(
            query, documents, model, top_n, return_documents, instruction,
            max_chunks_per_doc, overlap_tokens,
        )  # fmt: skip
        attempt = 0
        while True:
            try:
                with _translate_transport_errors():
                    response = await (await self._http()).post(**self._send_kwargs(request))
                return self._handle(response, request)
            except SiliconFlowError as error:
                delay = self._next_delay(attempt, error)
                if delay is None:
                    raise
                await self.retry_policy.async_sleep(delay)
                attempt += 1

    async def aclose(self) -> None:
        """Close the connection pool this client created (a borrowed `http_client` stays open)."""
        guard, self._guard = self._guard, None
        loop, self._owned_loop = self._owned_loop, None
        self._owned = None
        if guard is not None and loop is asyncio.get_running_loop():
            await guard.aclose()

    async def __aenter__(self) -> AsyncSiliconFlowClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _close_with_loop(client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    """Hold `client` open until closed, or until its event loop shuts down.

    `asyncio.run()` finalizes every live async generator before closing its loop, which runs this
    `finally` on the right loop: the pool closes cleanly instead of leaking sockets.
    """
    try:
        yield
    finally:
        await client.aclose()
