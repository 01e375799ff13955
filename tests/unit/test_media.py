"""Media item helpers: URLs, data URIs, bytes and files, with clear errors for everything else."""

from __future__ import annotations

import asyncio
import base64
import pickle
from collections.abc import Mapping
from pathlib import Path

import pytest

from siliconflow_rerank import InlineMedia, InvalidRequestError, image_item, video_item
from siliconflow_rerank._media import normalize_item

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 16


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def sent(item: Mapping[str, object]) -> dict[str, str]:
    """The item as it goes on the wire: inline media become their data URI."""
    ((kind, value),) = item.items()
    assert isinstance(value, str | InlineMedia)
    return {kind: value if isinstance(value, str) else value.data_uri()}


def test_https_url_is_sent_as_is():
    assert image_item("https://example.com/a.jpg") == {"image": "https://example.com/a.jpg"}
    assert video_item("https://example.com/a.mp4") == {"video": "https://example.com/a.mp4"}


def test_data_uri_is_sent_as_is():
    uri = data_uri("image/png", PNG)
    assert image_item(uri) == {"image": uri}


@pytest.mark.parametrize(("data", "mime"), [(PNG, "image/png"), (JPEG, "image/jpeg")])
def test_bytes_become_a_data_uri_with_sniffed_type(data, mime):
    assert sent(image_item(data)) == {"image": data_uri(mime, data)}


def test_bytes_with_explicit_type():
    assert sent(image_item(b"raw", mime_type="image/avif")) == {
        "image": data_uri("image/avif", b"raw")
    }


def test_video_bytes_are_sniffed():
    assert sent(video_item(MP4)) == {"video": data_uri("video/mp4", MP4)}


def test_file_becomes_a_data_uri_typed_by_extension(tmp_path: Path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(JPEG)
    assert sent(image_item(path)) == {"image": data_uri("image/jpeg", JPEG)}


def test_file_with_unknown_extension_is_sniffed(tmp_path: Path):
    path = tmp_path / "upload.bin-data"
    path.write_bytes(PNG)
    assert sent(image_item(path)) == {"image": data_uri("image/png", PNG)}


def test_video_file(tmp_path: Path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(MP4)
    assert sent(video_item(path)) == {"video": data_uri("video/mp4", MP4)}


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("photo.jpg", "pass a pathlib.Path"),
        ("ftp://example.com/a.png", "neither an http"),
        ("https://", "neither an http"),
        ("data:image/png,notbase64", "base64"),
        (b"", "empty"),
        (b"plain text, no magic", "MIME type"),
        (JPEG + b"x", None),
        (42, "got int"),
    ],
)
def test_bad_sources_are_refused(source, fragment):
    if fragment is None:
        assert sent(image_item(source))["image"].startswith("data:image/jpeg;base64,")
        return
    with pytest.raises(InvalidRequestError, match=fragment):
        image_item(source)


def test_missing_file(tmp_path: Path):
    with pytest.raises(InvalidRequestError, match="cannot read image file"):
        image_item(tmp_path / "nope.png")


def test_directory_instead_of_file(tmp_path: Path):
    with pytest.raises(InvalidRequestError, match="cannot read image file"):
        image_item(tmp_path)


def test_file_over_the_limit_is_refused_before_reading(tmp_path: Path):
    path = tmp_path / "big.png"
    path.write_bytes(PNG + b"\x00" * 100)
    with pytest.raises(InvalidRequestError, match="over the 50-byte limit"):
        image_item(path, max_bytes=50)


def test_default_image_limit_refuses_a_50_mb_image():
    with pytest.raises(InvalidRequestError, match="limit"):
        image_item(PNG + bytes(50 * 1024 * 1024))


