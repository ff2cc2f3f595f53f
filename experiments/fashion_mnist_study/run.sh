#!/usr/bin/env bash
# The Fashion-MNIST study: relabel ratio {0, 0.5, 0.7, 0.9} x {HRN (sigmoid scores into the tree loss, the paper),
# HRN with raw logits into the tree loss, leaf CE only, per-level CE, coarse-label constraint, C-HMCNN} x 3 seeds
# on the real Fashion-MNIST files (conf/experiment/fashion_mnist_study.yaml), on the CPU; then one report.
# Runs go to multirun/fashion_mnist_study/ (not committed); results.md, results.csv and the plot land beside this
# script. Two sweeps run side by side with one thread each: small 32 px convolutions use two cores poorly.
# Needs the files: apt-get install dataset-fashion-mnist (or dataset.root=... on the command line, see README).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-multirun/fashion_mnist_study}
STUDY=experiment=fashion_mnist_study
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
start=$(date +%s)
(
  $PY -m hrn.train $STUDY loss=composite,leaf_ce,per_level_ce hydra.sweep.dir="$OUT/a" "$@"
) > "$OUT/a.log" 2>&1 &
first=$!
(
  $PY -m hrn.train $STUDY loss.tree_scores=logits hydra.sweep.dir="$OUT/b" "$@"
  $PY -m hrn.train $STUDY loss=coarse_constraint hydra.sweep.dir="$OUT/c" "$@"
  $PY -m hrn.train $STUDY model=chmcnn hydra.sweep.dir="$OUT/d" "$@"
) > "$OUT/b.log" 2>&1 &
second=$!
status=0
wait $first || status=$?
wait $second || status=$?
echo "study: $(( $(date +%s) - start )) s wall for both sweeps" | tee "$OUT/wall.txt"
$PY -m hrn.report "$OUT/a" "$OUT/b" "$OUT/c" "$OUT/d" --out experiments/fashion_mnist_study
exit $status
