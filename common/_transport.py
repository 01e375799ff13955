"""What the client modules need from their transports: error translation, and both pools.

Each client's own pool skips httpx's client layer (see `benchmarks/results.md`): the sync pool is
httpcore's, the async pool aiohttp's, both used directly; a caller's own httpx client, a proxy on
the sync side and a SOCKS proxy on the async side still go through httpx. Their quirks live here:
errors of a streamed body wrapped, proxy variables unread, compressed answers, and an async pool
that must close on the loop that opened it. Both pools refuse to reuse a kept-alive connection that
holds bytes nobody asked for, and the sync pool's `close()` wakes the threads still reading from it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import select
import socket
import threading
import urllib.request
import weakref
import zlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
)
from typing import Any, TypeVar

import aiohttp
import httpcore
import httpx

from ._exceptions import APIConnectionError, APITimeoutError, InvalidRequestError, SiliconFlowError

__all__ = [
    "AsyncPool",
    "LoopThread",
    "SyncPool",
    "is_deadline",
    "open_async_pool",
    "open_sync_pool",
    "translate_transport_errors",
]


class _TranslatedErrors:
    """The one place where transport exceptions become ours (a plain context manager: every
    attempt enters one, and a generator-based one cost a generator and a wrapper per attempt)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: Any
    ) -> None:
        if isinstance(error, httpx.RequestError):
            own = _raised_by_the_body(error)
            if own is not None:
                raise own from None
            raise _transport_error(error) from error
        if isinstance(error, _POOL_ERRORS):
            # The own pools' errors: httpcore's (sync) and aiohttp's (async), malformed answers
            # among them (a bad status line or chunk size, conflicting lengths, large headers).
            own = _raised_by_the_body(error)
            if own is not None:
                raise own from None
            if isinstance(error, _POOL_TIMEOUTS):
                raise APITimeoutError(
                    f"request timed out ({type(error).__name__}): {error}"
                ) from error
            raise APIConnectionError(
                f"connection failed ({type(error).__name__}): {error or 'no details'}"
            ) from error


_TRANSLATED = _TranslatedErrors()


def translate_transport_errors() -> _TranslatedErrors:
    """A context manager that raises our error for a transport exception raised in it."""
    return _TRANSLATED


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


def _transport_error(error: httpx.RequestError) -> SiliconFlowError:
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
                f"connection failed ({type(cause).__name__}): {cause or 'no details'}"
            )
        return APITimeoutError(f"request timed out ({type(error).__name__}): {error}")
    return APIConnectionError(
        f"connection failed ({type(error).__name__}): {error or 'no details'}"
    )


def open_sync_pool(
    url: httpx.URL, headers: Mapping[str, str], timeout: httpx.Timeout, limits: httpx.Limits
) -> httpx.Client | SyncPool:
    """Open the sync client's own pool for requests to `url`, made safe to share."""
    with _proxy_settings_checked():
        proxy = _environment_proxy(url)
        if proxy is not None:  # httpx's own proxy transport, as it would choose it
            return httpx.Client(timeout=timeout, limits=limits, proxy=proxy)
        return SyncPool(headers, timeout, limits)


