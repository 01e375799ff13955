"""The emulator itself, spoken to with raw httpx over a loopback socket."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from siliconflow_rerank.emulator import Fault, RerankEmulator

from ..helpers import wait_until

HEADERS = {"Authorization": "Bearer anything"}


def post(emulator: RerankEmulator, body: Any, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", HEADERS)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{emulator.base_url}/rerank", content=content, timeout=10, **kwargs)


def rerank_body(**fields: Any) -> dict[str, Any]:
    body = {"model": "BAAI/bge-reranker-v2-m3", "query": "apple", "documents": ["apple", "car"]}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def test_answers_like_the_api(emulator):
    response = post(emulator, rerank_body(documents=["a car", "apple pie", "apple"]))
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-siliconcloud-trace-id"])
    body = response.json()
    assert body["id"].startswith("rerank-")
    assert [r["index"] for r in body["results"]] == [2, 1, 0]
    assert all(0 <= r["relevance_score"] <= 1 for r in body["results"])
    assert all("document" not in r for r in body["results"])
    tokens = body["meta"]["tokens"]
    assert tokens["input_tokens"] > 0
    assert tokens["image_tokens"] == 0
    assert body["meta"]["billed_units"]["input_tokens"] == tokens["input_tokens"]


def test_an_abandoned_upload_is_not_a_request(emulator):
    url = httpx.URL(emulator.base_url)
    assert url.port is not None
    with socket.create_connection((url.host, url.port)) as partial:
        partial.sendall(
            b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer sk-abandoned\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"model": "BAAI/'
        )
        wait_until(lambda: emulator.stats.open_connections)
    # Closed mid-body: wait until the server has seen it go, then check it was not counted.
    wait_until(lambda: not emulator.stats.open_connections)
    assert emulator.stats.open_connections == 0
    assert emulator.stats.requests == 0
    assert post(emulator, rerank_body()).status_code == 200
    assert emulator.stats.requests == 1


def test_scores_are_deterministic_and_per_pair(emulator):
    documents = ["apple pie recipe", "apple", "banana", "green apple and red apple"]
    first = post(emulator, rerank_body(documents=documents)).json()["results"]
    second = post(emulator, rerank_body(documents=documents)).json()["results"]
    assert first == second
    # A pair's score does not depend on the other documents, as with a real cross-encoder.
    alone = post(emulator, rerank_body(documents=["banana", "apple pie recipe"])).json()["results"]
    by_text = {documents[r["index"]]: r["relevance_score"] for r in first}
    assert {r["relevance_score"] for r in alone} == {
        by_text["banana"],
        by_text["apple pie recipe"],
    }


def test_ties_are_broken_by_index(emulator):
    results = post(emulator, rerank_body(documents=["x", "apple", "y", "apple"])).json()["results"]
    assert [r["index"] for r in results] == [1, 3, 0, 2]


def test_obvious_cases_rank_as_a_reader_expects(emulator):
    documents = ["Apple released a phone.", "Bananas ripen fast.", "Store apples in the fridge."]
    body = rerank_body(query="How do I keep apples fresh?", documents=documents)
    results = post(emulator, body).json()["results"]
    # "apples" meets "Apple" through the folded plural, but the exact form ranks higher.
    assert [r["index"] for r in results] == [2, 0, 1]
    assert results[1]["relevance_score"] > 0
    assert results[2]["relevance_score"] == 0


def test_chinese_text_scores_sensibly(emulator):
    body = rerank_body(
        query="苹果手机", documents=["今天天气很好", "我买了一部苹果手机", "苹果很好吃"]
    )
    results = post(emulator, body).json()["results"]
    assert [r["index"] for r in results] == [1, 2, 0]
    assert results[-1]["relevance_score"] == 0


def test_top_n_and_return_documents(emulator):
    body = rerank_body(documents=["car", "apple"], top_n=1, return_documents=True)
    results = post(emulator, body).json()["results"]
    assert results == [
        {
            "index": 1,
            "relevance_score": results[0]["relevance_score"],
            "document": {"text": "apple"},
        }
    ]


def test_media_items_score_from_url_words(emulator):
    body = rerank_body(
        model="Qwen/Qwen3-VL-Reranker-8B",
        query={"image": "https://img.example.com/photos/red-apple.jpg"},
        documents=[
            {"image": "https://img.example.com/photos/blue-car.jpg"},
            "a red apple on a table",
            {"video": "https://cdn.example.com/apple-harvest.mp4"},
        ],
    )
    response = post(emulator, body).json()
    assert [r["index"] for r in response["results"]] == [1, 2, 0]
    assert response["meta"]["tokens"]["image_tokens"] > 0


@pytest.mark.parametrize("padding", [0, 2 * 1024 * 1024 + 1])
def test_inline_images_score_from_the_words_inside(emulator, padding):
    # The padding puts the data past the part the emulator scans, at a length not a multiple of 3.
    png = b"\x89PNG\r\n\x1a\n" + b"tEXtDescription\x00a ripe yellow banana\x00" + bytes(padding)
    inline = "data:image/png;base64," + base64.b64encode(png).decode()
    body = rerank_body(
        model="Qwen/Qwen3-VL-Reranker-8B",
        query="banana",
        documents=["a fast car", {"image": inline}],
    )
    assert post(emulator, body).json()["results"][0]["index"] == 1


def test_long_documents_are_chunked_and_score_as_their_best_chunk(emulator):
    # bce has a 512-token context, so the only mention of the query sits in a later chunk.
    long_document = " ".join(["filler"] * 700 + ["apple"])
    body = rerank_body(model="netease-youdao/bce-reranker-base_v1", documents=[long_document, "x"])
    chunked = post(emulator, body).json()["results"]
    assert chunked[0]["index"] == 0
    assert chunked[0]["relevance_score"] > 0
    one_chunk = post(emulator, {**body, "max_chunks_per_doc": 1}).json()["results"]
    assert {r["relevance_score"] for r in one_chunk} == {0}
    more_tokens = post(emulator, {**body, "overlap_tokens": 80}).json()["meta"]["tokens"]
    fewer_tokens = post(emulator, body).json()["meta"]["tokens"]
    assert more_tokens["input_tokens"] > fewer_tokens["input_tokens"]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"model": None}, 20015),
        ({"model": "nobody/no-such-model"}, 20012),
        ({"query": ""}, 20015),
        ({"documents": []}, 20015),
        ({"documents": [{"audio": "x"}]}, 20015),
        ({"documents": [3]}, 20015),
        ({"top_n": 0}, 20015),
        ({"overlap_tokens": 81}, 20015),
        ({"overlap_tokens": -1}, 20015),
        ({"max_chunks_per_doc": 0}, 20015),
        ({"instruction": "be brief"}, 20015),
        ({"model": "Qwen/Qwen3-Reranker-8B", "instruction": ""}, 20015),
        ({"documents": [{"image": "https://x.example/a.png"}]}, 20015),
        ({"query": {"video": "https://x.example/a.mp4"}}, 20015),
        ({"return_documents": "yes"}, 20015),
    ],
)
def test_invalid_requests_get_400_with_vendor_body(emulator, fields, code):
    response = post(
        emulator, rerank_body(**fields) | {k: v for k, v in fields.items() if v is None}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == code
    assert body["message"]
    assert "data" in body


def test_instruction_is_accepted_by_qwen3(emulator):
    body = rerank_body(model="Qwen/Qwen3-Reranker-8B", instruction="Prefer fruit")
    assert post(emulator, body).status_code == 200


def test_non_json_body_gets_400(emulator):
    assert post(emulator, b"{not json").status_code == 400


def test_wrong_key_gets_bare_json_string_401(emulator):
    emulator.api_key = "sk-right"
    response = post(emulator, rerank_body(), headers={"Authorization": "Bearer sk-wrong"})
    assert response.status_code == 401
    assert response.json() == "Invalid token"
    assert post(emulator, rerank_body(), headers={}).status_code == 401
    ok = post(emulator, rerank_body(), headers={"Authorization": "Bearer sk-right"})
    assert ok.status_code == 200


def test_other_paths_get_plain_text_404(emulator):
    for response in (
        httpx.post(emulator.base_url + "/audio/speech", json={}, headers=HEADERS),
        httpx.get(emulator.base_url + "/rerank"),
    ):
        assert response.status_code == 404
        assert response.text == "404 page not found"
        assert "x-siliconcloud-trace-id" in response.headers


@pytest.mark.parametrize(
    ("fault", "status", "check"),
    [
        (Fault.rate_limited(), 429, lambda r: "rate limiting" in r.json()["message"]),
        (Fault.rate_limited(retry_after="2"), 429, lambda r: r.headers["retry-after"] == "2"),
        (Fault.overloaded(), 503, lambda r: r.json()["code"] == 50505),
        (Fault.server_error(), 500, lambda r: r.json()["code"] == 50507),
        (Fault.bad_gateway_html(), 502, lambda r: r.text.startswith("<html>")),
        (Fault.gateway_timeout(), 504, lambda r: r.text == "Gateway Timeout"),
        (Fault.truncated_json(), 200, lambda r: r.text.startswith('{"id"')),
        (Fault.not_json(), 200, lambda r: not r.text.startswith("{")),
        (Fault.index_out_of_range(), 200, lambda r: r.json()["results"][0]["index"] > 1),
        (Fault.duplicate_index(), 200, lambda r: len(r.json()["results"]) == 3),
        (Fault.missing_results(), 200, lambda r: "results" not in r.json()),
        (Fault.dropped_results(), 200, lambda r: len(r.json()["results"]) == 1),
        (Fault.non_finite_score(), 200, lambda r: "NaN" in r.text),
    ],
)
def test_scripted_faults_hit_the_next_request_only(emulator, fault, status, check):
    emulator.enqueue(fault)
    response = post(emulator, rerank_body())
    assert response.status_code == status
    assert check(response)
    if status == 200 and fault.kind == "truncated_json":
        with pytest.raises(ValueError):  # noqa: PT011 - any JSON decode error
            response.json()
    follow_up = post(emulator, rerank_body())
    assert follow_up.status_code == 200
    assert len(follow_up.json()["results"]) == 2


def test_disconnect_cuts_the_answer_short(emulator):
    emulator.enqueue(Fault.disconnect())
    with pytest.raises(httpx.RemoteProtocolError):
        post(emulator, rerank_body())
    assert emulator.stats.by_status.get(0) == 1


def test_slow_answer_trips_a_client_timeout(emulator):
    emulator.enqueue(Fault.slow(1.0))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{emulator.base_url}/rerank", json=rerank_body(), headers=HEADERS, timeout=0.2)


def test_latency_per_document(emulator):
    emulator.latency_per_document = 0.02
    started = time.perf_counter()
    post(emulator, rerank_body(documents=["apple"] * 10))
    assert time.perf_counter() - started >= 0.2


def test_rate_limit_by_requests_per_minute(emulator):
    emulator.requests_per_minute = 2
    statuses = [post(emulator, rerank_body()).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_rate_limit_by_tokens_per_minute(emulator):
    emulator.tokens_per_minute = 10
    first = post(emulator, rerank_body())
    second = post(emulator, rerank_body(documents=["apple"] * 10))
    assert first.status_code == 200
    assert second.status_code == 429
    assert "TPM limit reached" in second.json()["message"]


def test_counters(emulator):
    post(emulator, rerank_body())
    emulator.enqueue(Fault.overloaded())
    post(emulator, rerank_body(query="pear"))
    stats = emulator.stats
    assert stats.requests == 2
    assert stats.by_status == {200: 1, 503: 1}
    assert stats.last_request_body["query"] == "pear"
    assert stats.max_in_flight >= 1


def test_keep_alive_reuses_one_connection(emulator):
    with httpx.Client() as client:
        for _ in range(5):
            client.post(f"{emulator.base_url}/rerank", json=rerank_body(), headers=HEADERS)
    assert emulator.stats.connections == 1


def test_rank_gives_ground_truth_without_http(emulator):
    body = rerank_body(documents=["car", "apple"])
    assert emulator.rank(body)["results"] == post(emulator, body).json()["results"]
    with pytest.raises(ValueError, match="does not exist"):
        emulator.rank(rerank_body(model="x/y"))


def test_command_line_serves_until_stopped():
    process = subprocess.Popen(
        [sys.executable, "-m", "siliconflow_rerank.emulator", "--port", "0", "--fault", "503"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line
        assert "not a model" in line
        url = match.group(1) + "/rerank"
        assert httpx.post(url, json=rerank_body(), headers=HEADERS).status_code == 503
        assert httpx.post(url, json=rerank_body(), headers=HEADERS).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def raw_exchange(emulator: RerankEmulator, head: bytes, body: bytes = b"") -> bytes:
    """Send raw bytes, return what the server answers before it closes (or 2 s pass)."""
    host, port = emulator.base_url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(head + body)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
    return answer


@pytest.mark.parametrize(
    ("length_headers", "status"),
    [
        (b"Content-Length: abc\r\n", b"400"),
        (b"Content-Length: -5\r\n", b"400"),
        (b"Content-Length: 5\r\nContent-Length: 7\r\n", b"400"),
        (b"Content-Length: 1000000000000\r\n", b"413"),
    ],
    ids=["not a number", "negative", "two lengths", "huge"],
)
def test_a_bad_content_length_gets_a_status_not_a_dropped_connection(
    emulator, length_headers, status
):
    head = b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n" + length_headers
    answer = raw_exchange(emulator, head + b"\r\n", b"{}")
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]


def test_absurdly_nested_json_gets_400(emulator):
    body = b"[" * 200_000 + b"]" * 200_000
    response = httpx.post(
        emulator.base_url + "/rerank",
        content=body,
        headers={**HEADERS, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert "Invalid JSON" in response.json()["message"]


def test_the_stats_repr_never_shows_the_key(emulator):
    post(emulator, rerank_body(), headers={"Authorization": "Bearer sk-stats-canary-99"})
    stats = emulator.stats
    assert stats.last_request_headers["authorization"] == "Bearer sk-stats-canary-99"
    assert "sk-stats-canary-99" not in repr(stats)
    assert "'authorization': '[redacted]'" in repr(stats)


def test_connections_beyond_the_worker_bound_wait_their_turn():
    with RerankEmulator(max_workers=2) as emulator:
        host, port = emulator.base_url.split("//")[1].split("/")[0].split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(2)]
        wait_until(lambda: emulator.stats.connections == 2)
        # Both handler threads are taken by idle connections: a third is queued, not served.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                emulator.base_url + "/rerank", json=rerank_body(), headers=HEADERS, timeout=0.5
            )
        for sock in idle:
            sock.close()
        response = httpx.post(emulator.base_url + "/rerank", json=rerank_body(), headers=HEADERS)
        assert response.status_code == 200


_RERANK = {"model": "BAAI/bge-reranker-v2-m3", "query": "apple", "documents": ["apple", "car"]}
_EMBED = {"model": "BAAI/bge-m3", "input": ["apple"]}
_CHAT = {"model": "Qwen/Qwen2.5-7B-Instruct", "messages": [{"role": "user", "content": "hi"}]}
ODD_BODIES: list[tuple[str, object]] = [
    ("rerank", {**_RERANK, "model": 5}),
    ("rerank", {**_RERANK, "model": ["a"]}),
    ("rerank", {**_RERANK, "query": 5}),
    ("rerank", {**_RERANK, "query": []}),
    ("rerank", {**_RERANK, "query": {"text": 5}}),
    ("rerank", {**_RERANK, "documents": {}}),
    ("rerank", {**_RERANK, "documents": [[]]}),
    ("rerank", {**_RERANK, "documents": [None]}),
    ("rerank", {**_RERANK, "documents": [{}]}),
    ("rerank", {**_RERANK, "documents": [{"image": ""}]}),
    ("rerank", {**_RERANK, "top_n": "3"}),
    ("rerank", {**_RERANK, "top_n": 1e309}),
    ("rerank", {**_RERANK, "top_n": -1}),
    ("rerank", {**_RERANK, "top_n": True}),
    ("rerank", {**_RERANK, "top_n": 1.5}),
    ("rerank", {**_RERANK, "overlap_tokens": 10**30}),
    ("rerank", {**_RERANK, "max_chunks_per_doc": "5"}),
    ("rerank", {**_RERANK, "instruction": 5}),
    ("rerank", []),
    ("rerank", None),
    ("embeddings", {**_EMBED, "input": []}),
    ("embeddings", {**_EMBED, "input": [""]}),
    ("embeddings", {**_EMBED, "input": [1]}),
    ("embeddings", {**_EMBED, "input": [{"image": 5}]}),
    ("embeddings", {**_EMBED, "input": [[]]}),
    ("embeddings", {**_EMBED, "input": ["x"] * 100}),
    ("embeddings", {**_EMBED, "input": "x" * 1_000_000}),  # one "word" of 250,000 tokens
    ("embeddings", {**_EMBED, "dimensions": 2**63}),
    ("embeddings", {**_EMBED, "dimensions": "1024"}),
    ("embeddings", {**_EMBED, "dimensions": 1e309}),
    ("embeddings", {**_EMBED, "encoding_format": "hex"}),
    ("embeddings", {**_EMBED, "model": 5}),
    ("chat/completions", {**_CHAT, "messages": []}),
    ("chat/completions", {**_CHAT, "messages": [5]}),
    ("chat/completions", {**_CHAT, "messages": [{"role": "user", "content": 5}]}),
    ("chat/completions", {**_CHAT, "stream": "yes"}),
    ("chat/completions", {**_CHAT, "temperature": "hot"}),
    ("chat/completions", {**_CHAT, "temperature": 1e309}),
    ("chat/completions", {**_CHAT, "n": 10**6}),
    ("chat/completions", {**_CHAT, "max_tokens": 10**30}),
]


@pytest.mark.parametrize(("path", "body"), ODD_BODIES, ids=lambda case: str(case)[:60])
def test_an_odd_but_well_formed_body_gets_a_4xx_answer(emulator, path, body):
    with httpx.Client(headers=HEADERS, timeout=30) as client:
        response = client.post(f"{emulator.base_url}/{path}", content=json.dumps(body).encode())
        assert 400 <= response.status_code < 500, response.text[:200]
        assert response.json()["message"]
        # Answered, not dropped: the same connection serves the next request.
        assert client.post(f"{emulator.base_url}/rerank", json=_RERANK).status_code == 200
    assert emulator.stats.connections == 1


def test_stalled_uploads_are_dropped_and_free_the_handlers():
    with RerankEmulator(max_workers=2, read_timeout=1.0) as emulator:
        host, port = emulator.base_url.split("//")[1].split("/")[0].split(":")
        head = (
            b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        stalled = [socket.create_connection((host, int(port))) for _ in range(2)]
        for sock in stalled:
            sock.sendall(head)  # and then nothing: both handler threads wait on these
        wait_until(lambda: emulator.stats.connections == 2)
        # Without the read deadline this call would wait for the handlers' 60 s socket timeout.
        response = httpx.post(
            emulator.base_url + "/rerank", json=rerank_body(), headers=HEADERS, timeout=30
        )
        assert response.status_code == 200
        for sock in stalled:
            sock.settimeout(10)
            assert sock.recv(1024) == b""  # closed by the emulator, nothing answered
            sock.close()
        assert emulator.stats.requests == 1  # an upload that never arrived is no request
