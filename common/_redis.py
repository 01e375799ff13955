"""Budgets and caches shared through Redis by every process and host that names the same Redis.

Needs the `redis` package (the `redis` extra), imported only when one of these is made. Whatever
Redis does, calls go on: when it cannot be reached, the rate limit falls back to a limiter in this
process and the caches to no cache, with one WARNING per outage and an INFO when Redis is back;
`on_redis_error="raise"` makes a rate limit fail closed instead.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

from ._exceptions import APIConnectionError, InvalidRequestError
from ._options import checked_count, checked_seconds
from ._protocols import Booking
from ._ratelimit import InMemoryRateLimit

__all__ = ["RedisEmbeddingCache", "RedisRateLimit", "RedisRerankCache"]

logger = logging.getLogger("siliconflow_rerank")

_PREFIX = "siliconflow-rerank"
_FORMAT = b"v2:"
"""Every cached value starts with its format's version: a value of another format is a miss."""

# Every request booked in the window is a member "<ms>:<tokens>:<nonce>" of one sorted set, scored
# by Redis's own clock (so hosts whose clocks differ agree). A booking dated after Redis's now (its
# clock stepped back, or another writer's) counts as booked now: it never holds the budget for the
# whole skew. A request is admitted, and booked,
# only if the window then holds at most the budget of requests and of tokens; otherwise the script
# answers how many milliseconds until enough of the window has passed.
_BOOK = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local max_requests, max_tokens = tonumber(ARGV[1]), tonumber(ARGV[2])
local window, tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - window)
local future = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ms, '+inf')
for i = 1, #future do redis.call('ZADD', KEYS[1], ms, future[i]) end
local booked = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local count = #booked / 2
local wait = 0
if max_requests > 0 and count >= max_requests then
  wait = tonumber(booked[(count - max_requests) * 2 + 2]) + window - ms
end
if max_tokens > 0 then
  local used = 0
  for i = 1, #booked, 2 do used = used + tonumber(string.match(booked[i], ':(%d+):')) end
  local freed = 0
  local i = 1
  while used - freed + tokens > max_tokens and i <= #booked do
    freed = freed + tonumber(string.match(booked[i], ':(%d+):'))
    wait = math.max(wait, tonumber(booked[i + 1]) + window - ms)
    i = i + 2
  end
end
if wait > 0 then return {0, tostring(wait)} end
local member = ms .. ':' .. tokens .. ':' .. ARGV[5]
redis.call('ZADD', KEYS[1], ms, member)
redis.call('PEXPIRE', KEYS[1], window * 2)
return {1, member}
"""

# Once the answer says how many tokens a request used, its booking is rewritten with that count.
_CORRECT = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
local ms, nonce = string.match(ARGV[1], '^(%d+):%d+:(.+)$')
redis.call('ZADD', KEYS[1], score, ms .. ':' .. ARGV[2] .. ':' .. nonce)
return 1
"""


def _rebuild(cls: type[Any], arguments: dict[str, Any]) -> Any:
    rest = dict(arguments)
    return cls(rest.pop("url"), **rest)


def _redis_module() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError(
            "a Redis-shared budget or cache needs the redis package: pip install 'redis>=5' "
            "(or, in a checkout of siliconflow-rerank, pip install '.[redis]')"
        ) from None
    return redis


class _Link:
    """One Redis connection pool, and the state of an outage: a failure opens a pause during
    which Redis is not asked again (calls are not slowed by timeouts), logged once; the first
    success after it is logged too."""

    def __init__(self, url: str, timeout: float, what: str, *, then: str) -> None:
        redis = _redis_module()
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._unreachable = (redis.ConnectionError, redis.TimeoutError, OSError)
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.what = what
        self.then = then
        """What calls do while Redis fails (for the WARNING)."""
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down = False
        self.last_problem = ""
        """What went wrong the last time Redis failed, in words."""

    def usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def describe(self, error: BaseException) -> str:
        """What happened: Redis could not be reached, or it answered with an error (a key of
        another type, a script it refused, ...)."""
        if isinstance(error, self._unreachable):
            return f"Redis cannot be reached ({type(error).__name__}: {error})"
        return f"Redis answered with an error ({type(error).__name__}: {error})"

    def failed(self, error: BaseException) -> None:
        problem = self.describe(error)
        with self._lock:
            self._down_until = time.monotonic() + 5.0
            self.last_problem = problem
            if not self._down:
                self._down = True
                logger.warning("%s: %s; %s", self.what, problem, self.then)

    def worked(self) -> None:
        if self._down:
            with self._lock:
                if self._down:
                    self._down = False
                    logger.info("%s: Redis is reachable again and answering", self.what)


