"""Corpus jobs (issue 35): rows per second of `EmbedJob` against raw batched calls, and how much
of a limit a job uses when the server answers 429 beyond it, or when it paces to a budget.

Writes `benchmarks/jobs.md` and `benchmarks/jobs.json`. Run by `benchmarks/run.sh`, or alone:
`python benchmarks/jobs.py`.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import emulator, machine, minimal_server

from siliconflow_rerank import AsyncSiliconFlowClient, EmbedJob, RerankJob

HERE = Path(__file__).parent
ROWS = 20_000
ROUNDS = 3
CONCURRENCY = 8


def _texts(count: int) -> list[str]:
    return [f"note {i}: keep apples fresh in the fridge, then bake them" for i in range(count)]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


async def _raw(base_url: str, texts: list[str]) -> None:
    """The same rows embedded by concurrent calls of 32, nothing kept: the floor a job adds to."""
    async with AsyncSiliconFlowClient(api_key="bench-key", base_url=base_url) as client:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(start: int) -> None:
            async with gate:
                await client.embed(texts[start : start + 32], model="BAAI/bge-m3")

        await asyncio.gather(*(one(start) for start in range(0, len(texts), 32)))


def bench_throughput(folder: Path) -> dict[str, float]:
    texts = _texts(ROWS)
    source = _write(folder / "rows.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])
    job_runs, raw_runs = [], []
    with minimal_server() as base_url:
        for number in range(ROUNDS):
            started = time.perf_counter()
            asyncio.run(_raw(base_url, texts))
            raw_runs.append(ROWS / (time.perf_counter() - started))
            out = folder / f"out-{number}.parquet"
            summary = EmbedJob(source, out, model="BAAI/bge-m3", api_key="bench-key",
                               base_url=base_url, concurrency=CONCURRENCY, progress=False).run()  # fmt: skip
            assert summary.complete
            job_runs.append(ROWS / summary.seconds)
    job, raw = statistics.median(job_runs), statistics.median(raw_runs)
    return {"EmbedJob rows/s": job, "raw batched calls rows/s": raw, "job / raw": job / raw}


def bench_rate_limited(folder: Path) -> dict[str, float]:
    """A server that answers 429 beyond `limit` requests a `window` (sliding): the job knows no
    budget and must find the limit by itself."""
    limit, window, rows = 60, 2.0, 900
    source = _write(folder / "pairs.jsonl", _pairs(rows))
    args = ("--rpm", str(limit), "--window-seconds", str(window))
    with emulator(*args) as base_url:
        summary = RerankJob(source, folder / "ranked-429.parquet", api_key="bench-key",
                            base_url=base_url, progress=False).run()  # fmt: skip
    assert summary.complete
    return {
        "limit (requests per window)": limit,
        "window (s)": window,
        "rows": rows,
        "seconds": round(summary.seconds, 2),
        "429s waited out": summary.rate_limited,
        "utilisation of the limit": _utilisation(summary.requests, limit, window, summary.seconds),
    }


def bench_budget(folder: Path) -> dict[str, float]:
    """The job paces to its own budget (`requests_per_minute`); the emulator holds the same limit
    over a minute, so a request beyond the budget would be a 429."""
    rpm, rows = 600, 900
    source = _write(folder / "pairs-budget.jsonl", _pairs(rows))
    with emulator("--rpm", str(rpm)) as base_url:
        summary = RerankJob(source, folder / "ranked-budget.parquet", api_key="bench-key",
                            base_url=base_url, requests_per_minute=rpm, progress=False).run()  # fmt: skip
    assert summary.complete
    return {
        "budget (requests per minute)": rpm,
        "rows": rows,
        "seconds": round(summary.seconds, 2),
        "429s": summary.rate_limited,
        "utilisation of the budget": _utilisation(summary.requests, rpm, 60.0, summary.seconds),
    }


def _utilisation(requests: int, limit: int, window: float, seconds: float) -> float:
    """The shortest time `requests` can take within `limit` a sliding `window` (the first
    `limit` at once, then `limit` more each window), over the time they took."""
    shortest = (math.ceil(requests / limit) - 1) * window
    return shortest / seconds


def _pairs(count: int) -> list[dict[str, Any]]:
    words = ["apple", "banana", "bread", "rice", "coffee", "tea", "cheese", "egg", "honey", "oil"]
    return [
        {"id": i, "query": words[i % 10], "candidates": [f"{words[k]} {words[(i + k) % 10]}"
                                                          for k in range(8)]}
        for i in range(count)
    ]  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        print("8. corpus jobs: throughput ...", file=sys.stderr, flush=True)
        results = {"throughput": bench_throughput(folder)}
        print("8. corpus jobs: a server's 429s ...", file=sys.stderr, flush=True)
        results["429"] = bench_rate_limited(folder)
        print("8. corpus jobs: a budget ...", file=sys.stderr, flush=True)
        results["budget"] = bench_budget(folder)
    results["machine"] = machine()  # type: ignore[assignment]
    (HERE / "jobs.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Corpus jobs",
        "",
        f"Machine: {results['machine']}. Produced by `python benchmarks/jobs.py` (and "
        "`bash benchmarks/run.sh`).",
        "",
        f"## Throughput: {ROWS:,} short texts embedded (minimal server, {CONCURRENCY} in flight, "
        f"median of {ROUNDS} rounds)",
        "",
        "| measure | value |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:,.2f} |" for k, v in results["throughput"].items()]
    for key, title in (
        ("429", "A server that answers 429 beyond a limit (emulator, sliding window; no budget "
                "given to the job)"),
        ("budget", "A budget given to the job (emulator holding the same limit)"),
    ):  # fmt: skip
        lines += ["", f"## {title}", "", "| measure | value |", "|---|---:|"]
        lines += [f"| {k} | {v:g} |" for k, v in results[key].items()]
    targets = [
        ("429s: throughput ≥ 0.9 of the limit", results["429"]["utilisation of the limit"], 0.9),
        ("budget: throughput ≥ 0.95 of the budget", results["budget"]["utilisation of the budget"],
         0.95),
    ]  # fmt: skip
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---:|---|"]
    lines += [f"| {n} | {v:.3f} | {'yes' if v >= t else 'no'} |" for n, v, t in targets]
    (HERE / "jobs.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
