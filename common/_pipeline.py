"""The request pipeline: every rule a request goes through, written once for every endpoint,
both clients and every transport.

```
plan (the endpoint's)  ->  budget.acquire  ->  transport.post  ->  answer read (size cap, deadline)
                                                   |
   answer  <-  plan.add  <-  plan.read  <-  redaction, status -> error  <-  retries (pure rules)
```

A budget that has `sent` is told when each request is written (the transport's signal), so
that it counts from the wire, not from the booking.

`Plan` is what an endpoint module gives a client: the cache steps of one call, its requests,
how to read each answer, and how to put the answers together. The clients (`_sync`, `_async`)
hold the transports and run the loops; nothing here knows an endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

import httpx
from pydantic import SecretStr

from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ResponseValidationError,
    SiliconFlowError,
    redact_answer,
    status_error,
)
from ._protocols import Booking, Budget, Cache
from ._ratelimit import InMemoryRateLimit
from ._retry import RetryPolicy, is_retryable, retry_delay
from ._settings import ClientSettings, derived_deadline
from ._version import __version__
from ._wire import Estimate, StreamedBody, TokenEstimates, Usage, invalid_answer

__all__ = [
    "TRACE_HEADER",
    "OnTheWire",
    "Part",
    "Pipeline",
    "Plan",
    "ProgressCallback",
    "Request",
]

logger = logging.getLogger("siliconflow_rerank")

TRACE_HEADER = "x-siliconcloud-trace-id"

ProgressCallback = Callable[[int, int], object]
"""Called as `on_progress(requests_done, requests_total)` after each request of a call."""


class Request(Protocol):
    """One request of a call, as an endpoint builds it."""

    @property
    def body(self) -> Mapping[str, Any]:
        """The JSON body as a dict (read for the token estimate)."""
        ...

    @property
    def content(self) -> bytes | StreamedBody:
        """The body as sent."""
        ...

    @property
    def content_length(self) -> int:
        """Size of the body in bytes."""
        ...

    @property
    def estimated_tokens(self) -> Estimate:
        """The tokens the service will bill for it, estimated high (a budget books these, as
        `TokenEstimates` scales them, then the usage the answer reports)."""
        ...


class Part(Protocol):
    """The parsed answer to one request."""

    @property
    def usage(self) -> Usage | None: ...


_Req = TypeVar("_Req", bound=Request)
_Part = TypeVar("_Part", bound=Part)
_Answer = TypeVar("_Answer")


class Plan(ABC, Generic[_Req, _Part, _Answer]):
    """How one call is served: an endpoint module's answer to the client's arguments.

    Built after every input check (so a bad input fails before any I/O) and after the cache was
    asked; `len(plan)` requests remain to send (none when the cache had every answer).
    """

    path: str
    """The endpoint's path under the API root, e.g. `"rerank"`."""
    on_progress: ProgressCallback | None = None
    """Called with (requests done, requests in all) as the call proceeds."""

    @abstractmethod
    def __len__(self) -> int:
        """How many requests to send."""

    @abstractmethod
    def request(self, number: int) -> _Req:
        """Request `number`, built when it is about to be sent."""

    @abstractmethod
    def read(self, content: bytes, request: _Req, trace_id: str | None) -> _Part:
        """Parse and check a 2xx answer to `request`.

        Raises:
            ResponseValidationError: The answer is not a valid one.
        """

    @abstractmethod
    def add(self, number: int, part: _Part) -> None:
        """Take the answer to request `number` (answers come in any order)."""

    @abstractmethod
    def answer(self) -> _Answer:
        """The answer to the whole call, once every request was answered."""

    def failed(self, number: int, error: SiliconFlowError) -> SiliconFlowError:
        """`error` of request `number`, saying which part of the call it was (when split)."""
        return error

    cache: Cache | None = None
    """The cache the plan asks (`look_up`) and stores into (`store`), if any: steps that may
    block, which the async client runs in a worker thread."""
    _stores: list[tuple[bytes, bytes]] | None = None

    @property
    def cached(self) -> bool:
        return self.cache is not None

    def look_up(self) -> None:
        """Ask the cache before anything is sent; `len(plan)` counts what it lacked."""

    def keep(self, items: list[tuple[bytes, bytes]]) -> None:
        """Keep fresh values to store when the call ends."""
        if self._stores is None:
            self._stores = []
        self._stores += items

    def store(self) -> None:
        """Store the fresh values kept, once the call ends (answered or not)."""
        stores, self._stores = self._stores, None
        if self.cache is not None and stores:
            self.cache.set_many(stores)


def account_of(base_url: str, api_key: str) -> str:
    """Who a budget counts for: a digest of the server and the key (never the key itself)."""
    return hashlib.blake2b(f"{base_url}\0{api_key}".encode(), digest_size=16).hexdigest()


