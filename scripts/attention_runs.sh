#!/usr/bin/env bash
# Issue 34's measured answer: cnn_fast's recipe (20 epochs, bf16 where native), 3 seeds, for no attention
# and every registered kind, each published as a record (scripts/publish_run.sh). A finished run is
# skipped and an interrupted one resumes, so run it again until it prints nothing new. About 10-25
# minutes a run on one thread of a 2-core CPU (coord and ge are the slowest); run two at once, one per core:
#   scripts/attention_runs.sh 0 & scripts/attention_runs.sh 1 & wait; scripts/attention_runs.sh 2
# Then: python report.py results --update README.md docs/results.md
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=("${@:-0 1 2}")
for seed in ${seeds[@]}; do
    for kind in none se cbam eca gc ge coord; do
        name=cnn_fast; [ "$kind" = none ] || name="cnn_fast_$kind"
        [ -f "results/$name/seed$seed.json" ] && continue
        bash scripts/publish_run.sh "$name" cnn_fast --model.attention "$kind" --seed_everything "$seed" \
            --trainer.logger.init_args.version "seed$seed"
    done
done
