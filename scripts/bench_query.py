"""Query latency through the Locator, and FAISS flat search against numpy brute force on the same index.

Latency: `Locator.load(run)` once (timed on its own), then in-process milliseconds per photo for one
photo per call (`locate(path)`: read, decode, resize, embed, search, vote) and for 64 photos per call
(batched), medians over repeated calls after a warm-up (oneDNN builds its kernels on the first call).
Search: the run's flat (exact) index against numpy brute force (q @ X.T, argpartition, sort) over the
same vectors (RUN/index/embeddings.npy, or place_embeddings.npy), one query at a time and as one batch;
ids compared.

    .venv/bin/python scripts/bench_query.py --work /tmp/bench_query          # renders and trains a tiny run
    .venv/bin/python scripts/bench_query.py --work /tmp/bench_query --run runs/demo/methods/embedding_geodesic

With --run, the run's checkpoint and config are copied into WORK and the index is built there, so the
run itself is not touched.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import faiss
import numpy as np

from bench_index import median_time  # scripts/ is on sys.path when run as a script
from retrieval.answering.index import build_index
from retrieval.answering.locator import Locator
from retrieval.answering.run_index import ensure_index, indexed_file
from retrieval.config import load_config
from retrieval.data.manifests import load_rgb
from retrieval.data.splits import load_data
from retrieval.learning.inference import embed
from retrieval.learning.transforms import to_cached
from retrieval.methods.embedding import train_embedding
from retrieval.run import Run, load_run_config, prepare_run_dir
from retrieval.synth.cameras import render_dataset
from retrieval.synth.city import write_demo_city


def tiny_run(work: Path, size: int) -> Path:
    """Render the demo city (600 + 80 views) and train an embedding for a few steps."""
    data, run = work / f"demo-{size}", work / f"run-{size}"
    if not (data / "test.csv").is_file():
        write_demo_city(work / "demo_city.osm", seed=0, size_m=800)
        render_dataset(work / "demo_city.osm", data, n_train=600, n_test=80, size=size, seed=0)
    if not (run / "best.pt").is_file():
        cfg = load_config(None, [f"data.train={data}", f"data.image_size={size}",
                                 f"data.resize={round(size * 256 / 224)}", "model.weights=none",
                                 "train.epochs=1", "train.max_steps_per_epoch=3", "train.batch_size=32"])
        prepare_run_dir(run, cfg)
        train_embedding(cfg, run)
    return run


def copy_run(src: Path, work: Path) -> Path:
    run = work / f"run-{src.name}"
    run.mkdir(parents=True, exist_ok=True)
    for name in ("best.pt", "last.pt", "config.yaml", "run.json"):
        if (src / name).is_file() and not (run / name).is_file():
            shutil.copy2(src / name, run / name)
    return run


def ms(seconds: list[float], per: int = 1) -> dict:
    return {"median": round(1e3 * statistics.median(seconds) / per, 2),
            "p90": round(1e3 * float(np.percentile(seconds, 90)) / per, 2)}


def numpy_search(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q @ x.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable")
    ids = np.take_along_axis(top, order, 1)
    return np.take_along_axis(sims, ids, 1), ids


def latency(run: Path, files: list[Path], warmup: int, repeats: int) -> dict:
    """Load once, then ms per photo for one photo per call and for 64 photos per call."""
    t0 = time.perf_counter()
    loc = Locator.load(run)
    load_s = time.perf_counter() - t0
    batch = (files * (64 // len(files) + 1))[:64]
    loc.locate(files[:warmup])
    one = []
    for path in files[warmup:]:
        t0 = time.perf_counter()
        loc.locate(path)
        one.append(time.perf_counter() - t0)
    many = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loc.locate(batch)
        many.append(time.perf_counter() - t0)
    return {"load_ms": round(1e3 * load_s, 1), "one_photo_per_call_ms": ms(one),
            "per_photo_in_64_call_ms": ms(many, per=64), "calls": {"one": len(one), "sixty_four": len(many)}}


def search_vs_numpy(run: Path, cfg, files: list[Path], repeats: int) -> dict:
    loc = Locator.load(run)
    k = cfg.index.k
    q = embed(loc.model, [to_cached(load_rgb(p), cfg.data.resize) for p in files], cfg)
    x, index = np.load(indexed_file(run / Run.INDEX_DIR)), loc.index
    if cfg.index.kind != "flat":
        index = build_index(x, progress=False)
    f_s, f_i = index.search(q, k)
    n_s, n_i = numpy_search(x, q, k)
    one_faiss = statistics.median(median_time(lambda: index.search(q[i:i + 1], k), repeats) for i in range(len(q)))
    one_numpy = statistics.median(median_time(lambda: numpy_search(x, q[i:i + 1], k), repeats) for i in range(len(q)))
    batch_faiss = median_time(lambda: index.search(q, k), repeats)
    batch_numpy = median_time(lambda: numpy_search(x, q, k), repeats)
    return {"database": int(index.ntotal), "dim": int(index.d), "kind": cfg.index.kind, "k": k,
            "same_ids": float(np.mean(f_i == n_i)), "max_sim_diff": float(np.abs(f_s - n_s).max()),
            "one_query_ms": {"faiss": round(1e3 * one_faiss, 4), "numpy": round(1e3 * one_numpy, 4),
                             "numpy_over_faiss": round(one_numpy / one_faiss, 2)},
            "batch_ms": {"faiss": round(1e3 * batch_faiss, 3), "numpy": round(1e3 * batch_numpy, 3),
                         "numpy_over_faiss": round(batch_numpy / batch_faiss, 2)},
            "faiss_threads": faiss.omp_get_max_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--run", type=Path, help="a trained embedding run (default: train a tiny one in WORK)")
    ap.add_argument("--size", type=int, default=128, help="image size of the tiny run")
    ap.add_argument("--queries", type=int, default=30, help="photos timed one per call")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5, help="64-photo calls timed; search timings: repeats")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    run = copy_run(args.run, args.work) if args.run else tiny_run(args.work, args.size)
    cfg = load_run_config(run)
    ensure_index(run, cfg)
    files = load_data(cfg)["test"].paths[:args.warmup + args.queries]
    result = {"run": str(args.run or run), "image_size": cfg.data.image_size, "resize": cfg.data.resize,
              "latency": latency(run, files, args.warmup, args.repeats),
              "search": search_vs_numpy(run, cfg, files[args.warmup:], args.repeats)}
    print(json.dumps(result, indent=1))
    lat, s = result["latency"], result["search"]
    print(f"\nLocator: load {lat['load_ms']:.0f} ms; one photo per call {lat['one_photo_per_call_ms']['median']:.1f} ms; "
          f"64 per call {lat['per_photo_in_64_call_ms']['median']:.1f} ms per photo; faiss flat vs numpy: "
          f"{s['one_query_ms']['numpy_over_faiss']:.2f}x one query, {s['batch_ms']['numpy_over_faiss']:.2f}x batch; "
          f"ids identical {s['same_ids']:.2%}; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
