"""The fault matrix: every fault, through every entry point, over real sockets to the emulator.

For each (fault, path) it asserts the documented outcome (recovered after N retries, or the exact
error class with status, vendor code and trace id), the number of requests the server saw, that no
connection is left open once the caller closes, and that the caller's inputs are unchanged.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import logging
import os
import socket
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode

from langchain_siliconflow import SiliconFlowRerank as LangChainRerank
from llama_index_siliconflow import SiliconFlowRerank as LlamaRerank
from siliconflow_rerank import (
    APIConnectionError,
    APITimeoutError,
    AsyncSiliconFlowClient,
    InternalServerError,
    InvalidRequestError,
    RateLimitError,
    ResponseValidationError,
    RetryPolicy,
    ServiceUnavailableError,
    SiliconFlowClient,
    SiliconFlowError,
)
from siliconflow_rerank.emulator import Fault, RerankEmulator

from ..helpers import (
    ROOT,
    Runner,
    ScriptedServer,
    SleepRecorder,
    free_port,
    read_request_head,
    wait_until,
)

KEY = "sk-reliability-0001"
QUERY = "fresh apple"
TEXTS = ["a red car", "fresh apple pie", "green apple", "a bicycle"]
TIMEOUT = 0.4


@dataclass
class Path:
    """One way a user reaches the API, driven synchronously."""

    call: Callable[[], list[tuple[int, float]]]
    inputs: Callable[[], Any]
    close: Callable[[], None]
    sleeps: SleepRecorder


def _clients(base_url: str, sleeps: SleepRecorder, **extra: Any) -> dict[str, Any]:
    settings = {
        "api_key": KEY,
        "base_url": base_url,
        "max_retries": 2,
        "timeout": TIMEOUT,
        "retry_policy": sleeps.policy(),
        **extra,
    }
    return {"sync": SiliconFlowClient(**settings), "async": AsyncSiliconFlowClient(**settings)}


def make_path(name: str, base_url: str) -> Path:
    sleeps = SleepRecorder()
    loop = asyncio.new_event_loop()
    extra = {"max_documents_per_request": 2, "max_concurrency": 2} if name == "batched" else {}
    clients = _clients(base_url, sleeps, **extra)
    documents = [
        Document(page_content=t, metadata={"n": i}, id=str(i)) for i, t in enumerate(TEXTS)
    ]
    nodes = [
        NodeWithScore(node=TextNode(text=t, id_=str(i)), score=1.0) for i, t in enumerate(TEXTS)
    ]
    langchain = LangChainRerank(client=clients["sync"], async_client=clients["async"], top_n=None)
    llama = LlamaRerank(client=clients["sync"], async_client=clients["async"], top_n=None)

    def core(response: Any) -> list[tuple[int, float]]:
        return [(r.index, r.relevance_score) for r in response.results]

    def from_documents(out: Any) -> list[tuple[int, float]]:
        return [(d.metadata["n"], d.metadata["relevance_score"]) for d in out]

    def from_nodes(out: Any) -> list[tuple[int, float]]:
        return [(int(n.node.node_id), n.score) for n in out]

    calls: dict[str, Callable[[], list[tuple[int, float]]]] = {
        "core-sync": lambda: core(clients["sync"].rerank(QUERY, TEXTS)),
        "core-async": lambda: core(loop.run_until_complete(clients["async"].rerank(QUERY, TEXTS))),
        "langchain-sync": lambda: from_documents(langchain.compress_documents(documents, QUERY)),
        "langchain-async": lambda: from_documents(
            loop.run_until_complete(langchain.acompress_documents(documents, QUERY))
        ),
        "llama-index-sync": lambda: from_nodes(llama.postprocess_nodes(nodes, query_str=QUERY)),
        "llama-index-async": lambda: from_nodes(
            loop.run_until_complete(llama.apostprocess_nodes(nodes, query_str=QUERY))
        ),
        "batched": lambda: core(clients["sync"].rerank(QUERY, TEXTS)),
    }

    def close() -> None:
        clients["sync"].close()
        loop.run_until_complete(clients["async"].aclose())
        loop.close()

    return Path(
        call=calls[name],
        inputs=lambda: ([d.model_dump() for d in documents], [n.model_dump() for n in nodes]),
        close=close,
        sleeps=sleeps,
    )


PATHS = [
    "core-sync",
    "core-async",
    "langchain-sync",
    "langchain-async",
    "llama-index-sync",
    "llama-index-async",
    "batched",
]

# fault, how many times in a row, expected error (None: recovers), vendor code or status to check
TRANSIENT: list[tuple[str, Callable[[], Fault]]] = [
    ("429", Fault.rate_limited),
    ("429 Retry-After", lambda: Fault.rate_limited(retry_after="1")),
    ("503 50505", Fault.overloaded),
    ("500", Fault.server_error),
    ("502 HTML", Fault.bad_gateway_html),
    ("504 text", Fault.gateway_timeout),
    ("reset mid-response", Fault.disconnect),
    ("read timeout", lambda: Fault.slow(TIMEOUT + 0.3)),
]

BROKEN_ANSWERS: list[tuple[str, Callable[[], Fault], str]] = [
    ("truncated JSON", Fault.truncated_json, "not valid JSON"),
    ("non-JSON body", Fault.not_json, "not valid JSON"),
    ("out-of-range index", Fault.index_out_of_range, "out of range"),
    ("duplicated index", Fault.duplicate_index, "appears twice"),
    ("missing results", Fault.missing_results, "results"),
    ("dropped result", Fault.dropped_results, "every one was asked for"),
    ("non-finite score", Fault.non_finite_score, "relevance_score"),
]

PERSISTENT: list[tuple[str, Callable[[], Fault], type[SiliconFlowError], Any]] = [
    ("429", Fault.rate_limited, RateLimitError, 429),
    ("503 50505", Fault.overloaded, ServiceUnavailableError, 50505),
    ("500", Fault.server_error, InternalServerError, 50507),
    ("502 HTML", Fault.bad_gateway_html, InternalServerError, 502),
    ("504 text", Fault.gateway_timeout, InternalServerError, 504),
    ("reset mid-response", Fault.disconnect, APIConnectionError, None),
    ("read timeout", lambda: Fault.slow(TIMEOUT + 0.3), APITimeoutError, None),
]


@pytest.fixture(scope="module")
def server():
    with RerankEmulator() as emulator:
        yield emulator


@pytest.fixture
def fresh(server: RerankEmulator):
    server.reset()
    server.latency = 0.0
    return server


def run_path(name: str, server: RerankEmulator, check: Callable[[Path], None]) -> None:
    path = make_path(name, server.base_url)
    before = copy.deepcopy(path.inputs())
    try:
        check(path)
        assert path.inputs() == before, "the caller's documents or nodes changed"
    finally:
        path.close()
    wait_until(lambda: not server.stats.open_connections, timeout=3)
    assert server.stats.open_connections == 0, "a connection was left open"


def truth(server: RerankEmulator) -> list[tuple[int, float]]:
    body = {"model": "BAAI/bge-reranker-v2-m3", "query": QUERY, "documents": TEXTS}
    return [(r["index"], r["relevance_score"]) for r in server.rank(body)["results"]]


@pytest.mark.parametrize("name", PATHS)
def test_clean_call(fresh, name):
    def check(path: Path) -> None:
        assert path.call() == truth(fresh)
        assert fresh.stats.requests == (2 if name == "batched" else 1)

    run_path(name, fresh, check)


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize(("label", "fault"), TRANSIENT, ids=[t[0] for t in TRANSIENT])
def test_transient_fault_is_recovered(fresh, name, label, fault):
    def check(path: Path) -> None:
        fresh.enqueue(fault())
        assert path.call() == truth(fresh)
        assert fresh.stats.requests == (3 if name == "batched" else 2)
        assert len(path.sleeps.delays) == 1
        if label == "429 Retry-After":
            assert path.sleeps.delays == [1.0]

    run_path(name, fresh, check)


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize(
    ("label", "fault", "message"), BROKEN_ANSWERS, ids=[b[0] for b in BROKEN_ANSWERS]
)
def test_broken_answer_fails_loudly_without_retry(fresh, name, label, fault, message):
    def check(path: Path) -> None:
        fresh.enqueue(fault())
        with pytest.raises(ResponseValidationError, match=message) as info:
            path.call()
        assert info.value.trace_id
        if name == "batched":
            # The other batch runs beside the broken one and is cancelled when the call fails:
            # sent and counted, or not, by then. Neither is sent twice, and nothing waited.
            assert fresh.stats.requests in (1, 2)
        else:
            assert fresh.stats.requests == 1
        assert path.sleeps.delays == []

    run_path(name, fresh, check)


@pytest.mark.parametrize("name", [p for p in PATHS if p != "batched"])
@pytest.mark.parametrize(
    ("label", "fault", "error", "code"), PERSISTENT, ids=[p[0] for p in PERSISTENT]
)
def test_persistent_fault_raises_the_exact_error(fresh, name, label, fault, error, code):
    def check(path: Path) -> None:
        fresh.enqueue(fault(), fault(), fault())
        with pytest.raises(error) as info:
            path.call()
        assert type(info.value) is error
        assert fresh.stats.requests == 3
        assert len(path.sleeps.delays) == 2
        if code is not None:
            assert code in (getattr(info.value, "code", None), info.value.status_code)
            assert info.value.trace_id
        if error is APIConnectionError:
            assert not isinstance(info.value, APITimeoutError)

    run_path(name, fresh, check)


@pytest.mark.parametrize("name", [p for p in PATHS if p != "batched"])
def test_connection_refused(name):
    path = make_path(name, f"http://127.0.0.1:{free_port()}/v1")
    try:
        with pytest.raises(APIConnectionError, match="connection failed") as info:
            path.call()
        assert not isinstance(info.value, APITimeoutError)
        assert len(path.sleeps.delays) == 2
    finally:
        path.close()


# -- opt-in degradation -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_langchain_passthrough_keeps_the_pipeline_up(fresh, mode, caplog):
    fresh.enqueue(*(Fault.overloaded() for _ in range(3)))
    reranker = LangChainRerank(
        api_key=KEY,
        base_url=fresh.base_url,
        top_n=3,
        on_error="passthrough",
        retry_policy=SleepRecorder().policy(),
    )
    documents = [Document(page_content=t, id=str(i)) for i, t in enumerate(TEXTS)]
    with caplog.at_level(logging.WARNING, logger="siliconflow_rerank"):
        if mode == "sync":
            out = reranker.compress_documents(documents, QUERY)
        else:
            out = asyncio.run(reranker.acompress_documents(documents, QUERY))
    assert [d.id for d in out] == ["0", "1", "2"]
    assert all(d.metadata == {"rerank_status": "failed"} for d in out)
    assert all(d.metadata == {} for d in documents)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "50505" in warnings[0].getMessage()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_llama_index_passthrough_keeps_the_pipeline_up(fresh, mode, caplog):
    fresh.enqueue(*(Fault.disconnect() for _ in range(3)))
    reranker = LlamaRerank(
        api_key=KEY,
        base_url=fresh.base_url,
        top_n=2,
        on_error="passthrough",
        retry_policy=SleepRecorder().policy(),
    )
    nodes = [
        NodeWithScore(node=TextNode(text=t, id_=str(i)), score=0.5 - i / 10)
        for i, t in enumerate(TEXTS)
    ]
    with caplog.at_level(logging.WARNING, logger="siliconflow_rerank"):
        if mode == "sync":
            out = reranker.postprocess_nodes(nodes, query_str=QUERY)
        else:
            out = asyncio.run(reranker.apostprocess_nodes(nodes, query_str=QUERY))
    assert [(n.node.node_id, n.score) for n in out] == [("0", 0.5), ("1", 0.4)]
    assert all(n.node.metadata == {"rerank_status": "failed"} for n in out)
    assert "rerank_status" in out[0].node.excluded_llm_metadata_keys
    assert all(n.node.metadata == {} for n in nodes)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_passthrough_still_raises_on_bad_input(fresh):
    reranker = LangChainRerank(api_key=KEY, base_url=fresh.base_url, on_error="passthrough")
    with pytest.raises(ValueError, match="query"):
        reranker.compress_documents([Document(page_content="a")], "   ")
    assert fresh.stats.requests == 0


@pytest.mark.slow
def test_short_soak_has_no_misaligned_results():
    """A few seconds of the soak (benchmarks/soak.py): shared instances, threads and tasks,
    random faults; every call is the ground truth or a documented error."""
    import json
    import subprocess
    import sys

    script = ROOT / "benchmarks" / "soak.py"
    out = subprocess.run(
        [sys.executable, str(script), "--seconds", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["misaligned"] == 0, result["examples"]
    assert result["calls"] > 200
    assert result["faults_injected"] > 20
    assert result["correct"] > result["calls"] // 2
    assert out.returncode == 0


# -- every attempt is bounded in time, whatever the server does ----------------------------------


def _trickle(connection: socket.socket) -> None:
    """Answer with a promised 1,000-byte body, one byte every 0.2 s: never idle long enough for a
    read timeout, never done."""
    read_request_head(connection)
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    connection.sendall(b"Content-Length: 1000\r\n\r\n")
    for _ in range(1000):
        connection.sendall(b" ")
        time.sleep(0.2)


def _never_reads(connection: socket.socket) -> None:
    """Accept the connection and never read the request: the upload stalls once buffers fill."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    time.sleep(30)


