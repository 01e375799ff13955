"""The clients' own pools, behind the transport interface: httpcore's (sync) and aiohttp's
(async), used directly, and the event loop thread on which a sync client runs a call of many
requests.

Both skip httpx's client layer (its request and response models cost far more than the pools;
see `benchmarks/results.md`). Two gaps in the libraries are closed here, each pinned by a test
and listed in `docs/architecture.md`: a kept-alive connection that holds bytes nobody asked for
is never reused, and the sync pool's `close()` wakes the threads still reading from it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import select
import socket
import threading
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

from ._exceptions import APIConnectionError
from ._transport import (
    AsyncHttpxTransport,
    AsyncTransport,
    BodyWritten,
    HttpxTransport,
    Sent,
    SyncReply,
    SyncTransport,
    aiohttp_written_trace,
    environment_proxy,
    proxy_settings_checked,
    written_trace,
)

__all__ = ["AsyncPool", "LoopThread", "SyncPool", "open_async_transport", "open_sync_transport"]


def open_sync_transport(
    url: httpx.URL, headers: httpx.Headers, timeout: httpx.Timeout, limits: httpx.Limits
) -> SyncTransport:
    """Open the sync client's own transport for requests to `url`: its pool, or httpx's proxy
    transport when the environment names a proxy for `url`."""
    with proxy_settings_checked():
        proxy = environment_proxy(url)
        if proxy is not None:  # httpx's own proxy transport, as it would choose it
            client = httpx.Client(timeout=timeout, limits=limits, proxy=proxy)
            return HttpxTransport(client, headers, timeout, owned=True)
        return SyncPool(headers, timeout, limits)


class SyncPool:
    """The sync client's own pool: httpcore's, used directly.

    httpx's client layer (its request and response models, header merging, cookies, event hooks)
    costs more CPU per call than httpcore's pool (see `benchmarks/results.md`); the client needs
    none of it. Two gaps in httpcore's pool are closed here, both found over real
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
        self,
        url: httpx.URL,
        body: bytes | Iterator[bytes],
        length: int | None,
        sent: Sent | None = None,
    ) -> Iterator[SyncReply]:
        """Send `body` (its `length` stated when it goes in pieces, not chunked), calling `sent`
        once it is written; yield the answer's status, headers and its body's pieces, decoded."""
        target = _target(self._urls, url, _httpcore_url)
        headers = self._headers
        if length is not None:
            headers = [*headers, (b"Content-Length", str(length).encode())]
        extensions: dict[str, Any] = self._timeouts
        if sent is not None:
            extensions = {**extensions, "trace": written_trace(sent)}
        with self._pool.stream(
            "POST", target, headers=headers, content=body, extensions=extensions
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
    same URL objects on every call, and an httpx.URL hashes its whole text each time it is
    looked up as a key."""
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


class AsyncPool:
    """The async client's own pool: one aiohttp session, used directly.

    httpx on top of aiohttp cost far more CPU per call in building httpx's request and response
    models (see `benchmarks/results.md`); the client needs none of them. A caller's own
    `httpx.AsyncClient` is still used through httpx.
    """

    __slots__ = ("_proxy", "_proxy_auth", "_targets", "_traced", "session")

    def __init__(
        self,
        proxy: httpx.Proxy | None,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        limits: httpx.Limits,
        traced: bool = False,
    ) -> None:
        self._targets: dict[int, tuple[httpx.URL, str]] = {}
        # Tracing costs aiohttp work on every request: only for a budget that asks when
        # requests are written.
        self._traced = traced
        self._proxy = None if proxy is None else str(proxy.url)
        self._proxy_auth = (
            None if proxy is None or proxy.auth is None else aiohttp.BasicAuth(*proxy.auth)
        )
        self.session = aiohttp.ClientSession(
            connector=_CheckedConnector(limits),
            headers=dict(headers),  # every request's: merged once per request
            # httpx's phases mapped to aiohttp's: `connect` bounds opening a connection, `pool`
            # the wait for one, `read` each read. The attempt's deadline is the pipeline's.
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=timeout.pool,
                sock_connect=timeout.connect,
                sock_read=timeout.read,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),  # an API answer's cookies are never sent back
            trust_env=False,  # the proxy is chosen by the client, as the sync client chooses it
            trace_configs=[aiohttp_written_trace()] if traced else None,
        )

    @property
    def is_closed(self) -> bool:
        return self.session.closed

    def post(
        self,
        url: httpx.URL,
        body: bytes | AsyncIterator[bytes],
        length: int | None,
        sent: Sent | None = None,
    ) -> _AiohttpPost:
        """Send `body` (its `length` stated when it goes in pieces, not chunked), calling `sent`
        once it is written (a pool opened `traced`)."""
        target = _target(self._targets, url, str)
        written = None
        if sent is not None and self._traced:
            written = BodyWritten(sent, len(body) if isinstance(body, bytes) else length)
        return _AiohttpPost(
            self.session.post(
                target,
                data=body,
                headers=None if length is None else {"Content-Length": str(length)},
                proxy=self._proxy,
                proxy_auth=self._proxy_auth,
                allow_redirects=False,
                trace_request_ctx=written,
            )
        )

    async def aclose(self) -> None:
        await self.session.close()


class _AiohttpPost:
    """aiohttp's answer as an `AsyncReply`, open for as long as the context."""

    __slots__ = ("_request", "_response", "headers", "status")

    def __init__(self, request: Any) -> None:
        self._request = request

    async def __aenter__(self) -> _AiohttpPost:
        response: aiohttp.ClientResponse = await self._request.__aenter__()
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._request.__aexit__(*exc_info)

    async def read(self) -> bytes:
        return await self._response.read()

    def pieces(self) -> AsyncIterator[bytes]:
        return self._response.content.iter_any()


async def open_async_transport(
    url: httpx.URL,
    headers: httpx.Headers,
    timeout: httpx.Timeout,
    limits: httpx.Limits,
    traced: bool = False,
) -> tuple[AsyncTransport, AsyncGenerator[None, None]]:
    """Open a transport for requests to `url`, on the running loop: aiohttp's pool, or httpx's
    when the environment names a SOCKS proxy (aiohttp speaks only HTTP to a proxy; httpx speaks
    SOCKS5 with its `socks` extra, as on the sync side). `traced`: tell each request's `sent`
    when it is written.

    Returns:
        The transport, and a guard to `aclose()` that closes it; left open, the guard closes the
        transport when the event loop shuts down.
    """
    transport: AsyncTransport
    with proxy_settings_checked():
        proxy = environment_proxy(url)
        if proxy is not None and proxy.url.scheme not in _HTTP_SCHEMES:
            client = httpx.AsyncClient(timeout=timeout, limits=limits, proxy=proxy)
            transport = AsyncHttpxTransport(client, headers, timeout, owned=True)
        else:
            transport = AsyncPool(proxy, headers, timeout, limits, traced)
    guard = _close_with_loop(transport)
    await guard.__anext__()
    return transport, guard


_HTTP_SCHEMES = frozenset({"http", "https"})


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


async def _close_with_loop(pool: AsyncTransport) -> AsyncGenerator[None, None]:
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
    requests as tasks over the async pool: threads over the sync pool cost more CPU, most of it
    in passing the GIL among them (measured in the commit that added it)."""

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
