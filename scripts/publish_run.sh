#!/usr/bin/env bash
# Train, test and predict one run, then write its record under results/ (issue 32: results kept as data).
#
#   scripts/publish_run.sh NAME CONFIG [fit flags...]
#   scripts/publish_run.sh cnn_fast cnn_fast --seed_everything 1 --trainer.logger.init_args.version seed1
#   scripts/publish_run.sh cnn_fast_eca cnn_fast --model.attention eca
#
# NAME is the run's row in the report (the logger's name; one row per NAME, one run per seed in it).
# Run it again after an interruption: the fit resumes from the newest last.ckpt of NAME (--ckpt_path
# last), then test and predict take its best-validation checkpoint. Environment:
#   DATA  the image folder (train/<class>/*, test/<class>/*)   default ../shared/cifar10-jpg
#   LOGS  where the run's folder goes (checkpoints, events)    default lightning_logs
#   OMP_NUM_THREADS  torch's threads                           default 1 (one run per core)
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,15p' "$0" >&2
    exit 2
fi
name=$1; config=$2; shift 2
cd "$(dirname "$0")/.."
[ -f "configs/$config.yaml" ] || { echo "error: configs/$config.yaml does not exist" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
data=${DATA:-../shared/cifar10-jpg}
logs=${LOGS:-lightning_logs}
args=(--config "configs/$config.yaml" --data.data_dir "$data" --trainer.logger.init_args.save_dir "$logs"
      --trainer.logger.init_args.name "$name" "$@")
python cli.py fit "${args[@]}" --ckpt_path last
# Flip test-time augmentation is logged beside the plain test/acc (test/acc_flip), never in its place; a mirror
# is not the image's mirror on pixel-permuted data.
# The effective config decides, so that a command-line --data.permute_pixels counts as well as the file's.
effective=$(python cli.py test "${args[@]}" --print_config)
flip=(--model.test_time_flip true)
if grep -q "^ *permute_pixels: true" <<< "$effective"; then flip=(); fi
python cli.py test "${args[@]}" "${flip[@]}" --ckpt_path best
python cli.py predict "${args[@]}" --ckpt_path best
# Record this run only (every version of NAME when the command names none): the other records stay as they are.
run=$name; previous=
for arg in "$@"; do
    case $arg in --trainer.logger.init_args.version=*) run="$name/${arg#*=}" ;; esac
    [ "$previous" = --trainer.logger.init_args.version ] && run="$name/$arg"
    previous=$arg
done
python report.py "$logs" --record-to results --run "$run"
