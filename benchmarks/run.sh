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
"$venv/bin/python" benchmarks/bench.py
