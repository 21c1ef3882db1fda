"""Two runs evaluated on the same test views: R@1 within 25 m of each and the difference with its paired
bootstrap 95% interval (retrieval.metrics.paired_bootstrap over the views of their predictions.csv).
  .venv/bin/python benchmarks/pretrain/paired_r1.py runs/lon_ft30_pre60 runs/lon_scratch30"""
import csv
import sys
from pathlib import Path

import numpy as np

from retrieval.metrics import paired_bootstrap


def hits(run: Path) -> dict[str, bool]:
    with open(run / "predictions.csv", newline="") as f:
        return {r["path"]: float(r["top1_error_m"]) <= 25 for r in csv.DictReader(f)}


def main(a: str, b: str) -> None:
    ha, hb = hits(Path(a)), hits(Path(b))
    if ha.keys() != hb.keys():
        sys.exit(f"{a} and {b} were not evaluated on the same test views")
    views = sorted(ha)
    xa, xb = np.array([ha[v] for v in views]), np.array([hb[v] for v in views])
    mean, lo, hi = paired_bootstrap(xa, xb)
    print(f"{a}: {100 * xa.mean():.1f}%  {b}: {100 * xb.mean():.1f}%  ({len(views)} views)  "
          f"difference {100 * mean:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]")


if __name__ == "__main__":
    main(*sys.argv[1:3])
