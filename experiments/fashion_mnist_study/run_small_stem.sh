#!/usr/bin/env bash
# The Fashion-MNIST study's central comparison with the small-image stem (conf/experiment/fashion_mnist_small_stem.yaml):
# HRN (paper), per-level CE and leaf CE at relabel ratio 0 and 0.9, 3 seeds = 18 runs, two sweeps side by side with
# one thread each on a 2-core CPU; then one report in experiments/fashion_mnist_study/small_stem/.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-multirun/fashion_mnist_small_stem}
STUDY=experiment=fashion_mnist_small_stem
LOSSES=loss=composite,per_level_ce,leaf_ce
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
start=$(date +%s)
$PY -m hrn.train $STUDY $LOSSES relabel_ratio=0 hydra.sweep.dir="$OUT/r0" "$@" > "$OUT/r0.log" 2>&1 &
first=$!
$PY -m hrn.train $STUDY $LOSSES relabel_ratio=0.9 hydra.sweep.dir="$OUT/r09" "$@" > "$OUT/r09.log" 2>&1 &
second=$!
status=0
wait $first || status=$?
wait $second || status=$?
echo "study: $(( $(date +%s) - start )) s wall for both sweeps" | tee "$OUT/wall.txt"
$PY -m hrn.report "$OUT/r0" "$OUT/r09" --out experiments/fashion_mnist_study/small_stem
exit $status
