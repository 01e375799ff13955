"""Ray: rerank a dataset of 10,000 queries x 50 candidates on a local Ray instance, with one
Redis budget shared by every actor when REDIS_URL is set, and write the ranks to Parquet.

Runs offline against the bundled emulator unless SILICONFLOW_API_KEY is set. Needs the `ray`
extra (`pip install ".[ray]"`); `--queries` and `--candidates` make it smaller.

    python examples/ray_rerank.py --out ranked.parquet
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ray
from _support import real_api_or_emulator

from siliconflow_rerank import RedisRateLimit
from siliconflow_rerank.ray import RerankBatches

WORDS = ["apple", "pear", "bus", "car", "fridge", "pie", "lemon", "bike", "tea", "bread"]


def generated(queries: int, candidates: int) -> list[dict[str, object]]:
    """Rows of an evaluation set: a query and its candidate passages."""
    return [
        {
            "query_id": q,
            "query": f"{WORDS[q % 10]} {WORDS[(q * 7) % 10]}",
            "candidates": [
                f"passage {c} about {WORDS[(q + c) % 10]} and {WORDS[(c * 3) % 10]}"
                for c in range(candidates)
            ],
        }
        for q in range(queries)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="Parquet folder to write")
    arguments = parser.parse_args()

    with real_api_or_emulator(), tempfile.TemporaryDirectory() as folder:
        # The key and server reach the actors in the environment the local instance starts with
        # (never runtime_env, whose values Ray writes to its logs; on a cluster, start each node
        # with SILICONFLOW_API_KEY set, or mount a file and pass api_key_file=).
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")  # fmt: skip
        settings: dict[str, object] = {}
        if os.environ.get("REDIS_URL"):  # one budget for every actor (and every other job)
            settings["rate_limit"] = RedisRateLimit(
                os.environ["REDIS_URL"], requests_per_minute=2_000, name="ray-example"
            )
        started = time.perf_counter()
        rows = ray.data.from_items(generated(arguments.queries, arguments.candidates))
        ranked = rows.map_batches(
            RerankBatches,
            fn_constructor_kwargs={"model": "BAAI/bge-reranker-v2-m3", **settings},
            compute=ray.data.ActorPoolStrategy(size=2),  # two actors, each one client
            batch_size=100,
        )
        out = arguments.out or Path(folder) / "ranked"
        ranked.write_parquet(str(out))
        elapsed = time.perf_counter() - started
        table = ray.data.read_parquet(str(out))
        count = table.count()
        first = table.sort("query_id").take(1)[0]
        ray.shutdown()
        best = list(first["ranks"]).index(1)
        print(f"Reranked {count} queries x {arguments.candidates} candidates in {elapsed:.1f} s")
        print(f"Query {first['query']!r}: best candidate {first['candidates'][best]!r}")
        if arguments.out:
            print(f"Parquet written to {out}")
        else:
            print("Parquet written to a temporary folder, removed now; --out PATH keeps it")


if __name__ == "__main__":
    main()
