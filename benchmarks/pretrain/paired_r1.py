"""Two runs evaluated on the same test views (the same test.csv, so their predictions.csv rows pair up): R@1
within 25 m of each and the difference with its paired bootstrap 95% interval over the views.
  .venv/bin/python benchmarks/pretrain/paired_r1.py runs/lon_ft30_pre60 runs/lon_scratch30
Either side may be a glob of several runs' folders, pooled in name order, so that the test sets pair up:
  .venv/bin/python benchmarks/pretrain/paired_r1.py 'runs/zs_pred/knob_furniture_s1_*' 'runs/zs_pred/none10_s1_*'"""
import sys
from glob import glob
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from bench_ablation import top1_hits  # noqa: E402
from retrieval.metrics import paired_bootstrap  # noqa: E402


def hits(pattern: str) -> np.ndarray:
    runs = sorted(glob(pattern))
    if not runs:
        sys.exit(f"{pattern}: no such run folder")
    return np.concatenate([top1_hits(Path(r)) for r in runs])


def main(a: str, b: str) -> None:
    xa, xb = hits(a), hits(b)
    if len(xa) != len(xb):
        sys.exit(f"{a} and {b} were not evaluated on the same test views ({len(xa)} and {len(xb)} predictions)")
    mean, lo, hi = paired_bootstrap(xa, xb)
    print(f"{a}: {100 * xa.mean():.1f}%  {b}: {100 * xb.mean():.1f}%  ({len(xa)} views)  "
          f"difference {100 * mean:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]")


if __name__ == "__main__":
    main(*sys.argv[1:3])
