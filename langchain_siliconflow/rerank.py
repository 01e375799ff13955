"""`SiliconFlowRerank`: LangChain's document compressor on SiliconFlow's rerank API."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager, Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, StrictInt, model_validator

from siliconflow_rerank import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_DOCUMENTS_PER_REQUEST,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    SERVICE_ERRORS,
    AsyncSiliconFlowClient,
    DocumentItem,
    InvalidRequestError,
    QueryItem,
    RerankCache,
    RerankResponse,
    SiliconFlowClient,
    Usage,
    image_item,
    validate_options,
    video_item,
)

__all__ = ["RerankResults", "SiliconFlowRerank"]

logger = logging.getLogger("siliconflow_rerank")

USAGE_EVENT = "siliconflow_rerank_usage"
"""Name of the LangChain custom event that reports each call's token usage."""


class RerankResults(list[dict[str, Any]]):
    """What `SiliconFlowRerank.rerank` returns: `[{"index", "relevance_score"}, ...]`, best first.

    A plain list, as `CohereRerank.rerank` returns, that also carries the call's `usage` and
    `trace_id`.
    """

    usage: Usage | None = None
    """Token usage of the call, or None when the server reported none."""
    trace_id: str | None = None
    """The `x-siliconcloud-trace-id` of the answer."""


