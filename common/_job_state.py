"""A corpus job's state and what it reports: the SQLite file beside the output (identity,
finished batches, usage by UTC day), the concurrency gate, the progress shown, the summary."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._config import needs
from ._settings import check_client_settings

__all__ = [
    "DAILY_WORDS",
    "RATE_LIMITED_WAIT",
    "Gate",
    "JobSummary",
    "Progress",
    "State",
    "digest",
    "job_client_settings",
    "today",
    "tomorrow",
]

logger = logging.getLogger("siliconflow_rerank.jobs")

DAILY_WORDS = ("per day", "RPD", "TPD", "daily")
"""Words of a 429 that says a daily limit is spent (waiting minutes would not help)."""
RATE_LIMITED_WAIT = (0.02, 1.0)
"""First and longest wait after consecutive 429s without `Retry-After`: short, so that a
window's freed capacity is used within a fraction of it."""
EARLY_PROBE = 0.95
"""The first probe after a burst goes at this share of the learned window."""


@dataclass
class JobSummary:
    """What a run did."""

    output: str
    rows: int = 0
    """Rows in the input."""
    rows_done_before: int = 0
    """Rows already finished when this run started (resumed)."""
    rows_sent: int = 0
    """Rows this run sent."""
    requests: int = 0
    tokens: int = 0
    rate_limited: int = 0
    """429 answers waited out."""
    retries: int = 0
    """Other failed attempts retried (connection errors, 5xx)."""
    seconds: float = 0.0
    complete: bool = False
    """Every row is in the output."""
    stopped: str | None = None
    """Why the run stopped early (a daily limit), and when to run it again."""

    def line(self) -> str:
        state = "complete" if self.complete else f"stopped: {self.stopped}"
        rate = self.rows_sent / self.seconds if self.seconds else 0.0
        return (
            f"{state}; {self.rows} rows ({self.rows_done_before} done before), "
            f"{self.rows_sent} sent in {self.seconds:.1f} s ({rate:.0f} rows/s), "
            f"{self.requests} requests, {self.tokens} tokens, {self.rate_limited} rate-limited, "
            f"{self.retries} retried; output {self.output}"
        )


