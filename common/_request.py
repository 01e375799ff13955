"""Building a rerank request: input validation and the wire body, with no I/O."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pydantic_core

from ._capabilities import model_capabilities
from ._exceptions import InvalidRequestError
from ._media import DocumentItem, InlineMedia, QueryItem, WireItem, item_kind, normalize_item

__all__ = [
    "RerankRequest",
    "StreamedBody",
    "build_request",
    "check_sendable",
    "encode_body",
    "subset",
    "validate_options",
]


@dataclass(frozen=True)
class StreamedBody:
    """A JSON body with inline media spliced in while it is sent, never built whole.

    Attributes:
        parts: JSON bytes and the media whose data URIs go between them (inside the quotes).
        length: The body's exact length, sent as Content-Length.
    """

    parts: tuple[bytes | InlineMedia, ...]
    length: int

    def verify(self) -> None:
        """Refuse, before anything is sent, media files that changed since their items were made."""
        for part in self.parts:
            if isinstance(part, InlineMedia):
                part.verify()

    def iter_bytes(self) -> Iterator[bytes]:
        """The body, piece by piece."""
        for part in self.parts:
            if isinstance(part, bytes):
                yield part
            else:
                yield from part.chunks()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body, piece by piece, reading files without blocking the event loop."""
        for part in self.parts:
            if isinstance(part, bytes):
                yield part
            else:
                async for chunk in part.achunks():
                    yield chunk


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


# Media go into the JSON as placeholders, which are then cut out: the encoder stays the one fast
# call, and a data URI is never built whole. The random part, drawn once, keeps text from matching.
_PLACEHOLDER = f"sf-media-{secrets.token_hex(16)}-"
_PLACEHOLDERS = re.compile(re.escape(_PLACEHOLDER.encode()) + rb"(\d+)")


def encode_body(body: dict[str, Any]) -> bytes | StreamedBody:
    """Encode a request body as JSON bytes, or as a `StreamedBody` when it holds `InlineMedia`.

    Raises:
        InvalidRequestError: The body holds text that cannot be sent as UTF-8 (lone surrogates).
    """
    media: list[InlineMedia] = []

    def placeholder(value: Any) -> str:
        if not isinstance(value, InlineMedia):
            raise TypeError(f"cannot encode {type(value).__name__}")
        media.append(value)
        return f"{_PLACEHOLDER}{len(media) - 1}"

    try:
        encoded = pydantic_core.to_json(body, fallback=placeholder)
    except pydantic_core.PydanticSerializationError as error:
        # Lone surrogates (from badly decoded bytes) cannot be sent as UTF-8 JSON.
        raise InvalidRequestError(
            f"the request holds text that is not valid text: {error}"
        ) from None
    if not media:
        return encoded
    pieces = _PLACEHOLDERS.split(encoded)
    parts: list[bytes | InlineMedia] = []
    for position, piece in enumerate(pieces):
        parts.append(piece if position % 2 == 0 else media[int(piece)])
    length = sum(len(p) if isinstance(p, bytes) else p.encoded_length for p in parts)
    return StreamedBody(tuple(parts), length)


def _positive_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise InvalidRequestError(f"{name} must be {allowed}, got {value}")
    return value


def build_request(
    query: QueryItem,
    documents: str | Sequence[DocumentItem],
    *,
    model: str,
    top_n: int | None = None,
    return_documents: bool | None = None,
    instruction: str | None = None,
    max_chunks_per_doc: int | None = None,
    overlap_tokens: int | None = None,
) -> RerankRequest:
    """Validate the inputs and build the request body.

    Raises:
        InvalidRequestError: Any input the API would reject, or a field the (known) model does not
            take; the message names the field and, where relevant, the model.
    """
    wire_query = normalize_item(query, "query")
    if isinstance(wire_query, str) and not wire_query.strip():
        raise InvalidRequestError("query must be a non-empty string")
    if isinstance(documents, str):
        documents = [documents]
    elif not isinstance(documents, Sequence):
        raise InvalidRequestError(
            f"documents must be a string or a sequence of items, got {type(documents).__name__}"
        )
    if len(documents) == 0:
        raise InvalidRequestError("documents must hold at least one document")
    # Plain strings, by far the common case, are copied in one pass in C; other items are
    # normalized one by one.
    if set(map(type, documents)) == {str}:
        wire_documents = cast("list[WireItem]", list(documents))  # strings: items as they are
    else:
        wire_documents = [
            item if type(item) is str else normalize_item(item, f"documents[{i}]")
            for i, item in enumerate(documents)
        ]

    options = validate_options(
        model,
        top_n=top_n,
        return_documents=return_documents,
        instruction=instruction,
        max_chunks_per_doc=max_chunks_per_doc,
        overlap_tokens=overlap_tokens,
    )
    if top_n is not None:
        # The server's behaviour for top_n > len(documents) is undocumented; clamping is exact.
        top_n = options["top_n"] = min(top_n, len(wire_documents))
    body: dict[str, Any] = {
        "model": model,
        "query": wire_query,
        "documents": wire_documents,
        **options,
    }
    _check_modalities(model, wire_query, wire_documents)
    request = RerankRequest(
        body=body,
        documents=wire_documents,
        top_n=top_n,
        return_documents=bool(return_documents),
    )
    return request