class RedisRateLimit:
    """A `Budget` of requests and tokens per window, kept in Redis and shared by every client,
    process and host that names the same Redis, budget `name` and API key.

    Never more than `requests_per_minute` requests (and `tokens_per_minute` estimated tokens,
    corrected by the usage each answer reports) in any `window_seconds`, counted by Redis's clock,
    atomically in one script. Budgets are kept per API key (a digest of it names the budget; the
    key itself never reaches Redis). Pass it as `rate_limit=` to a client or an adapter.
    """

    def __init__(
        self,
        url: str,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        name: str = "default",
        window_seconds: float = 60.0,
        margin_seconds: float = 0.5,
        on_redis_error: Literal["local", "raise"] = "local",
        timeout: float = 0.5,
    ) -> None:
        """Describe the budget; Redis is first asked on the first call.

        Args:
            url: The Redis URL, e.g. `redis://cache.internal:6379/0`.
            requests_per_minute: Requests per window, or None for no request budget.
            tokens_per_minute: Tokens per window, or None for no token budget.
            name: The budget's name: clients naming the same one share it.
            window_seconds: The window the budgets count over (a minute, as the service counts).
            margin_seconds: Added to the window when counting: a request reaches the server a
                moment after it is booked, and not always in the order booked (on a busy host,
                by a few hundred milliseconds); the margin keeps the server's own count of its
                window from seeing an old request and a new one together.
            on_redis_error: `"local"` falls back to a limiter in this process while Redis cannot
                be reached; `"raise"` fails the call with `APIConnectionError` instead.
            timeout: Seconds to wait for Redis before counting it as unreachable.
        """
        self._arguments = {
            "url": url,
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "name": name,
            "window_seconds": window_seconds,
            "margin_seconds": margin_seconds,
            "on_redis_error": on_redis_error,
            "timeout": timeout,
        }
        if requests_per_minute is None and tokens_per_minute is None:
            raise InvalidRequestError(
                "RedisRateLimit needs requests_per_minute or tokens_per_minute"
            )
        for count in ("requests_per_minute", "tokens_per_minute"):
            if self._arguments[count] is not None:
                checked_count(count, self._arguments[count], 1)
        checked_seconds("window_seconds", window_seconds)
        checked_seconds("margin_seconds", margin_seconds, zero=True)
        checked_seconds("timeout", timeout)
        if on_redis_error not in ("local", "raise"):
            raise InvalidRequestError("on_redis_error must be 'local' or 'raise'")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.name = name
        self.window_seconds = window_seconds
        self.margin_seconds = margin_seconds
        self.on_redis_error = on_redis_error
        then = (
            "failing calls until it works again"
            if on_redis_error == "raise"
            else "counting in this process until it works again"
        )
        self._link = _Link(url, timeout, f"rate limit {name!r}", then=then)
        self._book = self._link.client.register_script(_BOOK)
        self._correct = self._link.client.register_script(_CORRECT)
        per_minute = 60.0 / window_seconds
        self._local = InMemoryRateLimit(
            round(requests_per_minute * per_minute) if requests_per_minute else None,
            round(tokens_per_minute * per_minute) if tokens_per_minute else None,
        )

    def __repr__(self) -> str:
        return (
            f"RedisRateLimit(name={self.name!r}, requests_per_minute={self.requests_per_minute}, "
            f"tokens_per_minute={self.tokens_per_minute}, window_seconds={self.window_seconds})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its description (the budget is in Redis): for worker processes and actors.
        return (_rebuild, (type(self), self._arguments))

    def _key(self, account: str) -> str:
        return f"{_PREFIX}:rate:{self.name}:{account}"

    def acquire(self, tokens: int, *, account: str) -> Booking:
        """Book one request of `tokens` tokens, sleeping until the window has room for it."""
        tokens = min(tokens, self.tokens_per_minute or tokens)
        window = self.window_seconds + self.margin_seconds
        key = self._key(account)
        args = [
            self.requests_per_minute or 0,
            self.tokens_per_minute or 0,
            round(window * 1000),
            tokens,
        ]
        link = self._link
        while link.usable():
            try:
                admitted, answer = self._book(keys=[key], args=[*args, secrets.token_hex(6)])
            except link.errors as error:
                link.failed(error)
                break
            link.worked()
            if admitted:
                member = answer.decode() if isinstance(answer, bytes) else answer
                return Booking(0.0, tokens, (key, member))
            time.sleep(min(float(answer) / 1000, window))
        if self.on_redis_error == "raise":
            problem = link.last_problem or "Redis failed a moment ago"
            raise APIConnectionError(
                f"the shared rate limit {self.name!r} cannot use Redis: {problem}"
            )
        return self._local.acquire(tokens)

    async def aacquire(self, tokens: int, *, account: str) -> Booking:
        """`acquire`, in a worker thread (it waits, and asks Redis)."""
        return await asyncio.to_thread(self.acquire, tokens, account=account)

    def settle(self, booking: Booking, used: int) -> None:
        """Rewrite a booking with the tokens the answer says it used (at most one window's)."""
        if booking.handle is None:  # booked in this process while Redis was away
            self._local.settle(booking, used)
            return
        key, member = booking.handle
        used = max(0, min(used, self.tokens_per_minute or used))
        if not self._link.usable():
            return
        try:
            self._correct(keys=[key], args=[member, used])
        except self._link.errors as error:
            self._link.failed(error)

    def cancel(self, booking: Booking) -> None:
        """Take back a booking whose request was never sent."""
        if booking.handle is None:
            self._local.cancel(booking)
            return
        key, member = booking.handle
        if not self._link.usable():
            return
        try:
            self._link.client.zrem(key, member)
        except self._link.errors as error:
            self._link.failed(error)


class _RedisValues:
    """Cached values in Redis: versioned, with a time to live; unreachable Redis is a miss."""

    def __init__(self, url: str, ttl: float | None, name: str, kind: str, timeout: float) -> None:
        self._link = _Link(
            url, timeout, f"{kind} cache {name!r}", then="going on without the cache"
        )
        self._prefix = f"{_PREFIX}:{kind}:{name}:".encode()
        self._ttl_ms = None if ttl is None else round(ttl * 1000)

    def get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        link = self._link
        if not keys or not link.usable():
            return [None] * len(keys)
        try:
            values = link.client.mget([self._prefix + key.hex().encode() for key in keys])
        except link.errors as error:
            link.failed(error)
            return [None] * len(keys)
        link.worked()
        return [v[len(_FORMAT) :] if v and v.startswith(_FORMAT) else None for v in values]

    def put(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        link = self._link
        if not keys or not link.usable():
            return
        try:
            with link.client.pipeline(transaction=False) as pipe:
                for key, value in zip(keys, values, strict=True):
                    # One SET per value: each is stored whole or not at all.
                    pipe.set(self._prefix + key.hex().encode(), _FORMAT + value, px=self._ttl_ms)
                pipe.execute()
        except link.errors as error:
            link.failed(error)
            return
        link.worked()


class _RedisCache:
    """A `Cache` kept in Redis: values versioned, expiring after `ttl` seconds; unreachable Redis
    means no cache (a WARNING per outage), never a failed call. Pickled as its description."""

    _kind = ""

    def __init__(
        self, url: str, *, ttl: float | None = 86_400.0, name: str = "default", timeout: float = 0.5
    ) -> None:
        """Describe the cache; Redis is first asked on the first call.

        Raises:
            InvalidRequestError: A `ttl` or `timeout` that is not a number of seconds above 0
                (None keeps values until Redis evicts them).
        """
        if ttl is not None:
            checked_seconds("ttl", ttl)
        checked_seconds("timeout", timeout)
        self._arguments = {"url": url, "ttl": ttl, "name": name, "timeout": timeout}
        self._redis = _RedisValues(url, ttl, name, self._kind, timeout)
        self._lock = threading.Lock()
        self.hits = 0
        """Keys whose value was found."""
        self.misses = 0
        """Keys whose value was not found (or Redis could not be asked)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._arguments))

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        found = self._redis.get(keys)
        hits = sum(value is not None for value in found)
        with self._lock:
            self.hits += hits
            self.misses += len(found) - hits
        return found

    def set_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        self._redis.put([key for key, _ in items], [value for _, value in items])


class RedisRerankCache(_RedisCache):
    """A rerank score `Cache` kept in Redis, so replicas reuse each other's scores (same keys as
    `RerankCache`: digests of server, model, query, options and document)."""

    _kind = "scores"


class RedisEmbeddingCache(_RedisCache):
    """A vector `Cache` kept in Redis, so replicas reuse each other's vectors (same keys as
    `EmbeddingCache`)."""

    _kind = "vectors"