class SyncPool:
    """The sync client's own pool: httpcore's, used directly.

    httpx's client layer (its request and response models, header merging, cookies, event hooks)
    cost about 300 µs of CPU per call on top of httpcore's (see `benchmarks/results.md`); the
    client needs none of it. Two gaps in httpcore's pool are closed here, both found over real
    sockets: bytes that arrive after an answer in the same read (an answer nobody asked for) stay
    buffered and are taken as the next call's answer; and closing a socket that another thread
    reads from does not wake that thread, so a call in flight during `close()` waited for its
    read timeout. A caller's own `httpx.Client`, and a proxy, go through httpx.
    """

    __slots__ = ("__weakref__", "_headers", "_pool", "_streams", "_timeouts", "_urls", "is_closed")

    def __init__(
        self, headers: Mapping[str, str], timeout: httpx.Timeout, limits: httpx.Limits
    ) -> None:
        self._streams = _OpenStreams()
        self._pool = _CheckedPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=self._streams,
        )
        self._headers = [
            *((name.encode("ascii"), value.encode("latin-1")) for name, value in headers.items()),
            (b"Accept-Encoding", b"gzip, deflate"),
        ]
        self._timeouts = {"timeout": timeout.as_dict()}
        self._urls: dict[int, tuple[httpx.URL, httpcore.URL]] = {}
        self.is_closed = False

    @contextlib.contextmanager
    def post(
        self, url: httpx.URL, body: bytes | Iterator[bytes], length: int | None
    ) -> Iterator[tuple[int, httpx.Headers, Iterator[bytes]]]:
        """Send `body` (its `length` stated when it goes in pieces, not chunked); yield the
        answer's status, headers and its body's pieces, decoded."""
        target = _target(self._urls, url, _httpcore_url)
        headers = self._headers
        if length is not None:
            headers = [*headers, (b"Content-Length", str(length).encode())]
        with self._pool.stream(
            "POST", target, headers=headers, content=body, extensions=self._timeouts
        ) as response:
            answer_headers = httpx.Headers(response.headers)
            pieces = _decoded(response.iter_stream(), answer_headers.get("content-encoding"))
            yield response.status, answer_headers, pieces

    def close(self) -> None:
        self.is_closed = True
        self._streams.shut_down()  # calls blocked in a read end now, not at their timeout
        self._pool.close()


_DECODED_PIECE = 1 << 16
"""A compressed answer is inflated this many bytes at a time, each counted against the cap."""


_Target = TypeVar("_Target")


def _target(
    known: dict[int, tuple[httpx.URL, _Target]],
    url: httpx.URL,
    make: Callable[[httpx.URL], _Target],
) -> _Target:
    """`make(url)`, made once per URL object and kept by its identity: the client passes the
    same URL objects on every call, and an httpx.URL hashes its whole text (about 1.2 µs) each
    time it is looked up as a key."""
    entry = known.get(id(url))
    if entry is not None and entry[0] is url:
        return entry[1]
    target = make(url)
    known[id(url)] = url, target
    return target


def _httpcore_url(url: httpx.URL) -> httpcore.URL:
    return httpcore.URL(
        scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
    )


def _decoded(pieces: Iterator[bytes], encoding: str | None) -> Iterator[bytes]:
    """The body's pieces, inflated when the server compressed them (gzip or deflate, which is
    what the pool asks for; any other encoding is passed on as sent)."""
    if encoding is None or encoding.strip().lower() not in ("gzip", "x-gzip", "deflate"):
        yield from pieces
        return
    inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or a zlib header, either
    try:
        for piece in pieces:
            yield inflate.decompress(piece, _DECODED_PIECE)
            while inflate.unconsumed_tail:  # bounded pieces: a small bomb never inflates whole
                yield inflate.decompress(inflate.unconsumed_tail, _DECODED_PIECE)
        yield inflate.flush()
    except zlib.error as error:
        raise APIConnectionError(
            f"the answer could not be decompressed ({encoding}): {error}"
        ) from None


class _CheckedPool(httpcore.ConnectionPool):
    def _assign_requests_to_connections(self) -> list[httpcore.ConnectionInterface]:
        # Runs under the pool's lock before every assignment: an idle connection holding unread
        # bytes is closed, never reused.
        tainted = [c for c in self._connections if c.is_idle() and _holds_unread_bytes(c)]
        for connection in tainted:
            self._connections.remove(connection)
        return tainted + super()._assign_requests_to_connections()


def _holds_unread_bytes(connection: httpcore.ConnectionInterface) -> bool:
    # httpcore keeps the HTTP/1.1 parser private; a version without it is caught by the tests.
    parser = getattr(getattr(connection, "_connection", None), "_h11_state", None)
    return parser is not None and bool(parser.trailing_data[0])


