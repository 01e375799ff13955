"""Rerank response types, and the pure parser that turns an answer body into them."""

from __future__ import annotations

import heapq
import operator
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain, count, islice, pairwise
from math import isfinite
from operator import attrgetter, gt, itemgetter, neg
from struct import pack
from typing import Annotated, Any, NamedTuple, TypeVar, overload

import msgspec
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import CoreSchema, core_schema
from typing_extensions import NotRequired, Required, TypedDict

from ._exceptions import ResponseValidationError, excerpt
from ._request import RerankRequest

__all__ = [
    "USAGE_COUNTS",
    "BilledUnits",
    "RankedResults",
    "RerankDocument",
    "RerankResponse",
    "RerankResult",
    "Usage",
    "assembled",
    "copied",
    "from_scores",
    "invalid_answer",
    "merged",
    "parse",
    "read_answer",
    "usage_from",
]


class RerankDocument(BaseModel):
    """The document echoed back in a result (`return_documents=True`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    text: str | None = None
    """The document text; None for an image or video document."""
    image: str | None = None
    """The image URL or data URI, for an image document."""
    video: str | None = None
    """The video URL or data URI, for a video document."""

    @model_validator(mode="before")
    @classmethod
    def _from_plain_string(cls, value: Any) -> Any:
        # Infinity and some proxies echo the document as a bare string.
        return {"text": value} if isinstance(value, str) else value


class RerankResult(BaseModel):
    """One ranked document."""

    model_config = ConfigDict(frozen=True)

    index: StrictInt = Field(ge=0)
    """Position of the document in the request's `documents`."""
    relevance_score: StrictFloat = Field(allow_inf_nan=False)
    """Relevance of the document to the query; 0..1 on SiliconFlow, higher is more relevant."""
    document: RerankDocument | None = None
    """The document, when `return_documents=True` was asked for (or the server sent it anyway)."""


_INDEX_CODE = "I"
"""Indices are kept as C unsigned ints (4 bytes; a request holds far fewer documents)."""


def _doubles(values: Sequence[float]) -> array[float]:
    """`array("d", values)`, packed by `struct` in one pass: the array converts each value as
    a function argument, 2.5 times the instructions."""
    return array("d", pack(f"{len(values)}d", *values))


