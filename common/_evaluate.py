"""`evaluate`: does reranking help on your data? Each configuration (no reranking, a model, with
an instruction or a `top_n`) ranks the same first-stage candidates of a labelled set in the BEIR
layout; the report gives nDCG@10, MRR@10 and Recall@k with bootstrap confidence intervals, a
paired test against the first configuration, the first stage's recall ceiling, requests, tokens
and latency, and the queries each configuration made worse.

The measures are trec_eval's, computed by ir-measures (pytrec_eval underneath): the reference
implementation IR papers report, rather than our own arithmetic. Intervals and tests come from
scipy. All of it is in the `evaluate` extra.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ._calibration import Calibration, client_for
from ._client import SiliconFlowClient
from ._config import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL, needs
from ._evaluate_data import FirstStage, LabelledSet, RerankConfig, Run, load_beir, ranked
from ._evaluate_report import build_report, markdown, plot, shown
from ._exceptions import InvalidRequestError

__all__ = ["evaluate", "main"]


def embedding_first_stage(
    client: SiliconFlowClient, corpus: dict[str, str], model: str, depth: int
) -> FirstStage:
    """Dense retrieval in memory: every document embedded once, queries by cosine."""
    np = needs("numpy")
    ids = list(corpus)
    matrix = np.asarray(client.embed([corpus[i] for i in ids], model=model).embeddings)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)

    def retrieve(query: str) -> list[str]:
        vector = np.asarray(client.embed(query, model=model).embeddings[0])
        similarity = matrix @ (vector / np.linalg.norm(vector))
        order = np.argsort(-similarity, kind="stable")[:depth]
        return [ids[i] for i in order]

    return retrieve


def as_first_stage(retriever: Any, depth: int) -> FirstStage:
    """A callable returning ids, a LangChain retriever (Documents with `id`, or `metadata['id']`
    / `['_id']`) or a LlamaIndex retriever (nodes whose metadata or `ref_doc_id` gives the id),
    cut to `depth`."""

    def ids_of(items: Iterable[Any]) -> list[str]:
        found = []
        for item in items:
            if isinstance(item, str):
                found.append(item)
                continue
            node = getattr(item, "node", item)  # a LlamaIndex NodeWithScore
            metadata = getattr(node, "metadata", None) or {}
            for candidate in (
                metadata.get("_id"),
                metadata.get("id"),
                getattr(node, "id", None),
                getattr(node, "ref_doc_id", None),
            ):
                if isinstance(candidate, str):
                    found.append(candidate)
                    break
            else:
                raise InvalidRequestError(
                    f"the retriever returned a {type(item).__name__} without a document id "
                    "(set metadata['id'] to the corpus id)"
                )
        return found[:depth]

    if hasattr(retriever, "retrieve"):  # LlamaIndex
        return lambda query: ids_of(retriever.retrieve(query))
    if hasattr(retriever, "invoke"):  # a LangChain runnable
        return lambda query: ids_of(retriever.invoke(query))
    if callable(retriever):
        return lambda query: ids_of(retriever(query))
    raise InvalidRequestError("retriever must be a callable, a LangChain or a LlamaIndex retriever")


def evaluate(
    data_dir: str | os.PathLike[str],
    configs: Sequence[RerankConfig | str] = ("none", DEFAULT_MODEL),
    *,
    out: str | os.PathLike[str] | None = None,
    retriever: Any = None,
    embedding_model: str = DEFAULT_EMBEDDING_MODEL,
    depth: int = 20,
    recall_at: Sequence[int] = (10,),
    split: str = "test",
    calibrate: bool = False,
    client: SiliconFlowClient | None = None,
    progress: bool | None = None,
    resamples: int = 2000,
    seed: int = 0,
    concurrency: int = 4,
    **client_settings: Any,
) -> dict[str, Any]:
    """Compare configurations on a labelled set; write `results.json`, `report.md` and
    `report.png` to `out` when given.

    Args:
        data_dir: A directory in BEIR's layout.
        configs: What to compare, the first being the baseline of the paired tests: a
            `RerankConfig`, or its text form (`none`, `MODEL`, `MODEL;instruction=...;top_n=5`).
        out: Where to write the report (created).
        retriever: The first stage: a callable (query text → document ids), a LangChain or a
            LlamaIndex retriever; None embeds the corpus with `embedding_model`, in memory.
        depth: Candidates per query from the first stage.
        recall_at: The cut-offs of Recall@k.
        calibrate: Also fit a calibration of each reranking model from the labels (a document
            labelled above 0 counts as relevant); saved as `calibration.json` in `out`.
        client: The client to call (with no calibration of its own); else one is built from
            `client_settings` and closed at the end.
        progress: Show a progress bar (None: when stderr is a terminal).
        resamples: Bootstrap and permutation resamples.
        seed: Seed of the resampling: the same data gives the same report.
        concurrency: Queries reranked at once (each query's latency is still its own call's).

    Returns:
        What `results.json` holds.

    Raises:
        InvalidRequestError: Bad data, configurations or settings, before any request.
    """
    ir_measures = needs("ir_measures")
    tqdm = needs("tqdm").tqdm
    chosen = [c if isinstance(c, RerankConfig) else RerankConfig.parse(c) for c in configs]
    if not chosen:
        raise InvalidRequestError("give at least one configuration")
    labels = [c.label for c in chosen]
    if len(set(labels)) != len(labels):
        raise InvalidRequestError(f"two configurations share a name: {labels}")
    if depth < 1 or concurrency < 1 or any(k < 1 for k in recall_at):
        raise InvalidRequestError("depth, concurrency and recall_at must be at least 1")
    data = load_beir(data_dir, split)
    with client_for(client, client_settings, raw=calibrate) as used:
        first_stage = (
            embedding_first_stage(used, data.corpus, embedding_model, depth)
            if retriever is None
            else as_first_stage(retriever, depth)
        )
        bar = tqdm(
            total=len(data.queries) * (1 + len(chosen)),
            desc="evaluate",
            unit="query",
            disable=None if progress is None else not progress,
        )
        candidates: dict[str, list[str]] = {}
        for query_id, text in data.queries.items():
            found = list(dict.fromkeys(first_stage(text)))
            missing = [d for d in found if d not in data.corpus]
            if missing:
                raise InvalidRequestError(
                    f"the retriever returned ids not in the corpus: {missing[:3]}"
                )
            candidates[query_id] = found
            bar.update()
        runs = [_rank(used, config, data, candidates, bar, concurrency) for config in chosen]
        bar.close()
    report = build_report(ir_measures, data, candidates, runs, depth, recall_at, resamples, seed)
    report["data"] = {
        "directory": str(data_dir),
        "split": split,
        "queries": len(data.queries),
        "documents": len(data.corpus),
    }
    report["first_stage"]["kind"] = (
        f"embeddings ({embedding_model})" if retriever is None else "your retriever"
    )
    calibration = _calibration(runs) if calibrate else None
    if out is not None:
        _write(Path(out), report, calibration)
    return report


def _rank(
    client: SiliconFlowClient,
    config: RerankConfig,
    data: LabelledSet,
    candidates: dict[str, list[str]],
    bar: Any,
    concurrency: int,
) -> Run:
    """One configuration's run: up to `concurrency` queries reranked at once, merged in query
    order (the same report whatever the order they were answered in)."""
    result = Run(config)
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="evaluate")
    try:
        ranking = [
            pool.submit(_rank_one, client, config, data, query_id, found)
            for query_id, found in candidates.items()
        ]
        for query_id, future in zip(candidates, ranking, strict=True):
            order, answered = future.result()
            if answered is not None:
                seconds, requests, tokens, scored = answered
                result.latencies.append(seconds)
                result.requests += requests
                result.tokens += tokens
                result.scored.extend(scored)
            result.run[query_id] = ranked(order)
            bar.update()
    finally:  # on an error, the queries not yet started are not sent
        pool.shutdown(cancel_futures=True)
    return result


_Answered = tuple[float, int, int, list[tuple[float, bool]]]
"""A reranked query's latency, requests, tokens, and (score, relevant) pairs."""


