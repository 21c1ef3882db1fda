#!/usr/bin/env bash
# How long `geoloc --help` and `geoloc data --help` take, and whether they load torch (issue 40: they must
# not), before the reorganisation (OLD, a commit) and after (this checkout): the median of N runs of each and
# the number of modules python -X importtime reports.
#   bash benchmarks/refactor/cli_startup.sh [OLD_COMMIT] [N]      (defaults 7d80590, 15)
set -euo pipefail
cd "$(dirname "$0")/../.."
NEW=$PWD OLD_COMMIT=${1:-7d80590} N=${2:-15} W=${WORK:-/tmp/same40}
PY=${PYTHON:-$NEW/.venv/bin/python}
mkdir -p $W
if [ ! -d $W/old ]; then mkdir -p $W/old && git archive $OLD_COMMIT | tar -x -C $W/old; fi
for side in old new; do
  root=$NEW; [ $side = old ] && root=$W/old
  for args in "--help" "data --help"; do
    times=()
    for i in $(seq $N); do
      s=$(date +%s.%N); (cd $root && PYTHONPATH=$root $PY -m retrieval.cli $args > /dev/null); e=$(date +%s.%N)
      times+=($(echo "$e - $s" | bc))
    done
    med=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    imports=$(cd $root && PYTHONPATH=$root $PY -X importtime -m retrieval.cli $args 2>&1 >/dev/null)
    mods=$(grep -c "import time:" <<< "$imports" || true)
    torch=$(grep -cE "\| +torch$" <<< "$imports" || true)
    echo "$side: geoloc $args: median ${med} s over $N runs; $mods modules imported; torch imported: $torch"
  done
done
