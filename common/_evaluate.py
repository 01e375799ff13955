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
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._calibration import Calibration, needs
from ._client import SiliconFlowClient
from ._config import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL
from ._exceptions import InvalidRequestError
from ._rerank import RerankOptions

__all__ = ["LabelledSet", "RerankConfig", "evaluate", "load_beir", "main"]

FirstStage = Callable[[str], Sequence[str]]
"""A query's text in, the ids of its candidate documents out, best first."""

CONFIDENCE = 0.95
WORST_SHOWN = 10


@dataclass(frozen=True)
class RerankConfig:
    """One configuration to compare: `model=None` keeps the first stage's order."""

    model: str | None = DEFAULT_MODEL
    instruction: str | None = None
    top_n: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.model is None:
            if self.instruction is not None or self.top_n is not None:
                raise InvalidRequestError("'none' takes no instruction or top_n")
            return
        RerankOptions(self.model, top_n=self.top_n, instruction=self.instruction)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.model is None:
            return "none"
        label = self.model
        if self.instruction is not None:
            label += f" [instruction: {self.instruction[:40]}]"
        if self.top_n is not None:
            label += f" top_n={self.top_n}"
        return label

    @classmethod
    def parse(cls, spec: str) -> RerankConfig:
        """`none`, `MODEL`, or `MODEL;instruction=TEXT;top_n=N;name=LABEL`."""
        model, *options = spec.split(";")
        fields: dict[str, Any] = {}
        for option in options:
            key, sep, value = option.partition("=")
            key = key.strip()
            if not sep or key not in ("instruction", "top_n", "name"):
                raise InvalidRequestError(
                    f"{option!r} in {spec!r}: options are instruction=, top_n= and name="
                )
            fields[key] = int(value) if key == "top_n" and value.strip().isdigit() else value
        model = model.strip()
        return cls(None if model.lower() == "none" else model, **fields)