class Pipeline:
    """A client's settings, resolved once, and every rule applied to its requests.

    Both clients hold one; the sync client's event loop thread shares it with the sync calls.
    """

    def __init__(self, settings: ClientSettings, api_key: SecretStr, base_url: str) -> None:
        self.settings = settings
        """The settings as validated (once, by the client)."""
        self.secret = api_key.get_secret_value()
        self.base_url = base_url
        self.timeout = settings.timeout or httpx.Timeout(None)
        self.deadline = settings.attempt_deadline or derived_deadline(self.timeout)
        self.max_response_bytes = settings.max_response_bytes
        self.max_retries = settings.max_retries
        self.retry_policy = settings.retry_policy or RetryPolicy()
        self.max_concurrency = settings.max_concurrency
        self.budget: Budget | None = settings.rate_limit
        if self.budget is None and (settings.requests_per_minute or settings.tokens_per_minute):
            self.budget = InMemoryRateLimit(
                settings.requests_per_minute, settings.tokens_per_minute
            )
        self.account = account_of(base_url, self.secret)
        self._by_model = self.budget is not None and _takes_model(self.budget)
        self.tells_sent = callable(getattr(self.budget, "sent", None))
        """Whether the budget wants to know when each request goes on the wire."""
        self.estimates = TokenEstimates()
        """What the budget books per request, learned from what the service bills."""
        self.headers = httpx.Headers(
            {
                "Authorization": f"Bearer {self.secret}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"siliconflow-rerank/{__version__}",
            }
        )
        self.root = httpx.URL(base_url)
        """The API root, parsed (its scheme and host choose a proxy)."""
        # Parsed once: httpx re-parses a string URL per request.
        self._urls: dict[str, httpx.URL] = {}

    def url(self, path: str) -> httpx.URL:
        """The URL of an endpoint's `path`, parsed once."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(f"{self.base_url}/{path}")
        return url

    def limits(self) -> httpx.Limits:
        settings = self.settings
        return httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
            keepalive_expiry=settings.keepalive_expiry,
        )

    def book(self, request: Request) -> Booking | None:
        """Book `request` in the budget (may block, for a shared budget)."""
        if self.budget is None:
            return None
        return self.budget.acquire(self._tokens(request), **self._whose(request))

    async def abook(self, request: Request) -> Booking | None:
        if self.budget is None:
            return None
        return await self.budget.aacquire(self._tokens(request), **self._whose(request))

    def _tokens(self, request: Request) -> int:
        return self.estimates.booked(request.body.get("model"), request.estimated_tokens)

    def _whose(self, request: Request) -> dict[str, Any]:
        """Whom a request is booked for: the account, and its model when the budget takes one
        (a budget written before `model` existed is still called without it)."""
        if self._by_model:
            return {"account": self.account, "model": request.body.get("model")}
        return {"account": self.account}

    def on_the_wire(self, booking: Booking | None) -> OnTheWire | contextlib.nullcontext[None]:
        """A context for one attempt that gives the transport the callable telling the budget
        the request has gone on the wire (None when the budget does not ask); left without the
        transport having called it, the budget is told then (the latest the request went)."""
        if booking is None or not self.tells_sent:
            return _UNTOLD
        return OnTheWire(self.budget.sent, booking)  # type: ignore[union-attr]

    def cancel(self, booking: Booking | None) -> None:
        """Give back a booking whose request was never sent."""
        if booking is not None and self.budget is not None:
            self.budget.cancel(booking)

    def handle(
        self,
        status: int,
        headers: Mapping[str, str],
        content: bytes,
        request: _Req,
        plan: Plan[_Req, _Part, Any],
        booking: Booking | None,
    ) -> _Part:
        """An answer's part of the call, or our error for it; the budget learns the usage."""
        # A server or proxy that echoes the request must not put the key into an error, a log line
        # or an answer: the body and headers are redacted before anything reads them.
        content, headers = redact_answer(content, headers, self.secret)
        trace_id = _text(headers.get(TRACE_HEADER))
        if not 200 <= status < 300:
            raise status_error(
                status,
                content,
                trace_id=trace_id,
                headers=_plain(headers),  # a copy that pickles, and outlives the pool
                base_url=self.base_url,
                secret=self.secret,
                model=request.body.get("model"),
            )
        try:
            part = plan.read(content, request, trace_id)
        except RecursionError:  # a hostile answer nested deeper than the readers go
            raise invalid_answer(
                "the answer is nested too deeply to be a valid one", content, trace_id
            ) from None
        if booking is not None and self.budget is not None and part.usage is not None:
            used = part.usage.total_tokens or part.usage.input_tokens
            if used is not None:
                self.budget.settle(booking, used)
                self.estimates.learn(request.body.get("model"), request.estimated_tokens, used)
        return part

    def next_delay(self, attempt: int, error: SiliconFlowError) -> float | None:
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

    def answer_reader(self) -> AnswerBody:
        """A reader for one answer's body, against the size cap and (sync) the deadline."""
        return AnswerBody(self.max_response_bytes, self.deadline)


