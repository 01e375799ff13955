"""`ChatSiliconFlow` against a local OpenAI-compatible chat server over a real socket.

The server answers like SiliconFlow's chat endpoint: `reasoning_content` beside `content`, and in
streams the running usage totals in every chunk.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessageChunk

from langchain_siliconflow import ChatSiliconFlow

from ..helpers import ROOT, wait_until

KEY = "sk-chat-canary-5151"
ANSWER = ["Cold ", "slows ", "ripening."]
REASONING = ["Apples give off ethylene; ", "cold slows it."]


class ChatStub:
    """Records each request and answers with a fixed reply, whole or streamed."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.echo_error = False
        self.completion_totals: list[int] | None = None
        """The running completion totals the stream reports, one per chunk (by default 1, 2...)."""
        """Answer 400 with the request's Authorization header in the error message."""
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(
                    {"path": self.path, "auth": self.headers["Authorization"], "body": body}
                )
                if stub.echo_error:
                    echoed = json.dumps(
                        {"error": {"message": f"bad header {self.headers['Authorization']}"}}
                    ).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(echoed)))
                    self.end_headers()
                    self.wfile.write(echoed)
                    return
                if body.get("stream"):
                    self._stream(body)
                    return
                payload = json.dumps(
                    {
                        "id": "chat-1",
                        "object": "chat.completion",
                        "created": 1,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {
                                    "role": "assistant",
                                    "content": "".join(ANSWER),
                                    "reasoning_content": "".join(REASONING),
                                },
                            }
                        ],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, body: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                deltas = [{"reasoning_content": part, "content": None} for part in REASONING]
                deltas += [{"content": part} for part in ANSWER]
                for number, delta in enumerate(deltas, start=1):
                    if stub.completion_totals is not None:
                        number = stub.completion_totals[number - 1]
                    chunk = {
                        "id": "chat-1",
                        "object": "chat.completion.chunk",
                        "created": 1,
                        "model": body["model"],
                        "choices": [{"index": 0, "delta": {"role": "assistant", **delta}}],
                        # SiliconFlow's habit: running totals in every chunk.
                        "usage": {
                            "prompt_tokens": 7,
                            "completion_tokens": number,
                            "total_tokens": 7 + number,
                        },
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def stub() -> Iterator[ChatStub]:
    server = ChatStub()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_invoke_sends_siliconflows_request_and_surfaces_reasoning(stub: ChatStub):
    chat = ChatSiliconFlow(model="deepseek-ai/DeepSeek-R1", api_key=KEY, base_url=stub.base_url)
    answer = chat.invoke("Why keep apples cold?")
    assert answer.content == "".join(ANSWER)
    assert answer.additional_kwargs["reasoning_content"] == "".join(REASONING)
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["total_tokens"] == 12
    (request,) = stub.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == f"Bearer {KEY}"
    assert request["body"]["model"] == "deepseek-ai/DeepSeek-R1"
    assert request["body"]["messages"] == [{"role": "user", "content": "Why keep apples cold?"}]


async def test_ainvoke_is_the_same_answer(stub: ChatStub):
    chat = ChatSiliconFlow(api_key=KEY, base_url=stub.base_url)
    answer = await chat.ainvoke("Why keep apples cold?")
    assert answer.content == "".join(ANSWER)
    assert answer.additional_kwargs["reasoning_content"] == "".join(REASONING)
    assert stub.requests[0]["body"]["model"] == "deepseek-ai/DeepSeek-V3.1"


def _check_stream(chunks: list[AIMessageChunk]) -> None:
    reasoning = [c.additional_kwargs.get("reasoning_content") for c in chunks]
    assert [r for r in reasoning if r] == REASONING
    assert "".join(str(c.content) for c in chunks) == "".join(ANSWER)
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    # Running totals turned into deltas: the sum is the last chunk's totals, not their sum.
    assert whole.usage_metadata is not None
    assert whole.usage_metadata["input_tokens"] == 7
    assert whole.usage_metadata["output_tokens"] == len(REASONING) + len(ANSWER)
    assert whole.usage_metadata["total_tokens"] == 7 + len(REASONING) + len(ANSWER)


def test_stream_yields_reasoning_then_content_with_usage_counted_once(stub: ChatStub):
    chat = ChatSiliconFlow(api_key=KEY, base_url=stub.base_url)
    chunks = list(chat.stream("Why keep apples cold?"))
    _check_stream(chunks)
    assert stub.requests[0]["body"]["stream"] is True


def test_a_running_total_that_goes_down_never_gives_a_chunk_negative_usage(stub: ChatStub):
    stub.completion_totals = [1, 2, 4, 1, 5]  # the server's count drops once, then recovers
    chat = ChatSiliconFlow(api_key=KEY, base_url=stub.base_url)
    chunks = list(chat.stream("Why keep apples cold?"))
    usages = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert all(u["output_tokens"] >= 0 and u["input_tokens"] >= 0 for u in usages)
    assert sum(u["output_tokens"] for u in usages) == 5  # the highest total, counted once
    assert sum(u["input_tokens"] for u in usages) == 7


async def test_astream_likewise(stub: ChatStub):
    chat = ChatSiliconFlow(api_key=KEY, base_url=stub.base_url)
    _check_stream([chunk async for chunk in chat.astream("Why keep apples cold?")])


def test_key_and_root_come_from_siliconflows_variables(
    stub: ChatStub, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("SILICONFLOW_API_KEY", KEY)
    monkeypatch.setenv("SILICONFLOW_BASE_URL", stub.base_url + "/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    ChatSiliconFlow().invoke("hi")
    assert stub.requests[0]["auth"] == f"Bearer {KEY}"
    assert stub.requests[0]["path"] == "/v1/chat/completions"


def test_vendor_constructor_arguments_are_accepted(stub: ChatStub):
    chat = ChatSiliconFlow(
        model="Qwen/Qwen3-8B",
        siliconflow_api_key=KEY,
        base_url=stub.base_url,
        timeout=5,
        max_retries=0,
    )
    assert (chat.model_name, chat.request_timeout, chat.max_retries) == ("Qwen/Qwen3-8B", 5, 0)
    chat.invoke("hi")
    assert stub.requests[0]["auth"] == f"Bearer {KEY}"


def test_default_root_is_siliconflows_mainland_api():
    chat = ChatSiliconFlow(api_key=KEY)
    assert chat.openai_api_base == "https://api.siliconflow.cn/v1"


def test_missing_key_names_siliconflows_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    with pytest.raises(ValueError, match="SILICONFLOW_API_KEY"):
        ChatSiliconFlow()


def test_key_stays_out_of_repr_and_dumps():
    from langchain_core.load import dumps

    chat = ChatSiliconFlow(api_key=KEY)
    assert KEY not in repr(chat)
    assert KEY not in str(chat)
    assert KEY not in dumps(chat)


@pytest.mark.parametrize(
    "bad", [{"n": 0}, {"base_url": "ftp://example.test/v1"}, {"temperature": "hot"}]
)
def test_a_bad_setting_fails_without_showing_the_key(bad: dict[str, Any]):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        ChatSiliconFlow(api_key=KEY, **bad)
    error = info.value
    for text in (str(error), repr(error.errors()), error.json()):
        assert KEY not in text
        assert KEY[:12] not in text


def test_the_key_is_kept_out_of_the_http_libraries_logs(caplog: pytest.LogCaptureFixture):
    import logging

    chat = ChatSiliconFlow(api_key=KEY)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("openai._base_client").debug("Request options: Bearer %s", KEY)
    assert "Bearer [redacted]" in caplog.text
    assert KEY not in caplog.text
    del chat


@pytest.mark.parametrize("way", ["invoke", "ainvoke", "stream", "astream"])
def test_an_error_echoing_the_key_never_shows_it(stub: ChatStub, way: str):
    import asyncio
    import pickle

    import openai

    stub.echo_error = True
    chat = ChatSiliconFlow(api_key=KEY, base_url=stub.base_url, max_retries=0)

    async def consume() -> None:
        async for _ in chat.astream("hi"):
            pass

    calls: dict[str, Callable[[], object]] = {
        "invoke": lambda: chat.invoke("hi"),
        "ainvoke": lambda: asyncio.run(chat.ainvoke("hi")),
        "stream": lambda: list(chat.stream("hi")),
        "astream": lambda: asyncio.run(consume()),
    }
    with pytest.raises(openai.BadRequestError) as info:
        calls[way]()
    error = info.value
    assert "bad header Bearer [redacted]" in str(error)
    for text in (str(error), repr(error), repr(error.body), repr(vars(error))):
        assert KEY not in text
    assert KEY.encode() not in pickle.dumps(error.body)


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def test_without_langchain_openai_the_error_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['langchain_openai'] = None\n"
        "import langchain_siliconflow\n"
        "print(langchain_siliconflow.SiliconFlowRerank.__name__)\n"
        "try:\n"
        "    from langchain_siliconflow import ChatSiliconFlow\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    rerank, message = _run(code).stdout.splitlines()
    assert rerank == "SiliconFlowRerank"
    assert "langchain-chat" in message
    assert "pip install 'langchain-openai" in message


def test_the_vendors_distribution_beside_ours_logs_one_warning(tmp_path: Path):
    code = "import langchain_siliconflow, langchain_siliconflow.rerank\n"
    assert "langchain-siliconflow" not in _run(code).stderr
    info = tmp_path / "langchain_siliconflow-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: langchain-siliconflow\nVersion: 1.0.0\n", encoding="utf-8"
    )
    stderr = _run(code, PYTHONPATH=str(tmp_path)).stderr
    assert stderr.count("langchain-siliconflow distribution is installed") == 1
    assert "pip uninstall -y langchain-siliconflow siliconflow-rerank" in stderr


# -- against the bundled emulator, as the README and examples use it -------------------------


def test_the_emulator_answers_chat_whole_and_streamed(emulator):
    # A client of the test's own: langchain-openai's default sync client is shared by the
    # process, and closing it would break every later chat model.
    own = httpx.Client()
    chat = ChatSiliconFlow(
        model="deepseek-ai/DeepSeek-R1", api_key=KEY, base_url=emulator.base_url, http_client=own
    )
    answer = chat.invoke("Why keep apples cold?")
    assert answer.content == "(emulated answer) You asked: Why keep apples cold?"
    assert answer.additional_kwargs["reasoning_content"].startswith("An emulator does not reason")
    assert emulator.stats.last_request_body["messages"] == [
        {"role": "user", "content": "Why keep apples cold?"}
    ]
    chunks = list(chat.stream("Why keep apples cold?"))
    assert "".join(str(c.content) for c in chunks) == answer.content
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    assert whole.usage_metadata == answer.usage_metadata
    assert (
        whole.additional_kwargs["reasoning_content"]
        == answer.additional_kwargs["reasoning_content"]
    )
    own.close()  # the emulator is shared: leave no connection open


async def test_the_emulator_answers_async_chat_without_reasoning_for_plain_models(emulator):
    chat = ChatSiliconFlow(api_key=KEY, base_url=emulator.base_url)
    answer = await chat.ainvoke([("system", "Be brief."), ("user", "Name a fruit.")])
    assert answer.content == "(emulated answer) You asked: Name a fruit."
    assert "reasoning_content" not in answer.additional_kwargs
    streamed = [chunk async for chunk in chat.astream("Name a fruit.")]
    assert "".join(str(c.content) for c in streamed) == answer.content
    await chat.root_async_client.close()


def test_async_calls_work_from_one_event_loop_after_another_and_leave_nothing_open(emulator):
    # langchain-openai shares one async HTTP client in the process, bound to the first loop.
    chat = ChatSiliconFlow(
        model="Qwen/Qwen2.5-7B-Instruct", api_key="sk-t", base_url=emulator.base_url
    )
    for _ in range(3):
        assert asyncio.run(chat.ainvoke("hi")).content
        chunks = asyncio.run(_streamed(chat))
        assert chunks
    # Each loop's client was closed in that loop when asyncio.run shut it down.
    wait_until(lambda: emulator.stats.open_connections == 0, timeout=5)
    assert emulator.stats.open_connections == 0


class _HeldChat(ChatSiliconFlow):
    """Holds the call of the thread named "held" after its loop's client is chosen and before
    langchain-openai reads the model's async client, until `go` is set."""

    def _get_request_payload(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if threading.current_thread().name == "held":
            _HELD.set()
            assert _GO.wait(timeout=30)
        return super()._get_request_payload(*args, **kwargs)


_HELD, _GO = threading.Event(), threading.Event()


def test_event_loops_in_two_threads_at_once_each_use_their_own_client(emulator):
    # Loop A has chosen its client and is about to send; loop B, in another thread, makes a
    # whole call (and closes its client when its loop ends) in between. A must still send on
    # its own client: with the model's client swapped per call, A sent on B's closed one.
    _HELD.clear()
    _GO.clear()
    chat = _HeldChat(model="Qwen/Qwen2.5-7B-Instruct", api_key="sk-t", base_url=emulator.base_url)
    answers: list[str] = []
    errors: list[BaseException] = []

    def held() -> None:
        try:
            answers.append(str(asyncio.run(chat.ainvoke("first")).content))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    thread = threading.Thread(target=held, name="held")
    thread.start()
    try:
        assert _HELD.wait(timeout=30)
        assert asyncio.run(chat.ainvoke("second")).content  # loop B, whole, in between
    finally:
        _GO.set()
        thread.join(timeout=60)
    assert errors == []
    assert len(answers) == 1
    assert "first" in answers[0]


async def _streamed(chat: ChatSiliconFlow) -> list[str]:
    return [str(chunk.content) async for chunk in chat.astream("hi")]
