cd /tmp/base_query
# The code before the Locator (git worktree add /tmp/base_query cbe79b7) and after, alternately, on the same tiny run.
for i in 1 2; do
  PYTHONPATH=/tmp/base_query /work/main/.venv/bin/python /work/main/benchmarks/history/s15_query_latency_before.py /tmp/lat_work 2>/dev/null | tail -1 | sed "s/^/before $i: /"
  (cd /work/main && /work/main/.venv/bin/python scripts/bench_query.py --work /tmp/lat_work 2>/dev/null | grep -A8 '"latency"' | tr -d '\n ' ; echo) | sed "s/^/after $i: /"
done
