"""The in-memory caches: thread-safe LRUs of values by key, implementing the `Cache` protocol."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["EmbeddingCache", "MemoryCache", "RerankCache"]


class MemoryCache:
    """A thread-safe LRU of values by key, with hit counters: a `Cache` in this process."""

    default_max_bytes: int | None = None
    """The memory bound when none is given (None: bounded by `maxsize` alone)."""

    def __init__(self, maxsize: int = 100_000, *, max_bytes: int | None = None) -> None:
        """Create an empty cache holding at most `maxsize` values, and values of at most
        `max_bytes` in all (the class's default when None)."""
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError("maxsize must be an integer >= 1")
        max_bytes = self.default_max_bytes if max_bytes is None else max_bytes
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
        ):
            raise ValueError("max_bytes must be an integer >= 1")
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        """The most bytes of values held at once (None: no bound but `maxsize`)."""
        self._bytes = 0
        self.hits = 0
        """Keys whose value was found."""
        self.misses = 0
        """Keys whose value was not found."""
        self._values: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The value under each key, or None (each counted as a hit or a miss)."""
        found: list[bytes | None] = []
        with self._lock:
            for key in keys:
                value = self._values.get(key)
                if value is not None:
                    self._values.move_to_end(key)
                found.append(value)
            hits = sum(value is not None for value in found)
            self.hits += hits
            self.misses += len(found) - hits
        return found

    def set_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Store values, evicting the least recently used beyond `maxsize` values or
        `max_bytes` (a value larger than `max_bytes` alone is not stored)."""
        limit = self.max_bytes
        with self._lock:
            values = self._values
            for key, value in items:
                if limit is not None and len(value) > limit:
                    continue
                old = values.pop(key, None)
                if old is not None:
                    self._bytes -= len(old)
                values[key] = value
                self._bytes += len(value)
            while len(values) > self.maxsize or (limit is not None and self._bytes > limit):
                _, evicted = values.popitem(last=False)
                self._bytes -= len(evicted)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._values.clear()
            self._bytes = 0
            self.hits = 0
            self.misses = 0


class RerankCache(MemoryCache):
    """A thread-safe LRU of relevance scores, one entry per (query settings, document).

    Share one instance between clients (sync and async) to share hits. A call whose documents are
    all cached sends no request; a partial hit sends only the missing documents. Scores are cached
    as the server gave them, so a cached call returns what an uncached one would.
    """


class EmbeddingCache(MemoryCache):
    """A thread-safe LRU of embedding vectors, one entry per (model settings, input).

    Pass it to a client as `embedding_cache=` (one instance may serve several clients). A call
    whose inputs are all cached sends no request; otherwise only the missing inputs are sent.
    Vectors are kept as packed 8-byte floats, exactly as the server's answer decoded, so a cached
    call returns what an uncached one would, in a third of the memory of a list of floats; the
    cache holds at most 256 MiB of them unless given another `max_bytes`.
    """

    default_max_bytes = 256 * 1024 * 1024
