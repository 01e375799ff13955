"""The sync client's I/O: its transport, and the loops that send a plan's requests (on the
caller's thread, on the client's threads, or as tasks on the client's event loop thread)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import queue
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx

from ._async import AsyncClientBase
from ._client_base import POOL_OWNERS, ClientBase
from ._exceptions import APIConnectionError, SiliconFlowError
from ._pipeline import Part, Pipeline, Plan, Request, closed_in_flight, sync_body
from ._pools import LoopThread, SyncPool, open_sync_transport
from ._settings import ClientSettings
from ._transport import HttpxTransport, Sent, SyncTransport, translate_transport_errors

__all__ = ["SyncClientBase", "sync_method"]

_P = ParamSpec("_P")
_Answer = TypeVar("_Answer")
_Part = TypeVar("_Part", bound=Part)


class SyncClientBase(ClientBase):
    """The sync client's I/O: its transport, and the loops that send a plan's requests."""

    def __init__(
        self,
        settings: ClientSettings,
        http_client: httpx.Client | None = None,
        pipeline: Pipeline | None = None,
    ) -> None:
        super().__init__(settings, pipeline)
        pipe = self._pipeline
        self._borrowed = (
            None
            if http_client is None
            else HttpxTransport(http_client, pipe.headers, pipe.timeout, owned=False)
        )
        self._owned: SyncTransport | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._looped: tuple[AsyncClientBase, LoopThread] | None = None
        self._loop_finalizer: weakref.finalize[Any, Any] | None = None
        self._lock = threading.Lock()

    def _transport(self) -> SyncTransport:
        if self._borrowed is not None:
            return self._borrowed
        owned = self._owned
        if owned is not None:  # every call after the first: no lock on the hot path
            return owned
        with self._lock:
            if self._owned is None:
                pipe = self._pipeline
                self._owned = open_sync_transport(
                    pipe.root, pipe.headers, pipe.timeout, pipe.limits()
                )
                # Framework objects that hold a client are rarely closed by their users: close the
                # pool when this client is garbage-collected instead of leaking its sockets.
                self._finalizer = weakref.finalize(self, self._owned.close)
                POOL_OWNERS.add(self)
            return self._owned

    def _forget_pool(self) -> None:
        # In a forked child: the inherited pool's sockets are the parent's. Drop it unclosed (the
        # parent still uses it) and start afresh; the lock may have been held by a parent thread.
        self._lock = threading.Lock()
        if self._finalizer is not None:
            self._finalizer.detach()
        self._owned = self._finalizer = None
        self._threads = None  # the parent's threads do not exist here
        if self._loop_finalizer is not None:
            self._loop_finalizer.detach()
        self._looped = self._loop_finalizer = None

    def _send(self, plan: Plan[Any, _Part, Any], number: int) -> _Part:
        """Request `number` of `plan`, with its retries: its answer's part of the call."""
        pipe = self._pipeline
        request = plan.request(number)
        url = pipe.url(plan.path)
        attempt = 0
        while True:
            # The pool first, then the booking: what a cold client does before it can send
            # (making its pool) is not spent between the booking and the wire.
            transport = self._transport()
            booking = pipe.book(request)
            if booking is not None and booking.wait > 0:
                pipe.retry_policy.sleep(booking.wait)
            try:
                with translate_transport_errors(url), pipe.on_the_wire(booking) as sent:
                    status, headers, content = self._exchange(transport, url, request, sent)
                return pipe.handle(status, headers, content, request, plan, booking)
            except SiliconFlowError as error:
                if transport.is_closed:
                    raise closed_in_flight(error) from error
                delay = pipe.next_delay(attempt, error)
                if delay is None:
                    raise
                pipe.retry_policy.sleep(delay)
                attempt += 1

    def _exchange(
        self, transport: SyncTransport, url: httpx.URL, request: Request, sent: Sent | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One attempt: the answer's status, headers and body, within the attempt deadline."""
        # httpx bounds each phase, not their sum (a server trickling its answer a byte at a time
        # would keep the call alive for ever), nor the size of an answer: it is read in pieces,
        # against the deadline and the size cap.
        answer = self._pipeline.answer_reader()
        body, length = sync_body(request)
        with transport.post(url, body, length, sent) as (status, headers, pieces):
            return status, headers, answer.read(headers, pieces)

    def _run(self, plan: Plan[Any, Any, _Answer]) -> _Answer:
        """Send every request of `plan`; its answer."""
        if not plan.cached:
            return self._sent(plan)
        plan.look_up()
        try:
            return self._sent(plan)
        finally:
            plan.store()

    def _sent(self, plan: Plan[Any, Any, _Answer]) -> _Answer:
        total, on_progress = len(plan), plan.on_progress
        if total == 1:  # the common case: no thread hop, nothing to merge
            plan.add(0, self._send(plan, 0))
            if on_progress is not None:
                on_progress(1, 1)
            return plan.answer()
        if total > 1:
            looped = self._on_loop()
            if looped is not None:
                twin, loop = looped
                return _awaited(loop, twin._sent, plan)
            self._fan_out(plan)
        return plan.answer()

    def _fan_out(self, plan: Plan[Any, Any, Any]) -> None:
        """Send the plan's requests on the client's threads, at most max_concurrency at once;
        each answer goes to the plan as it comes. The first failure fails the call."""
        executor = self._executor()
        total, on_progress = len(plan), plan.on_progress
        waiting = iter(range(total))
        running: dict[Future[Any], int] = {}

        def start_next() -> None:
            number = next(waiting, None)
            if number is not None:
                running[executor.submit(self._send_named, plan, number)] = number

        for _ in range(min(self._pipeline.max_concurrency, total)):
            start_next()
        finished = 0
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                number = running.pop(future)
                if future.exception() is not None:
                    wait(running)  # the others in flight end before the call fails
                    future.result()
                plan.add(number, future.result())
                finished += 1
                if on_progress is not None:
                    on_progress(finished, total)
                start_next()

    def _send_named(self, plan: Plan[Any, _Part, Any], number: int) -> _Part:
        try:
            return self._send(plan, number)
        except SiliconFlowError as error:
            raise plan.failed(number, error) from error.__cause__

    def _on_loop(self) -> tuple[AsyncClientBase, LoopThread] | None:
        """Where a call of several requests goes when the client's own pool serves it (not a
        caller's `http_client`, nor a proxy: those stay on threads): the async side of this
        client, on the same pipeline, and the event loop thread it runs on."""
        looped = self._looped
        if looped is not None:  # every call after the first: no lock on the hot path
            return looped
        if not isinstance(self._transport(), SyncPool):
            return None
        with self._lock:
            if self._looped is None:
                pipe = self._pipeline
                policy = pipe.retry_policy
                if policy.sleep is not time.sleep:  # the caller's own way for sync calls to wait
                    pipe = copy.copy(pipe)
                    pipe.retry_policy = dataclasses.replace(
                        policy, async_sleep=_off_the_loop(policy.sleep)
                    )
                twin = AsyncClientBase(self.settings, pipeline=pipe)
                loop = LoopThread()
                # Held by the finalizer, the async side's pool stays reachable until the loop
                # closes it, even when this client is collected as part of a reference cycle.
                self._loop_finalizer = weakref.finalize(self, loop.close, twin.aclose)
                self._looped = twin, loop
            return self._looped

    def _executor(self) -> ThreadPoolExecutor:
        executor = self._threads
        if executor is None:
            with self._lock:
                if self._threads is None:
                    self._threads = ThreadPoolExecutor(
                        4 * self._pipeline.max_concurrency, thread_name_prefix="siliconflow-rerank"
                    )
                executor = self._threads
        return executor

    def close(self) -> None:
        """Close the connection pool this client created (a borrowed `http_client` stays open).

        The client stays usable: the next call opens a new pool.
        """
        with self._lock:
            finalizer, self._finalizer = self._finalizer, None
            self._owned = None
            threads, self._threads = self._threads, None
            loop_finalizer, self._loop_finalizer = self._loop_finalizer, None
            self._looped = None
        if threads is not None:
            threads.shutdown(wait=False)
        if finalizer is not None:
            finalizer()  # closes the pool, once, and lets it go (a kept finalizer would hold it)
        if loop_finalizer is not None:
            loop_finalizer()  # stops the loop thread, and closes the pool opened on it

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_Self = TypeVar("_Self", bound=SyncClientBase)


def _off_the_loop(sleep: Callable[[float], None]) -> Callable[[float], Awaitable[None]]:
    """`sleep` for a coroutine: run in a worker thread, so that the loop's other tasks go on."""

    async def waits(seconds: float) -> None:
        await asyncio.to_thread(sleep, seconds)

    return waits


def _awaited(
    loop: LoopThread,
    run: Callable[[Plan[Any, Any, _Answer]], Coroutine[Any, Any, _Answer]],
    plan: Plan[Any, Any, _Answer],
) -> _Answer:
    """`run(plan)` on the loop thread; progress is reported here, on the caller's thread."""
    on_progress = plan.on_progress
    steps: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    if on_progress is not None:
        plan.on_progress = lambda done, total: steps.put((done, total))
    future = loop.submit(run(plan))
    future.add_done_callback(lambda _: steps.put(None))
    try:
        while (step := steps.get()) is not None:
            if on_progress is not None:
                on_progress(*step)
        return future.result()
    except CancelledError:  # close() stopped the loop under the call
        raise APIConnectionError("the client was closed while this call was in flight") from None
    except BaseException:
        future.cancel()  # the caller gave up (an interrupt, or on_progress raised)
        raise


def sync_method(
    prepare: Callable[Concatenate[Pipeline, _P], Plan[Any, Any, _Answer]],
) -> Callable[Concatenate[SyncClientBase, _P], _Answer]:
    """A sync client method from an endpoint's `prepare` function (same arguments and docs)."""

    @functools.wraps(prepare)
    def method(self: SyncClientBase, /, *args: _P.args, **kwargs: _P.kwargs) -> _Answer:
        return self._run(prepare(self._pipeline, *args, **kwargs))

    return method
