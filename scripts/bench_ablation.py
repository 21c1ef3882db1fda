"""Geodesic vs euclidean positives over several seeds, on one rendered data folder: mean recall@1
within 25 m per arm and 95% confidence intervals of the difference by a paired bootstrap over test views,
and over seeds and test views (the verdict's, as it holds the spread between training runs).

    .venv/bin/python scripts/bench_ablation.py --data runs/bench_london/data --out runs/ablation_london \
        --config configs/bench_london.yaml --seeds 0 1 2 --set train.max_minutes=5

Each (arm, seed) trains in OUT/<arm>_s<seed> and is evaluated there; a finished one is skipped, a killed
one resumes. The summary goes to OUT/ablation.json and stdout.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from retrieval.config import load_config
from retrieval.files import atomic_write_json
from retrieval.methods.embedding import train_embedding
from retrieval.metrics import paired_bootstrap
from retrieval.reports.benchmark import method_config
from retrieval.reports.evaluate import evaluate_run
from retrieval.run import prepare_run_dir

ARMS = ("geodesic", "euclidean")


def top1_hits(run: Path) -> np.ndarray:
    with (run / "predictions.csv").open(newline="", encoding="utf-8") as f:
        return np.array([float(r["top1_error_m"]) <= 25.0 for r in csv.DictReader(f)])


def run_arm(arm: str, seed: int, args) -> Path:
    run = Path(args.out) / f"{arm}_s{seed}"
    if (run / "metrics.json").is_file():
        return run
    # the benchmark's own method config, so an arm here is the benchmark's run with another seed
    bench = load_config(args.config, args.set)
    cfg = method_config(bench, [f"embedding.positives={arm}", f"seed={seed}"], Path(args.data))
    info = run / "run.json"
    if not (info.is_file() and "train" in json.loads(info.read_text(encoding="utf-8"))):
        resume = (run / "last.pt").is_file()
        prepare_run_dir(run, cfg)
        train_embedding(cfg, run, resume)
    evaluate_run(run, args.data)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()

    runs = {(arm, s): run_arm(arm, s, args) for s in args.seeds for arm in ARMS}  # seed by seed: a cut run stays paired
    hits = {arm: np.stack([top1_hits(runs[arm, s]) for s in args.seeds]) for arm in ARMS}
    # over test views (the seed-mean hit rate of each view), and over seeds and test views together:
    # the second holds the spread between training runs, which from random weights is the larger
    mean, lo, hi = paired_bootstrap(hits["geodesic"].mean(0), hits["euclidean"].mean(0))
    _, slo, shi = paired_bootstrap(hits["geodesic"], hits["euclidean"])
    out = {"seeds": args.seeds, "test_views": int(hits["geodesic"].shape[1]),
           **{f"{arm}_recall@1_25m": [float(h) for h in hits[arm].mean(1)] for arm in ARMS},
           "difference_geodesic_minus_euclidean": mean, "ci95_test_views": [lo, hi],
           "ci95_seeds_and_test_views": [slo, shi],
           "verdict": "geodesic wins" if slo > 0 else "euclidean wins" if shi < 0
           else "neither wins (the interval over seeds and test views holds 0)"}
    atomic_write_json(Path(args.out, "ablation.json"), out)
    for arm in ARMS:
        r = out[f"{arm}_recall@1_25m"]
        print(f"{arm}: R@1@25m per seed {', '.join(f'{x:.1%}' for x in r)}; mean {np.mean(r):.1%}")
    print(f"geodesic - euclidean: {mean:+.1%} (95% CI over test views {lo:+.1%} to {hi:+.1%}; over seeds and "
          f"test views {slo:+.1%} to {shi:+.1%}): {out['verdict']}")


if __name__ == "__main__":
    main()
