"""An optional in-memory LRU cache of relevance scores, keyed on everything that decides a score."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import pydantic_core

from ._media import InlineMedia, WireItem

__all__ = ["RerankCache", "score_key_prefix"]


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


def _media_key(value: Any) -> str:
    if isinstance(value, InlineMedia):
        return value.fingerprint()
    raise TypeError(f"cannot key {type(value).__name__}")


class RerankCache:
    """A thread-safe LRU of relevance scores, one entry per (query settings, document).

    Share one instance between clients (sync and async) to share hits. A call whose documents are
    all cached sends no request; a partial hit sends only the missing documents. Scores are cached
    as the server gave them, so a cached call returns what an uncached one would.
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        """Create an empty cache holding at most `maxsize` scores."""
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.hits = 0
        """Documents whose score came from the cache."""
        self.misses = 0
        """Documents whose score had to be asked for."""
        self._scores: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._scores)

    @staticmethod
    def _key(prefix: bytes, document: WireItem) -> bytes:
        digest = hashlib.blake2b(prefix, digest_size=20)
        digest.update(b"\0")
        digest.update(pydantic_core.to_json(document, fallback=_media_key))
        return digest.digest()

    def lookup(self, prefix: bytes, documents: Sequence[WireItem]) -> list[float | None]:
        """The cached score of each document, or None where there is none (counted as a miss)."""
        return self._lookup_keys([self._key(prefix, d) for d in documents])

    def store(self, prefix: bytes, documents: Sequence[WireItem], scores: Sequence[float]) -> None:
        """Remember scores for documents, evicting the least recently used beyond `maxsize`."""
        self._store_keys([self._key(prefix, d) for d in documents], scores)

    # A call keys its documents once (hashing media reads whole files) and uses the keys for both
    # the lookup before sending and the store after the answers.

    def _lookup_keys(self, keys: Sequence[bytes]) -> list[float | None]:
        found: list[float | None] = []
        with self._lock:
            for key in keys:
                score = self._scores.get(key)
                if score is not None:
                    self._scores.move_to_end(key)
                found.append(score)
            hits = sum(score is not None for score in found)
            self.hits += hits
            self.misses += len(found) - hits
        return found

    def _store_keys(self, keys: Sequence[bytes], scores: Sequence[float]) -> None:
        with self._lock:
            for key, score in zip(keys, scores, strict=True):
                self._scores[key] = score
                self._scores.move_to_end(key)
            while len(self._scores) > self.maxsize:
                self._scores.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._scores.clear()
            self.hits = 0
            self.misses = 0
