"""Query latency per photo, end to end, and FAISS flat search against numpy brute force on the same index.

Latency: `retrieval.query.query` on held-out photos, one at a time as `geoloc query` answers them:
read and decode from disk, resize, test transform, embed (bf16), FAISS search, vote. Loading the model
and index once is not counted (query() times each photo itself). The first --warmup photos are left
out (oneDNN builds its kernels on the first call). The same photos are then timed step by step.
Search: the run's flat (exact) index against numpy brute force (q @ X.T, argpartition, sort) over the
same vectors (RUN/index/embeddings.npy, or place_embeddings.npy), one query at a time and as one batch; ids compared.

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
from retrieval.config import load_config, load_run_config, prepare_run_dir
from retrieval.embedding import INDEX_DIR, build_run_index, embed, indexed_file, open_index, resolve_vote
from retrieval.index import build_index, search
from retrieval.manifests import load_rgb
from retrieval.query import query
from retrieval.splits import load_data
from retrieval.transforms import to_cached
from retrieval.vote import vote


def tiny_run(work: Path, size: int) -> Path:
    """Render the demo city (600 + 60 views) and train an embedding for a few steps."""
    from retrieval.embedding import train_embedding
    from retrieval.synth.cameras import render_dataset
    from retrieval.synth.city import write_demo_city

    data, run = work / f"demo-{size}", work / f"run-{size}"
    if not (data / "test.csv").is_file():
        write_demo_city(work / "demo_city.osm", seed=0, size_m=800)
        render_dataset(work / "demo_city.osm", data, n_train=600, n_test=60, size=size, seed=0)
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


def ms(seconds: list[float]) -> dict:
    return {"median": round(1e3 * statistics.median(seconds), 2),
            "p90": round(1e3 * float(np.percentile(seconds, 90)), 2)}


def numpy_search(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q @ x.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable")
    ids = np.take_along_axis(top, order, 1)
    return np.take_along_axis(sims, ids, 1), ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--run", type=Path, help="a trained embedding run (default: train a tiny one in WORK)")
    ap.add_argument("--size", type=int, default=128, help="image size of the tiny run")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20, help="search timings: repeats per query / batch")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    run = copy_run(args.run, args.work) if args.run else tiny_run(args.work, args.size)
    cfg = load_run_config(run)
    if not (run / INDEX_DIR / "index.json").is_file():
        build_run_index(run, cfg)
    test = load_data(cfg)["test"]
    files = test.paths[:args.warmup + args.queries]

    answers = query(run, files)[args.warmup:]
    end_to_end = [a["ms"] / 1e3 for a in answers]

    model, index, side = open_index(run, cfg)
    mode = resolve_vote(run, cfg, model, side)[0]
    k = cfg.index.k
    steps: dict[str, list[float]] = {"decode_resize": [], "embed": [], "search": [], "vote": []}
    qs = []
    for i, path in enumerate(files):
        t0 = time.perf_counter()
        image = to_cached(load_rgb(path), cfg.data.resize)
        t1 = time.perf_counter()
        q = embed(model, [image], cfg, "embed query")
        t2 = time.perf_counter()
        sims, ids = search(index, q, k)
        t3 = time.perf_counter()
        vote(side.lat[ids], side.lon[ids], sims, mode, cfg.index.vote_radius_m)
        t4 = time.perf_counter()
        if i >= args.warmup:
            qs.append(q[0])
            for name, a, b in (("decode_resize", t0, t1), ("embed", t1, t2), ("search", t2, t3), ("vote", t3, t4)):
                steps[name].append(b - a)

    x, q = np.load(indexed_file(run / INDEX_DIR)), np.stack(qs)
    if cfg.index.kind != "flat":
        index = build_index(x, progress=False)
    f_s, f_i = index.search(q, k)
    n_s, n_i = numpy_search(x, q, k)
    one_faiss = statistics.median(median_time(lambda: index.search(q[i:i + 1], k), args.repeats) for i in range(len(q)))
    one_numpy = statistics.median(median_time(lambda: numpy_search(x, q[i:i + 1], k), args.repeats) for i in range(len(q)))
    batch_faiss = median_time(lambda: index.search(q, k), args.repeats)
    batch_numpy = median_time(lambda: numpy_search(x, q, k), args.repeats)
    result = {
        "run": str(args.run or run), "database": int(index.ntotal), "dim": int(index.d), "kind": cfg.index.kind,
        "image_size": cfg.data.image_size, "resize": cfg.data.resize, "queries": len(answers), "k": k,
        "end_to_end_ms": ms(end_to_end), "steps_ms": {name: ms(v) for name, v in steps.items()},
        "search": {"same_ids": float(np.mean(f_i == n_i)), "max_sim_diff": float(np.abs(f_s - n_s).max()),
                   "one_query_ms": {"faiss": round(1e3 * one_faiss, 4), "numpy": round(1e3 * one_numpy, 4),
                                    "numpy_over_faiss": round(one_numpy / one_faiss, 2)},
                   "batch_ms": {"faiss": round(1e3 * batch_faiss, 3), "numpy": round(1e3 * batch_numpy, 3),
                                "numpy_over_faiss": round(batch_numpy / batch_faiss, 2)},
                   "faiss_threads": faiss.omp_get_max_threads()},
    }
    print(json.dumps(result, indent=1))
    e = result["end_to_end_ms"]
    print(f"\nend to end per photo: median {e['median']:.1f} ms, p90 {e['p90']:.1f} ms over {len(answers)} photos; "
          f"faiss flat vs numpy: {result['search']['one_query_ms']['numpy_over_faiss']:.2f}x one query, "
          f"{result['search']['batch_ms']['numpy_over_faiss']:.2f}x batch; ids identical "
          f"{result['search']['same_ids']:.2%}; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
