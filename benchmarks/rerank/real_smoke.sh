#!/usr/bin/env bash
# The rerank on real photos, as a smoke test (issue 38): Lund's 29 photos of one walk, the even ones
# indexed (ImageNet Lite0, no training) and the odd ones asked, without and with index.rerank=on; Berlin's
# three photos as queries against them (another city: every answer is wrong, the inliers should be few).
# Far too few photos for an accuracy figure: it shows the path runs on real JPEGs end to end.
#   bash benchmarks/rerank/real_smoke.sh > benchmarks/rerank/real_smoke.txt
set -euo pipefail
cd "$(dirname "$0")/../.."
w=runs/rr_real; mkdir -p $w/data
# the manifest's paths are relative to its own folder: the split files go beside it
[ -f $w/data/lund.csv ] || .venv/bin/geoloc data import "$PWD/../shared/data/photos/lund" --format exif --out $w/data/lund.csv
awk -F, 'NR == 1 || NR % 2 == 0' $w/data/lund.csv > $w/data/train.csv   # the 1st, 3rd, 5th ... photo: the database
awk -F, 'NR == 1 || NR % 2 == 1' $w/data/lund.csv > $w/data/test.csv    # the 2nd, 4th ...: the queries
[ -f $w/run/index/index.json ] || .venv/bin/geoloc index build --backbone efficientnet_lite0 --data $w/data --out $w/run
echo "== without the rerank"; .venv/bin/geoloc evaluate --run $w/run | tail -n 4
.venv/bin/geoloc index build --run $w/run --set index.rerank=on --set rerank.k=10
echo "== with index.rerank=on (k 10, weight 1)"; .venv/bin/geoloc evaluate --run $w/run | tail -n 4
.venv/bin/geoloc query --run $w/run ../shared/data/photos/lund/02.jpg ../shared/data/photos/berlin/01.jpg
