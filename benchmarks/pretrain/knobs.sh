#!/usr/bin/env bash
# One domain-randomisation knob at a time (issue 28's knob table): for each knob, the 10-minute pretraining
# of the none10/rand10 rows (Monaco + Heidelberg, 600 positions x 4 headings each) with that knob alone,
# then zero-shot on the held-out cities (zeroshot.sh): benchmarks/pretrain/knob_<knob>_<city>_<day|dusk>.json.
#   bash benchmarks/pretrain/knobs.sh [KNOB ...]      (default: every knob; a finished knob is skipped)
#   SEED=1 bash benchmarks/pretrain/knobs.sh furniture none      (another seed of the render and the training:
#   tags knob_<knob>_s1; the knob "none" is the no-knob row, none10_s1)
# About 16 minutes a knob on a 2-core AMX Xeon; kill it at any time and run it again to go on.
set -euo pipefail
cd "$(dirname "$0")/../.."
OSM=../shared/data/osm
KNOBS=${*:-$(.venv/bin/python -c "from retrieval.synth.randomize import KNOBS; print(*KNOBS)")}
SEED=${SEED:-0} S=""; [ "$SEED" = 0 ] || S=_s$SEED
for k in $KNOBS; do
  tag=knob_$k$S; [ $k = none ] && tag=none10$S
  [ -f benchmarks/pretrain/${tag}_baltimore_2km_dusk.json ] && continue
  .venv/bin/geoloc pretrain $OSM/monaco.osm.bz2 $OSM/heidelberg.osm.bz2 --views 600 --randomize "$k" \
      --set seed=$SEED --set train.max_minutes=10 --out runs/pre_$tag
  bash benchmarks/pretrain/zeroshot.sh runs/pre_$tag $tag
done
