"""Benchmark the chunked, sharded index build: 1,000,000 x 512 embeddings read from a .npy file on disk.

    .venv/bin/python scripts/bench_index_chunked.py --work /tmp/bench_chunked    # as in RESULTS.md
    .venv/bin/python scripts/bench_index_chunked.py --work /tmp/bc --n 100000 --nlist 256

The vectors are bench_index.py's synthetic clustered "photos", written to WORK/embeddings.npy a chunk
at a time (the generator never holds them all). Each build runs in a child process of its own, so its
peak resident memory (VmHWM) is its own: "chunked" builds from the file through NpyRows (ADD_CHUNK
rows in memory at a time) into --shards shards; "memory" loads the whole file and builds one index, as
build_run_index did before. Each child then saves the index, loads it back with load_index (sha256
checks included), and measures recall@10 against numpy brute force, batch and one-query latency.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from numpy.lib.format import open_memmap

from bench_index import brute_force, median_time, photo_places, recall_at, rss_gib, single_query_ms
from retrieval.answering import index as index_module
from retrieval.answering.index import NpyRows, Sidecar, build_index, load_index, save_index, search, shards_of


def make_data(args) -> None:
    """WORK/embeddings.npy, queries.npy and exact.npy (numpy brute-force top k), unless already there."""
    emb, queries, exact = args.work / "embeddings.npy", args.work / "queries.npy", args.work / "exact.npy"
    if exact.is_file() and NpyRows(emb).shape == (args.n, args.dim):
        return
    args.work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    place, n_places, photos = photo_places(args.n, args.dim, rng, args.latent_dim)
    open_memmap(emb, mode="w+", dtype=np.float32, shape=(args.n, args.dim))
    for s in range(0, args.n, 20_000):
        rows = open_memmap(emb, mode="r+")  # mapped only while writing, so its pages leave this process
        rows[s:s + 20_000] = photos(place[s:s + 20_000])
        rows.flush()
        del rows
    q = photos(rng.integers(0, n_places, args.queries))
    np.save(queries, q)
    print(f"data written in {time.perf_counter() - t:.1f} s ({emb.stat().st_size / 2**30:.2f} GiB); "
          f"rss peak {rss_gib()[1]:.2f} GiB", flush=True)
    t = time.perf_counter()
    np.save(exact, brute_force(NpyRows(emb), q, args.k)[1])
    print(f"exact top {args.k} by numpy brute force over the file: {time.perf_counter() - t:.1f} s; "
          f"rss peak {rss_gib()[1]:.2f} GiB", flush=True)


def child(args) -> dict:
    """Build one way, save, load back, search; peak memory of this process."""
    emb = args.work / "embeddings.npy"
    q, exact = np.load(args.work / "queries.npy"), np.load(args.work / "exact.npy")
    out: dict = {"mode": args.child, "rss_start_gib": round(rss_gib()[0], 2)}
    t = time.perf_counter()
    if args.child == "memory":
        x = np.load(emb)
        out["load_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        index = build_index(x, "ivfpq", nlist=args.nlist, pq_m=args.pq_m, refine=args.refine,
                            nprobe=args.nprobe, k_factor=args.k_factor)
    else:
        x = NpyRows(emb)
        index = build_index(x, "ivfpq", nlist=args.nlist, pq_m=args.pq_m, refine=args.refine, nprobe=args.nprobe,
                            k_factor=args.k_factor, shard_size=-(-args.n // args.shards))
    out["build_s"] = round(time.perf_counter() - t, 1)
    out["rss_after_build_gib"], out["peak_build_gib"] = (round(v, 2) for v in rss_gib())
    del x
    folder = args.work / f"index-{args.child}"
    side = Sidecar(paths=[f"p{i}" for i in range(args.n)], lat=np.zeros(args.n), lon=np.zeros(args.n),
                   dim=args.dim, checkpoint_sha256="0" * 64, kind="ivfpq")
    t = time.perf_counter()
    save_index(folder, index, side)
    out["save_s"] = round(time.perf_counter() - t, 1)
    out["peak_build_save_gib"] = round(rss_gib()[1], 2)
    out["files"] = len(shards_of(index))
    out["index_mib"] = round(sum(p.stat().st_size for p in folder.glob("index*.faiss")) / 2**20)
    del index, side
    t = time.perf_counter()
    index, _ = load_index(folder)
    out["load_index_s"] = round(time.perf_counter() - t, 1)
    out["rss_loaded_gib"] = round(rss_gib()[0], 2)
    _, ids = search(index, q, args.k)
    out["recall@10"] = round(recall_at(ids, exact), 4)
    timings, loaded = {}, index  # the shards are views into `loaded`: it must outlive their recombinations
    for threaded in ([False, True] if isinstance(loaded, faiss.IndexShards) else [None]):
        if threaded is not None:
            index_module.THREADED_SHARDS = threaded
            index = index_module.combine_shards(shards_of(loaded))
        timings[str(threaded)] = {
            "batch_ms_per_query": round(median_time(lambda: search(index, q, args.k), 3) / len(q) * 1e3, 3),
            "one_query_1_thread_ms": round(single_query_ms(index, q, args.k), 2)}
    out["search"] = timings
    out["peak_gib"] = round(rss_gib()[1], 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the 2 GiB embeddings file and indexes")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--pq-m", type=int, default=64)
    p.add_argument("--refine", default="sq8", choices=["flat", "sq8", "none"])
    p.add_argument("--nprobe", type=int, default=64)
    p.add_argument("--k-factor", type=float, default=16)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--modes", nargs="+", default=["chunked", "memory"], choices=["chunked", "memory"])
    p.add_argument("--child", choices=["chunked", "memory"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    print(f"{os.cpu_count()} cpus, faiss {faiss.__version__}; load average {os.getloadavg()}", flush=True)
    make_data(args)
    for mode in args.modes:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--child", mode]
        t = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True)
        lines = run.stdout.splitlines()
        if run.returncode or not lines or not lines[-1].startswith("RESULT "):
            sys.exit(f"{mode} build failed:\n{run.stderr[-3000:]}")
        r = json.loads(lines[-1][len("RESULT "):])
        print(f"\n## {mode} ({time.perf_counter() - t:.0f} s in all; load average now {os.getloadavg()[0]:.1f})")
        print(json.dumps(r, indent=1), flush=True)


if __name__ == "__main__":
    main()
