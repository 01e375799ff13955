"""Embeddings: input checks, the request bodies of one call, and the answers' checks: no I/O."""

from __future__ import annotations

import array
import base64
import binascii
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from ._batching import merge_usage
from ._cache import EmbeddingCache, embedding_key_prefix
from ._capabilities import embedding_capabilities
from ._exceptions import InvalidRequestError, ResponseValidationError
from ._media import ImageItem, TextItem, WireItem, item_kind, normalize_item
from ._models import Usage, invalid_answer, read_answer, usage_from
from ._request import StreamedBody, encode_body

__all__ = [
    "EmbeddingInput",
    "EmbeddingPlan",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EncodingFormat",
    "assemble_embeddings",
    "float32_base64",
    "float32_values",
    "merge_embeddings",
    "parse_embeddings",
    "plan_embeddings",
]

EmbeddingInput = str | TextItem | ImageItem
"""One input to embed: a string, a text item, or an image item (multimodal models only)."""

EncodingFormat = Literal["float", "base64"]


class EmbeddingResponse(BaseModel):
    """The answer to one embeddings call: one vector per input, in input order."""

    model_config = ConfigDict(frozen=True)

    embeddings: list[list[float]]
    """The vectors, `embeddings[i]` for input `i` (mapped by the server's `index`, checked)."""
    model: str | None = None
    """The model that answered, as the server names it."""
    usage: Usage | None = None
    """Token usage (`input_tokens` is the service's `prompt_tokens`), summed over the requests."""
    trace_id: str | None = None
    """The `x-siliconcloud-trace-id` of the answer (comma-joined when the call was split)."""


@dataclass(frozen=True)
class EmbeddingRequest:
    """One request of an embeddings call, ready to send.

    Attributes:
        body: The JSON body as a dict.
        content: The same body as UTF-8 JSON bytes, or streamed when it holds `InlineMedia`.
        number: Its place among the call's requests, from 0.
        first: The position, in the call's inputs, of its first input.
        last: The position, in the call's inputs, of its last input (cached inputs between the
            two are not sent).
        count: How many inputs it carries.
        dimensions: The vector length asked for, or None for the model's own.
    """

    body: dict[str, Any]
    content: bytes | StreamedBody
    number: int
    first: int
    last: int
    count: int
    dimensions: int | None

    @property
    def content_length(self) -> int:
        """Size of the body in bytes."""
        content = self.content
        return len(content) if isinstance(content, bytes) else content.length


def _wire_inputs(inputs: object) -> list[WireItem]:
    if isinstance(inputs, str):
        inputs = [inputs]
    elif not isinstance(inputs, Sequence):
        raise InvalidRequestError(
            f"inputs must be a string or a sequence of items, got {type(inputs).__name__}"
        )
    if len(inputs) == 0:
        raise InvalidRequestError("inputs must hold at least one input")
    wire = [
        item if type(item) is str else normalize_item(item, f"inputs[{i}]")
        for i, item in enumerate(inputs)
    ]
    for i, item in enumerate(wire):
        if isinstance(item, str):
            if not item.strip():
                raise InvalidRequestError(f"inputs[{i}] is empty; the service embeds no empty text")
        elif item_kind(item) == "video":
            raise InvalidRequestError(f"inputs[{i}] is a video; embeddings take text and images")
    return wire


def _check_model(model: str, wire: list[WireItem], dimensions: int | None) -> None:
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError("model must be a non-empty string")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
    ):
        raise InvalidRequestError(f"dimensions must be an integer >= 1, got {dimensions!r}")
    caps = embedding_capabilities(model)
    if caps is None:
        return  # unknown models and compatible servers' names pass through unchecked
    if dimensions is not None:
        if caps.dimension_choices is None:
            raise InvalidRequestError(f"model {model} does not take dimensions")
        if caps.dimension_choices and dimensions not in caps.dimension_choices:
            allowed = ", ".join(str(d) for d in sorted(caps.dimension_choices))
            raise InvalidRequestError(
                f"model {model} takes dimensions of {allowed}; got {dimensions}"
            )
    if "image" not in caps.modalities:
        for i, item in enumerate(wire):
            if not isinstance(item, str):
                raise InvalidRequestError(
                    f"inputs[{i}] is an image, but model {model} embeds text only "
                    "(Qwen/Qwen3-VL-Embedding-8B embeds images)"
                )


