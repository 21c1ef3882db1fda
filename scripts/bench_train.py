"""Is data loading the bottleneck? Training-loop throughput against raw model-step throughput.

Raw: the same model (cell classifier, same lock factor), batch size and precision, stepping on one
batch already in memory: forward, cross-entropy, backward, SGD step. Loop: `retrieval.learning.train.fit` on the
cells task (images decoded once into the uint8 cache, augmentation per batch, DataLoader with
`--workers` processes); a loop step is the time between two consecutive loss calls (data loading,
forward, backward, optimiser step, logging), and the batch fetch inside it is timed on its own.

The machine may be shared, so raw and loop steps are interleaved: after every loop epoch (at its
validation hook) a few raw steps run, bf16 and (with --fp32) fp32. Figures are medians of per-step
times; warm-up (loop epoch 1, the first raw steps: oneDNN builds its kernels) is left out.

    .venv/bin/python scripts/bench_train.py --work /tmp/bench_train --fp32
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from baselines.cells import CellsTask
from retrieval.config import Config
from retrieval.data.grids import make_grid
from retrieval.data.splits import load_data
from retrieval.learning.models import cell_classifier
from retrieval.learning.precision import prepare_images, prepare_model
from retrieval.learning.train import fit, seed_everything
from retrieval.synth.cameras import render_dataset
from retrieval.synth.city import write_demo_city


def demo_data(work: Path, n_train: int, size: int) -> Path:
    out = work / f"demo-{n_train}-{size}"
    if not (out / "train.csv").is_file():
        osm = work / "demo_city.osm"
        if not osm.is_file():
            write_demo_city(osm, seed=0)
        render_dataset(osm, out, n_train=n_train, n_test=0, size=size, seed=0)  # with streets.graphml
    return out


class RawSteps:
    """The model step alone, on one batch held in memory."""

    def __init__(self, n_classes: int, batch: torch.Tensor, labels: torch.Tensor, cfg: Config,
                 precision: str, warmup: int = 3):
        torch.manual_seed(0)
        self.model = prepare_model(cell_classifier("none", n_classes, cfg.model.lock_factor), precision).train()
        self.opt = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=cfg.train.lr,
                                   momentum=cfg.train.momentum)
        self.x, self.labels, self.precision = prepare_images(batch, precision), labels, precision
        self.times: list[float] = []
        self.run(warmup)
        self.times.clear()

    def run(self, steps: int) -> None:
        for _ in range(steps):
            t0 = time.perf_counter()
            # Also called from fit's validation hook, which runs under no_grad and the loop's autocast.
            with torch.enable_grad(), torch.autocast("cpu", torch.bfloat16, enabled=self.precision == "bf16"):
                loss = F.cross_entropy(self.model(self.x).float(), self.labels)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.times.append(time.perf_counter() - t0)


class TimedLoader:
    """Wraps the task's DataLoader to time each batch fetch."""

    def __init__(self, loader):
        self.loader, self.fetch = loader, []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.fetch.append(time.perf_counter() - t0)
            yield batch


def measure(task: CellsTask, cfg: Config, run_dir: Path, raws: list[RawSteps], raw_steps: int) -> dict:
    stamps: list[tuple[int, float]] = []
    epoch = [0]
    loss, loader = task.loss, TimedLoader(task.train_loader)

    def timed_loss(model, batch):
        stamps.append((epoch[0], time.perf_counter()))
        return loss(model, batch)

    def between_epochs(model):  # fit calls this after every epoch: interleave the raw steps here
        epoch[0] += 1
        if epoch[0] > 1:
            for r in raws:
                r.run(raw_steps)
        return {}

    task.loss, task.validate, task.train_loader = timed_loss, between_epochs, loader
    n_raw = [len(r.times) for r in raws]
    for r in raws:
        r.run(raw_steps)
    fit(task, cfg, run_dir)
    steps = [b - a for (ea, a), (eb, b) in zip(stamps, stamps[1:]) if ea == eb and ea >= 1]
    first = len(loader.fetch) // cfg.train.epochs  # fetches of epoch 1 (warm-up)
    return {"steps": steps, "fetch": loader.fetch[first:], "raw": [r.times[n:] for r, n in zip(raws, n_raw)]}


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
    ap.add_argument("--steps", type=int, default=6, help="loop steps per epoch")
    ap.add_argument("--raw-steps", type=int, default=3, help="raw steps after each loop epoch")
    ap.add_argument("--epochs", type=int, default=5, help="loop epochs (the first is warm-up)")
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

    def ips(seconds: list[float]) -> float:
        return round(args.batch / statistics.median(seconds), 2)

    raws: list[RawSteps] = []
    result: dict = {"data": str(data), "train_photos": len(splits["train"]), "image_size": args.image_size,
                    "batch": args.batch, "precision": args.precision, "lock": args.lock,
                    "threads": torch.get_num_threads(), "loop": {}}
    raw_times: list[list[float]] = []
    for w in [int(v) for v in args.workers.split(",")]:
        cfg.data.num_workers = w
        seed_everything(cfg.seed)
        t0 = time.perf_counter()
        task = CellsTask(cfg, splits, grid)
        cache_s = time.perf_counter() - t0
        if not raws:
            batch, labels, _ = next(iter(task.train_loader))
            n = len(task.cell_of_class)
            raws = [RawSteps(n, batch, labels, cfg, task.precision)]
            if args.fp32:
                raws.append(RawSteps(n, batch, labels, cfg, "fp32"))
            raw_times = [[] for _ in raws]
            result["classes"] = n
        m = measure(task, cfg, args.work / f"run-w{w}-{time.strftime('%H%M%S')}", raws, args.raw_steps)
        for acc, times in zip(raw_times, m["raw"]):
            acc += times
        result["loop"][str(w)] = {
            "steps": len(m["steps"]), "images_per_s": ips(m["steps"]),
            "fetch_ms_median": round(1000 * statistics.median(m["fetch"]), 1),
            "fetch_share": round(sum(m["fetch"]) / sum(m["steps"]), 3),
            "raw_images_per_s_same_run": ips(m["raw"][0]), "cache_seconds": round(cache_s, 2)}
        result["loop"][str(w)]["ratio_to_raw"] = round(
            result["loop"][str(w)]["images_per_s"] / result["loop"][str(w)]["raw_images_per_s_same_run"], 3)

    result["raw_steps"], result["raw_images_per_s"] = len(raw_times[0]), ips(raw_times[0])
    if args.fp32:
        result["raw_fp32_images_per_s"] = ips(raw_times[1])
        result["bf16_speedup"] = round(ips(raw_times[0]) / ips(raw_times[1]), 2)
    print(json.dumps(result, indent=2))
    print(f"\nraw model step: {result['raw_images_per_s']:.2f} img/s (median of {result['raw_steps']} steps)")
    for w, r in result["loop"].items():
        print(f"training loop, {w} workers: {r['images_per_s']:.2f} img/s = {r['ratio_to_raw']:.0%} of raw "
              f"({r['raw_images_per_s_same_run']:.2f}) interleaved with it; batch fetch {r['fetch_share']:.1%} "
              "of loop time")
    if args.fp32:
        print(f"raw fp32: {result['raw_fp32_images_per_s']:.2f} img/s; bf16 speed-up {result['bf16_speedup']:.2f}x")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
