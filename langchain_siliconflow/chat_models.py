"""`ChatSiliconFlow`: the vendor's chat model on langchain-openai, with the core's key and URL."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

import openai
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai.chat_models.base import BaseChatOpenAI
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator
from typing_extensions import Self

from siliconflow_rerank import (
    API_KEY_ENV,
    HiddenInputsModel,
    redact_error,
    redact_in_logs,
    resolve_api_key,
    resolve_base_url,
)

__all__ = ["DEFAULT_CHAT_MODEL", "ChatSiliconFlow"]

DEFAULT_CHAT_MODEL = "deepseek-ai/DeepSeek-V3.1"
"""The vendor package's default chat model."""

_KEY_NAMES = ("api_key", "openai_api_key", "siliconflow_api_key")
_URL_NAMES = ("base_url", "openai_api_base")


class ChatSiliconFlow(HiddenInputsModel, BaseChatOpenAI):
    """A chat model on SiliconFlow's OpenAI-compatible chat endpoint.

    A drop-in for the vendor package's `ChatSiliconFlow` (same constructor arguments: `model`,
    `api_key` or `siliconflow_api_key`, `base_url`, `timeout`, `max_retries`, and everything
    `langchain-openai` takes), with this package's rules for the key (`SILICONFLOW_API_KEY`, never
    `OPENAI_API_KEY`) and the API root (`SILICONFLOW_BASE_URL`, then `https://api.siliconflow.cn/v1`),
    checked as every client's are: a bad setting fails with an error that never shows the key,
    and the key is kept out of the HTTP libraries' log lines.
    Reasoning models' `reasoning_content` is in `message.additional_kwargs["reasoning_content"]`.
    It pickles as its settings (for process pools and Ray), never with its key: the copy reads
    `SILICONFLOW_API_KEY` where it is unpickled.

    Setup:
        `pip install ".[langchain-chat]"` from a checkout of siliconflow-rerank.

    Usage:
        ```python
        from langchain_siliconflow import ChatSiliconFlow

        chat = ChatSiliconFlow(model="deepseek-ai/DeepSeek-R1", temperature=0)
        answer = chat.invoke("Why keep apples cold?")
        answer.content, answer.additional_kwargs.get("reasoning_content")
        ```
    """

    model_config = ConfigDict(populate_by_name=True, hide_input_in_errors=True)

    model_name: str = Field(default=DEFAULT_CHAT_MODEL, alias="model")
    """The chat model's name on SiliconFlow."""

    _per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]] = PrivateAttr(
        default_factory=weakref.WeakKeyDictionary
    )
    _first_async_client: Any = PrivateAttr(default=None)
    """langchain-openai's async client, of which each loop's is a copy with its own pool."""

    @model_validator(mode="before")
    @classmethod
    def _siliconflow_endpoint(cls, values: Any) -> Any:
        # The key and API root follow the core's rules; langchain-openai then builds its clients.
        if not isinstance(values, dict):
            return values
        values = dict(values)
        keys = [values.pop(name) for name in _KEY_NAMES if name in values]
        urls = [values.pop(name) for name in _URL_NAMES if name in values]
        values["api_key"] = resolve_api_key(next((k for k in keys if k is not None), None))
        values["base_url"] = resolve_base_url(next((u for u in urls if u is not None), None))
        return values

    @model_validator(mode="after")
    def _key_out_of_logs(self) -> Self:
        key = self.openai_api_key
        if isinstance(key, SecretStr):
            redact_in_logs(self, key.get_secret_value())
        return self

    @model_validator(mode="after")
    def _async_clients_per_loop(self) -> Self:
        if self.http_async_client is None and self.root_async_client is not None:
            self._first_async_client = root = self.root_async_client
            self.root_async_client = _OnTheRunningLoop(self._per_loop, root, _itself)
            self.async_client = _OnTheRunningLoop(self._per_loop, root, _chat_completions)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its settings: openai's clients hold locks and sockets, and the key is read
        # from SILICONFLOW_API_KEY again where it is unpickled (a pickle never holds it).
        settings = {
            name: getattr(self, name) for name in self.model_fields_set if name not in _REBUILT
        }
        return (_rebuilt, (type(self), {**settings, "model_name": self.model_name}))

    @property
    def api_key(self) -> SecretStr | None:
        """The key (the vendor package's attribute name; also `siliconflow_api_key`)."""
        key = self.openai_api_key
        return key if isinstance(key, SecretStr) else None

    @property
    def siliconflow_api_key(self) -> SecretStr | None:
        return self.api_key

    @property
    def base_url(self) -> str | None:
        """The API root (the vendor package's attribute name)."""
        return self.openai_api_base

    @property
    def _llm_type(self) -> str:
        return "chat-siliconflow"

    @property
    def lc_secrets(self) -> dict[str, str]:
        """Where LangChain's serializer finds the key: the environment variable, never the value."""
        return {"openai_api_key": API_KEY_ENV}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "siliconflow"
        return params

    def _create_chat_result(
        self,
        response: dict[str, Any] | openai.BaseModel,
        generation_info: dict[str, Any] | None = None,
    ) -> ChatResult:
        result = super()._create_chat_result(response, generation_info)
        if isinstance(response, openai.BaseModel):
            response = response.model_dump()
        choices = response.get("choices") or []
        reasoning = (choices[0].get("message") or {}).get("reasoning_content") if choices else None
        if reasoning is not None and result.generations:
            result.generations[0].message.additional_kwargs["reasoning_content"] = reasoning
        return result

    def _convert_chunk_to_generation_chunk(
        self,
        chunk: dict[str, Any],
        default_chunk_class: type,
        base_generation_info: dict[str, Any] | None,
    ) -> ChatGenerationChunk | None:
        generation = super()._convert_chunk_to_generation_chunk(
            chunk, default_chunk_class, base_generation_info
        )
        choices = chunk.get("choices") or []
        if generation is not None and choices and isinstance(generation.message, AIMessageChunk):
            reasoning = (choices[0].get("delta") or {}).get("reasoning_content")
            if reasoning is not None:
                generation.message.additional_kwargs["reasoning_content"] = reasoning
        return generation

    @contextlib.contextmanager
    def _key_redacted(self) -> Iterator[None]:
        """Errors raised in it never carry the key (a server or proxy that echoes the request
        puts it into openai's error message and body)."""
        try:
            yield
        except Exception as error:
            key = self.openai_api_key
            if isinstance(key, SecretStr):
                redact_error(error, key.get_secret_value())
            raise

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._key_redacted():
            return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    async def _on_this_loop(self) -> None:
        """Give this event loop an async client of its own.

        langchain-openai shares one cached async HTTP client across the process; its pooled
        connections belong to the loop that opened them, so a second loop (another
        `asyncio.run`, a worker's loop, a test's) fails with "Event loop is closed". Each loop
        gets a client here, closed within that loop when it shuts down (through an async
        generator the loop finalizes in `shutdown_asyncgens`, as `asyncio.run` does). The model's
        async clients stand for the client of whichever loop reads them (`_OnTheRunningLoop`),
        so loops in several threads at once each use their own. A client the caller passed
        (`http_async_client`) is theirs and used as it is.
        """
        if self._first_async_client is None:  # the caller's client, or none to copy
            return
        loop = asyncio.get_running_loop()
        closer = None
        with _PER_LOOP:
            if loop not in self._per_loop:
                http = openai.DefaultAsyncHttpxClient(proxy=self.openai_proxy or None)
                root = self._first_async_client.with_options(http_client=http)
                # Held as long as the loop lives: the loop keeps only a weak reference.
                closer = _closed_with_the_loop(root)
                self._per_loop[loop] = (root, closer)
        if closer is not None:
            await closer.asend(None)  # the loop finalizes it (closing the client) at shutdown

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        await self._on_this_loop()
        with self._key_redacted():
            return await super()._agenerate(messages, stop=stop, run_manager=run_manager, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        totals = _UsageTotals()
        with self._key_redacted():
            for chunk in super()._stream(messages, stop=stop, run_manager=run_manager, **kwargs):
                yield totals.as_delta(chunk)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        totals = _UsageTotals()
        await self._on_this_loop()
        chunks = super()._astream(messages, stop=stop, run_manager=run_manager, **kwargs)
        with self._key_redacted():
            async for chunk in chunks:
                yield totals.as_delta(chunk)


_REBUILT = frozenset(
    {
        "client",
        "async_client",
        "root_client",
        "root_async_client",
        "http_client",
        "http_async_client",
        "openai_api_key",
        "profile",
    }
)
"""Fields made again when a pickled chat model is rebuilt (and the key, never pickled)."""


_PER_LOOP = threading.Lock()


class _OnTheRunningLoop:
    """Stands for langchain-openai's async client (or its `chat.completions`): each attribute
    is read from the client of the event loop running now (the first client when none runs,
    or the loop has none yet)."""

    __slots__ = ("_first", "_part", "_per_loop")

    def __init__(
        self,
        per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]],
        first: Any,
        part: Callable[[Any], Any],
    ) -> None:
        self._per_loop, self._first, self._part = per_loop, first, part

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in self.__slots__:  # copy's probes, an empty copy
            raise AttributeError(name)
        try:
            held = self._per_loop.get(asyncio.get_running_loop())
        except RuntimeError:  # no loop runs in this thread
            held = None
        return getattr(self._part(self._first if held is None else held[0]), name)


