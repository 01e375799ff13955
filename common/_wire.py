"""What every endpoint shares on the wire: request bodies (JSON with media streamed in), usage
counts, reading an answer with pydantic, naming a failed batch, and building checked models."""

from __future__ import annotations

import math
import re
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple, TypeVar

import pydantic_core
from pydantic import BaseModel, ConfigDict, StrictInt, ValidationError

from ._exceptions import InvalidRequestError, ResponseValidationError, SiliconFlowError, excerpt
from ._media import InlineMedia

__all__ = [
    "MEDIA_TOKENS",
    "USAGE_COUNTS",
    "BilledUnits",
    "Estimate",
    "StreamedBody",
    "TokenEstimates",
    "Usage",
    "UsageSum",
    "assembled",
    "check_encodable",
    "copied",
    "distinct_indices",
    "encode_body",
    "estimate_tokens",
    "find_bad_index",
    "invalid_answer",
    "join_trace_ids",
    "name_batch",
    "read_answer",
    "usage_from",
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


_CHECKED_AT_ONCE = 1024


def check_encodable(items: Sequence[Any], name: str) -> None:
    """Check that each item can be encoded (as a call split in batches must before sending the
    first: its batches' bodies are encoded only as they are sent).

    Raises:
        InvalidRequestError: An item holds text that is not valid text (lone surrogates), named
            as `name[position]`.
    """
    for start in range(0, len(items), _CHECKED_AT_ONCE):
        chunk = items[start : start + _CHECKED_AT_ONCE]
        try:
            "".join(chunk).encode()  # an item that is not a string: TypeError
            continue  # the common case: text only, checked in one pass in C
        except (TypeError, UnicodeEncodeError):
            pass
        for position, item in enumerate(chunk, start):
            try:
                encode_body({"item": item})
            except InvalidRequestError as error:
                raise InvalidRequestError(f"{name}[{position}]: {error}") from None


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
    """Token usage of one call, from whichever shape the server used."""

    model_config = ConfigDict(extra="allow", frozen=True)

    input_tokens: StrictInt | None = None
    """Input tokens (query and documents, or the inputs to embed)."""
    output_tokens: StrictInt | None = None
    """Output tokens."""
    image_tokens: StrictInt | None = None
    """Tokens spent on image and video items."""
    total_tokens: StrictInt | None = None
    """Total tokens: as sent by the server, else the sum of the counts above."""
    billed_units: BilledUnits | None = None
    """Billed units, when the server sent them."""


USAGE_COUNTS = ("input_tokens", "output_tokens", "image_tokens", "total_tokens")
"""The counts of a `Usage` (the total last), as servers report and calls sum them."""
_COUNT_NAMES = frozenset(USAGE_COUNTS)
_INT = {int}
_NO_USAGE = dict.fromkeys(Usage.model_fields)


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
        # unchanged, built without validating again.
        return assembled(Usage, {**_NO_USAGE, **counts}, {*counts, "billed_units"}, extra={})
    return Usage.model_validate({**counts, "billed_units": billed})


class UsageSum:
    """The usage of a call's requests, summed as their answers come in: counts, not models; a
    field stays None where no answer reported it."""

    def __init__(self) -> None:
        self._first: Usage | None = None
        self._counts: dict[str, int] = {}
        self._billed: dict[str, int] | None = None
        self._parts = 0

    def add(self, usage: Usage | None) -> None:
        if usage is None:
            return
        self._parts += 1
        self._first = self._first or usage
        counts = self._counts
        for name in USAGE_COUNTS:
            value = getattr(usage, name)
            if value is not None:
                counts[name] = counts.get(name, 0) + value
        if usage.billed_units is not None:
            billed = self._billed = self._billed or {}
            for name in BilledUnits.model_fields:
                value = getattr(usage.billed_units, name)
                if value is not None:
                    billed[name] = billed.get(name, 0) + value

    def total(self) -> Usage | None:
        """The summed usage; one answer's own when only one reported any."""
        if self._parts <= 1:
            return self._first
        billed = None if self._billed is None else BilledUnits(**self._billed)
        return Usage(**self._counts, billed_units=billed)


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


def name_batch(
    error: SiliconFlowError, number: int, span: tuple[int, int], total: int, items: str
) -> SiliconFlowError:
    """Say in `error` which batch failed (`items` `first`..`last`), when a call was split."""
    if total > 1:
        error.batch = number
        note = f"batch {number + 1} of {total} ({items} {span[0]}..{span[1]}) failed: "
        error.args = (note + str(error.args[0] if error.args else ""), *error.args[1:])
    return error


_M = TypeVar("_M", bound=BaseModel)
_new = object.__new__
_set = object.__setattr__


def _slot_setter(name: str) -> Callable[[Any, Any], None]:
    """What sets pydantic's slot `name` of a model (its `__dict__` included): the slot's own
    `__set__`, called directly (`object.__setattr__` looks the slot up and checks the call each
    time), or `object.__setattr__` if this pydantic keeps it elsewhere."""
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
    builds one: for the objects built on every call (one per result or document), where
    validating again or `model_copy`'s generic copying is most of the cost. `fields_set` becomes
    the instance's own: pass a fresh set, or one that already names every field (pydantic adds a
    field's name on assignment, which then changes nothing)."""
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


def join_trace_ids(values: Sequence[str | None]) -> str | None:
    """Trace ids of a call's requests, comma-joined (None when no answer had one)."""
    return ",".join(value for value in values if value) or None


# -- what a body is billed, estimated high -------------------------------------------------------

MEDIA_TOKENS = {"image": 1_700, "video": 16_384}
"""A generous estimate of what one media item is billed, in tokens: the service downsizes images
to about 1.3 megapixels, about 1,700 tokens at 28-pixel patches; a short video's frames add up to
far more. Corrected by the usage each answer reports, like every estimate here."""


class Estimate(NamedTuple):
    """A request's tokens, estimated high: its texts' and its media items'."""

    text: int
    media: int = 0

    @property
    def total(self) -> int:
        return self.text + self.media


def estimate_tokens(items: Iterable[object]) -> Estimate:
    """A deliberately high estimate of the tokens of some inputs (the texts and media of a
    request, without the JSON around them: keys and the model name are not billed).

    A text counts a token per 3 bytes of UTF-8, plus one: about 3 bytes a character fits CJK
    text, and Latin text runs about 4 characters a token, so a limiter that uses it stays under
    the account's real limit. A media item counts `MEDIA_TOKENS`, not the length of its base64
    (a 5 MB image is not 2 million tokens). The estimate is corrected with the server's
    reported usage after each answer.
    """
    text = media = 0
    for item in items:
        if isinstance(item, str):
            text += (len(item) if item.isascii() else len(item.encode())) // 3 + 1
        elif isinstance(item, dict) and len(item) == 1:
            media += MEDIA_TOKENS.get(next(iter(item)), MEDIA_TOKENS["video"])
    return Estimate(text, media)


class TokenEstimates:
    """What a budget books for a request: its estimate, the texts' part scaled by how the
    service billed this model's recent requests of text against their estimates.

    The estimate is high on purpose, and a budget admits a request by it, so what it overstates
    is room in the window that goes unused (as long as the request is in flight, and at the end
    of every window). Scaled by the highest recent ratio of billed to estimated tokens, a
    request of a shape already seen books about what it is billed. A higher ratio applies at
    once; a lower one is approached by a fiftieth of the difference per answer, so one light
    request does not lower the bookings of the heavier ones around it. Only requests of text
    alone teach the ratio, and media are booked at their fixed count: a media item's billing
    says nothing of a text's. Safe across threads: a race loses at most one answer's update.
    """

    _STEP = 0.02
    _LOWEST, _HIGHEST = 0.2, 4.0
    """Bounds of the ratio: a nonsense usage report moves bookings at most this far."""

    def __init__(self) -> None:
        self._ratios: dict[object, float] = {}

    def booked(self, model: object, estimate: Estimate) -> int:
        """The tokens to book for a request of `model` estimated at `estimate`."""
        ratio = self._ratios.get(model)
        if ratio is None:
            return estimate.total
        # Less a millionth: a ratio learned from this very estimate books what was billed, not
        # one more from rounding (a text of one token or more still books one: the ratio is at
        # least a fifth, and every text counts at least one).
        return math.ceil(estimate.text * ratio - 1e-6) + estimate.media

    def learn(self, model: object, estimate: Estimate, billed: int) -> None:
        """Take in what a request of `model` estimated at `estimate` was billed."""
        if estimate.media or estimate.text <= 0 or billed <= 0:
            return
        seen = min(max(billed / estimate.text, self._LOWEST), self._HIGHEST)
        ratio = self._ratios.get(model)
        if ratio is not None and seen < ratio:
            seen = ratio - self._STEP * (ratio - seen)
        self._ratios[model] = seen


_SET_AT_MOST = 1 << 15
"""Up to this many results, repeats are found with a set (the fastest way); beyond it, with a
byte per document (a set of 200,000 ints holds 8 MiB)."""


def distinct_indices(indices: list[int], count: int) -> int:
    """How many different indices there are, each below `count`."""
    if len(indices) <= _SET_AT_MOST:
        return len(set(indices))
    marks = bytearray(count)
    deque(map(marks.__setitem__, indices, repeat(1)), maxlen=0)
    return count - marks.count(0)


def find_bad_index(
    indices: Sequence[int], count: int, content: bytes, trace_id: str | None
) -> None:
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
