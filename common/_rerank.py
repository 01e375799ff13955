"""The rerank endpoint (`POST /rerank`): its options, request building, plan (cache, batches)
and answer checks. Pure: the client sends what the plan asks for."""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ._capabilities import model_capabilities
from ._config import DEFAULT_MODEL
from ._exceptions import InvalidRequestError, SiliconFlowError
from ._media import DocumentItem, QueryItem, WireItem, item_kind, normalize_item, normalize_items
from ._options import NOT_IN_CACHE_KEY, cache_keys, checked_count, checked_number, key_prefix
from ._pipeline import Pipeline, Plan, ProgressCallback
from ._ranking import (
    Judge,
    RankedResults,
    RerankDocument,
    RerankResponse,
    finished,
    from_scores,
    merged,
    ranked_by_score,
    read_ranking,
)
from ._wire import (
    Estimate,
    StreamedBody,
    UsageSum,
    assembled,
    check_encodable,
    distinct_indices,
    encode_body,
    estimate_tokens,
    find_bad_index,
    invalid_answer,
    join_trace_ids,
    name_batch,
    usage_from,
)

__all__ = [
    "RerankOptions",
    "RerankPlan",
    "RerankRequest",
    "build_request",
    "parse",
    "prepare_rerank",
    "validate_options",
]


@dataclass(frozen=True, slots=True)
class RerankOptions:
    """The options of one rerank call, checked once when made.

    Raises:
        InvalidRequestError: A value the API would reject, or a field the (known) model does not
            take; the message names the field and the model.
    """

    model: str = DEFAULT_MODEL
    top_n: int | None = field(default=None, metadata=NOT_IN_CACHE_KEY)
    return_documents: bool | None = field(default=None, metadata=NOT_IN_CACHE_KEY)
    instruction: str | None = None
    max_chunks_per_doc: int | None = None
    overlap_tokens: int | None = None
    min_relevance: float | None = field(default=None, metadata=NOT_IN_CACHE_KEY)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidRequestError("model must be a non-empty string")
        if self.top_n is not None:
            checked_count("top_n", self.top_n, 1)
        if self.return_documents is not None and not isinstance(self.return_documents, bool):
            raise InvalidRequestError("return_documents must be True, False or None")
        if self.instruction is not None and (
            not isinstance(self.instruction, str) or not self.instruction.strip()
        ):
            raise InvalidRequestError("instruction must be a non-empty string")
        if self.max_chunks_per_doc is not None:
            checked_count("max_chunks_per_doc", self.max_chunks_per_doc, 1)
        if self.overlap_tokens is not None:
            checked_count("overlap_tokens", self.overlap_tokens, 0, 80)
        if self.min_relevance is not None:
            checked_number("min_relevance", self.min_relevance)
        caps = model_capabilities(self.model)
        if caps is None:
            return
        if self.instruction is not None and not caps.instruction:
            raise InvalidRequestError(
                f"model {self.model!r} does not take 'instruction' (the Qwen3-Reranker models do)"
            )
        if not caps.chunking:
            for name in ("max_chunks_per_doc", "overlap_tokens"):
                if getattr(self, name) is not None:
                    raise InvalidRequestError(
                        f"model {self.model!r} does not take {name!r} (bge, bce and Qwen3-VL "
                        "rerankers do)"
                    )

    def wire(self) -> dict[str, Any]:
        """The optional fields that are set, as they go on the wire."""
        names = ("top_n", "return_documents", "instruction", "max_chunks_per_doc")
        wire = {name: value for name in names if (value := getattr(self, name)) is not None}
        if self.overlap_tokens is not None:
            wire["overlap_tokens"] = self.overlap_tokens
        return wire


def validate_options(model: str, **options: Any) -> dict[str, Any]:
    """Check rerank options (`top_n`, `return_documents`, `instruction`, `max_chunks_per_doc`,
    `overlap_tokens`, `min_relevance`) alone and against a known `model`, as `RerankOptions`
    does; return those that go on the wire.

    Raises:
        InvalidRequestError: A value the API would reject, or a field the model does not take.
    """
    return RerankOptions(model, **options).wire()


