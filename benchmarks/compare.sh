#!/usr/bin/env bash
# Benchmark this tree against another revision in one run: both versions of the package, each
# in its own virtual environment, measured by this tree's benchmarks/bench.py, in turns (old,
# new, old, new, ...), then one table of both columns with the spread between repeated runs
# (benchmarks/comparisons/OLD-NEW.md, and each run's figures in benchmarks/comparisons/OLD-NEW/).
# Usage: bash benchmarks/compare.sh REVISION [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
revision=${1:?usage: bash benchmarks/compare.sh REVISION [ROUNDS]}
rounds=${2:-2}
work=$(mktemp -d)
cleanup() {
    git worktree remove --force "$work/tree" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
git worktree add --detach "$work/tree" "$revision" >/dev/null
extras=(llama-index-postprocessor-siliconflow-rerank matplotlib)
for side in old new; do
    python3 -m venv "$work/$side"
done
"$work/old/bin/python" -m pip install -q "$work/tree[all]" "${extras[@]}"
"$work/new/bin/python" -m pip install -q ".[all]" "${extras[@]}"
if [ ! -d benchmarks/.vendor ]; then
    "$work/new/bin/python" -m pip install -q --no-deps --target benchmarks/.vendor \
        langchain-siliconflow==1.0.0
fi
mkdir -p "$work/results"
for round in $(seq 1 "$rounds"); do
    for side in old new; do
        echo "round $round of $rounds: $side" >&2
        # From the work folder, so that each side imports its installed package, not this tree.
        (cd "$work" && BENCH_RESULTS="$work/results/$side-$round.json" \
            "$work/$side/bin/python" "$OLDPWD/benchmarks/bench.py")
    done
done
old=$(git rev-parse --short "$revision")
new=$(git rev-parse --short HEAD)
out="benchmarks/comparisons/$old-$new"
mkdir -p benchmarks/comparisons
"$work/new/bin/python" benchmarks/compare.py "$old" "$new" "$work/results" > "$out.md"
# Each run's own figures, beside the table, for a closer look at any row.
rm -rf "$out"
cp -r "$work/results" "$out"
cat "$out.md"