@pytest.mark.parametrize("client_kind", ["sync", "async"])
def test_a_trickling_answer_ends_at_the_attempt_deadline(client_kind):
    with ScriptedServer(_trickle) as server:
        runner = Runner(
            client_kind, base_url=server.base_url, timeout=1.0, attempt_deadline=0.8, max_retries=0
        )
        try:
            with pytest.raises(APITimeoutError, match=r"0\.8 s deadline"):
                runner.rerank("apple", ["apple pie"])
        finally:
            runner.close()


@pytest.mark.parametrize("client_kind", ["sync", "async"])
def test_an_upload_the_server_stops_reading_ends_in_a_timeout(client_kind):
    documents = ["x" * 1_000_000] * 16  # far more than the socket buffers hold
    with ScriptedServer(_never_reads) as server:
        runner = Runner(client_kind, base_url=server.base_url, timeout=0.5, max_retries=0)
        with pytest.raises(APITimeoutError):
            runner.rerank("apple", documents)
    # Closed after the server went: a socket whose unsent upload never drains only closes when
    # the other side does.
    runner.close()


def test_the_deadline_is_derived_from_the_timeout_unless_set():
    assert SiliconFlowClient(api_key=KEY).attempt_deadline == 250.0  # 10 + 120 + 120
    assert SiliconFlowClient(api_key=KEY, timeout=2.0).attempt_deadline == 6.0
    assert SiliconFlowClient(api_key=KEY, timeout=None).attempt_deadline is None
    assert SiliconFlowClient(api_key=KEY, timeout=2.0, attempt_deadline=9).attempt_deadline == 9.0
    with pytest.raises(InvalidRequestError, match="attempt_deadline"):
        SiliconFlowClient(api_key=KEY, attempt_deadline=float("nan"))


