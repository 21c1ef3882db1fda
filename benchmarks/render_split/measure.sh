#!/usr/bin/env bash
# Why retrieval/synth/render.py:render_kernel stays one function of ~180 lines: the kernel split into
# helpers of at most 80 lines (render_split.patch: the first-hit search, the sky, wall, ground and haze
# shading, each @njit inline="always") renders the same bytes, and this times both. Each side renders the
# demo city's views twice at 320 px (the first run compiles; the second is timed) and at 73 px.
#   bash benchmarks/render_split/measure.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${WORK:-/tmp/render_split}; PY=${PYTHON:-$PWD/.venv/bin/python}
rm -rf $W && mkdir -p $W/inline $W/split
git archive HEAD retrieval | tar -x -C $W/inline
git archive HEAD retrieval | tar -x -C $W/split
patch -s -d $W/split -p1 < benchmarks/render_split/render_split.patch
for side in inline split; do
  for size in 320 73; do
    n=$([ $size = 320 ] && echo 100 || echo 1000)
    for run in compile timed; do
      rm -rf $W/$side-$size
      (cd $W/$side && PYTHONPATH=$W/$side $PY -m retrieval.cli synth render --out $W/$side-$size --train $n \
          --headings 4 --val 10 --test 10 --size $size 2>&1 | tail -n 1 | sed "s/^/$side $size px ($run): /")
    done
  done
done
for size in 320 73; do
  if diff -rq -x dataset.json $W/inline-$size $W/split-$size >/dev/null; then echo "$size px: the same bytes (images, manifests)"
  else echo "$size px: DIFFERENT"; fi
done
