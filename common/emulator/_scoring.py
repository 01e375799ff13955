"""The emulator's stand-in for a reranker: a deterministic lexical relevance score.

This is not a model. A (query, document) pair scores by BM25-style term overlap squashed into 0..1,
computed from the pair alone (no corpus statistics), so that splitting a list across requests never
changes a score, just as with a real cross-encoder. Latin text is split into words, CJK text into
characters, scored as unigrams and bigrams. A word scores by its light stem (plurals folded, so
"apples" meets "Apple") and, where the stem differs, by its exact form too, so that for "keep apples
fresh" a document about "apples" ranks above one about "Apple". Media items score from the words
of the file name in their URL, or for inline data from the readable words inside the file (for
example a PNG text chunk): a stand-in for vision.
"""

from __future__ import annotations

import array
import base64
import binascii
import hashlib
import itertools
import math
import re
import sys
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9]+|[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]+")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_ASCII_WORD = re.compile(rb"[A-Za-z]{3,}")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "in",
        "is",
        "it",
        "of",
        "on",
        "or",
        "the",
        "to",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "with",
        "you",
    ]
)
_PNG_CHUNK_TYPES = frozenset(
    {"text", "itxt", "ztxt", "ihdr", "idat", "iend", "srgb", "phys", "gama"}
)
_FILE_NOISE = frozenset(
    {"png", "jfif", "exif", "title", "comment", "description", "software", "author"}
)
_K1 = 1.2
_B = 0.75
_AVERAGE_LENGTH = 48.0
_SQUASH = 0.35
_INLINE_SCAN_BYTES = 1 << 20
IMAGE_TOKENS = 256
VIDEO_TOKENS = 1024


def units(text: str) -> list[str]:
    """Split text into the emulator's tokens: lowercase words, and single CJK characters."""
    out: list[str] = []
    for run in _WORD.findall(text.lower()):
        if _CJK.match(run):
            out.extend(run)
        elif run in _STOPWORDS:
            out.append("")  # counted as a token, never matched
        else:
            out.append(run)
    return out


def _stem(word: str) -> str:
    # A light plural folding: "apples" -> "apple", "boxes" stays apart from "box" (good enough).
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def scoring_terms(tokens: Sequence[str]) -> list[str]:
    """The terms a token list scores with: stems, exact forms where they differ from the stem
    (marked with `=`), and bigrams of adjacent CJK characters."""
    stems = [_stem(token) for token in tokens]
    exact = [f"={token}" for token, stem in zip(tokens, stems, strict=True) if token != stem]
    terms = stems + exact
    terms.extend(a + b for a, b in itertools.pairwise(tokens) if _CJK.match(a) and _CJK.match(b))
    return terms


def media_tokens(source: str) -> list[str]:
    """Scoring tokens for an image or video: URL words, or readable words inside inline data."""
    if source.startswith("data:"):
        _, _, payload = source.partition(",")
        try:
            raw = base64.b64decode(payload[: _INLINE_SCAN_BYTES // 3 * 4], validate=False)
        except (binascii.Error, ValueError):
            return []
        words = (w.decode("ascii").lower() for w in _ASCII_WORD.findall(raw))
        # PNG chunks start with their type ("tEXt<keyword>\0<text>", "IDAT<data>"): drop the
        # type, and the usual keywords, so that only the caption's words are left.
        words = (w[4:] if w[:4] in _PNG_CHUNK_TYPES else w for w in words)
        return [w for w in words if len(w) >= 3 and w not in _FILE_NOISE]
    name = source.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return units(re.sub(r"\.[a-z0-9]{2,4}$", "", name.lower()))


def relevance(query: Sequence[str], document: Sequence[str]) -> float:
    """Score one (query, document) pair from their scoring terms, in 0..1."""
    if not query or not document:
        return 0.0
    counts = Counter(document)
    norm = _K1 * (1 - _B + _B * len(document) / _AVERAGE_LENGTH)
    terms = set(query) - {""}
    if not terms:
        return 0.0
    total = 0.0
    for term in terms:
        tf = counts.get(term, 0)
        if tf:
            total += tf * (_K1 + 1) / (tf + norm)
    total /= len(terms)
    return round(total / (total + _SQUASH), 6)


def chunks(tokens: list[str], size: int, overlap: int, limit: int) -> list[list[str]]:
    """Cut a token list into at most `limit` chunks of `size` tokens, `overlap` tokens shared."""
    if len(tokens) <= size:
        return [tokens]
    step = max(size - overlap, 1)
    out = [tokens[start : start + size] for start in range(0, len(tokens) - overlap, step)]
    return out[:limit]


def embedding(model: str, terms: Sequence[str], dimensions: int) -> list[float]:
    """A unit vector for a term list: each distinct term hashed to one signed slot, weighted by
    1 + log(count). Texts that share terms point the same way, so cosine similarity ranks obvious
    matches first. The model name seeds the hash: different models, different spaces."""
    vector = [0.0] * dimensions
    for term, count in Counter(t for t in terms if t).items():
        digest = hashlib.blake2b(f"{model}\0{term}".encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:4], "little") % dimensions
        vector[slot] += (1.0 + math.log(count)) * (1.0 if digest[4] & 1 else -1.0)
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:  # nothing to weigh (only stopwords): still a unit vector
        vector[0], norm = 1.0, 1.0
    return [round(v / norm, 6) for v in vector]


def float32_base64(vector: Sequence[float]) -> str:
    """Little-endian float32 values, base64-encoded: `encoding_format="base64"` on the wire."""
    values = array.array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def float32_values(encoded: str) -> list[float]:
    """The floats of a `float32_base64` string (the emulator reads its own vectors back)."""
    values = array.array("f")
    values.frombytes(base64.b64decode(encoded, validate=True))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()
