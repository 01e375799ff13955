"""A budget of requests and tokens kept in Redis, shared by every process and host that names the
same Redis: each booking costs Redis the same whatever the budget's size.

Needs the `redis` package (the `redis` extra). When Redis cannot be reached, a process paces its
own calls at its share of the budget (the budget over the processes last seen sharing it),
starting from nothing; `on_redis_error="raise"` fails calls instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from ._exceptions import APIConnectionError, InvalidRequestError
from ._options import checked_count, checked_seconds
from ._protocols import Booking
from ._redis import _PREFIX, _Link, _rebuild
from ._redis_scripts import BOOK, CANCEL, SENT, SETTLE

__all__ = ["BudgetStats", "RedisRateLimit"]


@dataclass(frozen=True)
class BudgetStats:
    """What a shared budget has done in this process, and what it last saw in Redis.

    Attributes:
        bookings: Requests booked (in Redis or, during an outage, in this process).
        waits: Bookings that had to wait for room.
        waited_seconds: Seconds spent waiting for room, summed over the bookings.
        waiting: Calls waiting for room now.
        fallback: Whether calls are paced in this process because Redis cannot be used.
        sharers: Processes that booked in the budget's last window, as Redis last said.
        requests_in_window: Requests in the window at the last booking (with it, when admitted).
        tokens_in_window: Tokens booked in the window at the last booking.
    """

    bookings: int = 0
    waits: int = 0
    waited_seconds: float = 0.0
    waiting: int = 0
    fallback: bool = False
    sharers: int = 1
    requests_in_window: int = 0
    tokens_in_window: int = 0


class _Paced:
    """This process's share of a budget while Redis is away: requests (and tokens) spaced evenly
    at `share` per window, the first a spacing after the outage began. No burst: no window ever
    holds more than the share."""

    def __init__(self, requests: float | None, tokens: float | None, window: float) -> None:
        self._request_gap = None if not requests else window / requests
        self._token_gap = None if not tokens else window / tokens
        self._lock = threading.Lock()
        now = time.monotonic()
        self._next_request = now
        self._next_token = now

    def acquire(self, tokens: int) -> Booking:
        with self._lock:
            now = time.monotonic()
            wait = 0.0
            if self._request_gap is not None:
                self._next_request = max(self._next_request, now) + self._request_gap
                wait = self._next_request - now
            if self._token_gap is not None:
                self._next_token = max(self._next_token, now) + tokens * self._token_gap
                wait = max(wait, self._next_token - now)
            return Booking(wait, tokens)

    def settle(self, booking: Booking, used: int) -> None:
        if self._token_gap is not None:
            with self._lock:
                self._next_token += (used - booking.tokens) * self._token_gap

    def cancel(self, booking: Booking) -> None:
        with self._lock:
            if self._request_gap is not None:
                self._next_request -= self._request_gap
            if self._token_gap is not None:
                self._next_token -= booking.tokens * self._token_gap


_LIMITS = (
    "requests_per_minute",
    "tokens_per_minute",
    "requests_per_hour",
    "requests_per_day",
    "tokens_per_day",
)
"""The limits a budget (or one model of it) can have, as SiliconFlow states them."""


class _Handle(NamedTuple):
    """A booking as the budget knows it: where it is kept, and the model's token cap (the
    settlement's ceiling); `keys` is None for one made in this process while Redis was away."""

    keys: list[str] | None
    id: str | None
    cap: int | None
    model: str | None = None


class _Plan(NamedTuple):
    """How one model's requests are booked: the script's keys and arguments but for a booking's
    own tokens and id."""

    keys: list[str]
    windows: list[int]
    """(max requests, max tokens, window ms) for each window, flat."""
    token_cap: int | None
    """The smallest token limit: no booking is larger."""
    limits: dict[str, int | None]