@dataclass(frozen=True, slots=True)
class RerankRequest:
    """A validated rerank request, ready to send.

    Attributes:
        body: The JSON body as a dict (only the fields the caller set).
        content: The same body as UTF-8 JSON bytes, or streamed when it holds `InlineMedia`.
        documents: The normalized document items, as sent.
        top_n: The effective `top_n` (clamped to the number of documents), or None for all.
        return_documents: Whether the caller asked for documents in the results.
    """

    body: dict[str, Any]
    documents: list[WireItem]
    top_n: int | None
    return_documents: bool
    _content: bytes | StreamedBody | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _estimate: Estimate | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def content(self) -> bytes | StreamedBody:
        """The body as sent, encoded when first needed: a call split into batches sends (and so
        encodes) only the batches' bodies, each when it is sent."""
        content = self._content
        if content is None:  # two threads may both encode it: the same bytes either way
            content = encode_body(self.body)
            object.__setattr__(self, "_content", content)
        return content

    @property
    def content_length(self) -> int:
        """Size of the body in bytes."""
        content = self.content
        return len(content) if isinstance(content, bytes) else content.length

    @property
    def estimated_tokens(self) -> Estimate:
        """The tokens the service will bill, estimated high. Rerank bills the query with every
        document, and again with every chunk of a document longer than the model's context:
        the documents once, and the query (with two separator tokens) once per chunk."""
        if self._estimate is not None:  # worked out when booked, read again when answered
            return self._estimate
        body = self.body
        query = estimate_tokens([body["query"]])
        caps = model_capabilities(body["model"])
        room = max((caps.context_tokens if caps else 8192) - query.total - 2, 16)
        chunks = len(self.documents)
        if caps is None or caps.chunking:
            # A character is at most a token: a document of fewer characters than the room is
            # one chunk (nearly always), counted without encoding it.
            chunks += sum(
                (len(item) - 1) // room for item in self.documents if isinstance(item, str)
            )
        texts, media = estimate_tokens(self.documents)
        estimate = Estimate(texts + chunks * (query.text + 2), media + chunks * query.media)
        object.__setattr__(self, "_estimate", estimate)
        return estimate

    def subset(self, positions: Sequence[int], *, cut: bool) -> RerankRequest:
        """A request for some of the documents (by position); `cut` asks for the best `top_n`
        (fitted to them), else for every score."""
        if isinstance(positions, range) and positions.step == 1:  # a batch of a list: a slice
            documents = self.documents[positions.start : positions.stop]
        else:
            documents = list(map(self.documents.__getitem__, positions))
        body = {**self.body, "documents": documents}
        body.pop("top_n", None)
        fitted = None
        if cut and self.top_n is not None:
            fitted = body["top_n"] = min(self.top_n, len(documents))
        return RerankRequest(body, documents, fitted, self.return_documents)


def build_request(
    query: QueryItem, documents: str | Sequence[DocumentItem], options: RerankOptions
) -> RerankRequest:
    """Check the inputs and build the request body.

    Raises:
        InvalidRequestError: Any input the API would reject, or an item the (known) model does
            not rank; the message names the input and, where relevant, the model.
    """
    wire_query = normalize_item(query, "query")
    if isinstance(wire_query, str) and not wire_query.strip():
        raise InvalidRequestError("query must be a non-empty string")
    wire_documents = normalize_items(documents, "documents", "document")
    wire = options.wire()
    top_n = options.top_n
    if top_n is not None:
        # The server's behaviour for top_n > len(documents) is undocumented; clamping is exact.
        top_n = wire["top_n"] = min(top_n, len(wire_documents))
    body = {"model": options.model, "query": wire_query, "documents": wire_documents, **wire}
    _check_modalities(options.model, wire_query, wire_documents)
    return RerankRequest(body, wire_documents, top_n, bool(options.return_documents))


def _check_modalities(model: str, query: WireItem, documents: list[WireItem]) -> None:
    caps = model_capabilities(model)
    if caps is None or caps.modalities >= {"image", "video"}:
        return
    if type(query) is str and set(map(type, documents)) == {str}:
        return  # every model ranks text
    for position, item in enumerate([query, *documents]):
        if isinstance(item, str):
            continue
        kind = item_kind(item)
        if kind not in caps.modalities:
            what = "query" if position == 0 else f"documents[{position - 1}]"
            raise InvalidRequestError(
                f"model {model!r} ranks text only, but {what} is a {kind} item; "
                "use a multimodal model such as 'Qwen/Qwen3-VL-Reranker-8B'"
            )


