#!/usr/bin/env bash
# Run the benchmarks in their own virtual environment (the peer package and matplotlib are
# installed there only, never as dependencies of this package), then write results.md/.png.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=benchmarks/.venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q -e ".[all]" llama-index-postprocessor-siliconflow-rerank matplotlib
# The vendor's langchain-siliconflow has our import name: it goes in a folder of its own, which
# only the embeddings section puts on its path.
if [ ! -d benchmarks/.vendor ]; then
    "$venv/bin/python" -m pip install -q --no-deps --target benchmarks/.vendor langchain-siliconflow==1.0.0
fi
"$venv/bin/python" benchmarks/bench.py
"$venv/bin/python" benchmarks/jobs.py
"$venv/bin/python" benchmarks/budget.py --runs "${BUDGET_RUNS:-20}"
