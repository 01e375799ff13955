"""An evaluation's figures and pages: measures per query (ir-measures), bootstrap intervals and
paired permutation tests (scipy), `results.json`'s content, `report.md` and `report.png`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ._config import needs
from ._evaluate_data import LabelledSet, Run, ranked

__all__ = ["build_report", "markdown", "per_query", "plot", "shown"]

CONFIDENCE = 0.95
WORST_SHOWN = 10


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


def build_report(
    ir_measures: Any,
    data: LabelledSet,
    candidates: dict[str, list[str]],
    runs: list[Run],
    depth: int,
    recall_at: Sequence[int],
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    measures = _measures(ir_measures, recall_at)
    ceiling_measure = {f"Recall@{depth}": ir_measures.R @ depth}
    first_run = {q: ranked(found) for q, found in candidates.items()}
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
        f"{shown(ceiling)}: no reranking of these candidates can do better.",
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
            cell = shown(entry["metrics"][name])
            versus = entry.get("versus_first", {}).get(name)
            if versus is not None:
                cell += f"<br>Δ {versus['delta']:+.3f}, p = {versus['p_value']:.3f}"
            cells.append(cell)
        latency = entry["latency_seconds"]
        p50 = "n/a" if latency is None else f"{latency['p50'] * 1000:.0f} ms"
        lines.append(
            f"| {entry['name']} | "
            + " | ".join(cells)
            + f" | {entry['requests']} | {entry['tokens']} | {p50} |"
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


def shown(interval: dict[str, float]) -> str:
    return f"{interval['mean']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def plot(report: dict[str, Any], path: Path) -> None:
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
