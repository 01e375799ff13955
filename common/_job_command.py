"""`python -m siliconflow_rerank embed|rerank INPUT --out OUTPUT`: the corpus jobs as commands."""

from __future__ import annotations

import logging
import os
import sys

from ._config import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL
from ._exceptions import SiliconFlowError
from ._job_kinds import EmbedJob, RerankJob
from ._job_state import JobSummary
from ._jobs import Job

__all__ = ["main"]


def main(argv: list[str] | None = None, kind: str = "embed") -> int:
    """`python -m siliconflow_rerank embed|rerank INPUT --out OUTPUT [options]`: 0 when the
    output is complete, 3 when a daily limit stopped the job, 1 on an error, 2 on bad usage,
    130 when interrupted (Ctrl-C)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog=f"python -m siliconflow_rerank {kind}",
        description=(
            "Embed a column into Parquet vectors"
            if kind == "embed"
            else "Rerank each row's candidates against its query"
        )
        + ", resumably: run the same command again after an interruption.",
    )
    parser.add_argument("input", help="JSONL or Parquet")
    parser.add_argument("--out", required=True, help="the Parquet file to write")
    parser.add_argument(
        "--model", default=DEFAULT_EMBEDDING_MODEL if kind == "embed" else DEFAULT_MODEL
    )
    parser.add_argument("--id-field", default="id")
    if kind == "embed":
        parser.add_argument("--text-field", default="text")
        parser.add_argument("--image-field", help="a column of image URLs or data URIs instead")
        parser.add_argument("--dimensions", type=int)
    else:
        parser.add_argument("--query-field", default="query")
        parser.add_argument("--candidates-field", default="candidates")
    parser.add_argument("--instruction")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests-per-minute", type=int)
    parser.add_argument("--tokens-per-minute", type=int)
    parser.add_argument("--requests-per-day", type=int)
    parser.add_argument("--tokens-per-day", type=int)
    parser.add_argument("--redis-url", help="share the budget through this Redis")
    parser.add_argument("--base-url", help="the API root (default: SILICONFLOW_BASE_URL)")
    parser.add_argument("--ray", action="store_true", help="run on a Ray cluster (RAY_ADDRESS)")
    parser.add_argument("--no-progress", action="store_true")
    arguments = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    source, out = arguments.pop("input"), arguments.pop("out")
    ray = arguments.pop("ray") or bool(os.environ.get("RAY_ADDRESS"))
    arguments["progress"] = False if arguments.pop("no_progress") else None
    settings = {k: v for k, v in arguments.items() if v is not None}
    try:
        job: Job = (EmbedJob if kind == "embed" else RerankJob)(source, out, **settings)
        summary = job.run() if not ray else _ray_run(job)
    except SiliconFlowError as error:
        print(f"{kind}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: what is done is kept, and the same command resumes
        print(
            f"{kind}: interrupted; the batches answered so far are kept: run the same command "
            "again to resume",
            file=sys.stderr,
        )
        return 130
    print(summary.line())
    return 0 if summary.complete else 3


def _ray_run(job: Job) -> JobSummary:
    from ._ray_jobs import run_on_ray

    summary: JobSummary = run_on_ray(job)
    return summary
