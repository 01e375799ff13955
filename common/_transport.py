"""What the client modules need from their transports: error translation, and the async pool.

The async client's own pool is aiohttp under the httpx API (see the README's benchmark); its quirks
live here: a dropped connection reported as a timeout, errors of a streamed body wrapped, proxy
variables unread, and a pool that must close on the loop that opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncGenerator, Iterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from ._exceptions import APIConnectionError, APITimeoutError, InvalidRequestError, SiliconFlowError

__all__ = ["open_async_pool", "open_sync_pool", "translate_transport_errors"]


@contextlib.contextmanager
def translate_transport_errors() -> Iterator[None]:
    """The one place where transport exceptions become ours."""
    try:
        yield
    except httpx.RequestError as error:
        own = _raised_by_the_body(error)
        if own is not None:
            raise own from None
        raise _transport_error(error) from error
    except aiohttp.ClientError as error:
        # What httpx-aiohttp passes through unmapped: malformed answers (a bad status line or
        # chunk size, conflicting lengths, oversized headers) raise aiohttp's own errors.
        if isinstance(error, aiohttp.ServerTimeoutError):
            raise APITimeoutError(f"request timed out ({type(error).__name__}): {error}") from error
        raise APIConnectionError(
            f"connection failed ({type(error).__name__}): {error or 'no details'}"
        ) from error


def _raised_by_the_body(error: BaseException) -> InvalidRequestError | None:
    """Our own error from streaming a media file, which the aiohttp transport wraps."""
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


def open_sync_pool(timeout: httpx.Timeout, limits: httpx.Limits) -> httpx.Client:
    """Open httpx's own pool (which reads the proxy variables itself)."""
    with _proxy_settings_checked():
        return httpx.Client(timeout=timeout, limits=limits)


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


async def open_async_pool(
    url: httpx.URL, timeout: httpx.Timeout, limits: httpx.Limits
) -> tuple[httpx.AsyncClient, AsyncGenerator[None, None]]:
    """Open an aiohttp-backed pool for requests to `url`, on the running loop.

    Returns:
        The client, and a guard to `aclose()` that closes it; left open, the guard closes the
        pool when the event loop shuts down.
    """
    with _proxy_settings_checked():
        transport = AiohttpTransport(limits=limits, proxy=_environment_proxy(url))
        client = httpx.AsyncClient(timeout=timeout, transport=transport)
    guard = _close_with_loop(client)
    await guard.__anext__()
    return client, guard


def _environment_proxy(url: httpx.URL) -> httpx.Proxy | None:
    """The proxy that HTTP(S)_PROXY / ALL_PROXY name for `url`, unless NO_PROXY exempts its host.

    httpx's own pool (the sync client) honours these variables; the aiohttp transport does not read
    the environment, so the async client hands it the same choice.
    """
    if urllib.request.proxy_bypass(url.host):
        return None
    proxies = urllib.request.getproxies()
    chosen = proxies.get(url.scheme) or proxies.get("all")
    return httpx.Proxy(chosen) if chosen else None


async def _close_with_loop(client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    """Hold `client` open until closed, or until its event loop shuts down.

    `asyncio.run()` finalizes every live async generator before closing its loop, which runs this
    `finally` on the right loop: the pool closes cleanly instead of leaking sockets.
    """
    try:
        yield
    finally:
        await client.aclose()
        # Connections aborted mid-request (a deadline, a cancelled task) finish closing on the
        # loop's next turn: give them that turn, so none is left open when the loop closes.
        await asyncio.sleep(0)
