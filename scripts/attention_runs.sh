#!/usr/bin/env bash
# Issue 34's measured answer: cnn_fast's recipe (20 epochs, bf16 where native), 3 seeds, for no attention
# and every registered kind, each published as a record (scripts/publish_run.sh). Each kind's seed-0
# checkpoint is also scored by explain.py --faithfulness on the same 100 test images (the first 10 of
# each class), and the leaderboard kept as results/<name>/faithfulness/seed0.json (about 5 minutes).
# A finished run is skipped and an interrupted one resumes, so run it again until it prints nothing new.
# On one thread of the 2-core Xeon a run takes from about 15 minutes (none) to about 40 (cbam: 0.41x
# none's training speed, results/attention_cost.json); run two at once, one per core:
#   scripts/attention_runs.sh 0 & scripts/attention_runs.sh 1 & wait; scripts/attention_runs.sh 2
# Then: python report.py results --update README.md docs/results.md
# Environment: DATA, LOGS and OMP_NUM_THREADS as scripts/publish_run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=("${@:-0 1 2}")
data=${DATA:-../shared/cifar10-jpg}
logs=${LOGS:-lightning_logs}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for seed in ${seeds[@]}; do
    # The cheapest first (benchmarks/attention_cost.py), so that an interrupted queue has answered the most kinds.
    for kind in none eca gc se coord cbam ge; do
        name=cnn_fast; block=(); [ "$kind" = none ] || { name="cnn_fast_$kind"; block=(--model.attention "$kind"); }
        if [ ! -f "results/$name/seed$seed.json" ]; then
            bash scripts/publish_run.sh "$name" cnn_fast "${block[@]}" --seed_everything "$seed" \
                --trainer.logger.init_args.version "seed$seed"
        fi
        leaderboard="results/$name/faithfulness/seed$seed.json"
        if [ "$seed" = 0 ] && [ ! -f "$leaderboard" ]; then
            best=$(ls "$logs/$name/seed$seed/checkpoints/"best-*.ckpt | head -n 1)
            python explain.py --ckpt "$best" --images "$data/test" --per-class 10 --faithfulness --no-pictures \
                --out "$logs/$name/seed$seed/faithfulness_test100"
            mkdir -p "$(dirname "$leaderboard")"
            cp "$logs/$name/seed$seed/faithfulness_test100/faithfulness.json" "$leaderboard"
        fi
    done
done
