"""Rerank response types, and the pure parser that turns an answer body into them."""

from __future__ import annotations

from operator import attrgetter
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    model_validator,
)

from ._exceptions import ResponseValidationError, excerpt
from ._request import RerankRequest

__all__ = [
    "BilledUnits",
    "RerankDocument",
    "RerankResponse",
    "RerankResult",
    "Usage",
    "assembled",
    "copied",
    "invalid_answer",
    "parse",
    "rank",
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
    results: list[RerankResult]
    """The ranked documents, best first, at most `top_n` of them."""
    usage: Usage | None = None
    """Token usage, or None when the server sent none."""
    trace_id: str | None = None
    """The `x-siliconcloud-trace-id` response header, for support requests."""
    model: str | None = None
    """The model that answered, when the server says (vLLM does)."""


class _WireResponse(BaseModel):
    """The body as any of the compatible servers send it."""

    id: str | None = None
    model: str | None = None
    results: list[RerankResult]
    meta: dict[str, Any] | None = None
    tokens: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None


def _usage(wire: _WireResponse) -> Usage | None:
    meta = wire.meta or {}
    return usage_from(meta.get("tokens") or wire.tokens or wire.usage, meta.get("billed_units"))


def usage_from(tokens: Any, billed: Any = None) -> Usage | None:
    """Usage from any server's counts: input/output or OpenAI's prompt/completion names, with
    the total computed when the server sent none.

    Raises:
        ValidationError, TypeError: Counts of the wrong shape or type.
    """
    if not tokens and not billed:
        return None
    counts = dict(tokens or {})
    for ours, openai_name in (
        ("input_tokens", "prompt_tokens"),
        ("output_tokens", "completion_tokens"),
    ):
        if ours not in counts and openai_name in counts:
            counts[ours] = counts[openai_name]
    if counts.get("total_tokens") is None:
        # Summed before validation (one model built, not two); a count of the wrong type is
        # left for the validation to name.
        parts = [counts.get(name) for name in ("input_tokens", "output_tokens", "image_tokens")]
        if any(part is not None for part in parts) and all(
            part is None or type(part) is int for part in parts
        ):
            counts["total_tokens"] = sum(part or 0 for part in parts)
    return Usage.model_validate({**counts, "billed_units": billed})


_Wire = TypeVar("_Wire", bound=BaseModel)


def invalid_answer(problem: str, content: bytes, trace_id: str | None) -> ResponseValidationError:
    """The error for a 2xx answer that is not a valid one, with its trace id and an excerpt."""
    return ResponseValidationError(problem, trace_id=trace_id, body_excerpt=excerpt(content))


def read_answer(model: type[_Wire], content: bytes, trace_id: str | None) -> _Wire:
    """Parse an answer body into its wire model.

    Raises:
        ResponseValidationError: The body is not JSON, or names the first field that is wrong.
    """
    try:
        return model.model_validate_json(content)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            problem = "the response body is not valid JSON"
        else:
            location = ".".join(str(part) for part in first["loc"]) or "body"
            problem = f"the response has an invalid '{location}': {first['msg']}"
        raise invalid_answer(problem, content, trace_id) from None


def parse(content: bytes, request: RerankRequest, *, trace_id: str | None) -> RerankResponse:
    """Parse and check a 2xx answer body against the request it answers.

    Raises:
        ResponseValidationError: The body is not JSON, lacks `results`, has malformed results, an
            index out of range or repeated, a non-finite score, or (when every document was
            asked for) not every document.
    """
    wire = read_answer(_WireResponse, content, trace_id)

    count = len(request.documents)
    indices = list(map(_BY_INDEX, wire.results))
    seen = set(indices)
    if len(seen) != len(indices) or (indices and max(indices) >= count):
        _find_bad_index(indices, count, content, trace_id)
    if request.top_n is None and len(seen) != count:
        # Asked for every document: one missing would shift nothing but silently lose a document.
        raise invalid_answer(
            f"the answer ranks {len(seen)} of the {count} documents; every one was asked for",
            content,
            trace_id,
        )

    try:
        usage = _usage(wire)
    except (ValidationError, TypeError, ValueError):
        raise invalid_answer(
            "the response has an invalid usage report", content, trace_id
        ) from None
    return RerankResponse(
        id=wire.id,
        results=rank(wire.results, request),
        usage=usage,
        trace_id=trace_id,
        model=wire.model,
    )


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


_BY_INDEX = attrgetter("index")
_BY_SCORE = attrgetter("relevance_score")


def rank(results: list[RerankResult], request: RerankRequest) -> list[RerankResult]:
    """Order results as every answer is returned: best first, ties by index, cut to `top_n`,
    with each document filled in when the caller asked for documents."""
    # Two stable C-keyed sorts: by index, then by score (reverse keeps equal scores in index order).
    ranked = sorted(sorted(results, key=_BY_INDEX), key=_BY_SCORE, reverse=True)
    if request.top_n is not None:
        ranked = ranked[: request.top_n]
    if request.return_documents:
        ranked = [_with_document(result, request) for result in ranked]
    return ranked


def _with_document(result: RerankResult, request: RerankRequest) -> RerankResult:
    # Some servers drop documents for media or ignore the flag; the caller asked, and we have them.
    if result.document is not None:
        return result
    item = request.documents[result.index]
    if isinstance(item, dict):
        item = {kind: v if isinstance(v, str) else v.data_uri() for kind, v in item.items()}
    document = RerankDocument.model_validate(item)
    return result.model_copy(update={"document": document})


_M = TypeVar("_M", bound=BaseModel)
_new = object.__new__
_set = object.__setattr__


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
    `fields_set` becomes the instance's own: pass a fresh set."""
    instance = _new(cls)
    _set(instance, "__dict__", state)
    _set(instance, "__pydantic_fields_set__", fields_set)
    _set(instance, "__pydantic_extra__", extra)
    _set(instance, "__pydantic_private__", private)
    return instance


def copied(model: _M, **updates: Any) -> _M:
    """`model.model_copy(update=updates)` (a shallow copy with some fields replaced), cheaper."""
    state = model.__dict__.copy()
    state.update(updates)
    extra, private = model.__pydantic_extra__, model.__pydantic_private__
    return assembled(
        type(model),
        state,
        model.__pydantic_fields_set__ | updates.keys(),
        None if extra is None else extra.copy(),
        None if private is None else private.copy(),
    )