# -- shared clients across processes, loops and close/reuse cycles --------------------------------

QUERIES = ["apple", "pear", "car", "fresh apples", "bus"]


def _ground_truth(emulator: RerankEmulator, query: str) -> list[tuple[int, float]]:
    body = {"model": "BAAI/bge-reranker-v2-m3", "query": query, "documents": TEXTS}
    return [(r["index"], r["relevance_score"]) for r in emulator.rank(body)["results"]]


def _ranked(response: Any) -> list[tuple[int, float]]:
    return [(r.index, r.relevance_score) for r in response.results]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads running (3.12+)
def test_a_forked_child_never_shares_the_parents_connections(fresh):
    client = SiliconFlowClient(api_key=KEY, base_url=fresh.base_url)
    assert _ranked(client.rerank("apple", TEXTS)) == _ground_truth(fresh, "apple")
    opened = fresh.stats.connections
    pid = os.fork()
    if pid == 0:  # the child: its answers must be its own
        status = 0
        try:
            for query in QUERIES * 4:
                if _ranked(client.rerank(query, TEXTS)) != _ground_truth(fresh, query):
                    status = 1
        except BaseException:
            status = 2
        os._exit(status)
    for query in reversed(QUERIES * 4):
        assert _ranked(client.rerank(query, TEXTS)) == _ground_truth(fresh, query)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert fresh.stats.connections > opened  # the child opened a pool of its own
    client.close()


