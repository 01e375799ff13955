"""The public clients: a base with the I/O (`_sync`, `_async`), and one line per endpoint whose
method comes from the endpoint's module (`name = sync_method(prepare_name)`)."""

from __future__ import annotations

import os
from typing import Any, ClassVar, Generic, TypeVar

import httpx
from pydantic import SecretStr

from ._async import AsyncClientBase, async_method
from ._config import (
    DEFAULT_KEEPALIVE_EXPIRY,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_DOCUMENTS_PER_REQUEST,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    TimeoutTypes,
)
from ._embeddings import prepare_embed
from ._protocols import Budget, Cache
from ._rerank import prepare_rerank
from ._retry import RetryPolicy
from ._settings import Calibration, ClientSettings, check_client_settings
from ._sync import SyncClientBase, sync_method

__all__ = ["AsyncSiliconFlowClient", "SiliconFlowClient"]

_Http = TypeVar("_Http", httpx.Client, httpx.AsyncClient)
_Client = TypeVar("_Client", bound="_Constructor[Any]")

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
            cache: A `Cache` of rerank scores across calls, such as `RerankCache` (off by
                default).
            embedding_cache: A `Cache` of vectors across calls, such as `EmbeddingCache`.
            share_cache_across_keys: Let calls with other API keys share cached answers (off:
                a cache is partitioned by account, a digest of the server and key).
            calibration: A `Calibration`, or the path of one saved as JSON: rerank scores
                come back as probabilities of relevance (see `calibrate`).
            rate_limit: A `Budget`, such as `RedisRateLimit` (shared with every process that
                names it), instead of requests_per_minute / tokens_per_minute (which count in
                this client alone).

        Raises:
            InvalidRequestError: No API key, or an invalid setting.
"""


class _Constructor(Generic[_Http]):
    """The public constructor of both clients: every setting as an argument, checked once."""

    _base_init: ClassVar[Any]
    """The client base's `__init__(settings, http_client)`."""

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: _Http | None = None,
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
        cache: Cache | None = None,
        embedding_cache: Cache | None = None,
        share_cache_across_keys: bool = False,
        calibration: Calibration | str | os.PathLike[str] | None = None,
        rate_limit: Budget | None = None,
    ) -> None:
        # Every argument but http_client is a setting, checked once, here (a test keeps this
        # signature equal to `ClientSettings`).
        settings = check_client_settings(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            attempt_deadline=attempt_deadline,
            max_response_bytes=max_response_bytes,
            max_documents_per_request=max_documents_per_request,
            max_concurrency=max_concurrency,
            max_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            cache=cache,
            embedding_cache=embedding_cache,
            share_cache_across_keys=share_cache_across_keys,
            calibration=calibration,
            rate_limit=rate_limit,
        )
        type(self)._base_init(self, settings, http_client)

    __init__.__doc__ = (
        "Create a client. No connection is opened until the first call.\n" + _CLIENT_ARGS
    )

    @classmethod
    def from_settings(
        cls: type[_Client], settings: ClientSettings, http_client: _Http | None = None
    ) -> _Client:
        """A client of settings already validated (an adapter's fields), not checked again."""
        client = cls.__new__(cls)
        cls._base_init(client, settings, http_client)
        return client


class SiliconFlowClient(_Constructor[httpx.Client], SyncClientBase):
    """Synchronous SiliconFlow client (rerank, embeddings); thread-safe, one connection pool.

    A call split into several requests (a long list, an embeddings call over `batch_size`)
    runs its requests as tasks on an event loop thread the client starts when first needed,
    over a second pool of its own (up to `max_connections` more); `close()` stops both.

    Example:
        >>> with SiliconFlowClient() as client:  # doctest: +SKIP
        ...     response = client.rerank("apple", ["apple pie", "banana bread"], top_n=1)
    """

    _base_init = SyncClientBase.__init__

    rerank = sync_method(prepare_rerank)
    embed = sync_method(prepare_embed)


class AsyncSiliconFlowClient(_Constructor[httpx.AsyncClient], AsyncClientBase):
    """Asynchronous SiliconFlow client: native asyncio I/O, one connection pool per loop.

    Its own pool runs on aiohttp, used directly (see the README's benchmark).

    Example:
        >>> async with AsyncSiliconFlowClient() as client:  # doctest: +SKIP
        ...     response = await client.rerank("apple", ["apple pie", "banana bread"])
    """

    _base_init = AsyncClientBase.__init__

    rerank = async_method(prepare_rerank)
    embed = async_method(prepare_embed)
