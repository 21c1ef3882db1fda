#!/usr/bin/env bash
# Does rendered pretraining add anything on top of ImageNet (issue 37)? 10 minutes of `geoloc pretrain` on
# Monaco and Heidelberg (600 positions x 4 headings, session 19's knob-table setup) from EfficientNet-Lite0's
# ImageNet weights with configs/finetune_cpu.yaml's model and input, then zero-shot on the London render:
# benchmarks/imagenet/zs_pre10_imagenet_london.json, against zs_efficientnet_lite0_gem_128_london.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
OSM=../shared/data/osm PRE=runs/pre10_imagenet
[ -f $PRE/model_card.json ] || .venv/bin/geoloc pretrain $OSM/monaco.osm.bz2 $OSM/heidelberg.osm.bz2 --views 600 \
    --out $PRE --set train.max_minutes=10 --set model.arch=efficientnet_lite0 --set model.weights=imagenet \
    --set model.embed_dim=0 --set model.freeze_bn=true --set train.lr=0.0005 --set data.image_size=128 \
    --set data.resize=146
out=benchmarks/imagenet/zs_pre10_imagenet_london.json
[ -f $out ] && exit 0
.venv/bin/geoloc index build --run $PRE --data runs/london_dense
.venv/bin/geoloc evaluate --run $PRE --data runs/london_dense && cp $PRE/metrics.json $out
