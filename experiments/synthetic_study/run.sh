#!/usr/bin/env bash
# The synthetic study: relabel ratio {0, 0.5, 0.9} x {HRN composite, leaf CE only, per-level CE, coarse-label
# constraint, C-HMCNN} x 3 seeds, on the CPU; then one report. Runs go to multirun/synthetic_study/ (not
# committed); results.md, results.csv and the plot land beside this script.
# Two sweeps run side by side with one thread each: small 32 px convolutions use two cores poorly.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-multirun/synthetic_study}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
(
  $PY -m hrn.train experiment=synthetic_study loss=composite,leaf_ce hydra.sweep.dir="$OUT/a"
  $PY -m hrn.train experiment=synthetic_study model=chmcnn seed=0 hydra.sweep.dir="$OUT/c0"
) > "$OUT.a.log" 2>&1 &
first=$!
(
  $PY -m hrn.train experiment=synthetic_study loss=per_level_ce,coarse_constraint hydra.sweep.dir="$OUT/b"
  $PY -m hrn.train experiment=synthetic_study model=chmcnn seed=1,2 hydra.sweep.dir="$OUT/c12"
) > "$OUT.b.log" 2>&1 &
second=$!
status=0
wait $first || status=$?
wait $second || status=$?
$PY -m hrn.report "$OUT/a" "$OUT/b" "$OUT/c0" "$OUT/c12" --out experiments/synthetic_study
exit $status
