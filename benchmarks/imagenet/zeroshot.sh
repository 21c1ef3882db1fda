#!/usr/bin/env bash
# ImageNet zero-shot on the renders (issue 37): a backbone's ImageNet weights, no training, the city's
# database indexed and its test views located: benchmarks/imagenet/zs_<arch>_<pool>_<size>_<city>.json.
#   bash benchmarks/imagenet/zeroshot.sh CITY ARCH POOL SIZE [SIZE ...]   (done ones are skipped)
# CITY: london (runs/london_dense) or monaco (runs/monaco_dense), rendered as in benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
CITY=$1 ARCH=$2 POOL=$3; shift 3
for S in "$@"; do
  out=benchmarks/imagenet/zs_${ARCH}_${POOL}_${S}_${CITY}.json
  [ -f $out ] && continue
  run=runs/zs_${ARCH}_${POOL}_${S}_${CITY}
  .venv/bin/geoloc index build --backbone $ARCH --data runs/${CITY}_dense --out $run \
      --set model.pooling=$POOL --set data.image_size=$S --set data.resize=$(( S * 73 / 64 ))
  .venv/bin/geoloc evaluate --run $run && cp $run/metrics.json $out
done
