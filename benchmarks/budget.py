"""A shared budget under cold starts (issue 32): processes spawned beside CPU-bound work share
one Redis budget; the server records what it received. Repeated runs, 4 and 8 processes, sync
and async, a request budget and a token budget (billed as the service bills).

Writes `benchmarks/budget.md` and `benchmarks/budget.json`. Run by `benchmarks/run.sh` (runs
as `BUDGET_RUNS` says, 20 by default: about 45 minutes on 2 cores), or alone:
`python benchmarks/budget.py [--runs N] [--limit KIND]`; `--minute` measures a minute's window
instead (minutes a run); `--report` rewrites the report from the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import BudgetRun, machine, redis_server, run_budget

HERE = Path(__file__).parent
TOKENS_PER_WINDOW = 1_000
"""The token budget's size: about 20 of the runs' calls (1 to 8 short documents each)."""

CONFIGURATIONS = [
    BudgetRun(processes=processes, mode=mode, limit=limit, per_window=size)
    for limit, size in (("requests", 20), ("tokens", TOKENS_PER_WINDOW))
    for processes in (4, 8)
    for mode in ("sync", "async")
]

MINUTE = [
    BudgetRun(
        processes=8,
        mode="async",
        limit=limit,
        per_window=size * 30,
        window=60.0,
        margin=0.5,
        seconds=150.0,
    )
    for limit, size in (("requests", 20), ("tokens", TOKENS_PER_WINDOW))
]
"""The same rates over a minute's window with the default margin (`--minute`): 2.5 windows a
run, so each run takes minutes."""


def _name(run: BudgetRun) -> str:
    name = f"{run.processes} processes, {run.mode}, {run.per_window:,} {run.limit} per window"
    if run.window != CONFIGURATIONS[0].window:
        name += f" of {run.window:g} s, margin {run.margin:g} s"
    return name


def measure(runs: int, limits: list[str], minute: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    configurations = [run for run in (MINUTE if minute else CONFIGURATIONS) if run.limit in limits]
    with redis_server() as redis_url:
        if redis_url is None:
            raise SystemExit("no redis-server to measure with")
        for number in range(runs):
            for run in configurations:  # interleaved: a slow spell of the machine hits them all
                print(f"run {number + 1} of {runs}: {_name(run)}", file=sys.stderr, flush=True)
                entry = results.setdefault(_name(run), {"run": dataclasses.asdict(run), "runs": []})
                entry["runs"].append(run_budget(redis_url, run))
    return results


def report(results: dict[str, Any]) -> str:
    first = next(iter(results.values()))["run"]
    lines = [
        "# A shared budget under cold starts",
        "",
        f"Machine: {machine()}. Produced by `python benchmarks/budget.py`.",
        "",
        f"Each run spawns the processes cold beside {first['burners']} CPU-bound ones; every "
        f"process calls as fast as one Redis budget allows for {first['seconds']:g} s (window "
        f"{first['window']:g} s, margin {first['margin']:g} s), against the minimal server "
        "billing rerank as the service does (the query once per document). The server records "
        "each request's arrival and billed tokens. Worst window: the most requests (or billed "
        "tokens) any window of the budget's length held at the server. Utilisation: the window "
        "over the mean time the server took to receive more than the budget (1.0: every window "
        "full to the limit; the margin caps it at "
        f"{first['window'] / (first['window'] + first['margin']):.2f}). The rows of a minute's "
        f"window (`--minute`, where measured) run {MINUTE[0].seconds:g} s with the default "
        f"margin of {MINUTE[0].margin:g} s, which caps utilisation at "
        f"{MINUTE[0].window / (MINUTE[0].window + MINUTE[0].margin):.3f}.",
        "",
        "| configuration | runs | worst window (max of runs) | limit | runs over the limit "
        "| utilisation (min / median) | answered (median) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in results.items():
        runs, limit = entry["runs"], entry["run"]["per_window"]
        worst = [r["worst window"] for r in runs]
        used = [r["utilisation"] for r in runs]
        lines.append(
            f"| {name} | {len(runs)} | {max(worst):g} | {limit:g} "
            f"| {sum(w > limit for w in worst)} | {min(used):.3f} / {statistics.median(used):.3f} "
            f"| {statistics.median(r['answered'] for r in runs):g} |"
        )
    lines += [
        "",
        "A token budget is held to the billed tokens, but a call is admitted by what it "
        "books: its estimate (a token per 3 bytes of its texts, high on purpose; for these "
        "short documents about 1.65 times what is billed), scaled by the highest recent ratio "
        "of billed to estimated tokens the client has seen for the model. The first call of "
        "each process books the estimate, the next ones about what they are billed, so the "
        "room held by estimates, in flight and at the end of each window, is small.",
        "",
        "`--limit requests` or `--limit tokens` measures one kind and keeps the other's rows: "
        "the two kinds may come from separate runs (of the same code for request budgets, "
        "which book no tokens).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--report", action="store_true", help="only rewrite the report")
    parser.add_argument(
        "--limit",
        choices=["requests", "tokens"],
        action="append",
        help="measure only budgets of this kind, keeping the others' last results (repeatable)",
    )
    parser.add_argument(
        "--minute",
        action="store_true",
        help="measure the minute-long windows instead (each run takes minutes)",
    )
    arguments = parser.parse_args()
    saved = HERE / "budget.json"
    results = json.loads(saved.read_text("utf-8")) if saved.exists() else {}
    if not arguments.report:
        limits = arguments.limit or ["requests", "tokens"]
        measured = measure(arguments.runs, limits, arguments.minute)
        kept = {n: e for n, e in results.items() if n not in measured}
        results = {
            _name(run): (measured | kept)[_name(run)]
            for run in CONFIGURATIONS + MINUTE
            if _name(run) in measured | kept
        }
        saved.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = report(results)
    (HERE / "budget.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
