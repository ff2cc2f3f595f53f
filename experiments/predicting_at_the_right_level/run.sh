#!/usr/bin/env bash
# Which marginals to trust (issue 26, item 4): three seeds of the Fashion-MNIST relabel-0.9 model (1,000 training
# images a class, 5 epochs; about 10 minutes each on 2 CPU cores), then compare.py on their best checkpoints.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/runs}"
for seed in 0 1 2; do
    python -m hrn.train dataset=fashion_mnist dataset.train_per_class=1000 relabel_ratio=0.9 trainer.max_epochs=5 \
        seed="$seed" hydra.run.dir="$out/seed$seed" callbacks.progress_bar.refresh_rate=0
done
python "$here/compare.py" "$out"/seed0 "$out"/seed1 "$out"/seed2 --out "$here/results.json"
