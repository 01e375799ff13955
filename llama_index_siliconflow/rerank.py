"""`SiliconFlowRerank`: LlamaIndex's node postprocessor on SiliconFlow's rerank API."""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from llama_index.core.bridge.pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    model_validator,
)
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import (
    BaseNode,
    ImageNode,
    MediaResource,
    MetadataMode,
    Node,
    NodeWithScore,
    QueryBundle,
)
from pydantic import StrictInt

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
    SiliconFlowError,
    image_item,
    validate_options,
    video_item,
)

__all__ = ["RerankUsageEvent", "SiliconFlowRerank"]

logger = logging.getLogger("siliconflow_rerank")
dispatcher = get_dispatcher(__name__)

SCORE_KEY = "relevance_score"
STATUS_KEY = "rerank_status"

_Model = TypeVar("_Model", bound=BaseModel)


class RerankUsageEvent(BaseEvent):
    """Dispatched once per rerank call with the token usage the server reported."""

    model_name: str
    """The model asked for."""
    usage: dict[str, Any] | None
    """Token counts (`input_tokens`, `total_tokens`, `billed_units`, ...), or None if not sent."""
    trace_id: str | None
    """The `x-siliconcloud-trace-id` of the answer."""

    @classmethod
    def class_name(cls) -> str:
        """The event's name."""
        return "SiliconFlowRerankUsageEvent"