class _OpenStreams(httpcore.SyncBackend):
    """httpcore's own backend, keeping track of the streams it opened so they can be shut down."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[_TrackedStream] = weakref.WeakSet()

    def track(self, stream: httpcore.NetworkStream) -> _TrackedStream:
        tracked = _TrackedStream(stream, self)
        with self._lock:
            self._open.add(tracked)
        return tracked

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return self.track(super().connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return self.track(super().connect_unix_socket(*args, **kwargs))

    def shut_down(self) -> None:
        with self._lock:
            streams = list(self._open)
        for stream in streams:
            sock = stream.get_extra_info("socket")
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _TrackedStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, streams: _OpenStreams) -> None:
        self._stream = stream
        self._streams = streams

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return self._streams.track(self._stream.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


@contextlib.contextmanager
def _proxy_settings_checked() -> Iterator[None]:
    # A proxy variable httpx or aiohttp cannot use (a SOCKS proxy without its package, a URL
    # that is none) fails when a pool is made: as bad configuration, with the variable named.
    try:
        yield
    except (ImportError, ValueError, httpx.InvalidURL) as error:
        raise InvalidRequestError(
            f"the proxy settings (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY) cannot be used: {error}"
        ) from None


class AsyncPool:
    """The async client's own pool: one aiohttp session, used directly.

    httpx on top of aiohttp cost about 300 µs of CPU per call in building httpx's request and
    response models (see `benchmarks/results.md`); the client needs none of them. A caller's own
    `httpx.AsyncClient` is still used through httpx.
    """

    __slots__ = ("_proxy", "_proxy_auth", "_targets", "session")

    def __init__(
        self,
        proxy: httpx.Proxy | None,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        deadline: float | None,
        limits: httpx.Limits,
    ) -> None:
        self._targets: dict[int, tuple[httpx.URL, str]] = {}
        self._proxy = None if proxy is None else str(proxy.url)
        self._proxy_auth = (
            None if proxy is None or proxy.auth is None else aiohttp.BasicAuth(*proxy.auth)
        )
        self.session = aiohttp.ClientSession(
            connector=_CheckedConnector(limits),
            headers=headers,  # every request's: merged once per request, not built from a dict
            # httpx's phases mapped to aiohttp's: `connect` bounds opening a connection, `pool`
            # the wait for one, `read` each read; `total`, the attempt deadline, bounds the whole
            # (uploads included, which nothing else bounds).
            timeout=aiohttp.ClientTimeout(
                total=deadline,
                connect=timeout.pool,
                sock_connect=timeout.connect,
                sock_read=timeout.read,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),  # an API answer's cookies are never sent back
            trust_env=False,  # the proxy is chosen above, as the sync client chooses it
        )

    @property
    def is_closed(self) -> bool:
        return self.session.closed

    def post(
        self, url: httpx.URL, body: bytes | AsyncIterator[bytes], length: int | None
    ) -> aiohttp.client._RequestContextManager:
        """Send `body` (its `length` stated when it goes in pieces, not chunked)."""
        target = _target(self._targets, url, str)
        return self.session.post(
            target,
            data=body,
            headers=None if length is None else {"Content-Length": str(length)},
            proxy=self._proxy,
            proxy_auth=self._proxy_auth,
        )

    async def aclose(self) -> None:
        await self.session.close()


async def open_async_pool(
    url: httpx.URL,
    headers: Mapping[str, str],
    timeout: httpx.Timeout,
    deadline: float | None,
    limits: httpx.Limits,
) -> tuple[AsyncPool | httpx.AsyncClient, AsyncGenerator[None, None]]:
    """Open a pool for requests to `url`, on the running loop: aiohttp's, or httpx's when the
    environment names a SOCKS proxy (aiohttp speaks only HTTP to a proxy; httpx speaks SOCKS5
    with its `socks` extra, as on the sync side).

    Returns:
        The pool, and a guard to `aclose()` that closes it; left open, the guard closes the pool
        when the event loop shuts down.
    """
    pool: AsyncPool | httpx.AsyncClient
    with _proxy_settings_checked():
        proxy = _environment_proxy(url)
        if proxy is not None and proxy.url.scheme not in _HTTP_SCHEMES:
            pool = httpx.AsyncClient(timeout=timeout, limits=limits, proxy=proxy)
        else:
            pool = AsyncPool(proxy, headers, timeout, deadline, limits)
    guard = _close_with_loop(pool)
    await guard.__anext__()
    return pool, guard


class _CheckedConnector(aiohttp.TCPConnector):
    """aiohttp's connector, built as the aiohttp transport builds it, that never hands out a kept-
    alive connection on which bytes arrived while it sat idle (an answer nobody asked for, which
    aiohttp would otherwise read as the next call's answer)."""

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(
            limit=limits.max_connections or 0,
            keepalive_timeout=limits.keepalive_expiry,
            ssl=httpx.create_ssl_context(),
        )

    async def _get(self, *args: Any, **kwargs: Any) -> Any:
        while True:
            connection = await super()._get(*args, **kwargs)
            protocol = None if connection is None else connection.protocol
            if connection is None or protocol is None:
                return connection
            if not (protocol.should_close or _readable(protocol.transport)):
                return connection
            connection.close()


def _readable(transport: asyncio.BaseTransport | None) -> bool:
    """Whether bytes (or the end of the stream) wait on an idle connection's socket: bytes the
    event loop has not delivered yet, because it did not run since they came."""
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return False
    if sock.fileno() < 0:
        return True
    if hasattr(select, "poll"):  # not limited to descriptors below 1024, unlike select()
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


_HTTP_SCHEMES = frozenset({"http", "https"})


def _environment_proxy(url: httpx.URL) -> httpx.Proxy | None:
    """The proxy that HTTP(S)_PROXY / ALL_PROXY name for `url`, unless NO_PROXY exempts its host.

    Both clients choose by this: httpx stops reading the variables once it is given a transport,
    and the aiohttp transport never reads them.
    """
    if urllib.request.proxy_bypass(url.host):
        return None
    proxies = urllib.request.getproxies()
    chosen = proxies.get(url.scheme) or proxies.get("all")
    return httpx.Proxy(chosen) if chosen else None


async def _close_with_loop(pool: AsyncPool | httpx.AsyncClient) -> AsyncGenerator[None, None]:
    """Hold `pool` open until closed, or until its event loop shuts down.

    `asyncio.run()` finalizes every live async generator before closing its loop, which runs this
    `finally` on the right loop: the pool closes cleanly instead of leaking sockets.
    """
    try:
        yield
    finally:
        await pool.aclose()
        # Connections aborted mid-request (a deadline, a cancelled task) finish closing on the
        # loop's next turn: give them that turn, so none is left open when the loop closes.
        await asyncio.sleep(0)


_T = TypeVar("_T")


class LoopThread:
    """An event loop on a daemon thread of its own, where a sync client sends a call of many
    requests as tasks over the async pool: eight threads over the sync pool took twice the CPU,
    most of it in passing the GIL among them (see `benchmarks/results.md`)."""

    __slots__ = ("_last", "_stop", "_thread", "loop")

    loop: asyncio.AbstractEventLoop
    _stop: asyncio.Future[None]

    def __init__(self) -> None:
        self._last: Callable[[], Coroutine[Any, Any, object]] | None = None
        started = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(started),), name="siliconflow-rerank-loop"
        )
        self._thread.daemon = True
        self._thread.start()
        started.wait()

    async def _serve(self, started: threading.Event) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.set_default_executor(_Unawaited(thread_name_prefix="siliconflow-rerank-worker"))
        self._stop = self.loop.create_future()
        started.set()
        await self._stop
        if self._last is not None:
            await self._last()
        # asyncio.run() then cancels what still runs, and closes the loop's async generators
        # (each pool's guard is one), its executor and the loop.

    def submit(self, coroutine: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Run `coroutine` on the loop; its answer comes through the returned future."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self, last: Callable[[], Coroutine[Any, Any, object]] | None = None) -> None:
        """Stop the loop and wait for its thread: `last()` runs on the loop first (to close a
        pool: calls in flight on it fail as closed), then tasks still running are cancelled."""
        self._last = last
        with contextlib.suppress(RuntimeError):  # the loop has closed already
            self.loop.call_soon_threadsafe(_settle, self._stop)
        if threading.current_thread() is not self._thread:
            self._thread.join()


class _Unawaited(concurrent.futures.ThreadPoolExecutor):
    """The loop thread's executor, where a blocking rate limiter and a caller's own sleep run:
    stopping the loop does not wait for them (a sleep of a minute, or a Redis call until its
    timeout, held up `close()` as long), as the sync client's own threads are not waited for."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=True)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
