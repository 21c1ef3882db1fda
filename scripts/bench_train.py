"""Is data loading the bottleneck? Training-loop throughput against raw model-step throughput.

Raw: the same model (cell classifier, same lock factor), batch size and precision, stepping on one
batch already in memory: forward, cross-entropy, backward, SGD step. Loop: `retrieval.train.fit` on the
cells task, images decoded once into the uint8 cache, augmentation per batch, DataLoader with
`--workers` processes. Raw and loop measurements alternate, so a busy machine slows both alike; the
first epoch / first steps (oneDNN warm-up) are left out of both.

    .venv/bin/python scripts/bench_train.py --work /tmp/bench_train
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from baselines.cells import CellsTask, make_grid
from retrieval.config import Config
from retrieval.models import cell_classifier
from retrieval.train import autocast, fit, load_data, prepare_images, prepare_model, seed_everything


def demo_data(work: Path, n_train: int, size: int) -> Path:
    from retrieval.synth.cameras import render_dataset
    from retrieval.synth.city import write_demo_city

    out = work / f"demo-{n_train}-{size}"
    if not (out / "train.csv").is_file():
        osm = work / "demo_city.osm"
        if not osm.is_file():
            write_demo_city(osm, seed=0)
        render_dataset(osm, out, n_train=n_train, n_test=0, size=size, seed=0, write_graph=False)
    return out


def raw_images_per_s(n_classes: int, batch: torch.Tensor, labels: torch.Tensor, cfg: Config,
                     precision: str, steps: int, warmup: int = 2) -> float:
    torch.manual_seed(0)
    model = prepare_model(cell_classifier("none", n_classes, cfg.model.lock_factor), precision).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                          momentum=cfg.train.momentum)
    x = prepare_images(batch, precision)
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        with autocast(precision):
            loss = F.cross_entropy(model(x).float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return len(batch) * steps / (time.perf_counter() - t0)


def loop_images_per_s(task: CellsTask, cfg: Config, run_dir: Path) -> list[float]:
    fit(task, cfg, run_dir)
    with (run_dir / "log.csv").open(newline="") as f:
        return [float(r["images_per_s"]) for r in csv.DictReader(f)][1:]  # epoch 1 is warm-up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="data folder (default: render the demo city into --work)")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder for data and runs")
    ap.add_argument("--train-views", type=int, default=600)
    ap.add_argument("--render-size", type=int, default=160)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--resize", type=int, default=146)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--lock", type=float, default=0.7)
    ap.add_argument("--steps", type=int, default=8, help="steps per loop epoch and per raw measurement")
    ap.add_argument("--epochs", type=int, default=3, help="loop epochs (the first is warm-up)")
    ap.add_argument("--workers", default="0,2", help="DataLoader worker counts to compare")
    ap.add_argument("--fp32", action="store_true", help="also time raw fp32 steps (the bf16 speed-up)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()

    data = args.data or demo_data(args.work, args.train_views, args.render_size)
    cfg = Config(name="bench_train")
    cfg.data.train, cfg.data.val_fraction = str(data), 0.0
    cfg.data.image_size, cfg.data.resize = args.image_size, args.resize
    cfg.model.weights, cfg.model.lock_factor = "none", args.lock
    cfg.train.batch_size, cfg.train.precision = args.batch, args.precision
    cfg.train.epochs, cfg.train.max_steps_per_epoch = args.epochs, args.steps
    splits = load_data(cfg)
    grid = make_grid(cfg, splits["train"])

    raw, raw_fp32, loop, decode_s = [], [], {}, {}
    batch = labels = n_classes = None
    for w in [int(v) for v in args.workers.split(",")]:
        cfg.data.num_workers = w
        seed_everything(cfg.seed)
        t0 = time.perf_counter()
        task = CellsTask(cfg, splits, grid)
        decode_s[w] = time.perf_counter() - t0
        if batch is None:
            batch, labels, _ = next(iter(task.train_loader))
            n_classes = len(task.cell_of_class)
            raw.append(raw_images_per_s(n_classes, batch, labels, cfg, task.precision, args.steps))
        run_dir = args.work / f"run-{args.precision}-w{w}-{time.strftime('%H%M%S')}"
        loop[w] = loop_images_per_s(task, cfg, run_dir)
        raw.append(raw_images_per_s(n_classes, batch, labels, cfg, task.precision, args.steps))
        if args.fp32:
            raw_fp32.append(raw_images_per_s(n_classes, batch, labels, cfg, "fp32", args.steps))

    raw_med = statistics.median(raw)
    result = {
        "data": str(data), "train_photos": len(splits["train"]), "classes": n_classes,
        "image_size": args.image_size, "batch": args.batch, "precision": args.precision, "lock": args.lock,
        "steps": args.steps, "threads": torch.get_num_threads(),
        "raw_images_per_s": [round(v, 2) for v in raw], "raw_median": round(raw_med, 2),
        "loop": {str(w): {"images_per_s": [round(v, 2) for v in vs], "median": round(statistics.median(vs), 2),
                          "ratio_to_raw": round(statistics.median(vs) / raw_med, 3),
                          "cache_seconds": round(decode_s[w], 2)} for w, vs in loop.items()},
    }
    if raw_fp32:
        result["raw_fp32_images_per_s"] = [round(v, 2) for v in raw_fp32]
        result["bf16_speedup"] = round(raw_med / statistics.median(raw_fp32), 2)
    print(json.dumps(result, indent=2))
    print(f"\nraw model step: {raw_med:.2f} img/s (median of {len(raw)})")
    for w, r in result["loop"].items():
        print(f"training loop, {w} workers: {r['median']:.2f} img/s = {r['ratio_to_raw']:.0%} of raw")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
