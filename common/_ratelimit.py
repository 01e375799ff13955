"""The in-process budget: requests- and tokens-per-minute over a sliding window, shared by all
calls of a client."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from ._options import checked_count, checked_seconds
from ._protocols import Booking

__all__ = ["InMemoryRateLimit"]


class InMemoryRateLimit:
    """A `Budget` in this process: at most `requests_per_minute` requests, and
    `tokens_per_minute` (estimated, then reported) tokens, in any window of a minute; safe to
    share across threads and tasks (and clients; `account` is not told apart).

    Each request is booked at the earliest moment that keeps every window within the budget,
    and told how long to wait for it: the same rule as the service's (and `RedisRateLimit`'s).
    A bucket that starts full and refills would let twice the budget through in the first
    minute, and after every idle minute.
    """

    def __init__(
        self,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        *,
        window_seconds: float = 60.0,
        margin_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create an empty budget.

        Args:
            requests_per_minute: Requests per window, or None for no limit.
            tokens_per_minute: Tokens per window, or None for no limit.
            window_seconds: The window (a minute, as the service counts).
            margin_seconds: Counted as part of the window: a request arrives a little after
                it is booked, and the service's window is measured at arrival (as
                `RedisRateLimit`'s margin).
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
        self.window = checked_seconds("window_seconds", window_seconds) + checked_seconds(
            "margin_seconds", margin_seconds, zero=True
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._log: deque[list[float]] = deque()
        """[time, tokens, counted] of each booking in the window (or booked for later), in
        time order; `counted` is 0 once it has left the log's totals."""
        self._tokens = 0.0
        """The tokens of every booking in the log."""

    def _forget(self, now: float) -> None:
        log, edge = self._log, now - self.window
        while log and log[0][0] <= edge:
            entry = log.popleft()
            self._tokens -= entry[1]
            entry[2] = 0

    def _book(self, tokens: int) -> list[float]:
        now = self._clock()
        self._forget(now)
        log = self._log
        at = max(now, log[-1][0]) if log else now  # first come, first served
        limit = self.requests_per_minute
        if limit and len(log) >= limit:
            # The limit-th latest booking must have left the window.
            at = max(at, log[-limit][0] + self.window)
        cap = self.tokens_per_minute
        if cap:
            # A request larger than the whole budget waits for an empty window, not longer.
            tokens = min(tokens, cap)
            left = self._tokens
            for entry in log:  # only when the window is too full: walk the oldest out
                if left + tokens <= cap:
                    break
                left -= entry[1]
                at = max(at, entry[0] + self.window)
        entry = [at, float(tokens), 1.0]
        log.append(entry)
        self._tokens += tokens
        return entry

    def reserve(self, tokens: int) -> float:
        """Book one request of `tokens` tokens; return the seconds to wait before sending it."""
        with self._lock:
            entry = self._book(tokens)
            return max(entry[0] - self._clock(), 0.0)

    def acquire(self, tokens: int, *, account: str = "", model: str | None = None) -> Booking:
        """Book one request of `tokens` tokens; never blocks (the wait is the caller's). One
        budget for every account and model."""
        with self._lock:
            entry = self._book(tokens)
            return Booking(max(entry[0] - self._clock(), 0.0), tokens, entry)

    async def aacquire(
        self, tokens: int, *, account: str = "", model: str | None = None
    ) -> Booking:
        """`acquire`: it neither blocks nor does I/O."""
        return self.acquire(tokens, account=account, model=model)

    def settle(self, booking: Booking, used: int) -> None:
        """Count what the request used instead of its estimate (at most one window's worth:
        a broken usage report cannot stall the budget for longer)."""
        if not self.tokens_per_minute or used < 0 or not isinstance(booking.handle, list):
            return
        with self._lock:
            entry = booking.handle
            if entry[2]:
                used_tokens = float(min(used, self.tokens_per_minute))
                self._tokens += used_tokens - entry[1]
                entry[1] = used_tokens

    def cancel(self, booking: Booking) -> None:
        """Give back what a request that was never sent booked: the latest booking is taken
        out; an earlier one keeps its request counted (a later one was booked behind it) but
        gives back its tokens."""
        if not isinstance(booking.handle, list):
            return
        with self._lock:
            entry = booking.handle
            if not entry[2]:
                return
            self._tokens -= entry[1]
            entry[1] = 0.0
            if self._log and self._log[-1] is entry:
                self._log.pop()
                entry[2] = 0
