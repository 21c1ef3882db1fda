#!/usr/bin/env bash
# Issue 40's "behaviour unchanged": the same short trainings of the three methods (2 epochs x 15 steps, fp32,
# configs/scratch_cpu.yaml at 48 px) and a zero-shot index, with the code before the reorganisation (OLD, a
# commit) and after (this checkout), on the same rendered demo data; then compare.py: metrics.json figures
# (timings aside) and predictions.csv files must be identical.
#   bash benchmarks/refactor/same_results.sh [OLD_COMMIT]      (default 7d80590, main before issue 40)
set -euo pipefail
cd "$(dirname "$0")/../.."
NEW=$PWD OLD_COMMIT=${1:-7d80590} W=${WORK:-/tmp/same40}
PY=${PYTHON:-$NEW/.venv/bin/python}
mkdir -p $W
if [ ! -d $W/old ]; then mkdir -p $W/old && git archive $OLD_COMMIT | tar -x -C $W/old; fi
[ -f $W/data/test.csv ] || PYTHONPATH=$NEW $PY -m retrieval.cli synth render --out $W/data --train 300 --headings 4 \
    --val 40 --test 60 --size 55 --seed 3
COMMON=(--set train.epochs=2 --set train.max_steps_per_epoch=15 --set train.max_minutes=0 --set data.image_size=48
        --set data.resize=55 --set train.precision=fp32)
for side in old new; do
  root=$NEW; [ $side = old ] && root=$W/old
  out=$W/runs_$side; rm -rf $out; mkdir -p $out
  for m in embedding cells regression; do
    (cd $root && PYTHONPATH=$root $PY -m retrieval.cli train $m --data $W/data --config $NEW/configs/scratch_cpu.yaml \
        --out $out/$m "${COMMON[@]}" && PYTHONPATH=$root $PY -m retrieval.cli evaluate --run $out/$m) > $out/$m.log 2>&1
    echo "$side $m: done"
  done
  (cd $root && PYTHONPATH=$root $PY -m retrieval.cli index build --backbone efficientnet_lite0 --data $W/data \
      --out $out/zero_shot --set data.image_size=64 --set data.resize=73 && PYTHONPATH=$root $PY -m retrieval.cli \
      evaluate --run $out/zero_shot) > $out/zero_shot.log 2>&1
  echo "$side zero_shot: done"
done
$PY benchmarks/refactor/compare.py $W/runs_old $W/runs_new embedding cells regression zero_shot
