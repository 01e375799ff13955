"""Rerank input items (text, image, video) and the helpers that build media items safely."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import mimetypes
import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Literal, TypedDict, cast

from ._exceptions import InvalidRequestError

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_VIDEO_BYTES",
    "DocumentItem",
    "ImageItem",
    "InlineMedia",
    "ItemKind",
    "QueryItem",
    "TextItem",
    "VideoItem",
    "WireItem",
    "image_item",
    "item_kind",
    "normalize_item",
    "normalize_items",
    "video_item",
]


class TextItem(TypedDict):
    """A text item: `{"text": "..."}` (sent as a plain string)."""

    text: str


ItemKind = Literal["text", "image", "video"]

_CHUNK = 3 * 256 * 1024
"""Raw bytes encoded at a time: a multiple of 3, so the pieces' base64 joins into one string."""


class InlineMedia:
    """Image or video content sent inline as a base64 data URI, encoded only while it is sent.

    `image_item` and `video_item` return one for bytes and local files. It holds the bytes, or
    just the path, and streams the data URI into the request body piece by piece, so a large file
    is never in memory whole, let alone as base64 text. Each request re-reads the file and
    refuses it, before sending, if its size changed since the item was made.
    """

    __slots__ = ("_data", "kind", "mime_type", "path", "size")

    def __init__(
        self,
        kind: Literal["image", "video"],
        mime_type: str,
        *,
        data: bytes | None = None,
        path: Path | None = None,
    ) -> None:
        """Wrap `data` or the file at `path` (exactly one); use `image_item`/`video_item`."""
        if (data is None) == (path is None):
            raise TypeError("InlineMedia takes exactly one of data= and path=")
        self.kind = kind
        """`"image"` or `"video"`."""
        self.mime_type = mime_type
        """The MIME type that goes into the data URI."""
        self.path = path
        """The file the content is read from at send time, or None for in-memory bytes."""
        self._data = data
        self.size = len(data) if data is not None else _file_size(kind, cast(Path, path))
        """Size of the raw content in bytes."""

    def __repr__(self) -> str:
        origin = f"path={str(self.path)!r}" if self.path is not None else "data=<bytes>"
        return f"InlineMedia({self.kind!r}, {self.mime_type!r}, {origin}, size={self.size})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InlineMedia):
            return NotImplemented
        return (self.kind, self.mime_type, self.path, self._data) == (
            other.kind,
            other.mime_type,
            other.path,
            other._data,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.mime_type, self.path, self.size))

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self.kind, self.mime_type, self._data, self.path))

    @property
    def prefix(self) -> bytes:
        """The data URI's header, `data:<mime>;base64,`."""
        return f"data:{self.mime_type};base64,".encode("ascii")

    @property
    def encoded_length(self) -> int:
        """Length in bytes of the whole data URI."""
        return len(self.prefix) + 4 * -(-self.size // 3)

    def verify(self) -> None:
        """Check that a file still has the size it had when the item was made.

        Raises:
            InvalidRequestError: The file is gone, unreadable or changed size.
        """
        if self.path is not None:
            self._check_size(_file_size(self.kind, self.path))

    def chunks(self) -> Iterator[bytes]:
        """The data URI as ASCII bytes, in pieces of about 1 MiB."""
        yield self.prefix
        # map() keeps no reference to a raw piece once it is encoded (a loop variable would).
        yield from map(base64.b64encode, self._pieces())

    async def achunks(self) -> AsyncIterator[bytes]:
        """As `chunks`, with the file read in a worker thread so the event loop never blocks."""
        if self._data is not None:
            for chunk in self.chunks():
                yield chunk
            return
        yield self.prefix
        file = await asyncio.to_thread(self._open)
        try:
            for start in range(0, self.size, _CHUNK):
                yield base64.b64encode(await asyncio.to_thread(self._read, file, start))
        finally:
            file.close()

    def data_uri(self) -> str:
        """The whole data URI as one string (this builds it in memory)."""
        return b"".join(self.chunks()).decode("ascii")

    def fingerprint(self) -> str:
        """A digest of the MIME type and content, read in pieces (used for cache keys)."""
        digest = hashlib.blake2b(self.prefix, digest_size=20)
        for piece in self._pieces():
            digest.update(piece)
        return f"{self.kind}:{digest.hexdigest()}"

    def _pieces(self) -> Iterator[bytes | memoryview]:
        """The raw content, `_CHUNK` bytes at a time (the bytes held, or the file read)."""
        if self._data is not None:
            view = memoryview(self._data)
            for start in range(0, self.size, _CHUNK):
                yield view[start : start + _CHUNK]
            return
        with self._open() as file:
            for start in range(0, self.size, _CHUNK):
                yield self._read(file, start)

    def _check_size(self, size: int) -> None:
        if size != self.size:
            raise InvalidRequestError(
                f"{self.kind} file {self.path} changed size since its item was made "
                f"({self.size} bytes, now {size}); build the item again"
            )

    def _open(self) -> IO[bytes]:
        path = cast(Path, self.path)
        try:
            file = path.open("rb")
        except OSError as error:
            raise _unreadable(self.kind, path, error) from error
        try:
            self._check_size(os.fstat(file.fileno()).st_size)
        except InvalidRequestError:
            file.close()
            raise
        return file

    def _read(self, file: IO[bytes], start: int) -> bytes:
        """The piece at `start`: exactly the bytes the Content-Length already promised."""
        want = min(_CHUNK, self.size - start)
        piece = file.read(want)
        if len(piece) != want:
            raise InvalidRequestError(f"{self.kind} file {self.path} shrank while being sent")
        return piece


def _rebuild(
    kind: Literal["image", "video"], mime_type: str, data: bytes | None, path: Path | None
) -> InlineMedia:
    return InlineMedia(kind, mime_type, data=data, path=path)


def _file_size(kind: str, path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as error:
        raise _unreadable(kind, path, error) from error


def _file_head(kind: str, path: Path) -> bytes:
    """The first bytes of a file, to sniff its type (reading them also proves it readable)."""
    try:
        with path.open("rb") as file:
            return file.read(16)
    except OSError as error:
        raise _unreadable(kind, path, error) from error


def _unreadable(kind: str, path: Path, error: OSError) -> InvalidRequestError:
    return InvalidRequestError(f"cannot read {kind} file {path}: {error}")


class ImageItem(TypedDict):
    """An image item: `{"image": <https URL, data URI or InlineMedia>}`."""

    image: str | InlineMedia


class VideoItem(TypedDict):
    """A video item: `{"video": <https URL, data URI or InlineMedia>}`."""

    video: str | InlineMedia


DocumentItem = str | TextItem | ImageItem | VideoItem
"""One document to rank: a string or a text, image or video item."""

QueryItem = str | TextItem | ImageItem | VideoItem
"""A query: a string or a text, image or video item."""

WireItem = str | dict[str, str | InlineMedia]
"""A normalized item: text as a plain string, media as a one-key dict."""

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


_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _checked_data_uri(kind: str, value: str, what: str) -> str:
    """`value` if it is a base64 data URI of the `kind` family, else a clear error."""
    match = _DATA_URI.match(value)
    if match is None or not match.group(1).lower().startswith(f"{kind}/"):
        raise InvalidRequestError(
            f"{what} must be an http(s) URL or a data:{kind}/...;base64,... URI; got {value[:40]!r}"
        )
    payload = value[match.end() :]
    if not payload or len(payload) % 4 or not _BASE64.fullmatch(payload):
        raise InvalidRequestError(f"{what}: the data URI's content is not valid base64")
    return value


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
) -> str | InlineMedia:
    if isinstance(source, str):
        if _is_url(source):
            return source
        if source.startswith("data:"):
            return _checked_data_uri(kind, source, f"{kind} source")
        if not allow_paths:
            raise InvalidRequestError(
                f"{kind} source {source[:80]!r} is neither an http(s) URL nor a data URI "
                "(a local file is read only when asked: pass a pathlib.Path, or allow_paths=True)"
            )
        source = Path(source.removeprefix("file://"))
    data: bytes | None = None
    path: Path | None = None
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)  # a copy only of mutable buffers
        origin, size = "bytes", len(data)
    elif isinstance(source, os.PathLike):
        path = Path(source)
        origin, size = f"file {path}", _file_size(kind, path)
        mime_type = mime_type or mimetypes.guess_type(path.name)[0]
    else:
        raise InvalidRequestError(
            f"{kind} source must be a URL or data URI string, bytes, or a path; "
            f"got {type(source).__name__}"
        )
    if not size:
        raise InvalidRequestError(f"{kind} {origin} is empty")
    if size > max_bytes:
        raise InvalidRequestError(
            f"{kind} {origin} is {size} bytes, over the {max_bytes}-byte limit"
        )
    # Read only now, so that an empty or oversized file is refused before any of it is read.
    head = data[:16] if data is not None else _file_head(kind, cast(Path, path))
    mime_type = mime_type or _sniff(head)
    if mime_type is None:
        raise InvalidRequestError(f"cannot tell the MIME type of {kind} {origin}; pass mime_type=")
    if not mime_type.startswith(f"{kind}/"):
        raise InvalidRequestError(f"{kind} {origin} has MIME type {mime_type}, not {kind}/*")
    return InlineMedia(kind, mime_type, data=data, path=path)


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
            unless `allow_paths` is set, so a file is only read when the caller says so. Bytes
            and files become an `InlineMedia`, base64-encoded piece by piece while the request
            is sent; a file is checked now and read then.
        mime_type: The MIME type of bytes or a file; guessed from the file name or the content
            when omitted.
        max_bytes: Refuse inline content larger than this.
        allow_paths: Read a plain string (or a `file://` URI) as a local file path. Leave it off
            for strings from untrusted places, such as loader metadata.

    Returns:
        `{"image": <URL, data URI or InlineMedia>}`.

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
        `{"video": <URL, data URI or InlineMedia>}`.

    Raises:
        InvalidRequestError: The source is malformed, unreadable, empty, too large or not a video.
    """
    return {"video": _media_item("video", source, mime_type, max_bytes, allow_paths)}


def item_kind(item: WireItem) -> ItemKind:
    """Return the kind of an already normalized item."""
    if isinstance(item, str):
        return "text"
    return cast(ItemKind, next(iter(item)))


def normalize_item(item: object, what: str) -> WireItem:
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
            if value.startswith("data:"):
                _checked_data_uri(key, value, f"{what}[{key!r}]")
            return {key: value}
        if isinstance(value, InlineMedia):
            if value.kind != key:
                raise InvalidRequestError(f"{what} puts {value.kind} content under {key!r}")
            return {key: value}
    shown = repr(item)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise InvalidRequestError(
        f"{what} must be a string or one of {{'text': str}}, {{'image': str}}, "
        f"{{'video': str}} (media may also be an image_item/video_item InlineMedia); "
        f"got {type(item).__name__} {shown}"
    )


def normalize_items(value: object, name: str, noun: str) -> list[WireItem]:
    """`value`, one string or a sequence of items, as the items to send (`name[i]` names an
    item in an error; `noun` what an item is).

    Raises:
        InvalidRequestError: Not a string or a sequence, empty, or an item that is none.
    """
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, Sequence):
        raise InvalidRequestError(
            f"{name} must be a string or a sequence of items, got {type(value).__name__}"
        )
    if len(value) == 0:
        raise InvalidRequestError(f"{name} must hold at least one {noun}")
    if set(map(type, value)) == {str}:  # the common case: strings, copied in one pass in C
        return cast("list[WireItem]", list(value))
    return [
        item if type(item) is str else normalize_item(item, f"{name}[{i}]")
        for i, item in enumerate(value)
    ]
