"""Floors on the London render's 200 validation views, the lock sweep's scoring views (against the training
photos): .venv/bin/python benchmarks/imagenet/lock_val_floors.py -> lock_val_floors.json"""
import json
from retrieval.data.splits import load_data
from retrieval.reports.floors import floors
from retrieval.run import load_run_config
cfg = load_run_config("runs/lock0.0_embedding_london")
s = load_data(cfg)
f = floors(cfg, s["train"], s["val"], start=True)
out = {k: {m: v[m] for m in ("recall@1_25m", "median_error_m") if m in v} for k, v in f.items() if isinstance(v, dict)}
with open("benchmarks/imagenet/lock_val_floors.json", "w") as f:
    json.dump(out, f, indent=1)
print(out)