def _rank_one(
    client: SiliconFlowClient,
    config: RerankConfig,
    data: LabelledSet,
    query_id: str,
    found: list[str],
) -> tuple[list[str], _Answered | None]:
    """One query's ranking of its candidates, and what reranking it took (None: not reranked)."""
    if config.model is None or not found:
        return found, None
    calls: list[int] = []  # the requests of the call, as its progress reports them
    started = time.perf_counter()
    response = client.rerank(
        data.queries[query_id],
        [data.corpus[d] for d in found],
        model=config.model,
        instruction=config.instruction,
        on_progress=lambda done, total: calls.append(total),
    )
    seconds = time.perf_counter() - started
    usage = response.usage
    tokens = usage.total_tokens if usage is not None and usage.total_tokens is not None else 0
    judged = data.qrels[query_id]
    order, scored = [], []
    for index, score in response.results.pairs():
        order.append(found[index])
        scored.append((score, judged.get(found[index], 0) > 0))
    if config.top_n is not None:
        order = order[: config.top_n]
    return order, (seconds, calls[-1] if calls else 1, tokens, scored)


def _calibration(runs: list[Run]) -> Calibration | None:
    fitted: Calibration | None = None
    for run in runs:
        model = run.config.model
        if model is None or not run.scored:
            continue
        scores = [score for score, _ in run.scored]
        relevant = [label for _, label in run.scored]
        one = Calibration.fit(scores, relevant, model=model, instruction=run.config.instruction)
        fitted = one if fitted is None else fitted | one
    return fitted


