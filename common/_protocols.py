"""The interfaces users plug their own parts into: caches of answers, and request budgets.

A client takes any object with these methods (`cache=`, `embedding_cache=`, `rate_limit=`); the
in-memory classes (`RerankCache`, `EmbeddingCache`, `InMemoryRateLimit`) and the Redis classes
are two implementations each. See `docs/architecture.md` for a worked example of each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Booking", "Budget", "Cache"]


@runtime_checkable
class Cache(Protocol):
    """Values by key: what the client stores of earlier answers (scores, vectors).

    Keys are digests (20 bytes) of everything that decides the value (see `docs/architecture.md`);
    values are opaque bytes. The client checks every value it gets as it checks a live answer, so
    a cache may return anything: a value that fails the checks is treated as a miss.
    Implementations must be safe to call from several threads.
    """

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The value stored under each key, or None where there is none (or it cannot be read)."""
        ...

    def set_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Store `(key, value)` pairs; failing to store is not an error the call sees."""
        ...


@dataclass(frozen=True, slots=True)
class Booking:
    """One request booked in a budget.

    Attributes:
        wait: Seconds the request must wait before it is sent (0 to send at once).
        tokens: The tokens booked (the client's estimate).
        handle: The budget's own record of the booking, passed back to `settle` or `cancel`.
    """

    wait: float
    tokens: int
    handle: Any = None


@runtime_checkable
class Budget(Protocol):
    """A budget of requests and tokens that every request of a client books before it is sent.

    `acquire` books one request of an estimated number of tokens; the client waits the booking's
    `wait`, sends, and then either `settle`s it with the tokens the answer reports, or `cancel`s
    it when nothing was sent. `account` partitions one budget object among API keys (a digest of
    the server and key, never the key); `model` is the request's model, for budgets kept per
    model as the service keeps its limits (a budget whose `acquire` has no `model` parameter is
    called without it). A budget may also have `sent(booking)`: the client then calls it once
    per booking, as soon as its request is written (or when the attempt ends, if the transport
    could not tell), from the sending thread or the event loop, so it must not block.
    Implementations must be safe to call from several threads.
    """

    def acquire(self, tokens: int, *, account: str, model: str | None = None) -> Booking:
        """Book one request; may block (a shared budget waits here for room)."""
        ...

    async def aacquire(self, tokens: int, *, account: str, model: str | None = None) -> Booking:
        """`acquire` for the async client: never blocks the event loop."""
        ...

    def settle(self, booking: Booking, used: int) -> None:
        """Correct a booking with the tokens the answer says the request used."""
        ...

    def cancel(self, booking: Booking) -> None:
        """Give back a booking whose request was not sent."""
        ...
