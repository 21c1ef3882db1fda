#!/usr/bin/env bash
# The geometric rerank (issue 38) on renders made at a size that suits matching: a run evaluated without
# it and with index.rerank=auto, on the same test views: benchmarks/rerank/<arm>_<city>_{off,auto}.json and
# the paired difference (benchmarks/pretrain/paired_r1.py).
#   bash benchmarks/rerank/rerank.sh CITY ARM       (CITY: london | monaco; ARM: zs (ImageNet Lite0, no
#                                                   training) | ft5 (configs/finetune_cpu.yaml, 5 minutes))
# Renders: runs/<city>_rr320 (2,000 positions x 4 headings at 320 px, 200 validation and 300 test views).
set -euo pipefail
cd "$(dirname "$0")/../.."
CITY=$1 ARM=$2
declare -A OSM=([london]=london_city [monaco]=monaco)
data=runs/${CITY}_rr320 run=runs/rr_${ARM}_${CITY} out=benchmarks/rerank/${ARM}_${CITY}
[ -f $data/test.csv ] || .venv/bin/geoloc synth render --osm ../shared/data/osm/${OSM[$CITY]}.osm.bz2 --out $data \
    --train 2000 --headings 4 --test 300 --val 200 --size 320
if [ ! -f $run/index/index.json ]; then
  if [ $ARM = zs ]; then
    .venv/bin/geoloc index build --backbone efficientnet_lite0 --data $data --out $run
  else
    .venv/bin/geoloc train embedding --data $data --config configs/finetune_cpu.yaml --set train.max_minutes=5 --out $run
  fi
fi
if [ ! -f ${out}_off.json ]; then
  .venv/bin/geoloc evaluate --run $run   # before the rerank: config.yaml has index.rerank off
  mkdir -p ${run}_off && cp $run/predictions.csv ${run}_off/ && cp $run/metrics.json ${out}_off.json
fi
if [ ! -f ${out}_auto.json ]; then
  .venv/bin/geoloc index build --run $run --set index.rerank=auto
  .venv/bin/geoloc evaluate --run $run --save-predictions 12 && cp $run/metrics.json ${out}_auto.json
fi
.venv/bin/python benchmarks/pretrain/paired_r1.py $run ${run}_off | tee ${out}_paired.txt