class SiliconFlowRerank(BaseNodePostprocessor):
    """Rerank LlamaIndex nodes with SiliconFlow: text, image and video nodes, sync and async.

    Setup:
        `pip install ".[llama-index]"` in a checkout of siliconflow-rerank, and set
        `SILICONFLOW_API_KEY`.

    Usage:
        ```python
        from llama_index_siliconflow import SiliconFlowRerank

        reranker = SiliconFlowRerank(model="BAAI/bge-reranker-v2-m3", top_n=3)
        query_engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[reranker])
        ```

    Returns new `NodeWithScore` objects, best first, ties in input order, at most `top_n`; each
    holds a copy of its node whose metadata carries `relevance_score` (kept out of LLM and embedding
    text). Input nodes are never changed.
    """

    model: str = Field(default=DEFAULT_MODEL, description="The SiliconFlow rerank model.")
    top_n: StrictInt | None = Field(
        default=3, description="How many nodes to return; None returns all of them, reordered."
    )
    api_key: SecretStr | None = Field(
        default=None,
        exclude=True,
        description="The API key; defaults to the SILICONFLOW_API_KEY environment variable.",
    )
    base_url: str | None = Field(
        default=None,
        description="The API root; defaults to SILICONFLOW_BASE_URL, then the mainland endpoint.",
    )
    timeout: float | None = Field(
        default=None,
        description="Seconds for each phase of a request; None keeps 10 s connect, 120 s read.",
    )
    max_retries: StrictInt = Field(
        default=DEFAULT_MAX_RETRIES,
        description="Retries after a connection error, timeout, 408, 429 or 5xx.",
    )
    instruction: str | None = Field(
        default=None, description="Task instruction (Qwen3-Reranker models only)."
    )
    max_chunks_per_doc: StrictInt | None = Field(
        default=None, description="Chunk limit for long documents (bge, bce, Qwen3-VL)."
    )
    overlap_tokens: StrictInt | None = Field(
        default=None, description="Token overlap between chunks, 0 to 80 (bge, bce, Qwen3-VL)."
    )
    max_documents_per_request: StrictInt | None = Field(
        default=DEFAULT_MAX_DOCUMENTS_PER_REQUEST,
        description="Split longer lists into concurrent requests of this many nodes (None: never).",
    )
    max_concurrency: StrictInt = Field(
        default=DEFAULT_MAX_CONCURRENCY, description="Requests of one split call run at once."
    )
    requests_per_minute: StrictInt | None = Field(
        default=None, description="Client-side request budget, shared by every call."
    )
    tokens_per_minute: StrictInt | None = Field(
        default=None, description="Client-side (estimated) token budget, shared by every call."
    )
    cache: RerankCache | None = Field(
        default=None, exclude=True, description="A RerankCache to reuse scores across calls."
    )
    on_progress: Callable[[int, int], object] | None = Field(
        default=None, exclude=True, description="Called with (requests done, requests in all)."
    )
    on_error: Literal["raise", "passthrough"] = Field(
        default="raise",
        description=(
            "When the service fails after its retries: raise, or pass the nodes through in "
            "their original order (at most top_n, scores kept), each marked "
            "metadata['rerank_status'] = 'failed', with one WARNING logged."
        ),
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which metadata goes into a text node's content."
    )

    client: SiliconFlowClient | None = Field(
        default=None,
        exclude=True,
        description="A ready sync client to use instead of building one.",
    )
    async_client: AsyncSiliconFlowClient | None = Field(
        default=None,
        exclude=True,
        description="A ready async client to use instead of building one.",
    )

    _client: SiliconFlowClient | None = PrivateAttr(default=None)
    _async_client: AsyncSiliconFlowClient | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        """The component's name in LlamaIndex serialization."""
        return "SiliconFlowRerank"

    @model_validator(mode="after")
    def _check_settings(self) -> SiliconFlowRerank:
        validate_options(
            self.model,
            top_n=self.top_n,
            instruction=self.instruction,
            max_chunks_per_doc=self.max_chunks_per_doc,
            overlap_tokens=self.overlap_tokens,
        )
        return self

    def __getstate__(self) -> dict[str, Any]:
        # Pickles never carry the key (nor live clients): an unpickled reranker reads
        # SILICONFLOW_API_KEY again when it is first used.
        self_state = {
            **self.__dict__,
            "api_key": None,
            "client": None,
            "async_client": None,
            "cache": None,
            "on_progress": None,
        }
        return {
            "__dict__": self_state,
            "__pydantic_extra__": self.__pydantic_extra__,
            "__pydantic_fields_set__": self.__pydantic_fields_set__ - {"api_key"},
            "__pydantic_private__": {"_client": None, "_async_client": None},
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Restore as is: re-running __init__ (as LlamaIndex components do) would drop the
        # callback manager and re-validate what was valid when pickled.
        object.__setattr__(self, "__dict__", state["__dict__"])
        object.__setattr__(self, "__pydantic_extra__", state["__pydantic_extra__"])
        object.__setattr__(self, "__pydantic_fields_set__", state["__pydantic_fields_set__"])
        object.__setattr__(self, "__pydantic_private__", state["__pydantic_private__"])

    # -- clients -------------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        return {
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

    def _sync(self) -> SiliconFlowClient:
        if self.client is not None:
            return self.client
        if self._client is None:
            self._client = SiliconFlowClient(**self._settings())
        return self._client

    def _async(self) -> AsyncSiliconFlowClient:
        if self.async_client is not None:
            return self.async_client
        if self._async_client is None:
            self._async_client = AsyncSiliconFlowClient(**self._settings())
        return self._async_client

    def close(self) -> None:
        """Close the sync pool this reranker built (a passed client stays open)."""
        if self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        """Close the async pool this reranker built (a passed client stays open)."""
        if self._async_client is not None:
            await self._async_client.aclose()

    # -- conversions ---------------------------------------------------------------------------

    def _node_item(self, node: BaseNode) -> DocumentItem:
        if not _may_hold_media(type(node)):
            return node.get_content(metadata_mode=self.metadata_mode)
        if isinstance(node, ImageNode):
            if node.image:
                return image_item(_b64decode(node.image, node), mime_type=node.image_mimetype)
            if node.image_url:
                return image_item(node.image_url)
            if node.image_path:
                return image_item(node.image_path, mime_type=node.image_mimetype, allow_paths=True)
        elif isinstance(node, Node):
            if node.image_resource is not None:
                source, mime_type = _resource_source(node.image_resource, node)
                return image_item(source, mime_type=mime_type)
            if node.video_resource is not None:
                source, mime_type = _resource_source(node.video_resource, node)
                return video_item(source, mime_type=mime_type)
        return node.get_content(metadata_mode=self.metadata_mode)

    def _query_item(self, query_bundle: QueryBundle) -> QueryItem:
        if not query_bundle.query_str.strip() and query_bundle.image_path:
            return image_item(query_bundle.image_path, allow_paths=True)
        return query_bundle.query_str

    def _prepare(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> tuple[QueryItem, list[DocumentItem]]:
        if query_bundle is None:
            raise ValueError("Missing query bundle in extra info.")
        if not isinstance(query_bundle, QueryBundle) or not isinstance(query_bundle.query_str, str):
            raise InvalidRequestError("query_bundle must be a QueryBundle with a string query_str")
        if not isinstance(nodes, list):
            raise InvalidRequestError(f"nodes must be a list, got {type(nodes).__name__}")
        items = []
        for position, node in enumerate(nodes):
            if not isinstance(node, NodeWithScore):
                raise InvalidRequestError(
                    f"nodes[{position}] must be a NodeWithScore, got {type(node).__name__}"
                )
            items.append(self._node_item(node.node))
        return self._query_item(query_bundle), items

    def _options(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "top_n": self.top_n,
            "instruction": self.instruction,
            "max_chunks_per_doc": self.max_chunks_per_doc,
            "overlap_tokens": self.overlap_tokens,
            "on_progress": self.on_progress,
        }

    @contextlib.contextmanager
    def _observed(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle
    ) -> Iterator[_Outcome]:
        """Wrap one rerank call in balanced start/end events, whatever happens inside."""
        top_n = len(nodes) if self.top_n is None else min(self.top_n, len(nodes))
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=top_n, model_name=self.model)
        )
        payload: dict[str, Any] = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query_bundle.query_str,
            EventPayload.TOP_K: top_n,
        }
        outcome = _Outcome()
        try:
            with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
                yield outcome
                event.on_end(payload={EventPayload.NODES: outcome.nodes})
        finally:
            dispatcher.event(ReRankEndEvent(nodes=outcome.nodes))

    def _finish(self, nodes: list[NodeWithScore], response: RerankResponse) -> list[NodeWithScore]:
        usage = response.usage.model_dump(exclude_none=True) if response.usage else None
        logger.debug("SiliconFlow rerank usage %s, trace id %s", usage, response.trace_id)
        dispatcher.event(
            RerankUsageEvent(model_name=self.model, usage=usage, trace_id=response.trace_id)
        )
        ranked = []
        for result in response.results:
            score = result.relevance_score
            ranked.append(_scored(_marked_copy(nodes[result.index].node, SCORE_KEY, score), score))
        return ranked

    def _passed_through(
        self, nodes: list[NodeWithScore], error: SiliconFlowError
    ) -> list[NodeWithScore]:
        if self.on_error == "raise":
            raise error
        kept = nodes if self.top_n is None else nodes[: self.top_n]
        logger.warning(
            "SiliconFlow rerank failed, passing %d nodes through unranked: %s", len(kept), error
        )
        return [_scored(_marked_copy(n.node, STATUS_KEY, "failed"), n.score) for n in kept]

    # -- the postprocessor API -----------------------------------------------------------------

    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query, items = self._prepare(nodes, query_bundle)
        if not nodes:
            return []
        assert query_bundle is not None
        with self._observed(nodes, query_bundle) as outcome:
            try:
                response = self._sync().rerank(query, items, **self._options())
            except SERVICE_ERRORS as error:
                outcome.nodes = self._passed_through(nodes, error)
            else:
                outcome.nodes = self._finish(nodes, response)
        return outcome.nodes

    @dispatcher.span
    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query, items = self._prepare(nodes, query_bundle)
        if not nodes:
            return []
        assert query_bundle is not None
        with self._observed(nodes, query_bundle) as outcome:
            try:
                response = await self._async().rerank(query, items, **self._options())
            except SERVICE_ERRORS as error:
                outcome.nodes = self._passed_through(nodes, error)
            else:
                outcome.nodes = self._finish(nodes, response)
        return outcome.nodes


