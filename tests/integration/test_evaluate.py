"""`evaluate` and `calibrate` on the shipped labelled set, against the emulator: the command's
three outputs, metrics checked against a second implementation, the Python API with each kind of
retriever, and a calibration that keeps its promise on held-out queries."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from siliconflow_rerank import (
    Calibration,
    InvalidRequestError,
    SiliconFlowClient,
    calibrate,
    evaluate,
)
from siliconflow_rerank._evaluate import embedding_first_stage
from siliconflow_rerank._evaluate_data import RerankConfig, load_beir
from siliconflow_rerank._evaluate_report import per_query
from siliconflow_rerank.emulator import Fault, RerankEmulator

PANTRY = Path(__file__).parents[2] / "examples" / "data" / "pantry"
MODEL = "BAAI/bge-reranker-v2-m3"


@pytest.fixture
def client(emulator: RerankEmulator) -> Iterator[SiliconFlowClient]:
    with SiliconFlowClient(api_key="sk-test", base_url=emulator.base_url) as client:
        yield client


# A second implementation of the three measures, as trec_eval defines them (nDCG with linear
# gains, log2 discounts, the ideal from every labelled document; RR of the first relevant).
def ndcg_at(ranking: list[str], labels: dict[str, int], k: int) -> float:
    gains = [labels.get(d, 0) for d in ranking[:k]]
    dcg = sum(g / math.log2(r + 2) for r, g in enumerate(gains))
    ideal = sorted((g for g in labels.values() if g > 0), reverse=True)[:k]
    best = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / best if best else 0.0


def rr_at(ranking: list[str], labels: dict[str, int], k: int) -> float:
    return next((1 / (r + 1) for r, d in enumerate(ranking[:k]) if labels.get(d, 0) > 0), 0.0)


def recall_at(ranking: list[str], labels: dict[str, int], k: int) -> float:
    relevant = {d for d, g in labels.items() if g > 0}
    return len(relevant & set(ranking[:k])) / len(relevant)


def test_the_measures_match_a_hand_checked_example() -> None:
    import ir_measures

    qrels = {"q1": {"a": 2, "b": 1, "z": 1}, "q2": {"c": 1}}
    rankings = {"q1": ["x", "a", "y", "b"], "q2": ["d", "e"]}
    run = {q: {d: float(len(r) - i) for i, d in enumerate(r)} for q, r in rankings.items()}
    measures = {
        "nDCG@10": ir_measures.nDCG @ 10,
        "MRR@10": ir_measures.RR @ 10,
        "Recall@3": ir_measures.R @ 3,
    }
    found = per_query(ir_measures, measures, qrels, run)
    # By hand: a (2) at rank 2, b (1) at rank 4; the ideal puts a, b and z first.
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    ideal = 2 + 1 / math.log2(3) + 0.5
    assert found["q1"]["nDCG@10"] == pytest.approx(dcg / ideal)
    assert found["q1"]["MRR@10"] == pytest.approx(0.5)
    assert found["q1"]["Recall@3"] == pytest.approx(1 / 3)  # a in the top 3; b and z not
    assert found["q2"] == {"nDCG@10": 0.0, "MRR@10": 0.0, "Recall@3": 0.0}
    for query, ranking in rankings.items():
        assert found[query]["nDCG@10"] == pytest.approx(ndcg_at(ranking, qrels[query], 10))
        assert found[query]["MRR@10"] == pytest.approx(rr_at(ranking, qrels[query], 10))
        assert found[query]["Recall@3"] == pytest.approx(recall_at(ranking, qrels[query], 3))


def test_the_command_writes_the_report_and_its_metrics_agree_with_a_second_implementation(
    emulator: RerankEmulator, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    command = [
        sys.executable,
        "-m",
        "siliconflow_rerank",
        "evaluate",
        str(PANTRY),
        "--out",
        str(out),
        "--base-url",
        emulator.base_url,
        "--rerank",
        "none",
        "--rerank",
        MODEL,
        "--rerank",
        f"{MODEL};top_n=3;name=bge top 3",
        "--recall-at",
        "5",
        "--calibrate",
    ]
    env = {**os.environ, "SILICONFLOW_API_KEY": "sk-evaluate-canary-77"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == {
        "results.json",
        "report.md",
        "report.png",
        "calibration.json",
    }
    assert (out / "report.png").read_bytes().startswith(b"\x89PNG")
    report = json.loads((out / "results.json").read_text())
    data = load_beir(PANTRY)
    names = [c["name"] for c in report["configurations"]]
    assert names == ["none", MODEL, "bge top 3"]
    for name in names:
        per = report["per_query"][name]
        assert set(per) == set(data.qrels)
        for query, ranking in report["rankings"][name].items():
            labels = data.qrels[query]
            assert per[query]["nDCG@10"] == pytest.approx(ndcg_at(ranking, labels, 10))
            assert per[query]["MRR@10"] == pytest.approx(rr_at(ranking, labels, 10))
            assert per[query]["Recall@5"] == pytest.approx(recall_at(ranking, labels, 5))
        entry = report["configurations"][names.index(name)]
        mean = sum(p["nDCG@10"] for p in per.values()) / len(per)
        interval = entry["metrics"]["nDCG@10"]
        assert interval["mean"] == pytest.approx(mean)
        assert interval["low"] <= mean <= interval["high"]
    assert all(len(r) <= 3 for r in report["rankings"]["bge top 3"].values())
    reranked = report["configurations"][1]
    assert reranked["requests"] == len(data.queries)  # 20 candidates: one request each
    assert reranked["tokens"] > 0
    assert 0 <= reranked["versus_first"]["nDCG@10"]["p_value"] <= 1
    worse = reranked["worse_queries"]
    assert worse["count"] == sum(
        report["per_query"][MODEL][q]["nDCG@10"] < report["per_query"]["none"][q]["nDCG@10"]
        for q in data.qrels
    )
    markdown = (out / "report.md").read_text()
    assert "| bge top 3 |" in markdown
    assert "recall ceiling" in markdown
    assert Calibration.load(out / "calibration.json").for_call(MODEL, None).pairs > 0
    assert "sk-evaluate-canary-77" not in done.stdout + done.stderr + json.dumps(report)


def test_the_same_data_gives_the_same_report(client: SiliconFlowClient) -> None:
    first = evaluate(PANTRY, ["none", MODEL], client=client, resamples=200, progress=False)
    again = evaluate(PANTRY, ["none", MODEL], client=client, resamples=200, progress=False)
    for report in (first, again):  # the one thing measured, not computed
        for entry in report["configurations"]:
            entry.pop("latency_seconds")
    assert first == again


def test_queries_are_reranked_several_at_once_into_the_same_report(
    emulator: RerankEmulator, client: SiliconFlowClient
) -> None:
    data = load_beir(PANTRY)
    first_stage = embedding_first_stage(client, data.corpus, "BAAI/bge-m3", 10)
    found = {text: first_stage(text) for text in data.queries.values()}  # no request from here
    reports = []
    for concurrency in (1, 4):
        emulator.reset()
        emulator.enqueue(Fault.slow(3.0))  # the first query's answer is held
        report = evaluate(
            PANTRY, ["none", MODEL], retriever=found.__getitem__, client=client,
            resamples=200, progress=False, concurrency=concurrency,
        )  # fmt: skip
        in_flight = emulator.stats.max_in_flight
        if concurrency == 1:
            assert in_flight == 1
        else:  # the other queries went on while the first was held
            assert in_flight >= 2
        assert emulator.stats.requests == len(data.queries)
        for entry in report["configurations"]:  # the one thing measured, not computed
            entry.pop("latency_seconds")
        reports.append(report)
    assert reports[0] == reports[1]


def test_a_users_retriever_of_each_kind_is_the_first_stage(client: SiliconFlowClient) -> None:
    data = load_beir(PANTRY)
    ranked = embedding_first_stage(client, data.corpus, "BAAI/bge-m3", 10)
    by_callable = evaluate(
        PANTRY, ["none"], retriever=ranked, client=client, depth=10, resamples=100, progress=False
    )

    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from llama_index.core.retrievers import BaseRetriever as LlamaRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    class LangChainRetriever(BaseRetriever):
        def _get_relevant_documents(
            self, query: str, *, run_manager: CallbackManagerForRetrieverRun
        ) -> list[Document]:
            return [Document(page_content=data.corpus[d], id=d) for d in ranked(query)]

    class LlamaIndexRetriever(LlamaRetriever):
        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            return [
                NodeWithScore(node=TextNode(text=data.corpus[d], metadata={"id": d}))
                for d in ranked(query_bundle.query_str)
            ]

    for retriever in (LangChainRetriever(), LlamaIndexRetriever()):
        report = evaluate(
            PANTRY,
            ["none"],
            retriever=retriever,
            client=client,
            depth=10,
            resamples=100,
            progress=False,
        )
        assert report["rankings"] == by_callable["rankings"]
        assert report["first_stage"]["kind"] == "your retriever"


@pytest.mark.parametrize(
    ("configs", "settings", "message"),
    [
        (["none", "BAAI/bge-reranker-v2-m3;top=3"], {}, "options are instruction="),
        (["BAAI/bge-reranker-v2-m3;instruction=x"], {}, "does not take 'instruction'"),
        (["none", "none"], {}, "share a name"),
        (["none"], {"depth": 0}, "at least 1"),
        (["none"], {"concurrency": 0}, "at least 1"),
        (["none"], {"data_dir": "missing"}, "cannot be read"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(
    emulator: RerankEmulator,
    client: SiliconFlowClient,
    configs: list[str],
    settings: dict[str, Any],
    message: str,
) -> None:
    data_dir = settings.pop("data_dir", PANTRY)
    with pytest.raises(InvalidRequestError, match=message):
        evaluate(data_dir, configs, client=client, progress=False, **settings)
    assert emulator.stats.requests == 0


def test_a_calibration_fitted_on_half_keeps_its_promise_on_the_other_half(
    emulator: RerankEmulator, client: SiliconFlowClient
) -> None:
    data = load_beir(PANTRY)
    first_stage = embedding_first_stage(client, data.corpus, "BAAI/bge-m3", 20)
    queries = list(data.queries)
    candidates = {q: first_stage(data.queries[q]) for q in queries}
    fitting, held_out = queries[::2], queries[1::2]  # each document has queries in both
    examples = [
        (data.queries[q], data.corpus[d], data.qrels[q].get(d, 0) > 0)
        for q in fitting
        for d in candidates[q]
    ]
    calibration = calibrate(examples, model=MODEL, client=client)
    score_map = calibration.for_call(MODEL, None)
    assert score_map.pairs == len(examples)
    with SiliconFlowClient(
        api_key="sk-test", base_url=emulator.base_url, calibration=calibration
    ) as calibrated:
        for target in (0.6, 0.7):
            threshold = score_map.threshold_for(target)
            promised = score_map.precision_at(threshold)
            assert promised is not None
            assert promised >= target
            kept = relevant = 0
            for q in held_out:
                found = candidates[q]
                response = calibrated.rerank(
                    data.queries[q],
                    [data.corpus[d] for d in found],
                    model=MODEL,
                    min_relevance=threshold,
                )
                for index, score in response.results.pairs():
                    assert score >= threshold
                    kept += 1
                    relevant += data.qrels[q].get(found[index], 0) > 0
            assert kept >= 40
            assert abs(relevant / kept - promised) <= 0.1, (target, relevant / kept, promised)


def test_calibration_fits_refuse_what_they_cannot_fit() -> None:
    with pytest.raises(InvalidRequestError, match="at least 2 relevant"):
        Calibration.fit([0.1, 0.2, 0.9], [False, False, True], model=MODEL)
    with pytest.raises(InvalidRequestError, match="one label per score"):
        Calibration.fit([0.1, 0.2], [False], model=MODEL)
    with pytest.raises(InvalidRequestError, match="finite"):
        Calibration.fit([0.1, math.nan, 0.3, 0.4], [False, True, False, True], model=MODEL)
    falling = [i / 40 for i in range(40)]
    with pytest.raises(InvalidRequestError, match="do not rise"):
        Calibration.fit(falling, [i < 20 for i in range(40)], model=MODEL, method="platt")


def test_a_fitted_map_is_monotone_and_chosen_by_held_out_error() -> None:
    scores = [i / 200 for i in range(200)]
    relevant = [(i * 7919) % 200 < i for i in range(200)]  # more relevant as the score rises
    score_map = Calibration.fit(scores, relevant, model=MODEL).maps[0]
    assert score_map.method == min(score_map.brier, key=score_map.brier.__getitem__)
    mapped = [score_map(s) for s in scores]
    assert all(b >= a for a, b in itertools.pairwise(mapped))
    assert 0 <= mapped[0] < mapped[-1] <= 1
    for method in ("isotonic", "platt"):
        forced = Calibration.fit(scores, relevant, model=MODEL, method=method).maps[0]
        assert forced.method == method


def test_the_config_text_form() -> None:
    config = RerankConfig.parse("Qwen/Qwen3-Reranker-8B;instruction=Find recipes;top_n=5")
    assert config == RerankConfig("Qwen/Qwen3-Reranker-8B", "Find recipes", 5)
    assert RerankConfig.parse("none").model is None
    with pytest.raises(InvalidRequestError, match="top_n must be an integer"):
        RerankConfig.parse(f"{MODEL};top_n=five")


def test_fitting_refuses_a_client_whose_scores_are_already_mapped(
    emulator: RerankEmulator, tmp_path: Path
) -> None:
    square = Calibration.fit([0.1, 0.2, 0.8, 0.9], [False, False, True, True], model=MODEL)
    with SiliconFlowClient(
        api_key="sk-test", base_url=emulator.base_url, calibration=square
    ) as calibrated:
        with pytest.raises(InvalidRequestError, match="raw scores"):
            calibrate([("q", "d", True)], model=MODEL, client=calibrated)
        with pytest.raises(InvalidRequestError, match="raw scores"):
            evaluate(PANTRY, ["none"], client=calibrated, calibrate=True, progress=False)
        assert emulator.stats.requests == 0
        # Without fitting, a calibrated client may be evaluated.
        report = evaluate(PANTRY, ["none"], client=calibrated, resamples=100, progress=False)
    assert report["data"]["queries"] == 144
