#!/usr/bin/env bash
# Routes on Monaco (issue 29, session 18): bash benchmarks/routes/monaco.sh RUN OUT.json
# renders Monaco once (a 5,000 x 4 database, 300 test views, 40 camera walks of 100 photos 10 m apart;
# seed 7, so the positions are not those any pretraining rendered), indexes it with RUN, evaluates the
# single photos (floors included) and decodes the walks (scripts/bench_route.py, route.k 100).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=$1 OUT=$2
G=.venv/bin/geoloc D=runs/monaco_routes
[ -f $D/routes.csv ] || $G synth render --osm ../shared/data/osm/monaco.osm.bz2 --out $D --train 5000 --headings 4 \
    --test 300 --size 73 --routes 40 --route-len 100 --route-step 10 --seed 7
$G index build --run "$RUN" --data $D
$G evaluate --run "$RUN" --data $D
cp "$RUN/metrics.json" "${OUT%.json}_single.json"
.venv/bin/python scripts/bench_route.py --run "$RUN" --routes $D/routes.csv --streets $D/streets.graphml \
    --lengths 5 10 20 100 --strides 1 3 --set route.k=100 --out "$OUT"