def test_an_async_client_shared_by_threads_that_each_run_a_loop(fresh):
    client = AsyncSiliconFlowClient(api_key=KEY, base_url=fresh.base_url)
    failures: list[BaseException] = []

    def worker(offset: int) -> None:
        async def calls() -> None:
            for query in QUERIES[offset:] + QUERIES[:offset]:
                assert _ranked(await client.rerank(query, TEXTS)) == _ground_truth(fresh, query)

        try:
            for _ in range(3):
                asyncio.run(calls())
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert fresh.stats.requests == 4 * 3 * len(QUERIES)
    # Each loop's pool closed when its loop shut down: nothing left open at the server.
    wait_until(lambda: fresh.stats.open_connections == 0)
    assert fresh.stats.open_connections == 0


def test_close_then_reuse_lets_each_closed_pool_go(fresh):
    client = SiliconFlowClient(api_key=KEY, base_url=fresh.base_url)
    closed_pools = []
    for _ in range(5):
        client.rerank("apple", TEXTS)
        closed_pools.append(weakref.ref(client._transport()))
        client.close()
    gc.collect()
    assert [pool() for pool in closed_pools] == [None] * 5  # none kept alive by the client
    assert _ranked(client.rerank("apple", TEXTS)) == _ground_truth(fresh, "apple")
    client.close()


