#!/usr/bin/env bash
# Zero-shot on held-out rendered cities (issue 28, session 17):
#   bash benchmarks/pretrain/zeroshot.sh RUN TAG
# renders each city once (a daytime database + test views, and dusk test views), indexes the database with
# RUN and evaluates the day and the dusk test views: benchmarks/pretrain/TAG_<city>_<day|dusk>.json, and each
# view's answer in runs/zs_pred/TAG_<city>_<day|dusk>/predictions.csv.
# London's database is runs/london_dense (the London dense benchmark's render, RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=$1 TAG=$2
G=.venv/bin/geoloc OSM=../shared/data/osm B=benchmarks/pretrain
mkdir -p runs/osm
[ -f runs/osm/baltimore_2km.osm ] || .venv/bin/python $B/crop_osm.py $OSM/baltimore.osm.bz2 runs/osm/baltimore_2km.osm 1000
[ -f runs/london_dense/test.csv ] || $G synth render --osm $OSM/london_city.osm.bz2 --out runs/london_dense --train 10000 \
    --headings 4 --test 500 --val 200 --size 73 --routes 60 --route-len 60 --route-step 10
for spec in london_city:$OSM/london_city.osm.bz2:0 new_york_lower_east_side:$OSM/new_york_lower_east_side.osm.bz2:3000 \
            baltimore_2km:runs/osm/baltimore_2km.osm:6000; do
  IFS=: read -r c osm n <<< "$spec"
  day=runs/zs_$c; [ "$c" = london_city ] && day=runs/london_dense
  [ -f $day/test.csv ] || $G synth render --osm $osm --out $day --train $n --headings 4 --test 300 --size 73
  [ -f runs/zs_${c}_dusk_src/test.csv ] || $G synth render --osm $osm --out runs/zs_${c}_dusk_src --train 10 --test 300 --size 73 --shift
  # the dusk data set: the daytime database, the dusk test views (paths made absolute)
  mkdir -p runs/zs_${c}_dusk
  for pair in "$day/train.csv:train" "$day/val.csv:val" "runs/zs_${c}_dusk_src/test.csv:test"; do
    src=${pair%:*}; [ -f "$src" ] || continue
    .venv/bin/python - "$src" runs/zs_${c}_dusk/${pair##*:}.csv <<'PY'
import csv, sys, pathlib
src, dst = map(pathlib.Path, sys.argv[1:])
rows = list(csv.DictReader(src.open()))
for r in rows:
    p = pathlib.Path(r["path"]); r["path"] = str(p if p.is_absolute() else (src.parent / p).resolve())
w = csv.DictWriter(dst.open("w", newline=""), fieldnames=list(rows[0])); w.writeheader(); w.writerows(rows)
PY
  done
  $G index build --run $RUN --data $day
  for when in day dusk; do
    data=$day; [ $when = dusk ] && data=runs/zs_${c}_dusk
    $G evaluate --run $RUN --data $data
    cp $RUN/metrics.json $B/${TAG}_${c}_$when.json
    # each view's answer too (beside the run, not in the repository), for paired_r1.py
    mkdir -p runs/zs_pred/${TAG}_${c}_$when && cp $RUN/predictions.csv runs/zs_pred/${TAG}_${c}_$when/
  done
done