def parse(content: bytes, request: RerankRequest, trace_id: str | None) -> RerankResponse:
    """Parse and check a 2xx answer body against the request it answers.

    Raises:
        ResponseValidationError: The body is not JSON, lacks `results`, has malformed results, an
            index out of range or repeated, a non-finite score, or (when every document was
            asked for) not every document.
    """
    read = read_ranking(content, trace_id, request.return_documents)
    given = read.indices
    ranked = ranked_by_score(read)
    total = len(request.documents)
    if given and max(given) >= total:
        find_bad_index(given, total, content, trace_id)
    distinct = distinct_indices(given, total)
    if distinct != len(given):
        find_bad_index(given, total, content, trace_id)
    if distinct < (total if request.top_n is None else request.top_n):
        # A missing result would shift nothing but silently lose a document (the adapters would
        # return fewer than asked for): every document, or the best top_n, was asked for.
        asked = "every one" if request.top_n is None else f"the best {request.top_n}"
        raise invalid_answer(
            f"the answer ranks {distinct} of the {total} documents; {asked} was asked for",
            content,
            trace_id,
        )
    wire = read.wire
    try:
        meta = wire.get("meta") or {}
        tokens = meta.get("tokens") or wire.get("tokens") or wire.get("usage")
        usage = usage_from(tokens, meta.get("billed_units"))
    except (ValidationError, TypeError, ValueError, AttributeError):
        raise invalid_answer(
            "the response has an invalid usage report", content, trace_id
        ) from None
    state = {
        "id": wire.get("id"),
        "results": finished(ranked, request.top_n, _filler(request)),
        "usage": usage,
        "trace_id": trace_id,
        "model": wire.get("model"),
    }
    return assembled(RerankResponse, state, _EVERY_RESPONSE_FIELD)


_EVERY_RESPONSE_FIELD = set(RerankResponse.model_fields)


def _filler(request: RerankRequest) -> functools.partial[RerankDocument] | None:
    return functools.partial(_document, request) if request.return_documents else None


def _document(request: RerankRequest, index: int) -> RerankDocument:
    item = request.documents[index]
    if isinstance(item, dict):
        item = {kind: v if isinstance(v, str) else v.data_uri() for kind, v in item.items()}
    return RerankDocument.model_validate(item)


_SCORE = struct.Struct("<d")


def _score(value: bytes | None) -> float | None:
    """A cached score, or None for a value that is no finite score (a miss)."""
    if value is None or len(value) != _SCORE.size:
        return None
    (score,) = _SCORE.unpack(value)
    return score if math.isfinite(score) else None


class RerankPlan(Plan[RerankRequest, RerankResponse, RerankResponse]):
    """How one rerank call is served: the request as built (the common case), or batches of its
    documents and cached scores, merged as the answers come in."""

    path = "rerank"

    def __init__(
        self,
        request: RerankRequest,
        size: int | None = None,
        *,
        cached: tuple[Pipeline, RerankOptions] | None = None,
        on_progress: ProgressCallback | None = None,
        judge: Judge | None = None,
    ) -> None:
        self.call = request
        self.judge = judge
        """The calibration and threshold applied to the answer, if any."""
        self.size = size
        self.on_progress = on_progress
        self.known: dict[int, float] | None = None
        """Scores the cache had, by document position."""
        self.keys: list[bytes] | None = None
        self._cached = cached
        self.cache = None if cached is None else cached[0].settings.cache
        count = len(request.documents)
        self.groups: list[Sequence[int]] | None = None
        """The documents of each batch, by position; None sends `request` as built."""
        if cached is None and size is not None and count > size:
            self.groups = _cut(range(count), size)
        self._start()

    def _start(self) -> None:
        count = 1 if self.groups is None else len(self.groups)
        self._parts: list[tuple[RankedResults, Sequence[int]] | None] = [None] * count
        self._usage = UsageSum()
        self._trace_ids: list[str | None] = [None] * count
        self._only: RerankResponse | None = None  # the answer of a call sent as built
        self._id: str | None = None
        self._model: str | None = None

    def look_up(self) -> None:
        """Key every document (hashing media) and ask the cache; batch what it lacks."""
        if self.cache is None or self._cached is None:
            return
        documents = self.call.documents
        pipeline, options = self._cached
        query = self.call.body["query"]
        prefix = key_prefix(RerankPlan.path, pipeline, options, query=query)
        self.keys = keys = cache_keys(prefix, documents)
        scores = [_score(value) for value in self.cache.get_many(keys)]
        self.known = {i: score for i, score in enumerate(scores) if score is not None}
        pending = [i for i, score in enumerate(scores) if score is None]
        self.groups = _cut(pending, self.size or len(documents))
        self._start()

    def __len__(self) -> int:
        return 1 if self.groups is None else len(self.groups)

    def request(self, number: int) -> RerankRequest:
        if self.groups is None:
            return self.call
        # Built at each send: a call split in many batches holds the bodies in flight only. With
        # a cache every score is wanted (so that it can be stored); otherwise each batch asks
        # for at most top_n, which keeps the global top_n exact.
        return self.call.subset(self.groups[number], cut=self.cache is None)

    def read(self, content: bytes, request: RerankRequest, trace_id: str | None) -> RerankResponse:
        return parse(content, request, trace_id)

    def add(self, number: int, part: RerankResponse) -> None:
        if self.groups is None:
            self._only = part
            return
        positions = self.groups[number]
        if self.keys is not None:
            keys = self.keys
            self.keep([(keys[positions[i]], _SCORE.pack(s)) for i, s in part.results.pairs()])
        self._parts[number] = (part.results, positions)
        self._usage.add(part.usage)
        self._trace_ids[number] = part.trace_id
        if number == 0:  # the answer itself is not kept: only its results and counts
            self._id, self._model = part.id, part.model

    def answer(self) -> RerankResponse:
        """The answer to the whole call: indices mapped back to the call's documents, results
        best first with ties by index, `top_n` applied to the whole, usage summed, then the
        calibration and `min_relevance` applied."""
        answer = self._merged()
        if self.judge is None:
            return answer
        return answer.model_copy(update={"results": self.judge(answer.results)})

    def _merged(self) -> RerankResponse:
        if self._only is not None:
            return self._only
        parts = [part for part in self._parts if part is not None]
        if len(parts) != len(self._parts):
            raise ValueError("an answer to one of the call's requests is missing")
        if self.known:
            parts.append((from_scores(self.known), range(len(self.call.documents))))
        return RerankResponse(
            id=self._id,
            results=merged(parts, self.call.top_n, _filler(self.call)),
            usage=self._usage.total(),
            trace_id=join_trace_ids(self._trace_ids),
            model=self._model,
        )

    def failed(self, number: int, error: SiliconFlowError) -> SiliconFlowError:
        if self.groups is None:
            return error
        positions = self.groups[number]
        span = (positions[0], positions[-1])
        return name_batch(error, number, span, len(self.groups), "documents")