class RankedResults(Sequence[RerankResult]):
    """The results of one call, best first: a read-only sequence of `RerankResult`.

    Kept as two arrays, indices and scores (12 bytes a result), and the echoed documents when
    there are any; each `RerankResult` is built when it is read. A list of models held about 330
    bytes a result (100,000 results took 33 MB). `pairs()` reads indices and scores without
    building a model. Equal to any sequence of the same results, a list of them included.
    """

    __slots__ = ("_documents", "_indices", "_scores")

    _indices: array[int]
    _scores: array[float]
    _documents: list[RerankDocument | None] | None

    def __init__(self, results: Iterable[RerankResult] = ()) -> None:
        given = list(results)
        self._indices = array(_INDEX_CODE, [result.index for result in given])
        self._scores = array("d", [result.relevance_score for result in given])
        self._documents = _echoed([result.document for result in given])

    def pairs(self) -> Iterator[tuple[int, float]]:
        """`(index, relevance_score)` of each result, best first."""
        return zip(self._indices, self._scores, strict=True)

    def __len__(self) -> int:
        return len(self._indices)

    @overload
    def __getitem__(self, position: int) -> RerankResult: ...

    @overload
    def __getitem__(self, position: slice) -> RankedResults: ...

    def __getitem__(self, position: int | slice) -> RerankResult | RankedResults:
        documents = self._documents
        if isinstance(position, slice):
            some = None if documents is None else documents[position]
            return _ranked(self._indices[position], self._scores[position], some)
        document = None if documents is None else documents[position]
        return _result(self._indices[position], self._scores[position], document)

    def __iter__(self) -> Iterator[RerankResult]:
        if self._documents is None:
            return map(_result, self._indices, self._scores)
        return map(_result, self._indices, self._scores, self._documents)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RankedResults):
            return (
                self._indices == other._indices
                and self._scores == other._scores
                and self._documents == other._documents
            )
        if isinstance(other, Sequence) and not isinstance(other, str | bytes | bytearray):
            return len(self) == len(other) and all(map(operator.eq, self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a sequence compared by value, like a list

    def __repr__(self) -> str:
        return f"RankedResults({list(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return _ranked, (self._indices, self._scores, self._documents)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # Validated from any list of results (or taken as is), serialized as that list.
        items = handler.generate_schema(list[RerankResult])
        from_items = core_schema.no_info_after_validator_function(cls, items)
        return core_schema.json_or_python_schema(
            json_schema=from_items,
            python_schema=core_schema.union_schema(
                [core_schema.is_instance_schema(cls), from_items], mode="left_to_right"
            ),
            serialization=core_schema.plain_serializer_function_ser_schema(
                list, return_schema=items
            ),
        )


def _ranked(
    indices: array[int], scores: array[float], documents: list[RerankDocument | None] | None
) -> RankedResults:
    results = RankedResults.__new__(RankedResults)
    results._indices = indices
    results._scores = scores
    results._documents = documents
    return results


def _echoed(documents: list[RerankDocument | None]) -> list[RerankDocument | None] | None:
    return documents if any(document is not None for document in documents) else None


_BARE = {"index", "relevance_score"}
_WITH_DOCUMENT = {"index", "relevance_score", "document"}


def _result(index: int, score: float, document: RerankDocument | None = None) -> RerankResult:
    # Each value was checked when the answer was parsed. The fields-set is shared: a frozen
    # model never changes it, and copies copy it.
    state = {"index": index, "relevance_score": score, "document": document}
    return assembled(RerankResult, state, _BARE if document is None else _WITH_DOCUMENT)


class BilledUnits(BaseModel):
    """What the call was billed for, as the server reported it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    input_tokens: StrictInt | None = None
    """Billed input tokens."""
    output_tokens: StrictInt | None = None
    """Billed output tokens."""
    image_tokens: StrictInt | None = None
    """Billed image tokens."""
    search_units: StrictInt | None = None
    """Billed search units."""
    classifications: StrictInt | None = None
    """Billed classifications."""


class Usage(BaseModel):
    """Token usage of one rerank call, from whichever shape the server used."""

    model_config = ConfigDict(extra="allow", frozen=True)

    input_tokens: StrictInt | None = None
    """Input tokens (query and documents)."""
    output_tokens: StrictInt | None = None
    """Output tokens."""
    image_tokens: StrictInt | None = None
    """Tokens spent on image and video items."""
    total_tokens: StrictInt | None = None
    """Total tokens: as sent by the server, else the sum of the counts above."""
    billed_units: BilledUnits | None = None
    """Billed units, when the server sent them."""


class RerankResponse(BaseModel):
    """The answer to one rerank call.

    `results` are sorted by `relevance_score`, highest first, ties broken by `index`; each `index`
    refers to the request's `documents` and has been checked to be in range and unique.
    """

    model_config = ConfigDict(frozen=True)

    id: str | None = None
    """The server's response id."""
    results: RankedResults
    """The ranked documents, best first, at most `top_n` of them (a read-only sequence)."""
    usage: Usage | None = None
    """Token usage, or None when the server sent none."""
    trace_id: str | None = None
    """The `x-siliconcloud-trace-id` response header, for support requests."""
    model: str | None = None
    """The model that answered, when the server says (vLLM does)."""


class _WireResult(TypedDict):
    index: Annotated[StrictInt, Field(ge=0, lt=2**32)]
    relevance_score: Annotated[StrictFloat, Field(allow_inf_nan=False)]
    document: NotRequired[RerankDocument | None]


class _WireResponse(TypedDict, total=False):
    """The body as any of the compatible servers send it (results as dicts: a model per
    result cost three times as much to build)."""

    id: str | None
    model: str | None
    results: Required[list[_WireResult]]
    meta: dict[str, Any] | None
    tokens: dict[str, Any] | None
    usage: dict[str, Any] | None


_read_wire = TypeAdapter(_WireResponse).validate_json


def _usage(wire: Mapping[str, Any]) -> Usage | None:
    meta = wire.get("meta") or {}
    tokens = meta.get("tokens") or wire.get("tokens") or wire.get("usage")
    return usage_from(tokens, meta.get("billed_units"))


def usage_from(tokens: Any, billed: Any = None) -> Usage | None:
    """Usage from any server's counts: input/output or OpenAI's prompt/completion names, with
    the total computed when the server sent none.

    Raises:
        ValidationError, TypeError: Counts of the wrong shape or type.
    """
    if not tokens and not billed:
        return None
    counts = dict(tokens or {})
    if "prompt_tokens" in counts or "completion_tokens" in counts:  # OpenAI's names
        for ours, openai_name in (
            ("input_tokens", "prompt_tokens"),
            ("output_tokens", "completion_tokens"),
        ):
            if ours not in counts and openai_name in counts:
                counts[ours] = counts[openai_name]
    if counts.get("total_tokens") is None:
        # Summed before validation (one model built, not two); a count of the wrong type is
        # left for the validation to name.
        present = [part for part in map(counts.get, USAGE_COUNTS[:-1]) if part is not None]
        if present and all(type(part) is int for part in present):
            counts["total_tokens"] = sum(present)
    if billed is None and counts.keys() <= _COUNT_NAMES and set(map(type, counts.values())) <= _INT:
        # Counts only, each an int, as almost every answer sends them: what validation accepts
        # unchanged, built without it (it was a fifth of reading a short answer).
        return assembled(Usage, {**_NO_USAGE, **counts}, {*counts, "billed_units"}, extra={})
    return Usage.model_validate({**counts, "billed_units": billed})


USAGE_COUNTS = ("input_tokens", "output_tokens", "image_tokens", "total_tokens")
"""The counts of a `Usage` (the total last), as servers report and calls sum them."""
_COUNT_NAMES = frozenset(USAGE_COUNTS)
_INT = {int}
_NO_USAGE = dict.fromkeys(Usage.model_fields)


_Wire = TypeVar("_Wire")


def invalid_answer(problem: str, content: bytes, trace_id: str | None) -> ResponseValidationError:
    """The error for a 2xx answer that is not a valid one, with its trace id and an excerpt."""
    return ResponseValidationError(problem, trace_id=trace_id, body_excerpt=excerpt(content))


def read_answer(
    validate_json: Callable[[bytes], _Wire], content: bytes, trace_id: str | None
) -> _Wire:
    """Parse an answer body with a pydantic `validate_json` (of a model or a type adapter).

    Raises:
        ResponseValidationError: The body is not JSON, or names the first field that is wrong.
    """
    try:
        return validate_json(content)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            problem = "the response body is not valid JSON"
        else:
            location = ".".join(str(part) for part in first["loc"]) or "body"
            problem = f"the response has an invalid '{location}': {first['msg']}"
        raise invalid_answer(problem, content, trace_id) from None


_EVERY_RESPONSE_FIELD = set(RerankResponse.model_fields)
_INDEX = itemgetter("index")
_SCORE = itemgetter("relevance_score")
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)
_THIRD = itemgetter(2)


class _PlainResult(msgspec.Struct, gc=False):  # nothing for the collector to walk
    index: Annotated[int, msgspec.Meta(ge=0, lt=2**32)]
    relevance_score: float
    document: msgspec.Raw = msgspec.Raw()
    """An echoed document, left unread (its key found however it is written): an answer that
    holds one is read again by `_read_wire`."""


class _PlainAnswer(msgspec.Struct):
    """An answer as servers send it almost always, read by msgspec: for 20 results, 37k
    instructions where pydantic took 80k and `json.loads` 108k. Anything else (an answer that
    may echo documents, or whatever msgspec refuses) is read again by `_read_wire`, which accepts
    exactly what an answer may hold and names what is wrong: every error comes from there."""

    results: list[_PlainResult]
    id: str | None = None
    model: str | None = None
    meta: dict[str, Any] | None = None
    tokens: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None


_read_plain = msgspec.json.Decoder(_PlainAnswer).decode
_PLAIN_INDEX = attrgetter("index")
_PLAIN_SCORE = attrgetter("relevance_score")
_PLAIN_DOCUMENT = attrgetter("document")


class _Read(NamedTuple):
    """What `parse` takes from an answer, in the server's order."""

    indices: list[int]
    scores: list[float]
    documents: list[RerankDocument | None] | None
    wire: Mapping[str, Any]
    """The answer's other fields: id, model and the usage report's."""


def _read_plainly(content: bytes) -> _PlainAnswer | None:
    try:
        plain = _read_plain(content)
    except msgspec.DecodeError:
        return None
    return None if any(map(_PLAIN_DOCUMENT, plain.results)) else plain


def _read(content: bytes, trace_id: str | None) -> _Read:
    plain = _read_plainly(content)
    if plain is not None:
        results = plain.results
        scores = list(map(_PLAIN_SCORE, results))
        # Every score finite (the sum of any non-finite one is not; a sum that only overflows is
        # read again, and accepted, below).
        if isfinite(sum(scores)):
            wire = {
                "id": plain.id,
                "model": plain.model,
                "meta": plain.meta,
                "tokens": plain.tokens,
                "usage": plain.usage,
            }
            return _Read(list(map(_PLAIN_INDEX, results)), scores, None, wire)
    checked = read_answer(_read_wire, content, trace_id)
    every = checked["results"]
    documents = None
    if max(map(len, every), default=0) > 2:  # a bare result is a dict of two keys
        documents = _echoed([result.get("document") for result in every])
    return _Read(list(map(_INDEX, every)), list(map(_SCORE, every)), documents, checked)


def parse(content: bytes, request: RerankRequest, *, trace_id: str | None) -> RerankResponse:
    """Parse and check a 2xx answer body against the request it answers.

    Raises:
        ResponseValidationError: The body is not JSON, lacks `results`, has malformed results, an
            index out of range or repeated, a non-finite score, or (when every document was
            asked for) not every document.
    """
    read = _read(content, trace_id)
    given, given_scores, documents = read.indices, read.scores, read.documents
    if all(map(gt, given_scores, islice(given_scores, 1, None))):
        # Ranked by the server, no score tied (as servers send them): nothing to sort.
        indices = array(_INDEX_CODE, given)
        scores = _doubles(given_scores)
    else:
        # Best first, ties in index order: one sort of (-score, index, position) triples.
        order = sorted(zip(map(neg, given_scores), given, count()))
        indices = array(_INDEX_CODE, map(_SECOND, order))
        scores = _doubles(list(map(neg, map(_FIRST, order))))
        if documents is not None:
            documents = [documents[position] for position in map(_THIRD, order)]

    total = len(request.documents)
    seen = set(given)  # the indices as read: int objects already made
    if len(seen) != len(given) or (given and max(given) >= total):
        _find_bad_index(given, total, content, trace_id)
    if request.top_n is None and len(seen) != total:
        # Asked for every document: one missing would shift nothing but silently lose a document.
        raise invalid_answer(
            f"the answer ranks {len(seen)} of the {total} documents; every one was asked for",
            content,
            trace_id,
        )

    wire = read.wire
    try:
        usage = _usage(wire)
    except (ValidationError, TypeError, ValueError):
        raise invalid_answer(
            "the response has an invalid usage report", content, trace_id
        ) from None
    ranked = _finished(_ranked(indices, scores, documents), request)
    # Every value was checked above: the model is built as `model_copy` builds one.
    state = {
        "id": wire.get("id"),
        "results": ranked,
        "usage": usage,
        "trace_id": trace_id,
        "model": wire.get("model"),
    }
    return assembled(RerankResponse, state, _EVERY_RESPONSE_FIELD)


def _find_bad_index(indices: list[int], count: int, content: bytes, trace_id: str | None) -> None:
    """Raise for the first index out of range or repeated (checked in bulk first, as answers
    are almost always right)."""
    seen: set[int] = set()
    for index in indices:
        if index >= count:
            raise invalid_answer(
                f"result index {index} is out of range for {count} documents", content, trace_id
            )
        if index in seen:
            raise invalid_answer(f"result index {index} appears twice", content, trace_id)
        seen.add(index)


def from_scores(scores: Mapping[int, float]) -> RankedResults:
    """Known scores by document index, ranked."""
    order = sorted(scores)
    order.sort(key=scores.__getitem__, reverse=True)
    return _ranked(array(_INDEX_CODE, order), _doubles(list(map(scores.__getitem__, order))), None)


_SORTED_AT_ONCE = 1 << 15
"""Every result of a merged answer, up to this many, is sorted at once (about 4 MB of lists at
most). 10,000 results in 79 parts: a sort of (-score, index) tuples took 9 ms where the k-way
merge took 17; the sort of the scores alone takes 19.5M instructions where the tuples took
47.8M (callgrind)."""
_MERGED_AT_ONCE = 1024


def merged(
    parts: Sequence[tuple[RankedResults, Sequence[int]]], request: RerankRequest
) -> RankedResults:
    """One ranking of the call from rankings of disjoint sets of its documents, cut to `top_n`,
    with documents filled in when the caller asked for them.

    Each part is a batch's results with the call's position of each of the batch's documents
    (ascending, so that each part stays best first with ties in index order). Every result, when
    there are few enough, is sorted at once; otherwise a k-way merge holds one entry per part at
    a time, where sorting the whole again built a key per result (about 7 MB more at the peak
    for 100,000 results).
    """
    total = sum(len(part) for part, _ in parts)
    if request.top_n is None and total <= _SORTED_AT_ONCE:
        return _finished(_sorted_at_once(parts), request)
    echoed = any(part._documents is not None for part, _ in parts)
    streams: list[Iterator[tuple[Any, ...]]] = [
        zip(
            map(neg, part._scores),
            map(positions.__getitem__, part._indices),
            part._documents or [None] * len(part),
            strict=True,
        )
        if echoed
        else zip(map(neg, part._scores), map(positions.__getitem__, part._indices), strict=True)
        for part, positions in parts
    ]
    best: Iterator[tuple[Any, ...]] = heapq.merge(*streams)
    if request.top_n is not None:
        best = islice(best, request.top_n)
        total = min(total, request.top_n)
    # Sized once and filled in chunks, each in a few passes in C: an array grown result by
    # result is copied whole each time it outgrows its buffer (twice its size at that moment).
    # (-score, index) pairs are unique: a document is never compared.
    indices = array(_INDEX_CODE, [0]) * total
    scores = array("d", [0.0]) * total
    documents: list[RerankDocument | None] = []
    filled = 0
    while chunk := list(islice(best, _MERGED_AT_ONCE)):
        end = filled + len(chunk)
        scores[filled:end] = _doubles(list(map(neg, map(_FIRST, chunk))))
        indices[filled:end] = array(_INDEX_CODE, map(_SECOND, chunk))
        if echoed:
            documents.extend(map(_THIRD, chunk))
        filled = end
    del scores[filled:], indices[filled:]  # a server that sent fewer than top_n
    return _finished(_ranked(indices, scores, documents if echoed else None), request)


def _sorted_at_once(parts: Sequence[tuple[RankedResults, Sequence[int]]]) -> RankedResults:
    """Every result of `parts` in one ranking: one stable sort by score alone (floats compared
    in C, no key tuple per result), of the results in index order wherever scores tie."""
    indices: list[int] = []
    scores: list[float] = []
    for part, positions in parts:
        # Lists, not ranges or arrays: a list's __getitem__ takes no argument tuple per call.
        indices += map(list(positions).__getitem__, part._indices)
        scores += part._scores
    order: Sequence[int] = range(len(indices))
    spans = [(positions[0], positions[-1]) for _, positions in parts if positions]
    if any(low <= high for (_, high), (low, _) in pairwise(spans)):
        # Parts that interleave (cached scores beside batches): ties follow the index.
        order = sorted(order, key=indices.__getitem__)
    order = sorted(order, key=scores.__getitem__, reverse=True)  # stable: ties keep their order
    documents = None
    if any(part._documents is not None for part, _ in parts):
        echoed = list(
            chain.from_iterable(part._documents or [None] * len(part) for part, _ in parts)
        )
        documents = list(map(echoed.__getitem__, order))
    return _ranked(
        array(_INDEX_CODE, map(indices.__getitem__, order)),
        _doubles(list(map(scores.__getitem__, order))),
        documents,
    )


def _finished(ranked: RankedResults, request: RerankRequest) -> RankedResults:
    """`ranked` cut to `top_n`, with each document filled in when the caller asked for them."""
    if request.top_n is not None and len(ranked) > request.top_n:
        ranked = ranked[: request.top_n]
    if not request.return_documents:
        return ranked
    # Some servers drop documents for media or ignore the flag; the caller asked, and we have them.
    given = ranked._documents or [None] * len(ranked)
    documents: list[RerankDocument | None] = [
        _document(request, index) if document is None else document
        for index, document in zip(ranked._indices, given, strict=True)
    ]
    return _ranked(ranked._indices, ranked._scores, documents)


def _document(request: RerankRequest, index: int) -> RerankDocument:
    item = request.documents[index]
    if isinstance(item, dict):
        item = {kind: v if isinstance(v, str) else v.data_uri() for kind, v in item.items()}
    return RerankDocument.model_validate(item)


_M = TypeVar("_M", bound=BaseModel)
_new = object.__new__
_set = object.__setattr__


def _slot_setter(name: str) -> Callable[[Any, Any], None]:
    """What sets pydantic's slot `name` of a model (its `__dict__` included): the slot's own
    `__set__`, called directly (`object.__setattr__` looks the slot up and checks the call each
    time: about 500 instructions more per set), or `object.__setattr__` if this pydantic keeps it
    elsewhere."""
    setter: Callable[[Any, Any], None] | None = getattr(
        BaseModel.__dict__.get(name), "__set__", None
    )
    return setter or (lambda instance, value: _set(instance, name, value))


_set_dict = _slot_setter("__dict__")
_set_fields_set = _slot_setter("__pydantic_fields_set__")
_set_extra = _slot_setter("__pydantic_extra__")
_set_private = _slot_setter("__pydantic_private__")


def assembled(
    cls: type[_M],
    state: dict[str, Any],
    fields_set: set[str],
    extra: dict[str, Any] | None = None,
    private: dict[str, Any] | None = None,
) -> _M:
    """An instance of pydantic model `cls` from state that is already valid, as `model_copy`
    builds one: for the framework objects an adapter returns on every call (one per document),
    where validating again or `model_copy`'s generic copying is most of the adapter's own cost.
    `fields_set` becomes the instance's own: pass a fresh set, or one that already names every
    field (pydantic adds a field's name on assignment, which then changes nothing)."""
    instance = _new(cls)
    _set_dict(instance, state)
    _set_fields_set(instance, fields_set)
    _set_extra(instance, extra)
    _set_private(instance, private)
    return instance


def copied(model: _M, **updates: Any) -> _M:
    """`model.model_copy(update=updates)` (a shallow copy with some fields replaced), cheaper."""
    # `assembled`, inlined: adapters copy one object per document of every call.
    instance = _new(type(model))
    _set_dict(instance, {**model.__dict__, **updates})
    _set_fields_set(instance, {*model.__pydantic_fields_set__, *updates})
    extra, private = model.__pydantic_extra__, model.__pydantic_private__
    _set_extra(instance, None if extra is None else extra.copy())
    _set_private(instance, None if private is None else private.copy())
    return instance
