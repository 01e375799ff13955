"""The async client's I/O: a transport per event loop, and the loops that send a plan's
requests as tasks."""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx

from ._client_base import POOL_OWNERS, ClientBase
from ._exceptions import SiliconFlowError
from ._pipeline import (
    AnswerBody,
    Part,
    Pipeline,
    Plan,
    Request,
    async_body,
    closed_in_flight,
    past_deadline,
    within,
)
from ._pools import open_async_transport
from ._settings import ClientSettings
from ._transport import (
    AsyncHttpxTransport,
    AsyncTransport,
    Sent,
    is_deadline,
    translate_transport_errors,
)

__all__ = ["AsyncClientBase", "async_method"]

_P = ParamSpec("_P")
_Answer = TypeVar("_Answer")
_Part = TypeVar("_Part", bound=Part)
_ASelf = TypeVar("_ASelf", bound="AsyncClientBase")


_AsyncPool = tuple[AsyncTransport, AsyncGenerator[None, None]]


class AsyncClientBase(ClientBase):
    """The async client's I/O: a transport per event loop, and the loops that send a plan."""

    def __init__(
        self,
        settings: ClientSettings,
        http_client: httpx.AsyncClient | None = None,
        pipeline: Pipeline | None = None,
    ) -> None:
        super().__init__(settings, pipeline)
        pipe = self._pipeline
        self._borrowed = (
            None
            if http_client is None
            else AsyncHttpxTransport(http_client, pipe.headers, pipe.timeout, owned=False)
        )
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncPool] = (
            weakref.WeakKeyDictionary()
        )
        self._pools_lock = threading.Lock()

    async def _transport(self) -> AsyncTransport:
        if self._borrowed is not None:
            return self._borrowed
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is not None:
            return pool[0]
        # Pooled connections belong to the loop that opened them, so each loop gets its own pool
        # (threads that each call asyncio.run() share a client safely), and a pool closes when
        # its loop shuts down.
        pipe = self._pipeline
        transport, guard = await open_async_transport(
            pipe.root, pipe.headers, pipe.timeout, pipe.limits(), pipe.tells_sent
        )
        with self._pools_lock:
            pool = self._pools.setdefault(loop, (transport, guard))
        POOL_OWNERS.add(self)
        if pool[0] is not transport:  # another task of this loop opened one first
            await guard.aclose()
        return pool[0]

    def _forget_pool(self) -> None:
        # In a forked child: the inherited pools' sockets are the parent's; start afresh.
        self._pools_lock = threading.Lock()
        self._pools = weakref.WeakKeyDictionary()

    async def _send(self, plan: Plan[Any, _Part, Any], number: int) -> _Part:
        """Request `number` of `plan`, with its retries: its answer's part of the call."""
        pipe = self._pipeline
        request = plan.request(number)
        url = pipe.url(plan.path)
        attempt = 0
        while True:
            transport = await self._transport()  # before the booking, as in the sync client
            booking = await pipe.abook(request)
            if booking is not None and booking.wait > 0:
                try:
                    await pipe.retry_policy.async_sleep(booking.wait)
                except asyncio.CancelledError:
                    pipe.cancel(booking)  # never sent: what it booked is given back
                    raise
            try:
                with translate_transport_errors(url), pipe.on_the_wire(booking) as sent:
                    status, headers, content = await self._exchange(transport, url, request, sent)
                return pipe.handle(status, headers, content, request, plan, booking)
            except SiliconFlowError as error:
                if transport.is_closed:
                    raise closed_in_flight(error) from error
                delay = pipe.next_delay(attempt, error)
                if delay is None:
                    raise
                await pipe.retry_policy.async_sleep(delay)
                attempt += 1

    async def _exchange(
        self, transport: AsyncTransport, url: httpx.URL, request: Request, sent: Sent | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One attempt within the attempt deadline (which also bounds an upload the server
        stopped reading)."""
        deadline = self._pipeline.deadline
        try:
            return await within(deadline, self._attempt(transport, url, request, sent))
        except (TimeoutError, asyncio.TimeoutError) as error:  # distinct classes before 3.11
            if not is_deadline(error):
                raise  # one phase's timeout: translate_transport_errors makes it ours
            raise past_deadline(deadline or 0.0) from None

    async def _attempt(
        self, transport: AsyncTransport, url: httpx.URL, request: Request, sent: Sent | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        body, length = async_body(request)
        async with transport.post(url, body, length, sent) as reply:
            answer = AnswerBody(self._pipeline.max_response_bytes, None)
            headers = reply.headers
            answer.expect(headers)
            if answer.whole(headers):  # stated, within the cap, not compressed
                return reply.status, headers, await reply.read()
            async for piece in reply.pieces():
                answer.add(piece)
            return reply.status, headers, answer.content()

    async def _run(self, plan: Plan[Any, Any, _Answer]) -> _Answer:
        """Send every request of `plan`; its answer."""
        if not plan.cached:
            return await self._sent(plan)
        # A cache may do I/O (Redis), and keying media hashes whole files: off the loop.
        await asyncio.to_thread(plan.look_up)
        try:
            return await self._sent(plan)
        finally:
            await asyncio.to_thread(plan.store)

    async def _sent(self, plan: Plan[Any, Any, _Answer]) -> _Answer:
        total, on_progress = len(plan), plan.on_progress
        if total == 1:  # the common case: no task, nothing to merge
            plan.add(0, await self._send(plan, 0))
            if on_progress is not None:
                on_progress(1, 1)
        elif total > 1:
            await self._fan_out(plan)
        return plan.answer()

    async def _fan_out(self, plan: Plan[Any, Any, Any]) -> None:
        """Send the plan's requests as tasks, as `SyncClientBase._fan_out` does on threads."""
        # A sliding window: at most max_concurrency tasks exist at once, and each is dropped
        # once its answer is taken (a task per request up front cost O(n) per completion).
        total, on_progress = len(plan), plan.on_progress
        waiting = iter(range(total))
        running: dict[asyncio.Future[Any], int] = {}

        def start_next() -> None:
            number = next(waiting, None)
            if number is not None:
                running[asyncio.ensure_future(self._send_named(plan, number))] = number

        for _ in range(min(self._pipeline.max_concurrency, total)):
            start_next()
        finished = 0
        try:
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                ended = sorted((running.pop(task), task) for task in done)
                for _, task in ended:
                    task.exception()  # each failure is seen (the first one is raised below)
                for number, task in ended:
                    plan.add(number, task.result())  # the first failure fails the call
                    finished += 1
                    if on_progress is not None:
                        on_progress(finished, total)
                    start_next()
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _send_named(self, plan: Plan[Any, _Part, Any], number: int) -> _Part:
        try:
            return await self._send(plan, number)
        except SiliconFlowError as error:
            raise plan.failed(number, error) from error.__cause__

    async def aclose(self) -> None:
        """Close the connection pool this client created on the running event loop (a borrowed
        `http_client` stays open). Pools of other loops close when those loops shut down."""
        with self._pools_lock:
            pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool[1].aclose()

    async def __aenter__(self: _ASelf) -> _ASelf:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def async_method(
    prepare: Callable[Concatenate[Pipeline, _P], Plan[Any, Any, _Answer]],
) -> Callable[Concatenate[AsyncClientBase, _P], Coroutine[Any, Any, _Answer]]:
    """An async client method from an endpoint's `prepare` function (same arguments and docs)."""

    @functools.wraps(prepare)
    async def method(self: AsyncClientBase, /, *args: _P.args, **kwargs: _P.kwargs) -> _Answer:
        return await self._run(prepare(self._pipeline, *args, **kwargs))

    return method
