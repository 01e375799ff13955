"""The embeddings endpoint (`POST /embeddings`): its options, request building, plan (cache,
batches) and answer checks. Pure: the client sends what the plan asks for."""

from __future__ import annotations

import array
import base64
import binascii
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, cast

import msgspec
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from ._capabilities import embedding_capabilities
from ._config import DEFAULT_EMBEDDING_BATCH_SIZE, DEFAULT_EMBEDDING_MODEL
from ._exceptions import InvalidRequestError, ResponseValidationError, SiliconFlowError
from ._media import ImageItem, TextItem, WireItem, item_kind, normalize_items
from ._options import NOT_IN_CACHE_KEY, cache_keys, key_prefix
from ._pipeline import Pipeline, Plan, ProgressCallback
from ._wire import (
    Estimate,
    StreamedBody,
    Usage,
    UsageSum,
    encode_body,
    estimate_tokens,
    invalid_answer,
    join_trace_ids,
    name_batch,
    read_answer,
    usage_from,
)

__all__ = [
    "EmbeddingInput",
    "EmbeddingOptions",
    "EmbeddingPlan",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EncodingFormat",
    "float32_values",
    "parse",
    "prepare_embed",
]

EmbeddingInput = str | TextItem | ImageItem
"""One input to embed: a string, a text item, or an image item (multimodal models only)."""

EncodingFormat = Literal["float", "base64"]