def _check_call(
    wire: list[WireItem],
    model: str,
    dimensions: int | None,
    encoding_format: EncodingFormat,
    batch_size: int,
) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidRequestError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if encoding_format not in ("float", "base64"):
        raise InvalidRequestError(
            f"encoding_format must be 'float' or 'base64', got {encoding_format!r}"
        )
    _check_model(model, wire, dimensions)


def _requests(
    wire: list[WireItem],
    positions: Sequence[int],
    model: str,
    dimensions: int | None,
    encoding_format: EncodingFormat,
    batch_size: int,
) -> list[EmbeddingRequest]:
    """Requests for `wire`, the inputs at `positions` of the call, `batch_size` at a time."""
    options: dict[str, Any] = {"encoding_format": encoding_format}
    if dimensions is not None:
        options["dimensions"] = dimensions
    requests = []
    for number, start in enumerate(range(0, len(wire), batch_size)):
        group = wire[start : start + batch_size]
        body = {"model": model, "input": group, **options}
        first, last = positions[start], positions[start + len(group) - 1]
        requests.append(
            EmbeddingRequest(body, encode_body(body), number, first, last, len(group), dimensions)
        )
    return requests


@dataclass(frozen=True)
class EmbeddingPlan:
    """How an embeddings call is served: vectors already known (cached), and the requests for
    the rest (`pending[k]` is the call's position of the k-th input sent)."""

    requests: list[EmbeddingRequest]
    count: int
    pending: Sequence[int]
    known: dict[int, list[float]]
    keys: list[bytes] | None = None


def plan_embeddings(
    inputs: str | Sequence[EmbeddingInput],
    *,
    model: str,
    dimensions: int | None,
    encoding_format: EncodingFormat,
    batch_size: int,
    cache: EmbeddingCache | None,
    base_url: str,
) -> EmbeddingPlan:
    """Check the inputs and options, look up cached vectors, and cut the rest into requests of
    at most `batch_size`.

    Raises:
        InvalidRequestError: Any input the API would reject, or an option the (known) model does
            not take (the message names the input or the option, and the model); before any
            lookup.
    """
    wire = _wire_inputs(inputs)
    _check_call(wire, model, dimensions, encoding_format, batch_size)
    if cache is None:
        every = range(len(wire))
        requests = _requests(wire, every, model, dimensions, encoding_format, batch_size)
        return EmbeddingPlan(requests, len(wire), every, {})
    prefix = embedding_key_prefix(
        base_url, {"model": model, "dimensions": dimensions, "encoding_format": encoding_format}
    )
    keys = [cache._key(prefix, item) for item in wire]
    found = cache._lookup_keys(keys)
    known = {
        i: array.array("d", packed).tolist() for i, packed in enumerate(found) if packed is not None
    }
    pending = [i for i, vector in enumerate(found) if vector is None]
    pending_inputs = [wire[i] for i in pending]
    requests = _requests(pending_inputs, pending, model, dimensions, encoding_format, batch_size)
    return EmbeddingPlan(requests, len(wire), pending, known, keys)


def assemble_embeddings(
    the_plan: EmbeddingPlan,
    responses: Sequence[EmbeddingResponse],
    *,
    model: str,
    cache: EmbeddingCache | None,
) -> EmbeddingResponse:
    """The answer to the whole call: fresh vectors (stored in the cache) and cached ones, in
    input order, usage summed over the requests sent."""
    if cache is None and len(responses) == 1:
        return responses[0]
    fresh = merge_embeddings(responses) if responses else None
    vectors: list[list[float]] = [[] for _ in range(the_plan.count)]
    for position, vector in the_plan.known.items():
        vectors[position] = vector
    if fresh is not None:
        for position, vector in zip(the_plan.pending, fresh.embeddings, strict=True):
            vectors[position] = vector
        if cache is not None and the_plan.keys is not None:
            cache._store_keys(
                [the_plan.keys[position] for position in the_plan.pending],
                [array.array("d", vector).tobytes() for vector in fresh.embeddings],
            )
    return EmbeddingResponse.model_construct(
        embeddings=vectors,
        model=fresh.model if fresh is not None else model,
        usage=fresh.usage if fresh is not None else None,
        trace_id=fresh.trace_id if fresh is not None else None,
    )


