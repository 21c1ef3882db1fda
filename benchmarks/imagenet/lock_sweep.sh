#!/usr/bin/env bash
# The seed study's lock-factor sweep (issue 37) on ImageNet weights: the first L% of EfficientNet-Lite0's
# parameterised layers frozen, for the cells baseline (the study's Voronoi cells, SGD) and the embedding
# (configs/finetune_cpu.yaml), on London renders at 128 px. A fixed number of optimiser steps, not minutes,
# so that every lock factor sees the same images (as the study's fixed epochs) and the figures do not depend
# on the CPU. Scored on the training's own validation views (200, against the whole database; the cells' is
# the study's cell accuracy), not a full evaluation: its floors and index cost 7 minutes a run, the training
# 2-5: benchmarks/imagenet/lock<L>_<method>_<city>.csv (the run's log.csv).
#   bash benchmarks/imagenet/lock_sweep.sh CITY METHOD L [L ...]       (METHOD: embedding | cells; done ones skipped)
set -euo pipefail
cd "$(dirname "$0")/../.."
CITY=$1 METHOD=$2; shift 2
STEPS=${STEPS:-300}
for L in "$@"; do
  out=benchmarks/imagenet/lock${L}_${METHOD}_${CITY}.csv
  [ -f $out ] && continue
  run=runs/lock${L}_${METHOD}_${CITY}
  fixed=(--set model.lock_factor=$L --set train.max_minutes=0 --set train.epochs=1 --set train.max_steps_per_epoch=$STEPS)
  if [ $METHOD = embedding ]; then
    .venv/bin/geoloc train embedding --data runs/${CITY}_dense --config configs/finetune_cpu.yaml "${fixed[@]}" --out $run
  else
    .venv/bin/geoloc train cells --data runs/${CITY}_dense --config configs/cells_voronoi.yaml \
        --set model.arch=efficientnet_lite0 --set data.image_size=128 --set data.resize=146 "${fixed[@]}" --out $run
  fi
  cp $run/log.csv $out
done
