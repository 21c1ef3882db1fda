# Query latency before (cbe79b7: query() reloads model, index and vote on every call) and after (the Locator).
"""Query latency with the code before the Locator (cbe79b7): query() reloads everything per call."""
import json, statistics, sys, time
from pathlib import Path
sys.path.insert(0, "/tmp/base_query/scripts")
from bench_query import tiny_run
from retrieval.config import load_run_config
from retrieval.embedding import INDEX_DIR, build_run_index
from retrieval.query import query
from retrieval.train import load_data

work = Path(sys.argv[1]); work.mkdir(parents=True, exist_ok=True)
run = tiny_run(work, 128)
cfg = load_run_config(run)
if not (run / INDEX_DIR / "index.json").is_file():
    build_run_index(run, cfg)
test = load_data(cfg)["test"]
files = [Path(p) for p in test.paths]
query(run, files[:3])  # warm-up
one, own = [], []
for p in files[3:33]:
    t0 = time.perf_counter(); a = query(run, [p]); one.append(time.perf_counter() - t0); own.append(a[0]["ms"])
many = []
for r in range(5):
    t0 = time.perf_counter(); query(run, files[:64] if len(files) >= 64 else (files * 2)[:64]); many.append(time.perf_counter() - t0)
print(json.dumps({"one_photo_call_ms": round(1e3 * statistics.median(one), 1), "one_photo_own_ms_field": round(statistics.median(own), 1),
                  "per_photo_in_64_call_ms": round(1e3 * statistics.median(many) / 64, 1), "test_photos": len(files)}))
