"""Benchmark the FAISS index: exact search against numpy brute force, then IVF-PQ at city scale.

    .venv/bin/python scripts/bench_index.py                       # 1,000,000 x 512, as in RESULTS.md
    .venv/bin/python scripts/bench_index.py --n 200000 --queries 500

The vectors are synthetic but clustered like photo embeddings: "places" of 1 + Poisson(19) photos,
each photo = its place's direction + noise, L2-normalised (neighbours within a place have cosine
~0.75 and spread, unrelated photos ~0); queries are fresh photos of random places. Uniform random
vectors would be a worst case no embedding model produces. recall@10 = |approx top 10 & exact top 10|/10.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from retrieval.answering.index import build_index, search, set_search_params


def photo_places(n: int, dim: int, rng: np.random.Generator, latent_dim: int = 32, noise: float = 0.7,
                 chunk: int = 100_000):
    """The place of each of n photos (places of 1 + Poisson(19) photos), the number of places, and
    photos(which) making new photo vectors of the places `which`.

    Place directions lie in a random latent_dim-dimensional subspace (0: independent random directions,
    no structure at all); each photo adds isotropic noise of norm ~noise over all dim dimensions."""
    sizes = 1 + rng.poisson(19, n // 20 + n // 100 + 10)  # 5% spare places so that they hold n photos
    place = np.repeat(np.arange(len(sizes)), sizes)[:n]
    if latent_dim:
        basis = rng.standard_normal((latent_dim, dim), dtype=np.float32)
        centres = rng.standard_normal((len(sizes), latent_dim), dtype=np.float32) @ basis
    else:
        centres = rng.standard_normal((len(sizes), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def photos(which: np.ndarray) -> np.ndarray:
        out = np.empty((len(which), dim), dtype=np.float32)
        for s in range(0, len(which), chunk):
            v = centres[which[s:s + chunk]] + rng.standard_normal((len(which[s:s + chunk]), dim),
                                                                   dtype=np.float32) * (noise / np.sqrt(dim))
            out[s:s + chunk] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out

    return place, len(sizes), photos


def clustered(n: int, dim: int, rng: np.random.Generator, latent_dim: int = 32, noise: float = 0.7):
    """n photo-like vectors in places of ~20 (photo_places), and a function making new photos of the
    same places."""
    place, n_places, photos = photo_places(n, dim, rng, latent_dim, noise)
    return photos(place), lambda q: photos(rng.integers(0, n_places, q))


def brute_force(x: np.ndarray, q: np.ndarray, k: int, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k by inner product with numpy only, chunked over the database."""
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), k), dtype=np.int64)
    for s in tqdm(range(0, len(x), chunk), desc="numpy brute force", leave=False):
        sims = q @ x[s:s + chunk].T
        top = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(sims, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + s], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_s, best_i


