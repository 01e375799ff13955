"""Media item helpers: URLs, data URIs, bytes and files, with clear errors for everything else."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from common import InvalidRequestError, image_item, video_item

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 16


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_https_url_is_sent_as_is():
    assert image_item("https://example.com/a.jpg") == {"image": "https://example.com/a.jpg"}
    assert video_item("https://example.com/a.mp4") == {"video": "https://example.com/a.mp4"}


def test_data_uri_is_sent_as_is():
    uri = data_uri("image/png", PNG)
    assert image_item(uri) == {"image": uri}


@pytest.mark.parametrize(("data", "mime"), [(PNG, "image/png"), (JPEG, "image/jpeg")])
def test_bytes_become_a_data_uri_with_sniffed_type(data, mime):
    assert image_item(data) == {"image": data_uri(mime, data)}


def test_bytes_with_explicit_type():
    assert image_item(b"raw", mime_type="image/avif") == {"image": data_uri("image/avif", b"raw")}


def test_video_bytes_are_sniffed():
    assert video_item(MP4) == {"video": data_uri("video/mp4", MP4)}


def test_file_becomes_a_data_uri_typed_by_extension(tmp_path: Path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(JPEG)
    assert image_item(path) == {"image": data_uri("image/jpeg", JPEG)}


def test_file_with_unknown_extension_is_sniffed(tmp_path: Path):
    path = tmp_path / "upload.bin-data"
    path.write_bytes(PNG)
    assert image_item(path) == {"image": data_uri("image/png", PNG)}


def test_video_file(tmp_path: Path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(MP4)
    assert video_item(path) == {"video": data_uri("video/mp4", MP4)}


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("photo.jpg", "pass a pathlib.Path"),
        ("ftp://example.com/a.png", "neither an http"),
        ("https://", "neither an http"),
        ("data:image/png,notbase64", "neither an http"),
        (b"", "empty"),
        (b"plain text, no magic", "MIME type"),
        (JPEG + b"x", None),
        (42, "got int"),
    ],
)
def test_bad_sources_are_refused(source, fragment):
    if fragment is None:
        assert image_item(source)["image"].startswith("data:image/jpeg;base64,")
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
    assert image_item(str(path), allow_paths=True) == {"image": data_uri("image/png", PNG)}
    assert image_item(f"file://{path}", allow_paths=True) == {"image": data_uri("image/png", PNG)}
    assert image_item("https://x.test/a.png", allow_paths=True) == {"image": "https://x.test/a.png"}
