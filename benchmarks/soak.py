"""Soak: many thousands of reranks across threads and tasks on shared instances, with random faults.

Every call must either return exactly the emulator's ground-truth ranking for its input, or raise
one of the package's documented errors. Anything else (a wrong or shifted ranking, a lost
document, an undocumented exception) is counted as misaligned. Loopback only, bounded in time.

    python benchmarks/soak.py --seconds 120          # writes benchmarks/soak.md
    python benchmarks/soak.py --seconds 5 --json     # what the test suite runs
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode

from langchain_siliconflow import SiliconFlowRerank as LangChainRerank
from llama_index_siliconflow import SiliconFlowRerank as LlamaRerank
from siliconflow_rerank import (
    AsyncSiliconFlowClient,
    RetryPolicy,
    SiliconFlowClient,
    SiliconFlowError,
)
from siliconflow_rerank.emulator import Fault, RerankEmulator

HERE = Path(__file__).resolve().parent
WORDS = [
    "apple",
    "pear",
    "fridge",
    "fresh",
    "lemon",
    "bus",
    "train",
    "cheese",
    "tea",
    "rain",
    "green",
    "red",
    "cold",
    "week",
    "pie",
]
QUERIES = ["fresh apple", "green tea", "cold train", "red cheese pie", "lemon rain"]
FAULTS: list[tuple[str, Callable[[], Fault]]] = [
    ("429", Fault.rate_limited),
    ("429 Retry-After", lambda: Fault.rate_limited(retry_after="0")),
    ("503", Fault.overloaded),
    ("500", Fault.server_error),
    ("502 HTML", Fault.bad_gateway_html),
    ("504", Fault.gateway_timeout),
    ("reset", Fault.disconnect),
    ("truncated JSON", Fault.truncated_json),
    ("non-JSON", Fault.not_json),
    ("slow (timeout)", lambda: Fault.slow(0.6)),
    ("bad index", Fault.index_out_of_range),
    ("duplicate index", Fault.duplicate_index),
    ("missing results", Fault.missing_results),
    ("dropped result", Fault.dropped_results),
    ("NaN score", Fault.non_finite_score),
]


class Tally:
    """Thread-safe counters."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.correct = 0
        self.failed_loudly: collections.Counter[str] = collections.Counter()
        self.misaligned = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []

    def record(self, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.calls += 1
            if outcome == "correct":
                self.correct += 1
            elif outcome == "misaligned":
                self.misaligned += 1
                if len(self.examples) < 5:
                    self.examples.append(detail)
            else:
                self.failed_loudly[outcome] += 1


def documents_for(rng: random.Random) -> list[str]:
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) + f" #{i}"
        for i in range(rng.randint(1, 30))
    ]


def truth(emulator: RerankEmulator, query: str, texts: list[str]) -> list[tuple[int, float]]:
    body = {"model": "BAAI/bge-reranker-v2-m3", "query": query, "documents": texts}
    return [(r["index"], r["relevance_score"]) for r in emulator.rank(body)["results"]]


def check(tally: Tally, expected: list[tuple[int, float]], got: list[tuple[int, float]]) -> None:
    if got == expected:
        tally.record("correct")
    else:
        tally.record("misaligned", f"expected {expected[:3]}..., got {got[:3]}...")