def prepare_rerank(
    pipeline: Pipeline,
    query: QueryItem,
    documents: str | Sequence[DocumentItem],
    *,
    model: str = DEFAULT_MODEL,
    top_n: int | None = None,
    return_documents: bool | None = None,
    instruction: str | None = None,
    max_chunks_per_doc: int | None = None,
    overlap_tokens: int | None = None,
    min_relevance: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> RerankPlan:
    """Rank `documents` by relevance to `query`.

    Args:
        query: A non-empty string, or a text, image or video item.
        documents: One string, or a sequence of strings and text, image or video items.
        model: The rerank model.
        top_n: Return only the best `top_n` (clamped to the number of documents).
        return_documents: Ask for each document in its result.
        instruction: Task instruction (Qwen3-Reranker models only).
        max_chunks_per_doc: Chunk limit for long documents (bge, bce, Qwen3-VL).
        overlap_tokens: Token overlap between chunks, 0 to 80 (bge, bce, Qwen3-VL).
        min_relevance: Drop results scoring below this (after the client's calibration, when
            it has one), so that fewer than `top_n` may come back.
        on_progress: Called with (requests done, requests in all) as a long call proceeds.

    Returns:
        The results, best first, each with the `index` of its document in `documents`.

    Raises:
        InvalidRequestError: Bad input, before any request is sent.
        APIStatusError: The server answered with an error status (a subclass per status).
        APIConnectionError: No answer, after the retries (`APITimeoutError` for timeouts).
        ResponseValidationError: The server's answer is not a valid rerank response.
    """
    options = RerankOptions(
        model,
        top_n,
        return_documents,
        instruction,
        max_chunks_per_doc,
        overlap_tokens,
        min_relevance,
    )
    request = build_request(query, documents, options)
    settings = pipeline.settings
    judge = None
    if settings.calibration is not None or min_relevance is not None:
        score_map = None
        if settings.calibration is not None:
            score_map = settings.calibration.for_call(model, instruction)
        judge = Judge(score_map, min_relevance)
    size = settings.max_documents_per_request
    cache = settings.cache
    if cache is None and (size is None or len(request.documents) <= size):
        # The common case: sent as built.
        return RerankPlan(request, on_progress=on_progress, judge=judge)
    # Every batch's text, before the first batch is sent (each body is encoded as it is sent).
    check_encodable(request.documents, "documents")
    encode_body({**request.body, "documents": []})  # the query and the other fields
    cached = None if cache is None else (pipeline, options)
    return RerankPlan(request, size, cached=cached, on_progress=on_progress, judge=judge)


def _cut(positions: Sequence[int], size: int) -> list[Sequence[int]]:
    return [positions[start : start + size] for start in range(0, len(positions), size)]
