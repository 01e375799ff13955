"""Per-call options: each endpoint's options object decides its cache key, field by field."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from siliconflow_rerank import EmbeddingCache, EmbeddingOptions, RerankCache, RerankOptions
from siliconflow_rerank._options import key_prefix

from ..helpers import pipeline_for

# For each endpoint: a base call's options, and for every field a second value and whether a
# cached answer of the base may serve a call with that value (only when the field does not
# decide the answer). A field added without a row here fails the first test.
RERANK_BASE = {"model": "BAAI/bge-reranker-v2-m3"}
RERANK_FIELDS: dict[str, tuple[dict[str, Any], dict[str, Any], bool]] = {
    "model": (RERANK_BASE, {"model": "netease-youdao/bce-reranker-base_v1"}, False),
    "top_n": (RERANK_BASE, {"top_n": 1}, True),
    "return_documents": (RERANK_BASE, {"return_documents": True}, True),
    "instruction": (
        {"model": "Qwen/Qwen3-Reranker-8B"},
        {"model": "Qwen/Qwen3-Reranker-8B", "instruction": "Rank recipes first."},
        False,
    ),
    "max_chunks_per_doc": (RERANK_BASE, {"max_chunks_per_doc": 2}, False),
    "overlap_tokens": (RERANK_BASE, {"overlap_tokens": 20}, False),
    "min_relevance": (RERANK_BASE, {"min_relevance": 0.5}, True),
}
EMBED_BASE = {"model": "Qwen/Qwen3-Embedding-0.6B"}
EMBED_FIELDS: dict[str, tuple[dict[str, Any], dict[str, Any], bool]] = {
    "model": (EMBED_BASE, {"model": "Qwen/Qwen3-Embedding-4B"}, False),
    "dimensions": (EMBED_BASE, {"dimensions": 512}, False),
    "encoding_format": (EMBED_BASE, {"encoding_format": "float"}, False),
    "batch_size": (EMBED_BASE, {"batch_size": 1}, True),
}
CASES = [("rerank", name, *row) for name, row in RERANK_FIELDS.items()] + [
    ("embed", name, *row) for name, row in EMBED_FIELDS.items()
]


@pytest.mark.parametrize(
    ("options", "table"), [(RerankOptions, RERANK_FIELDS), (EmbeddingOptions, EMBED_FIELDS)]
)
def test_every_option_field_has_a_row(options, table):
    assert {field.name for field in dataclasses.fields(options)} == set(table)


@pytest.mark.parametrize(("endpoint", "name", "base", "changed", "shared"), CASES)
def test_a_field_is_in_the_cache_key_unless_it_says_otherwise(
    endpoint, name, base, changed, shared
):
    kind = RerankOptions if endpoint == "rerank" else EmbeddingOptions
    first = key_prefix(endpoint, pipeline_for(), kind(**base))
    second = key_prefix(endpoint, pipeline_for(), kind(**{**base, **changed}))
    assert (first == second) is shared, name


@pytest.mark.parametrize(("endpoint", "name", "base", "changed", "shared"), CASES)
def test_a_cached_answer_serves_only_the_options_it_was_made_for(
    make_runner, emulator, endpoint, name, base, changed, shared
):
    if endpoint == "rerank":
        runner = make_runner(base_url=emulator.base_url, cache=RerankCache())
    else:
        runner = make_runner(base_url=emulator.base_url, embedding_cache=EmbeddingCache())

    def call(options: dict[str, Any]) -> Any:
        if endpoint == "rerank":
            return runner.rerank("apple", ["apple pie", "a car"], **options)
        return runner.embed(["apple pie", "a car"], **options)

    first = call(base)
    assert emulator.stats.requests == 1
    again = call({**base, **changed})
    assert emulator.stats.requests == (1 if shared else 2), name
    if endpoint == "embed" and shared:
        assert again.embeddings == first.embeddings