class RedisRateLimit:
    """A `Budget` of requests and tokens, kept in Redis and shared by every client, process and
    host that names the same Redis, budget `name` and API key; by default one budget per model,
    as SiliconFlow's limits are per account and model.

    Never more than `requests_per_minute` requests (and `tokens_per_minute` estimated tokens,
    corrected by the usage each answer reports) in any `window_seconds`, nor more than the hour's
    and the day's limits when given, counted by Redis's clock, atomically in one script whose
    cost does not grow with the budget. A request counts from when it went on the wire (the
    client calls `sent`); a booking whose request has not gone yet counts whatever its age.
    Budgets are kept per API key (a digest of it names the budget; the key itself never reaches
    Redis). Waiting for room holds no thread in the async client. Pass it as `rate_limit=` to
    a client or an adapter; `stats` says what it has done, and `on_booking` is called with the
    same after each booking.
    """

    def __init__(
        self,
        url: str,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        requests_per_hour: int | None = None,
        requests_per_day: int | None = None,
        tokens_per_day: int | None = None,
        models: Mapping[str, Mapping[str, int | None]] | None = None,
        per_model: bool = True,
        name: str = "default",
        window_seconds: float = 60.0,
        margin_seconds: float = 0.5,
        on_redis_error: Literal["local", "raise"] = "local",
        timeout: float = 0.5,
        on_booking: Callable[[BudgetStats], object] | None = None,
    ) -> None:
        """Describe the budget; Redis is first asked on the first call.

        Args:
            url: The Redis URL, e.g. `redis://cache.internal:6379/0` (`rediss://` for TLS, with
                a password in the URL or not).
            requests_per_minute: Requests per window (`window_seconds`), or None for no limit.
            tokens_per_minute: Tokens per window, or None for no limit.
            requests_per_hour: Requests per hour, or None.
            requests_per_day: Requests per day, or None.
            tokens_per_day: Tokens per day, or None.
            models: Limits of particular models, by model name, over the ones above, e.g.
                `{"Qwen/Qwen3-Reranker-8B": {"requests_per_minute": 1000}}` (None lifts one).
            per_model: Keep one budget per model (as the service counts), or one for all.
            name: The budget's name: clients naming the same one share it.
            window_seconds: The window the per-minute limits count over (a minute, as the
                service counts; shorter in tests).
            margin_seconds: Added to every window when counting: a request counts from when
                it went on the wire, and reaches the service's count a moment later; the margin
                keeps the service's window from seeing an old request and a new one together.
            on_redis_error: `"local"` paces calls in this process at its share of the budget
                while Redis cannot be used; `"raise"` fails the call with `APIConnectionError`.
            timeout: Seconds to wait for Redis before counting it as unreachable.
            on_booking: Called with the budget's `BudgetStats` after each booking (to export
                them as metrics, say); an exception it raises is not caught.
        """
        limits: dict[str, int | None] = {
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "requests_per_hour": requests_per_hour,
            "requests_per_day": requests_per_day,
            "tokens_per_day": tokens_per_day,
        }
        self._arguments: dict[str, Any] = {
            "url": url,
            **limits,
            "models": None if models is None else {m: dict(v) for m, v in models.items()},
            "per_model": per_model,
            "name": name,
            "window_seconds": window_seconds,
            "margin_seconds": margin_seconds,
            "on_redis_error": on_redis_error,
            "timeout": timeout,
            "on_booking": on_booking,
        }
        _check_limits(limits, "")
        if all(value is None for value in limits.values()) and not models:
            raise InvalidRequestError(
                "RedisRateLimit needs requests_per_minute or tokens_per_minute (or another limit)"
            )
        for model, overrides in (models or {}).items():
            unknown = set(overrides) - set(_LIMITS)
            if unknown:
                raise InvalidRequestError(
                    f"models[{model!r}] has no limit {sorted(unknown)[0]!r} (limits: "
                    f"{', '.join(_LIMITS)})"
                )
            _check_limits(overrides, f"models[{model!r}].")
        checked_seconds("window_seconds", window_seconds)
        checked_seconds("margin_seconds", margin_seconds, zero=True)
        checked_seconds("timeout", timeout)
        if on_redis_error not in ("local", "raise"):
            raise InvalidRequestError("on_redis_error must be 'local' or 'raise'")
        if on_booking is not None and not callable(on_booking):
            raise InvalidRequestError("on_booking must be callable")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.limits = limits
        self.models = dict(self._arguments["models"] or {})
        self.per_model = per_model
        self.name = name
        self.window_seconds = window_seconds
        self.margin_seconds = margin_seconds
        self.on_redis_error = on_redis_error
        self.on_booking = on_booking
        then = (
            "failing calls until it works again"
            if on_redis_error == "raise"
            else "pacing calls in this process at its share of the budget until it works again"
        )
        self._link = _Link(url, timeout, f"rate limit {name!r}", then=then)
        self._process = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lock = threading.Lock()
        self._stats = BudgetStats()
        self._paced: dict[str | None, _Paced] = {}
        self._threads: ThreadPoolExecutor | None = None
        self._threads_pid = 0

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v}" for k, v in self.limits.items() if v is not None)
        return f"RedisRateLimit(name={self.name!r}, {given}, window_seconds={self.window_seconds})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its description (the budget is in Redis): for worker processes and actors.
        return (_rebuild, (type(self), self._arguments))

    @property
    def stats(self) -> BudgetStats:
        """What the budget has done in this process (a snapshot)."""
        return self._stats

    def _plan(self, account: str, model: str | None) -> _Plan:
        limits = dict(self.limits)
        if model is not None:
            limits.update(self.models.get(model, {}))
        # The braces make Redis Cluster keep every key of the budget in one slot.
        owner = f"{self.name}:{account}" + (f":{model}" if self.per_model and model else "")
        base = f"{_PREFIX}:rate:{{{owner}}}"
        spans = [
            ("m", limits["requests_per_minute"], limits["tokens_per_minute"], self.window_seconds),
            ("h", limits["requests_per_hour"], None, 3600.0),
            ("d", limits["requests_per_day"], limits["tokens_per_day"], 86400.0),
        ]
        keys, windows = [f"{base}:clock", f"{base}:sharers"], []
        for suffix, requests, tokens, seconds in spans:
            if suffix == "m" or requests or tokens:  # the minute's window counts the sharers
                keys += [f"{base}:{suffix}:log", f"{base}:{suffix}:tokens", f"{base}:{suffix}:sum"]
                windows += [requests or 0, tokens or 0, self._span_ms(seconds)]
        caps = [v for v in (limits["tokens_per_minute"], limits["tokens_per_day"]) if v]
        return _Plan(keys, windows, min(caps) if caps else None, limits)

    def _span_ms(self, seconds: float) -> int:
        """A window's span in Redis, margin included. The minute's is also how long a booking
        counts while its request is not known to be sent (the scripts take it as `unsent`)."""
        return round((seconds + self.margin_seconds) * 1000)

    def _note(self, **changes: Any) -> None:
        with self._lock:
            old = self._stats
            new = self._stats = dataclasses.replace(
                old,
                **{n: getattr(old, n) + v if n in _ADDED else v for n, v in changes.items()},
            )
        if self.on_booking is not None and "bookings" in changes:
            self.on_booking(new)  # this booking's snapshot, whatever other threads do next

    def _answered(
        self, answer: Any, plan: _Plan, tokens: int, waited: float
    ) -> Booking | float | None:
        """The booking the script made, or the seconds to wait before asking again, or None
        when Redis could not be asked."""
        if answer is None:
            return None
        admitted, detail, sharers, count, used = answer
        self._note(
            fallback=False, sharers=max(int(sharers), 1), requests_in_window=int(count),
            tokens_in_window=int(used),
        )  # fmt: skip
        if not admitted:
            return min(float(detail) / 1000, self.window_seconds + self.margin_seconds)
        member = detail.decode() if isinstance(detail, bytes) else str(detail)
        with self._lock:
            self._paced.clear()  # Redis works: an outage starts its share from nothing again
        self._note(bookings=1, waits=waited > 0, waited_seconds=waited)
        return Booking(0.0, tokens, _Handle(plan.keys, member.split(":", 1)[1], plan.token_cap))

    def _fallback(self, tokens: int, plan: _Plan, model: str | None) -> Booking:
        if self.on_redis_error == "raise":
            problem = self._link.last_problem or "Redis failed a moment ago"
            raise APIConnectionError(
                f"the shared rate limit {self.name!r} cannot use Redis: {problem}"
            )
        with self._lock:
            paced = self._paced.get(model)
            if paced is None:
                share = max(self._stats.sharers, 1)
                requests, tokens_limit = (
                    plan.limits["requests_per_minute"],
                    plan.limits["tokens_per_minute"],
                )
                paced = self._paced[model] = _Paced(
                    requests and requests / share,
                    tokens_limit and tokens_limit / share,
                    self.window_seconds + self.margin_seconds,
                )
        booking = paced.acquire(tokens)
        booking = Booking(booking.wait, booking.tokens, _Handle(None, None, None, model))
        self._note(fallback=True, bookings=1, waits=booking.wait > 0)
        return booking

    def _args(self, plan: _Plan, tokens: int) -> list[Any]:
        return [tokens, secrets.token_hex(6), self._process, *plan.windows]

    def acquire(self, tokens: int, *, account: str, model: str | None = None) -> Booking:
        """Book one request of `tokens` tokens for `model`, sleeping until every window has
        room for it."""
        plan = self._plan(account, model)
        tokens = min(tokens, plan.token_cap or tokens)
        waited = 0.0
        self._note(waiting=1)
        try:
            while self._link.usable():
                answer = self._ask(plan.keys, self._args(plan, tokens))
                outcome = self._answered(answer, plan, tokens, waited)
                if outcome is None:
                    break
                if isinstance(outcome, Booking):
                    return outcome
                time.sleep(outcome)
                waited += outcome
        finally:
            self._note(waiting=-1)
        return self._fallback(tokens, plan, model)

    async def aacquire(self, tokens: int, *, account: str, model: str | None = None) -> Booking:
        """`acquire` for the event loop: Redis is asked in the budget's own threads (never the
        loop's default executor), and waits for room are slept on the loop, holding no thread. A
        call cancelled while it waits books nothing; one cancelled while Redis books it gives
        the booking back."""
        plan = self._plan(account, model)
        tokens = min(tokens, plan.token_cap or tokens)
        loop = asyncio.get_running_loop()
        waited = 0.0
        self._note(waiting=1)
        try:
            while self._link.usable():
                args = self._args(plan, tokens)
                asked = loop.run_in_executor(self._executor(), self._ask, plan.keys, args)
                try:
                    answer = await asked
                except asyncio.CancelledError:
                    # Redis may book it all the same: given back once it has.
                    handle = _Handle(plan.keys, args[1], plan.token_cap)
                    asked.add_done_callback(functools.partial(self._give_back, handle))
                    raise
                outcome = self._answered(answer, plan, tokens, waited)
                if outcome is None:
                    break
                if isinstance(outcome, Booking):
                    return outcome
                await asyncio.sleep(outcome)
                waited += outcome
        finally:
            self._note(waiting=-1)
        return self._fallback(tokens, plan, model)

    def _ask(self, keys: list[str], args: list[Any]) -> Any:
        """The booking script's answer, or None when Redis failed (counted as an outage)."""
        link = self._link
        try:
            answer = link.run(BOOK, keys, args)
        except link.errors as error:
            link.failed(error)
            return None
        link.worked()
        return answer

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            pid = os.getpid()
            if self._threads is None or self._threads_pid != pid:  # none made in this process
                self._threads = ThreadPoolExecutor(4, thread_name_prefix="siliconflow-redis")
                self._threads_pid = pid
            return self._threads

    def _give_back(self, handle: _Handle, asked: object) -> None:
        """Cancel a booking Redis may have made for a call cancelled meanwhile (`asked`: the
        finished question; the cancel asks Redis too, so it runs in a budget thread)."""
        self._executor().submit(self.cancel, Booking(0.0, 0, handle))

    def _paced_for(self, booking: Booking) -> _Paced | None:
        with self._lock:
            return self._paced.get(booking.handle.model)

    def sent(self, booking: Booking) -> None:
        """Count `booking` in its windows from now on: its request has just gone on the wire
        (the client calls this). Redis is told from the budget's own thread: the request never
        waits for it."""
        handle: _Handle = booking.handle
        if handle.keys is not None:
            self._executor().submit(self._tell_sent, handle, time.monotonic())

    def _tell_sent(self, handle: _Handle, when: float) -> None:
        assert handle.keys is not None
        # Unsent in Redis's eyes (Redis away, say), it counts until it expires: never less.
        ago = round((time.monotonic() - when) * 1000)
        clock_ttl = self._span_ms(self.window_seconds) * 2
        self._run(SENT, [handle.keys[0], *handle.keys[2:]], [handle.id, ago, clock_ttl])

    def settle(self, booking: Booking, used: int) -> None:
        """Give a booking the tokens the answer says it used (at most its model's smallest
        token limit)."""
        handle: _Handle = booking.handle
        if handle.keys is None:  # booked in this process while Redis was away
            paced = self._paced_for(booking)
            if paced is not None:
                paced.settle(booking, used)
            return
        used = max(0, used if handle.cap is None else min(used, handle.cap))
        self._run(SETTLE, handle.keys[2:], [handle.id, used])

    def cancel(self, booking: Booking) -> None:
        """Take back a booking whose request was never sent."""
        handle: _Handle = booking.handle
        if handle.keys is None:
            paced = self._paced_for(booking)
            if paced is not None:
                paced.cancel(booking)
            return
        self._run(CANCEL, handle.keys[2:], [handle.id])

    def _run(self, script: str, keys: list[str], args: list[Any]) -> None:
        """Run a script whose answer does not matter; a failure counts as an outage."""
        if not self._link.usable():
            return
        try:
            self._link.run(script, keys, args)
        except self._link.errors as error:
            self._link.failed(error)


def _check_limits(limits: Mapping[str, int | None], where: str) -> None:
    for limit, value in limits.items():
        if value is not None:
            checked_count(f"{where}{limit}", value, 1)


_ADDED = {"bookings", "waits", "waited_seconds", "waiting"}
"""`BudgetStats` fields that count up (the others are the latest value)."""