def recall_at(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


def rss_gib() -> tuple[float, float]:
    """(current, peak) resident memory of this process in GiB. The peak is VmHWM, the high-water mark
    of this process image: ru_maxrss would also count, in a child started by subprocess, its parent's
    memory before the exec."""
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value
    if "VmHWM" not in status:  # not Linux
        return 0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return int(status["VmRSS"].split()[0]) / 2**20, int(status["VmHWM"].split()[0]) / 2**20


def index_bytes(index: faiss.Index) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.faiss"
        faiss.write_index(index, str(path))
        return path.stat().st_size


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def single_query_ms(index: faiss.Index, q: np.ndarray, k: int, repeats: int = 100) -> float:
    """Median latency of one query at a time on one thread (a server answering one photo; OpenMP's
    thread hand-offs would otherwise measure the scheduler of this shared machine)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return median_time(lambda: [search(index, q[i:i + 1], k) for i in range(repeats)], 3) / repeats * 1e3
    finally:
        faiss.omp_set_num_threads(threads)


def exact_check(args, rng) -> None:
    x, new = clustered(args.small_n, args.dim, rng, args.latent_dim)
    q = new(args.queries)
    index = build_index(x, "flat", progress=False)
    faiss_s, faiss_i = search(index, q, args.k)
    np_s, np_i = brute_force(x, q, args.k)
    same = np.mean(faiss_i == np_i)
    # an id mismatch is acceptable only between equal similarities (ties)
    tie_ok = np.allclose(faiss_s, np_s, atol=1e-5)
    t_faiss = median_time(lambda: search(index, q, args.k), 5)
    t_np = median_time(lambda: brute_force(x, q, args.k), 5)
    print(f"\n## exact search, {args.small_n:,} x {args.dim}, {args.queries} queries, k={args.k}")
    print(f"ids identical to numpy brute force: {same:.4%}; similarities equal: {tie_ok}")
    print(f"median of 5: faiss flat {t_faiss * 1e3:.1f} ms, numpy {t_np * 1e3:.1f} ms "
          f"({t_np / t_faiss:.2f}x), per query {t_faiss / args.queries * 1e3:.3f} ms")


def scale(args, rng) -> None:
    print(f"\n## ivfpq, {args.n:,} x {args.dim} (latent dim {args.latent_dim}), nlist {args.nlist}, PQ{args.pq_m}x8, "
          f"train {args.train_size or 64 * args.nlist:,}, {args.queries} queries, k={args.k}")
    t = time.perf_counter()
    x, new = clustered(args.n, args.dim, rng, args.latent_dim)
    q = new(args.queries)
    print(f"data generated in {time.perf_counter() - t:.1f} s; raw vectors {x.nbytes / 2**30:.2f} GiB; "
          f"rss {rss_gib()[0]:.2f} GiB")
    t = time.perf_counter()
    _, exact = brute_force(x, q, args.k)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    _, exact_faiss = faiss.knn(q, x, args.k, metric=faiss.METRIC_INNER_PRODUCT)
    t_knn = time.perf_counter() - t
    print(f"exact top {args.k}: numpy brute force {t_exact:.1f} s ({t_exact / args.queries * 1e3:.1f} ms/query), "
          f"faiss flat (faiss.knn) {t_knn:.1f} s ({t_knn / args.queries * 1e3:.1f} ms/query), "
          f"same ids {np.mean(exact == exact_faiss):.4%}")

    for refine in args.refine:
        rss_before = rss_gib()[0]
        t = time.perf_counter()
        index = build_index(x, "ivfpq", nlist=args.nlist, pq_m=args.pq_m, refine=refine, train_size=args.train_size)
        t_build = time.perf_counter() - t
        size = index_bytes(index)
        print(f"\nrefine {refine}: build (train + add) {t_build:.1f} s; index file {size / 2**20:,.0f} MiB "
              f"({size / args.n:.0f} bytes/photo); rss +{rss_gib()[0] - rss_before:.2f} GiB, "
              f"peak so far {rss_gib()[1]:.2f} GiB\n")
        print("| refine | nprobe | k_factor | recall@10 vs exact | batch of queries, ms/query | one query, 1 thread, ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for nprobe in args.nprobe:
            for k_factor in args.k_factor if refine != "none" else [1]:
                set_search_params(index, nprobe=nprobe, k_factor=k_factor)
                _, ids = search(index, q, args.k)
                batch = median_time(lambda idx=index: search(idx, q, args.k), 3) / args.queries
                single = single_query_ms(index, q, args.k)
                print(f"| {refine} | {nprobe} | {k_factor:g} | {recall_at(ids, exact):.4f} | {batch * 1e3:.3f} | "
                      f"{single:.2f} |", flush=True)
        del index


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--small-n", type=int, default=50_000, help="size of the exact-search comparison")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--latent-dim", type=int, default=32, help="intrinsic dimension of places; 0: none")
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--pq-m", type=int, default=64)
    p.add_argument("--train-size", type=int, default=0, help="0: 64 per list")
    p.add_argument("--nprobe", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--k-factor", type=float, nargs="+", default=[8, 16, 32])
    p.add_argument("--refine", nargs="+", default=["flat", "sq8"], choices=["flat", "sq8", "none"])
    p.add_argument("--skip-scale", action="store_true")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)")
    exact_check(args, rng)
    if not args.skip_scale:
        scale(args, rng)


if __name__ == "__main__":
    main()