# -- a sync call of many requests: sent from the client's own event loop thread -----------------


def _loop_thread(client: SiliconFlowClient) -> threading.Thread:
    looped = client._looped
    assert looped is not None  # the call went through the loop thread
    return looped[1]._thread


def test_a_sync_batched_call_runs_on_one_loop_thread_and_reports_progress_here(fresh):
    client = SiliconFlowClient(api_key=KEY, base_url=fresh.base_url, max_documents_per_request=1)
    steps: list[tuple[int, int, int]] = []

    def on_progress(done: int, total: int) -> None:
        steps.append((done, total, threading.get_ident()))

    for query in QUERIES:
        response = client.rerank(query, TEXTS, on_progress=on_progress)
        assert _ranked(response) == _ground_truth(fresh, query)
    thread = _loop_thread(client)
    assert thread.is_alive()
    # The same thread served every call; progress came in order, on the caller's thread.
    assert steps == [(done, 4, threading.get_ident()) for done in range(1, 5)] * len(QUERIES)
    assert fresh.stats.requests == 4 * len(QUERIES)
    client.close()
    assert not thread.is_alive()  # close() stopped it, and closed the pool it opened
    wait_until(lambda: fresh.stats.open_connections == 0)
    assert fresh.stats.open_connections == 0
    assert _ranked(client.rerank("pear", TEXTS)) == _ground_truth(fresh, "pear")  # usable again
    assert _loop_thread(client) is not thread
    client.close()


@pytest.mark.parametrize("cyclic", [False, True], ids=["dropped", "in-a-cycle"])
def test_a_sync_client_let_go_stops_its_loop_thread_and_closes_its_pool(fresh, cyclic, monkeypatch):
    client = SiliconFlowClient(api_key=KEY, base_url=fresh.base_url, max_documents_per_request=2)
    client.rerank("apple", TEXTS)
    thread = _loop_thread(client)
    if cyclic:  # collected by the cycle collector, its pool and loop among the garbage
        holder: list[Any] = [client]
        holder.append(holder)
        del holder
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)  # an unclosed aiohttp session
        del client
        gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert [str(u.exc_value) for u in unraisable] == []
    wait_until(lambda: fresh.stats.open_connections == 0)
    assert fresh.stats.open_connections == 0


def test_a_failing_progress_callback_fails_the_call_and_stops_its_requests(fresh):
    fresh.latency = 0.2
    client = SiliconFlowClient(
        api_key=KEY, base_url=fresh.base_url, max_documents_per_request=1, max_concurrency=1
    )

    def on_progress(done: int, total: int) -> None:
        raise LookupError(f"stop at {done} of {total}")

    with pytest.raises(LookupError, match="stop at 1 of 4"):
        client.rerank("apple", TEXTS, on_progress=on_progress)
    time.sleep(0.5)  # long enough for two more requests, had the call gone on
    assert fresh.stats.requests <= 2  # the first, and at most the one already sent
    client.close()


