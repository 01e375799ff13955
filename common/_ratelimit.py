"""The in-process budget: requests- and tokens-per-minute buckets shared by all calls of a
client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ._options import checked_count
from ._protocols import Booking

__all__ = ["InMemoryRateLimit"]


class InMemoryRateLimit:
    """A `Budget` in this process: requests-per-minute and tokens-per-minute buckets, safe to
    share across threads and tasks (and clients; `account` is not told apart).

    Each request books its share up front and is told how long to wait for it; the buckets refill
    continuously, so a steady stream is spread evenly instead of bursting and then stalling.
    """

    def __init__(
        self,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the buckets, full.

        Args:
            requests_per_minute: Request budget per minute, or None for no limit.
            tokens_per_minute: Token budget per minute, or None for no limit.
            clock: Monotonic seconds; injectable for tests.
        """
        for name, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None:
                checked_count(name, value, 1)
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._requests = float(requests_per_minute or 0)
        self._tokens = float(tokens_per_minute or 0)
        self._updated = clock()

    def _refill(self, now: float) -> None:
        elapsed = max(now - self._updated, 0.0)
        self._updated = now
        if self.requests_per_minute:
            self._requests = min(
                self._requests + elapsed * self.requests_per_minute / 60.0,
                float(self.requests_per_minute),
            )
        if self.tokens_per_minute:
            self._tokens = min(
                self._tokens + elapsed * self.tokens_per_minute / 60.0,
                float(self.tokens_per_minute),
            )

    def reserve(self, tokens: int) -> float:
        """Book one request of `tokens` tokens; return the seconds to wait before sending it."""
        with self._lock:
            self._refill(self._clock())
            wait = 0.0
            if self.requests_per_minute:
                self._requests -= 1
                if self._requests < 0:
                    wait = max(wait, -self._requests * 60.0 / self.requests_per_minute)
            if self.tokens_per_minute:
                # A request larger than the whole budget waits for one full window, not longer.
                self._tokens -= min(tokens, self.tokens_per_minute)
                self._tokens = max(self._tokens, -float(self.tokens_per_minute))
                if self._tokens < 0:
                    wait = max(wait, -self._tokens * 60.0 / self.tokens_per_minute)
            return wait

    def acquire(self, tokens: int, *, account: str = "", model: str | None = None) -> Booking:
        """Book one request of `tokens` tokens; never blocks (the wait is the caller's). One
        budget for every account and model."""
        return Booking(self.reserve(tokens), tokens)

    async def aacquire(
        self, tokens: int, *, account: str = "", model: str | None = None
    ) -> Booking:
        """`acquire`: it neither blocks nor does I/O."""
        return self.acquire(tokens, account=account, model=model)

    def settle(self, booking: Booking, used: int) -> None:
        """Correct the token bucket with what the request used."""
        self.correct(booking.tokens, used)

    def cancel(self, booking: Booking) -> None:
        """Give back what a request that was never sent booked."""
        with self._lock:
            if self.requests_per_minute:
                self._requests = min(self._requests + 1, float(self.requests_per_minute))
            if self.tokens_per_minute:
                tokens = self._tokens + min(booking.tokens, self.tokens_per_minute)
                self._tokens = min(tokens, float(self.tokens_per_minute))

    def correct(self, estimated: int, actual: int) -> None:
        """Adjust the token bucket once the server has said how many tokens a request used."""
        if not self.tokens_per_minute or actual < 0:
            return
        with self._lock:
            # One answer can cost at most one window of debt, whatever usage it claims (an answer
            # claiming 10^15 tokens must not stall every later call for ever).
            tokens = self._tokens + estimated - actual
            self._tokens = min(max(tokens, -float(self.tokens_per_minute)), self.tokens_per_minute)