def test_wrong_kind_is_refused(tmp_path: Path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(MP4)
    with pytest.raises(InvalidRequestError, match="not image"):
        image_item(path)
    with pytest.raises(InvalidRequestError, match="not video"):
        video_item(PNG)


def test_plain_string_paths_only_with_allow_paths(tmp_path: Path):
    path = tmp_path / "photo.png"
    path.write_bytes(PNG)
    with pytest.raises(InvalidRequestError, match="neither an http"):
        image_item(str(path))
    assert sent(image_item(str(path), allow_paths=True)) == {"image": data_uri("image/png", PNG)}
    assert sent(image_item(f"file://{path}", allow_paths=True)) == {
        "image": data_uri("image/png", PNG)
    }
    assert image_item("https://x.test/a.png", allow_paths=True) == {"image": "https://x.test/a.png"}


# -- inline media: held as bytes or a path, encoded piece by piece while sent ----------------------

CHUNK = 3 * 256 * 1024  # the raw piece size InlineMedia encodes at a time


def test_bytes_and_files_are_held_unencoded(tmp_path: Path):
    path = tmp_path / "photo.png"
    path.write_bytes(PNG)
    from_file = image_item(path)["image"]
    from_bytes = image_item(PNG)["image"]
    assert isinstance(from_file, InlineMedia)
    assert isinstance(from_bytes, InlineMedia)
    assert (from_file.path, from_file.size, from_file.mime_type) == (path, len(PNG), "image/png")
    assert from_bytes.path is None
    assert "base64" not in repr(from_file) + repr(from_bytes)


@pytest.mark.parametrize("size", [1, 2, 3, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 2])
@pytest.mark.parametrize("held", ["bytes", "file"])
def test_pieces_join_to_the_exact_data_uri(tmp_path: Path, size: int, held: str):
    data = (PNG + bytes(range(256)) * (size // 256 + 1))[:size]
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    media = InlineMedia("image", "image/png", data=data if held == "bytes" else None,
                        path=path if held == "file" else None)  # fmt: skip
    expected = data_uri("image/png", data).encode()
    pieces = list(media.chunks())
    assert b"".join(pieces) == expected
    assert media.encoded_length == len(expected)
    assert media.data_uri() == expected.decode()
    assert max(len(p) for p in pieces) <= 4 * CHUNK // 3  # never the whole file at once

    async def collect() -> list[bytes]:
        return [piece async for piece in media.achunks()]

    assert asyncio.run(collect()) == pieces


def test_a_file_that_changed_size_is_refused(tmp_path: Path):
    path = tmp_path / "photo.png"
    path.write_bytes(PNG)
    media = image_item(path)["image"]
    assert isinstance(media, InlineMedia)
    path.write_bytes(PNG + b"more")
    with pytest.raises(InvalidRequestError, match="changed size since its item was made"):
        media.verify()
    with pytest.raises(InvalidRequestError, match="changed size"):
        list(media.chunks())
    path.unlink()
    with pytest.raises(InvalidRequestError, match="cannot read image file"):
        media.verify()


def test_a_file_that_shrinks_while_read_is_refused(tmp_path: Path):
    path = tmp_path / "big.png"
    path.write_bytes(PNG + bytes(2 * CHUNK))
    media = image_item(path)["image"]
    assert isinstance(media, InlineMedia)
    pieces = media.chunks()
    next(pieces)  # the data URI header
    next(pieces)  # the first piece: the file is open now
    path.write_bytes(PNG)
    with pytest.raises(InvalidRequestError, match="shrank while being sent"):
        next(pieces)


def test_inline_media_pickles_compares_and_fingerprints_by_content(tmp_path: Path):
    path = tmp_path / "photo.png"
    path.write_bytes(PNG)
    from_file, from_bytes = image_item(path)["image"], image_item(PNG)["image"]
    assert isinstance(from_file, InlineMedia)
    assert isinstance(from_bytes, InlineMedia)
    assert pickle.loads(pickle.dumps(from_file)) == from_file
    assert pickle.loads(pickle.dumps(from_bytes)) == from_bytes
    assert from_file != from_bytes  # different sources...
    assert from_file.fingerprint() == from_bytes.fingerprint()  # ...the same content
    other = image_item(JPEG)["image"]
    assert isinstance(other, InlineMedia)
    assert other.fingerprint() != from_bytes.fingerprint()


def test_inline_media_must_sit_under_its_own_kind():
    media = video_item(MP4)["video"]
    with pytest.raises(InvalidRequestError, match="puts video content under 'image'"):
        normalize_item({"image": media}, "documents[0]")
    assert normalize_item({"video": media}, "documents[0]") == {"video": media}
    with pytest.raises(TypeError, match="exactly one"):
        InlineMedia("image", "image/png")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("data:text/html,<script>x</script>", "data:image/...;base64"),
        ("data:text/html;base64,PGI+", "data:image/...;base64"),
        ("data:video/mp4;base64,AAAA", "data:image/...;base64"),
        ("data:image/png;base64,", "not valid base64"),
        ("data:image/png;base64,abc", "not valid base64"),
        ("data:image/png;base64,ab!d", "not valid base64"),
        ("data:image/png;base64,AAAA AAAA", "not valid base64"),
    ],
)
def test_data_uris_must_be_base64_of_their_media_family(value, fragment):
    with pytest.raises(InvalidRequestError, match=fragment.replace(".", r"\.")):
        image_item(value)
    with pytest.raises(InvalidRequestError, match=fragment.replace(".", r"\.")):
        normalize_item({"image": value}, "documents[0]")


def test_a_valid_data_uri_is_kept_as_it_is():
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert image_item(uri) == {"image": uri}
    assert normalize_item({"image": uri}, "documents[0]") == {"image": uri}
