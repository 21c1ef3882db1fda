#!/usr/bin/env bash
# Fine-tuning curves (issue 28): M minutes of wall time from a pretrained run vs from random weights, the
# same recipe and test views: benchmarks/pretrain/ft<M>_<pretrained run's name|scratch>_<city>.json.
#   bash benchmarks/pretrain/finetune.sh PRETRAINED_RUN [M ...]     (default 2 5 10 30; done ones are skipped)
# London by default (runs/london_dense); another city: DATA=RENDERED_FOLDER CITY=name bash ... (monaco_curve.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
PRE=$1; shift
DATA=${DATA:-runs/london_dense} CITY=${CITY:-london}
for M in ${*:-2 5 10 30}; do
  for arm in "$(basename "$PRE")" scratch; do
    out=benchmarks/pretrain/ft${M}_${arm}_${CITY}.json
    [ -f $out ] && continue
    run=runs/${CITY:0:3}_ft${M}_$arm weights=(); [ $arm = scratch ] || weights=(--set model.weights=$PRE)
    .venv/bin/geoloc train embedding --data $DATA --config benchmarks/london/bench_london_s13_dense.yaml \
        --set embedding.positives=geodesic --set data.image_size=64 --set data.resize=73 --set train.max_minutes=$M \
        "${weights[@]}" --out $run
    .venv/bin/geoloc evaluate --run $run && cp $run/metrics.json $out
  done
done
