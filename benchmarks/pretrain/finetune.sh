#!/usr/bin/env bash
# Fine-tuning curves on London (issue 28): M minutes of wall time from a pretrained run vs from random
# weights, the same recipe and test views: benchmarks/pretrain/ft<M>_<pre60|scratch>_london.json.
#   bash benchmarks/pretrain/finetune.sh PRETRAINED_RUN [M ...]     (default 2 5 10 30; done ones are skipped)
set -euo pipefail
cd "$(dirname "$0")/../.."
PRE=$1; shift
for M in ${*:-2 5 10 30}; do
  for arm in pre60 scratch; do
    out=benchmarks/pretrain/ft${M}_${arm}_london.json
    [ -f $out ] && continue
    run=runs/lon_ft${M}_$arm weights=(); [ $arm = pre60 ] && weights=(--set model.weights=$PRE)
    .venv/bin/geoloc train embedding --data runs/london_dense --config benchmarks/london/bench_london_s13_dense.yaml \
        --set embedding.positives=geodesic --set data.image_size=64 --set data.resize=73 --set train.max_minutes=$M \
        "${weights[@]}" --out $run
    .venv/bin/geoloc evaluate --run $run && cp $run/metrics.json $out
  done
done