@dataclass(frozen=True, slots=True)
class EmbeddingOptions:
    """The options of one embeddings call, checked once when made.

    Raises:
        InvalidRequestError: A value the API would reject, or an option the (known) model does
            not take; the message names the option and the model.
    """

    model: str = DEFAULT_EMBEDDING_MODEL
    dimensions: int | None = None
    encoding_format: EncodingFormat = "base64"
    """Decides the value: JSON floats may carry digits that float32 bytes do not."""
    batch_size: int = field(default=DEFAULT_EMBEDDING_BATCH_SIZE, metadata=NOT_IN_CACHE_KEY)

    def __post_init__(self) -> None:
        size = self.batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidRequestError(f"batch_size must be an integer >= 1, got {size!r}")
        if self.encoding_format not in ("float", "base64"):
            raise InvalidRequestError(
                f"encoding_format must be 'float' or 'base64', got {self.encoding_format!r}"
            )
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidRequestError("model must be a non-empty string")
        dimensions = self.dimensions
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
        ):
            raise InvalidRequestError(f"dimensions must be an integer >= 1, got {dimensions!r}")
        caps = embedding_capabilities(self.model)
        if caps is None or dimensions is None:
            return  # unknown models and compatible servers' names pass through unchecked
        if caps.dimension_choices is None:
            raise InvalidRequestError(f"model {self.model} does not take dimensions")
        if caps.dimension_choices and dimensions not in caps.dimension_choices:
            allowed = ", ".join(str(d) for d in sorted(caps.dimension_choices))
            raise InvalidRequestError(
                f"model {self.model} takes dimensions of {allowed}; got {dimensions}"
            )
        if dimensions > caps.dimensions:
            raise InvalidRequestError(
                f"model {self.model} gives vectors of at most {caps.dimensions} values; got "
                f"dimensions={dimensions}"
            )

    def check_inputs(self, wire: list[WireItem]) -> None:
        """Refuse images for a (known) model that embeds text only."""
        caps = embedding_capabilities(self.model)
        if caps is None or "image" in caps.modalities:
            return
        for i, item in enumerate(wire):
            if not isinstance(item, str):
                raise InvalidRequestError(
                    f"inputs[{i}] is an image, but model {self.model} embeds text only "
                    "(Qwen/Qwen3-VL-Embedding-8B embeds images)"
                )


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
        count: How many inputs it carries.
        dimensions: The vector length asked for, or None for the model's own.
    """

    body: dict[str, Any]
    content: bytes | StreamedBody
    count: int
    dimensions: int | None

    @property
    def content_length(self) -> int:
        """Size of the body in bytes."""
        content = self.content
        return len(content) if isinstance(content, bytes) else content.length

    @property
    def estimated_tokens(self) -> Estimate:
        """The tokens the service will bill, estimated high: every input once."""
        return estimate_tokens(self.body["input"])


def _wire_inputs(inputs: object) -> list[WireItem]:
    wire = normalize_items(inputs, "inputs", "input")
    for i, item in enumerate(wire):
        if isinstance(item, str):
            if not item.strip():
                raise InvalidRequestError(f"inputs[{i}] is empty; the service embeds no empty text")
        elif item_kind(item) == "video":
            raise InvalidRequestError(f"inputs[{i}] is a video; embeddings take text and images")
    return wire


class EmbeddingPlan(Plan[EmbeddingRequest, EmbeddingResponse, EmbeddingResponse]):
    """How an embeddings call is served: vectors already known (cached), and requests of at most
    `batch_size` for the rest, put back in input order as the answers come in."""

    path = "embeddings"

    def __init__(
        self,
        wire: list[WireItem],
        options: EmbeddingOptions,
        *,
        pipeline: Pipeline | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.wire = wire
        self.options = options
        self.count = len(wire)
        self.on_progress = on_progress
        self.keys: list[bytes] | None = None
        self._pipeline = pipeline
        self.cache = None if pipeline is None else pipeline.settings.embedding_cache
        self._vectors: list[list[float] | None] = [None] * self.count
        self._start(range(self.count))

    def _start(self, pending: Sequence[int]) -> None:
        """Requests for the inputs at `pending`, `batch_size` at a time."""
        self.pending = pending
        """The call's position of each input to send, in the order sent."""
        options = self.options
        wire_options: dict[str, Any] = {"encoding_format": options.encoding_format}
        if options.dimensions is not None:
            wire_options["dimensions"] = options.dimensions
        size, wire = options.batch_size, self.wire
        self._bodies = [
            {"model": options.model, "input": [wire[i] for i in pending[start : start + size]]}
            | wire_options
            for start in range(0, len(pending), size)
        ]
        self._usage = UsageSum()
        self._trace_ids: list[str | None] = [None] * len(self._bodies)
        self._model: str | None = None
        self._only: EmbeddingResponse | None = None

    def look_up(self) -> None:
        """Key every input (hashing images) and ask the cache; request what it lacks."""
        if self.cache is None or self._pipeline is None:
            return
        prefix = key_prefix(EmbeddingPlan.path, self._pipeline, self.options)
        self.keys = keys = cache_keys(prefix, self.wire)
        found = [_vector(value) for value in self.cache.get_many(keys)]
        # A vector of another length than the model's (or than most cached ones, for a model
        # not known here) is no answer to this call: asked for again.
        caps = embedding_capabilities(self.options.model)
        length = self.options.dimensions or (caps.dimensions if caps is not None else None)
        if length is None:
            lengths = Counter(len(vector) for vector in found if vector is not None)
            length = lengths.most_common(1)[0][0] if lengths else None
        for position, vector in enumerate(found):
            if vector is not None and len(vector) == length:
                self._vectors[position] = vector
        self._start([i for i, vector in enumerate(self._vectors) if vector is None])

    def __len__(self) -> int:
        return len(self._bodies)

    def request(self, number: int) -> EmbeddingRequest:
        body = self._bodies[number]
        return EmbeddingRequest(
            body, encode_body(body), len(body["input"]), self.options.dimensions
        )

    def read(
        self, content: bytes, request: EmbeddingRequest, trace_id: str | None
    ) -> EmbeddingResponse:
        return parse(content, request, trace_id)

    def add(self, number: int, part: EmbeddingResponse) -> None:
        start = number * self.options.batch_size
        positions = self.pending[start : start + len(part.embeddings)]
        for position, vector in zip(positions, part.embeddings, strict=True):
            self._vectors[position] = vector
        if self.keys is not None:
            keys = self.keys
            self.keep(
                [
                    (keys[position], array.array("d", vector).tobytes())
                    for position, vector in zip(positions, part.embeddings, strict=True)
                ]
            )
        self._usage.add(part.usage)
        self._trace_ids[number] = part.trace_id
        if number == 0 or self._model is None:
            self._model = part.model
        if len(self._bodies) == 1 and self.count == len(part.embeddings):
            self._only = part

    def answer(self) -> EmbeddingResponse:
        """The vectors in input order (fresh and cached), usage summed over the requests sent."""
        if self._only is not None:
            return self._only  # one request answered the whole call
        vectors = self._vectors
        if any(vector is None for vector in vectors):
            raise ValueError("an answer to one of the call's requests is missing")
        lengths = {len(vector) for vector in vectors if vector is not None}
        if len(lengths) > 1:
            raise ResponseValidationError(
                f"the call's answers hold vectors of different lengths ({sorted(lengths)})"
            )
        return EmbeddingResponse.model_construct(
            embeddings=cast("list[list[float]]", vectors),  # every one checked just above
            model=self._model or (None if self._bodies else self.options.model),
            usage=self._usage.total(),
            trace_id=join_trace_ids(self._trace_ids),
        )

    def failed(self, number: int, error: SiliconFlowError) -> SiliconFlowError:
        size = self.options.batch_size
        positions = self.pending[number * size : (number + 1) * size]
        span = (positions[0], positions[-1])
        return name_batch(error, number, span, len(self._bodies), "inputs")


class _WireVector(BaseModel):
    index: StrictInt = Field(ge=0)
    embedding: list[StrictFloat] | StrictStr


class _WireAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")

    data: list[_WireVector]
    model: str | None = None
    usage: dict[str, Any] | None = None


def float32_values(encoded: str | bytes | memoryview) -> list[float]:
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


