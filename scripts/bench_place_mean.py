"""Place means in the index (index.place_mean_m) against each photo as embedded, on trained embedding
runs: each run is evaluated twice on the same test views, and the R@1 within 25 m difference gets a 95%
confidence interval by a paired bootstrap over the test views (and, over several runs, over runs and views).

    .venv/bin/python scripts/bench_place_mean.py --out runs/place_mean_demo \
        runs/demo_s11c/methods/embedding_geodesic runs/exp_r18px48_demo

Each run's checkpoint, config and stored database embeddings are copied to OUT/<name>/{off,on} (the
embeddings are not computed again); `off` has index.place_mean_m 0, `on` the given radius and heading
tolerance. The runs must be evaluated on the same test views for the pooled interval (one data folder).
The summary goes to OUT/place_mean.json and stdout.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ablation import top1_hits  # noqa: E402
from retrieval.answering.run_index import EMBEDDINGS, PROGRESS  # noqa: E402
from retrieval.config import dump_yaml  # noqa: E402
from retrieval.metrics import paired_bootstrap  # noqa: E402
from retrieval.reports.evaluate import evaluate_run  # noqa: E402
from retrieval.run import Run, load_run_config

COPIED = ("best.pt", "last.pt", "run.json", "git.json", "log.csv")


def copy_run(run: Path, dest: Path, radius_m: float, heading_deg: float) -> Path:
    """A copy of run that evaluates with these place-mean settings, reusing its stored embeddings."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (run / name).is_file() and not (dest / name).is_file():
            shutil.copy2(run / name, dest / name)
    cfg = load_run_config(run)
    cfg.index.place_mean_m, cfg.index.place_mean_heading_deg = radius_m, heading_deg
    (dest / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    if (run / Run.INDEX_DIR / EMBEDDINGS).is_file() and not (dest / Run.INDEX_DIR / EMBEDDINGS).is_file():
        (dest / Run.INDEX_DIR).mkdir(exist_ok=True)
        for name in (EMBEDDINGS, PROGRESS):
            shutil.copy2(run / Run.INDEX_DIR / name, Run(dest).index_dir / name)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="trained embedding run directories")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None, help="data folder (default: each run's own)")
    ap.add_argument("--radius", type=float, default=25.0)
    ap.add_argument("--heading", type=float, default=45.0)
    args = ap.parse_args()
    rows, hits = [], {"off": [], "on": []}
    for run in args.runs:
        name = "_".join(run.parts[-3:]) if run.parent.name == "methods" else run.name
        per = {}
        for arm, radius in (("off", 0.0), ("on", args.radius)):
            dest = copy_run(run, args.out / name / arm, radius, args.heading)
            if not (dest / "metrics.json").is_file():
                evaluate_run(dest, args.data)
            per[arm] = json.loads((dest / "metrics.json").read_text(encoding="utf-8"))
            hits[arm].append(top1_hits(dest))
        d = paired_bootstrap(hits["on"][-1], hits["off"][-1])
        rows.append({"run": str(run), "r1_off": per["off"]["recall@1_25m"], "r1_on": per["on"]["recall@1_25m"],
                     "r5_off": per["off"]["recall@5_25m"], "r5_on": per["on"]["recall@5_25m"],
                     "median_off": per["off"]["median_error_m"], "median_on": per["on"]["median_error_m"],
                     "diff_ci": d, "views": int(len(hits["on"][-1]))})
        print(f"{run}: R@1 {rows[-1]['r1_off']:.1%} -> {rows[-1]['r1_on']:.1%} (diff {d[0]:+.3f}, 95% CI "
              f"{d[1]:+.3f} to {d[2]:+.3f}); median {rows[-1]['median_off']:.0f} -> {rows[-1]['median_on']:.0f} m",
              flush=True)
    summary = {"radius_m": args.radius, "heading_tol_deg": args.heading, "runs": rows}
    if len(rows) > 1 and len({len(h) for h in hits["on"]}) == 1:
        summary["pooled_diff_ci"] = paired_bootstrap(np.stack(hits["on"]), np.stack(hits["off"]))
        print(f"pooled over {len(rows)} runs: diff {summary['pooled_diff_ci'][0]:+.3f} (95% CI "
              f"{summary['pooled_diff_ci'][1]:+.3f} to {summary['pooled_diff_ci'][2]:+.3f})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "place_mean.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
