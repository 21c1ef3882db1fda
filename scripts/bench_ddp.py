"""Training throughput on 1 process against N processes under torchrun (DDP, gloo on CPU).

Both train the geodesic embedding from the CLI on the same rendered demo city with the same global
batch (places_per_batch x photos_per_place photos; under torchrun each rank takes places_per_batch / N
places), so the comparison is per image of the same training. One process uses all cores as torch
threads; torchrun gives each of its processes one thread (its default OMP_NUM_THREADS=1). Runs
alternate (1, N, 1, N, ...) so that load from other jobs hits both; the figure per run is the median
of its epochs' images/s after the first (warm-up: oneDNN builds its kernels).

    .venv/bin/python scripts/bench_ddp.py --work /tmp/bench_ddp
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_train import demo_data  # scripts/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]


def train(data: Path, run: Path, processes: int, places: int, args) -> dict:
    sets = {"model.weights": "none", "model.lock_factor": args.lock, "train.precision": args.precision,
            "train.epochs": args.epochs, "train.max_steps_per_epoch": args.steps, "data.val_fraction": 0,
            "data.image_size": args.image_size, "data.resize": args.resize,
            "embedding.places_per_batch": places, "embedding.photos_per_place": args.photos_per_place}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] \
        if processes > 1 else []
    cmd = [sys.executable, *launcher, "-m", "retrieval.cli", "train", "embedding", "--data", str(data),
           "--out", str(run)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    with (run / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    ips = [float(r["images_per_s"]) for r in rows[1:]]
    return {"processes": processes, "images_per_s": round(statistics.median(ips), 2),
            "epochs_measured": len(ips), "images_per_epoch": int(rows[-1]["images"]), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder for data and runs")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--train-views", type=int, default=600)
    ap.add_argument("--render-size", type=int, default=160)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--resize", type=int, default=146)
    ap.add_argument("--places", type=int, default=8, help="places per global batch")
    ap.add_argument("--photos-per-place", type=int, default=4)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--lock", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=8, help="steps per epoch")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is warm-up)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    if args.places % args.processes:
        ap.error(f"--places {args.places} must divide among {args.processes} processes")

    data = demo_data(args.work, args.train_views, args.render_size)
    runs = []
    for rep in range(args.repeats):
        for n in (1, args.processes):
            run = args.work / f"run-{n}p-{rep}-{time.strftime('%H%M%S')}"
            runs.append(train(data, run, n, args.places // n, args))
            print(json.dumps(runs[-1]))
    one = statistics.median(r["images_per_s"] for r in runs if r["processes"] == 1)
    many = statistics.median(r["images_per_s"] for r in runs if r["processes"] == args.processes)
    result = {"cores": len(os.sched_getaffinity(0)), "global_batch": args.places * args.photos_per_place,
              "image_size": args.image_size, "precision": args.precision, "lock": args.lock, "runs": runs,
              "images_per_s_1": one, f"images_per_s_{args.processes}": many, "ratio": round(many / one, 3)}
    print(json.dumps(result, indent=2))
    print(f"\n1 process: {one:.2f} img/s; {args.processes} processes: {many:.2f} img/s "
          f"({many / one:.2f}x), global batch {result['global_batch']} at {args.image_size} px")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
