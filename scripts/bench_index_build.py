"""Index build: embedding-extraction throughput of the real build path against raw inference.

Pipeline: `retrieval.answering.run_index.embed_database`, what `build_run_index` runs before the FAISS build:
photos read from disk, decoded, resized, test transform, the model in eval mode (bf16 autocast,
channels_last), rows written to RUN/index/embeddings.npy, progress recorded. Its record is deleted
before each pass, so every pass embeds every photo; a pass is timed from the first decode to the last
write. Raw: the same model object, batch size and precision on one batch of transformed images already
in memory (the model call of `retrieval.learning.inference.infer` alone). The machine may be shared, so raw batches
run before and after every pipeline pass; figures are medians, the first pass (oneDNN kernel builds,
cold page cache) left out.

    .venv/bin/python scripts/bench_index_build.py --work /tmp/bench_index_build --sizes 224 128
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from bench_train import demo_data
from retrieval.answering.run_index import PROGRESS, embed_database
from retrieval.config import Config
from retrieval.data.manifests import load_rgb, read_manifest
from retrieval.learning.checkpoints import save_checkpoint
from retrieval.learning.inference import embed, load_embedding_model
from retrieval.learning.models import embedding_net
from retrieval.learning.precision import autocast, prepare_images, resolve_precision
from retrieval.learning.transforms import decode_images, one_thread, test_transform, to_cached
from retrieval.run import Run


def setup(work: Path, views: int, size: int, batch: int):
    data = demo_data(work, views, size)
    cfg = Config(name="bench_index_build")
    cfg.data.train, cfg.data.image_size = str(data), size
    cfg.data.resize = max(size, round(size * 256 / 224))  # as the benchmark pipeline sets it
    cfg.model.embed_dim, cfg.train.batch_size = 512, batch
    run = work / f"run-{size}"
    if not (run / "best.pt").is_file():  # random weights: speed does not depend on training
        torch.manual_seed(0)
        save_checkpoint(run / "best.pt", {"model": embedding_net("none", 512).state_dict()})
    return run, cfg, read_manifest(data / "train.csv")


def bench(args, size: int) -> dict:
    run, cfg, db = setup(args.work, args.views, size, args.batch)
    model, sha = load_embedding_model(run, cfg)
    precision = resolve_precision(cfg.train.precision)
    tf = test_transform(cfg.data)
    with one_thread():
        x = torch.stack([tf(to_cached(load_rgb(p), cfg.data.resize)) for p in db.paths[:args.batch]])
    x = prepare_images(x, precision)
    raw: list[float] = []

    def raw_batches(n: int) -> None:
        with torch.inference_mode(), autocast(precision):
            for _ in range(n):
                t = time.perf_counter()
                model(x).float()
                raw.append(time.perf_counter() - t)

    passes: list[float] = []
    folder = Run(run).index_dir
    for i in range(args.passes + 1):
        raw_batches(args.raw_batches)
        (folder / PROGRESS).unlink(missing_ok=True)
        _, state, n = embed_database(model, sha, db, cfg, folder)
        assert n == len(db)
        passes.append(state["embed_seconds"])
        if i == 0:  # warm-up
            raw.clear()
            passes.clear()
    raw_batches(args.raw_batches)

    # where a pass's time goes: the same steps, one at a time
    t = time.perf_counter()
    images = decode_images(db, cfg.data.resize)
    decode_s = time.perf_counter() - t
    t = time.perf_counter()
    embed(model, images, cfg)
    infer_s = time.perf_counter() - t
    with one_thread():
        t = time.perf_counter()
        [tf(im) for im in images]
        transform_s = time.perf_counter() - t

    raw_ips = args.batch / statistics.median(raw)
    pipe_ips = len(db) / statistics.median(passes)
    return {"image_size": size, "resize": cfg.data.resize, "photos": len(db), "batch": args.batch,
            "precision": precision, "threads": torch.get_num_threads(), "passes": len(passes),
            "raw_batches": len(raw), "raw_images_per_s": round(raw_ips, 2),
            "pipeline_images_per_s": round(pipe_ips, 2), "ratio": round(pipe_ips / raw_ips, 3),
            "pass_seconds": [round(s, 2) for s in passes],
            "one_pass_breakdown_ms_per_image": {
                "decode_resize": round(1e3 * decode_s / len(db), 2), "infer": round(1e3 * infer_s / len(db), 2),
                "of_which_transform": round(1e3 * transform_s / len(db), 2),
                "raw_model": round(1e3 / raw_ips, 2)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder for data and runs")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 128], help="rendered = model image sizes")
    ap.add_argument("--views", type=int, default=384, help="database photos (a multiple of --batch)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--passes", type=int, default=4, help="timed pipeline passes (after one warm-up)")
    ap.add_argument("--raw-batches", type=int, default=4, help="raw batches before and after each pass")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    results = []
    for size in args.sizes:
        r = bench(args, size)
        results.append(r)
        print(json.dumps(r, indent=1), flush=True)
        print(f"{size} px: pipeline {r['pipeline_images_per_s']:.1f} img/s, raw {r['raw_images_per_s']:.1f} img/s, "
              f"ratio {r['ratio']:.2f}; load average now {os.getloadavg()[0]:.1f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
