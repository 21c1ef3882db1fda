#!/usr/bin/env bash
# `geoloc index build --backbone efficientnet_lite0` on 290 real 1024 x 768 photos (Lund's 29, ten times under
# other names), with this checkout against OLD (a commit; default: main before the reduced-scale decoding),
# paired by farm-bench (5 pairs). The img/s each build reports are in /tmp/dec_{new,old}.log.
#   bash benchmarks/decode/index_build.sh [OLD_COMMIT]
set -euo pipefail
cd "$(dirname "$0")/../.."
NEW=$PWD OLD=${1:-38a4c1d} W=${WORK:-/tmp/decode_bench}
mkdir -p $W/data/images
[ -d $W/old ] || { mkdir -p $W/old && git archive $OLD | tar -x -C $W/old; }
[ -f $W/lund.csv ] || .venv/bin/geoloc data import "$PWD/../shared/data/photos/lund" --format exif --out $W/lund.csv
python3 - "$W" <<'PY'
import csv, os, shutil, sys
w = sys.argv[1]
rows = list(csv.DictReader(open(f"{w}/lund.csv")))
with open(f"{w}/data/train.csv", "w") as f:
    f.write("path,lat,lon\n")
    for k in range(10):
        for r in rows:
            src = os.path.normpath(os.path.join(w, r["path"]))
            name = f"images/{k:02d}_{os.path.basename(src)}"
            if not os.path.exists(f"{w}/data/{name}"):
                shutil.copyfile(src, f"{w}/data/{name}")  # copies: the manifest check sees through links
            f.write(f"{name},{float(r['lat']) + k * 1e-4:.7f},{r['lon']}\n")
PY
rm -f /tmp/dec_new.log /tmp/dec_old.log
farm-bench -n 5 --timeout 400 \
  --vs "sh -c 'rm -rf $W/run_old; cd $W/old && PYTHONPATH=$W/old exec $NEW/.venv/bin/python -m retrieval.cli index build --backbone efficientnet_lite0 --data $W/data --out $W/run_old >>/tmp/dec_old.log 2>&1'" \
  -- sh -c "rm -rf $W/run_new; cd $NEW && exec .venv/bin/python -m retrieval.cli index build --backbone efficientnet_lite0 --data $W/data --out $W/run_new >>/tmp/dec_new.log 2>&1"
for s in new old; do echo "$s: $(grep -o '[0-9.]* img/s' /tmp/dec_$s.log | tr '\n' ' ')"; done
