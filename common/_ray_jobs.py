"""`--ray`: a corpus job's batches sent by Ray actors, one client each, while this process keeps
the state file (so resuming works exactly as without Ray). The budget is shared through Redis:
a per-minute budget without `redis_url` is refused (each actor would spend all of it)."""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

from ._exceptions import InvalidRequestError

if TYPE_CHECKING:
    from ._client import AsyncSiliconFlowClient
    from ._job_state import JobSummary
    from ._jobs import Job

__all__ = ["run_on_ray"]


class _Sender:
    """A Ray actor: sends batches of one job with its own client, built on first use (the key
    comes from SILICONFLOW_API_KEY in the actor's environment, never from the job)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.client: AsyncSiliconFlowClient | None = None

    async def call(self, rows: list[dict[str, Any]]) -> tuple[bytes, int]:
        if self.client is None:
            from ._client import AsyncSiliconFlowClient

            self.client = AsyncSiliconFlowClient(**self.job.client_settings)
        return await self.job.call(self.client, rows)


def run_on_ray(job: Job, actors: int | None = None) -> JobSummary:
    """Run `job` with its batches sent by `actors` Ray actors (one per CPU of the cluster, up
    to the job's concurrency); Ray is joined at `RAY_ADDRESS`, else started locally."""
    import asyncio
    import importlib

    ray: Any = importlib.import_module("ray")  # typed loosely: its stubs are partial

    settings = job.client_settings
    if "api_key" in settings:
        raise InvalidRequestError(
            "on Ray, give the key as SILICONFLOW_API_KEY in the workers' environment (a key "
            "in the job would travel in Ray's object store)"
        )
    if settings.get("requests_per_minute") or settings.get("tokens_per_minute"):
        raise InvalidRequestError(
            "on Ray, a budget is shared through Redis: give redis_url (--redis-url) with it"
        )
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    count = actors or max(1, min(job.concurrency, int(ray.cluster_resources().get("CPU", 1))))
    remote = ray.remote(num_cpus=0)(_Sender)
    senders = [remote.remote(job) for _ in range(count)]
    turn = itertools.cycle(senders)

    async def send(rows: list[dict[str, Any]]) -> tuple[bytes, int]:
        result: tuple[bytes, int] = await next(turn).call.remote(rows)
        return result

    try:
        return asyncio.run(job.arun(send))
    finally:
        for sender in senders:
            ray.kill(sender)