def validate_options(
    model: str,
    *,
    top_n: int | None = None,
    return_documents: bool | None = None,
    instruction: str | None = None,
    max_chunks_per_doc: int | None = None,
    overlap_tokens: int | None = None,
) -> dict[str, Any]:
    """Check the model name and the optional fields, alone and against a known model.

    Adapters call this when they are configured, so that a bad setting fails at construction.

    Returns:
        The optional fields that are set, as they go on the wire.

    Raises:
        InvalidRequestError: A value the API would reject, or a field the model does not take.
    """
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError("model must be a non-empty string")
    options: dict[str, Any] = {}
    if top_n is not None:
        options["top_n"] = _positive_int("top_n", top_n, 1)
    if return_documents is not None:
        if not isinstance(return_documents, bool):
            raise InvalidRequestError("return_documents must be True, False or None")
        options["return_documents"] = return_documents
    if instruction is not None:
        if not isinstance(instruction, str) or not instruction.strip():
            raise InvalidRequestError("instruction must be a non-empty string")
        options["instruction"] = instruction
    if max_chunks_per_doc is not None:
        options["max_chunks_per_doc"] = _positive_int("max_chunks_per_doc", max_chunks_per_doc, 1)
    if overlap_tokens is not None:
        options["overlap_tokens"] = _positive_int("overlap_tokens", overlap_tokens, 0, 80)

    caps = model_capabilities(model)
    if caps is None:
        return options
    if "instruction" in options and not caps.instruction:
        raise InvalidRequestError(
            f"model {model!r} does not take 'instruction' (the Qwen3-Reranker models do)"
        )
    if not caps.chunking:
        for name in ("max_chunks_per_doc", "overlap_tokens"):
            if name in options:
                raise InvalidRequestError(
                    f"model {model!r} does not take {name!r} (bge, bce and Qwen3-VL rerankers do)"
                )
    return options


def _check_modalities(
    model: str,
    query: WireItem,
    documents: list[WireItem],
) -> None:
    caps = model_capabilities(model)
    if caps is None or caps.modalities >= {"image", "video"}:
        return
    if type(query) is str and set(map(type, documents)) == {str}:
        return  # every model ranks text
    for position, item in enumerate([query, *documents]):
        if isinstance(item, str):
            continue  # every model ranks text
        kind = item_kind(item)
        if kind not in caps.modalities:
            what = "query" if position == 0 else f"documents[{position - 1}]"
            raise InvalidRequestError(
                f"model {model!r} ranks text only, but {what} is a {kind} item; "
                "use a multimodal model such as 'Qwen/Qwen3-VL-Reranker-8B'"
            )


def subset(
    request: RerankRequest, positions: Sequence[int], *, top_n: bool = True
) -> RerankRequest:
    """A request for some of `request`'s documents (by position), with `top_n` fitted to them.

    Args:
        request: The full, validated request.
        positions: Indices into `request.documents`, in the order to send them.
        top_n: Keep asking for the best `top_n` (fitted to the subset); False asks for every score.
    """
    if isinstance(positions, range) and positions.step == 1:  # a batch of a list: a slice
        documents = request.documents[positions.start : positions.stop]
    else:
        documents = list(map(request.documents.__getitem__, positions))
    body = {**request.body, "documents": documents}
    body.pop("top_n", None)
    fitted = None
    if top_n and request.top_n is not None:
        fitted = body["top_n"] = min(request.top_n, len(documents))
    return RerankRequest(
        body=body, documents=documents, top_n=fitted, return_documents=request.return_documents
    )


_CHECKED_AT_ONCE = 1024


def check_sendable(request: RerankRequest) -> None:
    """Check that each document can be encoded, as a call split in batches must before sending
    the first: its batches' bodies are encoded only as they are sent.

    Raises:
        InvalidRequestError: A document holds text that is not valid text (lone surrogates).
    """
    documents = request.documents
    for start in range(0, len(documents), _CHECKED_AT_ONCE):
        chunk = documents[start : start + _CHECKED_AT_ONCE]
        if _utf8(chunk):
            continue  # the common case: text only, checked in one pass in C
        for position, item in enumerate(chunk, start):
            try:
                encode_body({"document": item})
            except InvalidRequestError as error:
                raise InvalidRequestError(f"documents[{position}]: {error}") from None
    encode_body({**request.body, "documents": []})  # the query and the other fields


def _utf8(items: list[WireItem]) -> bool:
    """Whether `items` are all text that encodes as UTF-8."""
    try:
        "".join(items).encode()  # type: ignore[arg-type]  # any item not a string: TypeError
    except (TypeError, UnicodeEncodeError):
        return False
    return True