def run(seconds: float, threads: int, tasks: int, fault_rate: float, seed: int) -> dict[str, Any]:
    """Run the soak; return the tally as a dict."""
    tally = Tally()
    stop = time.monotonic() + seconds
    policy = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_retry_after=0.05)
    with RerankEmulator() as emulator:
        settings: dict[str, Any] = {"api_key": "soak", "base_url": emulator.base_url, "timeout": 0.4,
                    "max_retries": 2, "retry_policy": policy}  # fmt: skip
        sync = SiliconFlowClient(**settings)
        batched = SiliconFlowClient(**settings, max_documents_per_request=7, max_concurrency=3)
        async_client = AsyncSiliconFlowClient(**settings)
        langchain = LangChainRerank(client=sync, async_client=async_client, top_n=None)
        llama = LlamaRerank(client=sync, async_client=async_client, top_n=None)

        def one_sync(rng: random.Random) -> None:
            query, texts = rng.choice(QUERIES), documents_for(rng)
            expected = truth(emulator, query, texts)
            path = rng.choice(["core", "batched", "langchain", "llama"])
            try:
                if path in ("core", "batched"):
                    client = sync if path == "core" else batched
                    response = client.rerank(query, texts)
                    got = [(r.index, r.relevance_score) for r in response.results]
                elif path == "langchain":
                    documents = [
                        Document(page_content=t, metadata={"i": i}) for i, t in enumerate(texts)
                    ]
                    out = langchain.compress_documents(documents, query)
                    got = [(d.metadata["i"], d.metadata["relevance_score"]) for d in out]
                else:
                    nodes = [
                        NodeWithScore(node=TextNode(text=t, id_=str(i)))
                        for i, t in enumerate(texts)
                    ]
                    out_nodes = llama.postprocess_nodes(nodes, query_str=query)
                    got = [(int(n.node.node_id), n.score or 0.0) for n in out_nodes]
            except SiliconFlowError as error:
                tally.record(type(error).__name__)
                return
            except Exception as error:
                tally.record("misaligned", f"{path}: undocumented {type(error).__name__}: {error}")
                return
            check(tally, expected, got)

        async def one_async(rng: random.Random) -> None:
            query, texts = rng.choice(QUERIES), documents_for(rng)
            expected = truth(emulator, query, texts)
            path = rng.choice(["core", "langchain", "llama"])
            try:
                if path == "core":
                    response = await async_client.rerank(query, texts)
                    got = [(r.index, r.relevance_score) for r in response.results]
                elif path == "langchain":
                    documents = [
                        Document(page_content=t, metadata={"i": i}) for i, t in enumerate(texts)
                    ]
                    out = await langchain.acompress_documents(documents, query)
                    got = [(d.metadata["i"], d.metadata["relevance_score"]) for d in out]
                else:
                    nodes = [
                        NodeWithScore(node=TextNode(text=t, id_=str(i)))
                        for i, t in enumerate(texts)
                    ]
                    out_nodes = await llama.apostprocess_nodes(nodes, query_str=query)
                    got = [(int(n.node.node_id), n.score or 0.0) for n in out_nodes]
            except SiliconFlowError as error:
                tally.record(type(error).__name__)
                return
            except Exception as error:
                tally.record(
                    "misaligned", f"async {path}: undocumented {type(error).__name__}: {error}"
                )
                return
            check(tally, expected, got)

        def sync_worker(n: int) -> None:
            rng = random.Random(seed + n)
            while time.monotonic() < stop:
                one_sync(rng)

        def async_worker() -> None:
            async def task(n: int) -> None:
                rng = random.Random(seed + 1000 + n)
                while time.monotonic() < stop:
                    await one_async(rng)

            async def main() -> None:
                await asyncio.gather(*(task(n) for n in range(tasks)))
                await async_client.aclose()

            asyncio.run(main())

        def injector() -> None:
            rng = random.Random(seed - 1)
            while time.monotonic() < stop:
                time.sleep(0.005)
                if rng.random() < fault_rate:
                    name, make = rng.choice(FAULTS)
                    emulator.enqueue(make())
                    with tally.lock:
                        tally.faults[name] += 1

        workers = [threading.Thread(target=sync_worker, args=(n,)) for n in range(threads)]
        workers.append(threading.Thread(target=async_worker))
        workers.append(threading.Thread(target=injector))
        started = time.monotonic()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.monotonic() - started
        served = emulator.stats
        sync.close()
        batched.close()
    return {
        "seconds": round(elapsed, 1),
        "calls": tally.calls,
        "correct": tally.correct,
        "failed_loudly": dict(tally.failed_loudly),
        "misaligned": tally.misaligned,
        "faults_injected": sum(tally.faults.values()),
        "faults_by_kind": dict(tally.faults),
        "requests_served": served.requests,
        "examples": tally.examples,
        "threads": threads,
        "tasks": tasks,
    }


def report(result: dict[str, Any]) -> str:
    loud = sum(result["failed_loudly"].values())
    lines = [
        "# Soak results",
        "",
        f"{result['calls']:,} reranks in {result['seconds']} s from {result['threads']} threads and "
        f"{result['tasks']} asyncio tasks sharing one sync client, one async client, one batched "
        f"client and one reranker per framework; {result['faults_injected']:,} faults injected at "
        f"random into {result['requests_served']:,} requests.",
        "",
        "| outcome | calls |",
        "|---|---:|",
        f"| returned the ground-truth ranking (including after retries) | {result['correct']:,} |",
        f"| failed loudly with a documented error | {loud:,} |",
        f"| misaligned, lost or undocumented | {result['misaligned']} |",
        "",
        "Documented errors raised: "
        + ", ".join(f"{k} {v}" for k, v in sorted(result["failed_loudly"].items())),
        "",
        "Faults injected: "
        + ", ".join(f"{k} {v}" for k, v in sorted(result["faults_by_kind"].items())),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Parse arguments, run, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--fault-rate", type=float, default=0.3, help="chance per 5 ms tick")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print JSON only, write nothing")
    args = parser.parse_args()
    result = run(args.seconds, args.threads, args.tasks, args.fault_rate, args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        text = report(result)
        (HERE / "soak.md").write_text(text, encoding="utf-8")
        print(text)
    return 0 if result["misaligned"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
