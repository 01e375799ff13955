"""The transport interface, and the one place where transports' exceptions become ours.

A transport sends one POST and hands back the answer's status, headers and body pieces; it
follows no redirect and applies no policy. Everything else (deadlines, the size cap, redaction,
status errors, retries) is the pipeline's, above this interface, so it holds for every transport:
the client's own pools (`_pools`), a caller's own `httpx` client, and the proxies' httpx clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

import aiohttp
import httpcore
import httpx

from ._exceptions import APIConnectionError, APITimeoutError, InvalidRequestError, SiliconFlowError

__all__ = [
    "AsyncHttpxTransport",
    "AsyncReply",
    "AsyncTransport",
    "BodyWritten",
    "HttpxTransport",
    "Sent",
    "SyncReply",
    "SyncTransport",
    "aiohttp_written_trace",
    "async_written_trace",
    "environment_proxy",
    "is_deadline",
    "proxy_settings_checked",
    "translate_transport_errors",
    "written_trace",
]

SyncReply = tuple[int, Mapping[str, str], Iterator[bytes]]
"""A sync answer: status, headers and the body's (decoded) pieces."""

Sent = Callable[[], None]
"""Called by a transport once a request is written whole (for the budget: it is on the wire)."""


class SyncTransport(Protocol):
    """Sends one POST at a time, from any thread."""

    @property
    def is_closed(self) -> bool: ...

    def post(
        self,
        url: httpx.URL,
        body: bytes | Iterator[bytes],
        length: int | None,
        sent: Sent | None = None,
    ) -> contextlib.AbstractContextManager[SyncReply]:
        """Send `body` (its `length` stated when it goes in pieces), calling `sent` once it is
        written; the answer, while open."""
        ...

    def close(self) -> None: ...


class AsyncReply(Protocol):
    """An async answer, open until its context ends."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes:
        """The whole (decoded) body at once."""
        ...

    def pieces(self) -> AsyncIterator[bytes]:
        """The (decoded) body, piece by piece."""
        ...


class AsyncTransport(Protocol):
    """Sends POSTs on the event loop it was opened on."""

    @property
    def is_closed(self) -> bool: ...

    def post(
        self,
        url: httpx.URL,
        body: bytes | AsyncIterator[bytes],
        length: int | None,
        sent: Sent | None = None,
    ) -> contextlib.AbstractAsyncContextManager[AsyncReply]:
        """Send `body` (its `length` stated when it goes in pieces), calling `sent` once it is
        written; the answer, while open."""
        ...

    async def aclose(self) -> None: ...


def _with_length(headers: httpx.Headers, length: int | None) -> httpx.Headers:
    if length is None:
        return headers
    headers = headers.copy()
    headers["Content-Length"] = str(length)
    return headers


_Client = TypeVar("_Client", httpx.Client, httpx.AsyncClient)


class _HttpxClient(Generic[_Client]):
    """An httpx client as a transport: a caller's own (borrowed, never closed here) or a
    proxy's. Redirects are never followed, whatever the client's own setting."""

    def __init__(
        self, client: _Client, headers: httpx.Headers, timeout: httpx.Timeout, *, owned: bool
    ) -> None:
        self.client: _Client = client
        self._headers = headers
        self._timeout = timeout
        self._owned = owned

    @property
    def is_closed(self) -> bool:
        return bool(self.client.is_closed)

    def _stream_arguments(self, body: Any, length: int | None, trace: Any) -> dict[str, Any]:
        """What `client.stream("POST", url, ...)` takes for one request: the same on both."""
        return {
            "content": body,
            "headers": _with_length(self._headers, length),
            "timeout": self._timeout,
            "follow_redirects": False,
            "extensions": None if trace is None else {"trace": trace},
        }


class HttpxTransport(_HttpxClient[httpx.Client]):
    """A sync `httpx.Client` as a transport."""

    @contextlib.contextmanager
    def post(
        self,
        url: httpx.URL,
        body: bytes | Iterator[bytes],
        length: int | None,
        sent: Sent | None = None,
    ) -> Iterator[SyncReply]:
        arguments = self._stream_arguments(body, length, sent and written_trace(sent))
        with self.client.stream("POST", url, **arguments) as response:
            yield response.status_code, response.headers, response.iter_bytes()

    def close(self) -> None:
        if self._owned:
            self.client.close()


class _HttpxReply:
    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        return await self._response.aread()

    def pieces(self) -> AsyncIterator[bytes]:
        return self._response.aiter_bytes()


class AsyncHttpxTransport(_HttpxClient[httpx.AsyncClient]):
    """An `httpx.AsyncClient` as a transport."""

    @contextlib.asynccontextmanager
    async def post(
        self,
        url: httpx.URL,
        body: bytes | AsyncIterator[bytes],
        length: int | None,
        sent: Sent | None = None,
    ) -> AsyncIterator[AsyncReply]:
        arguments = self._stream_arguments(body, length, sent and async_written_trace(sent))
        async with self.client.stream("POST", url, **arguments) as response:
            yield _HttpxReply(response)

    async def aclose(self) -> None:
        if self._owned:
            await self.client.aclose()


_WRITTEN = ".send_request_body.complete"
"""httpcore's trace event (`http11.` or `http2.`) once a request's body is written whole."""


def written_trace(sent: Sent) -> Callable[[str, Any], None]:
    """httpcore's `trace` extension (httpx passes it on), calling `sent` once the request is
    written. A transport of the caller's that does not trace leaves it to the pipeline."""

    def trace(event: str, info: Any) -> None:
        if event.endswith(_WRITTEN):
            sent()

    return trace