class _WireVector(BaseModel):
    index: StrictInt = Field(ge=0)
    embedding: list[StrictFloat] | StrictStr


class _WireAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")

    data: list[_WireVector]
    model: str | None = None
    usage: dict[str, Any] | None = None


def float32_base64(vector: Sequence[float]) -> str:
    """Little-endian float32 values, base64-encoded: `encoding_format="base64"` on the wire."""
    values = array.array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def float32_values(encoded: str) -> list[float]:
    """The floats of a `float32_base64` string.

    Raises:
        binascii.Error, ValueError: Not base64, or not a whole number of float32 values.
    """
    raw = base64.b64decode(encoded, validate=True)
    if len(raw) % 4:
        raise ValueError(f"{len(raw)} bytes is not a whole number of float32 values")
    values = array.array("f")
    values.frombytes(raw)
    if sys.byteorder == "big":  # the wire is little-endian
        values.byteswap()
    return values.tolist()


def _decode(vector: list[float] | str) -> list[float]:
    return vector if isinstance(vector, list) else float32_values(vector)


def parse_embeddings(
    content: bytes, request: EmbeddingRequest, *, trace_id: str | None
) -> EmbeddingResponse:
    """Parse and check a 2xx answer to one embeddings request.

    Raises:
        ResponseValidationError: The body is not JSON or not an embeddings answer; an index is
            out of range, repeated or missing; the vectors differ in length or from the
            `dimensions` asked for; or a value is not a finite number.
    """

    def invalid(problem: str) -> ResponseValidationError:
        return invalid_answer(problem, content, trace_id)

    wire = read_answer(_WireAnswer.model_validate_json, content, trace_id)

    vectors: list[list[float] | None] = [None] * request.count
    for entry in wire.data:
        if entry.index >= request.count:
            raise invalid(f"index {entry.index} is out of range for {request.count} inputs")
        if vectors[entry.index] is not None:
            raise invalid(f"index {entry.index} appears twice")
        try:
            vectors[entry.index] = _decode(entry.embedding)
        except (binascii.Error, ValueError) as error:
            raise invalid(
                f"the vector at index {entry.index} is not base64 floats: {error}"
            ) from None
    missing = [i for i, v in enumerate(vectors) if v is None]
    if missing:
        raise invalid(
            f"{len(missing)} of {request.count} inputs got no vector (first: {missing[0]})"
        )
    complete: list[list[float]] = vectors  # type: ignore[assignment]  # checked just above
    length = request.dimensions or len(complete[0])
    for index, vector in enumerate(complete):
        if len(vector) != length or not length:
            raise invalid(f"the vector at index {index} has {len(vector)} values, not {length}")
        # A sum is finite only when every value is: one pass in C instead of one call per value.
        if not math.isfinite(sum(vector)):
            raise invalid(f"the vector at index {index} holds a value that is not a finite number")
    try:
        usage = usage_from(wire.usage)
    except (ValidationError, TypeError, ValueError):
        raise invalid("the response has an invalid usage report") from None
    # Everything is checked: build without validating every number a second time.
    return EmbeddingResponse.model_construct(
        embeddings=complete, model=wire.model, usage=usage, trace_id=trace_id
    )


def merge_embeddings(responses: Sequence[EmbeddingResponse]) -> EmbeddingResponse:
    """Join the answers to a call's requests, given in request order, into one answer."""
    if len(responses) == 1:
        return responses[0]
    embeddings = [vector for response in responses for vector in response.embeddings]
    trace_ids = [r.trace_id for r in responses if r.trace_id]
    return EmbeddingResponse.model_construct(
        embeddings=embeddings,
        model=responses[0].model,
        usage=merge_usage([r.usage for r in responses]),
        trace_id=",".join(trace_ids) or None,
    )