def test_a_sync_embedding_call_of_many_requests_goes_through_the_loop_thread(fresh):
    client = SiliconFlowClient(api_key=KEY, base_url=fresh.base_url)
    texts = [f"text {i}" for i in range(70)]
    steps: list[tuple[int, int]] = []
    many = client.embed(texts, batch_size=32, on_progress=lambda *step: steps.append(step))
    one_by_one = [client.embed(text).embeddings[0] for text in texts[:3]]
    assert many.embeddings[:3] == one_by_one
    assert len(many.embeddings) == 70
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert _loop_thread(client).is_alive()
    client.close()


def test_a_sync_batched_call_waits_with_the_sync_sleep_it_was_given(fresh):
    waited: list[tuple[float, str]] = []

    async def never(seconds: float) -> None:
        raise AssertionError("the async client's sleep was used for a sync call")

    policy = RetryPolicy(
        sleep=lambda seconds: waited.append((seconds, threading.current_thread().name)),
        async_sleep=never,
    )
    client = SiliconFlowClient(
        api_key=KEY, base_url=fresh.base_url, max_documents_per_request=2, retry_policy=policy
    )
    fresh.enqueue(Fault.rate_limited(retry_after="0.25"))
    assert _ranked(client.rerank("apple", TEXTS)) == _ground_truth(fresh, "apple")
    assert [seconds for seconds, _ in waited] == [0.25]
    assert waited[0][1] != _loop_thread(client).name  # not on the loop: its other tasks go on
    client.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads running (3.12+)
def test_a_forked_child_makes_its_own_loop_thread_for_batched_calls(fresh):
    client = SiliconFlowClient(api_key=KEY, base_url=fresh.base_url, max_documents_per_request=2)
    assert _ranked(client.rerank("apple", TEXTS)) == _ground_truth(fresh, "apple")
    parents = _loop_thread(client)
    pid = os.fork()
    if pid == 0:  # the child: the parent's loop thread does not exist here
        status = 0
        try:
            for query in QUERIES:
                if _ranked(client.rerank(query, TEXTS)) != _ground_truth(fresh, query):
                    status = 1
            if _loop_thread(client) is parents:
                status = 3
        except BaseException:
            status = 2
        os._exit(status)
    for query in reversed(QUERIES):
        assert _ranked(client.rerank(query, TEXTS)) == _ground_truth(fresh, query)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    client.close()


# -- a kept-alive connection that carries an answer nobody asked for -----------------------------


def _read_request(connection: socket.socket) -> dict[str, Any] | None:
    """Read one whole request (head and Content-Length body) and return its JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += connection.recv(65536)
    return dict(json.loads(body))


def _answer(scores: list[float]) -> bytes:
    results = [{"index": i, "relevance_score": s} for i, s in enumerate(scores)]
    body = json.dumps({"id": "x", "results": results}).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _scores_for(query: str, count: int) -> list[float]:
    """Each query's own scores, so an answer meant for another call is told apart."""
    return [round((len(query) * 7 + i) % 10 / 10, 1) for i in range(count)]


def _answers_twice(together: bool) -> Callable[[socket.socket], None]:
    """Answer every request; after the first, also send an answer nobody asked for: in the same
    write, or a moment later, once the connection is idle in the pool."""

    def script(connection: socket.socket) -> None:
        first = True
        while (body := _read_request(connection)) is not None:
            answer = _answer(_scores_for(body["query"], len(body["documents"])))
            if first:
                stale = _answer([0.0] * len(body["documents"]))
                if together:
                    connection.sendall(answer + stale)
                else:
                    connection.sendall(answer)
                    time.sleep(0.05)
                    connection.sendall(stale)
                first = False
            else:
                connection.sendall(answer)

    return script