class SiliconFlowRerank(BaseDocumentCompressor):
    """Rerank LangChain documents with SiliconFlow (text, image and video).

    Setup:
        `pip install ".[langchain]"` in a checkout of siliconflow-rerank; set `SILICONFLOW_API_KEY`.

    Instantiate:
        ```python
        from langchain_siliconflow import SiliconFlowRerank

        reranker = SiliconFlowRerank(model="BAAI/bge-reranker-v2-m3", top_n=3)
        ```

    Usage:
        ```python
        from langchain_classic.retrievers import ContextualCompressionRetriever

        retriever = ContextualCompressionRetriever(
            base_compressor=reranker, base_retriever=vector_store.as_retriever(k=20)
        )
        documents = retriever.invoke("How do I keep apples fresh?")
        documents[0].metadata["relevance_score"]
        ```

    Returned documents are copies of the inputs (same `id`, copied metadata) with
    `metadata["relevance_score"]` added, best first, ties in input order, at most `top_n`. The
    inputs are never changed. A document whose `metadata["image"]` (or `["video"]`) holds an https
    URL or a data URI is ranked as that image (or video), its `page_content` being only a caption.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str = DEFAULT_MODEL
    """The rerank model; `Qwen/Qwen3-VL-Reranker-8B` for images and video."""
    top_n: StrictInt | None = 3
    """How many documents to return (as `CohereRerank`); None returns all of them, reordered."""
    api_key: SecretStr | None = Field(default=None, repr=False)
    """The API key; defaults to the `SILICONFLOW_API_KEY` environment variable."""
    base_url: str | None = None
    """The API root; defaults to `SILICONFLOW_BASE_URL`, then `https://api.siliconflow.cn/v1`."""
    timeout: float | None = None
    """Seconds for each phase of a request; None keeps the default (10 s connect, 120 s read)."""
    max_retries: StrictInt = DEFAULT_MAX_RETRIES
    """Retries after a connection error, timeout, 408, 429 or 5xx."""
    instruction: str | None = None
    """Task instruction for the Qwen3-Reranker models."""
    max_chunks_per_doc: StrictInt | None = None
    """Chunk limit for long documents (bge, bce and Qwen3-VL models)."""
    overlap_tokens: StrictInt | None = None
    """Token overlap between chunks, 0 to 80 (bge, bce and Qwen3-VL models)."""
    max_documents_per_request: StrictInt | None = DEFAULT_MAX_DOCUMENTS_PER_REQUEST
    """Longer lists are split into concurrent requests of this many documents (None: never)."""
    max_concurrency: StrictInt = DEFAULT_MAX_CONCURRENCY
    """How many requests of one split call run at once."""
    requests_per_minute: StrictInt | None = None
    """Client-side request budget, shared by every call on this reranker."""
    tokens_per_minute: StrictInt | None = None
    """Client-side (estimated) token budget, shared likewise."""
    cache: RerankCache | None = Field(default=None, exclude=True)
    """A `RerankCache` to reuse scores across calls (off by default)."""
    on_progress: Callable[[int, int], object] | None = Field(default=None, exclude=True)
    """Called with (requests done, requests in all) as a long call proceeds."""
    on_error: Literal["raise", "passthrough"] = "raise"
    """When the service fails after its retries: raise, or pass the documents through in their
    original order (at most `top_n`), each marked `metadata["rerank_status"] = "failed"`, with one
    WARNING logged. Bad input raises either way."""
    allow_local_media: bool = False
    """Read local files named in `metadata["image"]` / `["video"]`. Off by default: metadata often
    comes from untrusted loaders, and reading arbitrary paths would upload local files."""
    document_to_item: Callable[[Document], DocumentItem] | None = Field(default=None, exclude=True)
    """Override how a document becomes a rerank item (a string, or a text, image or video item)."""
    client: SiliconFlowClient | None = Field(default=None, exclude=True, repr=False)
    """A ready sync client to use instead of building one from the settings above."""
    async_client: AsyncSiliconFlowClient | None = Field(default=None, exclude=True, repr=False)
    """A ready async client to use instead of building one from the settings above."""

    _client: SiliconFlowClient | None = PrivateAttr(default=None)
    _async_client: AsyncSiliconFlowClient | None = PrivateAttr(default=None)

    @property
    def lc_secrets(self) -> dict[str, str]:
        """Where LangChain's serializer finds the key: the environment variable, never the value."""
        return {"api_key": "SILICONFLOW_API_KEY"}

    @model_validator(mode="after")
    def _check_settings(self) -> SiliconFlowRerank:
        validate_options(
            self.model,
            top_n=self.top_n,
            instruction=self.instruction,
            max_chunks_per_doc=self.max_chunks_per_doc,
            overlap_tokens=self.overlap_tokens,
        )
        if self.client is None or self.async_client is None:
            self._build_clients()
        return self

    def _build_clients(self) -> None:
        settings: dict[str, Any] = {
            "api_key": self.api_key,
            "base_url": self.base_url,
            "timeout": DEFAULT_TIMEOUT if self.timeout is None else self.timeout,
            "max_retries": self.max_retries,
            "max_documents_per_request": self.max_documents_per_request,
            "max_concurrency": self.max_concurrency,
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "cache": self.cache,
        }
        # Both are cheap: neither opens a connection before its first call.
        self._client = self.client or SiliconFlowClient(**settings)
        self._async_client = self.async_client or AsyncSiliconFlowClient(**settings)

    def __getstate__(self) -> dict[Any, Any]:
        # Pickles never carry the key (nor live clients): an unpickled reranker reads
        # SILICONFLOW_API_KEY again when it is first used.
        state = dict(super().__getstate__())
        state["__dict__"] = {
            **state["__dict__"],
            "api_key": None,
            "client": None,
            "async_client": None,
            "cache": None,
            "on_progress": None,
        }
        state["__pydantic_private__"] = {"_client": None, "_async_client": None}
        return state

    # -- conversions ---------------------------------------------------------------------------

    def _items(self, documents: object) -> list[DocumentItem]:
        if isinstance(documents, str | bytes) or not isinstance(documents, Sequence):
            raise InvalidRequestError(
                f"documents must be a sequence of Documents, got {type(documents).__name__}"
            )
        return [self._to_item(d) for d in documents]

    def _to_item(self, document: Document | str | Mapping[str, str]) -> DocumentItem:
        if isinstance(document, str):
            return document
        if not isinstance(document, Document):
            return document  # type: ignore[return-value]  # a ready item; the core checks it
        if self.document_to_item is not None:
            return self.document_to_item(document)
        for kind, build in (("image", image_item), ("video", video_item)):
            source = document.metadata.get(kind)
            if source is None:
                continue
            if not isinstance(source, str):
                raise InvalidRequestError(
                    f"Document metadata[{kind!r}] must be a URL or data URI string, "
                    f"got {type(source).__name__}"
                )
            try:
                return build(source, allow_paths=self.allow_local_media)
            except InvalidRequestError as error:
                hint = (
                    "" if self.allow_local_media else "; set allow_local_media=True to read files"
                )
                raise InvalidRequestError(f"Document metadata[{kind!r}]: {error}{hint}") from error
        return document.page_content

    def _options(self, top_n: int | None) -> dict[str, Any]:
        return {
            "model": self.model,
            "top_n": top_n,
            "instruction": self.instruction,
            "max_chunks_per_doc": self.max_chunks_per_doc,
            "overlap_tokens": self.overlap_tokens,
            "on_progress": self.on_progress,
        }

    @staticmethod
    def _report(response: RerankResponse) -> dict[str, Any]:
        usage = response.usage.model_dump(exclude_none=True) if response.usage else None
        logger.debug(
            "SiliconFlow rerank: %d results, usage %s, trace id %s",
            len(response.results),
            usage,
            response.trace_id,
        )
        return {"usage": usage, "trace_id": response.trace_id, "model": response.model}

    @staticmethod
    def _results(response: RerankResponse) -> RerankResults:
        results = RerankResults(
            {"index": r.index, "relevance_score": r.relevance_score} for r in response.results
        )
        results.usage = response.usage
        results.trace_id = response.trace_id
        return results

    @staticmethod
    def _scored(documents: Sequence[Document], response: RerankResponse) -> list[Document]:
        return [
            documents[r.index].model_copy(
                update={
                    "metadata": {
                        **documents[r.index].metadata,
                        "relevance_score": r.relevance_score,
                    }
                }
            )
            for r in response.results
        ]

    def _passed_through(self, documents: Sequence[Document], error: Exception) -> list[Document]:
        kept = documents if self.top_n is None else documents[: self.top_n]
        logger.warning(
            "SiliconFlow rerank failed, passing %d documents through unranked: %s", len(kept), error
        )
        return [
            d.model_copy(update={"metadata": {**d.metadata, "rerank_status": "failed"}})
            for d in kept
        ]

    # -- sync ----------------------------------------------------------------------------------

    def rerank(
        self,
        documents: Sequence[str | Document | Mapping[str, str]],
        query: QueryItem,
        *,
        top_n: int | None = -1,
    ) -> RerankResults:
        """Rank documents against a query and return indices with scores.

        Args:
            documents: Strings, Documents, or ready items (`{"text"|"image"|"video": ...}`).
            query: A string, or an image or video item (see `siliconflow_rerank.image_item`).
            top_n: How many results; the default uses the `top_n` field, None returns all.

        Returns:
            `[{"index": int, "relevance_score": float}, ...]`, best first, as a `RerankResults`
            list that also carries `usage` and `trace_id`. Empty input gives `[]`, with no request.
        """
        items = self._items(documents)
        if not items:
            return RerankResults()
        response = self._sync().rerank(
            query, items, **self._options(self.top_n if top_n == -1 else top_n)
        )
        self._report(response)
        return self._results(response)

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Rerank `documents` against `query`.

        Returns:
            Copies of the best `top_n` documents, best first, each with
            `metadata["relevance_score"]` (a float, higher is more relevant). Token usage is
            logged at DEBUG and sent to `callbacks` as the custom event `siliconflow_rerank_usage`.
        """
        items = self._items(documents)
        if not items:
            return []
        try:
            response = self._sync().rerank(query, items, **self._options(self.top_n))
        except SERVICE_ERRORS as error:
            if self.on_error == "raise":
                raise
            return self._passed_through(documents, error)
        report = self._report(response)
        manager = CallbackManager.configure(inheritable_callbacks=callbacks)
        if manager.handlers:
            manager.on_custom_event(USAGE_EVENT, report, run_id=manager.parent_run_id)
        return self._scored(documents, response)

    # -- async ---------------------------------------------------------------------------------

    async def arerank(
        self,
        documents: Sequence[str | Document | Mapping[str, str]],
        query: QueryItem,
        *,
        top_n: int | None = -1,
    ) -> RerankResults:
        """Async `rerank`, on the native async client."""
        items = self._items(documents)
        if not items:
            return RerankResults()
        response = await self._async().rerank(
            query, items, **self._options(self.top_n if top_n == -1 else top_n)
        )
        self._report(response)
        return self._results(response)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async `compress_documents`, on the native async client (no thread pool)."""
        items = self._items(documents)
        if not items:
            return []
        try:
            response = await self._async().rerank(query, items, **self._options(self.top_n))
        except SERVICE_ERRORS as error:
            if self.on_error == "raise":
                raise
            return self._passed_through(documents, error)
        report = self._report(response)
        manager = AsyncCallbackManager.configure(inheritable_callbacks=callbacks)
        if manager.handlers:
            await manager.on_custom_event(USAGE_EVENT, report, run_id=manager.parent_run_id)
        return self._scored(documents, response)

    def close(self) -> None:
        """Close the connection pool of the sync client this reranker built (not a passed one)."""
        if self.client is None and self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        """Close the connection pool of the async client this reranker built (not a passed one)."""
        if self.async_client is None and self._async_client is not None:
            await self._async_client.aclose()

    def _sync(self) -> SiliconFlowClient:
        if self._client is None:
            self._build_clients()
        assert self._client is not None
        return self._client

    def _async(self) -> AsyncSiliconFlowClient:
        if self._async_client is None:
            self._build_clients()
        assert self._async_client is not None
        return self._async_client
