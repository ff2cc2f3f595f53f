#!/usr/bin/env bash
# The synthetic study: relabel ratio {0, 0.5, 0.9} x {HRN composite, leaf CE only, per-level CE, coarse-label
# constraint, C-HMCNN} x 3 seeds, on the CPU; then one report. Runs go to multirun/synthetic_study/ (not
# committed); results.md, results.csv and the plot land beside this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-multirun/synthetic_study}
$PY -m hrn.train experiment=synthetic_study loss=composite,leaf_ce,per_level_ce,coarse_constraint \
    hydra.sweep.dir="$OUT/losses"
$PY -m hrn.train experiment=synthetic_study model=chmcnn hydra.sweep.dir="$OUT/chmcnn"
$PY -m hrn.report "$OUT/losses" "$OUT/chmcnn" --out experiments/synthetic_study
