"""Core client behaviour through a fake transport, each test run with the sync and async client."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

import httpx
import pytest

import siliconflow_rerank
from siliconflow_rerank import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncSiliconFlowClient,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    ResponseValidationError,
    ServiceUnavailableError,
    SiliconFlowClient,
    image_item,
    video_item,
)

from ..helpers import ok_body

KEY = "sk-test-key-123456"


class Recorder:
    """A MockTransport handler that records requests and plays scripted answers."""

    def __init__(self, *answers: httpx.Response | Exception | dict[str, Any]) -> None:
        self.answers = list(answers) or [ok_body(0.5)]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, dict):
            return httpx.Response(200, json=answer, headers={"x-siliconcloud-trace-id": "tr-1"})
        # A fresh copy each time: a Response object is bound to the client kind that read it.
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)  # type: ignore[no-any-return]


# -- what is sent -------------------------------------------------------------------------------


def test_sends_only_the_fields_the_caller_set(make_runner):
    recorder = Recorder(ok_body(0.2, 0.9))
    make_runner(recorder).rerank("apple", ["apple pie", "car"])
    assert recorder.body == {
        "model": "BAAI/bge-reranker-v2-m3",
        "query": "apple",
        "documents": ["apple pie", "car"],
    }


def test_sends_every_optional_field_when_set(make_runner):
    recorder = Recorder(ok_body(0.2, 0.9))
    make_runner(recorder).rerank(
        "apple",
        ["apple pie", "car"],
        top_n=1,
        return_documents=False,
        max_chunks_per_doc=4,
        overlap_tokens=0,
    )
    assert recorder.body == {
        "model": "BAAI/bge-reranker-v2-m3",
        "query": "apple",
        "documents": ["apple pie", "car"],
        "top_n": 1,
        "return_documents": False,
        "max_chunks_per_doc": 4,
        "overlap_tokens": 0,
    }


def test_instruction_is_sent_for_qwen3(make_runner):
    recorder = Recorder(ok_body(0.1))
    make_runner(recorder).rerank(
        "q", ["d"], model="Qwen/Qwen3-Reranker-8B", instruction="Prefer recent documents"
    )
    assert recorder.body["instruction"] == "Prefer recent documents"


def test_sends_auth_and_json_headers(make_runner):
    recorder = Recorder()
    make_runner(recorder).rerank("q", "one document")
    request = recorder.requests[0]
    assert request.method == "POST"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("siliconflow-rerank/")
    assert recorder.body["documents"] == ["one document"]


@pytest.mark.parametrize(
    "base_url",
    [
        "https://api.example.com/v1",
        "https://api.example.com/v1/",
        "https://api.example.com/v1/rerank",
        "https://api.example.com/v1/rerank/",
        "  https://api.example.com/v1  ",
    ],
)
def test_base_url_forms_all_reach_the_rerank_path(make_runner, base_url):
    recorder = Recorder()
    make_runner(recorder, base_url=base_url).rerank("q", ["d"])
    assert str(recorder.requests[0].url) == "https://api.example.com/v1/rerank"


def test_default_base_url_is_the_mainland_endpoint(make_runner):
    recorder = Recorder()
    make_runner(recorder).rerank("q", ["d"])
    assert str(recorder.requests[0].url) == "https://api.siliconflow.cn/v1/rerank"


def test_environment_supplies_key_and_base_url(make_runner, monkeypatch):
    monkeypatch.setenv("SILICONFLOW_API_KEY", "sk-from-env-0000")
    monkeypatch.setenv("SILICONFLOW_BASE_URL", "https://api.siliconflow.com/v1/")
    recorder = Recorder()
    runner = make_runner(recorder, api_key=None)
    runner.rerank("q", ["d"])
    assert recorder.requests[0].headers["authorization"] == "Bearer sk-from-env-0000"
    assert str(recorder.requests[0].url) == "https://api.siliconflow.com/v1/rerank"


def test_arguments_win_over_environment(make_runner, monkeypatch):
    monkeypatch.setenv("SILICONFLOW_API_KEY", "sk-from-env-0000")
    monkeypatch.setenv("SILICONFLOW_BASE_URL", "https://env.example.com/v1")
    recorder = Recorder()
    make_runner(recorder, api_key="sk-argument-1111", base_url="https://arg.example.com/v1").rerank(
        "q", ["d"]
    )
    assert recorder.requests[0].headers["authorization"] == "Bearer sk-argument-1111"
    assert recorder.requests[0].url.host == "arg.example.com"


def test_missing_key_names_both_fixes(client_kind):
    cls = SiliconFlowClient if client_kind == "sync" else siliconflow_rerank.AsyncSiliconFlowClient
    with pytest.raises(InvalidRequestError) as info:
        cls()
    assert "SILICONFLOW_API_KEY" in str(info.value)
    assert "api_key=" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"base_url": "ftp://example.com/v1"}, "http(s)"),
        ({"base_url": "not a url"}, "base_url"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"api_key": "   "}, "SILICONFLOW_API_KEY"),
        ({"keepalive_expiry": -1}, "keepalive_expiry"),
        ({"keepalive_expiry": True}, "keepalive_expiry"),
        ({"keepalive_expiry": float("inf")}, "keepalive_expiry"),
        ({"keepalive_expiry": "30"}, "keepalive_expiry"),
    ],
)
def test_bad_configuration_fails_at_construction(client_kind, kwargs, fragment):
    cls = SiliconFlowClient if client_kind == "sync" else siliconflow_rerank.AsyncSiliconFlowClient
    kwargs = {"api_key": KEY, **kwargs}
    with pytest.raises(InvalidRequestError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        cls(**kwargs)


# -- validation before any request --------------------------------------------------------------

BAD_INPUTS: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("empty query", ("", ["d"]), {}, "query"),
    ("blank query", ("   ", ["d"]), {}, "query"),
    ("query of wrong type", (42, ["d"]), {}, "query"),
    ("empty document list", ("q", []), {}, "at least one document"),
    ("documents not a sequence", ("q", 7), {}, "documents"),
    ("None item", ("q", ["a", None]), {}, r"documents\[1\]"),
    ("dict of unknown shape", ("q", [{"audio": "x"}]), {}, r"documents\[0\]"),
    ("dict with two keys", ("q", [{"text": "a", "image": "b"}]), {}, r"documents\[0\]"),
    ("dict with non-string value", ("q", [{"text": 3}]), {}, r"documents\[0\]"),
    ("empty image value", ("q", [{"image": " "}]), {"model": "Qwen/Qwen3-VL-Reranker-8B"}, "empty"),
    ("empty model", ("q", ["d"]), {"model": ""}, "model"),
    ("top_n zero", ("q", ["d"]), {"top_n": 0}, "top_n"),
    ("top_n negative", ("q", ["d"]), {"top_n": -3}, "top_n"),
    ("top_n bool", ("q", ["d"]), {"top_n": True}, "top_n"),
    ("top_n float", ("q", ["d"]), {"top_n": 2.0}, "top_n"),
    ("max_chunks zero", ("q", ["d"]), {"max_chunks_per_doc": 0}, "max_chunks_per_doc"),
    ("overlap negative", ("q", ["d"]), {"overlap_tokens": -1}, "overlap_tokens"),
    ("overlap too big", ("q", ["d"]), {"overlap_tokens": 81}, "overlap_tokens"),
    (
        "empty instruction",
        ("q", ["d"]),
        {"model": "Qwen/Qwen3-Reranker-4B", "instruction": ""},
        "instr",
    ),
    ("return_documents not bool", ("q", ["d"]), {"return_documents": "yes"}, "return_documents"),
    ("instruction on bge", ("q", ["d"]), {"instruction": "be nice"}, "bge-reranker-v2-m3"),
    (
        "chunking on qwen3",
        ("q", ["d"]),
        {"model": "Qwen/Qwen3-Reranker-8B", "max_chunks_per_doc": 2},
        "max_chunks_per_doc",
    ),
    (
        "overlap on qwen3",
        ("q", ["d"]),
        {"model": "Qwen/Qwen3-Reranker-0.6B", "overlap_tokens": 2},
        "overlap_tokens",
    ),
    ("image document on text model", ("q", [{"image": "https://x.test/a.png"}]), {}, "text only"),
    ("video query on text model", ({"video": "https://x.test/a.mp4"}, ["d"]), {}, "video item"),
]


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_fails_before_any_request(make_runner, args, kwargs, fragment):
    recorder = Recorder()
    runner = make_runner(recorder)
    with pytest.raises(InvalidRequestError, match=fragment):
        runner.rerank(*args, **kwargs)
    assert recorder.requests == []


def test_invalid_request_error_is_a_value_error():
    assert issubclass(InvalidRequestError, ValueError)


def test_unknown_models_pass_through_unchecked(make_runner):
    recorder = Recorder(ok_body(0.3))
    make_runner(recorder).rerank(
        {"image": "https://x.test/q.png"},
        [{"video": "https://x.test/a.mp4"}],
        model="vendor/next-reranker",
        instruction="anything",
        max_chunks_per_doc=3,
    )
    assert recorder.body["model"] == "vendor/next-reranker"
    assert recorder.body["instruction"] == "anything"


def test_top_n_larger_than_documents_is_clamped(make_runner):
    recorder = Recorder(ok_body(0.2, 0.9))
    response = make_runner(recorder).rerank("q", ["a", "b"], top_n=50)
    assert recorder.body["top_n"] == 2
    assert len(response.results) == 2


def test_multimodal_items_are_sent_in_wire_form(make_runner, tmp_path: Path):
    png = tmp_path / "cat.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 8)
    recorder = Recorder(ok_body(0.1, 0.2, 0.3, 0.4))
    make_runner(recorder).rerank(
        image_item("https://x.test/query.jpg"),
        [
            {"text": "a caption"},
            image_item(png),
            video_item("https://x.test/clip.mp4"),
            "plain",
        ],
        model="Qwen/Qwen3-VL-Reranker-8B",
    )
    assert recorder.body["query"] == {"image": "https://x.test/query.jpg"}
    assert recorder.body["documents"] == [
        "a caption",
        {"image": "data:image/png;base64,iVBORw0KGgoAAAAAAAAAAA=="},
        {"video": "https://x.test/clip.mp4"},
        "plain",
    ]


def test_caller_documents_are_not_mutated(make_runner):
    documents: list[Any] = ["a", {"text": "b"}]
    snapshot = json.dumps(documents)
    make_runner(Recorder(ok_body(0.1, 0.2))).rerank("q", documents)
    assert json.dumps(documents) == snapshot


# -- what is returned ---------------------------------------------------------------------------


def test_results_are_sorted_by_score_with_ties_by_index(make_runner):
    body = {
        "id": "r1",
        "results": [
            {"index": 3, "relevance_score": 0.5},
            {"index": 0, "relevance_score": 0.1},
            {"index": 2, "relevance_score": 0.9},
            {"index": 1, "relevance_score": 0.5},
        ],
    }
    response = make_runner(Recorder(body)).rerank("q", ["a", "b", "c", "d"])
    assert [r.index for r in response.results] == [2, 1, 3, 0]
    assert response.id == "r1"
    assert response.trace_id == "tr-1"


def test_usage_from_meta_tokens_and_billed_units(make_runner):
    meta = {
        "tokens": {"input_tokens": 150, "output_tokens": 10, "image_tokens": 5},
        "billed_units": {
            "input_tokens": 150,
            "output_tokens": 10,
            "image_tokens": 5,
            "search_units": 1,
            "classifications": 0,
        },
    }
    response = make_runner(Recorder(ok_body(0.5, meta=meta))).rerank("q", ["a"])
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.image_tokens) == (150, 10, 5)
    assert usage.total_tokens == 165
    assert usage.billed_units is not None
    assert usage.billed_units.search_units == 1


def test_usage_from_top_level_tokens_without_image_tokens(make_runner):
    body = ok_body(0.5, tokens={"input_tokens": 7, "output_tokens": 0})
    usage = make_runner(Recorder(body)).rerank("q", ["a"]).usage
    assert usage is not None
    assert (usage.input_tokens, usage.image_tokens, usage.total_tokens) == (7, None, 7)
    assert usage.billed_units is None


def test_usage_from_vllm_total_tokens(make_runner):
    body = ok_body(0.5, model="BAAI/bge-reranker-v2-m3", usage={"total_tokens": 42})
    response = make_runner(Recorder(body)).rerank("q", ["a"])
    assert response.usage is not None
    assert response.usage.total_tokens == 42
    assert response.model == "BAAI/bge-reranker-v2-m3"


def test_no_usage_gives_none(make_runner):
    assert make_runner(Recorder(ok_body(0.5))).rerank("q", ["a"]).usage is None


@pytest.mark.parametrize("echo", [{"text": "alpha"}, "alpha"], ids=["object", "bare string"])
def test_echoed_documents_are_parsed(make_runner, echo):
    body = {"results": [{"index": 0, "relevance_score": 0.5, "document": echo}]}
    response = make_runner(Recorder(body)).rerank("q", ["alpha"], return_documents=True)
    document = response.results[0].document
    assert document is not None
    assert document.text == "alpha"


def test_requested_documents_are_filled_in_when_the_server_omits_them(make_runner):
    body = ok_body(0.1, 0.9)
    response = make_runner(Recorder(body)).rerank(
        "q",
        ["alpha", {"image": "https://x.test/b.png"}],
        model="Qwen/Qwen3-VL-Reranker-8B",
        return_documents=True,
    )
    documents = [r.document for r in response.results]
    assert documents[0] is not None
    assert documents[0].image == "https://x.test/b.png"
    assert documents[1] is not None
    assert documents[1].text == "alpha"


def test_inline_media_documents_are_filled_in_as_data_uris(make_runner, tmp_path: Path):
    png = tmp_path / "cat.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 8)
    response = make_runner(Recorder(ok_body(0.9, 0.1))).rerank(
        "q", [image_item(png), image_item(png.read_bytes())], model="Qwen/Qwen3-VL-Reranker-8B",
        return_documents=True,
    )  # fmt: skip
    expected = "data:image/png;base64,iVBORw0KGgoAAAAAAAAAAA=="
    assert [r.document.image for r in response.results if r.document] == [expected, expected]


def test_server_returning_more_than_top_n_is_cut(make_runner):
    response = make_runner(Recorder(ok_body(0.1, 0.9, 0.5))).rerank("q", ["a", "b", "c"], top_n=2)
    assert [r.index for r in response.results] == [1, 2]


def _two(second: bytes, extra: bytes = b"") -> bytes:
    """An answer for two documents whose second result (and `extra` fields) are under test."""
    tail = b", " + extra if extra else b""
    return b'{"results": [{"index": 0, "relevance_score": 0.1}, ' + second + b"]" + tail + b"}"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"<html>oops</html>", "not valid JSON"),
        (b'{"id": "x", "results": [{"index": 0, "rel', "not valid JSON"),
        (b'{"id": "x"}', "results"),
        (b'{"results": [{"index": 5, "relevance_score": 0.2}]}', "out of range"),
        (b'{"results": [{"index": -1, "relevance_score": 0.2}]}', "index"),
        (
            b'{"results": [{"index": 0, "relevance_score": 0.2}, {"index": 0, "relevance_score": 0.1}]}',
            "appears twice",
        ),
        (b'{"results": [{"index": 0, "relevance_score": NaN}]}', "relevance_score"),
        (b'{"results": [{"index": 0, "relevance_score": Infinity}]}', "relevance_score"),
        (b'{"results": [{"index": 0, "relevance_score": "high"}]}', "relevance_score"),
        (b'{"results": [{"index": 0}]}', "relevance_score"),
        (b'{"results": "none"}', "results"),
        (b"[]", "body"),
        # Loose types are refused, not coerced: true is no index, "0.5" and true are no scores.
        (_two(b'{"index": true, "relevance_score": 0.2}'), "invalid 'results.1.index'"),
        (_two(b'{"index": 1.0, "relevance_score": 0.2}'), "invalid 'results.1.index'"),
        (_two(b'{"index": 1, "relevance_score": "0.5"}'), "invalid 'results.1.relevance_score'"),
        (_two(b'{"index": 1, "relevance_score": true}'), "invalid 'results.1.relevance_score'"),
        (
            _two(
                b'{"index": 1, "relevance_score": 0.2}',
                b'"meta": {"tokens": {"input_tokens": 1.5}}',
            ),
            "usage",
        ),
        (_two(b'{"index": 1, "relevance_score": 0.2}', b'"meta": {"tokens": [5]}'), "usage"),
        (_two(b'{"index": 1, "relevance_score": 0.2}', b'"meta": {"billed_units": "x"}'), "usage"),
        (_two(b'{"index": 1, "relevance_score": 0.2}', b'"usage": {"total_tokens": "9"}'), "usage"),
        (_two(b'{"index": 1, "relevance_score": 0.2}', b'"usage": [9]'), "usage"),
    ],
)
def test_invalid_success_bodies_raise_response_validation_error(make_runner, content, fragment):
    answer = httpx.Response(200, content=content, headers={"x-siliconcloud-trace-id": "tr-9"})
    recorder = Recorder(answer)
    with pytest.raises(ResponseValidationError, match=fragment) as info:
        make_runner(recorder).rerank("q", ["a", "b"])
    assert info.value.trace_id == "tr-9"
    assert info.value.body_excerpt == content.decode()[:300]
    assert len(recorder.requests) == 1  # a broken 2xx is not retried


# -- error answers ------------------------------------------------------------------------------

STATUS_CASES: list[tuple[int, bytes, type[APIStatusError], object, str]] = [
    (
        400,
        b'{"code": 20012, "message": "Model does not exist. Please check it carefully.", "data": ""}',
        BadRequestError,
        20012,
        "Model does not exist",
    ),
    (401, b'"Invalid token"', AuthenticationError, None, "Invalid token"),
    (403, b"Forbidden", PermissionDeniedError, None, "Forbidden"),
    (404, b"404 page not found", NotFoundError, None, "404 page not found"),
    (413, b'{"code": 20042, "message": "input too long"}', RequestTooLargeError, 20042, "too long"),
    (
        429,
        b'{"message": "Request was rejected due to rate limiting. Details:TPM limit reached.",'
        b' "data": "x"}',
        RateLimitError,
        None,
        "TPM limit reached",
    ),
    (500, b'{"code": 50507, "message": "Unknown error"}', InternalServerError, 50507, "Unknown"),
    (
        502,
        b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
        InternalServerError,
        None,
        "HTML page from a proxy or gateway (502 Bad Gateway)",
    ),
    (
        503,
        b'{"code": 50505, "message": "Model service overloaded. Please try again later."}',
        ServiceUnavailableError,
        50505,
        "overloaded",
    ),
    (504, b"Gateway Timeout", InternalServerError, None, "Gateway Timeout"),
    (418, b"", APIStatusError, None, "empty response body"),
]


@pytest.mark.parametrize(
    ("status", "content", "error_class", "code", "message"),
    STATUS_CASES,
    ids=[str(case[0]) for case in STATUS_CASES],
)
def test_error_statuses_map_to_the_error_tree(
    make_runner, status, content, error_class, code, message
):
    answer = httpx.Response(status, content=content, headers={"x-siliconcloud-trace-id": "tr-e"})
    recorder = Recorder(answer)
    with pytest.raises(error_class) as info:
        make_runner(recorder, max_retries=0).rerank("q", ["a"])
    error = info.value
    assert type(error) is error_class
    assert error.status_code == status
    assert error.code == code
    assert message in error.message
    assert error.trace_id == "tr-e"
    assert f"HTTP {status}" in str(error)
    assert "tr-e" in str(error)
    assert KEY not in str(error)
    assert KEY not in repr(error)


@pytest.mark.parametrize(
    ("status", "hint"),
    [(401, "SILICONFLOW_API_KEY"), (403, "verification"), (404, "should end in /v1")],
)
def test_auth_and_path_errors_carry_a_hint(make_runner, status, hint):
    recorder = Recorder(httpx.Response(status, content=b'"nope"'))
    with pytest.raises(APIStatusError, match=hint):
        make_runner(recorder).rerank("q", ["a"])


def test_an_echoed_key_is_redacted_from_the_error(make_runner):
    recorder = Recorder(httpx.Response(400, json={"message": f"bad header Bearer {KEY}"}))
    with pytest.raises(BadRequestError) as info:
        make_runner(recorder).rerank("q", ["a"])
    assert KEY not in str(info.value)
    assert "[redacted]" in str(info.value)


# -- retries ------------------------------------------------------------------------------------

RETRYABLE = [
    httpx.Response(408),
    httpx.Response(429, json={"message": "rate limited"}),
    httpx.Response(500, json={"code": 50507}),
    httpx.Response(502, content=b"<html>bad gateway</html>"),
    httpx.Response(503, json={"code": 50505}),
    httpx.Response(504, content=b"Gateway Timeout"),
    httpx.ConnectError("refused"),
    httpx.ReadTimeout("slow"),
    httpx.RemoteProtocolError("peer closed connection"),
]


@pytest.mark.parametrize(
    "failure", RETRYABLE, ids=lambda f: getattr(f, "status_code", None) or type(f).__name__
)
def test_transient_failures_are_retried_until_success(make_runner, failure):
    recorder = Recorder(failure, failure, ok_body(0.7))
    runner = make_runner(recorder, max_retries=2)
    response = runner.rerank("q", ["a"])
    assert response.results[0].relevance_score == 0.7
    assert len(recorder.requests) == 3
    assert len(runner.sleeps.delays) == 2


@pytest.mark.parametrize(
    ("failure", "error_class"),
    [
        (httpx.Response(503, json={"code": 50505}), ServiceUnavailableError),
        (httpx.ConnectError("refused"), APIConnectionError),
        (httpx.ConnectTimeout("slow"), APITimeoutError),
        (httpx.ReadTimeout("slow"), APITimeoutError),
    ],
)
def test_retries_stop_after_max_retries(make_runner, failure, error_class):
    recorder = Recorder(failure)
    runner = make_runner(recorder, max_retries=3)
    with pytest.raises(error_class):
        runner.rerank("q", ["a"])
    assert len(recorder.requests) == 4


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_client_errors_are_not_retried(make_runner, status):
    recorder = Recorder(httpx.Response(status, json={"message": "no"}))
    runner = make_runner(recorder, max_retries=5)
    with pytest.raises(APIStatusError):
        runner.rerank("q", ["a"])
    assert len(recorder.requests) == 1
    assert runner.sleeps.delays == []


def test_max_retries_zero_makes_one_attempt(make_runner):
    recorder = Recorder(httpx.Response(503))
    with pytest.raises(ServiceUnavailableError):
        make_runner(recorder, max_retries=0).rerank("q", ["a"])
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After": "500"}, 60.0),
    ],
)
def test_retry_waits_as_long_as_the_server_asks(make_runner, headers, expected):
    recorder = Recorder(httpx.Response(429, headers=headers), ok_body(0.5))
    runner = make_runner(recorder)
    runner.rerank("q", ["a"])
    assert runner.sleeps.delays == [expected]


def test_backoff_grows_without_retry_after(make_runner):
    recorder = Recorder(httpx.Response(503), httpx.Response(503), httpx.Response(503), ok_body(1))
    runner = make_runner(recorder, max_retries=3)
    runner.rerank("q", ["a"])
    first, second, third = runner.sleeps.delays
    assert 0.375 <= first <= 0.5
    assert 0.75 <= second <= 1.0
    assert 1.5 <= third <= 2.0


def test_retries_are_logged_at_info_without_key_or_payload(make_runner, caplog):
    recorder = Recorder(httpx.Response(503), ok_body(0.5))
    with caplog.at_level(logging.DEBUG, logger="siliconflow_rerank"):
        make_runner(recorder).rerank("secret query text", ["secret document text"])
    records = [r for r in caplog.records if r.name == "siliconflow_rerank"]
    assert [r.levelno for r in records] == [logging.INFO]
    text = records[0].getMessage()
    assert "503" in text
    assert KEY not in text
    assert "secret" not in text


# -- client lifecycle ---------------------------------------------------------------------------


def test_repr_and_errors_never_show_the_key(make_runner):
    runner = make_runner(Recorder())
    assert KEY not in repr(runner.client)
    assert KEY not in str(runner.client)
    assert "base_url" in repr(runner.client)


def test_clients_refuse_to_be_pickled(make_runner):
    runner = make_runner(Recorder())
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(runner.client)


def test_borrowed_http_client_is_not_closed(client_kind):
    transport = httpx.MockTransport(Recorder())
    if client_kind == "sync":
        http = httpx.Client(transport=transport)
        with SiliconFlowClient(api_key=KEY, http_client=http) as client:
            client.rerank("q", ["a"])
        assert not http.is_closed
        http.close()
    else:
        import asyncio

        async def scenario() -> bool:
            http = httpx.AsyncClient(transport=transport)
            async with siliconflow_rerank.AsyncSiliconFlowClient(
                api_key=KEY, http_client=http
            ) as client:
                await client.rerank("q", ["a"])
            closed = http.is_closed
            await http.aclose()
            return closed

        assert asyncio.run(scenario()) is False


def test_per_client_timeout_reaches_the_request(make_runner):
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json=ok_body(0.5))

    make_runner(handler, timeout=httpx.Timeout(3.0, connect=1.0)).rerank("q", ["a"])
    assert seen == [{"connect": 1.0, "read": 3.0, "write": 3.0, "pool": 3.0}]


def test_default_timeout_is_explicit_and_generous():
    timeout = siliconflow_rerank.DEFAULT_TIMEOUT
    assert timeout.connect is not None
    assert timeout.read is not None
    assert timeout.connect <= 10
    assert timeout.read >= 60


# -- large lists: what is encoded, and when ------------------------------------------------------


def test_only_a_call_of_more_than_its_own_request_gets_a_plan():
    from siliconflow_rerank import RerankCache
    from siliconflow_rerank._rerank import prepare_rerank

    from ..helpers import pipeline_for

    def plan(documents: list[str], batch_size: int | None, cache: Any = None) -> Any:
        pipeline = pipeline_for(max_documents_per_request=batch_size, cache=cache)
        return prepare_rerank(pipeline, "q", documents, model="BAAI/bge-reranker-v2-m3")

    short, long = ["a", "b"], ["a", "b", "c"]
    assert plan(short, 2).groups is None  # sent as built
    assert plan(short, None).groups is None
    split = plan(long, 2)
    assert [list(group) for group in split.groups or []] == [[0, 1], [2]]
    cached = plan(short, 2, cache=RerankCache())
    assert cached.cached
    cached.look_up()  # as the client does before sending
    assert cached.groups is not None  # every score is wanted, to be stored
    assert [list(group) for group in cached.groups] == [[0, 1]]
    assert cached.request(0).top_n is None


def test_a_batched_call_never_encodes_the_whole_list():
    from siliconflow_rerank._rerank import prepare_rerank

    from ..helpers import pipeline_for

    documents = [f"doc {i}" for i in range(300)]
    pipeline = pipeline_for(max_documents_per_request=128)
    the_plan = prepare_rerank(pipeline, "q", documents, model="BAAI/bge-reranker-v2-m3")
    assert the_plan.groups is not None  # split
    assert [len(group) for group in the_plan.groups] == [128, 128, 44]
    assert the_plan.call._content is None  # the unbatched body was never built
    for number in range(len(the_plan)):
        content = the_plan.request(number).content
        assert isinstance(content, bytes)
        assert json.loads(content)["documents"] == the_plan.request(number).body["documents"]


def test_text_that_cannot_be_sent_fails_a_batched_call_before_any_request(make_runner):
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json=ok_body(*[0.5] * 128))

    documents = [f"doc {i}" for i in range(299)] + ["bad \ud800 text"]
    with pytest.raises(InvalidRequestError, match="not valid text"):
        make_runner(handler).rerank("q", documents)
    assert requests == []


def test_merged_batches_map_every_index_back_without_changing_the_answers(make_runner):
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        scores = [float(d.split()[1]) / 1000 for d in body["documents"]]
        return httpx.Response(200, json=ok_body(*scores))

    documents = [f"doc {i}" for i in range(300)]
    response = make_runner(handler, max_documents_per_request=128).rerank("q", documents)
    assert [r.index for r in response.results] == list(range(299, -1, -1))
    assert [r.relevance_score for r in response.results] == [i / 1000 for i in range(299, -1, -1)]


def test_a_sync_client_keeps_its_threads_across_calls_and_bounds_each_call():
    import threading

    lock = threading.Lock()
    threads: list[set[int]] = [set(), set()]
    in_flight, most = [0], [0]
    call = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            threads[call[0]].add(threading.get_ident())
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            documents = json.loads(request.content)["documents"]
            return httpx.Response(200, json=ok_body(*[0.5] * len(documents)))
        finally:
            with lock:
                in_flight[0] -= 1

    client = SiliconFlowClient(
        api_key="sk-test-key-123456",
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
        max_documents_per_request=2,
        max_concurrency=3,
    )
    documents = [f"doc {i}" for i in range(40)]
    assert len(client.rerank("q", documents).results) == 40
    executor = client._threads
    call[0] = 1
    assert len(client.rerank("q", documents).results) == 40
    assert client._threads is executor  # the same threads served both calls
    assert threads[1] <= threads[0]  # ... on threads the first call started
    assert most[0] <= 3  # never more than max_concurrency of a call's requests at once
    client.close()
    assert client._threads is None
    assert executor is not None
    assert executor._shutdown


def test_a_request_equals_its_twin_whether_or_not_its_body_was_encoded():
    from siliconflow_rerank import RerankOptions
    from siliconflow_rerank._rerank import build_request

    options = RerankOptions("BAAI/bge-reranker-v2-m3")
    encoded = build_request("q", ["a", "b"], options)
    fresh = build_request("q", ["a", "b"], options)
    content = encoded.content  # encoded, and kept
    assert isinstance(content, bytes)
    assert json.loads(content)["documents"] == ["a", "b"]
    assert encoded == fresh
    assert "content" not in repr(encoded)


# -- every public signature is its settings or options model -------------------------------------


@pytest.mark.parametrize("client_class", [SiliconFlowClient, AsyncSiliconFlowClient])
def test_a_client_takes_every_setting_with_its_declared_default(client_class):
    import inspect

    from siliconflow_rerank import ClientSettings

    parameters = dict(inspect.signature(client_class).parameters)
    assert parameters.pop("http_client").default is None  # the one argument that is no setting
    assert set(parameters) == set(ClientSettings.model_fields)
    for name, parameter in parameters.items():
        assert parameter.default == ClientSettings.model_fields[name].default, name


@pytest.mark.parametrize("client_class", [SiliconFlowClient, AsyncSiliconFlowClient])
@pytest.mark.parametrize(("method", "inputs"), [("rerank", 2), ("embed", 1)])
def test_a_method_takes_every_option_with_its_declared_default(client_class, method, inputs):
    import dataclasses
    import inspect

    from siliconflow_rerank import EmbeddingOptions, RerankOptions

    options = RerankOptions if method == "rerank" else EmbeddingOptions
    parameters = list(
        inspect.signature(
            getattr(client_class(api_key="sk-1234567890"), method)
        ).parameters.values()
    )
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in parameters[:inputs])
    keywords = {p.name: p.default for p in parameters[inputs:]}
    assert keywords.pop("on_progress") is None
    assert keywords == {field.name: field.default for field in dataclasses.fields(options)}