def _itself(client: Any) -> Any:
    return client


def _chat_completions(client: Any) -> Any:
    return client.chat.completions


async def _closed_with_the_loop(client: Any) -> AsyncGenerator[None, None]:
    """Suspended until its loop shuts down its async generators; then closes `client` there."""
    try:
        yield
    finally:
        await client.close()


def _rebuilt(cls: type[ChatSiliconFlow], settings: dict[str, Any]) -> ChatSiliconFlow:
    return cls(**settings)


class _UsageTotals:
    """SiliconFlow puts the running usage totals in every streamed chunk; LangChain adds chunks'
    usage up. Each chunk is given only what is new since the last one, so the sum is right."""

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0

    def as_delta(self, chunk: ChatGenerationChunk) -> ChatGenerationChunk:
        usage = getattr(chunk.message, "usage_metadata", None)
        if usage:
            seen_input, seen_output = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
            # A total that goes down (a server restarting its count) adds nothing: never a
            # negative count, and what was counted stays counted.
            usage["input_tokens"] = max(seen_input - self.input_tokens, 0)
            usage["output_tokens"] = max(seen_output - self.output_tokens, 0)
            usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
            self.input_tokens = max(seen_input, self.input_tokens)
            self.output_tokens = max(seen_output, self.output_tokens)
        return chunk