@dataclass
class _Outcome:
    nodes: list[NodeWithScore] = field(default_factory=list)


@functools.cache
def _may_hold_media(node_class: type[BaseNode]) -> bool:
    # Cached per class: an isinstance check against a pydantic model class goes through ABCMeta.
    return issubclass(node_class, (ImageNode, Node))


def _b64decode(data: str | bytes, node: BaseNode) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidRequestError(f"node {node.node_id}: image data is not valid base64") from error


def _resource_source(
    resource: MediaResource, node: BaseNode
) -> tuple[str | bytes | Path, str | None]:
    """The source (bytes, URL or path) and MIME type of a media resource, for the item helpers."""
    if resource.data:
        return _b64decode(resource.data, node), resource.mimetype
    if resource.url is not None:
        return str(resource.url), resource.mimetype
    if resource.path is not None:
        return Path(resource.path), resource.mimetype
    raise InvalidRequestError(f"node {node.node_id}: media resource has no data, url or path")


def _marked_copy(node: BaseNode, key: str, value: Any) -> BaseNode:
    """A copy of `node` with `key: value` added to its metadata, hidden from LLM and embedding text.

    What `node.model_copy(update=...)` does, without its generic `copy.copy` calls: this runs
    once per returned node on every query, the largest part of the adapter's own cost.
    """
    state = node.__dict__.copy()
    metadata = node.metadata.copy()
    metadata[key] = value
    state["metadata"] = metadata
    keys = node.excluded_llm_metadata_keys
    state["excluded_llm_metadata_keys"] = [*keys, key] if key not in keys else keys.copy()
    keys = node.excluded_embed_metadata_keys
    state["excluded_embed_metadata_keys"] = [*keys, key] if key not in keys else keys.copy()
    extra, private = node.__pydantic_extra__, node.__pydantic_private__
    return _assembled(
        type(node),
        state,
        node.__pydantic_fields_set__ | _UPDATED,
        None if extra is None else extra.copy(),
        None if private is None else private.copy(),
    )


def _scored(node: BaseNode, score: float | None) -> NodeWithScore:
    """`NodeWithScore(node=node, score=score)` without re-validating a node we just built."""
    return _assembled(NodeWithScore, {"node": node, "score": score}, {"node", "score"})


def _assembled(
    cls: type[_Model],
    state: dict[str, Any],
    fields_set: set[str],
    extra: dict[str, Any] | None = None,
    private: dict[str, Any] | None = None,
) -> _Model:
    """An instance of pydantic model `cls` from already valid state, as `model_copy` builds one."""
    instance = _new(cls)
    _set(instance, "__dict__", state)
    _set(instance, "__pydantic_fields_set__", fields_set)
    _set(instance, "__pydantic_extra__", extra)
    _set(instance, "__pydantic_private__", private)
    return instance


_new = object.__new__
_set = object.__setattr__
_UPDATED = frozenset({"metadata", "excluded_llm_metadata_keys", "excluded_embed_metadata_keys"})
