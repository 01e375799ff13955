"""`SiliconFlowRerank`: LangChain's document compressor on SiliconFlow's rerank API."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForChainGroup,
    CallbackManager,
    Callbacks,
)
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.globals import get_debug
from langchain_core.load import Serializable
from langchain_core.runnables.config import (
    ensure_config,
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
    var_child_runnable_config,
)
from langchain_core.tracers import context as tracer_context
from langchain_core.utils.env import env_var_is_set
from pydantic import ConfigDict, Field

from siliconflow_rerank import (
    API_KEY_ENV,
    SERVICE_ERRORS,
    DocumentItem,
    InvalidRequestError,
    QueryItem,
    RerankerSettings,
    RerankResponse,
    SiliconFlowError,
    Usage,
    copied,
    image_item,
    video_item,
)

__all__ = ["RerankResults", "SiliconFlowRerank"]


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


class SiliconFlowRerank(RerankerSettings, BaseDocumentCompressor, Serializable):
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

    # Serializable's own config ignores unknown arguments: ours refuses them.
    model_config = ConfigDict(extra="forbid")

    document_to_item: Callable[[Document], DocumentItem] | None = Field(default=None, exclude=True)
    """Override how a document becomes a rerank item (a string, or a text, image or video item)."""

    @property
    def lc_secrets(self) -> dict[str, str]:
        """Where LangChain's serializer finds the key: the environment variable, never the value."""
        return {"api_key": API_KEY_ENV}

    @property
    def lc_attributes(self) -> dict[str, Any]:
        """Constructor arguments in their JSON form (a timeout as a dict of seconds)."""
        return self.model_dump(mode="json", include={"timeout"})

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """`dumpd` / `dumps` and `loads` round-trip the reranker (the key as a secret reference)."""
        return True

    # -- conversions ---------------------------------------------------------------------------

    def _items(self, documents: object, *, only_documents: bool = False) -> list[DocumentItem]:
        if isinstance(documents, str | bytes) or not isinstance(documents, Sequence):
            raise InvalidRequestError(
                f"documents must be a sequence of Documents, got {type(documents).__name__}"
            )
        plain = self.document_to_item is None
        if plain and _plain(documents):
            return list(map(_PAGE_CONTENT, documents))  # the common case, in a few passes in C
        items: list[DocumentItem] = []
        for position, document in enumerate(documents):
            if plain and type(document) is Document and not _MEDIA_KEYS & document.metadata.keys():
                items.append(document.page_content)  # the common case, in one step
            elif only_documents and not isinstance(document, Document):
                # Compressors return Document copies: anything else is refused before any I/O.
                raise InvalidRequestError(
                    f"documents[{position}] must be a Document, got {type(document).__name__} "
                    "(rerank() takes strings and items)"
                )
            else:
                items.append(self._to_item(document))
        return items

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

    @staticmethod
    def _results(response: RerankResponse) -> RerankResults:
        results = RerankResults(
            {"index": index, "relevance_score": score} for index, score in response.results.pairs()
        )
        results.usage = response.usage
        results.trace_id = response.trace_id
        return results

    @staticmethod
    def _scored(documents: Sequence[Document], response: RerankResponse) -> list[Document]:
        return [
            copied(
                documents[index],
                metadata={**documents[index].metadata, "relevance_score": score},
            )
            for index, score in response.results.pairs()
        ]

    def _passed_through(
        self, documents: Sequence[Document], error: SiliconFlowError
    ) -> list[Document]:
        return [
            copied(d, metadata={**d.metadata, "rerank_status": "failed"})
            for d in self._kept_on_failure(documents, error)
        ]

    # -- sync ----------------------------------------------------------------------------------

    def rerank(
        self,
        documents: Sequence[str | Document | Mapping[str, Any]],
        query: QueryItem,
        *,
        top_n: int | None = -1,
        rank_fields: Sequence[str] | None = None,
        model: str | None = None,
    ) -> RerankResults:
        """Rank documents against a query and return indices with scores.

        Args:
            documents: Strings, Documents, ready items (`{"text"|"image"|"video": ...}`), or
                records (any other dict), ranked as their fields in `key: value` lines, as
                `CohereRerank` does.
            query: A string, or an image or video item (see `siliconflow_rerank.image_item`).
            top_n: How many results; 0 or below (the default) uses the `top_n` field, None
                returns all.
            rank_fields: The fields of records to rank by, in this order (others are left out).
            model: The model for this call, instead of the `model` field.

        Returns:
            `[{"index": int, "relevance_score": float}, ...]`, best first, as a `RerankResults`
            list that also carries `usage` and `trace_id`. Empty input gives `[]`, with no request.
        """
        items = self._items(_records_as_text(documents, rank_fields))
        if not items:
            return RerankResults()
        response = self._sync().rerank(query, items, **self._call_options(top_n, model))
        self._log_usage(response)
        return self._results(response)

    def _call_options(self, top_n: int | None, model: str | None) -> dict[str, Any]:
        """The options of one `rerank`/`arerank` call: `top_n` of 0 or below is the field's."""
        options = self._rerank_options(self.top_n if top_n is not None and top_n <= 0 else top_n)
        if model is not None:
            options["model"] = model
        return options

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
        items = self._items(documents, only_documents=True)
        if not items:
            return []
        try:
            response = self._sync().rerank(query, items, **self._rerank_options(self.top_n))
        except SERVICE_ERRORS as error:
            return self._passed_through(documents, error)
        self._log_usage(response)
        if _may_listen(callbacks):
            manager = _callback_manager(callbacks)
            if manager.handlers:
                report = self._usage_report(response)
                manager.on_custom_event(USAGE_EVENT, report, run_id=manager.parent_run_id)
        return self._scored(documents, response)

    # -- async ---------------------------------------------------------------------------------

    async def arerank(
        self,
        documents: Sequence[str | Document | Mapping[str, Any]],
        query: QueryItem,
        *,
        top_n: int | None = -1,
        rank_fields: Sequence[str] | None = None,
        model: str | None = None,
    ) -> RerankResults:
        """Async `rerank` (the same arguments), on the native async client."""
        items = self._items(_records_as_text(documents, rank_fields))
        if not items:
            return RerankResults()
        response = await self._async().rerank(query, items, **self._call_options(top_n, model))
        self._log_usage(response)
        return self._results(response)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async `compress_documents`, on the native async client (no thread pool)."""
        items = self._items(documents, only_documents=True)
        if not items:
            return []
        try:
            response = await self._async().rerank(query, items, **self._rerank_options(self.top_n))
        except SERVICE_ERRORS as error:
            return self._passed_through(documents, error)
        self._log_usage(response)
        if _may_listen(callbacks):
            async_manager = _async_callback_manager(callbacks)
            if async_manager.handlers:
                report = self._usage_report(response)
                await async_manager.on_custom_event(
                    USAGE_EVENT, report, run_id=async_manager.parent_run_id
                )
        return self._scored(documents, response)


_MEDIA_KEYS = frozenset({"image", "video"})
_PAGE_CONTENT = attrgetter("page_content")
_METADATA = attrgetter("metadata")


def _plain(documents: Sequence[object]) -> bool:
    """Whether every document is a plain `Document` whose metadata names no media."""
    return set(map(type, documents)) == {Document} and all(
        map(_MEDIA_KEYS.isdisjoint, map(_METADATA, documents))
    )


def _langchain_sources() -> tuple[Callable[[], object], list[Any]] | None:
    """Where LangChain's configuration finds handlers of its own (tracing, registered hooks), or
    None if this langchain-core keeps them elsewhere: then every call configures a manager."""
    tracing = getattr(tracer_context, "_tracing_v2_is_enabled", None)
    hooks = getattr(tracer_context, "_configure_hooks", None)
    return None if tracing is None or not isinstance(hooks, list) else (tracing, hooks)


_SOURCES = _langchain_sources()


def _may_listen(callbacks: Callbacks | None) -> bool:
    """Whether a handler could receive this call's usage event: one passed in, one of the run
    this call is part of, or one LangChain's configuration adds on its own (debug, tracing, a
    registered hook): far cheaper than configuring a manager to find none."""
    if callbacks is not None or _SOURCES is None:
        return True
    config = var_child_runnable_config.get()
    if config is not None and config.get("callbacks") is not None:
        return True
    tracing, hooks = _SOURCES
    if get_debug() or tracing():
        return True
    return any(
        var.get() is not None or (kind is not None and env is not None and env_var_is_set(env))
        for var, _, kind, env in hooks
    )


def _callback_manager(callbacks: Callbacks | None) -> CallbackManager:
    # A manager handed in (as a retriever hands its run's child manager) is used as is: it was
    # configured when its run started. Handlers passed in win over those of the run this call is
    # part of (a RunnableLambda, a chain), as dispatch_custom_event finds them.
    if isinstance(callbacks, CallbackManager):
        return callbacks
    if callbacks is not None:
        return CallbackManager.configure(inheritable_callbacks=callbacks)
    return get_callback_manager_for_config(ensure_config())


def _async_callback_manager(
    callbacks: Callbacks | None,
) -> AsyncCallbackManager | AsyncCallbackManagerForChainGroup:
    if isinstance(callbacks, AsyncCallbackManager):
        return callbacks
    if callbacks is not None:
        return AsyncCallbackManager.configure(inheritable_callbacks=callbacks)
    return get_async_callback_manager_for_config(ensure_config())


_ITEM_KEYS = frozenset({"text", "image", "video"})


def _records_as_text(documents: object, fields: Sequence[str] | None) -> object:
    """`documents` with each record (a dict that is no ready item) as the text of its fields,
    one `key: value` line each; only `fields`, in their order, when given."""
    if isinstance(documents, str | bytes) or not isinstance(documents, Sequence):
        return documents  # refused, by name, where items are made
    if not any(isinstance(d, Mapping) for d in documents):
        if fields is not None:
            raise InvalidRequestError("rank_fields= applies to dict documents; none was given")
        return documents
    converted: list[object] = []
    for document in documents:
        if isinstance(document, Mapping) and not (
            len(document) == 1 and next(iter(document)) in _ITEM_KEYS and fields is None
        ):
            chosen = [name for name in fields if name in document] if fields else list(document)
            document = "\n".join(f"{name}: {document[name]}" for name in chosen)
        converted.append(document)
    return converted