def _write(out: Path, report: dict[str, Any], calibration: Calibration | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    plot(report, out / "report.png")
    if calibration is not None:
        calibration.save(out / "calibration.json")


def main(argv: list[str] | None = None) -> int:
    """`python -m siliconflow_rerank evaluate DATA_DIR --out REPORT_DIR [--rerank SPEC]...`"""
    import argparse
    import sys

    from ._exceptions import SiliconFlowError

    parser = argparse.ArgumentParser(
        prog="python -m siliconflow_rerank evaluate",
        description="Compare reranking configurations on a labelled set in BEIR's layout.",
    )
    parser.add_argument("data_dir", help="corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    parser.add_argument("--out", required=True, help="directory for the report")
    parser.add_argument(
        "--rerank",
        action="append",
        metavar="SPEC",
        help="a configuration: none, MODEL, or MODEL;instruction=TEXT;top_n=N;name=LABEL "
        f"(repeatable; the first is the baseline; default: none and {DEFAULT_MODEL})",
    )
    parser.add_argument("--embedding-model", default=DEFAULT_EMBEDDING_MODEL)
    parser.add_argument("--depth", type=int, default=20, help="candidates per query")
    parser.add_argument("--recall-at", type=int, action="append", help="k of Recall@k")
    parser.add_argument("--split", default="test")
    parser.add_argument("--calibrate", action="store_true", help="also fit calibration.json")
    parser.add_argument("--base-url", help="the API root (default: SILICONFLOW_BASE_URL)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=4, help="queries reranked at once")
    arguments = parser.parse_args(argv)
    try:
        report = evaluate(
            arguments.data_dir,
            arguments.rerank or ("none", DEFAULT_MODEL),
            out=arguments.out,
            embedding_model=arguments.embedding_model,
            depth=arguments.depth,
            recall_at=arguments.recall_at or (10,),
            split=arguments.split,
            calibrate=arguments.calibrate,
            resamples=arguments.resamples,
            seed=arguments.seed,
            concurrency=arguments.concurrency,
            base_url=arguments.base_url,
        )
    except SiliconFlowError as error:
        print(f"evaluate: {error}", file=sys.stderr)
        return 1
    for entry in report["configurations"]:
        metrics = ", ".join(f"{n} {shown(v)}" for n, v in entry["metrics"].items())
        print(f"{entry['name']}: {metrics}")
    print(f"report written to {arguments.out}")
    return 0
