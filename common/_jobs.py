"""Corpus jobs that survive: `EmbedJob` and `RerankJob` read JSONL or Parquet, send it in
batches, keep every finished batch in an SQLite file beside the output, and write Parquet at the
end. Run again after any interruption, the same job sends only what is not finished.

How a job keeps its promises:
- **Resumable.** Batch k is always input rows [k·B, (k+1)·B) (B is recorded), and is committed
  to the state file as soon as its answer is in: an interrupted job repeats at most the batches
  that were in flight. The job's identity (kind, base URL, model, dimensions, instruction,
  fields, batch size, the input's digest) is recorded too; a run with another is refused with
  what differs, so vectors of two spaces never mix.
- **Budget-aware.** The client's budget paces requests (`requests_per_minute`, ...; through
  Redis with `redis_url`, shared by every process and Ray actor naming it). A 429 is never
  fatal: the job waits (`Retry-After`, or until the server's window frees a place), goes on
  with one batch in flight, and lets one more in per success. Daily limits are counted in the
  state file, by UTC day: when one is spent the job stops cleanly and says when to run it again.
- **Visible.** A progress bar on a terminal; otherwise a log line every `log_every` seconds; a
  summary at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ._client import AsyncSiliconFlowClient
from ._config import needs, resolve_base_url
from ._exceptions import InvalidRequestError, RateLimitError, SiliconFlowError
from ._files import jsonl_rows
from ._job_state import (
    DAILY_WORDS,
    Gate,
    JobSummary,
    Progress,
    State,
    digest,
    job_client_settings,
    tomorrow,
)
from ._options import checked_count
from ._retry import RetryPolicy, is_retryable, retry_after_seconds, retry_delay

__all__ = ["Job", "Send"]

Send = Callable[[list[dict[str, Any]]], Awaitable[tuple[bytes, int]]]
"""Sends one batch's rows; their payload for the state file, and the tokens used."""


@dataclass
class _Batch:
    number: int
    rows: list[dict[str, Any]]