class OnTheWire:
    """Tells a budget, once, that a booking's request has gone on the wire: called by the
    transport when the request is written, or on leaving the attempt if it was not."""

    __slots__ = ("_booking", "_tell")

    def __init__(self, tell: Callable[[Booking], object], booking: Booking) -> None:
        self._tell: Callable[[Booking], object] | None = tell
        self._booking = booking

    def __call__(self) -> None:
        tell, self._tell = self._tell, None
        if tell is not None:
            tell(self._booking)

    def __enter__(self) -> OnTheWire:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self()


_UNTOLD = contextlib.nullcontext(None)


def _plain(headers: Mapping[str, str]) -> httpx.Headers:
    """An answer's headers as `httpx.Headers`, whatever the transport's type, their bytes kept
    (aiohttp's text may hold lone surrogates for bytes that are not UTF-8)."""
    if isinstance(headers, httpx.Headers):
        return headers.copy()
    return httpx.Headers(
        [
            (name.encode("latin-1", "replace"), value.encode("utf-8", "surrogateescape"))
            for name, value in headers.items()
        ]
    )


def _takes_model(budget: Budget) -> bool:
    try:
        parameters = inspect.signature(budget.acquire).parameters.values()
    except (TypeError, ValueError):  # no signature to read: called the way every budget takes
        return False
    return any(p.name == "model" or p.kind is p.VAR_KEYWORD for p in parameters)


def _text(value: str | None) -> str | None:
    """A header value as text that encodes as UTF-8: aiohttp reads bytes that are not UTF-8 as
    lone surrogates, which no JSON dump or log handler can write."""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


_LARGE_BODY = 1 << 20
"""Async bodies larger than this (1 MiB) are sent in pieces of this size."""


def sync_body(request: Request) -> tuple[bytes | Iterator[bytes], int | None]:
    """What to send as `request`'s body, and its length when it goes in pieces (which must be
    stated: not every compatible server takes chunked encoding)."""
    content = request.content
    if isinstance(content, bytes):
        return content, None
    content.verify()
    return content.iter_bytes(), content.length


def async_body(request: Request) -> tuple[bytes | AsyncIterator[bytes], int | None]:
    """`sync_body` for the async transports: files read off the loop, large bodies in pieces."""
    content = request.content
    if isinstance(content, bytes):
        if len(content) > _LARGE_BODY:
            # aiohttp writes a large bytes body in one go (and warns that it may block the loop):
            # in pieces, other tasks run while it is sent.
            return _apieces(content), len(content)
        return content, None
    content.verify()
    return content.aiter_bytes(), content.length


async def _apieces(content: bytes) -> AsyncIterator[bytes]:
    view = memoryview(content)
    for start in range(0, len(view), _LARGE_BODY):
        yield bytes(view[start : start + _LARGE_BODY])


def past_deadline(deadline: float) -> APITimeoutError:
    return APITimeoutError(
        f"the attempt took longer than its {deadline:g} s deadline (attempt_deadline)"
    )


def closed_in_flight(error: SiliconFlowError) -> APIConnectionError:
    """A call whose pool was closed under it: not retried (that would open a new pool)."""
    return APIConnectionError(f"the client was closed while this call was in flight: {error}")


def _too_large(limit: int) -> ResponseValidationError:
    return ResponseValidationError(
        f"the answer is larger than max_response_bytes ({limit} bytes); raise it if this server's "
        "answers really are that large"
    )


class AnswerBody:
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
        stated = headers.get("content-length")
        return (
            self.ends is None
            and stated is not None
            and "content-encoding" not in headers
            and stated.isdigit()
        )

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.limit:  # counted decoded: a small gzip can inflate without bound
            raise _too_large(self.limit)
        self.pieces.append(piece)
        if self.ends is not None and time.monotonic() > self.ends:
            raise past_deadline(self.deadline or 0.0)

    def content(self) -> bytes:
        return self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)

    def read(self, headers: Mapping[str, str], pieces: Iterable[bytes]) -> bytes:
        """The whole body from its (decoded) `pieces`, checked as they come."""
        self.expect(headers)
        for piece in pieces:
            self.add(piece)
        return self.content()


_T = TypeVar("_T")


async def within(seconds: float | None, work: Awaitable[_T]) -> _T:
    """`await work`, cancelled after `seconds` (the attempt deadline) with `TimeoutError`."""
    if seconds is None:
        return await work
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):  # no extra task, unlike wait_for
            return await work
    return await asyncio.wait_for(work, seconds)
