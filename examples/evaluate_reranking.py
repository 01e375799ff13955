"""Does reranking help on my data? Compare no reranking with two rerankers on a labelled set,
then turn the labels into a calibration and a threshold that means a precision.

Runs offline against the bundled emulator unless SILICONFLOW_API_KEY is set (the emulator's
scores are lexical stand-ins, so its figures say nothing about the real models). Needs the
`evaluate` extra. The labelled set is `examples/data/pantry` (BEIR layout: 48 documents, 144
queries, written for this project); point DATA_DIR at your own.

    python examples/evaluate_reranking.py [DATA_DIR] [--out REPORT_DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _support import real_api_or_emulator

from siliconflow_rerank import Calibration, SiliconFlowClient, evaluate

HERE = Path(__file__).parent
MODEL = "BAAI/bge-reranker-v2-m3"
QWEN = (
    "Qwen/Qwen3-Reranker-8B;instruction=Given a cooking question, find the passage that answers it"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", nargs="?", default=str(HERE / "data" / "pantry"))
    parser.add_argument("--out", default="pantry-report")
    arguments = parser.parse_args()
    with real_api_or_emulator():
        report = evaluate(
            arguments.data_dir, ["none", MODEL, QWEN], out=arguments.out, calibrate=True
        )
        for entry in report["configurations"]:
            ndcg = entry["metrics"]["nDCG@10"]
            versus = entry.get("versus_first", {}).get("nDCG@10")
            change = (
                "" if versus is None else f" ({versus['delta']:+.3f}, p={versus['p_value']:.2f})"
            )
            print(f"{entry['name'][:50]:<50} nDCG@10 {ndcg['mean']:.3f}{change}")
        out = Path(arguments.out)
        print(f"\nReport: {out / 'report.md'}, {out / 'report.png'}, {out / 'results.json'}")

        # The same labels, as a calibration: scores become probabilities of relevance, and a
        # threshold can be chosen for the precision it had on these labels.
        calibration = Calibration.load(out / "calibration.json")
        threshold = calibration.for_call(MODEL, None).threshold_for(0.7)
        print(
            f"Calibration: {out / 'calibration.json'}; min_relevance={threshold:.2f} kept "
            "documents that were relevant at least 70% of the time."
        )
        corpus = [
            "{title} {text}".format_map(json.loads(line))
            for line in (Path(arguments.data_dir) / "corpus.jsonl").read_text().splitlines()
        ]
        query = "is brown rice better than white"
        with SiliconFlowClient(calibration=calibration) as client:
            kept = client.rerank(query, corpus, model=MODEL, min_relevance=threshold)
        print(f"'{query}': {len(kept.results)} of {len(corpus)} documents pass it:")
        for result in kept.results:
            print(f"  {result.relevance_score:.2f}  {corpus[result.index][:70]}")


if __name__ == "__main__":
    main()
