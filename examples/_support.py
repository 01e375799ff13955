"""Shared by the examples: use the real API when a key is set, else a local emulator."""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from siliconflow_rerank.emulator import RerankEmulator


@contextlib.contextmanager
def real_api_or_emulator() -> Iterator[None]:
    """Use SiliconFlow if SILICONFLOW_API_KEY is set; otherwise serve a local emulator and point
    SILICONFLOW_API_KEY / SILICONFLOW_BASE_URL at it for the duration, saying so."""
    if os.environ.get("SILICONFLOW_API_KEY"):
        print("Using the SiliconFlow API (SILICONFLOW_API_KEY is set).\n")
        yield
        return
    with RerankEmulator() as emulator:
        print(
            "SILICONFLOW_API_KEY is not set: using the bundled local emulator at "
            f"{emulator.base_url}.\nIts scores are lexical stand-ins, not a model's.\n"
        )
        saved = {
            name: os.environ.get(name) for name in ("SILICONFLOW_API_KEY", "SILICONFLOW_BASE_URL")
        }
        os.environ["SILICONFLOW_API_KEY"] = "local-emulator"
        os.environ["SILICONFLOW_BASE_URL"] = emulator.base_url
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def picture(caption: str, rgb: tuple[int, int, int] = (255, 0, 0), size: int = 32) -> bytes:
    """A valid PNG of one colour, with `caption` in a tEXt chunk: the real vision models see the
    colour, the offline emulator reads the caption in place of vision."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    rows = (b"\x00" + bytes(rgb) * size) * size
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"tEXt", b"Description\x00" + caption.encode())
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


# The multimodal RAG examples' corpus: three notes and three pictures, one for each note's topic.
NOTES = [
    "Red apples keep for weeks in the fridge crisper drawer.",
    "Bananas turn brown quickly in the fridge; keep them on the counter.",
    "The number 42 bus runs every ten minutes in the morning.",
]
PICTURES = {  # file name: (caption, colour)
    "red-apple.png": ("a red apple", (200, 20, 30)),
    "banana.png": ("a yellow banana", (240, 220, 40)),
    "bus.png": ("a blue city bus", (30, 60, 200)),
}


def write_pictures(folder: str | Path) -> list[Path]:
    """Write the PICTURES into `folder`; return their paths."""
    paths = []
    for name, (caption, colour) in PICTURES.items():
        paths.append(Path(folder) / name)
        paths[-1].write_bytes(picture(caption, colour))
    return paths
