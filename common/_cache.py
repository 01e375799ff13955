"""Optional in-memory LRU caches of relevance scores and of embeddings, keyed on everything that
decides the value."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import pydantic_core

from ._media import InlineMedia, WireItem

__all__ = ["EmbeddingCache", "RerankCache", "embedding_key_prefix", "score_key_prefix"]


def score_key_prefix(base_url: str, body: dict[str, Any]) -> bytes:
    """Everything but the document that decides a score: server, model, query and score options."""
    decisive = {
        "base_url": base_url,
        "model": body["model"],
        "query": body["query"],
        "instruction": body.get("instruction"),
        "max_chunks_per_doc": body.get("max_chunks_per_doc"),
        "overlap_tokens": body.get("overlap_tokens"),
    }
    return pydantic_core.to_json(decisive, fallback=_media_key)


def embedding_key_prefix(base_url: str, body: dict[str, Any]) -> bytes:
    """Everything but the input that decides a vector: server, model, dimensions, and how the
    vector travels (JSON floats may carry digits that float32 bytes do not)."""
    decisive = {
        "base_url": base_url,
        "model": body["model"],
        "dimensions": body.get("dimensions"),
        "encoding_format": body.get("encoding_format"),
    }
    return pydantic_core.to_json(decisive)


def _media_key(value: Any) -> str:
    if isinstance(value, InlineMedia):
        return value.fingerprint()
    raise TypeError(f"cannot key {type(value).__name__}")


_Value = TypeVar("_Value")


class _LRUCache(Generic[_Value]):
    """A thread-safe LRU of values keyed by digests of (settings, input), with hit counters."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.hits = 0
        """Inputs whose value came from the cache."""
        self.misses = 0
        """Inputs whose value had to be asked for."""
        self._values: OrderedDict[bytes, _Value] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    @staticmethod
    def _key(prefix: bytes, item: WireItem) -> bytes:
        digest = hashlib.blake2b(prefix, digest_size=20)
        digest.update(b"\0")
        digest.update(pydantic_core.to_json(item, fallback=_media_key))
        return digest.digest()

    # A call keys its inputs once (hashing media reads whole files) and uses the keys for both
    # the lookup before sending and the store after the answers.

    def _lookup_keys(self, keys: Sequence[bytes]) -> list[_Value | None]:
        found: list[_Value | None] = []
        with self._lock:
            for key in keys:
                value = self._values.get(key)
                if value is not None:
                    self._values.move_to_end(key)
                found.append(value)
        return self._counted(found)

    def _counted(self, found: list[Any]) -> list[Any]:
        """`found` (None for a miss), once its hits and misses are counted."""
        with self._lock:
            hits = sum(value is not None for value in found)
            self.hits += hits
            self.misses += len(found) - hits
        return found

    def _store_keys(self, keys: Sequence[bytes], values: Sequence[_Value]) -> None:
        with self._lock:
            for key, value in zip(keys, values, strict=True):
                self._values[key] = value
                self._values.move_to_end(key)
            while len(self._values) > self.maxsize:
                self._values.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._values.clear()
            self.hits = 0
            self.misses = 0


class RerankCache(_LRUCache[float]):
    """A thread-safe LRU of relevance scores, one entry per (query settings, document).

    Share one instance between clients (sync and async) to share hits. A call whose documents are
    all cached sends no request; a partial hit sends only the missing documents. Scores are cached
    as the server gave them, so a cached call returns what an uncached one would.
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        """Create an empty cache holding at most `maxsize` scores."""
        super().__init__(maxsize)

    def lookup(self, prefix: bytes, documents: Sequence[WireItem]) -> list[float | None]:
        """The cached score of each document, or None where there is none (counted as a miss)."""
        return self._lookup_keys([self._key(prefix, d) for d in documents])

    def store(self, prefix: bytes, documents: Sequence[WireItem], scores: Sequence[float]) -> None:
        """Remember scores for documents, evicting the least recently used beyond `maxsize`."""
        self._store_keys([self._key(prefix, d) for d in documents], scores)


class EmbeddingCache(_LRUCache[bytes]):
    """A thread-safe LRU of embedding vectors, one entry per (model settings, input).

    Pass it to a client as `embedding_cache=` (one instance may serve several clients). A call
    whose inputs are all cached sends no request; otherwise only the missing inputs are sent.
    Vectors are kept as packed 8-byte floats, exactly as the server's answer decoded, so a cached
    call returns what an uncached one would, in a third of the memory of a list of floats.
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        """Create an empty cache holding at most `maxsize` vectors."""
        super().__init__(maxsize)