class _PlainVector(msgspec.Struct, gc=False):
    index: Annotated[int, msgspec.Meta(ge=0)]
    embedding: msgspec.Raw
    """Left unread until its turn: the answer's bytes are the only copy of a vector's text."""


class _PlainAnswer(msgspec.Struct):
    """An answer as servers send it, read by msgspec (the fast path). Anything it refuses is
    read again by `_WireAnswer`, which names what is wrong: every error comes from there."""

    data: list[_PlainVector]
    model: str | None = None
    usage: dict[str, Any] | None = None


_read_plain = msgspec.json.Decoder(_PlainAnswer).decode
_read_floats = msgspec.json.Decoder(list[float]).decode


def _read_plainly(content: bytes) -> tuple[list[tuple[int, list[float]]], Any] | None:
    """(index, vector) pairs and the answer, or None for an answer the exact reader must read."""
    try:
        plain = _read_plain(content)
        pairs = []
        for entry in plain.data:
            text = bytes(memoryview(entry.embedding))  # one vector's text at a time
            if text[:1] == b"[":
                vector = _read_floats(text)
            elif text[:1] == b'"' and text[-1:] == b'"' and b"\\" not in text:
                vector = float32_values(memoryview(text)[1:-1])
            else:
                return None
            pairs.append((entry.index, vector))
    except (msgspec.DecodeError, binascii.Error, ValueError):
        return None
    return pairs, plain


def _read_exactly(
    content: bytes, trace_id: str | None
) -> tuple[list[tuple[int, list[float]]], Any]:
    wire = read_answer(_WireAnswer.model_validate_json, content, trace_id)
    pairs = []
    for entry in wire.data:
        try:
            pairs.append((entry.index, _decode(entry.embedding)))
        except (binascii.Error, ValueError) as error:
            raise invalid_answer(
                f"the vector at index {entry.index} is not base64 floats: {error}",
                content,
                trace_id,
            ) from None
    return pairs, wire


def parse(content: bytes, request: EmbeddingRequest, trace_id: str | None) -> EmbeddingResponse:
    """Parse and check a 2xx answer to one embeddings request.

    Raises:
        ResponseValidationError: The body is not JSON or not an embeddings answer; an index is
            out of range, repeated or missing; the vectors differ in length or from the
            `dimensions` asked for; or a value is not a finite number.
    """

    def invalid(problem: str) -> ResponseValidationError:
        return invalid_answer(problem, content, trace_id)

    pairs, wire = _read_plainly(content) or _read_exactly(content, trace_id)
    vectors: list[list[float] | None] = [None] * request.count
    for index, vector in pairs:
        if index >= request.count:
            raise invalid(f"index {index} is out of range for {request.count} inputs")
        if vectors[index] is not None:
            raise invalid(f"index {index} appears twice")
        vectors[index] = vector
    del pairs
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


def _vector(value: bytes | None) -> list[float] | None:
    """A cached vector, or None for a value that is no vector of finite floats (a miss)."""
    if value is None or not value or len(value) % 8:
        return None
    vector = array.array("d", value).tolist()
    return vector if math.isfinite(sum(vector)) else None


def prepare_embed(
    pipeline: Pipeline,
    inputs: str | Sequence[EmbeddingInput],
    *,
    model: str = DEFAULT_EMBEDDING_MODEL,
    dimensions: int | None = None,
    encoding_format: EncodingFormat = "base64",
    batch_size: int = DEFAULT_EMBEDDING_BATCH_SIZE,
    on_progress: ProgressCallback | None = None,
) -> EmbeddingPlan:
    """Embed `inputs`: one vector per input, in input order.

    Args:
        inputs: One string, or a sequence of strings, text items and image items (images
            for `Qwen/Qwen3-VL-Embedding-8B`; build them with `image_item`).
        model: The embedding model.
        dimensions: The vector length, for the models that take it (Qwen3 embeddings).
        encoding_format: How vectors travel: `"base64"` (float32 bytes: a quarter of the
            size of JSON numbers, and faster to decode) or `"float"` (JSON numbers); either
            way they are returned as floats.
        batch_size: Longer lists are split into concurrent requests of this many inputs
            (the service takes at most 32), answered in one response.
        on_progress: Called with (requests done, requests in all) as a long call proceeds.

    Returns:
        The vectors, `embeddings[i]` for `inputs[i]`, with the usage summed.

    Raises:
        InvalidRequestError: Bad input, before any request is sent.
        APIStatusError: The server answered with an error status (a subclass per status).
        APIConnectionError: No answer, after the retries (`APITimeoutError` for timeouts).
        ResponseValidationError: An answer is not a valid embeddings response (an input
            without its vector, vectors of different lengths, a value that is not finite).
    """
    wire = _wire_inputs(inputs)
    options = EmbeddingOptions(model, dimensions, encoding_format, batch_size)
    options.check_inputs(wire)
    return EmbeddingPlan(wire, options, pipeline=pipeline, on_progress=on_progress)