@dataclass(frozen=True)
class LabelledSet:
    """A labelled set: documents and queries by id, and graded labels by query."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(data_dir: str | os.PathLike[str], split: str = "test") -> LabelledSet:
    """Read `corpus.jsonl`, `queries.jsonl` and `qrels/SPLIT.tsv` (BEIR's layout). Documents
    are title and text joined; only queries with labels are kept.

    Raises:
        InvalidRequestError: A file is missing or malformed (named, with its line).
    """
    root = Path(data_dir)
    corpus = {
        row["_id"]: " ".join(part for part in (row.get("title"), row.get("text")) if part)
        for row in _jsonl(root / "corpus.jsonl")
    }
    queries = {row["_id"]: row["text"] for row in _jsonl(root / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    path = root / "qrels" / f"{split}.tsv"
    for number, line in enumerate(_lines(path), start=1):
        parts = line.rstrip("\n").split("\t")
        if number == 1 and not parts[-1].lstrip("-").isdigit():
            continue  # the header
        if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
            raise InvalidRequestError(f"{path}:{number}: expected query-id, corpus-id, score")
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    unknown = [q for q in qrels if q not in queries]
    if unknown:
        raise InvalidRequestError(
            f"{path}: {len(unknown)} labelled queries are not in "
            f"queries.jsonl (first: {unknown[0]!r})"
        )
    return LabelledSet(corpus, {q: queries[q] for q in qrels}, qrels)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise InvalidRequestError(f"{path} cannot be read ({type(error).__name__})") from None


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InvalidRequestError(f"{path}:{number}: not JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("_id"), str):
            raise InvalidRequestError(f"{path}:{number}: a row needs a string '_id'")
        yield row


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


@dataclass
class _Run:
    """What one configuration produced."""

    config: RerankConfig
    run: dict[str, dict[str, float]] = field(default_factory=dict)
    scored: list[tuple[float, bool]] = field(default_factory=list)
    requests: int = 0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)


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
    if depth < 1 or any(k < 1 for k in recall_at):
        raise InvalidRequestError("depth and recall_at must be at least 1")
    data = load_beir(data_dir, split)
    own = client is None
    used = SiliconFlowClient(**client_settings) if client is None else client
    if calibrate and used.settings.calibration is not None:
        raise InvalidRequestError("calibrate needs raw scores: use a client without calibration")
    try:
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
        runs = []
        for config in chosen:
            runs.append(_rank(used, config, data, candidates, bar))
        bar.close()
    finally:
        if own:
            used.close()
    report = _report(ir_measures, data, candidates, runs, depth, recall_at, resamples, seed)
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
) -> _Run:
    result = _Run(config)
    calls: list[int] = []  # the requests of each call, as its progress reports them
    for query_id, found in candidates.items():
        if config.model is None or not found:
            order = found
        else:
            calls.clear()
            started = time.perf_counter()
            response = client.rerank(
                data.queries[query_id],
                [data.corpus[d] for d in found],
                model=config.model,
                instruction=config.instruction,
                on_progress=lambda done, total: calls.append(total),
            )
            result.latencies.append(time.perf_counter() - started)
            result.requests += calls[-1] if calls else 1
            if response.usage is not None and response.usage.total_tokens is not None:
                result.tokens += response.usage.total_tokens
            judged = data.qrels[query_id]
            for index, score in response.results.pairs():
                result.scored.append((score, judged.get(found[index], 0) > 0))
            order = [found[i] for i, _ in response.results.pairs()]
            if config.top_n is not None:
                order = order[: config.top_n]
        # Scores that fall with the rank: trec_eval sorts by score, and breaks ties by id.
        result.run[query_id] = {doc: float(len(order) - rank) for rank, doc in enumerate(order)}
        bar.update()
    return result


def _measures(ir_measures: Any, recall_at: Sequence[int]) -> dict[str, Any]:
    named = {"nDCG@10": ir_measures.nDCG @ 10, "MRR@10": ir_measures.RR @ 10}
    for k in recall_at:
        named[f"Recall@{k}"] = ir_measures.R @ k
    return named


def per_query(
    ir_measures: Any, measures: dict[str, Any], qrels: dict[str, dict[str, int]], run: Any
) -> dict[str, dict[str, float]]:
    """Each measure of each labelled query (0 where the run has nothing for it)."""
    by_measure = {str(measure): name for name, measure in measures.items()}
    values = {query: dict.fromkeys(measures, 0.0) for query in qrels}
    for metric in ir_measures.iter_calc(list(measures.values()), qrels, run):
        values[metric.query_id][by_measure[str(metric.measure)]] = float(metric.value)
    return values


def _interval(values: Sequence[float], resamples: int, seed: int) -> dict[str, float]:
    np = needs("numpy")
    stats = needs("scipy.stats")
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2 or float(data.min()) == float(data.max()):
        return {"mean": mean, "low": mean, "high": mean}
    found = stats.bootstrap(
        (data,),
        np.mean,
        confidence_level=CONFIDENCE,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    interval = found.confidence_interval
    return {"mean": mean, "low": float(interval.low), "high": float(interval.high)}


def _paired(first: Sequence[float], other: Sequence[float], resamples: int, seed: int) -> float:
    """Two-sided p-value of a paired permutation test (signs of the per-query differences)."""
    np = needs("numpy")
    stats = needs("scipy.stats")
    a, b = np.asarray(other, dtype=float), np.asarray(first, dtype=float)
    if np.array_equal(a, b):
        return 1.0
    found = stats.permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        n_resamples=resamples,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(found.pvalue)


def _report(
    ir_measures: Any,
    data: LabelledSet,
    candidates: dict[str, list[str]],
    runs: list[_Run],
    depth: int,
    recall_at: Sequence[int],
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    measures = _measures(ir_measures, recall_at)
    ceiling_measure = {f"Recall@{depth}": ir_measures.R @ depth}
    first_run = {
        q: {d: float(len(found) - r) for r, d in enumerate(found)}
        for q, found in candidates.items()
    }
    ceiling = per_query(ir_measures, ceiling_measure, data.qrels, first_run)
    queries = list(data.qrels)
    values = {
        run.config.label: per_query(ir_measures, measures, data.qrels, run.run) for run in runs
    }
    baseline = runs[0].config.label
    configurations = []
    for run in runs:
        label = run.config.label
        mine = values[label]
        entry: dict[str, Any] = {
            "name": label,
            **{k: v for k, v in asdict(run.config).items() if k != "name"},
            "metrics": {
                name: _interval([mine[q][name] for q in queries], resamples, seed)
                for name in measures
            },
            "requests": run.requests,
            "tokens": run.tokens,
            "latency_seconds": _latency(run.latencies),
        }
        if label != baseline:
            base = values[baseline]
            entry["versus_first"] = {
                name: {
                    "delta": statistics.fmean(mine[q][name] - base[q][name] for q in queries),
                    "p_value": _paired(
                        [base[q][name] for q in queries],
                        [mine[q][name] for q in queries],
                        resamples,
                        seed,
                    ),
                }
                for name in measures
            }
            worse = sorted(
                (mine[q]["nDCG@10"] - base[q]["nDCG@10"], q)
                for q in queries
                if mine[q]["nDCG@10"] < base[q]["nDCG@10"]
            )
            entry["worse_queries"] = {
                "count": len(worse),
                "worst": [
                    {
                        "query_id": q,
                        "query": data.queries[q],
                        "nDCG@10": mine[q]["nDCG@10"],
                        "first": base[q]["nDCG@10"],
                        "delta": delta,
                    }
                    for delta, q in worse[:WORST_SHOWN]
                ],
            }
        configurations.append(entry)
    return {
        "first_stage": {
            "depth": depth,
            "recall_ceiling": _interval(
                [ceiling[q][f"Recall@{depth}"] for q in queries], resamples, seed
            ),
        },
        "configurations": configurations,
        "per_query": values,
        "rankings": {run.config.label: {q: list(run.run[q]) for q in queries} for run in runs},
        "settings": {
            "confidence": CONFIDENCE,
            "resamples": resamples,
            "seed": seed,
            "measures": "trec_eval's, via ir-measures (nDCG with linear gains)",
        },
    }


def _latency(latencies: list[float]) -> dict[str, float] | None:
    if not latencies:
        return None
    ordered = sorted(latencies)
    return {
        "mean": statistics.fmean(ordered),
        "p50": ordered[(len(ordered) - 1) // 2],
        "p95": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
    }


def _calibration(runs: list[_Run]) -> Calibration | None:
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
    _plot(report, out / "report.png")
    if calibration is not None:
        calibration.save(out / "calibration.json")


def markdown(report: dict[str, Any]) -> str:
    """The report as a short Markdown page."""
    configurations = report["configurations"]
    names = list(configurations[0]["metrics"])
    data, first = report.get("data", {}), report["first_stage"]
    ceiling = first["recall_ceiling"]
    lines = [
        "# Does reranking help on this data?",
        "",
        f"{data.get('queries', '?')} queries, {data.get('documents', '?')} documents "
        f"({data.get('directory', '')}). First stage: {first.get('kind', '')}, "
        f"{first['depth']} candidates a query; its recall ceiling (Recall@{first['depth']}) is "
        f"{_shown(ceiling)}: no reranking of these candidates can do better.",
        "",
        f"Means with {report['settings']['confidence']:.0%} bootstrap intervals over queries; "
        "Δ and p against the first row (paired permutation test).",
        "",
        "| configuration | " + " | ".join(names) + " | requests | tokens | latency p50 |",
        "|---" * (len(names) + 4) + "|",
    ]
    for entry in configurations:
        cells = []
        for name in names:
            cell = _shown(entry["metrics"][name])
            versus = entry.get("versus_first", {}).get(name)
            if versus is not None:
                cell += f"<br>Δ {versus['delta']:+.3f}, p = {versus['p_value']:.3f}"
            cells.append(cell)
        latency = entry["latency_seconds"]
        shown = "n/a" if latency is None else f"{latency['p50'] * 1000:.0f} ms"
        lines.append(
            f"| {entry['name']} | "
            + " | ".join(cells)
            + f" | {entry['requests']} | {entry['tokens']} | {shown} |"
        )
    for entry in configurations[1:]:
        worse = entry["worse_queries"]
        lines += ["", f"## Queries that {entry['name']} made worse: {worse['count']}", ""]
        for row in worse["worst"]:
            lines.append(
                f"- {row['query_id']} “{row['query']}”: nDCG@10 {row['first']:.3f} → "
                f"{row['nDCG@10']:.3f}"
            )
    return "\n".join(lines) + "\n"


def _shown(interval: dict[str, float]) -> str:
    return f"{interval['mean']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def _plot(report: dict[str, Any], path: Path) -> None:
    matplotlib = needs("matplotlib")
    matplotlib.use("Agg")
    pyplot = needs("matplotlib.pyplot")
    configurations = report["configurations"]
    names = list(configurations[0]["metrics"])
    width = 0.8 / len(configurations)
    figure, axes = pyplot.subplots(figsize=(2 + 2 * len(names), 4))
    for number, entry in enumerate(configurations):
        means = [entry["metrics"][n]["mean"] for n in names]
        errors = [
            [entry["metrics"][n]["mean"] - entry["metrics"][n]["low"] for n in names],
            [entry["metrics"][n]["high"] - entry["metrics"][n]["mean"] for n in names],
        ]
        positions = [i + number * width for i in range(len(names))]
        axes.bar(positions, means, width, yerr=errors, capsize=3, label=entry["name"][:40])
    axes.set_xticks([i + width * (len(configurations) - 1) / 2 for i in range(len(names))])
    axes.set_xticklabels(names)
    axes.set_ylim(0, 1)
    axes.set_ylabel(f"mean over queries ({report['settings']['confidence']:.0%} interval)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


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
            base_url=arguments.base_url,
        )
    except SiliconFlowError as error:
        print(f"evaluate: {error}", file=sys.stderr)
        return 1
    for entry in report["configurations"]:
        metrics = ", ".join(f"{n} {_shown(v)}" for n, v in entry["metrics"].items())
        print(f"{entry['name']}: {metrics}")
    print(f"report written to {arguments.out}")
    return 0
