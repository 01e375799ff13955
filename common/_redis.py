"""Caches shared through Redis by every process and host that names the same Redis, and the link
to Redis that they and the shared budget (`_redis_budget`) use.

Needs the `redis` package (the `redis` extra), imported only when one of these is made. Whatever
Redis does, calls go on: when it cannot be reached, the caches work as no cache, with one WARNING
per outage and an INFO when Redis is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from ._options import checked_seconds

__all__ = ["RedisEmbeddingCache", "RedisRerankCache"]

logger = logging.getLogger("siliconflow_rerank")

_PREFIX = "siliconflow-rerank"
_FORMAT = b"v2:"
"""Every cached value starts with its format's version: a value of another format is a miss."""


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
        redis = self._redis = _redis_module()
        cluster_error = redis.exceptions.RedisClusterException
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, cluster_error, OSError)
        self._unreachable = (redis.ConnectionError, redis.TimeoutError, OSError)
        self._url, self._timeout = url, timeout
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self.cluster = False
        """Whether the server is a Redis Cluster (known once the client is made)."""
        self.what = what
        self.then = then
        """What calls do while Redis fails (for the WARNING)."""
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down = False
        self.last_problem = ""
        """What went wrong the last time Redis failed, in words."""

    @property
    def client(self) -> Any:
        """The client, made on first use (no I/O before the first call): a cluster client when
        the server says it is a Redis Cluster node, else a plain one.

        Raises:
            The link's `errors`: Redis could not be asked.
        """
        with self._lock:
            if self._client is None:
                redis, url = self._redis, self._url
                timeouts = {
                    "socket_timeout": self._timeout,
                    "socket_connect_timeout": self._timeout,
                }
                plain = redis.Redis.from_url(url, **timeouts)
                if plain.info("cluster").get("cluster_enabled"):
                    plain.close()
                    self._client = redis.RedisCluster.from_url(url, **timeouts)
                    self.cluster = True
                else:
                    self._client = plain
            return self._client

    def run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a Lua script (loaded once) on the keys' node."""
        client = self.client
        with self._lock:
            registered = self._scripts.get(script)
            if registered is None:
                registered = self._scripts[script] = client.register_script(script)
        return registered(keys=keys, args=args)

    def usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def describe(self, error: BaseException) -> str:
        """What happened: Redis could not be reached, or it answered with an error (a key of
        another type, a script it refused, ...)."""
        if isinstance(error, self._redis.AuthenticationError):
            return f"Redis refused the credentials ({type(error).__name__}: {error})"
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
            client, names = link.client, [self._prefix + key.hex().encode() for key in keys]
            # A cluster keeps keys on several nodes: asked node by node, in one call.
            values = client.mget_nonatomic(names) if link.cluster else client.mget(names)
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
