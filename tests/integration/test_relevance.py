"""`min_relevance` and `calibration=` over the emulator: both clients, batched and cached calls,
both adapters (sync and async), the Ray class's row mapping, and a calibration's file."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from langchain_siliconflow import SiliconFlowRerank as LangChainRerank
from llama_index_siliconflow import SiliconFlowRerank as LlamaRerank
from siliconflow_rerank import (
    Calibration,
    InvalidRequestError,
    RerankCache,
    ScoreMap,
    SiliconFlowClient,
)
from siliconflow_rerank.emulator import Fault, RerankEmulator

from ..helpers import Runner

MODEL = "BAAI/bge-reranker-v2-m3"
QUERY = "how to keep apples fresh"
DOCUMENTS = [
    "keep apples fresh in the fridge, apples last weeks",
    "banana bread recipe",
    "apples and pears in a bowl",
    "fresh bread daily",
    "how apples are grown",
    "store apples cold to keep them fresh",
    "car repair manual",
]
# A map that is easy to check by hand: probability = raw score squared, between fixed points.
SQUARE = Calibration(
    maps=(
        ScoreMap(
            model=MODEL,
            method="isotonic",
            x=tuple(i / 10 for i in range(11)),
            y=tuple((i / 10) ** 2 for i in range(11)),
            pairs=0,
            positives=0,
        ),
    )
)


def raw_scores(emulator: RerankEmulator) -> dict[int, float]:
    with SiliconFlowClient(api_key="sk-test", base_url=emulator.base_url) as client:
        return dict(client.rerank(QUERY, DOCUMENTS, model=MODEL).results.pairs())


def threshold_between(scores: list[float]) -> float:
    """A threshold between the 3rd and 4th best score: 3 results kept."""
    ordered = sorted(scores, reverse=True)
    assert ordered[2] > ordered[3]
    return (ordered[2] + ordered[3]) / 2


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("cached", [False, True])
def test_min_relevance_drops_results_below_it_after_the_merge(
    make_runner: Any, emulator: RerankEmulator, batch: int | None, cached: bool
) -> None:
    raw = raw_scores(emulator)
    threshold = threshold_between(list(raw.values()))
    settings: dict[str, Any] = {"base_url": emulator.base_url, "max_documents_per_request": batch}
    if cached:
        settings["cache"] = RerankCache()
    runner: Runner = make_runner(**settings)
    for _ in range(2 if cached else 1):  # the second call answered from the cache
        response = runner.rerank(QUERY, DOCUMENTS, model=MODEL, top_n=5, min_relevance=threshold)
        kept = [(i, s) for i, s in sorted(raw.items(), key=lambda p: -p[1]) if s >= threshold]
        assert list(response.results.pairs()) == kept
        assert len(response.results) == 3  # fewer than top_n, by design


def test_top_n_still_cuts_when_more_pass_the_threshold(
    make_runner: Any, emulator: RerankEmulator
) -> None:
    runner = make_runner(base_url=emulator.base_url, max_documents_per_request=3)
    response = runner.rerank(QUERY, DOCUMENTS, model=MODEL, top_n=2, min_relevance=-1.0)
    assert len(response.results) == 2


@pytest.mark.parametrize("batch", [None, 3])
def test_a_calibration_maps_every_score_and_keeps_the_order(
    make_runner: Any, emulator: RerankEmulator, batch: int | None
) -> None:
    raw = raw_scores(emulator)
    runner = make_runner(
        base_url=emulator.base_url, calibration=SQUARE, max_documents_per_request=batch
    )
    response = runner.rerank(QUERY, DOCUMENTS, model=MODEL)
    expected = sorted(raw, key=lambda i: (-raw[i], i))
    assert [r.index for r in response.results] == expected
    for result in response.results:
        assert result.relevance_score == pytest.approx(raw[result.index] ** 2, abs=0.011)
    # The threshold applies to the mapped score.
    threshold = 0.5 * (raw[expected[0]] ** 2 + raw[expected[1]] ** 2)
    assert len(runner.rerank(QUERY, DOCUMENTS, model=MODEL, min_relevance=threshold).results) == 1


def test_a_calibration_is_read_from_its_file(
    make_runner: Any, emulator: RerankEmulator, tmp_path: Path
) -> None:
    path = tmp_path / "calibration.json"
    SQUARE.save(path)
    assert Calibration.load(path) == SQUARE
    runner = make_runner(base_url=emulator.base_url, calibration=str(path))
    top = runner.rerank(QUERY, DOCUMENTS, model=MODEL, top_n=1).results[0]
    assert top.relevance_score == pytest.approx(max(raw_scores(emulator).values()) ** 2, abs=0.011)


@pytest.mark.parametrize(
    ("settings", "options", "message"),
    [
        ({"calibration": SQUARE}, {"model": "Qwen/Qwen3-Reranker-8B"}, "no map for"),
        (
            {"calibration": SQUARE},
            {"model": MODEL, "instruction": "x"},
            "not take 'instruction'",
        ),
        ({}, {"model": MODEL, "min_relevance": math.nan}, "min_relevance must be a finite"),
        ({}, {"model": MODEL, "min_relevance": "0.5"}, "min_relevance must be a finite"),
        ({}, {"model": MODEL, "min_relevance": True}, "min_relevance must be a finite"),
    ],
)
def test_bad_relevance_settings_are_refused_before_any_request(
    make_runner: Any,
    emulator: RerankEmulator,
    settings: dict[str, Any],
    options: dict[str, Any],
    message: str,
) -> None:
    runner = make_runner(base_url=emulator.base_url, **settings)
    with pytest.raises(InvalidRequestError, match=message):
        runner.rerank(QUERY, DOCUMENTS, **options)
    assert emulator.stats.requests == 0


def test_a_bad_calibration_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"maps": 3}')
    with pytest.raises(InvalidRequestError, match="is not a calibration"):
        SiliconFlowClient(api_key="sk-test", calibration=tmp_path / "bad.json")
    with pytest.raises(InvalidRequestError, match="cannot be read"):
        SiliconFlowClient(api_key="sk-test", calibration=tmp_path / "missing.json")


def adapter_call(adapter: Any, asynchronous: bool) -> list[float]:
    """The scores one call through the adapter returns, best first."""
    if isinstance(adapter, LangChainRerank):
        documents = [Document(page_content=text) for text in DOCUMENTS]
        call = (
            adapter.acompress_documents(documents, QUERY)
            if asynchronous
            else asyncio.sleep(0, adapter.compress_documents(documents, QUERY))
        )
        return [d.metadata["relevance_score"] for d in asyncio.run(call)]
    nodes = [NodeWithScore(node=TextNode(text=text)) for text in DOCUMENTS]
    bundle = QueryBundle(QUERY)
    call = (
        adapter.apostprocess_nodes(nodes, query_bundle=bundle)
        if asynchronous
        else asyncio.sleep(0, adapter.postprocess_nodes(nodes, query_bundle=bundle))
    )
    return [n.score for n in asyncio.run(call)]


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("kind", [LangChainRerank, LlamaRerank])
def test_adapters_return_fewer_when_a_threshold_drops_some(
    emulator: RerankEmulator, kind: Any, asynchronous: bool
) -> None:
    raw = sorted(raw_scores(emulator).values(), reverse=True)
    threshold = threshold_between([s**2 for s in raw])
    adapter = kind(
        api_key="sk-test",
        base_url=emulator.base_url,
        model=MODEL,
        top_n=5,
        calibration=SQUARE,
        min_relevance=threshold,
        max_documents_per_request=2,
    )
    scores = adapter_call(adapter, asynchronous)
    assert scores == pytest.approx([s**2 for s in raw[:3]], abs=0.011)
    assert min(scores) >= threshold


@pytest.mark.parametrize("kind", [LangChainRerank, LlamaRerank])
def test_passthrough_filters_nothing(emulator: RerankEmulator, kind: Any) -> None:
    emulator.enqueue(Fault.server_error())
    adapter = kind(
        api_key="sk-test",
        base_url=emulator.base_url,
        model=MODEL,
        top_n=5,
        min_relevance=0.99,
        on_error="passthrough",
        max_retries=0,
    )
    if isinstance(adapter, LangChainRerank):
        kept = adapter.compress_documents([Document(page_content=t) for t in DOCUMENTS], QUERY)
    else:
        nodes = [NodeWithScore(node=TextNode(text=t)) for t in DOCUMENTS]
        kept = adapter.postprocess_nodes(nodes, query_str=QUERY)
    assert len(kept) == 5


@pytest.mark.parametrize("kind", [LangChainRerank, LlamaRerank])
def test_adapters_refuse_a_calibration_without_their_model(kind: Any) -> None:
    with pytest.raises((InvalidRequestError, ValueError), match="no map for"):
        kind(api_key="sk-test", model="Qwen/Qwen3-Reranker-8B", calibration=SQUARE)


@pytest.mark.parametrize("kind", [LangChainRerank, LlamaRerank])
def test_adapters_keep_their_calibration_through_a_dump(kind: Any) -> None:
    adapter = kind(api_key="sk-test", model=MODEL, calibration=SQUARE, min_relevance=0.3)
    copy = kind.model_validate(adapter.model_dump())
    assert copy.calibration == SQUARE
    assert copy.min_relevance == 0.3


def test_the_ray_class_marks_candidates_below_the_threshold(emulator: RerankEmulator) -> None:
    pytest.importorskip("ray")
    from siliconflow_rerank.ray import RerankBatches

    raw = raw_scores(emulator)
    threshold = threshold_between(list(raw.values()))
    batches = RerankBatches(
        api_key="sk-test", base_url=emulator.base_url, model=MODEL, min_relevance=threshold
    )
    table = batches({"query": [QUERY], "candidates": [DOCUMENTS]})
    scores = table.column("scores").to_pylist()[0]
    ranks = table.column("ranks").to_pylist()[0]
    for position, score in raw.items():
        kept = score >= threshold
        assert (scores[position] == score) if kept else scores[position] is None
        assert (ranks[position] > 0) == kept
    assert sorted(r for r in ranks if r) == [1, 2, 3]
    batches.client.close()
