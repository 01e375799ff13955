"""Rerank input items (text, image, video) and the helpers that build media items safely."""

from __future__ import annotations

import base64
import mimetypes
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypedDict, cast

from ._exceptions import InvalidRequestError

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_VIDEO_BYTES",
    "DocumentItem",
    "ImageItem",
    "ItemKind",
    "QueryItem",
    "TextItem",
    "VideoItem",
    "image_item",
    "item_kind",
    "normalize_item",
    "video_item",
]


class TextItem(TypedDict):
    """A text item: `{"text": "..."}` (sent as a plain string)."""

    text: str


class ImageItem(TypedDict):
    """An image item: `{"image": "<https URL or data URI>"}`."""

    image: str


class VideoItem(TypedDict):
    """A video item: `{"video": "<https URL or data URI>"}`."""

    video: str


DocumentItem = str | TextItem | ImageItem | VideoItem
"""One document to rank: a string or a text, image or video item."""

QueryItem = str | TextItem | ImageItem | VideoItem
"""A query: a string or a text, image or video item."""

ItemKind = Literal["text", "image", "video"]

MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""Largest image the helpers inline as a data URI (the vendor downsizes large images anyway)."""

MAX_VIDEO_BYTES = 50 * 1024 * 1024
"""Largest video the helpers will inline as a data URI."""

_KINDS: tuple[ItemKind, ...] = ("text", "image", "video")
_DATA_URI = re.compile(r"^data:([\w.+-]+/[\w.+-]+)(;[\w.+-]+=[\w.+-]+)*;base64,", re.ASCII)
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"\x1a\x45\xdf\xa3", 0, "video/webm"),
    (b"ftypqt", 4, "video/quicktime"),
    (b"ftyp", 4, "video/mp4"),
)


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return mime
    return None


def _is_url(value: str) -> bool:
    return value.startswith(("https://", "http://")) and len(value) > len("https://")


def _media_item(
    kind: Literal["image", "video"],
    source: str | bytes | os.PathLike[str],
    mime_type: str | None,
    max_bytes: int,
    allow_paths: bool,
) -> str:
    if isinstance(source, str):
        if _is_url(source) or _DATA_URI.match(source):
            return source
        if not allow_paths:
            raise InvalidRequestError(
                f"{kind} source {source[:80]!r} is neither an http(s) URL nor a data URI "
                "(a local file is read only when asked: pass a pathlib.Path, or allow_paths=True)"
            )
        source = Path(source.removeprefix("file://"))
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        origin = "bytes"
    elif isinstance(source, os.PathLike):
        path = Path(source)
        origin = str(path)
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise InvalidRequestError(
                    f"{kind} file {origin} is {size} bytes, over the {max_bytes}-byte limit"
                )
            data = path.read_bytes()
        except OSError as error:
            raise InvalidRequestError(f"cannot read {kind} file {origin}: {error}") from error
        mime_type = mime_type or mimetypes.guess_type(path.name)[0]
    else:
        raise InvalidRequestError(
            f"{kind} source must be a URL or data URI string, bytes, or a path; "
            f"got {type(source).__name__}"
        )
    if not data:
        raise InvalidRequestError(f"{kind} {origin} is empty")
    if len(data) > max_bytes:
        raise InvalidRequestError(
            f"{kind} {origin} is {len(data)} bytes, over the {max_bytes}-byte limit"
        )
    mime_type = mime_type or _sniff(data)
    if mime_type is None:
        raise InvalidRequestError(f"cannot tell the MIME type of {kind} {origin}; pass mime_type=")
    if not mime_type.startswith(f"{kind}/"):
        raise InvalidRequestError(f"{kind} {origin} has MIME type {mime_type}, not {kind}/*")
    # Build the URI with as few whole copies alive at once as Python allows: large media is the
    # memory peak of a call (the file, then its base64, then the URI string).
    encoded = base64.b64encode(data)
    del data
    encoded = f"data:{mime_type};base64,".encode("ascii") + encoded
    return encoded.decode("ascii")


def image_item(
    source: str | bytes | os.PathLike[str],
    *,
    mime_type: str | None = None,
    max_bytes: int = MAX_IMAGE_BYTES,
    allow_paths: bool = False,
) -> ImageItem:
    """Build an image item from a URL, a data URI, raw bytes or a local file.

    Args:
        source: An `https://` (or `http://`) URL or a `data:` URI, sent as is; raw bytes; or a
            `pathlib.Path` to read. A plain string that is neither URL nor data URI is refused
            unless `allow_paths` is set, so a file is only read when the caller says so.
        mime_type: The MIME type of bytes or a file; guessed from the file name or the content
            when omitted.
        max_bytes: Refuse inline content larger than this.
        allow_paths: Read a plain string (or a `file://` URI) as a local file path. Leave it off
            for strings from untrusted places, such as loader metadata.

    Returns:
        `{"image": <URL or data URI>}`.

    Raises:
        InvalidRequestError: The source is malformed, unreadable, empty, too large or not an image.
    """
    return {"image": _media_item("image", source, mime_type, max_bytes, allow_paths)}


def video_item(
    source: str | bytes | os.PathLike[str],
    *,
    mime_type: str | None = None,
    max_bytes: int = MAX_VIDEO_BYTES,
    allow_paths: bool = False,
) -> VideoItem:
    """Build a video item from a URL, a data URI, raw bytes or a local file.

    Works as `image_item`, for `video/*` content.

    Returns:
        `{"video": <URL or data URI>}`.

    Raises:
        InvalidRequestError: The source is malformed, unreadable, empty, too large or not a video.
    """
    return {"video": _media_item("video", source, mime_type, max_bytes, allow_paths)}


def item_kind(item: str | Mapping[str, str]) -> ItemKind:
    """Return the kind of an already normalized item."""
    if isinstance(item, str):
        return "text"
    return cast(ItemKind, next(iter(item)))


def normalize_item(item: object, what: str) -> str | dict[str, str]:
    """Check one query or document item and return its wire form.

    Text items become plain strings (accepted by every model and by compatible servers); image and
    video items become one-key dicts.

    Raises:
        InvalidRequestError: The item is none of the four accepted shapes.
    """
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping) and len(item) == 1:
        ((key, value),) = item.items()
        if key in _KINDS and isinstance(value, str):
            if key == "text":
                return value
            if not value.strip():
                raise InvalidRequestError(f"{what} has an empty {key!r} value")
            return {key: value}
    shown = repr(item)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise InvalidRequestError(
        f"{what} must be a string or one of {{'text': str}}, {{'image': str}}, "
        f"{{'video': str}}; got {type(item).__name__} {shown}"
    )