@pytest.mark.parametrize("together", [True, False], ids=["same-write", "later"])
@pytest.mark.parametrize("client_kind", ["sync", "async"])
def test_an_answer_nobody_asked_for_is_never_taken_as_the_next(client_kind, together):
    with ScriptedServer(_answers_twice(together)) as server:
        runner = Runner(client_kind, base_url=server.base_url, timeout=2.0, max_retries=0)
        try:
            for query in ["apple", "a red car", "pear"]:
                time.sleep(0.1)  # the stale answer has arrived before the next call
                response = runner.rerank(query, TEXTS)
                expected = _scores_for(query, len(TEXTS))
                assert sorted((r.index, r.relevance_score) for r in response.results) == list(
                    enumerate(expected)
                )
            # Each tainted connection was dropped: every call but the first opened a new one.
            assert len(server.connections) == 3
        finally:
            runner.close()


# -- closing a client while its calls are in flight -----------------------------------------------


def _reads_then_stalls(connection: socket.socket) -> None:
    """Read the request, then never answer (until the test's server stops)."""
    read_request_head(connection)
    time.sleep(30)


def _rerank_on_thread(client: SiliconFlowClient, errors: list[BaseException]) -> threading.Thread:
    """A started thread that makes one call of `client`, keeping what it raises in `errors`."""

    def call() -> None:
        try:
            client.rerank("apple", TEXTS)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("batch_size", "callers", "requests"),
    [(None, 3, 3), (2, 1, 2)],
    ids=["whole-calls-on-threads", "a-batched-call-on-the-loop-thread"],
)
def test_sync_close_ends_the_calls_in_flight_at_once(batch_size, callers, requests):
    with ScriptedServer(_reads_then_stalls) as server:
        # A read timeout far beyond the test's patience: only close() can end these calls.
        client = SiliconFlowClient(
            api_key=KEY,
            base_url=server.base_url,
            timeout=60.0,
            max_documents_per_request=batch_size,
        )
        errors: list[BaseException] = []
        threads = [_rerank_on_thread(client, errors) for _ in range(callers)]
        wait_until(lambda: len(server.connections) == requests)
        time.sleep(0.1)  # each request sent, each caller waiting for its answer
        client.close()
        for thread in threads:
            thread.join(timeout=10)
        assert not any(thread.is_alive() for thread in threads)
        assert len(errors) == callers
        for error in errors:
            assert isinstance(error, APIConnectionError)
            assert not isinstance(error, APITimeoutError)
            assert "closed" in str(error)
        assert len(server.connections) == requests  # none retried on a pool opened after close()


def test_sync_close_does_not_wait_for_a_callers_sleep_on_the_loop_thread(emulator):
    # A batched call waits out its retry delay in the caller's own sleep, run off the loop
    # thread: close() stops the loop without waiting for that sleep to end.
    sleeping, release = threading.Event(), threading.Event()

    def blocking_sleep(seconds: float) -> None:
        sleeping.set()
        release.wait(30)

    client = SiliconFlowClient(
        api_key=KEY,
        base_url=emulator.base_url,
        max_documents_per_request=2,
        max_concurrency=1,
        retry_policy=RetryPolicy(sleep=blocking_sleep),
    )
    emulator.enqueue(Fault.overloaded())
    errors: list[BaseException] = []
    caller = _rerank_on_thread(client, errors)
    try:
        assert sleeping.wait(10)
        closing = threading.Thread(target=client.close)
        closing.start()
        closing.join(timeout=10)
        assert not closing.is_alive()  # returned while the sleep still blocks
        caller.join(timeout=10)
        assert not caller.is_alive()
        assert len(errors) == 1
        assert isinstance(errors[0], APIConnectionError)
        assert "closed" in str(errors[0])
    finally:
        release.set()
        caller.join(timeout=10)


def test_async_close_ends_the_calls_in_flight_at_once():
    async def scenario(base_url: str) -> list[BaseException]:
        client = AsyncSiliconFlowClient(api_key=KEY, base_url=base_url, timeout=60.0)
        calls = [asyncio.ensure_future(client.rerank("apple", TEXTS)) for _ in range(3)]
        await asyncio.sleep(0.3)
        await client.aclose()
        done = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        return [error for error in done if isinstance(error, BaseException)]

    with ScriptedServer(_reads_then_stalls) as server:
        errors = asyncio.run(scenario(server.base_url))
        assert len(errors) == 3
        for error in errors:
            assert isinstance(error, APIConnectionError)
            assert "closed" in str(error)
        assert len(server.connections) == 3