@dataclass
class Gate:
    """How many batches may be in flight, and when the next may go after a 429.

    A 429 leaves one batch in flight (the probe) and the others waiting; each success lets one
    more in. A server that counts a sliding window frees its first place one window after the
    first request of the burst that filled it: the job learns that window (the shortest time
    from the start of a burst to the first success after its 429s) and sends its probe then,
    rather than after a growing backoff that would leave part of every window unused.
    """

    limit: int
    most: int
    busy: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    paused_until: float = 0.0
    burst_started: float | None = None
    """When the first success since the last run of 429s came."""
    window: float | None = None
    """The server's window, as learned; None until a run of 429s has ended."""
    saturated: bool = False
    burst: int = 0
    """Successes since `burst_started`."""
    last_burst: int = 0
    """Successes of the burst before (what filled the window last time)."""

    async def enter(self) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.busy < self.limit)
            self.busy += 1
        pause = self.paused_until - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)

    def wait_after_429(self, asked: float | None, consecutive: int) -> float:
        """How long a batch waits after its `consecutive`-th 429 in a row: what the server
        asked, else until a little before the learned window frees a place (a probe a little
        early finds a shorter window, if there is one), else a short backoff."""
        self.saturated = True
        if asked is not None:
            return asked
        now = time.monotonic()
        # Only a burst like the last one filled the window: a 429 after a few successes is
        # someone else's use or the server's jitter, and waits only the short backoff.
        filled = self.burst >= max(2, self.last_burst // 2)
        if filled and self.window is not None and self.burst_started is not None:
            freed = self.burst_started + self.window * EARLY_PROBE
            if freed > now:
                return freed - now
        first, longest = RATE_LIMITED_WAIT
        return float(min(first * 2**consecutive, longest))

    async def leave(
        self, *, rate_limited: bool = False, wait: float = 0.0, sent: float | None = None
    ) -> None:
        """A batch is done with its place: a 429 (wait `wait`), or answered when `sent` at
        that time (None: it never went)."""
        async with self.changed:
            self.busy -= 1
            if rate_limited:
                self.limit = 1
                self.paused_until = max(self.paused_until, time.monotonic() + wait)
            elif sent is not None:
                if self.saturated and self.burst_started is not None:
                    measured = sent - self.burst_started
                    self.window = measured if self.window is None else min(self.window, measured)
                if self.saturated or self.burst_started is None:
                    self.burst_started = sent
                    self.last_burst, self.burst = self.burst, 0
                self.burst += 1
                self.saturated = False
                self.limit = min(self.most, self.limit + 1)
            self.changed.notify_all()


class State:
    """The job's SQLite file: identity, finished batches, usage by day."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # WAL with NORMAL sync: a commit survives the process being killed; after a power cut
        # the last few may be lost, and those batches are sent again.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS batches (number INTEGER PRIMARY KEY, rows INTEGER NOT "
            "NULL, payload BLOB NOT NULL);"
            "CREATE TABLE IF NOT EXISTS usage (day TEXT PRIMARY KEY, requests INTEGER NOT NULL,"
            " tokens INTEGER NOT NULL);"
        )

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def done(self) -> dict[int, int]:
        return dict(self.db.execute("SELECT number, rows FROM batches"))

    def keep(self, number: int, rows: int, payload: bytes, requests: int, tokens: int) -> None:
        day = today()
        with contextlib.closing(self.db.cursor()) as cursor:
            cursor.execute("BEGIN")
            cursor.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?)", (number, rows, payload)
            )
            cursor.execute(
                "INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT(day) DO UPDATE SET "
                "requests = requests + excluded.requests, tokens = tokens + excluded.tokens",
                (day, requests, tokens),
            )
            cursor.execute("COMMIT")

    def payload(self, number: int) -> bytes:
        row = self.db.execute("SELECT payload FROM batches WHERE number = ?", (number,)).fetchone()
        return bytes(row[0])

    def used_today(self) -> tuple[int, int]:
        row = self.db.execute(
            "SELECT requests, tokens FROM usage WHERE day = ?", (today(),)
        ).fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def close(self) -> None:
        self.db.close()


def job_client_settings(
    settings: dict[str, Any],
    *,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
    requests_per_day: int | None,
    tokens_per_day: int | None,
    redis_url: str | None,
) -> dict[str, Any]:
    """The client settings a job's clients are made with, checked now (a bad one is refused
    before the input is read): its budget (in Redis, with the day limits there too, when
    `redis_url` names one), and one attempt per request, as the job retries and waits out
    429s itself.

    Raises:
        InvalidRequestError: A setting is invalid; the message names it.
    """
    settings = {**settings, "max_retries": 0}
    if redis_url is not None:
        from ._redis_budget import RedisRateLimit

        settings["rate_limit"] = RedisRateLimit(
            redis_url,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            requests_per_day=requests_per_day,
            tokens_per_day=tokens_per_day,
        )
    else:
        settings["requests_per_minute"] = requests_per_minute
        settings["tokens_per_minute"] = tokens_per_minute
    check_client_settings(**settings)
    return settings


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def tomorrow() -> datetime.datetime:
    now = datetime.datetime.now(datetime.timezone.utc)
    return datetime.datetime.combine(
        now.date() + datetime.timedelta(days=1), datetime.time(), tzinfo=datetime.timezone.utc
    )


def digest(path: Path) -> str:
    """The size and a digest of a file's bytes: a job's input, recorded in its identity."""
    hashed = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            hashed.update(chunk)
    return f"{path.stat().st_size}:{hashed.hexdigest()}"


class Progress:
    """A progress bar on a terminal (or when `show`), else a log line every `every` seconds."""

    def __init__(self, kind: str, show: bool | None, every: float, summary: JobSummary) -> None:
        self.summary = summary
        self.every = every
        self.last = time.monotonic()
        self.started = self.last
        shown = show if show is not None else sys.stderr.isatty()
        self.bar = None
        if shown:
            tqdm = needs("tqdm", "jobs").tqdm
            self.bar = tqdm(
                total=summary.rows, initial=summary.rows_done_before, unit="row", desc=kind
            )

    def advance(self, rows: int) -> None:
        summary = self.summary
        if self.bar is not None:
            self.bar.update(rows)
            self.bar.set_postfix(
                tokens=summary.tokens,
                limited=summary.rate_limited,
                retried=summary.retries,
                refresh=False,
            )
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            done = summary.rows_done_before + summary.rows_sent
            rate = summary.rows_sent / max(now - self.started, 1e-9)
            left = (summary.rows - done) / rate if rate else float("inf")
            logger.info(
                "%d of %d rows (%.0f rows/s, about %.0f s left), %d tokens, %d rate-limited, "
                "%d retried",
                done,
                summary.rows,
                rate,
                left,
                summary.tokens,
                summary.rate_limited,
                summary.retries,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
