#!/usr/bin/env bash
# Fine-tuning curves on Monaco (issue 28): Monaco is one of runs/pre60's cities, so its curve starts from a
# 60-minute pretraining that leaves it out (Heidelberg, Copenhagen, London; pre60's recipe otherwise), then
# M minutes on a Monaco render from that model vs from random weights (finetune.sh):
# benchmarks/pretrain/ft<M>_pre60_nomonaco_monaco.json and ft<M>_scratch_monaco.json.
#   bash benchmarks/pretrain/monaco_curve.sh [M ...]      (default 2 5 10 30; resumable, done ones are skipped)
# About 60 + 2 x (M + 3) minutes on a 2-core AMX Xeon.
set -euo pipefail
cd "$(dirname "$0")/../.."
OSM=../shared/data/osm PRE=runs/pre60_nomonaco D=runs/monaco_dense
[ -f $PRE/model_card.json ] || .venv/bin/geoloc pretrain $OSM/heidelberg.osm.bz2 $OSM/copenhagen.osm.bz2 \
    $OSM/london_city.osm.bz2 --views 1500 --out $PRE
[ -f $D/test.csv ] || .venv/bin/geoloc synth render --osm $OSM/monaco.osm.bz2 --out $D --train 5000 --headings 4 \
    --test 500 --val 200 --size 73
DATA=$D CITY=monaco bash benchmarks/pretrain/finetune.sh $PRE "$@"