def async_written_trace(sent: Sent) -> Callable[[str, Any], Awaitable[None]]:
    """`written_trace` for httpcore's async connections (which await the extension)."""

    async def trace(event: str, info: Any) -> None:
        if event.endswith(_WRITTEN):
            sent()

    return trace


class BodyWritten:
    """Counts a request's body as aiohttp writes it, and calls `sent` at its last byte."""

    __slots__ = ("_left", "_sent")

    def __init__(self, sent: Sent, length: int | None) -> None:
        self._sent = sent
        self._left = length or 0

    def add(self, size: int) -> None:
        self._left -= size
        if self._left <= 0:
            self._sent()


async def _on_chunk_sent(
    session: object, context: Any, params: aiohttp.TraceRequestChunkSentParams
) -> None:
    # aiohttp signals each piece of the body just before it writes it.
    written = context.trace_request_ctx
    if isinstance(written, BodyWritten):
        written.add(len(params.chunk))


def aiohttp_written_trace() -> aiohttp.TraceConfig:
    """aiohttp's tracing, calling the `BodyWritten` passed as a request's `trace_request_ctx`."""
    config = aiohttp.TraceConfig()
    config.on_request_chunk_sent.append(_on_chunk_sent)
    return config


class _TranslatedErrors:
    """The one place where transport exceptions become ours, naming the server they happened
    with (a plain context manager: every attempt enters one, and a generator-based one cost a
    generator and a wrapper per attempt)."""

    __slots__ = ("url",)

    def __init__(self, url: httpx.URL | None) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: Any
    ) -> None:
        if error is None:
            return
        where = "" if self.url is None else f" talking to {self.url.host}:{self.url.port or ''}"
        where = where.rstrip(":")
        if isinstance(error, httpx.RequestError):
            own = _raised_by_the_body(error)
            if own is not None:
                raise own from None
            raise _transport_error(error, where) from error
        if isinstance(error, _POOL_ERRORS):
            # The own pools' errors: httpcore's (sync) and aiohttp's (async), malformed answers
            # among them (a bad status line or chunk size, conflicting lengths, large headers).
            own = _raised_by_the_body(error)
            if own is not None:
                raise own from None
            if isinstance(error, _POOL_TIMEOUTS):
                raise APITimeoutError(
                    f"request timed out ({type(error).__name__}){where}: {error}"
                ) from error
            raise APIConnectionError(
                f"connection failed ({type(error).__name__}){where}: {error or 'no details'}"
            ) from error


def translate_transport_errors(url: httpx.URL | None = None) -> _TranslatedErrors:
    """A context manager that raises our error for a transport exception raised in it, naming
    the server of `url`."""
    return _TranslatedErrors(url)


_POOL_TIMEOUTS = (httpcore.TimeoutException, aiohttp.ServerTimeoutError)
_POOL_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
    aiohttp.ClientError,
)


def is_deadline(error: BaseException) -> bool:
    """Whether a timeout is the attempt's overall deadline (aiohttp's total timeout, or the
    client's own), not one phase's timeout (aiohttp's own class, which
    `translate_transport_errors` makes an `APITimeoutError`)."""
    return not isinstance(error, aiohttp.ClientError)


def _raised_by_the_body(error: BaseException) -> InvalidRequestError | None:
    """Our own error from streaming a media file, which both transports wrap."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, InvalidRequestError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _transport_error(error: httpx.RequestError, where: str) -> SiliconFlowError:
    if isinstance(error, httpx.TimeoutException):
        cause = error.__cause__
        # The aiohttp transport reports a dropped connection as a connect timeout; only a cause
        # that is itself a timeout (or httpx's own) makes this a timeout.
        dropped = (
            cause is not None
            and not isinstance(cause, TimeoutError | asyncio.TimeoutError)
            and not type(cause).__module__.startswith(("httpcore", "httpx"))
        )
        if dropped:
            return APIConnectionError(
                f"connection failed ({type(cause).__name__}){where}: {cause or 'no details'}"
            )
        return APITimeoutError(f"request timed out ({type(error).__name__}){where}: {error}")
    return APIConnectionError(
        f"connection failed ({type(error).__name__}){where}: {error or 'no details'}"
    )


@contextlib.contextmanager
def proxy_settings_checked() -> Iterator[None]:
    # A proxy variable httpx or aiohttp cannot use (a SOCKS proxy without its package, a URL
    # that is none) fails when a pool is made: as bad configuration, with the variable named.
    try:
        yield
    except (ImportError, ValueError, httpx.InvalidURL) as error:
        raise InvalidRequestError(
            f"the proxy settings (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY) cannot be used: {error}"
        ) from None


_HTTP_SCHEMES = frozenset({"http", "https"})


def environment_proxy(url: httpx.URL) -> httpx.Proxy | None:
    """The proxy that HTTP(S)_PROXY / ALL_PROXY name for `url`, unless NO_PROXY exempts its host.

    Both clients choose by this: httpx stops reading the variables once it is given a transport,
    and the aiohttp transport never reads them.
    """
    if urllib.request.proxy_bypass(url.host):
        return None
    proxies = urllib.request.getproxies()
    chosen = proxies.get(url.scheme) or proxies.get("all")
    return httpx.Proxy(chosen) if chosen else None
