"""When to retry a rerank request and how long to wait: pure functions, plus the policy value."""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from ._exceptions import APIConnectionError, APIStatusError, SiliconFlowError

__all__ = ["RetryPolicy", "is_retryable", "retry_after_seconds", "retry_delay"]

_RETRY_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """How a client waits between attempts. The number of attempts is the client's `max_retries`.

    Attributes:
        initial_delay: Backoff before the first retry, in seconds; doubles on each further retry.
        max_delay: Cap on the exponential backoff.
        max_retry_after: Cap on a server-requested wait (`Retry-After`, `retry-after-ms`).
        jitter: Fraction of the backoff taken off at random, so that clients do not retry in step.
        sleep: How the sync client waits (injectable for tests and custom schedulers).
        async_sleep: How the async client waits.
    """

    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    jitter: float = 0.25
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    async_sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)


def is_retryable(error: SiliconFlowError) -> bool:
    """Whether an attempt that failed with `error` is worth repeating.

    Connection errors, timeouts, 408, 429 and 5xx are transient; everything else would fail again.
    """
    if isinstance(error, APIConnectionError):
        return True
    if isinstance(error, APIStatusError):
        return error.status_code in _RETRY_STATUSES or error.status_code >= 500
    return False


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Read a server-requested wait from `retry-after-ms` or `Retry-After` (seconds or HTTP date).

    Returns:
        The wait in seconds (never negative), or None when the headers ask for nothing usable.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        seconds = _plausible(raw_ms, 1000.0)
        if seconds is not None:
            return seconds
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    if _NUMBER.match(raw.strip()):
        return _plausible(raw, 1.0)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_LONGEST_PLAUSIBLE_WAIT = 86_400.0
"""A wait longer than a day is no answer a client should act on: treated as absent."""


def _plausible(raw: str, per_second: float) -> float | None:
    """A wait in seconds from a number header, or None for what no server means (NaN, inf, words,
    more than a day)."""
    try:
        seconds = float(raw) / per_second
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds > _LONGEST_PLAUSIBLE_WAIT:
        return None
    return max(seconds, 0.0)


def retry_delay(
    attempt: int,
    policy: RetryPolicy,
    *,
    headers: Mapping[str, str] | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt + 1` (attempt 0 is the first retry).

    A server-requested wait wins, capped at `policy.max_retry_after`; otherwise exponential backoff
    from `policy.initial_delay`, capped at `policy.max_delay`, less up to `policy.jitter` of itself.
    """
    if headers:
        requested = retry_after_seconds(headers)
        if requested is not None:
            return min(requested, policy.max_retry_after)
    backoff = min(policy.initial_delay * (2.0**attempt), policy.max_delay)
    return backoff * (1.0 - policy.jitter * rand())