class Job:
    """What both jobs share: input, state, pacing, progress, output."""

    kind: ClassVar[str]
    default_batch: ClassVar[int]

    def __init__(
        self,
        input: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        model: str,
        id_field: str = "id",
        batch_size: int | None = None,
        concurrency: int = 8,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        requests_per_day: int | None = None,
        tokens_per_day: int | None = None,
        redis_url: str | None = None,
        max_retries: int = 5,
        progress: bool | None = None,
        log_every: float = 10.0,
        **client_settings: Any,
    ) -> None:
        self.input = Path(input)
        self.output = Path(output)
        if self.input.suffix.lower() not in (".jsonl", ".parquet"):
            raise InvalidRequestError(f"{self.input}: the input must be .jsonl or .parquet")
        if self.output.suffix.lower() != ".parquet":
            raise InvalidRequestError(f"{self.output}: the output is Parquet (name it .parquet)")
        if not self.input.is_file():
            raise InvalidRequestError(f"{self.input} cannot be read (no such file)")
        self.state_path = self.output.with_name(self.output.name + ".job.sqlite")
        self.model = model
        self.id_field = id_field
        self.batch_size = checked_count("batch_size", batch_size or self.default_batch, 1)
        self.concurrency = checked_count("concurrency", concurrency, 1)
        self.max_retries = checked_count("max_retries", max_retries, 0)
        self.requests_per_day = requests_per_day
        self.tokens_per_day = tokens_per_day
        self.progress = progress
        self.log_every = log_every
        self._reserved = 0
        """Requests of the batches in flight, counted against the daily limit."""
        self.policy = client_settings.pop("retry_policy", None) or RetryPolicy()
        self.client_settings = job_client_settings(
            client_settings,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            requests_per_day=requests_per_day,
            tokens_per_day=tokens_per_day,
            redis_url=redis_url,
        )
        self.base_url = resolve_base_url(client_settings.get("base_url"))
        self.check()

    # What each job defines -------------------------------------------------------------------

    def check(self) -> None:
        """Check the job's own options (before anything is read or sent)."""

    def fields(self) -> list[str]:
        """The input columns the job reads."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The job's part of its identity (beside kind, base URL, input and batch size)."""
        raise NotImplementedError

    async def call(
        self, client: AsyncSiliconFlowClient, rows: list[dict[str, Any]]
    ) -> tuple[bytes, int]:
        """Send one batch; its payload for the state file, and the tokens it used."""
        raise NotImplementedError

    def columns(self, payload: bytes, rows: int) -> dict[str, Any]:
        """The output columns (Arrow arrays) of one batch's payload of `rows` rows."""
        raise NotImplementedError

    # The run --------------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "base_url": self.base_url,
            "model": self.model,
            **self.options(),
            "id_field": self.id_field,
            "fields": self.fields(),
            "batch_size": self.batch_size,
            "input": digest(self.input),
        }

    def run(self) -> JobSummary:
        """Run (or resume) the job to the end, or until a daily limit stops it.

        Raises:
            InvalidRequestError: Bad input or options, or a state file of another job.
            SiliconFlowError: A batch failed after its retries (what finished is kept: run
                the job again to go on).
        """
        return asyncio.run(self.arun())

    async def arun(self, send: Send | None = None) -> JobSummary:
        """`run`, on the running event loop; `send` sends a batch elsewhere (Ray actors)
        instead of through this process's client."""
        started = time.monotonic()
        summary = JobSummary(str(self.output))
        self.output.parent.mkdir(parents=True, exist_ok=True)
        state = State(self.state_path)
        try:
            self._claim(state)
            done = state.done()
            total = int(state.get("rows") or 0)
            summary.rows = total
            summary.rows_done_before = sum(done.values())
            if summary.rows_done_before < total:
                await self._send(state, done, summary, send)
            if sum(state.done().values()) == total:
                self._write(state, total)
                state.put("status", "complete")
                summary.complete = True
        finally:
            summary.seconds = time.monotonic() - started
            state.close()
        return summary

    def _claim(self, state: State) -> None:
        """Record this job's identity, or check it against the recorded one."""
        identity = self.identity()
        recorded = state.get("identity")
        if recorded is None:
            rows = self._count_rows()
            state.put("identity", json.dumps(identity))
            state.put("rows", str(rows))
            return
        before = json.loads(recorded)
        differs = [
            f"{name}: {before.get(name)!r} then, {identity.get(name)!r} now"
            for name in sorted(set(before) | set(identity))
            if before.get(name) != identity.get(name)
        ]
        if differs:
            raise InvalidRequestError(
                f"{self.output} belongs to another job ({'; '.join(differs)}); use another "
                f"output, or delete {self.state_path.name} (and the output) to start over"
            )

    def _count_rows(self) -> int:
        seen: set[Any] = set()
        rows = 0
        for batch in self._batches():
            for row in batch.rows:
                key = row[self.id_field]
                if key in seen:
                    raise InvalidRequestError(f"{self.input}: id {key!r} appears twice")
                seen.add(key)
            rows += len(batch.rows)
        if not rows:
            raise InvalidRequestError(f"{self.input} has no rows")
        return rows

    def _batches(self, columns: Sequence[str] | None = None) -> Iterator[_Batch]:
        wanted = list(columns or [self.id_field, *self.fields()])
        size = self.batch_size
        number = 0
        pending: list[dict[str, Any]] = []
        for row in self._rows(wanted):
            pending.append(row)
            if len(pending) == size:
                yield _Batch(number, pending)
                number, pending = number + 1, []
        if pending:
            yield _Batch(number, pending)

    def _rows(self, wanted: list[str]) -> Iterator[dict[str, Any]]:
        if self.input.suffix.lower() == ".parquet":
            parquet = needs("pyarrow.parquet", "jobs")
            file = parquet.ParquetFile(self.input)
            missing = [name for name in wanted if name not in file.schema_arrow.names]
            if missing:
                raise InvalidRequestError(f"{self.input} has no column {missing[0]!r}")
            for record_batch in file.iter_batches(batch_size=4096, columns=wanted):
                yield from record_batch.to_pylist()
            return
        for number, row in jsonl_rows(self.input):
            missing = [name for name in wanted if name not in row]
            if missing:
                raise InvalidRequestError(f"{self.input}:{number}: no field {missing[0]!r}")
            yield {name: row[name] for name in wanted}

    async def _send(
        self, state: State, done: dict[int, int], summary: JobSummary, send: Send | None
    ) -> None:
        gate = Gate(self.concurrency, self.concurrency)
        stop: list[str] = []  # why the job stops early: a daily limit spent
        failed: list[BaseException] = []
        in_flight: set[asyncio.Task[None]] = set()
        progress = Progress(self.kind, self.progress, self.log_every, summary)
        async with contextlib.AsyncExitStack() as resources:
            if send is None:
                client = await resources.enter_async_context(
                    AsyncSiliconFlowClient(**self.client_settings)
                )
                send = functools.partial(self.call, client)
            try:
                async for batch in self._pending(done):
                    if stop or failed:
                        break
                    await gate.enter()
                    spent = self._check_daily(state, batch)
                    if spent is not None:
                        await gate.leave()
                        stop.append(spent)
                        break
                    task = asyncio.create_task(
                        self._one(send, gate, state, batch, summary, progress, stop, failed)
                    )
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if in_flight:
                    await asyncio.gather(*in_flight)
            finally:
                for task in in_flight:
                    task.cancel()
                progress.close()
        if failed:
            raise failed[0]
        if stop:
            summary.stopped = f"{stop[0]}; run it again after {tomorrow():%Y-%m-%d %H:%M} UTC"

    async def _pending(self, done: dict[int, int]) -> AsyncIterator[_Batch]:
        for batch in self._batches():
            if batch.number not in done:
                yield batch
            await asyncio.sleep(0)  # reading a long input leaves room for the tasks

    def requests_of(self, rows: list[dict[str, Any]]) -> int:
        """The requests one batch takes."""
        return 1

    def _check_daily(self, state: State, batch: _Batch) -> str | None:
        """Which daily limit a batch would go over (counting those in flight); else None, and
        its requests are reserved."""
        if self.requests_per_day is None and self.tokens_per_day is None:
            return None
        needed = self.requests_of(batch.rows)
        requests, tokens = state.used_today()
        if (
            self.requests_per_day is not None
            and requests + self._reserved + needed > self.requests_per_day
        ):
            return f"today's {self.requests_per_day} requests are spent"
        if self.tokens_per_day is not None and tokens >= self.tokens_per_day:
            return f"today's {self.tokens_per_day} tokens are spent"
        self._reserved += needed
        return None

    async def _one(
        self,
        send: Send,
        gate: Gate,
        state: State,
        batch: _Batch,
        summary: JobSummary,
        progress: Progress,
        stop: list[str],
        failed: list[BaseException],
    ) -> None:
        attempt = limited = 0
        entered = True
        answered: float | None = None  # when the request that was answered went
        requests = self.requests_of(batch.rows)
        daily = self.requests_per_day is not None or self.tokens_per_day is not None
        try:
            while True:
                if not entered:
                    await gate.enter()
                    entered = True
                try:
                    sent = time.monotonic()
                    payload, tokens = await send(batch.rows)
                except RateLimitError as error:
                    if any(word in error.message for word in DAILY_WORDS):
                        stop.append(f"the service says: {error.message}")
                        return
                    summary.rate_limited += 1
                    wait = gate.wait_after_429(retry_after_seconds(error.headers), limited)
                    limited += 1
                    entered = False
                    await gate.leave(rate_limited=True, wait=wait)
                    await asyncio.sleep(wait)
                    continue
                except SiliconFlowError as error:
                    if not is_retryable(error) or attempt >= self.max_retries:
                        failed.append(error)
                        return
                    summary.retries += 1
                    headers = getattr(error, "headers", None)
                    await asyncio.sleep(retry_delay(attempt, self.policy, headers=headers))
                    attempt += 1
                    continue
                state.keep(batch.number, len(batch.rows), payload, requests, tokens)
                summary.requests += requests
                summary.tokens += tokens
                summary.rows_sent += len(batch.rows)
                progress.advance(len(batch.rows))
                answered = sent
                return
        finally:
            if daily:
                self._reserved -= requests  # kept (and so counted), or never to be
            if entered:
                await gate.leave(sent=answered)

    def _write(self, state: State, total: int) -> None:
        """The output from the state file, in input order: written beside it, then moved in
        place, so that a reader never sees half a file."""
        parquet = needs("pyarrow.parquet", "jobs")
        pa = needs("pyarrow", "jobs")
        partial = self.output.with_name(self.output.name + ".partial")
        writer = None
        written = 0
        try:
            for batch in self._batches([self.id_field]):
                ids = [row[self.id_field] for row in batch.rows]
                columns = {
                    "id": pa.array(ids),
                    **self.columns(state.payload(batch.number), len(ids)),
                }
                table = pa.table(columns)
                if writer is None:
                    writer = parquet.ParquetWriter(partial, table.schema)
                writer.write_table(table)
                written += len(ids)
        finally:
            if writer is not None:
                writer.close()
        if written != total:
            raise InvalidRequestError(f"{self.input} changed while the job ran")
        os.replace(partial, self.output)
