"""Rerank's answer types, and the pure steps that make them: reading an answer body into a
ranking, and merging the rankings of a call's parts into one."""

from __future__ import annotations

import heapq
import operator
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain, islice, pairwise
from math import isfinite
from operator import attrgetter, itemgetter, neg
from struct import pack
from typing import Annotated, Any, NamedTuple, overload

import msgspec
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    model_validator,
)
from pydantic_core import CoreSchema, core_schema
from typing_extensions import NotRequired, Required, TypedDict

from ._wire import Usage, assembled, read_answer

__all__ = [
    "INDEX_CODE",
    "Fill",
    "RankedResults",
    "Ranking",
    "RerankDocument",
    "RerankResponse",
    "RerankResult",
    "doubles",
    "finished",
    "from_scores",
    "make_ranked",
    "merged",
    "ranked_by_score",
    "read_ranking",
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
    """The document, when `return_documents=True` was asked for (one a server sends unasked is
    not kept)."""


INDEX_CODE = "I"
"""Indices are kept as C unsigned ints (4 bytes; a request holds far fewer documents)."""


def doubles(values: Sequence[float]) -> array[float]:
    """`array("d", values)`, packed by `struct` in one pass (the array alone converts each
    value as a function argument)."""
    return array("d", pack(f"{len(values)}d", *values))


class RankedResults(Sequence[RerankResult]):
    """The results of one call, best first: a read-only sequence of `RerankResult`.

    Kept as two arrays, indices and scores (12 bytes a result), and the echoed documents when
    there are any; each `RerankResult` is built when it is read (a list of models holds far more:
    see `benchmarks/results.md`). `pairs()` reads indices and scores without building a model.
    Equal to any sequence of the same results, a list of them included.
    """

    __slots__ = ("_documents", "_indices", "_scores")

    _indices: array[int]
    _scores: array[float]
    _documents: list[RerankDocument | None] | None

    def __init__(self, results: Iterable[RerankResult] = ()) -> None:
        given = list(results)
        self._indices = array(INDEX_CODE, [result.index for result in given])
        self._scores = array("d", [result.relevance_score for result in given])
        self._documents = _echoed([result.document for result in given])

    def pairs(self) -> Iterator[tuple[int, float]]:
        """`(index, relevance_score)` of each result, best first."""
        return zip(self._indices, self._scores, strict=True)

    def by_document(self, count: int) -> tuple[list[float | None], list[int]]:
        """Each of `count` documents' score and rank (1 for the best), in the documents' order;
        None and 0 for one not among the results (cut by `top_n` or `min_relevance`)."""
        scores: list[float | None] = [None] * count
        ranks = [0] * count
        for rank, (index, score) in enumerate(self.pairs(), start=1):
            scores[index] = score
            ranks[index] = rank
        return scores, ranks

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
            return make_ranked(self._indices[position], self._scores[position], some)
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
        return make_ranked, (self._indices, self._scores, self._documents)

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


def make_ranked(
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
    result costs more to build)."""

    id: str | None
    model: str | None
    results: Required[list[_WireResult]]
    meta: dict[str, Any] | None
    tokens: dict[str, Any] | None
    usage: dict[str, Any] | None


_read_wire = TypeAdapter(_WireResponse).validate_json


_INDEX = itemgetter("index")
_SCORE = itemgetter("relevance_score")
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)
_THIRD = itemgetter(2)


class _BareResult(msgspec.Struct, gc=False):  # nothing for the collector to walk
    index: Annotated[int, msgspec.Meta(ge=0, lt=2**32)]
    relevance_score: float


class _PlainResult(_BareResult, gc=False):
    document: msgspec.Raw = msgspec.Raw()
    """An echoed document, left unread (its key found however it is written): an answer that
    holds one is read again by `_read_wire`."""


class _PlainFields(msgspec.Struct, kw_only=True):
    """An answer as servers send it almost always, read by msgspec (the fast path, measured
    in the commit that added it). Anything else (an answer echoing documents that were asked
    for, or whatever msgspec refuses) is read again by `_read_wire`, which accepts exactly what
    an answer may hold and names what is wrong: every error comes from there."""

    id: str | None = None
    model: str | None = None
    meta: dict[str, Any] | None = None
    tokens: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None


class _BareAnswer(_PlainFields, kw_only=True):
    """Results without documents (none asked for: a document a server sends anyway is skipped,
    and a result costs two fields, not three)."""

    results: list[_BareResult]


class _PlainAnswer(_PlainFields, kw_only=True):
    results: list[_PlainResult]


_read_bare = msgspec.json.Decoder(_BareAnswer).decode
_read_plain = msgspec.json.Decoder(_PlainAnswer).decode
_PLAIN_INDEX = attrgetter("index")
_PLAIN_SCORE = attrgetter("relevance_score")
_PLAIN_DOCUMENT = attrgetter("document")


class Ranking(NamedTuple):
    """What `parse` takes from an answer, in the server's order."""

    indices: list[int]
    scores: list[float]
    documents: list[RerankDocument | None] | None
    wire: Mapping[str, Any]
    """The answer's other fields: id, model and the usage report's."""


def _read_plainly(content: bytes, documents: bool) -> _BareAnswer | _PlainAnswer | None:
    try:
        if not documents:
            return _read_bare(content)
        plain = _read_plain(content)
    except msgspec.DecodeError:
        return None
    return None if any(map(_PLAIN_DOCUMENT, plain.results)) else plain


def read_ranking(content: bytes, trace_id: str | None, documents: bool) -> Ranking:
    """The results of an answer, with their echoed documents when `documents` were asked for.

    Indices and scores come as lists of the int and float objects read: the reader's struct per
    result is dropped as soon as they are taken out.
    """
    plain = _read_plainly(content, documents)
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
            return Ranking(list(map(_PLAIN_INDEX, results)), scores, None, wire)
        del results, plain
    checked = read_answer(_read_wire, content, trace_id)
    every = checked["results"]
    echoed = None
    if documents and max(map(len, every), default=0) > 2:  # a bare result: a dict of two keys
        echoed = _echoed([result.get("document") for result in every])
    return Ranking(list(map(_INDEX, every)), list(map(_SCORE, every)), echoed, checked)


def ranked_by_score(read: Ranking) -> RankedResults:
    """An answer's results best first, ties in index order."""
    given, scores, documents = read.indices, read.scores, read.documents
    if all(map(operator.gt, scores, islice(scores, 1, None))):
        # Ranked by the server, no score tied (as servers send them): nothing to sort.
        return make_ranked(array(INDEX_CODE, given), doubles(scores), documents)
    # Positions sorted by index, then (stably) by score: a position and a key per result, not a
    # tuple.
    order: Sequence[int] = range(len(given))
    if any(map(operator.gt, given, islice(given, 1, None))):
        order = sorted(order, key=given.__getitem__)
    order = sorted(order, key=scores.__getitem__, reverse=True)
    return make_ranked(
        array(INDEX_CODE, map(given.__getitem__, order)),
        doubles(list(map(scores.__getitem__, order))),
        None if documents is None else list(map(documents.__getitem__, order)),
    )


def from_scores(scores: Mapping[int, float]) -> RankedResults:
    """Known scores by document index, ranked."""
    order = sorted(scores)
    order.sort(key=scores.__getitem__, reverse=True)
    return make_ranked(
        array(INDEX_CODE, order), doubles(list(map(scores.__getitem__, order))), None
    )


_SORTED_AT_ONCE = 1 << 15
"""Every result of a merged answer, up to this many, is sorted at once (a few MB of lists at
most): below it one sort is cheaper than a k-way merge (measured in the commit that added it)."""
_MERGED_AT_ONCE = 1024


def merged(
    parts: Sequence[tuple[RankedResults, Sequence[int]]], top_n: int | None, fill: Fill | None
) -> RankedResults:
    """One ranking of the call from rankings of disjoint sets of its documents, cut to `top_n`,
    with documents filled in when the caller asked for them.

    Each part is a batch's results with the call's position of each of the batch's documents
    (ascending, so that each part stays best first with ties in index order). Every result, when
    there are few enough, is sorted at once; otherwise a k-way merge holds one entry per part at
    a time, where sorting the whole again would build a key per result.
    """
    total = sum(len(part) for part, _ in parts)
    if top_n is None and total <= _SORTED_AT_ONCE:
        return finished(_sorted_at_once(parts), top_n, fill)
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
    if top_n is not None:
        best = islice(best, top_n)
        total = min(total, top_n)
    # Sized once and filled in chunks, each in a few passes in C: an array grown result by
    # result is copied whole each time it outgrows its buffer (twice its size at that moment).
    # (-score, index) pairs are unique: a document is never compared.
    indices = array(INDEX_CODE, [0]) * total
    scores = array("d", [0.0]) * total
    documents: list[RerankDocument | None] = []
    filled = 0
    while chunk := list(islice(best, _MERGED_AT_ONCE)):
        end = filled + len(chunk)
        scores[filled:end] = doubles(list(map(neg, map(_FIRST, chunk))))
        indices[filled:end] = array(INDEX_CODE, map(_SECOND, chunk))
        if echoed:
            documents.extend(map(_THIRD, chunk))
        filled = end
    del scores[filled:], indices[filled:]  # a server that sent fewer than top_n
    return finished(make_ranked(indices, scores, documents if echoed else None), top_n, fill)


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
    return make_ranked(
        array(INDEX_CODE, map(indices.__getitem__, order)),
        doubles(list(map(scores.__getitem__, order))),
        documents,
    )


def finished(ranked: RankedResults, top_n: int | None, fill: Fill | None) -> RankedResults:
    """`ranked` cut to `top_n`, with each document filled in by `fill` (when the caller asked
    for documents) where the server sent none."""
    if top_n is not None and len(ranked) > top_n:
        ranked = ranked[:top_n]
    if fill is None:
        return ranked
    # Some servers drop documents for media or ignore the flag; the caller asked, and we have them.
    given = ranked._documents or [None] * len(ranked)
    documents: list[RerankDocument | None] = [
        fill(index) if document is None else document
        for index, document in zip(ranked._indices, given, strict=True)
    ]
    return make_ranked(ranked._indices, ranked._scores, documents)


Fill = Callable[[int], RerankDocument]
"""The document of a request's index, for results the server sent without it."""


class Judge(NamedTuple):
    """What is done to a call's final ranking: scores mapped by a calibration, then the results
    below `min_relevance` dropped. A calibration is monotone, so the order stands and the
    results dropped are a tail: dropping them after `top_n` equals dropping them before."""

    score_map: Callable[[float], float] | None
    min_relevance: float | None

    def __call__(self, ranked: RankedResults) -> RankedResults:
        scores = ranked._scores
        if self.score_map is not None:
            scores = doubles(list(map(self.score_map, scores)))
        kept = len(scores)
        if self.min_relevance is not None:
            threshold = self.min_relevance
            kept = next((i for i, score in enumerate(scores) if score < threshold), kept)
        documents = ranked._documents
        return make_ranked(
            ranked._indices[:kept], scores[:kept], None if documents is None else documents[:kept]
        )
