#!/usr/bin/env bash
# Fine-tuning curves (issue 37): M minutes of wall time on a rendered city from ImageNet weights
# (configs/finetune_cpu.yaml) vs from random weights (session 19's scratch recipe, as
# benchmarks/pretrain/finetune.sh), the same test views: benchmarks/imagenet/ft<M>_<arm>_<city>.json.
#   bash benchmarks/imagenet/finetune.sh CITY ARM M [M ...]      (done ones are skipped)
# CITY: london | monaco (runs/<city>_dense, rendered as in benchmarks/RESULTS.md). ARM: imagenet | scratch,
# or TAG=name SET="section.key=value ..." for a variant of the imagenet recipe.
set -euo pipefail
cd "$(dirname "$0")/../.."
CITY=$1 ARM=$2; shift 2
TAG=${TAG:-$ARM}
for M in "$@"; do
  out=benchmarks/imagenet/ft${M}_${TAG}_${CITY}.json
  [ -f $out ] && continue
  run=runs/in_${CITY}_ft${M}_$TAG sets=()
  for s in ${SET:-}; do sets+=(--set "$s"); done
  if [ $ARM = scratch ]; then
    .venv/bin/geoloc train embedding --data runs/${CITY}_dense --config benchmarks/london/bench_london_s13_dense.yaml \
        --set embedding.positives=geodesic --set data.image_size=64 --set data.resize=73 --set train.max_minutes=$M \
        --out $run
  else
    .venv/bin/geoloc train embedding --data runs/${CITY}_dense --config configs/finetune_cpu.yaml \
        --set train.max_minutes=$M "${sets[@]}" --out $run
  fi
  .venv/bin/geoloc evaluate --run $run && cp $run/metrics.json $out
done
