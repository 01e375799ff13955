"""Per-call options: what every endpoint's options object shares, and the cache keys derived
from it.

An endpoint declares its options once, as a frozen dataclass checked in `__post_init__`. Every
field decides the answer, and so goes into the cache key, unless its declaration says otherwise
(`field(metadata=NOT_IN_CACHE_KEY)`): a new option can never be served from another option's
cache entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import pydantic_core

from ._exceptions import InvalidRequestError
from ._media import InlineMedia, WireItem

__all__ = [
    "NOT_IN_CACHE_KEY",
    "cache_keys",
    "checked_count",
    "checked_number",
    "checked_seconds",
    "decisive",
    "key_prefix",
]

NOT_IN_CACHE_KEY = {"cache_key": False}
"""Field metadata of an option that does not change any cached value (e.g. `top_n`)."""


def decisive(options: Any) -> dict[str, Any]:
    """The fields of an options dataclass that decide a cached value, by name."""
    return {
        field.name: getattr(options, field.name)
        for field in dataclasses.fields(options)
        if field.metadata.get("cache_key", True)
    }


def key_prefix(path: str, pipeline: Any, options: Any, **inputs: Any) -> bytes:
    """Everything but the item that decides a cached value: the endpoint, the server, the
    account (unless the client shares its cache across keys), the deciding options, and the
    call's other inputs (rerank's query)."""
    shared = pipeline.settings.share_cache_across_keys
    decided = {
        "endpoint": path,
        "base_url": pipeline.base_url,
        "account": None if shared else pipeline.account,
        **decisive(options),
        **inputs,
    }
    return pydantic_core.to_json(decided, fallback=_media_key)


def cache_keys(prefix: bytes, items: Sequence[WireItem]) -> list[bytes]:
    """The cache key of each item under `prefix` (media keyed by their content's digest)."""
    keys = []
    for item in items:
        digest = hashlib.blake2b(prefix, digest_size=20)
        digest.update(b"\0")
        digest.update(pydantic_core.to_json(item, fallback=_media_key))
        keys.append(digest.digest())
    return keys


def _media_key(value: Any) -> str:
    if isinstance(value, InlineMedia):
        return value.fingerprint()
    raise TypeError(f"cannot key {type(value).__name__}")


def checked_count(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """`value` if it is an integer in range (None is the caller's to allow).

    Raises:
        InvalidRequestError: Naming the option and the allowed range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise InvalidRequestError(f"{name} must be {allowed}, got {value}")
    return value


def checked_number(name: str, value: object) -> float:
    """`value` if it is a finite number.

    Raises:
        InvalidRequestError: Naming the option.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def checked_seconds(name: str, value: object, *, zero: bool = False) -> float:
    """`value` as seconds if it is a finite number above 0 (or 0 too, when `zero`).

    Raises:
        InvalidRequestError: Naming the setting.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        relation = ">= 0" if zero else "> 0"
        raise InvalidRequestError(
            f"{name} must be a finite number of seconds {relation}, got {value!r}"
        )
    return float(value)
