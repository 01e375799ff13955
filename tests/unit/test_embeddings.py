"""Embeddings in the core on a fake transport: request bodies, batching, answer checks.

Every test runs with the sync and the async client.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import httpx
import pytest

from siliconflow_rerank import (
    BadRequestError,
    InvalidRequestError,
    ResponseValidationError,
    image_item,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def vector_for(text: str, size: int = 4) -> list[float]:
    """A distinct, exactly representable float32 vector per text."""
    seed = sum(map(ord, text)) % 97
    return [float(seed), float(len(text)), 0.5, -1.0][:size] + [0.25] * max(0, size - 4)


class EmbeddingServer:
    """A MockTransport handler that answers like the service, in reverse index order."""

    def __init__(self, *, size: int = 4, encoding: str | None = None) -> None:
        self.size = size
        self.encoding = encoding
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/embeddings"
        body = json.loads(request.content)
        self.bodies.append(body)
        data = []
        for index, item in enumerate(body["input"]):
            text = item if isinstance(item, str) else json.dumps(item)
            vector: Any = vector_for(text, body.get("dimensions") or self.size)
            if (self.encoding or body.get("encoding_format")) == "base64":
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        data.reverse()  # mapped by index, never by position
        count = len(body["input"])
        return httpx.Response(
            200,
            json={
                "object": "list",
                "model": body["model"],
                "data": data,
                "usage": {"prompt_tokens": count, "completion_tokens": 0, "total_tokens": count},
            },
            headers={"x-siliconcloud-trace-id": f"tr-{len(self.bodies)}"},
        )


def test_text_inputs_are_sent_as_the_api_takes_them(make_runner):
    server = EmbeddingServer()
    response = make_runner(server).embed(["apple pie", "green apple"])
    assert server.bodies == [
        {"model": "BAAI/bge-m3", "input": ["apple pie", "green apple"], "encoding_format": "base64"}
    ]
    assert response.embeddings == [vector_for("apple pie"), vector_for("green apple")]
    assert response.model == "BAAI/bge-m3"
    assert response.trace_id == "tr-1"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.total_tokens) == (2, 2)


def test_one_string_is_one_input(make_runner):
    server = EmbeddingServer()
    response = make_runner(server).embed("apple pie")
    assert server.bodies[0]["input"] == ["apple pie"]
    assert response.embeddings == [vector_for("apple pie")]


def test_image_and_text_items_for_the_multimodal_model(make_runner):
    server = EmbeddingServer()
    runner = make_runner(server)
    runner.embed(
        [{"text": "a red apple"}, image_item("https://x.test/apple.png"), image_item(PNG)],
        model="Qwen/Qwen3-VL-Embedding-8B",
        dimensions=1024,
    )
    data_uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert server.bodies == [
        {
            "model": "Qwen/Qwen3-VL-Embedding-8B",
            "input": ["a red apple", {"image": "https://x.test/apple.png"}, {"image": data_uri}],
            "encoding_format": "base64",
            "dimensions": 1024,
        }
    ]


def test_long_lists_are_split_at_32_and_merged_in_order(make_runner):
    server = EmbeddingServer()
    texts = [f"text number {i}" for i in range(70)]
    progress: list[tuple[int, int]] = []
    response = make_runner(server, max_concurrency=3).embed(
        texts, on_progress=lambda done, total: progress.append((done, total))
    )
    assert sorted(len(b["input"]) for b in server.bodies) == [6, 32, 32]
    assert sorted(t for b in server.bodies for t in b["input"]) == sorted(texts)
    assert response.embeddings == [vector_for(t) for t in texts]
    assert response.usage is not None
    assert response.usage.total_tokens == 70
    assert sorted(response.trace_id.split(",")) == ["tr-1", "tr-2", "tr-3"]
    assert progress[-1] == (3, 3)


def test_batch_size_is_a_setting(make_runner):
    server = EmbeddingServer()
    make_runner(server).embed([f"t{i}" for i in range(10)], batch_size=4)
    assert sorted(len(b["input"]) for b in server.bodies) == [2, 4, 4]


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_base64_answers_decode_to_the_same_floats(make_runner, encoding):
    server = EmbeddingServer(size=8)
    response = make_runner(server).embed(["apple", "pear"], encoding_format=encoding)
    assert server.bodies[0]["encoding_format"] == encoding
    assert response.embeddings == [vector_for("apple", 8), vector_for("pear", 8)]


def test_dimensions_are_sent_and_the_vector_length_checked(make_runner):
    server = EmbeddingServer()
    response = make_runner(server).embed(["apple"], model="Qwen/Qwen3-Embedding-8B", dimensions=64)
    assert server.bodies[0]["dimensions"] == 64
    assert len(response.embeddings[0]) == 64

    short = EmbeddingServer(size=4)

    def ignores_dimensions(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        body.pop("dimensions")
        return short(request.__class__("POST", request.url, json=body))

    with pytest.raises(ResponseValidationError, match="4 values, not 64"):
        make_runner(ignores_dimensions).embed(
            ["apple"], model="Qwen/Qwen3-Embedding-8B", dimensions=64
        )


@pytest.mark.parametrize(
    ("inputs", "options", "message"),
    [
        ([], {}, "at least one input"),
        (["apple", "  "], {}, r"inputs\[1\] is empty"),
        ("", {}, r"inputs\[0\] is empty"),
        ([3], {}, r"inputs\[0\] must be a string"),
        (42, {}, "must be a string or a sequence"),
        ([{"video": "https://x.test/v.mp4"}], {"model": "Qwen/Qwen3-VL-Embedding-8B"}, "video"),
        ([{"image": "https://x.test/a.png"}], {}, "embeds text only"),
        (["a"], {"dimensions": 256}, "BAAI/bge-m3 does not take dimensions"),
        (["a"], {"model": "Qwen/Qwen3-Embedding-0.6B", "dimensions": 2048}, "takes dimensions"),
        (["a"], {"model": "Qwen/Qwen3-Embedding-8B", "dimensions": 0}, "dimensions must be"),
        (["a"], {"model": "Qwen/Qwen3-Embedding-8B", "dimensions": True}, "dimensions must be"),
        (["a"], {"batch_size": 0}, "batch_size must be"),
        (["a"], {"encoding_format": "int8"}, "encoding_format"),
        (["a"], {"model": " "}, "model must be"),
    ],
)
def test_bad_input_fails_before_any_request(make_runner, inputs, options, message):
    server = EmbeddingServer()
    with pytest.raises(InvalidRequestError, match=message):
        make_runner(server).embed(inputs, **options)
    assert server.bodies == []


def test_unknown_models_pass_through_unchecked(make_runner):
    server = EmbeddingServer()
    make_runner(server).embed(["a"], model="my-org/my-embedder", dimensions=3)
    assert server.bodies[0]["model"] == "my-org/my-embedder"
    assert server.bodies[0]["dimensions"] == 3


def test_inputs_are_not_mutated(make_runner):
    inputs = ["apple", {"text": "pear"}]
    snapshot = json.dumps(inputs)
    make_runner(EmbeddingServer()).embed(inputs)
    assert json.dumps(inputs) == snapshot


def _answer(data: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"object": "list", "data": data, **extra})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"index": 0, "embedding": [0.1, 0.2]}], "1 of 2 inputs got no vector"),
        (
            [{"index": 0, "embedding": [0.1, 0.2]}, {"index": 0, "embedding": [0.1, 0.2]}],
            "index 0 appears twice",
        ),
        (
            [{"index": 0, "embedding": [0.1, 0.2]}, {"index": 5, "embedding": [0.1, 0.2]}],
            "index 5 is out of range",
        ),
        (
            [{"index": 0, "embedding": [0.1, 0.2]}, {"index": 1, "embedding": [0.1]}],
            "index 1 has 1 values, not 2",
        ),
        (
            [{"index": 0, "embedding": [0.1, 0.2]}, {"index": 1, "embedding": "not base64!"}],
            "not base64 floats",
        ),
        (
            [{"index": 0, "embedding": [0.1, 0.2]}, {"index": 1, "embedding": "AAAA AA=="}],
            "not base64 floats",
        ),
        (
            [{"index": 0, "embedding": [0.1, 0.2]}, {"index": True, "embedding": [0.1, 0.2]}],
            "invalid 'data.1.index'",
        ),
        ([{"index": 0, "embedding": [0.1, 0.2]}, {"index": 1, "embedding": [0.1, "x"]}], "invalid"),
        (
            [{"index": 0, "embedding": [0.1, 0.2]}, {"index": 1, "embedding": [0.1, True]}],
            "invalid 'data.1.embedding",
        ),
        (
            [{"index": 0, "embedding": [0.1, 0.2]}, {"index": 1, "embedding": [0.1, "0.2"]}],
            "invalid 'data.1.embedding",
        ),
    ],
)
def test_bad_answers_are_rejected(make_runner, data, message):
    with pytest.raises(ResponseValidationError, match=message):
        make_runner(lambda request: _answer(data)).embed(["a", "b"])


def test_non_finite_values_are_rejected(make_runner):
    content = b'{"data": [{"index": 0, "embedding": [0.1, NaN]}]}'
    with pytest.raises(ResponseValidationError, match="not a finite number"):
        make_runner(lambda request: httpx.Response(200, content=content)).embed(["a"])
    packed = base64.b64encode(struct.pack("<2f", 0.5, math.inf)).decode()
    with pytest.raises(ResponseValidationError, match="not a finite number"):
        make_runner(lambda request: _answer([{"index": 0, "embedding": packed}])).embed(
            ["a"], encoding_format="base64"
        )


def test_a_failing_batch_is_named(make_runner):
    server = EmbeddingServer()

    def third_fails(request: httpx.Request) -> httpx.Response:
        if "t64" in json.loads(request.content)["input"]:
            return httpx.Response(400, json={"code": 20015, "message": "no"})
        return server(request)

    with pytest.raises(BadRequestError, match=r"batch 3 of 3 \(inputs 64\.\.69\) failed") as info:
        make_runner(third_fails).embed([f"t{i}" for i in range(70)])
    assert info.value.batch == 2


@pytest.mark.parametrize("usage", [{"total_tokens": 1.5}, {"prompt_tokens": "3"}, [3]])
def test_a_usage_report_of_the_wrong_type_is_rejected(make_runner, usage):
    data = [{"index": 0, "embedding": [0.1, 0.2]}]
    with pytest.raises(ResponseValidationError, match="usage"):
        make_runner(lambda request: _answer(data, usage=usage)).embed(["a"])


def _packed(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


READ_BOTH_WAYS: dict[str, bytes] = {
    "floats": json.dumps(
        {"data": [{"index": 1, "embedding": [0.5, 1]}, {"index": 0, "embedding": [2.0, -3.5]}]}
    ).encode(),
    "base64, with usage and model": json.dumps(
        {
            "object": "list",
            "model": "BAAI/bge-m3",
            "data": [
                {"object": "embedding", "index": 0, "embedding": _packed(0.25, 1.5)},
                {"object": "embedding", "index": 1, "embedding": _packed(-2.0, 8.0)},
            ],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }
    ).encode(),
    # A JSON writer may escape "/" in base64: the fast reader leaves that to the exact one.
    "base64 with an escaped slash": (
        b'{"data": [{"index": 0, "embedding": "'
        + _packed(255.5, -0.999).replace("/", "\\/").encode()
        + b'"}, {"index": 1, "embedding": "'
        + _packed(1.0, 2.0).encode()
        + b'"}], "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1}}'
    ),
    "huge finite values": json.dumps(
        {"data": [{"index": 0, "embedding": [1.7e308]}, {"index": 1, "embedding": [-1e308]}]}
    ).encode(),
}


def _request(count: int) -> Any:
    from siliconflow_rerank._embeddings import EmbeddingRequest

    return EmbeddingRequest(body={}, content=b"", count=count, dimensions=None)


@pytest.mark.parametrize("name", READ_BOTH_WAYS)
def test_an_answer_reads_the_same_with_or_without_the_fast_reader(name, monkeypatch):
    from siliconflow_rerank import _embeddings

    content = READ_BOTH_WAYS[name]
    assert b"\\/" in content or name != "base64 with an escaped slash"
    fast = _embeddings.parse(content, _request(2), "t")
    monkeypatch.setattr(_embeddings, "_read_plainly", lambda content: None)
    exact = _embeddings.parse(content, _request(2), "t")
    assert fast == exact
    assert fast.model_dump() == exact.model_dump()
    assert fast.usage == exact.usage


def test_the_fast_reader_reads_the_usual_answer(monkeypatch):
    from siliconflow_rerank import _embeddings

    def unreached(*args: Any) -> None:
        raise AssertionError("the exact reader read the usual answer")

    monkeypatch.setattr(_embeddings, "_read_exactly", unreached)
    response = _embeddings.parse(READ_BOTH_WAYS["base64, with usage and model"], _request(2), None)
    assert response.embeddings == [[0.25, 1.5], [-2.0, 8.0]]
    assert response.model == "BAAI/bge-m3"
    assert response.usage is not None
    assert response.usage.input_tokens == 3
