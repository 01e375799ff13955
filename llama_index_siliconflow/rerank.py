"""`SiliconFlowRerank`: LlamaIndex's node postprocessor on SiliconFlow's rerank API."""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar

from llama_index.core.bridge.pydantic import (
    BaseModel,
    Field,
    model_validator,
)
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.dispatcher import Dispatcher
from llama_index.core.instrumentation.event_handlers import NullEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.instrumentation.span_handlers import NullSpanHandler
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import (
    BaseNode,
    ImageNode,
    MediaResource,
    MetadataMode,
    Node,
    NodeWithScore,
    QueryBundle,
    TextNode,
)
from typing_extensions import Self

from siliconflow_rerank import (
    SERVICE_ERRORS,
    DocumentItem,
    InvalidRequestError,
    QueryItem,
    RerankerSettings,
    RerankResponse,
    SiliconFlowError,
    assembled,
    copied,
    image_item,
    video_item,
)

from ._components import Serialized

__all__ = ["RerankUsageEvent", "SiliconFlowRerank"]

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


class SiliconFlowRerank(Serialized, RerankerSettings, BaseNodePostprocessor):
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

    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which metadata goes into a text node's content."
    )

    @classmethod
    def class_name(cls) -> str:
        """The component's name in LlamaIndex serialization."""
        return "SiliconFlowRerank"

    @model_validator(mode="before")
    @classmethod
    def _peer_fields(cls, values: Any) -> Any:
        # A config saved by the LlamaIndex peer's `to_dict()` holds `return_documents`, which
        # never changed what it returned (the caller's own nodes, as here): dropped, said.
        if isinstance(values, dict) and "return_documents" in values:
            warnings.warn(
                "SiliconFlowRerank ignores return_documents: it returns your own nodes, "
                "reordered (as the llama-index-postprocessor-siliconflow-rerank package did "
                "whatever it was set to)",
                UserWarning,
                stacklevel=2,
            )
            values = {name: value for name, value in values.items() if name != "return_documents"}
        return values

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> Self:
        """A reranker from a saved config, ours or the peer's: its `top_n=0` (which the peer
        sent to the service as it was) loads as `top_n=None`, every node reordered, with a
        warning; a constructor still refuses 0."""
        if data.get("top_n") == 0 and data["top_n"] is not False:
            warnings.warn(
                "SiliconFlowRerank reads top_n=0 as top_n=None: every node, reordered",
                UserWarning,
                stacklevel=2,
            )
            data = {**data, "top_n": None}
        return super().from_dict(data, **kwargs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Restore as is: re-running __init__ (as LlamaIndex components do) would drop the
        # callback manager and re-validate what was valid when pickled.
        object.__setattr__(self, "__dict__", state["__dict__"])
        object.__setattr__(self, "__pydantic_extra__", state["__pydantic_extra__"])
        object.__setattr__(self, "__pydantic_fields_set__", state["__pydantic_fields_set__"])
        object.__setattr__(self, "__pydantic_private__", state["__pydantic_private__"])

    def _node_item(self, node: BaseNode) -> DocumentItem:
        if type(node) is TextNode and not node.metadata:
            return node.text  # what get_content() returns for it, without the formatting
        if not _may_hold_media(type(node)):
            return node.get_content(metadata_mode=self.metadata_mode)
        if isinstance(node, ImageNode):
            if node.image:
                return image_item(_b64decode(node.image, node), mime_type=node.image_mimetype)
            if node.image_url:
                return image_item(node.image_url)
            if node.image_path:
                path = self._local_file(node.image_path, f"node {node.node_id}'s image_path")
                return image_item(path, mime_type=node.image_mimetype)
        elif isinstance(node, Node):
            if node.image_resource is not None:
                source, mime_type = self._resource_source(node.image_resource, node)
                return image_item(source, mime_type=mime_type)
            if node.video_resource is not None:
                source, mime_type = self._resource_source(node.video_resource, node)
                return video_item(source, mime_type=mime_type)
        return node.get_content(metadata_mode=self.metadata_mode)

    def _resource_source(
        self, resource: MediaResource, node: BaseNode
    ) -> tuple[str | bytes | Path, str | None]:
        """The source (bytes, URL or path) and MIME type of a media resource, for the helpers."""
        if resource.data:
            return _b64decode(resource.data, node), resource.mimetype
        if resource.url is not None:
            return str(resource.url), resource.mimetype
        if resource.path is not None:
            path = self._local_file(resource.path, f"node {node.node_id}'s media resource")
            return path, resource.mimetype
        raise InvalidRequestError(f"node {node.node_id}: media resource has no data, url or path")

    def _query_item(self, query_bundle: QueryBundle) -> QueryItem:
        image = query_bundle.image_path
        if query_bundle.query_str.strip() or not image:
            return query_bundle.query_str
        if image.startswith(("http://", "https://", "data:")):
            return image_item(image)
        # A path, like a node's: read only with allow_local_media.
        return image_item(self._local_file(image, "the query's image_path"))

    def _prepare(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> tuple[QueryItem, list[DocumentItem]]:
        if query_bundle is None:
            raise ValueError("Missing query bundle in extra info.")
        if not isinstance(query_bundle, QueryBundle) or not isinstance(query_bundle.query_str, str):
            raise InvalidRequestError("query_bundle must be a QueryBundle with a string query_str")
        if not isinstance(nodes, list):
            raise InvalidRequestError(f"nodes must be a list, got {type(nodes).__name__}")
        texts = _plain_texts(nodes)
        if texts is not None:
            return self._query_item(query_bundle), texts
        items = []
        for position, node in enumerate(nodes):
            if type(node) is not NodeWithScore and not isinstance(node, NodeWithScore):
                raise InvalidRequestError(
                    f"nodes[{position}] must be a NodeWithScore, got {type(node).__name__}"
                )
            items.append(self._node_item(node.node))
        return self._query_item(query_bundle), items

    def _observed(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle
    ) -> contextlib.AbstractContextManager[_Outcome]:
        """Balanced start/end events around one rerank call, when anything listens to them."""
        if self._unobserved():
            return contextlib.nullcontext(_Outcome(observed=False))
        return self._events(nodes, query_bundle)

    def _unobserved(self) -> bool:
        """Whether no span or event handler but LlamaIndex's null ones, and no callback handler,
        is registered: then the spans and events of a call would be built for nobody."""
        if self.callback_manager.handlers:
            return False
        current: Dispatcher | None = dispatcher
        while current is not None:
            if any(type(h) is not NullSpanHandler for h in current.span_handlers) or any(
                type(h) is not NullEventHandler for h in current.event_handlers
            ):
                return False
            current = current.parent if current.propagate else None
        return True

    @contextlib.contextmanager
    def _events(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> Iterator[_Outcome]:
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

    def _finish(
        self, nodes: list[NodeWithScore], response: RerankResponse, outcome: _Outcome
    ) -> list[NodeWithScore]:
        self._log_usage(response)
        if outcome.observed:
            report = self._usage_report(response)
            dispatcher.event(
                RerankUsageEvent(
                    model_name=report["model"], usage=report["usage"], trace_id=report["trace_id"]
                )
            )
        return [
            _scored(_marked_copy(nodes[index].node, SCORE_KEY, score), score)
            for index, score in response.results.pairs()
        ]

    def _passed_through(
        self, nodes: list[NodeWithScore], error: SiliconFlowError
    ) -> list[NodeWithScore]:
        kept = self._kept_on_failure(nodes, error)
        return [_scored(_marked_copy(n.node, STATUS_KEY, "failed"), n.score) for n in kept]

    # -- the postprocessor API -----------------------------------------------------------------

    def postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> list[NodeWithScore]:
        """Rerank `nodes` for the query (LlamaIndex's `postprocess_nodes`)."""
        if self._unobserved():  # no span for nobody: the traced path would build one per call
            return self._rerank(nodes, _bundle(query_bundle, query_str))
        return super().postprocess_nodes(nodes, query_bundle, query_str)

    async def apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> list[NodeWithScore]:
        """Rerank `nodes` for the query (LlamaIndex's `apostprocess_nodes`)."""
        if self._unobserved():
            return await self._arerank(nodes, _bundle(query_bundle, query_str))
        return await super().apostprocess_nodes(nodes, query_bundle, query_str)

    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        return self._rerank(nodes, query_bundle)

    @dispatcher.span
    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        return await self._arerank(nodes, query_bundle)

    def _rerank(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> list[NodeWithScore]:
        query, items = self._prepare(nodes, query_bundle)
        if not nodes:
            return []
        assert query_bundle is not None
        with self._observed(nodes, query_bundle) as outcome:
            try:
                response = self._sync().rerank(query, items, **self._rerank_options(self.top_n))
            except SERVICE_ERRORS as error:
                outcome.nodes = self._passed_through(nodes, error)
            else:
                outcome.nodes = self._finish(nodes, response, outcome)
        return outcome.nodes

    async def _arerank(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> list[NodeWithScore]:
        query, items = self._prepare(nodes, query_bundle)
        if not nodes:
            return []
        assert query_bundle is not None
        with self._observed(nodes, query_bundle) as outcome:
            try:
                response = await self._async().rerank(
                    query, items, **self._rerank_options(self.top_n)
                )
            except SERVICE_ERRORS as error:
                outcome.nodes = self._passed_through(nodes, error)
            else:
                outcome.nodes = self._finish(nodes, response, outcome)
        return outcome.nodes


def _bundle(query_bundle: QueryBundle | None, query_str: str | None) -> QueryBundle | None:
    """The query as LlamaIndex's `postprocess_nodes` takes it: a bundle or a string, not both."""
    if query_str is not None and query_bundle is not None:
        raise ValueError("Cannot specify both query_str and query_bundle")
    return QueryBundle(query_str) if query_str is not None else query_bundle


@dataclass
class _Outcome:
    nodes: list[NodeWithScore] = field(default_factory=list)
    observed: bool = True


@functools.cache
def _may_hold_media(node_class: type[BaseNode]) -> bool:
    # Cached per class: an isinstance check against a pydantic model class goes through ABCMeta.
    return issubclass(node_class, (ImageNode, Node))


def _b64decode(data: str | bytes, node: BaseNode) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidRequestError(f"node {node.node_id}: image data is not valid base64") from error


def _marked_copy(node: BaseNode, key: str, value: Any) -> BaseNode:
    """A copy of `node` with `key: value` added to its metadata, hidden from LLM and embedding
    text."""
    llm_keys, embed_keys = node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys
    return copied(
        node,
        metadata={**node.metadata, key: value},
        excluded_llm_metadata_keys=[*llm_keys, key] if key not in llm_keys else llm_keys.copy(),
        excluded_embed_metadata_keys=(
            [*embed_keys, key] if key not in embed_keys else embed_keys.copy()
        ),
    )


_INNER = attrgetter("node")
_METADATA = attrgetter("metadata")
_TEXT = attrgetter("text")


def _plain_texts(nodes: list[NodeWithScore]) -> list[DocumentItem] | None:
    """The texts of `nodes` when each is a plain `TextNode` without metadata (what
    `get_content()` returns for it), checked in a few passes in C; else None."""
    if set(map(type, nodes)) != {NodeWithScore}:
        return None
    inner = list(map(_INNER, nodes))
    if set(map(type, inner)) != {TextNode} or any(map(_METADATA, inner)):
        return None
    return list(map(_TEXT, inner))


_EVERY_FIELD = {"node", "score"}


def _scored(node: BaseNode, score: float | None) -> NodeWithScore:
    """`NodeWithScore(node=node, score=score)` without re-validating a node we just built.

    Its fields-set is one set shared by every result: it names both fields, so setting either
    (which adds the name) leaves it as it is; one object less per node for the collector."""
    return assembled(NodeWithScore, {"node": node, "score": score}, _EVERY_FIELD)
